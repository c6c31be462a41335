"""Convert **38-Cloud** into the segmenter's layout (:mod:`mlops_trainers.cloud38.layout`).

38-Cloud (Mohajerani & Saeedi 2019, "Cloud-Net", arXiv:1901.10077;
https://github.com/SorourMo/38-Cloud-A-Cloud-Segmentation-Dataset) ships one single-band TIFF per
band and patch: ``train_red/red_<patch>.TIF``, ``train_green/green_<patch>.TIF``,
``train_blue/blue_<patch>.TIF``, ``train_nir/nir_<patch>.TIF``, ``train_gt/gt_<patch>.TIF``, and
``training_patches_38-Cloud.csv`` listing the patch names (``patch_<n>_<row>_by_<col>_<scene>``).
:func:`convert_38cloud` stacks the bands into one TIFF per patch and splits train/val/test *by
Landsat scene* (a patch's neighbours would otherwise leak into the held-out splits), dropping the
all-zero patches outside the scene footprint (about a fifth of 38-Cloud).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
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
from mlops_trainers.errors import DataError

__all__ = ["BANDS_38CLOUD", "convert_38cloud", "is_38cloud"]

BANDS_38CLOUD = ("red", "green", "blue", "nir")


def is_38cloud(root: str) -> bool:
    """True if ``root`` looks like the 38-Cloud training folder (``train_red/``, ``train_gt/`` ...)."""
    names = set(storage.list_dir(root))
    return {"train_red", "train_gt"} <= names


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
