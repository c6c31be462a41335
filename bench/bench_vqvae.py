"""VQ-VAE training steps/s: ours vs a Keras 3 port of keras.io's ``vq_vae.py``, same sizes.

The reference is keras.io's "Vector-Quantized Variational Autoencoders" example (Sayak Paul):
two stride-2 3x3 convs (32, 64), a 1x1 conv to ``latent_dim``, a quantizer with codebook and
commitment losses, the mirrored transposed-conv decoder, and a ``train_step`` with
``tf.GradientTape`` (it is TensorFlow-only, as the original). Ours
(:class:`mlops_trainers.trainers.vqvae.vqvae.VQVAE`) at the same base width, down-sampling and codebook
adds a stem conv, 4x4 stride-2 kernels, the masked losses, EMA codebook updates, dead-code restarts
and the metrics. Both train on the same real Fashion-MNIST batches (28x28 padded to 32, as the
trainer does), timed in alternating rounds in one process; only the ratio is meaningful.

    python bench/bench_vqvae.py [--batch 64] [--steps 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common`, also when imported

from common import Row, write_rows


def keras_io_vqvae(image_size: int, latent_dim: int, num_embeddings: int) -> Any:
    """keras.io's ``vq_vae.py`` in Keras 3: same layers, losses and GradientTape train step."""
    import keras
    import tensorflow as tf
    from keras import layers

    class VectorQuantizer(layers.Layer):
        def __init__(self, num_embeddings: int, embedding_dim: int, beta: float = 0.25) -> None:
            super().__init__(name="vector_quantizer")
            self.embedding_dim = embedding_dim
            self.num_embeddings = num_embeddings
            self.beta = beta
            self.embeddings = self.add_weight(
                shape=(embedding_dim, num_embeddings),
                initializer=keras.initializers.RandomUniform(),
                name="embeddings_vqvae",
            )

        def call(self, x: Any) -> Any:
            input_shape = tf.shape(x)
            flattened = tf.reshape(x, [-1, self.embedding_dim])
            encoding_indices = self.get_code_indices(flattened)
            encodings = tf.one_hot(encoding_indices, self.num_embeddings)
            quantized = tf.matmul(encodings, self.embeddings, transpose_b=True)
            quantized = tf.reshape(quantized, input_shape)
            commitment_loss = tf.reduce_mean((tf.stop_gradient(quantized) - x) ** 2)
            codebook_loss = tf.reduce_mean((quantized - tf.stop_gradient(x)) ** 2)
            self.add_loss(self.beta * commitment_loss + codebook_loss)
            return x + tf.stop_gradient(quantized - x)

        def get_code_indices(self, flattened_inputs: Any) -> Any:
            similarity = tf.matmul(flattened_inputs, self.embeddings)
            distances = (
                tf.reduce_sum(flattened_inputs**2, axis=1, keepdims=True)
                + tf.reduce_sum(self.embeddings**2, axis=0)
                - 2 * similarity
            )
            return tf.argmin(distances, axis=1)

    inputs = keras.Input((image_size, image_size, 1))
    x = layers.Conv2D(32, 3, activation="relu", strides=2, padding="same")(inputs)
    x = layers.Conv2D(64, 3, activation="relu", strides=2, padding="same")(x)
    x = layers.Conv2D(latent_dim, 1, padding="same")(x)
    x = VectorQuantizer(num_embeddings, latent_dim)(x)
    x = layers.Conv2DTranspose(64, 3, activation="relu", strides=2, padding="same")(x)
    x = layers.Conv2DTranspose(32, 3, activation="relu", strides=2, padding="same")(x)
    outputs = layers.Conv2DTranspose(1, 3, padding="same")(x)
    vqvae = keras.Model(inputs, outputs, name="vq_vae")

    class VQVAETrainer(keras.Model):
        def __init__(self, train_variance: float) -> None:
            super().__init__()
            self.train_variance = train_variance
            self.vqvae = vqvae
            self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
            self.reconstruction_loss_tracker = keras.metrics.Mean(name="reconstruction_loss")
            self.vq_loss_tracker = keras.metrics.Mean(name="vq_loss")

        @property
        def metrics(self) -> list[Any]:
            return [
                self.total_loss_tracker,
                self.reconstruction_loss_tracker,
                self.vq_loss_tracker,
            ]

        def train_step(self, data: Any) -> dict[str, Any]:
            # Keras 3 hands train_step (x, y, sample_weight); keras.io's tf.keras gave x.
            x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
            with tf.GradientTape() as tape:
                reconstructions = self.vqvae(x)
                reconstruction_loss = (
                    tf.reduce_mean((x - reconstructions) ** 2) / self.train_variance
                )
                total_loss = reconstruction_loss + sum(self.vqvae.losses)
            grads = tape.gradient(total_loss, self.vqvae.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.vqvae.trainable_variables, strict=True))
            self.total_loss_tracker.update_state(total_loss)
            self.reconstruction_loss_tracker.update_state(reconstruction_loss)
            self.vq_loss_tracker.update_state(sum(self.vqvae.losses))
            return {m.name: m.result() for m in self.metrics}

    return VQVAETrainer(train_variance=0.1)


def _steps_per_second(step: Any, batches: Sequence[Any]) -> float:
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    return len(batches) / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round and model")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--num-embeddings", type=int, default=64)
    args = parser.parse_args(None if argv is None else list(argv))

    import keras
    from mlops_trainers.data import list_images, load_images
    from mlops_trainers.trainers.vqvae.vqvae import VQVAE

    size = 32  # 28x28 padded, as the trainer feeds it (a multiple of 2**downsample)
    files = list_images("sample://fashion-mnist")[: args.batch * args.steps]
    images, masks = load_images(files, size, 1)
    batches = [
        (
            images[i * args.batch : (i + 1) * args.batch],
            masks[i * args.batch : (i + 1) * args.batch],
        )
        for i in range(args.steps)
    ]

    keras.utils.set_random_seed(0)
    ours = VQVAE(
        image_size=size,
        channels=1,
        base_filters=32,
        downsample=2,
        residual_blocks=0,  # the reference has none
        latent_dim=args.latent_dim,
        num_embeddings=args.num_embeddings,
        seed=0,
    )
    ours.compile(optimizer=keras.optimizers.Adam(3e-4))
    reference = keras_io_vqvae(size, args.latent_dim, args.num_embeddings)
    reference.compile(optimizer=keras.optimizers.Adam(3e-4))
    steps = {
        "ours": lambda b: ours.train_on_batch({"image": b[0], "mask": b[1]}),
        "keras_io": lambda b: reference.train_on_batch(b[0]),
    }
    for step in steps.values():
        _steps_per_second(step, batches[:2])  # warm-up: tracing
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            rates[name].append(_steps_per_second(step, batches))
    ours_rate = statistics.median(rates["ours"])
    reference_rate = statistics.median(rates["keras_io"])
    params = {"ours": int(ours.count_params()), "keras_io": int(reference.vqvae.count_params())}
    row = Row(
        f"VQ-VAE training, {size}px x1, batch {args.batch}, K={args.num_embeddings}",
        ours_rate,
        reference_rate,
        "steps/s",
        "keras.io vq_vae.py (Keras 3 port)",
        f"params {params['ours']:,} vs {params['keras_io']:,}; ours adds masks, EMA, "
        f"restarts, metrics; median of {args.rounds} rounds",
    )
    result: dict[str, Any] = {
        "batch": args.batch,
        "steps": args.steps,
        "rounds": args.rounds,
        "ours_steps_per_s": ours_rate,
        "reference_steps_per_s": reference_rate,
        "ratio": row.ratio,
        "rates": rates,
        "params": params,
        "backend": keras.backend.backend(),
    }
    write_rows("vqvae", [row], extra={"detail": result})
    return result


if __name__ == "__main__":
    main()
