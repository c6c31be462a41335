"""Training steps/s of each trainer, fairly: the runtime against ``model.fit``, and against keras.io
at the same multiply-adds.

For each trainer kind (``train_<kind>`` rows), three things train the same batches, one after the
other in each round, in an order drawn at random per round:

- **runtime**: the real ``mlops run`` loop (:func:`mlops_trainers.runtime.run`, in this process)
  on a local output folder, with its periodic checkpoints, metrics, TensorBoard and spike guard
  on, and Argo's progress file, as in a pod. Its step times come from a hook on
  :meth:`Trainer.train_step` (the time between the starts of two steps is everything the loop
  does per step).
- **model.fit**: the same trainer's model (``build_model()``: same architecture, losses and
  optimizer) in a plain ``model.fit`` over the trainer's own data, made anew each round as the
  runtime's is (a ``tf.data`` pipeline as is, a generator through ``from_generator``, prefetched):
  the same batches and the same input work, so the ratio is the loop's own cost.
- **keras.io**: the keras.io example closest to the trainer, ported to Keras 3 and scaled in
  width until its training step does the same multiply-adds per example as ours (within 10%,
  counted on both traced training steps by TensorFlow's profiler; the bench stops otherwise).
  It runs in a plain ``model.fit`` too, its authors' way, over the trainer's own data made anew
  each round, the batches mapped to its inputs (the image, the codes): the same input work as
  the other two arms. (Until 2026-11-30 it read the batches from memory while ours decoded
  them: on two cores the decoding took steps/s from ours alone.)

One more row, ``train_small_step``, runs the runtime and ``model.fit`` arms alone on a VQ-VAE so
small that a step takes a few ms on CPU (10 x ``--steps`` timed steps after 20, 2 x ``--rounds``
rounds): at that size the loop's own host work per step (its calls into TensorFlow, logs,
TensorBoard, the spike guard) is as large a share as it would be beside a GPU step, which the
trainers' CPU steps of 100 ms hide. It is written to ``bench/results/<out>_small_step.json``.

Each round times ``--steps`` steps after ``--warmup`` untimed ones; ratios are paired per round
and reported as a geometric mean with a 95% interval. The conv/GEMM roofline (a large float32
GEMM and 3x3 convolution) is measured in the same process, and each trainer's achieved GFLOP/s
(the training step's counted FLOPs x steps/s) is reported against it.

    python bench/bench_train.py [--kinds vqvae pixelcnn ...] [--steps 50] [--rounds 5]
"""

from __future__ import annotations

import itertools
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common`, also when imported

from common import (
    Paired,
    Row,
    StepWork,
    roofline,
    rounds_parser,
    train_step_work,
    write_rows,
)

MATCH = 0.10  # the keras.io port's multiply-adds per example must be within 10% of ours


# === The keras.io references, Keras 3, with a width multiplier ===


def _width(base: int, scale: float, even: bool = False) -> int:
    n = max(2, round(base * scale))
    return n + (n % 2) if even else n


def keras_io_vqvae(scale: float, size: int, channels: int, latent_dim: int, codes: int) -> Any:
    """keras.io's ``vq_vae.py`` (Sayak Paul): two stride-2 3x3 convs (32, 64), a 1x1 conv to the
    latent, a quantizer with codebook and commitment losses, the mirrored transposed convs, and
    its GradientTape ``train_step``; the 32 and 64 scaled by ``scale``."""
    import keras
    import tensorflow as tf
    from keras import layers

    class VectorQuantizer(layers.Layer):  # type: ignore[misc,unused-ignore]
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
            similarity = tf.matmul(flattened, self.embeddings)
            distances = (
                tf.reduce_sum(flattened**2, axis=1, keepdims=True)
                + tf.reduce_sum(self.embeddings**2, axis=0)
                - 2 * similarity
            )
            encodings = tf.one_hot(tf.argmin(distances, axis=1), self.num_embeddings)
            quantized = tf.matmul(encodings, self.embeddings, transpose_b=True)
            quantized = tf.reshape(quantized, input_shape)
            commitment_loss = tf.reduce_mean((tf.stop_gradient(quantized) - x) ** 2)
            codebook_loss = tf.reduce_mean((quantized - tf.stop_gradient(x)) ** 2)
            self.add_loss(self.beta * commitment_loss + codebook_loss)
            return x + tf.stop_gradient(quantized - x)

    a, b = _width(32, scale), _width(64, scale)
    inputs = keras.Input((size, size, channels))
    x = layers.Conv2D(a, 3, activation="relu", strides=2, padding="same")(inputs)
    x = layers.Conv2D(b, 3, activation="relu", strides=2, padding="same")(x)
    x = layers.Conv2D(latent_dim, 1, padding="same")(x)
    x = VectorQuantizer(codes, latent_dim)(x)
    x = layers.Conv2DTranspose(b, 3, activation="relu", strides=2, padding="same")(x)
    x = layers.Conv2DTranspose(a, 3, activation="relu", strides=2, padding="same")(x)
    outputs = layers.Conv2DTranspose(channels, 3, padding="same")(x)
    vqvae = keras.Model(inputs, outputs, name="vq_vae")

    class VQVAETrainer(keras.Model):  # type: ignore[misc,unused-ignore]
        def __init__(self, train_variance: float) -> None:
            super().__init__()
            self.train_variance = train_variance
            self.vqvae = vqvae
            self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
            self.reconstruction_loss_tracker = keras.metrics.Mean(name="reconstruction_loss")
            self.vq_loss_tracker = keras.metrics.Mean(name="vq_loss")

        @property
        def metrics(self) -> list[Any]:
            return [self.total_loss_tracker, self.reconstruction_loss_tracker, self.vq_loss_tracker]

        def train_step(self, data: Any) -> dict[str, Any]:
            # Keras 3 may hand train_step (x, y, sample_weight); keras.io's tf.keras gave x.
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

    model = VQVAETrainer(train_variance=0.1)
    model.compile(optimizer=keras.optimizers.Adam())
    model.optimizer.build(model.vqvae.trainable_variables)
    return model


def keras_io_pixelcnn(scale: float, grid: int, layers_: int, codes: int) -> Any:
    """keras.io's ``pixelcnn.py`` (ADMoreau): a 7x7 type-A masked conv, residual blocks (1x1,
    3x3 type-B at half width, 1x1), two 1x1 type-B layers; K logits per position for the codes
    (keras.io's VQ-VAE example trains its PixelCNN prior on codes so). 128 filters x ``scale``."""
    import keras
    import numpy as np
    from keras import layers

    class PixelConvLayer(layers.Layer):  # type: ignore[misc,unused-ignore]
        def __init__(self, mask_type: str, **kwargs: Any) -> None:
            super().__init__()
            self.mask_type = mask_type
            self.conv = layers.Conv2D(**kwargs)

        def build(self, input_shape: Any) -> None:
            self.conv.build(input_shape)
            kernel_shape = tuple(self.conv.kernel.shape)
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
                mask_type="B", filters=filters // 2, kernel_size=3, activation="relu",
                padding="same",
            )  # fmt: skip
            self.conv2 = layers.Conv2D(filters=filters, kernel_size=1, activation="relu")

        def call(self, inputs: Any) -> Any:
            x = self.conv2(self.pixel_conv(self.conv1(inputs)))
            return layers.add([inputs, x])

    filters = _width(128, scale, even=True)
    inputs = keras.Input(shape=(grid, grid), dtype="int32")
    x = keras.ops.one_hot(inputs, codes)
    x = PixelConvLayer(
        mask_type="A", filters=filters, kernel_size=7, activation="relu", padding="same"
    )(x)
    for _ in range(layers_ - 1):  # the type-A layer + these = `layers_` masked layers, as ours
        x = ResidualBlock(filters=filters)(x)
    for _ in range(2):
        x = PixelConvLayer(
            mask_type="B", filters=filters, kernel_size=1, strides=1, activation="relu",
            padding="valid",
        )(x)  # fmt: skip
    out = layers.Conv2D(filters=codes, kernel_size=1, strides=1, padding="valid")(x)
    model = keras.Model(inputs, out, name="keras_io_pixelcnn")
    model.compile(
        optimizer=keras.optimizers.Adam(3e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.optimizer.build(model.trainable_variables)
    return model


def keras_io_unet(scale: float, tile: int, bands: int) -> Any:
    """keras.io's Oxford-Pets U-Net (``get_model``, fchollet): separable-conv down blocks with
    strided residual projections, transposed-conv up blocks; one sigmoid channel out. Its widths
    (32, 64, 128, 256) scaled by ``scale``."""
    import keras
    from keras import layers

    inputs = keras.Input((tile, tile, bands))
    x = layers.Conv2D(_width(32, scale), 3, strides=2, padding="same")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    previous = x
    for base in (64, 128, 256):
        filters = _width(base, scale)
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
    for base in (256, 128, 64, 32):
        filters = _width(base, scale)
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
    model = keras.Model(inputs, outputs, name="keras_io_unet")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    model.optimizer.build(model.trainable_variables)
    return model


# === The trainers measured ===


@dataclass(frozen=True)
class Kind:
    """One trainer kind at the sizes measured, and its keras.io reference."""

    kind: str
    data: str
    config: dict[str, Any]
    reference_name: str
    # width scale -> the reference, compiled, its optimizer built
    reference: Callable[[float], Any]
    # one of our batches -> the reference's (x, y) (y None: the model's own losses)
    reference_batch: Callable[[Any], tuple[Any, Any]]
    checkpoint_every: int = 50  # one checkpoint in each round's 50 timed steps
    parent: dict[str, Any] | None = None  # a run to make first (the PixelCNN's VQ-VAE)
    extra: dict[str, Any] = field(default_factory=dict)


def _image(batch: Any) -> tuple[Any, Any]:
    return batch["image"], None


VQVAE_PARENT = {
    "image_size": 32, "channels": 1, "batch_size": 32, "base_filters": 16, "downsample": 1,
    "residual_blocks": 0, "latent_dim": 8, "num_embeddings": 64, "steps_per_epoch": 10,
    "reconstructions": 0,
}  # fmt: skip

KINDS: dict[str, Kind] = {
    k.kind: k
    for k in (
        Kind(
            "vqvae",
            "sample://fashion-mnist",
            {
                "image_size": 32,
                "channels": 1,
                "batch_size": 32,
                "base_filters": 32,
                "downsample": 2,
                "residual_blocks": 1,
                "latent_dim": 16,
                "num_embeddings": 64,
                "reconstructions": 0,
            },
            "keras.io vq_vae.py (Keras 3 port)",
            lambda s: keras_io_vqvae(s, 32, 1, 16, 64),
            _image,
        ),
        Kind(
            "pixelcnn",
            "sample://fashion-mnist",
            {"batch_size": 32, "filters": 64, "layers": 6, "kernel_size": 5, "samples": 0},
            "keras.io pixelcnn.py (Keras 3 port, K logits on the codes)",
            lambda s: keras_io_pixelcnn(s, 16, 6, 64),
            lambda b: (b["codes"], b["codes"]),
            parent=VQVAE_PARENT,
        ),
        Kind(
            "segmenter",
            "sample://clouds",
            {
                "tile_size": 64,
                "bands": 4,
                "batch_size": 8,
                "base_filters": 16,
                "depth": 3,
                "predictions": 0,
                "export_onnx": False,
            },
            "keras.io Oxford-Pets U-Net (Keras 3 port)",
            lambda s: keras_io_unet(s, 64, 4),
            lambda b: (b[0], b[1][..., :1]),
        ),
        Kind(
            "tokenizer",
            "sample://webcam",
            {
                "image_size": 64,
                "channels": 3,
                "batch_size": 8,
                "base_filters": 16,
                "channel_multipliers": [1, 2, 2],
                "residual_blocks": 1,
                "groups": 4,
                "latent_dim": 8,
                "num_embeddings": 64,
                "reconstructions": 0,
            },
            "keras.io vq_vae.py (Keras 3 port; keras.io has no VQGAN-style tokenizer)",
            lambda s: keras_io_vqvae(s, 64, 3, 8, 64),
            _image,
        ),
    )
}


# The runtime's own host work per step (compiled calls, logs, TensorBoard, the spike guard) is
# noise beside a CPU step of 100 ms, and a large share of a GPU step of a few ms: this VQ-VAE's
# step takes a few ms on CPU, so the ratio shows what that host work would cost on a GPU.
SMALL_STEP = Kind(
    "vqvae",
    "sample://fashion-mnist",
    {
        "image_size": 16, "channels": 1, "batch_size": 8, "base_filters": 4, "downsample": 1,
        "residual_blocks": 0, "latent_dim": 4, "num_embeddings": 64, "reconstructions": 0,
    },
    "",
    lambda s: None,
    _image,
    checkpoint_every=500,  # the spec's default (MLOpsSpec.checkpoint_every)
)  # fmt: skip


# === Measuring ===


def _run_config(
    kind: str, config: dict[str, Any], data: str, root: Path, name: str, **kw: Any
) -> Any:
    from mlops_trainers.config import RunConfig

    # Not `random`: each run seeds Python's generator with its own seed (a name would repeat).
    output = root / f"{name}-g1-{uuid.uuid4().hex[:8]}"
    kw.setdefault("checkpoint_every", 1000)
    return RunConfig(
        run_id=output.name,
        name=name,
        trainer={"kind": kind, "config": config},
        data=data,
        output_prefix=str(root),
        output=str(output),
        **kw,
    )


class _GcClock:
    """Records when each of Python's garbage collections began and ended (``gc.callbacks``)
    while open: a collection's pause lands inside whatever step allocated last."""

    def __init__(self) -> None:
        import gc

        self.spans: list[tuple[float, float]] = []
        self._began = 0.0

        def callback(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                self._began = time.perf_counter()
            else:
                self.spans.append((self._began, time.perf_counter()))

        self._callback = callback
        gc.callbacks.append(callback)

    def close(self) -> None:
        import gc

        gc.callbacks.remove(self._callback)

    def ms_per_step(self, starts: Sequence[float], warmup: int, steps: int) -> float:
        """Milliseconds of collection per step within the timed steps."""
        return 1e3 * _seconds_within(self.spans, starts, warmup, steps) / steps


def _seconds_within(
    spans: Sequence[tuple[float, float]], starts: Sequence[float], warmup: int, steps: int
) -> float:
    """Seconds of the ``spans`` that began within the timed steps ``warmup..warmup+steps``."""
    first, last = starts[warmup], starts[warmup + steps]
    return sum(end - began for began, end in spans if first <= began < last)


class _StepClock:
    """Records when each :meth:`Trainer.train_step` starts (the runtime's loop, per step), and
    when each of the runtime's checkpoints, spike-guard snapshots, TensorBoard calls and train
    steps begins and ends (:meth:`parts`: where a step's time goes)."""

    def __init__(self) -> None:
        from mlops_trainers.runtime import _Run
        from mlops_trainers.tensorboard import TensorBoardWriter
        from mlops_trainers.trainer import Trainer

        self.starts: list[float] = []
        self.checkpoints: list[tuple[float, float]] = []
        self.spans: dict[str, list[tuple[float, float]]] = {
            "step": [], "tensorboard": [], "snapshot": [],
        }  # fmt: skip
        self._patched: list[tuple[Any, str, Any]] = []
        self.gc = _GcClock()
        clock = self

        def timed(trainer: Any, model: Any, batch: Any, *args: Any) -> Any:
            began = time.perf_counter()
            clock.starts.append(began)
            try:
                return real_step(trainer, model, batch, *args)
            finally:
                clock.spans["step"].append((began, time.perf_counter()))

        def checkpoint(run: Any, trainer: Any, model: Any) -> None:
            began = time.perf_counter()
            try:
                real_checkpoint(run, trainer, model)
            finally:
                clock.checkpoints.append((began, time.perf_counter()))

        def spanned(name: str, real: Any) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                began = time.perf_counter()
                try:
                    return real(*args, **kwargs)
                finally:
                    clock.spans[name].append((began, time.perf_counter()))

            return call

        real_step, real_checkpoint = Trainer.train_step, _Run._checkpoint
        for owner, name, replacement in (
            (Trainer, "train_step", timed),
            (_Run, "_checkpoint", checkpoint),
            (_Run, "_snapshot", spanned("snapshot", _Run._snapshot)),
            (TensorBoardWriter, "scalars", spanned("tensorboard", TensorBoardWriter.scalars)),
            (TensorBoardWriter, "maybe_upload", spanned("tensorboard", TensorBoardWriter.maybe_upload)),
        ):  # fmt: skip
            self._patched.append((owner, name, getattr(owner, name)))
            setattr(owner, name, replacement)

    def close(self) -> None:
        self.gc.close()
        for owner, name, real in reversed(self._patched):
            setattr(owner, name, real)

    def _within(self, spans: Sequence[tuple[float, float]], warmup: int, steps: int) -> float:
        return _seconds_within(spans, self.starts, warmup, steps)

    def checkpoint_seconds(self, warmup: int, steps: int) -> float:
        """Seconds of checkpointing inside the timed steps ``warmup..warmup+steps``."""
        return self._within(self.checkpoints, warmup, steps)

    def parts(self, warmup: int, steps: int) -> dict[str, float]:
        """Milliseconds a step of the timed steps spent in the train step
        (:meth:`Trainer.train_step`: the compiled call), TensorBoard, the spike guard's
        snapshots and checkpoints; ``other``: the rest (the input iterator, the runtime's
        bookkeeping: the learning rate, the spike check, the epoch sums, the progress line).
        ``gc``: Python's garbage collections, inside whichever of those they fell in."""
        total = self.starts[warmup + steps] - self.starts[warmup]
        parts = {name: self._within(spans, warmup, steps) for name, spans in self.spans.items()}
        parts["checkpoint"] = self.checkpoint_seconds(warmup, steps)
        parts["other"] = total - sum(parts.values())
        parts["gc"] = self._within(self.gc.spans, warmup, steps)
        return {name: 1e3 * seconds / steps for name, seconds in parts.items()}


def _rate(starts: Sequence[float], warmup: int, steps: int) -> float:
    if len(starts) < warmup + steps + 1:
        raise RuntimeError(f"{len(starts)} steps timed, {warmup + steps + 1} needed")
    return steps / (starts[warmup + steps] - starts[warmup])


def _fit_rate(
    model: Any, dataset: Any, warmup: int, steps: int, gc_ms: list[float] | None = None
) -> float:
    """Steps/s of ``model.fit`` over ``dataset``'s batches, steps ``warmup..warmup+steps``;
    appends to ``gc_ms`` the milliseconds per step Python's garbage collections took in them."""
    import keras

    starts: list[float] = []

    class Clock(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            starts.append(time.perf_counter())

    # shuffle=False: a dataset is read as it comes (Keras ignores shuffle for one, with a warning).
    collections = _GcClock()
    try:
        model.fit(
            dataset, epochs=1, steps_per_epoch=warmup + steps + 1, verbose=0, callbacks=[Clock()],
            shuffle=False,
        )  # fmt: skip
    finally:
        collections.close()
    rate = _rate(starts, warmup, steps)
    if gc_ms is not None:
        gc_ms.append(collections.ms_per_step(starts, warmup, steps))
    return rate


def _dataset(batches: list[Any]) -> Any:
    """The batches as a ``tf.data`` dataset of whole batches, repeated and prefetched."""
    import numpy as np
    import tensorflow as tf

    stacked = tf.nest.map_structure(lambda *a: np.stack([np.asarray(x) for x in a]), *batches)
    return tf.data.Dataset.from_tensor_slices(stacked).repeat().prefetch(tf.data.AUTOTUNE)


def _xy(x: Any, y: Any) -> Any:
    """What ``fit`` takes from a dataset: ``(x, y)``, or ``x`` alone with no ``y``."""
    return x if y is None else (x, y)


def _reference_data(kind: Kind, batches: Any, signature: Any) -> Any:
    """``batches`` (one epoch of the trainer's pipeline, a dataset or an iterable) mapped to the
    reference's inputs, as ``fit`` would read the trainer's own: a dataset mapped in parallel,
    an iterable through ``from_generator``, prefetched."""
    import tensorflow as tf

    if isinstance(batches, tf.data.Dataset):

        def to_reference(*parts: Any) -> Any:
            return _xy(*kind.reference_batch(parts if len(parts) > 1 else parts[0]))

        return batches.map(to_reference, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE
        )
    return tf.data.Dataset.from_generator(
        lambda: (_xy(*kind.reference_batch(b)) for b in batches), output_signature=signature
    ).prefetch(tf.data.AUTOTUNE)


def _x_y(batch: Any) -> tuple[Any, Any]:
    """What ``train_on_batch``/``fit`` hand ``train_step`` for one of our batches."""
    if isinstance(batch, tuple):
        return batch[0], batch[1] if len(batch) > 1 else None
    return batch, None


def _match(kind: Kind, ours: StepWork, x: Any, y: Any) -> tuple[float, Any, StepWork]:
    """The width scale at which the reference's multiply-adds per example are ours (bisection
    on the scale: its work grows monotonically with width)."""
    import keras

    cache: dict[float, tuple[Any, StepWork]] = {}

    def work(scale: float) -> StepWork:
        if scale not in cache:
            keras.utils.clear_session()
            model = kind.reference(scale)
            cache[scale] = (model, train_step_work(model, x, y))
        return cache[scale][1]

    target = ours.macs_per_example
    low, high = 1 / 64, 64.0
    for _ in range(24):
        mid = (low * high) ** 0.5
        if work(mid).macs_per_example < target:
            low = mid
        else:
            high = mid
        if abs(work(mid).macs_per_example / target - 1) < MATCH / 4 or high / low < 1.01:
            break
    best = min(cache, key=lambda s: abs(cache[s][1].macs_per_example / target - 1))
    off = cache[best][1].macs_per_example / target - 1
    if abs(off) > MATCH:
        raise SystemExit(
            f"{kind.kind}: the keras.io port cannot be scaled to our multiply-adds "
            f"(closest {off:+.0%} at width x{best:.3g}); not reporting an unmatched row"
        )
    keras.utils.clear_session()
    model = kind.reference(best)  # a fresh one: the traced copies built graphs of their own
    return best, model, cache[best][1]


@dataclass
class Matched:
    """Our model's and the matched keras.io port's work, on the batches both train."""

    config: dict[str, Any]  # ours, with steps_per_epoch set
    probe: Any  # the RunConfig our trainer was made from
    scratch: Path
    batches: list[Any]  # ours, one epoch's worth
    ref_batches: list[tuple[Any, Any]]  # the same, as the reference's (x, y)
    ours_work: StepWork
    scale: float  # the reference's width multiplier
    reference: Any  # compiled, at that width
    ref_work: StepWork


def with_parent(kind: Kind, config: dict[str, Any], root: Path) -> dict[str, Any]:
    """``config``, with the output of a run of ``kind``'s parent (the PixelCNN's VQ-VAE) made
    first when it has one."""
    from mlops_trainers.runtime import run

    if kind.parent is None:
        return config
    parent = _run_config("vqvae", kind.parent, kind.data, root, "parent", epochs=1)
    if run(parent) != 0:
        raise SystemExit(f"{kind.kind}: its VQ-VAE run failed ({parent.output})")
    return dict(config, vqvae=parent.output)


def match(kind: Kind, *, warmup: int, steps: int, root: Path) -> Matched:
    """Our trainer's model and batches, and the keras.io port scaled to its multiply-adds."""
    import itertools as it

    from mlops_trainers.trainer import RunContext, get_trainer

    config = with_parent(kind, dict(kind.config, steps_per_epoch=warmup + steps + 1), root)
    # Our model and batches, once, for model.fit and the counts.
    probe = _run_config(kind.kind, config, kind.data, root, "probe", epochs=1)
    scratch = Path(tempfile.mkdtemp(prefix="bench-train-"))
    trainer = get_trainer(kind.kind)(probe, RunContext(probe, scratch))
    trainer.prepare()
    batches = list(it.islice(trainer.datasets().batches(0), warmup + steps + 1))
    x, y = _x_y(batches[0])
    ours_work = train_step_work(trainer.build_model(), x, y)
    ref_batches = [kind.reference_batch(b) for b in batches]
    ref_x, ref_y = ref_batches[0]
    scale, reference, ref_work = _match(kind, ours_work, ref_x, ref_y)
    return Matched(
        config, probe, scratch, batches, ref_batches, ours_work, scale, reference, ref_work
    )


def _fit_arm(
    trainer: Any, model: Any, signature: Any, warmup: int, steps: int, *,
    gc_ms: list[float] | None = None,
) -> float:  # fmt: skip
    """``model.fit``'s steps/s over the trainer's own data, made fresh each round as the
    runtime's is (its caches cold): the same input work on both sides. A tf.data pipeline as
    is; a generator through from_generator, prefetched (a thread ahead of the step: fit at its
    best)."""
    import tensorflow as tf

    source = trainer.datasets()
    data = source.batches(0)
    if not isinstance(data, tf.data.Dataset):
        data = tf.data.Dataset.from_generator(
            lambda: source.batches(0), output_signature=signature
        ).prefetch(tf.data.AUTOTUNE)
    return _fit_rate(model, data, warmup, steps, gc_ms)


def _runtime_arm(
    kind: Kind, config: dict[str, Any], root: Path, warmup: int, steps: int
) -> tuple[float, float, dict[str, float]]:
    """The runtime loop's steps/s (a whole ``mlops run`` of one epoch, in this process), the
    seconds its checkpoints took inside the timed steps, and where a step's time went
    (:meth:`_StepClock.parts`). With ``ARGO_PROGRESS_FILE`` set, as Argo sets it in every pod
    (before 2026-12-01 it was not, and the runtime then skipped the file's rewrite every step
    that pods paid for)."""
    import os

    from mlops_trainers.run_record import PROGRESS_ENV
    from mlops_trainers.runtime import run

    cfg = _run_config(
        kind.kind, config, kind.data, root, "runtime", epochs=1,
        checkpoint_every=kind.checkpoint_every,
    )  # fmt: skip
    clock = _StepClock()
    before = os.environ.get(PROGRESS_ENV)
    os.environ[PROGRESS_ENV] = str(root / f"{Path(cfg.output).name}.progress")
    try:
        if run(cfg) != 0:
            raise SystemExit(f"{kind.kind}: the runtime run failed ({cfg.output})")
    finally:
        clock.close()
        if before is None:
            del os.environ[PROGRESS_ENV]
        else:
            os.environ[PROGRESS_ENV] = before
    shutil.rmtree(cfg.output, ignore_errors=True)
    rate = _rate(clock.starts, warmup, steps)
    return rate, clock.checkpoint_seconds(warmup, steps), clock.parts(warmup, steps)


def _signature(batch: Any) -> Any:
    import numpy as np
    import tensorflow as tf

    return tf.nest.map_structure(
        lambda a: tf.TensorSpec(np.shape(a), tf.as_dtype(np.asarray(a).dtype)), batch
    )


def _rounds(
    label: str, arms: dict[str, Callable[[], float]], rounds: int, orders: random.Random
) -> tuple[dict[str, list[float]], list[list[str]]]:
    """Each arm once per round, in an order drawn per round; their rates and the orders."""
    rates: dict[str, list[float]] = {name: [] for name in arms}
    drawn: list[list[str]] = []
    for r in range(rounds):
        order = list(arms)
        orders.shuffle(order)  # its own generator: every run re-seeds the global one
        drawn.append(order)
        for name in order:
            rates[name].append(arms[name]())
        print(
            f"  {label} round {r + 1}/{rounds} ({', '.join(order)}): "
            + ", ".join(f"{n} {rates[n][-1]:.3g}" for n in arms)
            + " steps/s",
            flush=True,
        )
    return rates, drawn


def measure(
    kind: Kind, *, warmup: int, steps: int, rounds: int, root: Path, orders: random.Random
) -> dict[str, Any]:
    import keras
    from mlops_trainers.trainer import RunContext, get_trainer

    m = match(kind, warmup=warmup, steps=steps, root=root)
    config, probe, scratch, batches, ref_batches = (
        m.config, m.probe, m.scratch, m.batches, m.ref_batches
    )  # fmt: skip
    scale, reference, ours_work, ref_work = m.scale, m.reference, m.ours_work, m.ref_work
    extra: dict[str, Any] = {}
    ref_signature = _signature(_xy(*ref_batches[0]))
    keras.utils.clear_session()
    trainer = get_trainer(kind.kind)(probe, RunContext(probe, scratch))
    trainer.prepare()
    trainer.datasets()
    model = trainer.build_model()
    signature = _signature(batches[0])

    def fit() -> float:
        return _fit_arm(trainer, model, signature, warmup, steps, gc_ms=fit_gc)

    def runtime() -> float:
        rate, saving, split = _runtime_arm(kind, config, root, warmup, steps)
        checkpoint_s.append(saving)
        parts.append(split)
        # The same steps with the checkpoint's seconds taken out: the loop's own overhead.
        without_checkpoints.append(steps / (steps / rate - saving))
        return rate

    def keras_io() -> float:
        # The trainer's own data, fresh, as fit() reads it: the same input work as ours.
        data = _reference_data(kind, trainer.datasets().batches(0), ref_signature)
        return _fit_rate(reference, data, warmup, steps)

    checkpoint_s: list[float] = []
    without_checkpoints: list[float] = []
    parts: list[dict[str, float]] = []
    fit_gc: list[float] = []
    arms: dict[str, Callable[[], float]] = {"runtime": runtime, "fit": fit, "keras_io": keras_io}
    rates, drawn = _rounds(kind.kind, arms, rounds, orders)
    shutil.rmtree(scratch, ignore_errors=True)
    vs_fit = Paired.of([a / b for a, b in zip(rates["runtime"], rates["fit"], strict=True)])
    bare_loop = Paired.of([a / b for a, b in zip(without_checkpoints, rates["fit"], strict=True)])
    vs_ref = Paired.of([a / b for a, b in zip(rates["runtime"], rates["keras_io"], strict=True)])
    extra.update(
        kind=kind.kind, config=config, warmup=warmup, steps=steps, rounds=rounds, orders=drawn,
        rates=rates, reference_scale=scale, ours_macs_per_example=ours_work.macs_per_example,
        reference_macs_per_example=ref_work.macs_per_example, ours_flops=ours_work.flops,
        reference_flops=ref_work.flops, ours_by_op=ours_work.by_op,
        reference_by_op=ref_work.by_op, uncounted=[ours_work.uncounted, ref_work.uncounted],
        vs_fit=vs_fit.__dict__, vs_reference=vs_ref.__dict__, checkpoint_s=checkpoint_s,
        without_checkpoints=without_checkpoints, loop_vs_fit=bare_loop.__dict__, parts=parts,
        fit_gc_ms=fit_gc,
    )  # fmt: skip
    return extra


def probe_trainer(kind: Kind, config: dict[str, Any], root: Path) -> tuple[Any, Path, Any]:
    """A fresh trainer of ``kind`` on ``config``, prepared (its scratch folder, to remove), and
    the signature of its batches: what the fit arm trains."""
    import keras
    from mlops_trainers.trainer import RunContext, get_trainer

    probe = _run_config(kind.kind, config, kind.data, root, "probe", epochs=1)
    scratch = Path(tempfile.mkdtemp(prefix="bench-train-"))
    keras.utils.clear_session()
    trainer = get_trainer(kind.kind)(probe, RunContext(probe, scratch))
    trainer.prepare()
    return trainer, scratch, _signature(next(iter(trainer.datasets().batches(0))))


def scope(strategy: Any) -> Any:
    """``strategy``'s scope, or none (one device)."""
    import contextlib

    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def measure_small_step(
    *, warmup: int, steps: int, rounds: int, root: Path, orders: random.Random, replicas: int = 1
) -> dict[str, Any]:
    """The runtime loop against model.fit on :data:`SMALL_STEP` (no keras.io arm: the row is
    about the loop's host work, not the model). ``replicas`` > 1: both on that many replicas of
    a MirroredStrategy (``bench_replicas.py``, whose process has split the CPU into them)."""

    from mlops_trainers import distribute

    # The runtime makes its own strategy (distribute.strategy_for); fit's model is built and
    # trained under one over the same devices (fit splits each global batch over them). First:
    # the devices are split before TensorFlow initialises.
    strategy = distribute.strategy_for([]) if replicas > 1 else None
    if replicas > 1 and (strategy is None or strategy.num_replicas_in_sync != replicas):
        raise SystemExit(f"{replicas} replicas wanted: set {distribute.CPU_REPLICAS_ENV}")
    kind = SMALL_STEP
    config = dict(kind.config, steps_per_epoch=warmup + steps + 1)
    trainer, scratch, signature = probe_trainer(kind, config, root)
    with scope(strategy):
        model = trainer.build_model()
    checkpoint_s: list[float] = []
    parts: list[dict[str, float]] = []
    fit_gc: list[float] = []

    def runtime() -> float:
        rate, saving, split = _runtime_arm(kind, config, root, warmup, steps)
        checkpoint_s.append(saving)
        parts.append(split)
        return rate

    def fit() -> float:
        with scope(strategy):
            return _fit_arm(trainer, model, signature, warmup, steps, gc_ms=fit_gc)

    arms: dict[str, Callable[[], float]] = {"runtime": runtime, "fit": fit}
    label = "small step" + (f", {replicas} replicas" if replicas > 1 else "")
    rates, drawn = _rounds(label, arms, rounds, orders)
    shutil.rmtree(scratch, ignore_errors=True)
    vs_fit = Paired.of([a / b for a, b in zip(rates["runtime"], rates["fit"], strict=True)])
    return dict(
        kind="small_step", config=config, warmup=warmup, steps=steps, rounds=rounds,
        orders=drawn, rates=rates, vs_fit=vs_fit.__dict__, checkpoint_s=checkpoint_s,
        replicas=replicas, parts=parts, fit_gc_ms=fit_gc,
    )  # fmt: skip


def small_step_row(m: dict[str, Any]) -> Row:
    import statistics

    med = {name: statistics.median(v) for name, v in m["rates"].items()}
    vs_fit = Paired(**m["vs_fit"])
    extra_ms = statistics.median(
        1e3 / r - 1e3 / f for r, f in zip(m["rates"]["runtime"], m["rates"]["fit"], strict=True)
    )
    c = m["config"]
    checkpoint = statistics.median(m["checkpoint_s"])
    replicas = int(m.get("replicas", 1))
    name, where = "train_small_step", ""
    if replicas > 1:
        name = f"train_small_step_{replicas}replicas"
        where = (
            f"; both on {replicas} data-parallel replicas (MirroredStrategy over {replicas} "
            "logical CPU devices), the global batch split over them"
        )
    return Row(
        f"{name}: runtime loop vs the same model in model.fit",
        med["runtime"],
        med["runtime"] / vs_fit.mean,
        "steps/s",
        "plain model.fit of build_model() on the trainer's own data pipeline, same batches",
        f"{vs_fit.text()}{where}; VQ-VAE at {c['image_size']} px, batch {c['batch_size']}, "
        f"{c['base_filters']} filters: {1e3 / med['fit']:.1f} ms a step in model.fit, so the "
        f"loop's host work per step shows as it would beside a GPU step; the runtime's extra "
        f"time per step (median of rounds): {extra_ms:.2f} ms; {m['steps']} timed steps after "
        f"{m['warmup']} per round; checkpoint_every {SMALL_STEP.checkpoint_every} (the spec's "
        f"default: the timed steps hold one, {checkpoint:.2f} s a round), metrics, TensorBoard "
        f"and the spike guard on{_parts_text(m)}",
    )


def _parts_text(m: dict[str, Any]) -> str:
    """Where the runtime's step went, medians over the rounds (runs before 2026-12-01's
    breakdown have none)."""
    import statistics

    if not m.get("parts"):
        return ""
    med = {k: statistics.median(p[k] for p in m["parts"]) for k in m["parts"][0]}
    fit_ms = statistics.median(1e3 / f for f in m["rates"]["fit"])
    return (
        f"; the runtime's step, ms (medians of rounds): the train step {med['step']:.2f} "
        f"(fit's whole step {fit_ms:.2f}), TensorBoard {med['tensorboard']:.2f}, the spike "
        f"guard's snapshots {med['snapshot']:.2f}, the checkpoint {med['checkpoint']:.2f}, the "
        f"rest (input iterator, bookkeeping, progress) {med['other']:.2f}{_gc_text(m, med)}"
    )


def _gc_text(m: dict[str, Any], med: dict[str, float]) -> str:
    """Python's garbage collections inside the timed steps, both sides (runs before 21613b5
    did not time them: nothing)."""
    import statistics

    if "gc" not in med or not m.get("fit_gc_ms"):
        return ""
    return (
        f"; of all that, Python's garbage collections {med['gc']:.2f} (fit's "
        f"{statistics.median(m['fit_gc_ms']):.2f})"
    )


def rows_of(m: dict[str, Any], peak: float) -> list[Row]:
    import statistics

    kind = KINDS[m["kind"]]
    med = {name: statistics.median(v) for name, v in m["rates"].items()}
    ours_mac, ref_mac = m["ours_macs_per_example"], m["reference_macs_per_example"]
    batch = kind.config["batch_size"]
    sizes = (
        f"batch {batch}; training step {ours_mac / 1e6:.1f} M multiply-adds per example "
        f"(keras.io at width x{m['reference_scale']:.3g}: {ref_mac / 1e6:.1f} M, "
        f"{ref_mac / ours_mac - 1:+.1%}); {m['steps']} timed steps after {m['warmup']} per round"
    )
    achieved = m["ours_flops"] * med["runtime"] / 1e9
    ref_achieved = m["reference_flops"] * med["keras_io"] / 1e9
    vs_fit, vs_ref = Paired(**m["vs_fit"]), Paired(**m["vs_reference"])
    name = f"train_{m['kind']}"
    # ours: the runtime's median steps/s; reference: that over the paired geometric mean of the
    # per-round ratios, so that the row's ratio is the paired one (not a ratio of medians).
    return [
        Row(
            f"{name}: runtime loop vs the same model in model.fit",
            med["runtime"],
            med["runtime"] / vs_fit.mean,
            "steps/s",
            "plain model.fit of build_model() on the trainer's own data pipeline, same batches",
            f"{vs_fit.text()}; {sizes}; checkpoints every {kind.checkpoint_every} steps, metrics,"
            f" TensorBoard and the spike guard on{_checkpoint_share(m, kind.checkpoint_every)}"
            f"{_parts_text(m)}",
        ),
        Row(
            f"{name}: vs keras.io at the same multiply-adds",
            med["runtime"],
            med["runtime"] / vs_ref.mean,
            "steps/s",
            kind.reference_name,
            f"{vs_ref.text()}; {sizes}",
        ),
        Row(
            f"{name}: achieved GFLOP/s vs the roofline",
            achieved,
            peak,
            "GFLOP/s",
            "a 1024^3 float32 GEMM / a 16x32x32x128->128 3x3 conv, the faster, same process",
            f"training-step FLOPs counted on the traced graph x median steps/s; keras.io's "
            f"{ref_achieved:.3g} GFLOP/s",
        ),
    ]


def _checkpoint_share(m: dict[str, Any], every: int) -> str:
    """What the runtime's checkpoint in the timed steps cost, and the ratio without it (older
    results did not time it: nothing)."""
    import statistics

    if "loop_vs_fit" not in m:
        return ""
    saving = statistics.median(m["checkpoint_s"])
    share = statistics.median(
        s * r / m["steps"] for s, r in zip(m["checkpoint_s"], m["rates"]["runtime"], strict=True)
    )
    loop = Paired(**m["loop_vs_fit"])
    from mlops_api.spec import MLOpsSpec

    default = int(MLOpsSpec.model_fields["checkpoint_every"].default)
    return (
        f"; the checkpoint (one per {every} steps) took {saving:.2f} s a round, {share:.1%} of "
        f"the timed steps' time; with its seconds taken out the loop reaches {loop.mean:.3g} "
        f"(95% interval {loop.low:.3g}-{loop.high:.3g}); at the default checkpoint_every "
        f"({default} steps) the same checkpoint would be {share * every / default:.1%}"
    )


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = rounds_parser(
        __doc__, out="train", steps=50, warmup=5, kinds=[*sorted(KINDS), "small_step"]
    )
    args = parser.parse_args(None if argv is None else list(argv))
    orders = random.Random(args.seed)
    peak = roofline()
    print(f"roofline: {peak}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="bench-train-runs-"))
    measured: list[dict[str, Any]] = []
    try:
        for i, name in enumerate(args.kinds, 1):
            print(f"[{i}/{len(args.kinds)}] train_{name} ...", flush=True)
            if name == "small_step":
                # Many more steps: each takes a few ms, and the rounds' noise is in ms too.
                measured.append(
                    measure_small_step(
                        warmup=20,
                        steps=10 * args.steps,
                        rounds=2 * args.rounds,
                        root=root,
                        orders=orders,
                    )
                )
                continue
            measured.append(
                measure(
                    KINDS[name],
                    warmup=args.warmup,
                    steps=args.steps,
                    rounds=args.rounds,
                    root=root,
                    orders=orders,
                )
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    after = roofline()  # the machine may have changed under the run: both are kept
    trainers = [m for m in measured if m["kind"] != "small_step"]
    small = [m for m in measured if m["kind"] == "small_step"]
    # The small-step row in a file of its own (<out>_small_step.json): it can be run alone
    # (--kinds small_step) without the trainers' rows losing their date and commit.
    if trainers:
        rows = list(itertools.chain.from_iterable(rows_of(m, peak["peak"]) for m in trainers))
        write_rows(
            args.out, rows, extra={"roofline": peak, "roofline_after": after, "detail": trainers}
        )
    if small:
        write_rows(f"{args.out}_small_step", [small_step_row(small[0])], extra={"detail": small})
    return measured


if __name__ == "__main__":
    main()
