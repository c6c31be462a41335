"""Synthetic webcam sequences with a known sky: the ``sample://webcam`` data set and the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from mlops_trainers.samples import register_sample
from mlops_trainers.skymask.frames import mask_png

__all__ = ["WEBCAM_SAMPLE", "synthetic_webcam"]


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
