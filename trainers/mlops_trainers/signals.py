"""SIGTERM/SIGINT as a request to stop between steps: a step is never cut, a checkpoint follows.

A spot preemption is a SIGTERM from the kubelet some seconds before the kill; Ctrl-C locally is a
SIGINT. Either sets :class:`StopFlag`; the step loop checks it after each step, checkpoints, and
raises :class:`Stopped`, which the runtime turns into exit 143 (or 130).

A stop that takes longer than :data:`STUCK_AFTER_S` (a step plus a checkpoint take a second or
two) dumps every thread's stack on stderr, once: a trainer killed at the end of its grace period
otherwise leaves nothing saying where it was stuck (a real-node test once saw 30 s of silence
after "received signal 15").

What follows the stop's checkpoint (the run's status, TensorBoard's last events, the attempt's
log) is best effort and must fit in the grace period: :meth:`StopFlag.left` is what is left of
:data:`GRACE_S`, and :func:`within` gives up on a call that outlasts it (a stuck upload: CI once
saw a TensorBoard upload wait on the storage until the kubelet's SIGKILL, exit 137 instead of
143 and no log of the attempt).
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

__all__ = ["GRACE_S", "StopFlag", "Stopped", "stop_on_signals", "within"]

log = logging.getLogger("mlops_trainers")

# Seconds after the signal before a stop still under way dumps the threads' stacks (GKE Spot
# gives 15 s of grace, Kubernetes' default 30).
STUCK_AFTER_S = 10.0

# Seconds from the signal to the kubelet's SIGKILL that a stop plans for: GKE Spot's grace
# period, the shortest a spot pod gets (Kubernetes' default is 30).
GRACE_S = 15.0


class Stopped(Exception):  # noqa: N818 - not an error: the run was asked to stop
    """A signal asked the run to stop; a checkpoint has been written."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


@dataclass
class StopFlag:
    """Set by SIGTERM/SIGINT; the step loop checks it between steps."""

    signum: int | None = None
    at: float | None = None  # time.monotonic() of the first signal

    def handler(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if self.signum is None:
            self.at = time.monotonic()
            log.warning("received signal %d: checkpointing after this step, then exiting", signum)
            # faulthandler's own thread writes the dump, even if this one holds the GIL.
            faulthandler.dump_traceback_later(STUCK_AFTER_S, exit=False, file=sys.stderr)
        self.signum = signum

    def left(self, keep: float) -> float | None:
        """Seconds the stop may still spend and keep ``keep`` of :data:`GRACE_S` for what comes
        after (0 when none are left); None when no signal came (no limit)."""
        if self.at is None:
            return None
        return max(0.0, GRACE_S - keep - (time.monotonic() - self.at))


def within(seconds: float | None, call: Callable[[], object], what: str) -> bool:
    """Run ``call`` and wait at most ``seconds`` for it; False when it did not finish in time: it
    goes on in a daemon thread, which the process's exit ends, and a warning names ``what``. Its
    error, if any, is logged, not raised (this is for best-effort work). ``seconds`` None (no
    signal came): a plain call."""
    if seconds is None:
        call()
        return True
    failed: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except Exception as err:
            failed.append(err)

    worker = threading.Thread(target=run, name=f"mlops-stop-{what}", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        log.warning(
            "%s did not finish within %.1f s (of the %.0f s grace period): gave up on it",
            what, seconds, GRACE_S,
        )  # fmt: skip
        return False
    if failed:
        log.warning("%s failed: %s", what, failed[0])
        return False
    return True


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Install the SIGTERM/SIGINT handlers for the block; the previous ones come back after it."""
    flag = StopFlag()
    previous: dict[int, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[signum] = signal.signal(signum, flag.handler)
        except ValueError:  # not the main thread (a test runner's worker): no handlers
            break
    try:
        yield flag
    finally:
        faulthandler.cancel_dump_traceback_later()
        for restored, handler in previous.items():
            signal.signal(restored, handler)
