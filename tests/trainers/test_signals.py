"""A stop that hangs says where: after STUCK_AFTER_S, every thread's stack on stderr (a real
process, a real SIGTERM); a stop that ends in time says nothing."""

from __future__ import annotations

import subprocess
import sys

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
