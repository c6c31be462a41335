"""Causally masked 2-D convolution for PixelCNN (van den Oord et al. 2016, arXiv:1601.06759)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

STACKS = ("full", "vertical", "horizontal")


def causal_mask(kernel_size: tuple[int, int], mask_type: str, stack: str) -> np.ndarray:
    """(kh, kw) 0/1 mask of the kernel taps a position may see.

    * ``full``: rows above, and the left part of the centre row (the original PixelCNN);
    * ``vertical``: rows above (type "A") or rows above and the whole centre row (type "B"); by
      induction the centre row of the previous vertical stack depends on rows above only, so the
      vertical stack never sees the current row's content;
    * ``horizontal``: (1, k) kernels, the left part of the row.

    Type "A" (first layer) excludes the centre tap, type "B" includes it.
    """
    kh, kw = kernel_size
    ch, cw = kh // 2, kw // 2
    mask = np.zeros((kh, kw), dtype="float32")
    include_centre = mask_type == "B"
    if stack == "vertical":
        mask[:ch, :] = 1.0
        if include_centre:
            mask[ch, :] = 1.0
    elif stack == "horizontal":
        mask[ch, :cw] = 1.0
        if include_centre:
            mask[ch, cw] = 1.0
    else:
        mask[:ch, :] = 1.0
        mask[ch, :cw] = 1.0
        if include_centre:
            mask[ch, cw] = 1.0
    return mask


@keras.saving.register_keras_serializable(package="mlops_trainers")
class MaskedConv2D(keras.layers.Conv2D):  # type: ignore[misc,unused-ignore]
    """A ``Conv2D`` ("same" padding, stride 1) whose kernel is multiplied by a causal mask.

    The mask is applied in the convolution itself (not by overwriting the kernel), so the masked
    taps get no gradient and the saved kernel is the trained one.

    Args:
        filters: output channels.
        kernel_size: int or (kh, kw), odd.
        mask_type: "A" (excludes the centre: first layer) or "B".
        stack: "full", "vertical" or "horizontal" (see :func:`causal_mask`).
        **kwargs: forwarded to ``keras.layers.Conv2D`` (``padding``/``strides`` are fixed).
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        mask_type: str = "B",
        stack: str = "full",
        **kwargs: Any,
    ) -> None:
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        if stack not in STACKS:
            raise ValueError(f"stack must be one of {STACKS}, got {stack!r}")
        kwargs.pop("padding", None)
        kwargs.pop("strides", None)
        if kwargs.get("data_format") not in (None, "channels_last"):
            raise ValueError("MaskedConv2D is channels_last only")
        super().__init__(filters, kernel_size, padding="same", **kwargs)
        self.mask_type = mask_type
        self.stack = stack
        self._mask = causal_mask(tuple(self.kernel_size), mask_type, stack)[:, :, None, None]

    def convolution_op(self, inputs: Any, kernel: Any) -> Any:
        """The "same" convolution with the masked kernel, computed with only the rows and
        columns of taps the mask keeps (2/5 of a 5x5 vertical kernel and of a 1x5 horizontal one
        are zero): the kernel is cropped to them and the input padded to match, so the output is
        the same and the zero taps cost nothing. The variable keeps its full shape (checkpoints
        and saved models are unchanged)."""
        from keras import ops

        (r0, r1), (c0, c1) = self._taps
        if r1 < r0:  # no tap at all (a 1-wide type-A kernel): only the bias remains
            shape = ops.shape(inputs)
            return ops.zeros((shape[0], shape[1], shape[2], self.filters), dtype=kernel.dtype)
        # ops.slice, not x[...], here and below: TF's gradient of a Slice is one Pad, that of a
        # StridedSlice a generic StridedSliceGrad, which was the costliest op of the PixelCNN's
        # training step after the convolutions (bench/profile_train.py --kinds pixelcnn).
        mask = ops.cast(self._mask[r0 : r1 + 1, c0 : c1 + 1], kernel.dtype)
        *_, ins, outs = kernel.shape
        cropped = ops.slice(kernel, [r0, c0, 0, 0], [r1 - r0 + 1, c1 - c0 + 1, ins, outs]) * mask
        kh, kw = self.kernel_size
        ch, cw = kh // 2, kw // 2
        # output(y, x) = sum in(y + a - ch, x + b - cw) K[a, b]: a "valid" convolution over the
        # input padded by (ch - r0) above and (r1 - ch) below (negative: rows it never reads are
        # cut), likewise for columns.
        top, bottom, left, right = ch - r0, r1 - ch, cw - c0, c1 - cw
        if bottom < 0 or right < 0:
            batch, height, width, channels = ops.shape(inputs)
            inputs = ops.slice(
                inputs,
                [0, 0, 0, 0],
                [batch, height + min(bottom, 0), width + min(right, 0), channels],
            )
        x = ops.pad(
            inputs,
            [[0, 0], [max(top, 0), max(bottom, 0)], [max(left, 0), max(right, 0)], [0, 0]],
        )
        return ops.conv(x, cropped, strides=1, padding="valid", data_format="channels_last")

    @property
    def _taps(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """Inclusive (first, last) rows and columns of the mask's nonzero taps."""
        rows = np.flatnonzero(self._mask[:, :, 0, 0].any(axis=1))
        cols = np.flatnonzero(self._mask[:, :, 0, 0].any(axis=0))
        if not len(rows):
            return (0, -1), (0, -1)
        return (int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1]))

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update({"mask_type": self.mask_type, "stack": self.stack})
        config.pop("padding", None)
        config.pop("strides", None)
        return config
