"""``sample://fashion-mnist-canvases``: multi-object canvases composed from Fashion-MNIST.

Each canvas is a black ``CANVAS`` x ``CANVAS`` square holding 1 to ``MAX_OBJECTS`` Fashion-MNIST
articles, each scaled to a random side in ``OBJECT_SIDES`` and placed at a random spot (a few
tries to keep objects mostly apart; a later object occludes an earlier one where its own pixels
are). The folder holds ``images/NNNNN.png`` (the training images of the ``vle`` trainer) and
``objects.npz``: ``masks`` (N, MAX_OBJECTS, H, W) bool, each object's *visible* pixels, and
``labels`` (N, MAX_OBJECTS) int16, the Fashion-MNIST class or -1 for no object, so tests can ask
where a model's masks fall. Deterministic (a fixed seed) and fast: about a second.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from mlops_trainers.errors import DataError
from mlops_trainers.samples import FASHION_MNIST_DIRS, _read_idx_images, register_sample

__all__ = ["CANVAS", "MAX_OBJECTS", "compose_canvases", "read_fashion_mnist"]

CANVAS = 32
COUNT = 2000
MAX_OBJECTS = 3
OBJECT_SIDES = (12, 20)
INK = 40  # a pixel above this (of 255) belongs to its object
SEED = 20260602


def _read_idx_labels(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, count = (int.from_bytes(data[i : i + 4], "big") for i in (0, 4))
    if magic != 2049:
        raise DataError(f"{path} is not an IDX label file (magic {magic})")
    return np.frombuffer(data, dtype=np.uint8, offset=8)[:count]


def read_fashion_mnist() -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's training images (N, 28, 28) uint8 and labels (N,) from Debian's package."""
    for directory in FASHION_MNIST_DIRS:
        images = Path(directory) / "train-images-idx3-ubyte.gz"
        labels = Path(directory) / "train-labels-idx1-ubyte.gz"
        if images.exists() and labels.exists():
            return _read_idx_images(images), _read_idx_labels(labels)
    raise DataError(
        "sample://fashion-mnist-canvases needs the Debian package dataset-fashion-mnist "
        f"(looked in {', '.join(FASHION_MNIST_DIRS)}): apt-get install dataset-fashion-mnist"
    )


def compose_canvases(
    images: np.ndarray,
    labels: np.ndarray,
    count: int,
    *,
    size: int = CANVAS,
    seed: int = SEED,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` canvases (N, size, size) uint8, visible object masks (N, MAX_OBJECTS, size,
    size) bool and labels (N, MAX_OBJECTS) int16 (-1: no object)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    canvases = np.zeros((count, size, size), np.uint8)
    masks = np.zeros((count, MAX_OBJECTS, size, size), bool)
    classes = np.full((count, MAX_OBJECTS), -1, np.int16)
    for n in range(count):
        boxes: list[tuple[int, int, int]] = []
        for o in range(int(rng.integers(1, MAX_OBJECTS + 1))):
            index = int(rng.integers(len(images)))
            side = int(rng.integers(OBJECT_SIDES[0], OBJECT_SIDES[1] + 1))
            article = np.asarray(
                Image.fromarray(images[index]).resize((side, side), Image.Resampling.BILINEAR)
            )
            # A few tries for a spot that overlaps the others little (boxes' overlap < 20 %).
            for _ in range(10):
                y, x = (int(v) for v in rng.integers(0, size - side + 1, 2))
                if all(_overlap((y, x, side), b) < 0.2 for b in boxes):
                    break
            boxes.append((y, x, side))
            ink = article > INK
            region = (slice(y, y + side), slice(x, x + side))
            canvases[n][region] = np.where(ink, article, canvases[n][region])
            masks[n, :o, region[0], region[1]] &= ~ink  # occluded by the newcomer
            masks[n, o][region] = ink
            classes[n, o] = labels[index]
    return canvases, masks, classes


def _overlap(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    (ay, ax, aside), (by, bx, bside) = a, b
    h = max(0, min(ay + aside, by + bside) - max(ay, by))
    w = max(0, min(ax + aside, bx + bside) - max(ax, bx))
    return h * w / min(aside, bside) ** 2


def _write_canvases(folder: Path) -> None:
    from PIL import Image

    images, labels = read_fashion_mnist()
    canvases, masks, classes = compose_canvases(images, labels, COUNT)
    out = folder / "images"
    out.mkdir()
    for i, canvas in enumerate(canvases):
        Image.fromarray(canvas).save(out / f"{i:05d}.png", compress_level=1)
    np.savez_compressed(folder / "objects.npz", masks=masks, labels=classes)


register_sample(
    "fashion-mnist-canvases",
    _write_canvases,
    version="1",
    description=f"{COUNT} {CANVAS}x{CANVAS} canvases of 1-{MAX_OBJECTS} Fashion-MNIST articles, "
    "with per-object masks and labels",
)
