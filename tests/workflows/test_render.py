"""Rendering: golden files (hera style), determinism, Argo's full schema, and what the YAML promises."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from mlops_api import ManifestError, parse_manifest, read_manifest
from mlops_trainers.config import TRAINER_KINDS, RunConfig
from mlops_workflows import render as module
from mlops_workflows.render import RenderSettings, render, retry_expression, to_yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
GOLDEN = ROOT / "tests" / "golden"
ARGO_SCHEMA = ROOT / "tests" / "schemas" / "argo-workflows-v3.7.18.schema.json"
# Golden files are rewritten only on request, never in CI (hera's tests/test_examples.py habit).
REGENERATE = os.environ.get("MLOPS_REGEN_GOLDEN") == "1" and os.environ.get("CI") != "true"


@cache
def _validator() -> jsonschema.Draft7Validator:
    schema = json.loads(ARGO_SCHEMA.read_text())
    schema["$ref"] = "#/definitions/io.argoproj.workflow.v1alpha1.Workflow"
    schema.pop("oneOf", None)
    return jsonschema.Draft7Validator(schema)


def _manifest(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"trainer": {"kind": "vqvae"}, "data": "gs://b/d", "output": "gs://b/o"}
    return {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "MLOps",
        "metadata": {"name": "t", "namespace": "ml"},
        "spec": {**base, **spec},
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_golden(path: Path) -> None:
    rendered = to_yaml(render(read_manifest(path)))
    golden = GOLDEN / f"{path.stem}.yaml"
    if REGENERATE:
        golden.write_text(rendered)
    assert golden.exists(), f"no golden file: run MLOPS_REGEN_GOLDEN=1 pytest {__file__}"
    assert rendered == golden.read_text(), (
        f"{golden.name} differs: review, then MLOPS_REGEN_GOLDEN=1"
    )


def test_every_example_has_a_golden_file_and_no_golden_file_is_orphaned() -> None:
    # One example per trainer kind, each pinned by a golden file; a removed example takes its
    # golden file with it.
    assert {p.stem for p in EXAMPLES} == {p.stem for p in GOLDEN.glob("*.yaml")}
    kinds = {read_manifest(p).spec.trainer.kind for p in EXAMPLES}
    assert kinds == set(TRAINER_KINDS)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_rendering_is_byte_identical(path: Path) -> None:
    assert to_yaml(render(read_manifest(path))) == to_yaml(render(read_manifest(path)))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_workflow_validates_against_argo_schema(path: Path) -> None:
    workflow = render(read_manifest(path)).workflow
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in _validator().iter_errors(workflow)]
    assert errors == []


def test_schema_validator_catches_a_broken_workflow() -> None:
    workflow = render(parse_manifest(_manifest())).workflow
    workflow["spec"]["templates"][0]["container"]["imagePullPolicy"] = 5
    assert list(_validator().iter_errors(workflow))


def test_config_map_holds_the_run_file() -> None:
    rendered = render(parse_manifest(_manifest(epochs=3, seed=7)))
    cm = rendered.config_map
    assert cm["metadata"]["name"] == f"{rendered.plan.run_id}-config"
    assert cm["immutable"] is True
    config = RunConfig.model_validate(yaml.safe_load(cm["data"]["run.yaml"]))
    assert config == rendered.plan.config
    assert (config.epochs, config.seed, config.run_id) == (3, 7, rendered.plan.run_id)
    assert config.output == f"gs://b/o/{rendered.plan.run_id}"


def test_labels_link_back_to_the_object() -> None:
    rendered = render(parse_manifest(_manifest()))
    for obj in (rendered.config_map, rendered.workflow):
        labels = obj["metadata"]["labels"]
        assert labels["mlops.dev/name"] == "t"
        assert labels["mlops.dev/run-id"] == rendered.plan.run_id
        assert obj["metadata"]["namespace"] == "ml"
    assert (
        rendered.workflow["spec"]["podMetadata"]["labels"]["mlops.dev/run-id"]
        == rendered.plan.run_id
    )


def test_spot_and_gpu_placement() -> None:
    template = render(
        parse_manifest(_manifest(resources={"gpu": {"count": 2, "type": "nvidia-l4"}}))
    ).workflow["spec"]["templates"][0]
    assert template["nodeSelector"] == {
        "cloud.google.com/gke-spot": "true",
        "cloud.google.com/gke-accelerator": "nvidia-l4",
    }
    keys = {t["key"] for t in template["tolerations"]}
    assert keys == {"cloud.google.com/gke-spot", "nvidia.com/gpu"}
    assert template["container"]["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_on_demand_cpu_run_has_no_spot_or_gpu() -> None:
    template = render(
        parse_manifest(_manifest(spot=False, resources={"gpu": {"count": 0}}))
    ).workflow["spec"]["templates"][0]
    assert "nodeSelector" not in template and "tolerations" not in template
    assert "nvidia.com/gpu" not in template["container"]["resources"]["limits"]


def test_a_spot_run_moved_to_on_demand_avoids_spot_nodes() -> None:
    """spec.fallbackAfterPreemptions: the segment on on-demand nodes drops the spot selector and
    toleration and keeps off spot nodes (GKE does not taint them by default: without the
    affinity the fallback e2e's pod landed on the spot node again)."""
    obj = parse_manifest(_manifest(resources={"gpu": {"count": 1}}))
    spot = render(obj).workflow["spec"]["templates"][0]
    assert "affinity" not in spot and spot["nodeSelector"]["cloud.google.com/gke-spot"] == "true"
    moved = render(obj, segment=1, on_demand=True).workflow["spec"]["templates"][0]
    assert "cloud.google.com/gke-spot" not in moved.get("nodeSelector", {})
    assert "cloud.google.com/gke-spot" not in [t["key"] for t in moved["tolerations"]]
    required = moved["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required["nodeSelectorTerms"] == [
        {
            "matchExpressions": [
                {"key": "cloud.google.com/gke-spot", "operator": "NotIn", "values": ["true"]}
            ]
        }
    ]
    env = {e["name"]: e["value"] for e in moved["container"]["env"]}
    assert env["MLOPS_PLACEMENT"] == "on-demand"


def test_runs_off_spot_get_the_on_demand_selector_spot_runs_do_not() -> None:
    """The chart's onDemand.nodeSelector: on the spot selector's key, it is what lets Kueue
    count a run against the on-demand flavor, never the spot one (and the reverse)."""
    settings = RenderSettings(
        spot_node_selector={"cloud.google.com/gke-provisioning": "spot"},
        on_demand_node_selector={"cloud.google.com/gke-provisioning": "standard"},
    )
    gpu = {"gpu": {"count": 1}}
    spot_obj = parse_manifest(_manifest(resources=gpu))
    spot = render(spot_obj, settings).workflow["spec"]["templates"][0]
    assert spot["nodeSelector"]["cloud.google.com/gke-provisioning"] == "spot"
    off = render(parse_manifest(_manifest(spot=False, resources=gpu)), settings)
    assert off.workflow["spec"]["templates"][0]["nodeSelector"] == {
        "cloud.google.com/gke-provisioning": "standard"
    }
    moved = render(spot_obj, settings, segment=1, on_demand=True).workflow["spec"]["templates"][0]
    assert moved["nodeSelector"] == {"cloud.google.com/gke-provisioning": "standard"}


def test_cluster_wide_placement_adds_to_spot_and_gpu() -> None:
    settings = RenderSettings(
        node_selector=(("pool", "training"),),
        tolerations=(
            {"key": "pool", "operator": "Equal", "value": "training", "effect": "NoSchedule"},
        ),
    )
    template = render(
        parse_manifest(_manifest(resources={"gpu": {"count": 1, "type": "nvidia-l4"}})), settings
    ).workflow["spec"]["templates"][0]
    assert template["nodeSelector"] == {
        "pool": "training",
        "cloud.google.com/gke-spot": "true",
        "cloud.google.com/gke-accelerator": "nvidia-l4",
    }
    assert [t["key"] for t in template["tolerations"]] == [
        "pool",
        "cloud.google.com/gke-spot",
        "nvidia.com/gpu",
    ]
    on_demand = render(
        parse_manifest(_manifest(spot=False, resources={"gpu": {"count": 0}})), settings
    ).workflow["spec"]["templates"][0]
    assert on_demand["nodeSelector"] == {"pool": "training"}
    assert [t["key"] for t in on_demand["tolerations"]] == ["pool"]


def test_retry_strategy_separates_preemptions_from_app_errors() -> None:
    template = render(parse_manifest(_manifest(retries={"preemption": 7, "error": 2}))).workflow[
        "spec"
    ]["templates"][0]
    strategy = template["retryStrategy"]
    assert strategy["limit"] == "9"
    assert strategy["retryPolicy"] == "Always"
    expression = strategy["expression"]
    assert expression == retry_expression()
    assert "imminent node shutdown" in expression and "pod deleted" in expression
    assert "'143'" in expression  # SIGTERM-checkpointed preemption
    assert "'2'" not in expression  # exit 2: bad config or app-error budget spent, never retried


def test_queue_semaphore_and_lifecycle() -> None:
    spec = render(parse_manifest(_manifest(queue="a100"))).workflow["spec"]
    assert spec["synchronization"] == {
        "semaphores": [{"configMapKeyRef": {"key": "a100", "name": "mlops-queues"}}]
    }
    assert spec["podGC"] == {"strategy": "OnPodSuccess"}
    assert spec["ttlStrategy"]["secondsAfterSuccess"] > 0
    assert "synchronization" not in render(parse_manifest(_manifest(queue=None))).workflow["spec"]


def test_no_shell_and_secure_defaults() -> None:
    spec = render(parse_manifest(_manifest(data="gs://b/x%3Bid"))).workflow["spec"]
    container = spec["templates"][0]["container"]
    assert container["command"] == [
        "python",
        "-m",
        "mlops_trainers",
        "--config",
        "/etc/mlops/run.yaml",
    ]
    assert "args" not in container
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["runAsNonRoot"] is True


def test_summary_output_can_be_turned_off() -> None:
    obj = parse_manifest(_manifest())
    assert "outputs" in render(obj).workflow["spec"]["templates"][0]
    assert (
        "outputs"
        not in render(obj, RenderSettings(report_summary=False)).workflow["spec"]["templates"][0]
    )


def test_config_too_big_for_a_config_map_is_an_error() -> None:
    huge = "gs://b/" + "x" * 2000
    obj = parse_manifest(_manifest(trainer={"kind": "pixelcnn", "config": {"vqvae": huge}}))
    render(obj)  # 2 KB is fine
    original = module.CONFIG_MAP_LIMIT
    module.CONFIG_MAP_LIMIT = 5000
    try:
        with pytest.raises(ManifestError) as info:
            render(obj)
    finally:
        module.CONFIG_MAP_LIMIT = original
    assert info.value.first_path == "spec.trainer.config"


def test_gcs_key_comes_from_a_secret_never_the_config_map() -> None:
    rendered = render(parse_manifest(_manifest()), RenderSettings(gcs_secret="gcs-key"))
    spec = rendered.workflow["spec"]
    assert {"name": "gcs-key", "secret": {"secretName": "gcs-key"}} in spec["volumes"]
    env = {e["name"]: e["value"] for e in spec["templates"][0]["container"]["env"]}
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == "/var/run/secrets/gcs/key.json"
    assert "gcs-key" not in rendered.config_map["data"]["run.yaml"]


def test_argo_ui_title_description_and_link_annotations() -> None:
    from mlops_workflows.render import browser_url

    rendered = render(read_manifest(EXAMPLES[0]))
    annotations = rendered.workflow["metadata"]["annotations"]
    kind, output = rendered.plan.config.trainer.kind, rendered.plan.config.output
    assert annotations["workflows.argoproj.io/title"].startswith(f"**{kind}**")
    assert output in annotations["workflows.argoproj.io/description"]
    assert annotations["mlops.dev/output"] == output
    assert annotations["mlops.dev/tensorboard-logdir"] == f"{output}/tb"
    # For Argo's links, which must start with http(s):// (argo-server refuses to start with a
    # link that is only a ${...} variable): the folder without its scheme.
    assert output.startswith("gs://")
    assert annotations["mlops.dev/output-path"] == output.removeprefix("gs://")
    assert (
        browser_url("gs://b/runs/r") == "https://console.cloud.google.com/storage/browser/b/runs/r"
    )
    assert browser_url("/tmp/x") == "/tmp/x"
