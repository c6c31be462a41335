"""Code grids of a parent run: what the token priors (PixelCNN, MaskGIT) read and decode.

A prior models the discrete codes a quantizing autoencoder gives its data. Two kinds of parent
run make codes: a ``vqvae`` (any image folder; valid codes are those covering real pixels, not
padding) and a ``tokenizer`` (webcam frames; valid codes are those covering sky, by the camera's
sky mask, computed exactly as the tokenizer's trainer does). :func:`load_code_source` rebuilds
the parent's model from a complete checkpoint (its manifest holds the kind and the config) and
loads its weights; :meth:`CodeSource.encode` turns a data URL into :class:`CodeGrids` and
:meth:`CodeSource.decode` turns code grids back into images, so a prior's samples are shown as
the parent would draw them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlops_trainers.errors import ConfigError

if TYPE_CHECKING:
    from mlops_trainers.checkpoints import CheckpointInfo
    from mlops_trainers.trainer import Trainer

__all__ = ["CODE_KINDS", "CodeGrids", "CodeSource", "load_code_source", "load_parent_codes"]

CODE_KINDS = ("tokenizer", "vqvae")
ENCODE_BATCH = 64


@dataclass(frozen=True)
class CodeGrids:
    """Encoded data: ``codes`` (N, h, w) int32, ``valid`` (N, h, w) float32 (1 where a code
    covers real pixels: not padding, and sky for a tokenizer), the ``images`` (N, H, W, C) in
    [0, 1] and their pixel ``masks`` (N, H, W, 1)."""

    codes: np.ndarray
    valid: np.ndarray
    images: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return len(self.codes)


@dataclass
class CodeSource:
    """A parent run's model, weights loaded: its codebook size, code grid, encoder and decoder."""

    kind: str
    model: Any
    config: Any  # the parent's VQVAEConfig or TokenizerConfig

    @property
    def num_embeddings(self) -> int:
        return int(self.config.num_embeddings)

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    @property
    def grid_size(self) -> int:
        """Side of the (square) code grid of an ``image_size`` image."""
        if self.kind == "vqvae":
            return int(self.model.latent_size)
        return self.image_size // int(self.model.factor)

    def encode(self, data: str) -> CodeGrids:
        """Every image (vqvae) or camera frame (tokenizer) at ``data``, encoded."""
        from keras import ops

        if self.kind == "vqvae":
            images, masks = self._vqvae_images(data)
        else:
            images, masks = self._tokenizer_frames(data)
        codes, valid = [], []
        for start in range(0, len(images), ENCODE_BATCH):
            image = images[start : start + ENCODE_BATCH]
            mask = masks[start : start + ENCODE_BATCH]
            if self.kind == "vqvae":
                code = self.model.quantizer.codes(self.model.encode(image))
                cover = self.model.latent_mask(mask)
            else:
                code = self.model.encode(image, mask)
                cover = self.model.latent_weight(ops.convert_to_tensor(mask)) > 0
            codes.append(ops.convert_to_numpy(code).astype(np.int32))
            valid.append(ops.convert_to_numpy(cover).astype(np.float32))
        return CodeGrids(np.concatenate(codes), np.concatenate(valid), images, masks)

    def decode(self, codes: Any) -> np.ndarray:
        """Images (B, H, W, C) in [0, 1] of code grids (B, h, w)."""
        from keras import ops

        codes = ops.convert_to_tensor(np.asarray(codes, np.int32))
        decode = self.model.decode_codes if self.kind == "vqvae" else self.model.decode
        images: np.ndarray = np.clip(np.asarray(ops.convert_to_numpy(decode(codes))), 0.0, 1.0)
        return images

    def _vqvae_images(self, data: str) -> tuple[np.ndarray, np.ndarray]:
        from mlops_trainers.data import ImageData, list_images

        c = self.config
        files = list_images(data)
        return ImageData(files, c.image_size, c.channels, batch_size=1, seed=0, cache=True).arrays()

    def _tokenizer_frames(self, data: str) -> tuple[np.ndarray, np.ndarray]:
        from mlops_trainers.data import load_images, resolve_data_url
        from mlops_trainers.trainers.tokenizer.trainer import camera_sky, find_cameras, pad_mask

        c = self.config
        images, masks = [], []
        for camera in find_cameras(resolve_data_url(data)):
            frames, valid = load_images(list(camera.frames), c.image_size, c.channels)
            images.append(frames)
            masks.append(valid * pad_mask(camera_sky(camera, c), c.image_size)[None])
        return np.concatenate(images), np.concatenate(masks).astype(np.float32)


def load_code_source(checkpoint: CheckpointInfo, scratch: Path, *, seed: int = 0) -> CodeSource:
    """The parent model of a complete ``vqvae`` or ``tokenizer`` checkpoint, weights loaded."""
    from mlops_trainers.checkpoints import load_checkpoint

    if checkpoint.kind == "vqvae":
        from mlops_trainers.trainers.vqvae.config import VQVAEConfig
        from mlops_trainers.trainers.vqvae.trainer import build_vqvae

        vq_config = VQVAEConfig.model_validate(checkpoint.trainer_config)
        source = CodeSource("vqvae", build_vqvae(vq_config, seed=seed), vq_config)
    elif checkpoint.kind == "tokenizer":
        from mlops_trainers.trainers.tokenizer.config import TokenizerConfig
        from mlops_trainers.trainers.tokenizer.trainer import build_tokenizer

        tok_config = TokenizerConfig.model_validate(checkpoint.trainer_config)
        source = CodeSource("tokenizer", build_tokenizer(tok_config), tok_config)
    else:
        raise ConfigError(
            f"{checkpoint.url} is a {checkpoint.kind} checkpoint; a prior reads the codes of a "
            f"{' or a '.join(CODE_KINDS)} run"
        )
    load_checkpoint(source.model, checkpoint, scratch, optimizer=True)
    return source


def load_parent_codes(trainer: Trainer[Any], reference: str, input_name: str) -> CodeSource:
    """A prior's parent: the run ``reference`` names (a run id or checkpoint URL, see
    :func:`~mlops_trainers.checkpoints.resolve_model_reference`), its model rebuilt and loaded,
    recorded in the run's provenance as input ``input_name`` and logged."""
    from mlops_trainers.checkpoints import resolve_model_reference

    run = trainer.run
    checkpoint, provenance = resolve_model_reference(
        reference, run.output_prefix, namespace=run.namespace, exclude=run.run_id
    )
    source = load_code_source(checkpoint, trainer.context.scratch / "parent", seed=run.seed)
    trainer.inputs[input_name] = provenance
    trainer.context.log.info(
        "%s %s (step %d): K=%d, %dx%d codes; data %s",
        checkpoint.kind,
        checkpoint.url,
        checkpoint.step,
        source.num_embeddings,
        source.grid_size,
        source.grid_size,
        run.data,
    )
    return source
