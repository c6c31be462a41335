"""Preemption in the e2e cluster: a running trainer pod failed as a spot node shutdown fails it
("imminent node shutdown") is retried by Argo, counted in ``status.preemptions``, and the run still Succeeds; an
app error that must not be retried (exit 2) is not retried and not counted as a preemption.

kwok plays the pods: the operator's ``MLOPS_POD_ANNOTATIONS`` (the chart's
``trainer.podAnnotations``) sets kwok's stage annotations on every trainer pod, so pods run for
a while (or fail with a given exit code). That the *trainer* resumes from its last checkpoint
after such a kill is shown on the real trainer in ``test_trainer_kills.py``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from operator_harness import CRD, Env, Operator, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def ns_env(cluster: Any) -> Iterator[Env]:
    api = cluster.api_client()
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    namespace = f"pre-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": namespace}})
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "mlops-trainer"}})
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "mlops-queues"}, "data": {"wide": "5"}}
    )
    yield Env(api, namespace)
    core.delete_namespace(namespace)
    api.close()


def _operator(cluster: Any, env: Env, log: Path, annotations: dict[str, str]) -> Operator:
    return Operator(
        cluster.kubeconfig,
        log,
        args=["--standalone", f"--namespace={env.ns}"],
        env={"MLOPS_POD_ANNOTATIONS": json.dumps(annotations)},
    )


def _pods(env: Env, name: str) -> list[client.V1Pod]:
    pods: list[client.V1Pod] = env.core.list_namespaced_pod(
        env.ns, label_selector=f"mlops.dev/name={name}"
    ).items
    return pods


def test_preempted_pod_is_retried_and_counted_as_a_preemption(
    cluster: Any, ns_env: Env, tmp_path: Path, faults: Any
) -> None:
    env = ns_env
    op = _operator(
        cluster, env, tmp_path / "op.log", {"pod-complete.stage.kwok.x-k8s.io/delay": "15s"}
    )
    op.start()
    try:
        env.apply(env.manifest("spot", retries={"preemption": 3, "error": 0}))
        running = wait_for(
            "a running trainer pod",
            lambda: [p for p in _pods(env, "spot") if p.status.phase == "Running"],
            timeout=120,
        )
        # What GKE's graceful node shutdown does to a pod on a preempted spot node: the kubelet
        # fails it with this reason and message (kwok has no kubelet, so the test writes it).
        # Deleting the pod is not the same here: kwok's delete stage ends its containers with
        # exit 0, which Argo records as a success.
        pod = running[0]
        env.core.patch_namespaced_pod_status(
            pod.metadata.name,
            env.ns,
            {
                "status": {
                    "phase": "Failed",
                    "reason": "Terminated",
                    "message": "Pod was terminated in response to imminent node shutdown.",
                    "containerStatuses": [
                        {
                            **env.api.sanitize_for_serialization(c),
                            "ready": False,
                            "started": False,
                            "state": {
                                "terminated": {
                                    "exitCode": 143,
                                    "reason": "Error",
                                    "startedAt": c.state.running.started_at.isoformat()
                                    if c.state.running
                                    else None,
                                    "finishedAt": None,
                                }
                            },
                        }
                        for c in pod.status.container_statuses or []
                    ],
                }
            },
        )
        status = wait_for("Succeeded", lambda: env.phase_is("spot", "Succeeded"), timeout=240)
        assert status["preemptions"] == 1, status
        (wf,) = env.workflows("spot")
        pods = [n for n in wf["status"]["nodes"].values() if n["type"] == "Pod"]
        assert len(pods) == 2, [(n["phase"], n.get("message")) for n in pods]
    finally:
        op.stop()
    faults.record("spot preemption (node shutdown mid-run), e2e", tried=1, survived=1)


def test_fatal_app_error_is_not_retried_nor_a_preemption(
    cluster: Any, ns_env: Env, tmp_path: Path
) -> None:
    env = ns_env
    op = _operator(
        cluster, env, tmp_path / "op.log", {"pod-fail.stage.kwok.x-k8s.io/exit-code": "2"}
    )
    op.start()
    try:
        env.apply(env.manifest("broken", retries={"preemption": 3, "error": 2}))
        status = wait_for("Failed", lambda: env.phase_is("broken", "Failed"), timeout=180)
        assert status["preemptions"] == 0, status
        (wf,) = env.workflows("broken")
        pods = [n for n in wf["status"]["nodes"].values() if n["type"] == "Pod"]
        assert len(pods) == 1, "exit 2 means never retry"
    finally:
        op.stop()
