"""From a validated MLOps object to the run file a trainer reads (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlops_trainers.config import ResumeConfig, RunConfig

from mlops_api.naming import run_id as make_run_id
from mlops_api.spec import MLOps


@dataclass(frozen=True)
class RunPlan:
    """One run of one generation of an MLOps object."""

    name: str
    namespace: str | None
    generation: int
    run_id: str
    config: RunConfig


def join_url(prefix: str, *parts: str) -> str:
    """Join URL/path parts with exactly one '/' (fsspec URLs are not OS paths)."""
    out = prefix.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def plan_run(
    obj: MLOps,
    *,
    output: str | None = None,
    rerun: str = "",
    run_id: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RunPlan:
    """Build the run: its id and config. ``output`` replaces the spec's output prefix (local
    runs: where a run is written is not what it trains, so it is not in the run id); anything
    that changes what is trained must already be in ``obj.spec``, which the run id hashes
    (``overrides`` only records what the caller changed there, for run.json). ``rerun`` is the
    object's rerun token (a new token is a new run of the same generation); ``run_id`` keeps a
    run id decided earlier (the operator stores it in status)."""
    spec = obj.spec
    generation = obj.metadata.generation or 1
    run = run_id or make_run_id(
        obj.metadata.name,
        generation,
        spec,
        namespace=obj.metadata.namespace,
        uid=obj.metadata.uid,
        rerun=rerun,
    )
    prefix = output if output is not None else spec.output
    resume = ResumeConfig(
        from_url=spec.resume.from_ if spec.resume else None,
        parent_run=spec.resume.run if spec.resume else None,
    )
    config = RunConfig(
        run_id=run,
        name=obj.metadata.name,
        namespace=obj.metadata.namespace,
        generation=generation,
        trainer=spec.trainer,
        data=spec.data,
        output_prefix=prefix,
        output=join_url(prefix, run),
        resume=resume,
        epochs=spec.epochs,
        checkpoint_every=spec.checkpoint_every,
        seed=spec.seed,
        error_retries=spec.retries.error,
        image=spec.image,
        overrides=dict(overrides or {}),
    )
    return RunPlan(obj.metadata.name, obj.metadata.namespace, generation, run, config)
