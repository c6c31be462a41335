"""Deterministic names from a run: (name, generation, spec hash). Repeating any step is harmless."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mlops_api.spec import GROUP, MLOpsSpec

# Labels and annotations linking every child back to its MLOps object.
LABEL_NAME = f"{GROUP}/name"
LABEL_RUN_ID = f"{GROUP}/run-id"
LABEL_GENERATION = f"{GROUP}/generation"
LABEL_TRAINER = f"{GROUP}/trainer"
ANNOTATION_SPEC_HASH = f"{GROUP}/spec-hash"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "mlops-operator"

RUN_ID_MAX = 63  # a label value and a DNS label: the run id is used as both.
CONFIG_FILE = "run.yaml"


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: the same data always gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def spec_hash(spec: MLOpsSpec) -> str:
    """First 8 hex digits of the SHA-256 of the spec with every default filled in.

    Defaults are included so that writing a default explicitly does not start a new run.
    """
    data = spec.model_dump(mode="json", by_alias=True, exclude_none=False)
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:8]


def run_id(name: str, generation: int, spec: MLOpsSpec) -> str:
    """``<name>-g<generation>-<hash8>``, the name shortened so the whole fits a DNS label."""
    suffix = f"-g{generation}-{spec_hash(spec)}"
    # Object names may contain dots; a DNS label may not.
    stem = name.replace(".", "-")[: RUN_ID_MAX - len(suffix)].rstrip("-")
    return f"{stem}{suffix}"


def config_map_name(run: str) -> str:
    return f"{run}-config"


def workflow_name(run: str) -> str:
    return run


def run_labels(name: str, run: str, generation: int, trainer: str) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_NAME: name[:63].rstrip("-.") if len(name) > 63 else name,
        LABEL_RUN_ID: run,
        LABEL_GENERATION: str(generation),
        LABEL_TRAINER: trainer,
    }
