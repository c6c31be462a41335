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


def _box3(tiles: np.ndarray) -> np.ndarray:
    """A 3x3 mean over the first band with zero padding: a 'model' with a 1-pixel reach."""
    x = np.pad(tiles[..., 0], ((0, 0), (1, 1), (1, 1)))
    h, w = tiles.shape[1:3]
    out: np.ndarray = sum(x[:, i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0
    return out


@pytest.mark.parametrize("shape", [(70, 45), (16, 16), (5, 90), (1, 1)])
def test_overlap_tiles_join_without_seams(shape: tuple[int, int]) -> None:
    scene = np.random.default_rng(4).random((*shape, 2)).astype(np.float32)
    whole = _box3(scene[None])[0]  # the scene predicted in one piece: no tile borders
    seams = predict_scene(_box3, scene, tile_size=16, batch_size=3)
    joined = predict_scene(_box3, scene, tile_size=16, batch_size=3, overlap=1)
    assert joined.shape == seams.shape == shape
    # With context at least the predictor's reach, the tiles join exactly as the whole scene.
    np.testing.assert_allclose(joined, whole, rtol=1e-6, atol=1e-7)
    if max(shape) > 16:
        # Without it, pixels next to an inner tile border miss their neighbours: seams.
        assert np.abs(seams - whole).max() > 0.01
    # Wider context changes nothing more for a local predictor.
    np.testing.assert_allclose(
        predict_scene(_box3, scene, 16, batch_size=5, overlap=7), whole, rtol=1e-6, atol=1e-7
    )


def test_overlap_must_leave_a_centre() -> None:
    with pytest.raises(ValueError, match="2 \\* overlap < tile_size"):
        predict_scene(_box3, np.zeros((8, 8, 1)), tile_size=8, overlap=4)
    with pytest.raises(ValueError, match="overlap must be >= 0"):
        predict_scene(_box3, np.zeros((8, 8, 1)), tile_size=8, overlap=-1)
