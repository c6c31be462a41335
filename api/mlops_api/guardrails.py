"""Guardrails a platform team sets for a cluster (the chart's ``policy`` values).

Anyone who may create an MLOps object runs a trainer image with the trainer's cloud identity:
without limits that is any image, reading and writing any bucket that identity can reach, on as
many GPUs as asked. The operator checks each new spec against these rules before it creates
anything; a violation is the user's to fix, reported like any invalid field (``SpecInvalid``,
naming the field, the value and what is allowed). Pure: data in, errors out.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlops_api.errors import FieldError
from mlops_api.spec import MLOpsSpec

__all__ = ["Guardrails", "check_guardrails", "under_prefix"]


@dataclass(frozen=True)
class Guardrails:
    """Empty means "no limit" for each rule."""

    image_prefixes: tuple[str, ...] = ()
    data_prefixes: tuple[str, ...] = ()
    output_prefixes: tuple[str, ...] = ()
    max_gpus: int | None = None

    @property
    def empty(self) -> bool:
        return not (self.image_prefixes or self.data_prefixes or self.output_prefixes) and (
            self.max_gpus is None
        )


def under_prefix(value: str, prefix: str) -> bool:
    """Whether ``value`` is ``prefix`` or inside it, at a path boundary: ``gs://team-a`` allows
    ``gs://team-a/x`` but not ``gs://team-a-evil/x``. An image prefix ending in ``/`` or ``:``
    (a registry path, a repository) works the same way."""
    if value == prefix.rstrip("/"):
        return True
    boundary = prefix if prefix.endswith(("/", ":")) else prefix + "/"
    return value.startswith(boundary)


def _not_allowed(path: str, value: str, prefixes: tuple[str, ...], what: str) -> FieldError:
    allowed = ", ".join(prefixes)
    return FieldError(
        path,
        f"{value!r} is not allowed in this cluster: {what} must be under one of {allowed} "
        "(the operator's guardrails, set by its administrator)",
    )


def check_guardrails(spec: MLOpsSpec, rules: Guardrails) -> list[FieldError]:
    """Every way ``spec`` breaks ``rules``; empty when it keeps them all."""
    errors: list[FieldError] = []
    if rules.image_prefixes and not any(under_prefix(spec.image, p) for p in rules.image_prefixes):
        errors.append(_not_allowed("spec.image", spec.image, rules.image_prefixes, "images"))
    # sample:// data sets are bundled in the trainer image: no bucket is read.
    if (
        rules.data_prefixes
        and not spec.data.startswith("sample://")
        and not any(under_prefix(spec.data, p) for p in rules.data_prefixes)
    ):
        errors.append(_not_allowed("spec.data", spec.data, rules.data_prefixes, "training data"))
    if rules.output_prefixes and not any(
        under_prefix(spec.output, p) for p in rules.output_prefixes
    ):
        errors.append(_not_allowed("spec.output", spec.output, rules.output_prefixes, "outputs"))
    source = spec.resume.from_ if spec.resume else None
    readable = (*rules.output_prefixes, *rules.data_prefixes)
    if source and readable and not any(under_prefix(source, p) for p in readable):
        errors.append(_not_allowed("spec.resume.from", source, readable, "resume sources"))
    gpus = spec.resources.gpu.count
    if rules.max_gpus is not None and gpus > rules.max_gpus:
        errors.append(
            FieldError(
                "spec.resources.gpu.count",
                f"{gpus} GPUs asked; at most {rules.max_gpus} per run in this cluster "
                "(the operator's guardrails, set by its administrator)",
            )
        )
    return errors
