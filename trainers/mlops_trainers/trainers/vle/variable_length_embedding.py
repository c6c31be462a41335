"""Variable-length embeddings: an image told in T tokens, each one encoding what is still wrong.

A loop of ``T`` steps (``T`` requested per example, at most ``max_tokens``). Step ``t`` encodes the
residual ``x - rec`` (images in [-1, 1], ``rec`` starting at 0) together with a "tokens requested"
embedding, of the number of tokens asked for so far (``t``): a stride-2 conv stem, a
:class:`ConvLSTMCell` whose state is carried from step to step (it remembers what was already
sent), ``downsample`` stride-2 convs and a 1x1 conv to a small token grid ``z_t`` of
``latent_channels`` (>= 8: the seed's 3-channel tokens collapsed). The decoder maps ``z_t`` (with
the same embedding, which a receiver knows) to an image ``r_t`` that is added to ``rec``:
``rec_k = sum_{t<=k} D(z_t)``, the progressive residual coding of Toderici et al. 2016
("Variable rate image compression with recurrent neural networks", arXiv:1511.06085).

The embedding is of the tokens requested *so far*, not of the total ``T``: the first k tokens are
then the same whatever T is, so an embedding of k tokens is a prefix of a longer one (the point
of a variable-length embedding) and the reconstruction after k tokens is read off any longer
loop. Drawing ``T`` at random for each step and taking the loss on the final reconstruction then
trains every prefix to be a reconstruction of its own (in expectation, the mean of the prefix
losses) at the cost of one loss per step. (An embedding of the total T, tried first, made each
T a separate function to learn: after 300 steps on the canvases the MSE after 3 tokens was
still above that after 2.)

Variant ``mask`` (mask saliency): a small head on the decoder's last features gives a logit
``a_t``, the mask is ``m_t = (1 + tanh(s * a_t)) / 2`` (a scaled tanh) and ``rec += m_t * r_t``,
so each token says where it draws as well as what. Alone, such masks collapse to all-1 (every
step redraws everything) or all-0; the seed's fix, kept here, is a mask-difference loss
``exp(-d)`` with ``d`` the mean absolute difference between ``m_t`` and the previous mask, and
between ``m_t`` and the (clipped) sum of all previous masks: identical masks cost 1, disjoint ones
about ``exp(-area)``.

Loss: the MSE of the final reconstruction over the full image (+ the mask-difference losses).
Steps past an example's ``T`` are computed (the graph is unrolled ``max_tokens`` times, so one
compiled step serves every T) but change nothing: ``rec`` only takes the active steps.

With ``baseline``, the model also holds a :class:`PlainAutoencoder` per budget k = 1..max_tokens
(its own weights, its own MSE term; Adam's per-weight steps keep them independent of the VLE),
so every epoch compares the MSE after k tokens with a plain autoencoder of the same budget
trained on the same batches.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from mlops_trainers.distribute import scale_loss
from mlops_trainers.precision import as_float32
from mlops_trainers.trainers.vle.conv_lstm_cell import ConvLSTMCell
from mlops_trainers.trainers.vle.plain_autoencoder import PlainAutoencoder
from mlops_trainers.trainers.vle.stacks import down_stack, up_stack

VARIANTS = ("vanilla", "mask")


@keras.saving.register_keras_serializable(package="mlops_trainers")
class VariableLengthEmbedding(keras.Model):  # type: ignore[misc,unused-ignore]
    """``{"image": (B, H, W, C) in [-1, 1], "tokens": (B,) int in 1..max_tokens}`` -> dict.

    ``call`` returns ``reconstruction`` (B, H, W, C) after each example's ``tokens`` steps,
    ``steps`` (B, max_tokens, H, W, C) the reconstruction after every step (``steps[:, k - 1]``
    is the reconstruction from k tokens, up to the example's own ``tokens``), ``masks``
    (B, max_tokens, H, W, 1) (ones for ``vanilla``), ``tokens`` (B, max_tokens, h, w,
    latent_channels) and ``active`` (B, max_tokens). A bare image tensor requests
    ``max_tokens``. H and W must be multiples of ``2 ** (downsample + 1)``.

    Args:
        channels: image channels.
        max_tokens: T_max, the longest loop.
        variant: ``vanilla`` or ``mask``.
        filters: filters of the convs and of the ConvLSTM state.
        downsample: stride-2 convs between the ConvLSTM and the token.
        latent_channels: channels of a token.
        mask_scale: slope ``s`` of the mask's scaled tanh.
        mask_diff_weight: weight of the mask-difference losses.
        baseline: also hold and train plain autoencoders with the budget of k tokens.
        **kwargs: forwarded to ``keras.Model``.
    """

    def __init__(
        self,
        channels: int = 1,
        *,
        max_tokens: int = 4,
        variant: str = "vanilla",
        filters: int = 32,
        downsample: int = 2,
        latent_channels: int = 8,
        mask_scale: float = 2.0,
        mask_diff_weight: float = 0.05,
        baseline: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.channels = channels
        self.max_tokens = max_tokens
        self.variant = variant
        self.filters = filters
        self.downsample = downsample
        self.latent_channels = latent_channels
        self.mask_scale = mask_scale
        self.mask_diff_weight = mask_diff_weight
        self.baseline = baseline
        self.factor = 2 ** (downsample + 1)

        # === Layers ===
        # "Tokens requested": the count so far, 1..T_max (index t = count - 1).
        self.requested = keras.layers.Embedding(max_tokens, filters, name="requested")
        self.requested.build((None,))

        residual = keras.Input((None, None, channels), name="residual")
        cond = keras.Input((filters,), name="cond")
        bias = keras.layers.Reshape((1, 1, filters), name="cond_map")(cond)
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", name="stem_conv")(residual)
        x = keras.layers.Activation("relu", name="stem_relu")(keras.layers.Add()([x, bias]))
        self.stem = keras.Model([residual, cond], x, name="stem")

        self.cell = ConvLSTMCell(filters, name="conv_lstm")
        self.cell.build((None, None, None, filters))

        hidden = keras.Input((None, None, filters), name="hidden")
        t = down_stack(hidden, filters, downsample, "enc")
        token = keras.layers.Conv2D(latent_channels, 1, name="to_token")(t)
        self.to_token = keras.Model(hidden, token, name="to_token")

        z = keras.Input((None, None, latent_channels), name="token")
        zcond = keras.Input((filters,), name="cond")
        zbias = keras.layers.Reshape((1, 1, filters), name="cond_map")(zcond)
        y = keras.layers.Conv2D(filters, 1, name="from_token")(z)
        y = keras.layers.Activation("relu", name="from_token_relu")(keras.layers.Add()([y, zbias]))
        y = up_stack(y, filters, downsample + 1, "dec")
        outputs = [keras.layers.Conv2D(channels, 3, padding="same", name="to_image")(y)]
        if variant == "mask":
            # The saliency head: one 3x3 conv to a logit; zero bias starts every mask at 0.5.
            outputs.append(keras.layers.Conv2D(1, 3, padding="same", name="mask_logit")(y))
        self.decoder = keras.Model([z, zcond], outputs, name="decoder")

        self.baselines = (
            [
                PlainAutoencoder(
                    channels,
                    filters=filters,
                    downsample=downsample,
                    latent_channels=k * latent_channels,
                    name=f"baseline_{k}",
                )
                for k in range(1, max_tokens + 1)
            ]
            if baseline
            else []
        )

        # === Metrics ===
        self.mse_tracker = keras.metrics.Mean(name="mse")
        # Only the trackers of what this model has: a vanilla model logs no mask loss at all.
        self.mask_loss_tracker = keras.metrics.Mean(name="mask_loss") if variant == "mask" else None
        self.baseline_tracker = keras.metrics.Mean(name="baseline_mse") if baseline else None
        self.built = True

    # === Inputs ===

    def _unpack(self, inputs: Any, dtype: str | None = None) -> tuple[Any, Any]:
        dtype = dtype or self.compute_dtype
        if isinstance(inputs, dict):
            image = ops.convert_to_tensor(inputs["image"], dtype=dtype)
            tokens = inputs.get("tokens")
        else:
            image, tokens = ops.convert_to_tensor(inputs, dtype=dtype), None
        if tokens is None:
            tokens = ops.full((ops.shape(image)[0],), self.max_tokens, dtype="int32")
        return image, ops.reshape(ops.cast(tokens, "int32"), (-1,))

    # === Forward ===

    def call(self, inputs: Any, training: bool | None = None) -> dict[str, Any]:
        image, tokens = self._unpack(inputs)
        batch = ops.shape(image)[0]
        rec = ops.zeros_like(image)
        state: tuple[Any, Any] | None = None
        steps, masks, codes, actives = [], [], [], []
        for t in range(self.max_tokens):
            cond = self.condition(t, batch)
            features = self.stem([image - rec, cond], training=training)
            if state is None:
                state = self.cell.initial_state(features)
            hidden, state = self.cell(features, state)
            z = self.to_token(hidden, training=training)
            out = self.decoder([z, cond], training=training)
            if self.variant == "mask":
                r, logit = out
                m = 0.5 * (1.0 + ops.tanh(self.mask_scale * logit))
                delta = m * r
            else:
                r = out[0] if isinstance(out, list | tuple) else out
                m = ops.ones_like(image[..., :1])
                delta = r
            active = ops.cast(t < tokens, image.dtype)
            rec = rec + active[:, None, None, None] * delta
            steps.append(rec)
            masks.append(m)
            codes.append(z)
            actives.append(active)
        return {
            "reconstruction": rec,
            "steps": ops.stack(steps, axis=1),
            "masks": ops.stack(masks, axis=1),
            "tokens": ops.stack(codes, axis=1),
            "active": ops.stack(actives, axis=1),
        }

    def condition(self, t: int, batch: Any) -> Any:
        """(batch, filters): the embedding of step ``t`` (0-based: ``t + 1`` tokens requested)."""
        return self.requested(ops.full((batch,), t, dtype="int32"))

    def mask_difference_loss(self, masks: Any, active: Any) -> Any:
        """Mean over active steps t >= 1 of ``exp(-d(m_t, m_{t-1})) + exp(-d(m_t, sum_{s<t} m_s))``
        with ``d`` the mean absolute difference per image (the seed's anti-collapse loss)."""
        if self.max_tokens < 2:
            return ops.zeros(())
        terms, weights = [], []
        total = masks[:, 0]
        for t in range(1, self.max_tokens):
            m = masks[:, t]
            d_prev = ops.mean(ops.abs(m - masks[:, t - 1]), axis=(1, 2, 3))
            d_sum = ops.mean(ops.abs(m - ops.minimum(total, 1.0)), axis=(1, 2, 3))
            terms.append(ops.exp(-d_prev) + ops.exp(-d_sum))
            weights.append(active[:, t])
            total = total + m
        terms_t, weights_t = ops.stack(terms, axis=1), ops.stack(weights, axis=1)
        return ops.sum(terms_t * weights_t) / ops.maximum(ops.sum(weights_t), 1.0)

    # === Training ===

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        del y, sample_weight
        # Losses in float32 under any policy (mlops_trainers.precision).
        image, _ = self._unpack(x, "float32")
        if y_pred is None:
            y_pred = self(x, training=training)
        y_pred = as_float32(y_pred)
        mse = ops.mean((y_pred["reconstruction"] - image) ** 2)
        loss = mse
        self.mse_tracker.update_state(mse)
        if self.mask_loss_tracker is not None:
            mask_loss = self.mask_difference_loss(y_pred["masks"], y_pred["active"])
            loss = loss + self.mask_diff_weight * mask_loss
            self.mask_loss_tracker.update_state(mask_loss)
        if self.baseline_tracker is not None:
            base = [
                ops.mean((as_float32(b(image, training=training)) - image) ** 2)
                for b in self.baselines
            ]
            base_sum = ops.sum(ops.stack(base))
            loss = loss + base_sum
            self.baseline_tracker.update_state(base_sum / len(base))
        return scale_loss(loss)

    # === Config ===

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "channels": self.channels,
            "max_tokens": self.max_tokens,
            "variant": self.variant,
            "filters": self.filters,
            "downsample": self.downsample,
            "latent_channels": self.latent_channels,
            "mask_scale": self.mask_scale,
            "mask_diff_weight": self.mask_diff_weight,
            "baseline": self.baseline,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> VariableLengthEmbedding:
        return cls(**config)
