"""Input pipeline: images/s decoded and padded by ours against reading the same bytes undecoded.

The floor is the I/O alone (every file's bytes, no decoding): from a local folder (page cache
warm) and from a real GCS JSON-API emulator (gcsfs, concurrent ``cat``). Ours is
``mlops_trainers.data.load_images`` (tf.data, parallel decode, pad to a square, mask) over the
same files. Ratio = ours / floor in images/s: how close decoding keeps us to pure I/O.

    python bench/bench_input.py [--size 128] [--files 540] [--repeats 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import Row, best_of, gcs_emulator, write_rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=128, help="target square size")
    parser.add_argument("--files", type=int, default=540, help="images (sample://skimage)")
    parser.add_argument("--gcs-files", type=int, default=160, help="of those, on the emulator")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from mlops_trainers import storage
    from mlops_trainers.data import list_images, load_images, resolve_data_url

    files = list_images(resolve_data_url("sample://skimage"))[: args.files]
    n = len(files)
    rows = []

    def local_floor() -> None:
        for f in files:
            Path(f).read_bytes()

    local_floor()  # warm the page cache for both
    floor_s = best_of(local_floor, args.repeats)
    ours_s = best_of(lambda: load_images(files, args.size, 3), args.repeats)
    rows.append(
        Row(
            f"input pipeline, local folder ({n} PNGs -> {args.size}px)",
            n / ours_s,
            n / floor_s,
            "images/s",
            "reading the bytes, no decode",
        )
    )
    print(rows[-1], flush=True)

    with gcs_emulator() as bucket:
        prefix = f"{bucket}/skimage"
        fs, _ = storage.filesystem(prefix)
        # The emulator is a single-threaded Python server: fewer files keep the upload short.
        files = files[: args.gcs_files]
        n = len(files)
        remote = [f"{prefix}/{Path(f).name}" for f in files]
        for local, url in zip(files, remote, strict=True):
            storage.put_file(local, url)
        fs.invalidate_cache()
        floor_s = best_of(lambda: fs.cat(remote), args.repeats)
        ours_s = best_of(lambda: load_images(remote, args.size, 3), args.repeats)
    rows.append(
        Row(
            f"input pipeline, GCS emulator ({n} PNGs -> {args.size}px)",
            n / ours_s,
            n / floor_s,
            "images/s",
            "gcsfs cat of the bytes, no decode",
        )
    )
    write_rows("input", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
