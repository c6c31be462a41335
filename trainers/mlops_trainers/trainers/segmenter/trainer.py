"""The ``segmenter`` trainer: a U-Net for cloud masks on large multi-band scenes, tiled.

Data: a dataset in the layout of :mod:`mlops_trainers.cloud38.layout` (``filelists/``, ``scenes/``,
``masks/``), a 38-Cloud training folder, or ``sample://clouds``. A 38-Cloud folder is converted
once into a content-addressed cache under the output prefix
(:func:`mlops_trainers.cloud38.convert.convert_cached`): every retry of the run and every later
run of the same data reuses it. Training batches are the non-overlapping tiles of the training
scenes (padding marked invalid, so the loss and the metrics ignore it), streamed from the scene
files with bounded memory (:class:`~mlops_trainers.trainers.segmenter.tile_stream.TileStream`),
shuffled per ``(seed, epoch)`` and, with ``augment``, flipped/rotated by a draw from ``(seed,
epoch, step)``: a resumed run sees exactly the batches an uninterrupted one would.

Training is as the seed tuned it: BCE on logits (the sigmoid after, in the saved model), with a
batch-level Dice term by default, ``pos_weight`` from the training masks' cloud fraction when not
given, a plateau schedule and early stopping on the validation IoU, and the gradient norm in the
step logs (the last three are every trainer's, :mod:`mlops_trainers.config_base`).

Each epoch predicts the whole validation scenes as in production (tiles with ``overlap`` pixels of
context -> predict -> keep the centres -> untile), one scene in memory at a time, and writes
``predictions/epoch-NNNN.png`` (rows: false-colour scene, truth, prediction) and the validation
IoU/Dice/precision/recall, counted exactly over all pixels. The last epoch also scores the test
split. The final model (probabilities) is saved as ``model.keras`` and, with ``export_onnx``, as
``model.onnx``, checked against Keras with ONNX Runtime (``inputs.onnx.max_abs_diff`` in
run.json). ``mlops cloud38-eval`` scores either on 38-Cloud's test protocol.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlops_trainers import storage
from mlops_trainers.artifacts import labelled_rows
from mlops_trainers.cloud38 import convert, layout
from mlops_trainers.data import ArrayBatches, resolve_data_url
from mlops_trainers.errors import ConfigError, DataError
from mlops_trainers.tiling import tile
from mlops_trainers.trainer import Trainer
from mlops_trainers.trainers.segmenter.config import SegmenterConfig
from mlops_trainers.trainers.segmenter.tile_stream import TileStream, load_pair

__all__ = [
    "POS_WEIGHT_RANGE",
    "SegmenterTrainer",
    "SquareSymmetries",
    "confusion_counts",
    "pos_weight_of",
    "scene_tiles",
    "scores",
]

# pos_weight computed from the data is clipped: a split with almost no cloud would otherwise
# weigh its few cloud pixels by thousands.
POS_WEIGHT_RANGE = (0.01, 100.0)


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
    """All tiles of a set of scenes in memory as ``(x (N, t, t, B), y (N, t, t, 2))`` batches
    (small sets, tests; the trainer streams from files with :class:`TileStream`).

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


def pos_weight_of(cloud_fraction: float) -> float:
    """``(1 - p) / p`` for a cloud fraction ``p`` (the negatives per positive, as the seed and
    torch's ``BCEWithLogitsLoss`` docs weigh them), clipped to :data:`POS_WEIGHT_RANGE`."""
    low, high = POS_WEIGHT_RANGE
    if cloud_fraction <= 0:
        return high
    return float(min(high, max(low, (1.0 - cloud_fraction) / cloud_fraction)))


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
            self.root, counts, reused = convert.convert_cached(root, self.run.output_prefix)
            self.context.log.info(
                "38-Cloud %s: %s conversion at %s: %s",
                root,
                "reusing the" if reused else "made the",
                self.root,
                counts,
            )
            self.inputs["converted_38cloud"] = counts
            self.inputs["conversion_reused"] = reused
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
        self.pos_weight = self.config.pos_weight
        if self.pos_weight is None:
            fraction = self.cloud_fraction(self.splits["train"])
            self.pos_weight = pos_weight_of(fraction)
            self.context.log.info(
                "pos_weight %.3g from the training masks' cloud fraction %.4f",
                self.pos_weight,
                fraction,
            )
            self.inputs["cloud_fraction"] = fraction
        self.inputs["pos_weight"] = self.pos_weight

    def shapes(self, records: Sequence[layout.SceneRecord]) -> list[tuple[int, int]]:
        """Each scene's (height, width): from the file list, else from the file's header."""
        return [
            (r.height, r.width)
            if r.height is not None and r.width is not None
            else layout.scene_shape(storage.join(self.root, r.scene))
            for r in records
        ]

    def cloud_fraction(self, records: Sequence[layout.SceneRecord]) -> float:
        """The fraction of cloud pixels over the records' masks (from the file list when it
        has it, else one pass over the masks; masks are small)."""
        cloud = pixels = 0.0
        for record, (height, width) in zip(records, self.shapes(records), strict=True):
            fraction = record.cloud
            if fraction is None:
                fraction = float(layout.load_mask(storage.join(self.root, record.mask)).mean())
            cloud += fraction * height * width
            pixels += height * width
        return cloud / max(pixels, 1.0)

    def iter_split(self, split: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The decoded scenes and masks of a split, one at a time (a split of 38-Cloud does not
        fit in memory)."""
        for record in self.splits.get(split, []):
            yield load_pair(self.root, record, self.config.bands)

    def load_split(self, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every decoded scene and mask of a split, in memory (small data sets only)."""
        return list(self.iter_split(split))

    def datasets(self) -> TileStream:
        c = self.config
        records = self.splits["train"]
        return TileStream(
            self.root,
            records,
            self.shapes(records),
            c.tile_size,
            c.bands,
            c.batch_size,
            self.run.seed,
            c.steps_per_epoch,
            transform=SquareSymmetries(self.run.seed) if c.augment else None,
            workers=c.workers,
        )

    def build_model(self) -> Any:
        from mlops_trainers.trainers.segmenter.bce_dice_loss import BCEDiceLoss
        from mlops_trainers.trainers.segmenter.masked_segmentation_metric import (
            MaskedSegmentationMetric,
        )
        from mlops_trainers.trainers.segmenter.unet import UNet

        c = self.config
        self.unet = UNet(bands=c.bands, base_filters=c.base_filters, depth=c.depth, name="unet")
        # Trained on logits (BCE on logits, sigmoid after); unet, sharing the layers, gives
        # the probabilities that are evaluated, saved and exported.
        model = self.unet.logits_model()
        model.compile(
            optimizer=self.optimizer(),
            loss=BCEDiceLoss(
                pos_weight=self.pos_weight or 1.0,
                dice_weight=c.dice_weight,
                from_logits=True,
                dice=c.dice,
            ),
            metrics=[
                MaskedSegmentationMetric(k, c.threshold, from_logits=True)
                for k in ("iou", "dice", "precision", "recall")
            ],
        )
        model.optimizer.build(model.trainable_variables)
        return model

    def memory_probe(self) -> tuple[Any, Any, int, str]:
        from mlops_trainers.trainers.segmenter.tile_stream import CACHE_BYTES, PREFETCH

        c = self.config
        self.pos_weight = c.pos_weight or 1.0
        model = self.build_model()
        specs = ((c.batch_size, c.tile_size, c.tile_size, c.bands), "float32")
        batch = c.batch_size * c.tile_size**2 * (c.bands + 2) * 4
        # The stream's bound (TileStream): its scene cache, the batches in flight (and their
        # augmented copies), one decoded scene per worker (38-Cloud's 384 x 384 patches, or a tile).
        scene = max(c.tile_size, 384) ** 2 * c.bands * 4 * 2
        data = CACHE_BYTES + 2 * (PREFETCH + 2) * batch + c.workers * scene
        return model, specs, data, "tile stream: scene cache and batches in flight"

    # === Evaluation and artifacts ===

    def evaluate_scenes(
        self, model: Any, scenes: Iterator[tuple[np.ndarray, np.ndarray]] | Sequence[Any]
    ) -> tuple[dict[str, float], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
        """Exact metrics over whole scenes (one in memory at a time), and the first
        ``predictions`` (scene, truth, probability) for the panel."""
        unet = getattr(self, "unet", model)
        counts = np.zeros(3)
        kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for scene, mask in scenes:
            prob = unet.predict_scene(
                scene, self.config.tile_size, self.config.batch_size, self.config.overlap
            )
            counts += confusion_counts(prob, mask, self.config.threshold)
            if len(kept) < self.config.predictions:
                kept.append((scene, mask, prob))
        return scores(counts), kept

    def on_epoch_end(self, epoch: int, model: Any, logs: Mapping[str, float]) -> dict[str, float]:
        if self.splits.get("val"):
            metrics, kept = self.evaluate_scenes(model, self.iter_split("val"))
            self.val_metrics = {f"val_{k}": v for k, v in metrics.items()}
            self.context.log.info("epoch %d validation: %s", epoch, _fmt(self.val_metrics))
            if kept:
                self.context.write_png(
                    f"predictions/epoch-{epoch:04d}.png", self._panel(kept, epoch)
                )
        if epoch == self.run.epochs and self.splits.get("test"):
            metrics, _ = self.evaluate_scenes(model, self.iter_split("test"))
            self.val_metrics.update({f"test_{k}": v for k, v in metrics.items()})
            self.context.log.info("test: %s", _fmt(metrics))
        return dict(self.val_metrics)

    def _panel(
        self, kept: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], epoch: int
    ) -> np.ndarray:
        """Labelled rows (false colour | truth | prediction), one per validation scene, each
        padded to the widest."""
        height = max(scene.shape[0] for scene, _, _ in kept)
        width = max(scene.shape[1] for scene, _, _ in kept)

        def fit(image: np.ndarray) -> np.ndarray:
            if image.ndim == 2:
                image = np.repeat(image[..., None], 3, axis=-1)
            return np.pad(
                image,
                ((0, height - image.shape[0]), (0, width - image.shape[1]), (0, 0)),
                constant_values=1.0,
            )

        rows = [
            (f"scene {i + 1}", np.stack([fit(false_colour(s)), fit(m), fit(p)]))
            for i, (s, m, p) in enumerate(kept)
        ]
        return labelled_rows(
            rows,
            column_labels=["false colour (R, G, B)", "truth", "prediction"],
            title=f"validation, epoch {epoch}",
        )

    def final_metrics(self, logs: Mapping[str, float]) -> dict[str, float]:
        out = dict(logs)
        out.update(self.val_metrics)
        if self.onnx_diff is not None:
            out["onnx_max_abs_diff"] = self.onnx_diff
        return out

    def save_final(self, model: Any) -> str:
        # The probability model (the trained layers and the sigmoid), not the logits one.
        unet = getattr(self, "unet", model)
        url = super().save_final(unet)
        if self.config.export_onnx:
            from mlops_trainers.onnx_export import export_onnx, load_session, max_abs_diff

            onnx_url = export_onnx(unet, self.context.url("model.onnx"))
            t = self.config.tile_size
            rng = np.random.default_rng(self.run.seed)
            probe = rng.random((2, t, t, self.config.bands)).astype(np.float32)
            self.onnx_diff = max_abs_diff(unet, load_session(onnx_url), probe)
            # A metric (final_metrics runs after save_final) and provenance of model.onnx.
            self.inputs["onnx"] = {"url": onnx_url, "max_abs_diff": self.onnx_diff}
            self.context.log.info(
                "exported %s (max |keras - onnx| = %.2e)", onnx_url, self.onnx_diff
            )
        return url


def _fmt(metrics: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
