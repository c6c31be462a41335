"""Data-parallel training over the GPUs of one pod (``resources.gpu.count > 1``).

With more than one GPU visible the runtime builds the model and its optimizer under a TensorFlow
``MirroredStrategy`` (:func:`strategy_for`): every GPU holds a copy of the variables, each step
splits the global batch into one slice per GPU (:func:`distribute_batch`), and the gradients are
summed across the GPUs before the update. With one GPU (or none) there is no strategy and
nothing here runs: the single-device step is the one it has always been.

What makes a 2-GPU step equal a 1-GPU step on the same global batch (``tests/trainers/
test_data_parallel.py`` checks it for every trainer):

* a ``compute_loss`` override returns :func:`scale_loss` of its loss (1/replicas; Keras' own
  ``compute_loss`` does this for compiled losses), so the summed gradients are the global
  batch's mean and Keras' loss tracker, which multiplies back, logs the global loss;
* a masked mean divides by :func:`mean_count` (the global batch's count per replica), and a
  ratio over the batch (the segmenter's batch Dice, a codebook's usage) by sums all-reduced
  with :func:`all_reduce_sum`, so a replica with fewer valid pixels weighs what it would on one
  device;
* state a train step assigns outside the optimizer (the VQ-VAE's EMA codebook) is updated from
  statistics summed over the replicas and declared ``aggregation="only_first_replica"``
  (:data:`SAME_ON_EVERY_REPLICA`), so the copies never drift apart; BatchNorm is built
  ``synchronized`` under a strategy (:func:`replicas`);
* the gradient norm (logged, and clipped to ``clipnorm``) is the summed gradient's
  (:mod:`mlops_trainers.optim`), and the step's metrics are read across the replicas
  (:func:`mlops_trainers.trainer.train_on_batch`).

One trap: MirroredStrategy traces the replicas in turns, switching at every all-reduce, and a
layer's ``add_loss`` list is shared by them, so a loss added before an all-reduce in the forward
pass can be read by the other replica. The VQ-VAE's quantizer therefore returns its loss as an
output in training instead.

Testing without GPUs: ``MLOPS_CPU_REPLICAS=N`` (N >= 2) splits the CPU into N logical devices
and mirrors over them. It is a testing and debugging switch, not a feature (no way to train
faster on a CPU). It must be set before TensorFlow initialises its devices (a fresh process).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlops_trainers.precision import Gpu

__all__ = [
    "CPU_REPLICAS_ENV",
    "SAME_ON_EVERY_REPLICA",
    "all_reduce_min",
    "all_reduce_sum",
    "distribute_batch",
    "first_replica_only",
    "mean_count",
    "replicas",
    "scale_loss",
    "strategy_for",
]

CPU_REPLICAS_ENV = "MLOPS_CPU_REPLICAS"
# The aggregation of a variable the train step assigns the same value on every replica: the
# first replica's value is written to every copy (with Keras' default, "none", each copy keeps
# its own replica's assignment and they diverge silently).
SAME_ON_EVERY_REPLICA = "only_first_replica"


def cpu_replicas() -> int:
    """``MLOPS_CPU_REPLICAS`` (0 when unset): logical CPU devices to mirror over, for tests."""
    raw = os.environ.get(CPU_REPLICAS_ENV, "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError as err:
        raise ValueError(f"{CPU_REPLICAS_ENV}={raw!r}: a number of CPU replicas") from err
    return value if value >= 2 else 0


def strategy_for(gpus: Sequence[Gpu]) -> Any:
    """A ``MirroredStrategy`` over the visible GPUs when there are several (or over
    ``MLOPS_CPU_REPLICAS`` logical CPU devices when set and no GPU is visible); None otherwise,
    and then the runtime trains exactly as without this module."""
    import tensorflow as tf

    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    wanted = cpu_replicas()
    if gpus or not wanted:
        return None
    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) != wanted:
        # Raises RuntimeError once TensorFlow has initialised its devices: set the variable in
        # the environment of a fresh process.
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(wanted)]
        )
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    # Reduce on the CPU without NCCL (there is no GPU to run it on).
    return tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
    )


def _strategy() -> Any:
    """The strategy in scope (TensorFlow's default one outside any), or None without TF."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    return tf.distribute.get_strategy()


def replicas() -> int:
    """How many replicas the strategy in scope trains on (1 without a strategy)."""
    strategy = _strategy()
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def _replicas_in_step() -> int:
    """The replicas of the step being traced: 1 outside a replica's step (an eager call under
    the scope, e.g. an epoch's validation, sees the whole batch itself)."""
    if _strategy() is None:
        return 1
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    return 1 if context is None else int(context.num_replicas_in_sync)


def scale_loss(loss: Any) -> Any:
    """``loss`` / replicas: what a ``compute_loss`` override returns (as Keras' own does), so
    the gradients summed across replicas are those of the global batch's mean loss."""
    n = _replicas_in_step()
    if n == 1:
        return loss
    from keras import ops

    return ops.multiply(loss, ops.cast(1.0 / n, loss.dtype))


def mean_count(count: Any) -> Any:
    """The denominator of a masked mean in a replica's loss: the global batch's count over the
    replicas (the replica's own count with one). A replica's ``sum / mean_count(n)``, averaged
    over the replicas (what the scaled, summed gradients and Keras' metrics do), is the global
    batch's ``sum / n``; dividing by the replica's own count would weigh a replica's few valid
    pixels like another's many."""
    n = _replicas_in_step()
    if n == 1:
        return count
    from keras import ops

    return ops.divide(all_reduce_sum(count), ops.cast(n, count.dtype))


def all_reduce_sum(value: Any) -> Any:
    """``value`` summed over the replicas, inside a replica's step (itself with one)."""
    if _replicas_in_step() == 1:
        return value
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def all_reduce_min(value: Any) -> Any:
    """``value``'s elementwise minimum over the replicas (differentiable: the gradient reaches
    the replica whose value is the minimum), inside a replica's step (itself with one)."""
    if _replicas_in_step() == 1:
        return value
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    return tf.reduce_min(context.all_gather(value[None], axis=0), axis=0)


def first_replica_only(value: Any) -> Any:
    """``value`` of the first replica on every replica (a random draw made once, for all)."""
    if _replicas_in_step() == 1:
        return value
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    first = tf.cast(tf.equal(context.replica_id_in_sync_group, 0), value.dtype)
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value * first)


def distribute_batch(strategy: Any, batch: Any) -> Any:
    """``batch`` (arrays with the global batch first, in any structure; None stays None) as
    per-replica values: replica ``i`` gets the ``i``-th of ``replicas`` consecutive slices.

    A batch that does not divide evenly gives the first replicas one example more (each
    replica's loss is then a mean over a slightly different count: close to, not exactly, the
    single-device loss); fewer examples than replicas is refused.
    """
    import numpy as np
    import tensorflow as tf

    n = int(strategy.num_replicas_in_sync)
    leaves = tf.nest.flatten(batch)
    sizes = {int(np.shape(leaf)[0]) for leaf in leaves if leaf is not None}
    size = min(sizes) if sizes else 0
    if size < n:
        raise ValueError(f"a batch of {size} cannot be split over {n} replicas")
    # np.array_split's sizes: the first size % n slices one example longer.
    counts = [size // n + (1 if i < size % n else 0) for i in range(n)]
    edges = [0, *np.cumsum(counts).tolist()]

    def one(leaf: Any) -> Any:
        if leaf is None:
            return None
        array = leaf.numpy() if hasattr(leaf, "numpy") else np.asarray(leaf)
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: array[
                edges[ctx.replica_id_in_sync_group] : edges[ctx.replica_id_in_sync_group + 1]
            ]
        )

    return tf.nest.map_structure(one, batch)
