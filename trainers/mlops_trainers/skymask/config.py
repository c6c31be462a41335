"""The sky mask's parameters (pure pydantic: the tokenizer's config nests them)."""

from __future__ import annotations

from pydantic import Field, model_validator

from mlops_trainers.config_base import ConfigModel

__all__ = ["SkyMaskConfig"]


class SkyMaskConfig(ConfigModel):
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
