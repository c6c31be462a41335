"""Run ids are deterministic from (name, generation, spec) and fit a DNS label."""

from __future__ import annotations

import re

from mlops_api import MLOpsSpec
from mlops_api.naming import run_id, spec_hash

SPEC = {"trainer": {"kind": "vqvae"}, "data": "gs://b/d", "output": "gs://b/o"}


def _spec(**changes: object) -> MLOpsSpec:
    return MLOpsSpec.model_validate({**SPEC, **changes})


def test_same_input_same_id() -> None:
    assert run_id("demo", 1, _spec()) == run_id("demo", 1, _spec())


def test_explicit_default_is_the_same_spec() -> None:
    assert spec_hash(_spec()) == spec_hash(_spec(epochs=10))


def test_generation_and_spec_change_the_id() -> None:
    ids = {
        run_id("demo", 1, _spec()),
        run_id("demo", 2, _spec()),
        run_id("demo", 1, _spec(epochs=3)),
    }
    assert len(ids) == 3


def test_long_and_dotted_names_fit_a_dns_label() -> None:
    rid = run_id("a" * 200 + ".b", 12345, _spec())
    assert len(rid) <= 63
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", rid)
    assert run_id("x.y", 1, _spec()).startswith("x-y-g1-")
