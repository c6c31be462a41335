"""The flood predictor: an encoder-decoder from past frames and the bed to the next frames.

The seed's simplified encoder-decoder: a 3x3 conv stem, ``downsample`` stride-2 stages (filters
doubling) down to the latent grid (a 64x64 frame gives the seed's 32x32 grid with one stage),
``latent_blocks`` convs there, and a decoder of nearest up-sampling + 3x3 convs back to the frame
(no transposed convs: no checkerboard artefacts, Odena et al. 2016). The ``resnet`` option puts a
:class:`ResidualBlock` in every stage and at the latent grid instead of plain convs.

The head predicts the *change* from the last past frame, for every future frame: its last conv
starts at zero, so an untrained model is exactly the persistence baseline (repeat the last
frame), and what training adds is what the model learnt about the flow. Output channels are
``[d, u, v]`` per future frame, normalised like the input.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from mlops_trainers.trainers.floodpred.residual_block import ResidualBlock

ENCODERS = ("simple", "resnet")


@keras.saving.register_keras_serializable(package="mlops_trainers")
class FloodPredictor(keras.Model):  # type: ignore[misc,unused-ignore]
    """``(B, H, W, 3 * past + 1)`` -> ``(B, H, W, 3 * future)``; H, W multiples of 2 ** downsample.

    Args:
        past: past frames in the input (``[d, u, v]`` each, then the bed).
        future: future frames predicted.
        encoder: ``simple`` or ``resnet``.
        filters: filters of the first stage, doubled per stride-2 stage.
        downsample: stride-2 stages down to the latent grid.
        latent_blocks: blocks at the latent grid.
        **kwargs: forwarded to ``keras.Model``.
    """

    def __init__(
        self,
        past: int = 4,
        future: int = 6,
        *,
        encoder: str = "simple",
        filters: int = 32,
        downsample: int = 1,
        latent_blocks: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
        self.past = past
        self.future = future
        self.encoder_kind = encoder
        self.filters = filters
        self.downsample = downsample
        self.latent_blocks = latent_blocks
        self.factor = 2**downsample

        # === Layers ===
        def block(x: Any, width: int, name: str) -> Any:
            if encoder == "resnet":
                return ResidualBlock(width, name=name)(x)
            return keras.layers.Conv2D(width, 3, padding="same", activation="relu", name=name)(x)

        inputs = keras.Input((None, None, 3 * past + 1), name="window")
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="stem")(inputs)
        widths = [filters * 2**i for i in range(downsample + 1)]
        for i in range(downsample):
            x = block(x, widths[i], f"enc{i}")
            x = keras.layers.Conv2D(
                widths[i + 1], 3, strides=2, padding="same", activation="relu", name=f"down{i}"
            )(x)
        for i in range(latent_blocks):
            x = block(x, widths[-1], f"latent{i}")
        for i in reversed(range(downsample)):
            x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"up{i}")(x)
            x = keras.layers.Conv2D(
                widths[i], 3, padding="same", activation="relu", name=f"dec{i}"
            )(x)
        change = keras.layers.Conv2D(
            3 * future, 3, padding="same", kernel_initializer="zeros", name="change"
        )(x)
        self.network = keras.Model(inputs, change, name="network")
        self.built = True

    def persistence(self, inputs: Any) -> Any:
        """The last past frame's ``[d, u, v]`` repeated for every future frame."""
        last = inputs[..., 3 * (self.past - 1) : 3 * self.past]
        return ops.tile(last, (1, 1, 1, self.future))

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        inputs = ops.convert_to_tensor(inputs, dtype=self.compute_dtype)
        return self.persistence(inputs) + self.network(inputs, training=training)

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "past": self.past,
            "future": self.future,
            "encoder": self.encoder_kind,
            "filters": self.filters,
            "downsample": self.downsample,
            "latent_blocks": self.latent_blocks,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FloodPredictor:
        return cls(**config)
