"""The ``segmenter`` trainer's hyperparameters (pure pydantic: the operator validates them)."""

from __future__ import annotations

from pydantic import Field, model_validator

from mlops_trainers.config_base import TrainerConfig

__all__ = ["SegmenterConfig"]


class SegmenterConfig(TrainerConfig):
    """U-Net (Ronneberger et al. 2015, arXiv:1505.04597) for cloud masks on large scenes, tiled."""

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
    pos_weight: float = Field(
        1.0, gt=0, le=1000, description="Weight of positive (cloud) pixels in the BCE loss."
    )
    dice_weight: float = Field(
        1.0, ge=0, le=100, description="Weight of the Dice loss added to BCE."
    )
    threshold: float = Field(
        0.5, gt=0, lt=1, description="Probability above which a pixel is cloud."
    )
    steps_per_epoch: int | None = Field(
        None, ge=1, description="Steps per epoch; default one pass over the data."
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
