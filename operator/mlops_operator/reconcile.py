"""Pure reconcile logic: an MLOps object and its Workflows in, a :class:`Decision` out.

:func:`decide` is the whole lifecycle of an object, written as data so every path is a
table-driven unit test (``tests/operator/test_decide.py``); the handlers only do the I/O it asks
for (create, stop, prune, write status, post events).

The rules, in the order :func:`decide` applies them:

1. A run is decided once per ``(metadata.generation, mlops.dev/rerun annotation)`` and its id
   kept in ``status.runId``: a restart, an upgrade or a new default never starts a run. A new
   generation whose spec means the same as the current run's (a default written out) keeps it.
2. An invalid spec makes nothing: ``Failed``/``SpecInvalid`` naming the field.
3. Another run of the object still active: ``onChange`` says queue (wait, then start), replace
   (stop it, start now) or reject (no run for this generation; rerun or re-apply later).
4. A run whose status says finished stays finished, whatever happened to its Workflow (Argo's
   TTL deletes finished Workflows): it is never submitted again.
5. A submitted run whose Workflow vanished before finishing is reported, never resubmitted.
6. Budgets: more preemptions than ``retries.preemption`` or more app errors than
   ``retries.error`` stop the Workflow and fail the run, naming the budget.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from mlops_api import ManifestError, parse_manifest
from mlops_api.guardrails import Guardrails, check_guardrails
from mlops_api.naming import ANNOTATION_RERUN, spec_hash
from mlops_api.spec import Condition, MLOps, MLOpsStatus, Retries
from mlops_api.validation import ANNOTATION_SCRATCH_OUTPUT
from mlops_workflows.render import RenderedRun, RenderSettings, render

from mlops_operator.queueing import QueueView, units
from mlops_operator.views import WorkflowView, unseen_attempts, view_workflow

FINAL_PHASES = frozenset({"Succeeded", "Failed", "Stopped"})
CONDITION_TYPES = ("Validated", "Accepted", "Synced", "Ready", "Running", "Succeeded")
MESSAGE_MAX = 4000


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# === Desired children ===


@dataclass(frozen=True)
class Desired:
    """Either the children to create, or why there are none."""

    rendered: RenderedRun | None = None
    error: ManifestError | None = None
    obj: MLOps | None = None


def manifest_of(body: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a live object the user wrote (metadata reduced to what validation reads)."""
    meta = body.get("metadata", {})
    metadata = {
        k: meta[k]
        for k in ("name", "namespace", "generation", "uid", "labels")
        if meta.get(k) is not None
    }
    # The one annotation validation reads (the others, e.g. kubectl's last-applied copy, not).
    scratch = (meta.get("annotations") or {}).get(ANNOTATION_SCRATCH_OUTPUT)
    if scratch is not None:
        metadata["annotations"] = {ANNOTATION_SCRATCH_OUTPUT: scratch}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": metadata,
        "spec": body.get("spec"),
    }


def with_default_image(body: Mapping[str, Any], image: str | None) -> dict[str, Any]:
    """The body with the operator's default trainer image where the spec names none."""
    data = dict(body)
    spec = data.get("spec")
    if image and isinstance(spec, dict) and "image" not in spec:
        data["spec"] = {**spec, "image": image}
    return data


def desired_children(
    body: Mapping[str, Any],
    settings: RenderSettings,
    *,
    rerun: str = "",
    run_id: str | None = None,
) -> Desired:
    try:
        # cluster=True: a pod must reach every URL (no local paths); mlops_api.validation.
        obj = parse_manifest(manifest_of(body), cluster=True)
        return Desired(rendered=render(obj, settings, rerun=rerun, run_id=run_id), obj=obj)
    except ManifestError as exc:
        return Desired(error=exc)


# === Conditions ===


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: Literal["True", "False", "Unknown"],
    reason: str,
    message: str = "",
    *,
    generation: int | None = None,
    at: datetime | None = None,
) -> list[Condition]:
    """Conditions with ``type_`` set, merged by type (others, ours or not, are kept as they are);
    its transition time changes only when its status does."""
    at = at or now()
    out: list[Condition] = []
    found = False
    for cond in conditions:
        if cond.type != type_:
            out.append(cond)
            continue
        found = True
        changed = cond.status != status
        out.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message[:MESSAGE_MAX],
                last_transition_time=at if changed else (cond.last_transition_time or at),
                observed_generation=generation,
            )
        )
    if not found:
        out.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message[:MESSAGE_MAX],
                last_transition_time=at,
                observed_generation=generation,
            )
        )
    return out


def condition(status: MLOpsStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


def parse_status(raw: Mapping[str, Any] | None) -> MLOpsStatus:
    """The status as typed; a status this model cannot read (hand-edited) starts over."""
    try:
        return MLOpsStatus.model_validate(dict(raw or {}))
    except ValueError:
        return MLOpsStatus()


def status_json(status: MLOpsStatus) -> dict[str, Any]:
    """The status as the API server stores it (camelCase, JSON types, extra keys kept). No
    nulls: ``kubectl get`` prints a null column as ``<no value>`` (an absent one as ``<none>``),
    and the status is written whole, so an absent key clears a value as a null would."""
    data: dict[str, Any] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return data


def same_status(a: MLOpsStatus, b: MLOpsStatus) -> bool:
    """Equal but for condition transition times (which a no-op must never rewrite)."""

    def key(s: MLOpsStatus) -> str:
        data = status_json(s)
        for cond in data.get("conditions") or []:
            cond.pop("lastTransitionTime", None)
        return json.dumps(data, sort_keys=True, default=str)

    return key(a) == key(b)


# === The decision ===


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Stop:
    workflow: str
    # Stop: pods get SIGTERM (the trainer checkpoints) and exit handlers run. Terminate: the same
    # for pods, and the Workflow fails at once (a budget is spent: nothing more may run).
    mode: Literal["Stop", "Terminate"] = "Stop"
    # Its trainer attempts that had ended when the operator decided to stop it (recorded on the
    # Workflow: WorkflowView.counted).
    ended: int = field(default=0, compare=False)


def _stop(workflow: WorkflowView, mode: Literal["Stop", "Terminate"] = "Stop") -> Stop:
    return Stop(workflow.name, mode, ended=workflow.ended_attempts)


@dataclass(frozen=True)
class Decision:
    """What to do: the I/O, then the new status (None: unchanged)."""

    status: MLOpsStatus | None = None
    create: tuple[dict[str, Any], ...] = ()
    stop: tuple[Stop, ...] = ()
    prune: tuple[str, ...] = ()  # Workflow names whose run (Workflow + ConfigMap) is deleted
    events: tuple[Event, ...] = ()
    # A suspended run is to resume: decide again once it is known whether this run's stopped
    # trainer pods are still alive (they share its output folder).
    check_trainers: str | None = None
    # A run is to start in a queue (semaphore mode): decide again with that queue's view.
    check_queue: str | None = None

    @property
    def acts(self) -> bool:
        """Whether it changes anything but the status (so it must be made on fresh data)."""
        return bool(self.create or self.stop or self.prune)


@dataclass(frozen=True)
class Policy:
    """The operator-wide settings :func:`decide` needs."""

    render: RenderSettings = field(default_factory=RenderSettings)
    default_image: str | None = None
    guardrails: Guardrails = field(default_factory=Guardrails)


def decide(
    body: Mapping[str, Any],
    workflows: Iterable[WorkflowView],
    policy: Policy,
    at: datetime | None = None,
    *,
    trainers_alive: bool | None = None,
    queue: QueueView | None = None,
) -> Decision:
    """The whole lifecycle of one MLOps object (see the module docstring). Pure.

    ``trainers_alive``: whether the current run's trainer pods are still alive, when the caller
    knows; a decision that needs it (a resume) asks for it with ``check_trainers``. ``queue``:
    the run's queue as it stands, asked for with ``check_queue`` before a queued run starts."""
    at = at or now()
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return Decision()  # the delete handler owns a dying object
    current = parse_status(body.get("status"))
    generation = int(meta.get("generation") or 1)
    rerun = str((meta.get("annotations") or {}).get(ANNOTATION_RERUN, ""))
    owned = tuple(workflows)
    if current.observed_generation == generation and (current.rerun or "") == rerun:
        if current.run_id is None:
            return Decision()  # invalid or rejected: nothing until a new generation or rerun
        try:
            obj = parse_manifest(manifest_of(with_default_image(body, policy.default_image)))
        except ManifestError:
            return Decision()  # cannot happen for a decided run; never act on a bad spec
        return _follow(
            body, obj, current, owned, policy, at=at, trainers_alive=trainers_alive, queue=queue
        )
    desired = desired_children(
        with_default_image(body, policy.default_image), policy.render, rerun=rerun
    )
    return _new_generation(
        body,
        desired,
        current,
        owned,
        policy,
        at=at,
        generation=generation,
        rerun=rerun,
        trainers_alive=trainers_alive,
        queue=queue,
    )


def _new_generation(
    body: Mapping[str, Any],
    desired: Desired,
    current: MLOpsStatus,
    owned: tuple[WorkflowView, ...],
    policy: Policy,
    *,
    at: datetime,
    generation: int,
    rerun: str,
    trainers_alive: bool | None = None,
    queue: QueueView | None = None,
) -> Decision:
    problem = _refusal(desired, policy)
    if problem is not None:
        reason, message = problem
        conds = set_condition(
            current.conditions, "Validated", "False", reason, message, generation=generation
        )
        conds = set_condition(
            conds, "Ready", "False", reason, message, generation=generation, at=at
        )
        status = current.model_copy(
            update={
                "phase": "Failed",
                "reason": reason,
                "message": message,
                "conditions": conds,
                "observed_generation": generation,
                "rerun": rerun or None,
                **_no_run(),
            }
        )
        return Decision(status=status, events=(Event("Warning", reason, message),))
    rendered, obj = desired.rendered, desired.obj
    assert rendered is not None and obj is not None
    digest = spec_hash(obj.spec)
    conds = set_condition(
        current.conditions, "Validated", "True", "SpecValid", generation=generation, at=at
    )
    if current.run_id and current.spec_hash == digest and (current.rerun or "") == rerun:
        # The same effective spec (a default written out, a field reordered): the run goes on.
        conds = set_condition(conds, "Accepted", "True", "SameRun", generation=generation, at=at)
        status = current.model_copy(update={"observed_generation": generation, "conditions": conds})
        # ...under this generation's handling (suspend, keepRuns, onChange) from now on.
        return _follow(
            body, obj, status, owned, policy, at=at, trainers_alive=trainers_alive, queue=queue
        )
    run = rendered.plan.run_id
    active = _active(owned, exclude=run)
    if active and obj.spec.on_change == "reject" and not any(w.run_id == run for w in owned):
        message = (
            f"generation {generation} not started: run(s) {', '.join(w.name for w in active)} "
            "still active (onChange: reject). When they are done, apply the change again or "
            "set the annotation mlops.dev/rerun to a new value."
        )
        conds = set_condition(
            conds, "Accepted", "False", "ChangeRejected", message, generation=generation, at=at
        )
        # The status keeps describing the active run; only the rejection is recorded.
        status = current.model_copy(
            update={
                "observed_generation": generation,
                "rerun": rerun or None,
                "conditions": conds,
                "message": message,
            }
        )
        return Decision(status=status, events=(Event("Warning", "ChangeRejected", message),))
    conds = set_condition(conds, "Accepted", "True", "NewRun", generation=generation, at=at)
    for type_ in ("Succeeded", "Synced"):
        conds = [c for c in conds if c.type != type_]
    status = current.model_copy(
        update={
            "phase": "Queued",
            "reason": "Submitting",
            "message": f"run {run}",
            "conditions": conds,
            "observed_generation": generation,
            "run_id": run,
            "rerun": rerun or None,
            "spec_hash": digest,
            "workflow": rendered.workflow["metadata"]["name"],
            "config_map": rendered.config_map["metadata"]["name"],
            "submitted": False,
            "output": rendered.plan.config.output,
            **_fresh_progress(),
        }
    )
    return _follow(
        body, obj, status, owned, policy, at=at, rendered=rendered, changed=True, queue=queue
    )


def _refusal(desired: Desired, policy: Policy) -> tuple[str, str] | None:
    """(reason, message) when the spec cannot become a run here: invalid (SpecInvalid), or
    against the cluster's guardrails (PolicyViolation); None when it can."""
    if desired.error is not None:
        return "SpecInvalid", str(desired.error)[:MESSAGE_MAX]
    assert desired.obj is not None
    errors = check_guardrails(desired.obj.spec, policy.guardrails)
    if errors:
        return "PolicyViolation", str(ManifestError(errors))[:MESSAGE_MAX]
    return None


def _no_run() -> dict[str, Any]:
    return {
        "run_id": None,
        "spec_hash": None,
        "workflow": None,
        "config_map": None,
        "submitted": False,
        "output": None,
        **_fresh_progress(),
    }


def _fresh_progress() -> dict[str, Any]:
    return {
        "latest_checkpoint": None,
        "metrics": {},
        "progress": None,
        "eta": None,
        "preemptions": 0,
        "app_errors": 0,
        "started_at": None,
        "finished_at": None,
    }


def _active(owned: Sequence[WorkflowView], *, exclude: str | None) -> list[WorkflowView]:
    return sorted(
        (w for w in owned if not w.finished and w.run_id != exclude), key=lambda w: w.name
    )


def _follow(
    body: Mapping[str, Any],
    obj: MLOps,
    status: MLOpsStatus,
    owned: tuple[WorkflowView, ...],
    policy: Policy,
    *,
    at: datetime,
    rendered: RenderedRun | None = None,
    changed: bool = False,
    trainers_alive: bool | None = None,
    queue: QueueView | None = None,
) -> Decision:
    """The decided run of the current generation: create it, wait, follow it, enforce budgets,
    suspend and resume it."""
    original = parse_status(body.get("status"))
    spec = obj.spec
    generation = status.observed_generation
    run = status.run_id
    # The run's current Workflow, and all of its segments (one more per resume).
    segments = tuple(w for w in owned if w.run_id == run)
    workflow = next((w for w in segments if w.name == status.workflow), None)
    events: list[Event] = []
    create: tuple[dict[str, Any], ...] = ()
    stop: list[Stop] = []

    def phase(phase: str, reason: str, message: str) -> MLOpsStatus:
        return _phase(status, phase, reason, message, generation=generation, at=at)

    gated = bool(spec.queue) and policy.render.queue_mode == "semaphore"

    def submit(segment: int, reason: str, message: str) -> None:
        nonlocal create, status, rendered
        if gated and queue is not None and not queue.admits(spec.resources.gpu.count):
            gpus = spec.resources.gpu.count
            if queue.capacity is not None and units(gpus) > queue.capacity:
                message = (
                    f"run {run} asks {gpus} GPUs; queue {queue.key} has {queue.capacity} "
                    "units: it can never start (lower resources.gpu.count or use another queue)"
                )
                status = phase("Failed", "QueueTooSmall", message)
                events.append(Event("Warning", "QueueTooSmall", message))
                return
            status = status.model_copy(
                update={"queued_at": status.queued_at or at, "queue": queue.key}
            )
            status = phase("Queued", "WaitingForQueue", f"run {run} {queue.explain(gpus)}")
            return
        placement = status.placement or ("spot" if spec.spot else "on-demand")
        if rendered is None or segment:
            # Rendered under the decided run id: an upgrade between the decision and the start
            # (a run that waited its turn, or was suspended) changes no id and no folder.
            rendered = render(
                obj,
                policy.render,
                rerun=status.rerun or "",
                run_id=run,
                segment=segment,
                on_demand=placement == "on-demand",
            )
        create = (_adopt(body, rendered.config_map), _adopt(body, rendered.workflow))
        status = status.model_copy(
            update={
                "submitted": True,
                "segment": segment,
                "workflow": rendered.workflow["metadata"]["name"],
                "placement": placement,
                "queued_at": None,
                "queue": queue.key if gated and queue is not None else None,
            }
        )
        # The status the new Workflow will show until Argo acts on it, not a word of its own:
        # the first event of that Workflow then changes nothing, and costs no status write.
        status = phase(*_workflow_phase(view_workflow(rendered.workflow)))
        events.append(Event("Normal", reason, f"{message}: Workflow {status.workflow}"))

    starting = (
        status.phase not in FINAL_PHASES
        and not spec.suspend
        and (
            (workflow is None and not status.submitted)
            or (
                status.submitted and (status.phase == "Suspended" or status.reason == "FallingBack")
            )
        )
    )
    if gated and queue is None and starting and not _active(owned, exclude=run):
        return Decision(check_queue=spec.queue)
    if status.phase in FINAL_PHASES and not changed:
        # Finished stays finished: late details (metrics in a summary) may still arrive, but
        # nothing is ever submitted again, whatever happened to the Workflow — and nothing of
        # it keeps running (a budget stop whose first attempt did not land).
        if workflow is not None:
            status = _details(status, workflow, segments)
            if not workflow.finished and not workflow.shutdown:
                stop.append(_stop(workflow, "Terminate"))
    elif spec.suspend:
        if workflow is not None:
            status = _details(status, workflow, segments)
            if not workflow.finished and not workflow.shutdown:
                stop.append(_stop(workflow))  # SIGTERM: the trainer checkpoints and exits
        message = (
            f"run {run} suspended: its trainer checkpoints and stops; set spec.suspend: false "
            "to resume it from its checkpoint"
        )
        if original.phase != "Suspended":
            events.append(Event("Normal", "Suspended", message))
        status = phase("Suspended", "Suspended", message)
    elif status.submitted and (status.phase == "Suspended" or status.reason == "FallingBack"):
        # A new Workflow of the same run: resumed after a suspend, or moved to on-demand nodes.
        if trainers_alive is None and (workflow is None or workflow.finished):
            return Decision(check_trainers=run)
        if (workflow is not None and not workflow.finished) or trainers_alive:
            # The same output folder: never two trainers at once, so wait for the stopped one.
            if status.phase == "Suspended":
                status = phase(
                    "Suspended", "Resuming", f"run {run} resumes once its stopped trainer exited"
                )
        elif status.phase == "Suspended":
            submit(status.segment + 1, "Resumed", f"run {run} resumed from its checkpoint")
        else:
            submit(
                status.segment + 1,
                "OnDemand",
                f"run {run} resumes on on-demand nodes from its checkpoint",
            )
    elif workflow is None:
        if status.submitted:
            message = (
                f"Workflow {status.workflow} no longer exists (deleted by hand, or by Argo's TTL "
                f"while no operator ran); the run's files are under {status.output}. To run "
                "again, set the annotation mlops.dev/rerun to a new value."
            )
            status = phase("Failed", "WorkflowMissing", message)
            events.append(Event("Warning", "WorkflowMissing", message))
        else:
            active = _active(owned, exclude=run)
            if active and spec.on_change != "replace":
                names = ", ".join(w.name for w in active)
                message = f"waiting for run(s) {names} to finish (onChange: {spec.on_change})"
                status = phase("Queued", "WaitingForPreviousRun", message)
            else:
                if active:
                    stop.extend(_stop(w) for w in active if not w.shutdown)
                    events.append(
                        Event(
                            "Normal",
                            "Replaced",
                            f"stopping {', '.join(w.name for w in active)} for run {run}",
                        )
                    )
                submit(0, "RunSubmitted", f"run {run} submitted")
    else:
        status = status.model_copy(update={"submitted": True})
        status, budget_stop, budget_event = _from_workflow(
            status, workflow, segments, spec.retries, at
        )
        if budget_stop is not None:
            stop.append(budget_stop)
        if budget_event is not None:
            events.append(budget_event)
        fallback = spec.fallback_after_preemptions
        if (
            fallback is not None
            and spec.spot
            and status.placement != "on-demand"
            and status.preemptions >= fallback
            and status.phase not in FINAL_PHASES
        ):
            # Flyte's interruptible-failure-threshold: a run that spot capacity keeps taking
            # away goes on on-demand nodes (a new Workflow, resuming from its checkpoint).
            if not workflow.finished and not workflow.shutdown:
                stop.append(_stop(workflow))
            message = (
                f"run {run}: {status.preemptions} preemptions on spot nodes "
                f"(fallbackAfterPreemptions: {fallback}); it moves to on-demand nodes"
            )
            status = status.model_copy(update={"placement": "on-demand"})
            status = phase("Queued", "FallingBack", message)
            events.append(Event("Normal", "FallingBack", message))
        if status.phase != "Running":
            status = status.model_copy(update={"eta": None})
        elif status.progress != original.progress:
            # Only when progress moved: a resync must not rewrite the status just for the clock.
            status = status.model_copy(update={"eta": eta(status.progress, status.started_at, at)})
        if status.phase != original.phase or status.reason != original.reason:
            if status.phase in FINAL_PHASES and budget_event is None:
                kind: Literal["Normal", "Warning"] = (
                    "Normal" if status.phase == "Succeeded" else "Warning"
                )
                events.append(Event(kind, status.phase, status.message[:1000]))
            elif status.phase == "Running" and original.phase != "Running":
                events.append(Event("Normal", "Running", status.message[:1000]))
    prune = _prune(owned, spec.keep_runs, run)
    new_status = None if same_status(status, original) else status
    return Decision(
        status=new_status,
        create=create,
        stop=tuple(stop),
        prune=tuple(prune),
        events=tuple(events),
    )


def _adopt(body: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """``child`` owned by the MLOps object: in its namespace, garbage-collected with it."""
    meta = body["metadata"]
    out = copy.deepcopy(dict(child))
    out["metadata"]["namespace"] = meta["namespace"]
    out["metadata"]["ownerReferences"] = [
        {
            "apiVersion": body.get("apiVersion", "mlops.dev/v1alpha1"),
            "kind": body.get("kind", "MLOps"),
            "name": meta["name"],
            "uid": meta["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    return out


def _phase(
    status: MLOpsStatus,
    phase: str,
    reason: str,
    message: str,
    *,
    generation: int | None,
    at: datetime,
) -> MLOpsStatus:
    """``status`` in ``phase``, with the Ready/Running/Succeeded conditions to match."""
    conds = set_condition(
        status.conditions,
        "Ready",
        "True" if phase == "Succeeded" else "False",
        reason,
        message,
        generation=generation,
        at=at,
    )
    conds = set_condition(
        conds,
        "Running",
        "True" if phase == "Running" else "False",
        reason,
        message,
        generation=generation,
        at=at,
    )
    if phase in FINAL_PHASES:
        conds = set_condition(
            conds,
            "Succeeded",
            "True" if phase == "Succeeded" else "False",
            reason,
            message,
            generation=generation,
            at=at,
        )
    update: dict[str, Any] = {
        "phase": phase,
        "reason": reason,
        "message": message[:MESSAGE_MAX],
        "conditions": conds,
    }
    if phase in FINAL_PHASES and status.finished_at is None:
        update["finished_at"] = at
    return status.model_copy(update=update)


def _details(
    status: MLOpsStatus, workflow: WorkflowView, segments: Sequence[WorkflowView] = ()
) -> MLOpsStatus:
    """Progress, checkpoint, metrics and times from the run's current Workflow; the attempt
    counts from all of its segments (a resumed run keeps what it used of its budgets)."""
    segments = segments or (workflow,)
    update: dict[str, Any] = {
        "preemptions": sum(w.preemptions for w in segments) + unseen_attempts(workflow, segments),
        "app_errors": sum(w.app_errors for w in segments),
    }
    summary = workflow.summary
    progress = next(
        (a.progress for a in reversed(workflow.attempts) if a.progress), workflow.progress
    )
    if workflow.finished and summary is not None and summary.progress:
        # The trainer's own count: Argo's is sampled every few seconds and not read again at
        # the container's exit, so a short run ended "1/1" in Argo (its default for a node that
        # reported nothing) or short of its last steps.
        progress = summary.progress
    if progress:
        update["progress"] = progress
    if summary is not None:
        if summary.latest_checkpoint:
            update["latest_checkpoint"] = summary.latest_checkpoint
        if summary.metrics:
            update["metrics"] = dict(summary.metrics)
    starts = [w.attempts[0].started_at for w in segments if w.attempts and w.attempts[0].started_at]
    if status.started_at is None and starts:
        update["started_at"] = _time(min(s for s in starts if s))
    if workflow.finished and workflow.finished_at:
        update["finished_at"] = _time(workflow.finished_at)
    return status.model_copy(update=update)


def eta(progress: str | None, started: datetime | None, at: datetime) -> str | None:
    """Time left at the pace so far, from Argo's ``done/total`` progress: ``"12m"``, ``"3h05m"``."""
    if not progress or started is None:
        return None
    try:
        done, total = (int(x) for x in progress.split("/"))
    except ValueError:
        return None
    elapsed = (at - started).total_seconds()
    if done <= 0 or total <= done or elapsed <= 0:
        return None
    left = int(elapsed * (total - done) / done)
    hours, minutes = divmod(left // 60, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{max(minutes, 1)}m"


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _from_workflow(
    status: MLOpsStatus,
    workflow: WorkflowView,
    segments: Sequence[WorkflowView],
    retries: Retries,
    at: datetime,
) -> tuple[MLOpsStatus, Stop | None, Event | None]:
    """The run's status from its Workflow, and a stop when a retry budget is spent."""
    generation = status.observed_generation
    status = _details(status, workflow, segments)
    budgets = (
        ("preemption", status.preemptions, retries.preemption),
        ("error", status.app_errors, retries.error),
    )
    if workflow.phase != "Succeeded":
        # Also once Argo has failed the run by itself (its one limit is both budgets together
        # and can run out at the same attempt): the status names the budget that was spent.
        for name, used, budget in budgets:
            if used > budget:
                reason = (
                    "PreemptionBudgetExhausted" if name == "preemption" else "ErrorBudgetExhausted"
                )
                what = "preemptions" if name == "preemption" else "app errors"
                # The trainer's own words first: Argo's message only gives the exit code.
                said = workflow.summary.error if workflow.summary else None
                last = said or (workflow.attempts[-1].message if workflow.attempts else "")
                message = (
                    f"{used} {what}, over the budget spec.retries.{name} = {budget}: the run "
                    f"is stopped" + (f" (last: {last})" if last else "")
                )
                status = _phase(status, "Failed", reason, message, generation=generation, at=at)
                stop = None if workflow.finished else _stop(workflow, "Terminate")
                return status, stop, Event("Warning", reason, message)
    phase, reason, message = _workflow_phase(workflow)
    return _phase(status, phase, reason, message, generation=generation, at=at), None, None


def _workflow_phase(workflow: WorkflowView) -> tuple[str, str, str]:
    """(phase, reason, message) of a run from its Workflow.

    Queued until Argo has made a trainer pod (it waits for its semaphore, the GPU queue, with
    no pod); Running from the first pod on, also between retries; then Argo's outcome.
    """
    run = workflow.run_id or workflow.name
    last = workflow.attempts[-1] if workflow.attempts else None
    summary = workflow.summary
    if workflow.phase == "Succeeded":
        return "Succeeded", "Succeeded", f"run {run} succeeded"
    if workflow.finished:
        if workflow.shutdown:
            return "Stopped", "Stopped", f"run {run} stopped ({workflow.shutdown})"
        detail = (summary.error if summary and summary.error else None) or (
            last.message if last and last.message else workflow.message
        )
        return "Failed", "WorkflowFailed", f"run {run} failed: {detail or 'no message'}"
    if workflow.kueue_queue and last is not None and last.phase == "Pending":
        # Kueue gates the pod until its ClusterQueue has quota: Kueue's own words say why.
        wait = workflow.kueue
        if wait is None:
            said = f"no Workload for pod {last.pod} yet (is Kueue running?)"
        elif wait.waiting:
            said = (
                f"{wait.reason}: {wait.message}"
                if wait.message
                else wait.reason or f"Kueue has not evaluated its Workload {wait.name} yet"
            )
        else:
            said = ""  # admitted: the pod is being scheduled and started
        if said:
            message = f"run {run} waits for Kueue admission (LocalQueue {wait.queue if wait else workflow.kueue_queue}): {said}"
            # A retry waiting again (after a preemption) is still a started run.
            phase = "Queued" if len(workflow.attempts) <= 1 else "Running"
            return phase, "WaitingForKueue", message
    if last is None:
        if workflow.waiting:
            return "Queued", "WaitingForQueue", f"run {run} waits for its queue"
        return "Queued", "Queued", f"run {run} queued"
    if last.failure is not None:
        return "Running", "Retrying", f"run {run}: {last.failure} ({last.message}), retrying"
    return "Running", "Running", f"run {run} running"


def _prune(owned: Sequence[WorkflowView], keep: int, current: str | None) -> list[str]:
    """Finished runs beyond the newest ``keep`` (the current run counts), never the current."""
    finished = [w for w in owned if w.finished and w.run_id != current]
    finished.sort(key=lambda w: (w.generation or 0, w.created or ""), reverse=True)
    return [w.name for w in finished[max(keep - 1, 0) :]]


# === What kopf's change handlers still have to do ===


def handled(body: Mapping[str, Any]) -> bool:
    """Whether the object's status records a decision for its generation and its rerun token,
    with no transient failure of that decision's actions waiting for a retry (``Synced`` False
    on a run not yet finished). kopf's change handlers call the reconcile while this is False,
    with their backoff; the status is the record of what was handled (kopf's own annotation would
    cost a PATCH per change and repeat what the status says)."""
    meta = body.get("metadata") or {}
    status = parse_status(body.get("status"))
    rerun = (meta.get("annotations") or {}).get(ANNOTATION_RERUN) or None
    if status.observed_generation != meta.get("generation") or status.rerun != rerun:
        return False
    synced = next((c for c in status.conditions if c.type == "Synced"), None)
    return synced is None or synced.status != "False" or status.phase in FINAL_PHASES
