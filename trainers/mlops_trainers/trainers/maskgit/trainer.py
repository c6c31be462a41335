"""The ``maskgit`` trainer: a MaskGIT prior over the code grids of a tokenizer run.

``config.tokenizer`` names the parent: a ``tokenizer`` run (or a ``vqvae`` one), by run name (its
newest run under the same output prefix) or run/checkpoint URL, resolved to a complete checkpoint
and rebuilt with its weights (:func:`mlops_trainers.code_grids.load_code_source`), as the PixelCNN
does; the resolved reference is recorded in ``run.json`` (``inputs.tokenizer``). The data
(``run.data``, the tokenizer's kind of data: camera folders of frames) is encoded once; the last
``validation_grids`` grids (at most a quarter: for one camera, its latest frames) are held out.

Batches are ``{"codes", "valid", "mask"}`` with the mask drawn by the cosine schedule from
``(seed, epoch, step)`` (:class:`~mlops_trainers.trainers.maskgit.masking.MaskTokens`), so a
resumed run trains on the same masks; the runtime's step loop, checkpoints and resume apply.

Each epoch reports the token NLL in bits per code on the held-out grids (masks drawn once, the
same every epoch), ``val_bits_per_code`` and, over sky (valid) codes only,
``val_bits_per_valid_code``, next to the **unigram** baseline: the cross-entropy of the held-out
codes under the training codes' frequencies (add-one smoothed), ``unigram_bits_per_code`` and
``unigram_bits_per_valid_code``. A model below the unigram uses the context; ``log2(K)`` is a
uniform guess. ``samples/epoch-NNNN.png``: a row of held-out grids decoded by the tokenizer
(what it makes of real frames), then ``samples`` grids from iterative decoding, decoded the
same way (for one camera, its ground is pasted in, dimmed: a sky tokenizer does not model it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from mlops_trainers.artifacts import image_grid
from mlops_trainers.data import ArrayBatches
from mlops_trainers.errors import DataError
from mlops_trainers.trainer import Trainer
from mlops_trainers.trainers.maskgit.config import MaskGITConfig
from mlops_trainers.trainers.maskgit.masking import MaskTokens, draw_masks

__all__ = ["MaskGITTrainer", "unigram_bits"]

EVAL_BATCH = 32
VAL_DRAWS = 4  # masks per held-out grid: a few thousand masked codes, a steadier NLL


def unigram_bits(train: np.ndarray, held_out: np.ndarray, num_embeddings: int) -> float:
    """Bits per code of ``held_out`` codes under the add-one smoothed code frequencies of
    ``train`` (both flat arrays of codes)."""
    counts = np.bincount(train.ravel(), minlength=num_embeddings).astype(np.float64) + 1.0
    p = counts / counts.sum()
    if held_out.size == 0:
        return float("nan")
    return float(-np.log2(p[held_out.ravel()]).mean())


class MaskGITTrainer(Trainer[MaskGITConfig]):
    """MaskGIT prior over a tokenizer's codes; see the module docstring."""

    config_class = MaskGITConfig

    def prepare(self) -> None:
        from mlops_trainers.code_grids import load_parent_codes

        self.source = load_parent_codes(self, self.config.tokenizer, "tokenizer")
        if self.config.decode_steps > self.source.grid_size**2:
            raise DataError(
                f"decode_steps {self.config.decode_steps} > the {self.source.grid_size**2} "
                "codes of a grid: at most one step a code"
            )
        self.eval_metrics: dict[str, float] = {}

    def datasets(self) -> ArrayBatches:
        c = self.config
        grids = self.source.encode(self.run.data)
        held = min(c.validation_grids, len(grids) // 4)
        train = len(grids) - held
        if train < 1:
            raise DataError(f"no code grids to train on at {self.run.data}")
        self.grids = grids
        self.train_codes, self.train_valid = grids.codes[:train], grids.valid[:train]
        val_codes = grids.codes[train:] if held else grids.codes[:train]
        val_valid = grids.valid[train:] if held else grids.valid[:train]
        # The held-out masks: VAL_DRAWS per grid, drawn once, the same every epoch, so the
        # NLLs of successive epochs compare.
        rng = np.random.default_rng([self.run.seed, 15])
        repeated = np.concatenate([val_codes] * VAL_DRAWS)
        self.val = {
            "codes": repeated,
            "valid": np.concatenate([val_valid] * VAL_DRAWS),
            "mask": draw_masks(rng, len(repeated), val_codes[0].size).reshape(repeated.shape),
        }
        k = self.source.num_embeddings
        sky = self.train_valid > 0
        self.unigram = {
            "unigram_bits_per_code": unigram_bits(self.train_codes, val_codes, k),
            "unigram_bits_per_valid_code": unigram_bits(
                self.train_codes[sky], val_codes[val_valid > 0], k
            ),
            "uniform_bits_per_code": math.log2(k),
        }
        self.inputs["data"] = {"url": self.run.data, "grids": train, "held_out": held}
        self.inputs["codes_used"] = len(np.unique(self.train_codes))
        self.context.log.info(
            "encoded %d grids (%d held out): %d of %d codes used; unigram %.3f bits per code "
            "(%.3f on valid codes), uniform %.3f",
            len(grids),
            held,
            self.inputs["codes_used"],
            k,
            self.unigram["unigram_bits_per_code"],
            self.unigram["unigram_bits_per_valid_code"],
            self.unigram["uniform_bits_per_code"],
        )
        batches = {"codes": self.train_codes, "valid": self.train_valid}
        return ArrayBatches(
            batches, c.batch_size, self.run.seed, c.steps_per_epoch, MaskTokens(self.run.seed)
        )

    def build_model(self) -> Any:
        import keras

        from mlops_trainers.trainers.maskgit.maskgit import MaskGIT

        c = self.config
        model = MaskGIT(
            self.source.num_embeddings,
            self.source.grid_size,
            dim=c.dim,
            layers=c.layers,
            heads=c.heads,
            mlp_dim=c.mlp_dim,
            dropout=c.dropout,
            name="maskgit",
        )
        model.compile(optimizer=keras.optimizers.Adam(c.learning_rate))
        model.optimizer.build(model.trainable_variables)
        return model

    def held_out_bits(self, model: Any) -> tuple[float, float]:
        """Bits per masked code and per masked valid code of the held-out grids."""
        from keras import ops

        total = valid_total = weight = valid_weight = 0.0
        for start in range(0, len(self.val["codes"]), EVAL_BATCH):
            batch = {k: v[start : start + EVAL_BATCH] for k, v in self.val.items()}
            logits = model.predict_on_batch(batch)
            nats, valid_nats = (
                float(ops.convert_to_numpy(v))
                for v in model.masked_nats(batch, ops.convert_to_tensor(logits))
            )
            masked = float(batch["mask"].sum())
            masked_valid = float((batch["mask"] * batch["valid"]).sum())
            total, weight = total + nats * masked, weight + masked
            valid_total, valid_weight = (
                valid_total + valid_nats * masked_valid,
                (valid_weight + masked_valid),
            )
        ln2 = math.log(2.0)
        return total / max(weight, 1.0) / ln2, valid_total / max(valid_weight, 1.0) / ln2

    def on_epoch_end(self, epoch: int, model: Any, logs: Mapping[str, float]) -> dict[str, float]:
        bits, valid_bits = self.held_out_bits(model)
        self.eval_metrics = {
            "val_bits_per_code": bits,
            "val_bits_per_valid_code": valid_bits,
            **self.unigram,
        }
        self.context.log.info(
            "epoch %d: held-out NLL %.3f bits per code (unigram %.3f), %.3f per valid code "
            "(unigram %.3f); uniform %.3f",
            epoch,
            bits,
            self.unigram["unigram_bits_per_code"],
            valid_bits,
            self.unigram["unigram_bits_per_valid_code"],
            self.unigram["uniform_bits_per_code"],
        )
        c = self.config
        if c.samples:
            codes = np.asarray(
                model.sample(
                    c.samples,
                    steps=c.decode_steps,
                    temperature=c.temperature,
                    choice_temperature=c.choice_temperature,
                    seed=self.run.seed + 1,  # the same draws every epoch: they improve in place
                )
            )
            self.eval_metrics["sample_codes_used"] = float(len(np.unique(codes)))
            columns = min(c.samples, 8)
            real = self.val["codes"][:columns]
            images = self._show(self.source.decode(np.concatenate([real, codes])))
            self.context.write_png(
                f"samples/epoch-{epoch:04d}.png", image_grid(images, columns=columns)
            )
        return dict(self.eval_metrics)

    def _show(self, images: np.ndarray) -> np.ndarray:
        """One camera's ground pasted in (dimmed) around decoded sky: a sky tokenizer's decoder
        draws anything on the ground it never learnt."""
        masks = self.grids.masks
        if self.source.kind != "tokenizer" or not np.all(masks == masks[:1]):
            return images
        ground = self.grids.images[0] * 0.5
        pasted: np.ndarray = masks[:1] * images + (1.0 - masks[:1]) * ground[None]
        return pasted

    def final_metrics(self, logs: Mapping[str, float]) -> dict[str, float]:
        return {**logs, **self.eval_metrics}
