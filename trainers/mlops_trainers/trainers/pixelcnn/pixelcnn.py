"""Gated PixelCNN prior over a VQ-VAE's code grid (van den Oord et al. 2016, arXiv:1606.05328).

The codes of a VQ-VAE (``(B, h, w)`` integers in ``[0, K)``) are embedded, go through one type-A
gated block (it never sees the current position) and ``layers - 1`` type-B blocks (vertical and
horizontal stacks, so there is no blind spot), then two 1x1 convolutions give ``K`` logits per
position. The model is autoregressive in raster order: the logits at ``(i, j)`` depend only on
codes before ``(i, j)`` (tested).

Loss: cross-entropy over every position of the grid, padding included. The sampler generates
whole grids, padding too, and each position is conditioned on the ones before it; a prior that
never learnt the padding codes would feed itself codes it never saw as context. The metrics
report bits per code over all positions and over the valid (unpadded) ones, to compare with
``log2(K)`` (a uniform prior).

Sampling (:meth:`PixelCNN.sample`) is one compiled loop over the ``h * w`` positions
(``keras.ops.fori_loop`` inside a ``tf.function`` or ``jax.jit``), not a ``predict`` call per
position: the noise for the Gumbel-max draws is drawn once up front, so the loop is pure and
compiles on every backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from mlops_trainers.trainers.pixelcnn.gated_pixelcnn_block import GatedPixelCNNBlock


def _compile(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` compiled by the backend: a tf.function on TensorFlow, jitted on JAX."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, reduce_retracing=True)  # type: ignore[no-any-return]
    if backend == "jax":
        import jax

        return jax.jit(fn)  # type: ignore[no-any-return]
    return fn


@keras.saving.register_keras_serializable(package="mlops_trainers")
class PixelCNN(keras.Model):  # type: ignore[misc,unused-ignore]
    """Autoregressive prior over ``(B, h, w)`` code grids; ``call`` returns ``(B, h, w, K)`` logits.

    Inputs: a code grid, or ``{"codes": (B, h, w), "valid": (B, h, w)}`` where ``valid`` marks the
    latents that cover real (unpadded) pixels (only the metrics use it).

    Args:
        num_embeddings: the VQ-VAE's codebook size K.
        grid_size: side h (= w) of the code grid.
        filters: channels of both stacks.
        layers: gated blocks (the first is type A).
        kernel_size: odd kernel size of the masked convolutions.
        **kwargs: forwarded to ``keras.Model``.
    """

    def __init__(
        self,
        num_embeddings: int,
        grid_size: int,
        filters: int = 64,
        layers: int = 6,
        kernel_size: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.num_embeddings = num_embeddings
        self.grid_size = grid_size
        self.filters = filters
        self.num_layers = layers
        self.kernel_size = kernel_size

        # === Layers ===
        self.embedding = keras.layers.Embedding(num_embeddings, filters, name="embedding")
        self.blocks = [
            GatedPixelCNNBlock(filters, kernel_size, "A" if i == 0 else "B", name=f"gated_{i}")
            for i in range(layers)
        ]
        self.hidden = keras.layers.Conv2D(filters, 1, activation="relu", name="hidden")
        self.logits = keras.layers.Conv2D(num_embeddings, 1, name="logits")

        # === Metrics ===
        self.bits_tracker = keras.metrics.Mean(name="bits_per_code")
        self.valid_bits_tracker = keras.metrics.Mean(name="bits_per_valid_code")
        self._sampler: Callable[..., Any] | None = None
        self.build((None, grid_size, grid_size))

    def build(self, input_shape: Any) -> None:
        if isinstance(input_shape, dict):
            input_shape = input_shape["codes"]
        batch, h, w = tuple(input_shape)[:3]
        self.embedding.build((batch, h, w))
        shape = (batch, h, w, self.filters)
        for block in self.blocks:
            block.build((shape, shape))
        self.hidden.build(shape)
        self.logits.build(shape)
        self.built = True

    @staticmethod
    def _codes(inputs: Any) -> Any:
        return inputs["codes"] if isinstance(inputs, dict) else inputs

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        del training
        x = self.embedding(ops.cast(self._codes(inputs), "int32"))
        vertical, horizontal = x, x
        for block in self.blocks:
            vertical, horizontal = block((vertical, horizontal))
        return self.logits(self.hidden(ops.relu(horizontal)))

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        del y, sample_weight, training
        codes = ops.cast(self._codes(x), "int32")
        nats = keras.losses.sparse_categorical_crossentropy(codes, y_pred, from_logits=True)
        loss = ops.mean(nats)
        valid = (
            ops.cast(x["valid"], nats.dtype)
            if isinstance(x, dict) and "valid" in x
            else ops.ones_like(nats)
        )
        valid_nats = ops.sum(nats * valid) / ops.maximum(ops.sum(valid), 1.0)
        self.bits_tracker.update_state(loss / math.log(2.0))
        self.valid_bits_tracker.update_state(valid_nats / math.log(2.0))
        return loss

    def bits_per_code(self, codes: Any) -> float:
        """Mean negative log2-likelihood per code of ``codes`` (B, h, w) under the model."""
        logits = self(ops.convert_to_tensor(codes), training=False)
        nats = keras.losses.sparse_categorical_crossentropy(
            ops.cast(codes, "int32"), logits, from_logits=True
        )
        return float(ops.convert_to_numpy(ops.mean(nats))) / math.log(2.0)

    # === Sampling ===

    def _sample_loop(self, gumbel: Any, temperature: Any) -> Any:
        """Codes (B, h, w) drawn position by position, ``gumbel`` (h*w, B, K) Gumbel noise."""
        positions = self.grid_size * self.grid_size
        batch = ops.shape(gumbel)[1]
        codes = ops.zeros((batch, positions), dtype="int32")

        def body(t: Any, codes: Any) -> Any:
            grid = ops.reshape(codes, (batch, self.grid_size, self.grid_size))
            logits = ops.reshape(self(grid, training=False), (batch, positions, -1))
            logits_t = ops.take(logits, t, axis=1)
            # Gumbel-max: argmax(logits / T + G) is a draw from softmax(logits / T).
            draw = ops.argmax(logits_t / temperature + ops.take(gumbel, t, axis=0), axis=-1)
            here = ops.expand_dims(ops.arange(positions) == t, 0)
            return ops.where(here, ops.expand_dims(ops.cast(draw, "int32"), 1), codes)

        codes = ops.fori_loop(0, positions, body, codes)
        return ops.reshape(codes, (batch, self.grid_size, self.grid_size))

    def sample(self, count: int, temperature: float = 1.0, seed: int = 0) -> Any:
        """``count`` code grids (count, h, w) int32, drawn by one compiled loop."""
        positions = self.grid_size * self.grid_size
        uniform = keras.random.uniform(
            (positions, count, self.num_embeddings), minval=1e-9, maxval=1.0, seed=seed
        )
        gumbel = -ops.log(-ops.log(uniform))
        if self._sampler is None:
            self._sampler = _compile(self._sample_loop)
        return self._sampler(gumbel, ops.convert_to_tensor(temperature, "float32"))

    # === Config ===

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(
            {
                "num_embeddings": self.num_embeddings,
                "grid_size": self.grid_size,
                "filters": self.filters,
                "layers": self.num_layers,
                "kernel_size": self.kernel_size,
            }
        )
        return config
