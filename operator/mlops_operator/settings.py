"""Operator settings from the environment (the Helm chart sets these); defaults suit GKE."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from mlops_workflows.render import RenderSettings


def _env_json(name: str, default: object) -> object:
    raw = os.environ.get(name)
    return default if raw is None or raw == "" else json.loads(raw)


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
    requeue_delay_s: float = 15.0
    # kopf's discovery of namespaces and CRDs appearing at runtime. It needs cluster-wide list/watch
    # of namespaces and CRDs; with namespaced RBAC kopf retries the 403s for about a minute before
    # it starts watching at all, so the chart turns it off there (MLOPS_RESOURCE_SCANNING=false).
    resource_scanning: bool = True

    @classmethod
    def from_env(cls) -> OperatorSettings:
        base = RenderSettings()
        spot_selector = _env_json("MLOPS_SPOT_NODE_SELECTOR", base.spot_node_selector)
        spot_tolerations = _env_json("MLOPS_SPOT_TOLERATIONS", list(base.spot_tolerations))
        extra_env = _env_json("MLOPS_TRAINER_ENV", {})
        pod_annotations = _env_json("MLOPS_POD_ANNOTATIONS", {})
        node_selector = _env_json("MLOPS_TRAINER_NODE_SELECTOR", {})
        tolerations = _env_json("MLOPS_TRAINER_TOLERATIONS", [])
        assert (
            isinstance(spot_selector, dict)
            and isinstance(spot_tolerations, list)
            and isinstance(extra_env, dict)
            and isinstance(pod_annotations, dict)
            and isinstance(node_selector, dict)
            and isinstance(tolerations, list)
        )
        render = RenderSettings(
            service_account=os.environ.get("MLOPS_TRAINER_SERVICE_ACCOUNT", base.service_account),
            queue_config_map=os.environ.get("MLOPS_QUEUE_CONFIGMAP", base.queue_config_map),
            image_pull_policy=os.environ.get("MLOPS_IMAGE_PULL_POLICY", base.image_pull_policy),
            spot_node_selector={str(k): str(v) for k, v in spot_selector.items()},
            spot_tolerations=tuple(
                {str(k): str(v) for k, v in t.items()} for t in spot_tolerations
            ),
            gpu_type_label=os.environ.get("MLOPS_GPU_TYPE_LABEL", base.gpu_type_label),
            report_summary=_env_bool("MLOPS_REPORT_SUMMARY", base.report_summary),
            gcs_secret=os.environ.get("MLOPS_GCS_SECRET") or None,
            extra_env=tuple(sorted((str(k), str(v)) for k, v in extra_env.items())),
            pod_annotations=tuple(sorted((str(k), str(v)) for k, v in pod_annotations.items())),
            node_selector=tuple(sorted((str(k), str(v)) for k, v in node_selector.items())),
            tolerations=tuple({str(k): str(v) for k, v in t.items()} for t in tolerations),
        )
        return cls(
            render=render,
            default_image=os.environ.get("MLOPS_DEFAULT_IMAGE") or None,
            metrics_port=int(os.environ.get("MLOPS_METRICS_PORT", "0")),
            stop_timeout_s=float(os.environ.get("MLOPS_STOP_TIMEOUT_S", "120")),
            requeue_delay_s=float(os.environ.get("MLOPS_REQUEUE_DELAY_S", "15")),
            resource_scanning=_env_bool("MLOPS_RESOURCE_SCANNING", True),
        )
