"""When Argo has missed that a trainer pod ended, the operator's resync touches the Workflow.

Argo 3.7 and 4.0 do not retry a Workflow write that failed (``persistUpdates`` logs "Error
updating workflow" and returns); with no further change to the pod or the Workflow they look
again only at their 20-min resync. ``tests/reliability/test_operator_faults.py`` restarts a real
API server at that moment; these are the unit tests of the decision and of what is sent.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from mlops_operator import kube, service
from mlops_operator.reconcile import Event
from mlops_operator.views import PodState, argo_behind, argo_pod_name, view_workflow

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
WF = "run-g1-0123abcd"
NODE = f"{WF}[0].train(0)"
POD = argo_pod_name(WF, NODE)


def _ago(seconds: float) -> str:
    return (NOW - timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def _workflow(node_phase: str, wf_phase: str = "Running", started_s: float = 300) -> Any:
    return view_workflow(
        {
            "metadata": {"name": WF, "namespace": "ml", "labels": {"mlops.dev/owner-uid": "u"}},
            "status": {
                "phase": wf_phase,
                "nodes": {
                    "n1": {
                        "id": "n1",
                        "name": NODE,
                        "type": "Pod",
                        "templateName": "train",
                        "phase": node_phase,
                        "startedAt": _ago(started_s),
                    }
                },
            },
        }
    )


@pytest.mark.parametrize(
    ("node", "pod", "behind"),
    [
        # The case of the API server restart: the pod ended 90 s ago, Argo shows it running.
        ("Running", PodState("Succeeded", _ago(90)), "ended (Succeeded)"),
        ("Running", PodState("Failed", _ago(61)), "ended (Failed)"),
        ("Pending", PodState("Failed", _ago(61)), "ended (Failed)"),
        # Argo looks 10 s after a pod event: a pod that ended 20 s ago is not a missed update.
        ("Running", PodState("Succeeded", _ago(20)), None),
        # Still running, or ended without a time to tell how long ago: nothing to do.
        ("Running", PodState("Running"), None),
        ("Running", PodState("Failed", None), None),
        # Gone while Argo shows it Running (started 300 s ago): Argo missed the deletion.
        ("Running", None, "vanished"),
        # Gone while Pending is normal: Argo records the node before it creates the pod.
        ("Pending", None, None),
        # Argo has recorded the end.
        ("Succeeded", PodState("Succeeded", _ago(600)), None),
    ],
)
def test_argo_behind_names_the_attempt_argo_has_not_recorded(
    node: str, pod: PodState | None, behind: str | None
) -> None:
    view = _workflow(node)
    pods = {} if pod is None else {POD: pod}
    found = argo_behind(view, pods, NOW, after_s=60)
    if behind is None:
        assert found is None
    else:
        assert found is not None
        assert (found[0].pod, found[1]) == (POD, behind)


def test_a_vanished_pod_of_a_young_attempt_waits() -> None:
    assert argo_behind(_workflow("Running", started_s=30), {}, NOW, after_s=60) is None


def test_a_finished_workflow_is_never_touched() -> None:
    view = _workflow("Running", wf_phase="Failed")
    assert argo_behind(view, {POD: PodState("Failed", _ago(900))}, NOW, after_s=60) is None


def test_nudge_argo_touches_only_the_workflow_argo_is_behind_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ended = datetime.now(UTC) - timedelta(seconds=120)
    listed: list[str] = []
    touched: list[tuple[str, str]] = []

    def pods(namespace: str, workflow: str) -> dict[str, PodState]:
        listed.append(workflow)
        return {POD: PodState("Succeeded", ended.isoformat())}

    monkeypatch.setattr(kube, "workflow_pods", pods)
    monkeypatch.setattr(kube, "nudge_workflow", lambda ns, name, at: touched.append((ns, name)))
    events: list[Event] = []
    body = {"metadata": {"name": "run", "namespace": "ml", "uid": "u"}}
    # One Workflow behind; one that Argo has finished (never even listed: no request for it).
    views = [_workflow("Running"), _workflow("Succeeded", wf_phase="Succeeded")]
    assert service.nudge_argo(body, views, post=lambda b, e: events.append(e)) == 1
    assert listed == [WF]
    assert touched == [("ml", WF)]
    assert [(e.type, e.reason) for e in events] == [("Normal", "ArgoNudged")]
    assert POD in events[0].message and WF in events[0].message
