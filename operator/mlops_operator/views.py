"""Typed, compact views of the Argo Workflows a run is made of (what the operator's index keeps).

A view holds only what the operator decides with: the run it belongs to, Argo's phase, whether
it was asked to shut down, and one :class:`Attempt` per trainer pod (Argo's retry children),
each classified as a preemption or an application error. Pure: built from a Workflow body.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from mlops_api.naming import (
    ANNOTATION_ENDED_BEFORE_STOP,
    ANNOTATION_GPUS,
    ANNOTATION_QUEUE,
    LABEL_GENERATION,
    LABEL_OWNER_UID,
    LABEL_RUN_ID,
)
from mlops_api.spec import GROUP, KIND
from mlops_trainers.contract import EXIT_PREEMPTED, SUMMARY_PARAMETER, Summary
from mlops_workflows.render import KUEUE_QUEUE_LABEL, PREEMPTION_MESSAGES

FINAL_WORKFLOW_PHASES = frozenset({"Succeeded", "Failed", "Error"})
_PREEMPTION = re.compile("|".join(re.escape(m) for m in PREEMPTION_MESSAGES), re.IGNORECASE)
# Argo's message on the attempts of a Workflow it was asked to shut down.
_SHUTDOWN = re.compile(r"shutdown with strategy|stopped with strategy", re.IGNORECASE)

FailureKind = Literal["preemption", "app-error"]


@dataclass(frozen=True)
class Attempt:
    """One trainer pod of a run (Argo retries the step in a new pod)."""

    name: str
    phase: str
    message: str = ""
    exit_code: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    progress: str | None = None
    summary: Summary | None = None
    pod: str = ""  # its pod's name (argo_pod_name)

    @property
    def failure(self) -> FailureKind | None:
        """Why this attempt failed, or None when it did not (yet).

        A preemption is a pod lost to its node (the kubelet's "imminent node shutdown", Argo's
        "pod deleted") or a trainer that checkpointed after SIGTERM (exit 143); any other
        failure — a trainer exception (exit 1 or 2), an import crash, an OOM kill — is an
        application error.
        """
        if self.phase not in ("Failed", "Error") or _SHUTDOWN.search(self.message):
            return None  # not failed, or stopped on purpose (onChange: replace, suspend, delete)
        if _PREEMPTION.search(self.message) or self.exit_code == str(EXIT_PREEMPTED):
            return "preemption"
        return "app-error"


@dataclass(frozen=True)
class WorkflowView:
    """The part of an Argo Workflow the operator reads."""

    name: str
    namespace: str
    owner_uid: str | None
    run_id: str | None
    generation: int | None
    phase: str  # Argo's: "", Pending, Running, Succeeded, Failed, Error
    shutdown: str | None = None
    message: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    progress: str | None = None
    waiting: bool = False  # waiting for its semaphore (the queue)
    attempts: tuple[Attempt, ...] = ()
    created: str | None = None
    queue: str | None = None  # the queue key it holds units of (semaphore mode)
    gpus: int = 0
    ended_before_stop: int | None = None  # ANNOTATION_ENDED_BEFORE_STOP, once stopped
    # Kueue mode: the LocalQueue its pods name (their queue-name label), and the Workload of
    # its newest pod, if Kueue has made one (with_workloads).
    kueue_queue: str | None = None
    kueue: WorkloadView | None = None

    @property
    def finished(self) -> bool:
        return self.phase in FINAL_WORKFLOW_PHASES

    @property
    def ended_attempts(self) -> int:
        return sum(1 for a in self.attempts if a.phase in FINAL_WORKFLOW_PHASES)

    @property
    def counted(self) -> tuple[Attempt, ...]:
        """The attempts that count against the run's budgets: all but those the operator's own
        stop ended. A stop SIGTERMs the running pod and a trainer that checkpoints exits 143;
        Argo may record that bare exit before its "Stopped with strategy" message (Argo 4.0 did,
        for a retry it had started just before the stop). So an attempt that ended after the
        stop (beyond ``ended_before_stop``) with a bare exit 143 is the stop's, not a
        preemption; one that ended before it (a preemption may be what made the operator stop)
        counts as ever."""
        if not self.shutdown or self.ended_before_stop is None:
            return self.attempts
        before, after = (
            self.attempts[: self.ended_before_stop],
            self.attempts[self.ended_before_stop :],
        )
        return before + tuple(
            a
            for a in after
            if not (a.exit_code == str(EXIT_PREEMPTED) and not _PREEMPTION.search(a.message))
        )

    @property
    def preemptions(self) -> int:
        return sum(1 for a in self.counted if a.failure == "preemption")

    @property
    def app_errors(self) -> int:
        return sum(1 for a in self.counted if a.failure == "app-error")

    @property
    def summary(self) -> Summary | None:
        """The newest attempt's summary (the one that ended the run, or the last preempted one)."""
        return next((a.summary for a in reversed(self.attempts) if a.summary), None)


def unseen_attempts(workflow: WorkflowView, segments: Iterable[WorkflowView]) -> int:
    """Trainer attempts of the run that Argo shows no node for: preemptions its nodes miss.

    Argo makes a pod again for the same node when the pod vanished between its two looks in
    one reconcile (the pod list, then "does the node's pod exist?" before creating it): a pod
    deleted while the controller lags. The node then shows one attempt, maybe Succeeded, though
    the trainer ran twice and its first pod was taken away. The trainer counts its attempts
    itself (attempts.json, in its summary); the attempts Argo shows up to the one that wrote
    the newest summary (earlier segments' included: a resumed run keeps its counter) are
    subtracted. Attempts Argo shows that never reached the trainer only make this smaller.
    """
    newest = next(
        ((i, a.summary) for i, a in reversed(list(enumerate(workflow.attempts))) if a.summary),
        None,
    )
    if newest is None or not newest[1].attempt:
        return 0
    index, summary = newest
    earlier = sum(len(w.attempts) for w in segments if w.name != workflow.name)
    return max(0, summary.attempt - (earlier + index + 1))


def owner_uid(body: Mapping[str, Any]) -> str | None:
    """The uid of the MLOps object that owns ``body``: its controller ownerReference, else our
    owner-uid label. A Workflow that names no MLOps owner is not ours."""
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/"):
            return str(ref.get("uid")) if ref.get("uid") else None
    uid = (meta.get("labels") or {}).get(LABEL_OWNER_UID)
    return str(uid) if uid else None


def argo_pod_name(workflow: str, node: str, template: str = "train") -> str:
    """The name Argo gives a node's pod (pod names v2, Argo's default since 3.4):
    ``<workflow>-<template>-<FNV-1a 32 of the node's name>`` (argo-workflows
    workflow/util GeneratePodName; the prefix is only cut beyond 242 characters, which our
    names never reach)."""
    digest = 0x811C9DC5
    for byte in node.encode():
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    return f"{workflow}-{template}-{digest}"


def _attempt(node: Mapping[str, Any], workflow: str) -> Attempt:
    outputs = node.get("outputs") or {}
    summary = None
    for param in outputs.get("parameters") or []:
        if param.get("name") == SUMMARY_PARAMETER:
            summary = Summary.parse(param.get("value"))
    exit_code = outputs.get("exitCode")
    return Attempt(
        name=str(node.get("name") or node.get("id") or ""),
        phase=str(node.get("phase") or ""),
        message=str(node.get("message") or ""),
        exit_code=None if exit_code is None else str(exit_code),
        started_at=node.get("startedAt"),
        finished_at=node.get("finishedAt"),
        progress=node.get("progress"),
        summary=summary,
        pod=argo_pod_name(
            workflow, str(node.get("name") or ""), node.get("templateName") or "train"
        ),
    )


def view_workflow(body: Mapping[str, Any]) -> WorkflowView:
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    status = body.get("status") or {}
    nodes = (status.get("nodes") or {}).values()
    pods = sorted(
        (n for n in nodes if n.get("type") == "Pod"),
        key=lambda n: (n.get("startedAt") or "", n.get("id") or ""),
    )
    semaphore = (status.get("synchronization") or {}).get("semaphore") or {}
    generation = labels.get(LABEL_GENERATION, "")
    annotations = meta.get("annotations") or {}
    gpus = annotations.get(ANNOTATION_GPUS, "")
    ended = annotations.get(ANNOTATION_ENDED_BEFORE_STOP, "")
    return WorkflowView(
        name=str(meta.get("name") or ""),
        namespace=str(meta.get("namespace") or ""),
        owner_uid=owner_uid(body),
        run_id=labels.get(LABEL_RUN_ID),
        generation=int(generation) if generation.isdigit() else None,
        phase=str(status.get("phase") or ""),
        shutdown=(body.get("spec") or {}).get("shutdown") or None,
        message=str(status.get("message") or ""),
        started_at=status.get("startedAt"),
        finished_at=status.get("finishedAt"),
        progress=status.get("progress"),
        waiting=bool(semaphore.get("waiting")),
        attempts=tuple(_attempt(n, str(meta.get("name") or "")) for n in pods),
        kueue_queue=(((body.get("spec") or {}).get("podMetadata") or {}).get("labels") or {}).get(
            KUEUE_QUEUE_LABEL
        ),
        created=meta.get("creationTimestamp"),
        queue=annotations.get(ANNOTATION_QUEUE),
        gpus=int(gpus) if gpus.isdigit() else 0,
        ended_before_stop=int(ended) if ended.isdigit() else None,
    )


# === Argo behind its pods ===


@dataclass(frozen=True)
class PodState:
    """What the API server says of one trainer pod: its phase and, once ended, when."""

    phase: str
    ended_at: str | None = None  # its last container's finishedAt (RFC 3339)


def argo_behind(
    view: WorkflowView, pods: Mapping[str, PodState], now: datetime, after_s: float
) -> tuple[Attempt, str] | None:
    """An attempt Argo still shows running although its pod ended (or vanished) ``after_s`` ago
    or more, with what happened to the pod ("ended (Succeeded)", "vanished"); None when Argo
    is up to date.

    Argo reconciles a Workflow when one of its pods or the Workflow itself changes, and every
    20 min besides; a write of that reconcile that fails (the API server restarting) is not
    retried (Argo 3.7 and 4.0). A pod that ended just before an API server outage then stays
    "running" in the Workflow, holding its queue's units, for up to 20 min. ``pods``: the
    Workflow's pods by name (absent: gone).
    """
    if view.finished:
        return None
    for attempt in view.attempts:
        if attempt.phase not in ("Pending", "Running") or not attempt.pod:
            continue
        pod = pods.get(attempt.pod)
        if pod is None:
            # Gone while Argo shows it Running: Argo missed the deletion. (Pending is not
            # enough: Argo records the node before it creates the pod.)
            since, what = (attempt.started_at if attempt.phase == "Running" else None), "vanished"
        elif pod.phase in ("Succeeded", "Failed"):
            since, what = pod.ended_at, f"ended ({pod.phase})"
        else:
            continue
        if since is not None and (now - _parse_time(since)).total_seconds() >= after_s:
            return attempt, what
    return None


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# === Kueue (spec.queue in kueue mode) ===

KUEUE = ("kueue.x-k8s.io", "v1beta2", "workloads")


@dataclass(frozen=True)
class WorkloadView:
    """Kueue's Workload for one trainer pod (its pod integration makes one per pod, owned by
    it): whether Kueue has admitted the pod, and if not, Kueue's own reason."""

    name: str
    namespace: str
    pod: str  # the trainer pod it admits (its controller owner)
    queue: str  # the LocalQueue
    admitted: bool = False
    finished: bool = False
    reason: str = ""  # of QuotaReserved=False: Pending, Inadmissible, ...
    message: str = ""
    cluster_queue: str = ""
    flavors: tuple[str, ...] = ()  # the ResourceFlavors it was admitted on

    @property
    def waiting(self) -> bool:
        return not self.admitted and not self.finished

    def of(self, workflow: str) -> bool:
        """Whether its pod belongs to ``workflow``: Argo names the pods of a retried template
        ``<workflow>-<template>-<fnv32a of the node's name>`` (our one template is ``train``).
        The whole name must fit: ``demo-g1`` is a prefix of ``demo-g1-abc``'s pods too."""
        head, _, digits = self.pod.rpartition("-")
        return head == f"{workflow}-train" and digits.isdigit()


def with_workloads(
    workflows: Iterable[WorkflowView], workloads: Iterable[WorkloadView]
) -> list[WorkflowView]:
    """The Workflows, each with the Workload of its newest pod, if Kueue has made one."""
    by_pod = {(w.namespace, w.pod): w for w in workloads}
    out = []
    for workflow in workflows:
        newest = workflow.attempts[-1].pod if workflow.attempts else ""
        mine = by_pod.get((workflow.namespace, newest))
        out.append(replace(workflow, kueue=mine) if mine else workflow)
    return out


def view_workload(body: Mapping[str, Any]) -> WorkloadView | None:
    """The view of a Workload of a single pod; None for any other (a Job's, a pod group's)."""
    meta = body.get("metadata") or {}
    pods = [
        ref
        for ref in meta.get("ownerReferences") or []
        if ref.get("kind") == "Pod" and ref.get("controller")
    ]
    if len(pods) != 1:
        return None
    status = body.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}

    def true(kind: str) -> bool:
        return (conditions.get(kind) or {}).get("status") == "True"

    reserved = conditions.get("QuotaReserved") or {}
    admission = status.get("admission") or {}
    flavors = sorted(
        {
            str(flavor)
            for assignment in admission.get("podSetAssignments") or []
            for flavor in (assignment.get("flavors") or {}).values()
        }
    )
    return WorkloadView(
        name=str(meta.get("name") or ""),
        namespace=str(meta.get("namespace") or ""),
        pod=str(pods[0].get("name") or ""),
        queue=str((body.get("spec") or {}).get("queueName") or ""),
        admitted=true("Admitted"),
        finished=true("Finished"),
        reason="" if reserved.get("status") == "True" else str(reserved.get("reason") or ""),
        message="" if reserved.get("status") == "True" else str(reserved.get("message") or ""),
        cluster_queue=str(admission.get("clusterQueue") or ""),
        flavors=tuple(flavors),
    )
