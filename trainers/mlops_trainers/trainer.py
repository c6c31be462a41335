"""The trainer base class and the registry of trainers by ``kind``.

The runtime (:mod:`mlops_trainers.runtime`) owns everything that is the same for every trainer:
reading the run file, resuming from the newest complete checkpoint, the step loop with
checkpoints every ``checkpoint_every`` steps, SIGTERM handling (checkpoint, exit 143), exit codes,
``status.json``/``run.json``/``metrics.csv``/TensorBoard, the final ``model.keras``. A trainer
only says what its data, model and artifacts are.

How to add a trainer
--------------------
1. Its hyperparameters are a pydantic model in :mod:`mlops_trainers.config` (``TRAINER_CONFIGS``).
2. Subclass :class:`Trainer` in ``mlops_trainers/trainers/<kind>.py`` and register it::

       @register_trainer("segmenter")
       class SegmenterTrainer(Trainer[SegmenterConfig]):
           config_class = SegmenterConfig

           def datasets(self) -> TrainData: ...       # deterministic batches per (epoch, step)
           def build_model(self) -> keras.Model: ...  # built, compiled, optimizer built
           def on_epoch_end(self, epoch, model, logs):  # optional: artifacts, extra metrics
               self.context.write_png(f"predictions/epoch-{epoch:04d}.png", grid)

   (or put it elsewhere and add ``kind -> module`` to :data:`TRAINER_MODULES`; the module is
   imported on first use of that kind).
3. ``datasets()`` returns a :class:`TrainData`: ``steps_per_epoch`` and ``batches(epoch,
   start_step)``, which must yield the *same* batches for the same ``(epoch, start_step)`` in any
   process (shuffle from ``(run.seed, epoch)``, e.g. with :class:`mlops_trainers.data.EpochOrder`),
   so that a resumed run continues exactly where the checkpoint was taken.
4. Each batch is fed to :meth:`Trainer.train_step` (default ``model.train_on_batch``: a tuple
   batch is ``(x, y[, sample_weight])``, anything else is ``x``). The returned logs are averaged
   over the epoch by the runtime.

Everything a trainer writes goes through ``self.context`` (an fsspec URL under the run output),
never through local paths, so it works the same on ``gs://`` and in a local folder.
"""

from __future__ import annotations

import abc
import importlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from mlops_trainers import storage
from mlops_trainers.config import RunConfig
from mlops_trainers.errors import ConfigError

if TYPE_CHECKING:
    import keras
    import numpy as np

    from mlops_trainers.checkpoints import CheckpointInfo

__all__ = [
    "TRAINER_MODULES",
    "RunContext",
    "TrainData",
    "Trainer",
    "get_trainer",
    "register_trainer",
    "registered_trainers",
]

log = logging.getLogger("mlops_trainers")

# kind -> module that registers its trainer on import.
TRAINER_MODULES: dict[str, str] = {
    "vqvae": "mlops_trainers.trainers.vqvae",
    "pixelcnn": "mlops_trainers.trainers.pixelcnn",
    "tokenizer": "mlops_trainers.trainers.tokenizer",
    "segmenter": "mlops_trainers.trainers.segmenter",
}

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class TrainData(Protocol):
    """Deterministic training batches: the same ``(epoch, start_step)`` gives the same batches."""

    @property
    def steps_per_epoch(self) -> int: ...

    def batches(self, epoch: int, start_step: int = 0) -> Iterable[Any]:
        """Batches ``start_step .. steps_per_epoch-1`` of epoch ``epoch`` (0-based)."""
        ...


@dataclass
class RunContext:
    """What a trainer may use of the run: its output URL, a local scratch folder, the seed."""

    run: RunConfig
    scratch: Path
    log: logging.Logger = field(default_factory=lambda: log)

    @property
    def output(self) -> str:
        return self.run.output

    def url(self, relative: str) -> str:
        """The URL of ``relative`` under the run output."""
        return storage.join(self.run.output, relative)

    def write_bytes(self, relative: str, data: bytes) -> str:
        url = self.url(relative)
        storage.write_bytes(url, data)
        return url

    def write_png(self, relative: str, image: np.ndarray) -> str:
        """Write an (H, W[, C]) uint8 or [0, 1] float image as PNG; returns its URL."""
        from mlops_trainers.artifacts import encode_png

        return self.write_bytes(relative, encode_png(image))


class Trainer(abc.ABC, Generic[ConfigT]):
    """One kind of training: data, model, artifacts. See the module docstring."""

    kind: ClassVar[str] = ""
    config_class: ClassVar[type[BaseModel]]

    def __init__(self, run: RunConfig, context: RunContext) -> None:
        self.run = run
        self.context = context
        self.config: ConfigT = self.validate_config(run)
        # Inputs other than the data (a VQ-VAE run, ...), resolved: recorded in run.json.
        self.inputs: dict[str, Any] = {}

    @classmethod
    def validate_config(cls, run: RunConfig) -> ConfigT:
        """The trainer's own config model, re-validated from what the run file set."""
        raw = run.trainer.config.model_dump(mode="json", exclude_unset=True)
        try:
            config = cls.config_class.model_validate(raw)
        except ValidationError as err:
            raise ConfigError(f"trainer.config is not a valid {cls.kind} config: {err}") from err
        return config  # type: ignore[return-value]

    def prepare(self) -> None:
        """Resolve inputs other than the data (called first); record them in ``self.inputs``."""

    @abc.abstractmethod
    def datasets(self) -> TrainData:
        """The training batches."""

    @abc.abstractmethod
    def build_model(self) -> keras.Model:
        """The model: built (variables exist), compiled, its optimizer built."""

    def train_step(self, model: keras.Model, batch: Any) -> Mapping[str, float]:
        """One optimisation step; returns scalar logs (averaged over the epoch by the runtime)."""
        if isinstance(batch, tuple):
            logs = model.train_on_batch(*batch, return_dict=True)
        else:
            logs = model.train_on_batch(batch, return_dict=True)
        return {k: float(v) for k, v in logs.items()}

    def on_train_begin(self, model: keras.Model, *, fresh: bool) -> None:
        """Called once before the first step; ``fresh`` when no checkpoint/parent was loaded."""

    def on_epoch_end(
        self, epoch: int, model: keras.Model, logs: Mapping[str, float]
    ) -> Mapping[str, float] | None:
        """Write this epoch's artifacts (``epoch`` is 1-based: the number of epochs done); may
        return extra metrics (validation scores...) that join the epoch's logs."""
        return None

    def init_from(self, model: keras.Model, source: CheckpointInfo) -> None:
        """Start a new run from another run's checkpoint (``resume``): weights, and the
        optimizer state too when the source is the same kind of trainer."""
        from mlops_trainers.checkpoints import load_checkpoint

        if source.kind != self.kind:
            raise ConfigError(
                f"cannot start a {self.kind} run from {source.url}: it is a {source.kind} "
                "checkpoint"
            )
        load_checkpoint(model, source, self.context.scratch, optimizer=True)

    def final_metrics(self, logs: Mapping[str, float]) -> dict[str, float]:
        """The metrics recorded in run.json at the end (default: the last epoch's logs)."""
        return dict(logs)

    def save_final(self, model: keras.Model) -> str:
        """Save the final model as ``model.keras`` under the output; returns its URL."""
        local = self.context.scratch / "model.keras"
        model.save(local)
        url = self.context.url("model.keras")
        storage.put_file(local, url)
        return url


_REGISTRY: dict[str, type[Trainer[Any]]] = {}

TrainerT = TypeVar("TrainerT", bound=type[Trainer[Any]])


def register_trainer(kind: str) -> Callable[[TrainerT], TrainerT]:
    """Class decorator: ``@register_trainer("vqvae")``."""

    def decorate(cls: TrainerT) -> TrainerT:
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return decorate


def registered_trainers() -> dict[str, type[Trainer[Any]]]:
    return dict(_REGISTRY)


def get_trainer(kind: str) -> type[Trainer[Any]]:
    """The trainer class for ``kind``, importing its module on first use."""
    if kind not in _REGISTRY and kind in TRAINER_MODULES:
        try:
            importlib.import_module(TRAINER_MODULES[kind])
        except ModuleNotFoundError as err:
            if err.name != TRAINER_MODULES[kind]:
                raise
    if kind not in _REGISTRY:
        known = ", ".join(sorted(set(_REGISTRY) | set(TRAINER_MODULES)))
        raise ConfigError(f"no trainer is registered for kind {kind!r} (known: {known})")
    return _REGISTRY[kind]
