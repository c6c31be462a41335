"""The ``pixelcnn`` trainer: a gated PixelCNN prior over the codes of a VQ-VAE or tokenizer run.

``config.vqvae`` names the parent: a ``vqvae`` or a ``tokenizer`` run, by run name (its newest
run under the same output prefix) or run/checkpoint URL, resolved by
:func:`mlops_trainers.checkpoints.resolve_model_reference` to a complete checkpoint whose
manifest holds the parent's kind and config; the model is rebuilt from it and its weights loaded
(:func:`mlops_trainers.code_grids.load_code_source`). The resolved reference (run, checkpoint,
step) is recorded in ``run.json`` (``inputs.vqvae``).

The training data (``run.data``) is encoded once into code grids ``(N, h, w)`` with a validity
mask of the latents (real pixels for a VQ-VAE; sky for a tokenizer, by the camera's sky mask);
batches are drawn per ``(seed, epoch)`` like every trainer. Each epoch reports bits per code (vs
``log2(K)`` for a uniform prior) and writes ``samples/epoch-NNNN.png``: ``samples`` grids drawn
by the compiled sampler, decoded by the parent's decoder.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from mlops_trainers.artifacts import labelled_rows
from mlops_trainers.data import ArrayBatches
from mlops_trainers.errors import ConfigError
from mlops_trainers.trainer import Trainer
from mlops_trainers.trainers.pixelcnn.config import PixelCNNConfig

__all__ = ["PixelCNNTrainer"]


# === Trainer ===


class PixelCNNTrainer(Trainer[PixelCNNConfig]):
    """Gated PixelCNN prior over a VQ-VAE's or tokenizer's codes; see the module docstring."""

    config_class = PixelCNNConfig

    def prepare(self) -> None:
        from mlops_trainers.code_grids import load_parent_codes

        self.source = load_parent_codes(self, self.config.vqvae, "vqvae")
        self.sample_metrics: dict[str, float] = {}

    def datasets(self) -> ArrayBatches:
        grids = self.source.encode(self.run.data)
        if not len(grids):
            raise ConfigError(f"no images to encode at {self.run.data}")
        self.codes, self.valid = grids.codes, grids.valid
        self.inputs["data"] = {"url": self.run.data, "images": len(grids)}
        used = len(np.unique(self.codes))
        self.context.log.info(
            "encoded %d images: %d of %d codes used",
            len(self.codes),
            used,
            self.source.num_embeddings,
        )
        self.inputs["codes_used"] = used
        c = self.config
        # Code grids and their validity as {"codes", "valid"} batches.
        batches = {"codes": self.codes, "valid": self.valid}
        return ArrayBatches(batches, c.batch_size, self.run.seed, c.steps_per_epoch)

    def build_model(self) -> Any:
        from mlops_trainers.trainers.pixelcnn.pixelcnn import PixelCNN

        c = self.config
        model = PixelCNN(
            num_embeddings=self.source.num_embeddings,
            grid_size=self.source.grid_size,
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

        uniform = math.log2(self.source.num_embeddings)
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
        images = self.source.decode(codes)
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
