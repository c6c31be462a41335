"""Issue 14, part 3: what only the run can check fails first, with exit 2, before the data is
prepared or a model is built (a resume source of another trainer kind)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlops_trainers import storage
from mlops_trainers.checkpoints import MANIFEST, WEIGHTS, checkpoint_name
from mlops_trainers.config import RunConfig
from mlops_trainers.contract import EXIT_FATAL
from mlops_trainers.runtime import run
from mlops_trainers.trainers.vqvae.trainer import VQVAETrainer


def _foreign_checkpoint(root: Path) -> str:
    """A complete checkpoint of a pixelcnn run (its manifest says so)."""
    url = str(root / "prior-g1-0123abcd" / "checkpoints" / checkpoint_name(40))
    storage.write_bytes(storage.join(url, WEIGHTS), b"not read")
    storage.write_json(
        storage.join(url, MANIFEST),
        {
            "kind": "pixelcnn",
            "global_step": 40,
            "epoch": 2,
            "step_in_epoch": 0,
            "trainer_config": {"vqvae": "v"},
            "files": {WEIGHTS: len(b"not read")},
        },
    )
    return url


@pytest.mark.parametrize("reference", ["checkpoint", "run folder"])
def test_a_resume_source_of_another_kind_fails_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: str
) -> None:
    source = _foreign_checkpoint(tmp_path / "runs")
    if reference == "run folder":
        source = source.rsplit("/checkpoints/", 1)[0]
    touched: list[str] = []
    for step in ("prepare", "datasets", "build_model"):
        real = getattr(VQVAETrainer, step)
        monkeypatch.setattr(
            VQVAETrainer, step, lambda self, _s=step, _r=real: touched.append(_s) or _r(self)
        )
    output = tmp_path / "runs" / "v-g1-0123abcd"
    config = RunConfig(
        run_id=output.name,
        name="v",
        trainer={"kind": "vqvae", "config": {"image_size": 16}},
        data=str(tmp_path / "no-such-images"),  # would fail too, later: the kind comes first
        output_prefix=str(output.parent),
        output=str(output),
        resume={"from_url": source},
        epochs=1,
        checkpoint_every=10,
    )
    assert run(config) == EXIT_FATAL
    status = storage.read_json(str(output / "status.json"))
    assert status["state"] == "failed" and status["retry"] is False
    assert "cannot start a vqvae run from" in status["error"]
    assert "it is a pixelcnn checkpoint" in status["error"]
    assert touched == []  # no data read, no model built
