"""``service.sync`` and the handlers around it, with the API calls replaced (fast unit tests of
single functions; the e2e suites run the same code against a real API server and Argo)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import kopf
import pytest
from mlops_operator import handlers, kube, service
from mlops_operator.queueing import QueueView
from mlops_operator.settings import OperatorSettings
from mlops_operator.views import view_workflow

SPEC: dict[str, Any] = {
    "trainer": {"kind": "vqvae"},
    "data": "gs://b/d",
    "output": "gs://b/o",
    "queue": "gpu",
}


def _body(resource_version: str = "9") -> dict[str, Any]:
    return {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "MLOps",
        "metadata": {
            "name": "demo",
            "namespace": "ml",
            "generation": 1,
            "uid": "uid-1",
            "resourceVersion": resource_version,
        },
        "spec": dict(SPEC),
        "status": {},
    }


def _open_queue(body: Mapping[str, Any], key: str, admitted: Any) -> QueueView:
    return QueueView(key=key, capacity=None)


def _sync_in_a_thread(body: dict[str, Any], *, fresh: bool, queues: Any) -> list[Exception]:
    """Run sync in a thread; fail (instead of hanging the suite) when it blocks."""
    raised: list[Exception] = []

    def target() -> None:
        try:
            service.sync(
                body, [], OperatorSettings(), fresh=fresh, handler="resync",
                post=lambda *_: None, queues=queues,
            )  # fmt: skip
        except Exception as exc:
            raised.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "sync blocked on the admission lock"
    return raised


@pytest.mark.parametrize("latest", ["gone", "changed"])
def test_the_admission_lock_is_let_go_on_every_way_out(
    monkeypatch: pytest.MonkeyPatch, latest: str
) -> None:
    """A queued run seen from a cache (a resync) takes the queue's admission lock, then finds
    the object deleted or changed before acting. Both ways out must let the lock go: held, the
    next admission of any run waits for ever (the operator bench stalled at 169 of 1000 runs
    with every handler thread blocked on it)."""
    changed = _body("10")
    monkeypatch.setattr(kube, "get_mlops", lambda ns, name: None if latest == "gone" else changed)
    created: list[Any] = []
    monkeypatch.setattr(service, "_act", lambda body, decision, settings: created.append(1))
    monkeypatch.setattr(kube, "replace_status", lambda body, status: {**body, "status": status})
    assert _sync_in_a_thread(_body("9"), fresh=False, queues=_open_queue) == []
    assert not service.ADMISSIONS.lock.locked()
    assert created == ([] if latest == "gone" else [1])


def test_an_error_while_admitting_lets_the_lock_go(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(body: Mapping[str, Any], key: str, admitted: Any) -> QueueView:
        raise kube.ApiError("configmap", 500, "InternalError", "the queue lookup failed")

    raised = _sync_in_a_thread(_body(), fresh=True, queues=refuse)
    assert [type(e) for e in raised] == [kube.ApiError]
    assert not service.ADMISSIONS.lock.locked()


def test_the_resync_asks_the_queue_like_every_other_handler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A resync that admits a waiting run without asking its queue starts every waiting run
    once the resync period has passed, whatever the queue's size."""
    seen: dict[str, Any] = {}
    monkeypatch.setattr(service, "sync", lambda *a, **kw: seen.update(kw))
    handlers.resync(body=_body(), uid="uid-1")
    assert seen["handler"] == "resync"
    assert seen.get("queues") is not None


def test_a_run_that_stops_waiting_leaves_the_waiting_index() -> None:
    """kopf keeps an object's previous index entries when its index function returns None
    (kopf/_core/engines/indexing.py: only an exception or a filter mismatch discards them), so
    a run admitted long ago stayed 'ahead' of every later one: with the resync asking the queue,
    a third run of a one-unit queue waited for ever (e2e test_gpu_queue_runs_one_at_a_time_in_
    apply_order). An empty mapping replaces the entries."""
    waiting = _body()
    waiting["status"] = {"phase": "Queued", "reason": "WaitingForQueue", "queue": "ml/gpu"}
    assert set(handlers.waiting_by_queue(body=kopf.Body(waiting), uid="uid-1")) == {"ml/gpu"}
    admitted = _body()
    admitted["status"] = {"phase": "Running", "reason": "Running", "queue": "ml/gpu"}
    assert handlers.waiting_by_queue(body=kopf.Body(admitted), uid="uid-1") == {}


def test_a_sync_from_a_stale_index_copy_decides_from_its_own_last_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The MLOps watch lags the Workflow watch: a Workflow's ADDED event finds its owner in the
    index as it was before the status write that followed the Workflow's creation. Deciding
    from that copy wrote a status the server refused (409) and cost a GET (the operator bench
    counted 4 status updates and a GET per object); the write's own response is used instead."""
    service.WRITTEN.forget("uid-1")
    written: list[dict[str, Any]] = []
    server = {"rv": 9}

    def replace(body: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
        if body["metadata"]["resourceVersion"] != str(server["rv"]):
            raise kube.StaleObjectError("409")
        server["rv"] += 1
        new = {**body, "status": dict(status)}
        new["metadata"] = {**body["metadata"], "resourceVersion": str(server["rv"])}
        written.append(new)
        return new

    def get(namespace: str, name: str) -> dict[str, Any]:
        raise AssertionError("a GET: the sync decided from the stale copy")

    monkeypatch.setattr(kube, "replace_status", replace)
    monkeypatch.setattr(kube, "get_mlops", get)
    created: list[dict[str, Any]] = []
    monkeypatch.setattr(
        service, "_act", lambda body, decision, settings: created.extend(decision.create)
    )
    stale = _body("9")
    stale["spec"]["queue"] = None
    # The reconcile (fresh) creates the run and writes its status: rv 9 -> 10.
    service.sync(
        stale, [], OperatorSettings(), fresh=True, handler="reconcile", post=lambda *_: None
    )
    assert [w["status"]["submitted"] for w in written] == [True]
    # A Workflow event with the index still at rv 9: nothing more to write, nothing to read.
    workflows = [view_workflow(c) for c in created if c["kind"] == "Workflow"]
    outcome = service.sync(
        stale, workflows, OperatorSettings(), fresh=False, handler="follow", post=lambda *_: None
    )
    assert not outcome.decision.acts and len(written) == 1
    # Only the exact version that write replaced is swapped: any other is taken as it is.
    other = _body("11")
    assert service.WRITTEN.latest(other)["metadata"]["resourceVersion"] == "11"


def test_a_handler_that_succeeds_at_once_leaves_kopf_nothing_to_patch() -> None:
    """kopf stores a handler's progress, then purges it in the same cycle when the handler
    succeeded: only its marker annotation was left to write, a PATCH per object (the operator
    bench counted it). While a handler is being retried its progress stays, marker included."""
    storage = handlers.ProgressStorage(prefix="mlops.dev")
    body = kopf.Body(_body())
    patch = kopf.Patch()
    record: Any = {"started": "2026-11-30T20:00:00", "retries": 0}
    storage.store(key=kopf.HandlerId("reconcile"), record=record, body=body, patch=patch)
    assert patch  # progress and marker, while the handler runs
    storage.purge(key=kopf.HandlerId("reconcile"), body=body, patch=patch)
    assert not patch, patch
    retried = kopf.Patch()
    storage.store(key=kopf.HandlerId("reconcile"), record=record, body=body, patch=retried)
    assert set(retried["metadata"]["annotations"]) == {
        "mlops.dev/reconcile",
        "mlops.dev/kopf-managed",
    }


def _indexed(name: str, uid: str, phase: str | None, **meta: Any) -> dict[str, Any]:
    body = _body()
    body["metadata"].update(name=name, uid=uid, **meta)
    if phase is not None:  # handled: the status records generation 1's decision
        body["status"] = {"observedGeneration": 1, "phase": phase}
    return body


def test_one_resync_pass_syncs_each_unfinished_object_of_the_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The periodic resync is one pass over the MLOps index (not a kopf timer per object, which
    held each object's full body): unfinished and unhandled objects are synced, finished and
    deleting ones are not, and one object's failure does not stop the pass."""
    index = {
        "uid-run": [_indexed("running", "uid-run", "Running")],
        "uid-new": [_indexed("unhandled", "uid-new", None)],
        "uid-done": [_indexed("finished", "uid-done", "Succeeded")],
        "uid-del": [_indexed("deleting", "uid-del", "Running", deletionTimestamp="2026-12-01T00:00:00Z")],
        "uid-bad": [_indexed("broken", "uid-bad", "Running")],
    }  # fmt: skip
    index = {uid: [service.pack(b) for b in bodies] for uid, bodies in index.items()}
    synced: list[str] = []

    def sync(body: Mapping[str, Any], *args: Any, **kw: Any) -> None:
        assert kw["handler"] == "resync" and kw["queues"] is not None
        if body["metadata"]["name"] == "broken":
            raise ValueError("a bug met with one object")
        synced.append(body["metadata"]["name"])

    monkeypatch.setattr(service, "sync", sync)
    monkeypatch.setattr(service, "nudge_argo", lambda *a, **kw: 0)
    assert handlers.Resync(60).run_once(mlops_by_uid=index) == 3
    assert synced == ["running", "unhandled"]
    # Nor does an object the check itself fails on: the one thread must not end.
    index["uid-odd"] = [b"not json"]
    synced.clear()
    assert handlers.Resync(60).run_once(mlops_by_uid=index) == 3
    assert synced == ["running", "unhandled"]


def test_the_resync_loop_starts_once_and_passes_every_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    passes: list[float] = []
    monkeypatch.setattr(service, "sync", lambda *a, **kw: passes.append(1.0))
    monkeypatch.setattr(service, "nudge_argo", lambda *a, **kw: 0)
    loop = handlers.Resync(0.05)
    index = {"uid-run": [service.pack(_indexed("running", "uid-run", "Running"))]}
    try:
        loop.start_once({"mlops_by_uid": index})
        loop.start_once({"mlops_by_uid": index})  # a second handler: no second thread
        deadline = threading.Event()
        for _ in range(100):
            if len(passes) >= 3:
                break
            deadline.wait(0.05)
        assert len(passes) >= 3
        assert [t.name for t in threading.enumerate()].count("mlops-resync") == 1
    finally:
        loop.stop.set()


def test_an_indexed_object_is_packed_without_what_no_sync_reads() -> None:
    body = _body()
    body["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    body["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": '{"spec": {}}',
        "mlops.dev/rerun": "1",
    }
    packed = service.pack(kopf.Body(body))  # kopf's Body: mapping views, not dicts
    assert isinstance(packed, bytes)
    one, two = service.unpack(packed), service.unpack(packed)
    assert "managedFields" not in one["metadata"]
    assert one["metadata"]["annotations"] == {"mlops.dev/rerun": "1"}
    assert one["spec"] == SPEC and one["metadata"]["uid"] == "uid-1"
    one["spec"]["queue"] = "changed"
    assert two["spec"]["queue"] == "gpu"  # each unpack is a fresh copy
