"""The Helm chart installed into a real cluster, and every object it renders checked by the API server.

kwok fakes pods, so the Deployment's operator pod is scheduled and reported Running but nothing
runs in it. The operator itself therefore runs as a local process, with the Deployment's own args
and env and authenticated with nothing but the chart's ServiceAccount token (as its Pod would be):
what the chart contributes for real here is the CRD, the RBAC, the ServiceAccounts, the queue
ConfigMap and the Deployment object, all accepted and used by a real API server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster import Cluster
from kubernetes import client
from operator_harness import CHART, ROOT, Env, Operator, wait_for

pytestmark = pytest.mark.e2e

EXAMPLE = ROOT / "examples" / "vqvae.yaml"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))


@dataclass
class Release:
    name: str
    namespace: str
    deployment: dict[str, Any]


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    suffix = uuid.uuid4().hex[:6]
    namespace = cluster.create_namespace(f"e2e-chart-{suffix}")
    name = f"mlops-{suffix}"
    cluster.helm(
        "install",
        name,
        str(CHART),
        f"--namespace={namespace}",
        # kwok's fake pods have no Argo executor that could report the summary output.
        "--set=trainer.reportSummary=false",
        "--wait",
        "--timeout=180s",
    )
    deployment = yaml.safe_load(
        cluster.kubectl(
            "get",
            "deployment",
            "-o",
            "yaml",
            f"--namespace={namespace}",
            "-l",
            f"app.kubernetes.io/instance={name}",
        ).stdout
    )["items"][0]
    try:
        yield Release(name, namespace, deployment)
    finally:
        cluster.helm("uninstall", name, f"--namespace={namespace}", "--wait", check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_helm_install_creates_the_operators_objects(cluster: Cluster, release: Release) -> None:
    ns = release.namespace
    status = cluster.helm("status", release.name, f"--namespace={ns}", "-o", "json").stdout
    assert '"status":"deployed"' in status.replace(" ", "")
    cluster.kubectl("wait", "--for=condition=Established", "crd/mlops.mlops.dev")
    fullname = release.deployment["metadata"]["name"]
    for kind, name in [
        ("serviceaccount", fullname),
        ("serviceaccount", "mlops-trainer"),
        ("configmap", f"{fullname}-queues"),
        ("role", "mlops-trainer-executor"),
    ]:
        cluster.kubectl("get", kind, name, f"--namespace={ns}")
    cluster.kubectl("get", "clusterrole", fullname)
    cluster.kubectl("get", "clusterrolebinding", fullname)
    # The built-in `edit` role picks up the aggregated MLOps rules.
    wait_for(
        "aggregation into `edit`",
        lambda: "mlops.dev" in cluster.kubectl("get", "clusterrole", "edit", "-o", "yaml").stdout,
        timeout=30,
    )
    # kwok "runs" the Deployment's pod: scheduled for real, faked Running (nothing executes).
    cluster.kubectl(
        "rollout", "status", f"deployment/{fullname}", f"--namespace={ns}", "--timeout=60s"
    )


def test_example_manifest_runs_to_succeeded(
    cluster: Cluster, release: Release, tmp_path: Path
) -> None:
    ns = release.namespace
    sa = release.deployment["spec"]["template"]["spec"]["serviceAccountName"]
    token = cluster.service_account_token(ns, sa, expiration_s=3600)
    kubeconfig = cluster.write_token_kubeconfig(tmp_path / "kubeconfig", token, user=sa)
    operator = Operator.from_deployment(release.deployment, kubeconfig, tmp_path / "operator.log")
    assert "--all-namespaces" in operator.args  # the chart's default, run as it is
    with cluster.api_client() as api:
        env = Env(api, ns)
        operator.start()
        try:
            applied = cluster.kubectl("apply", f"--namespace={ns}", "-f", str(EXAMPLE))
            assert "mlops.mlops.dev/vqvae-demo created" in applied.stdout
            status = wait_for(
                "vqvae-demo to finish",
                lambda: env.phase_is("vqvae-demo", "Succeeded", "Failed"),
                timeout=180,
            )
            assert status["phase"] == "Succeeded", (status, operator.log_tail())
            (wf,) = env.workflows("vqvae-demo")
            pods = client.CoreV1Api(api).list_namespaced_pod(
                ns, label_selector=f"workflows.argoproj.io/workflow={wf['metadata']['name']}"
            )
            # spot: true + a T4: scheduled onto the (fake) GKE spot T4 node, as the chart's
            # spot nodeSelector/tolerations and the GPU toleration say.
            nodes = {pod.spec.node_name for pod in pods.items}
            if cluster.local:
                assert nodes == {"kwok-gpu-spot-0"}
            assert wf["spec"]["serviceAccountName"] == "mlops-trainer"
            env.delete_all()
        finally:
            operator.stop()


def test_example_in_a_fresh_namespace_runs_to_succeeded(
    cluster: Cluster, release: Release, tmp_path: Path
) -> None:
    """The default (cluster-wide) install serves every namespace: a namespace with nothing in it
    (no trainer ServiceAccount, no executor Role, no queue ConfigMap) runs the example too. The
    operator makes what a run needs there; the GPU queue is the release's, shared by all."""
    sa = release.deployment["spec"]["template"]["spec"]["serviceAccountName"]
    token = cluster.service_account_token(release.namespace, sa, expiration_s=3600)
    kubeconfig = cluster.write_token_kubeconfig(tmp_path / "kubeconfig", token, user=sa)
    operator = Operator.from_deployment(release.deployment, kubeconfig, tmp_path / "operator.log")
    fresh = cluster.create_namespace(f"e2e-team-{uuid.uuid4().hex[:6]}")
    with cluster.api_client() as api:
        env = Env(api, fresh)
        operator.start()
        try:
            cluster.kubectl("apply", f"--namespace={fresh}", "-f", str(EXAMPLE))
            status = wait_for(
                "vqvae-demo in a fresh namespace to finish",
                lambda: env.phase_is("vqvae-demo", "Succeeded", "Failed"),
                timeout=180,
            )
            assert status["phase"] == "Succeeded", (status, operator.log_tail())
            (wf,) = env.workflows("vqvae-demo")
            (semaphore,) = wf["spec"]["synchronization"]["semaphores"]
            assert semaphore["namespace"] == release.namespace
            cluster.kubectl("get", "serviceaccount", "mlops-trainer", f"--namespace={fresh}")
            cluster.kubectl("get", "rolebinding", "mlops-trainer-executor", f"--namespace={fresh}")
            env.delete_all()
        finally:
            operator.stop()
            cluster.kubectl("delete", "namespace", fresh, "--wait=false", check=False)


@pytest.mark.parametrize("values", CI_VALUES, ids=[p.name for p in CI_VALUES])
def test_every_rendered_object_passes_server_side_dry_run(
    cluster: Cluster, mlops_crd: None, values: Path
) -> None:
    """`helm template` output (CRDs included) against the real API server's validation and
    admission, for each ci/*-values.yaml scenario; nothing is persisted."""
    suffix = uuid.uuid4().hex[:6]
    namespace = cluster.create_namespace(f"e2e-dry-{suffix}")
    rendered = cluster.helm(
        "template",
        f"dry-{suffix}",
        str(CHART),
        f"--namespace={namespace}",
        f"--values={values}",
        "--include-crds",
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    # Namespaces the values name (watchNamespaces) must exist for a dry run of their objects.
    extra = sorted(
        {d["metadata"]["namespace"] for d in docs if d["metadata"].get("namespace")} - {namespace}
    )
    created = []
    for ns in extra:
        if cluster.kubectl("get", "namespace", ns, check=False).returncode != 0:
            cluster.create_namespace(ns)
            created.append(ns)
    try:
        proc = cluster.kubectl(
            "apply",
            "--dry-run=server",
            "--server-side",
            "--force-conflicts",
            "--field-manager=mlops-e2e-dry-run",
            "--validate=strict",
            "-f",
            "-",
            input=rendered,
        )
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        assert len(lines) == len(docs), proc.stdout
        assert all(line.endswith("(server dry run)") for line in lines), proc.stdout
    finally:
        for ns in [namespace, *created]:
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
