"""Synthetic 4-band scenes with known cloud masks: the ``sample://clouds`` data set and the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from mlops_trainers import storage
from mlops_trainers.cloud38.layout import (
    SPLITS,
    SceneRecord,
    encode_mask,
    encode_scene,
    write_filelist,
)
from mlops_trainers.samples import register_sample

__all__ = ["synthetic_cloud_scene", "write_synthetic_dataset"]

# Top-of-atmosphere reflectance (red, green, blue, near infrared) of the land covers we draw, and
# of clouds. Vegetation is dark in red and bright in NIR (the "red edge"); clouds are bright and
# flat in all four, which is what a 4-band cloud detector learns (cf. Landsat's CFMask, Foga et al.
# 2017). Bright sand is the hard negative: bright in the visible, but not as flat and not as white.
_COVERS = {
    "water": (0.04, 0.06, 0.09, 0.02),
    "vegetation": (0.05, 0.10, 0.04, 0.40),
    "soil": (0.20, 0.16, 0.12, 0.28),
    "urban": (0.26, 0.25, 0.24, 0.28),
    "sand": (0.45, 0.38, 0.28, 0.42),
}
_CLOUD = (0.78, 0.78, 0.80, 0.72)


def _fractal(
    rng: np.random.Generator, shape: tuple[int, int], scale: float, octaves: int = 4
) -> np.ndarray:
    out = np.zeros(shape, dtype=np.float32)
    for o in range(octaves):
        layer = ndimage.gaussian_filter(
            rng.standard_normal(shape).astype(np.float32), scale / 2**o, mode="wrap"
        )
        out += layer / (layer.std() + 1e-8) * 0.5**o
    return out


def _texture(name: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    from skimage import data

    img = getattr(data, name)().astype(np.float32) / 255.0
    if img.ndim == 3:
        img = img.mean(axis=-1)
    img = np.tile(img, (-(-height // img.shape[0]) + 1, -(-width // img.shape[1]) + 1))
    y = int(rng.integers(0, img.shape[0] - height + 1))
    x = int(rng.integers(0, img.shape[1] - width + 1))
    return img[y : y + height, x : x + width]


def synthetic_cloud_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    coverage: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A 4-band (R, G, B, NIR) float32 scene in [0, 1] and its cloud mask (float32 0/1).

    Land covers come from a smooth random map textured with real scikit-image photographs
    (grass, gravel, brick); clouds are thresholded fractal noise with soft, semi-transparent edges
    and cast offset shadows. The mask is where the cloud opacity is at least 0.5. ``coverage`` is
    the cloud fraction (None: 10 % clear scenes, 10 % overcast, otherwise 5-70 %).
    """
    shape = (height, width)
    if coverage is None:
        u = rng.random()
        coverage = 0.0 if u < 0.1 else 1.0 if u < 0.2 else float(rng.uniform(0.05, 0.7))
    # Land cover: quantiles of a smooth field, so covers form patches like fields and towns.
    field = _fractal(rng, shape, scale=max(shape) / 4)
    names = list(_COVERS)
    use_sand = rng.random() < 0.3
    cuts = np.quantile(field, [0.15, 0.55, 0.8, 0.93 if use_sand else 1.0])
    cover = np.digitize(field, cuts)  # 0..4
    texture = {
        "water": np.full(shape, 0.5, dtype=np.float32),
        "vegetation": _texture("grass", height, width, rng),
        "soil": _texture("gravel", height, width, rng),
        "urban": _texture("brick", height, width, rng),
        "sand": _texture("gravel", height, width, rng) * 0.5 + 0.25,
    }
    ground = np.zeros((*shape, 4), dtype=np.float32)
    for i, name in enumerate(names):
        sel = cover == i
        ground[sel] = (
            np.array(_COVERS[name], dtype=np.float32) * (0.7 + 0.6 * texture[name][sel])[:, None]
        )
    # Clouds: opacity rises from 0 to 1 over a soft band around the threshold, so edges are thin
    # and semi-transparent as in real imagery; the label is opacity >= 0.5.
    clouds = _fractal(rng, shape, scale=max(shape) / 5)
    if coverage <= 0:
        alpha = np.zeros(shape, dtype=np.float32)
    elif coverage >= 1:
        alpha = np.ones(shape, dtype=np.float32)
    else:
        threshold = float(np.quantile(clouds, 1.0 - coverage))
        alpha = np.clip((clouds - threshold) / 0.6 + 0.5, 0.0, 1.0)
    shadow = np.roll(alpha, (int(height * 0.06), int(width * 0.04)), axis=(0, 1))
    ground = ground * (1.0 - 0.55 * shadow[..., None])
    puff = 0.9 + 0.1 * np.tanh(_fractal(rng, shape, scale=3.0, octaves=2))
    cloud = np.array(_CLOUD, dtype=np.float32) * puff[..., None]
    scene = ground * (1.0 - alpha[..., None]) + cloud * alpha[..., None]
    scene = scene + rng.normal(0.0, 0.005, scene.shape).astype(np.float32)
    return np.clip(scene, 0.0, 1.0).astype(np.float32), (alpha >= 0.5).astype(np.float32)


def write_synthetic_dataset(
    root: str,
    counts: dict[str, int] | None = None,
    *,
    seed: int = 0,
    min_side: int = 80,
    max_side: int = 160,
) -> dict[str, int]:
    """Write synthetic scenes of random sizes (not multiples of any tile) in the layout above."""
    counts = counts or {"train": 24, "val": 6, "test": 6}
    rng = np.random.default_rng(seed)
    for split in SPLITS:
        records = []
        for i in range(counts.get(split, 0)):
            h, w = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
            scene, mask = synthetic_cloud_scene(rng, h, w)
            record = SceneRecord(f"scenes/{split}-{i:04d}.tif", f"masks/{split}-{i:04d}.png")
            storage.write_bytes(storage.join(root, record.scene), encode_scene(scene))
            storage.write_bytes(storage.join(root, record.mask), encode_mask(mask))
            records.append(record)
        write_filelist(root, split, records)
    return {s: counts.get(s, 0) for s in SPLITS}


def _write_clouds(folder: Path) -> None:
    write_synthetic_dataset(str(folder), seed=38)


register_sample(
    "clouds",
    _write_clouds,
    version="1",
    description="36 synthetic 4-band scenes (80-160 px) with known cloud masks, in the segmenter "
    "layout (filelists/, scenes/, masks/)",
)
