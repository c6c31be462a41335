"""The pure lifecycle (:func:`mlops_operator.reconcile.decide`), table-driven; the e2e tests run
the same code against a real API server and Argo (``tests/e2e/test_lifecycle.py`` and friends)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest
from mlops_api.crd import status_schema
from mlops_api.spec import Condition, MLOpsStatus
from mlops_operator.queueing import QueueView, Waiting, queue_view
from mlops_operator.reconcile import (
    Decision,
    Policy,
    Stop,
    handled,
    parse_status,
    set_condition,
    status_json,
)
from mlops_operator.reconcile import decide as _decide
from mlops_operator.views import (
    Attempt,
    WorkflowView,
    argo_pod_name,
    view_workflow,
    view_workload,
    with_workloads,
)
from mlops_trainers.contract import Summary
from mlops_workflows.render import RenderSettings

AT = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
POLICY = Policy(render=RenderSettings(), default_image="docker.io/local/trainer:1")
SPEC: dict[str, Any] = {
    "trainer": {"kind": "vqvae"},
    "data": "gs://b/d",
    "output": "gs://b/o",
    "retries": {"preemption": 2, "error": 1},
}


# Most cases are not about queues: an empty queue admits every run.
OPEN = QueueView(key="ml/gpu", capacity=None)


def decide(*args: Any, **kwargs: Any) -> Decision:
    kwargs.setdefault("queue", OPEN)
    return _decide(*args, **kwargs)


def body(
    generation: int = 1,
    status: dict[str, Any] | None = None,
    rerun: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": "demo",
        "namespace": "ml",
        "generation": generation,
        "uid": "uid-1",
        "resourceVersion": "9",
    }
    if rerun is not None:
        meta["annotations"] = {"mlops.dev/rerun": rerun}
    return {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "MLOps",
        "metadata": meta,
        "spec": {**SPEC, **spec},
        "status": status or {},
    }


def pod(phase: str, message: str = "", exit_code: str | None = None, **kw: Any) -> Attempt:
    return Attempt(name=f"p-{phase}", phase=phase, message=message, exit_code=exit_code, **kw)


def wf(name: str, phase: str = "Running", *attempts: Attempt, **kw: Any) -> WorkflowView:
    return WorkflowView(
        name=name,
        namespace="ml",
        owner_uid="uid-1",
        run_id=kw.pop("run_id", name),
        generation=kw.pop("generation", 1),
        phase=phase,
        attempts=attempts,
        **kw,
    )


def applied(b: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """``b`` with the decision's status written (what the API server would then hold)."""
    if decision.status is not None:
        b = {**b, "status": status_json(decision.status)}
    return b


def first_run(b: dict[str, Any] | None = None) -> tuple[dict[str, Any], Decision]:
    b = b or body()
    decision = decide(b, [], POLICY, AT)
    return applied(b, decision), decision


# === Deciding a run ===


def test_a_new_object_gets_one_run_created_configmap_first() -> None:
    _, decision = first_run()
    assert [c["kind"] for c in decision.create] == ["ConfigMap", "Workflow"]
    status = decision.status
    assert status is not None
    assert (status.phase, status.observed_generation, status.submitted) == ("Queued", 1, True)
    assert status.run_id and status.run_id.startswith("demo-g1-")
    assert status.workflow == status.run_id and status.config_map == f"{status.run_id}-config"
    assert status.output == f"gs://b/o/{status.run_id}"
    for child in decision.create:
        (ref,) = child["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            "MLOps",
            "demo",
            "uid-1",
            True,
        )
        assert child["metadata"]["namespace"] == "ml"
    labels = decision.create[1]["metadata"]["labels"]
    assert labels["mlops.dev/owner-uid"] == "uid-1" and labels["mlops.dev/run-id"] == status.run_id
    assert [e.reason for e in decision.events] == ["RunSubmitted"]


def test_deciding_again_changes_nothing() -> None:
    b, decision = first_run()
    assert status_json(decision.status)["runId"]  # type: ignore[arg-type]
    again = decide(b, [wf(decision.status.run_id or "")], POLICY, AT)  # type: ignore[union-attr]
    assert again.create == () and again.events == ()
    assert again.status is None or again.status.phase == "Queued"


def test_a_new_default_image_never_starts_a_run() -> None:
    """The run of a decided generation is kept; an upgrade changes no id (issue point 1)."""
    b, decision = first_run()
    run = decision.status.run_id  # type: ignore[union-attr]
    upgraded = Policy(render=RenderSettings(), default_image="docker.io/local/trainer:2")
    for workflows in ([wf(run or "")], [wf(run or "", "Succeeded")]):
        later = decide(b, workflows, upgraded, AT)
        assert later.create == ()
        assert (later.status or parse_status(b["status"])).run_id == run


def test_a_finished_run_is_never_resubmitted_even_without_its_workflow() -> None:
    """Argo's TTL deleted the Workflow of a finished run (issue point 2)."""
    b, decision = first_run()
    run = decision.status.run_id or ""  # type: ignore[union-attr]
    done = decide(b, [wf(run, "Succeeded", pod("Succeeded"))], POLICY, AT)
    assert done.status is not None and done.status.phase == "Succeeded"
    b = applied(b, done)
    for workflows in ([], [wf(run, "Succeeded")]):
        again = decide(b, workflows, POLICY, AT)
        assert again.create == () and again.stop == ()
        assert (again.status or parse_status(b["status"])).phase == "Succeeded"


def test_a_submitted_run_whose_workflow_vanished_is_reported_not_resubmitted() -> None:
    b, _ = first_run()
    gone = decide(b, [], POLICY, AT)
    assert gone.create == ()
    assert gone.status is not None
    assert (gone.status.phase, gone.status.reason) == ("Failed", "WorkflowMissing")
    assert "mlops.dev/rerun" in gone.status.message


def test_an_invalid_spec_creates_nothing_and_names_the_field() -> None:
    decision = decide(body(epochs=-1), [], POLICY, AT)
    assert decision.create == ()
    status = decision.status
    assert status is not None and (status.phase, status.reason) == ("Failed", "SpecInvalid")
    assert "spec.epochs" in status.message and status.run_id is None
    conds = {c.type: c for c in status.conditions}
    assert conds["Validated"].status == "False" and "spec.epochs" in conds["Validated"].message
    # Decided: looking again changes nothing and posts no second event.
    again = decide(applied(body(epochs=-1), decision), [], POLICY, AT)
    assert again == Decision()


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"output": "./mlops-runs"}, "spec.output"),
        ({"data": "file:///home/me/frames"}, "spec.data"),
        ({"resume": {"from": "/srv/runs/vqvae-demo-g1-0123abcd"}}, "spec.resume.from"),
    ],
)
def test_a_local_path_is_refused_in_a_cluster(spec: dict[str, Any], field: str) -> None:
    """Cluster-only rule (issue 14): a pod cannot reach this machine's folders; `mlops run`
    accepts the same manifest."""
    from mlops_api import parse_manifest
    from mlops_operator.reconcile import manifest_of

    decision = decide(body(**spec), [], POLICY, AT)
    assert decision.create == ()
    status = decision.status
    assert status is not None and (status.phase, status.reason) == ("Failed", "SpecInvalid")
    assert f"{field}: " in status.message and "local path" in status.message
    parse_manifest(manifest_of(body(**spec)))  # not for a cluster: accepted


def test_the_same_spec_written_out_keeps_the_run() -> None:
    b, decision = first_run()
    run = decision.status.run_id  # type: ignore[union-attr]
    b2 = {**b, "metadata": {**b["metadata"], "generation": 2}, "spec": {**b["spec"], "epochs": 10}}
    same = decide(b2, [wf(run or "")], POLICY, AT)
    assert same.create == ()
    assert same.status is not None and same.status.run_id == run
    assert same.status.observed_generation == 2


def test_run_ids_differ_by_namespace_name_and_uid() -> None:
    ids = set()
    for ns, name, uid in [
        ("ml", "x.y", "u1"),
        ("ml", "x-y", "u2"),
        ("team-a", "x-y", "u3"),
        ("ml", "x-y", "u4"),  # deleted and applied again
        ("ml", "a" * 55 + "1", "u5"),
        ("ml", "a" * 55 + "2", "u6"),
    ]:
        b = body()
        b["metadata"].update(namespace=ns, name=name, uid=uid)
        decision = decide(b, [], POLICY, AT)
        assert decision.status is not None and decision.status.run_id
        assert len(decision.status.run_id) <= 63
        ids.add(decision.status.run_id)
    assert len(ids) == 6


@pytest.mark.parametrize(
    "name",
    ["a", "b" * 62 + "-c", "b" * 62 + ".c", "b" * 63, "b" * 64, ("b" * 62 + ".") * 4 + "b"],
)
def test_every_name_gets_valid_child_names_and_labels(name: str) -> None:
    b = body()
    b["metadata"]["name"] = name
    decision = decide(b, [], POLICY, AT)
    for child in decision.create:
        assert len(child["metadata"]["name"]) <= 253
        for value in child["metadata"]["labels"].values():
            assert len(value) <= 63 and value[0].isalnum() and value[-1].isalnum(), value
    assert len(decision.create[1]["metadata"]["name"]) <= 63


# === onChange ===


def _second_generation(on_change: str) -> tuple[dict[str, Any], str]:
    b, decision = first_run(body(onChange=on_change))
    run = decision.status.run_id or ""  # type: ignore[union-attr]
    b2 = {**b, "metadata": {**b["metadata"], "generation": 2}, "spec": {**b["spec"], "epochs": 3}}
    return b2, run


def test_queue_waits_without_creating_then_starts() -> None:
    b2, old = _second_generation("queue")
    waiting = decide(b2, [wf(old)], POLICY, AT)
    assert waiting.create == () and waiting.events == ()
    assert waiting.status is not None
    assert (waiting.status.phase, waiting.status.reason) == ("Queued", "WaitingForPreviousRun")
    new = waiting.status.run_id
    assert new != old and not waiting.status.submitted
    b3 = applied(b2, waiting)
    still = decide(b3, [wf(old)], POLICY, AT)
    assert still.create == () and still.status is None  # no rewrite, no event while it waits
    go = decide(b3, [wf(old, "Succeeded")], POLICY, AT)
    assert [c["kind"] for c in go.create] == ["ConfigMap", "Workflow"]
    assert go.status is not None and go.status.run_id == new and go.status.submitted


def test_replace_stops_the_old_run_and_creates_the_new() -> None:
    b2, old = _second_generation("replace")
    decision = decide(b2, [wf(old)], POLICY, AT)
    assert decision.stop == (Stop(old, "Stop"),)
    assert len(decision.create) == 2
    assert "Replaced" in [e.reason for e in decision.events]


def test_reject_keeps_following_the_old_run_and_a_rerun_starts_the_new_spec() -> None:
    b2, old = _second_generation("reject")
    rejected = decide(b2, [wf(old)], POLICY, AT)
    assert rejected.create == ()
    status = rejected.status
    assert status is not None and status.run_id == old and status.observed_generation == 2
    accepted = {c.type: c for c in status.conditions}["Accepted"]
    assert (accepted.status, accepted.reason) == ("False", "ChangeRejected")
    b3 = applied(b2, rejected)
    # Later resyncs change nothing: the rejection stands...
    assert decide(b3, [wf(old, "Succeeded")], POLICY, AT).create == ()
    # ...until a rerun token (or a new generation) asks again.
    b4 = {**b3, "metadata": {**b3["metadata"], "annotations": {"mlops.dev/rerun": "1"}}}
    rerun = decide(b4, [wf(old, "Succeeded")], POLICY, AT)
    assert len(rerun.create) == 2
    assert rerun.status is not None and rerun.status.run_id != old and rerun.status.rerun == "1"


def test_a_rerun_token_is_a_new_run_of_the_same_generation() -> None:
    b, decision = first_run()
    run = decision.status.run_id or ""  # type: ignore[union-attr]
    b = applied(b, decide(b, [wf(run, "Succeeded", pod("Succeeded"))], POLICY, AT))
    b["metadata"]["annotations"] = {"mlops.dev/rerun": "again"}
    again = decide(b, [wf(run, "Succeeded")], POLICY, AT)
    assert again.status is not None and again.status.run_id not in (None, run)
    assert len(again.create) == 2 and again.status.phase == "Queued"


# === Following a run, budgets ===

SHUTDOWN = "Pod was terminated in response to imminent node shutdown."


@pytest.mark.parametrize(
    ("attempts", "phase", "reason", "stops"),
    [
        ((), "Queued", "Queued", False),
        ((pod("Running"),), "Running", "Running", False),
        ((pod("Failed", SHUTDOWN), pod("Running")), "Running", "Running", False),
        ((pod("Failed", SHUTDOWN), pod("Failed", "", "143")), "Running", "Retrying", False),
        (  # three preemptions with a budget of two
            (pod("Failed", SHUTDOWN), pod("Error", "pod deleted"), pod("Failed", "", "143")),
            "Failed",
            "PreemptionBudgetExhausted",
            True,
        ),
        (  # two preemptions then two app errors with a budget of one
            (
                pod("Failed", SHUTDOWN),
                pod("Failed", SHUTDOWN),
                pod("Failed", "Error (exit code 1)", "1"),
                pod("Failed", "Error (exit code 1)", "1"),
            ),
            "Failed",
            "ErrorBudgetExhausted",
            True,
        ),
        (  # ... one app error after two preemptions is still within both budgets
            (pod("Failed", SHUTDOWN), pod("Failed", SHUTDOWN), pod("Failed", "", "1")),
            "Running",
            "Retrying",
            False,
        ),
    ],
)
def test_status_and_budgets_from_the_attempts(
    attempts: tuple[Attempt, ...], phase: str, reason: str, stops: bool
) -> None:
    b, decision = first_run()
    run = decision.status.run_id or ""  # type: ignore[union-attr]
    followed = decide(b, [wf(run, "Running", *attempts)], POLICY, AT)
    status = followed.status or parse_status(b["status"])
    assert (status.phase, status.reason) == (phase, reason), status.message
    assert followed.stop == ((Stop(run, "Terminate"),) if stops else ())
    if stops:
        assert "spec.retries" in status.message
        # Stopped once; the next look changes nothing (no second stop, no flapping).
        assert (
            decide(
                applied(b, followed),
                [wf(run, "Running", *attempts, shutdown="Terminate")],
                POLICY,
                AT,
            ).stop
            == ()
        )


def test_queued_until_a_pod_exists_never_back() -> None:
    b, decision = first_run()
    run = decision.status.run_id or ""  # type: ignore[union-attr]
    phases = []
    for view in [
        wf(run, "Running", waiting=True),
        wf(run, "Running"),  # an event without the semaphore details: still Queued
        wf(run, "Running", pod("Pending")),
        wf(run, "Running", pod("Running")),
        wf(run, "Succeeded", pod("Succeeded")),
    ]:
        decision = decide(b, [view], POLICY, AT)
        b = applied(b, decision)
        phases.append(parse_status(b["status"]).phase)
    assert phases == ["Queued", "Queued", "Running", "Running", "Succeeded"]


def test_summary_metrics_checkpoint_and_the_trainers_error() -> None:
    b, decision = first_run()
    run = decision.status.run_id or ""  # type: ignore[union-attr]
    body_wf = {
        "metadata": {"name": run, "namespace": "ml", "labels": {"mlops.dev/run-id": run}},
        "spec": {},
        "status": {
            "phase": "Failed",
            "nodes": {
                "a": {"id": "a", "type": "Pod", "phase": "Failed", "startedAt": "1",
                      "outputs": {"exitCode": "2", "parameters": [{"name": "summary", "value": json.dumps(
                          {"state": "failed", "error": "DataError: no images under gs://b/d",
                           "metrics": {"loss": 0.5, "note": "x"}, "latest_checkpoint": "gs://c"})}]}},
                "r": {"id": "r", "type": "Retry", "phase": "Failed"},
            },
        },
    }  # fmt: skip
    failed = decide(b, [view_workflow(body_wf)], POLICY, AT)
    status = failed.status
    assert status is not None and status.phase == "Failed"
    assert "DataError: no images under gs://b/d" in status.message
    assert status.metrics == {"loss": 0.5} and status.latest_checkpoint == "gs://c"
    assert status.app_errors == 1 and status.preemptions == 0


def test_keep_runs_prunes_the_oldest_finished() -> None:
    b, decision = first_run(body(keepRuns=2))
    run = decision.status.run_id or ""  # type: ignore[union-attr]
    old = [wf(f"old-{g}", "Succeeded", generation=g) for g in range(1, 4)]
    pruned = decide(b, [*old, wf(run)], POLICY, AT).prune
    assert pruned == ("old-2", "old-1")


# === Status: one typed model, valid against the CRD ===


def as_json_schema(node: Any) -> Any:
    """An OpenAPI v3 (CRD) schema as JSON Schema: ``nullable: true`` becomes a null type."""
    if isinstance(node, list):
        return [as_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: as_json_schema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def test_every_status_decide_writes_is_valid_against_the_crd() -> None:
    schema = as_json_schema(status_schema())
    statuses = []
    b, decision = first_run()
    statuses.append(decision.status)
    run = decision.status.run_id or ""  # type: ignore[union-attr]
    for view in [
        wf(run, "Running", pod("Running", progress="3/10")),
        wf(run, "Running", pod("Failed", SHUTDOWN), pod("Error", "x"), pod("Failed", "", "143")),
        wf(run, "Succeeded", pod("Succeeded")),
        wf(run, "Failed", pod("Failed", "boom", "2"), shutdown="Stop"),
    ]:
        statuses.append(decide(b, [view], POLICY, AT).status)
    statuses.append(decide(body(epochs=-1), [], POLICY, AT).status)
    statuses.append(decide(b, [], POLICY, AT).status)  # WorkflowMissing
    for status in statuses:
        assert status is not None
        jsonschema.validate(status_json(status), schema)


def test_status_holds_no_nulls_so_kubectl_columns_read_none() -> None:
    """A status key with a null value shows as ``<no value>`` in ``kubectl get`` (the ETA of
    every finished run did); an absent key shows as ``<none>``. The status is written whole
    (PUT), so leaving a key out clears it as the null did."""
    b = body()
    run = decide(b, [], POLICY, AT).status
    assert run is not None
    done = decide(
        {**b, "status": status_json(run)},
        [wf(run.run_id or "", "Succeeded", pod("Succeeded"))],
        POLICY,
        AT,
    ).status
    assert done is not None and done.phase == "Succeeded"

    def nulls(value: Any, path: str = "status") -> list[str]:
        if isinstance(value, dict):
            return [p for k, v in value.items() for p in nulls(v, f"{path}.{k}")]
        if isinstance(value, list):
            return [p for i, v in enumerate(value) for p in nulls(v, f"{path}[{i}]")]
        return [path] if value is None else []

    for status in (run, done):
        data = status_json(status)
        assert nulls(data) == [], data
        assert "eta" not in data and data["phase"]
    assert status_json(done)["runId"] == run.run_id


def test_conditions_merge_by_type_and_keep_transition_times() -> None:
    t1, t2 = AT, AT.replace(hour=13)
    foreign = Condition(type="External", status="True", reason="Theirs")
    first = set_condition([foreign], "Ready", "False", "Queued", at=t1)
    same = set_condition(first, "Ready", "False", "Running", at=t2)
    flipped = set_condition(same, "Ready", "True", "Succeeded", at=t2)
    assert [c.type for c in flipped] == ["External", "Ready"]
    assert same[1].last_transition_time == t1 and flipped[1].last_transition_time == t2
    assert flipped[0] == foreign


def test_a_status_this_operator_cannot_read_starts_over() -> None:
    assert parse_status({"phase": "Bogus"}) == MLOpsStatus()
    assert parse_status(None) == MLOpsStatus()


def test_attempts_are_classified() -> None:
    assert pod("Failed", SHUTDOWN).failure == "preemption"
    assert pod("Error", "pod deleted").failure == "preemption"
    assert pod("Failed", "Error (exit code 143)", "143").failure == "preemption"
    assert pod("Failed", "OOMKilled (exit code 137)", "137").failure == "app-error"
    assert pod("Failed", "", "1").failure == "app-error"
    assert pod("Succeeded", "pod deleted").failure is None
    assert pod("Running").failure is None


def _handled_body(
    generation: int, status: dict[str, Any], rerun: str | None = None
) -> dict[str, Any]:
    annotations = {"mlops.dev/rerun": rerun} if rerun else {}
    return {"metadata": {"generation": generation, "annotations": annotations}, "status": status}


def test_handled_reads_the_decision_from_status() -> None:
    """What kopf's change handlers still have to do comes from the status alone."""
    synced_false = {"type": "Synced", "status": "False", "reason": "Forbidden"}
    assert not handled(_handled_body(1, {}))  # never decided: the create handler
    assert handled(_handled_body(1, {"observedGeneration": 1, "phase": "Queued"}))
    assert not handled(_handled_body(2, {"observedGeneration": 1, "phase": "Running"}))
    # A new rerun token is a new decision, like a new generation.
    assert not handled(_handled_body(1, {"observedGeneration": 1}, rerun="2"))
    assert handled(_handled_body(1, {"observedGeneration": 1, "rerun": "2"}, rerun="2"))
    # A transient failure of the decision's actions: retried (kopf's backoff) until Synced...
    queued = {"observedGeneration": 1, "phase": "Queued", "conditions": [synced_false]}
    assert not handled(_handled_body(1, queued))
    # ...but a final failure (the run failed) is never retried.
    assert handled(_handled_body(1, {**queued, "phase": "Failed"}))


def test_a_budget_spent_when_argo_failed_the_run_by_itself_is_named() -> None:
    """Argo's one limit (both budgets together) can run out at the same attempt as a budget."""
    b, decision = first_run()
    run = decision.status.run_id or ""  # type: ignore[union-attr]
    app = pod("Failed", "Error (exit code 1)", "1")
    attempts = (pod("Failed", SHUTDOWN), pod("Failed", SHUTDOWN), app, app)
    done = decide(b, [wf(run, "Failed", *attempts)], POLICY, AT)
    assert done.status is not None
    assert (done.status.phase, done.status.reason) == ("Failed", "ErrorBudgetExhausted")
    assert done.stop == ()  # nothing left to stop


def test_guardrails_refuse_a_spec_before_anything_is_created() -> None:
    from mlops_api.guardrails import Guardrails

    strict = Policy(
        render=RenderSettings(),
        default_image="registry.example/ml/trainer:1",
        guardrails=Guardrails(image_prefixes=("registry.example/ml/",), max_gpus=0),
    )
    refused = decide(body(image="docker.io/evil/x:1"), [], strict, AT)
    assert refused.create == ()
    status = refused.status
    assert status is not None and (status.phase, status.reason) == ("Failed", "PolicyViolation")
    assert "spec.image" in status.message and "spec.resources.gpu.count" in status.message
    assert [e.reason for e in refused.events] == ["PolicyViolation"]
    # The default image is allowed; a CPU run is within the GPU cap.
    ok = decide(body(resources={"gpu": {"count": 0}}), [], strict, AT)
    assert len(ok.create) == 2


def test_suspend_stops_the_run_and_resume_continues_it_in_a_new_segment() -> None:
    b, decision = first_run()
    run = decision.status.run_id or ""  # type: ignore[union-attr]
    running = wf(run, "Running", pod("Running", progress="4/10"))
    b = applied(b, decide(b, [running], POLICY, AT))
    # spec.suspend: true is a new generation of the same run (not a new run).
    b = {
        **b,
        "metadata": {**b["metadata"], "generation": 2},
        "spec": {**b["spec"], "suspend": True},
    }
    suspended = decide(b, [running], POLICY, AT)
    assert suspended.stop == (Stop(run, "Stop"),), "the trainer gets SIGTERM and checkpoints"
    status = suspended.status
    assert status is not None and (status.phase, status.run_id) == ("Suspended", run)
    assert "Suspended" in [e.reason for e in suspended.events]
    b = applied(b, suspended)
    assert decide(b, [running], POLICY, AT).events == (), "once"
    stopped = wf(
        run, "Failed", pod("Failed", "workflow shutdown with strategy:  Stop"), shutdown="Stop"
    )
    assert decide(b, [stopped], POLICY, AT).create == ()  # suspended: nothing starts
    # spec.suspend: false — the same run resumes, in a new Workflow, once its trainer has exited.
    b = {
        **b,
        "metadata": {**b["metadata"], "generation": 3},
        "spec": {**b["spec"], "suspend": False},
    }
    b = applied(b, decide(b, [stopped], POLICY, AT, trainers_alive=True))
    assert decide(b, [stopped], POLICY, AT).check_trainers == run
    waiting = decide(b, [stopped], POLICY, AT, trainers_alive=True)
    assert waiting.create == ()
    resumed = decide(b, [stopped], POLICY, AT, trainers_alive=False)
    assert [c["metadata"]["name"] for c in resumed.create] == [f"{run}-config", f"{run}-r1"]
    status = resumed.status
    assert status is not None
    assert (status.run_id, status.segment, status.workflow) == (run, 1, f"{run}-r1")
    assert status.output == f"gs://b/o/{run}", "the same folder: it resumes from its checkpoint"
    # A shutdown is not an app error: the budgets are untouched by the suspend.
    b = applied(b, resumed)
    second = wf(f"{run}-r1", "Running", pod("Running"), run_id=run)
    followed = decide(b, [stopped, second], POLICY, AT)
    status = followed.status or parse_status(b["status"])
    assert (status.phase, status.app_errors, status.preemptions) == ("Running", 0, 0)


def test_policy_fields_do_not_change_the_run() -> None:
    from mlops_api import MLOpsSpec
    from mlops_api.naming import spec_hash

    base = MLOpsSpec.model_validate(SPEC)
    for change in (
        {"suspend": True},
        {"keepRuns": 9},
        {"onChange": "replace"},
        {"stopOnDelete": False},
    ):
        assert spec_hash(MLOpsSpec.model_validate({**SPEC, **change})) == spec_hash(base), change
    assert spec_hash(MLOpsSpec.model_validate({**SPEC, "epochs": 3})) != spec_hash(base)


def test_eta_from_progress_and_the_pace_so_far() -> None:
    from datetime import timedelta

    from mlops_operator.reconcile import eta

    start = AT - timedelta(minutes=10)
    assert eta("25/100", start, AT) == "30m"
    assert eta("1/100", start, AT) == "16h30m"
    assert eta("100/100", start, AT) is None and eta(None, start, AT) is None
    assert eta("x", start, AT) is None and eta("0/10", start, AT) is None


def test_fallback_moves_a_run_preempted_too_often_to_on_demand_nodes() -> None:
    b, decision = first_run(body(spot=True, fallbackAfterPreemptions=2))
    run = decision.status.run_id or ""  # type: ignore[union-attr]
    first = decision.create[1]
    assert first["spec"]["templates"][0]["nodeSelector"]["cloud.google.com/gke-spot"] == "true"
    assert parse_status(applied(b, decision)["status"]).placement == "spot"
    b = applied(b, decision)
    once = wf(run, "Running", pod("Failed", SHUTDOWN), pod("Running"))
    b = applied(b, decide(b, [once], POLICY, AT))
    assert parse_status(b["status"]).placement == "spot"
    twice = wf(run, "Running", pod("Failed", SHUTDOWN), pod("Failed", SHUTDOWN))
    falling = decide(b, [twice], POLICY, AT)
    assert falling.stop == (Stop(run, "Stop"),)
    status = falling.status
    assert status is not None and (status.reason, status.placement) == ("FallingBack", "on-demand")
    b = applied(b, falling)
    stopped = wf(run, "Failed", *twice.attempts, shutdown="Stop")
    assert decide(b, [stopped], POLICY, AT).check_trainers == run
    moved = decide(b, [stopped], POLICY, AT, trainers_alive=False)
    (_, new) = moved.create
    assert new["metadata"]["name"] == f"{run}-r1"
    template = new["spec"]["templates"][0]
    assert "cloud.google.com/gke-spot" not in (template.get("nodeSelector") or {})
    env = {e["name"]: e["value"] for e in template["container"]["env"]}
    assert env["MLOPS_PLACEMENT"] == "on-demand"
    status = moved.status
    assert status is not None and (status.segment, status.placement) == (1, "on-demand")
    assert status.preemptions == 2, "the preemptions on spot still count against the budget"
    assert falling.stop[0].ended == 2, "recorded on the Workflow with the stop"
    # Argo's retry had started a third spot pod before the stop landed; the stop's SIGTERM ended
    # it (exit 143, no kubelet message) before Argo wrote its "Stopped with strategy" message
    # (seen with Argo 4.0). That attempt is the stop, not a third preemption.
    stop_ended = pod("Failed", "Error (exit code 143)", "143")
    raced = wf(run, "Failed", *twice.attempts, stop_ended, shutdown="Stop", ended_before_stop=2)
    assert (raced.preemptions, raced.app_errors) == (2, 0)
    status = decide(b, [raced], POLICY, AT, trainers_alive=False).status
    assert status is not None and status.preemptions == 2
    # The same bare exit 143 before the stop (a trainer that checkpointed on a spot node's
    # SIGTERM) is a preemption, also once the Workflow is stopped.
    sigtermed = wf(run, "Failed", pod("Failed", SHUTDOWN), stop_ended, shutdown="Stop",
                   ended_before_stop=2)  # fmt: skip
    assert sigtermed.preemptions == 2


def test_kueue_mode_labels_the_trainer_pod_with_its_local_queue() -> None:
    kueue = Policy(render=RenderSettings(queue_mode="kueue"), default_image="x.io/t:1")
    decision = decide(body(queue="team-a"), [], kueue, AT)
    workflow = decision.create[1]
    assert workflow["spec"]["podMetadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert "synchronization" not in workflow["spec"]
    semaphore = decide(body(queue="gpu"), [], POLICY, AT).create[1]
    assert "kueue.x-k8s.io/queue-name" not in semaphore["spec"]["podMetadata"]["labels"]
    assert semaphore["spec"]["synchronization"]["semaphores"][0]["configMapKeyRef"]["key"] == "gpu"


def _workload(pod: str, **status: Any) -> dict[str, Any]:
    """A Workload as Kueue v0.17's pod integration writes it (v1beta2)."""
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "Workload",
        "metadata": {
            "name": f"pod-{pod}-1a2b3",
            "namespace": "ml",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": "p", "controller": True}
            ],
        },
        "spec": {"queueName": "team-a", "podSets": [{"name": "main", "count": 1}]},
        "status": status,
    }


PENDING = {
    "conditions": [
        {
            "type": "QuotaReserved",
            "status": "False",
            "reason": "Pending",
            "message": "couldn't assign flavors to pod set main: insufficient unused quota "
            "for nvidia.com/gpu in flavor spot-gpu, 1 more needed",
        }
    ]
}
ADMITTED = {
    "conditions": [
        {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved", "message": "x"},
        {"type": "Admitted", "status": "True", "reason": "Admitted", "message": "y"},
    ],
    "admission": {
        "clusterQueue": "gpus",
        "podSetAssignments": [{"name": "main", "flavors": {"nvidia.com/gpu": "spot-gpu"}}],
    },
}


def test_a_workload_view_says_whether_kueue_admitted_its_pod_and_why_not() -> None:
    waiting = view_workload(_workload("demo-g1-abc-train-1234567", **PENDING))
    assert waiting is not None and waiting.waiting and not waiting.admitted
    assert (waiting.pod, waiting.queue, waiting.reason) == (
        "demo-g1-abc-train-1234567",
        "team-a",
        "Pending",
    )
    assert "insufficient unused quota for nvidia.com/gpu" in waiting.message
    assert waiting.of("demo-g1-abc")
    assert not waiting.of("demo-g1") and not waiting.of("demo-g1-ab")
    admitted = view_workload(_workload("demo-g1-abc-train-1234567", **ADMITTED))
    assert admitted is not None and admitted.admitted and not admitted.waiting
    assert (admitted.cluster_queue, admitted.flavors, admitted.message) == (
        "gpus",
        ("spot-gpu",),
        "",
    )
    # A Job's Workload (no Pod controller owner) is not one of ours.
    job = _workload("x")
    job["metadata"]["ownerReferences"][0]["kind"] = "Job"
    assert view_workload(job) is None


def test_kueue_mode_a_run_whose_pod_waits_for_admission_is_queued_with_kueues_reason() -> None:
    kueue = Policy(render=RenderSettings(queue_mode="kueue"), default_image="x.io/t:1")
    b, decision = first_run(body(queue="team-a"))
    name = decision.create[1]["metadata"]["name"]
    run_id = decision.status.run_id  # type: ignore[union-attr]
    gpod = f"{name}-train-4242"

    def attempt(phase: str, pod_name: str = gpod) -> Attempt:
        return pod(phase, pod=pod_name)

    def view(*attempts: Attempt, workloads: tuple[Any, ...] = ()) -> WorkflowView:
        (out,) = with_workloads([wf(name, "Running", *attempts, run_id=run_id,
                                    kueue_queue="team-a")], workloads)  # fmt: skip
        return out

    pending = view_workload(_workload(gpod, **PENDING))
    other = view_workload(_workload("someone-else-train-1", **PENDING))
    assert pending is not None and other is not None
    status = decide(b, [view(attempt("Pending"), workloads=(other, pending))], kueue, AT).status
    assert status is not None
    assert (status.phase, status.reason) == ("Queued", "WaitingForKueue")
    assert "LocalQueue team-a" in status.message
    assert "insufficient unused quota for nvidia.com/gpu in flavor spot-gpu" in status.message
    # Before Kueue has made the pod's Workload (or with Kueue gone): still waiting, and said so.
    status = decide(b, [view(attempt("Pending"), workloads=(other,))], kueue, AT).status
    assert status is not None and status.reason == "WaitingForKueue"
    assert f"no Workload for pod {gpod} yet (is Kueue running?)" in status.message
    # The Workload made, Kueue's verdict not written yet: still waiting, and said so (this was
    # "not yet" once, which the e2e caught between Kueue's two writes).
    fresh = view_workload(_workload(gpod))
    assert fresh is not None and fresh.waiting
    status = decide(b, [view(attempt("Pending"), workloads=(fresh,))], kueue, AT).status
    assert status is not None and status.reason == "WaitingForKueue"
    assert f"Kueue has not evaluated its Workload pod-{gpod}-1a2b3 yet" in status.message
    # Admitted (the pod may still be Pending, being scheduled): the run runs.
    admitted = view_workload(_workload(gpod, **ADMITTED))
    assert admitted is not None
    for phase in ("Pending", "Running"):
        status = decide(b, [view(attempt(phase), workloads=(admitted,))], kueue, AT).status
        assert status is not None and status.phase == "Running", phase
    # A retry after a preemption waits again: Running (a started run), reason from Kueue. The
    # first attempt's finished Workload is not the one that counts: the newest pod's is.
    first = attempt("Failed", f"{name}-train-1111")
    done = view_workload(_workload(f"{name}-train-1111", **ADMITTED))
    assert done is not None
    status = decide(b, [view(first, attempt("Pending"), workloads=(done, pending))], kueue, AT)
    assert status.status is not None
    assert (status.status.phase, status.status.reason) == ("Running", "WaitingForKueue")


# Pods of e2e runs on Argo 3.7 (the fallback, pod-deletion and Kueue tests; their names in the
# operator's logs): (workflow, node, pod).
ARGO_POD_NAMES = [
    ("fallback-g1-0aebe342", "fallback-g1-0aebe342(0)", "fallback-g1-0aebe342-train-3253548010"),
    ("fallback-g1-0aebe342", "fallback-g1-0aebe342(1)", "fallback-g1-0aebe342-train-1575639015"),
    ("fallback-g1-0aebe342-r1", "fallback-g1-0aebe342-r1(0)",
     "fallback-g1-0aebe342-r1-train-3216649602"),
    ("fallback-g1-cb8ecda8", "fallback-g1-cb8ecda8(2)", "fallback-g1-cb8ecda8-train-396654558"),
    ("pdel-g1-476876a5", "pdel-g1-476876a5(0)", "pdel-g1-476876a5-train-2800469189"),
    ("big-g1-bd30a6e8", "big-g1-bd30a6e8(0)", "big-g1-bd30a6e8-train-403650275"),
]  # fmt: skip


def test_argo_pod_names_are_the_ones_argo_gives() -> None:
    """Pod names v2, as Argo 3.7 named the pods of the e2e runs (tests/e2e/test_kueue.py checks
    the same against live pods): ``<workflow>-train-<FNV-1a 32 of the node name>``."""
    for workflow, node, pod_name in ARGO_POD_NAMES:
        assert argo_pod_name(workflow, node) == pod_name


# === GPU-aware queues (semaphore mode) ===


def _waiting(name: str, created: str, gpus: int = 1) -> Waiting:
    return Waiting(
        created=created, since=AT, uid=f"uid-{name}", name=name, namespace="ml", gpus=gpus
    )


def test_a_queued_run_asks_for_its_queue_before_it_starts() -> None:
    asked = _decide(body(queue="gpu"), [], POLICY, AT)
    assert asked == Decision(check_queue="gpu")
    unqueued = _decide(body(queue=None), [], POLICY, AT)
    assert len(unqueued.create) == 2, "a run without a queue starts at once"


@pytest.mark.parametrize(
    ("gpus", "holders", "ahead", "starts"),
    [
        (1, [], [], True),
        (1, [("a", 1)], [], True),  # 1 + 1 <= 2
        (2, [("a", 1)], [], False),  # a 2-GPU run holds both units: it waits
        (1, [("a", 2)], [], False),
        (1, [], ["ml/earlier"], False),  # FIFO: no overtaking, even with room
        (0, [("a", 1)], [], True),  # a CPU run takes one unit
    ],
)
def test_runs_start_when_their_gpus_are_free_and_nobody_waited_longer(
    gpus: int, holders: list[tuple[str, int]], ahead: list[str], starts: bool
) -> None:
    view = QueueView(key="ml/gpu", capacity=2, holders=tuple(holders), ahead=tuple(ahead))
    b = body(queue="gpu", resources={"gpu": {"count": gpus}})
    decision = _decide(b, [], POLICY, AT, queue=view)
    assert bool(decision.create) == starts
    status = decision.status
    assert status is not None
    if not starts:
        assert (status.phase, status.reason) == ("Queued", "WaitingForQueue")
        assert "queue ml/gpu" in status.message and status.queued_at == AT
    else:
        assert status.queued_at is None


def test_a_run_bigger_than_its_queue_fails_at_once() -> None:
    view = QueueView(key="ml/gpu", capacity=1)
    decision = _decide(
        body(queue="gpu", resources={"gpu": {"count": 2}}), [], POLICY, AT, queue=view
    )
    assert decision.status is not None and decision.status.reason == "QueueTooSmall"
    assert decision.create == ()


def test_queue_view_counts_gpus_of_unfinished_runs_and_orders_waiters_fifo() -> None:
    running = [
        WorkflowView("a", "ml", "u", "a", 1, "Running", queue="ml/gpu", gpus=2),
        WorkflowView("b", "ml", "u", "b", 1, "Succeeded", queue="ml/gpu", gpus=1),
    ]
    waiting = [
        _waiting("second", "2026-01-01T00:00:02Z"),
        _waiting("first", "2026-01-01T00:00:01Z"),
    ]
    me = _waiting("third", "2026-01-01T00:00:03Z")
    view = queue_view("ml/gpu", 3, running, waiting, me)
    assert view.holders == (("a", 2),) and view.used == 2
    assert view.ahead == ("ml/first", "ml/second")
    assert not view.admits(1)
    first = queue_view("ml/gpu", 3, running, waiting, waiting[1])
    assert first.ahead == () and first.admits(1) and not first.admits(2)


def test_queued_workflows_say_their_queue_and_gpus() -> None:
    decision = _decide(body(queue="gpu"), [], POLICY, AT, queue=OPEN)
    annotations = decision.create[1]["metadata"]["annotations"]
    assert (annotations["mlops.dev/queue"], annotations["mlops.dev/gpus"]) == ("ml/gpu", "1")
    assert view_workflow({**decision.create[1], "status": {}}).queue == "ml/gpu"


def test_a_workflow_just_created_holds_its_units_before_the_index_sees_it() -> None:
    me = _waiting("next", "2026-01-01T00:00:05Z")
    view = queue_view("ml/gpu", 1, [], [], me, admitted={"fifo-1-g1-x": 1})
    assert view.holders == (("fifo-1-g1-x", 1),) and not view.admits(1)
    seen = WorkflowView("fifo-1-g1-x", "ml", "u", "r", 1, "Succeeded", queue="ml/gpu", gpus=1)
    assert queue_view("ml/gpu", 1, [seen], [], me, admitted={"fifo-1-g1-x": 1}).admits(1)


def test_admissions_remember_created_queued_workflows() -> None:
    from mlops_operator.service import Admissions

    admissions = Admissions()
    decision = _decide(
        body(queue="gpu", resources={"gpu": {"count": 2}}), [], POLICY, AT, queue=OPEN
    )
    admissions.record(decision.create)
    (name,) = admissions.recent()["ml/gpu"]
    assert (
        admissions.recent()["ml/gpu"][name] == 2 and name == decision.create[1]["metadata"]["name"]
    )


def test_a_scratch_output_run_the_chart_test_makes_is_submitted() -> None:
    """The chart's helm-test run writes to its pod's /tmp and says so by annotation: the
    operator must pass that annotation to validation (it dropped every annotation, and the
    chart e2e's run ended SpecInvalid)."""
    b = body(output="file:///tmp/mlops-helm-test")
    assert decide(b, [], POLICY, AT).status.reason == "SpecInvalid"  # type: ignore[union-attr]
    b["metadata"]["annotations"] = {"mlops.dev/scratch-output": "true", "other": "x" * 10_000}
    decision = decide(b, [], POLICY, AT)
    assert decision.create and decision.status is not None
    assert [e.reason for e in decision.events] == ["RunSubmitted"], decision.events


def _summarized(phase: str, attempt: int, state: str, **kw: Any) -> Attempt:
    summary = Summary(state=state, attempt=attempt)  # type: ignore[arg-type]
    return pod(phase, summary=summary, **kw)


def test_a_trainer_attempt_argo_has_no_node_for_is_a_preemption() -> None:
    """Argo makes a pod again for the same node when the pod vanished between its two looks in
    one reconcile (a pod deleted while the controller lags; seen on the real node): the node
    then shows one attempt, Succeeded, though the trainer ran twice and the first was taken
    away. The trainer's own attempt number (attempts.json, in its summary) tells."""
    b, decision = first_run()
    run = decision.status.run_id or ""  # type: ignore[union-attr]
    remade = wf(run, "Succeeded", _summarized("Succeeded", 2, "succeeded"))
    status = decide(b, [remade], POLICY, AT).status
    assert status is not None and status.phase == "Succeeded"
    assert (status.preemptions, status.app_errors) == (1, 0)
    # An ordinary retry is counted once: its failed node, not also the attempt number.
    retried = wf(
        run,
        "Succeeded",
        _summarized("Failed", 1, "preempted", exit_code="143"),
        _summarized("Succeeded", 2, "succeeded"),
    )
    status = decide(b, [retried], POLICY, AT).status
    assert status is not None and (status.preemptions, status.app_errors) == (1, 0)
    # Attempts in an earlier segment (a suspend, then a resume) are Argo's too: none unseen.
    stopped = wf(
        run,
        "Failed",
        _summarized("Failed", 1, "preempted", message="workflow shutdown with strategy: Stop"),
        shutdown="Stop",
    )
    resumed = wf(f"{run}-r1", "Running", _summarized("Running", 2, "running"), run_id=run)
    status = decide(b, [stopped, resumed], POLICY, AT).status
    assert status is not None and status.preemptions == 0
    # Hidden attempts count against the budget (2 here): three of them spend it.
    spent = wf(run, "Running", _summarized("Running", 4, "preempted"))
    status = decide(b, [spent], POLICY, AT).status
    assert status is not None and status.phase == "Failed"
    assert status.reason == "PreemptionBudgetExhausted" and status.preemptions == 3


def test_a_finished_run_reports_the_trainers_own_progress() -> None:
    """Argo reads the progress file every few seconds and not again at the container's exit:
    a run that trained its steps in less than that ended "1/1" (Argo's default for a node that
    reported nothing; the real-node test saw it on a faster CPU). The trainer's summary says
    how far it got and of how many steps."""
    b, decision = first_run()
    run = decision.status.run_id or ""  # type: ignore[union-attr]
    summary = Summary(state="succeeded", attempt=1, step=16, total_steps=16)
    done = wf(run, "Succeeded", pod("Succeeded", summary=summary, progress="1/1"), progress="1/1")
    status = decide(b, [done], POLICY, AT).status
    assert status is not None and status.progress == "16/16", status
    # While it runs, Argo's sample is the newest there is (a summary is an ended attempt's).
    early = Summary(state="preempted", attempt=1, step=4, total_steps=16)
    running = wf(run, "Running", pod("Failed", summary=early), pod("Running", progress="9/16"))
    status = decide(b, [running], POLICY, AT).status
    assert status is not None and status.progress == "9/16", status
    # An older trainer's summary has no total: Argo's figure stays.
    old = Summary(state="succeeded", attempt=1, step=16)
    status = decide(
        b, [wf(run, "Succeeded", pod("Succeeded", summary=old), progress="1/1")], POLICY, AT
    ).status
    assert status is not None and status.progress == "1/1", status
