"""The convolution stacks the VLE and its plain-autoencoder baseline share, so that the baseline
differs from the VLE only by what is compared: no loop, no recurrence, one wider token.

Down: ``count`` stride-2 3x3 convs with ReLU. Up: ``count`` times nearest 2x up-sampling then a
3x3 conv with ReLU (up-sampling then a conv, not a transposed conv: no checkerboard artefacts,
Odena et al. 2016, https://distill.pub/2016/deconv-checkerboard/).
"""

from __future__ import annotations

from typing import Any

import keras

__all__ = ["down_stack", "up_stack"]


def down_stack(x: Any, filters: int, count: int, prefix: str) -> Any:
    for i in range(count):
        x = keras.layers.Conv2D(
            filters, 3, strides=2, padding="same", activation="relu", name=f"{prefix}_down{i}"
        )(x)
    return x


def up_stack(x: Any, filters: int, count: int, prefix: str) -> Any:
    for i in range(count):
        x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{prefix}_up{i}")(x)
        x = keras.layers.Conv2D(
            filters, 3, padding="same", activation="relu", name=f"{prefix}_conv{i}"
        )(x)
    return x
