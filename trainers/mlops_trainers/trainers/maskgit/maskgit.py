"""MaskGIT (Chang et al. 2022, arXiv:2202.04200): a bidirectional transformer over code grids,
trained to fill in masked tokens and sampled by iterative parallel decoding.

The code grid ``(B, h, w)`` is flattened to ``h * w`` tokens; masked tokens are replaced by an
extra ``[MASK]`` code (index ``K``); a learned position embedding is added, then ``layers``
:class:`TransformerBlock` and a layer norm and a dense layer give ``K`` logits per token.

Training (:mod:`~mlops_trainers.trainers.maskgit.masking`): each grid comes with a mask drawn by
the cosine schedule; the loss is the cross-entropy of the masked tokens only. Reported in bits
per code: over the masked tokens (``bits_per_code``) and over those that are also valid
(``bits_per_valid_code``: sky codes for a sky tokenizer; the ground's codes never change and
would flatter the model).

Sampling (:meth:`MaskGIT.sample`), the paper's Sec. 3.3: start from an all-``[MASK]`` grid; at
each of ``steps`` steps predict every masked token, draw one per position (Gumbel-max at
``temperature``), score each draw by its log-probability plus Gumbel noise scaled by
``choice_temperature * (1 - (t + 1) / steps)`` (more randomness in which tokens are kept early,
none at the end), keep the most confident and mask the rest again, as many as the cosine
decoding schedule says. Tokens once kept are never changed. One compiled loop
(``keras.ops.fori_loop``), the noise drawn up front, as for the PixelCNN sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from mlops_trainers.distribute import mean_count, scale_loss
from mlops_trainers.precision import as_float32
from mlops_trainers.trainers.maskgit.masking import decoding_schedule
from mlops_trainers.trainers.maskgit.transformer_block import TransformerBlock


def _compile(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` compiled by the backend: a tf.function on TensorFlow, jitted on JAX."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, reduce_retracing=True)  # type: ignore[no-any-return]
    if backend == "jax":
        import jax

        return jax.jit(fn, static_argnums=(2,))  # type: ignore[no-any-return]
    return fn


@keras.saving.register_keras_serializable(package="mlops_trainers")
class MaskGIT(keras.Model):  # type: ignore[misc,unused-ignore]
    """Masked-token model of ``(B, h, w)`` code grids; ``call`` returns ``(B, h, w, K)`` logits.

    Inputs: a code grid (``K`` marks a masked token), or ``{"codes", "mask"[, "valid"]}`` where
    ``mask`` (1 = masked) says which codes to hide and ``valid`` which count in
    ``bits_per_valid_code``.

    Args:
        num_embeddings: the tokenizer's codebook size K.
        grid_size: side h (= w) of the code grid.
        dim: transformer width.
        layers: transformer blocks.
        heads: attention heads.
        mlp_dim: hidden width of the blocks' MLPs.
        dropout: dropout in the blocks.
        **kwargs: forwarded to ``keras.Model``.
    """

    def __init__(
        self,
        num_embeddings: int,
        grid_size: int,
        *,
        dim: int = 64,
        layers: int = 2,
        heads: int = 4,
        mlp_dim: int = 128,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_embeddings = num_embeddings
        self.grid_size = grid_size
        self.dim = dim
        self.num_layers = layers
        self.heads = heads
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.mask_id = num_embeddings
        self.tokens = grid_size * grid_size

        # === Layers ===
        self.token_embedding = keras.layers.Embedding(num_embeddings + 1, dim, name="tokens")
        self.token_embedding.build((None, self.tokens))
        self.position_embedding = keras.layers.Embedding(
            self.tokens,
            dim,
            embeddings_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="positions",
        )
        self.position_embedding.build((self.tokens,))
        self.blocks = [
            TransformerBlock(dim, heads, mlp_dim, dropout, name=f"block_{i}") for i in range(layers)
        ]
        for block in self.blocks:
            block.build((None, self.tokens, dim))
        self.norm = keras.layers.LayerNormalization(epsilon=1e-6, name="norm")
        self.norm.build((None, self.tokens, dim))
        self.logits = keras.layers.Dense(num_embeddings, name="logits")
        self.logits.build((None, self.tokens, dim))

        # === Metrics ===
        self.bits_tracker = keras.metrics.Mean(name="bits_per_code")
        self.valid_bits_tracker = keras.metrics.Mean(name="bits_per_valid_code")
        self._sampler: Callable[..., Any] | None = None
        self.built = True

    # === Forward ===

    def masked_codes(self, inputs: Any) -> Any:
        """(B, h, w) int32 codes with ``mask_id`` where ``inputs["mask"]`` is set."""
        if not isinstance(inputs, dict):
            return ops.cast(inputs, "int32")
        codes = ops.cast(inputs["codes"], "int32")
        if "mask" not in inputs:
            return codes
        hidden = ops.cast(inputs["mask"], "bool")
        return ops.where(hidden, ops.full_like(codes, self.mask_id), codes)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        codes = self.masked_codes(inputs)
        flat = ops.reshape(codes, (-1, self.tokens))
        x = self.token_embedding(flat) + self.position_embedding(ops.arange(self.tokens))[None]
        for block in self.blocks:
            x = block(x, training=training)
        logits = self.logits(self.norm(x))
        return ops.reshape(logits, (-1, self.grid_size, self.grid_size, self.num_embeddings))

    def masked_nats(self, x: dict[str, Any], logits: Any) -> tuple[Any, Any]:
        """Mean nats per masked code, and per masked valid code."""
        codes = ops.cast(x["codes"], "int32")
        # In float32 under any policy (mlops_trainers.precision): a log-softmax over K codes
        # and sums over the batch.
        logits = as_float32(logits)
        nats = keras.losses.sparse_categorical_crossentropy(codes, logits, from_logits=True)
        mask = ops.cast(x["mask"], nats.dtype)
        valid = ops.cast(x["valid"], nats.dtype) * mask if "valid" in x else mask
        loss = ops.sum(nats * mask) / ops.maximum(mean_count(ops.sum(mask)), 1.0)
        valid_nats = ops.sum(nats * valid) / ops.maximum(mean_count(ops.sum(valid)), 1.0)
        return loss, valid_nats

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        del y, sample_weight, training
        loss, valid_nats = self.masked_nats(x, y_pred)
        self.bits_tracker.update_state(loss / math.log(2.0))
        self.valid_bits_tracker.update_state(valid_nats / math.log(2.0))
        return scale_loss(loss)

    # === Sampling ===

    def _decode_loop(self, noise: dict[str, Any], schedule: Any, steps: int) -> Any:
        """Iterative decoding; ``noise["tokens"]`` (steps, B, N, K) and ``noise["choice"]``
        (steps, B, N) are Gumbel noise (the latter already scaled), ``schedule`` (steps,) the
        tokens left masked after each step."""
        batch = ops.shape(noise["choice"])[1]
        codes = ops.full((batch, self.tokens), self.mask_id, dtype="int32")
        temperature = noise["temperature"]

        def body(t: Any, codes: Any) -> Any:
            grid = ops.reshape(codes, (batch, self.grid_size, self.grid_size))
            logits = ops.reshape(
                as_float32(self(grid, training=False)), (batch, self.tokens, -1)
            )  # the noise is float32; so are the confidences compared
            scaled = logits / temperature
            draw = ops.cast(ops.argmax(scaled + ops.take(noise["tokens"], t, axis=0), -1), "int32")
            unknown = codes == self.mask_id
            drawn = ops.where(unknown, draw, codes)
            logp = ops.take_along_axis(ops.log_softmax(scaled, axis=-1), drawn[..., None], -1)
            confidence = logp[..., 0] + ops.take(noise["choice"], t, axis=0)
            confidence = ops.where(unknown, confidence, ops.full_like(confidence, math.inf))
            left = ops.take(schedule, t)
            cutoff = ops.take_along_axis(
                ops.sort(confidence, axis=-1), ops.full((batch, 1), left, dtype="int32"), -1
            )
            # The ``left`` least confident draws are masked again; with none left, none.
            again = confidence < cutoff
            return ops.where(again, ops.full_like(drawn, self.mask_id), drawn)

        codes = ops.fori_loop(0, steps, body, codes)
        return ops.reshape(codes, (batch, self.grid_size, self.grid_size))

    def sample(
        self,
        count: int,
        *,
        steps: int = 8,
        temperature: float = 1.0,
        choice_temperature: float = 4.5,
        seed: int = 0,
    ) -> Any:
        """``count`` code grids (count, h, w) int32 by ``steps`` of iterative decoding."""
        schedule = ops.convert_to_tensor(decoding_schedule(self.tokens, steps))
        uniform = keras.random.uniform(
            (steps, count, self.tokens, self.num_embeddings), minval=1e-9, maxval=1.0, seed=seed
        )
        choice = keras.random.uniform(
            (steps, count, self.tokens), minval=1e-9, maxval=1.0, seed=seed + 1
        )
        anneal = choice_temperature * (1.0 - (np.arange(steps) + 1.0) / steps)
        noise = {
            "tokens": -ops.log(-ops.log(uniform)),
            "choice": ops.convert_to_tensor(anneal[:, None, None], "float32")
            * -ops.log(-ops.log(choice)),
            "temperature": ops.convert_to_tensor(temperature, "float32"),
        }
        if self._sampler is None:
            self._sampler = _compile(self._decode_loop)
        return self._sampler(noise, schedule, steps)

    # === Config ===

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "num_embeddings": self.num_embeddings,
            "grid_size": self.grid_size,
            "dim": self.dim,
            "layers": self.num_layers,
            "heads": self.heads,
            "mlp_dim": self.mlp_dim,
            "dropout": self.dropout,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MaskGIT:
        return cls(**config)
