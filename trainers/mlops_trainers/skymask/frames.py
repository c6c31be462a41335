"""A fixed camera's folder: its frames (named in time order) and its sky mask as a PNG.

A camera folder holds frames directly under it (any fsspec URL), and may hold its own mask,
``skymask.png`` (``mlops skymask FOLDER --out FOLDER/skymask.png``): the tokenizer then uses it
instead of recomputing, and the mask is never read as a frame. Masks are 8-bit PNGs, white = sky.
"""

from __future__ import annotations

import io

import numpy as np

from mlops_trainers import storage
from mlops_trainers.errors import DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "MASK_NAME",
    "frame_urls",
    "load_frames",
    "mask_png",
    "read_image",
    "read_mask_png",
    "write_mask_png",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# A camera folder may hold its mask (``mlops skymask FOLDER --out FOLDER/skymask.png``): the
# tokenizer then uses it instead of recomputing, and the mask is never read as a frame.
MASK_NAME = "skymask.png"


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
