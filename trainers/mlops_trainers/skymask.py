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

Steps (every parameter is a field of :class:`~mlops_trainers.config.SkyMaskConfig`):

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
CLI: ``python -m mlops_trainers.skymask FRAMES_URL --out MASK.png [--config YAML]`` writes it as a
PNG, white = sky.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from scipy import ndimage

from mlops_trainers import storage
from mlops_trainers.config import SkyMaskConfig
from mlops_trainers.errors import DataError
from mlops_trainers.samples import register_sample

__all__ = [
    "IMAGE_SUFFIXES",
    "MASK_NAME",
    "clean_mask",
    "fill_below_spanning",
    "frame_urls",
    "load_frames",
    "local_prediction_error",
    "main",
    "mask_png",
    "min_run_mask",
    "read_image",
    "read_mask_png",
    "sky_mask",
    "synthetic_webcam",
    "write_mask_png",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# A camera folder may hold its mask (``mlops skymask FOLDER --out FOLDER/skymask.png``): the
# tokenizer then uses it instead of recomputing, and the mask is never read as a frame.
MASK_NAME = "skymask.png"


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


# === I/O and CLI ===


def frame_urls(url: str) -> list[str]:
    """The frames directly under a folder URL, in name order (a webcam names frames by time).

    Not recursive, and ``skymask.png`` is skipped: a camera's folder may hold its own mask.
    """
    names = [
        n
        for n in storage.list_dir(url)
        if n.lower().endswith(IMAGE_SUFFIXES) and n != MASK_NAME and "/" not in n
    ]
    return [storage.join(url, n) for n in names]


def read_image(url: str) -> np.ndarray:
    """An RGB uint8 (H, W, 3) array from an image URL."""
    from PIL import Image

    with Image.open(io.BytesIO(storage.read_bytes(url))) as img:
        return np.asarray(img.convert("RGB"))


def load_frames(url: str, max_frames: int | None = None) -> list[np.ndarray]:
    """Read the frames under an fsspec folder URL in name order, at most ``max_frames``."""
    urls = frame_urls(url)
    if not urls:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) directly under {url}")
    if max_frames is not None and len(urls) > max_frames:
        # Evenly spaced, so a day-long folder is summarised by the whole day, not its first hour.
        idx = np.linspace(0, len(urls) - 1, max_frames).round().astype(int)
        urls = [urls[i] for i in idx]
    return [read_image(u) for u in urls]


def mask_png(mask: np.ndarray) -> bytes:
    """A boolean mask as 8-bit PNG bytes, white = True."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_mask_png(mask: np.ndarray, url: str) -> None:
    """Write a boolean mask as an 8-bit PNG (white = True) to an fsspec URL."""
    storage.write_bytes(url, mask_png(mask))


def read_mask_png(url: str) -> np.ndarray:
    """Read a mask PNG back as booleans (True where the PNG is brighter than mid-grey)."""
    from PIL import Image

    with Image.open(io.BytesIO(storage.read_bytes(url))) as img:
        return np.asarray(img.convert("L")) >= 128


def _load_config(url: str | None) -> SkyMaskConfig:
    if url is None:
        return SkyMaskConfig()
    import yaml

    data = yaml.safe_load(storage.read_text(url)) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{url}: expected a mapping of SkyMaskConfig fields")
    # Accept a bare SkyMaskConfig, or a tokenizer config that nests one under `sky_mask`.
    return SkyMaskConfig.model_validate(data.get("sky_mask", data))


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m mlops_trainers.skymask FRAMES_URL --out MASK.png [--config YAML]``."""
    parser = argparse.ArgumentParser(
        prog="mlops skymask",
        description="Write the sky mask (white = sky) of a fixed webcam's frames.",
    )
    parser.add_argument(
        "frames", help="fsspec URL (or path) of a folder of frames, named in time order"
    )
    parser.add_argument(
        "--out", required=True, help="fsspec URL (or path) of the mask PNG to write"
    )
    parser.add_argument("--config", default=None, help="YAML of SkyMaskConfig fields")
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help, or a usage error argparse has already printed
        return int(exc.code or 0)
    try:
        config = _load_config(args.config)
        frames = load_frames(args.frames, max_frames=config.max_frames)
    except (FileNotFoundError, ValueError, ValidationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    mask = sky_mask(frames, config)
    write_mask_png(mask, args.out)
    print(
        f"{args.out}: {mask.shape[1]}x{mask.shape[0]}, sky {mask.mean():.1%} of {len(frames)} frames"
    )
    return 0


# === Synthetic webcam (the `sample://webcam` data set and the tests) ===


def _fractal_noise(
    rng: np.random.Generator, shape: tuple[int, int], octaves: int = 5
) -> np.ndarray:
    """Periodic fractal (1/f-like) noise in [0, 1]: sum of blurred white noise, coarse octaves loudest."""
    out = np.zeros(shape, dtype=np.float32)
    for o in range(octaves):
        sigma = max(shape) / 8 / 2**o
        layer = ndimage.gaussian_filter(
            rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap"
        )
        out += layer / (layer.std() + 1e-8) * 0.55**o
    out -= out.min()
    return out / max(float(out.max()), 1e-8)


def _texture(name: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A crop of a real scikit-image texture photograph, cropped (never stretched) and tiled if small."""
    from skimage import data

    img = getattr(data, name)().astype(np.float32) / 255.0
    if img.ndim == 3:
        img = img.mean(axis=-1)
    reps = (-(-height // img.shape[0]) + 1, -(-width // img.shape[1]) + 1)
    img = np.tile(img, reps)
    y = int(rng.integers(0, img.shape[0] - height + 1))
    x = int(rng.integers(0, img.shape[1] - width + 1))
    return img[y : y + height, x : x + width]


_PHASES = {
    # phase: (sky top RGB, sky at horizon RGB, cloud RGB, ground light, noise sigma)
    "day": ((0.30, 0.50, 0.90), (0.70, 0.80, 0.95), (0.97, 0.97, 0.97), 1.0, 0.01),
    "dusk": ((0.22, 0.20, 0.45), (0.98, 0.55, 0.25), (0.95, 0.60, 0.50), 0.40, 0.015),
    "night": ((0.01, 0.015, 0.05), (0.06, 0.05, 0.09), (0.10, 0.10, 0.12), 0.10, 0.008),
}


def synthetic_webcam(
    frames: int = 24,
    height: int = 96,
    width: int = 128,
    phase: str = "day",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed webcam's frames over moving clouds: ``(frames uint8 (T, H, W, 3), sky bool (H, W))``.

    The ground is made of real photographs bundled with scikit-image (``grass``, ``brick`` for a
    building with lit windows at night, ``gravel`` for a road); the sky is a colour gradient with
    fractal cloud texture drifting with the wind. ``phase`` is ``day``, ``dusk``, ``night`` or
    ``cycle`` (day to night over the sequence: brightness and colour change frame by frame).
    The returned sky mask is the ground truth the sky-mask test scores against.
    """
    if phase not in (*_PHASES, "cycle"):
        raise ValueError(f"phase must be one of {[*_PHASES, 'cycle']}, got {phase!r}")
    rng = np.random.default_rng(seed)
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]

    # The scene: a hilly horizon, a building, a road at the bottom.
    base = height * rng.uniform(0.45, 0.6)
    horizon = base + height * 0.06 * np.sin(
        cols[0] / width * 2 * np.pi * rng.uniform(0.5, 1.5) + rng.uniform(0, 6)
    )
    ground = rows >= horizon[None, :]
    bx0 = int(rng.uniform(0.15, 0.55) * width)
    bx1 = bx0 + int(width * rng.uniform(0.15, 0.3))
    by0 = int(base - height * rng.uniform(0.15, 0.25))
    building = (rows >= by0) & (cols >= bx0) & (cols < bx1) & ~ground
    road = rows >= int(height * 0.88)
    sky = ~(ground | building)

    grass = _texture("grass", height, width, rng)[..., None] * np.array([0.45, 0.75, 0.30])
    brick = _texture("brick", height, width, rng)[..., None] * np.array([0.85, 0.45, 0.35])
    gravel = _texture("gravel", height, width, rng)[..., None] * np.array([0.70, 0.70, 0.70])
    scene = np.where(ground[..., None], grass, 0.0)
    scene = np.where(building[..., None], brick, scene)
    scene = np.where(road[..., None], gravel, scene)
    windows = (
        building
        & ((rows - by0) % 6 < 2)
        & ((cols - bx0) % 7 < 3)
        & (rng.random((height, width)) < 0.6)
    )

    # Clouds: two periodic noise fields, drifting at different speeds (wind shear) and blended, so
    # the cloud shapes also evolve rather than only translate.
    big = (height * 2, width * 2)
    field_a = _fractal_noise(rng, big)
    field_b = _fractal_noise(rng, big)
    coverage = rng.uniform(0.35, 0.55)
    wind = rng.uniform(1.0, 2.5)

    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        if phase == "cycle":
            # Day -> dusk -> night: interpolate the phase parameters over the sequence.
            s = t / max(frames - 1, 1) * 2
            a, b = ("day", "dusk") if s <= 1 else ("dusk", "night")
            w = s if s <= 1 else s - 1
            params = [
                np.array(pa) * (1 - w) + np.array(pb) * w
                for pa, pb in zip(_PHASES[a], _PHASES[b], strict=True)
            ]
        else:
            params = [np.array(p) for p in _PHASES[phase]]
        top, bottom, cloud_rgb, light, noise = params
        a_shift = np.roll(field_a, (int(t * wind * 0.3), int(t * wind)), axis=(0, 1))[
            :height, :width
        ]
        b_shift = np.roll(field_b, (0, int(t * wind * 0.6)), axis=(0, 1))[:height, :width]
        field = 0.7 * a_shift + 0.3 * b_shift
        cloud = np.clip((field - (1 - coverage)) / 0.15, 0.0, 1.0)[..., None]
        gradient = np.clip(rows / max(base, 1.0), 0.0, 1.0)[..., None]
        sky_rgb = top * (1 - gradient) + bottom * gradient
        shade = 0.8 + 0.2 * field[..., None]
        sky_img = sky_rgb * (1 - cloud) + cloud_rgb * shade * cloud
        lit = scene * light
        if float(light) < 0.5:
            # Lit windows: a static light pattern that appears as the scene gets dark.
            lit = np.where(
                windows[..., None], np.array([1.0, 0.85, 0.5]) * (0.5 - float(light)) * 1.6, lit
            )
        img = np.where(sky[..., None], sky_img, lit)
        img = img + rng.normal(0.0, float(noise), img.shape)
        out[t] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out, sky


# Frames of the bundled sample: one fixed camera from day to night, 96 x 128 (small enough for a
# CPU demo, big enough for the sky mask's morphology).
WEBCAM_SAMPLE = {"frames": 64, "height": 96, "width": 128, "phase": "cycle", "seed": 7}


def _write_webcam(folder: Path) -> None:
    from PIL import Image

    frames, sky = synthetic_webcam(**WEBCAM_SAMPLE)  # type: ignore[arg-type]
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame-{i:04d}.png")
    # The known sky, in a subfolder so it is never read as a frame (for scoring, not training).
    (folder / "truth").mkdir()
    (folder / "truth" / "sky.png").write_bytes(mask_png(sky))


register_sample(
    "webcam",
    _write_webcam,
    version="1",
    description="64 frames of a fixed webcam from day to night: real scikit-image textures as "
    "ground, drifting synthetic clouds; truth/sky.png is the known sky",
)


if __name__ == "__main__":
    raise SystemExit(main())
