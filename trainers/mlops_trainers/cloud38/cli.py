"""``python -m mlops_trainers.cloud38 SOURCE DEST``: convert 38-Cloud to the segmenter layout;
``mlops cloud38-eval MODEL TEST``: score a model on 38-Cloud's test protocol."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mlops_trainers import storage
from mlops_trainers.cloud38.convert import convert_38cloud
from mlops_trainers.contract import RUN_FILE
from mlops_trainers.errors import DataError

__all__ = ["evaluate_main", "main", "predictor"]


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


def _run_settings(model: str) -> dict[str, Any]:
    """The segmenter config of the run a model belongs to (its run.json), if there is one."""
    folder = model if not model.endswith((".keras", ".onnx")) else model.rsplit("/", 1)[0]
    try:
        record = storage.read_json(storage.join(folder or ".", RUN_FILE))
        config = record["config"]["trainer"]["config"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return {}
    return dict(config) if isinstance(config, dict) else {}


def predictor(
    model: str, *, onnx: bool, tile_size: int, overlap: int, batch_size: int
) -> Callable[[np.ndarray], np.ndarray]:
    """``(n, 384, 384, 4) -> (n, 384, 384)`` probabilities from a run's Keras model or its ONNX
    export, each patch predicted as training predicts a scene (tiles, overlap, untile)."""
    from mlops_trainers.tiling import predict_scene

    if onnx or model.endswith(".onnx"):
        from mlops_trainers.onnx_export import load_session, onnx_predictor

        url = model if model.endswith(".onnx") else storage.join(model, "model.onnx")
        tiles = onnx_predictor(load_session(url))
    else:
        import mlops_trainers

        keras_model = mlops_trainers.load(model, compile=False)

        def tiles(batch: np.ndarray) -> np.ndarray:
            return np.asarray(keras_model.predict_on_batch(batch))[..., 0]

    def predict(patches: np.ndarray) -> np.ndarray:
        return np.stack([predict_scene(tiles, p, tile_size, batch_size, overlap) for p in patches])

    return predict


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """``mlops cloud38-eval MODEL TEST_FOLDER``: the official 38-Cloud test protocol."""
    import json

    from mlops_trainers.cloud38.evaluate import PATCH, evaluate_38cloud, report_table

    parser = argparse.ArgumentParser(
        prog="mlops cloud38-eval",
        description="Score a trained segmenter on 38-Cloud's test protocol: patch predictions "
        "stitched into whole scenes, compared with Entire_scene_gts; precision, recall, "
        "specificity, Jaccard and accuracy (percent) per scene and their mean.",
    )
    parser.add_argument("model", help="a segmenter run's folder, its model.keras or model.onnx")
    parser.add_argument("test", help="38-Cloud test folder (test_red/ ..., the patch CSV)")
    parser.add_argument(
        "--gts", help="folder of the scene ground truths (default TEST/Entire_scene_gts)"
    )
    parser.add_argument("--onnx", action="store_true", help="score the run's ONNX export")
    parser.add_argument("--threshold", type=float, help="default: the run's threshold, else 0.5")
    parser.add_argument("--tile-size", type=int, help="default: the run's tile_size, else 384")
    parser.add_argument("--overlap", type=int, help="default: the run's overlap, else 0")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--report", help="write the full report (JSON) to this URL or path")
    args = parser.parse_args(argv)
    settings = _run_settings(args.model)
    threshold = args.threshold if args.threshold is not None else settings.get("threshold", 0.5)
    tile_size = args.tile_size or settings.get("tile_size") or PATCH
    overlap = args.overlap if args.overlap is not None else settings.get("overlap", 0)
    try:
        predict = predictor(
            args.model,
            onnx=args.onnx,
            tile_size=int(tile_size),
            overlap=int(overlap),
            batch_size=args.batch_size,
        )
        print(
            f"{args.model}{' (ONNX)' if args.onnx or args.model.endswith('.onnx') else ''}: "
            f"threshold {threshold:g}, tiles of {tile_size} with {overlap} px of context",
            file=sys.stderr,
        )
        report = evaluate_38cloud(
            predict,
            args.test,
            gts=args.gts,
            threshold=float(threshold),
            batch_size=args.batch_size,
            progress=lambda line: print(line, file=sys.stderr),
        )
    except (DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report_table(report))
    if args.report:
        storage.write_text(args.report, json.dumps(report, indent=2, sort_keys=True) + "\n")
    return 0
