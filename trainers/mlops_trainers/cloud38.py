"""The segmenter's dataset layout, the converter from 38-Cloud, and synthetic cloud scenes.

Layout (any fsspec URL ``<root>``)::

    <root>/filelists/train.csv   header ``scene,mask``; paths relative to <root>
    <root>/filelists/val.csv
    <root>/filelists/test.csv
    <root>/scenes/<id>.tif       (H, W, bands) multi-band TIFF (uint16/uint8/float), or .npy
    <root>/masks/<id>.png        8-bit, cloud > 127

Scenes may be any size (whole Landsat scenes or 384 x 384 patches): the segmenter tiles them
(:mod:`mlops_trainers.tiling`), it never resizes them.

**38-Cloud** (Mohajerani & Saeedi 2019, "Cloud-Net", arXiv:1901.10077;
https://github.com/SorourMo/38-Cloud-A-Cloud-Segmentation-Dataset) ships one single-band TIFF per
band and patch: ``train_red/red_<patch>.TIF``, ``train_green/green_<patch>.TIF``,
``train_blue/blue_<patch>.TIF``, ``train_nir/nir_<patch>.TIF``, ``train_gt/gt_<patch>.TIF``, and
``training_patches_38-Cloud.csv`` listing the patch names (``patch_<n>_<row>_by_<col>_<scene>``).
:func:`convert_38cloud` stacks the bands into one TIFF per patch and splits train/val/test *by
Landsat scene* (a patch's neighbours would otherwise leak into the held-out splits), dropping the
all-zero patches outside the scene footprint (about a fifth of 38-Cloud).

``sample://clouds`` is a synthetic dataset in this layout with known masks (:func:`synthetic_cloud_scene`).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from mlops_trainers import storage
from mlops_trainers.errors import DataError
from mlops_trainers.samples import register_sample

__all__ = [
    "BANDS_38CLOUD",
    "SPLITS",
    "SceneRecord",
    "convert_38cloud",
    "encode_mask",
    "encode_scene",
    "is_38cloud",
    "is_dataset",
    "load_mask",
    "load_scene",
    "main",
    "read_filelist",
    "synthetic_cloud_scene",
    "write_filelist",
    "write_synthetic_dataset",
]

SPLITS = ("train", "val", "test")
BANDS_38CLOUD = ("red", "green", "blue", "nir")


# === Layout ===


@dataclass(frozen=True)
class SceneRecord:
    """One row of a filelist: a scene and its mask, relative to the dataset root."""

    scene: str
    mask: str

    @property
    def id(self) -> str:
        return Path(self.scene).stem


def is_dataset(root: str) -> bool:
    """True if ``root`` holds ``filelists/train.csv``."""
    return storage.exists(storage.join(root, "filelists", "train.csv"))


def is_38cloud(root: str) -> bool:
    """True if ``root`` looks like the 38-Cloud training folder (``train_red/``, ``train_gt/`` ...)."""
    names = set(storage.list_dir(root))
    return {"train_red", "train_gt"} <= names


def read_filelist(root: str, split: str) -> list[SceneRecord]:
    """The records of ``<root>/filelists/<split>.csv``."""
    url = storage.join(root, "filelists", f"{split}.csv")
    try:
        text = storage.read_text(url)
    except FileNotFoundError as err:
        raise DataError(
            f"{url} not found: a segmenter dataset needs filelists/{{train,val,test}}.csv "
            "(or point `data` at a 38-Cloud training folder to convert it)"
        ) from err
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and not {"scene", "mask"} <= set(rows[0]):
        raise DataError(f"{url}: expected the header 'scene,mask', got {list(rows[0])}")
    return [SceneRecord(r["scene"].strip(), r["mask"].strip()) for r in rows if r["scene"].strip()]


def write_filelist(root: str, split: str, records: Iterable[SceneRecord]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["scene", "mask"])
    for r in records:
        writer.writerow([r.scene, r.mask])
    storage.write_text(storage.join(root, "filelists", f"{split}.csv"), buf.getvalue())


def _to_float(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        # 38-Cloud's Landsat 8 digital numbers are 16 bit; Cloud-Net also divides by 65535.
        return array.astype(np.float32) / 65535.0
    return array.astype(np.float32)


def load_scene(url: str) -> np.ndarray:
    """A scene as float32 (H, W, bands), integers scaled to [0, 1]."""
    data = storage.read_bytes(url)
    lower = url.lower()
    if lower.endswith((".tif", ".tiff")):
        import tifffile

        array = np.asarray(tifffile.imread(io.BytesIO(data)))
    elif lower.endswith(".npy"):
        array = np.load(io.BytesIO(data), allow_pickle=False)
    else:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            array = np.asarray(img)
    if array.ndim == 2:
        array = array[..., None]
    return _to_float(array)


def load_mask(url: str) -> np.ndarray:
    """A mask as float32 (H, W) of 0/1 (PNG/TIFF: > half the dtype's range; .npy: > 0.5)."""
    scene = load_scene(url)
    return (scene[..., 0] > 0.5).astype(np.float32)


def encode_scene(scene: np.ndarray) -> bytes:
    """TIFF bytes of an (H, W, bands) array (floats in [0, 1] are stored as uint16)."""
    import tifffile

    if scene.dtype.kind == "f":
        scene = (np.clip(scene, 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, scene)
    return buf.getvalue()


def encode_mask(mask: np.ndarray) -> bytes:
    """8-bit PNG bytes of a mask (cloud = 255)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.where(mask > 0.5, 255, 0).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# === 38-Cloud ===

_PATCH = re.compile(r"patch_\d+_\d+_by_\d+_(?P<scene>.+)$")


def _landsat_scene(patch: str) -> str:
    match = _PATCH.match(patch)
    return match.group("scene") if match else patch


def _split_of(key: str, val_fraction: float, test_fraction: float) -> str:
    # A stable hash (not Python's salted hash()): the same scene lands in the same split on every
    # machine and every run.
    u = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def _patch_names(source: str, prefix: str) -> list[str]:
    listed = [n for n in storage.list_dir(source) if n.lower().endswith(".csv")]
    for name in listed:
        rows = list(csv.reader(io.StringIO(storage.read_text(storage.join(source, name)))))
        if rows and rows[0] and rows[0][0].strip().lower() == "name":
            return [r[0].strip() for r in rows[1:] if r and r[0].strip()]
    # No patch list: every red band file names a patch.
    red = storage.list_dir(storage.join(source, f"{prefix}_red"))
    return sorted(
        re.sub(r"^red_", "", Path(n).stem) for n in red if n.lower().endswith((".tif", ".tiff"))
    )


def _band_url(source: str, prefix: str, band: str, patch: str) -> str:
    folder = storage.join(source, f"{prefix}_{band}")
    for ext in (".TIF", ".tif", ".tiff", ".TIFF"):
        url = storage.join(folder, f"{band}_{patch}{ext}")
        if storage.exists(url):
            return url
    raise DataError(f"38-Cloud band file missing: {folder}/{band}_{patch}.TIF")


def convert_38cloud(
    source: str,
    dest: str,
    *,
    prefix: str = "train",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    skip_empty: bool = True,
    limit: int | None = None,
) -> dict[str, int]:
    """Convert a 38-Cloud folder (``<prefix>_red/`` ... ``<prefix>_gt/``) into the segmenter layout.

    Returns the number of patches written per split. Splits are by Landsat scene (stable hash of
    the scene id), so no scene contributes patches to two splits.
    """
    if not storage.exists(storage.join(source, f"{prefix}_gt")):
        raise DataError(
            f"{source}: no {prefix}_gt/ folder; only 38-Cloud's training part has per-patch masks"
        )
    names = _patch_names(source, prefix)
    if limit is not None:
        names = names[:limit]
    records: dict[str, list[SceneRecord]] = {s: [] for s in SPLITS}
    for patch in names:
        import tifffile

        bands = [
            np.asarray(
                tifffile.imread(io.BytesIO(storage.read_bytes(_band_url(source, prefix, b, patch))))
            )
            for b in BANDS_38CLOUD
        ]
        scene = np.stack(bands, axis=-1)
        if skip_empty and not scene.any():
            continue
        gt = np.asarray(
            tifffile.imread(io.BytesIO(storage.read_bytes(_band_url(source, prefix, "gt", patch))))
        )
        record = SceneRecord(f"scenes/{patch}.tif", f"masks/{patch}.png")
        storage.write_bytes(storage.join(dest, record.scene), encode_scene(scene))
        # 38-Cloud's gt is 0/255 (some copies 0/1): anything non-zero is cloud.
        storage.write_bytes(
            storage.join(dest, record.mask), encode_mask((gt > 0).astype(np.float32))
        )
        records[_split_of(_landsat_scene(patch), val_fraction, test_fraction)].append(record)
    if not any(records.values()):
        raise DataError(f"{source}: no non-empty 38-Cloud patches found")
    for split, rows in records.items():
        write_filelist(dest, split, rows)
    return {s: len(r) for s, r in records.items()}


# === Synthetic scenes (sample://clouds and the tests) ===

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


# === CLI ===


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mlops_trainers.cloud38 SOURCE DEST``: convert 38-Cloud to the segmenter layout."""
    parser = argparse.ArgumentParser(
        prog="python -m mlops_trainers.cloud38", description=main.__doc__
    )
    parser.add_argument("source", help="38-Cloud training folder (holds train_red/ ... train_gt/)")
    parser.add_argument("dest", help="output dataset root (fsspec URL or path)")
    parser.add_argument("--prefix", default="train")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--keep-empty", action="store_true", help="keep all-zero patches")
    parser.add_argument("--limit", type=int, default=None, help="convert only the first N patches")
    args = parser.parse_args(argv)
    try:
        counts = convert_38cloud(
            args.source,
            args.dest,
            prefix=args.prefix,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            skip_empty=not args.keep_empty,
            limit=args.limit,
        )
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(", ".join(f"{k}: {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
