"""Training tiles streamed from the scene files, with bounded memory, in a resumable order.

38-Cloud's 8,400 training patches of 384 x 384 x 4 are 20 GB as float32: they cannot be held in
memory like the small synthetic sets, so :class:`TileStream` reads the scenes a batch needs when
it needs them (a local folder or a bucket, through fsspec), on ``workers`` threads, a few batches
ahead of training. What it holds at once is bounded:

* ``prefetch + 1`` batches of tiles (being built, waiting, being trained on),
* a least-recently-used cache of decoded scenes of at most ``cache_bytes`` (a scene cut into
  several tiles is read once per epoch when its tiles come close together, and a small data set
  ends up read once),
* one decoded scene per worker thread.

A tile is ``(scene, row, col)`` of the scene's non-overlapping grid (padded at the bottom/right
borders and marked invalid there, as :func:`mlops_trainers.tiling.tile` does). The tiles of an
epoch are a permutation drawn from ``(seed, epoch)`` (:class:`~mlops_trainers.data.EpochOrder`)
and augmented per ``(seed, epoch, step)``, so ``batches(epoch, k)`` yields exactly what an
uninterrupted epoch did from its k-th batch: a resumed run continues the same stream.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlops_trainers import storage
from mlops_trainers.cloud38 import layout
from mlops_trainers.data import EpochOrder, default_steps
from mlops_trainers.errors import DataError
from mlops_trainers.tiling import crop

__all__ = ["CACHE_BYTES", "PREFETCH", "SceneCache", "TileStream", "load_pair"]

CACHE_BYTES = 256 << 20
PREFETCH = 2  # batches built ahead of the one being trained on

Pair = tuple[np.ndarray, np.ndarray]


def load_pair(root: str, record: layout.SceneRecord, bands: int) -> Pair:
    """A scene (H, W, bands) float32 and its mask (H, W) float32, checked against each other."""
    scene = layout.load_scene(storage.join(root, record.scene))
    mask = layout.load_mask(storage.join(root, record.mask))
    if scene.shape[-1] != bands:
        raise DataError(
            f"trainer.config.bands is {bands} but {record.scene} has {scene.shape[-1]} bands"
        )
    if mask.shape != scene.shape[:2]:
        raise DataError(f"{record.mask} is {mask.shape}, its scene is {scene.shape[:2]}")
    return scene, mask


@dataclass
class SceneCache:
    """Decoded scenes by index, least recently used first out, at most ``max_bytes``."""

    load: Callable[[int], Pair]
    max_bytes: int = CACHE_BYTES
    _items: OrderedDict[int, Pair] = field(default_factory=OrderedDict, init=False)
    _bytes: int = field(default=0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def get(self, index: int) -> Pair:
        with self._lock:
            if index in self._items:
                self._items.move_to_end(index)
                return self._items[index]
        pair = self.load(index)  # outside the lock: threads decode in parallel
        size = pair[0].nbytes + pair[1].nbytes
        with self._lock:
            if size <= self.max_bytes and index not in self._items:
                self._items[index] = pair
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, (s, m) = self._items.popitem(last=False)
                    self._bytes -= s.nbytes + m.nbytes
        return pair

    @property
    def nbytes(self) -> int:
        return self._bytes


@dataclass
class TileStream:
    """``(x (B, t, t, bands), y (B, t, t, 2))`` batches of scene tiles; ``y`` = (cloud, valid)."""

    root: str
    records: Sequence[layout.SceneRecord]
    shapes: Sequence[tuple[int, int]]
    tile_size: int
    bands: int
    batch_size: int
    seed: int
    steps_per_epoch_config: int | None = None
    transform: Callable[[Any, int, int], Any] | None = None
    workers: int = 4
    prefetch: int = PREFETCH
    cache_bytes: int = CACHE_BYTES

    def __post_init__(self) -> None:
        if len(self.shapes) != len(self.records):
            raise ValueError("one shape per record")
        t = self.tile_size
        counts = [(-(-h // t)) * (-(-w // t)) for h, w in self.shapes]
        self.first_tile = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.cache = SceneCache(self._load, self.cache_bytes)

    def __len__(self) -> int:
        """The number of tiles."""
        return int(self.first_tile[-1])

    @property
    def steps_per_epoch(self) -> int:
        return default_steps(len(self), self.batch_size, self.steps_per_epoch_config)

    def _load(self, index: int) -> Pair:
        return load_pair(self.root, self.records[index], self.bands)

    def locate(self, tile: int) -> tuple[int, int, int]:
        """``(scene index, row, col)`` of tile number ``tile``."""
        scene = int(np.searchsorted(self.first_tile, tile, side="right") - 1)
        _, width = self.shapes[scene]
        cols = -(-width // self.tile_size)
        row, col = divmod(int(tile - self.first_tile[scene]), cols)
        return scene, row, col

    def tile(self, tile: int) -> tuple[np.ndarray, np.ndarray]:
        """One tile: ``x (t, t, bands)`` and ``y (t, t, 2)``."""
        index, row, col = self.locate(tile)
        scene, mask = self.cache.get(index)
        t = self.tile_size
        x, valid = crop(scene, row * t, col * t, t)
        m, _ = crop(mask, row * t, col * t, t)
        return x, np.stack([m, valid], axis=-1)

    def batch(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = self.tile_size
        x = np.empty((len(tiles), t, t, self.bands), np.float32)
        y = np.empty((len(tiles), t, t, 2), np.float32)
        # Tiles of one scene together: it is decoded once even when the cache is full.
        for slot in sorted(range(len(tiles)), key=lambda i: int(tiles[i])):
            x[slot], y[slot] = self.tile(int(tiles[slot]))
        return x, y

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = EpochOrder(len(self), self.batch_size, self.steps_per_epoch, self.seed)
        index = order.indices(epoch, start_step)
        count = len(index) // self.batch_size
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="tiles")
        pending: list[Future[tuple[np.ndarray, np.ndarray]]] = []
        try:
            for k in range(count):
                # Keep prefetch + 1 batches in flight: enough to hide the reads, and a bound.
                while len(pending) < self.prefetch + 1 and k + len(pending) < count:
                    j = k + len(pending)
                    pending.append(
                        pool.submit(
                            self.batch, index[j * self.batch_size : (j + 1) * self.batch_size]
                        )
                    )
                batch = pending.pop(0).result()
                if self.transform is not None:
                    batch = self.transform(batch, epoch, start_step + k)
                yield batch
        finally:
            # The consumer may stop early (epoch end, a rollback, a signal): drop what is queued.
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
