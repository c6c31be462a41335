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


def test_identity_namespace_uid_and_rerun_change_the_id() -> None:
    base = {"namespace": "ml", "uid": "u1"}
    ids = {
        run_id("demo", 1, _spec(), **base),
        run_id("demo", 1, _spec(), namespace="team-a", uid="u1"),
        run_id("demo", 1, _spec(), namespace="ml", uid="u2"),  # deleted and applied again
        run_id("demo", 1, _spec(), **base, rerun="1"),
        run_id("x.y", 1, _spec(), **base),
        run_id("x-y", 1, _spec(), **base),
        run_id("a" * 55 + "1", 1, _spec(), **base),
        run_id("a" * 55 + "2", 1, _spec(), **base),
    }
    assert len(ids) == 8
    assert run_id("demo", 1, _spec(), **base) == run_id("demo", 1, _spec(epochs=10), **base)


def test_run_ids_parse_back() -> None:
    from mlops_trainers.contract import parse_run_id

    rid = run_id("My.Model", 7, _spec(), namespace="ml", uid="u")
    parts = parse_run_id(rid)
    assert parts is not None and (parts.stem, parts.generation) == ("my-model", 7)
    assert parse_run_id("not-a-run") is None


def test_label_values_are_valid_for_every_name() -> None:
    from mlops_api.naming import label_value, run_labels

    for name in ["a", "b" * 62 + "-c", "b" * 62 + ".c", ("b" * 62 + ".") * 4 + "b"]:
        for value in run_labels(name, "r-g1-00000000", 1, "vqvae", "uid").values():
            assert len(value) <= 63
            assert re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]", value), value
    assert label_value("b" * 62 + "-c") == "b" * 62


def test_options_added_later_leave_existing_hashes_and_run_files_alone() -> None:
    """precision and jit_compile came after objects existed: at their defaults they change no
    spec hash (an upgraded operator would otherwise start a fresh run at the next generation,
    e.g. a suspend) and stay out of the run file (an older trainer image refuses unknown keys);
    set, they are a different run and reach the trainer."""
    from mlops_api import parse_manifest
    from mlops_workflows.render import RenderSettings, render

    # The hash of SPEC before these options existed (computed at abdc44e; the golden files pin
    # the run ids of theirs).
    assert spec_hash(_spec()) == "540045c5"
    written = {"kind": "vqvae", "config": {"precision": "auto", "jit_compile": "auto"}}
    assert spec_hash(_spec(trainer=written)) == spec_hash(_spec())
    chosen = {"kind": "vqvae", "config": {"precision": "mixed_bfloat16"}}
    assert spec_hash(_spec(trainer=chosen)) != spec_hash(_spec())

    def run_file(trainer: dict[str, object]) -> str:
        manifest = {
            "apiVersion": "mlops.dev/v1alpha1",
            "kind": "MLOps",
            "metadata": {"name": "demo", "namespace": "ml"},
            "spec": {**SPEC, "trainer": trainer},
        }
        rendered = render(parse_manifest(manifest), RenderSettings())
        return str(rendered.config_map["data"]["run.yaml"])

    assert "precision" not in run_file(written) and "jit_compile" not in run_file(written)
    assert "precision: mixed_bfloat16" in run_file(chosen)
