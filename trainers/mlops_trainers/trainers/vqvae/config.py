"""The ``vqvae`` trainer's hyperparameters (pure pydantic: the operator validates them)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from mlops_trainers.config_base import Mode, TrainerConfig

__all__ = ["VQVAEConfig"]


class VQVAEConfig(TrainerConfig):
    """VQ-VAE (van den Oord et al. 2017, arXiv:1711.00937) with EMA codebook and dead-code restart."""

    METRICS: ClassVar[dict[str, Mode]] = {
        "loss": "min",
        "recon_mse": "min",
        "vq_loss": "min",
        "perplexity": "max",
        "codes_used": "max",
    }

    image_size: int = Field(
        64, ge=8, le=4096, description="Images are padded (never stretched) to this square size."
    )
    channels: Literal[1, 3] = Field(3, description="1 for grayscale, 3 for RGB.")
    batch_size: int = Field(16, ge=1, le=4096, description="Images per step.")
    # 1e-4: the FAFA journal's VQ-VAE spiked and collapsed at 2e-4 and 3e-4, and trained at 1e-4.
    learning_rate: float = Field(1e-4, gt=0, le=1, description="Adam learning rate.")
    base_filters: int = Field(
        32,
        ge=4,
        le=1024,
        description="Filters of the first conv stage; doubled per down-sampling stage.",
    )
    downsample: int = Field(
        2,
        ge=1,
        le=6,
        description="Stride-2 stages: a 640 image gives 80 (3), 40 (4) or 20 (5) latents a side.",
    )
    kernel_size: Literal[3, 4, 5] = Field(
        4, description="Kernel size of the stride-2 down- and up-sampling convolutions."
    )
    activation: Literal["relu", "leaky_relu"] = Field(
        "relu",
        description="Activation of the encoder and decoder; leaky_relu has slope 0.2 below zero.",
    )
    kernel_initializer: Literal["glorot_uniform", "he_normal"] = Field(
        "glorot_uniform",
        description="Initialiser of the convolutions; he_normal suits (leaky) ReLU (He et al. 2015, arXiv:1502.01852).",
    )
    residual_blocks: int = Field(
        2, ge=0, le=16, description="Residual blocks after the encoder and before the decoder."
    )
    latent_dim: int = Field(16, ge=1, le=1024, description="Dimension of each codebook vector.")
    num_embeddings: int = Field(128, ge=2, le=65536, description="Codebook size K.")
    beta: float = Field(0.25, ge=0, le=10, description="Commitment loss weight.")
    ema: bool = Field(
        True, description="Update the codebook by exponential moving averages (no codebook loss)."
    )
    ema_decay: float = Field(0.99, gt=0, lt=1, description="EMA decay of the codebook statistics.")
    dead_code_restart: bool = Field(
        True, description="Re-seed codes unused for a while from encoder outputs."
    )
    dead_code_threshold: float = Field(
        1e-3, ge=0, description="EMA usage under which a code counts as dead."
    )
    kmeans_init: bool = Field(
        False,
        description="Initialise the codebook by k-means on the first batch's encoder outputs.",
    )
    steps_per_epoch: int | None = Field(
        None, ge=1, description="Steps per epoch; default one pass over the data."
    )
    reconstructions: int = Field(
        8, ge=0, le=64, description="Images in each epoch's reconstruction PNG."
    )

    @model_validator(mode="after")
    def _size_fits_the_stages(self) -> VQVAEConfig:
        factor = 2**self.downsample
        if self.image_size % factor:
            below = self.image_size - self.image_size % factor
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of 2 ** downsample = {factor} "
                f"(e.g. {below or factor} or {below + factor})"
            )
        latents = (self.image_size // factor) ** 2
        if self.kmeans_init and self.batch_size * latents < self.num_embeddings:
            raise ValueError(
                f"kmeans_init needs at least num_embeddings = {self.num_embeddings} encoder "
                f"vectors in the first batch, but batch_size {self.batch_size} x "
                f"{self.image_size // factor}x{self.image_size // factor} latents gives "
                f"{self.batch_size * latents}"
            )
        return self
