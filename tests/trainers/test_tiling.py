"""Tiling: untile(tile(x)) == x exactly, over many shapes; crops and padding validity."""

from __future__ import annotations

import numpy as np
import pytest
from mlops_trainers.tiling import TileLayout, crop, pad_to_multiple, predict_scene, tile, untile


def _shapes(count: int, seed: int = 0) -> list[tuple[tuple[int, ...], int]]:
    """Random scene shapes (with and without band axes) and tile sizes, edge cases first."""
    rng = np.random.default_rng(seed)
    cases: list[tuple[tuple[int, ...], int]] = [
        ((1, 1), 1),
        ((1, 1), 7),
        ((7, 7), 7),
        ((8, 7), 7),
        ((64, 64), 16),
        ((65, 63, 4), 16),
        ((3, 200, 2), 32),
    ]
    for _ in range(count):
        h, w = (int(v) for v in rng.integers(1, 150, size=2))
        bands = [(), (1,), (int(rng.integers(2, 6)),), (2, 3)][int(rng.integers(4))]
        cases.append(((h, w, *bands), int(rng.integers(1, 70))))
    return cases


@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.uint8, bool])
def test_untile_is_the_exact_inverse_of_tile(dtype: type) -> None:
    rng = np.random.default_rng(1)
    for shape, size in _shapes(60):
        x: np.ndarray = (rng.random(shape) * 1000).astype(dtype)
        tiles, valid, layout = tile(x, size)
        assert tiles.shape == (layout.count, size, size, *shape[2:])
        assert tiles.dtype == x.dtype
        back = untile(tiles, layout)
        assert back.shape == x.shape
        assert np.array_equal(back, x), (shape, size)
        # Exactly the real pixels are valid, and padding is filled with zeros.
        assert valid.sum() == shape[0] * shape[1]
        assert not tiles[valid == 0].any()


def test_layout_counts_and_padding_at_bottom_right() -> None:
    layout = TileLayout.for_shape(100, 130, 64)
    assert (layout.rows, layout.cols, layout.count, layout.padded_shape) == (2, 3, 6, (128, 192))
    x = np.arange(100 * 130, dtype=np.float32).reshape(100, 130) + 1
    padded, valid = pad_to_multiple(x, 64)
    assert padded.shape == (128, 192)
    assert np.array_equal(padded[:100, :130], x)
    assert valid[:100, :130].all() and not valid[100:].any() and not valid[:, 130:].any()


def test_crop_outside_the_scene_is_padding() -> None:
    x = np.arange(1, 26, dtype=np.float32).reshape(5, 5)
    out, valid = crop(x, -2, 3, 4)
    assert out.shape == valid.shape == (4, 4)
    assert np.array_equal(out[2:, :2], x[:2, 3:])
    assert valid.sum() == 4 and not out[valid == 0].any()
    empty, nothing = crop(x, 10, 10, 3)
    assert not empty.any() and not nothing.any()


def test_predict_scene_tiles_predicts_and_untiles() -> None:
    rng = np.random.default_rng(2)
    scene = rng.random((70, 45, 3)).astype(np.float32)
    calls = []

    def mean_bands(tiles: np.ndarray) -> np.ndarray:
        calls.append(len(tiles))
        return np.asarray(tiles.mean(axis=-1))

    out = predict_scene(mean_bands, scene, tile_size=16, batch_size=4)
    np.testing.assert_allclose(out, scene.mean(axis=-1), rtol=1e-6)
    assert sum(calls) == 5 * 3 and max(calls) <= 4


def test_untile_rejects_a_wrong_tile_count() -> None:
    tiles, _, layout = tile(np.zeros((10, 10)), 4)
    with pytest.raises(ValueError, match="expected 9 tiles"):
        untile(tiles[:-1], layout)
    with pytest.raises(ValueError, match="tile_size"):
        TileLayout.for_shape(5, 5, 0)
