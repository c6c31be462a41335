"""The ``helm test`` hook: only test hooks, least privilege, the operator's image, and a tiny run
that the API models accept and that really trains. (Running it against a cluster:
tests/e2e/test_chart_install.py.)"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlops_api.manifest import parse_manifest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mlops-operator"
Render = Callable[..., list[dict[str, Any]]]


def _hooks(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        d for d in docs if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"
    ]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def test_hook_objects_are_test_hooks_only(render: Render) -> None:
    docs = render()
    hooks = _hooks(docs)
    assert sorted(d["kind"] for d in hooks) == [
        "ConfigMap",
        "NetworkPolicy",
        "Pod",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ]
    # Nothing else of the chart is a hook, and no hook outlives a passed test.
    assert all(
        d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "helm-test"
        for d in hooks
    )
    for doc in hooks:
        policy = doc["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
        assert set(policy.split(",")) == {"before-hook-creation", "hook-succeeded"}
        if doc["kind"] != "Pod":  # created first
            assert int(doc["metadata"]["annotations"]["helm.sh/hook-weight"]) < 0
    assert not _hooks(render(None, "--set=tests.enabled=false"))
    assert "NetworkPolicy" not in [
        d["kind"] for d in _hooks(render(None, "--set=networkPolicy.enabled=false"))
    ]


def test_hook_rbac_is_create_get_delete_of_mlops_in_the_test_namespace(render: Render) -> None:
    for values, namespace in [
        (None, "mlops-system"),
        (CHART / "ci" / "namespaced-values.yaml", "ml-team-a"),
    ]:
        hooks = _hooks(render(values))
        role, binding = _one(hooks, "Role"), _one(hooks, "RoleBinding")
        assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == namespace
        assert role["rules"] == [
            {
                "apiGroups": ["mlops.dev"],
                "resources": ["mlops"],
                "verbs": ["create", "get", "delete"],
            }
        ]
        sa = _one(hooks, "ServiceAccount")
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "mlops-system"}
        ]
        assert _one(hooks, "Pod")["spec"]["serviceAccountName"] == sa["metadata"]["name"]
        manifest = yaml.safe_load(_one(hooks, "ConfigMap")["data"]["mlops.yaml"])
        assert manifest["metadata"]["namespace"] == namespace
    hooks = _hooks(render(None, "--set=tests.namespace=smoke"))
    assert _one(hooks, "Role")["metadata"]["namespace"] == "smoke"


def test_hook_pod_runs_the_script_in_the_operator_image(render: Render) -> None:
    docs = render(
        None, "--set=imagePullSecrets[0].name=regcred", "--set=operator.nodeSelector.pool=system"
    )
    deploy = _one(docs, "Deployment")
    hooks = _hooks(docs)
    pod, config_map = _one(hooks, "Pod"), _one(hooks, "ConfigMap")
    (operator,) = deploy["spec"]["template"]["spec"]["containers"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == operator["image"]
    assert container["imagePullPolicy"] == operator["imagePullPolicy"]
    assert container["securityContext"] == operator["securityContext"]
    assert pod["spec"]["securityContext"] == deploy["spec"]["template"]["spec"]["securityContext"]
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["spec"]["nodeSelector"] == {"pool": "system"}
    assert pod["spec"]["restartPolicy"] == "Never"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {
        "MLOPS_TEST_MANIFEST": "/etc/mlops-test/mlops.yaml",
        "MLOPS_TEST_TIMEOUT_S": "600",
    }
    assert pod["spec"]["activeDeadlineSeconds"] > 600
    assert container["command"] == ["python3", "/etc/mlops-test/helm-test.py"]
    # The script is the chart's file, byte for byte.
    script = (CHART / "files" / "helm-test.py").read_text()
    assert config_map["data"]["helm-test.py"] == script
    # Its labels must never match the operator Deployment's selector (the ReplicaSet would adopt it).
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert any(pod["metadata"]["labels"].get(k) != v for k, v in selector.items())


def _test_manifest(render: Render, *extra: str) -> dict[str, Any]:
    return dict(
        yaml.safe_load(_one(_hooks(render(None, *extra)), "ConfigMap")["data"]["mlops.yaml"])
    )


def test_hook_run_is_a_valid_tiny_cpu_run(render: Render) -> None:
    manifest = _test_manifest(render)
    parsed = parse_manifest(manifest)
    spec = parsed.spec
    assert spec.resources.gpu.count == 0 and not spec.spot and spec.queue is None
    assert spec.epochs == 1 and spec.output == "file:///tmp/mlops-helm-test"
    assert spec.retries.error == 0
    assert _test_manifest(render, "--set=tests.output=gs://team-a-runs/helm-test")["spec"][
        "output"
    ] == ("gs://team-a-runs/helm-test")


@pytest.mark.slow
def test_hook_run_trains_here(render: Render, tmp_path: Path) -> None:
    """The test's run, trained for real on this machine's CPU (as its trainer pod would), ~20 s."""
    manifest = tmp_path / "mlops.yaml"
    manifest.write_text(yaml.safe_dump(_test_manifest(render)))
    out = tmp_path / "runs"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "mlops"), "run", str(manifest), "--output", str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = out.iterdir()
    assert (run / "model.keras").exists()
    assert list((run / "checkpoints").iterdir())
