"""``python -m mlops_trainers.cloud38 SOURCE DEST``: convert 38-Cloud to the segmenter layout."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mlops_trainers.cloud38.convert import convert_38cloud
from mlops_trainers.errors import DataError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mlops_trainers.cloud38 SOURCE DEST``: convert 38-Cloud to the segmenter layout."""
    parser = argparse.ArgumentParser(
        prog="python -m mlops_trainers.cloud38", description=main.__doc__
    )
    parser.add_argument("source", help="38-Cloud training folder (holds train_red/ ... train_gt/)")
    parser.add_argument("dest", help="output dataset root (fsspec URL or path)")
    parser.add_argument("--prefix", default="train")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--keep-empty", action="store_true", help="keep all-zero patches")
    parser.add_argument("--limit", type=int, default=None, help="convert only the first N patches")
    args = parser.parse_args(argv)
    try:
        counts = convert_38cloud(
            args.source,
            args.dest,
            prefix=args.prefix,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            skip_empty=not args.keep_empty,
            limit=args.limit,
        )
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(", ".join(f"{k}: {v}" for k, v in counts.items()))
    return 0
