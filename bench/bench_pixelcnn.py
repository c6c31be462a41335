"""PixelCNN: compiled sampling against a predict-per-position loop; training against keras.io's.

(a) Seconds per sampled image on a 40x40 code grid: ours is
:meth:`mlops_trainers.trainers.pixelcnn.pixelcnn.PixelCNN.sample` (one compiled ``fori_loop`` over the 1600
positions); the reference is the loop of keras.io's ``pixelcnn.py`` demonstration, one
``model.predict`` of the whole grid per position on the *same* model and batch (a second row uses
a direct eager ``model(x)`` call per position instead of ``predict``). The loop's cost per
position does not depend on the position (every call computes the whole grid), so it is timed
over the first ``--naive-positions`` positions and extrapolated linearly to all of them; the
notes say so. The model is small (sampling costs ``positions`` full forward passes either way).

(b) Training steps/s: ours (:class:`PixelCNN` as the ``pixelcnn`` trainer builds it: embedding,
gated type-A block + type-B blocks, 1x1 head, ``train_on_batch`` on ``{"codes", "valid"}``)
against a Keras 3 port of keras.io's ``examples/generative/pixelcnn.py`` (ADMoreau):
``PixelConvLayer`` (a Conv2D whose kernel is multiplied by a type-A/B mask, re-assigned at every
call, as in the original), ``ResidualBlock`` (1x1 conv, masked 3x3 conv at half width, 1x1 conv,
add), one 7x7 type-A layer, ``layers - 1`` residual blocks, two masked 1x1 layers. Same grid,
filters, depth (masked layers), batch and optimizer; the original's one-sigmoid-channel head for
binary pixels becomes a ``K``-logit head with sparse cross-entropy so that both model the same
codes, and its input is the code grid as one float channel (``code / K``), as the original feeds
pixel values. Timed in alternating rounds in one process; the ratio is ours / reference.

    python bench/bench_pixelcnn.py [--grid 40] [--batch 2] [--naive-positions 160]
                                   [--train-grid 16] [--train-batch 16] [--filters 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common`, also when imported

from common import Row, best_of, write_rows


def keras_io_pixelcnn(grid: int, filters: int, layers_: int, num_embeddings: int) -> Any:
    """keras.io's PixelCNN in Keras 3 (``PixelConvLayer``, ``ResidualBlock``), K logits out."""
    import keras
    from keras import layers

    class PixelConvLayer(layers.Layer):  # type: ignore[misc,unused-ignore]
        def __init__(self, mask_type: str, **kwargs: Any) -> None:
            super().__init__()
            self.mask_type = mask_type
            self.conv = layers.Conv2D(**kwargs)

        def build(self, input_shape: Any) -> None:
            # Build the conv2d layer to initialize kernel variables
            self.conv.build(input_shape)
            # Use the initialized kernel to create the mask
            kernel_shape = tuple(self.conv.kernel.shape)  # tf.keras had .get_shape()
            self.mask = np.zeros(shape=kernel_shape, dtype="float32")
            self.mask[: kernel_shape[0] // 2, ...] = 1.0
            self.mask[kernel_shape[0] // 2, : kernel_shape[1] // 2, ...] = 1.0
            if self.mask_type == "B":
                self.mask[kernel_shape[0] // 2, kernel_shape[1] // 2, ...] = 1.0

        def call(self, inputs: Any) -> Any:
            self.conv.kernel.assign(self.conv.kernel * self.mask)
            return self.conv(inputs)

    class ResidualBlock(layers.Layer):  # type: ignore[misc,unused-ignore]
        def __init__(self, filters: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.conv1 = layers.Conv2D(filters=filters, kernel_size=1, activation="relu")
            self.pixel_conv = PixelConvLayer(
                mask_type="B",
                filters=filters // 2,
                kernel_size=3,
                activation="relu",
                padding="same",
            )
            self.conv2 = layers.Conv2D(filters=filters, kernel_size=1, activation="relu")

        def call(self, inputs: Any) -> Any:
            x = self.conv1(inputs)
            x = self.pixel_conv(x)
            x = self.conv2(x)
            return layers.add([inputs, x])

    inputs = keras.Input(shape=(grid, grid, 1))
    x = PixelConvLayer(
        mask_type="A", filters=filters, kernel_size=7, activation="relu", padding="same"
    )(inputs)
    for _ in range(layers_ - 1):  # the type-A layer + these = `layers_` masked layers, as ours
        x = ResidualBlock(filters=filters)(x)
    for _ in range(2):
        x = PixelConvLayer(
            mask_type="B",
            filters=filters,
            kernel_size=1,
            strides=1,
            activation="relu",
            padding="valid",
        )(x)
    # keras.io: Conv2D(1, 1, activation="sigmoid") for binary pixels; here K logits per code.
    out = layers.Conv2D(filters=num_embeddings, kernel_size=1, strides=1, padding="valid")(x)
    return keras.Model(inputs, out, name="keras_io_pixelcnn")


def _ours(num_embeddings: int, grid: int, filters: int, layers_: int, kernel: int) -> Any:
    import keras
    from mlops_trainers.trainers.pixelcnn.pixelcnn import PixelCNN

    model = PixelCNN(
        num_embeddings=num_embeddings,
        grid_size=grid,
        filters=filters,
        layers=layers_,
        kernel_size=kernel,
        name="pixelcnn",
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-4))  # as the pixelcnn trainer does
    model.optimizer.build(model.trainable_variables)
    return model


# === (a) sampling ===


def naive_sample(model: Any, count: int, positions: int, *, predict: bool, seed: int = 0) -> Any:
    """keras.io's demonstration loop on code grids: one whole-grid call per position, a
    categorical draw (Gumbel-max on the logits) for that position; ``positions`` first ones."""
    grid = model.grid_size
    rng = np.random.default_rng(seed)
    codes = np.zeros((count, grid, grid), dtype="int32")
    for t in range(positions):
        row, col = divmod(t, grid)
        if predict:
            logits = model.predict(codes, verbose=0)
        else:
            logits = np.asarray(model(codes, training=False))
        gumbel = -np.log(-np.log(rng.uniform(1e-9, 1.0, (count, logits.shape[-1]))))
        codes[:, row, col] = np.argmax(logits[:, row, col] + gumbel, axis=-1)
    return codes


def bench_sampling(args: argparse.Namespace) -> list[Row]:
    import keras

    keras.utils.set_random_seed(0)
    k, grid = args.num_embeddings, args.grid
    model = _ours(k, grid, args.sample_filters, args.sample_layers, args.kernel)
    positions = grid * grid
    subset = min(args.naive_positions, positions)
    model.sample(args.batch, seed=0)  # warm-up: tracing
    ours_s = best_of(lambda: model.sample(args.batch, seed=1), args.repeats) / args.batch
    print(f"compiled sampler: {ours_s:.3f} s per image", flush=True)
    naive_sample(model, args.batch, 2, predict=True)  # warm-up: predict's function
    naive_sample(model, args.batch, 2, predict=False)
    rows = []
    sizes = (
        f"{grid}x{grid} codes, K={k}, filters {args.sample_filters}, "
        f"{args.sample_layers} layers, kernel {args.kernel}, batch {args.batch}"
    )
    for predict, name in ((True, "model.predict"), (False, "eager model(x)")):
        part = best_of(
            lambda p=predict: naive_sample(model, args.batch, subset, predict=p),
            args.naive_repeats,
        )
        naive_s = part * positions / subset / args.batch
        print(f"naive loop ({name}): {naive_s:.3f} s per image (extrapolated)", flush=True)
        rows.append(
            Row(
                f"PixelCNN sampling, {sizes}",
                ours_s,
                naive_s,
                "s/image",
                f"one {name} per position (keras.io pixelcnn.py loop)",
                f"ours: compiled fori_loop, best of {args.repeats}; reference timed over the first "
                f"{subset} of {positions} positions (best of {args.naive_repeats}) and "
                f"extrapolated x{positions / subset:.0f} (its cost per position is constant)",
            )
        )
    return rows


# === (b) training ===


def _steps_per_second(step: Any, batches: Sequence[Any]) -> float:
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    return len(batches) / (time.perf_counter() - start)


def bench_training(args: argparse.Namespace) -> tuple[Row, dict[str, Any]]:
    import keras

    keras.utils.set_random_seed(0)
    k, grid, f, n = args.num_embeddings, args.train_grid, args.filters, args.layers
    ours = _ours(k, grid, f, n, args.kernel)
    reference = keras_io_pixelcnn(grid, f, n, k)
    reference.compile(
        optimizer=keras.optimizers.Adam(3e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    batches = [
        rng.integers(0, k, (args.train_batch, grid, grid)).astype("int32")
        for _ in range(args.steps)
    ]
    valid = np.ones((args.train_batch, grid, grid), "float32")
    steps = {
        "ours": lambda c: ours.train_on_batch({"codes": c, "valid": valid}),
        "keras_io": lambda c: reference.train_on_batch((c / k).astype("float32")[..., None], c),
    }
    for step in steps.values():
        _steps_per_second(step, batches[:2])  # warm-up: tracing
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            rates[name].append(_steps_per_second(step, batches))
    ours_rate = statistics.median(rates["ours"])
    reference_rate = statistics.median(rates["keras_io"])
    paired = statistics.median(a / b for a, b in zip(rates["ours"], rates["keras_io"], strict=True))
    params = {"ours": int(ours.count_params()), "keras_io": int(reference.count_params())}
    row = Row(
        f"PixelCNN training, {grid}x{grid} codes, K={k}, filters {f}, {n} layers, "
        f"batch {args.train_batch}",
        ours_rate,
        reference_rate,
        "steps/s",
        "keras.io pixelcnn.py (Keras 3 port, K-logit head)",
        f"params {params['ours']:,} vs {params['keras_io']:,}; ours: gated blocks, kernel "
        f"{args.kernel}, bits/code metrics; theirs: 7x7 A + residual 3x3 B; medians of "
        f"{args.rounds} alternating rounds; median per-round ratio {paired:.2f}",
    )
    detail = {"rates": rates, "params": params, "paired_ratio": paired}
    return row, detail


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--grid", type=int, default=40, help="sampled code grid side")
    parser.add_argument("--batch", type=int, default=2, help="images sampled together")
    parser.add_argument("--sample-filters", type=int, default=8)
    parser.add_argument("--sample-layers", type=int, default=2)
    parser.add_argument("--naive-positions", type=int, default=120, help="timed, extrapolated")
    parser.add_argument("--repeats", type=int, default=2, help="compiled sampler timings")
    parser.add_argument("--naive-repeats", type=int, default=2)
    parser.add_argument("--num-embeddings", type=int, default=64, help="codebook size K")
    parser.add_argument("--kernel", type=int, default=5, help="our masked kernel size")
    parser.add_argument("--train-grid", type=int, default=16)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--filters", type=int, default=32)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round and model")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
    args = parser.parse_args(None if argv is None else list(argv))

    import keras

    rows = bench_sampling(args)
    train_row, detail = bench_training(args)
    rows.append(train_row)
    result: dict[str, Any] = {
        "args": vars(args),
        "training": detail,
        "backend": keras.backend.backend(),
    }
    write_rows("pixelcnn", rows, extra={"detail": result})
    return result


if __name__ == "__main__":
    main()
