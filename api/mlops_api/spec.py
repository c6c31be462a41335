"""The ``MLOps`` custom resource as typed models: the one source of truth.

The CRD schema, the chart's CRD and the README's field table are generated from these classes
(:mod:`mlops_api.crd`, :mod:`mlops_api.docs`); a test fails when a committed copy drifts.
Field names are camelCase in the manifest (Kubernetes convention) and snake_case in Python.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from mlops_trainers.config import TrainerSpec
from mlops_trainers.quantity import parse_quantity
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

GROUP = "mlops.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "MLOps"
PLURAL = "mlops"
SINGULAR = "mlops"
SHORT_NAMES = ("ml",)

DEFAULT_IMAGE = "ghcr.io/mlops-operator/trainer:0.1.0"

# Schemes a pod can reach. `sample://` names a dataset bundled in the trainer image (real images
# shipped with scikit-image or Debian), so every example runs with no bucket at all.
REMOTE_SCHEMES = ("gs", "gcs", "s3", "az", "abfs", "http", "https")
DATA_SCHEMES = (*REMOTE_SCHEMES, "file", "sample")
OUTPUT_SCHEMES = (*REMOTE_SCHEMES, "file")

# Also the CRD's maxLength, so the API server refuses a huge URL before the operator sees it.
URL_MAX = 2048
_URL_RE = re.compile(r"^(?:(?P<scheme>[a-z][a-z0-9+.-]*)://)?(?P<rest>.*)$")
# Characters a shell or a YAML/JSON re-parse could misread; no URL we accept needs them.
_FORBIDDEN_URL_CHARS = re.compile(r"[\s\x00-\x1f\x7f`$;|&<>\"'\\{}]")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# An OCI image reference: [registry[:port]/]path[:tag][@digest], no spaces or shell characters.
_IMAGE = re.compile(
    r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
)


def check_url(value: str, schemes: tuple[str, ...], *, allow_local: bool = True) -> str:
    """Validate an fsspec URL or local path; the message says what is allowed."""
    if not value:
        raise ValueError("must not be empty")
    if len(value) > URL_MAX:
        raise ValueError(f"must be at most {URL_MAX} characters")
    if _FORBIDDEN_URL_CHARS.search(value):
        raise ValueError("must not contain spaces, quotes, control or shell characters")
    match = _URL_RE.match(value)
    assert match is not None  # the pattern matches every string
    scheme, rest = match.group("scheme"), match.group("rest")
    if scheme is None:
        if "://" in value or not allow_local or re.match(r"^[a-z][a-z0-9+.-]*:", value):
            raise ValueError(f"must be a URL with one of the schemes {', '.join(schemes)}")
        path = value
    elif scheme not in schemes:
        raise ValueError(f"scheme {scheme!r} is not supported; use one of {', '.join(schemes)}")
    else:
        if not rest or (rest.startswith("/") and scheme not in ("file",)):
            raise ValueError(f"{scheme}:// URL needs a bucket or host, e.g. {scheme}://bucket/path")
        path = rest
    # A '..' segment could climb out of the bucket prefix or the output folder.
    if ".." in path.split("/"):
        raise ValueError("must not contain '..' path segments")
    return value


class _Model(BaseModel):
    # extra=forbid: a misspelt field is an error that names it, never a silent no-op.
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
    )


# === Spec: the rest ===


class Resume(_Model):
    """Start this run from an earlier model (recorded as provenance in run.json)."""

    from_: str | None = Field(
        None,
        alias="from",
        max_length=URL_MAX,
        description="A checkpoint URL, or a run's output URL (its newest complete checkpoint).",
    )
    run: str | None = Field(
        None,
        max_length=253,
        description="A parent MLOps run by name; its newest run under the same output prefix.",
    )

    @field_validator("from_")
    @classmethod
    def _from_url(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value, OUTPUT_SCHEMES)

    @field_validator("run")
    @classmethod
    def _run_name(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 253 or not _DNS_SUBDOMAIN.match(value)):
            raise ValueError(
                "must be an MLOps object name (lowercase DNS name, at most 253 characters)"
            )
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Resume:
        if self.from_ is not None and self.run is not None:
            raise ValueError(
                "set either 'from' (a checkpoint URL) or 'run' (a parent run name), not both"
            )
        return self


class Gpu(_Model):
    """GPUs for the trainer pod."""

    count: int = Field(1, ge=0, le=16, description="nvidia.com/gpu per pod; 0 trains on CPU.")
    type: str | None = Field(
        None,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Accelerator node label value, e.g. nvidia-tesla-t4, nvidia-l4 (GKE: cloud.google.com/gke-accelerator).",
    )


QUANTITY_MAX = 32


def _quantity(value: Any) -> str:
    """A Kubernetes resource quantity, kept as its text: ``4`` (an integer, as Kubernetes takes
    it), ``"500m"``, ``"16Gi"``. Parsed by the API server's grammar
    (:mod:`mlops_trainers.quantity`), so what passes here is what the pod's creation takes."""
    # The error message shows the value itself (errors.py adds "(got ...)").
    wrong = ValueError("is not a Kubernetes quantity such as 500m, 4, 16Gi")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise wrong
    text = str(value)
    if len(text) > QUANTITY_MAX:
        raise wrong
    try:
        amount: Decimal = parse_quantity(text)
    except ValueError:
        raise wrong from None
    if not amount.is_finite() or amount <= 0:
        raise ValueError("must be a positive quantity such as 500m, 4, 16Gi")
    return text


# The CRD says int-or-string (the API server takes `cpu: 4`); the model keeps the text.
Quantity = Annotated[
    str,
    BeforeValidator(_quantity),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": QUANTITY_MAX}]}),
]


class Resources(_Model):
    """Requests and limits of the trainer pod."""

    cpu: Quantity = Field("2", description="CPU request, a Kubernetes quantity (e.g. 500m, 4).")
    memory: Quantity = Field(
        "8Gi", description="Memory request and limit, a Kubernetes quantity (e.g. 16Gi)."
    )
    gpu: Gpu = Field(default_factory=Gpu)


class Retries(_Model):
    """Retry budgets, kept apart: a preemption never uses up an app-error retry."""

    preemption: int = Field(
        10,
        ge=0,
        le=1000,
        description="Retries after a spot preemption (node shutdown, pod deleted).",
    )
    error: int = Field(1, ge=0, le=100, description="Retries after the trainer itself failed.")


class MLOpsSpec(_Model):
    """What to train, on what, and where the results go."""

    # The run file's own trainer union (kind -> that trainer's config model), built from the
    # trainer folders: a kind is declared once, and its config validated once, here.
    trainer: TrainerSpec = Field(
        ..., description="Which trainer (kind) and its hyperparameters (config)."
    )
    data: str = Field(
        ...,
        max_length=URL_MAX,
        description="Training images: an fsspec URL (gs://bucket/path/, s3://…) or sample://<name> for a bundled dataset.",
    )
    output: str = Field(
        ...,
        max_length=URL_MAX,
        description="URL prefix for artifacts; each run writes to <output>/<runId>/.",
    )
    resume: Resume | None = Field(
        None, description="Start from an earlier checkpoint or parent run."
    )
    image: str = Field(DEFAULT_IMAGE, max_length=512, description="Trainer container image.")
    resources: Resources = Field(default_factory=Resources)
    spot: bool = Field(
        True,
        description="Run on spot (preemptible) nodes: adds their node selector and toleration.",
    )
    retries: Retries = Field(default_factory=Retries)
    fallback_after_preemptions: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="With spot: true, after this many preemptions the run moves to on-demand nodes: a new Workflow of the same run, resuming from its checkpoint.",
    )
    epochs: int = Field(10, ge=1, le=100000, description="Passes over the data.")
    checkpoint_every: int = Field(
        500,
        ge=1,
        le=10_000_000,
        description="Steps between checkpoints (one is also written at each epoch end).",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed for shuffling and initialisation.")
    queue: str | None = Field(
        "gpu",
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Semaphore key that queues runs FIFO on scarce GPUs (the chart's queue ConfigMap sets its size); null runs unqueued.",
    )
    on_change: Literal["queue", "replace", "reject"] = Field(
        "queue",
        description="When the spec changes while a run is active: queue the new run, replace (stop) the active one, or reject the change.",
    )
    keep_runs: int = Field(
        5, ge=1, le=100, description="Finished runs (ConfigMap + Workflow) kept for provenance."
    )
    stop_on_delete: bool = Field(
        True, description="Stop a running Workflow before its MLOps object is deleted."
    )
    suspend: bool = Field(
        False,
        description="Stop the current run (its trainer checkpoints) and start nothing; false again resumes the same run from its checkpoint.",
    )

    @field_validator("fallback_after_preemptions")
    @classmethod
    def _fallback_needs_spot(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is None:
            return value
        if info.data.get("spot") is False:
            raise ValueError("is for spot runs: set spot: true too, or leave it out")
        retries = info.data.get("retries")
        if isinstance(retries, Retries) and value > retries.preemption:
            raise ValueError(
                f"must be at most retries.preemption ({retries.preemption}): the run would "
                "fail before it falls back"
            )
        return value

    @field_validator("data")
    @classmethod
    def _data_url(cls, value: str) -> str:
        return check_url(value, DATA_SCHEMES)

    @field_validator("output")
    @classmethod
    def _output_url(cls, value: str) -> str:
        return check_url(value, OUTPUT_SCHEMES)

    @field_validator("image")
    @classmethod
    def _image_ref(cls, value: str) -> str:
        if not _IMAGE.match(value):
            raise ValueError(
                f"{value!r} is not an image reference such as registry.example/trainer:1.0"
            )
        return value


class ObjectMeta(BaseModel):
    """The part of Kubernetes metadata we read; the rest is kept but not checked."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(..., min_length=1, max_length=253)
    namespace: str | None = Field(None, max_length=63)
    generation: int | None = Field(None, ge=1)
    uid: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _DNS_SUBDOMAIN.match(value):
            raise ValueError(
                "must be a lowercase DNS name: a-z, 0-9, '-' and '.', starting and ending alphanumeric"
            )
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        if value is not None and not _DNS_LABEL.match(value):
            raise ValueError("must be a DNS label: a-z, 0-9 and '-', at most 63 characters")
        return value


# === Status ===

Phase = Literal["Pending", "Queued", "Running", "Suspended", "Succeeded", "Failed", "Stopped"]


class Condition(_Model):
    """A Kubernetes-style condition."""

    type: str = Field(
        ..., description="Ready, Validated, Queued, Running, Succeeded, Failed, SpecInvalid …"
    )
    status: Literal["True", "False", "Unknown"]
    reason: str = Field("", description="CamelCase machine-readable reason.")
    message: str = Field("", description="What a person needs to know.")
    last_transition_time: datetime | None = None
    observed_generation: int | None = None


class MLOpsStatus(_Model):
    """What the operator observed; written only by the operator (one writer, optimistic
    concurrency). Describes the run of ``observedGeneration``: which run it is, where it is."""

    model_config = ConfigDict(
        extra="allow", frozen=True, alias_generator=to_camel, populate_by_name=True
    )

    phase: Phase = "Pending"
    reason: str = Field("", description="Why the phase is what it is (CamelCase).")
    message: str = ""
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = Field(
        None, description="The generation this status describes; its run is decided once."
    )
    run_id: str | None = Field(
        None, description="The run of observedGeneration; never recomputed from newer defaults."
    )
    rerun: str | None = Field(
        None, description="The mlops.dev/rerun annotation value this run was started for."
    )
    spec_hash: str | None = Field(None, description="Hash of the run's spec, defaults filled in.")
    workflow: str | None = None
    config_map: str | None = None
    submitted: bool = Field(
        False, description="The run's (current segment's) Workflow was created."
    )
    segment: int = Field(
        0,
        description="Workflows of the run after its first (a resume, a fallback); the current is <runId>-r<segment>.",
    )
    placement: str | None = Field(
        None, description="Where the run trains now: spot, or on-demand (after a fallback)."
    )
    output: str | None = Field(None, description="This run's output URL.")
    latest_checkpoint: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    progress: str | None = Field(None, description="Steps done/total, as the trainer reports it.")
    eta: str | None = Field(
        None, description="Time left at the run's pace so far (e.g. 12m), when progress is known."
    )
    preemptions: int = Field(0, description="Attempts lost to a spot preemption.")
    app_errors: int = Field(0, description="Attempts that failed in the trainer itself.")
    queue: str | None = Field(
        None, description="The queue the run waits for or holds units of (<namespace>/<key>)."
    )
    queued_at: datetime | None = Field(
        None, description="When the run started to wait for its queue (FIFO order)."
    )
    started_at: datetime | None = None
    finished_at: datetime | None = None


class MLOps(BaseModel):
    """A whole ``MLOps`` object, as in a manifest or from the API server."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    api_version: Literal["mlops.dev/v1alpha1"] = Field("mlops.dev/v1alpha1", alias="apiVersion")
    kind: Literal["MLOps"] = "MLOps"
    metadata: ObjectMeta
    spec: MLOpsSpec
    status: dict[str, Any] | None = None
