"""Operator settings from the environment (the Helm chart sets these); defaults suit GKE."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Literal

from mlops_api.guardrails import Guardrails
from mlops_workflows.render import RenderSettings


def _env_json(name: str, default: object) -> object:
    raw = os.environ.get(name)
    return default if raw is None or raw == "" else json.loads(raw)


def _env_list(name: str) -> tuple[str, ...]:
    value = _env_json(name, [])
    assert isinstance(value, list), f"{name} must be a JSON list"
    return tuple(str(v) for v in value)


def _queue_mode(raw: str) -> Literal["semaphore", "kueue"]:
    # A typo must not quietly fall back to the semaphore queues while Kueue's LocalQueues wait.
    if raw == "kueue":
        return "kueue"
    if raw == "semaphore":
        return "semaphore"
    raise ValueError(f"MLOPS_QUEUE_MODE={raw!r}: must be semaphore or kueue")


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    return default if raw is None else raw.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class OperatorSettings:
    render: RenderSettings = field(default_factory=RenderSettings)
    default_image: str | None = None
    metrics_port: int = 0
    # How long a deletion waits for a stopped Workflow to finish before letting go.
    stop_timeout_s: float = 120.0
    # Every object not yet finished is looked at again this often (repairs a status whose
    # Workflow events went by, starts a queued generation, retries after API errors).
    resync_s: float = 60.0
    # Every API call the operator makes gives up after this long (then backs off and retries);
    # a wedged connection must never block a handler thread.
    api_timeout_s: float = 30.0
    # Liveness fails when no API call has succeeded for this long.
    api_stale_s: float = 90.0
    # kopf's requests in flight at once (its PATCHes, Events, lists; its watch streams are not
    # counted). Unbounded, a burst of new objects opened a TLS connection per request, each with
    # asyncio's 256 KiB read buffer: most of the operator's peak RSS at a thousand objects.
    api_concurrency: int = 16
    # Create what a run needs in a namespace that has none of it (the trainer ServiceAccount,
    # the Argo executor's Role and RoleBinding); off: report what is missing instead.
    provision_namespaces: bool = True
    # What a spec may ask for in this cluster (the chart's `policy` values).
    guardrails: Guardrails = field(default_factory=Guardrails)
    trainer_sa_annotations: tuple[tuple[str, str], ...] = ()
    # kopf's discovery of namespaces and CRDs appearing at runtime. It needs cluster-wide list/watch
    # of namespaces and CRDs; with namespaced RBAC kopf retries the 403s for about a minute before
    # it starts watching at all, so the chart turns it off there (MLOPS_RESOURCE_SCANNING=false).
    resource_scanning: bool = True

    @classmethod
    def from_env(cls) -> OperatorSettings:
        base = RenderSettings()
        spot_selector = _env_json("MLOPS_SPOT_NODE_SELECTOR", base.spot_node_selector)
        spot_tolerations = _env_json("MLOPS_SPOT_TOLERATIONS", list(base.spot_tolerations))
        on_demand_selector = _env_json("MLOPS_ON_DEMAND_NODE_SELECTOR", {})
        extra_env = _env_json("MLOPS_TRAINER_ENV", {})
        pod_annotations = _env_json("MLOPS_POD_ANNOTATIONS", {})
        sa_annotations = _env_json("MLOPS_TRAINER_SA_ANNOTATIONS", {})
        node_selector = _env_json("MLOPS_TRAINER_NODE_SELECTOR", {})
        tolerations = _env_json("MLOPS_TRAINER_TOLERATIONS", [])
        assert (
            isinstance(spot_selector, dict)
            and isinstance(spot_tolerations, list)
            and isinstance(on_demand_selector, dict)
            and isinstance(extra_env, dict)
            and isinstance(pod_annotations, dict)
            and isinstance(sa_annotations, dict)
            and isinstance(node_selector, dict)
            and isinstance(tolerations, list)
        )
        render = RenderSettings(
            service_account=os.environ.get("MLOPS_TRAINER_SERVICE_ACCOUNT", base.service_account),
            queue_config_map=os.environ.get("MLOPS_QUEUE_CONFIGMAP", base.queue_config_map),
            queue_namespace=os.environ.get("MLOPS_QUEUE_NAMESPACE") or None,
            queue_mode=_queue_mode(os.environ.get("MLOPS_QUEUE_MODE") or "semaphore"),
            image_pull_policy=os.environ.get("MLOPS_IMAGE_PULL_POLICY", base.image_pull_policy),
            spot_node_selector={str(k): str(v) for k, v in spot_selector.items()},
            spot_tolerations=tuple(
                {str(k): str(v) for k, v in t.items()} for t in spot_tolerations
            ),
            on_demand_node_selector={str(k): str(v) for k, v in on_demand_selector.items()},
            gpu_type_label=os.environ.get("MLOPS_GPU_TYPE_LABEL", base.gpu_type_label),
            report_summary=_env_bool("MLOPS_REPORT_SUMMARY", base.report_summary),
            gcs_secret=os.environ.get("MLOPS_GCS_SECRET") or None,
            extra_env=tuple(sorted((str(k), str(v)) for k, v in extra_env.items())),
            pod_annotations=tuple(sorted((str(k), str(v)) for k, v in pod_annotations.items())),
            retry_backoff=os.environ.get("MLOPS_RETRY_BACKOFF", base.retry_backoff),
            ttl_after_success_s=int(
                os.environ.get("MLOPS_WORKFLOW_TTL_SUCCESS_S", base.ttl_after_success_s)
            ),
            ttl_after_failure_s=int(
                os.environ.get("MLOPS_WORKFLOW_TTL_FAILURE_S", base.ttl_after_failure_s)
            ),
            node_selector=tuple(sorted((str(k), str(v)) for k, v in node_selector.items())),
            tolerations=tuple({str(k): str(v) for k, v in t.items()} for t in tolerations),
        )
        return cls(
            render=render,
            default_image=os.environ.get("MLOPS_DEFAULT_IMAGE") or None,
            metrics_port=int(os.environ.get("MLOPS_METRICS_PORT", "0")),
            stop_timeout_s=float(os.environ.get("MLOPS_STOP_TIMEOUT_S", "120")),
            resync_s=float(os.environ.get("MLOPS_RESYNC_S", "60")),
            api_timeout_s=float(os.environ.get("MLOPS_API_TIMEOUT_S", "30")),
            api_stale_s=float(os.environ.get("MLOPS_API_STALE_S", "90")),
            api_concurrency=max(1, int(os.environ.get("MLOPS_API_CONCURRENCY", "16"))),
            resource_scanning=_env_bool("MLOPS_RESOURCE_SCANNING", True),
            provision_namespaces=_env_bool("MLOPS_PROVISION_NAMESPACES", True),
            guardrails=Guardrails(
                image_prefixes=_env_list("MLOPS_ALLOWED_IMAGE_PREFIXES"),
                data_prefixes=_env_list("MLOPS_ALLOWED_DATA_PREFIXES"),
                output_prefixes=_env_list("MLOPS_ALLOWED_OUTPUT_PREFIXES"),
                max_gpus=int(os.environ["MLOPS_MAX_GPUS_PER_RUN"])
                if os.environ.get("MLOPS_MAX_GPUS_PER_RUN")
                else None,
            ),
            trainer_sa_annotations=tuple(
                sorted((str(k), str(v)) for k, v in sa_annotations.items())
            ),
        )
