"""The image pipeline: uint8 per image, floats and masks per batch, a uint8 cache that serves
later epochs without reading a file (bench/bench_input.py measures it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from mlops_trainers.artifacts import encode_png  # noqa: E402
from mlops_trainers.data import (  # noqa: E402
    ImageData,
    box_mask,
    list_images,
    load_images,
    pad_image,
    place_image,
)


def _images(folder: Path, shapes: list[tuple[int, int]], seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(shapes):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        (folder / f"img-{i:03d}.png").write_bytes(encode_png(pixels))
    return list_images(str(folder))


def test_a_smaller_image_is_centred_untouched_and_its_box_is_the_mask() -> None:
    image = np.arange(5 * 3 * 3, dtype=np.uint8).reshape(5, 3, 3)
    placed, box = place_image(tf.constant(image), 8)
    assert placed.dtype == tf.uint8
    assert box.numpy().tolist() == [1, 2, 5, 3]  # top, left, height, width
    np.testing.assert_array_equal(placed.numpy()[1:6, 2:5], image)
    assert placed.numpy().sum() == image.sum()  # black around it
    floats, mask = pad_image(tf.constant(image), 8)
    np.testing.assert_allclose(floats.numpy()[1:6, 2:5], image / 255.0, rtol=1e-6)
    expected = np.zeros((8, 8, 1), np.float32)
    expected[1:6, 2:5] = 1.0
    np.testing.assert_array_equal(mask.numpy(), expected)


def test_a_larger_image_is_scaled_down_keeping_its_aspect_ratio() -> None:
    image = np.full((40, 20, 3), 200, np.uint8)
    placed, box = place_image(tf.constant(image), 16)
    assert box.numpy().tolist() == [0, 4, 16, 8]
    inside = placed.numpy()[:, 4:12]
    assert np.abs(inside.astype(int) - 200).max() <= 1  # antialiased, rounded back to uint8
    assert placed.numpy()[:, :4].max() == 0 and placed.numpy()[:, 12:].max() == 0


def test_box_masks_of_a_batch() -> None:
    masks = box_mask(tf.constant([[0, 0, 4, 4], [1, 2, 2, 1]]), 4).numpy()
    assert masks.shape == (2, 4, 4, 1)
    assert masks[0].sum() == 16
    assert masks[1, :, :, 0].tolist() == [
        [0, 0, 0, 0],
        [0, 0, 1, 0],
        [0, 0, 1, 0],
        [0, 0, 0, 0],
    ]


def test_cached_and_streamed_batches_are_the_same_and_the_cache_serves_later_epochs(
    tmp_path: Path,
) -> None:
    """The uint8 cache gives the very batches the file pipeline gives; once filled, an epoch reads
    no file (the folder is deleted under it), and the cache holds one byte a pixel and channel."""
    files = _images(tmp_path / "images", [(12, 12), (20, 10), (8, 16), (16, 16)] * 3)
    kw = {"image_size": 16, "channels": 3, "batch_size": 4, "seed": 3}
    streamed = ImageData(files, **kw)
    cached = ImageData(files, cache=True, **kw)
    for epoch in (0, 1):
        a = [{k: v.numpy() for k, v in b.items()} for b in streamed.batches(epoch, 1)]
        b = [{k: v.numpy() for k, v in b.items()} for b in cached.batches(epoch, 1)]
        assert len(a) == len(b) == 2
        for x, y in zip(a, b, strict=True):
            assert x["image"].dtype == np.float32 and x["mask"].shape == (4, 16, 16, 1)
            np.testing.assert_array_equal(x["image"], y["image"])
            np.testing.assert_array_equal(x["mask"], y["mask"])
    images, _ = cached.placed()
    assert images.dtype == np.uint8 and images.nbytes == len(files) * 16 * 16 * 3
    for path in files:
        Path(path).unlink()
    later = list(cached.batches(5))
    assert len(later) == 3
    # Every epoch from the cache ran the one gather, traced once: a new epoch traces nothing.
    assert cached._gather.experimental_get_tracing_count() == 1
    with pytest.raises(tf.errors.NotFoundError):
        list(streamed.batches(5))
    # load_images (previews, code grids) is the same decode, as floats.
    first_images, first_masks = cached.first(2)
    assert first_images.shape == (2, 16, 16, 3) and first_masks.shape == (2, 16, 16, 1)
    assert first_masks[1, :, :, 0].sum() == 16 * 8  # 20x10 scaled to 16x8


def test_load_images_matches_a_hand_padded_image(tmp_path: Path) -> None:
    files = _images(tmp_path / "one", [(6, 4)], seed=1)
    images, masks = load_images(files, 8, 3)
    raw = tf.io.decode_png(tf.io.read_file(files[0]), channels=3).numpy()
    np.testing.assert_allclose(images[0, 1:7, 2:6], raw / 255.0, rtol=1e-6)
    assert masks[0].sum() == 24


def test_load_images_does_not_round_a_downscaled_image() -> None:
    """load_images' floats (the tokenizer's, the MaskGIT prior's) keep a downscale unrounded: the
    uint8 rounding is the cache's alone (rounding there moved a MaskGIT test's held-out bits)."""
    image = np.random.default_rng(2).integers(0, 256, (40, 20, 3), dtype=np.uint8)
    floats, _ = pad_image(tf.constant(image), 16)
    levels = floats.numpy()[:, 4:12] * 255.0
    assert np.abs(levels - np.round(levels)).max() > 1e-3
    placed, _ = place_image(tf.constant(image), 16)
    np.testing.assert_allclose(placed.numpy()[:, 4:12], levels, atol=0.5 + 1e-3)
