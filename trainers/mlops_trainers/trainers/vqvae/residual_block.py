"""Residual block of the VQ-VAE encoder/decoder (van den Oord et al. 2017, arXiv:1711.00937)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

# Slope of leaky ReLU below zero: 0.2, as in DCGAN (Radford et al. 2016, arXiv:1511.06434).
LEAKY_SLOPE = 0.2


@keras.saving.register_keras_serializable(package="mlops_trainers")
class ResidualBlock(keras.layers.Layer):  # type: ignore[misc,unused-ignore]
    """``x + conv1x1(act(conv3x3(act(x))))``; keeps the number of channels.

    Args:
        filters: channels of the input and the output.
        hidden_filters: channels of the 3x3 convolution; default ``filters // 2``.
        activation: ``"relu"`` or ``"leaky_relu"`` (slope 0.2 below zero).
        kernel_initializer: initialiser of both convolutions.
        **kwargs: forwarded to ``keras.layers.Layer``.
    """

    def __init__(
        self,
        filters: int,
        hidden_filters: int | None = None,
        activation: str = "relu",
        kernel_initializer: str = "glorot_uniform",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.hidden_filters = hidden_filters or max(1, filters // 2)
        self.activation = activation
        self.kernel_initializer = kernel_initializer
        self.conv3 = keras.layers.Conv2D(
            self.hidden_filters,
            3,
            padding="same",
            kernel_initializer=kernel_initializer,
            dtype=self.dtype_policy,
            name="conv3x3",
        )
        self.conv1 = keras.layers.Conv2D(
            filters,
            1,
            padding="same",
            kernel_initializer=kernel_initializer,
            dtype=self.dtype_policy,
            name="conv1x1",
        )

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.conv3.build(input_shape)
        self.conv1.build((*input_shape[:-1], self.hidden_filters))
        self.built = True

    def _act(self, x: Any) -> Any:
        if self.activation == "leaky_relu":
            return ops.leaky_relu(x, negative_slope=LEAKY_SLOPE)
        return ops.relu(x)

    def call(self, inputs: Any) -> Any:
        hidden = self.conv3(self._act(inputs))
        return inputs + self.conv1(self._act(hidden))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "hidden_filters": self.hidden_filters,
                "activation": self.activation,
                "kernel_initializer": self.kernel_initializer,
            }
        )
        return config
