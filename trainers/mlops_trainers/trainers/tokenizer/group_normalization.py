"""GroupNorm with its gradient written out: Keras' layer, at about 0.6x its training cost on CPU.

Keras' ``GroupNormalization`` reshapes a channels-last ``(N, H, W, C)`` input into groups
``(N, H, W, G, C/G)`` and takes its moments over the non-adjacent axes (1, 2, 4); automatic
differentiation then adds broadcasts (``Tile``) and element-wise ops per statistic. In the
tokenizer's profile (``bench/results/profile_tokenizer.md``) those element-wise ops were most of
the time the model spent outside its convolutions.

Here the statistics are per-channel sums over the spatial axes (a reduction TensorFlow does well
on channels-last data), folded into groups on the small ``(N, C)`` tensors; the normalisation is
one multiply-add with per-(image, channel) coefficients; and the backward pass is the closed form
of GroupNorm's gradient (Wu & He 2018, arXiv:1803.08494, as batch norm's): two spatial sums of
``dy`` and ``dy * (x - mean)``, then one multiply-add per input again. The variance is two-pass
(mean first, then the centred squares), as Keras' ``tf.nn.moments`` is, so a large mean does not
cancel it away. The statistics are float32 under any policy, as Keras'.

The class keeps Keras' name and weights (``gamma``, ``beta``): Keras addresses a layer in a
saved file by its class name, so checkpoints written with Keras' layer load into this one and
back. Where the fast path does not apply (a channel axis other than the last, ``scale`` or
``center`` off) it is Keras' layer.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="mlops_trainers")
class GroupNormalization(keras.layers.GroupNormalization):  # type: ignore[misc,unused-ignore]
    """``keras.layers.GroupNormalization`` (same arguments and weights) with a closed-form
    gradient for channels-last inputs; see the module docstring."""

    def call(self, inputs: Any) -> Any:
        rank = len(inputs.shape)
        if not (self.scale and self.center and self.axis in (-1, rank - 1) and rank >= 3):
            return super().call(inputs)
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        gamma = ops.cast(self.gamma, x.dtype)
        beta = ops.cast(self.beta, x.dtype)
        return ops.cast(_group_norm(x, gamma, beta, self.groups, self.epsilon), self.compute_dtype)


def _group_norm(x: Any, gamma: Any, beta: Any, groups: int, epsilon: float) -> Any:
    """GroupNorm of channels-last ``x`` (rank >= 3) with per-channel ``gamma``, ``beta``."""
    spatial = tuple(range(1, len(x.shape) - 1))
    channels = int(x.shape[-1])
    size = channels // groups
    # Elements per (image, group): the spatial size is dynamic (the tokenizer takes any size).
    shape = ops.shape(x)
    count = ops.cast(size, x.dtype)
    for axis in spatial:
        count = count * ops.cast(shape[axis], x.dtype)

    def per_group(per_channel: Any) -> Any:
        """(N, C) sums -> (N, C): each channel gets its group's total / count."""
        totals = ops.sum(ops.reshape(per_channel, (-1, groups, size)), axis=-1)
        return ops.repeat(totals / count, size, axis=1)

    def expand(per_channel: Any) -> Any:
        """(N, C) -> (N, 1, ..., 1, C), broadcastable against ``x``."""
        for axis in spatial:
            per_channel = ops.expand_dims(per_channel, axis)
        return per_channel

    @ops.custom_gradient  # type: ignore[untyped-decorator]
    def normalize(x: Any, gamma: Any, beta: Any) -> Any:
        mean = per_group(ops.sum(x, axis=spatial))  # (N, C)
        centred = x - expand(mean)
        variance = per_group(ops.sum(ops.square(centred), axis=spatial))
        rstd = ops.rsqrt(variance + epsilon)  # (N, C)
        outputs = centred * expand(rstd * gamma) + beta

        def grad(*args: Any, upstream: Any = None) -> tuple[Any, Any, Any]:
            dy = args[0] if upstream is None else upstream
            # With xhat = centred * rstd, y = gamma * xhat + beta:
            # dx = rstd * (gamma*dy - mean_g(gamma*dy) - xhat * mean_g(gamma*dy*xhat)).
            sum_dy = ops.sum(dy, axis=spatial)  # (N, C)
            sum_dy_centred = ops.sum(dy * centred, axis=spatial)  # (N, C)
            mean_gdy = per_group(gamma * sum_dy)
            mean_gdy_xhat = per_group(gamma * rstd * sum_dy_centred)
            dx = (
                dy * expand(rstd * gamma)
                + centred * expand(-rstd * rstd * mean_gdy_xhat)
                + expand(-rstd * mean_gdy)
            )
            dgamma = ops.sum(rstd * sum_dy_centred, axis=0)
            dbeta = ops.sum(sum_dy, axis=0)
            return dx, dgamma, dbeta

        return outputs, grad

    return normalize(x, gamma, beta)
