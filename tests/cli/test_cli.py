"""The `mlops` command: exit codes and output, called as `main(argv)`."""

from __future__ import annotations

import json
from pathlib import Path

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
