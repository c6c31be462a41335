"""The ``pixelcnn`` trainer's hyperparameters (pure pydantic: the operator validates them)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from mlops_trainers.config_base import Mode, TrainerConfig, check_reference

__all__ = ["PixelCNNConfig"]


class PixelCNNConfig(TrainerConfig):
    """Gated PixelCNN prior (van den Oord et al. 2016, arXiv:1606.05328) over a VQ-VAE's or tokenizer's code grid."""

    METRICS: ClassVar[dict[str, Mode]] = {
        "loss": "min",
        "bits_per_code": "min",
        "bits_per_valid_code": "min",
        "sample_codes_used": "max",
    }
    # Fields naming another run (a run name or a run/checkpoint URL): checked like spec URLs,
    # and in a cluster they must be reachable from a pod (mlops_api.validation).
    REFERENCES: ClassVar[tuple[str, ...]] = ("vqvae",)

    vqvae: str = Field(
        ...,
        min_length=1,
        max_length=2048,
        description="The VQ-VAE or tokenizer run whose codes are modelled: a run name (looked up under the output prefix) or a run/checkpoint URL.",
    )
    batch_size: int = Field(32, ge=1, le=4096, description="Code grids per step.")
    learning_rate: float = Field(3e-4, gt=0, le=1, description="Adam learning rate.")
    filters: int = Field(64, ge=4, le=1024, description="Channels of the gated layers.")
    layers: int = Field(6, ge=1, le=64, description="Gated masked convolution layers.")
    kernel_size: int = Field(
        5, ge=3, le=15, description="Kernel size of the masked convolutions (odd)."
    )
    steps_per_epoch: int | None = Field(
        None, ge=1, description="Steps per epoch; default one pass over the data."
    )
    samples: int = Field(16, ge=0, le=256, description="Images sampled into each epoch's PNG grid.")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature.")

    @field_validator("vqvae")
    @classmethod
    def _reference(cls, value: str) -> str:
        return check_reference(value)

    @field_validator("kernel_size")
    @classmethod
    def _odd_kernel(cls, value: int) -> int:
        # A masked convolution needs a centre pixel to mask around (van den Oord et al. 2016).
        if value % 2 == 0:
            raise ValueError("kernel_size must be odd (3, 5, 7, ...)")
        return value
