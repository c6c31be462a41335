"""Classical sky mask for a fixed webcam: where is the sky, with no learning and no colour rule.

Idea: the sky is *smooth* and the ground is *textured*. Predict each pixel from the linear average
of its neighbours; where the prediction error is often high the pixel is not sky (grass, buildings,
trees, lit windows). This is the local-predictability criterion behind predictive image coding
(e.g. the median/average predictors of lossless JPEG, Weinberger et al. 2000, LOCO-I), used here as
a texture detector. Clouds are textured too, but they move, so a sky pixel is textured only now and
then, while a ground pixel is textured in almost every frame: hence a *frequency* over frames.

Unlike a colour threshold ("blue and bright is sky"), the criterion does not care about the sky's
colour, so it keeps working at dusk (orange sky) and at night (dark sky, dark ground): each frame
is normalised by its robust contrast range and lightly denoised before predicting, so a dark frame
is judged by its texture, not by its brightness. ``tests/trainers/test_skymask.py`` measures both
against the known sky of synthetic day/dusk/night sequences.

Steps (every parameter is a field of :class:`~mlops_trainers.skymask.config.SkyMaskConfig`):

1. per frame: normalise, denoise (Gaussian ``smoothing``), predict each pixel as the mean of its
   ``window`` x ``window`` neighbourhood without the pixel itself, take the absolute error per
   channel (max over channels: a colour edge of equal brightness is texture too), and average it
   over the same window; ``error > error_threshold`` marks the pixel *textured*;
2. over a trailing ``history`` of frames: textured in at least ``frequency`` of them -> not sky;
3. clean up: morphological closing (``closing`` radius), fill holes smaller than ``min_hole``,
   remove islands smaller than ``min_island``, and fill everything below any not-sky region that
   spans the left border to the right border (the ground under a horizon is ground, even where it
   is a smooth road or lake); then erode by ``window - 1``, the distance the two window-sized
   filters spread a texture edge into the sky;
4. keep a pixel masked only if it is masked in ``consecutive`` consecutive frames, so one noisy
   frame cannot carve a hole into the sky.

The result is a boolean (H, W) *sky* mask (True = sky, used by the tokenizer; False = masked out).
NumPy and SciPy only: the camera folders and mask files are :mod:`mlops_trainers.skymask.frames`,
the command line :mod:`mlops_trainers.skymask.cli`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from mlops_trainers.skymask.config import SkyMaskConfig

__all__ = [
    "clean_mask",
    "fill_below_spanning",
    "local_prediction_error",
    "min_run_mask",
    "sky_mask",
]


# === Per-frame texture ===


def _as_float(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.dtype == np.uint8:
        return frame.astype(np.float32) / 255.0
    if frame.dtype == np.uint16:
        return frame.astype(np.float32) / 65535.0
    return frame.astype(np.float32)


def local_prediction_error(
    frame: np.ndarray, window: int = 5, smoothing: float = 1.0
) -> np.ndarray:
    """Local mean absolute error of predicting each pixel from its neighbours' average, (H, W).

    The frame is first stretched to its 1st..99th percentile range: the error is then in units of
    the frame's own contrast, which is what makes a night frame comparable with a day frame.
    """
    x = _as_float(frame)
    lo, hi = np.percentile(x, [1.0, 99.0])
    x = (x - lo) / max(float(hi - lo), 1e-3)
    if smoothing > 0:
        # Denoise within each channel only: sensor noise dominates dark frames and is, unlike
        # texture, uncorrelated between neighbours, so a light blur removes most of it.
        x = ndimage.gaussian_filter(x, sigma=(smoothing, smoothing, 0), mode="reflect")
    area = window * window
    size = (window, window, 1)
    mean_all = ndimage.uniform_filter(x, size=size, mode="reflect")
    # Mean of the neighbourhood *without* the centre pixel: the linear predictor.
    predicted = (mean_all * area - x) / (area - 1)
    error = np.abs(x - predicted).max(axis=-1)
    local: np.ndarray = ndimage.uniform_filter(error, size=window, mode="reflect")
    return local


# === Clean-up ===


def fill_below_spanning(not_sky: np.ndarray) -> np.ndarray:
    """Fill every column below the top of any region that touches both the left and right border."""
    labels, count = ndimage.label(not_sky, structure=np.ones((3, 3)))
    if count == 0:
        return not_sky
    left = set(np.unique(labels[:, 0])) - {0}
    right = set(np.unique(labels[:, -1])) - {0}
    spanning = sorted(left & right)
    if not spanning:
        return not_sky
    region = np.isin(labels, spanning)
    # A connected region from the left border to the right one has a pixel in every column, so
    # "first row of the region" is defined everywhere.
    top = np.argmax(region, axis=0)
    rows = np.arange(not_sky.shape[0])[:, None]
    filled: np.ndarray = not_sky | (rows >= top[None, :])
    return filled


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk: np.ndarray = x * x + y * y <= radius * radius
    return disk


def _closing(mask: np.ndarray, radius: int) -> np.ndarray:
    # Pad by reflection first: ndimage treats outside as background, which would open gaps along
    # the frame border that the closing is meant to close.
    padded = np.pad(mask, radius, mode="reflect")
    closed = ndimage.binary_closing(padded, _disk(radius))
    out: np.ndarray = closed[radius:-radius, radius:-radius]
    return out


def clean_mask(not_sky: np.ndarray, config: SkyMaskConfig) -> np.ndarray:
    """Closing, fill small holes, remove small islands, fill below a border-to-border region."""
    from skimage import morphology  # scikit-image is heavy; only the mask code needs it

    mask = not_sky.astype(bool)
    if config.closing > 0:
        mask = _closing(mask, config.closing)
    if config.min_hole > 1:
        mask = morphology.remove_small_holes(mask, max_size=config.min_hole - 1)
    if config.min_island > 1:
        mask = morphology.remove_small_objects(mask, max_size=config.min_island - 1)
    mask = fill_below_spanning(mask)
    # Undo the spread of the texture measure: a texture edge raises the predictor's error up to
    # window//2 pixels away, and averaging the error spreads it window//2 further, so the not-sky
    # region overshoots into the sky by about window - 1 pixels. Outside the frame counts as
    # not-sky (border_value=1) so that ground touching the border does not shrink from it.
    eroded: np.ndarray = ndimage.binary_erosion(mask, _disk(config.window - 1), border_value=1)
    return eroded


def min_run_mask(masks: np.ndarray, run: int) -> np.ndarray:
    """Pixels True in at least ``run`` consecutive masks of a (T, H, W) stack (``run`` capped at T)."""
    run = max(1, min(run, masks.shape[0]))
    current = np.zeros(masks.shape[1:], dtype=np.int32)
    best = np.zeros(masks.shape[1:], dtype=np.int32)
    for m in masks:
        current = np.where(m, current + 1, 0)
        np.maximum(best, current, out=best)
    return best >= run


# === The mask ===


def sky_mask(
    frames: Sequence[np.ndarray] | np.ndarray, config: SkyMaskConfig | None = None
) -> np.ndarray:
    """Boolean (H, W) sky mask (True = sky) of a fixed camera's frames, in time order."""
    config = config or SkyMaskConfig()
    frames = list(frames)
    if not frames:
        raise ValueError("sky_mask needs at least one frame")
    shape = np.asarray(frames[0]).shape[:2]
    for i, f in enumerate(frames):
        if np.asarray(f).shape[:2] != shape:
            raise ValueError(
                f"frame {i} is {np.asarray(f).shape[:2]}, frame 0 is {shape}: a fixed camera's frames share a size"
            )
    textured = np.stack(
        [
            local_prediction_error(f, config.window, config.smoothing) > config.error_threshold
            for f in frames
        ]
    ).astype(np.float32)
    history = len(frames) if config.history == 0 else min(config.history, len(frames))
    # Trailing mean over `history` frames by cumulative sums (frames before 0 do not exist, so
    # the first few windows are shorter).
    csum = np.cumsum(textured, axis=0)
    per_frame = []
    for t in range(len(frames)):
        start = t - history
        total = csum[t] - (csum[start] if start >= 0 else 0.0)
        count = t - max(start, -1)
        not_sky = total / count >= config.frequency
        per_frame.append(clean_mask(not_sky, config))
    not_sky_final = min_run_mask(np.stack(per_frame), config.consecutive)
    return ~not_sky_final
