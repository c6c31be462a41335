"""The `mlops` command: exit codes and output, called as `main(argv)`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from mlops_cli.main import main

ROOT = Path(__file__).resolve().parents[2]
VQVAE = str(ROOT / "examples" / "vqvae.yaml")


def test_validate_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", VQVAE]) == 0
    assert "valid" in capsys.readouterr().out


def test_validate_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "/nonexistent.yaml"]) == 1
    err = capsys.readouterr().err
    assert "cannot read" in err and "Traceback" not in err


def test_render_prints_config_map_then_workflow(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", VQVAE, "-n", "team-a"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["kind"] for d in docs] == ["ConfigMap", "Workflow"]
    assert {d["metadata"]["namespace"] for d in docs} == {"team-a"}


def test_schema_is_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "spec" in schema["properties"]


def test_crd_is_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crd"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["kind"] == "CustomResourceDefinition"


def test_usage_error_exit_code() -> None:
    assert main(["no-such-command"]) == 2
    assert main([]) == 2


# === kubectl habits: stdin, folders, several documents, -o json ===


def _two_documents(tmp_path: Path) -> Path:
    """examples/vqvae.yaml twice in one file, the second under another name."""
    first = yaml.safe_load(Path(VQVAE).read_text())
    second = {**first, "metadata": {**first["metadata"], "name": "vqvae-two"}}
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump_all([first, second]))
    return path


def test_validate_reads_stdin(monkeypatch: pytest.MonkeyPatch, capfd: Any) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(Path(VQVAE).read_text()))
    assert main(["validate", "--no-memory", "-f", "-"]) == 0
    assert capfd.readouterr().out.startswith("<stdin>: valid (vqvae, run ")


def test_validate_several_documents_one_line_each(tmp_path: Path, capfd: Any) -> None:
    path = _two_documents(tmp_path)
    assert main(["validate", "--no-memory", str(path)]) == 0
    lines = capfd.readouterr().out.splitlines()
    assert [line.split(": ")[0] for line in lines] == [f"{path}[1]", f"{path}[2]"]


def test_a_folder_is_its_manifests(tmp_path: Path, capfd: Any) -> None:
    _two_documents(tmp_path)
    (tmp_path / "one.yml").write_text(Path(VQVAE).read_text())
    (tmp_path / "notes.txt").write_text("not a manifest")
    assert main(["validate", "--no-memory", str(tmp_path)]) == 0
    labels = [line.split(": ")[0] for line in capfd.readouterr().out.splitlines()]
    assert labels == [f"{tmp_path}/one.yml", f"{tmp_path}/two.yaml[1]", f"{tmp_path}/two.yaml[2]"]


def test_render_several_documents_as_json(tmp_path: Path, capfd: Any) -> None:
    assert main(["render", "-o", "json", str(_two_documents(tmp_path))]) == 0
    listed = json.loads(capfd.readouterr().out)
    assert listed["kind"] == "List"
    assert [i["kind"] for i in listed["items"]] == ["ConfigMap", "Workflow"] * 2
    assert main(["render", "-o", "yaml", VQVAE]) == 0
    assert len(list(yaml.safe_load_all(capfd.readouterr().out))) == 2


def test_version_and_pass_through_help(capfd: Any) -> None:
    assert main(["--version"]) == 0
    assert capfd.readouterr().out.strip() == f"mlops {version('mlops-operator')}"
    # argparse.REMAINDER used to refuse it (exit 2): the subcommand's own parser answers.
    assert main(["skymask", "--help"]) == 0
    assert "--out" in capfd.readouterr().out


def test_completion_script() -> None:
    env = {**os.environ, "_MLOPS_COMPLETE": "bash_source"}
    done = subprocess.run(
        [sys.executable, "-m", "mlops_cli"], env=env, capture_output=True, text=True, check=True
    )
    assert "_mlops_completion" in done.stdout


# === error lines: the file once, and a suggestion ===


def _broken(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    manifest = yaml.safe_load(Path(VQVAE).read_text())
    change(manifest)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def test_misspelt_field_and_trainer_kind_suggest_the_right_one(tmp_path: Path, capfd: Any) -> None:
    def misspell(m: dict[str, Any]) -> None:
        m["spec"]["trainer"]["config"]["batchsize"] = m["spec"]["trainer"]["config"].pop(
            "batch_size", 8
        )

    assert main(["validate", "--no-memory", str(_broken(tmp_path, misspell))]) == 1
    assert "unknown field (did you mean 'batch_size'?)" in capfd.readouterr().err

    def kind(m: dict[str, Any]) -> None:
        m["spec"]["trainer"]["kind"] = "vqave"

    assert main(["validate", "--no-memory", str(_broken(tmp_path, kind))]) == 1
    assert "unknown trainer 'vqave' (did you mean 'vqvae'?)" in capfd.readouterr().err


def test_the_file_is_named_once_per_error_line(tmp_path: Path, capfd: Any) -> None:
    missing = tmp_path / "missing.yaml"
    assert main(["validate", str(missing)]) == 1
    (line,) = capfd.readouterr().err.splitlines()
    assert line.count(str(missing)) == 1, line
    # Each document's errors, every line naming the file (and the document) once.
    doubled = tmp_path / "doubled.yaml"
    wrong = yaml.safe_load(Path(VQVAE).read_text())
    wrong["spec"]["epoch"] = wrong["spec"]["trainer"]["config"]["batch_size"] = 0
    doubled.write_text(yaml.safe_dump_all([wrong, wrong]))
    assert main(["run", str(doubled), "-o", str(tmp_path / "out")]) == 1
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 4 and not (tmp_path / "out").exists()
    for line in lines:
        assert line.count(str(doubled)) == 1, line
    assert lines[0].startswith(f"{doubled}[1]: spec.")
    assert lines[2].startswith(f"{doubled}[2]: spec.")


def test_integer_cpu_is_a_quantity(tmp_path: Path, capfd: Any) -> None:
    def cpu(m: dict[str, Any]) -> None:
        m["spec"]["resources"] = {"cpu": 4, "memory": "1500Mi", "gpu": {"count": 0}}

    assert main(["validate", "--no-memory", str(_broken(tmp_path, cpu))]) == 0

    def wrong(m: dict[str, Any]) -> None:
        m["spec"]["resources"] = {"cpu": "4 cores"}

    assert main(["validate", "--no-memory", str(_broken(tmp_path, wrong))]) == 1
    assert "spec.resources.cpu: is not a Kubernetes quantity" in capfd.readouterr().err


# === mlops run: what changes the training changes the run id ===

TINY = {"steps_per_epoch": 2, "reconstructions": 2, "batch_size": 4}


def _run_id(err: str) -> str:
    (line,) = [line for line in err.splitlines() if line.startswith("run ")]
    return line.split()[1].rstrip(":")


def test_overrides_make_new_runs_and_provenance_names_what_was_read(
    tmp_path: Path, capfd: Any
) -> None:
    from PIL import Image

    manifest = yaml.safe_load(Path(VQVAE).read_text())
    manifest["spec"]["epochs"] = 1
    manifest["spec"]["trainer"]["config"].update(TINY)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(manifest))
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "out"

    def mlops_run(*flags: str) -> tuple[str, dict[str, Any]]:
        assert main(["run", str(path), "-o", str(out), "--no-progress", *flags]) == 0
        run = _run_id(capfd.readouterr().err)
        return run, json.loads((out / run / "run.json").read_text())

    first, record = mlops_run()
    assert record["state"] == "succeeded" and record["config"]["data"] == manifest["spec"]["data"]
    # Other data is another run: it used to reuse the run id, "resume" the finished run without
    # training, and rewrite run.json to name data it never read.
    other, record = mlops_run("--data", str(images))
    assert other != first
    assert record["config"]["data"] == str(images)
    assert record["inputs"]["data"] == {"url": str(images), "images": 8}
    assert record["config"]["overrides"] == {"spec.data": str(images)}
    assert (
        json.loads((out / first / "run.json").read_text())["config"]["data"]
        == (manifest["spec"]["data"])
    )
    # --set: another config, another run, recorded.
    changed, record = mlops_run("--set", "trainer.config.learning_rate=0.0005")
    assert changed not in (first, other)
    assert record["config"]["trainer"]["config"]["learning_rate"] == 0.0005
    assert record["config"]["overrides"] == {"spec.trainer.config.learning_rate": 0.0005}
    # The same run again: finished already, nothing trained, nothing rewritten.
    before = (out / first / "run.json").read_text()
    assert main(["run", str(path), "-o", str(out)]) == 0
    assert "already finished" in capfd.readouterr().err
    assert (out / first / "run.json").read_text() == before
    # --fresh: trained again under a new id; the old run stays.
    fresh, record = mlops_run("--fresh")
    assert fresh != first and record["state"] == "succeeded"
    assert (out / first / "run.json").read_text() == before


def test_set_is_validated_like_the_manifest(tmp_path: Path, capfd: Any) -> None:
    assert main(["run", VQVAE, "-o", str(tmp_path), "--set", "trainer.config.batch_size=0"]) == 1
    assert "spec.trainer.config.batch_size: " in capfd.readouterr().err
    assert main(["run", VQVAE, "-o", str(tmp_path), "--set", "epochs"]) == 2
