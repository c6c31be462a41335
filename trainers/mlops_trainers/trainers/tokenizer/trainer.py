"""The ``tokenizer`` trainer: a VQGAN tokenizer of the sky in fixed-webcam frames.

Data: a folder of one camera's frames (names in time order), or a folder of such camera folders,
or ``sample://webcam``. Each camera's sky mask is its ``skymask.png`` if the folder has one
(``mlops skymask FOLDER --out FOLDER/skymask.png``), else it is computed from the frames by
:func:`mlops_trainers.skymask.algorithm.sky_mask` (``sky_mask`` config; ``enabled: false`` uses every
pixel). The mask is written to ``skymask/<camera>.png`` under the run output.

Frames are padded, never stretched (:func:`mlops_trainers.data.load_images`), and the sky mask goes
through the same transform, so ``mask`` = sky x real pixel. Batches are drawn per ``(seed,
epoch)`` (:class:`~mlops_trainers.data.ArrayBatches`) so a resumed run sees the same batches.

Each epoch writes ``reconstructions/epoch-NNNN.png`` (rows: frames, reconstructions pasted into
the sky, token grids in false colour) and measures on those frames the *token stability*: the
fraction of sky tokens that survive encode -> decode -> encode unchanged (a tokenizer whose
decoded images re-encode to other tokens is unusable for a token-level model), and the number of
distinct codes used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlops_trainers import storage
from mlops_trainers.artifacts import labelled_rows
from mlops_trainers.data import ArrayBatches, load_images, resolve_data_url
from mlops_trainers.errors import DataError
from mlops_trainers.skymask.algorithm import sky_mask
from mlops_trainers.skymask.frames import (
    IMAGE_SUFFIXES,
    MASK_NAME,
    frame_urls,
    load_frames,
    mask_png,
    read_image,
    read_mask_png,
)
from mlops_trainers.trainer import Trainer
from mlops_trainers.trainers.tokenizer.config import TokenizerConfig

__all__ = ["Camera", "TokenizerTrainer", "build_tokenizer", "find_cameras", "token_stability"]


# === Data ===


@dataclass(frozen=True)
class Camera:
    """One fixed camera: its folder, frames (time order) and sky mask (True = sky)."""

    name: str
    url: str
    frames: tuple[str, ...]


def find_cameras(url: str) -> list[Camera]:
    """The camera at ``url`` (frames directly under it), else one per sub-folder holding frames."""
    frames = frame_urls(url)
    if frames:
        return [Camera(url.rstrip("/").rsplit("/", 1)[-1] or "camera", url, tuple(frames))]
    cameras = []
    for name in storage.list_dir(url):
        sub = storage.join(url, name)
        sub_frames = frame_urls(sub)
        if sub_frames:
            cameras.append(Camera(name, sub, tuple(sub_frames)))
    if not cameras:
        raise DataError(f"no frames ({', '.join(IMAGE_SUFFIXES)}) under {url} or its sub-folders")
    return cameras


def camera_sky(camera: Camera, config: TokenizerConfig) -> np.ndarray:
    """A camera's sky mask at frame resolution: its skymask.png, computed, or all sky."""
    own = storage.join(camera.url, MASK_NAME)
    if storage.exists(own):
        return read_mask_png(own)
    if not config.sky_mask.enabled:
        first = read_image(camera.frames[0])
        return np.ones(first.shape[:2], dtype=bool)
    return sky_mask(load_frames(camera.url, config.sky_mask.max_frames), config.sky_mask)


def pad_mask(sky: np.ndarray, size: int) -> np.ndarray:
    """The sky mask through the frames' own pad transform: (size, size, 1) float32 of 0/1."""
    from mlops_trainers.data import pad_image

    padded, valid = pad_image(np.where(sky, 255, 0).astype(np.uint8)[..., None], size)
    return ((np.asarray(padded) >= 0.5) & (np.asarray(valid) > 0)).astype(np.float32)


def token_stability(model: Any, images: np.ndarray, masks: np.ndarray) -> tuple[float, int]:
    """Fraction of sky tokens unchanged by encode -> decode -> encode, and distinct codes used."""
    from keras import ops

    codes = ops.convert_to_numpy(model.encode(images, masks))
    again = ops.convert_to_numpy(model.encode(model.decode(codes), masks))
    sky = ops.convert_to_numpy(model.latent_weight(ops.convert_to_tensor(masks))) > 0
    if not sky.any():
        return 1.0, 0
    return float((codes == again)[sky].mean()), len(np.unique(codes[sky]))


def code_colours(codes: np.ndarray, num_embeddings: int) -> np.ndarray:
    """A fixed false colour per code (golden-ratio hues), so token maps compare across epochs."""
    hue = (np.arange(num_embeddings) * 0.618034) % 1.0
    rgb = 0.5 + 0.5 * np.cos(2 * np.pi * (hue[:, None] + np.array([0.0, 1 / 3, 2 / 3])[None, :]))
    colours: np.ndarray = rgb[codes].astype(np.float32)
    return colours


def build_tokenizer(config: TokenizerConfig) -> Any:
    """The tokenizer of a config, compiled with Adam and its optimizer built: its variables are
    exactly those a checkpoint holds, so a prior (PixelCNN, MaskGIT) reloads it this way."""
    import keras

    from mlops_trainers.trainers.tokenizer.tokenizer import Tokenizer

    model = Tokenizer(
        channels=config.channels,
        base_filters=config.base_filters,
        channel_multipliers=config.channel_multipliers,
        residual_blocks=config.residual_blocks,
        groups=config.groups,
        latent_dim=config.latent_dim,
        num_embeddings=config.num_embeddings,
        beta=config.beta,
        unused_code_weight=config.unused_code_weight,
        name="tokenizer",
    )
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    model.optimizer.build(model.trainable_variables)
    return model


# === Trainer ===


class TokenizerTrainer(Trainer[TokenizerConfig]):
    """VQGAN sky tokenizer; see the module docstring."""

    config_class = TokenizerConfig

    def prepare(self) -> None:
        root = resolve_data_url(self.run.data)
        self.cameras = find_cameras(root)
        self.skies = {}
        for camera in self.cameras:
            sky = camera_sky(camera, self.config)
            self.skies[camera.name] = sky
            self.context.write_bytes(f"skymask/{camera.name}.png", mask_png(sky))
            self.context.log.info(
                "camera %s: %d frames, sky %.1f%%",
                camera.name,
                len(camera.frames),
                100 * sky.mean(),
            )
        self.inputs["cameras"] = {c.name: len(c.frames) for c in self.cameras}
        self.token_metrics: dict[str, float] = {}

    def datasets(self) -> ArrayBatches:
        c = self.config
        images, masks = [], []
        for camera in self.cameras:
            frames, valid = load_images(list(camera.frames), c.image_size, c.channels)
            images.append(frames)
            masks.append(valid * pad_mask(self.skies[camera.name], c.image_size)[None])
        self.images = np.concatenate(images)
        self.masks = np.concatenate(masks).astype(np.float32)
        # Padded frames and their masks (sky x valid) as {"image", "mask"} batches.
        batches = {"image": self.images, "mask": self.masks}
        return ArrayBatches(batches, c.batch_size, self.run.seed, c.steps_per_epoch)

    def build_model(self) -> Any:
        return build_tokenizer(self.config)

    def memory_probe(self) -> tuple[Any, Any, int, str]:
        c = self.config
        batch = (c.batch_size, c.image_size, c.image_size)
        specs = {"image": ((*batch, c.channels), "float32"), "mask": ((*batch, 1), "float32")}
        # The frames are held in memory; how many there are is known only once read.
        return self.build_model(), specs, 0, "frames in memory, not counted: N x size^2 x 16 B"

    def preview_set(self) -> tuple[np.ndarray, np.ndarray]:
        """A fixed set of frames evenly spread over the data (over the day, for one camera)."""
        if not hasattr(self, "images"):
            self.datasets()
        count = max(1, min(self.config.reconstructions or 8, len(self.images)))
        idx = np.linspace(0, len(self.images) - 1, count).round().astype(int)
        return self.images[idx], self.masks[idx]

    def on_epoch_end(self, epoch: int, model: Any, logs: Mapping[str, float]) -> dict[str, float]:
        from keras import ops

        images, masks = self.preview_set()
        stability, used = token_stability(model, images, masks)
        self.token_metrics = {"token_stability": stability, "codes_used_preview": float(used)}
        self.context.log.info("epoch %d: token stability %.3f, %d codes", epoch, stability, used)
        if not self.config.reconstructions:
            return dict(self.token_metrics)
        codes = ops.convert_to_numpy(model.encode(images, masks))
        recon = ops.convert_to_numpy(model.decode(codes))
        pasted = masks * recon + (1.0 - masks) * images * 0.5  # ground dimmed: not modelled
        factor = images.shape[1] // codes.shape[1]
        tokens = np.repeat(
            np.repeat(code_colours(codes, self.config.num_embeddings), factor, 1), factor, 2
        )
        grid = labelled_rows(
            [("frame", images), ("reconstruction", pasted), ("tokens", tokens)],
            title=f"{self.run.run_id}, epoch {epoch} (ground dimmed: not modelled)",
        )
        self.context.write_png(f"reconstructions/epoch-{epoch:04d}.png", grid)
        return dict(self.token_metrics)

    def final_metrics(self, logs: Mapping[str, float]) -> dict[str, float]:
        return {**logs, **self.token_metrics}
