"""Kueue mode (issue 17): Kueue admits each trainer pod against a ClusterQueue's GPU quota.

Kueue v0.17 runs as a process against the local API server (``hack/cluster/kueue-up.sh``), its
webhooks served over TLS at a URL; its queue objects are the chart's own (``helm template`` of
``templates/kueue/queues.yaml``), applied to Kueue's real CRDs. The operator runs in kueue mode
(``MLOPS_QUEUE_MODE=kueue``, what ``kueue.enabled`` sets): no semaphore, the pod carries the
LocalQueue's label and Kueue's scheduling gate until Kueue admits it. kwok's pods run until the
test ends them the way a kubelet would (``end_pod``); an ended pod's Workload is Finished and its
quota free.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import LONG_PODS, OperatorFactory, make_namespace
from kubernetes import client
from mlops_operator.views import view_workflow
from operator_harness import Env, end_pod, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.kueue]

ROOT = Path(__file__).resolve().parents[2]
GATE = "kueue.x-k8s.io/admission"
PROVISIONING = "cloud.google.com/gke-provisioning"  # spot | standard, on the kwok GPU nodes
OPERATOR_ENV = {
    "MLOPS_QUEUE_MODE": "kueue",
    "MLOPS_SPOT_NODE_SELECTOR": json.dumps({PROVISIONING: "spot"}),
    "MLOPS_ON_DEMAND_NODE_SELECTOR": json.dumps({PROVISIONING: "standard"}),
    "MLOPS_POD_ANNOTATIONS": LONG_PODS,
    "MLOPS_RETRY_BACKOFF": "2s",
}


@pytest.fixture(scope="module")
def kueue(cluster: Any) -> Iterator[None]:
    """Kueue up on this cluster for the module (built from its Go module on first use, cached),
    then down: its webhook configurations first, so no pod create ever calls a dead webhook."""
    from cluster import run_script

    proc = run_script("kueue-up.sh", 1800, capture_output=True)
    assert proc.returncode == 0, f"hack/cluster/kueue-up.sh failed:\n{proc.stderr[-6000:]}"
    try:
        yield
    finally:
        down = run_script("kueue-down.sh", 300, capture_output=True)
        assert down.returncode == 0, f"hack/cluster/kueue-down.sh failed:\n{down.stderr[-4000:]}"


@pytest.fixture(scope="module")
def env(cluster: Any, api: client.ApiClient, mlops_crd: None, kueue: None) -> Iterator[Env]:
    """A namespace with a LocalQueue ``gpu`` of the chart's ClusterQueue: 2 GPUs of spot, 1 of
    on-demand (the kwok GPU nodes have as many)."""
    env = make_namespace(cluster, api, "e2e-kueue")
    cluster_queue = f"e2e-{env.ns}"
    values = {
        "kueue": {
            "enabled": True,
            "clusterQueue": cluster_queue,
            "flavors": [
                {
                    "name": f"{cluster_queue}-spot",
                    "nodeLabels": {PROVISIONING: "spot"},
                    "quota": {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "2"},
                },
                {
                    "name": f"{cluster_queue}-on-demand",
                    "nodeLabels": {PROVISIONING: "standard"},
                    "quota": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"},
                },
            ],
            "localQueues": [{"namespace": env.ns, "name": "gpu"}],
        },
        # What the operator is started with (OPERATOR_ENV): the chart refuses flavors keyed on a
        # label the two selectors do not set.
        "spot": {"nodeSelector": {PROVISIONING: "spot"}},
        "onDemand": {"nodeSelector": {PROVISIONING: "standard"}},
    }
    values_file = Path(cluster.kubeconfig).parent / f"kueue-values-{env.ns}.yaml"
    values_file.write_text(yaml.safe_dump(values))
    rendered = cluster.helm(
        "template", "e2e", str(ROOT / "charts" / "mlops-operator"),
        "--show-only", "templates/kueue/queues.yaml", "-f", str(values_file),
    ).stdout  # fmt: skip
    objects = [d for d in yaml.safe_load_all(rendered) if d]
    assert sorted(o["kind"] for o in objects) == [
        "ClusterQueue", "LocalQueue", "ResourceFlavor", "ResourceFlavor"
    ]  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input=rendered)
    wait_for(
        "the ClusterQueue to be active",
        lambda: "True"
        in cluster.kubectl(
            "get", "clusterqueue", cluster_queue,
            "-o", "jsonpath={.status.conditions[?(@.type=='Active')].status}",
        ).stdout,
        timeout=60,
    )  # fmt: skip
    yield env
    # Kueue holds a finalizer on its pods until it has seen them go: wait while it runs.
    wait_for("the namespace's pods to be gone", lambda: not _all_pods(env), timeout=180)
    cluster.kubectl("delete", "-f", "-", "--wait=false", input=rendered, check=False)


def _all_pods(env: Env) -> list[client.V1Pod]:
    pods: list[client.V1Pod] = env.core.list_namespaced_pod(env.ns).items
    return pods


def _pod(env: Env, name: str) -> client.V1Pod | None:
    """The newest trainer pod of ``name`` that has not ended."""
    pods = [p for p in env.pods(name) if p.status.phase in ("Pending", "Running")]
    return max(pods, key=lambda p: p.metadata.creation_timestamp) if pods else None


def _gated(pod: client.V1Pod | None) -> bool:
    return pod is not None and GATE in [g.name for g in pod.spec.scheduling_gates or []]


def _running(env: Env, name: str) -> client.V1Pod | None:
    pod = _pod(env, name)
    return pod if pod is not None and pod.status.phase == "Running" else None


QUOTA = "insufficient unused quota for nvidia.com/gpu in flavor"


def _waits_for_kueue(env: Env, name: str) -> dict[str, Any] | None:
    """The object's status once it says, in Kueue's words, that Kueue holds it back for GPU
    quota, while its pod is gated. (Kueue writes its reason on the Workload a moment after it
    makes it: until then the status says the Workload is not evaluated yet.)"""
    status = env.status(name)
    if (
        status.get("reason") == "WaitingForKueue"
        and QUOTA in status.get("message", "")
        and _gated(_pod(env, name))
    ):
        return status
    return None


def _succeed(env: Env, name: str) -> None:
    pod = _running(env, name)
    assert pod is not None, (name, env.status(name))
    end_pod(env, pod, exit_code=0)
    wait_for(f"{name} to succeed", lambda: env.phase_is(name, "Succeeded"), timeout=120)


def _workload(env: Env, pod: client.V1Pod) -> dict[str, Any]:
    items = client.CustomObjectsApi(env.api).list_namespaced_custom_object(
        "kueue.x-k8s.io", "v1beta2", env.ns, "workloads"
    )["items"]
    (mine,) = [
        w
        for w in items
        if any(r["kind"] == "Pod" and r["name"] == pod.metadata.name
               for r in w["metadata"].get("ownerReferences", []))
    ]  # fmt: skip
    return mine


def test_kueue_admits_runs_by_gpu_quota_and_the_third_waits_with_kueues_reason(
    env: Env, start_operator: OperatorFactory
) -> None:
    """Quota 2 spot GPUs, three 1-GPU runs: two admitted and running; the third's pod stays
    gated and its status is Queued with Kueue's own reason; when one run ends, Kueue admits
    it. Then a 2-GPU run holds both units: it waits while any 1-GPU run holds one, and while it
    runs a 1-GPU run waits."""
    start_operator(env, env_vars=OPERATOR_ENV)
    for name in ("q1", "q2"):
        env.apply(env.manifest(name, queue="gpu", spot=True))
        wait_for(f"{name} running", lambda name=name: _running(env, name), timeout=120)
    env.apply(env.manifest("q3", queue="gpu", spot=True))
    status = wait_for("q3 held back by Kueue", lambda: _waits_for_kueue(env, "q3"), timeout=120)
    assert status["phase"] == "Queued", status
    assert "LocalQueue gpu" in status["message"], status
    q1 = _running(env, "q1")
    assert q1 is not None
    # The operator finds a pod's Workload by the name Argo gives the pod: the same, live.
    (workflow,) = env.workflows("q1")
    assert view_workflow(workflow).attempts[-1].pod == q1.metadata.name
    admitted = _workload(env, q1)
    flavors = admitted["status"]["admission"]["podSetAssignments"][0]["flavors"]
    assert flavors["nvidia.com/gpu"].endswith("-spot"), admitted["status"]
    ready = next(c for c in env.status("q3")["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and "Kueue" in ready["message"], ready

    _succeed(env, "q1")
    pod = wait_for("q3 admitted and running", lambda: _running(env, "q3"), timeout=120)
    assert pod.spec.node_selector[PROVISIONING] == "spot"
    wait_for("q3's status running", lambda: env.phase_is("q3", "Running"), timeout=60)

    # A 2-GPU run waits while q2 and q3 hold one GPU each, and still after one of them ends.
    env.apply(env.manifest("big", queue="gpu", spot=True,
                           resources={"cpu": "1", "memory": "1Gi", "gpu": {"count": 2}}))  # fmt: skip
    wait_for("big held back by Kueue", lambda: _waits_for_kueue(env, "big"), timeout=120)
    _succeed(env, "q2")
    time.sleep(5)  # Kueue had its chance to admit it (it re-queues on every quota release)
    assert _waits_for_kueue(env, "big"), (env.status("big"), _pod(env, "big"))
    _succeed(env, "q3")
    big = wait_for("big admitted and running", lambda: _running(env, "big"), timeout=120)
    assert big.spec.node_name == "kwok-gpu-spot-0"
    # While it holds both spot GPUs, a 1-GPU run waits.
    env.apply(env.manifest("after", queue="gpu", spot=True))
    wait_for("after held back by Kueue", lambda: _waits_for_kueue(env, "after"), 120)
    _succeed(env, "big")
    wait_for("after admitted and running", lambda: _running(env, "after"), timeout=120)
    _succeed(env, "after")
    assert "RunSubmitted" in env.events("after")


def test_a_run_moved_off_spot_is_admitted_on_the_on_demand_flavor(
    env: Env, start_operator: OperatorFactory
) -> None:
    """fallbackAfterPreemptions: 1 under Kueue: one preemption on spot, then the run's next
    Workflow asks for on-demand nodes, and Kueue counts it against the on-demand flavor (whose
    node labels are what the pod now selects) and places it on the on-demand node."""
    start_operator(env, env_vars=OPERATOR_ENV)
    name = "moves"
    env.apply(
        env.manifest(
            name, queue="gpu", spot=True, fallbackAfterPreemptions=1,
            retries={"preemption": 3, "error": 0},
        )
    )  # fmt: skip
    first = wait_for(f"{name} running on spot", lambda: _running(env, name), timeout=120)
    assert first.spec.node_name == "kwok-gpu-spot-0"
    end_pod(env, first, exit_code=143, reason="Terminated",
            message="Pod was terminated in response to imminent node shutdown.")  # fmt: skip

    moved: list[client.V1Pod] = []
    deadline = time.monotonic() + 240
    while not moved and time.monotonic() < deadline:
        for pod in env.pods(name):
            if pod.status.phase != "Running" or pod.metadata.name == first.metadata.name:
                continue
            if pod.spec.node_selector.get(PROVISIONING) == "spot":
                # Argo's retry may start one more spot pod before the operator's stop lands; a
                # real trainer checkpoints on the stop's SIGTERM and exits 143 (kwok's pods
                # ignore signals: end it so).
                end_pod(env, pod, exit_code=143)
                continue
            moved.append(pod)
        time.sleep(0.5)
    assert moved, (env.status(name), [p.metadata.name for p in env.pods(name)])
    (pod,) = moved
    assert pod.spec.node_name == "kwok-gpu-ondemand-0"
    assert pod.spec.node_selector[PROVISIONING] == "standard"
    flavors = _workload(env, pod)["status"]["admission"]["podSetAssignments"][0]["flavors"]
    assert flavors["nvidia.com/gpu"].endswith("-on-demand"), flavors
    end_pod(env, pod, exit_code=0)
    status = wait_for(f"{name} to succeed", lambda: env.phase_is(name, "Succeeded"), 120)
    assert status["placement"] == "on-demand" and status["preemptions"] == 1, status
