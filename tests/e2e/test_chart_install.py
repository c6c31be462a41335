"""The Helm chart installed into a real cluster, and every object it renders checked by the API server.

kwok fakes pods, so the Deployment's operator pod is scheduled and reported Running but nothing
runs in it. The operator itself therefore runs as a local process, with the Deployment's own args
and env and authenticated with nothing but the chart's ServiceAccount token (as its Pod would be):
what the chart contributes for real here is the CRD, the RBAC, the ServiceAccounts, the queue
ConfigMap and the Deployment object, all accepted and used by a real API server.

The same holds for the ``helm test`` hook: its Pod is faked too, so its script runs here as a
local process with the hook ServiceAccount's token (as in its Pod), against the operator run as
above; ``helm test`` itself is run as well, for the hook objects and their order and cleanup.
"""

from __future__ import annotations

import subprocess
import sys
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
        # A Pod is admitted only once its ServiceAccount exists, which a dry run never creates:
        # the `helm test` Pod's is created for real first (helm creates it first too).
        pod_accounts = {
            (d["metadata"]["namespace"], d["spec"]["serviceAccountName"])
            for d in docs
            if d["kind"] == "Pod"
        }
        accounts = [
            d
            for d in docs
            if d["kind"] == "ServiceAccount"
            and (d["metadata"]["namespace"], d["metadata"]["name"]) in pod_accounts
        ]
        assert len(accounts) == len(pod_accounts), pod_accounts
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(accounts))
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


def test_notes_say_what_was_installed_and_what_to_do_next(
    cluster: Cluster, release: Release
) -> None:
    """NOTES.txt as the installed release shows it (`helm get notes`)."""
    notes = cluster.helm("get", "notes", release.name, f"--namespace={release.namespace}").stdout
    ns, fullname = release.namespace, release.deployment["metadata"]["name"]
    assert f"release {release.name} in namespace {ns}" in notes
    assert f"Deployment {fullname}" in notes
    assert f"kubectl apply -n {ns} -f examples/vqvae.yaml" in notes
    assert f"kubectl get mlops -n {ns} -w" in notes
    assert "port-forward svc/argo-server 2746:2746" in notes
    assert f"helm test {release.name} -n {ns}" in notes


def _hooks(cluster: Cluster, release: Release) -> list[dict[str, Any]]:
    """The release's `helm test` hook objects, as helm stores them (`helm get hooks`)."""
    out = cluster.helm("get", "hooks", release.name, f"--namespace={release.namespace}").stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    return [d for d in docs if d["metadata"]["annotations"].get("helm.sh/hook") == "test"]


def test_helm_test_script_runs_a_tiny_mlops_to_succeeded(
    cluster: Cluster, release: Release, tmp_path: Path
) -> None:
    """The hook's script, run as a local process (kwok would only fake its Pod) with the token of
    the hook's ServiceAccount and the hook's Role, exactly as helm creates them, against the
    operator run from the chart's Deployment: the tiny MLOps it creates reaches Succeeded (kwok
    fakes the trainer pod), and the script deletes it and exits 0. The hook's RBAC is proven
    sufficient by this run and minimal by `kubectl auth can-i`."""
    ns = release.namespace
    hooks = _hooks(cluster, release)
    (pod,) = [d for d in hooks if d["kind"] == "Pod"]
    (config_map,) = [d for d in hooks if d["kind"] == "ConfigMap"]
    support = [d for d in hooks if d["kind"] != "Pod"]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(support))
    try:
        sa = pod["spec"]["serviceAccountName"]
        user = f"system:serviceaccount:{ns}:{sa}"
        for verb in ("create", "get", "delete"):
            assert _can(cluster, verb, "mlops.mlops.dev", ns, user), verb
        for verb, resource in [
            ("list", "mlops.mlops.dev"),
            ("update", "mlops.mlops.dev/status"),
            ("patch", "mlops.mlops.dev"),
            ("create", "pods"),
            ("get", "secrets"),
            ("create", "workflows.argoproj.io"),
        ]:
            assert not _can(cluster, verb, resource, ns, user), (verb, resource)
        assert not _can(cluster, "create", "mlops.mlops.dev", "default", user)

        script = tmp_path / "helm-test.py"
        script.write_text(config_map["data"]["helm-test.py"])
        manifest = tmp_path / "mlops.yaml"
        manifest.write_text(config_map["data"]["mlops.yaml"])
        (container,) = pod["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["MLOPS_TEST_MANIFEST"] == "/etc/mlops-test/mlops.yaml"
        test_kubeconfig = cluster.write_token_kubeconfig(
            tmp_path / "kubeconfig-test", cluster.service_account_token(ns, sa), user=sa
        )
        operator_sa = release.deployment["spec"]["template"]["spec"]["serviceAccountName"]
        operator = Operator.from_deployment(
            release.deployment,
            cluster.write_token_kubeconfig(
                tmp_path / "kubeconfig-operator",
                cluster.service_account_token(ns, operator_sa),
                user=operator_sa,
            ),
            tmp_path / "operator.log",
        )
        name = yaml.safe_load(manifest.read_text())["metadata"]["name"]
        operator.start()
        try:
            result = subprocess.run(
                [sys.executable, str(script)],
                env={
                    **cluster.env(),
                    **env,
                    "MLOPS_TEST_MANIFEST": str(manifest),
                    "KUBECONFIG": str(test_kubeconfig),
                },
                capture_output=True,
                text=True,
                timeout=float(env["MLOPS_TEST_TIMEOUT_S"]) + 60,
                check=False,
            )
            output = result.stdout + result.stderr
            assert result.returncode == 0, (output, operator.log_tail())
            assert "phase=Succeeded" in output and "PASS" in output, output
            with cluster.api_client() as api:
                assert name not in Env(api, ns).names()  # cleaned up
        finally:
            operator.stop()
    finally:
        cluster.kubectl(
            "delete", "-f", "-", "--ignore-not-found", input=yaml.safe_dump_all(support)
        )


def _can(cluster: Cluster, verb: str, resource: str, namespace: str, user: str) -> bool:
    proc = cluster.kubectl(
        "auth", "can-i", verb, resource, f"--namespace={namespace}", f"--as={user}", check=False
    )
    return proc.stdout.strip() == "yes"


def test_helm_test_creates_its_hooks_and_cleans_up(cluster: Cluster, release: Release) -> None:
    """`helm test` for real. kwok fakes the hook's Pod (Succeeded a second after it starts, nothing
    runs), so this proves what helm and the API server do with the hooks — created in order and
    accepted (the Pod is admitted only once its ServiceAccount exists), scheduled, waited for,
    then all deleted after the pass — not what the script does (the test above runs it)."""
    ns = release.namespace
    hooks = _hooks(cluster, release)
    (pod,) = [h for h in hooks if h["kind"] == "Pod"]
    proc = cluster.helm("test", release.name, f"--namespace={ns}", "--timeout=120s")
    assert "Phase:          Succeeded" in proc.stdout, proc.stdout
    assert "Failed" not in proc.stdout, proc.stdout
    # It ran somewhere: scheduled for real (kube-scheduler), onto a kwok node.
    events = cluster.kubectl(
        "get",
        "events",
        f"--namespace={ns}",
        f"--field-selector=involvedObject.name={pod['metadata']['name']},reason=Scheduled",
        "-o",
        "name",
    ).stdout
    assert events.strip(), f"the test pod was never scheduled:\n{proc.stdout}"
    for hook in hooks:
        kind, name = hook["kind"].lower(), hook["metadata"]["name"]
        hook_ns = hook["metadata"]["namespace"]
        wait_for(
            f"{kind}/{name} to be deleted after the passed test",
            lambda kind=kind, name=name, hook_ns=hook_ns: (
                cluster.kubectl("get", kind, name, f"--namespace={hook_ns}", check=False).returncode
                != 0
            ),
            timeout=60,
        )


def test_overrides_install(cluster: Cluster, tmp_path: Path) -> None:
    """A second release with the name, pull-secret and placement values set: every object is
    named by fullnameOverride, the operator pod lands on the node its nodeSelector names, and its
    NetworkPolicy selects exactly that pod (the API server's own label selection)."""
    suffix = uuid.uuid4().hex[:6]
    namespace = cluster.create_namespace(f"e2e-ovr-{suffix}")
    name, fullname = f"ovr-{suffix}", f"ml-platform-{suffix}"
    values = tmp_path / "overrides.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "fullnameOverride": fullname,
                "nameOverride": "mlctl",
                "imagePullSecrets": [{"name": "regcred"}],
                "operator": {
                    "nodeSelector": {"kubernetes.io/hostname": "kwok-cpu-0"},
                    "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                    "resources": {"limits": {"cpu": "500m"}},
                },
                "trainer": {"reportSummary": False},
            }
        )
    )
    try:
        cluster.helm(
            "install",
            name,
            str(CHART),
            f"--namespace={namespace}",
            f"--values={values}",
            "--wait",
            "--timeout=180s",
        )
        manifest = cluster.helm("get", "manifest", name, f"--namespace={namespace}").stdout
        docs = [d for d in yaml.safe_load_all(manifest) if d]
        trainer = {"mlops-trainer", "mlops-trainer-executor"}
        assert {d["metadata"]["name"] for d in docs} - trainer
        assert all(
            d["metadata"]["name"].startswith(fullname)
            for d in docs
            if d["metadata"]["name"] not in trainer
        )
        with cluster.api_client() as api:
            pods = (
                client.CoreV1Api(api)
                .list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=mlctl")
                .items
            )
            (pod,) = pods
            assert pod.spec.node_name == "kwok-cpu-0"
            assert [s.name for s in pod.spec.image_pull_secrets] == ["regcred"]
            assert pod.spec.containers[0].resources.limits["cpu"] == "500m"
            policy = client.NetworkingV1Api(api).read_namespaced_network_policy(fullname, namespace)
            selector = ",".join(
                f"{k}={v}" for k, v in policy.spec.pod_selector.match_labels.items()
            )
            selected = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector)
            assert [p.metadata.name for p in selected.items] == [pod.metadata.name]
        notes = cluster.helm("get", "notes", name, f"--namespace={namespace}").stdout
        assert f"Deployment {fullname}" in notes
    finally:
        cluster.helm("uninstall", name, f"--namespace={namespace}", "--wait", check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
