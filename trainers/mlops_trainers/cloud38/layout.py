"""The segmenter's dataset layout: scenes, masks and split file lists under one root.

Layout (any fsspec URL ``<root>``)::

    <root>/filelists/train.csv   header ``scene,mask``; paths relative to <root>
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
    "write_filelist",
]

SPLITS = ("train", "val", "test")


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
