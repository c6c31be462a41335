"""Image artifacts: PNG encoding and grids (NumPy + Pillow, no TensorFlow)."""

from __future__ import annotations

import io
import math

import numpy as np

__all__ = ["encode_png", "image_grid", "to_uint8"]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 as is; floats are taken as [0, 1] and clipped."""
    if image.dtype == np.uint8:
        return image
    return (np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an (H, W), (H, W, 1) or (H, W, 3) image."""
    from PIL import Image

    array = to_uint8(np.asarray(image))
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def image_grid(images: np.ndarray, columns: int | None = None, gap: int = 2) -> np.ndarray:
    """Tile (N, H, W, C) images into one (rows*H, columns*W, C) image with a white gap."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    count, height, width, channels = images.shape
    columns = columns or max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(count / columns))
    white = 255 if images.dtype == np.uint8 else 1.0
    grid = np.full(
        (rows * (height + gap) - gap, columns * (width + gap) - gap, channels),
        white,
        dtype=images.dtype,
    )
    for i in range(count):
        r, c = divmod(i, columns)
        grid[
            r * (height + gap) : r * (height + gap) + height,
            c * (width + gap) : c * (width + gap) + width,
        ] = images[i]
    return grid
