"""Names of runs and of the objects made for them. Pure and deterministic: repeating a step is harmless.

A run id is ``<stem>-g<generation>-<digest>`` (:mod:`mlops_trainers.contract`). The stem is the
object's name made a DNS label and shortened, for people; the digest is what makes a run unique:
it hashes the object's identity (namespace, full name, uid), its generation, the spec with every
default filled in and the rerun token. So two objects never share a run id or an output folder
(names that differ only by '.' and '-', or only after the first 50 characters, in another
namespace, or deleted and applied again), while the same generation of the same object always
gets the same id — which is how an operator that crashed after creating a Workflow finds it again.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mlops_trainers.contract import format_run_id

from mlops_api.spec import GROUP, MLOpsSpec

# Labels and annotations linking every child back to its MLOps object.
LABEL_NAME = f"{GROUP}/name"  # for people and `-l` filters; shortened to a valid label value
LABEL_OWNER_UID = f"{GROUP}/owner-uid"  # exact: how the operator finds an object's children
LABEL_RUN_ID = f"{GROUP}/run-id"
LABEL_GENERATION = f"{GROUP}/generation"
LABEL_TRAINER = f"{GROUP}/trainer"
LABEL_SEGMENT = f"{GROUP}/segment"
ANNOTATION_NAME = f"{GROUP}/name"  # the full object name (a label value holds at most 63)
ANNOTATION_SPEC_HASH = f"{GROUP}/spec-hash"
# On a queued run's Workflow: the queue it holds units of (<namespace>/<key>) and how many GPUs.
ANNOTATION_QUEUE = f"{GROUP}/queue"
ANNOTATION_GPUS = f"{GROUP}/gpus"
# Set by a user to start the current spec again as a new run: any new value is a new run.
ANNOTATION_RERUN = f"{GROUP}/rerun"
# On a Workflow the operator stopped: how many of its trainer attempts had ended by then. One
# that ends later with a bare SIGTERM exit is the stop's own, never a preemption (views.py).
ANNOTATION_ENDED_BEFORE_STOP = f"{GROUP}/attempts-ended-before-stop"
# On a Workflow whose ended pod Argo had not recorded: when the operator touched it so that Argo
# reconciles it again (service.nudge_argo).
ANNOTATION_NUDGED_AT = f"{GROUP}/nudged-at"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "mlops-operator"

CONFIG_FILE = "run.yaml"
LABEL_VALUE_MAX = 63


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: the same data always gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


# Fields that say how the operator handles a run, not what is trained: changing them is a new
# generation of the same run (suspending and resuming it, keeping more old runs...).
NOT_THE_RUN = frozenset({"suspend", "keep_runs", "on_change", "stop_on_delete"})


# Trainer options added after objects and trainer images already existed, with their defaults:
# hashed and written into run files only when set to something else. Hashed at its default, a
# new field would change the hash of every existing object after the upgrade, and its next
# generation (a suspend, a keepRuns change) would start a fresh run in a new folder instead of
# going on with the current one; written at its default, it would make an older trainer image
# (spec.image pinned) refuse the run file (its configs forbid unknown keys).
ADDED_TRAINER_DEFAULTS: dict[str, Any] = {"precision": "auto", "jit_compile": "auto"}


def drop_added_defaults(trainer_config: dict[str, Any]) -> dict[str, Any]:
    """``trainer_config`` (a dumped trainer config) without the fields of
    :data:`ADDED_TRAINER_DEFAULTS` that hold their default; changed in place and returned."""
    for field, default in ADDED_TRAINER_DEFAULTS.items():
        if field in trainer_config and trainer_config[field] == default:
            del trainer_config[field]
    return trainer_config


def spec_hash(spec: MLOpsSpec) -> str:
    """First 8 hex digits of the SHA-256 of the spec with every default filled in, but for the
    fields in :data:`NOT_THE_RUN` and the later ones of :data:`ADDED_TRAINER_DEFAULTS` at their
    defaults.

    Two specs that mean the same run (one writes a default out, or suspends it) hash the same;
    the operator keeps the current run when a new generation has the same hash.
    """
    data = spec.model_dump(mode="json", by_alias=True, exclude_none=False, exclude=set(NOT_THE_RUN))
    drop_added_defaults((data.get("trainer") or {}).get("config") or {})
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:8]


def run_digest(
    *,
    name: str,
    namespace: str | None,
    uid: str | None,
    generation: int,
    spec: MLOpsSpec,
    rerun: str = "",
) -> str:
    identity = {
        "namespace": namespace,
        "name": name,
        "uid": uid,
        "generation": generation,
        "spec": spec_hash(spec),
        "rerun": rerun,
    }
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:8]


def run_id(
    name: str,
    generation: int,
    spec: MLOpsSpec,
    *,
    namespace: str | None = None,
    uid: str | None = None,
    rerun: str = "",
) -> str:
    """The run id of one generation (and rerun) of one object; see the module docstring."""
    digest = run_digest(
        name=name, namespace=namespace, uid=uid, generation=generation, spec=spec, rerun=rerun
    )
    return format_run_id(name, generation, digest)


def config_map_name(run: str) -> str:
    return f"{run}-config"


def workflow_name(run: str, segment: int = 0) -> str:
    """The Workflow of one segment of a run: the first is the run id itself; each resume after
    ``spec.suspend`` is a new Workflow of the same run (same output folder, same checkpoints)."""
    return run if segment == 0 else f"{run}-r{segment}"


def queue_key(queue: str, run_namespace: str | None, queue_namespace: str | None) -> str:
    """Queues are cluster-wide when their ConfigMap is in one namespace (the chart's), else one
    per run namespace: ``<namespace of the ConfigMap>/<key>``."""
    return f"{queue_namespace or run_namespace or 'default'}/{queue}"


def label_value(value: str) -> str:
    """``value`` shortened to a valid label value (63 characters, alphanumeric at both ends)."""
    return value[:LABEL_VALUE_MAX].rstrip("-._")


def run_labels(
    name: str, run: str, generation: int, trainer: str, owner_uid: str | None = None
) -> dict[str, str]:
    labels = {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_NAME: label_value(name),
        LABEL_RUN_ID: run,
        LABEL_GENERATION: str(generation),
        LABEL_TRAINER: trainer,
    }
    if owner_uid:
        labels[LABEL_OWNER_UID] = owner_uid
    return labels
