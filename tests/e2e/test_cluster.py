"""The local test cluster itself: each piece the operator's e2e tests rely on, proven to work.

API server + RBAC + ServiceAccount tokens, kube-controller-manager (garbage collection),
kube-scheduler + kwok (fake nodes, fake pod lifecycle), Argo's controller and its full CRDs.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cluster import HACK, Cluster, wait_for
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.e2e

ARGO_GROUP, ARGO_VERSION = "argoproj.io", "v1alpha1"
GPU_NODE, CPU_NODE = "kwok-gpu-spot-0", "kwok-cpu-0"
ON_DEMAND_NODE = "kwok-gpu-ondemand-0"  # where spec.fallbackAfterPreemptions moves a run
IMAGE = "docker.io/library/busybox:1.36"


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> Iterator[client.ApiClient]:
    with cluster.api_client() as api_client:
        yield api_client


@pytest.fixture(scope="module")
def namespace(cluster: Cluster, api: client.ApiClient) -> Iterator[str]:
    name = cluster.create_namespace(f"e2e-cluster-{uuid.uuid4().hex[:6]}")
    yield name
    client.CoreV1Api(api).delete_namespace(name)


def workflow(name: str, template: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A Workflow with one container template (busybox; never pulled under kwok)."""
    template = {"name": "main", **template}
    template["container"] = {
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["true"],
        **template.get("container", {}),
    }
    return {
        "apiVersion": f"{ARGO_GROUP}/{ARGO_VERSION}",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {"entrypoint": "main", "templates": [template], **spec},
    }


def submit_and_wait(
    api: client.ApiClient, namespace: str, body: dict[str, Any], timeout: float = 120.0
) -> dict[str, Any]:
    """Create a Workflow and wait until Argo gives it a final phase; returns the Workflow."""
    custom = client.CustomObjectsApi(api)
    name = body["metadata"]["name"]
    custom.create_namespaced_custom_object(ARGO_GROUP, ARGO_VERSION, namespace, "workflows", body)

    def finished() -> dict[str, Any] | None:
        wf: dict[str, Any] = custom.get_namespaced_custom_object(
            ARGO_GROUP, ARGO_VERSION, namespace, "workflows", name
        )
        phase = wf.get("status", {}).get("phase")
        return wf if phase in ("Succeeded", "Failed", "Error") else None

    return wait_for(f"Workflow {namespace}/{name} to finish", finished, timeout=timeout)


def pod_nodes(api: client.ApiClient, namespace: str, workflow_name: str) -> set[str]:
    pods = (
        client.CoreV1Api(api)
        .list_namespaced_pod(
            namespace, label_selector=f"workflows.argoproj.io/workflow={workflow_name}"
        )
        .items
    )
    return {pod.spec.node_name for pod in pods}


# --- control plane -------------------------------------------------------------------------------


def test_api_server_is_ready_and_reports_its_version(
    cluster: Cluster, api: client.ApiClient
) -> None:
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    version = client.VersionApi(api).get_code()
    if not cluster.local:
        return  # kind runs whatever Kubernetes its node image has
    assert (version.major, version.minor) == ("1", "36")
    assert version.git_version.startswith("v1.36.")


@pytest.mark.argo_matrix
def test_workflow_controller_is_the_argo_release_asked_for(cluster: Cluster) -> None:
    """``MLOPS_ARGO`` (v3, default; v4) picks the controller hack/cluster builds and starts: the
    running one must say it is that module's pinned release, or the v4 session tests v3.7."""
    if not cluster.local:
        return  # an external cluster runs whatever Argo it has
    major = os.environ.get("MLOPS_ARGO", "v3")
    folder = {"v3": "argo", "v4": "argo4"}[major]
    go_mod = (HACK / "modules" / folder / "go.mod").read_text()
    pinned = re.search(rf"github.com/argoproj/argo-workflows/{major} (v\S+)", go_mod)
    assert pinned, go_mod
    log = (cluster.state_dir / "logs" / "workflow-controller.log").read_text(errors="replace")
    started = [line for line in log.splitlines() if "Starting Workflow Controller" in line]
    assert started, log[-2000:]
    # "v4.0.7+unknown": Argo appends the git commit, which a module build does not know.
    running = re.search(r"version=\"?(v[^\s\"+]+)", started[-1])
    assert running and running.group(1) == pinned.group(1), started[-1]


def test_kubectl_and_helm_come_with_the_cluster(cluster: Cluster) -> None:
    client_version = cluster.kubectl("version", "--client").stdout
    assert "v1.36." in client_version or not cluster.local
    assert cluster.helm("version", "--short").stdout.startswith("v")


def test_kwok_nodes_are_ready_and_look_like_gke(api: client.ApiClient) -> None:
    nodes = {
        node.metadata.name: node
        for node in client.CoreV1Api(api).list_node(label_selector="type=kwok").items
    }
    assert set(nodes) == {GPU_NODE, CPU_NODE, ON_DEMAND_NODE}
    for node in nodes.values():
        ready = {c.type: c.status for c in node.status.conditions}["Ready"]
        assert ready == "True", node.metadata.name
    gpu = nodes[GPU_NODE]
    assert gpu.metadata.labels["cloud.google.com/gke-spot"] == "true"
    assert gpu.metadata.labels["cloud.google.com/gke-accelerator"] == "nvidia-tesla-t4"
    assert gpu.status.capacity["nvidia.com/gpu"] == "2"
    assert gpu.status.allocatable["nvidia.com/gpu"] == "2"
    assert (gpu.status.capacity["cpu"], gpu.status.capacity["memory"]) == ("8", "32Gi")
    assert [(t.key, t.value, t.effect) for t in gpu.spec.taints] == [
        ("nvidia.com/gpu", "present", "NoSchedule")
    ]
    assert not nodes[CPU_NODE].spec.taints
    assert "nvidia.com/gpu" not in nodes[CPU_NODE].status.capacity
    on_demand = nodes[ON_DEMAND_NODE]
    assert "cloud.google.com/gke-spot" not in on_demand.metadata.labels
    assert on_demand.metadata.labels["cloud.google.com/gke-accelerator"] == "nvidia-tesla-t4"
    assert on_demand.status.allocatable["nvidia.com/gpu"] == "1"
    assert [t.key for t in on_demand.spec.taints] == ["nvidia.com/gpu"]


def test_deleting_an_owner_garbage_collects_its_children(
    api: client.ApiClient, namespace: str
) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    labels = {"app": "gc-demo"}
    deployment = apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "gc-demo"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {"name": "c", "image": IMAGE, "imagePullPolicy": "IfNotPresent"}
                        ]
                    },
                },
            },
        },
    )
    owner = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gc-demo",
        "uid": deployment.metadata.uid,
    }
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "gc-demo-child", "ownerReferences": [owner]}}
    )
    # The Deployment's own chain (ReplicaSet -> Pod) runs too: scheduled onto a kwok node, Running.
    pod = wait_for(
        "the Deployment's pod to run",
        lambda: next(
            (
                p
                for p in core.list_namespaced_pod(namespace, label_selector="app=gc-demo").items
                if p.status.phase == "Running"
            ),
            None,
        ),
    )
    assert pod.spec.node_name == CPU_NODE  # the GPU node's taint keeps it off there

    apps.delete_namespaced_deployment("gc-demo", namespace, propagation_policy="Background")

    def children_gone() -> bool:
        cms = {cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items}
        rss = apps.list_namespaced_replica_set(namespace, label_selector="app=gc-demo").items
        pods = core.list_namespaced_pod(namespace, label_selector="app=gc-demo").items
        return "gc-demo-child" not in cms and not rss and not pods

    wait_for(
        "the garbage collector to delete the ConfigMap, ReplicaSet and Pod",
        children_gone,
        timeout=60,
    )


# --- Argo under kwok -----------------------------------------------------------------------------


@pytest.mark.argo_matrix
def test_trivial_workflow_succeeds(api: client.ApiClient, namespace: str) -> None:
    wf = submit_and_wait(api, namespace, workflow("hello", {}))
    assert wf["status"]["phase"] == "Succeeded", wf["status"]
    assert pod_nodes(api, namespace, "hello") == {CPU_NODE}


@pytest.mark.argo_matrix
def test_gpu_workflow_lands_on_the_spot_gpu_node(api: client.ApiClient, namespace: str) -> None:
    template = {
        "nodeSelector": {
            "cloud.google.com/gke-accelerator": "nvidia-tesla-t4",
            "cloud.google.com/gke-spot": "true",
        },
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "container": {"resources": {"limits": {"nvidia.com/gpu": "1"}}},
    }
    wf = submit_and_wait(api, namespace, workflow("gpu", template))
    assert wf["status"]["phase"] == "Succeeded", wf["status"]
    assert pod_nodes(api, namespace, "gpu") == {GPU_NODE}
    (node,) = [n for n in wf["status"]["nodes"].values() if n["type"] == "Pod"]
    assert node["hostNodeName"] == GPU_NODE


@pytest.mark.argo_matrix
def test_pod_annotation_makes_kwok_fail_the_step(api: client.ApiClient, namespace: str) -> None:
    # hack/cluster/kwok/stages.yaml: this annotation turns the fake run into exit code 3.
    template = {"metadata": {"annotations": {"pod-fail.stage.kwok.x-k8s.io/exit-code": "3"}}}
    wf = submit_and_wait(api, namespace, workflow("fails", template))
    assert wf["status"]["phase"] == "Failed", wf["status"]
    (node,) = [n for n in wf["status"]["nodes"].values() if n["type"] == "Pod"]
    assert "exit code 3" in node["message"]


@pytest.mark.argo_matrix
def test_full_argo_crd_rejects_an_invalid_workflow(api: client.ApiClient, namespace: str) -> None:
    body = workflow("invalid", {})
    body["spec"]["templates"][0]["container"]["resources"] = "lots"  # must be an object
    with pytest.raises(ApiException) as info:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            ARGO_GROUP, ARGO_VERSION, namespace, "workflows", body
        )
    assert info.value.status == 422
    assert "resources" in info.value.body


# --- authentication and RBAC ------------------------------------------------------------------------


def test_non_admin_user_is_denied_what_admin_may_do(cluster: Cluster, namespace: str) -> None:
    assert cluster.kubectl("auth", "can-i", "create", "namespaces").stdout.strip() == "yes"
    denied = cluster.kubectl(
        "auth", "can-i", "create", "namespaces", f"--as={cluster.user_name}", check=False
    )
    assert (denied.returncode, denied.stdout.strip()) == (1, "no")
    # The user's own kubeconfig (its static token) gets 403 from the API server, not just a "no".
    forbidden = cluster.kubectl("get", "pods", "-n", namespace, user=True, check=False)
    assert forbidden.returncode != 0 and "Forbidden" in forbidden.stderr
    # RBAC decides for real: a RoleBinding to `view` lets the same user read pods there.
    cluster.kubectl(
        "create",
        "rolebinding",
        "dev-view",
        "--clusterrole=view",
        f"--user={cluster.user_name}",
        "-n",
        namespace,
    )
    wait_for(
        "the RoleBinding to take effect",
        lambda: (
            cluster.kubectl("get", "pods", "-n", namespace, user=True, check=False).returncode == 0
        ),
        timeout=30,
    )
    assert (
        cluster.kubectl(
            "auth", "can-i", "delete", "pods", "-n", namespace, user=True, check=False
        ).stdout.strip()
        == "no"
    )


def test_service_account_token_from_token_request_is_subject_to_rbac(
    cluster: Cluster, api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "robot"}})
    token = cluster.service_account_token(namespace, "robot", expiration_s=600)
    subject = f"system:serviceaccount:{namespace}:robot"
    assert (
        cluster.kubectl(
            "auth", "can-i", "list", "configmaps", "-n", namespace, f"--as={subject}", check=False
        ).stdout.strip()
        == "no"
    )
    with cluster.token_api_client(token) as robot:
        with pytest.raises(ApiException) as info:
            client.CoreV1Api(robot).list_namespaced_config_map(namespace)
        assert info.value.status == 403
        assert subject in info.value.body  # authenticated as the ServiceAccount, then denied
        client.RbacAuthorizationV1Api(api).create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "robot-view"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "view",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": namespace}],
            },
        )

        def allowed() -> bool:
            try:
                client.CoreV1Api(robot).list_namespaced_config_map(namespace)
            except ApiException as exc:
                if exc.status != 403:
                    raise
                return False
            return True

        wait_for("the RoleBinding to let the ServiceAccount list ConfigMaps", allowed, timeout=30)
