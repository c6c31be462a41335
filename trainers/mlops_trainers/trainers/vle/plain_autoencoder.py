"""The baseline of the VLE: a plain convolutional autoencoder with the budget of k tokens.

Same stem, same stacks and the same token grid as
:class:`~mlops_trainers.trainers.vle.variable_length_embedding.VariableLengthEmbedding`, but one
pass: the image goes in once and comes out of one token with ``k * latent_channels`` channels,
i.e. exactly the numbers k VLE tokens hold. A VLE whose MSE after k tokens is close to this
autoencoder's pays little for being able to stop after any k; one far above it wastes its steps.
"""

from __future__ import annotations

from typing import Any

import keras

from mlops_trainers.trainers.vle.stacks import down_stack, up_stack


@keras.saving.register_keras_serializable(package="mlops_trainers")
class PlainAutoencoder(keras.Model):  # type: ignore[misc,unused-ignore]
    """Images (B, H, W, C) in [-1, 1] -> reconstructions; H, W multiples of 2 ** (downsample + 1).

    Args:
        channels: image channels.
        filters: filters of every conv.
        downsample: stride-2 convs after the stem (the token grid is H / 2 ** (downsample + 1)).
        latent_channels: channels of the one token (k tokens' worth for a budget of k).
        **kwargs: forwarded to ``keras.Model``.
    """

    def __init__(
        self,
        channels: int = 1,
        *,
        filters: int = 32,
        downsample: int = 2,
        latent_channels: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.channels = channels
        self.filters = filters
        self.downsample = downsample
        self.latent_channels = latent_channels

        # === Layers ===
        image = keras.Input((None, None, channels), name="image")
        x = keras.layers.Conv2D(
            filters, 3, strides=2, padding="same", activation="relu", name="stem"
        )(image)
        # Where the VLE has its ConvLSTM: a conv of the same size, without state.
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="middle")(x)
        x = down_stack(x, filters, downsample, "enc")
        token = keras.layers.Conv2D(latent_channels, 1, name="to_token")(x)
        self.encoder = keras.Model(image, token, name="encoder")

        z = keras.Input((None, None, latent_channels), name="token")
        y = keras.layers.Conv2D(filters, 1, activation="relu", name="from_token")(z)
        y = up_stack(y, filters, downsample + 1, "dec")
        out = keras.layers.Conv2D(channels, 3, padding="same", name="to_image")(y)
        self.decoder = keras.Model(z, out, name="decoder")
        self.built = True

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return self.decoder(self.encoder(inputs, training=training), training=training)

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "channels": self.channels,
            "filters": self.filters,
            "downsample": self.downsample,
            "latent_channels": self.latent_channels,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PlainAutoencoder:
        return cls(**config)
