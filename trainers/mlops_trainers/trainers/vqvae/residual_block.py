"""Residual block of the VQ-VAE encoder/decoder (van den Oord et al. 2017, arXiv:1711.00937)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="mlops_trainers")
class ResidualBlock(keras.layers.Layer):  # type: ignore[misc,unused-ignore]
    """``x + conv1x1(relu(conv3x3(relu(x))))``; keeps the number of channels.

    Args:
        filters: channels of the input and the output.
        hidden_filters: channels of the 3x3 convolution; default ``filters // 2``.
        **kwargs: forwarded to ``keras.layers.Layer``.
    """

    def __init__(self, filters: int, hidden_filters: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.hidden_filters = hidden_filters or max(1, filters // 2)
        self.conv3 = keras.layers.Conv2D(
            self.hidden_filters, 3, padding="same", dtype=self.dtype_policy, name="conv3x3"
        )
        self.conv1 = keras.layers.Conv2D(
            filters, 1, padding="same", dtype=self.dtype_policy, name="conv1x1"
        )

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.conv3.build(input_shape)
        self.conv1.build((*input_shape[:-1], self.hidden_filters))
        self.built = True

    def call(self, inputs: Any) -> Any:
        hidden = self.conv3(ops.relu(inputs))
        return inputs + self.conv1(ops.relu(hidden))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update({"filters": self.filters, "hidden_filters": self.hidden_filters})
        return config
