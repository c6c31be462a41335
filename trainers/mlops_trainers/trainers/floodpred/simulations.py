"""Flood simulations on disk, windows of (past, future) frames, normalisation, augmentation.

Layout of a data set (a folder at any fsspec URL, or ``sample://shallow-water``)::

    filelists/train.txt   one simulation a line, relative to the folder (split by simulation:
    filelists/val.txt     windows of one simulation never land in two splits)
    filelists/test.txt
    simulations/*.npz     frames (T, H, W, 4): depth (m), velocity x, velocity y (m/s), bed (m)

A window is ``past`` frames (the input) followed by ``future`` frames (the target), starting every
``window_stride`` frames. The input holds the past frames' depth and velocity and the bed once
(it is static: input only); the target holds the future frames' depth and velocity.

Normalisation (:class:`Normalisation`) comes from streaming statistics over the training
simulations, read one file at a time (Chan et al.'s parallel update of Welford's mean and
variance, so no data set has to fit in memory): depth and bed are centred and scaled; velocity
is only *scaled*, by the root mean square of both components together: zero stays "still", and a
rotation of the field (the augmentation) stays a rotation.

:class:`RotateWindows` augments a batch with one of the 8 symmetries of the square, drawn from
``(seed, epoch, step)`` (resumable), and turns the velocity vectors with the grid.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from mlops_trainers import storage
from mlops_trainers.errors import DataError

__all__ = [
    "FIELDS",
    "SPLITS",
    "ChannelStats",
    "Normalisation",
    "RotateWindows",
    "WindowBatch",
    "load_simulation",
    "make_window",
    "read_filelists",
    "rotate_fields",
    "window_starts",
]

SPLITS = ("train", "val", "test")
FIELDS = ("depth", "velocity_x", "velocity_y")  # predicted; the bed is channel 3 of a frame
DEPTH, VX, VY, BED = 0, 1, 2, 3


def read_filelists(root: str) -> dict[str, list[str]]:
    """The simulation URLs of each split (``filelists/<split>.txt``; a missing one is empty)."""
    splits: dict[str, list[str]] = {}
    for split in SPLITS:
        url = storage.join(root, "filelists", f"{split}.txt")
        if not storage.exists(url):
            splits[split] = []
            continue
        lines = [line.strip() for line in storage.read_text(url).splitlines()]
        splits[split] = [
            line if "://" in line or line.startswith("/") else storage.join(root, line)
            for line in lines
            if line and not line.startswith("#")
        ]
    if not splits["train"]:
        raise DataError(
            f"{storage.join(root, 'filelists', 'train.txt')} lists no simulations (a flood data "
            "set has filelists/{train,val,test}.txt naming simulations/*.npz)"
        )
    return splits


def load_simulation(url: str) -> np.ndarray:
    """Frames (T, H, W, 4) float32 of one simulation file."""
    try:
        with np.load(io.BytesIO(storage.read_bytes(url))) as data:
            frames = np.asarray(data["frames"], np.float32)
    except (FileNotFoundError, KeyError, ValueError, OSError) as err:
        raise DataError(f"cannot read the simulation {url}: {err}") from err
    if frames.ndim != 4 or frames.shape[-1] != 4:
        raise DataError(
            f"{url}: frames must be (T, H, W, 4) (depth, velocity x, velocity y, bed), got "
            f"{frames.shape}"
        )
    if not np.isfinite(frames).all():
        raise DataError(f"{url}: frames hold NaN or infinite values")
    return frames


def window_starts(frames: int, past: int, future: int, stride: int) -> list[int]:
    """First frames of the windows of a simulation of ``frames`` frames."""
    return list(range(0, frames - past - future + 1, stride))


# === Normalisation ===


@dataclass
class ChannelStats:
    """Count, mean and sum of squared deviations of a stream of values (Chan et al. 1979)."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, np.float64).ravel()
        n = values.size
        if n == 0:
            return
        mean = float(values.mean())
        m2 = float(((values - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.count)) if self.count else 0.0


@dataclass(frozen=True)
class Normalisation:
    """Per-channel scales: depth and bed centred and scaled, velocity scaled only."""

    depth_mean: float
    depth_std: float
    velocity_scale: float
    bed_mean: float
    bed_std: float

    @classmethod
    def from_simulations(cls, urls: Sequence[str]) -> Normalisation:
        """Streaming statistics over the simulations at ``urls``, one file in memory at a time."""
        depth, bed = ChannelStats(), ChannelStats()
        squares, count = 0.0, 0
        for url in urls:
            frames = load_simulation(url)
            depth.add(frames[..., DEPTH])
            bed.add(frames[0, ..., BED])
            velocity = frames[..., VX : VY + 1].astype(np.float64)
            squares += float((velocity**2).sum())
            count += velocity.size
        rms = float(np.sqrt(squares / max(count, 1)))
        return cls(
            depth_mean=depth.mean,
            depth_std=max(depth.std, 1e-6),
            velocity_scale=max(rms, 1e-6),
            bed_mean=bed.mean,
            bed_std=max(bed.std, 1e-6),
        )

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def fields(self, frames: np.ndarray) -> np.ndarray:
        """(..., 3) normalised depth and velocity of frames (..., >= 3) in physical units."""
        return np.stack(
            [
                (frames[..., DEPTH] - self.depth_mean) / self.depth_std,
                frames[..., VX] / self.velocity_scale,
                frames[..., VY] / self.velocity_scale,
            ],
            axis=-1,
        ).astype(np.float32)

    def physical(self, fields: np.ndarray) -> np.ndarray:
        """(..., 3) normalised fields back to metres and metres per second."""
        return np.stack(
            [
                fields[..., 0] * self.depth_std + self.depth_mean,
                fields[..., 1] * self.velocity_scale,
                fields[..., 2] * self.velocity_scale,
            ],
            axis=-1,
        ).astype(np.float32)

    def bed(self, bed: np.ndarray) -> np.ndarray:
        return ((bed - self.bed_mean) / self.bed_std).astype(np.float32)


def make_window(
    frames: np.ndarray, start: int, past: int, future: int, norm: Normalisation
) -> tuple[np.ndarray, np.ndarray]:
    """One window: input (H, W, 3 * past + 1) and target (H, W, 3 * future), normalised.

    Input channels are frame-major: ``[d, u, v]`` of each past frame (oldest first), then the
    bed; the target is ``[d, u, v]`` of each future frame."""
    x = norm.fields(frames[start : start + past])  # (past, H, W, 3)
    y = norm.fields(frames[start + past : start + past + future])
    h, w = frames.shape[1:3]
    x = np.concatenate(
        [x.transpose(1, 2, 0, 3).reshape(h, w, 3 * past), norm.bed(frames[0, ..., BED])[..., None]],
        axis=-1,
    )
    return x, y.transpose(1, 2, 0, 3).reshape(h, w, 3 * future)


# === Augmentation ===


def rotate_fields(array: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """One of the 8 symmetries of the square of a batch (B, H, W, C) whose channels hold ``[d, u,
    v]`` triplets (and, if C is 3n + 1, a last scalar channel, the bed).

    Velocity components turn with the grid. Rows are y and columns x; ``np.rot90`` by one moves the
    cell at (row y, column x) to (row W-1-x, column y), so a displacement (dx, dy) becomes (dy,
    -dx): ``u' = v, v' = -u``. A left-right flip negates u.
    """
    out = np.rot90(array, k, axes=(1, 2))
    if flip:
        out = out[:, :, ::-1]
    out = np.array(out, copy=True)
    triplets = out.shape[-1] // 3
    u = out[..., 1 : 3 * triplets : 3].copy()
    v = out[..., 2 : 3 * triplets : 3].copy()
    for _ in range(k % 4):
        u, v = v, -u
    if flip:
        u = -u
    out[..., 1 : 3 * triplets : 3] = u
    out[..., 2 : 3 * triplets : 3] = v
    return out


@dataclass(frozen=True)
class RotateWindows:
    """A batch's symmetry drawn from ``(seed, epoch, step)`` alone, so a resumed run repeats it.
    Flood physics has no preferred direction once the bed turns with the water."""

    seed: int

    def __call__(
        self, batch: tuple[np.ndarray, np.ndarray], epoch: int, step: int
    ) -> tuple[np.ndarray, np.ndarray]:
        x, y = batch
        rng = np.random.default_rng([self.seed, epoch, step, 4])
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        return rotate_fields(x, k, flip), rotate_fields(y, k, flip)


@dataclass
class WindowBatch:
    """The transform of :class:`~mlops_trainers.data.ArrayBatches` over window indices
    ``(simulation, start)``: cuts and normalises the windows, then augments them."""

    simulations: Sequence[np.ndarray]
    past: int
    future: int
    norm: Normalisation
    augment: RotateWindows | None = None

    def __call__(
        self, batch: tuple[np.ndarray, np.ndarray], epoch: int, step: int
    ) -> tuple[np.ndarray, np.ndarray]:
        pairs = [
            make_window(self.simulations[int(s)], int(t), self.past, self.future, self.norm)
            for s, t in zip(*batch, strict=True)
        ]
        x = np.stack([p[0] for p in pairs])
        y = np.stack([p[1] for p in pairs])
        if self.augment is not None:
            x, y = self.augment((x, y), epoch, step)
        return x, y
