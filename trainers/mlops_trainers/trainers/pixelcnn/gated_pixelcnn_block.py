"""Gated PixelCNN layer with vertical and horizontal stacks (van den Oord et al. 2016,
"Conditional Image Generation with PixelCNN Decoders", arXiv:1606.05328): the two stacks
remove the blind spot of masked convolutions; ``tanh(a) * sigmoid(b)`` gates replace ReLUs."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from mlops_trainers.trainers.pixelcnn.masked_conv2d import MaskedConv2D


def gate(x: Any) -> Any:
    a, b = ops.split(x, 2, axis=-1)
    return ops.tanh(a) * ops.sigmoid(b)


@keras.saving.register_keras_serializable(package="mlops_trainers")
class GatedPixelCNNBlock(keras.layers.Layer):  # type: ignore[misc,unused-ignore]
    """``(vertical, horizontal) -> (vertical, horizontal)``, both ``(B, H, W, filters)``.

    Args:
        filters: channels of both stacks.
        kernel_size: odd size of the vertical (k x k) and horizontal (1 x k) kernels.
        mask_type: "A" for the first layer (the current position is not seen, and the horizontal
            stack has no residual, which would leak it), "B" for the following ones.
        **kwargs: forwarded to ``keras.layers.Layer``.
    """

    def __init__(self, filters: int, kernel_size: int = 5, mask_type: str = "B", **kwargs: Any):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.mask_type = mask_type
        policy = self.dtype_policy
        self.vertical = MaskedConv2D(
            2 * filters,
            (kernel_size, kernel_size),
            mask_type,
            "vertical",
            dtype=policy,
            name="vertical",
        )
        self.horizontal = MaskedConv2D(
            2 * filters,
            (1, kernel_size),
            mask_type,
            "horizontal",
            dtype=policy,
            name="horizontal",
        )
        self.vertical_to_horizontal = keras.layers.Conv2D(
            2 * filters, 1, dtype=policy, name="vertical_to_horizontal"
        )
        self.horizontal_out = keras.layers.Conv2D(filters, 1, dtype=policy, name="horizontal_out")

    def build(self, input_shape: Any) -> None:
        vertical_shape, horizontal_shape = input_shape
        self.vertical.build(vertical_shape)
        self.horizontal.build(horizontal_shape)
        wide = (*vertical_shape[:-1], 2 * self.filters)
        self.vertical_to_horizontal.build(wide)
        self.horizontal_out.build((*horizontal_shape[:-1], self.filters))
        self.built = True

    def call(self, inputs: Any) -> tuple[Any, Any]:
        vertical, horizontal = inputs
        v = self.vertical(vertical)
        return gate(v), self.horizontal_step(horizontal, self.vertical_to_horizontal(v))

    def horizontal_step(self, horizontal: Any, from_vertical: Any) -> Any:
        """The horizontal stack's output given what the vertical stack adds
        (``vertical_to_horizontal`` of its pre-gate output): on the whole grid in :meth:`call`,
        on one row when sampling (the 1 x k kernels see that row only)."""
        h = self.horizontal(horizontal) + from_vertical
        h_out = self.horizontal_out(gate(h))
        if self.mask_type == "B":
            h_out = h_out + horizontal
        return h_out

    def compute_output_shape(self, input_shape: Any) -> Any:
        vertical_shape, horizontal_shape = input_shape
        return (
            (*vertical_shape[:-1], self.filters),
            (*horizontal_shape[:-1], self.filters),
        )

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(
            {"filters": self.filters, "kernel_size": self.kernel_size, "mask_type": self.mask_type}
        )
        return config
