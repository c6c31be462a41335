"""The shared runtime, in-process: artifacts and provenance on a local folder and on the GCS
emulator, exit codes, the app-error budget, and new runs started from another run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlops_trainers import storage
from mlops_trainers.checkpoints import latest_checkpoint, list_checkpoints
from mlops_trainers.config import RunConfig
from mlops_trainers.runtime import main, run
from mlops_trainers.trainers.vqvae.trainer import VQVAETrainer
from tiny_vqvae import TINY_VQVAE

TINY = {**TINY_VQVAE}


@pytest.fixture
def make_config(make_run_file: Any, images: str) -> Any:
    def make(prefix: str, run_id: str, **extra: Any) -> dict[str, Any]:
        return _config(make_run_file, prefix, run_id, data=extra.pop("data", images), **extra)

    return make


def _config(make_run_file: Any, prefix: str, run_id: str, **extra: Any) -> dict[str, Any]:
    return make_run_file(
        prefix,
        run_id,
        "vqvae",
        {**TINY, **extra.pop("trainer", {})},
        data=extra.pop("data"),
        epochs=extra.pop("epochs", 2),
        checkpoint_every=extra.pop("checkpoint_every", 3),
        **extra,
    )


@pytest.mark.slow
def test_run_writes_artifacts_and_provenance(
    storage_root: str, tmp_path: Path, make_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    progress = tmp_path / "argo" / "progress"
    progress.parent.mkdir()
    summary_file = tmp_path / "not" / "yet" / "summary.json"
    monkeypatch.setenv("ARGO_PROGRESS_FILE", str(progress))
    monkeypatch.setenv("MLOPS_SUMMARY_FILE", str(summary_file))
    config = make_config(storage_root, "demo-g3-0123abcd", image="trainer:9", generation=3)
    assert run(RunConfig.model_validate(config)) == 0

    out = config["output"]
    names = set(storage.list_dir(out))
    assert {
        "checkpoints",
        "reconstructions",
        "metrics.csv",
        "tb",
        "run.json",
        "status.json",
    } <= names
    assert {"model.keras", "attempts.json"} <= names
    assert storage.list_dir(storage.join(out, "reconstructions")) == [
        "epoch-0001.png",
        "epoch-0002.png",
    ]
    assert any(
        n.startswith("events.out.tfevents") for n in storage.list_dir(storage.join(out, "tb"))
    )
    rows = storage.read_text(storage.join(out, "metrics.csv")).splitlines()
    assert rows[0].startswith("epoch,global_step,time,")
    assert [r.split(",")[:2] for r in rows[1:]] == [["1", "4"], ["2", "8"]]
    # Checkpoints every 3 steps and at each epoch end; the newest three kept.
    assert [c.step for c in list_checkpoints(out)] == [4, 6, 8]
    newest = latest_checkpoint(out)
    assert newest is not None
    assert (newest.epoch, newest.step_in_epoch) == (2, 0)

    record = storage.read_json(storage.join(out, "run.json"))
    assert record["run_id"] == "demo-g3-0123abcd"
    assert record["name"] == "demo"
    assert record["generation"] == 3
    assert record["kind"] == "vqvae"
    assert record["image"] == "trainer:9"
    assert record["config"] == RunConfig.model_validate(config).model_dump(mode="json")
    assert record["package_version"]
    assert record["state"] == "succeeded"
    assert record["started"] <= record["first_started"] + 1e-9 or record["attempt"] > 1
    assert record["ended"]
    assert record["resumed_from"] is None
    assert record["parent"] is None
    assert set(record["final_metrics"]) >= {"loss", "recon_mse", "perplexity", "codes_used"}
    assert record["model"] == storage.join(out, "model.keras")

    status = storage.read_json(storage.join(out, "status.json"))
    assert status["state"] == "succeeded"
    assert status["global_step"] == 8
    summary = json.loads(summary_file.read_text())
    assert summary["latest_checkpoint"] == newest.url
    # The step and the run's steps in all: the operator's exact progress of an ended attempt.
    assert (summary["epoch"], summary["step"], summary["total_steps"]) == (2, 8, 8)
    # Its attempt number (attempts.json), which the operator compares with Argo's attempts.
    assert summary["attempt"] == record["attempt"] == 1
    assert summary["metrics"]["recon_mse"] == pytest.approx(record["final_metrics"]["recon_mse"])
    assert progress.read_text().strip() == "8/8"

    # Started again, the finished run trains no more and says so.
    assert run(RunConfig.model_validate(config)) == 0
    again = storage.read_json(storage.join(out, "run.json"))
    assert again["attempt"] == 2
    assert again["resumed_from"]["step"] == 8
    assert again["first_started"] == record["first_started"]
    assert [c.step for c in list_checkpoints(out)] == [4, 6, 8]


def test_bad_run_files_and_data_exit_2(tmp_path: Path, make_config: Any) -> None:
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    bad = make_config(str(tmp_path / "runs"), "bad-g1-0123abcd")
    bad["trainer"]["config"]["num_embeddings"] = 1  # below the minimum
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert main(["--config", str(tmp_path / "bad.yaml")]) == 2
    (tmp_path / "empty").mkdir()
    nodata = make_config(str(tmp_path / "runs"), "nodata-g1-0123abcd", data=str(tmp_path / "empty"))
    (tmp_path / "nodata.yaml").write_text(yaml.safe_dump(nodata))
    assert main(["--config", str(tmp_path / "nodata.yaml")]) == 2
    status = storage.read_json(storage.join(nodata["output"], "status.json"))
    assert status["state"] == "failed"
    assert status["retry"] is False
    assert "no .png/.jpg images" in status["error"]


def test_app_errors_are_retried_until_the_budget_is_spent(
    tmp_path: Path, make_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Any, model: Any, batch: Any, *_: Any) -> dict[str, float]:
        raise RuntimeError("out of device memory")

    monkeypatch.setattr(VQVAETrainer, "train_step", broken)
    config = RunConfig.model_validate(
        make_config(str(tmp_path / "runs"), "flaky-g1-0123abcd", error_retries=1)
    )
    assert run(config) == 1  # the first failure may be retried
    assert run(config) == 2  # the budget (1) is spent: never again
    attempts = storage.read_json(storage.join(config.output, "attempts.json"))
    assert attempts == {"attempts": 2, "app_errors": 2}
    status = storage.read_json(storage.join(config.output, "status.json"))
    assert "out of device memory" in status["error"]


@pytest.mark.slow
def test_new_runs_start_from_a_parent_run_or_a_checkpoint_url(
    tmp_path: Path, make_config: Any
) -> None:
    prefix = str(tmp_path / "runs")
    parent = make_config(prefix, "base-g1-0123abcd", name="base")
    assert run(RunConfig.model_validate(parent)) == 0
    parent_checkpoint = latest_checkpoint(parent["output"])
    assert parent_checkpoint is not None

    child = make_config(prefix, "child-g1-0123abcd", name="child", resume={"parent_run": "base"})
    assert run(RunConfig.model_validate(child)) == 0
    record = storage.read_json(storage.join(child["output"], "run.json"))
    assert record["parent"]["run_id"] == "base-g1-0123abcd"
    assert record["parent"]["checkpoint"] == parent_checkpoint.url
    assert record["resumed_from"] is None  # a new run: its own steps start at 0
    assert record["global_step"] == 8

    from_url = make_config(
        prefix,
        "fromurl-g1-0123abcd",
        name="fromurl",
        resume={"from_url": parent_checkpoint.url},
    )
    assert run(RunConfig.model_validate(from_url)) == 0
    record = storage.read_json(storage.join(from_url["output"], "run.json"))
    assert record["parent"]["checkpoint"] == parent_checkpoint.url

    # A checkpoint of another model shape is a config error, not a crash to retry.
    other = make_config(
        prefix,
        "wide-g1-0123abcd",
        name="wide",
        trainer={"base_filters": 16},
        resume={"from_url": parent["output"]},
    )
    assert run(RunConfig.model_validate(other)) == 2


def test_run_json_records_where_each_attempt_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that fell back from spot to on-demand nodes says so in its provenance."""
    import json

    from mlops_trainers.config import RunConfig
    from mlops_trainers.contract import PLACEMENT_ENV
    from mlops_trainers.run_record import RunRecord

    config = RunConfig.model_validate(
        {
            "run_id": "r-g1-00000000",
            "name": "r",
            "trainer": {"kind": "vqvae", "config": {}},
            "data": "sample://skimage",
            "output_prefix": str(tmp_path),
            "output": str(tmp_path / "r-g1-00000000"),
            "epochs": 1,
            "checkpoint_every": 1,
        }
    )
    for placement in ("spot", "on-demand"):
        monkeypatch.setenv(PLACEMENT_ENV, placement)
        record = RunRecord(config)
        record.begin()
        record.started(total_steps=1, inputs={})
    saved = json.loads((tmp_path / "r-g1-00000000" / "run.json").read_text())
    assert saved["placement"] == "on-demand"
    assert [(p["attempt"], p["placement"]) for p in saved["placements"]] == [
        (1, "spot"),
        (2, "on-demand"),
    ]


def test_the_progress_file_is_rewritten_at_most_every_second(
    tmp_path: Path, make_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Argo reads ARGO_PROGRESS_FILE every 3 s; each rewrite cost about 0.6 ms a step here. So
    it is written at the first step, then at most every PROGRESS_EVERY_S, at each checkpoint
    (never less than the newest checkpoint: a stop checkpoints first) and at the last step;
    MLOPS_PROGRESS_EVERY_S=0 writes every step."""
    from mlops_trainers import run_record

    progress = tmp_path / "progress"
    monkeypatch.setenv("ARGO_PROGRESS_FILE", str(progress))
    config = RunConfig.model_validate(make_config(str(tmp_path / "runs"), "prog-g1-0123abcd"))
    written: list[str] = []
    real = run_record._write_local_atomic

    def counted(path: Path, text: str) -> None:
        written.append(text.strip())
        real(path, text)

    monkeypatch.setattr(run_record, "_write_local_atomic", counted)
    clock = [1000.0]
    monkeypatch.setattr(run_record, "_clock", lambda: clock[0])
    record = run_record.RunRecord(config)
    record.total_steps = 10
    assert record.progress_every == run_record.PROGRESS_EVERY_S == 1.0
    for step in range(1, 10):
        record.state.global_step = step
        record.stepped()
        clock[0] += 0.3 if step != 7 else 0.0  # 0.3 s a step
        if step == 6:
            record.write_progress()  # as checkpointed() does
    # Step 1 at once; step 5 (1.2 s on); the checkpoint at 6; step 10 (the last) below.
    assert written == ["1/10", "5/10", "6/10"]
    record.state.global_step = 10
    record.stepped()
    assert written[-1] == "10/10" == progress.read_text().strip()

    monkeypatch.setenv(run_record.PROGRESS_EVERY_ENV, "0")
    every = run_record.RunRecord(config)
    every.total_steps, written[:] = 10, []
    for step in range(1, 4):
        every.state.global_step = step
        every.stepped()
    assert written == ["1/10", "2/10", "3/10"]
    for bad in ("-1", "soon", "nan"):
        monkeypatch.setenv(run_record.PROGRESS_EVERY_ENV, bad)
        with pytest.raises(ValueError, match="MLOPS_PROGRESS_EVERY_S"):
            run_record.RunRecord(config)
