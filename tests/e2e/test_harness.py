"""The e2e harness's own small parts that need no cluster (run by the [local] session)."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import operator_harness
import pytest
from cluster import HACK, record_pid


def test_the_operators_two_ports_differ_even_when_the_same_port_is_offered_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What happened with "bind to port 0" twice in a CI run: the same free port both times.
    offered = [15007, 15008, 15009]
    monkeypatch.setattr(random, "sample", lambda population, k: list(offered) if k else [])
    health, metrics = operator_harness._two_ports()
    assert health != metrics and {health, metrics} <= set(offered)


def test_free_ports_are_below_the_ephemeral_range() -> None:
    ports = [operator_harness.free_port() for _ in range(20)]
    assert all(10000 <= p < 20000 for p in ports)


def test_a_process_a_test_restarted_is_one_down_sh_stops(tmp_path: Path) -> None:
    """The API-server restart test records the new process with ``record_pid``; lib.sh's
    ``our_pid`` (which down.sh stops by) must take it for ours. With only the PID written, the CI
    of 89d238e left that kube-apiserver running after the cluster was down."""
    (tmp_path / "pids").mkdir()
    (tmp_path / "pids" / "napper.start").write_text("1\n")  # the process it replaced
    napper = subprocess.Popen(["sleep", "30"])
    try:
        record_pid(tmp_path, "napper", napper.pid)
        found = subprocess.run(
            ["bash", "-c", f'source "{HACK}/lib.sh" && our_pid napper'],
            env={**os.environ, "MLOPS_CLUSTER_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        napper.kill()
        napper.wait()
    assert found.stdout.strip() == str(napper.pid), found.stderr
