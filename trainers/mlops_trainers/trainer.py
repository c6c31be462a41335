"""The trainer base class: what a trainer kind says about its data, model and artifacts.

The runtime (:mod:`mlops_trainers.runtime`) owns everything that is the same for every trainer:
reading the run file, resuming from the newest complete checkpoint, the step loop with
checkpoints every ``checkpoint_every`` steps, SIGTERM handling (checkpoint, exit 143), exit codes,
``status.json``/``run.json``/``metrics.csv``/TensorBoard, the final ``model.keras``. A trainer
only says what its data, model and artifacts are.

How to add a trainer
--------------------
A trainer is one folder, ``mlops_trainers/trainers/<kind>/`` (the folder name is the kind; see
:mod:`mlops_trainers.registry`), plus an example manifest ``examples/<kind>.yaml``:

1. ``config.py``: one :class:`~mlops_trainers.config_base.TrainerConfig` subclass, pure pydantic
   (the operator validates manifests with it and has no TensorFlow). Its docstring and field
   descriptions become the kind's README table.
2. ``trainer.py``: one :class:`Trainer` subclass naming that config::

       class SegmenterTrainer(Trainer[SegmenterConfig]):
           config_class = SegmenterConfig

           def datasets(self) -> TrainData: ...       # deterministic batches per (epoch, step)
           def build_model(self) -> keras.Model: ...  # built, compiled, optimizer built
           def on_epoch_end(self, epoch, model, logs):  # optional: artifacts, extra metrics
               self.context.write_png(f"predictions/epoch-{epoch:04d}.png", grid)

3. ``datasets()`` returns a :class:`TrainData`: ``steps_per_epoch`` and ``batches(epoch,
   start_step)``, which must yield the *same* batches for the same ``(epoch, start_step)`` in any
   process (in-memory arrays: :class:`mlops_trainers.data.ArrayBatches`; otherwise shuffle from
   ``(run.seed, epoch)`` with :class:`mlops_trainers.data.EpochOrder`), so that a resumed run
   continues exactly where the checkpoint was taken.
4. Each batch is fed to :meth:`Trainer.train_step` (default ``model.train_on_batch``: a tuple
   batch is ``(x, y[, sample_weight])``, anything else is ``x``). The returned logs are averaged
   over the epoch by the runtime.
5. Its models and layers live beside it, one public class per file, registered with
   ``@keras.saving.register_keras_serializable(package="mlops_trainers")``
   (:mod:`mlops_trainers.saving` imports every module of the folder, so ``model.keras`` loads).
6. The config inherits every trainer's training options (clipnorm, schedule, early stopping,
   spike guard: :mod:`mlops_trainers.config_base`), applied by the runtime to whatever optimizer
   the model was compiled with (:meth:`Trainer.optimizer` gives Adam at ``learning_rate``);
   :meth:`Trainer.memory_probe` feeds ``mlops validate``'s memory estimate.

Then ``make generate`` (CRD, README tables) and ``make golden`` (the example's rendered workflow).

Everything a trainer writes goes through ``self.context`` (an fsspec URL under the run output),
never through local paths, so it works the same on ``gs://`` and in a local folder.
"""

from __future__ import annotations

import abc
import logging
import re
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from mlops_trainers import storage
from mlops_trainers.config import RunConfig
from mlops_trainers.config_base import TrainerConfig
from mlops_trainers.errors import ConfigError

if TYPE_CHECKING:
    import keras
    import numpy as np

    from mlops_trainers.checkpoints import CheckpointInfo

__all__ = [
    "RunContext", "TrainData", "Trainer", "get_trainer", "image_tag", "reset_metrics",
    "train_on_batch",
]  # fmt: skip

log = logging.getLogger("mlops_trainers")

ConfigT = TypeVar("ConfigT", bound=TrainerConfig)


class TrainData(Protocol):
    """Deterministic training batches: the same ``(epoch, start_step)`` gives the same batches."""

    @property
    def steps_per_epoch(self) -> int: ...

    def batches(self, epoch: int, start_step: int = 0) -> Iterable[Any]:
        """Batches ``start_step .. steps_per_epoch-1`` of epoch ``epoch`` (0-based)."""
        ...


def image_tag(relative: str) -> str:
    """The TensorBoard tag of an image file: its path without the extension and without an
    ``epoch-NNNN`` name (``reconstructions/epoch-0003.png`` -> ``reconstructions``), so the
    images of successive epochs are steps of one tag."""
    stem = re.sub(r"\.[A-Za-z0-9]+$", "", relative)
    return re.sub(r"/?epoch-\d+$", "", stem) or stem


@dataclass
class RunContext:
    """What a trainer may use of the run: its output URL, a local scratch folder, the seed."""

    run: RunConfig
    scratch: Path
    log: logging.Logger = field(default_factory=lambda: log)
    # Set by the runtime: every image written is also shown in TensorBoard (tag, image).
    on_image: Callable[[str, np.ndarray], None] | None = None

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

        url = self.write_bytes(relative, encode_png(image))
        if self.on_image is not None:
            self.on_image(image_tag(relative), image)
        return url


class Trainer(abc.ABC, Generic[ConfigT]):
    """One kind of training: data, model, artifacts. See the module docstring."""

    kind: ClassVar[str] = ""  # set from the folder name by the registry
    config_class: ClassVar[type[TrainerConfig]]

    def __init__(self, run: RunConfig, context: RunContext) -> None:
        self.run = run
        self.context = context
        # Validated once, when the run file was read: the union picked this kind's model.
        if not isinstance(run.trainer.config, self.config_class):
            raise ConfigError(
                f"a {self.kind} trainer needs a {self.config_class.__name__}, got "
                f"{type(run.trainer.config).__name__}"
            )
        self.config: ConfigT = run.trainer.config  # type: ignore[assignment]
        # Inputs other than the data (a VQ-VAE run, ...), resolved: recorded in run.json.
        self.inputs: dict[str, Any] = {}

    def prepare(self) -> None:
        """Resolve inputs other than the data (called first); record them in ``self.inputs``."""

    @abc.abstractmethod
    def datasets(self) -> TrainData:
        """The training batches."""

    @abc.abstractmethod
    def build_model(self) -> keras.Model:
        """The model: built (variables exist), compiled, its optimizer built."""

    def memory_probe(self) -> tuple[keras.Model, Any, int, str] | None:
        """For ``mlops validate``'s memory estimate (:mod:`mlops_trainers.memory`): the model
        built from the config alone, the ``(shape, dtype)`` structure of one batch's model input
        (batch dimension included), the bytes of data the trainer holds in memory, and what they
        are. None when the model depends on something only the run can read."""
        return None

    def optimizer(self) -> keras.optimizers.Optimizer:
        """Adam at ``learning_rate``: what a trainer compiles with. The runtime then applies the
        shared options to whatever optimizer the model has (clipnorm, the learning rate of every
        step, the gradient-norm log: :mod:`mlops_trainers.optim`)."""
        import keras

        return keras.optimizers.Adam(self.config.learning_rate)

    def train_step(self, model: keras.Model, batch: Any) -> Mapping[str, float]:
        """One optimisation step; returns scalar logs (averaged over the epoch by the runtime,
        which resets the model's metrics before each step)."""
        return train_on_batch(model, batch)

    def on_train_begin(self, model: keras.Model, *, fresh: bool) -> None:
        """Called once before the first step; ``fresh`` when no checkpoint/parent was loaded."""

    def on_epoch_end(
        self, epoch: int, model: keras.Model, logs: Mapping[str, float]
    ) -> Mapping[str, float] | None:
        """Write this epoch's artifacts (``epoch`` is 1-based: the number of epochs done); may
        return extra metrics (validation scores...) that join the epoch's logs."""
        return None

    def check_source(self, source: CheckpointInfo) -> None:
        """Refuse a ``resume`` source this trainer cannot start from (a ConfigError: exit 2).

        Called by the runtime as soon as the source is found, before :meth:`prepare`, the data
        and the model: a wrong source costs a manifest read, not a conversion or a GPU.
        """
        if source.kind != self.kind:
            raise ConfigError(
                f"cannot start a {self.kind} run from {source.url}: it is a {source.kind} "
                "checkpoint (spec.resume must name a run of the same trainer kind)"
            )

    def init_from(self, model: keras.Model, source: CheckpointInfo) -> None:
        """Start a new run from another run's checkpoint (``resume``): weights and optimizer
        state (:meth:`check_source` has accepted it)."""
        from mlops_trainers.checkpoints import load_checkpoint

        self.check_source(source)
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


def train_on_batch(model: keras.Model, batch: Any) -> dict[str, float]:
    """``model.train_on_batch`` without its per-call Python work, the same compiled step.

    Keras' ``train_on_batch`` resets every metric in Python (an eager assign per variable) and
    re-checks the model is built on every call: about 3 ms of a 100 ms step. The runtime resets
    the metrics itself, compiled (:func:`reset_metrics`), so once the model has a train function
    (its first step goes through ``train_on_batch``, which builds what is missing; ``compile``
    drops the function again) this calls that function directly.
    A tuple batch is ``(x, y[, sample_weight])``, anything else is ``x``.
    """
    data = tuple(batch) if isinstance(batch, tuple) else (batch,)
    x, y, weight = (*data, None, None)[:3]
    function = getattr(model, "train_function", None)
    strategy = getattr(model, "_distribute_strategy", None)  # set when built under a scope
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        return _train_distributed(model, strategy, (x, y, weight))
    if function is None:
        logs = model.train_on_batch(x, y, weight, return_dict=True)
    else:
        logs = function(iter([(x, y, weight)]))
    return {k: float(v) for k, v in logs.items()}


def _train_distributed(
    model: keras.Model, strategy: Any, data: tuple[Any, Any, Any]
) -> dict[str, float]:
    """One step of a model built under a multi-replica strategy: each replica trains on its
    slice of the global batch. Keras' ``train_on_batch`` would hand every replica the whole
    batch (``strategy.run`` with a plain value copies it), which is N times the work and
    N times the gradient."""
    from mlops_trainers.distribute import distribute_batch

    if model.train_function is None:
        # What train_on_batch does first: build the compiled metrics/losses from the batch.
        model._maybe_symbolic_build(data_batch=data)
        model.make_train_function()
    model.train_function(iter([distribute_batch(strategy, data)]))
    # The metrics read across the replicas (their variables summed), not Keras' step logs:
    # those are each replica's own result, averaged, and a ratio (IoU) of a slice is not the
    # batch's. Traced once per train function, like the reset (eager reads halve a small
    # model's step rate).
    cached = _RESULTS.get(model)
    if cached is None or cached[0] is not model.train_function:
        import tensorflow as tf

        cached = _RESULTS[model] = (model.train_function, tf.function(model.get_metrics_result))
    return {k: float(v) for k, v in cached[1]().items()}


# model -> (the train function its metrics' read was traced beside, the compiled read)
_RESULTS: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = weakref.WeakKeyDictionary()


# model -> (the train function its reset was traced beside, the compiled reset)
_RESETS: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = weakref.WeakKeyDictionary()


def reset_metrics(model: keras.Model) -> None:
    """``model.reset_metrics()`` traced once into one graph call (the per-step logs are each
    step's own, not running means); eager before the first step, when the compiled metrics may
    have no variables yet (Keras builds them on the first batch), and on other backends."""
    function = getattr(model, "train_function", None)
    if function is None:
        model.reset_metrics()
        return
    cached = _RESETS.get(model)
    if cached is None or cached[0] is not function:  # a compile since: new metric variables
        reset = model.reset_metrics
        try:
            import keras
            import tensorflow as tf

            if keras.backend.backend() == "tensorflow":
                reset = tf.function(model.reset_metrics)
        except ImportError:
            pass
        cached = _RESETS[model] = (function, reset)
    cached[1]()


def get_trainer(kind: str) -> type[Trainer[Any]]:
    """The trainer class of ``kind``, importing its ``trainer.py`` on first use."""
    from mlops_trainers.registry import get_entry

    try:
        entry = get_entry(kind)
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from err
    return entry.trainer_class()
