"""The ``vle`` trainer's hyperparameters (pure pydantic: the operator validates them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mlops_trainers.config_base import TrainerConfig

__all__ = ["VLEConfig"]


class VLEConfig(TrainerConfig):
    """Variable-length embeddings: an image told in 1..max_tokens tokens of residual (Toderici et al. 2016, arXiv:1511.06085)."""

    image_size: int = Field(
        32, ge=8, le=1024, description="Images are padded (never stretched) to this square size."
    )
    channels: Literal[1, 3] = Field(1, description="1 for grayscale, 3 for RGB.")
    batch_size: int = Field(16, ge=1, le=4096, description="Images per step.")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="Adam learning rate.")
    max_tokens: int = Field(
        4,
        ge=1,
        le=16,
        description="T_max: each global step draws T from 1..T_max and trains the reconstruction from T tokens.",
    )
    variant: Literal["vanilla", "mask"] = Field(
        "vanilla",
        description="vanilla: rec += r each step; mask: a saliency head's mask m gates it, rec += m*r.",
    )
    filters: int = Field(32, ge=4, le=1024, description="Filters of the encoder and decoder convs.")
    downsample: int = Field(
        2,
        ge=0,
        le=6,
        description="Stride-2 convs after the ConvLSTM: the token grid is image_size / 2 ** (downsample + 1).",
    )
    latent_channels: int = Field(
        8,
        ge=8,
        le=512,
        description="Channels of a token (at least 8: with 3 the seed's tokens collapsed).",
    )
    mask_scale: float = Field(
        2.0, gt=0, le=100, description="Slope of the mask's scaled tanh, m = (1 + tanh(s*a)) / 2."
    )
    mask_diff_weight: float = Field(
        0.05,
        ge=0,
        le=10,
        description="Weight of the exp(-d) losses keeping each mask apart from the previous one and from their sum.",
    )
    baseline: bool = Field(
        True,
        description="Also train plain autoencoders with the budget of k tokens (k = 1..T_max) for comparison.",
    )
    validation_images: int = Field(
        64,
        ge=0,
        le=100000,
        description="Images held out (the last of the data) to measure the MSE after k tokens.",
    )
    steps_per_epoch: int | None = Field(
        None, ge=1, description="Steps per epoch; default one pass over the data."
    )
    previews: int = Field(
        6, ge=0, le=64, description="Images in each epoch's PNG of per-step reconstructions."
    )

    @model_validator(mode="after")
    def _size_fits_stages(self) -> VLEConfig:
        factor = 2 ** (self.downsample + 1)
        if self.image_size % factor:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of 2 ** (downsample + 1) = "
                f"{factor}"
            )
        return self
