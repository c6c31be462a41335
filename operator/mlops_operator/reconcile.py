"""Pure reconcile logic: data in, data out. The handlers do the I/O around these functions.

- :func:`desired_children` — an MLOps body → the ConfigMap and Workflow to create (or the errors).
- :func:`workflow_status` — an Argo Workflow → the MLOps status it implies.
- :func:`set_condition` — Kubernetes-style conditions, ``lastTransitionTime`` kept when unchanged.
- :func:`change_action` — what to do with a new generation while an older run is active.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from mlops_api import ManifestError, parse_manifest
from mlops_api.naming import LABEL_GENERATION, LABEL_RUN_ID
from mlops_workflows.render import PREEMPTION_MESSAGES, RenderedRun, RenderSettings, render

FINAL_WORKFLOW_PHASES = frozenset({"Succeeded", "Failed", "Error"})
_PREEMPTION = re.compile("|".join(re.escape(m) for m in PREEMPTION_MESSAGES), re.IGNORECASE)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# === Desired children ===


@dataclass(frozen=True)
class Desired:
    """Either the children to create, or why there are none."""

    rendered: RenderedRun | None = None
    error: ManifestError | None = None


def manifest_of(body: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a live object the user wrote (metadata reduced to what validation reads)."""
    meta = body.get("metadata", {})
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "generation", "uid", "labels")
            if meta.get(k) is not None
        },
        "spec": body.get("spec"),
    }


def desired_children(body: Mapping[str, Any], settings: RenderSettings) -> Desired:
    try:
        obj = parse_manifest(manifest_of(body))
        return Desired(rendered=render(obj, settings))
    except ManifestError as exc:
        return Desired(error=exc)


# === Conditions ===


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    status: Literal["True", "False", "Unknown"],
    reason: str,
    message: str = "",
    *,
    generation: int | None = None,
    at: str | None = None,
) -> list[dict[str, Any]]:
    """Return conditions with ``type_`` set; its transition time changes only if its status did."""
    at = at or now()
    out: list[dict[str, Any]] = []
    found = False
    for cond in conditions:
        if cond.get("type") != type_:
            out.append(dict(cond))
            continue
        found = True
        changed = cond.get("status") != status
        out.append(
            {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": at if changed else cond.get("lastTransitionTime", at),
                **({"observedGeneration": generation} if generation is not None else {}),
            }
        )
    if not found:
        out.append(
            {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": at,
                **({"observedGeneration": generation} if generation is not None else {}),
            }
        )
    return out


def invalid_status(
    error: ManifestError, generation: int | None, conditions: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Status of an object whose spec cannot become a run: Failed, SpecInvalid, with the field path."""
    message = str(error)[:4000]
    conds = set_condition(
        conditions, "Validated", "False", "SpecInvalid", message, generation=generation
    )
    conds = set_condition(conds, "Ready", "False", "SpecInvalid", message, generation=generation)
    return {
        "phase": "Failed",
        "message": message,
        "observedGeneration": generation,
        "conditions": conds,
    }


def created_status(
    rendered: RenderedRun, conditions: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    plan = rendered.plan
    conds = set_condition(conditions, "Validated", "True", "SpecValid", generation=plan.generation)
    conds = set_condition(
        conds,
        "Ready",
        "False",
        "Queued",
        f"run {plan.run_id} submitted",
        generation=plan.generation,
    )
    return {
        "phase": "Queued",
        "message": f"run {plan.run_id} submitted",
        "observedGeneration": plan.generation,
        "conditions": conds,
        "runId": plan.run_id,
        "workflow": rendered.workflow["metadata"]["name"],
        "configMap": rendered.config_map["metadata"]["name"],
        "output": plan.config.output,
        "preemptions": 0,
        "progress": None,
        "latestCheckpoint": None,
        "metrics": None,
        "startedAt": None,
        "finishedAt": None,
    }


def submitted_status(
    rendered: RenderedRun,
    conditions: Sequence[Mapping[str, Any]],
    live_workflow: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Status of a freshly submitted run; when its Workflow already existed (made by an earlier
    attempt, e.g. of an operator killed mid-reconcile) and Argo has moved it on, its state wins,
    since the Workflow events that said so may have gone by before this status named the run."""
    status = created_status(rendered, conditions)
    if live_workflow is not None and (live_workflow.get("status") or {}).get("phase"):
        status.update(workflow_status(live_workflow, status["conditions"]))
    return status


# === Following a Workflow ===


def _pod_nodes(workflow: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    nodes = (workflow.get("status") or {}).get("nodes") or {}
    pods = [n for n in nodes.values() if n.get("type") == "Pod"]
    return sorted(pods, key=lambda n: (n.get("startedAt") or "", n.get("id") or ""))


def is_preemption(node: Mapping[str, Any]) -> bool:
    """A pod lost to a spot shutdown, or one that checkpointed after SIGTERM (exit 143)."""
    if node.get("phase") not in ("Failed", "Error"):
        return False
    exit_code = str((node.get("outputs") or {}).get("exitCode", ""))
    return bool(_PREEMPTION.search(node.get("message") or "")) or exit_code == "143"


def _summary(node: Mapping[str, Any]) -> dict[str, Any]:
    for param in (node.get("outputs") or {}).get("parameters") or []:
        if param.get("name") == "summary":
            try:
                value = json.loads(param.get("value") or "{}")
            except json.JSONDecodeError:
                return {}
            return value if isinstance(value, dict) else {}
    return {}


def _phase(workflow: Mapping[str, Any]) -> str:
    status = workflow.get("status") or {}
    phase = status.get("phase") or ""
    if phase in ("", "Pending"):
        return "Queued"
    if phase == "Running":
        # A Workflow waiting on the GPU semaphore is Running to Argo but queued to the user.
        pods = [
            n for n in _pod_nodes(workflow) if n.get("phase") in ("Running", "Pending", "Succeeded")
        ]
        waiting = (status.get("synchronization") or {}).get("semaphore", {}).get("waiting")
        return "Queued" if waiting and not pods else "Running"
    if phase == "Succeeded":
        return "Succeeded"
    if (workflow.get("spec") or {}).get("shutdown"):
        return "Stopped"
    return "Failed"


def workflow_status(
    workflow: Mapping[str, Any], conditions: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The MLOps status implied by its current run's Workflow."""
    status = workflow.get("status") or {}
    labels = (workflow.get("metadata") or {}).get("labels") or {}
    generation = (
        int(labels[LABEL_GENERATION]) if labels.get(LABEL_GENERATION, "").isdigit() else None
    )
    phase = _phase(workflow)
    pods = _pod_nodes(workflow)
    preemptions = sum(1 for n in pods if is_preemption(n))
    summary: dict[str, Any] = {}
    for node in pods:
        summary = _summary(node) or summary
    metrics = {
        k: float(v) for k, v in (summary.get("metrics") or {}).items() if isinstance(v, int | float)
    }
    progress = next(
        (n.get("progress") for n in reversed(pods) if n.get("progress")), None
    ) or status.get("progress")
    message = status.get("message") or (pods[-1].get("message") if pods else "") or ""
    if phase == "Failed":
        # The trainer's own words (its summary's `error`, reported by Argo's executor) say what
        # went wrong; Argo's message only says that it did ("retryStrategy.expression evaluated
        # to false", "No more retries left").
        error = next((e for n in reversed(pods) if (e := _summary(n).get("error"))), None)
        if error:
            message = f"{error} ({message})" if message else str(error)
    run = labels.get(LABEL_RUN_ID, "")
    reason = {
        "Queued": "Queued",
        "Running": "Running",
        "Succeeded": "Succeeded",
        "Failed": "WorkflowFailed",
        "Stopped": "Stopped",
    }[phase]
    text = message or f"run {run} {phase.lower()}"
    conds = set_condition(
        conditions,
        "Ready",
        "True" if phase == "Succeeded" else "False",
        reason,
        text,
        generation=generation,
    )
    conds = set_condition(
        conds,
        "Running",
        "True" if phase == "Running" else "False",
        reason,
        text,
        generation=generation,
    )
    if phase in ("Succeeded", "Failed", "Stopped"):
        conds = set_condition(
            conds,
            "Succeeded",
            "True" if phase == "Succeeded" else "False",
            reason,
            text,
            generation=generation,
        )
    out: dict[str, Any] = {
        "phase": phase,
        "message": text[:4000],
        "conditions": conds,
        "preemptions": preemptions,
        "progress": progress,
        "startedAt": status.get("startedAt"),
        "finishedAt": status.get("finishedAt")
        if phase in ("Succeeded", "Failed", "Stopped")
        else None,
    }
    if summary.get("latest_checkpoint"):
        out["latestCheckpoint"] = str(summary["latest_checkpoint"])
    if metrics:
        out["metrics"] = metrics
    return out


def status_changed(current: Mapping[str, Any], update: Mapping[str, Any]) -> bool:
    """Whether patching ``update`` onto ``current`` would change anything (ignoring timestamps)."""
    for key, value in update.items():
        if key == "conditions":
            strip = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in value]
            old = [
                {k: v for k, v in c.items() if k != "lastTransitionTime"}
                for c in current.get("conditions") or []
            ]
            if strip != old:
                return True
        elif current.get(key) != value:
            return True
    return False


# === A new generation while a run is active ===

Action = Literal["create", "wait", "stop-then-create", "reject"]


@dataclass(frozen=True)
class ChangeDecision:
    action: Action
    active: tuple[str, ...] = field(default_factory=tuple)


def active_runs(workflows: Sequence[Mapping[str, Any]], current_run: str) -> tuple[str, ...]:
    """Names of this object's Workflows, other than the current run's, that have not finished."""
    names = []
    for wf in workflows:
        meta = wf.get("metadata") or {}
        if (meta.get("labels") or {}).get(LABEL_RUN_ID) == current_run:
            continue
        if ((wf.get("status") or {}).get("phase") or "") not in FINAL_WORKFLOW_PHASES:
            names.append(meta.get("name", ""))
    return tuple(sorted(names))


def change_action(policy: str, active: tuple[str, ...]) -> ChangeDecision:
    if not active:
        return ChangeDecision("create")
    if policy == "replace":
        return ChangeDecision("stop-then-create", active)
    if policy == "reject":
        return ChangeDecision("reject", active)
    return ChangeDecision("wait", active)


def runs_to_prune(workflows: Sequence[Mapping[str, Any]], keep: int, current_run: str) -> list[str]:
    """Finished runs beyond the newest ``keep`` (by generation), never the current one."""
    finished = [
        wf
        for wf in workflows
        if ((wf.get("status") or {}).get("phase") or "") in FINAL_WORKFLOW_PHASES
        and (wf.get("metadata", {}).get("labels") or {}).get(LABEL_RUN_ID) != current_run
    ]

    def generation(wf: Mapping[str, Any]) -> int:
        value = (wf.get("metadata", {}).get("labels") or {}).get(LABEL_GENERATION, "0")
        return int(value) if value.isdigit() else 0

    finished.sort(key=generation, reverse=True)
    # The current run counts towards `keep` too.
    return [wf["metadata"]["name"] for wf in finished[max(keep - 1, 0) :]]


# === kopf's diff base ===

# kopf keeps the last handled spec in an annotation; all of an object's annotations together may
# not exceed 256 KiB, and a patch that would is rejected whole, status included.
DIFFBASE_LIMIT_BYTES = 64 * 1024


def compact_essence(
    essence: Mapping[str, Any], limit: int = DIFFBASE_LIMIT_BYTES
) -> dict[str, Any]:
    """kopf's "essence" of an object, or, when it is over ``limit`` bytes of JSON, each top-level
    part (``spec``, ``metadata``) as its SHA-256: a changed part still differs from the stored one
    (so update handlers fire), an unchanged one does not, and the annotation stays small."""
    if len(json.dumps(essence, separators=(",", ":")).encode()) <= limit:
        return dict(essence)
    return {
        key: {
            "sha256": hashlib.sha256(
                json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
            ).hexdigest()
        }
        for key, value in essence.items()
    }
