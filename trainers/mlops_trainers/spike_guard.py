"""Loss spikes: detect them, and the in-memory snapshots the runtime rolls back to.

The FAFA VQ-VAE journal's main training problem: at learning rates 2e-4/3e-4 the loss spiked
(one spike made every reconstruction dark), the model collapsed back to stick figures, and only a
learning rate of 1e-4 fixed it. A non-finite check alone sees none of that. The runtime
(:mod:`mlops_trainers.runtime`) asks :class:`SpikeDetector` about every step's loss; a spike is a
loss above ``factor`` x the running median of the last ``window`` good steps (the median, not the
mean: one spike must not raise the bar for the next), or a loss that is not finite. On a spike
the runtime restores the last :class:`Snapshot` (weights, optimizer state, the run's position),
multiplies the learning rate by ``lr_factor``, marks the offending batch to be skipped (also after
a resume: the skips are saved in every checkpoint), and replays the batches in between. After
``max_rollbacks`` rollbacks the next spike fails the run (exit 2: retrying would spike again).

By the time a step's loss is known its update has been applied (``train_on_batch`` computes the
loss and applies the gradient in one call), so a rollback is the only way to undo a bad batch; a
snapshot is taken every ``snapshot_every`` good steps and with every checkpoint, so at most that
many steps are replayed. Snapshots live in host memory (a copy of the weights and the optimizer
state, counted by the memory estimate of ``mlops validate``).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlops_trainers.config_base import SpikeGuardConfig

__all__ = ["Snapshot", "SpikeDetector", "model_state_variables"]


@dataclass
class SpikeDetector:
    """The running median of good losses and the verdict on the next one."""

    config: SpikeGuardConfig
    history: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.history = deque(self.history, maxlen=self.config.window)

    @property
    def median(self) -> float | None:
        if len(self.history) < self.config.min_history:
            return None
        return float(statistics.median(self.history))

    def spike(self, loss: float) -> str | None:
        """Why ``loss`` is a spike, or None (then it joins the history)."""
        if not math.isfinite(loss):
            return f"loss {loss} is not finite"
        median = self.median
        if median is not None and loss > self.config.factor * median:
            return f"loss {loss:.4g} > {self.config.factor:g} x running median {median:.4g}"
        self.history.append(float(loss))
        return None


def model_state_variables(model: Any) -> list[Any]:
    """Every variable a rollback must restore: weights (trainable or not, e.g. an EMA codebook,
    BatchNorm statistics), seed-generator states, and the optimizer's slots and iteration."""
    seen: set[int] = set()
    out = []
    optimizer = getattr(model, "optimizer", None)
    groups: Iterable[Any] = [model.variables, optimizer.variables if optimizer else []]
    for group in groups:
        for variable in group:
            if id(variable) not in seen:
                seen.add(id(variable))
                out.append(variable)
    return out


@dataclass
class Snapshot:
    """A copy, in host memory, of a model's state and of the run's position at a good step."""

    values: list[np.ndarray]
    state: dict[str, Any]
    history: list[float]

    @classmethod
    def take(cls, model: Any, state: Mapping[str, Any], history: Iterable[float]) -> Snapshot:
        values = [np.array(v.numpy(), copy=True) for v in model_state_variables(model)]
        return cls(values, dict(state), list(history))

    def restore(self, model: Any) -> None:
        variables = model_state_variables(model)
        if len(variables) != len(self.values):
            raise RuntimeError(
                f"the model has {len(variables)} variables, the snapshot {len(self.values)}"
            )
        for variable, value in zip(variables, self.values, strict=True):
            variable.assign(value)

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.values)
