"""The run file every trainer reads, and the one union of trainer configs keyed by ``kind``.

Pure pydantic, no TensorFlow: the API package, the operator image and the CLI import this module to
validate a manifest's ``trainer`` with the trainer's own config model (one source of truth). The
union is built from :func:`mlops_trainers.registry.trainer_kinds`: each kind's folder declares its
config once, and both the ``MLOps`` spec (``spec.trainer``) and the run file (``trainer``) use
:data:`TrainerSpec`.

The run file (:class:`RunConfig`) is what the per-run ConfigMap holds and what ``mlops run`` writes
locally; the trainer reads nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import Field, create_model

from mlops_trainers.config_base import ConfigModel, TrainerConfig
from mlops_trainers.registry import TrainerEntry, trainer_kinds

__all__ = [
    "TRAINER_CONFIGS",
    "TRAINER_KINDS",
    "ConfigModel",
    "ResumeConfig",
    "RunConfig",
    "TrainerConfig",
    "TrainerSpec",
    "TrainerSpecBase",
    "trainer_spec_model",
]


# === The trainer union ===


class TrainerSpecBase(ConfigModel):
    """Which trainer, and its hyperparameters (validated once, by that trainer's own model)."""

    kind: str
    config: TrainerConfig


def trainer_spec_model(entry: TrainerEntry) -> type[TrainerSpecBase]:
    """``{kind: <kind>, config: <the kind's config>}``; ``config`` may be left out when every
    hyperparameter has a default."""
    config = entry.config
    required = any(field.is_required() for field in config.model_fields.values())
    default: Any = ... if required else Field(default_factory=config)
    model: type[TrainerSpecBase] = create_model(
        f"{config.__name__.removesuffix('Config')}Spec",
        __base__=TrainerSpecBase,
        __module__=__name__,
        __doc__=f"The {entry.kind} trainer and its hyperparameters.",
        kind=(Literal[entry.kind], ...),  # type: ignore[arg-type]
        config=(config, default),
    )
    return model


def _union() -> Any:
    models = tuple(trainer_spec_model(entry) for entry in trainer_kinds().values())
    if len(models) == 1:
        return models[0]
    return Annotated[Union[models], Field(discriminator="kind")]  # noqa: UP007 - a runtime tuple


TRAINER_KINDS: tuple[str, ...] = tuple(trainer_kinds())
TRAINER_CONFIGS: dict[str, type[TrainerConfig]] = {k: e.config for k, e in trainer_kinds().items()}

if TYPE_CHECKING:
    # Type checkers see the common base; at run time it is the discriminated union of the kinds.
    TrainerSpec = TrainerSpecBase
else:
    TrainerSpec = _union()


# === Run file ===


class ResumeConfig(ConfigModel):
    """Where a run starts from: nothing, a checkpoint/run URL, or a parent run by name (provenance)."""

    from_url: str | None = Field(
        None, description="A checkpoint URL or a run output URL (its newest complete checkpoint)."
    )
    parent_run: str | None = Field(
        None, description="A parent run name, looked up under output_prefix."
    )


class RunConfig(ConfigModel):
    """The file a trainer reads: everything it needs, nothing cluster-specific."""

    version: Literal[1] = 1
    run_id: Annotated[str, Field(min_length=1, max_length=63)]
    name: str = Field(..., min_length=1, max_length=253, description="The MLOps object's name.")
    namespace: str | None = None
    generation: int = Field(1, ge=1)
    trainer: TrainerSpec
    data: str = Field(..., description="fsspec URL (or local path) of the training images.")
    output_prefix: str = Field(
        ..., description="fsspec URL under which every run of this name writes."
    )
    output: str = Field(..., description="This run's own output URL: <output_prefix>/<run_id>.")
    resume: ResumeConfig = Field(default_factory=ResumeConfig)
    epochs: int = Field(..., ge=1, le=100000)
    checkpoint_every: int = Field(
        ..., ge=1, description="Steps between checkpoints (one is also written at each epoch end)."
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    error_retries: int = Field(
        0,
        ge=0,
        le=100,
        description="App-error attempts the trainer may retry (exit 1); past them it exits 2.",
    )
    image: str | None = Field(
        None, description="The container image running the trainer, for provenance."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="What `mlops run` changed in the manifest's spec (--set, --data, --fresh), "
        "for provenance; already applied to the fields above.",
    )
