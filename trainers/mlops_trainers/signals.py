"""SIGTERM/SIGINT as a request to stop between steps: a step is never cut, a checkpoint follows.

A spot preemption is a SIGTERM from the kubelet some seconds before the kill; Ctrl-C locally is a
SIGINT. Either sets :class:`StopFlag`; the step loop checks it after each step, checkpoints, and
raises :class:`Stopped`, which the runtime turns into exit 143 (or 130).

A stop that takes longer than :data:`STUCK_AFTER_S` (a step plus a checkpoint take a second or
two) dumps every thread's stack on stderr, once: a trainer killed at the end of its grace period
otherwise leaves nothing saying where it was stuck (a real-node test once saw 30 s of silence
after "received signal 15").
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

__all__ = ["StopFlag", "Stopped", "stop_on_signals"]

log = logging.getLogger("mlops_trainers")

# Seconds after the signal before a stop still under way dumps the threads' stacks (GKE Spot
# gives 15 s of grace, Kubernetes' default 30).
STUCK_AFTER_S = 10.0


class Stopped(Exception):  # noqa: N818 - not an error: the run was asked to stop
    """A signal asked the run to stop; a checkpoint has been written."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


@dataclass
class StopFlag:
    """Set by SIGTERM/SIGINT; the step loop checks it between steps."""

    signum: int | None = None

    def handler(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if self.signum is None:
            log.warning("received signal %d: checkpointing after this step, then exiting", signum)
            # faulthandler's own thread writes the dump, even if this one holds the GIL.
            faulthandler.dump_traceback_later(STUCK_AFTER_S, exit=False, file=sys.stderr)
        self.signum = signum


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
