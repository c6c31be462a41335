"""Manifests: the examples are valid; each broken one fails naming its field, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlops_api import ManifestError, parse_manifest, read_manifest
from mlops_cli.main import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
INVALID = sorted((Path(__file__).parent / "invalid").glob("*.yaml"))


def _expected_path(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <field path>'"
    return first.removeprefix("# expect: ").strip()


def test_there_are_examples_and_enough_invalid_manifests() -> None:
    assert len(EXAMPLES) >= 2
    assert len(INVALID) >= 20


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    obj = read_manifest(path)
    assert obj.metadata.name


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_manifest_names_the_field(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = _expected_path(path)
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "a failure must say why"
    if expected == "<file>":  # whole-file problems: not YAML, not a mapping
        assert all(line.startswith(f"{path}: ") for line in lines)
    else:
        assert any(line.startswith(f"{path}: {expected}: ") for line in lines), err


def test_errors_carry_paths_and_allowed_values() -> None:
    doc = {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "MLOps",
        "metadata": {"name": "x"},
        "spec": {"trainer": {"kind": "gan"}, "data": "gs://b/d", "output": "gs://b/o"},
    }
    with pytest.raises(ManifestError) as info:
        parse_manifest(doc)
    (error,) = info.value.errors
    assert error.path == "spec.trainer.kind"
    assert "vqvae" in error.message and "segmenter" in error.message


def test_unknown_field_lists_allowed_ones() -> None:
    doc = {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "MLOps",
        "metadata": {"name": "x"},
        "spec": {
            "trainer": {"kind": "vqvae", "config": {"batchsize": 2}},
            "data": "gs://b/d",
            "output": "gs://b/o",
        },
    }
    with pytest.raises(ManifestError) as info:
        parse_manifest(doc)
    (error,) = info.value.errors
    assert error.path == "spec.trainer.config.batchsize"
    assert "batch_size" in error.message


def test_every_error_is_reported_at_once() -> None:
    doc = {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "MLOps",
        "metadata": {"name": "x"},
        "spec": {
            "trainer": {"kind": "vqvae"},
            "data": "ftp://x",
            "output": "gs://b/o",
            "epochs": 0,
        },
    }
    with pytest.raises(ManifestError) as info:
        parse_manifest(doc)
    assert {e.path for e in info.value.errors} == {"spec.data", "spec.epochs"}


@pytest.mark.parametrize(
    "url",
    [
        "gs://bucket/a/b",
        "s3://bucket/x",
        "sample://skimage",
        "./local/folder",
        "/abs/folder",
        "file:///tmp/x",
    ],
)
def test_data_urls_accepted(url: str) -> None:
    from mlops_api.spec import DATA_SCHEMES, check_url

    assert check_url(url, DATA_SCHEMES) == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "gs://",
        "gs:///x",
        "ftp://h/x",
        "gs://b/../x",
        "gs://b/x y",
        "gs://b/$(id)",
        "gs://b/`id`",
        "gs://b/x\n",
    ],
)
def test_data_urls_rejected(url: str) -> None:
    from mlops_api.spec import DATA_SCHEMES, check_url

    with pytest.raises(ValueError):
        check_url(url, DATA_SCHEMES)
