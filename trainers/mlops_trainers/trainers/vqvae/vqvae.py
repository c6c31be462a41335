"""VQ-VAE (van den Oord et al. 2017, arXiv:1711.00937) for padded images with a validity mask.

Encoder: a 3x3 conv, ``downsample`` stride-2 convs (4x4, or 3x3/5x5 as the FAFA seed tried; filters
doubling), residual blocks, a 1x1
conv to ``latent_dim``; a :class:`~mlops_trainers.layers.VectorQuantizer` (EMA codebook,
dead-code restart); the decoder mirrors the encoder with transposed convs. A 640 image gives
80/40/20 latents a side for ``downsample`` 3/4/5.

Training: the model overrides ``compute_loss`` (not ``train_step``), so each backend's own
``train_step`` (TF GradientTape, JAX grad, torch backward) computes the gradients: that keeps the
model backend-neutral, unlike keras.io's ``vq_vae.py`` whose ``train_step`` is TensorFlow-only.
Its ``keras.metrics.Mean`` trackers log the reconstruction MSE over valid (unpadded) pixels, the
VQ losses, the codebook perplexity and the fraction of the codebook used in the batch.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from mlops_trainers.distribute import all_reduce_sum, mean_count, scale_loss
from mlops_trainers.precision import as_float32
from mlops_trainers.trainers.vqvae.residual_block import LEAKY_SLOPE, ResidualBlock
from mlops_trainers.trainers.vqvae.vector_quantizer import VectorQuantizer


@keras.saving.register_keras_serializable(package="mlops_trainers")
class VQVAE(keras.Model):  # type: ignore[misc,unused-ignore]
    """VQ-VAE over ``{"image": (B, S, S, C) in [0, 1], "mask": (B, S, S, 1)}`` (or an image).

    ``call`` returns ``{"reconstruction": (B, S, S, C), "codes": (B, S/2^d, S/2^d) int32}``, and
    in training also the quantizer's ``"vq_loss"`` (a scalar).

    Args:
        image_size: side S of the (square, padded) images; a multiple of ``2**downsample``.
        channels: 1 or 3.
        base_filters: filters of the first stage, doubled per down-sampling stage.
        downsample: number of stride-2 stages d.
        kernel_size: kernel of the stride-2 down- and up-sampling convolutions (3, 4 or 5).
        activation: ``"relu"`` or ``"leaky_relu"`` (slope 0.2 below zero).
        kernel_initializer: initialiser of every convolution (``"he_normal"`` for ReLUs).
        residual_blocks: residual blocks after the encoder stages and before the decoder's.
        latent_dim: dimension of a code vector.
        num_embeddings: codebook size K.
        beta, ema, ema_decay, dead_code_restart, dead_code_threshold: see ``VectorQuantizer``.
        seed: seed of the quantizer's restart sampling.
        **kwargs: forwarded to ``keras.Model``.
    """

    def __init__(
        self,
        *,
        image_size: int = 64,
        channels: int = 3,
        base_filters: int = 32,
        downsample: int = 2,
        kernel_size: int = 4,
        activation: str = "relu",
        kernel_initializer: str = "glorot_uniform",
        residual_blocks: int = 2,
        latent_dim: int = 16,
        num_embeddings: int = 128,
        beta: float = 0.25,
        ema: bool = True,
        ema_decay: float = 0.99,
        dead_code_restart: bool = True,
        dead_code_threshold: float = 1e-3,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        factor = 2**downsample
        if image_size % factor:
            raise ValueError(
                f"image_size {image_size} must be a multiple of 2**downsample = {factor}"
            )
        self.image_size = image_size
        self.channels = channels
        self.base_filters = base_filters
        self.downsample = downsample
        self.kernel_size = kernel_size
        self.activation = activation
        self.kernel_initializer = kernel_initializer
        self.residual_blocks = residual_blocks
        self.latent_dim = latent_dim
        self.num_embeddings = num_embeddings
        self.beta = beta
        self.ema = ema
        self.ema_decay = ema_decay
        self.dead_code_restart = dead_code_restart
        self.dead_code_threshold = dead_code_threshold
        self.seed = seed
        self.latent_size = image_size // factor

        # === Layers ===
        stage_filters = [base_filters * 2**i for i in range(downsample)]
        top = stage_filters[-1]
        init = kernel_initializer
        encoder_layers: list[keras.layers.Layer] = [
            keras.layers.Conv2D(
                base_filters, 3, padding="same", kernel_initializer=init, name="stem"
            ),
            self._activation("stem_act"),
        ]
        for i, filters in enumerate(stage_filters):
            encoder_layers += [
                keras.layers.Conv2D(
                    filters,
                    kernel_size,
                    strides=2,
                    padding="same",
                    kernel_initializer=init,
                    name=f"down_{i}",
                ),
                self._activation(f"down_{i}_act"),
            ]
        encoder_layers.append(
            keras.layers.Conv2D(top, 3, padding="same", kernel_initializer=init, name="encoder_mix")
        )
        encoder_layers += [self._residual(top, f"res_{i}") for i in range(residual_blocks)]
        encoder_layers += [
            self._activation("encoder_relu"),
            keras.layers.Conv2D(latent_dim, 1, kernel_initializer=init, name="to_latent"),
        ]
        self.encoder = keras.Sequential(
            [keras.Input((image_size, image_size, channels)), *encoder_layers], name="encoder"
        )
        self.quantizer = VectorQuantizer(
            num_embeddings,
            latent_dim,
            beta=beta,
            ema=ema,
            ema_decay=ema_decay,
            dead_code_restart=dead_code_restart,
            dead_code_threshold=dead_code_threshold,
            seed=seed,
            name="quantizer",
        )
        self.quantizer.build((None, self.latent_size, self.latent_size, latent_dim))
        decoder_layers: list[keras.layers.Layer] = [
            keras.layers.Conv2D(top, 3, padding="same", kernel_initializer=init, name="from_latent")
        ]
        decoder_layers += [self._residual(top, f"res_{i}") for i in range(residual_blocks)]
        decoder_layers.append(self._activation("decoder_relu"))
        for i in reversed(range(len(stage_filters))):
            out = stage_filters[i - 1] if i > 0 else base_filters
            decoder_layers += [
                keras.layers.Conv2DTranspose(
                    out,
                    kernel_size,
                    strides=2,
                    padding="same",
                    kernel_initializer=init,
                    name=f"up_{i}",
                ),
                self._activation(f"up_{i}_act"),
            ]
        decoder_layers.append(
            keras.layers.Conv2D(
                channels, 3, padding="same", kernel_initializer=init, name="to_image"
            )
        )
        self.decoder = keras.Sequential(
            [keras.Input((self.latent_size, self.latent_size, latent_dim)), *decoder_layers],
            name="decoder",
        )
        self.built = True

        # === Metrics ===
        self.recon_tracker = keras.metrics.Mean(name="recon_mse")
        self.vq_tracker = keras.metrics.Mean(name="vq_loss")
        self.perplexity_tracker = keras.metrics.Mean(name="perplexity")
        self.usage_tracker = keras.metrics.Mean(name="codes_used")

    # --- layers ---

    def _activation(self, name: str) -> keras.layers.Layer:
        if self.activation == "leaky_relu":
            return keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=name)
        return keras.layers.ReLU(name=name)

    def _residual(self, filters: int, name: str) -> ResidualBlock:
        return ResidualBlock(
            filters,
            activation=self.activation,
            kernel_initializer=self.kernel_initializer,
            name=name,
        )

    # --- inputs ---

    def _unpack(self, inputs: Any, dtype: str | None = None) -> tuple[Any, Any]:
        if isinstance(inputs, dict):
            image = inputs["image"]
            mask = inputs.get("mask")
        else:
            image, mask = inputs, None
        dtype = dtype or self.compute_dtype
        image = ops.cast(image, dtype)
        if mask is None:
            mask = ops.ones_like(image[..., :1])
        return image, ops.cast(mask, dtype)

    def latent_mask(self, mask: Any) -> Any:
        """(B, h, w): 1 where a latent's receptive block holds any valid pixel."""
        factor = 2**self.downsample
        pooled = ops.max_pool(mask, pool_size=factor, strides=factor, padding="valid")
        return pooled[..., 0]

    # --- model ---

    def encode(self, image: Any) -> Any:
        """Continuous encoder outputs (B, h, w, D) of images in [0, 1]."""
        return self.encoder(ops.cast(image, self.compute_dtype) - 0.5)

    def decode_codes(self, codes: Any) -> Any:
        """Images (B, S, S, C) of code grids (B, h, w)."""
        return self.decoder(self.quantizer.lookup(codes)) + 0.5

    def call(self, inputs: Any, training: bool | None = None) -> dict[str, Any]:
        image, mask = self._unpack(inputs)
        latents = self.encoder(image - 0.5, training=training)
        valid = self.latent_mask(mask)
        if not training:
            quantized, codes = self.quantizer(latents, valid_mask=valid, training=training)
            reconstruction = self.decoder(quantized, training=training) + 0.5
            return {"reconstruction": reconstruction, "codes": codes}
        # Training: the quantizer's loss is an output, not add_loss (data-parallel replicas
        # share a layer's add_loss list: mlops_trainers.trainers.vqvae.vector_quantizer).
        quantized, codes, vq_loss = self.quantizer(
            latents, valid_mask=valid, training=training, return_loss=True
        )
        reconstruction = self.decoder(quantized, training=training) + 0.5
        return {"reconstruction": reconstruction, "codes": codes, "vq_loss": vq_loss}

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        del y, sample_weight, training
        # Losses and statistics in float32 under any policy (mlops_trainers.precision).
        image, mask = self._unpack(x, "float32")
        y_pred = as_float32(y_pred)
        reconstruction = y_pred["reconstruction"]
        # Squared error over valid pixels only: padding is not part of the image.
        squared = ops.mean((reconstruction - image) ** 2, axis=-1, keepdims=True)
        recon = ops.sum(squared * mask) / ops.maximum(mean_count(ops.sum(mask)), 1.0)
        if "vq_loss" in y_pred:
            vq = y_pred["vq_loss"]
        else:  # an inference call: the quantizer added its loss
            vq = ops.sum(ops.stack(self.losses)) if self.losses else ops.zeros(())
        total = recon + vq

        valid = ops.reshape(self.latent_mask(mask), (-1,))
        onehot = ops.one_hot(ops.reshape(y_pred["codes"], (-1,)), self.num_embeddings)
        # Data-parallel: the global batch's code counts (a replica's slice uses fewer codes).
        counts = all_reduce_sum(ops.sum(onehot * valid[:, None], axis=0))
        probs = counts / ops.maximum(ops.sum(counts), 1.0)
        perplexity = ops.exp(-ops.sum(probs * ops.log(probs + 1e-10)))
        used = ops.mean(ops.cast(counts > 0, "float32"))

        self.recon_tracker.update_state(recon)
        self.vq_tracker.update_state(vq)
        self.perplexity_tracker.update_state(perplexity)
        self.usage_tracker.update_state(used)
        return scale_loss(total)

    def kmeans_init(self, image: Any, mask: Any | None = None, iterations: int = 10) -> None:
        """Initialise the codebook by k-means on the valid encoder outputs of a batch."""
        latents = ops.convert_to_numpy(self.encode(image))
        vectors = latents.reshape(-1, self.latent_dim)
        if mask is not None:
            valid = ops.convert_to_numpy(self.latent_mask(ops.cast(mask, "float32"))).reshape(-1)
            if valid.sum() > 0:
                vectors = vectors[valid > 0]
        self.quantizer.kmeans_init(vectors, iterations=iterations, seed=self.seed or 0)

    # === Config ===

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(
            {
                "image_size": self.image_size,
                "channels": self.channels,
                "base_filters": self.base_filters,
                "downsample": self.downsample,
                "kernel_size": self.kernel_size,
                "activation": self.activation,
                "kernel_initializer": self.kernel_initializer,
                "residual_blocks": self.residual_blocks,
                "latent_dim": self.latent_dim,
                "num_embeddings": self.num_embeddings,
                "beta": self.beta,
                "ema": self.ema,
                "ema_decay": self.ema_decay,
                "dead_code_restart": self.dead_code_restart,
                "dead_code_threshold": self.dead_code_threshold,
                "seed": self.seed,
            }
        )
        return config
