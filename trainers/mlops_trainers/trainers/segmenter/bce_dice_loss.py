"""Cloud-mask loss: weighted binary cross-entropy plus soft Dice, over valid pixels only.

* BCE with ``pos_weight`` (as ``torch.nn.BCEWithLogitsLoss(pos_weight=...)``) counters the class
  imbalance of cloud masks: many scenes are mostly clear.
* Soft Dice (Milletari et al. 2016, V-Net, arXiv:1606.04797) optimises overlap directly and does
  not care how much clear ground a tile has; with the +1 smoothing of both numerator and
  denominator an all-empty tile predicted empty scores a perfect 0 loss, never 0/0 = NaN.
* ``y_true`` carries the validity mask as a second channel (1 = real pixel, 0 = tiling padding),
  because Dice is not a per-pixel loss and so cannot be masked by Keras' ``sample_weight``.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="mlops_trainers")
class BCEDiceLoss(keras.losses.Loss):  # type: ignore[misc,unused-ignore]
    """``y_true (B, H, W, 2)`` = (cloud 0/1, valid 0/1); ``y_pred (B, H, W, 1)`` probabilities.

    Returns one value per tile: masked-mean BCE + ``dice_weight`` * (1 - soft Dice).

    Args:
        pos_weight: weight of cloud pixels in the BCE.
        dice_weight: weight of the Dice term (0 = BCE only).
        smooth: additive smoothing of the Dice ratio.
        **kwargs: forwarded to ``keras.losses.Loss`` (``name``, ``reduction``, ``dtype``).
    """

    def __init__(
        self,
        pos_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth: float = 1.0,
        name: str = "bce_dice",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.pos_weight = pos_weight
        self.dice_weight = dice_weight
        self.smooth = smooth

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        target, valid = y_true[..., 0], y_true[..., 1]
        # Clip like keras.losses.binary_crossentropy does for probabilities: log(0) never happens.
        eps = keras.config.epsilon()
        p = ops.clip(y_pred[..., 0], eps, 1.0 - eps)
        bce = -(self.pos_weight * target * ops.log(p) + (1.0 - target) * ops.log(1.0 - p))
        axes = (1, 2)
        count = ops.maximum(ops.sum(valid, axis=axes), 1.0)
        bce = ops.sum(valid * bce, axis=axes) / count
        pv = p * valid
        tv = target * valid
        intersection = ops.sum(pv * tv, axis=axes)
        dice = (2.0 * intersection + self.smooth) / (
            ops.sum(pv, axis=axes) + ops.sum(tv, axis=axes) + self.smooth
        )
        return bce + self.dice_weight * (1.0 - dice)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(
            {"pos_weight": self.pos_weight, "dice_weight": self.dice_weight, "smooth": self.smooth}
        )
        return config
