"""Vector quantizer of a VQ-VAE, with the fixes for codebook collapse.

* Commitment loss ``beta * ||z - sg(e)||^2`` (van den Oord et al. 2017, arXiv:1711.00937).
* EMA codebook (Razavi et al. 2019, arXiv:1906.00446, appendix; van den Oord et al. 2017, A.1):
  each code is the running mean of the encoder outputs assigned to it, with Laplace smoothing of
  the counts. The statistics start as "each code has seen itself once", so an unused code stays
  where it is instead of drifting to 0 or blowing up.
* Dead-code restart (as in Jukebox, Dhariwal et al. 2020, arXiv:2005.00341, and SoundStream): a
  code whose EMA usage falls under ``dead_code_threshold`` (fraction of latents assigned to it)
  is re-seeded from a random encoder output of the current batch.
* Optional k-means initialisation from encoder outputs (:meth:`VectorQuantizer.kmeans_init`).

Only *valid* latents (not padding) count for the losses, the EMA statistics and the restarts.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from mlops_trainers.distribute import (
    SAME_ON_EVERY_REPLICA,
    all_reduce_sum,
    first_replica_only,
    mean_count,
)
from mlops_trainers.layers.quantizer import Quantizer


@keras.saving.register_keras_serializable(package="mlops_trainers")
class VectorQuantizer(Quantizer):
    """``z (B, H, W, D) -> (z_q (B, H, W, D), codes (B, H, W) int32)``.

    ``z_q`` carries straight-through gradients to ``z``. The losses are added with ``add_loss``,
    or returned as a third output with ``return_loss=True`` (what the VQ-VAE trains with: a
    layer's ``add_loss`` list is shared by the replicas of a data-parallel step, whose threads
    take turns at every all-reduce of the EMA update, so one replica's loss could be read by
    another; see :mod:`mlops_trainers.distribute`).

    Args:
        num_embeddings: codebook size K.
        embedding_dim: dimension D of each code.
        beta: commitment loss weight.
        ema: update the codebook by exponential moving averages (no codebook loss, no gradient).
        ema_decay: decay of the EMA statistics and of the usage estimate.
        dead_code_restart: re-seed unused codes from encoder outputs.
        dead_code_threshold: EMA fraction of latents under which a code counts as dead.
        epsilon: Laplace smoothing of the EMA counts.
        seed: seed of the restart sampling (its state is saved with the weights).
        **kwargs: forwarded to ``keras.layers.Layer``.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        beta: float = 0.25,
        ema: bool = True,
        ema_decay: float = 0.99,
        dead_code_restart: bool = True,
        dead_code_threshold: float = 1e-3,
        epsilon: float = 1e-5,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, **kwargs)
        self.beta = beta
        self.ema = ema
        self.ema_decay = ema_decay
        self.dead_code_restart = dead_code_restart
        self.dead_code_threshold = dead_code_threshold
        self.epsilon = epsilon
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="restart_seed")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        k, d = self.num_embeddings, self.embedding_dim
        # The train step assigns these (EMA, restarts) from statistics summed over the
        # replicas, the same value on each: see mlops_trainers.distribute.
        same = SAME_ON_EVERY_REPLICA
        self.embeddings = self.add_weight(
            shape=(k, d),
            initializer=keras.initializers.VarianceScaling(scale=1.0, distribution="uniform"),
            trainable=not self.ema,
            name="embeddings",
            aggregation=same,
        )
        if self.ema:
            self.ema_count = self.add_weight(
                shape=(k,), initializer="ones", trainable=False, name="ema_count", aggregation=same
            )
            self.ema_sum = self.add_weight(
                shape=(k, d), initializer="zeros", trainable=False, name="ema_sum", aggregation=same
            )
            self.ema_sum.assign(self.embeddings)
        # Usage starts at 0: a code no latent has chosen yet is dead, so the first training
        # step re-seeds every code the first batch barely uses from that batch's encoder
        # outputs (a data-dependent initialisation). Starting at 1/K instead, a randomly
        # initialised codebook that collapsed onto one code would wait ~400 steps
        # (log(1e-3 K) / log(0.99)) before its first restart. A restarted code gets 1/K.
        self.usage = self.add_weight(
            shape=(k,), initializer="zeros", trainable=False, name="usage", aggregation=same
        )
        self.built = True

    # The restart RNG state is part of the training state: save it with the weights so that a
    # resumed run draws the same restarts as an uninterrupted one.
    def save_own_variables(self, store: Any) -> None:
        super().save_own_variables(store)
        store["seed_state"] = ops.convert_to_numpy(self.seed_generator.state.value)

    def load_own_variables(self, store: Any) -> None:
        keys = list(store.keys())
        if "seed_state" in keys:
            self.seed_generator.state.assign(ops.convert_to_tensor(store["seed_state"]))
        super().load_own_variables({k: store[k] for k in keys if k != "seed_state"})

    def call(
        self,
        inputs: Any,
        valid_mask: Any = None,
        training: bool | None = None,
        return_loss: bool = False,
    ) -> Any:
        shape = ops.shape(inputs)
        flat = ops.reshape(inputs, (-1, self.embedding_dim))
        if valid_mask is None:
            valid = ops.ones((ops.shape(flat)[0],), dtype=flat.dtype)
        else:
            valid = ops.reshape(ops.cast(valid_mask, flat.dtype), (-1,))
        embeddings = ops.convert_to_tensor(self.embeddings)
        indices = ops.cast(ops.argmin(self.distances(flat, embeddings), axis=1), "int32")
        quantized = ops.take(embeddings, indices, axis=0)

        # Losses over valid latents only: mean over vectors of the mean squared difference.
        count = ops.maximum(mean_count(ops.sum(valid)), 1.0)

        def masked_mse(a: Any, b: Any) -> Any:
            return ops.sum(valid * ops.mean((a - b) ** 2, axis=1)) / count

        loss = self.beta * masked_mse(flat, ops.stop_gradient(quantized))
        if not self.ema:
            loss = loss + masked_mse(ops.stop_gradient(flat), quantized)
        if not return_loss:
            self.add_loss(loss)

        if training:
            self._update(flat, valid, indices, embeddings)

        straight_through = flat + ops.stop_gradient(quantized - flat)
        outputs = ops.reshape(straight_through, shape), ops.reshape(indices, shape[:-1])
        return (*outputs, loss) if return_loss else outputs

    def _update(self, flat: Any, valid: Any, indices: Any, embeddings: Any) -> None:
        k = self.num_embeddings
        decay = self.ema_decay
        flat = ops.stop_gradient(flat)
        onehot = ops.one_hot(indices, k, dtype=flat.dtype) * valid[:, None]
        # Data-parallel: the counts and sums of every replica's slice, so each replica applies
        # the global batch's update (with one device these are the batch's own).
        stats = [ops.sum(onehot, axis=0)]
        if self.ema:
            stats.append(ops.matmul(ops.transpose(onehot), flat))
        stats = all_reduce_sum(stats)
        counts = stats[0]
        total = ops.maximum(ops.sum(counts), 1.0)
        usage = decay * ops.convert_to_tensor(self.usage) + (1.0 - decay) * counts / total
        if self.ema:
            ema_count = decay * ops.convert_to_tensor(self.ema_count) + (1.0 - decay) * counts
            ema_sum = decay * ops.convert_to_tensor(self.ema_sum) + (1.0 - decay) * stats[1]
            n = ops.sum(ema_count)
            smoothed = (ema_count + self.epsilon) / (n + k * self.epsilon) * n
            embeddings = ema_sum / smoothed[:, None]
        if self.dead_code_restart:
            dead = usage < self.dead_code_threshold
            # A random valid encoder output per code (log(0) -> never padding, unless all is).
            logits = ops.log(valid + 1e-12)[None, :]
            picks = keras.random.categorical(logits, k, seed=self.seed_generator)[0]
            # Data-parallel: the first replica's slice re-seeds the codes of every replica.
            fresh = first_replica_only(ops.take(flat, picks, axis=0))
            embeddings = ops.where(dead[:, None], fresh, embeddings)
            usage = ops.where(dead, ops.full_like(usage, 1.0 / k), usage)
            if self.ema:
                ema_count = ops.where(dead, ops.ones_like(ema_count), ema_count)
                ema_sum = ops.where(dead[:, None], fresh, ema_sum)
        self.usage.assign(usage)
        if self.ema:
            self.ema_count.assign(ema_count)
            self.ema_sum.assign(ema_sum)
        if self.ema or self.dead_code_restart:
            self.embeddings.assign(embeddings)

    def kmeans_init(self, vectors: Any, iterations: int = 10, seed: int = 0) -> None:
        """Set the codebook to k-means centres of ``vectors`` (N, D) (eager, once, at start)."""
        data = np.asarray(ops.convert_to_numpy(vectors), dtype="float32").reshape(
            -1, self.embedding_dim
        )
        rng = np.random.default_rng(seed)
        k = self.num_embeddings
        centres = data[rng.choice(len(data), size=k, replace=len(data) < k)].copy()
        for _ in range(iterations):
            d = (
                (data**2).sum(1, keepdims=True)
                - 2.0 * data @ centres.T
                + (centres**2).sum(1)[None, :]
            )
            assign = d.argmin(1)
            for j in range(k):
                members = data[assign == j]
                if len(members):
                    centres[j] = members.mean(0)
                else:  # an empty cluster takes a random point
                    centres[j] = data[rng.integers(len(data))]
        self.embeddings.assign(centres)
        if self.ema:
            self.ema_sum.assign(centres)
            self.ema_count.assign(np.ones((k,), dtype="float32"))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> Any:
        return input_shape, input_shape[:-1]

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(
            {
                "beta": self.beta,
                "ema": self.ema,
                "ema_decay": self.ema_decay,
                "dead_code_restart": self.dead_code_restart,
                "dead_code_threshold": self.dead_code_threshold,
                "epsilon": self.epsilon,
                "seed": self.seed,
            }
        )
        return config
