"""Synthetic 4-band scenes with known cloud masks: the ``sample://clouds`` data set and the tests.

Also 38-Cloud's own layouts, generated (there is no internet here, and the real data set is
12 GB): :func:`write_38cloud_training` (``train_<band>/``, ``train_gt/``, the patch CSV, 384 x 384
uint16 patches named ``patch_<n>_<row>_by_<col>_<Landsat scene id>``) and
:func:`write_38cloud_test` (``test_<band>/``, the test CSV and ``Entire_scene_gts/``: whole
scenes zero-padded, centred, to whole patches before cutting, as 38-Cloud's scenes were).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlops_trainers import storage
from mlops_trainers.cloud38.layout import (
    SPLITS,
    SceneRecord,
    encode_mask,
    encode_scene,
    write_filelist,
)
from mlops_trainers.samples import register_sample

__all__ = [
    "PATCH_38CLOUD",
    "landsat_scene_id",
    "synthetic_cloud_scene",
    "write_38cloud_test",
    "write_38cloud_training",
    "write_synthetic_dataset",
]

PATCH_38CLOUD = 384  # 38-Cloud's patch side
_BANDS = ("red", "green", "blue", "nir")

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
    from scipy import ndimage  # imported on use: the sample registry is read without SciPy

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
            record = SceneRecord(
                f"scenes/{split}-{i:04d}.tif",
                f"masks/{split}-{i:04d}.png",
                h,
                w,
                float(mask.mean()),
            )
            storage.write_bytes(storage.join(root, record.scene), encode_scene(scene))
            storage.write_bytes(storage.join(root, record.mask), encode_mask(mask))
            records.append(record)
        write_filelist(root, split, records)
    return {s: counts.get(s, 0) for s in SPLITS}


def _write_clouds(folder: Path) -> None:
    write_synthetic_dataset(str(folder), seed=38)


# === 38-Cloud's own layouts ===


def landsat_scene_id(i: int) -> str:
    """A Landsat 8 scene id in 38-Cloud's form (path/row and dates vary with ``i``)."""
    return f"LC08_L1TP_{(i * 7) % 233 + 1:03d}{(i * 11) % 248 + 1:03d}_2016{(i % 12) + 1:02d}{(i % 28) + 1:02d}_20170{(i % 9) + 1}24_01_T1"


def _write_band_tiffs(
    root: str, prefix: str, name: str, scene: np.ndarray, gt: np.ndarray | None
) -> None:
    import tifffile

    digital = (np.clip(scene, 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)
    for b, band in enumerate(_BANDS):
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, digital[..., b])
        storage.write_bytes(
            storage.join(root, f"{prefix}_{band}", f"{band}_{name}.TIF"), buffer.getvalue()
        )
    if gt is not None:
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, np.where(gt > 0.5, 255, 0).astype(np.uint8))
        storage.write_bytes(storage.join(root, f"{prefix}_gt", f"gt_{name}.TIF"), buffer.getvalue())


def _write_patch_csv(root: str, filename: str, names: Sequence[str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name"])
    writer.writerows([n] for n in names)
    storage.write_text(storage.join(root, filename), buffer.getvalue())


def write_38cloud_training(
    root: str,
    patches: int,
    *,
    scenes: int = 18,
    distinct: int = 16,
    empty_fraction: float = 0.05,
    size: int = PATCH_38CLOUD,
    seed: int = 0,
) -> list[str]:
    """A 38-Cloud training folder of ``patches`` patches (38-Cloud: 8400 from 18 scenes).

    ``distinct`` patches are drawn (:func:`synthetic_cloud_scene`) and reused under the other
    names, so a full-size folder costs seconds and, locally, no disk beyond those few: the
    files of a reused patch are hard links to its first copy (a bucket gets real copies). About
    ``empty_fraction`` of the patches are all zero, like 38-Cloud's patches outside a scene's
    footprint. Returns the patch names, in CSV order.
    """
    rng = np.random.default_rng(seed)
    pool = [synthetic_cloud_scene(rng, size, size) for _ in range(distinct)]
    names: list[str] = []
    first: dict[int, str] = {}
    per_scene = -(-patches // scenes)
    side = int(np.ceil(np.sqrt(per_scene)))
    local = storage.is_local(root)
    for n in range(patches):
        scene_index, k = divmod(n, per_scene)
        row, col = divmod(k, side)
        name = f"patch_{n + 1}_{row + 1}_by_{col + 1}_{landsat_scene_id(scene_index)}"
        names.append(name)
        empty = rng.random() < empty_fraction
        key = -1 if empty else int(rng.integers(distinct))
        if key in first and local:
            source = first[key]
            for band in (*_BANDS, "gt"):
                target = storage.split_protocol(
                    storage.join(root, f"train_{band}", f"{band}_{name}.TIF")
                )[1]
                os.link(
                    storage.split_protocol(
                        storage.join(root, f"train_{band}", f"{band}_{source}.TIF")
                    )[1],
                    target,
                )
            continue
        first[key] = name
        if empty:
            scene = np.zeros((size, size, 4), np.float32)
            gt = np.zeros((size, size), np.float32)
        else:
            scene, gt = pool[key]
        _write_band_tiffs(root, "train", name, scene, gt)
    _write_patch_csv(root, "training_patches_38-Cloud.csv", names)
    return names


def write_38cloud_test(
    root: str, shapes: Sequence[tuple[int, int]], *, seed: int = 0, size: int = PATCH_38CLOUD
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A 38-Cloud test folder: whole scenes of ``shapes`` with their ``Entire_scene_gts``.

    Each scene (corners outside its footprint zero, as in Landsat's tilted frames) is
    zero-padded, centred, to whole ``size`` patches and cut row by row into
    ``test_<band>/<band>_patch_<n>_<row>_by_<col>_<scene id>.TIF`` (row, col from 1). Returns
    ``{scene id: (scene (H, W, 4) float32, ground truth (H, W) 0/1)}``.
    """
    rng = np.random.default_rng(seed)
    names, out, n = [], {}, 0
    for i, (height, width) in enumerate(shapes):
        scene_id = landsat_scene_id(100 + i)
        scene, gt = synthetic_cloud_scene(rng, height, width, coverage=float(rng.uniform(0.2, 0.6)))
        yy, xx = np.mgrid[0:height, 0:width]
        outside = (yy + xx < min(height, width) // 4) | (
            (height - yy) + (width - xx) < min(height, width) // 4
        )
        scene[outside] = 0.0
        gt[outside] = 0.0
        out[scene_id] = (scene, gt)
        rows, cols = -(-height // size), -(-width // size)
        top, left = (rows * size - height) // 2, (cols * size - width) // 2
        padded = np.zeros((rows * size, cols * size, 4), np.float32)
        padded[top : top + height, left : left + width] = scene
        for r in range(rows):
            for c in range(cols):
                n += 1
                name = f"patch_{n}_{r + 1}_by_{c + 1}_{scene_id}"
                names.append(name)
                patch = padded[r * size : (r + 1) * size, c * size : (c + 1) * size]
                _write_band_tiffs(root, "test", name, patch, None)
        import tifffile

        buffer = io.BytesIO()
        tifffile.imwrite(buffer, np.where(gt > 0.5, 255, 0).astype(np.uint8))
        storage.write_bytes(
            storage.join(root, "Entire_scene_gts", f"edited_corrected_gts_{scene_id}.TIF"),
            buffer.getvalue(),
        )
    _write_patch_csv(root, "test_patches_38-Cloud.csv", names)
    return out


register_sample(
    "clouds",
    _write_clouds,
    version="2",
    description="36 synthetic 4-band scenes (80-160 px) with known cloud masks, in the segmenter "
    "layout (filelists/, scenes/, masks/)",
)
