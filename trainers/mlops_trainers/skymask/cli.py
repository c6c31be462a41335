"""``mlops skymask FRAMES_URL --out MASK.png [--config YAML]``: a camera folder's sky mask as a PNG.

Also ``python -m mlops_trainers.skymask``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from pydantic import ValidationError

from mlops_trainers import storage
from mlops_trainers.skymask.algorithm import sky_mask
from mlops_trainers.skymask.config import SkyMaskConfig
from mlops_trainers.skymask.frames import load_frames, write_mask_png

__all__ = ["main"]


def _load_config(url: str | None) -> SkyMaskConfig:
    if url is None:
        return SkyMaskConfig()
    import yaml

    data = yaml.safe_load(storage.read_text(url)) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{url}: expected a mapping of SkyMaskConfig fields")
    # Accept a bare SkyMaskConfig, or a tokenizer config that nests one under `sky_mask`.
    return SkyMaskConfig.model_validate(data.get("sky_mask", data))


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m mlops_trainers.skymask FRAMES_URL --out MASK.png [--config YAML]``."""
    parser = argparse.ArgumentParser(
        prog="mlops skymask",
        description="Write the sky mask (white = sky) of a fixed webcam's frames.",
    )
    parser.add_argument(
        "frames", help="fsspec URL (or path) of a folder of frames, named in time order"
    )
    parser.add_argument(
        "--out", required=True, help="fsspec URL (or path) of the mask PNG to write"
    )
    parser.add_argument("--config", default=None, help="YAML of SkyMaskConfig fields")
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help, or a usage error argparse has already printed
        return int(exc.code or 0)
    try:
        config = _load_config(args.config)
        frames = load_frames(args.frames, max_frames=config.max_frames)
    except (FileNotFoundError, ValueError, ValidationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    mask = sky_mask(frames, config)
    write_mask_png(mask, args.out)
    print(
        f"{args.out}: {mask.shape[1]}x{mask.shape[0]}, sky {mask.mean():.1%} of {len(frames)} frames"
    )
    return 0
