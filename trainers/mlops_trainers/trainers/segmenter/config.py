"""The ``segmenter`` trainer's hyperparameters (pure pydantic: the operator validates them)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from mlops_trainers.config_base import (
    EarlyStoppingConfig,
    Mode,
    ScheduleConfig,
    SpikeGuardConfig,
    TrainerConfig,
)

__all__ = ["SegmenterConfig"]


class SegmenterConfig(TrainerConfig):
    """U-Net (Ronneberger et al. 2015, arXiv:1505.04597) for cloud masks on large scenes, tiled."""

    METRICS: ClassVar[dict[str, Mode]] = {
        "loss": "min",
        **{
            f"{prefix}{name}": "max"
            for prefix in ("", "val_")
            for name in ("iou", "dice", "precision", "recall")
        },
    }

    tile_size: int = Field(
        128,
        ge=16,
        le=4096,
        description="Scenes are cut into square tiles of this size (padded at the borders).",
    )
    bands: int = Field(
        4, ge=1, le=32, description="Input bands (38-Cloud: red, green, blue, near infrared)."
    )
    batch_size: int = Field(8, ge=1, le=4096, description="Tiles per step.")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="Adam learning rate.")
    base_filters: int = Field(
        16, ge=4, le=1024, description="Filters of the first stage; doubled per level."
    )
    depth: int = Field(3, ge=1, le=6, description="Down-sampling levels.")
    pos_weight: float | None = Field(
        None,
        gt=0,
        le=1000,
        description="Weight of cloud pixels in the BCE loss; null: (1 - p) / p from the training masks' cloud fraction p (clipped to 0.01-100).",
    )
    dice_weight: float = Field(
        1.0, ge=0, le=100, description="Weight of the Dice loss added to BCE."
    )
    dice: Literal["tile", "batch"] = Field(
        "batch",
        description="Soft Dice per tile (mean over the batch) or over the whole batch at once, so a clear tile does not score 0/0.",
    )
    threshold: float = Field(
        0.5, gt=0, lt=1, description="Probability above which a pixel is cloud."
    )
    steps_per_epoch: int | None = Field(
        None, ge=1, description="Steps per epoch; default one pass over the data."
    )
    # Cloud-Net (Mohajerani & Saeedi 2019) trains with a plateau schedule and early stopping; here
    # both watch the validation IoU, the number the 38-Cloud papers report.
    schedule: ScheduleConfig = Field(
        default_factory=lambda: ScheduleConfig(kind="plateau", monitor="val_iou", patience=5),
        description="Learning-rate schedule.",
    )
    early_stopping: EarlyStoppingConfig = Field(
        default_factory=lambda: EarlyStoppingConfig(
            enabled=True, monitor="val_iou", patience=15, min_delta=1e-3
        ),
        description="Stop when a metric stops improving.",
    )
    # A batch of clear tiles and one of cloud edges differ in loss by more than 3x: a wider bar.
    spike_guard: SpikeGuardConfig = Field(
        default_factory=lambda: SpikeGuardConfig(factor=5.0),
        description="Roll back loss spikes (and non-finite losses) instead of failing.",
    )
    workers: int = Field(
        4, ge=1, le=64, description="Threads reading and decoding tiles ahead of training."
    )
    export_onnx: bool = Field(
        True, description="Export the final model to ONNX next to the checkpoints."
    )
    augment: bool = Field(
        True, description="Random flips and 90-degree rotations of the training tiles."
    )
    predictions: int = Field(
        4, ge=0, le=64, description="Validation scenes drawn in each epoch's prediction PNG."
    )
    overlap: int = Field(
        0,
        ge=0,
        le=1024,
        description="Context pixels per tile side predicted and dropped when a whole scene is predicted (overlap-tile); 0 = plain tiles, with seams.",
    )

    @model_validator(mode="after")
    def _tile_fits_depth(self) -> SegmenterConfig:
        if self.tile_size % 2**self.depth:
            raise ValueError(
                f"tile_size {self.tile_size} must be a multiple of 2 ** depth = {2**self.depth}"
            )
        if 2 * self.overlap >= self.tile_size:
            raise ValueError(
                f"overlap {self.overlap} leaves no centre of a {self.tile_size} tile: "
                "2 * overlap must be less than tile_size"
            )
        return self
