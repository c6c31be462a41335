"""The ``segmenter`` trainer: a U-Net for cloud masks on large multi-band scenes, tiled.

Data: a dataset in the layout of :mod:`mlops_trainers.cloud38.layout` (``filelists/``, ``scenes/``,
``masks/``), a 38-Cloud training folder (converted into the run's scratch folder first), or
``sample://clouds``. Training batches are the non-overlapping tiles of the training scenes
(padding marked invalid, so the loss and the metrics ignore it), shuffled per ``(seed, epoch)``
and, with ``augment``, flipped/rotated by a draw from ``(seed, epoch, step)``: a resumed run sees
exactly the batches an uninterrupted one would.

Each epoch predicts the whole validation scenes as in production (tiles with ``overlap`` pixels of
context -> predict -> keep the centres -> untile) and writes ``predictions/epoch-NNNN.png`` (rows:
false-colour scene, truth, prediction) and the validation IoU/Dice/precision/recall, counted
exactly over all pixels. The last epoch also scores
the test split. The final model is saved as ``model.keras`` and, with ``export_onnx``, as
``model.onnx``, checked against Keras with ONNX Runtime (``inputs.onnx.max_abs_diff`` in
run.json).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlops_trainers import storage
from mlops_trainers.cloud38 import convert, layout
from mlops_trainers.data import ArrayBatches, resolve_data_url
from mlops_trainers.errors import ConfigError, DataError
from mlops_trainers.tiling import tile
from mlops_trainers.trainer import Trainer
from mlops_trainers.trainers.segmenter.config import SegmenterConfig

__all__ = [
    "SegmenterTrainer",
    "SquareSymmetries",
    "confusion_counts",
    "scene_tiles",
    "scores",
]


# === Data ===


@dataclass(frozen=True)
class SquareSymmetries:
    """Augmentation: one of the 8 symmetries of the square per batch (clouds have no up or left),
    drawn from ``(seed, epoch, step)`` alone, so a resumed run repeats it."""

    seed: int

    def __call__(
        self, batch: tuple[np.ndarray, np.ndarray], epoch: int, step: int
    ) -> tuple[np.ndarray, np.ndarray]:
        x, y = batch
        rng = np.random.default_rng([self.seed, epoch, step, 8])
        k90, flip = int(rng.integers(4)), bool(rng.integers(2))
        x, y = np.rot90(x, k90, axes=(1, 2)), np.rot90(y, k90, axes=(1, 2))
        if flip:
            x, y = x[:, :, ::-1], y[:, :, ::-1]
        return np.ascontiguousarray(x), np.ascontiguousarray(y)


def scene_tiles(
    scenes: Sequence[tuple[np.ndarray, np.ndarray]],
    tile_size: int,
    *,
    batch_size: int,
    seed: int,
    steps_per_epoch_config: int | None = None,
    augment: bool = True,
) -> ArrayBatches:
    """All tiles of a set of scenes as ``(x (N, t, t, B), y (N, t, t, 2))`` batches.

    ``y`` is (cloud, valid): the layout :class:`BCEDiceLoss` and the metrics expect; the padding
    of border tiles is invalid.
    """
    xs, ys = [], []
    for scene, mask in scenes:
        x, valid, _ = tile(scene, tile_size)
        m, _, _ = tile(mask, tile_size)
        xs.append(x)
        ys.append(np.stack([m, valid], axis=-1))
    return ArrayBatches(
        (np.concatenate(xs), np.concatenate(ys).astype(np.float32)),
        batch_size,
        seed,
        steps_per_epoch_config,
        transform=SquareSymmetries(seed) if augment else None,
    )


def confusion_counts(prob: np.ndarray, truth: np.ndarray, threshold: float) -> np.ndarray:
    """(tp, fp, fn) of a probability map against a 0/1 mask."""
    p = prob > threshold
    t = truth > 0.5
    return np.array([(p & t).sum(), (p & ~t).sum(), (~p & t).sum()], dtype=np.float64)


def scores(counts: np.ndarray) -> dict[str, float]:
    """IoU, Dice, precision, recall of summed (tp, fp, fn); an empty ratio is a perfect 1.0."""
    tp, fp, fn = (float(c) for c in counts)

    def ratio(num: float, den: float) -> float:
        return num / den if den > 0 else 1.0

    return {
        "iou": ratio(tp, tp + fp + fn),
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
    }


def false_colour(scene: np.ndarray) -> np.ndarray:
    """An RGB view of a multi-band scene (bands 0-2 as red/green/blue, stretched to 2-98 %)."""
    rgb = scene[..., :3] if scene.shape[-1] >= 3 else np.repeat(scene[..., :1], 3, axis=-1)
    lo, hi = np.percentile(rgb, [2, 98])
    view: np.ndarray = np.clip((rgb - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    return view


# === Trainer ===


class SegmenterTrainer(Trainer[SegmenterConfig]):
    """U-Net cloud segmentation on tiled scenes; see the module docstring."""

    config_class = SegmenterConfig

    def prepare(self) -> None:
        if self.config.export_onnx:
            # Fail before training, not after it: the export runs at the very end.
            import importlib.util

            from mlops_trainers.onnx_export import INSTALL_HINT

            missing = [
                m for m in ("tf2onnx", "onnx", "onnxruntime") if importlib.util.find_spec(m) is None
            ]
            if missing:
                raise ConfigError(
                    f"trainer.config.export_onnx is true but {', '.join(missing)} is not "
                    f"installed: {INSTALL_HINT} (the `export` extra), or set export_onnx: false"
                )
        root = resolve_data_url(self.run.data)
        if layout.is_dataset(root):
            self.root = root
        elif convert.is_38cloud(root):
            self.root = str(self.context.scratch / "dataset")
            counts = convert.convert_38cloud(root, self.root)
            self.context.log.info("converted 38-Cloud %s: %s", root, counts)
            self.inputs["converted_38cloud"] = counts
        else:
            raise DataError(
                f"{self.run.data} is neither a segmenter dataset (filelists/train.csv, scenes/, "
                "masks/) nor a 38-Cloud training folder (train_red/ ... train_gt/)"
            )
        self.inputs["dataset"] = self.root
        self.splits = {s: layout.read_filelist(self.root, s) for s in layout.SPLITS}
        if not self.splits["train"]:
            raise DataError(f"{self.root}/filelists/train.csv lists no scenes")
        self.val_metrics: dict[str, float] = {}
        self.onnx_diff: float | None = None

    def load_split(self, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """The decoded scenes and masks of a split (validation and test are kept in memory)."""
        cache: dict[str, list[tuple[np.ndarray, np.ndarray]]] = self.__dict__.setdefault(
            "_scenes", {}
        )
        if split in cache:
            return cache[split]
        out = []
        for record in self.splits.get(split, []):
            scene = layout.load_scene(storage.join(self.root, record.scene))
            mask = layout.load_mask(storage.join(self.root, record.mask))
            if scene.shape[-1] != self.config.bands:
                raise ConfigError(
                    f"trainer.config.bands is {self.config.bands} but {record.scene} has "
                    f"{scene.shape[-1]} bands"
                )
            if mask.shape != scene.shape[:2]:
                raise DataError(f"{record.mask} is {mask.shape}, its scene is {scene.shape[:2]}")
            out.append((scene, mask))
        if split != "train":
            cache[split] = out
        return out

    def datasets(self) -> ArrayBatches:
        return scene_tiles(
            self.load_split("train"),
            self.config.tile_size,
            batch_size=self.config.batch_size,
            seed=self.run.seed,
            steps_per_epoch_config=self.config.steps_per_epoch,
            augment=self.config.augment,
        )

    def build_model(self) -> Any:
        import keras

        from mlops_trainers.trainers.segmenter.bce_dice_loss import BCEDiceLoss
        from mlops_trainers.trainers.segmenter.masked_segmentation_metric import (
            MaskedSegmentationMetric,
        )
        from mlops_trainers.trainers.segmenter.unet import UNet

        c = self.config
        model = UNet(bands=c.bands, base_filters=c.base_filters, depth=c.depth, name="unet")
        model.compile(
            optimizer=keras.optimizers.Adam(c.learning_rate),
            loss=BCEDiceLoss(pos_weight=c.pos_weight, dice_weight=c.dice_weight),
            metrics=[
                MaskedSegmentationMetric(k, c.threshold)
                for k in ("iou", "dice", "precision", "recall")
            ],
        )
        model.optimizer.build(model.trainable_variables)
        return model

    # === Evaluation and artifacts ===

    def evaluate_scenes(
        self, model: Any, scenes: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> tuple[dict[str, float], list[np.ndarray]]:
        """Exact metrics over whole scenes, and the probability maps."""
        counts = np.zeros(3)
        probs = []
        for scene, mask in scenes:
            prob = model.predict_scene(
                scene, self.config.tile_size, self.config.batch_size, self.config.overlap
            )
            counts += confusion_counts(prob, mask, self.config.threshold)
            probs.append(prob)
        return scores(counts), probs

    def on_epoch_end(self, epoch: int, model: Any, logs: Mapping[str, float]) -> dict[str, float]:
        val = self.load_split("val")
        if val:
            metrics, probs = self.evaluate_scenes(model, val)
            self.val_metrics = {f"val_{k}": v for k, v in metrics.items()}
            self.context.log.info("epoch %d validation: %s", epoch, _fmt(self.val_metrics))
            if self.config.predictions:
                self.context.write_png(
                    f"predictions/epoch-{epoch:04d}.png", self._panel(val, probs)
                )
        if epoch == self.run.epochs:
            test = self.load_split("test")
            if test:
                metrics, _ = self.evaluate_scenes(model, test)
                self.val_metrics.update({f"test_{k}": v for k, v in metrics.items()})
                self.context.log.info("test: %s", _fmt(metrics))
        return dict(self.val_metrics)

    def _panel(
        self, scenes: Sequence[tuple[np.ndarray, np.ndarray]], probs: Sequence[np.ndarray]
    ) -> np.ndarray:
        """Rows of (false colour | truth | prediction), padded to a common width."""

        def grey(a: np.ndarray) -> np.ndarray:
            return np.repeat(a[..., None], 3, axis=-1)

        rows = []
        for (scene, mask), prob in list(zip(scenes, probs, strict=True))[: self.config.predictions]:
            gap = np.ones((scene.shape[0], 2, 3), dtype=np.float32)
            rows.append(
                np.concatenate([false_colour(scene), gap, grey(mask), gap, grey(prob)], axis=1)
            )
        width = max(r.shape[1] for r in rows)
        padded = [
            np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=1.0) for r in rows
        ]
        return np.concatenate(padded, axis=0)

    def final_metrics(self, logs: Mapping[str, float]) -> dict[str, float]:
        out = dict(logs)
        out.update(self.val_metrics)
        if self.onnx_diff is not None:
            out["onnx_max_abs_diff"] = self.onnx_diff
        return out

    def save_final(self, model: Any) -> str:
        url = super().save_final(model)
        if self.config.export_onnx:
            from mlops_trainers.onnx_export import export_onnx, load_session, max_abs_diff

            onnx_url = export_onnx(model, self.context.url("model.onnx"))
            t = self.config.tile_size
            rng = np.random.default_rng(self.run.seed)
            probe = rng.random((2, t, t, self.config.bands)).astype(np.float32)
            self.onnx_diff = max_abs_diff(model, load_session(onnx_url), probe)
            # A metric (final_metrics runs after save_final) and provenance of model.onnx.
            self.inputs["onnx"] = {"url": onnx_url, "max_abs_diff": self.onnx_diff}
            self.context.log.info(
                "exported %s (max |keras - onnx| = %.2e)", onnx_url, self.onnx_diff
            )
        return url


def _fmt(metrics: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
