"""The ``maskgit`` trainer's hyperparameters (pure pydantic: the operator validates them)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from mlops_trainers.config_base import TrainerConfig, check_reference

__all__ = ["MaskGITConfig"]


class MaskGITConfig(TrainerConfig):
    """MaskGIT prior (Chang et al. 2022, arXiv:2202.04200): a bidirectional transformer over a tokenizer's code grids."""

    tokenizer: str = Field(
        ...,
        min_length=1,
        max_length=2048,
        description="The tokenizer (or VQ-VAE) run whose codes are modelled: a run name (looked up under the output prefix) or a run/checkpoint URL.",
    )
    batch_size: int = Field(16, ge=1, le=4096, description="Code grids per step.")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="Adam learning rate.")
    dim: int = Field(64, ge=8, le=4096, description="Width of the transformer.")
    layers: int = Field(2, ge=1, le=64, description="Transformer blocks.")
    heads: int = Field(4, ge=1, le=64, description="Attention heads (must divide dim).")
    mlp_dim: int = Field(128, ge=8, le=16384, description="Hidden width of each block's MLP.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout in attention and MLP.")
    decode_steps: int = Field(
        8, ge=1, le=256, description="Steps of iterative parallel decoding for the samples."
    )
    temperature: float = Field(1.0, gt=0, le=10, description="Temperature of the token draws.")
    choice_temperature: float = Field(
        4.5,
        ge=0,
        le=100,
        description="Gumbel noise on the confidences that choose which tokens stay (annealed to 0).",
    )
    validation_grids: int = Field(
        16,
        ge=0,
        le=100000,
        description="Code grids held out (the last of the data, at most a quarter) for the validation NLL.",
    )
    steps_per_epoch: int | None = Field(
        None, ge=1, description="Steps per epoch; default one pass over the data."
    )
    samples: int = Field(8, ge=0, le=256, description="Images sampled into each epoch's PNG grid.")

    @field_validator("tokenizer")
    @classmethod
    def _reference(cls, value: str) -> str:
        return check_reference(value)

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> MaskGITConfig:
        if self.dim % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide dim ({self.dim})")
        return self
