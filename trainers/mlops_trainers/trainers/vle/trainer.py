"""The ``vle`` trainer: variable-length embeddings of any image folder.

Images are padded to ``image_size`` (never stretched) and scaled to [-1, 1]. The last
``validation_images`` of the data (at most a quarter) are held out. Each global step draws the
number of tokens ``T`` from ``1..max_tokens`` (from ``(seed, epoch, step)`` alone, so a resumed
run draws the same T for the same batch) and trains the
:class:`~mlops_trainers.trainers.vle.variable_length_embedding.VariableLengthEmbedding` to
rebuild the image in T steps; the runtime's normal step loop, checkpoints and resume apply.

Each epoch measures on the held-out images the MSE after k tokens, ``val_mse_k<k>`` for
``k = 1..max_tokens`` (it must fall with k) and, with ``baseline``,
``baseline_mse_k<k>``, a plain autoencoder of the same budget trained on the same batches.
The ``mask`` variant also reports, for the loop of ``max_tokens`` steps, each step's mask area
``mask_area_t<t>`` and its overlap with the masks before it ``mask_overlap_t<t>`` (the share of
its mass on pixels already drawn), and the share of masks that are all 0 or all 1 (>0.5
binarised): ``mask_empty_share``, ``mask_full_share`` (the collapse the seed saw).

``reconstructions/epoch-NNNN.png``: one row per preview image: the image, the reconstruction
after each step and, for ``mask``, each step's mask.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlops_trainers.artifacts import image_grid
from mlops_trainers.data import ImageData, list_images
from mlops_trainers.errors import DataError
from mlops_trainers.trainer import Trainer
from mlops_trainers.trainers.vle.config import VLEConfig

__all__ = ["RequestedTokens", "VLETrainer", "evaluate", "mask_statistics"]

CACHE_BYTES = 1 << 30  # decoded data sets up to this size stay in memory
EVAL_BATCH = 64


# === Data ===


@dataclass
class RequestedTokens:
    """Batches ``{"image" in [-1, 1], "tokens"}``: T drawn per global step from ``(seed, epoch,
    step)``, the same T for the whole batch (one loop length per step, as in the seed)."""

    images: ImageData
    max_tokens: int
    seed: int

    @property
    def steps_per_epoch(self) -> int:
        return self.images.steps_per_epoch

    def tokens(self, epoch: int, step: int) -> int:
        rng = np.random.default_rng([self.seed, epoch, step, 2])
        return int(rng.integers(1, self.max_tokens + 1))

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        for k, batch in enumerate(self.images.batches(epoch, start_step)):
            image = 2.0 * np.asarray(batch["image"], np.float32) - 1.0
            t = self.tokens(epoch, start_step + k)
            yield {"image": image, "tokens": np.full((len(image),), t, np.int32)}


# === Evaluation ===


def _predict(model: Any, images: np.ndarray, tokens: int) -> dict[str, np.ndarray]:
    """The model's outputs for ``tokens`` requested, in batches; ``predict_on_batch`` traces one
    function per batch shape, several times faster than eager calls of the unrolled loop."""
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), EVAL_BATCH):
        x = images[start : start + EVAL_BATCH]
        out = model.predict_on_batch({"image": x, "tokens": np.full((len(x),), tokens, np.int32)})
        for key in ("reconstruction", "steps", "masks"):
            parts.setdefault(key, []).append(np.asarray(out[key]))
    return {k: np.concatenate(v) for k, v in parts.items()}


def mask_statistics(masks: np.ndarray) -> dict[str, float]:
    """Per-step area and overlap with the earlier masks, and the share of all-0 / all-1 masks,
    of masks (N, T, H, W, 1) in [0, 1]."""
    out: dict[str, float] = {}
    covered = np.zeros_like(masks[:, 0])
    for t in range(masks.shape[1]):
        m = masks[:, t]
        out[f"mask_area_t{t + 1}"] = float(m.mean())
        if t > 0:
            drawn = np.minimum(covered, 1.0)
            out[f"mask_overlap_t{t + 1}"] = float((m * drawn).sum() / max(float(m.sum()), 1e-9))
        covered = covered + m
    binary = masks > 0.5
    per_mask = binary.reshape(*binary.shape[:2], -1)
    out["mask_empty_share"] = float((~per_mask.any(-1)).mean())
    out["mask_full_share"] = float(per_mask.all(-1).mean())
    return out


def evaluate(model: Any, images: np.ndarray) -> dict[str, float]:
    """MSE after k tokens (k = 1..T_max) of images in [-1, 1], the baselines', mask statistics."""
    # One loop of T_max steps: the first k tokens do not depend on T, so its reconstruction after
    # step k is the reconstruction from k tokens.
    full = _predict(model, images, model.max_tokens)
    out: dict[str, float] = {}
    for k in range(1, model.max_tokens + 1):
        out[f"val_mse_k{k}"] = float(np.mean((full["steps"][:, k - 1] - images) ** 2))
    for k, baseline in enumerate(model.baselines, start=1):
        rec = np.concatenate(
            [
                np.asarray(baseline.predict_on_batch(images[s : s + EVAL_BATCH]))
                for s in range(0, len(images), EVAL_BATCH)
            ]
        )
        out[f"baseline_mse_k{k}"] = float(np.mean((rec - images) ** 2))
    if model.variant == "mask":
        out.update(mask_statistics(full["masks"]))
    return out


def _unit(image: np.ndarray) -> np.ndarray:
    """[-1, 1] -> [0, 1], three channels."""
    image = np.clip((image + 1.0) / 2.0, 0.0, 1.0)
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


# === Trainer ===


class VLETrainer(Trainer[VLEConfig]):
    """Variable-length embeddings; see the module docstring."""

    config_class = VLEConfig

    def prepare(self) -> None:
        files = list_images(self.run.data)
        c = self.config
        held = min(c.validation_images, len(files) // 4)
        self.train_files, self.val_files = (files[: len(files) - held], files[len(files) - held :])
        if len(self.train_files) < c.batch_size:
            raise DataError(
                f"{len(self.train_files)} training images at {self.run.data}, fewer than a batch "
                f"({c.batch_size})"
            )
        self.inputs["data"] = {
            "url": self.run.data,
            "images": len(self.train_files),
            "held_out": len(self.val_files),
        }
        self.context.log.info(
            "%d images at %s (%d held out)", len(files), self.run.data, len(self.val_files)
        )
        self.eval_metrics: dict[str, float] = {}

    def datasets(self) -> RequestedTokens:
        c = self.config
        # The cache is uint8 with a 4-number box per image (mlops_trainers.data.ImageData).
        size = len(self.train_files) * (c.image_size**2 * c.channels + 16)
        images = ImageData(
            self.train_files,
            c.image_size,
            c.channels,
            c.batch_size,
            self.run.seed,
            c.steps_per_epoch,
            cache=size <= CACHE_BYTES,
        )
        return RequestedTokens(images, c.max_tokens, self.run.seed)

    def build_model(self) -> Any:
        import keras

        from mlops_trainers.trainers.vle.variable_length_embedding import VariableLengthEmbedding

        c = self.config
        model = VariableLengthEmbedding(
            c.channels,
            max_tokens=c.max_tokens,
            variant=c.variant,
            filters=c.filters,
            downsample=c.downsample,
            latent_channels=c.latent_channels,
            mask_scale=c.mask_scale,
            mask_diff_weight=c.mask_diff_weight,
            baseline=c.baseline,
            name="vle",
        )
        model.compile(optimizer=keras.optimizers.Adam(c.learning_rate))
        model.optimizer.build(model.trainable_variables)
        return model

    def held_out(self) -> np.ndarray:
        """The held-out images in [-1, 1] (the first training images when nothing is held out)."""
        if not hasattr(self, "_held_out"):
            from mlops_trainers.data import load_images

            c = self.config
            files = self.val_files or self.train_files[: c.validation_images or c.batch_size]
            images, _ = load_images(files, c.image_size, c.channels)
            self._held_out = 2.0 * images - 1.0
        return self._held_out

    def on_epoch_end(self, epoch: int, model: Any, logs: Mapping[str, float]) -> dict[str, float]:
        images = self.held_out()
        self.eval_metrics = evaluate(model, images)
        curve = [self.eval_metrics[f"val_mse_k{k}"] for k in range(1, model.max_tokens + 1)]
        self.context.log.info(
            "epoch %d: MSE after k tokens %s%s",
            epoch,
            " ".join(f"{v:.4f}" for v in curve),
            "; plain autoencoders "
            + " ".join(
                f"{self.eval_metrics[f'baseline_mse_k{k}']:.4f}"
                for k in range(1, len(model.baselines) + 1)
            )
            if model.baselines
            else "",
        )
        if self.config.previews:
            preview = images[: self.config.previews]
            out = _predict(model, preview, model.max_tokens)
            columns = [preview] + [out["steps"][:, t] for t in range(model.max_tokens)]
            if model.variant == "mask":
                # Shown like images: 0 black, 1 white.
                columns += [2.0 * out["masks"][:, t] - 1.0 for t in range(model.max_tokens)]
            tiles = np.stack([_unit(c) for c in columns], axis=1)  # (rows, columns, H, W, 3)
            grid = image_grid(tiles.reshape(-1, *tiles.shape[2:]), columns=len(columns))
            self.context.write_png(f"reconstructions/epoch-{epoch:04d}.png", grid)
        return dict(self.eval_metrics)

    def final_metrics(self, logs: Mapping[str, float]) -> dict[str, float]:
        return {**logs, **self.eval_metrics}
