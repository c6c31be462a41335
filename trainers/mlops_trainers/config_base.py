"""The base classes of every config model: frozen values that reject unknown keys.

Pure pydantic: a trainer's ``config.py`` imports only this module (and other pure ones), so the
operator image, which has no TensorFlow, validates every trainer's hyperparameters.

:class:`TrainerConfig` also holds the training options every trainer has, applied by the runtime
(:mod:`mlops_trainers.optim`, :mod:`mlops_trainers.spike_guard`) with no code in the trainers:
``learning_rate`` and ``clipnorm``, the learning-rate ``schedule`` (warmup, cosine, step,
plateau), ``early_stopping``, the ``spike_guard``, and ``precision`` and ``jit_compile``
(:mod:`mlops_trainers.precision`). A trainer's config class overrides a
default by declaring the field again (the VQ-VAE's ``learning_rate`` is 1e-4, the segmenter's
schedule watches ``val_iou``), and lists the epoch metrics it reports in ``METRICS``, so that a
schedule or an early stop watching a metric the trainer never reports is refused by
``mlops validate`` and the operator, not discovered in the pod.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ConfigModel",
    "EarlyStoppingConfig",
    "Mode",
    "ScheduleConfig",
    "SpikeGuardConfig",
    "TrainerConfig",
    "check_reference",
]

Mode = Literal["min", "max"]


class ConfigModel(BaseModel):
    """A config value: a nested block of a trainer config (``sky_mask``), or the run file's parts."""

    # frozen: a config is a value; extra=forbid: a typo in a hyperparameter is an error, not a no-op.
    model_config = ConfigDict(frozen=True, extra="forbid")


# === Shared training options ===


class ScheduleConfig(ConfigModel):
    """Learning-rate schedule: a linear warmup, then constant, cosine, step or plateau decay."""

    kind: Literal["constant", "cosine", "step", "plateau"] = Field(
        "constant",
        description="constant; cosine to final_fraction over the run (Loshchilov & Hutter 2017, arXiv:1608.03983); step: x factor every every_epochs; plateau: x factor after patience epochs without a better monitor.",
    )
    warmup_steps: int = Field(
        0,
        ge=0,
        le=10_000_000,
        description="Steps of linear warmup from 0 to learning_rate (Goyal et al. 2017, arXiv:1706.02677).",
    )
    final_fraction: float = Field(
        0.01, ge=0, le=1, description="cosine: the learning rate at the end, as a fraction."
    )
    every_epochs: int = Field(10, ge=1, le=100000, description="step: epochs between decays.")
    factor: float = Field(
        0.5, gt=0, lt=1, description="step and plateau: multiplies the learning rate."
    )
    patience: int = Field(
        3, ge=1, le=10000, description="plateau: epochs without improvement before a decay."
    )
    monitor: str = Field("loss", description="plateau: the epoch metric watched.")
    mode: Mode | None = Field(
        None, description="plateau: min or max; default the metric's own direction."
    )


class EarlyStoppingConfig(ConfigModel):
    """Stop when an epoch metric has not improved for ``patience`` epochs."""

    enabled: bool = Field(False, description="Stop early.")
    monitor: str = Field("loss", description="The epoch metric watched.")
    mode: Mode | None = Field(None, description="min or max; default the metric's own direction.")
    patience: int = Field(
        5, ge=1, le=10000, description="Epochs without improvement before stopping."
    )
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as better.")
    restore_best: bool = Field(
        True,
        description="Save the best epoch's weights under best/ and make them the final model.",
    )


class SpikeGuardConfig(ConfigModel):
    """Loss spikes: roll back to the last good state, lower the learning rate, skip the batch."""

    enabled: bool = Field(True, description="Watch every step's loss for spikes.")
    factor: float = Field(
        3.0,
        gt=1,
        le=1000,
        description="A step whose loss exceeds factor x the running median (or is not finite) is a spike.",
    )
    window: int = Field(
        100, ge=5, le=100000, description="Steps in the running median (good steps only)."
    )
    min_history: int = Field(
        20, ge=1, le=100000, description="Good steps seen before a spike can be called."
    )
    lr_factor: float = Field(
        0.5, gt=0, lt=1, description="Each rollback multiplies the learning rate by this."
    )
    max_rollbacks: int = Field(
        5,
        ge=0,
        le=1000,
        description="Rollbacks allowed in a run; one more spike fails it (exit 2, not retried).",
    )
    snapshot_every: int = Field(
        50,
        ge=1,
        le=10_000_000,
        description="Steps between in-memory snapshots of the last good state (also one per checkpoint).",
    )

    @model_validator(mode="after")
    def _history_fits_window(self) -> SpikeGuardConfig:
        if self.min_history > self.window:
            raise ValueError(
                f"min_history {self.min_history} exceeds window {self.window}: the median "
                "would never hold enough steps to call a spike"
            )
        return self


class TrainerConfig(ConfigModel):
    """The hyperparameters of one trainer kind.

    Each ``mlops_trainers/trainers/<kind>/config.py`` defines exactly one subclass; the folder name
    is the kind (:mod:`mlops_trainers.registry`). Its docstring heads the kind's table in the
    README, its field descriptions fill the table. The fields below are every trainer's; a
    subclass changes a default by declaring the field again.
    """

    # The epoch metrics the trainer reports and whether lower or higher is better: what a
    # schedule or early stop may watch. Every trainer reports its loss.
    METRICS: ClassVar[dict[str, Mode]] = {"loss": "min"}
    # Fields naming another run by name or URL (PixelCNN's ``vqvae``): the API checks them like
    # spec URLs, and refuses in a cluster what a pod cannot reach.
    REFERENCES: ClassVar[tuple[str, ...]] = ()

    learning_rate: float = Field(3e-4, gt=0, le=1, description="Adam learning rate.")
    clipnorm: float | None = Field(
        None,
        gt=0,
        le=1e6,
        description="Clip the global gradient norm to this (as torch's clip_grad_norm_); null: no clipping.",
    )
    schedule: ScheduleConfig = Field(
        default_factory=ScheduleConfig, description="Learning-rate schedule."
    )
    early_stopping: EarlyStoppingConfig = Field(
        default_factory=EarlyStoppingConfig, description="Stop when a metric stops improving."
    )
    spike_guard: SpikeGuardConfig = Field(
        default_factory=SpikeGuardConfig,
        description="Roll back loss spikes (and non-finite losses) instead of failing.",
    )
    precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = Field(
        "auto",
        description="Keras dtype policy: mixed_* compute in 16 bits and keep variables, quantizer distances and losses in float32. auto: mixed_bfloat16 on GPUs of compute capability 8.0+, mixed_float16 (loss-scaled) on 7.x, float32 on older GPUs and the CPU.",
    )
    jit_compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Compile the train step with XLA. auto: on with a GPU, off on the CPU.",
    )

    @classmethod
    def metric_mode(cls, name: str, mode: Mode | None = None) -> Mode:
        """The direction of ``name``: ``mode`` if given, else the one ``METRICS`` declares."""
        return mode or cls.METRICS.get(name, "min")

    @model_validator(mode="after")
    def _monitors_are_reported(self) -> TrainerConfig:
        known = type(self).METRICS
        watched = []
        if self.schedule.kind == "plateau":
            watched.append(("schedule.monitor", self.schedule.monitor))
        if self.early_stopping.enabled:
            watched.append(("early_stopping.monitor", self.early_stopping.monitor))
        for where, name in watched:
            if name not in known:
                raise ValueError(
                    f"{where} {name!r} is not a metric this trainer reports; it reports: "
                    f"{', '.join(sorted(known))}"
                )
        return self


_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f`$;|&<>\"'\\{}]")


def check_reference(value: str) -> str:
    """A run name or URL in a trainer config: the same rules as the spec's URLs.

    (``mlops_api.spec.check_url``, kept here because trainer configs must not import the API
    package): no shell/quote/control characters, no ``..`` segment.
    """
    if _UNSAFE.search(value):
        raise ValueError("must not contain spaces, quotes, control or shell characters")
    if ".." in value.split("/"):
        raise ValueError("must not contain '..' path segments")
    return value
