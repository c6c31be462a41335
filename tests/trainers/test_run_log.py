"""Each attempt leaves its own log next to the run's results, whichever way it ends: a finished
run, a run stopped by SIGTERM (as a spot preemption), and a failing run, on a local folder and on
the GCS emulator. The SIGTERM'd attempt runs as a real subprocess, as in a pod."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from mlops_trainers import storage
from mlops_trainers.config import RunConfig
from mlops_trainers.contract import attempt_log
from mlops_trainers.runtime import run
from mlops_trainers.trainers.vqvae.trainer import VQVAETrainer
from tiny_vqvae import TINY_VQVAE

pytestmark = pytest.mark.slow

TINY = {**TINY_VQVAE, "steps_per_epoch": 40, "reconstructions": 0}
DEADLINE_S = 240.0


def _lines(output: str, attempt: int) -> list[str]:
    return storage.read_text(storage.join(output, attempt_log(attempt))).splitlines()


def test_each_attempt_leaves_its_log(
    storage_root: str,
    tmp_path: Path,
    images: str,
    make_run_file: Any,
    trainer_process: Any,
) -> None:
    config = make_run_file(
        storage_root, "logged-g1-0123abcd", "vqvae", TINY, data=images, epochs=2, checkpoint_every=5
    )
    output = config["output"]

    # 1. Attempt 1, a pod preempted mid-epoch: SIGTERM, checkpoint, exit 143.
    process, _ = trainer_process(config, tmp_path, timeout=DEADLINE_S)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=DEADLINE_S) == 143
    lines = _lines(output, 1)
    assert "run logged-g1-0123abcd, attempt 1: vqvae" in lines[0]
    assert any("received signal 15" in line for line in lines)
    assert any("checkpoint " in line for line in lines)
    assert "WARNING stopped at global step" in lines[-1] and lines[-1].endswith("exit 143")

    # 2. Attempt 2 resumes and finishes: its own file, attempt 1's kept as it was.
    run_config = RunConfig.model_validate(config)
    assert run(run_config) == 0
    lines = _lines(output, 2)
    assert any("resumed from" in line for line in lines)
    assert "INFO run logged-g1-0123abcd done:" in lines[-1]
    assert _lines(output, 1)[-1].endswith("exit 143")

    # 3. Attempt 1 of another run fails in its first step: the traceback is in its log.
    def broken(self: Any, model: Any, batch: Any, *_: Any) -> dict[str, float]:
        raise RuntimeError("out of device memory")

    failing = RunConfig.model_validate(
        make_run_file(
            storage_root,
            "broken-g1-0123abcd",
            "vqvae",
            TINY,
            data=images,
            epochs=1,
            checkpoint_every=5,
            error_retries=1,
        )
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(VQVAETrainer, "train_step", broken)
        assert run(failing) == 1
    text = "\n".join(_lines(failing.output, 1))
    assert "Traceback (most recent call last)" in text
    assert "RuntimeError: out of device memory" in text
    assert _lines(failing.output, 1)[-1].endswith("ERROR exit 1 (will be retried)")
