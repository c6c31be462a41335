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
4. Each batch is fed to :meth:`Trainer.train_step` with the step's learning rate (default
   :func:`train_on_batch`, Keras' own step in one graph call with the runtime's per-step work: a
   tuple batch is ``(x, y[, sample_weight])``, anything else is ``x``). The returned logs are
   averaged over the epoch by the runtime.
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

    def train_step(
        self, model: keras.Model, batch: Any, learning_rate: float | None = None
    ) -> Mapping[str, float]:
        """One optimisation step at ``learning_rate`` (the runtime's schedule; None: as set);
        returns this step's scalar logs (averaged over the epoch by the runtime), ``grad_norm``
        included when recorded (:func:`train_on_batch`)."""
        return train_on_batch(model, batch, learning_rate)

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


def train_on_batch(
    model: keras.Model, batch: Any, learning_rate: float | None = None
) -> dict[str, float]:
    """One optimisation step, as ``model.train_on_batch``, with the runtime's per-step work in
    the same graph call: the metrics reset first (the logs are this step's own, not running
    means), the learning rate set when given, and ``grad_norm`` read after the step when
    :func:`mlops_trainers.optim.configure` records it (then it is in the logs, last).

    Why one call: each eager call costs the host about 0.3-0.5 ms, and the runtime made four per
    step (reset, learning rate, step, norm). On a CPU step of 100 ms that is noise; on a GPU step
    of a few ms it is a large share, and Keras' ``fit`` makes one. The first step goes through
    Keras' ``train_on_batch`` (under a multi-replica strategy, :func:`_train_distributed`), which
    builds what is missing (``compile`` drops the train function again, and the next step traces
    anew). Under a strategy every step's batch is split over the replicas.
    A tuple batch is ``(x, y[, sample_weight])``, anything else is ``x``.
    """
    from mlops_trainers import optim

    data = tuple(batch) if isinstance(batch, tuple) else (batch,)
    x, y, weight = (*data, None, None)[:3]
    function = getattr(model, "train_function", None)
    strategy = getattr(model, "_distribute_strategy", None)  # set when built under a scope
    replicas = 1 if strategy is None else strategy.num_replicas_in_sync
    fused = None
    if function is not None:
        fused = _fused_step(model, function, learning_rate is not None, replicas > 1)
    if fused is not None:
        import tensorflow as tf

        rate = tf.constant(0.0 if learning_rate is None else learning_rate, tf.float32)
        data = (x, y, weight)
        if replicas > 1:
            from mlops_trainers.distribute import distribute_batch

            data = distribute_batch(strategy, data)
        return {k: float(v) for k, v in fused(data, rate).items()}
    # The first step, or another backend: one call per part.
    reset_metrics(model)
    if learning_rate is not None:
        model.optimizer.learning_rate = learning_rate
    if replicas > 1:
        logs = _train_distributed(model, strategy, (x, y, weight))
    elif function is None:
        logs = {
            k: float(v) for k, v in model.train_on_batch(x, y, weight, return_dict=True).items()
        }
    else:
        logs = {k: float(v) for k, v in function(iter([(x, y, weight)])).items()}
    norm = optim.gradient_norm(model.optimizer)
    if norm is not None:
        logs["grad_norm"] = norm
    return logs


def _fused_step(model: keras.Model, function: Any, with_rate: bool, distributed: bool) -> Any:
    """The compiled reset + learning rate + ``function`` (Keras' train function: its step keeps
    its own ``jit_compile``) + norm read, traced once per train function; None off TensorFlow.

    ``distributed`` (a model built under a multi-replica strategy): the step takes the batch as
    per-replica values (:func:`mlops_trainers.distribute.distribute_batch`) and returns the
    metrics read across the replicas, as the first step's :func:`_train_distributed` does in five
    host calls (reset, learning rate, step, metrics, norm)."""
    key = (function, with_rate, distributed)
    cached = _FUSED.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        import keras
        import tensorflow as tf
    except ImportError:
        return None
    if keras.backend.backend() != "tensorflow":
        return None
    from mlops_trainers import optim

    norm = optim.norm_variable(model.optimizer)

    @tf.function(reduce_retracing=True)  # type: ignore[untyped-decorator]
    def step(data: Any, rate: Any) -> dict[str, Any]:
        model.reset_metrics()
        if with_rate:
            model.optimizer.learning_rate = rate
        # Keras' train function takes an iterator; a Python one is read at trace time, and its
        # step (a tf.function of its own) is called on this function's tensors.
        logs = dict(function(iter([data])))
        if distributed:
            # Keras' step logs are each replica's own results, averaged: a ratio (IoU) of a
            # slice is not the batch's. The metric variables summed across the replicas are.
            logs = dict(model.get_metrics_result())
        if norm is not None:
            # Read after the step: TensorFlow orders it after the step's assign of the norm.
            logs["grad_norm"] = tf.convert_to_tensor(norm)
        return logs

    _FUSED[model] = (key, step)
    return step


# model -> ((the train function it calls, sets the learning rate, distributed), the compiled step)
_FUSED: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, bool, bool], Any]] = (
    weakref.WeakKeyDictionary()
)


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
