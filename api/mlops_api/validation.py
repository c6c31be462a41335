"""Checks that need more than one field, or where the manifest is going: run after the schema.

The schema (:mod:`mlops_api.spec` and each trainer's config model) checks every field and every
rule within one trainer config (PixelCNN's odd ``kernel_size``, the VQ-VAE's ``image_size`` a
multiple of ``2 ** downsample``, ...). :func:`semantic_errors` adds what needs the whole object:

* ``sample://<name>`` must be a bundled data set (:func:`mlops_trainers.samples.sample_names`,
  read without importing the samples' code: the operator has no NumPy);
* a trainer config's references to other runs (``REFERENCES``: PixelCNN's ``vqvae``) must be a run
  name or a URL a checkpoint can live at, never a ``sample://`` data set, never this object;
* a warmup longer than the run, a GPU type without a GPU;
* ``cluster=True`` (the operator, ``mlops validate``, ``mlops render``): every URL a pod reads or
  writes must be reachable from the pod: no local path, no ``file://`` (``mlops run`` trains in
  this process and accepts them).

What cannot be known before a run reads storage (a ``resume`` source's kind, the VQ-VAE run a
PixelCNN names, the bands of the data) is checked by the trainer as its first action, before the
data is prepared or a model is built, and fails with exit 2 (never retried).
"""

from __future__ import annotations

import re
from typing import Any

from mlops_trainers.samples import SAMPLE_SCHEME, sample_names

from mlops_api.errors import FieldError
from mlops_api.spec import _DNS_SUBDOMAIN, OUTPUT_SCHEMES, MLOps, check_url

__all__ = ["ANNOTATION_SCRATCH_OUTPUT", "is_local_url", "semantic_errors"]

# A run whose output may be the trainer pod's own scratch space (gone with the pod): a smoke test
# such as the chart's `helm test` asks for it by name; nobody gets it by a typo in spec.output.
ANNOTATION_SCRATCH_OUTPUT = "mlops.dev/scratch-output"

_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://")


def is_local_url(value: str) -> bool:
    """A path or ``file://`` URL: only this machine can read it."""
    match = _SCHEME.match(value)
    return match is None or match.group(1) == "file"


def _cluster_url(path: str, value: str, what: str) -> FieldError | None:
    if is_local_url(value):
        return FieldError(
            path,
            f"{value!r} is a local path; a pod cannot {what} it. Use a bucket URL "
            "(gs://bucket/path/) in a cluster; `mlops run` accepts local paths",
        )
    return None


def _sample(path: str, value: str) -> FieldError | None:
    if not value.startswith(SAMPLE_SCHEME):
        return None
    name = value[len(SAMPLE_SCHEME) :].strip("/")
    known = sorted(sample_names())
    if name not in known:
        return FieldError(
            path,
            f"no bundled data set {value!r}; known: "
            + ", ".join(f"{SAMPLE_SCHEME}{n}" for n in known),
        )
    return None


def _reference(path: str, value: str, obj: MLOps, *, cluster: bool) -> FieldError | None:
    """A run name or a run/checkpoint URL in a trainer config."""
    if value.startswith(SAMPLE_SCHEME):
        return FieldError(path, f"{value!r} is a data set, not a run: name a run or its URL")
    if "://" in value or "/" in value:
        try:
            check_url(value, OUTPUT_SCHEMES)
        except ValueError as err:
            return FieldError(path, f"{err} (got {value!r})")
        return _cluster_url(path, value, "read") if cluster else None
    if not _DNS_SUBDOMAIN.match(value):
        return FieldError(path, f"{value!r} is neither a run name (a DNS name) nor a URL")
    if value == obj.metadata.name:
        return FieldError(
            path,
            f"{value!r} is this object's own name: name the other run (a "
            f"{obj.spec.trainer.kind} run cannot read itself)",
        )
    return None


def semantic_errors(obj: MLOps, *, cluster: bool = False) -> list[FieldError]:
    """Every cross-field problem of a schema-valid object (see the module docstring)."""
    spec = obj.spec
    config: Any = spec.trainer.config
    errors: list[FieldError | None] = [_sample("spec.data", spec.data)]
    for name in type(config).REFERENCES:
        errors.append(
            _reference(f"spec.trainer.config.{name}", getattr(config, name), obj, cluster=cluster)
        )
    steps = getattr(config, "steps_per_epoch", None)
    warmup = config.schedule.warmup_steps
    if steps is not None and warmup >= steps * spec.epochs:
        errors.append(
            FieldError(
                "spec.trainer.config.schedule.warmup_steps",
                f"warmup of {warmup} steps never ends: the run has {spec.epochs} epochs x "
                f"{steps} steps = {steps * spec.epochs} steps",
            )
        )
    gpu = spec.resources.gpu
    if gpu.type is not None and gpu.count == 0:
        errors.append(
            FieldError(
                "spec.resources.gpu.type",
                f"{gpu.type!r} is set but gpu.count is 0: set count >= 1, or drop the type to "
                "train on CPU",
            )
        )
    if cluster:
        errors.append(
            None
            if spec.data.startswith(SAMPLE_SCHEME)
            else _cluster_url("spec.data", spec.data, "read")
        )
        annotations = (obj.metadata.model_extra or {}).get("annotations") or {}
        if annotations.get(ANNOTATION_SCRATCH_OUTPUT) != "true":
            errors.append(_cluster_url("spec.output", spec.output, "write"))
        if spec.resume is not None and spec.resume.from_ is not None:
            errors.append(_cluster_url("spec.resume.from", spec.resume.from_, "read"))
    return [e for e in errors if e is not None]
