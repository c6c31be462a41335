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

Sampling (:meth:`PixelCNN.sample`) is one compiled loop (``keras.ops.fori_loop`` inside a
``tf.function`` with XLA, or ``jax.jit``) that computes each activation once. Every layer keeps
its outputs so far: per new row, each vertical layer computes that row alone from the
``kernel_size // 2`` rows above it in the layer below; per new position, each horizontal layer
computes that column alone from the columns left of it, and the logits are those of that one
position. That is ``h`` one-row passes of the vertical stack and ``h * w`` one-column passes of
the horizontal one, instead of ``h * w`` whole-grid forwards (:meth:`PixelCNN.sample_full`, kept
as the reference: the same draws for the same seed, tested). The Gumbel noise is drawn once up
front, so the loop is pure and compiles on every backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from mlops_trainers.distribute import mean_count, scale_loss
from mlops_trainers.precision import as_float32
from mlops_trainers.trainers.pixelcnn.gated_pixelcnn_block import GatedPixelCNNBlock, gate


def _compile(fn: Callable[..., Any], xla: bool = False) -> Callable[..., Any]:
    """``fn`` compiled by the backend: a tf.function on TensorFlow (with XLA when ``xla``),
    jitted on JAX."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, reduce_retracing=True, jit_compile=xla)  # type: ignore[no-any-return]
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
        self._full_sampler: Callable[..., Any] | None = None
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
        # In float32 under any policy (mlops_trainers.precision).
        y_pred = as_float32(y_pred)
        nats = keras.losses.sparse_categorical_crossentropy(codes, y_pred, from_logits=True)
        loss = ops.mean(nats)
        valid = (
            ops.cast(x["valid"], nats.dtype)
            if isinstance(x, dict) and "valid" in x
            else ops.ones_like(nats)
        )
        valid_nats = ops.sum(nats * valid) / ops.maximum(mean_count(ops.sum(valid)), 1.0)
        self.bits_tracker.update_state(loss / math.log(2.0))
        self.valid_bits_tracker.update_state(valid_nats / math.log(2.0))
        return scale_loss(loss)

    def bits_per_code(self, codes: Any) -> float:
        """Mean negative log2-likelihood per code of ``codes`` (B, h, w) under the model."""
        logits = as_float32(self(ops.convert_to_tensor(codes), training=False))
        nats = keras.losses.sparse_categorical_crossentropy(
            ops.cast(codes, "int32"), logits, from_logits=True
        )
        return float(ops.convert_to_numpy(ops.mean(nats))) / math.log(2.0)

    # === Sampling ===

    def _row_sample_loop(self, gumbel: Any, temperature: Any) -> Any:
        """Codes (B, h, w) drawn position by position, ``gumbel`` (h*w, B, K) Gumbel noise, with
        every layer's activations cached: each new row costs one row per vertical layer, each
        new position one column per horizontal layer and one of the logits.

        Layer l's vertical output at row i reads layer l-1's at the ``p = kernel_size // 2``
        rows above i only (never row i itself), so it is computed from a window of ``p + 1``
        cached rows and only its last row kept; likewise the horizontal stack at column j reads
        columns j-p..j of the layer below on the same row. The caches carry ``p`` zero rows
        (columns) in front: what the "same" padding of the whole-grid forward puts there."""
        size, p, f = self.grid_size, self.kernel_size // 2, self.filters
        batch = ops.shape(gumbel)[1]
        dtype = self.compute_dtype

        def row_body(i: Any, state: tuple[Any, ...]) -> tuple[Any, ...]:
            codes, *columns = state  # columns: each vertical layer's gated output, cached
            # Rows < i are all drawn; row i's vertical values do not read row i itself.
            below = ops.pad(self.embedding(codes), [[0, 0], [p, 0], [0, 0], [0, 0]])
            from_vertical, cached = [], []
            for block, cache in zip(self.blocks, columns, strict=True):
                window = ops.slice(below, (0, i, 0, 0), (batch, p + 1, size, f))  # rows i-p..i
                v_row = block.vertical(window)[:, p:]  # (B, 1, w, 2F): row i
                # What this block's horizontal stack adds at row i.
                from_vertical.append(block.vertical_to_horizontal(v_row))
                below = ops.slice_update(cache, (0, i + p, 0, 0), gate(v_row))
                cached.append(below)

            def col_body(j: Any, state: tuple[Any, ...]) -> tuple[Any, ...]:
                row, *layers = state  # layers: each horizontal layer's output on row i
                embedded = ops.pad(self.embedding(row), [[0, 0], [p, 0], [0, 0]])
                left = ops.expand_dims(embedded, 1)  # (B, 1, p + w, F)
                done = []
                for block, vh, cache in zip(self.blocks, from_vertical, layers, strict=True):
                    window = ops.slice(left, (0, 0, j, 0), (batch, 1, p + 1, f))  # cols j-p..j
                    here = ops.slice(vh, (0, 0, j, 0), (batch, 1, 1, 2 * f))
                    h_j = block.horizontal_step(window, here)[:, :, p:]  # (B, 1, 1, F)
                    left = ops.slice_update(cache, (0, 0, j + p, 0), h_j)
                    done.append(left)
                # (B, K), float32 as the noise under any policy
                logits = as_float32(self.logits(self.hidden(ops.relu(h_j))))[:, 0, 0]
                noise = ops.take(gumbel, i * size + j, axis=0)
                draw = ops.argmax(logits / temperature + noise, axis=-1)
                at_j = ops.expand_dims(ops.arange(size) == j, 0)
                row = ops.where(at_j, ops.expand_dims(ops.cast(draw, "int32"), 1), row)
                return (row, *done)

            empty = ops.zeros((batch, 1, p + size, f), dtype=dtype)
            row, *_ = ops.fori_loop(
                0,
                size,
                col_body,
                (ops.take(codes, i, axis=1), *(empty for _ in self.blocks)),
            )
            at_i = ops.reshape(ops.arange(size) == i, (1, size, 1))
            return (ops.where(at_i, ops.expand_dims(row, 1), codes), *cached)

        codes = ops.zeros((batch, size, size), dtype="int32")
        empty = ops.zeros((batch, p + size, size, f), dtype=dtype)
        codes, *_ = ops.fori_loop(0, size, row_body, (codes, *(empty for _ in self.blocks)))
        return codes

    def _sample_loop(self, gumbel: Any, temperature: Any) -> Any:
        """Codes (B, h, w) drawn position by position, ``gumbel`` (h*w, B, K) Gumbel noise; a
        whole-grid forward per position (the reference of :meth:`sample_full`)."""
        positions = self.grid_size * self.grid_size
        batch = ops.shape(gumbel)[1]
        codes = ops.zeros((batch, positions), dtype="int32")

        def body(t: Any, codes: Any) -> Any:
            grid = ops.reshape(codes, (batch, self.grid_size, self.grid_size))
            logits = as_float32(self(grid, training=False))  # as the noise, under any policy
            logits = ops.reshape(logits, (batch, positions, -1))
            logits_t = ops.take(logits, t, axis=1)
            # Gumbel-max: argmax(logits / T + G) is a draw from softmax(logits / T).
            draw = ops.argmax(logits_t / temperature + ops.take(gumbel, t, axis=0), axis=-1)
            here = ops.expand_dims(ops.arange(positions) == t, 0)
            return ops.where(here, ops.expand_dims(ops.cast(draw, "int32"), 1), codes)

        codes = ops.fori_loop(0, positions, body, codes)
        return ops.reshape(codes, (batch, self.grid_size, self.grid_size))

    def _gumbel(self, count: int, seed: int) -> Any:
        positions = self.grid_size * self.grid_size
        uniform = keras.random.uniform(
            (positions, count, self.num_embeddings), minval=1e-9, maxval=1.0, seed=seed
        )
        return -ops.log(-ops.log(uniform))

    def sample(self, count: int, temperature: float = 1.0, seed: int = 0) -> Any:
        """``count`` code grids (count, h, w) int32, drawn by one compiled loop."""
        if self._sampler is None:
            # XLA on any device: the loops run thousands of tiny steps, whose op-by-op dispatch
            # by TensorFlow's graph executor outweighs their arithmetic; XLA fuses them (the
            # same draws; bench/bench_pixelcnn.py times it).
            self._sampler = _compile(self._row_sample_loop, xla=True)
        t = ops.convert_to_tensor(temperature, "float32")
        return self._sampler(self._gumbel(count, seed), t)

    def sample_full(self, count: int, temperature: float = 1.0, seed: int = 0) -> Any:
        """What :meth:`sample` draws, by a whole-grid forward per position (slow: the reference
        the tests and ``bench/`` compare it with)."""
        if self._full_sampler is None:
            self._full_sampler = _compile(self._sample_loop)
        t = ops.convert_to_tensor(temperature, "float32")
        return self._full_sampler(self._gumbel(count, seed), t)

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
