"""The ``vqvae`` trainer: a VQ-VAE on a folder (or file list) of images at any fsspec URL.

Images are padded to ``image_size`` (never stretched, :func:`mlops_trainers.data.pad_image`) and
the padding is masked out of the reconstruction loss, the VQ losses and the codebook metrics.
Batches come from :class:`~mlops_trainers.data.ImageData` (tf.data, parallel decode, prefetch;
decoded once into memory when the data set is small), drawn per ``(seed, epoch)`` so a resumed
run sees the same batches.

Each epoch writes ``reconstructions/epoch-NNNN.png``: the first ``reconstructions`` images (row
``input``) over their reconstructions (row ``reconstruction``), padding included, so the grids of
successive epochs compare directly (also in TensorBoard's Images tab).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mlops_trainers.artifacts import labelled_rows
from mlops_trainers.data import ImageData, list_images
from mlops_trainers.trainer import Trainer
from mlops_trainers.trainers.vqvae.config import VQVAEConfig

__all__ = ["CACHE_BYTES", "VQVAETrainer", "build_vqvae"]

# Decoded data sets up to this size are kept in memory (decoded once, not every epoch).
CACHE_BYTES = 1 << 30


def build_vqvae(config: VQVAEConfig, seed: int | None = None, *, compile: bool = True) -> Any:
    """The VQ-VAE of a config: built, and compiled with Adam (its optimizer built) if asked.

    Compiled with a built optimizer, the model's variables are exactly those a checkpoint holds,
    so :func:`mlops_trainers.checkpoints.load_checkpoint` fits it (the PixelCNN trainer reloads
    its VQ-VAE this way).
    """
    import keras

    from mlops_trainers.trainers.vqvae.vqvae import VQVAE

    model = VQVAE(
        image_size=config.image_size,
        channels=config.channels,
        base_filters=config.base_filters,
        downsample=config.downsample,
        kernel_size=config.kernel_size,
        activation=config.activation,
        kernel_initializer=config.kernel_initializer,
        residual_blocks=config.residual_blocks,
        latent_dim=config.latent_dim,
        num_embeddings=config.num_embeddings,
        beta=config.beta,
        ema=config.ema,
        ema_decay=config.ema_decay,
        dead_code_restart=config.dead_code_restart,
        dead_code_threshold=config.dead_code_threshold,
        seed=seed,
        name="vqvae",
    )
    if compile:
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
        model.optimizer.build(model.trainable_variables)
    return model


class VQVAETrainer(Trainer[VQVAEConfig]):
    """VQ-VAE with EMA codebook and dead-code restart; see the module docstring."""

    config_class = VQVAEConfig

    def prepare(self) -> None:
        self.files = list_images(self.run.data)
        self.inputs["data"] = {"url": self.run.data, "images": len(self.files)}
        self.context.log.info("%d images at %s", len(self.files), self.run.data)

    def datasets(self) -> ImageData:
        c = self.config
        # The cache is uint8 with a 4-number box per image (mlops_trainers.data.ImageData).
        size = len(self.files) * (c.image_size**2 * c.channels + 16)
        self.data = ImageData(
            self.files,
            c.image_size,
            c.channels,
            c.batch_size,
            self.run.seed,
            c.steps_per_epoch,
            cache=size <= CACHE_BYTES,
        )
        return self.data

    def build_model(self) -> Any:
        return build_vqvae(self.config, seed=self.run.seed)

    def memory_probe(self) -> tuple[Any, Any, int, str]:
        c = self.config
        batch = (c.batch_size, c.image_size, c.image_size)
        specs = {"image": ((*batch, c.channels), "float32"), "mask": ((*batch, 1), "float32")}
        # tf.data keeps a few batches prefetched besides the cache.
        prefetch = 4 * c.batch_size * c.image_size**2 * (c.channels + 1) * 4
        return (
            self.build_model(),
            specs,
            CACHE_BYTES + prefetch,
            "decoded-image cache, at most 1 GiB",
        )

    def on_train_begin(self, model: Any, *, fresh: bool) -> None:
        if fresh and self.config.kmeans_init:
            # The first batch of epoch 0: deterministic, so a restart before the first
            # checkpoint initialises the same codebook.
            batch = next(iter(self.data.batches(0)))
            model.kmeans_init(np.asarray(batch["image"]), np.asarray(batch["mask"]))
            self.context.log.info("codebook initialised by k-means on the first batch")

    def preview(self) -> tuple[np.ndarray, np.ndarray]:
        return self.data.first(max(1, min(self.config.reconstructions, len(self.files))))

    def on_epoch_end(self, epoch: int, model: Any, logs: Mapping[str, float]) -> None:
        if not self.config.reconstructions:
            return
        from keras import ops

        images, masks = self.preview()
        out = model({"image": images, "mask": masks}, training=False)
        recon = np.clip(ops.convert_to_numpy(out["reconstruction"]), 0.0, 1.0)
        grid = labelled_rows(
            [("input", images), ("reconstruction", recon)],
            title=f"{self.run.run_id}, epoch {epoch}",
        )
        self.context.write_png(f"reconstructions/epoch-{epoch:04d}.png", grid)
