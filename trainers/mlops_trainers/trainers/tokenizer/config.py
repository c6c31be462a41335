"""The ``tokenizer`` trainer's hyperparameters (pure pydantic: the operator validates them)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from mlops_trainers.config_base import Mode, TrainerConfig
from mlops_trainers.skymask.config import SkyMaskConfig

__all__ = ["SkyMaskConfig", "TokenizerConfig"]


class TokenizerConfig(TrainerConfig):
    """MaskGIT-style VQGAN tokenizer (Chang et al. 2022, arXiv:2202.04200) for webcam cloud frames."""

    METRICS: ClassVar[dict[str, Mode]] = {
        "loss": "min",
        "reconstruction_error": "min",
        "vq_loss": "min",
        "unused_loss": "min",
        "perplexity": "max",
        "codes_used": "max",
        "token_stability": "max",
        "codes_used_preview": "max",
    }

    image_size: int = Field(
        64, ge=8, le=4096, description="Images are padded (never stretched) to this square size."
    )
    channels: Literal[1, 3] = Field(3, description="1 for grayscale, 3 for RGB.")
    batch_size: int = Field(8, ge=1, le=4096, description="Images per step.")
    learning_rate: float = Field(2e-4, gt=0, le=1, description="Adam learning rate.")
    base_filters: int = Field(32, ge=4, le=1024, description="Filters of the first stage.")
    channel_multipliers: tuple[int, ...] = Field(
        (1, 2, 2),
        min_length=1,
        max_length=6,
        description="Per-stage filter multipliers; each stage after the first halves the size.",
    )
    residual_blocks: int = Field(1, ge=0, le=8, description="Residual blocks per stage.")
    groups: int = Field(8, ge=1, le=64, description="GroupNorm groups.")
    latent_dim: int = Field(16, ge=1, le=1024, description="Dimension of each codebook vector.")
    num_embeddings: int = Field(256, ge=2, le=65536, description="Codebook size K.")
    beta: float = Field(0.25, ge=0, le=10, description="Commitment loss weight.")
    unused_code_weight: float = Field(
        0.1,
        ge=0,
        le=10,
        description="Weight of the loss pulling unused codes to their nearest encoder vectors.",
    )
    sky_mask: SkyMaskConfig = Field(
        default_factory=SkyMaskConfig, description="The classical sky mask."
    )
    steps_per_epoch: int | None = Field(
        None, ge=1, description="Steps per epoch; default one pass over the data."
    )
    reconstructions: int = Field(
        8, ge=0, le=64, description="Images in each epoch's reconstruction PNG."
    )

    @model_validator(mode="after")
    def _size_fits_stages(self) -> TokenizerConfig:
        factor = 2 ** (len(self.channel_multipliers) - 1)
        if self.image_size % factor:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of 2 ** (stages - 1) = {factor} "
                f"for channel_multipliers {list(self.channel_multipliers)}"
            )
        return self
