"""IoU, Dice, precision and recall of binary masks, ignoring padding, accumulated exactly.

The metric accumulates true/false positives and false negatives over all valid pixels of all
batches (then divides once), so it is the dataset's IoU, not a mean of per-tile ratios that an
almost-empty tile would swing. An empty denominator (no cloud anywhere and none predicted) scores
1.0: nothing to find and nothing found is a perfect answer, and it is never NaN.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

KINDS = ("iou", "dice", "precision", "recall")


@keras.saving.register_keras_serializable(package="mlops_trainers")
class MaskedSegmentationMetric(keras.metrics.Metric):  # type: ignore[misc,unused-ignore]
    """``y_true (B, H, W, 2)`` = (cloud, valid); ``y_pred (B, H, W, 1)`` probabilities (or
    logits with ``from_logits``).

    Args:
        kind: ``"iou"``, ``"dice"``, ``"precision"`` or ``"recall"``.
        threshold: probability above which a pixel is predicted cloud.
        from_logits: ``y_pred`` holds logits; a pixel is cloud where sigmoid(logit) > threshold.
        **kwargs: forwarded to ``keras.metrics.Metric`` (default name: ``kind``).
    """

    def __init__(
        self, kind: str = "iou", threshold: float = 0.5, from_logits: bool = False, **kwargs: Any
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        kwargs.setdefault("name", kind)
        super().__init__(**kwargs)
        self.kind = kind
        self.threshold = threshold
        self.from_logits = from_logits
        self.tp = self.add_variable(shape=(), initializer="zeros", name="tp")
        self.fp = self.add_variable(shape=(), initializer="zeros", name="fp")
        self.fn = self.add_variable(shape=(), initializer="zeros", name="fn")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        y_true = ops.cast(y_true, "float32")
        target = y_true[..., 0] > 0.5
        valid = ops.cast(y_true[..., 1] > 0.5, "float32")
        score = ops.cast(y_pred, "float32")[..., 0]  # float32 under any policy
        if self.from_logits:
            score = ops.sigmoid(score)
        pred = score > self.threshold
        t = ops.cast(target, "float32")
        p = ops.cast(pred, "float32")
        self.tp.assign_add(ops.sum(valid * t * p))
        self.fp.assign_add(ops.sum(valid * (1.0 - t) * p))
        self.fn.assign_add(ops.sum(valid * t * (1.0 - p)))

    def result(self) -> Any:
        tp, fp, fn = (ops.convert_to_tensor(v) for v in (self.tp, self.fp, self.fn))
        if self.kind == "iou":
            num, den = tp, tp + fp + fn
        elif self.kind == "dice":
            num, den = 2.0 * tp, 2.0 * tp + fp + fn
        elif self.kind == "precision":
            num, den = tp, tp + fp
        else:
            num, den = tp, tp + fn
        return ops.where(den > 0, num / ops.maximum(den, 1.0), ops.ones_like(den))

    def reset_state(self) -> None:
        for v in (self.tp, self.fp, self.fn):
            v.assign(ops.zeros_like(v))

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(
            {"kind": self.kind, "threshold": self.threshold, "from_logits": self.from_logits}
        )
        return config
