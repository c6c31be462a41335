"""MaskGIT's masking: the cosine schedule for training and the decoding schedule for sampling.

Training (Chang et al. 2022, arXiv:2202.04200, Sec. 3.2): per grid, ``r ~ U(0, 1)``, the mask
ratio is ``gamma(r) = cos(pi r / 2)`` and ``ceil(gamma(r) N)`` of the N tokens, chosen uniformly,
are masked; the loss is the cross-entropy of the masked tokens only. The cosine schedule masks
more often than a linear one (its mean ratio is 2/pi), which the paper found best for generation:
sampling starts from a fully masked grid, so the model must be good with little context.

Decoding (Sec. 3.3): after step ``t`` of ``T`` the number of tokens still masked is
``floor(gamma((t + 1) / T) N)``, at least one fewer than before and at least one until the last
step, so every step reveals some tokens and the last reveals the rest.

The draws use NumPy generators seeded by ``(seed, epoch, step)``: the same batch is masked the
same way in any process, so a resumed run trains on what an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["MaskTokens", "cosine_mask_ratio", "decoding_schedule", "draw_masks"]


def cosine_mask_ratio(r: np.ndarray) -> np.ndarray:
    """gamma(r) = cos(pi r / 2): 1 at r = 0 (all masked), 0 at r = 1."""
    ratio: np.ndarray = np.cos(0.5 * math.pi * np.asarray(r, np.float64))
    return ratio


def draw_masks(rng: np.random.Generator, batch: int, tokens: int) -> np.ndarray:
    """(batch, tokens) float32 masks, 1 = masked, ``ceil(gamma(r) N)`` (>= 1) per row."""
    count = np.maximum(1, np.ceil(cosine_mask_ratio(rng.random(batch)) * tokens)).astype(int)
    ranks = np.argsort(np.argsort(rng.random((batch, tokens)), axis=1), axis=1)
    masks: np.ndarray = (ranks < count[:, None]).astype(np.float32)
    return masks


def decoding_schedule(tokens: int, steps: int) -> np.ndarray:
    """(steps,) int32: the tokens still masked after each decoding step (the last is 0)."""
    if steps > tokens:
        raise ValueError(f"{steps} decoding steps for {tokens} tokens: at most one step a token")
    left = np.zeros(steps, np.int32)
    before = tokens
    for t in range(steps - 1):
        n = math.floor(float(cosine_mask_ratio(np.array((t + 1) / steps))) * tokens)
        n = min(max(n, 1), before - 1)
        left[t] = before = n
    return left


@dataclass(frozen=True)
class MaskTokens:
    """Batch transform of :class:`~mlops_trainers.data.ArrayBatches`: adds ``mask`` (B, h, w) to
    ``{"codes", "valid"}`` batches, drawn from ``(seed, epoch, step)``."""

    seed: int

    def __call__(
        self, batch: dict[str, np.ndarray], epoch: int, step: int
    ) -> dict[str, np.ndarray]:
        codes = batch["codes"]
        rng = np.random.default_rng([self.seed, epoch, step, 5])
        mask = draw_masks(rng, len(codes), int(np.prod(codes.shape[1:])))
        return {**batch, "mask": mask.reshape(codes.shape)}
