"""PixelCNN: compiled sampling against a forward per position; cropped masked kernels against whole.

(a) Seconds per sampled image on a 40x40 code grid at the ``pixelcnn`` trainer's default sizes
(K = 128, the VQ-VAE's default codebook; 64 filters, 6 gated layers, 5x5 kernels): ours is
:meth:`mlops_trainers.trainers.pixelcnn.pixelcnn.PixelCNN.sample` (one compiled loop: the
vertical stack once per row, the horizontal stack on that row per position); the reference is a
Python loop calling a compiled (``tf.function``) whole-grid forward of the same model once per
position, with the *same* Gumbel noise, so both must draw the same codes (checked: the bench
stops otherwise). The reference's cost per position does not depend on the position, so it is
timed over the first ``--ref-positions`` positions and extrapolated to the grid; its codes there
must equal ours. Rounds alternate in random order; the ratio is the median of the per-round
ratios, each round's in the notes.

(b) Training steps/s of our PixelCNN with its masked convolutions on their nonzero taps (the
kernel cropped, the input padded to match) against the same model computing the whole masked
kernels, as before that change; paired rounds in random order, a 95% interval. (Training against
keras.io's PixelCNN at the same multiply-adds is ``bench/bench_train.py``'s ``train_pixelcnn``.)

    python bench/bench_pixelcnn.py [--grid 40] [--batch 2] [--ref-positions 200]
                                   [--train-grid 16] [--train-batch 16] [--filters 32]
                                   [--steps 50] [--rounds 5]
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

from common import Paired, Row, train_step_work, write_rows


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


def forward_per_position(model: Any, gumbel: np.ndarray, temperature: float, positions: int) -> Any:
    """The reference: a compiled (XLA) whole-grid forward per position, a Gumbel-max draw from the
    same noise as :meth:`PixelCNN.sample` (``gumbel`` (h*w, B, K)); the first ``positions``."""
    import tensorflow as tf

    forward = getattr(model, "_bench_forward", None)
    if forward is None:
        # With XLA, as our sampler: the same compiler on both sides.
        forward = model._bench_forward = tf.function(
            lambda x: model(x, training=False), jit_compile=True
        )
    grid = model.grid_size
    codes = np.zeros((gumbel.shape[1], grid, grid), dtype="int32")
    for t in range(positions):
        row, col = divmod(t, grid)
        logits = forward(tf.constant(codes)).numpy()[:, row, col]
        codes[:, row, col] = np.argmax(logits / temperature + gumbel[t], axis=-1)
    return codes


def bench_sampling(args: argparse.Namespace) -> list[Row]:
    import keras
    from keras import ops

    keras.utils.set_random_seed(0)
    k, grid = args.num_embeddings, args.grid
    model = _ours(k, grid, args.sample_filters, args.sample_layers, args.kernel)
    positions = grid * grid
    subset = min(args.ref_positions, positions)
    gumbel = np.asarray(ops.convert_to_numpy(model._gumbel(args.batch, 1)))
    model.sample(args.batch, seed=1)  # warm-up: tracing
    forward_per_position(model, gumbel, 1.0, 2)  # warm-up: the reference's function
    rng = np.random.default_rng(0)
    ours_times, ref_times = [], []
    for r in range(args.rounds):
        order = ["ours", "ref"] if rng.random() < 0.5 else ["ref", "ours"]
        for side in order:
            start = time.perf_counter()
            if side == "ours":
                drawn = np.asarray(ops.convert_to_numpy(model.sample(args.batch, seed=1)))
                ours_times.append((time.perf_counter() - start) / args.batch)
            else:
                ref = forward_per_position(model, gumbel, 1.0, subset)
                elapsed = time.perf_counter() - start
                ref_times.append(elapsed * positions / subset / args.batch)
        first = [divmod(t, grid) for t in range(subset)]
        same = all((drawn[:, i, j] == ref[:, i, j]).all() for i, j in first)
        if not same:
            raise SystemExit("the sampler and the forward-per-position loop drew different codes")
        print(
            f"round {r + 1}: ours {ours_times[-1]:.3f} s/image, reference "
            f"{ref_times[-1]:.3f} s/image (extrapolated), same codes on {subset} positions",
            flush=True,
        )
    ratios = [o / f for o, f in zip(ours_times, ref_times, strict=True)]
    ratio = statistics.median(ratios)
    sizes = (
        f"{grid}x{grid} codes, K={k}, filters {args.sample_filters}, "
        f"{args.sample_layers} layers, kernel {args.kernel}, batch {args.batch}"
    )
    return [
        Row(
            f"PixelCNN sampling, {sizes}",
            statistics.median(ours_times),
            statistics.median(ours_times) / ratio,
            "s/image",
            "a compiled (XLA) whole-grid forward per position (Python loop), the same noise",
            f"median of {args.rounds} rounds in random order; per-round ours/ref "
            f"{', '.join(f'{x:.4f}' for x in ratios)} ({1 / ratio:.0f}x faster); the same codes "
            f"on the {subset} reference positions, timed and extrapolated x"
            f"{positions / subset:.0f} (its cost per position is constant)",
        )
    ]


# === (b) training ===


def _steps_per_second(step: Any, batches: Sequence[Any]) -> float:
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    return len(batches) / (time.perf_counter() - start)


def _full_kernel_convs(model: Any) -> Any:
    """``model`` with every masked convolution computed the way it was before the zero taps
    were cropped: the whole masked kernel, "same" padding (the "today" of issue 13's target)."""
    import types

    from keras import ops
    from mlops_trainers.trainers.pixelcnn.masked_conv2d import MaskedConv2D

    def full(self: Any, inputs: Any, kernel: Any) -> Any:
        mask = ops.cast(self._mask, kernel.dtype)
        return ops.conv(inputs, kernel * mask, strides=1, padding="same")

    for layer in model._flatten_layers():
        if isinstance(layer, MaskedConv2D):
            object.__setattr__(layer, "convolution_op", types.MethodType(full, layer))
    return model


def bench_cropped_taps(args: argparse.Namespace) -> Row:
    """Our PixelCNN's training step, its masked convolutions on their nonzero taps against the
    same model computing the whole masked kernels; paired rounds in random order."""
    import keras

    k, grid, f, n = args.train_num_embeddings, args.train_grid, args.filters, args.layers
    keras.utils.set_random_seed(0)
    cropped = _ours(k, grid, f, n, args.kernel)
    keras.utils.set_random_seed(0)
    full = _full_kernel_convs(_ours(k, grid, f, n, args.kernel))
    rng = np.random.default_rng(1)
    batches = [
        rng.integers(0, k, (args.train_batch, grid, grid)).astype("int32")
        for _ in range(args.steps)
    ]
    valid = np.ones((args.train_batch, grid, grid), "float32")
    probe = {"codes": batches[0], "valid": valid}
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(cropped(probe)),
        keras.ops.convert_to_numpy(full(probe)),
        rtol=1e-4,
        atol=1e-4,
    )  # the same function, computed two ways
    steps = {
        "cropped": lambda c: cropped.train_on_batch({"codes": c, "valid": valid}),
        "full": lambda c: full.train_on_batch({"codes": c, "valid": valid}),
    }
    for step in steps.values():
        _steps_per_second(step, batches[:2])  # warm-up: tracing
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        order = list(steps) if rng.random() < 0.5 else list(reversed(steps))
        for name in order:
            rates[name].append(_steps_per_second(steps[name], batches))
    paired = Paired.of([a / b for a, b in zip(rates["cropped"], rates["full"], strict=True)])
    # What bounds the speed-up: the multiply-adds cropping removes from the whole training step
    # (the 1x1 convolutions, the gates, the head, the loss and the optimizer are unchanged).
    work = {name: train_step_work(m, probe) for name, m in (("cropped", cropped), ("full", full))}
    bound = work["full"].macs / work["cropped"].macs
    cropped_rate = statistics.median(rates["cropped"])
    return Row(
        f"PixelCNN training, masked kernels on their nonzero taps, {grid}x{grid} codes, K={k}, "
        f"filters {f}, {n} layers, kernel {args.kernel}, batch {args.train_batch}",
        cropped_rate,
        cropped_rate / paired.mean,  # so that the row's ratio is the paired one
        "steps/s",
        "the same model computing the whole masked kernels (before this change)",
        f"{paired.text()}; {args.steps} timed steps per round after 2 of warm-up; the step's "
        f"multiply-adds full/cropped {bound:.3g} (TF's profiler): the most cropping alone can "
        f"give, reached at {paired.mean / bound:.0%}",
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--grid", type=int, default=40, help="sampled code grid side")
    parser.add_argument("--batch", type=int, default=2, help="images sampled together")
    # The pixelcnn trainer's defaults (trainers/pixelcnn/config.py) over a default VQ-VAE's K.
    parser.add_argument("--sample-filters", type=int, default=64)
    parser.add_argument("--sample-layers", type=int, default=6)
    parser.add_argument("--ref-positions", type=int, default=200, help="timed, extrapolated")
    parser.add_argument("--num-embeddings", type=int, default=128, help="codebook size K")
    parser.add_argument("--kernel", type=int, default=5, help="our masked kernel size")
    parser.add_argument("--train-num-embeddings", type=int, default=64, help="K in (b)")
    parser.add_argument("--train-grid", type=int, default=16)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--filters", type=int, default=32)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per round and model")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds, random order")
    args = parser.parse_args(None if argv is None else list(argv))

    import keras

    rows = bench_sampling(args)
    rows.append(bench_cropped_taps(args))
    result: dict[str, Any] = {"args": vars(args), "backend": keras.backend.backend()}
    write_rows("pixelcnn", rows, extra={"detail": result})
    return result


if __name__ == "__main__":
    main()
