"""The segmenter's dataset layout: scenes, masks and split file lists under one root.

Layout (any fsspec URL ``<root>``)::

    <root>/filelists/train.csv   header ``scene,mask[,height,width,cloud]``; paths relative to
                                 <root>; the optional columns (written by the converter and
                                 the synthetic data) spare a reader opening every scene to learn
                                 its size and cloud fraction
    <root>/filelists/val.csv
    <root>/filelists/test.csv
    <root>/scenes/<id>.tif       (H, W, bands) multi-band TIFF (uint16/uint8/float), or .npy
    <root>/masks/<id>.png        8-bit, cloud > 127

Scenes may be any size (whole Landsat scenes or 384 x 384 patches): the segmenter tiles them
(:mod:`mlops_trainers.tiling`), it never resizes them. 38-Cloud converts into this layout
(:mod:`mlops_trainers.cloud38.convert`); ``sample://clouds`` is a synthetic dataset in it
(:mod:`mlops_trainers.cloud38.synthetic`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlops_trainers import storage
from mlops_trainers.errors import DataError

__all__ = [
    "SPLITS",
    "SceneRecord",
    "encode_mask",
    "encode_scene",
    "is_dataset",
    "load_mask",
    "load_scene",
    "read_filelist",
    "scene_shape",
    "write_filelist",
]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SceneRecord:
    """One row of a filelist: a scene and its mask, relative to the dataset root, and, when
    known, the scene's size and its mask's cloud fraction."""

    scene: str
    mask: str
    height: int | None = None
    width: int | None = None
    cloud: float | None = None

    @property
    def id(self) -> str:
        return Path(self.scene).stem


def is_dataset(root: str) -> bool:
    """True if ``root`` holds ``filelists/train.csv``."""
    return storage.exists(storage.join(root, "filelists", "train.csv"))


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

    def number(row: dict[str, str], key: str, kind: type) -> Any:
        value = (row.get(key) or "").strip()
        return kind(value) if value else None

    return [
        SceneRecord(
            r["scene"].strip(),
            r["mask"].strip(),
            number(r, "height", int),
            number(r, "width", int),
            number(r, "cloud", float),
        )
        for r in rows
        if r["scene"].strip()
    ]


def write_filelist(root: str, split: str, records: Iterable[SceneRecord]) -> None:
    records = list(records)
    extra = all(r.height is not None and r.width is not None for r in records) and bool(records)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["scene", "mask", "height", "width", "cloud"] if extra else ["scene", "mask"])
    for r in records:
        if extra:
            cloud = "" if r.cloud is None else f"{r.cloud:.6f}"
            writer.writerow([r.scene, r.mask, r.height, r.width, cloud])
        else:
            writer.writerow([r.scene, r.mask])
    storage.write_text(storage.join(root, "filelists", f"{split}.csv"), buf.getvalue())


def scene_shape(url: str) -> tuple[int, int]:
    """(height, width) of a scene file, from its header only (TIFF, .npy, PNG)."""
    fs, path = storage.filesystem(url)
    lower = url.lower()
    with fs.open(path, "rb") as f:
        if lower.endswith((".tif", ".tiff")):
            import tifffile

            with tifffile.TiffFile(f) as tif:
                shape = tif.pages[0].shape
            return int(shape[0]), int(shape[1])
        if lower.endswith(".npy"):
            version = np.lib.format.read_magic(f)
            header = np.lib.format._read_array_header(f, version)  # type: ignore[attr-defined]
            return int(header[0][0]), int(header[0][1])
        from PIL import Image

        with Image.open(f) as img:
            width, height = img.size
        return int(height), int(width)


def _to_float(array: np.ndarray) -> np.ndarray:
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(array.dtype)
    out = array.astype(np.float32)
    if scale is not None:
        # 38-Cloud's Landsat 8 digital numbers are 16 bit; Cloud-Net also divides by 65535.
        out *= np.float32(1.0 / scale)
    return out


def load_scene(url: str) -> np.ndarray:
    """A scene as float32 (H, W, bands), integers scaled to [0, 1]."""
    array = _read_array(url)
    if array.ndim == 2:
        array = array[..., None]
    return _to_float(array)


def _read_array(url: str) -> np.ndarray:
    """The pixels of a TIFF, .npy or image file, as stored."""
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
    return array


def load_mask(url: str) -> np.ndarray:
    """A mask as float32 (H, W) of 0/1 (PNG/TIFF: > half the dtype's range; .npy: > 0.5)."""
    raw = _read_array(url)
    if raw.ndim == 3:
        raw = raw[..., 0]
    half = {np.dtype(np.uint8): 127, np.dtype(np.uint16): 32767}.get(raw.dtype)
    return (raw > half if half is not None else raw > 0.5).astype(np.float32)


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
    # compress_level 1: masks are mostly runs of 0 and 255, level 6 saves little and costs 3x.
    image = Image.fromarray(np.where(mask > 0.5, 255, 0).astype(np.uint8))
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
