"""Residual block of the VQGAN / MaskGIT tokenizer: GroupNorm, swish, 3x3 conv, twice.

As in VQGAN (Esser et al. 2021, arXiv:2012.09841) and MaskGIT's tokenizer (Chang et al. 2022,
arXiv:2202.04200, which drops VQGAN's attention and keeps only residual blocks). GroupNorm (Wu & He
2018, arXiv:1803.08494) instead of BatchNorm: tokenizer batches are small, and a token must not
depend on the other images of its batch. Swish (SiLU; Ramachandran et al. 2017,
arXiv:1710.05941) as in both.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from mlops_trainers.trainers.tokenizer.group_normalization import GroupNormalization


@keras.saving.register_keras_serializable(package="mlops_trainers")
class GroupNormResidualBlock(keras.layers.Layer):  # type: ignore[misc,unused-ignore]
    """``skip(x) + conv(swish(GN(conv(swish(GN(x))))))``; a 1x1 conv skip when channels change.

    Args:
        filters: output channels.
        groups: GroupNorm groups (capped at the channel count, and must divide it).
        **kwargs: forwarded to ``keras.layers.Layer``.
    """

    def __init__(self, filters: int, groups: int = 8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.groups = groups
        self.conv1 = keras.layers.Conv2D(
            filters, 3, padding="same", dtype=self.dtype_policy, name="conv1"
        )
        self.conv2 = keras.layers.Conv2D(
            filters, 3, padding="same", dtype=self.dtype_policy, name="conv2"
        )
        self.norm2 = GroupNormalization(
            _groups(groups, filters), dtype=self.dtype_policy, name="norm2"
        )
        self.norm1: GroupNormalization | None = None
        self.skip: keras.layers.Conv2D | None = None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = int(input_shape[-1])  # type: ignore[arg-type]
        self.norm1 = GroupNormalization(
            _groups(self.groups, channels), dtype=self.dtype_policy, name="norm1"
        )
        self.norm1.build(input_shape)
        self.conv1.build(input_shape)
        hidden = (*input_shape[:-1], self.filters)
        self.norm2.build(hidden)
        self.conv2.build(hidden)
        if channels != self.filters:
            self.skip = keras.layers.Conv2D(self.filters, 1, dtype=self.dtype_policy, name="skip")
            self.skip.build(input_shape)
        self.built = True

    def call(self, inputs: Any) -> Any:
        assert self.norm1 is not None
        x = self.conv1(ops.silu(self.norm1(inputs)))
        x = self.conv2(ops.silu(self.norm2(x)))
        skip = inputs if self.skip is None else self.skip(inputs)
        return skip + x

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], self.filters)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update({"filters": self.filters, "groups": self.groups})
        return config


def _groups(groups: int, channels: int) -> int:
    """The largest group count <= ``groups`` that divides ``channels`` (GroupNorm needs one)."""
    g = max(1, min(groups, channels))
    while channels % g:
        g -= 1
    return g
