"""The smallest VQ-VAE the runtime tests train (16 px, one channel, a few seconds a run); each
test module sets its own steps per epoch and reconstructions on top."""

from __future__ import annotations

from typing import Any

TINY_VQVAE: dict[str, Any] = {
    "image_size": 16,
    "channels": 1,
    "batch_size": 8,
    "learning_rate": 2e-3,
    "base_filters": 8,
    "downsample": 2,
    "residual_blocks": 0,
    "latent_dim": 4,
    "num_embeddings": 8,
    "steps_per_epoch": 4,
    "reconstructions": 2,
}
