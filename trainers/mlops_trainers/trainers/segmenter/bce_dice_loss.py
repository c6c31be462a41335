"""Cloud-mask loss: weighted binary cross-entropy plus soft Dice, over valid pixels only.

* BCE with ``pos_weight`` (as ``torch.nn.BCEWithLogitsLoss(pos_weight=...)``) counters the class
  imbalance of cloud masks: many scenes are mostly clear. With ``from_logits`` (what the trainer
  uses, as the seed did) it is computed from the logits in the stable form
  ``(1 - z) x + (1 + (w - 1) z) softplus(-x)`` (the formula of PyTorch's ``BCEWithLogitsLoss``):
  no probability is ever clipped, so a confident wrong pixel still has a gradient.
* Soft Dice (Milletari et al. 2016, V-Net, arXiv:1606.04797) optimises overlap directly and does
  not care how much clear ground a tile has; with the +1 smoothing of both numerator and
  denominator an all-empty tile predicted empty scores a perfect 0 loss, never 0/0 = NaN.
* ``dice="batch"`` sums the Dice ratio's terms over the whole batch before dividing (one ratio
  per batch, as in the seed): a tile with no cloud then no longer scores the smoothing term's
  arbitrary 0/0 on its own; ``"tile"`` is one ratio per tile.
* ``y_true`` carries the validity mask as a second channel (1 = real pixel, 0 = tiling padding),
  because Dice is not a per-pixel loss and so cannot be masked by Keras' ``sample_weight``.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from mlops_trainers.distribute import all_reduce_sum


@keras.saving.register_keras_serializable(package="mlops_trainers")
class BCEDiceLoss(keras.losses.Loss):  # type: ignore[misc,unused-ignore]
    """``y_true (B, H, W, 2)`` = (cloud 0/1, valid 0/1); ``y_pred (B, H, W, 1)`` probabilities,
    or logits with ``from_logits``.

    Returns one value per tile: masked-mean BCE + ``dice_weight`` * (1 - soft Dice) (with
    ``dice="batch"`` the batch's one Dice ratio, the same for every tile, so the batch mean is
    the mean BCE plus the batch's Dice term).

    Args:
        pos_weight: weight of cloud pixels in the BCE.
        dice_weight: weight of the Dice term (0 = BCE only).
        smooth: additive smoothing of the Dice ratio.
        from_logits: ``y_pred`` holds logits (sigmoid applied here) rather than probabilities.
        dice: ``"tile"`` (a ratio per tile) or ``"batch"`` (one ratio over the batch).
        **kwargs: forwarded to ``keras.losses.Loss`` (``name``, ``reduction``, ``dtype``).
    """

    def __init__(
        self,
        pos_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth: float = 1.0,
        *,
        from_logits: bool = False,
        dice: str = "tile",
        name: str = "bce_dice",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if dice not in ("tile", "batch"):
            raise ValueError(f"dice must be 'tile' or 'batch', got {dice!r}")
        self.pos_weight = pos_weight
        self.dice_weight = dice_weight
        self.smooth = smooth
        self.from_logits = from_logits
        self.dice = dice

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        target, valid = y_true[..., 0], y_true[..., 1]
        if self.from_logits:
            x = y_pred[..., 0]
            p = ops.sigmoid(x)
            # -[w z log s(x) + (1 - z) log(1 - s(x))] with log s(x) = -softplus(-x) and
            # log(1 - s(x)) = -x - softplus(-x): exact, and finite for any x.
            bce = (1.0 - target) * x + (1.0 + (self.pos_weight - 1.0) * target) * ops.softplus(-x)
        else:
            # Clip like keras.losses.binary_crossentropy does for probabilities: no log(0).
            eps = keras.config.epsilon()
            p = ops.clip(y_pred[..., 0], eps, 1.0 - eps)
            bce = -(self.pos_weight * target * ops.log(p) + (1.0 - target) * ops.log(1.0 - p))
        axes = (1, 2)
        count = ops.maximum(ops.sum(valid, axis=axes), 1.0)
        bce = ops.sum(valid * bce, axis=axes) / count
        pv = p * valid
        tv = target * valid
        if self.dice == "batch":
            # Data-parallel: the global batch's ratio on every replica (the sums all-reduced,
            # gradients included), not a ratio per replica slice (mlops_trainers.distribute).
            intersection = all_reduce_sum(ops.sum(pv * tv))
            union = all_reduce_sum(ops.sum(pv) + ops.sum(tv))
            dice = (2.0 * intersection + self.smooth) / (union + self.smooth)
            dice = dice * ops.ones_like(bce)
        else:
            intersection = ops.sum(pv * tv, axis=axes)
            dice = (2.0 * intersection + self.smooth) / (
                ops.sum(pv, axis=axes) + ops.sum(tv, axis=axes) + self.smooth
            )
        return bce + self.dice_weight * (1.0 - dice)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(
            {
                "pos_weight": self.pos_weight,
                "dice_weight": self.dice_weight,
                "smooth": self.smooth,
                "from_logits": self.from_logits,
                "dice": self.dice,
            }
        )
        return config
