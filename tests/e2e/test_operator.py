"""The operator against a real kube-apiserver and a real Argo workflow-controller (pods faked by kwok).

The operator runs as a subprocess (`kopf run --module=mlops_operator`), exactly as in its image, so
it can be killed and restarted like a real one. Every wait has a deadline.
"""

from __future__ import annotations

import copy
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_harness import Env, Operator, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def api(cluster: Any) -> Iterator[client.ApiClient]:
    api_client = cluster.api_client()
    yield api_client
    api_client.close()


@pytest.fixture(scope="module")
def env(cluster: Any, api: client.ApiClient, mlops_crd: None) -> Iterator[Env]:
    namespace = cluster.create_namespace(f"e2e-op-{uuid.uuid4().hex[:6]}")
    core = client.CoreV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "mlops-trainer"}})
    # "gpu" holds one run at a time (the FIFO queue); "wide" lets the load tests run in parallel.
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "mlops-queues"}, "data": {"gpu": "1", "wide": "50"}}
    )
    yield Env(api, namespace)
    core.delete_namespace(namespace)


@pytest.fixture(scope="module")
def operator(
    cluster: Any, env: Env, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = Operator(cluster.kubeconfig, log, args=["--standalone", f"--namespace={env.ns}"])
    op.start()
    try:
        yield op
    finally:
        try:
            # While the operator still runs: its finalizers would keep the objects otherwise.
            env.delete_all()
        finally:
            op.stop()
            print(op.log_tail())


@pytest.mark.argo_matrix
def test_apply_runs_to_succeeded(env: Env, operator: Operator) -> None:
    obj = env.apply(env.manifest("happy", epochs=2, seed=3))
    status = wait_for(
        "Queued/Running status", lambda: env.phase_is("happy", "Queued", "Running", "Succeeded")
    )
    run_id = status["runId"]
    assert run_id.startswith("happy-g1-")
    (cm,) = env.config_maps("happy")
    (wf,) = env.workflows("happy")
    assert cm.metadata.name == status["configMap"] == f"{run_id}-config"
    assert wf["metadata"]["name"] == status["workflow"] == run_id
    for owner_refs in (cm.metadata.owner_references, wf["metadata"]["ownerReferences"]):
        refs = [r.to_dict() if hasattr(r, "to_dict") else r for r in owner_refs]
        assert [(r["kind"], r["name"], r["uid"]) for r in refs] == [
            ("MLOps", "happy", obj["metadata"]["uid"])
        ]
    run = yaml.safe_load(cm.data["run.yaml"])
    assert (run["run_id"], run["name"], run["epochs"], run["seed"]) == (run_id, "happy", 2, 3)
    assert run["image"] == "docker.io/local/mlops-trainer:e2e"  # the operator's default image
    final = wait_for("Succeeded", lambda: env.phase_is("happy", "Succeeded"), timeout=180)
    conditions = {c["type"]: c for c in final["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["Validated"]["status"] == "True"
    assert conditions["Succeeded"]["status"] == "True"
    assert final["observedGeneration"] == 1
    assert final["startedAt"] and final["finishedAt"]
    wait_for("the events", lambda: {"RunSubmitted", "Succeeded"} <= env.events("happy"))
    assert "mlops_reconciles_total" in operator.metrics()


def test_invalid_config_is_marked_failed_and_creates_nothing(env: Env, operator: Operator) -> None:
    env.apply(env.manifest("bad-config", trainer={"kind": "vqvae", "config": {"batch_size": -4}}))
    status = wait_for("Failed", lambda: env.phase_is("bad-config", "Failed"))
    assert "spec.trainer.config.batch_size" in status["message"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Validated"]["reason"] == "SpecInvalid"
    assert env.workflows("bad-config") == [] and env.config_maps("bad-config") == []
    wait_for("the SpecInvalid Warning event", lambda: "SpecInvalid" in env.events("bad-config"))


def test_schema_violation_is_rejected_by_the_api_server(env: Env, operator: Operator) -> None:
    bad = env.manifest("bad-schema")
    bad["spec"]["epochs"] = "ten"
    with pytest.raises(ApiException) as info:
        env.apply(bad)
    assert info.value.status == 422
    assert "spec.epochs" in info.value.body
    bad = env.manifest("bad-kind", trainer={"kind": "gan"})
    with pytest.raises(ApiException) as info:
        env.apply(bad)
    assert "spec.trainer.kind" in info.value.body


def test_reapply_changes_nothing_and_new_spec_is_a_new_run(env: Env, operator: Operator) -> None:
    env.apply(env.manifest("again"))
    first = wait_for("first run", lambda: env.phase_is("again", "Queued", "Running", "Succeeded"))
    wait_for("first run done", lambda: env.phase_is("again", "Succeeded"), timeout=180)
    (wf,) = env.workflows("again")
    version = wf["metadata"]["resourceVersion"]
    obj = env.patch_spec("again", copy.deepcopy(env.get("again")["spec"]))  # the same spec again
    assert obj["metadata"]["generation"] == 1
    time.sleep(3)  # give a wrong operator the chance to act; nothing should happen
    (wf,) = env.workflows("again")
    assert wf["metadata"]["resourceVersion"] == version
    assert len(env.config_maps("again")) == 1

    env.patch_spec("again", {"epochs": 5})
    second = wait_for(
        "second run", lambda: (s := env.status("again")).get("observedGeneration") == 2 and s
    )
    assert second["runId"] != first["runId"] and second["runId"].startswith("again-g2-")
    wait_for(
        "two runs kept",
        lambda: len(env.workflows("again")) == 2 and len(env.config_maps("again")) == 2,
    )
    wait_for("second run done", lambda: env.phase_is("again", "Succeeded"), timeout=180)


def test_delete_removes_children(env: Env, operator: Operator) -> None:
    env.apply(env.manifest("doomed"))
    wait_for("children", lambda: env.workflows("doomed") and env.config_maps("doomed"))
    uid = env.uid("doomed")
    env.delete("doomed")
    wait_for(
        "children garbage-collected",
        lambda: not env.workflows(uid=uid) and not env.config_maps(uid=uid),
        timeout=120,
    )


def test_killing_the_operator_mid_reconcile_never_duplicates(env: Env, operator: Operator) -> None:
    names = [f"crash-{i}" for i in range(5)]
    operator.stop(signal.SIGKILL)
    for name in names:
        env.apply(env.manifest(name))
    for delay in (0.3, 0.8, 1.5):
        operator.start()
        time.sleep(delay)  # somewhere inside the reconciles
        operator.stop(signal.SIGKILL)
    operator.start()
    for name in names:
        wait_for(f"{name} submitted", lambda n=name: env.status(n).get("runId"))
    for name in names:
        assert len(env.workflows(name)) == 1, name
        assert len(env.config_maps(name)) == 1, name
    # ...and each run is still followed to its end, even one whose Workflow Argo finished while
    # no operator ran (its events went by before the status named the run).
    for name in names:
        wait_for(f"{name} Succeeded", lambda n=name: env.phase_is(n, "Succeeded"), timeout=120)


def test_twenty_at_once_no_cross_talk(env: Env, operator: Operator) -> None:
    names = [f"load-{i:02d}" for i in range(20)]
    for i, name in enumerate(names):
        env.apply(env.manifest(name, seed=i, epochs=i + 1))
    for name in names:
        wait_for(f"{name} submitted", lambda n=name: env.status(n).get("runId"), timeout=120)
    for i, name in enumerate(names):
        (cm,) = env.config_maps(name)
        run = yaml.safe_load(cm.data["run.yaml"])
        assert (run["name"], run["seed"], run["epochs"]) == (name, i, i + 1)
        assert run["run_id"] == env.status(name)["runId"]
        (wf,) = env.workflows(name)
        volumes = {v["name"]: v for v in wf["spec"]["volumes"]}
        assert volumes["run-config"]["configMap"]["name"] == cm.metadata.name


def test_operator_metrics_count_runs(env: Env, operator: Operator) -> None:
    text = operator.metrics()
    assert "mlops_runs{" in text


def test_kueue_mode_on_a_cluster_without_kueue_stops_the_operator_with_the_reason(
    cluster: Any, env: Env, tmp_path: Any
) -> None:
    """``kueue.enabled`` where Kueue is not installed: nothing would admit the trainer pods
    (or, with no Kueue webhook, they would run unqueued). The operator refuses to start and
    says what to install."""
    if cluster.kubectl("get", "crd", "workloads.kueue.x-k8s.io", check=False).returncode == 0:
        pytest.skip(
            "Kueue's CRDs are on this cluster (tests/e2e/test_kueue.py ran first in this "
            "session): the refusal is checked where they are not, as in make test's [e2e] session"
        )
    op = Operator(
        cluster.kubeconfig, tmp_path / "operator.log", args=["--standalone", f"--namespace={env.ns}"],
        env={"MLOPS_QUEUE_MODE": "kueue"},
    )  # fmt: skip
    try:
        with pytest.raises(AssertionError, match="the operator exited"):
            op.start()
        assert op.proc is not None and op.proc.returncode != 0
        log = op.log_tail()
        assert "serves no workloads.kueue.x-k8s.io/v1beta2" in log, log
        assert "install Kueue v0.17 or later" in log, log
    finally:
        op.stop()


def test_a_port_taken_before_the_operator_binds_it_is_picked_again(
    cluster: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The harness, not the operator: a CI run lost a test to "address already in use" on the
    operator's liveness port, which an outgoing connection had taken after ``free_port``."""
    log = tmp_path_factory.mktemp("ports") / "operator.log"
    op = Operator(cluster.kubeconfig, log, args=["--standalone", "--namespace=no-such-ns"])
    taken = op.health_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        try:
            op.start()
            assert op.health_port != taken and op.healthy()
            assert "address already in use" in log.read_text().lower()
        finally:
            op.stop()
