"""The ``floodpred`` trainer's hyperparameters (pure pydantic: the operator validates them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mlops_trainers.config_base import TrainerConfig

__all__ = ["FloodPredConfig"]


class FloodPredConfig(TrainerConfig):
    """Flood-frame prediction: depth and velocity of the next frames from the past ones and the bed."""

    past: int = Field(4, ge=1, le=64, description="Past frames in a window (the model's input).")
    future: int = Field(6, ge=1, le=64, description="Future frames in a window (predicted).")
    window_stride: int = Field(
        1, ge=1, le=1000, description="Frames between the starts of successive windows."
    )
    batch_size: int = Field(8, ge=1, le=4096, description="Windows per step.")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="Adam learning rate.")
    encoder: Literal["simple", "resnet"] = Field(
        "simple",
        description="simple: conv stages (the seed's simplified encoder); resnet: residual blocks per stage.",
    )
    filters: int = Field(
        32, ge=4, le=1024, description="Filters of the first stage; doubled per stage."
    )
    downsample: int = Field(
        1,
        ge=0,
        le=6,
        description="Stride-2 stages down to the latent grid: 1 turns 64x64 frames into the seed's 32x32 grid.",
    )
    latent_blocks: int = Field(
        2, ge=0, le=16, description="Conv (or residual) blocks at the latent grid."
    )
    wet_threshold: float = Field(
        0.05, gt=0, le=100, description="Depth (m) above which a cell is wet, for the wet/dry IoU."
    )
    augment: bool = Field(
        True,
        description="Random 90-degree rotations and flips of training windows (velocity vectors rotated with them).",
    )
    steps_per_epoch: int | None = Field(
        None, ge=1, description="Steps per epoch; default one pass over the windows."
    )
    predictions: int = Field(
        3, ge=0, le=32, description="Validation windows drawn in each epoch's prediction PNG."
    )
