"""Input pipeline: images/s of the training pipeline against a bare PNG decode of the same files.

Ours is :class:`mlops_trainers.data.ImageData` as the VQ-VAE trainer uses it: decode, downscale
if larger, pad onto the square canvas in uint8, batch, convert to float32 and make the masks per
batch, prefetch; with the uint8 cache on (``cache=True``). Epoch 1 (cold: an empty cache, every
file decoded) and epoch 2 (served from the cache) are timed separately, each as one whole pass of
``files // batch`` batches consumed in Python, as the runtime consumes them.

The reference is the bare decode of the same files at the same parallelism: ``tf.data`` from the
file names, ``map(read + tf.io.decode_png, AUTOTUNE)``, prefetch, consumed inside TensorFlow
(``Dataset.reduce``: no Python per image), with no resize, pad, batch or float conversion. On the
GCS emulator both read each file through the same fsspec call (``tf.py_function``), so the rows
compare what is done with the bytes, not two different clients. A third arm, timed the same way,
also downscales and pads each image as ours does (``place_image``): the per-image work ours must
do, whose cost against the bare decode bounds ours; the epoch-1 row's notes give both ratios.

Rounds run in random order; ratios are paired per round (geometric mean, 95% interval). The files'
pages are read once before timing (page cache warm for both sides).

    python bench/bench_input.py [--rounds 5] [--gcs-files 400]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common import Paired, Row, gcs_emulator, write_rows


def _bare_decode(
    files: Sequence[str], channels: int, place: int | None = None
) -> Callable[[], float]:
    """The reference: seconds to decode every file, parallel, consumed inside TensorFlow. With
    ``place``, each image is also downscaled and padded to ``place`` px as ours does it
    (``place_image``): the per-image work ours cannot skip, a bound for it."""
    import numpy as np
    import tensorflow as tf
    from mlops_trainers.data import _read_file_op, place_image

    local = all("://" not in f for f in files)

    def decode(path: Any) -> Any:
        data = tf.io.read_file(path) if local else _read_file_op(path)
        image = tf.io.decode_png(data, channels=channels)
        return image if place is None else place_image(image, place)[0]

    def run() -> float:
        began = time.perf_counter()
        ds = tf.data.Dataset.from_tensor_slices(np.asarray(files, dtype=object).astype(str))
        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        count = int(ds.prefetch(tf.data.AUTOTUNE).reduce(np.int64(0), lambda n, _: n + 1))
        assert count == len(files)
        return time.perf_counter() - began

    return run


def _ours(
    files: Sequence[str], size: int, channels: int, batch: int
) -> Callable[[], tuple[float, float]]:
    """Ours: seconds of epoch 1 (cold cache) and of epoch 2 (from the cache), a fresh ImageData."""
    from mlops_trainers.data import ImageData

    def run() -> tuple[float, float]:
        data = ImageData(files, size, channels, batch, seed=0, cache=True)
        times = []
        for epoch in (0, 1):
            began = time.perf_counter()
            seen = 0
            for b in data.batches(epoch):
                seen += int(b["image"].shape[0])
            times.append(time.perf_counter() - began)
            assert seen == data.steps_per_epoch * batch
        return times[0], times[1]

    return run


def measure(
    name: str, files: Sequence[str], size: int, channels: int, batch: int, *, rounds: int,
    order: random.Random,
) -> tuple[list[Row], dict[str, Any]]:  # fmt: skip
    for f in files:
        if "://" not in f:
            Path(f).read_bytes()  # the page cache, warm for both
    n_ours = (len(files) // batch) * batch
    arms: dict[str, Callable[[], Any]] = {
        "ours": _ours(files, size, channels, batch),
        "bare": _bare_decode(files, channels),
        "placed": _bare_decode(files, channels, place=size),
    }
    for warm in arms.values():
        warm()  # warm-up: tracing, thread pools
    results: dict[str, list[Any]] = {k: [] for k in arms}
    for r in range(rounds):
        names = list(arms)
        order.shuffle(names)
        for arm in names:
            results[arm].append(arms[arm]())
        print(f"  {name} round {r + 1}/{rounds}: {results}", flush=True)
    epoch1 = [n_ours / t1 for t1, _ in results["ours"]]
    epoch2 = [n_ours / t2 for _, t2 in results["ours"]]
    bare = [len(files) / t for t in results["bare"]]
    placed = [len(files) / t for t in results["placed"]]
    vs_bare = Paired.of([a / b for a, b in zip(epoch1, bare, strict=True)])
    # What the downscale and pad alone cost against the bare decode (the most ours could reach
    # while doing them), and how close ours comes to that.
    bound = Paired.of([a / b for a, b in zip(placed, bare, strict=True)])
    vs_placed = Paired.of([a / b for a, b in zip(epoch1, placed, strict=True)])
    cached = Paired.of([b / a for a, b in zip(epoch1, epoch2, strict=True)])
    what = f"{name} ({len(files)} PNGs -> {size}px, batch {batch})"
    rows = [
        Row(
            f"input pipeline, epoch 1, {what}",
            statistics.median(epoch1),
            statistics.median(epoch1) / vs_bare.mean,
            "images/s",
            "bare tf.io.decode_png of the same files, same parallelism (AUTOTUNE)",
            f"{vs_bare.text()}; ours decodes, downscales, pads, batches, makes floats and "
            f"masks; the decode with the same downscale and pad alone (inside TensorFlow) "
            f"reaches {bound.mean:.3g} of the bare decode (the bound that work sets), and ours "
            f"{vs_placed.mean:.3g} of it",
        ),
        Row(
            f"input pipeline, epoch 2 from the uint8 cache, {what}",
            statistics.median(epoch2),
            statistics.median(epoch2) / cached.mean,
            "images/s",
            "our epoch 1 (every file decoded)",
            cached.text(),
        ),
    ]
    return rows, {"files": len(files), "size": size, "batch": batch, "results": results}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gcs-files", type=int, default=400, help="fashion-mnist files uploaded")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(None if argv is None else list(argv))

    from mlops_trainers import storage
    from mlops_trainers.data import list_images

    order = random.Random(args.seed)
    rows: list[Row] = []
    detail: dict[str, Any] = {}
    fashion = list_images("sample://fashion-mnist")  # 28x28 grey PNGs, the VQ-VAE demo's data
    photos = list_images("sample://skimage")  # photos of many sizes, most larger than 128
    for name, files, size, channels, batch in (
        ("local folder, Fashion-MNIST", fashion, 32, 1, 64),
        ("local folder, scikit-image photos", photos, 128, 3, 16),
    ):
        got, detail[name] = measure(
            name, files, size, channels, batch, rounds=args.rounds, order=order
        )
        rows += got
    with gcs_emulator() as bucket:
        files = fashion[: args.gcs_files]
        remote = [f"{bucket}/fashion/{Path(f).name}" for f in files]
        for local, url in zip(files, remote, strict=True):
            storage.put_file(local, url)
        name = "GCS emulator, Fashion-MNIST"
        got, detail[name] = measure(name, remote, 32, 1, 64, rounds=args.rounds, order=order)
        rows += got
    write_rows("input", rows, extra={"detail": detail})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
