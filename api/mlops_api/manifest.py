"""Reading and validating manifests: every problem comes back with its field path, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mlops_api.errors import FieldError, ManifestError, did_you_mean, from_validation_error
from mlops_api.spec import API_VERSION, KIND, MLOps
from mlops_api.validation import semantic_errors

MAX_MANIFEST_BYTES = 1 << 20  # a ConfigMap holds at most 1 MiB; a bigger spec cannot become a run.


def parse_manifest(data: Any, *, cluster: bool = False) -> MLOps:
    """Validate one manifest (a mapping) into an :class:`MLOps`; raise :class:`ManifestError`.

    ``cluster``: the manifest is for a cluster (the operator, ``mlops validate``, ``mlops
    render``), so the URLs a pod reads and writes must not be local paths; ``mlops run``, which
    trains in this process, passes False. Cross-field checks: :mod:`mlops_api.validation`.
    """
    if not isinstance(data, dict):
        raise ManifestError(
            [FieldError("", f"a manifest must be a mapping, got {type(data).__name__}")]
        )
    errors: list[FieldError] = []
    if data.get("apiVersion") != API_VERSION:
        errors.append(
            FieldError("apiVersion", f"must be {API_VERSION!r} (got {data.get('apiVersion')!r})")
        )
    if data.get("kind") != KIND:
        errors.append(FieldError("kind", f"must be {KIND!r} (got {data.get('kind')!r})"))
    if errors:
        raise ManifestError(errors)
    # The API server adds these; they are not the user's to validate.
    top = ("apiVersion", "kind", "metadata", "spec", "status")
    body = {k: v for k, v in data.items() if k in top}
    unknown = sorted(set(data) - set(body), key=str)
    if unknown:
        raise ManifestError(
            [
                FieldError(
                    str(k), f"unknown field{did_you_mean(k, top)}; allowed: {', '.join(top)}"
                )
                for k in unknown
            ]
        )
    try:
        obj = MLOps.model_validate(body)
    except ValidationError as exc:
        raise from_validation_error(exc, MLOps) from None
    problems = semantic_errors(obj, cluster=cluster)
    if problems:
        raise ManifestError(problems)
    return obj


def load_manifests(text: str) -> list[Any]:
    """Every YAML document in ``text`` (empty documents skipped)."""
    if len(text.encode()) > MAX_MANIFEST_BYTES:
        raise ManifestError([FieldError("", f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")])
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError([FieldError("", f"not valid YAML{where}: {problem}")]) from None


def read_manifest(path: str | Path, *, cluster: bool = False) -> MLOps:
    """Read a file holding exactly one MLOps manifest (``cluster``: see :func:`parse_manifest`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        # The caller prints the file name before each error: the message does not repeat it.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ManifestError([FieldError("", f"cannot read the file: {reason}")]) from None
    docs = load_manifests(text)
    if len(docs) != 1:
        raise ManifestError(
            [FieldError("", f"the file must hold exactly one manifest, found {len(docs)}")]
        )
    return parse_manifest(docs[0], cluster=cluster)
