"""GPU-aware queues (``spec.queue`` in semaphore mode): FIFO, a run holds as many units as GPUs.

Argo's semaphores count Workflows, so a run asking for 2 GPUs would hold one unit of a 2-GPU
queue and let a third run share two GPUs. The operator therefore admits runs itself: a run's
Workflow is created only when its queue has as many free units as it asks GPUs and no run of the
queue has waited longer (FIFO, no backfill, so a big run is never starved). Argo's semaphore stays
on the Workflow as a backstop: it never holds more Workflows than the queue has units.

Pure: :func:`queue_view` turns what the operator's indexes hold into the view that
:func:`mlops_operator.reconcile.decide` admits with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from mlops_operator.views import WorkflowView


def units(gpus: int) -> int:
    """Units of its queue a run holds: its GPUs, and at least one (a CPU run still takes a turn)."""
    return max(gpus, 1)


@dataclass(frozen=True, order=True)
class Waiting:
    """A run waiting for its queue, in FIFO order (the object's creation, then its decision)."""

    created: str
    since: datetime
    uid: str
    name: str = ""
    namespace: str = ""
    gpus: int = 1


@dataclass(frozen=True)
class QueueView:
    """A queue as one waiting run sees it."""

    key: str
    capacity: int | None  # None: the queue ConfigMap (or its key) is missing
    holders: tuple[tuple[str, int], ...] = ()  # (Workflow, units) of runs that hold units
    ahead: tuple[str, ...] = ()  # runs waiting before this one

    @property
    def used(self) -> int:
        return sum(n for _, n in self.holders)

    def admits(self, gpus: int) -> bool:
        if self.capacity is None:
            return True  # nothing to count against: Argo's semaphore reports the missing key
        return not self.ahead and self.used + units(gpus) <= self.capacity

    def explain(self, gpus: int) -> str:
        holders = ", ".join(f"{w} ({n})" for w, n in self.holders) or "none"
        ahead = f"; {len(self.ahead)} run(s) ahead: {', '.join(self.ahead)}" if self.ahead else ""
        return (
            f"waits for {units(gpus)} unit(s) of queue {self.key} "
            f"({self.used} of {self.capacity} in use by {holders}{ahead})"
        )


def queue_view(
    key: str,
    capacity: int | None,
    workflows: Iterable[WorkflowView],
    waiting: Iterable[Waiting],
    me: Waiting,
    *,
    admitted: Mapping[str, int] | None = None,
) -> QueueView:
    """The queue ``key`` for the run ``me``: who holds units, who waited longer. ``admitted``:
    Workflows this operator just created (name -> units) that ``workflows`` (its index, a watch
    behind) may not show yet; they hold their units too."""
    workflows = list(workflows)
    held = {w.name: units(w.gpus) for w in workflows if not w.finished}
    seen = {w.name for w in workflows}
    for name, n in (admitted or {}).items():
        if name not in seen:
            held[name] = n
    holders = tuple(sorted(held.items()))
    ahead = tuple(f"{w.namespace}/{w.name}" for w in sorted(waiting) if w < me and w.uid != me.uid)
    return QueueView(key=key, capacity=capacity, holders=holders, ahead=ahead)
