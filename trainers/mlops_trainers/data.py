"""Input pipeline: image folders or file lists at any fsspec URL, padded (never stretched).

* ``list_images(url)``: a folder (every .png/.jpg/.jpeg below it, sorted), a ``.txt`` (one URL or
  path a line) or ``.csv`` file (the ``url``/``path``/``file``/``image`` column, else the first;
  relative entries are relative to the list's folder), or ``sample://<name>``
  (:mod:`mlops_trainers.samples`).
* ``pad_image``: an image larger than the target is scaled down keeping its aspect ratio, then
  every image is centred on a black square canvas; the validity mask (1 = image, 0 = padding)
  lets losses and metrics ignore the padding. Stretching would teach the model distorted shapes;
  padding keeps every pixel's geometry.
* :class:`EpochOrder`: the order of the examples in an epoch is a permutation drawn from
  ``(seed, epoch)`` alone, so any process can rebuild batch ``k`` of epoch ``e`` and a resumed run
  skips exactly the batches it already consumed (Keras' BackupAndRestore only restores the epoch).
* :class:`ImageData`: tf.data with parallel decode and prefetch, or an in-memory uint8 cache of
  the decoded images (``cache=True``, for datasets that fit: 1 byte a pixel and channel).
* :class:`ArrayBatches`: arrays already in memory (code grids, frames, tiles) as batches in the
  same deterministic order, optionally transformed per batch (augmentation).
"""

from __future__ import annotations

import csv
import io
import logging
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlops_trainers import storage
from mlops_trainers.errors import DataError
from mlops_trainers.samples import is_sample_url, resolve_sample

__all__ = [
    "IMAGE_EXTENSIONS",
    "ArrayBatches",
    "EpochOrder",
    "ImageData",
    "batch_to_float",
    "box_mask",
    "list_images",
    "load_images",
    "load_placed",
    "pad_image",
    "place_image",
    "placed_tensors",
    "resolve_data_url",
]

log = logging.getLogger("mlops_trainers")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_LIST_COLUMNS = ("url", "path", "file", "image", "filename")


def resolve_data_url(url: str) -> str:
    """``sample://<name>`` -> its local folder; any other URL unchanged."""
    return resolve_sample(url) if is_sample_url(url) else url


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _read_list(url: str) -> list[str]:
    try:
        text = storage.read_text(url)
    except FileNotFoundError as err:
        raise DataError(f"the file list {url} does not exist") from err
    base = url.rsplit("/", 1)[0] if "/" in url else "."
    entries: list[str] = []
    if url.lower().endswith(".csv"):
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            return []
        header = [cell.strip().lower() for cell in rows[0]]
        column = next((header.index(c) for c in _LIST_COLUMNS if c in header), None)
        if column is None:
            column = 0
        else:
            rows = rows[1:]
        entries = [row[column].strip() for row in rows if len(row) > column and row[column].strip()]
    else:
        entries = [line.strip() for line in text.splitlines()]
        entries = [e for e in entries if e and not e.startswith("#")]
    resolved = []
    for entry in entries:
        if "://" in entry or entry.startswith("/"):
            resolved.append(entry)
        else:
            resolved.append(storage.join(base, entry))
    return resolved


def list_images(url: str) -> list[str]:
    """Every image of a folder, list file or sample, as URLs/paths in a stable order."""
    url = resolve_data_url(url)
    if url.lower().endswith((".txt", ".csv")):
        files = _read_list(url)
    else:
        fs, path = storage.filesystem(url)
        fs.invalidate_cache()
        if not fs.exists(path):
            raise DataError(f"the data URL {url} does not exist")
        if fs.isfile(path):
            found = [path]
        else:
            found = sorted(str(p) for p in fs.find(path) if _is_image(str(p)))
        protocol = storage.split_protocol(url)[0]
        files = [p if protocol == "file" else f"{protocol}://{p}" for p in found]
    files = [f for f in files if _is_image(posixpath.basename(f.split("?")[0]))]
    if not files:
        raise DataError(f"no .png/.jpg images found at {url}")
    return files


# === Decoding and padding (TensorFlow) ===
#
# Per image, the pipeline stays in uint8 (decode, an optional downscale, the pad) and keeps the
# image's box on the canvas (top, left, height, width); the float conversion and the mask are made
# once per batch (:func:`batch_to_float`). Per-image float work and a per-image mask were most of
# the pipeline's cost, and uint8 makes the decoded cache 4x smaller (bench/bench_input.py).


def place_image(image: Any, size: int, *, as_float: bool = False) -> tuple[Any, Any]:
    """(H, W, C) uint8 -> ((size, size, C) uint8 centred on black, int32 [top, left, h, w]).

    Downscales (keeping the aspect ratio, antialiased, rounded back to uint8) only if the image is
    larger than ``size``; a smaller one is padded as is, its pixels untouched. ``as_float``: the
    pixels as float32 in [0, 1] instead, a downscaled image not rounded (what
    :func:`load_images` returns: its callers' numbers do not move by a rounding).
    """
    import tensorflow as tf

    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    longest = tf.maximum(height, width)
    channels = image.shape[-1]
    pixels = tf.cast(image, tf.float32) / 255.0 if as_float else tf.cast(image, tf.uint8)

    def shrink() -> tuple[Any, Any, Any]:
        scale = float(size) / tf.cast(longest, tf.float32)
        new_h = tf.clip_by_value(
            tf.cast(tf.round(tf.cast(height, tf.float32) * scale), tf.int32), 1, size
        )
        new_w = tf.clip_by_value(
            tf.cast(tf.round(tf.cast(width, tf.float32) * scale), tf.int32), 1, size
        )
        if as_float:
            resized = tf.image.resize(pixels, tf.stack([new_h, new_w]), antialias=True)
            return tf.clip_by_value(resized, 0.0, 1.0), new_h, new_w
        resized = tf.image.resize(image, tf.stack([new_h, new_w]), antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8), new_h, new_w

    pixels, new_h, new_w = tf.cond(longest > size, shrink, lambda: (pixels, height, width))
    top = (size - new_h) // 2
    left = (size - new_w) // 2
    # tf.pad, not tf.image.pad_to_bounding_box: the same zeros without its checks and reshapes.
    padded = tf.pad(pixels, [[top, size - new_h - top], [left, size - new_w - left], [0, 0]])
    padded = tf.ensure_shape(padded, [size, size, channels])
    return padded, tf.stack([top, left, new_h, new_w])


def box_mask(boxes: Any, size: int) -> Any:
    """(B, 4) boxes -> (B, size, size, 1) float32 masks: 1 inside each image's box."""
    import tensorflow as tf

    boxes = tf.cast(boxes, tf.int32)
    grid = tf.range(size)[None, :]
    rows = (grid >= boxes[:, 0:1]) & (grid < boxes[:, 0:1] + boxes[:, 2:3])  # (B, size)
    cols = (grid >= boxes[:, 1:2]) & (grid < boxes[:, 1:2] + boxes[:, 3:4])
    inside = rows[:, :, None] & cols[:, None, :]
    return tf.cast(inside, tf.float32)[..., None]


def batch_to_float(batch: Mapping[str, Any], size: int) -> dict[str, Any]:
    """``{"image": uint8, "box": int32}`` batch -> ``{"image": float32 in [0, 1], "mask"}``
    (an image already float is kept)."""
    import tensorflow as tf

    image = tf.convert_to_tensor(batch["image"])
    if image.dtype == tf.uint8:
        image = tf.cast(image, tf.float32) * (1.0 / 255.0)
    return {"image": image, "mask": box_mask(batch["box"], size)}


def pad_image(image: Any, size: int) -> tuple[Any, Any]:
    """(H, W, C) uint8 -> ((size, size, C) float32 in [0, 1], (size, size, 1) float32 mask).

    :func:`place_image`, as floats: for one image outside a pipeline (a sky mask, a preview).
    """
    padded, box = place_image(image, size, as_float=True)
    out = batch_to_float({"image": padded[None], "box": box[None]}, size)
    return out["image"][0], out["mask"][0]


def _read_file_op(path: Any) -> Any:
    """A tf.string tensor with the bytes of ``path`` (local: TF reads; remote: fsspec)."""
    import tensorflow as tf

    def read(p: Any) -> bytes:
        return storage.read_bytes(p.numpy().decode("utf-8"))

    data = tf.py_function(read, [path], tf.string)
    data.set_shape([])
    return data


def _decode_fn(size: int, channels: int, local: bool, as_float: bool = False) -> Any:
    import tensorflow as tf

    def decode(path: Any) -> dict[str, Any]:
        data = tf.io.read_file(path) if local else _read_file_op(path)
        image = tf.io.decode_image(data, channels=channels, dtype=tf.uint8, expand_animations=False)
        image.set_shape([None, None, channels])
        pixels, box = place_image(image, size, as_float=as_float)
        return {"image": pixels, "box": box}

    return decode


def _file_dataset(files: Sequence[str], size: int, channels: int, as_float: bool = False) -> Any:
    """The files decoded and placed, uint8 (or float) ``{"image", "box"}`` per file, in order."""
    import tensorflow as tf

    local = all("://" not in f for f in files)
    ds = tf.data.Dataset.from_tensor_slices(np.asarray(files, dtype=object).astype(str))
    return ds.map(
        _decode_fn(size, channels, local, as_float),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def load_placed(
    files: Sequence[str], size: int, channels: int, *, as_float: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Decode and place ``files``: ((N, size, size, C) uint8 or float32, (N, 4) int32 boxes),
    read-only views of :func:`placed_tensors`."""
    images, boxes = placed_tensors(files, size, channels, as_float=as_float)
    return np.asarray(images), np.asarray(boxes)


def placed_tensors(
    files: Sequence[str], size: int, channels: int, *, as_float: bool = False
) -> tuple[Any, Any]:
    """:func:`load_placed` as TF tensors in host memory, concatenated once from the decoded
    batches (no copy through NumPy on the way)."""
    import tensorflow as tf

    images, boxes = [], []
    ds = _file_dataset(files, size, channels, as_float)
    try:
        for batch in ds.batch(64).prefetch(tf.data.AUTOTUNE):
            images.append(batch["image"])
            boxes.append(batch["box"])
    except tf.errors.OpError as err:
        raise DataError(f"cannot read/decode the training images: {err.message}") from err
    if not images:
        raise DataError("no images to load")
    # Host memory even where a GPU is (the batches are made by tf.data, on the CPU).
    with tf.device("/cpu:0"):
        return tf.concat(images, 0), tf.concat(boxes, 0)


def to_float(images: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Placed uint8 images and their boxes as float32 images in [0, 1] and masks."""
    out = batch_to_float({"image": images, "box": boxes}, size)
    return out["image"].numpy(), out["mask"].numpy()


def load_images(files: Sequence[str], size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode and pad ``files``: ((N, size, size, C) float32, (N, size, size, 1) float32); a
    downscaled image is not rounded to uint8 on the way (unlike :class:`ImageData`'s cache)."""
    return to_float(*load_placed(files, size, channels, as_float=True), size)


# === Deterministic epochs ===


@dataclass(frozen=True)
class EpochOrder:
    """Which examples batch ``k`` of epoch ``e`` holds: a function of ``(seed, e)`` only.

    An epoch is ``steps_per_epoch * batch_size`` examples: permutations of all ``num_items``
    drawn from ``(seed, epoch)`` and concatenated until long enough.
    """

    num_items: int
    batch_size: int
    steps_per_epoch: int
    seed: int

    def indices(self, epoch: int, start_step: int = 0) -> np.ndarray:
        needed = self.steps_per_epoch * self.batch_size
        rng = np.random.default_rng([self.seed, epoch])
        parts = []
        total = 0
        while total < needed:
            parts.append(rng.permutation(self.num_items))
            total += self.num_items
        order = np.concatenate(parts)[:needed]
        return order[start_step * self.batch_size :]


def default_steps(num_items: int, batch_size: int, steps_per_epoch: int | None) -> int:
    """``steps_per_epoch``, or one pass over the data (at least one step)."""
    if steps_per_epoch is not None:
        return steps_per_epoch
    return max(1, num_items // batch_size)


@dataclass
class ImageData:
    """Padded images with masks, batched deterministically per (epoch, step)."""

    files: Sequence[str]
    image_size: int
    channels: int
    batch_size: int
    seed: int
    steps_per_epoch_config: int | None = None
    cache: bool = False
    # The uint8 cache as TF tensors in host memory, (images, boxes), and the one function that
    # gathers a batch of it as floats (built with the cache, traced once).
    _cached: tuple[Any, Any] | None = field(default=None, init=False, repr=False)
    _gather: Any = field(default=None, init=False, repr=False)

    @property
    def steps_per_epoch(self) -> int:
        return default_steps(len(self.files), self.batch_size, self.steps_per_epoch_config)

    @property
    def order(self) -> EpochOrder:
        return EpochOrder(len(self.files), self.batch_size, self.steps_per_epoch, self.seed)

    def placed(self) -> tuple[np.ndarray, np.ndarray]:
        """All images decoded and placed, uint8, and their boxes (cached after the first call;
        read-only views of the cache, no copy)."""
        images, boxes = self._cache()
        return np.asarray(images), np.asarray(boxes)

    def _cache(self) -> tuple[Any, Any]:
        import tensorflow as tf

        if self._cached is None:
            # np.asarray of a CPU tensor shares its buffer: placed() views it without a copy.
            self._cached = placed_tensors(self.files, self.image_size, self.channels)
            size, batch = self.image_size, self.batch_size
            cached_images, cached_boxes = self._cached

            @tf.function(input_signature=[tf.TensorSpec([batch], tf.int64)])  # type: ignore[untyped-decorator]
            def gather(index: Any) -> dict[str, Any]:
                picked = {
                    "image": tf.gather(cached_images, index),
                    "box": tf.gather(cached_boxes, index),
                }
                return batch_to_float(picked, size)

            self._gather = gather
        return self._cached

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All images and masks decoded, as float32 (the cache stays uint8)."""
        return to_float(*self.placed(), self.image_size)

    def first(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``count`` images in file order (a fixed set for reconstructions)."""
        if self._cached is not None:
            images, boxes = self.placed()
            return to_float(images[:count], boxes[:count], self.image_size)
        return load_images(self.files[:count], self.image_size, self.channels)

    def batches(self, epoch: int, start_step: int = 0) -> Iterable[Any]:
        import tensorflow as tf

        index = self.order.indices(epoch, start_step)
        if self.cache:
            # The first epoch decodes every file once (in parallel); later ones only gather. Per
            # epoch only the order is new: a dataset of batch indices, mapped by the gather
            # traced once. (Slicing the cache per image in this order and batching again copied
            # it twice, and a new map function was traced every epoch: bench/bench_input.py's
            # epoch 2 measures what that cost.) Without tf.data's default graph rewrites: they
            # run again at every epoch's iterator, and had nothing to fuse here (no map+batch, no
            # shuffle+repeat); an epoch of 33 scikit-image batches ran 1.2-1.3x faster without them.
            self._cache()
            steps = len(index) // self.batch_size
            by_batch = index[: steps * self.batch_size].reshape(steps, self.batch_size)
            options = tf.data.Options()
            options.experimental_optimization.apply_default_optimizations = False
            cached: Iterable[Any] = (
                tf.data.Dataset.from_tensor_slices(by_batch.astype(np.int64))
                .map(self._gather, num_parallel_calls=tf.data.AUTOTUNE)
                .prefetch(tf.data.AUTOTUNE)
                .with_options(options)
            )
            return cached
        files = np.asarray(self.files, dtype=object)[index].astype(str)
        ds = _file_dataset(list(files), self.image_size, self.channels)
        size = self.image_size
        batched: Iterable[Any] = (
            ds.batch(self.batch_size, drop_remainder=True)
            .map(lambda b: batch_to_float(b, size), num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE)
        )
        return batched


# A batch of ArrayBatches: a dict of arrays, or a tuple of arrays, like its `arrays`.
Batch = Any


@dataclass
class ArrayBatches:
    """In-memory arrays as batches drawn per ``(seed, epoch)``: the same ``(epoch, start_step)``
    gives the same batches in any process, so a resumed run sees the batches it had not consumed.

    ``arrays`` is a dict (batches are dicts with its keys, e.g. ``{"image", "mask"}``) or a tuple
    (batches are tuples, e.g. ``(x, y)`` for ``train_on_batch(x, y)``) of arrays sharing their
    first dimension. ``transform(batch, epoch, step)``, if given, makes the batch the model gets;
    drawing its randomness from ``(seed, epoch, step)`` alone keeps augmentation resumable.
    """

    arrays: Mapping[str, np.ndarray] | tuple[np.ndarray, ...]
    batch_size: int
    seed: int
    steps_per_epoch_config: int | None = None
    transform: Callable[[Batch, int, int], Batch] | None = None

    def __post_init__(self) -> None:
        lengths = {len(a) for a in self._values()}
        if len(lengths) != 1:
            raise ValueError(f"the arrays of a batch differ in length: {sorted(lengths)}")

    def _values(self) -> list[np.ndarray]:
        if isinstance(self.arrays, Mapping):
            return list(self.arrays.values())
        return list(self.arrays)

    def __len__(self) -> int:
        return len(self._values()[0])

    @property
    def steps_per_epoch(self) -> int:
        return default_steps(len(self), self.batch_size, self.steps_per_epoch_config)

    def take(self, index: np.ndarray) -> Batch:
        """The examples at ``index``, shaped like ``arrays``."""
        if isinstance(self.arrays, Mapping):
            return {k: v[index] for k, v in self.arrays.items()}
        return tuple(a[index] for a in self.arrays)

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        order = EpochOrder(len(self), self.batch_size, self.steps_per_epoch, self.seed)
        index = order.indices(epoch, start_step)
        for k in range(len(index) // self.batch_size):
            batch = self.take(index[k * self.batch_size : (k + 1) * self.batch_size])
            if self.transform is not None:
                batch = self.transform(batch, epoch, start_step + k)
            yield batch
