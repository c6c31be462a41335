"""Run → per-run ConfigMap + Argo Workflow (built with hera). Pure: builds, never submits.

Everything a trainer reads is in the run file inside the ConfigMap; the container's command is a
fixed argv with no shell, so no string from a manifest is ever interpreted by a shell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from hera.workflows import Container, Workflow
from hera.workflows import models as m
from mlops_api.errors import FieldError, ManifestError
from mlops_api.naming import (
    ANNOTATION_GPUS,
    ANNOTATION_NAME,
    ANNOTATION_QUEUE,
    ANNOTATION_SPEC_HASH,
    CONFIG_FILE,
    config_map_name,
    drop_added_defaults,
    queue_key,
    run_labels,
    spec_hash,
    workflow_name,
)
from mlops_api.run import RunPlan, plan_run
from mlops_api.spec import MLOps
from mlops_trainers.contract import (
    EXIT_APP_ERROR,
    EXIT_PREEMPTED,
    PLACEMENT_ENV,
    SUMMARY_ENV,
    SUMMARY_PARAMETER,
    SUMMARY_PATH,
    TB_DIR,
)

CONFIG_DIR = "/etc/mlops"
GCS_KEY_DIR = "/var/run/secrets/gcs"
CONFIG_MAP_LIMIT = 1 << 20  # the API server refuses a ConfigMap over 1 MiB
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
ANNOTATION_OUTPUT = "mlops.dev/output"
ANNOTATION_OUTPUT_BROWSER = "mlops.dev/output-browser"
ANNOTATION_OUTPUT_PATH = "mlops.dev/output-path"
ANNOTATION_TENSORBOARD_LOGDIR = "mlops.dev/tensorboard-logdir"
ANNOTATION_ARGO_TITLE = "workflows.argoproj.io/title"
ANNOTATION_ARGO_DESCRIPTION = "workflows.argoproj.io/description"

# Messages Argo (and the kubelet) put on a node whose pod was lost to a spot preemption.
PREEMPTION_MESSAGES = (
    "imminent node shutdown",
    "pod deleted",
    "node is shutting down",
    "NodeShutdown",
)


@dataclass(frozen=True)
class RenderSettings:
    """Cluster-wide settings (the chart's values), as opposed to per-run ones (the spec)."""

    service_account: str = "mlops-trainer"
    queue_config_map: str = "mlops-queues"
    # Where the queue ConfigMap lives: the operator's namespace, so that one GPU queue counts
    # the runs of every namespace (None: each run's own namespace).
    queue_namespace: str | None = None
    # semaphore: spec.queue names a key of the queue ConfigMap (Argo's semaphore, and the
    # operator's GPU accounting); kueue: it names a Kueue LocalQueue in the run's namespace.
    queue_mode: Literal["semaphore", "kueue"] = "semaphore"
    image_pull_policy: str = "IfNotPresent"
    spot_node_selector: dict[str, str] = field(
        default_factory=lambda: {"cloud.google.com/gke-spot": "true"}
    )
    spot_tolerations: tuple[dict[str, str], ...] = (
        {
            "key": "cloud.google.com/gke-spot",
            "operator": "Equal",
            "value": "true",
            "effect": "NoSchedule",
        },
    )
    # Added to runs not on spot (spot: false, or moved off it by fallbackAfterPreemptions), e.g.
    # {"cloud.google.com/gke-provisioning": "standard"}: with Kueue, a selector on the same label
    # key as the spot one is what lets Kueue tell the on-demand flavor from the spot one.
    on_demand_node_selector: dict[str, str] = field(default_factory=dict)
    gpu_type_label: str = "cloud.google.com/gke-accelerator"
    gpu_resource: str = "nvidia.com/gpu"
    retry_backoff: str = "30s"
    ttl_after_success_s: int = 7 * 24 * 3600
    ttl_after_failure_s: int = 14 * 24 * 3600
    # Argo's output parameter carries the trainer's final summary back; off where no executor
    # can report it (kwok's fake pods).
    report_summary: bool = True
    # A Secret with a GCP key as key.json, for clusters without Workload Identity; never a ConfigMap.
    gcs_secret: str | None = None
    extra_env: tuple[tuple[str, str], ...] = ()
    # Annotations on every trainer pod (e.g. cluster-autoscaler's safe-to-evict, or kwok's stage
    # delays in the e2e tests); never anything from a manifest.
    pod_annotations: tuple[tuple[str, str], ...] = ()
    # Placement of every trainer pod (a platform's dedicated node pool, or the e2e tests' real
    # node), on top of what the spec's spot/GPU settings add; never anything from a manifest.
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[dict[str, str], ...] = ()


@dataclass(frozen=True)
class RenderedRun:
    """What a cluster gets for one run."""

    plan: RunPlan
    config_map: dict[str, Any]
    workflow: dict[str, Any]


def browser_url(url: str) -> str:
    """Where a person opens ``url`` in a browser: Cloud Storage's console for ``gs://``, the S3
    console for ``s3://``, else the URL itself."""
    scheme, _, rest = url.partition("://")
    if scheme in ("gs", "gcs") and rest:
        return f"https://console.cloud.google.com/storage/browser/{rest}"
    if scheme == "s3" and rest:
        return f"https://s3.console.aws.amazon.com/s3/buckets/{rest.replace('/', '?prefix=', 1)}/"
    return url


def retry_expression() -> str:
    """Argo expression: retry preemptions and retryable app errors, nothing else.

    Argo has one retry limit; the two budgets are kept apart by the operator, which counts each
    kind of failed attempt and stops the Workflow when one is spent (within the retry backoff),
    and by the trainer, which exits 2 (never retried) once its own app-error count is spent.
    """
    messages = "|".join(PREEMPTION_MESSAGES)
    return (
        f"lastRetry.message matches '{messages}'"
        f" || lastRetry.exitCode == '{EXIT_PREEMPTED}'"
        f" || lastRetry.exitCode == '{EXIT_APP_ERROR}'"
    )


def render_config_map(
    plan: RunPlan, labels: dict[str, str], annotations: dict[str, str]
) -> dict[str, Any]:
    data = plan.config.model_dump(mode="json")
    drop_added_defaults(data["trainer"]["config"])  # an older trainer image reads it too
    run_file = yaml.safe_dump(data, sort_keys=True)
    cm: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": config_map_name(plan.run_id),
            "labels": labels,
            "annotations": annotations,
        },
        "data": {CONFIG_FILE: run_file},
        # A run's config never changes: a new spec is a new run with a new ConfigMap.
        "immutable": True,
    }
    if plan.namespace:
        cm["metadata"]["namespace"] = plan.namespace
    if len(run_file.encode()) > CONFIG_MAP_LIMIT - 4096:
        raise ManifestError(
            [
                FieldError(
                    "spec.trainer.config",
                    f"the run's config is {len(run_file.encode())} bytes; a ConfigMap holds at most 1 MiB",
                )
            ]
        )
    return cm


def _resources(obj: MLOps, settings: RenderSettings) -> m.ResourceRequirements:
    res = obj.spec.resources
    requests: dict[str, str] = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, str] = {"memory": res.memory}
    if res.gpu.count > 0:
        limits[settings.gpu_resource] = str(res.gpu.count)
    return m.ResourceRequirements(
        requests={k: m.Quantity(v) for k, v in requests.items()},
        limits={k: m.Quantity(v) for k, v in limits.items()},
    )


def _placement(
    obj: MLOps, settings: RenderSettings, *, on_demand: bool = False
) -> tuple[dict[str, str], list[m.Toleration]]:
    selector: dict[str, str] = dict(settings.node_selector)
    tolerations: list[m.Toleration] = [m.Toleration(**t) for t in settings.tolerations]
    if obj.spec.spot and not on_demand:
        selector.update(settings.spot_node_selector)
        tolerations.extend(m.Toleration(**t) for t in settings.spot_tolerations)
    else:
        selector.update(settings.on_demand_node_selector)
    gpu = obj.spec.resources.gpu
    if gpu.count > 0:
        if gpu.type:
            selector[settings.gpu_type_label] = gpu.type
        # GKE taints GPU nodes so that only pods asking for GPUs land there.
        tolerations.append(
            m.Toleration(key=settings.gpu_resource, operator="Exists", effect="NoSchedule")
        )
    return selector, tolerations


def _avoid_spot(settings: RenderSettings) -> m.Affinity:
    """A run moved off spot (spec.fallbackAfterPreemptions) must not land on a spot node again:
    dropping the spot selector alone lets the scheduler pick one (GKE does not taint spot nodes
    by default), and the next preemption would come from the same capacity."""
    terms = [
        m.NodeSelectorRequirement(key=key, operator="NotIn", values=[value])
        for key, value in sorted(settings.spot_node_selector.items())
    ]
    return m.Affinity(
        node_affinity=m.NodeAffinity(
            required_during_scheduling_ignored_during_execution=m.NodeSelector(
                node_selector_terms=[m.NodeSelectorTerm(match_expressions=terms)]
            )
        )
    )


def render_workflow(
    obj: MLOps,
    plan: RunPlan,
    labels: dict[str, str],
    annotations: dict[str, str],
    settings: RenderSettings,
    *,
    segment: int = 0,
    on_demand: bool = False,
) -> dict[str, Any]:
    spec = obj.spec
    selector, tolerations = _placement(obj, settings, on_demand=on_demand)
    env = {
        SUMMARY_ENV: SUMMARY_PATH,
        "HOME": "/tmp",  # the root filesystem is read-only; Keras and TF write caches under HOME
        "KERAS_BACKEND": "tensorflow",
        "PYTHONUNBUFFERED": "1",
        # Recorded in run.json: where this segment of the run trained.
        PLACEMENT_ENV: "spot" if spec.spot and not on_demand else "on-demand",
        "TF_CPP_MIN_LOG_LEVEL": "1",
        **dict(settings.extra_env),
    }
    mounts = [
        m.VolumeMount(name="run-config", mount_path=CONFIG_DIR, read_only=True),
        m.VolumeMount(name="tmp", mount_path="/tmp"),
        m.VolumeMount(name="dshm", mount_path="/dev/shm"),
    ]
    volumes = [
        m.Volume(
            name="run-config", config_map=m.ConfigMapVolumeSource(name=config_map_name(plan.run_id))
        ),
        m.Volume(name="tmp", empty_dir=m.EmptyDirVolumeSource()),
        m.Volume(name="dshm", empty_dir=m.EmptyDirVolumeSource(medium="Memory")),
    ]
    if settings.gcs_secret:
        env["GOOGLE_APPLICATION_CREDENTIALS"] = f"{GCS_KEY_DIR}/key.json"
        mounts.append(m.VolumeMount(name="gcs-key", mount_path=GCS_KEY_DIR, read_only=True))
        volumes.append(
            m.Volume(name="gcs-key", secret=m.SecretVolumeSource(secret_name=settings.gcs_secret))
        )
    outputs = None
    if settings.report_summary:
        outputs = m.Outputs(
            parameters=[
                m.Parameter(
                    name=SUMMARY_PARAMETER, value_from=m.ValueFrom(path=SUMMARY_PATH, default="{}")
                )
            ]
        )
    train = Container(
        name="train",
        image=spec.image,
        image_pull_policy=settings.image_pull_policy,
        command=["python", "-m", "mlops_trainers", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        env=[m.EnvVar(name=k, value=v) for k, v in sorted(env.items())],
        resources=_resources(obj, settings),
        volume_mounts=mounts,
        security_context=m.SecurityContext(
            allow_privilege_escalation=False,
            read_only_root_filesystem=True,
            run_as_non_root=True,
            capabilities=m.Capabilities(drop=["ALL"]),
        ),
        node_selector=selector or None,
        tolerations=tolerations or None,
        affinity=_avoid_spot(settings) if spec.spot and on_demand else None,
        retry_strategy=m.RetryStrategy(
            # Both budgets together: a backstop for when no operator watches (see above).
            limit=m.IntOrString(str(spec.retries.preemption + spec.retries.error)),
            retry_policy="Always",
            expression=retry_expression(),
            backoff=m.Backoff(duration=settings.retry_backoff),
        ),
        outputs=outputs,
    )
    synchronization = None
    pod_labels = dict(labels)
    if spec.queue and settings.queue_mode == "kueue":
        # Kueue admits the trainer pod against its ClusterQueue's quota (its pod integration
        # gates the pod until then); each attempt is a pod, so each is admitted on its own.
        pod_labels[KUEUE_QUEUE_LABEL] = spec.queue
    elif spec.queue:
        # The operator admits queued runs by GPUs (mlops_operator.queueing); these say which
        # queue this run holds units of, and how many, for its accounting.
        annotations = {
            **annotations,
            ANNOTATION_QUEUE: queue_key(spec.queue, plan.namespace, settings.queue_namespace),
            ANNOTATION_GPUS: str(spec.resources.gpu.count),
        }
        # One GPU → runs wait their turn; Argo grants a semaphore in creation order (FIFO).
        synchronization = m.Synchronization(
            semaphores=[
                m.SemaphoreRef(
                    config_map_key_ref=m.ConfigMapKeySelector(
                        name=settings.queue_config_map, key=spec.queue
                    ),
                    namespace=settings.queue_namespace,
                )
            ]
        )
    wf = Workflow(
        api_version="argoproj.io/v1alpha1",
        kind="Workflow",
        name=workflow_name(plan.run_id, segment),
        namespace=plan.namespace,
        labels=labels,
        annotations=annotations,
        entrypoint="train",
        service_account_name=settings.service_account,
        pod_metadata=m.Metadata(
            labels=pod_labels, annotations=dict(settings.pod_annotations) or None
        ),
        security_context=m.PodSecurityContext(
            run_as_non_root=True,
            run_as_user=1000,
            run_as_group=1000,
            fs_group=1000,
            seccomp_profile=m.SeccompProfile(type="RuntimeDefault"),
        ),
        volumes=volumes,
        synchronization=synchronization,
        pod_gc=m.PodGC(strategy="OnPodSuccess"),
        ttl_strategy=m.TTLStrategy(
            seconds_after_success=settings.ttl_after_success_s,
            seconds_after_failure=settings.ttl_after_failure_s,
        ),
        templates=[train],
    )
    out: dict[str, Any] = wf.to_dict()
    return out


def render(
    obj: MLOps,
    settings: RenderSettings | None = None,
    *,
    rerun: str = "",
    run_id: str | None = None,
    segment: int = 0,
    on_demand: bool = False,
) -> RenderedRun:
    """The ConfigMap and Workflow for the object's current generation (and rerun token);
    ``run_id`` keeps a run id decided earlier; ``segment`` > 0 is a later Workflow of that run
    (a resume after ``spec.suspend``, a fallback ``on_demand``): the same ConfigMap and folder."""
    settings = settings or RenderSettings()
    plan = plan_run(obj, rerun=rerun, run_id=run_id)
    labels = run_labels(
        plan.name, plan.run_id, plan.generation, obj.spec.trainer.kind, obj.metadata.uid
    )
    annotations = {ANNOTATION_SPEC_HASH: spec_hash(obj.spec), ANNOTATION_NAME: plan.name}
    config_map = render_config_map(plan, labels, annotations)
    # What Argo's UI shows in its workflow list (Markdown allowed): which trainer, which object,
    # and where the run's files are.
    ui = {
        ANNOTATION_ARGO_TITLE: f"**{obj.spec.trainer.kind}** · {plan.name}",
        ANNOTATION_ARGO_DESCRIPTION: f"run `{plan.run_id}` → {plan.config.output}",
        # The run's folder, in a browser, and its TensorBoard log dir.
        ANNOTATION_OUTPUT: plan.config.output,
        ANNOTATION_OUTPUT_BROWSER: browser_url(plan.config.output),
        # For links in Argo's UI (its ConfigMap's `links`): argo-server refuses a link whose URL
        # does not start with http(s)://, so a link cannot be a whole ${...} annotation; this
        # is the folder without its scheme, for e.g. https://console.cloud.google.com/storage/
        # browser/${workflow.metadata.annotations.mlops.dev/output-path}.
        ANNOTATION_OUTPUT_PATH: plan.config.output.partition("://")[2] or plan.config.output,
        ANNOTATION_TENSORBOARD_LOGDIR: f"{plan.config.output}/{TB_DIR}",
    }
    workflow = render_workflow(
        obj, plan, labels, {**annotations, **ui}, settings, segment=segment, on_demand=on_demand
    )
    return RenderedRun(plan=plan, config_map=config_map, workflow=workflow)


def to_yaml(rendered: RenderedRun) -> str:
    """Both objects as one multi-document YAML stream (ConfigMap first: the Workflow mounts it)."""
    return yaml.safe_dump_all([rendered.config_map, rendered.workflow], sort_keys=False)
