"""The optimizer options every trainer gets from the runtime, with no code in the trainer.

A trainer compiles its model with any Keras optimizer (all of ours: ``keras.optimizers.Adam``).
Before the first step the runtime :func:`configure` s that optimizer from the trainer config's
shared fields (:class:`~mlops_trainers.config_base.TrainerConfig`):

* ``clipnorm``: the global gradient norm is clipped to it (Keras' ``global_clipnorm``: one norm
  over all gradients, as torch's ``clip_grad_norm_``, not one per variable);
* the gradient norm *before* clipping is recorded every step (``grad_norm`` in the step logs), so
  a spike is visible as a gradient before it is a loss;
* the learning rate of every step is set by the runtime from :func:`learning_rate` (warmup,
  schedule, and the factors the spike guard and a plateau have applied), so it is a function of
  the run's state only and a resumed run continues the same curve.

The optimizer stays a plain Keras class, so ``model.keras`` loads without any of our code.
"""

from __future__ import annotations

import math
from typing import Any

from mlops_trainers import distribute
from mlops_trainers.config_base import TrainerConfig

__all__ = ["configure", "gradient_norm", "learning_rate", "norm_variable", "schedule_factor"]

# Where the gradient-norm variable hangs on the optimizer (outside Keras' tracking: it is not
# part of the optimizer's state, so checkpoints keep their layout).
_NORM_ATTR = "_mlops_gradient_norm"


def schedule_factor(config: TrainerConfig, step: int, total_steps: int, epoch: int) -> float:
    """The schedule's multiplier of ``learning_rate`` at global step ``step`` (0-based, the step
    about to run) of ``total_steps``, in epoch ``epoch`` (0-based). Plateau decays are applied
    by the runtime (they depend on metrics), not here."""
    schedule = config.schedule
    warmup = 1.0
    if schedule.warmup_steps:
        warmup = min(1.0, (step + 1) / schedule.warmup_steps)
    decay = 1.0
    if schedule.kind == "cosine":
        # From the first step after warmup (full rate) to the last one (the final fraction).
        span = max(1, total_steps - schedule.warmup_steps - 1)
        progress = min(1.0, max(0, step - schedule.warmup_steps) / span)
        final = schedule.final_fraction
        decay = final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule.kind == "step":
        decay = schedule.factor ** (epoch // schedule.every_epochs)
    return warmup * decay


def learning_rate(
    config: TrainerConfig, step: int, total_steps: int, epoch: int, scale: float = 1.0
) -> float:
    """The learning rate of global step ``step``: ``learning_rate`` x schedule x ``scale``
    (the product of the spike guard's and the plateau's factors so far)."""
    return config.learning_rate * schedule_factor(config, step, total_steps, epoch) * scale


def _inner(optimizer: Any) -> Any:
    # A LossScaleOptimizer (mixed precision) clips and applies through its inner optimizer.
    return getattr(optimizer, "inner_optimizer", optimizer)


def configure(optimizer: Any, config: TrainerConfig) -> None:
    """Apply ``clipnorm`` and record the gradient norm, on any Keras optimizer, before its first
    step (the train function is traced on the first step and reads both then)."""
    import keras
    from keras import ops

    target = _inner(optimizer)
    if config.clipnorm is not None:
        if target.clipnorm or target.clipvalue:
            raise ValueError(
                f"{type(target).__name__} was built with clipnorm/clipvalue; trainer.config."
                "clipnorm clips the global norm instead: build the optimizer without them"
            )
        target.global_clipnorm = float(config.clipnorm)
    if _NORM_ATTR in vars(target):
        return
    # Every replica assigns the same (global) norm: "only_first_replica" keeps the copies equal.
    norm = keras.Variable(
        0.0,
        trainable=False,
        dtype="float32",
        name="gradient_norm",
        aggregation=distribute.SAME_ON_EVERY_REPLICA,
    )
    # Set through __dict__, past Keras' attribute tracking: the norm is a log, not optimizer state.
    vars(target)[_NORM_ATTR] = norm
    clip = target._clip_gradients
    if distribute.replicas() > 1:
        # Data-parallel: Keras clips each replica's own gradients and sums them afterwards
        # (TFOptimizer._all_reduce_sum_gradients), so the norm logged and clipped would be a
        # replica's, not the global batch's. clip_and_record sums them first instead, once.
        vars(target)["_all_reduce_sum_gradients"] = lambda grads_and_vars: grads_and_vars

    def clip_and_record(grads: list[Any]) -> list[Any]:
        # Keras 3 calls _clip_gradients once per update with the unscaled gradients, whatever the
        # optimizer class (BaseOptimizer._backend_apply_gradients): the one place to see them all.
        grads = _summed_over_replicas(grads)
        present = [ops.cast(g, "float32") for g in grads if g is not None]
        if present:
            norm.assign(ops.sqrt(sum(ops.sum(ops.square(g)) for g in present)))
        return clip(grads)  # type: ignore[no-any-return]

    vars(target)["_clip_gradients"] = clip_and_record


def _summed_over_replicas(grads: list[Any]) -> list[Any]:
    """The gradients summed over the replicas (as they are with one device: unchanged).

    An embedding's IndexedSlices stays one: the replicas' rows one after the other, which for
    lookups that follow the batch are one device's rows. Keras' ops and optimizers treat its
    rows one by one, repeated indices apart (the logged norm counts a token seen twice as
    2 x^2, not (2x)^2, on one device as here), so a dense sum would change both the norm and
    the update from one device's."""
    if distribute.replicas() == 1:
        return grads
    present = [g for g in grads if g is not None]
    summed = iter(distribute.all_reduce_sum(present) if present else [])
    return [None if g is None else next(summed) for g in grads]


def norm_variable(optimizer: Any) -> Any:
    """The variable each step stores its gradient norm in, if :func:`configure` ran (else None):
    the runtime's compiled step reads it in the same graph call as the step."""
    return vars(_inner(optimizer)).get(_NORM_ATTR)


def gradient_norm(optimizer: Any) -> float | None:
    """The global gradient norm of the last step (before clipping), if :func:`configure` ran."""
    norm = norm_variable(optimizer)
    return None if norm is None else float(norm.numpy())
