"""U-Net training speed: our segmenter's U-Net against the keras.io Oxford-Pets U-Net, steps/s.

The reference is a Keras 3 port of ``get_model`` in keras.io's
``examples/vision/oxford_pets_image_segmentation.py`` (fchollet, the Xception-style U-Net with
separable convs and residual projections), with its widths unchanged (32 entry, 64-128-256 down,
256-128-64-32 up) and a one-channel sigmoid head instead of the 3-class softmax, so that both
models solve the same task. Ours is :class:`mlops_trainers.trainers.segmenter.unet.UNet` at the segmenter's
default widths (``base_filters`` 16, ``depth`` 3). Same tiles (synthetic 4-band cloud scenes with
known masks), same batch, same loss (:class:`BCEDiceLoss`), same optimizer (Adam), same
``jit_compile`` setting. The two are timed in alternating rounds in one process, so the ratio
(ours / reference, > 1 = ours trains faster) survives a noisy shared machine.

    python bench/bench_unet.py [--tile 64] [--batch 8] [--steps 8] [--rounds 5]

``main(argv)`` returns the result as a dict (``bench/run_all.py`` runs the script) and prints a
Markdown row; the JSON goes to ``bench/results/unet.json``.
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

from common import Row, write_rows


def keras_io_unet(tile: int, bands: int) -> Any:
    """keras.io's Oxford-Pets U-Net (``get_model``), Keras 3, one sigmoid channel out."""
    import keras
    from keras import layers

    inputs = keras.Input((tile, tile, bands))
    # Entry block
    x = layers.Conv2D(32, 3, strides=2, padding="same")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    previous = x
    # Down: separable convs, max pooling, a strided 1x1 projection of the residual.
    for filters in (64, 128, 256):
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = layers.Conv2D(filters, 1, strides=2, padding="same")(previous)
        x = layers.add([x, residual])
        previous = x
    # Up: transposed convs, nearest up-sampling, an up-sampled 1x1 projection of the residual.
    for filters in (256, 128, 64, 32):
        x = layers.Activation("relu")(x)
        x = layers.Conv2DTranspose(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.Conv2DTranspose(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.UpSampling2D(2)(x)
        residual = layers.UpSampling2D(2)(previous)
        residual = layers.Conv2D(filters, 1, padding="same")(residual)
        x = layers.add([x, residual])
        previous = x
    outputs = layers.Conv2D(1, 3, activation="sigmoid", padding="same")(x)
    return keras.Model(inputs, outputs, name="keras_io_unet")


def _batches(tile: int, batch: int, count: int, seed: int = 0) -> list[tuple[Any, Any]]:
    from mlops_trainers.cloud38.synthetic import synthetic_cloud_scene
    from mlops_trainers.tiling import tile as cut

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    while sum(len(x) for x in xs) < batch * count:
        scene, mask = synthetic_cloud_scene(rng, tile * 2, tile * 2)
        x, valid, _ = cut(scene, tile)
        m, _, _ = cut(mask, tile)
        xs.append(x)
        ys.append(np.stack([m, valid], axis=-1).astype(np.float32))
    x_all, y_all = np.concatenate(xs), np.concatenate(ys)
    return [
        (x_all[i * batch : (i + 1) * batch], y_all[i * batch : (i + 1) * batch])
        for i in range(count)
    ]


def _steps_per_second(model: Any, batches: list[tuple[Any, Any]]) -> float:
    start = time.perf_counter()
    for x, y in batches:
        model.train_on_batch(x, y)
    return len(batches) / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tile", type=int, default=64, help="tile side (a multiple of 16)")
    parser.add_argument("--bands", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per round and model")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timed rounds")
    args = parser.parse_args(None if argv is None else list(argv))

    import keras
    from mlops_trainers.trainers.segmenter.bce_dice_loss import BCEDiceLoss
    from mlops_trainers.trainers.segmenter.unet import UNet

    keras.utils.set_random_seed(0)
    models = {
        "ours": UNet(bands=args.bands, base_filters=16, depth=3, name="unet"),
        "keras_io": keras_io_unet(args.tile, args.bands),
    }
    for model in models.values():
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=BCEDiceLoss())
    batches = _batches(args.tile, args.batch, args.steps)
    for model in models.values():
        _steps_per_second(model, batches[:2])  # warm-up: tracing
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            rates[name].append(_steps_per_second(model, batches))
    ours = statistics.median(rates["ours"])
    reference = statistics.median(rates["keras_io"])
    # Each round times both models back to back: the per-round ratio cancels the machine's drift.
    paired = statistics.median(a / b for a, b in zip(rates["ours"], rates["keras_io"], strict=True))
    params = {name: int(m.count_params()) for name, m in models.items()}
    row = Row(
        f"U-Net training, {args.tile}px x{args.bands} tiles, batch {args.batch}",
        ours,
        reference,
        "steps/s",
        "keras.io Oxford-Pets U-Net (Keras 3 port)",
        f"params {params['ours']:,} vs {params['keras_io']:,}; medians of {args.rounds} "
        f"alternating rounds; median per-round ratio {paired:.2f}",
    )
    result: dict[str, Any] = {
        "tile": args.tile,
        "bands": args.bands,
        "batch": args.batch,
        "steps": args.steps,
        "rounds": args.rounds,
        "ours_steps_per_s": ours,
        "reference_steps_per_s": reference,
        "ratio": row.ratio,
        "paired_ratio": paired,
        "rates": rates,
        "params": params,
        "backend": keras.backend.backend(),
        "jit_compile": {name: bool(m.jit_compile) for name, m in models.items()},
    }
    write_rows("unet", [row], extra={"detail": result})
    return result


if __name__ == "__main__":
    main()
