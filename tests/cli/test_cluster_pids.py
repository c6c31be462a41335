"""hack/cluster/lib.sh knows its own processes by their start time, not their command line.

``our_pid`` decides whether a cluster component runs (``up.sh`` fails fast when one "exited", and
``down.sh`` stops only ours). It read ``/proc/PID/cmdline`` and wanted the state dir in it; once
a kube-controller-manager that ran was taken for gone ("exited while waiting for /healthz", yet
found running 4 s later). Now ``start`` records the process's start time, which exec keeps and a
recycled PID does not share.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cluster import record_pid

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "hack" / "cluster" / "lib.sh"


def _bash(state: Path, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f'source "{LIB}" && mkdir -p "$PIDS" "$LOGS" && {script}'],
        env={**os.environ, "MLOPS_CLUSTER_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_started_process_is_ours_whatever_its_command_line(tmp_path: Path) -> None:
    # `sleep 30` does not name the state dir: the old check took it for another's (or gone).
    out = _bash(
        tmp_path,
        'start napper sleep 30; pid="$(our_pid napper)" || { echo none; exit 3; }; '
        'echo "$pid"; kill "$pid"',
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().isdigit(), out.stdout


def test_a_process_that_exited_or_a_recycled_pid_is_not_ours(tmp_path: Path) -> None:
    script = (
        "start brief sleep 0.2; sleep 1; "
        'our_pid brief && echo "exited: still ours"; '
        # A live process of someone else under the recorded PID: another start time.
        'sleep 30 & other=$!; echo "$other" >"$PIDS/brief.pid"; '
        'our_pid brief && echo "recycled: ours"; '
        'proc_start "$other" >/dev/null || echo "no start time for a live process"; '
        'kill "$other"'
    )
    out = _bash(tmp_path, script)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "", out.stdout


def test_a_process_that_failed_before_its_start_time_was_read_is_gone(tmp_path: Path) -> None:
    # `false` may be gone before `start` reads its start time: no record, and our_pid says gone.
    out = _bash(tmp_path, 'start failing false; sleep 0.5; our_pid failing && echo "ours"')
    assert out.stdout == "", out.stdout


def test_a_process_a_test_restarted_is_one_down_sh_stops(tmp_path: Path) -> None:
    """The API-server restart test records the new process with ``record_pid``; ``our_pid``
    (which down.sh stops by) must take it for ours. With only the PID written, the CI of 89d238e
    left that kube-apiserver running after the cluster was down."""
    (tmp_path / "pids").mkdir()
    (tmp_path / "pids" / "napper.start").write_text("1\n")  # the process it replaced
    napper = subprocess.Popen(["sleep", "30"])
    try:
        record_pid(tmp_path, "napper", napper.pid)
        found = _bash(tmp_path, "our_pid napper")
    finally:
        napper.kill()
        napper.wait()
    assert found.stdout.strip() == str(napper.pid), found.stderr


# A component that exits at once, saying it came too early, the first ``$1`` times it is run
# (as kubelet does while containerd's CRI is not serving yet); then it stays up and is ready.
_EARLY = """#!/bin/bash
n=$(( $(cat "$0.runs" 2>/dev/null || echo 0) + 1 )); echo "$n" >"$0.runs"
if (( n <= $1 )); then echo 'validate CRI: server is not initialized yet'; exit 1; fi
touch "$0.ready"; exec sleep 30
"""


def _early(
    tmp_path: Path, failures: int, pattern: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    fake = tmp_path / "fake-kubelet"
    fake.write_text(_EARLY)
    fake.chmod(0o755)
    out = _bash(
        tmp_path / "state",
        f'start fake "{fake}" {failures}; '
        f'wait_for_restarting "fake ready" 20 fake "{pattern}" test -f "{fake}.ready"; '
        'pid="$(our_pid fake)" && kill "$pid"',
    )
    return out, fake


def test_a_component_that_started_too_early_is_started_again(tmp_path: Path) -> None:
    # The CI of d7a7428 lost its whole [realnode] suite when kubelet exited this way once.
    out, fake = _early(tmp_path, 2, "server is not initialized yet")
    assert out.returncode == 0, out.stdout + out.stderr
    assert Path(f"{fake}.runs").read_text().strip() == "3"
    assert out.stderr.count("fake exited (") == 2, out.stderr
    logs = tmp_path / "state" / "logs"
    assert "not initialized" in (logs / "fake.1.log").read_text()  # each early exit's log kept


def test_a_component_that_failed_otherwise_is_not_started_again(tmp_path: Path) -> None:
    out, fake = _early(tmp_path, 1, "some other message")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "fake exited while waiting for fake ready" in out.stderr
    assert Path(f"{fake}.runs").read_text().strip() == "1"
