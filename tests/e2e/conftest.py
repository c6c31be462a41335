"""Fixtures shared by the operator's lifecycle e2e tests: a namespace and operators to start.

Every operator runs with production delays and timeouts (``operator_harness.E2E_OPERATOR_ENV``);
tests start, kill and restart them by PID.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from operator_harness import Env, Operator

# "gpu": one run at a time (the FIFO queue); "wide": enough for every test at once.
QUEUES = {"gpu": "1", "wide": "100"}
# kwok: trainer pods of these tests run until the test fails or deletes them (or 10 min pass).
LONG_PODS = '{"pod-complete.stage.kwok.x-k8s.io/delay": "600s"}'
# A run on the fake CPU node (4 CPUs): tests whose runs overlap must not wait for the one fake GPU.
ON_CPU = {
    "spot": False,
    "resources": {"cpu": "100m", "memory": "256Mi", "gpu": {"count": 0}},
}


def make_namespace(cluster: Any, api: client.ApiClient, prefix: str) -> Env:
    """A fresh namespace with its queue ConfigMap (the runs' semaphores) and a ServiceAccount
    for trainer pods (the operator would create it; an older operator did not)."""
    namespace = cluster.create_namespace(f"{prefix}-{uuid.uuid4().hex[:6]}")
    core = client.CoreV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "mlops-trainer"}})
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "mlops-queues"}, "data": QUEUES}
    )
    return Env(api, namespace)


@pytest.fixture(scope="module")
def api(cluster: Any) -> Iterator[client.ApiClient]:
    api_client = cluster.api_client()
    yield api_client
    api_client.close()


OperatorFactory = Callable[..., Operator]


@pytest.fixture
def start_operator(cluster: Any, tmp_path: Path) -> Iterator[Callable[..., Operator]]:
    """``start_operator(env, *more_envs, env_vars={...}, kubeconfig=None)``: an operator watching
    those namespaces, started (liveness answers) and stopped after the test — after every MLOps
    object in its namespaces is deleted, so that no finalizer outlives it."""
    started: list[tuple[Operator, Sequence[Env]]] = []

    def start(
        *envs: Env, env_vars: dict[str, str] | None = None, kubeconfig: Any = None
    ) -> Operator:
        op = Operator(
            kubeconfig or cluster.kubeconfig,
            tmp_path / f"operator-{len(started)}.log",
            args=["--standalone", *(f"--namespace={e.ns}" for e in envs)],
            env=env_vars,
        )
        op.start()
        started.append((op, envs))
        return op

    yield start
    for op, envs in reversed(started):
        try:
            if op.proc is not None:
                for env in envs:
                    env.delete_all(timeout=240)
        finally:
            op.stop()
            print(f"--- operator log ({op.log}) ---\n{op.log_tail(8000)}")
