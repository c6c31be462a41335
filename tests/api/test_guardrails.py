"""The cluster's guardrails: allowed image and bucket prefixes, a GPU cap per run."""

from __future__ import annotations

from typing import Any

import pytest
from mlops_api import MLOpsSpec
from mlops_api.guardrails import Guardrails, check_guardrails, under_prefix

RULES = Guardrails(
    image_prefixes=("registry.example/ml/",),
    data_prefixes=("gs://team-a-data",),
    output_prefixes=("gs://team-a-runs/",),
    max_gpus=2,
)
GOOD: dict[str, Any] = {
    "trainer": {"kind": "vqvae"},
    "image": "registry.example/ml/trainer:1.0",
    "data": "gs://team-a-data/frames/",
    "output": "gs://team-a-runs/exp",
    "resources": {"gpu": {"count": 2}},
}


def _spec(**changes: Any) -> MLOpsSpec:
    return MLOpsSpec.model_validate({**GOOD, **changes})


def test_a_spec_within_the_rules_passes() -> None:
    assert check_guardrails(_spec(), RULES) == []
    assert check_guardrails(_spec(data="sample://skimage"), RULES) == []  # bundled data
    assert Guardrails().empty and check_guardrails(_spec(image="evil.io/x:1"), Guardrails()) == []


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"image": "docker.io/evil/trainer:1"}, "spec.image"),
        ({"image": "registry.example/mlx/trainer:1"}, "spec.image"),  # not a path boundary
        ({"data": "gs://team-a-data-leak/x"}, "spec.data"),
        ({"data": "s3://elsewhere/x"}, "spec.data"),
        ({"output": "gs://team-b-runs/exp"}, "spec.output"),
        ({"resume": {"from": "gs://team-b-runs/r1"}}, "spec.resume.from"),
        ({"resources": {"gpu": {"count": 3}}}, "spec.resources.gpu.count"),
    ],
)
def test_each_rule_names_the_field_and_what_is_allowed(changes: dict[str, Any], path: str) -> None:
    (error,) = check_guardrails(_spec(**changes), RULES)
    assert error.path == path
    assert "not allowed" in error.message or "at most 2" in error.message


def test_prefixes_match_at_path_boundaries() -> None:
    assert under_prefix("gs://a/b", "gs://a")
    assert under_prefix("gs://a", "gs://a/")
    assert not under_prefix("gs://ab/c", "gs://a")
    assert under_prefix("registry.example/ml/t:1", "registry.example/ml/")
    assert under_prefix("registry.example/ml/t:1", "registry.example/ml/t:")
