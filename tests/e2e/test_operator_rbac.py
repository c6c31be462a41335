"""The operator's RBAC from the Helm chart, on a real API server with RBAC authorization.

The chart's ServiceAccount, Role/ClusterRole and bindings are rendered with the real ``helm``
binary and applied; then the ServiceAccount's own token (from the TokenRequest API, as in its Pod)
is asked what it may do. It must be able to do what the operator does and nothing more. Last, the
operator itself runs with only that token and must still reconcile a manifest to Succeeded: proof
that the rules are sufficient, not just plausible.

What the operator calls (operator/mlops_operator/kube.py, handlers.py, and kopf itself):
- MLOps: get/list/watch (kopf), patch (kopf's finalizer and progress annotations), status update
  (the whole status, with optimistic concurrency).
- ConfigMaps: create (one per run), get (a taken name is checked for its owner), delete (pruning).
- Workflows: list/watch (kopf follows them), create, get, patch (``spec.shutdown: Stop``), delete.
- Events: create (``kopf.event``, core/v1 Events).
- Pods: list (a deleted object waits for its trainer pods to end).
- A run namespace's trainer ServiceAccount (get, create) and the Argo executor's Role and
  RoleBinding (create), which grant workflowtaskresults create/patch, so it holds those too.
- No peering and no leases: it runs ``--standalone`` (one replica, Recreate).
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
from operator_harness import CHART, Env, Operator, wait_for

pytestmark = pytest.mark.e2e

RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}

# (verb, resource[, subresource]) the operator needs in a namespace it watches.
NEEDED = [
    ("get", "mlops.mlops.dev"),
    ("list", "mlops.mlops.dev"),
    ("watch", "mlops.mlops.dev"),
    ("patch", "mlops.mlops.dev"),
    ("update", "mlops.mlops.dev", "status"),
    ("create", "configmaps"),
    ("get", "configmaps"),
    ("delete", "configmaps"),
    ("get", "workflows.argoproj.io"),
    ("list", "workflows.argoproj.io"),
    ("watch", "workflows.argoproj.io"),
    ("create", "workflows.argoproj.io"),
    ("patch", "workflows.argoproj.io"),
    ("delete", "workflows.argoproj.io"),
    ("create", "events"),
    ("create", "events.events.k8s.io"),
    ("list", "pods"),
    ("get", "serviceaccounts"),
    ("create", "serviceaccounts"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("create", "workflowtaskresults.argoproj.io"),
    ("patch", "workflowtaskresults.argoproj.io"),
]
# Things it must not be able to do (a few representative ones: secrets, pods, namespaces,
# writing the users' own objects, escalating through RBAC or impersonation).
DENIED = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("create", "pods"),
    ("create", "pods", "exec"),
    ("list", "configmaps"),
    ("update", "configmaps"),
    ("patch", "mlops.mlops.dev", "status"),
    ("delete", "serviceaccounts"),
    ("update", "serviceaccounts"),
    ("update", "roles.rbac.authorization.k8s.io"),
    ("delete", "rolebindings.rbac.authorization.k8s.io"),
    ("bind", "clusterroles.rbac.authorization.k8s.io"),
    ("escalate", "roles.rbac.authorization.k8s.io"),
    ("create", "mlops.mlops.dev"),
    ("delete", "mlops.mlops.dev"),
    ("update", "mlops.mlops.dev"),
    ("create", "workflowtemplates.argoproj.io"),
    ("create", "serviceaccounts", "token"),
    ("create", "leases.coordination.k8s.io"),
    ("create", "kopfpeerings.kopf.dev"),
]
DENIED_CLUSTER = [
    ("delete", "namespaces"),
    ("create", "namespaces"),
    ("list", "secrets"),
    ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("impersonate", "users"),
    ("impersonate", "serviceaccounts"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("list", "nodes"),
]


@dataclass
class Installed:
    """The chart's operator identity, applied into ``namespace``."""

    namespace: str
    service_account: str
    token_kubeconfig: Path
    docs: list[dict[str, Any]]
    """What was applied: every object the chart renders but the Deployment."""
    deployment: dict[str, Any]
    """The chart's Deployment (not applied: the tests run its command locally)."""

    @property
    def cluster_wide(self) -> bool:
        return any(d["kind"] == "ClusterRoleBinding" for d in self.docs)


def render(cluster: Cluster, release: str, namespace: str, *values: str) -> list[dict[str, Any]]:
    """What `helm install` creates: the `helm test` hook's objects only exist during a test
    (test_chart_install.py tests their own, separate RBAC)."""
    out = cluster.helm(
        "template", release, str(CHART), f"--namespace={namespace}", "--skip-tests", *values
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def can_i(cluster: Cluster, kubeconfig: Path, verb: str, resource: str, *flags: str) -> bool:
    """``kubectl auth can-i`` answered for the identity of ``kubeconfig`` (its real token)."""
    proc = cluster.kubectl(
        "auth", "can-i", verb, resource, *flags, f"--kubeconfig={kubeconfig}", check=False
    )
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), proc.stderr
    return answer == "yes"


def check(cluster: Cluster, kubeconfig: Path, rules: list[tuple[str, ...]], *flags: str) -> dict:
    out = {}
    for verb, resource, *sub in rules:
        extra = [f"--subresource={sub[0]}"] if sub else []
        out[" ".join((verb, resource, *sub))] = can_i(
            cluster, kubeconfig, verb, resource, *extra, *flags
        )
    return out


@pytest.fixture(scope="module", params=["cluster-wide", "namespaced"])
def installed(
    request: pytest.FixtureRequest,
    cluster: Cluster,
    mlops_crd: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Installed]:
    suffix = uuid.uuid4().hex[:6]
    namespace = cluster.create_namespace(f"e2e-rbac-{suffix}")
    release = f"rbac-{suffix}"
    values = ["--set=trainer.reportSummary=false"]  # kwok: no Argo executor reports outputs
    if request.param == "namespaced":
        values += [f"--set=operator.watchNamespaces={{{namespace}}}", "--set=rbac.namespaced=true"]
    rendered = render(cluster, release, namespace, *values)
    (deployment,) = [d for d in rendered if d["kind"] == "Deployment"]
    # Everything the chart renders but the Deployment (kwok would only fake its pod): the
    # ServiceAccount, the RBAC, the trainer ServiceAccount and the queue ConfigMap.
    docs = [d for d in rendered if d["kind"] != "Deployment"]
    assert {d["kind"] for d in docs} >= RBAC_KINDS - (
        {"ClusterRoleBinding"} if request.param == "namespaced" else {"RoleBinding"}
    )
    manifest = yaml.safe_dump_all(docs)
    cluster.kubectl("apply", "-f", "-", input=manifest)
    (sa,) = [
        d["metadata"]["name"]
        for d in docs
        if d["kind"] == "ServiceAccount" and d["metadata"]["name"].startswith(release)
    ]
    token = cluster.service_account_token(namespace, sa, expiration_s=3600)
    kubeconfig = cluster.write_token_kubeconfig(
        tmp_path_factory.mktemp("rbac") / "kubeconfig", token, user=sa
    )
    try:
        yield Installed(namespace, sa, kubeconfig, docs, deployment)
    finally:
        cluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=manifest)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")


def test_service_account_may_do_what_the_operator_needs(
    cluster: Cluster, installed: Installed
) -> None:
    ns = f"--namespace={installed.namespace}"
    allowed = check(cluster, installed.token_kubeconfig, NEEDED, ns)
    assert all(allowed.values()), {k: v for k, v in allowed.items() if not v}
    if installed.cluster_wide:
        # All namespaces: kopf lists/watches MLOps and Workflows cluster-wide.
        everywhere = check(
            cluster,
            installed.token_kubeconfig,
            [("list", "mlops.mlops.dev"), ("watch", "workflows.argoproj.io")],
            "--all-namespaces",
        )
        assert all(everywhere.values()), everywhere


def test_service_account_may_do_nothing_more(cluster: Cluster, installed: Installed) -> None:
    ns = f"--namespace={installed.namespace}"
    denied = check(cluster, installed.token_kubeconfig, DENIED, ns)
    assert not any(denied.values()), {k: v for k, v in denied.items() if v}
    denied = check(cluster, installed.token_kubeconfig, DENIED_CLUSTER)
    assert not any(denied.values()), {k: v for k, v in denied.items() if v}
    if not installed.cluster_wide:
        # Namespaced RBAC: nothing at all outside its namespaces.
        outside = check(
            cluster,
            installed.token_kubeconfig,
            [("list", "mlops.mlops.dev"), ("create", "workflows.argoproj.io")],
            "--namespace=default",
        )
        assert not any(outside.values()), outside
    # Not just `can-i`: the API server itself says 403 to the token.
    with cluster.token_api_client(
        cluster.service_account_token(installed.namespace, installed.service_account, 600)
    ) as api:
        with pytest.raises(client.exceptions.ApiException) as info:
            client.CoreV1Api(api).list_namespaced_secret(installed.namespace)
        assert info.value.status == 403


def test_operator_with_only_its_service_account_token_reconciles(
    cluster: Cluster, installed: Installed, tmp_path: Path
) -> None:
    """The operator as its Pod would run it (the chart's args and env), but as a local process
    authenticated with nothing but the ServiceAccount's token: kwok fakes pods, so the
    Deployment's own pod would never really run here."""
    operator = Operator.from_deployment(
        installed.deployment, installed.token_kubeconfig, tmp_path / "operator.log"
    )
    if "--all-namespaces" in operator.args:
        # Cluster-wide RBAC, but watch only this test's namespace: other e2e modules' objects
        # are none of its business (test_chart_install.py runs it with --all-namespaces).
        operator.args.remove("--all-namespaces")
        operator.args.append(f"--namespace={installed.namespace}")
    with cluster.api_client() as api:
        env = Env(api, installed.namespace)
        operator.start()
        try:
            env.apply(env.manifest("rbac-run", queue="gpu"))
            status = wait_for(
                "Succeeded with only the ServiceAccount's permissions",
                lambda: env.phase_is("rbac-run", "Succeeded", "Failed"),
                timeout=180,
            )
            assert status["phase"] == "Succeeded", (status, operator.log_tail())
            # kopf posts events from a background task: the last one may trail the status.
            wait_for(
                "the run's events",
                lambda: {"RunSubmitted", "Succeeded"} <= env.events("rbac-run"),
                timeout=30,
            )
            # Nothing refused, not even kopf's optional discovery of namespaces and CRDs (with
            # namespaced RBAC the chart turns that off; kopf would retry the 403s for a minute).
            log = operator.log.read_text()
            refused = [line for line in log.splitlines() if "forbidden" in line.lower()]
            assert not refused, "\n".join(refused[:20])
            assert "Not enough permissions" not in log, operator.log_tail()
            env.delete_all()
        finally:
            operator.stop()
