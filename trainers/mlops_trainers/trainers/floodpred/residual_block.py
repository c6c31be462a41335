"""A ResNet basic block (He et al. 2016, arXiv:1512.03385) for the flood predictor's ResNet-style
encoder option: ``relu(skip(x) + conv(relu(conv(x))))``, a 1x1 conv skip when channels change.
No normalisation layer: batches of a few windows make BatchNorm statistics noisy, and the inputs
are already normalised per channel."""

from __future__ import annotations

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="mlops_trainers")
class ResidualBlock(keras.layers.Layer):  # type: ignore[misc,unused-ignore]
    """Two 3x3 convs with a residual connection.

    Args:
        filters: output channels.
        **kwargs: forwarded to ``keras.layers.Layer``.
    """

    def __init__(self, filters: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.conv1 = keras.layers.Conv2D(
            filters, 3, padding="same", activation="relu", dtype=self.dtype_policy, name="conv1"
        )
        self.conv2 = keras.layers.Conv2D(
            filters, 3, padding="same", dtype=self.dtype_policy, name="conv2"
        )
        self.skip: keras.layers.Conv2D | None = None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.conv1.build(input_shape)
        self.conv2.build((*input_shape[:-1], self.filters))
        if int(input_shape[-1]) != self.filters:  # type: ignore[arg-type]
            self.skip = keras.layers.Conv2D(self.filters, 1, dtype=self.dtype_policy, name="skip")
            self.skip.build(input_shape)
        self.built = True

    def call(self, inputs: Any) -> Any:
        skip = inputs if self.skip is None else self.skip(inputs)
        return keras.ops.relu(skip + self.conv2(self.conv1(inputs)))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], self.filters)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update({"filters": self.filters})
        return config
