"""kopf handlers, thin: parse → reconcile (pure builders) → status.

Every step is repeatable: children have deterministic names and are created only if absent, so an
operator killed anywhere and restarted converges on exactly one ConfigMap and one Workflow per run.
"""

from __future__ import annotations

from typing import Any, cast

import kopf
from mlops_api.naming import LABEL_MANAGED_BY, MANAGED_BY
from mlops_api.spec import GROUP, KIND, PLURAL, VERSION

from mlops_operator import kube, metrics
from mlops_operator.reconcile import (
    FINAL_WORKFLOW_PHASES,
    active_runs,
    change_action,
    compact_essence,
    desired_children,
    invalid_status,
    runs_to_prune,
    set_condition,
    status_changed,
    submitted_status,
    workflow_status,
)
from mlops_operator.settings import OperatorSettings

SETTINGS = OperatorSettings.from_env()


class CompactDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's last-handled-configuration annotation, kept small (see ``compact_essence``): a spec
    of a few hundred KiB must still get its Failed status instead of a rejected patch."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        essence = super().build(body=body, extra_fields=extra_fields)
        return cast(kopf.BodyEssence, compact_essence(cast(Any, essence)))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    # Without server/client timeouts a watch can hang silently on a broken connection.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 30
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = CompactDiffBaseStorage(prefix=GROUP)
    settings.posting.reporting_component = "mlops-operator"
    settings.posting.level = 20
    # Off: the namespaces given on the command line and the CRDs present at startup are used.
    settings.scanning.disabled = not SETTINGS.resource_scanning
    kube.load_config()
    metrics.serve(SETTINGS.metrics_port)
    logger.info("mlops-operator started (metrics port %s)", SETTINGS.metrics_port or "off")


def _with_default_image(body: kopf.Body) -> dict[str, Any]:
    data: dict[str, Any] = dict(body)
    spec = data.get("spec")
    if SETTINGS.default_image and isinstance(spec, dict) and "image" not in spec:
        data["spec"] = {**spec, "image": SETTINGS.default_image}
    return data


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@kopf.on.resume(GROUP, VERSION, PLURAL)
def reconcile(
    *,
    body: kopf.Body,
    meta: kopf.Meta,
    spec: kopf.Spec,
    status: kopf.Status,
    patch: kopf.Patch,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    namespace, name = meta["namespace"], meta["name"]
    generation = meta.get("generation")
    conditions = status.get("conditions") or []
    desired = desired_children(_with_default_image(body), SETTINGS.render)
    if desired.error is not None:
        # A bad spec is the user's to fix: say where, create nothing, never retry.
        patch.status.update(invalid_status(desired.error, generation, conditions))
        kopf.warn(body, reason="SpecInvalid", message=str(desired.error)[:1000])
        metrics.RECONCILES.labels(outcome="invalid").inc()
        metrics.observe_phase(f"{namespace}/{name}", "Failed")
        logger.warning("spec invalid: %s", desired.error)
        return
    rendered = desired.rendered
    assert rendered is not None
    run_id = rendered.plan.run_id

    workflows = kube.list_workflows(namespace, name)
    decision = change_action(spec.get("onChange", "queue"), active_runs(workflows, run_id))
    if decision.action == "reject":
        message = f"spec change rejected: run(s) {', '.join(decision.active)} still active (onChange: reject)"
        patch.status["conditions"] = set_condition(
            conditions, "Accepted", "False", "ChangeRejected", message, generation=generation
        )
        kopf.warn(body, reason="ChangeRejected", message=message)
        metrics.RECONCILES.labels(outcome="rejected").inc()
        return
    if decision.action == "wait":
        message = f"waiting for run(s) {', '.join(decision.active)} to finish (onChange: queue)"
        patch.status.update({"phase": "Queued", "message": message})
        patch.status["conditions"] = set_condition(
            conditions, "Ready", "False", "WaitingForPreviousRun", message, generation=generation
        )
        metrics.RECONCILES.labels(outcome="waiting").inc()
        raise kopf.TemporaryError(message, delay=SETTINGS.requeue_delay_s)
    if decision.action == "stop-then-create":
        for workflow in decision.active:
            kube.stop_workflow(namespace, workflow)
        kopf.info(
            body,
            reason="Replaced",
            message=f"stopped {', '.join(decision.active)} for run {run_id}",
        )

    children = [rendered.config_map, rendered.workflow]  # ConfigMap first: the Workflow mounts it
    kopf.adopt(children, owner=body)
    outcomes = [kube.create_if_absent(child) for child in children]

    already_current = (
        status.get("runId") == run_id and status.get("observedGeneration") == generation
    )
    if not already_current:
        workflow_name = rendered.workflow["metadata"]["name"]
        live = kube.get_workflow(namespace, workflow_name) if outcomes[1] == "exists" else None
        submitted = submitted_status(rendered, conditions, live)
        patch.status.update(submitted)
        kopf.info(
            body,
            reason="RunSubmitted",
            message=f"run {run_id}: Workflow {workflow_name}",
        )
        metrics.observe_phase(f"{namespace}/{name}", submitted["phase"])
    metrics.RECONCILES.labels(outcome="created" if "created" in outcomes else "unchanged").inc()

    for old in runs_to_prune(workflows, spec.get("keepRuns", 5), run_id):
        kube.delete_run(namespace, old, f"{old}-config")
        logger.info("pruned old run %s", old)


def _parent_name(workflow: kopf.Body) -> str | None:
    for ref in workflow.metadata.get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            return str(ref["name"])
    return None


@kopf.on.event("argoproj.io", "v1alpha1", "workflows", labels={LABEL_MANAGED_BY: MANAGED_BY})
def follow_workflow(body: kopf.Body, type: str | None, logger: kopf.Logger, **_: Any) -> None:
    """Map the current run's Workflow onto its MLOps status; older runs' events are ignored."""
    if type == "DELETED":
        return
    parent_name = _parent_name(body)
    namespace = body.metadata.namespace
    if parent_name is None or namespace is None:
        return
    parent = kube.get_mlops(namespace, parent_name)
    if parent is None:
        return
    current = parent.get("status") or {}
    if current.get("workflow") != body.metadata.name:
        return
    update = workflow_status(body, current.get("conditions") or [])
    if not status_changed(current, update):
        return
    kube.patch_mlops_status(namespace, parent_name, update)
    metrics.STATUS_UPDATES.inc()
    metrics.observe_phase(f"{namespace}/{parent_name}", update["phase"])
    if update["phase"] != current.get("phase"):
        level = kopf.warn if update["phase"] in ("Failed", "Stopped") else kopf.info
        level(
            kopf.Body(cast(Any, parent)), reason=update["phase"], message=update["message"][:1000]
        )
        logger.info(
            "%s/%s: %s -> %s", namespace, parent_name, current.get("phase"), update["phase"]
        )


@kopf.on.delete(GROUP, VERSION, PLURAL, when=lambda spec, **_: bool(spec.get("stopOnDelete", True)))
def stop_on_delete(meta: kopf.Meta, logger: kopf.Logger, retry: int, **_: Any) -> None:
    """Stop running Workflows (the trainer checkpoints on SIGTERM) before garbage collection."""
    namespace, name = meta["namespace"], meta["name"]
    metrics.observe_phase(f"{namespace}/{name}", None)
    running = [
        wf["metadata"]["name"]
        for wf in kube.list_workflows(namespace, name)
        if ((wf.get("status") or {}).get("phase") or "") not in FINAL_WORKFLOW_PHASES
    ]
    if not running:
        return
    for workflow in running:
        kube.stop_workflow(namespace, workflow)
    if retry * SETTINGS.requeue_delay_s < SETTINGS.stop_timeout_s:
        raise kopf.TemporaryError(
            f"stopping {', '.join(running)}", delay=min(5.0, SETTINGS.requeue_delay_s)
        )
    logger.warning("gave up waiting for %s to stop; garbage collection will delete them", running)
