"""The I/O around :func:`mlops_operator.reconcile.decide`: read, decide, act, write the status.

One function, :func:`sync`, whoever calls it (a change of the object, a Workflow event, the
periodic resync): per object it runs one at a time (a lock per uid), acts only on fresh data,
and writes the status with optimistic concurrency, so that no two writers can undo each other.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mlops_api.naming import ANNOTATION_GPUS, ANNOTATION_QUEUE, config_map_name

from mlops_operator import kube, metrics
from mlops_operator.queueing import QueueView, units
from mlops_operator.reconcile import (
    Decision,
    Event,
    Policy,
    decide,
    now,
    parse_status,
    set_condition,
    status_json,
)
from mlops_operator.settings import OperatorSettings
from mlops_operator.views import (
    WorkflowView,
    WorkloadView,
    argo_behind,
    view_workflow,
    with_workloads,
)

log = logging.getLogger("mlops_operator")

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
_ready_namespaces: set[str] = set()
_namespaces_guard = threading.Lock()

EventSink = Callable[[Mapping[str, Any], Event], None]
# How long after a trainer pod ended Argo may still show it running before the operator touches
# its Workflow: Argo looks at a pod event 10 s after it (its requeue delay), so six times that.
ARGO_BEHIND_S = 60.0
# (the object, its queue's name) -> the queue as that object sees it, given the Workflows just
# admitted (see Admissions) that the indexes may not show yet.
QueueLookup = Callable[[Mapping[str, Any], str, Mapping[str, Mapping[str, int]]], QueueView]


class Admissions:
    """Runs admitted to a queue, one at a time (a check-then-create across objects), and the
    Workflows just created for them until the operator's index has seen them (a watch behind):
    without both, two runs could take the last free units at once."""

    HOLD_S = 120.0

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._created: dict[str, dict[str, tuple[int, float]]] = {}

    def recent(self) -> dict[str, dict[str, int]]:
        """queue key -> {Workflow: units} created in the last HOLD_S seconds."""
        cutoff = time.monotonic() - self.HOLD_S
        return {
            key: {name: n for name, (n, at) in made.items() if at > cutoff}
            for key, made in self._created.items()
        }

    def record(self, created: Iterable[Mapping[str, Any]]) -> None:
        for child in created:
            annotations = (child.get("metadata") or {}).get("annotations") or {}
            key = annotations.get(ANNOTATION_QUEUE)
            if child.get("kind") == "Workflow" and key:
                n = units(int(annotations.get(ANNOTATION_GPUS, "0") or 0))
                made = self._created.setdefault(key, {})
                made[child["metadata"]["name"]] = (n, time.monotonic())


ADMISSIONS = Admissions()


class Written:
    """Each object as the operator's last status write left it, for a minute.

    A sync started by a Workflow event reads its MLOps object from an index, and the MLOps watch
    often lags the Workflow watch: the copy there predates the status write that followed the
    Workflow's creation. Deciding from it would write a status the server refuses (409) and cost
    a GET to recover. The write's own response is that newer object, so it is used instead, but
    only in place of the exact resourceVersion that write replaced. Kept for a while rather than
    until the watch catches up: a handler may have read the index just before it did."""

    HOLD_S = 60.0

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._by_uid: dict[str, tuple[str, bytes, float]] = {}

    def record(self, replaced: Mapping[str, Any], written: Mapping[str, Any]) -> None:
        meta = replaced["metadata"]
        at = time.monotonic()
        with self._guard:
            self._by_uid[str(meta["uid"])] = (str(meta["resourceVersion"]), pack(written), at)
            for uid in [u for u, (_, _, t) in self._by_uid.items() if at - t > self.HOLD_S]:
                del self._by_uid[uid]

    def latest(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``body``, or the object our write made of it when ``body`` is what that write replaced."""
        meta = body["metadata"]
        with self._guard:
            found = self._by_uid.get(str(meta["uid"]))
        if found is None or found[0] != meta.get("resourceVersion"):
            return dict(body)
        return unpack(found[1])

    def forget(self, uid: str) -> None:
        with self._guard:
            self._by_uid.pop(uid, None)


WRITTEN = Written()


def pack(body: Mapping[str, Any]) -> bytes:
    """An object as compact JSON, without what no sync reads: ``managedFields`` (often larger
    than the spec and status together) and ``kubectl apply``'s copy of the manifest.

    The MLOps index and :data:`WRITTEN` hold one per object. As dicts, each was a tree of small
    objects and strings allocated while thousands of short-lived ones were, and at a thousand
    objects they kept much of the operator's heap from being given back; as bytes each is one
    allocation of a few KiB. :func:`unpack` makes a fresh dict of it when a sync needs one."""
    meta = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
    annotations = dict(meta.get("annotations") or {})
    annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    obj = {**{k: v for k, v in body.items() if k != "metadata"}, "metadata": meta}
    meta["annotations"] = annotations
    # default=dict: kopf's Body hands out mapping views of its parts, not dicts.
    return json.dumps(obj, separators=(",", ":"), default=dict).encode()


def unpack(packed: bytes) -> dict[str, Any]:
    """A fresh dict of a :func:`pack` ed object (the caller may change it)."""
    body: dict[str, Any] = json.loads(packed)
    return body


def _lock(uid: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(uid, threading.Lock())


def forget(uid: str) -> None:
    with _locks_guard:
        _locks.pop(uid, None)
    WRITTEN.forget(uid)


class NamespaceNotReadyError(Exception):
    """A run namespace lacks what a run needs and the operator may not create it."""


@dataclass(frozen=True)
class Outcome:
    """What one :func:`sync` did (for logs, metrics and tests)."""

    decision: Decision
    error: kube.ApiError | NamespaceNotReadyError | None = None


def ensure_namespace(namespace: str, settings: OperatorSettings) -> None:
    """What a run needs in its namespace: made once per process, or checked when not allowed."""
    if namespace in _ready_namespaces:
        return
    # One thread provisions, the others wait for it: the first runs of a new namespace arrive
    # together, and each would make the same three objects (the bench saw 18 requests, 15 of
    # them refused as existing).
    with _namespaces_guard:
        if namespace not in _ready_namespaces:
            _provision(namespace, settings)
            _ready_namespaces.add(namespace)


def _provision(namespace: str, settings: OperatorSettings) -> None:
    sa = settings.render.service_account
    if settings.provision_namespaces:
        kube.provision_namespace(namespace, sa, dict(settings.trainer_sa_annotations))
    elif not kube.service_account_exists(namespace, sa):
        raise NamespaceNotReadyError(
            f"namespace {namespace} has no ServiceAccount {sa!r} for trainer pods (and the "
            f"operator is not allowed to create it): create it with `kubectl -n {namespace} "
            f"create serviceaccount {sa}` plus a Role/RoleBinding allowing argoproj.io "
            "workflowtaskresults create/patch, or install the chart with "
            "operator.provisionNamespaces=true"
        )


def _confirm(body: Mapping[str, Any], owned: list[WorkflowView]) -> list[WorkflowView]:
    """Add the current run's Workflow when the index has not seen it yet (it may lag a create):
    "missing" is only ever concluded from the API server itself."""
    status = parse_status(body.get("status"))
    if not status.submitted or not status.workflow:
        return owned
    if any(w.name == status.workflow for w in owned):
        return owned
    live = kube.get_child("Workflow", body["metadata"]["namespace"], status.workflow)
    return [*owned, view_workflow(live)] if live is not None else owned


def _act(body: Mapping[str, Any], decision: Decision, settings: OperatorSettings) -> None:
    meta = body["metadata"]
    namespace, uid = meta["namespace"], meta["uid"]
    for stop in decision.stop:
        kube.stop_workflow(namespace, stop.workflow, stop.mode, stop.ended)
    if decision.create:
        ensure_namespace(namespace, settings)
    for child in decision.create:
        kube.create_child(child, uid)
    for workflow in decision.prune:
        kube.delete_run(namespace, workflow, config_map_name(workflow))


def sync(
    body: Mapping[str, Any],
    workflows: Iterable[WorkflowView],
    settings: OperatorSettings,
    *,
    fresh: bool,
    handler: str,
    post: EventSink,
    queues: QueueLookup | None = None,
    workloads: Iterable[WorkloadView] = (),
) -> Outcome:
    """Bring one MLOps object's children and status in line with its spec.

    ``fresh``: ``body`` comes straight from the API server (a kopf change handler), not from a
    cache; a decision that creates, stops or deletes anything is only acted on with fresh data.
    ``workloads``: Kueue's Workloads in the object's namespace (kueue mode), to tell a run
    whose pod waits for Kueue's admission from one that runs.
    Raises :class:`kube.ApiError` (transient) after recording it in status, for a retry.
    """
    policy = Policy(
        render=settings.render,
        default_image=settings.default_image,
        guardrails=settings.guardrails,
    )
    body = copy.deepcopy(dict(body))
    uid = body["metadata"]["uid"]
    with _lock(uid):
        body = WRITTEN.latest(body)
        for _ in range(5):
            owned = with_workloads(_confirm(body, list(workflows)), workloads)
            decision = decide(body, owned, policy)
            # A decision may ask for more than the indexes hold: whether a run's stopped
            # trainers have exited, how its queue stands. Answer, and decide again. Admitting
            # a run to a queue holds the admission lock until its Workflow is created, and not
            # a moment past any other way out of this attempt (a stale body, an object gone, an
            # error): a lock left held would stop every later admission of every run.
            with contextlib.ExitStack() as admitting:
                alive: bool | None = None
                view: QueueView | None = None
                for _ in range(3):
                    if decision.check_trainers is not None and alive is None:
                        alive = bool(
                            kube.live_pods(
                                body["metadata"]["namespace"], uid, run=decision.check_trainers
                            )
                        )
                    elif decision.check_queue is not None and view is None:
                        admitting.enter_context(ADMISSIONS.lock)
                        # No lookup (a test, a tool): the queue does not hold the run back.
                        view = (
                            queues(body, decision.check_queue, ADMISSIONS.recent())
                            if queues is not None
                            else QueueView(key=decision.check_queue, capacity=None)
                        )
                    else:
                        break
                    decision = decide(body, owned, policy, trainers_alive=alive, queue=view)
                if decision.acts and not fresh:
                    latest = kube.get_mlops(body["metadata"]["namespace"], body["metadata"]["name"])
                    if latest is None:
                        return Outcome(Decision())
                    fresh = True
                    if latest["metadata"].get("resourceVersion") != body["metadata"].get(
                        "resourceVersion"
                    ):
                        body = latest
                        continue
                try:
                    with admitting:
                        _act(body, decision, settings)
                        ADMISSIONS.record(decision.create)
                except kube.ChildConflictError as exc:
                    return _report(
                        body, decision, handler, "ChildConflict", str(exc), post=post, final=True
                    )
                except kube.ApiError as exc:
                    outcome = _report(
                        body,
                        decision,
                        handler,
                        exc.reason or "ApiError",
                        str(exc),
                        post=post,
                        final=not exc.transient,
                        error=exc,
                    )
                    if exc.transient:
                        raise
                    return outcome
                except NamespaceNotReadyError as exc:
                    _report(body, decision, handler, "NamespaceNotReady", str(exc), post=post)
                    raise kube.ApiError("namespace", None, "NamespaceNotReady", str(exc)) from exc
            status = decision.status
            synced = next(
                (c for c in parse_status(body.get("status")).conditions if c.type == "Synced"),
                None,
            )
            # An action that failed before (Synced: False) went through this time: clear it. A
            # final failure (a ChildConflict, a refused request) is never retried, so never
            # cleared by a later sync that does nothing.
            if synced is not None and synced.status == "False" and decision.acts:
                base = status or parse_status(body.get("status"))
                status = base.model_copy(
                    update={
                        "conditions": set_condition(
                            base.conditions, "Synced", "True", "Synced", "", at=now()
                        )
                    }
                )
            if status is not None:
                try:
                    WRITTEN.record(body, kube.replace_status(body, status_json(status)))
                except kube.StaleObjectError:
                    latest = kube.get_mlops(body["metadata"]["namespace"], body["metadata"]["name"])
                    if latest is None:
                        return Outcome(Decision())
                    body, fresh = latest, True
                    continue
                metrics.STATUS_UPDATES.inc()
                metrics.observe_phase(
                    f"{body['metadata']['namespace']}/{body['metadata']['name']}", status.phase
                )
            for event in decision.events:
                post(body, event)
            metrics.RECONCILES.labels(outcome=_outcome(decision)).inc()
            return Outcome(decision)
        raise kube.ApiError("status", 409, "Conflict", "the object kept changing; retrying")


def _outcome(decision: Decision) -> str:
    if decision.create:
        return "created"
    if decision.stop:
        return "stopped"
    return "changed" if decision.status is not None else "unchanged"


def _report(
    body: Mapping[str, Any],
    decision: Decision,
    handler: str,
    reason: str,
    message: str,
    *,
    post: EventSink,
    final: bool = False,
    error: kube.ApiError | None = None,
) -> Outcome:
    """Record a failed action in status (the Synced condition; ``final``: the run failed), as a
    metric and an event. Nothing the decision claimed (a submitted run) is written."""
    metrics.ERRORS.labels(handler=handler, reason=reason).inc()
    current = parse_status(body.get("status"))
    base = decision.status or current
    generation = base.observed_generation
    conds = set_condition(
        base.conditions, "Synced", "False", reason, message, generation=generation, at=now()
    )
    update: dict[str, Any] = {"conditions": conds, "submitted": current.submitted}
    if final:
        conds = set_condition(conds, "Ready", "False", reason, message, generation=generation)
        conds = set_condition(conds, "Succeeded", "False", reason, message, generation=generation)
        update.update(
            {"phase": "Failed", "reason": reason, "message": message, "conditions": conds}
        )
    status = base.model_copy(update=update)
    try:
        WRITTEN.record(body, kube.replace_status(body, status_json(status)))
    except (kube.ApiError, kube.StaleObjectError) as exc:
        log.warning("could not record %s in status: %s", reason, exc)
    previous = next((c for c in current.conditions if c.type == "Synced"), None)
    if previous is None or previous.reason != reason or previous.status != "False":
        post(body, Event("Warning", reason, message[:1000]))
    return Outcome(decision, error)


def nudge_argo(
    body: Mapping[str, Any], workflows: Iterable[WorkflowView], *, post: EventSink
) -> int:
    """Touch each of ``workflows`` (one object's, from the index) that still shows a trainer
    pod running which ended :data:`ARGO_BEHIND_S` ago or more (:func:`views.argo_behind`), so
    that Argo reconciles it now rather than at its 20-min resync; an Event ``ArgoNudged`` says
    so. One list of pods per Workflow that Argo shows running; called by the periodic resync.
    Returns how many were touched."""
    touched = 0
    at = now()
    for view in workflows:
        if view.finished or not any(a.phase in ("Pending", "Running") for a in view.attempts):
            continue
        behind = argo_behind(view, kube.workflow_pods(view.namespace, view.name), at, ARGO_BEHIND_S)
        if behind is None:
            continue
        attempt, what = behind
        kube.nudge_workflow(view.namespace, view.name, at.isoformat())
        touched += 1
        message = (
            f"Argo still showed pod {attempt.pod} {attempt.phase.lower()}, which {what}"
            f" {ARGO_BEHIND_S:.0f} s or more ago (an update Argo missed, e.g. during an API"
            f" server restart): asked Argo to reconcile Workflow {view.name}"
        )
        log.info("%s: %s", body["metadata"]["name"], message)
        post(body, Event("Normal", "ArgoNudged", message))
    return touched
