"""Image artifacts: PNG encoding, grids, labelled figures and metric curves (NumPy + Pillow,
no TensorFlow)."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["encode_png", "image_grid", "labelled_rows", "metric_curves", "to_uint8"]


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


# === Labelled figures (Pillow's own font: no plotting library in the trainer image) ===

_INK = (20, 20, 20)
_GRID = (215, 215, 215)
_LINE = (31, 119, 180)
_WHITE = (255, 255, 255)


def _font(size: int = 12) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _rgb(image: np.ndarray) -> np.ndarray:
    array = to_uint8(np.asarray(image))
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])


def labelled_rows(
    rows: Sequence[tuple[str, np.ndarray]],
    *,
    column_labels: Sequence[str] | None = None,
    title: str | None = None,
    min_side: int = 64,
    gap: int = 2,
) -> np.ndarray:
    """A figure of image rows, each named on its left (``input``, ``reconstruction``...), with
    optional column headers and a title: (H, W, 3) uint8.

    ``rows`` are ``(label, images)`` with images (N, h, w[, C]) of one size, or one (h, w[, C])
    image. Small images are enlarged by an integer factor (nearest neighbour: pixels stay pixels)
    to at least ``min_side``, so a 28-pixel Fashion-MNIST grid stays readable.
    """
    from PIL import Image, ImageDraw

    prepared = []
    for label, images in rows:
        array = np.asarray(images)
        if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3, 4)):
            array = array[None]
        prepared.append((label, [_rgb(a) for a in array]))
    height = max(img.shape[0] for _, imgs in prepared for img in imgs)
    width = max(img.shape[1] for _, imgs in prepared for img in imgs)
    scale = max(1, math.ceil(min_side / max(1, min(height, width))))
    font = _font()
    label_w = 8 + max(int(font.getlength(label)) for label, _ in prepared)
    line = 16
    top = (line if title else 0) + (line if column_labels else 0)
    columns = max(len(imgs) for _, imgs in prepared)
    cell_w, cell_h = width * scale + gap, height * scale + gap
    canvas = Image.new("RGB", (label_w + columns * cell_w, top + len(prepared) * cell_h), _WHITE)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 1), title, fill=_INK, font=font)
    if column_labels:
        y = line if title else 0
        for c, text in enumerate(column_labels[:columns]):
            draw.text((label_w + c * cell_w + 2, y + 1), text, fill=_INK, font=font)
    for r, (label, imgs) in enumerate(prepared):
        y = top + r * cell_h
        draw.text((4, y + (height * scale) // 2 - 6), label, fill=_INK, font=font)
        for c, img in enumerate(imgs):
            tile = Image.fromarray(img)
            if scale > 1:
                tile = tile.resize(
                    (img.shape[1] * scale, img.shape[0] * scale), Image.Resampling.NEAREST
                )
            canvas.paste(tile, (label_w + c * cell_w, y))
    return np.asarray(canvas)


def metric_curves(
    rows: Sequence[Mapping[str, Any]], *, title: str = "", x: str = "epoch"
) -> np.ndarray:
    """One small labelled plot per metric of ``metrics.csv`` rows (x: ``epoch``): (H, W, 3)."""
    from PIL import Image, ImageDraw

    skip = {x, "global_step", "time"}
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in skip and k not in names]
    series: dict[str, list[tuple[float, float]]] = {}
    for name in names:
        points = []
        for row in rows:
            try:
                xv, yv = float(row[x]), float(row[name])
            except (KeyError, TypeError, ValueError):
                continue
            if math.isfinite(xv) and math.isfinite(yv):
                points.append((xv, yv))
        if points:
            series[name] = points
    font = _font(11)
    panel_w, panel_h, cols = 260, 150, 3
    count = max(1, len(series))
    nrows = math.ceil(count / cols)
    head = 20
    canvas = Image.new("RGB", (cols * panel_w, head + nrows * panel_h), _WHITE)
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 3), title or "metrics", fill=_INK, font=_font(13))
    for i, (name, points) in enumerate(series.items()):
        ox, oy = (i % cols) * panel_w, head + (i // cols) * panel_h
        left, right, top, bottom = ox + 52, ox + panel_w - 10, oy + 18, oy + panel_h - 22
        draw.text((ox + 52, oy + 2), name, fill=_INK, font=font)
        draw.rectangle((left, top, right, bottom), outline=_GRID)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(ys), max(ys)
        if x1 == x0:
            x0, x1 = x0 - 1, x1 + 1
        if y1 == y0:  # a flat curve (a constant learning rate): a band around it
            pad = abs(y0) * 0.05 or 1.0
            y0, y1 = y0 - pad, y1 + pad

        def at(px: float, py: float) -> tuple[float, float]:
            return (
                left + (px - x0) / (x1 - x0) * (right - left),  # noqa: B023
                bottom - (py - y0) / (y1 - y0) * (bottom - top),  # noqa: B023
            )

        for value, ypos in ((y1, top), (y0, bottom)):
            draw.text((ox + 2, ypos - 6), f"{value:.3g}", fill=_INK, font=font)
        for value in sorted({x0, x1}):
            px, _ = at(value, y0)
            draw.text((px - 6, bottom + 3), f"{value:g}", fill=_INK, font=font)
        draw.text(((left + right) // 2 - 12, bottom + 3), x, fill=(110, 110, 110), font=font)
        coords = [at(px, py) for px, py in points]
        if len(coords) > 1:
            draw.line(coords, fill=_LINE, width=2)
        for cx, cy in coords:
            draw.ellipse((cx - 2, cy - 2, cx + 2, cy + 2), fill=_LINE)
    return np.asarray(canvas)
