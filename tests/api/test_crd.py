"""The CRD is generated from the models, structural, and the committed copy never drifts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from mlops_api.crd import build_crd

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "charts" / "mlops-operator" / "crds" / "mlops.dev_mlops.yaml"


def test_committed_crd_matches_models() -> None:
    committed = yaml.safe_load(COMMITTED.read_text())
    assert committed == build_crd(), "CRD drifted from the models: run `make generate`"


def _walk(node: Any, path: str, problems: list[str]) -> None:
    if not isinstance(node, dict):
        return
    for banned in ("$ref", "anyOf", "oneOf", "allOf", "$defs", "const", "title"):
        if banned in node:
            problems.append(f"{path}: has {banned}")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties together")
    if not any(
        k in node
        for k in ("type", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string")
    ):
        problems.append(f"{path}: no type")
    for key, child in node.get("properties", {}).items():
        _walk(child, f"{path}.{key}", problems)
    if isinstance(node.get("items"), dict):
        _walk(node["items"], f"{path}[]", problems)
    if isinstance(node.get("additionalProperties"), dict):
        _walk(node["additionalProperties"], f"{path}{{}}", problems)


def test_schema_is_structural() -> None:
    version = build_crd()["spec"]["versions"][0]
    problems: list[str] = []
    _walk(version["schema"]["openAPIV3Schema"], "", problems)
    assert problems == []


def test_status_subresource_and_preserved_status() -> None:
    version = build_crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Trainer", "Age"} <= columns


def test_spec_requires_trainer_data_output() -> None:
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert set(spec["required"]) == {"trainer", "data", "output"}
    # Every trainer folder, in name order (mlops_trainers.registry).
    assert spec["properties"]["trainer"]["properties"]["kind"]["enum"] == [
        "floodpred",
        "maskgit",
        "pixelcnn",
        "segmenter",
        "tokenizer",
        "vle",
        "vqvae",
    ]
