"""The ``pixelcnn`` trainer: a gated PixelCNN prior over the codes of a trained VQ-VAE run.

``config.vqvae`` names the VQ-VAE: a run name (its newest run under the same output prefix) or a
run/checkpoint URL, resolved by :func:`mlops_trainers.checkpoints.resolve_model_reference` to a
complete checkpoint whose manifest holds the VQ-VAE's config; the model is rebuilt from it and
its weights loaded. The resolved reference (run, checkpoint, step) is recorded in ``run.json``
(``inputs.vqvae``).

The training images (``run.data``) are padded and encoded once into code grids ``(N, h, w)``
with a validity mask of the latents; batches are drawn per ``(seed, epoch)`` like every trainer.
Each epoch reports bits per code (vs ``log2(K)`` for a uniform prior) and writes
``samples/epoch-NNNN.png``: ``samples`` grids drawn by the compiled sampler, decoded by the
VQ-VAE's decoder.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from mlops_trainers.artifacts import labelled_rows
from mlops_trainers.data import ArrayBatches, ImageData, list_images
from mlops_trainers.errors import ConfigError
from mlops_trainers.trainer import Trainer
from mlops_trainers.trainers.pixelcnn.config import PixelCNNConfig
from mlops_trainers.trainers.vqvae.config import VQVAEConfig

__all__ = ["PixelCNNTrainer", "encode_images", "load_vqvae"]


# === Data ===


def load_vqvae(checkpoint: Any, scratch: Any, seed: int = 0) -> Any:
    """The VQ-VAE of a complete ``vqvae`` checkpoint, weights loaded."""
    from mlops_trainers.checkpoints import load_checkpoint
    from mlops_trainers.trainers.vqvae.trainer import build_vqvae

    if checkpoint.kind != "vqvae":
        raise ConfigError(
            f"pixelcnn needs a vqvae checkpoint, but {checkpoint.url} is a {checkpoint.kind} one"
        )
    config = VQVAEConfig.model_validate(checkpoint.trainer_config)
    model = build_vqvae(config, seed=seed)
    load_checkpoint(model, checkpoint, scratch, optimizer=True)
    return model


def encode_images(vqvae: Any, data: ImageData, batch_size: int = 64) -> tuple[Any, Any]:
    """Codes (N, h, w) int32 and latent validity (N, h, w) float32 of every image of ``data``."""
    from keras import ops

    images, masks = data.arrays()
    codes, valid = [], []
    for start in range(0, len(images), batch_size):
        image = images[start : start + batch_size]
        mask = masks[start : start + batch_size]
        latents = vqvae.encode(image)
        codes.append(ops.convert_to_numpy(vqvae.quantizer.codes(latents)).astype(np.int32))
        valid.append(ops.convert_to_numpy(vqvae.latent_mask(mask)).astype(np.float32))
    return np.concatenate(codes), np.concatenate(valid)


# === Trainer ===


class PixelCNNTrainer(Trainer[PixelCNNConfig]):
    """Gated PixelCNN prior over a VQ-VAE's codes; see the module docstring."""

    config_class = PixelCNNConfig

    def prepare(self) -> None:
        from mlops_trainers.checkpoints import resolve_model_reference

        checkpoint, provenance = resolve_model_reference(
            self.config.vqvae,
            self.run.output_prefix,
            namespace=self.run.namespace,
            exclude=self.run.run_id,
        )
        self.vqvae = load_vqvae(checkpoint, self.context.scratch / "vqvae", seed=self.run.seed)
        self.vqvae_config = VQVAEConfig.model_validate(checkpoint.trainer_config)
        self.inputs["vqvae"] = provenance
        self.files = list_images(self.run.data)
        self.inputs["data"] = {"url": self.run.data, "images": len(self.files)}
        self.context.log.info(
            "VQ-VAE %s (step %d): K=%d, %dx%d codes; %d images at %s",
            checkpoint.url,
            checkpoint.step,
            self.vqvae.num_embeddings,
            self.vqvae.latent_size,
            self.vqvae.latent_size,
            len(self.files),
            self.run.data,
        )
        self.sample_metrics: dict[str, float] = {}

    def datasets(self) -> ArrayBatches:
        v = self.vqvae_config
        images = ImageData(
            self.files, v.image_size, v.channels, batch_size=1, seed=self.run.seed, cache=True
        )
        self.codes, self.valid = encode_images(self.vqvae, images)
        used = len(np.unique(self.codes))
        self.context.log.info(
            "encoded %d images: %d of %d codes used", len(self.codes), used, v.num_embeddings
        )
        self.inputs["codes_used"] = used
        c = self.config
        # Code grids and their validity as {"codes", "valid"} batches.
        grids = {"codes": self.codes, "valid": self.valid}
        return ArrayBatches(grids, c.batch_size, self.run.seed, c.steps_per_epoch)

    def build_model(self) -> Any:
        from mlops_trainers.trainers.pixelcnn.pixelcnn import PixelCNN

        c = self.config
        model = PixelCNN(
            num_embeddings=self.vqvae.num_embeddings,
            grid_size=self.vqvae.latent_size,
            filters=c.filters,
            layers=c.layers,
            kernel_size=c.kernel_size,
            name="pixelcnn",
        )
        model.compile(optimizer=self.optimizer())
        model.optimizer.build(model.trainable_variables)
        return model

    def on_epoch_end(self, epoch: int, model: Any, logs: Mapping[str, float]) -> dict[str, float]:
        from keras import ops

        uniform = math.log2(self.vqvae.num_embeddings)
        self.sample_metrics = {"uniform_bits_per_code": uniform}
        self.context.log.info(
            "epoch %d: %.3f bits per code (uniform prior: %.3f)",
            epoch,
            logs.get("bits_per_code", float("nan")),
            uniform,
        )
        if not self.config.samples:
            return dict(self.sample_metrics)
        # The same noise every epoch, so successive grids show how the same draws improve.
        codes = model.sample(
            self.config.samples, temperature=self.config.temperature, seed=self.run.seed + 1
        )
        images = np.clip(ops.convert_to_numpy(self.vqvae.decode_codes(codes)), 0.0, 1.0)
        self.sample_metrics["sample_codes_used"] = float(
            len(np.unique(ops.convert_to_numpy(codes)))
        )
        per_row = 8
        rows = [
            (f"samples {i + 1}-{min(i + per_row, len(images))}", images[i : i + per_row])
            for i in range(0, len(images), per_row)
        ]
        title = f"{self.run.run_id}, epoch {epoch}, temperature {self.config.temperature:g}"
        self.context.write_png(f"samples/epoch-{epoch:04d}.png", labelled_rows(rows, title=title))
        return dict(self.sample_metrics)

    def final_metrics(self, logs: Mapping[str, float]) -> dict[str, float]:
        return {**logs, **self.sample_metrics}
