"""API failures are visible and bounded (issue: lifecycle, point 6).

A quota refusing Workflows (403), an admission policy refusing them (422), and an API server
connection that accepts TCP and never answers. Each shows up in status and metrics, is retried
with backoff only where waiting can help, and never blocks the operator for long.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import OperatorFactory, make_namespace
from kubernetes import client
from operator_harness import Env, Operator, wait_for
from wedge_proxy import WedgeProxy

pytestmark = pytest.mark.e2e


@pytest.fixture
def env(cluster: Any, api: client.ApiClient, mlops_crd: None) -> Iterator[Env]:
    namespace_env = make_namespace(cluster, api, "e2e-fault")
    yield namespace_env
    client.CoreV1Api(api).delete_namespace(namespace_env.ns)


def _metric(op: Operator, name: str, **labels: str) -> float:
    """The value of one sample of ``name`` with ``labels`` (0 when absent)."""
    total = 0.0
    for line in op.metrics().splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _synced(env: Env, name: str) -> dict[str, Any] | None:
    conditions = {c["type"]: c for c in env.status(name).get("conditions") or []}
    return conditions.get("Synced")


def test_a_quota_refusal_is_reported_retried_with_backoff_and_recovers(
    env: Env, start_operator: OperatorFactory
) -> None:
    env.core.create_namespaced_resource_quota(
        env.ns,
        {
            "metadata": {"name": "no-workflows"},
            "spec": {"hard": {"count/workflows.argoproj.io": "0"}},
        },
    )
    op = start_operator(env)
    env.apply(env.manifest("over-quota"))
    synced = wait_for(
        "the refusal in status",
        lambda: (c := _synced(env, "over-quota")) and c["status"] == "False" and c,
        timeout=60,
    )
    assert synced["reason"] == "Forbidden" and "quota" in synced["message"], synced
    assert env.status("over-quota")["phase"] == "Queued"
    wait_for("the Forbidden event", lambda: "Forbidden" in env.events("over-quota"))
    first = _metric(op, "mlops_api_errors_total", code="403")
    time.sleep(60)
    tries = _metric(op, "mlops_api_errors_total", code="403") - first
    # Backoff (15 s, 30 s, 60 s...) and the 60 s resync: a handful of tries a minute, no hot loop.
    assert 1 <= tries <= 5, tries
    assert _metric(op, "mlops_reconcile_errors_total", reason="Forbidden") >= 1
    env.core.delete_namespaced_resource_quota("no-workflows", env.ns)
    status = wait_for(
        "the run created once the quota allows it",
        lambda: (s := env.status("over-quota")).get("submitted") and s,
        timeout=150,
    )
    assert env.workflows("over-quota")
    assert _synced(env, "over-quota")["status"] == "True", status


def test_an_admission_denial_fails_the_run_once_with_the_reason(
    cluster: Any, env: Env, start_operator: OperatorFactory
) -> None:
    policy = f"e2e-deny-workflows-{env.ns}"
    manifests = [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": policy},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["argoproj.io"],
                            "apiVersions": ["*"],
                            "operations": ["CREATE"],
                            "resources": ["workflows"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": "false",
                        "message": "Workflows are not allowed in this namespace (e2e policy)",
                        "reason": "Invalid",
                    }
                ],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": policy},
            "spec": {
                "policyName": policy,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": env.ns}}
                },
            },
        },
    ]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests))
    try:
        probe = {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Workflow",
            "metadata": {"generateName": "probe-"},
            "spec": {"entrypoint": "x", "templates": [{"name": "x", "container": {"image": "x"}}]},
        }

        def denied() -> bool:
            try:
                env.custom.create_namespaced_custom_object(
                    "argoproj.io", "v1alpha1", env.ns, "workflows", probe, dry_run="All"
                )
            except client.exceptions.ApiException as exc:
                return exc.status == 422
            return False

        wait_for("the policy in force", denied, timeout=60)
        op = start_operator(env)
        env.apply(env.manifest("denied"))
        status = wait_for("Failed", lambda: env.phase_is("denied", "Failed"), timeout=60)
        assert status["reason"] == "Invalid", status
        assert "not allowed in this namespace" in status["message"]
        time.sleep(30)
        assert _metric(op, "mlops_api_errors_total", code="422") == 1, "never retried"
        assert env.status("denied")["phase"] == "Failed"
    finally:
        for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
            cluster.kubectl("delete", kind, policy, "--ignore-not-found")


@pytest.fixture
def proxy(cluster: Any) -> Iterator[WedgeProxy]:
    """A proxy to the API server; closed after the operators using it (teardown order)."""
    url = urllib.parse.urlsplit(cluster.server)
    wedge = WedgeProxy(url.hostname or "127.0.0.1", url.port or 443)
    yield wedge
    wedge.close()


def test_a_wedged_api_connection_fails_liveness_and_recovers(
    cluster: Any, env: Env, proxy: WedgeProxy, start_operator: OperatorFactory, tmp_path: Path
) -> None:
    kubeconfig = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    for entry in kubeconfig["clusters"]:
        entry["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    path = tmp_path / "kubeconfig-via-proxy"
    path.write_text(yaml.safe_dump(kubeconfig))
    op = start_operator(env, kubeconfig=path)
    env.apply(env.manifest("before"))
    wait_for("a run before", lambda: env.status("before").get("submitted"), timeout=60)
    proxy.wedge()
    wedged = time.monotonic()
    wait_for("liveness to fail", lambda: not op.healthy(), timeout=130, every=2)
    detected = time.monotonic() - wedged
    assert detected <= 120, detected
    env.apply(env.manifest("during"))  # by the admin, directly: the operator cannot see it
    time.sleep(5)
    proxy.unwedge()
    unwedged = time.monotonic()
    wait_for(
        "the object applied during the wedge to get its run",
        lambda: env.status("during").get("submitted"),
        timeout=120,
        every=1,
    )
    recovered = time.monotonic() - unwedged
    assert recovered <= 120, recovered
    wait_for("liveness to pass again", op.healthy, timeout=30)
    print(f"wedge detected after {detected:.0f} s, recovered {recovered:.0f} s after")
