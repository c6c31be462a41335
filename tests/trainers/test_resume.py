"""Preemption: a training process killed mid-epoch (SIGTERM, then SIGKILL) resumes from its last
checkpoint, loses at most one checkpoint interval, and ends with the weights (and optimizer
state) of an uninterrupted run; the VQ-VAE on a local folder and on the GCS emulator, every other
trainer kind with randomness of its own (drawn per step) on a local folder.

The trainers run as real subprocesses (``python -m mlops_trainers --config FILE``), as in a pod.
Progress is read from ``ARGO_PROGRESS_FILE``, which the runtime rewrites after every step here
(``MLOPS_PROGRESS_EVERY_S=0``; by default at most every second).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from h5_arrays import h5_arrays
from mlops_trainers import storage

pytestmark = pytest.mark.slow

CONFIG = {
    "image_size": 16,
    "channels": 3,
    "batch_size": 8,
    "learning_rate": 2e-3,
    "base_filters": 8,
    "downsample": 2,
    "residual_blocks": 1,
    "latent_dim": 4,
    "num_embeddings": 16,
    "steps_per_epoch": 12,
    "reconstructions": 2,
}
EPOCHS = 3
EVERY = 5
STEPS_PER_EPOCH = 12  # every case: 3 epochs of 12 steps, a checkpoint every 5
TOTAL = EPOCHS * STEPS_PER_EPOCH
DEADLINE_S = 240.0


@dataclass(frozen=True)
class Parent:
    """A run a case reads (a prior's tokenizer): trained once, named in ``config[field]``."""

    field: str
    kind: str
    config: dict[str, Any]
    data: str


def train_parent(make_run_file: Any, parent: Parent, folder: str, run_id: str) -> dict[str, Any]:
    """Train ``parent`` (the tiny run whose codes a prior trains on) in this process, one epoch;
    its run file."""
    from mlops_trainers.config import RunConfig
    from mlops_trainers.runtime import run

    config = make_run_file(
        folder, run_id, parent.kind, parent.config, data=parent.data, epochs=1,
        checkpoint_every=100,
    )  # fmt: skip
    assert run(RunConfig.model_validate(config)) == 0
    return dict(config)


@dataclass(frozen=True)
class Case:
    """A trainer kind's tiny run: its config (``steps_per_epoch`` = STEPS_PER_EPOCH) and data."""

    kind: str
    config: dict[str, Any]
    data: str
    parent: Parent | None = None


CASES = {
    "vqvae": Case("vqvae", CONFIG, "sample://skimage"),
    # T drawn per step and the mask head resume (the baselines are plain weights, left out here
    # to keep the test short: each process traces the whole unrolled loop).
    "vle": Case(
        "vle",
        {
            "image_size": 16,
            "channels": 1,
            "batch_size": 8,
            "learning_rate": 2e-3,
            "max_tokens": 2,
            "variant": "mask",
            "filters": 8,
            "downsample": 1,
            "latent_channels": 8,
            "baseline": False,
            "validation_images": 8,
            "steps_per_epoch": STEPS_PER_EPOCH,
            "previews": 2,
        },
        "sample://fashion-mnist-canvases",
    ),
    # Windows drawn per epoch, rotations per step, normalisation recomputed on every restart.
    "floodpred": Case(
        "floodpred",
        {
            "past": 2,
            "future": 2,
            "window_stride": 2,
            "batch_size": 4,
            "learning_rate": 1e-3,
            "filters": 8,
            "downsample": 1,
            "latent_blocks": 1,
            "augment": True,
            "steps_per_epoch": STEPS_PER_EPOCH,
            "predictions": 1,
        },
        "sample://shallow-water",
    ),
    # Masks drawn per step, over the codes of a tokenizer run named by its URL.
    "maskgit": Case(
        "maskgit",
        {
            "batch_size": 8,
            "learning_rate": 2e-3,
            "dim": 16,
            "layers": 1,
            "heads": 2,
            "mlp_dim": 32,
            "decode_steps": 4,
            "validation_grids": 8,
            "steps_per_epoch": STEPS_PER_EPOCH,
            "samples": 0,  # the sampler holds no state; the quality test draws samples
        },
        "sample://webcam",
        Parent(
            "tokenizer",
            "tokenizer",
            {
                "image_size": 16,
                "channels": 3,
                "batch_size": 8,
                "base_filters": 8,
                "channel_multipliers": [1, 2, 2],
                "groups": 4,
                "latent_dim": 4,
                "num_embeddings": 16,
                "sky_mask": {"enabled": False},
                "steps_per_epoch": 4,
                "reconstructions": 0,
            },
            "sample://webcam",
        ),
    ),
}


class Trainer:
    """One trainer process on a run file, with its progress and summary files."""

    def __init__(self, run_file: Path, workdir: Path, env: dict[str, str], tag: str) -> None:
        self.progress = workdir / f"progress-{tag}"
        self.summary = workdir / "summary" / f"{tag}.json"  # its folder does not exist yet
        self.log = workdir / f"trainer-{tag}.log"
        env = {
            **env,
            "ARGO_PROGRESS_FILE": str(self.progress),
            "MLOPS_PROGRESS_EVERY_S": "0",  # every step: the kills land at the steps aimed at
            "MLOPS_SUMMARY_FILE": str(self.summary),
        }
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mlops_trainers", "--config", str(run_file)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def step(self) -> int:
        try:
            return int(self.progress.read_text().split("/")[0])
        except (FileNotFoundError, ValueError):
            return -1

    def wait_for_step(self, target: int) -> int:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            done = self.step()
            if done >= target:
                return done
            if self.process.poll() is not None:
                pytest.fail(
                    f"trainer exited {self.process.returncode} early:\n{self.log.read_text()}"
                )
            time.sleep(0.01)
        self.process.kill()
        pytest.fail(f"no step {target} within {DEADLINE_S}s:\n{self.log.read_text()}")

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"trainer did not finish in {DEADLINE_S}s:\n{self.log.read_text()}")


def _run_file(tmp_path: Path, make_run_file: Any, case: Case, prefix: str, run_id: str) -> Path:
    assert case.config["steps_per_epoch"] == STEPS_PER_EPOCH
    config = make_run_file(
        prefix,
        run_id,
        case.kind,
        case.config,
        data=case.data,
        epochs=EPOCHS,
        checkpoint_every=EVERY,
        seed=7,
    )
    path = tmp_path / f"{run_id}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _final_weights(output: str, scratch: Path) -> dict[str, np.ndarray]:
    """Every array of the last checkpoint's weights file (model and optimizer), by path."""
    from mlops_trainers.checkpoints import latest_checkpoint

    checkpoint = latest_checkpoint(output)
    assert checkpoint is not None and checkpoint.step == TOTAL
    local = scratch / f"{abs(hash(output))}.weights.h5"
    storage.get_file(checkpoint.weights_url, local)
    arrays = h5_arrays(local)
    assert arrays
    return arrays


@pytest.fixture(scope="module", params=sorted(CASES))
def uninterrupted(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    make_run_file: Any,
    subprocess_env: Any,
) -> tuple[Case, dict[str, np.ndarray], str]:
    """A case, and the weights and metrics.csv of its run trained without interruption."""

    case = CASES[request.param]
    tmp = tmp_path_factory.mktemp(f"uninterrupted-{case.kind}")
    if case.parent is not None:
        # Trained once, in this process; both runs of the case name it by its URL.
        parent = case.parent
        config = train_parent(make_run_file, parent, str(tmp / "parents"), "parent-g1-0123abcd")
        case = replace(case, config={**case.config, parent.field: config["output"]})
    path = _run_file(tmp, make_run_file, case, str(tmp / "runs"), "straight-g1-0123abcd")
    trainer = Trainer(path, tmp, subprocess_env(), "straight")
    assert trainer.wait() == 0, trainer.log.read_text()
    output = str(tmp / "runs" / "straight-g1-0123abcd")
    weights = _final_weights(output, tmp)
    return case, weights, storage.read_text(storage.join(output, "metrics.csv"))


def test_killed_runs_resume_and_match_an_uninterrupted_run(
    tmp_path: Path,
    storage_root: str,
    make_run_file: Any,
    subprocess_env: Any,
    uninterrupted: tuple[Case, dict[str, np.ndarray], str],
) -> None:
    from mlops_trainers.checkpoints import latest_checkpoint

    case, weights, metrics = uninterrupted
    if case.kind != "vqvae" and storage_root.startswith("gs://"):
        pytest.skip("storage is the same for every kind: the GCS emulator runs the VQ-VAE only")
    run_id = "killed-g1-0123abcd"
    output = storage.join(storage_root, run_id)
    path = _run_file(tmp_path, make_run_file, case, storage_root, run_id)
    # Its own temp folder: what the attempts leave there is checked at the end.
    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    env = {**subprocess_env(), "TMPDIR": str(scratch_root)}

    # 1. SIGTERM mid-epoch (a spot preemption): checkpoint at that very step, exit 143.
    first = Trainer(path, tmp_path, env, "sigterm")
    seen = first.wait_for_step(EVERY + 3)
    first.process.send_signal(signal.SIGTERM)
    assert first.wait() == 143, first.log.read_text()
    summary = json.loads(first.summary.read_text())
    assert summary["state"] == "preempted"
    checkpoint = latest_checkpoint(output)
    assert checkpoint is not None
    assert checkpoint.step >= seen > EVERY  # nothing lost: the step it stopped at was saved
    assert summary["latest_checkpoint"] == checkpoint.url
    assert summary["step"] == checkpoint.step
    assert storage.read_json(storage.join(output, "status.json"))["state"] == "preempted"

    # 2. Restarted, it resumes there; SIGKILL (no chance to checkpoint) a few steps past the
    #    next periodic checkpoint.
    second = Trainer(path, tmp_path, env, "sigkill")
    target = (checkpoint.step // EVERY + 2) * EVERY + 2
    assert target < TOTAL
    killed_at = second.wait_for_step(target)
    second.process.send_signal(signal.SIGKILL)
    assert second.wait() == -signal.SIGKILL
    record = storage.read_json(storage.join(output, "run.json"))
    assert record["resumed_from"]["step"] == checkpoint.step

    # 3. Restarted again, it finishes from the last complete checkpoint.
    third = Trainer(path, tmp_path, env, "final")
    assert third.wait() == 0, third.log.read_text()
    record = storage.read_json(storage.join(output, "run.json"))
    resumed = int(record["resumed_from"]["step"])
    assert killed_at - resumed <= EVERY, (killed_at, resumed)
    assert record["state"] == "succeeded"
    assert record["attempt"] == 3
    assert record["global_step"] == TOTAL
    assert json.loads(third.summary.read_text())["state"] == "succeeded"
    assert third.progress.read_text().strip() == f"{TOTAL}/{TOTAL}"
    # The SIGKILLed attempt never ran its cleanup; the next attempt removed its scratch folder
    # (checkpoint copies: on a laptop, every killed run would leave one in /tmp for good).
    # (TensorFlow's autograph leaves its own generated files there; those are not ours.)
    assert sorted(p.name for p in scratch_root.glob("mlops-*")) == []

    # Same batches, same optimizer state, same quantizer RNG, the same draws per step: the
    # same model, optimizer and epoch metrics.
    ours = _final_weights(output, tmp_path)
    assert ours.keys() == weights.keys()
    for name, array in ours.items():
        np.testing.assert_allclose(array, weights[name], rtol=1e-4, atol=1e-5, err_msg=name)
    ours_rows = storage.read_text(storage.join(output, "metrics.csv")).splitlines()
    theirs_rows = metrics.splitlines()
    assert ours_rows[0] == theirs_rows[0]
    for mine, straight in zip(ours_rows[1:], theirs_rows[1:], strict=True):
        # Empty cells: a metric only some epochs have (e.g. the test split's, at the last one).
        a = [float(v or "nan") for v in mine.split(",")[3:]]
        b = [float(v or "nan") for v in straight.split(",")[3:]]
        np.testing.assert_allclose(a, b, rtol=1e-3)
