"""Finding a run by name: never a run of another namespace, even under the same output prefix."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlops_trainers import storage
from mlops_trainers.checkpoints import find_run, resolve_model_reference
from mlops_trainers.errors import ConfigError


def _fake_run(
    prefix: str, run_id: str, name: str, namespace: str | None, *, step: int, started: float
) -> str:
    """A run folder as the runtime leaves it: run.json and one complete checkpoint manifest."""
    url = storage.join(prefix, run_id)
    storage.write_json(
        storage.join(url, "run.json"),
        {"run_id": run_id, "name": name, "namespace": namespace, "first_started": started},
    )
    manifest = {"global_step": step, "epoch": 1, "step_in_epoch": 0, "kind": "vqvae", "files": {}}
    storage.write_json(
        storage.join(url, "checkpoints", f"step-{step:010d}", "checkpoint.json"), manifest
    )
    return url


def test_runs_of_other_namespaces_never_match(tmp_path: Path) -> None:
    prefix = str(tmp_path / "runs")
    # Same MLOps name in two namespaces and locally, one shared bucket prefix. The other
    # namespace's run is the newest and of a higher generation: it would win on name alone.
    team_a = _fake_run(prefix, "vq-g1-0123abcd", "vq", "team-a", step=10, started=100.0)
    team_b = _fake_run(prefix, "vq-g2-89abcdef", "vq", "team-b", step=20, started=200.0)
    local = _fake_run(prefix, "vq-g1-00000000", "vq", None, step=30, started=300.0)

    assert find_run(prefix, "vq", namespace="team-a") == team_a
    assert find_run(prefix, "vq", namespace="team-b") == team_b
    assert find_run(prefix, "vq", namespace=None) == local
    with pytest.raises(ConfigError, match="only runs of other namespaces"):
        find_run(prefix, "vq", namespace="team-c")

    checkpoint, provenance = resolve_model_reference("vq", prefix, namespace="team-a")
    assert provenance["url"] == team_a
    assert checkpoint.step == 10


def test_a_local_run_does_not_match_a_namespaced_one(tmp_path: Path) -> None:
    prefix = str(tmp_path / "runs")
    _fake_run(prefix, "vq-g1-0123abcd", "vq", "team-a", step=10, started=100.0)
    with pytest.raises(ConfigError, match=r"namespace team-a\)"):
        find_run(prefix, "vq", namespace=None)
