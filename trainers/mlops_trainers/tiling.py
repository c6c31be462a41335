"""Tiling of large scenes: crop, pad, cut into square tiles, and put the tiles back exactly.

Satellite scenes (a Landsat 8 scene is about 8000 x 8000 pixels) do not fit a U-Net in one piece,
and resizing would change the ground sampling distance the model was trained at, so a scene is
*cut*, never stretched: it is padded at its bottom/right borders to a whole number of tiles, and a
validity mask marks the padding so that losses and metrics ignore it. Tiles do not overlap, which
makes :func:`untile` the exact inverse of :func:`tile` (a property test checks
``untile(tile(x)) == x`` bit for bit over many shapes). Prediction may add context around each
tile (:func:`predict_scene`'s ``overlap``) and still puts the kept centres back with :func:`untile`.

Pure NumPy: the data pipeline, the ONNX predictor and the tests use it without TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["TileLayout", "crop", "pad_to_multiple", "predict_scene", "tile", "untile"]


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of one scene came from: enough to put them back exactly."""

    height: int
    width: int
    tile_size: int
    rows: int
    cols: int

    @property
    def padded_shape(self) -> tuple[int, int]:
        return self.rows * self.tile_size, self.cols * self.tile_size

    @property
    def count(self) -> int:
        return self.rows * self.cols

    @classmethod
    def for_shape(cls, height: int, width: int, tile_size: int) -> TileLayout:
        if tile_size < 1:
            raise ValueError(f"tile_size must be >= 1, got {tile_size}")
        if height < 1 or width < 1:
            raise ValueError(f"scene must be at least 1x1, got {height}x{width}")
        rows = -(-height // tile_size)  # ceil division: a partial tile at the border is padded
        cols = -(-width // tile_size)
        return cls(height=height, width=width, tile_size=tile_size, rows=rows, cols=cols)


def crop(
    image: np.ndarray,
    top: int,
    left: int,
    size: int | tuple[int, int],
    fill: float = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``size`` pixels at (top, left); what falls outside the image is ``fill``.

    Returns ``(crop, valid)`` where ``valid`` is a float32 (h, w) mask, 1 on real pixels and 0 on
    padding. Offsets may be negative or run past the border: random training crops near a border
    therefore keep the scene's scale and simply carry some padding, as the full-scene tiles do.
    """
    h_out, w_out = (size, size) if isinstance(size, int) else size
    height, width = image.shape[:2]
    out = np.full((h_out, w_out, *image.shape[2:]), fill, dtype=image.dtype)
    valid = np.zeros((h_out, w_out), dtype=np.float32)
    y0, y1 = max(top, 0), min(top + h_out, height)
    x0, x1 = max(left, 0), min(left + w_out, width)
    if y0 < y1 and x0 < x1:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = image[y0:y1, x0:x1]
        valid[y0 - top : y1 - top, x0 - left : x1 - left] = 1.0
    return out, valid


def pad_to_multiple(
    image: np.ndarray, multiple: int, fill: float = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Pad at the bottom/right to a multiple of ``multiple``; returns ``(padded, valid)``."""
    layout = TileLayout.for_shape(image.shape[0], image.shape[1], multiple)
    return crop(image, 0, 0, layout.padded_shape, fill=fill)


def tile(
    image: np.ndarray, tile_size: int, fill: float = 0
) -> tuple[np.ndarray, np.ndarray, TileLayout]:
    """Cut a (H, W[, C...]) scene into non-overlapping square tiles, row-major.

    Returns ``(tiles, valid, layout)``: tiles (N, t, t[, C...]), valid (N, t, t) float32 marking real
    pixels, and the layout :func:`untile` needs.
    """
    layout = TileLayout.for_shape(image.shape[0], image.shape[1], tile_size)
    padded, valid = pad_to_multiple(image, tile_size, fill=fill)
    t = tile_size
    rest = padded.shape[2:]
    # (rows*t, cols*t, ...) -> (rows, t, cols, t, ...) -> (rows, cols, t, t, ...): a pure reshape,
    # so no pixel is ever interpolated or duplicated.
    tiles = padded.reshape(layout.rows, t, layout.cols, t, *rest)
    tiles = np.moveaxis(tiles, 2, 1).reshape(layout.count, t, t, *rest)
    vgrid = valid.reshape(layout.rows, t, layout.cols, t)
    vtiles = np.moveaxis(vgrid, 2, 1).reshape(layout.count, t, t)
    return np.ascontiguousarray(tiles), np.ascontiguousarray(vtiles), layout


def untile(tiles: np.ndarray, layout: TileLayout) -> np.ndarray:
    """Inverse of :func:`tile`: reassemble (N, t, t[, C...]) tiles and drop the padding."""
    t = layout.tile_size
    if tiles.shape[0] != layout.count or tiles.shape[1:3] != (t, t):
        raise ValueError(
            f"expected {layout.count} tiles of {t}x{t} for a {layout.height}x{layout.width} scene, "
            f"got array of shape {tiles.shape}"
        )
    rest = tiles.shape[3:]
    grid = tiles.reshape(layout.rows, layout.cols, t, t, *rest)
    full = np.moveaxis(grid, 2, 1).reshape(layout.rows * t, layout.cols * t, *rest)
    return np.ascontiguousarray(full[: layout.height, : layout.width])


def predict_scene(
    predict_tiles: Callable[[np.ndarray], Any],
    scene: np.ndarray,
    tile_size: int,
    batch_size: int = 8,
    overlap: int = 0,
) -> np.ndarray:
    """Tile a scene, run ``predict_tiles`` on batches of tiles, and untile the result.

    ``predict_tiles`` maps an (n, t, t, C) float32 batch to (n, t, t[, K]); it may be a Keras
    model's ``predict_on_batch``, an ONNX Runtime session wrapper, or anything callable, so the same
    code serves training-time previews and the exported model.

    ``overlap`` > 0 is the overlap-tile strategy of the U-Net paper (Ronneberger et al. 2015,
    arXiv:1505.04597, Fig. 2): each tile is predicted with ``overlap`` pixels of context on every
    side and only its centre, ``tile_size - 2 * overlap`` pixels a side, is kept. A convolution
    near a tile border sees zero padding instead of the neighbouring pixels, which shows as seams
    along the tile grid; with enough context the kept centres join without them. Context outside
    the scene is zero, as the padding of the training tiles is. The centres are put together by
    :func:`untile`, so the result is still exactly (H, W).
    """
    scene = scene.astype(np.float32, copy=False)
    if overlap == 0:
        tiles, _, layout = tile(scene, tile_size)
        outputs = [
            np.asarray(predict_tiles(tiles[i : i + batch_size]))
            for i in range(0, layout.count, batch_size)
        ]
        return untile(np.concatenate(outputs, axis=0), layout)
    core = tile_size - 2 * overlap
    if overlap < 0 or core < 1:
        raise ValueError(
            f"overlap must be >= 0 and leave a centre: 2 * overlap < tile_size, got overlap "
            f"{overlap} for tile_size {tile_size}"
        )
    layout = TileLayout.for_shape(scene.shape[0], scene.shape[1], core)
    rows, cols = layout.padded_shape
    window, _ = crop(scene, -overlap, -overlap, (rows + 2 * overlap, cols + 2 * overlap))
    origins = [(r * core, c * core) for r in range(layout.rows) for c in range(layout.cols)]
    centres = []
    # Tiles are cut batch by batch: overlapping tiles of a large scene would not fit in memory.
    for i in range(0, len(origins), batch_size):
        batch = np.stack(
            [window[y : y + tile_size, x : x + tile_size] for y, x in origins[i : i + batch_size]]
        )
        out = np.asarray(predict_tiles(batch))
        centres.append(out[:, overlap : overlap + core, overlap : overlap + core])
    return untile(np.concatenate(centres, axis=0), layout)
