"""Cloud tokenizer: a MaskGIT-style VQGAN tokenizer for webcam sky frames.

Images -> token grids -> images, the first stage of a masked-token model of the sky (MaskGIT,
Chang et al. 2022, arXiv:2202.04200). The architecture is MaskGIT's VQGAN without attention and
without the adversarial/perceptual losses (Esser et al. 2021, arXiv:2012.09841): those sharpen
textures but need a discriminator and a pretrained network, too heavy for the CPU demo this
project must run; the L2 reconstruction keeps the model a plain autoencoder that trains anywhere.

* Encoder: 3x3 conv, then per stage ``residual_blocks`` :class:`GroupNormResidualBlock` and, except
  after the last stage, a stride-2 3x3 conv; a final residual block, GroupNorm, swish and a 1x1
  conv to ``latent_dim``. ``len(channel_multipliers) - 1`` halvings: 64 px -> 16x16 tokens for
  ``(1, 2, 2)``.
* :class:`CodebookQuantizer`: codebook and commitment losses, plus a loss that pulls unused codes
  towards their nearest encoder vectors (no dead codes).
* Decoder: mirror image with :class:`ResidualUpsampleBlock` (residual up-sampling) instead of the
  strided convs.
* The **sky mask** (``mask``: 1 = sky and a real pixel, 0 = ground or padding) zeroes the input
  outside the sky and weights the reconstruction loss and every codebook term (by the fraction of
  sky in each token's patch), so the ground, which never changes, spends no codes and no capacity.

``encode``/``decode`` are methods of the saved class: a reloaded ``.keras`` file tokenizes
exactly as the model that was saved. Training overrides ``compute_loss`` only, so every backend's
own ``train_step`` applies (see :class:`~mlops_trainers.trainers.vqvae.vqvae.VQVAE` for the same choice).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from mlops_trainers.distribute import mean_count, scale_loss
from mlops_trainers.precision import as_float32
from mlops_trainers.trainers.tokenizer.codebook_quantizer import CodebookQuantizer
from mlops_trainers.trainers.tokenizer.group_norm_residual_block import (
    GroupNormResidualBlock,
    _groups,
)
from mlops_trainers.trainers.tokenizer.group_normalization import GroupNormalization
from mlops_trainers.trainers.tokenizer.residual_upsample_block import ResidualUpsampleBlock


@keras.saving.register_keras_serializable(package="mlops_trainers")
class Tokenizer(keras.Model):  # type: ignore[misc,unused-ignore]
    """VQGAN tokenizer over ``{"image": (B, H, W, C) in [0, 1], "mask": (B, H, W, 1)}`` (or images).

    ``call`` returns a dict: ``reconstruction`` (B, H, W, C), ``codes`` (B, H/f, W/f) int32 with
    ``f = 2 ** (len(channel_multipliers) - 1)``, and the quantizer's losses and statistics.
    H and W must be multiples of ``f``; the model is fully convolutional otherwise.

    Args:
        channels: image channels (1 or 3).
        base_filters: filters of the first stage.
        channel_multipliers: per-stage multipliers of ``base_filters``.
        residual_blocks: residual blocks per stage.
        groups: GroupNorm groups.
        latent_dim: dimension of a code.
        num_embeddings: codebook size.
        beta: commitment loss weight.
        unused_code_weight: weight of the unused-code loss.
        **kwargs: forwarded to ``keras.Model``.
    """

    def __init__(
        self,
        channels: int = 3,
        *,
        base_filters: int = 32,
        channel_multipliers: Sequence[int] = (1, 2, 2),
        residual_blocks: int = 1,
        groups: int = 8,
        latent_dim: int = 16,
        num_embeddings: int = 256,
        beta: float = 0.25,
        unused_code_weight: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.channels = channels
        self.base_filters = base_filters
        self.channel_multipliers = tuple(int(m) for m in channel_multipliers)
        self.residual_blocks = residual_blocks
        self.groups = groups
        self.latent_dim = latent_dim
        self.num_embeddings = num_embeddings
        self.beta = beta
        self.unused_code_weight = unused_code_weight
        self.factor = 2 ** (len(self.channel_multipliers) - 1)

        # === Layers ===
        stages = [base_filters * m for m in self.channel_multipliers]
        top = stages[-1]

        image = keras.Input((None, None, channels), name="image")
        x = keras.layers.Conv2D(stages[0], 3, padding="same", name="stem")(image)
        for i, filters in enumerate(stages):
            for j in range(residual_blocks):
                x = GroupNormResidualBlock(filters, groups, name=f"down{i}_res{j}")(x)
            if i < len(stages) - 1:
                x = keras.layers.Conv2D(
                    filters, 3, strides=2, padding="same", name=f"down{i}_stride2"
                )(x)
        x = GroupNormResidualBlock(top, groups, name="enc_mid_res")(x)
        x = GroupNormalization(_groups(groups, top), name="enc_out_norm")(x)
        x = keras.layers.Activation("silu", name="enc_out_swish")(x)
        latent = keras.layers.Conv2D(latent_dim, 1, name="to_latent")(x)
        self.encoder = keras.Model(image, latent, name="encoder")

        self.quantizer = CodebookQuantizer(
            num_embeddings,
            latent_dim,
            beta=beta,
            unused_code_weight=unused_code_weight,
            name="quantizer",
        )
        self.quantizer.build((None, None, None, latent_dim))

        z = keras.Input((None, None, latent_dim), name="latent")
        y = keras.layers.Conv2D(top, 3, padding="same", name="from_latent")(z)
        y = GroupNormResidualBlock(top, groups, name="dec_mid_res")(y)
        for i in reversed(range(len(stages))):
            for j in range(residual_blocks):
                y = GroupNormResidualBlock(stages[i], groups, name=f"up{i}_res{j}")(y)
            if i > 0:
                y = ResidualUpsampleBlock(stages[i - 1], groups, name=f"up{i}_upsample")(y)
        y = GroupNormalization(_groups(groups, stages[0]), name="dec_out_norm")(y)
        y = keras.layers.Activation("silu", name="dec_out_swish")(y)
        # Linear output: images live in [0, 1] but an L2 loss on a sigmoid saturates at the sky's
        # bright clouds and dark night; decode() clips instead.
        reconstruction = keras.layers.Conv2D(channels, 3, padding="same", name="to_image")(y)
        self.decoder = keras.Model(z, reconstruction, name="decoder")

        # === Metrics ===
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction_error")
        self.vq_loss_tracker = keras.metrics.Mean(name="vq_loss")
        self.unused_loss_tracker = keras.metrics.Mean(name="unused_loss")
        self.perplexity_tracker = keras.metrics.Mean(name="perplexity")
        self.codes_used_tracker = keras.metrics.Mean(name="codes_used")
        # Every variable exists now (the sub-models are built above), so a reloaded .keras file
        # needs no build step and no example input.
        self.built = True

    # === Inputs ===

    def _unpack(self, inputs: Any, dtype: str | None = None) -> tuple[Any, Any]:
        dtype = dtype or self.compute_dtype
        if isinstance(inputs, dict):
            images = ops.convert_to_tensor(inputs["image"], dtype=dtype)
            mask = inputs.get("mask")
        else:
            images, mask = ops.convert_to_tensor(inputs, dtype=dtype), None
        if mask is None:
            mask = ops.ones_like(images[..., :1])
        mask = ops.cast(mask, images.dtype)
        if len(mask.shape) == 3:
            mask = mask[..., None]
        return images, mask

    def latent_weight(self, mask: Any) -> Any:
        """(B, H/f, W/f) fraction of sky in each token's f x f patch."""
        if self.factor == 1:
            return mask[..., 0]
        pooled = ops.average_pool(mask, self.factor, strides=self.factor, padding="valid")
        return pooled[..., 0]

    # === Forward ===

    def call(self, inputs: Any, training: bool | None = None) -> dict[str, Any]:
        images, mask = self._unpack(inputs)
        latent = self.encoder(images * mask, training=training)
        quantized = self.quantizer(latent, weight=self.latent_weight(mask))
        reconstruction = self.decoder(quantized["quantized"], training=training)
        return {
            "reconstruction": reconstruction,
            **{k: v for k, v in quantized.items() if k != "quantized"},
        }

    def encode(self, images: Any, mask: Any = None) -> Any:
        """Token grids (B, H/f, W/f) int32 of images (B, H, W, C) in [0, 1]; ``mask`` as in ``call``."""
        images, mask = self._unpack({"image": images, "mask": mask})
        self._check_size(images)
        return self.quantizer.codes(self.encoder(images * mask, training=False))

    def decode(self, codes: Any) -> Any:
        """Images (B, H, W, C) in [0, 1] of token grids (B, H/f, W/f)."""
        out = self.decoder(self.quantizer.lookup(codes), training=False)
        return ops.clip(out, 0.0, 1.0)

    def _check_size(self, images: Any) -> None:
        for side in images.shape[1:3]:
            if side is not None and side % self.factor:
                raise ValueError(
                    f"image sides must be multiples of {self.factor} (2 ** (stages - 1)); got "
                    f"{tuple(images.shape[1:3])}: pad the images, do not resize them"
                )

    # === Training ===

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        # Losses and statistics in float32 under any policy (mlops_trainers.precision).
        images, mask = self._unpack(x, "float32")
        if y_pred is None:
            y_pred = self(x, training=training)
        y_pred = as_float32(y_pred)
        reconstruction = y_pred["reconstruction"]
        # Mean squared error over sky pixels only (per channel), so the score does not improve
        # just because a frame has more ground or more padding.
        squared = mask * (reconstruction - images) ** 2
        count = ops.maximum(mean_count(ops.sum(mask)), 1.0) * self.channels
        reconstruction_error = ops.sum(squared) / count
        loss = reconstruction_error + y_pred["vq_loss"]
        self.reconstruction_tracker.update_state(reconstruction_error)
        self.vq_loss_tracker.update_state(y_pred["vq_loss"])
        self.unused_loss_tracker.update_state(y_pred["unused_loss"])
        self.perplexity_tracker.update_state(y_pred["perplexity"])
        self.codes_used_tracker.update_state(y_pred["codes_used"])
        return scale_loss(loss)

    # === Config ===

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "channels": self.channels,
            "base_filters": self.base_filters,
            "channel_multipliers": list(self.channel_multipliers),
            "residual_blocks": self.residual_blocks,
            "groups": self.groups,
            "latent_dim": self.latent_dim,
            "num_embeddings": self.num_embeddings,
            "beta": self.beta,
            "unused_code_weight": self.unused_code_weight,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Tokenizer:
        return cls(**config)
