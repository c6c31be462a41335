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
import json
import re
from pathlib import Path

import numpy as np

from mlops_trainers import storage
from mlops_trainers.cloud38.layout import (
    SPLITS,
    SceneRecord,
    encode_mask,
    encode_scene,
    load_mask,
    scene_shape,
    write_filelist,
)
from mlops_trainers.errors import DataError

__all__ = [
    "BANDS_38CLOUD",
    "CONVERTER_VERSION",
    "cache_root",
    "convert_38cloud",
    "convert_cached",
    "is_38cloud",
    "source_fingerprint",
]

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


def _band_files(source: str, prefix: str) -> dict[str, dict[str, str]]:
    """For each band and gt: patch name -> file URL, from one listing per folder (a bucket
    answers one listing faster than thousands of existence checks)."""
    files: dict[str, dict[str, str]] = {}
    for band in (*BANDS_38CLOUD, "gt"):
        folder = storage.join(source, f"{prefix}_{band}")
        found: dict[str, str] = {}
        for name in storage.list_dir(folder):
            stem, _, ext = name.rpartition(".")
            if ext.lower() in ("tif", "tiff") and stem.startswith(f"{band}_"):
                found.setdefault(stem[len(band) + 1 :], storage.join(folder, name))
        files[band] = found
    return files


def _band_url(
    files: dict[str, dict[str, str]], source: str, prefix: str, band: str, patch: str
) -> str:
    try:
        return files[band][patch]
    except KeyError:
        folder = storage.join(source, f"{prefix}_{band}")
        raise DataError(f"38-Cloud band file missing: {folder}/{band}_{patch}.TIF") from None


def _convert_patch(
    source: str,
    dest: str,
    prefix: str,
    patch: str,
    *,
    skip_empty: bool,
    files: dict[str, dict[str, str]],
    done: set[str],
) -> SceneRecord | None:
    """One patch: its stacked scene and its mask under ``dest`` (None: an empty patch)."""
    import tifffile

    record = SceneRecord(f"scenes/{patch}.tif", f"masks/{patch}.png")
    scene_url, mask_url = storage.join(dest, record.scene), storage.join(dest, record.mask)
    if patch in done:
        # Written by an earlier, interrupted conversion (files appear whole: local writes are
        # renamed into place, GCS objects appear at the end of their upload): not redone.
        mask = load_mask(mask_url)
        height, width = scene_shape(scene_url)
        return SceneRecord(record.scene, record.mask, height, width, float(mask.mean()))

    def read(band: str) -> np.ndarray:
        url = _band_url(files, source, prefix, band, patch)
        return np.asarray(tifffile.imread(io.BytesIO(storage.read_bytes(url))))

    scene = np.stack([read(b) for b in BANDS_38CLOUD], axis=-1)
    if skip_empty and not scene.any():
        return None
    # 38-Cloud's gt is 0/255 (some copies 0/1): anything non-zero is cloud.
    mask = (read("gt") > 0).astype(np.float32)
    # The mask first, the scene last: a scene file is the sign that both are complete.
    storage.write_bytes(mask_url, encode_mask(mask))
    storage.write_bytes(scene_url, encode_scene(scene))
    return SceneRecord(
        record.scene, record.mask, int(scene.shape[0]), int(scene.shape[1]), float(mask.mean())
    )


def convert_38cloud(
    source: str,
    dest: str,
    *,
    prefix: str = "train",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    skip_empty: bool = True,
    limit: int | None = None,
    workers: int = 8,
) -> dict[str, int]:
    """Convert a 38-Cloud folder (``<prefix>_red/`` ... ``<prefix>_gt/``) into the segmenter layout.

    Returns the number of patches written per split. Splits are by Landsat scene (stable hash of
    the scene id), so no scene contributes patches to two splits. Patches are converted by
    ``workers`` threads (a bucket is latency-bound), one patch in memory per thread; a patch
    already converted by an interrupted run is kept, not redone. The file lists record each
    patch's size and cloud fraction.
    """
    from concurrent.futures import ThreadPoolExecutor

    if not storage.exists(storage.join(source, f"{prefix}_gt")):
        raise DataError(
            f"{source}: no {prefix}_gt/ folder; only 38-Cloud's training part has per-patch masks"
        )
    names = _patch_names(source, prefix)
    if limit is not None:
        names = names[:limit]
    records: dict[str, list[SceneRecord]] = {s: [] for s in SPLITS}
    files = _band_files(source, prefix)
    # Patches an interrupted conversion finished: their scene file exists (written last).
    done = {
        name.rsplit(".", 1)[0]
        for name in storage.list_dir(storage.join(dest, "scenes"))
        if name.endswith(".tif")
    }
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cloud38-convert") as pool:
        converted = pool.map(
            lambda patch: _convert_patch(
                source, dest, prefix, patch, skip_empty=skip_empty, files=files, done=done
            ),
            names,
        )
        for patch, record in zip(names, converted, strict=True):
            if record is not None:
                split = _split_of(_landsat_scene(patch), val_fraction, test_fraction)
                records[split].append(record)
    if not any(records.values()):
        raise DataError(f"{source}: no non-empty 38-Cloud patches found")
    for split, rows in records.items():
        write_filelist(dest, split, rows)
    return {s: len(r) for s, r in records.items()}


# === The conversion cache ===

# Bump when the converted files change: the cache key includes it.
CONVERTER_VERSION = "2"
CACHE_DIR = ".cache"
COMPLETE = "complete.json"


def source_fingerprint(source: str, prefix: str = "train") -> str:
    """A digest of a 38-Cloud folder's listing: every band, gt and CSV file's name and size, and
    the store's own checksum where it keeps one (GCS: md5Hash/crc32c, else its ETag; a local
    folder: the modification time). Cheap (one listing, no file read), and a changed file
    changes it."""
    fs, path = storage.filesystem(source)
    fs.invalidate_cache()
    base = path.rstrip("/")
    entries = []
    for name in storage.list_dir(source):
        if not (name.startswith(f"{prefix}_") or name.lower().endswith(".csv")):
            continue
        found = fs.find(f"{base}/{name}", detail=True)
        for key, info in found.items() if isinstance(found, dict) else []:
            mark = (
                info.get("md5Hash")
                or info.get("crc32c")
                or info.get("ETag")
                or info.get("etag")
                or info.get("mtime")
                or ""
            )
            entries.append(f"{str(key)[len(base) + 1 :]}\t{info.get('size')}\t{mark}")
    entries.sort()
    digest = hashlib.sha256("\n".join(entries).encode())
    return digest.hexdigest()


def cache_root(source: str, cache_prefix: str, *, prefix: str = "train", **options: object) -> str:
    """Where the conversion of ``source`` with ``options`` lives under ``cache_prefix``:
    ``<cache_prefix>/.cache/38cloud-<digest>`` (content-addressed: the source's fingerprint,
    the converter version and the options)."""
    key = json.dumps(
        {
            "source": source_fingerprint(source, prefix),
            "version": CONVERTER_VERSION,
            "prefix": prefix,
            **options,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return storage.join(cache_prefix, CACHE_DIR, f"38cloud-{digest}")


def convert_cached(
    source: str,
    cache_prefix: str,
    *,
    prefix: str = "train",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    skip_empty: bool = True,
    workers: int = 8,
) -> tuple[str, dict[str, int], bool]:
    """Convert ``source`` once under ``cache_prefix`` (every retry and later run reuses it).

    Returns ``(dataset root, patches per split, reused)``. The marker ``complete.json`` is
    written last: a conversion killed midway is resumed by the next attempt (its finished
    patches are kept), never taken for complete.
    """
    options = {
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "skip_empty": skip_empty,
    }
    root = cache_root(source, cache_prefix, prefix=prefix, **options)
    marker = storage.join(root, COMPLETE)
    try:
        done = storage.read_json(marker)
        return root, {k: int(v) for k, v in done["counts"].items()}, True
    except (FileNotFoundError, ValueError, KeyError):
        pass
    counts = convert_38cloud(source, root, prefix=prefix, workers=workers, **options)  # type: ignore[arg-type]
    storage.write_json(
        marker,
        {"source": source, "counts": counts, "version": CONVERTER_VERSION, **options},
    )
    return root, counts, False
