"""Residual 2x up-sampling block of the tokenizer's decoder.

Both paths up-sample: the skip by nearest-neighbour repetition and a 1x1 conv, the residual path
by GroupNorm, swish, nearest up-sampling and two 3x3 convs. Up-sampling inside the residual (as
in BigGAN's up-blocks, Brock et al. 2019, arXiv:1809.11096, and the VQGAN decoder's upsample
layers) keeps an identity-like path through the whole decoder; nearest up-sampling followed by a
conv avoids the checkerboard artefacts of transposed convolutions (Odena et al. 2016,
https://distill.pub/2016/deconv-checkerboard/).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from mlops_trainers.trainers.tokenizer.group_norm_residual_block import _groups
from mlops_trainers.trainers.tokenizer.group_normalization import GroupNormalization


@keras.saving.register_keras_serializable(package="mlops_trainers")
class ResidualUpsampleBlock(keras.layers.Layer):  # type: ignore[misc,unused-ignore]
    """``up(conv1x1(x)) + conv(swish(GN(conv(up(swish(GN(x)))))))``: doubles height and width.

    Args:
        filters: output channels.
        groups: GroupNorm groups.
        **kwargs: forwarded to ``keras.layers.Layer``.
    """

    def __init__(self, filters: int, groups: int = 8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.groups = groups
        self.up = keras.layers.UpSampling2D(
            2, interpolation="nearest", dtype=self.dtype_policy, name="up"
        )
        self.conv1 = keras.layers.Conv2D(
            filters, 3, padding="same", dtype=self.dtype_policy, name="conv1"
        )
        self.conv2 = keras.layers.Conv2D(
            filters, 3, padding="same", dtype=self.dtype_policy, name="conv2"
        )
        self.skip = keras.layers.Conv2D(filters, 1, dtype=self.dtype_policy, name="skip")
        self.norm2 = GroupNormalization(
            _groups(groups, filters), dtype=self.dtype_policy, name="norm2"
        )
        self.norm1: GroupNormalization | None = None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = int(input_shape[-1])  # type: ignore[arg-type]
        self.norm1 = GroupNormalization(
            _groups(self.groups, channels), dtype=self.dtype_policy, name="norm1"
        )
        self.norm1.build(input_shape)
        up_shape = self.up.compute_output_shape(input_shape)
        self.conv1.build(up_shape)
        hidden = (*up_shape[:-1], self.filters)
        self.norm2.build(hidden)
        self.conv2.build(hidden)
        self.skip.build(input_shape)
        self.built = True

    def call(self, inputs: Any) -> Any:
        assert self.norm1 is not None
        x = self.conv1(self.up(ops.silu(self.norm1(inputs))))
        x = self.conv2(ops.silu(self.norm2(x)))
        return self.up(self.skip(inputs)) + x

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        up = self.up.compute_output_shape(input_shape)
        return (*up[:-1], self.filters)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update({"filters": self.filters, "groups": self.groups})
        return config
