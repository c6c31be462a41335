"""The official 38-Cloud test protocol: patch predictions stitched into scenes, scored per scene.

38-Cloud (Mohajerani & Saeedi 2019, "Cloud-Net", arXiv:1901.10077) is scored on whole Landsat 8
scenes, not on patches. Its evaluation script (``evaluation.m``, v1.5, in the data set's
repository) does, and :func:`evaluate_38cloud` does the same:

1. predict every test patch ``test_{red,green,blue,nir}/<band>_patch_<n>_<row>_by_<col>_<scene>``
   (384 x 384, ``row``/``col`` from 1), and binarise at the threshold;
2. stitch a scene's patches at ``((row - 1) * 384, (col - 1) * 384)``;
3. remove the zero padding the scene got before it was cut: it was padded *centred*, so the
   crop starts at ``floor((padded - original) / 2)`` in each direction, to the size of the
   scene's ground truth ``Entire_scene_gts/edited_corrected_gts_<scene>.TIF``;
4. count the confusion matrix over every pixel of the scene (its no-data border included, as
   the script does) and report, for the cloud class, precision, recall, specificity, Jaccard
   index and overall accuracy, in percent, per scene;
5. average them over the scenes (the numbers Cloud-Net and later papers publish). The pooled
   counts of all scenes are reported too.

A ratio with nothing to count (no cloud in a scene and none predicted) is 100 %: nothing to
find, nothing found.

The predictor is any ``(n, 384, 384, 4) float32 -> (n, 384, 384)`` cloud probability function: a
Keras segmenter (``model.predict_scene`` tiles a patch as in training) or its ONNX export
(:func:`mlops_trainers.onnx_export.onnx_predictor`), so both can be scored the same way:
``mlops cloud38-eval MODEL TEST_FOLDER [--onnx]``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlops_trainers import storage
from mlops_trainers.cloud38.convert import BANDS_38CLOUD
from mlops_trainers.cloud38.layout import _to_float
from mlops_trainers.errors import DataError

__all__ = [
    "GT_DIR",
    "METRICS",
    "PATCH",
    "ScenePatch",
    "evaluate_38cloud",
    "scene_patches",
    "scene_scores",
    "stitch",
    "unzeropad",
]

PATCH = 384
GT_DIR = "Entire_scene_gts"
METRICS = ("precision", "recall", "specificity", "jaccard", "accuracy")
# patch_<n>_<row>_by_<col>_<scene id>; the scene id starts with "LC" (Landsat 8).
_PATCH = re.compile(r"^patch_(?P<n>\d+)_(?P<row>\d+)_by_(?P<col>\d+)_(?P<scene>LC.+)$")

Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ScenePatch:
    """One test patch: its name and place in its scene."""

    name: str
    scene: str
    row: int
    col: int


def parse_patch(name: str) -> ScenePatch:
    match = _PATCH.match(name)
    if match is None:
        raise DataError(f"{name!r} is not a 38-Cloud patch name (patch_<n>_<row>_by_<col>_LC...)")
    return ScenePatch(name, match["scene"], int(match["row"]), int(match["col"]))


def scene_patches(root: str, prefix: str = "test") -> dict[str, list[ScenePatch]]:
    """The test patches of each scene, from ``<prefix>_patches_38-Cloud.csv`` if there is one,
    else from the red band's folder."""
    names: list[str] = []
    for listed in storage.list_dir(root):
        if listed.lower().endswith(".csv") and listed.lower().startswith(prefix):
            rows = list(csv.reader(io.StringIO(storage.read_text(storage.join(root, listed)))))
            names = [r[0].strip() for r in rows[1:] if r and r[0].strip()]
            break
    if not names:
        names = sorted(
            re.sub(r"^red_", "", n.rsplit(".", 1)[0])
            for n in storage.list_dir(storage.join(root, f"{prefix}_red"))
            if n.lower().endswith((".tif", ".tiff"))
        )
    if not names:
        raise DataError(f"{root}: no 38-Cloud test patches ({prefix}_red/, or the patch CSV)")
    scenes: dict[str, list[ScenePatch]] = {}
    for name in names:
        patch = parse_patch(name)
        scenes.setdefault(patch.scene, []).append(patch)
    return scenes


def load_patch(root: str, patch: ScenePatch, prefix: str = "test") -> np.ndarray:
    """A test patch as (384, 384, 4) float32, scaled as the training scenes are."""
    import tifffile

    bands = []
    for band in BANDS_38CLOUD:
        folder = storage.join(root, f"{prefix}_{band}")
        for ext in (".TIF", ".tif", ".tiff", ".TIFF"):
            url = storage.join(folder, f"{band}_{patch.name}{ext}")
            try:
                data = storage.read_bytes(url)
                break
            except FileNotFoundError:
                continue
        else:
            raise DataError(f"38-Cloud band file missing: {folder}/{band}_{patch.name}.TIF")
        bands.append(np.asarray(tifffile.imread(io.BytesIO(data))))
    return _to_float(np.stack(bands, axis=-1))


def load_gt(gts: str, scene: str) -> np.ndarray:
    """A scene's ground truth as bool (H, W)."""
    import tifffile

    for ext in (".TIF", ".tif"):
        url = storage.join(gts, f"edited_corrected_gts_{scene}{ext}")
        if storage.exists(url):
            gt = np.asarray(tifffile.imread(io.BytesIO(storage.read_bytes(url))))
            return gt[..., 0] > 0 if gt.ndim == 3 else gt > 0
    raise DataError(
        f"no ground truth for scene {scene} in {gts} (edited_corrected_gts_{scene}.TIF)"
    )


def stitch(patches: Sequence[tuple[ScenePatch, np.ndarray]], size: int = PATCH) -> np.ndarray:
    """The patch masks put together at ``((row - 1) * size, (col - 1) * size)``; a patch that is
    missing stays 0 (clear), as in the official script."""
    rows = max(p.row for p, _ in patches)
    cols = max(p.col for p, _ in patches)
    out = np.zeros((rows * size, cols * size), dtype=bool)
    for patch, mask in patches:
        top, left = (patch.row - 1) * size, (patch.col - 1) * size
        out[top : top + size, left : left + size] = mask
    return out


def unzeropad(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The scene's own pixels of a stitched mask: the padding was added centred."""
    height, width = shape
    if mask.shape[0] < height or mask.shape[1] < width:
        raise DataError(
            f"the stitched patches ({mask.shape[0]}x{mask.shape[1]}) are smaller than the "
            f"scene's ground truth ({height}x{width}): patches missing at the bottom/right?"
        )
    top = (mask.shape[0] - height) // 2
    left = (mask.shape[1] - width) // 2
    return mask[top : top + height, left : left + width]


def scene_scores(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Counts and the five scores (percent) of a binary prediction against the ground truth."""
    tp = float(np.sum(pred & gt))
    fp = float(np.sum(pred & ~gt))
    fn = float(np.sum(~pred & gt))
    tn = float(np.sum(~pred & ~gt))
    return {**_scores(tp, fp, fn, tn), "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def _scores(tp: float, fp: float, fn: float, tn: float) -> dict[str, float]:
    def pct(num: float, den: float) -> float:
        return 100.0 * num / den if den > 0 else 100.0

    return {
        "precision": pct(tp, tp + fp),
        "recall": pct(tp, tp + fn),
        "specificity": pct(tn, tn + fp),
        "jaccard": pct(tp, tp + fp + fn),
        "accuracy": pct(tp + tn, tp + tn + fp + fn),
    }


def _batched(patches: Sequence[ScenePatch], size: int) -> Iterator[Sequence[ScenePatch]]:
    for i in range(0, len(patches), size):
        yield patches[i : i + size]


def evaluate_38cloud(
    predict: Predictor,
    root: str,
    *,
    gts: str | None = None,
    threshold: float = 0.5,
    batch_size: int = 8,
    prefix: str = "test",
    progress: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Score ``predict`` on a 38-Cloud test folder (see the module docstring).

    Returns ``{"scenes": [{"scene", <metric>..., tp, fp, fn, tn}], "mean": {<metric>},
    "pooled": {<metric>}, "threshold", "patches"}``. One scene's patches are held at a time.
    """
    gts = gts or storage.join(root, GT_DIR)
    per_scene = []
    total = np.zeros(4)
    count = 0
    for scene, patches in sorted(scene_patches(root, prefix).items()):
        gt = load_gt(gts, scene)
        predicted: list[tuple[ScenePatch, np.ndarray]] = []
        for group in _batched(patches, batch_size):
            x = np.stack([load_patch(root, p, prefix) for p in group])
            prob = np.asarray(predict(x))
            predicted += [(p, prob[i] > threshold) for i, p in enumerate(group)]
        count += len(patches)
        mask = unzeropad(stitch(predicted), gt.shape)
        values = scene_scores(mask, gt)
        result: dict[str, Any] = {"scene": scene, **values}
        per_scene.append(result)
        total += np.array([values["tp"], values["fp"], values["fn"], values["tn"]])
        if progress is not None:
            progress(_line(scene, result))
    mean = {m: float(np.mean([s[m] for s in per_scene])) for m in METRICS}
    return {
        "scenes": per_scene,
        "mean": mean,
        "pooled": _scores(*(float(v) for v in total)),
        "threshold": threshold,
        "patches": count,
    }


def _line(name: str, values: dict[str, Any]) -> str:
    return f"{name:<44} " + " ".join(f"{values[m]:>11.3f}" for m in METRICS)


def report_table(report: dict[str, Any]) -> str:
    """The report as the official script prints it: one line per scene, then the mean."""
    head = f"{'scene':<44} " + " ".join(f"{m:>11}" for m in METRICS)
    lines = [head, *(_line(s["scene"], s) for s in report["scenes"])]
    lines.append(_line(f"mean of {len(report['scenes'])} scenes", report["mean"]))
    lines.append(_line("pooled (all pixels)", report["pooled"]))
    return "\n".join(lines)
