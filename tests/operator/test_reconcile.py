"""Pure reconcile logic (fast); the e2e tests run the same code against a real API server and Argo."""

from __future__ import annotations

import json
from typing import Any

from mlops_operator.reconcile import (
    active_runs,
    change_action,
    compact_essence,
    created_status,
    desired_children,
    invalid_status,
    is_preemption,
    runs_to_prune,
    set_condition,
    status_changed,
    submitted_status,
    workflow_status,
)
from mlops_workflows.render import RenderSettings

BODY: dict[str, Any] = {
    "apiVersion": "mlops.dev/v1alpha1",
    "kind": "MLOps",
    "metadata": {
        "name": "demo",
        "namespace": "ml",
        "generation": 3,
        "uid": "u-1",
        "resourceVersion": "9",
    },
    "spec": {"trainer": {"kind": "vqvae"}, "data": "gs://b/d", "output": "gs://b/o"},
}


def _wf(
    run: str,
    phase: str | None,
    generation: int = 1,
    nodes: dict[str, Any] | None = None,
    **status: Any,
) -> dict[str, Any]:
    labels = {"mlops.dev/run-id": run, "mlops.dev/generation": str(generation)}
    st: dict[str, Any] = {"phase": phase, "nodes": nodes or {}, **status}
    return {"metadata": {"name": run, "labels": labels}, "spec": {}, "status": st}


def test_desired_children_use_the_generation() -> None:
    desired = desired_children(BODY, RenderSettings())
    assert desired.error is None and desired.rendered is not None
    assert desired.rendered.plan.run_id.startswith("demo-g3-")
    assert desired.rendered.config_map["metadata"]["namespace"] == "ml"


def test_invalid_spec_gives_failed_status_with_field_path() -> None:
    body = {**BODY, "spec": {**BODY["spec"], "epochs": -1}}
    desired = desired_children(body, RenderSettings())
    assert desired.error is not None and desired.rendered is None
    status = invalid_status(desired.error, 3, [])
    assert status["phase"] == "Failed"
    assert "spec.epochs" in status["message"]
    (validated,) = [c for c in status["conditions"] if c["type"] == "Validated"]
    assert validated["status"] == "False" and validated["reason"] == "SpecInvalid"
    assert "spec.epochs" in validated["message"]


def test_created_status_names_children() -> None:
    rendered = desired_children(BODY, RenderSettings()).rendered
    assert rendered is not None
    status = created_status(rendered, [])
    assert status["phase"] == "Queued"
    assert status["workflow"] == rendered.plan.run_id
    assert status["configMap"] == f"{rendered.plan.run_id}-config"
    assert status["observedGeneration"] == 3
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions == {"Validated": ("True", "SpecValid"), "Ready": ("False", "Queued")}


def test_submitted_status_takes_the_state_of_a_workflow_made_earlier() -> None:
    rendered = desired_children(BODY, RenderSettings()).rendered
    assert rendered is not None
    run = rendered.plan.run_id
    # Fresh Workflow (or one Argo has not touched yet): Queued.
    assert submitted_status(rendered, [], None)["phase"] == "Queued"
    assert submitted_status(rendered, [], _wf(run, None, 3))["phase"] == "Queued"
    # An operator killed after creating the Workflow; by the restart Argo had finished it.
    done = submitted_status(
        rendered, [], _wf(run, "Succeeded", 3, finishedAt="2026-01-01T00:00:00Z")
    )
    assert (done["phase"], done["runId"], done["workflow"]) == ("Succeeded", run, run)
    conditions = {c["type"]: c["status"] for c in done["conditions"]}
    assert conditions == {
        "Validated": "True",
        "Ready": "True",
        "Running": "False",
        "Succeeded": "True",
    }


def test_condition_transition_time_kept_when_status_unchanged() -> None:
    first = set_condition([], "Ready", "False", "Queued", at="2026-01-01T00:00:00Z")
    same = set_condition(first, "Ready", "False", "Running", at="2026-01-02T00:00:00Z")
    flipped = set_condition(same, "Ready", "True", "Succeeded", at="2026-01-03T00:00:00Z")
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert flipped[0]["lastTransitionTime"] == "2026-01-03T00:00:00Z"
    assert len(flipped) == 1


def test_workflow_phases_map_to_mlops_phases() -> None:
    assert workflow_status(_wf("r", None), [])["phase"] == "Queued"
    assert workflow_status(_wf("r", "Pending"), [])["phase"] == "Queued"
    waiting = _wf("r", "Running", synchronization={"semaphore": {"waiting": [{"holder": "x"}]}})
    assert workflow_status(waiting, [])["phase"] == "Queued"
    assert workflow_status(_wf("r", "Running"), [])["phase"] == "Running"
    assert workflow_status(_wf("r", "Succeeded"), [])["phase"] == "Succeeded"
    assert workflow_status(_wf("r", "Failed"), [])["phase"] == "Failed"
    stopped = _wf("r", "Failed")
    stopped["spec"]["shutdown"] = "Stop"
    assert workflow_status(stopped, [])["phase"] == "Stopped"


def test_preemptions_counted_and_summary_read() -> None:
    summary = {
        "latest_checkpoint": "gs://b/o/r/checkpoints/step-000000040",
        "metrics": {"loss": 0.5, "note": "x"},
    }
    nodes = {
        "a": {
            "id": "a",
            "type": "Pod",
            "phase": "Error",
            "message": "pod deleted",
            "startedAt": "1",
        },
        "b": {
            "id": "b",
            "type": "Pod",
            "phase": "Failed",
            "message": "",
            "outputs": {"exitCode": "143"},
            "startedAt": "2",
        },
        "c": {
            "id": "c",
            "type": "Pod",
            "phase": "Failed",
            "message": "Error (exit code 1)",
            "outputs": {"exitCode": "1"},
            "startedAt": "3",
        },
        "d": {
            "id": "d",
            "type": "Pod",
            "phase": "Succeeded",
            "progress": "40/40",
            "outputs": {
                "exitCode": "0",
                "parameters": [{"name": "summary", "value": json.dumps(summary)}],
            },
            "startedAt": "4",
        },
        "r": {"id": "r", "type": "Retry", "phase": "Succeeded"},
    }
    status = workflow_status(_wf("r", "Succeeded", nodes=nodes), [])
    assert status["preemptions"] == 2  # the app error (exit 1) is not a preemption
    assert status["latestCheckpoint"] == summary["latest_checkpoint"]
    assert status["metrics"] == {"loss": 0.5}
    assert status["progress"] == "40/40"
    assert is_preemption(
        {"phase": "Failed", "message": "Pod was terminated in response to imminent node shutdown."}
    )
    assert not is_preemption({"phase": "Succeeded", "message": "pod deleted"})


def test_failed_run_says_what_the_trainer_said() -> None:
    def pod(node_id: str, exit_code: str, error: str) -> dict[str, Any]:
        summary = {"state": "failed", "error": error}
        return {
            "id": node_id,
            "type": "Pod",
            "phase": "Failed",
            "message": f"main: Error (exit code {exit_code})",
            "startedAt": node_id,
            "outputs": {
                "exitCode": exit_code,
                "parameters": [{"name": "summary", "value": json.dumps(summary)}],
            },
        }

    nodes = {
        "1": pod("1", "1", "ImportError: Install s3fs to access S3"),
        "2": pod("2", "2", "ImportError: Install s3fs to access S3 (app-error budget spent)"),
        "r": {"id": "r", "type": "Retry", "phase": "Failed"},
    }
    wf = _wf("r", "Failed", nodes=nodes)
    wf["status"]["message"] = "retryStrategy.expression evaluated to false"
    status = workflow_status(wf, [])
    assert status["phase"] == "Failed"
    assert status["message"] == (
        "ImportError: Install s3fs to access S3 (app-error budget spent)"
        " (retryStrategy.expression evaluated to false)"
    )
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["message"] == status["message"]
    # A run that succeeded after an app error does not carry the old error.
    nodes["3"] = {"id": "3", "type": "Pod", "phase": "Succeeded", "startedAt": "3"}
    assert "s3fs" not in workflow_status(_wf("r", "Succeeded", nodes=nodes), [])["message"]


def test_status_changed_ignores_timestamps_only() -> None:
    update = workflow_status(_wf("r", "Running"), [])
    current = {
        **update,
        "conditions": [{**c, "lastTransitionTime": "earlier"} for c in update["conditions"]],
    }
    assert not status_changed(current, update)
    assert status_changed({**current, "phase": "Queued"}, update)


def test_change_policies() -> None:
    workflows = [
        _wf("demo-g1-a", "Running", 1),
        _wf("demo-g2-b", "Succeeded", 2),
        _wf("demo-g3-c", None, 3),
    ]
    active = active_runs(workflows, "demo-g3-c")
    assert active == ("demo-g1-a",)
    assert change_action("queue", active).action == "wait"
    assert change_action("replace", active).action == "stop-then-create"
    assert change_action("reject", active).action == "reject"
    assert change_action("queue", ()).action == "create"


def test_prune_keeps_newest_finished_runs() -> None:
    workflows = [_wf(f"demo-g{g}-x", "Succeeded", g) for g in range(1, 8)] + [
        _wf("demo-g8-x", "Running", 8)
    ]
    pruned = runs_to_prune(workflows, keep=3, current_run="demo-g8-x")
    assert pruned == ["demo-g5-x", "demo-g4-x", "demo-g3-x", "demo-g2-x", "demo-g1-x"]
    assert runs_to_prune(workflows, keep=100, current_run="demo-g8-x") == []


def test_compact_essence_keeps_small_and_hashes_big_specs() -> None:
    small = {"spec": {"data": "gs://b/d"}, "metadata": {"labels": {"a": "b"}}}
    assert compact_essence(small) == small
    big = {"spec": {"data": "gs://b/" + "a" * 300_000}, "metadata": {"labels": {"a": "b"}}}
    compact = compact_essence(big)
    assert set(compact) == {"spec", "metadata"}
    assert len(json.dumps(compact)) < 300
    # Same spec, same essence (no spurious update); a changed spec differs.
    assert compact_essence(json.loads(json.dumps(big))) == compact
    changed = {**big, "spec": {"data": big["spec"]["data"] + "b"}}
    assert compact_essence(changed)["spec"] != compact["spec"]
    assert compact_essence(changed)["metadata"] == compact["metadata"]
