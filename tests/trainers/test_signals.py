"""A stop that hangs says where: after STUCK_AFTER_S, every thread's stack on stderr (a real
process, a real SIGTERM); a stop that ends in time says nothing."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

SCRIPT = """
import os, signal, sys, time
from mlops_trainers import signals
signals.STUCK_AFTER_S = 0.5
def stuck_in_the_checkpoint(seconds):
    time.sleep(seconds)
with signals.stop_on_signals() as flag:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)  # the handler runs between bytecodes
    assert flag.signum == signal.SIGTERM
    stuck_in_the_checkpoint(float(sys.argv[1]))
time.sleep(1.0)  # past the deadline, but the stop is over: no dump
print("exited")
"""


def _run(seconds: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(seconds)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip


def test_a_stuck_stop_dumps_the_stacks() -> None:
    done = _run(2.0)
    assert "received signal 15" in done.stderr
    assert "stuck_in_the_checkpoint" in done.stderr, done.stderr  # the frame it hung in
    assert done.stderr.count("Timeout (0:00:00.500000)!") == 1  # once, not repeated
    assert done.stdout.strip() == "exited"


def test_a_prompt_stop_dumps_nothing() -> None:
    done = _run(0.0)
    assert "received signal 15" in done.stderr
    assert "Timeout" not in done.stderr and "stuck_in_the_checkpoint" not in done.stderr
    assert done.stdout.strip() == "exited"


def test_within_gives_up_on_a_stuck_call_in_time() -> None:
    from mlops_trainers.signals import within

    release = threading.Event()
    began = time.monotonic()
    assert within(0.3, release.wait, "a stuck upload") is False
    assert time.monotonic() - began < 5.0  # not the call's own (endless) time
    release.set()
    done: list[int] = []
    assert within(5.0, lambda: done.append(1), "a quick upload") is True and done == [1]

    def broken() -> None:
        raise OSError("no route to the bucket")

    assert within(5.0, broken, "a failing upload") is False  # logged, not raised
    with pytest.raises(OSError):
        within(None, broken, "no signal: a plain call")


def test_what_is_left_of_the_grace_period() -> None:
    from mlops_trainers.signals import GRACE_S, StopFlag

    flag = StopFlag()
    assert flag.left(keep=5.0) is None  # no signal: no limit
    flag.at = time.monotonic() - 4.0  # signalled 4 s ago
    left = flag.left(keep=5.0)
    assert left is not None and GRACE_S - 9.5 < left <= GRACE_S - 9.0
    flag.at = time.monotonic() - GRACE_S
    assert flag.left(keep=1.0) == 0.0
