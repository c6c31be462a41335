"""Trainer configuration: the hyperparameters of each trainer and the run file every trainer reads.

Pure pydantic, no TensorFlow: the API package, the operator image and the CLI import this module to
validate a manifest's ``trainer.config`` with the trainer's own model (one source of truth).

The run file (:class:`RunConfig`) is what the per-run ConfigMap holds and what ``mlops run`` writes
locally; the trainer reads nothing else.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TrainerKind = Literal["vqvae", "pixelcnn", "tokenizer", "segmenter"]
TRAINER_KINDS: tuple[str, ...] = ("vqvae", "pixelcnn", "tokenizer", "segmenter")


_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f`$;|&<>\"'\\{}]")


class _Config(BaseModel):
    # frozen: a config is a value; extra=forbid: a typo in a hyperparameter is an error, not a no-op.
    model_config = ConfigDict(frozen=True, extra="forbid")


# === Trainer configs ===


class VQVAEConfig(_Config):
    """VQ-VAE (van den Oord et al. 2017, arXiv:1711.00937) with EMA codebook and dead-code restart."""

    image_size: int = Field(
        64, ge=8, le=4096, description="Images are padded (never stretched) to this square size."
    )
    channels: Literal[1, 3] = Field(3, description="1 for grayscale, 3 for RGB.")
    batch_size: int = Field(16, ge=1, le=4096, description="Images per step.")
    learning_rate: float = Field(3e-4, gt=0, le=1, description="Adam learning rate.")
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


class PixelCNNConfig(_Config):
    """Gated PixelCNN prior (van den Oord et al. 2016, arXiv:1606.05328) over a VQ-VAE's code grid."""

    vqvae: str = Field(
        ...,
        min_length=1,
        max_length=2048,
        description="The VQ-VAE whose codes are modelled: a run name (looked up under the output prefix) or a run/checkpoint URL.",
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
        # The same rules as the spec's URLs (mlops_api.spec.check_url), kept here because this
        # module must not import the API package: no shell/quote/control characters, no '..'.
        if _UNSAFE.search(value):
            raise ValueError("must not contain spaces, quotes, control or shell characters")
        if ".." in value.split("/"):
            raise ValueError("must not contain '..' path segments")
        return value


class SkyMaskConfig(_Config):
    """Classical sky mask for webcam frames: pixels badly predicted by their neighbourhood are not sky."""

    enabled: bool = Field(True, description="Apply the sky mask to inputs and losses.")
    window: int = Field(
        5, ge=3, le=31, description="Neighbourhood size of the linear predictor (odd)."
    )
    smoothing: float = Field(
        1.0,
        ge=0,
        le=10,
        description="Gaussian sigma (pixels) that denoises each frame before predicting; sensor noise dominates at night.",
    )
    error_threshold: float = Field(
        0.04,
        gt=0,
        le=1,
        description="Local prediction error, in units of the frame's 1st-99th percentile range, above which a pixel is textured.",
    )
    frequency: float = Field(
        0.5, gt=0, le=1, description="Fraction of frames a pixel must be textured in to be not-sky."
    )
    history: int = Field(
        8,
        ge=0,
        le=10000,
        description="Frames in the trailing window the frequency is measured over; 0 = all frames.",
    )
    closing: int = Field(5, ge=0, le=64, description="Morphological closing radius.")
    min_hole: int = Field(64, ge=0, description="Holes smaller than this (pixels) are filled.")
    min_island: int = Field(64, ge=0, description="Islands smaller than this (pixels) are removed.")
    consecutive: int = Field(
        3,
        ge=1,
        le=100,
        description="A pixel is masked only if masked in this many consecutive frames.",
    )
    max_frames: int = Field(
        64, ge=1, le=10000, description="Frames read from a folder, evenly spaced in name order."
    )

    @model_validator(mode="after")
    def _odd_window(self) -> SkyMaskConfig:
        if self.window % 2 == 0:
            raise ValueError(f"window must be odd (a pixel and its neighbours), got {self.window}")
        return self


class TokenizerConfig(_Config):
    """MaskGIT-style VQGAN tokenizer (Chang et al. 2022, arXiv:2202.04200) for webcam cloud frames."""

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


class SegmenterConfig(_Config):
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


TRAINER_CONFIGS: dict[str, type[_Config]] = {
    "vqvae": VQVAEConfig,
    "pixelcnn": PixelCNNConfig,
    "tokenizer": TokenizerConfig,
    "segmenter": SegmenterConfig,
}

TrainerConfig = VQVAEConfig | PixelCNNConfig | TokenizerConfig | SegmenterConfig


# === Run file ===


class TrainerSpec(_Config):
    """Which trainer, and its hyperparameters (validated by that trainer's own model)."""

    kind: TrainerKind
    config: TrainerConfig


class ResumeConfig(_Config):
    """Where a run starts from: nothing, a checkpoint/run URL, or a parent run by name (provenance)."""

    from_url: str | None = Field(
        None, description="A checkpoint URL or a run output URL (its newest complete checkpoint)."
    )
    parent_run: str | None = Field(
        None, description="A parent run name, looked up under output_prefix."
    )


class RunConfig(_Config):
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
