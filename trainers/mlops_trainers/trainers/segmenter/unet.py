"""U-Net (Ronneberger et al. 2015, arXiv:1505.04597) for cloud masks of multi-band scenes.

Fully convolutional: it is trained on square tiles and predicts any tile whose sides are
multiples of ``2 ** depth``; a whole scene is tiled, predicted and untiled exactly
(:func:`predict_scene`, built on :mod:`mlops_trainers.tiling`), never resized.

Per level: two 3x3 convs with BatchNorm and ReLU, then 2x2 max pooling; the decoder up-samples by
a 2x2 transposed conv and concatenates the encoder's features of the same level (the skip
connections that keep cloud edges sharp). This is the layout of Cloud-Net's predecessors on
38-Cloud (Mohajerani & Saeedi 2019, arXiv:1901.10077) at a fraction of the width. BatchNorm
rather than GroupNorm on purpose: a uniform tile (all cloud, all water) normalised per sample would
lose its absolute brightness, which is exactly what tells cloud from water.

The output is a per-pixel cloud *probability* (a sigmoid layer, float32, after a linear
``logits`` conv), so ``model.keras`` and the ONNX export (:mod:`mlops_trainers.onnx_export`) are
usable as they are. Training uses the logits (:meth:`UNet.logits_model`, the same layers without
the sigmoid) with :class:`~mlops_trainers.trainers.segmenter.bce_dice_loss.BCEDiceLoss` and
:class:`~mlops_trainers.trainers.segmenter.masked_segmentation_metric.MaskedSegmentationMetric`
(``from_logits=True``): BCE on logits, sigmoid after, as the seed trained it.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from mlops_trainers import distribute
from mlops_trainers.tiling import predict_scene as _predict_tiles


@keras.saving.register_keras_serializable(package="mlops_trainers")
class UNet(keras.Model):  # type: ignore[misc,unused-ignore]
    """``(B, H, W, bands) -> (B, H, W, 1)`` cloud probability; H, W multiples of ``2 ** depth``.

    Args:
        bands: input bands.
        base_filters: filters of the first level, doubled per level.
        depth: number of down-sampling levels.
        **kwargs: forwarded to ``keras.Model`` (``name``, ``trainable``).
    """

    def __init__(
        self, bands: int = 4, base_filters: int = 16, depth: int = 3, **kwargs: Any
    ) -> None:
        # === Layers ===
        inputs = keras.Input((None, None, bands), name="scene")
        x = inputs
        skips = []
        for level in range(depth):
            x = _conv_block(x, base_filters * 2**level, f"down{level}")
            skips.append(x)
            x = keras.layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
        x = _conv_block(x, base_filters * 2**depth, "bottom")
        for level in reversed(range(depth)):
            filters = base_filters * 2**level
            x = keras.layers.Conv2DTranspose(filters, 2, strides=2, name=f"up{level}_transpose")(x)
            x = keras.layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
            x = _conv_block(x, filters, f"up{level}")
        # float32 output even under mixed precision: probabilities near 0/1 need the resolution.
        logits = keras.layers.Conv2D(1, 1, dtype="float32", name="logits")(x)
        outputs = keras.layers.Activation("sigmoid", dtype="float32", name="probability")(logits)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.bands = bands
        self.base_filters = base_filters
        self.depth = depth

    def logits_model(self) -> keras.Model:
        """The same layers (shared weights) up to the logits: what the trainer trains."""
        return keras.Model(
            self.inputs[0], self.get_layer("logits").output, name=f"{self.name}_logits"
        )

    @property
    def multiple(self) -> int:
        """Tile sides must be multiples of this."""
        return int(2**self.depth)

    def predict_scene(
        self, scene: np.ndarray, tile_size: int, batch_size: int = 8, overlap: int = 0
    ) -> np.ndarray:
        """Cloud probability (H, W) of a whole (H, W, bands) scene: tile, predict, untile.

        ``overlap``: context pixels per tile side that are predicted and dropped (overlap-tile,
        see :func:`mlops_trainers.tiling.predict_scene`).
        """
        if tile_size % self.multiple:
            raise ValueError(
                f"tile_size {tile_size} must be a multiple of 2 ** depth = {self.multiple}"
            )

        def run(tiles: np.ndarray) -> np.ndarray:
            return np.asarray(self.predict_on_batch(tiles))[..., 0]

        return _predict_tiles(run, scene, tile_size, batch_size, overlap)

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "bands": self.bands,
            "base_filters": self.base_filters,
            "depth": self.depth,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> UNet:
        return cls(**config)


def _conv_block(x: Any, filters: int, name: str) -> Any:
    for i in (1, 2):
        # No bias: BatchNorm's beta replaces it.
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(
            x
        )
        # momentum 0.9, not Keras' 0.99: the moving statistics then settle within tens of steps,
        # so short runs (and the CPU demo) predict in inference mode what they learnt.
        # Data-parallel (mlops_trainers.distribute): statistics over the global batch, the same
        # on every replica, so the moving averages do not drift apart; one device: as always.
        x = keras.layers.BatchNormalization(
            momentum=0.9, synchronized=distribute.replicas() > 1, name=f"{name}_bn{i}"
        )(x)
        x = keras.layers.ReLU(name=f"{name}_relu{i}")(x)
    return x
