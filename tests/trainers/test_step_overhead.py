"""The runtime's per-step work, compiled (bench/bench_train.py measured it): the same results as
the eager calls it replaces, in as few host calls as it can."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")


def _model(seed: int) -> Any:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", metrics=["mae"])
    return model


def test_train_on_batch_gives_keras_train_on_batch_results() -> None:
    """Per-step logs and weights equal Keras' own ``train_on_batch`` step for step: the metrics
    are reset before each step (else the logs would be running means after step 1), the
    optimizer steps the same, sample weights are used."""
    from mlops_trainers.trainer import train_on_batch

    rng = np.random.default_rng(0)
    batches = [
        (rng.normal(size=(16, 6)).astype("float32"), rng.normal(size=(16, 1)).astype("float32"))
        for _ in range(6)
    ]
    weights = rng.uniform(size=(16,)).astype("float32")
    keras_model, ours = _model(0), _model(0)
    for i, (x, y) in enumerate(batches + batches[:1] * 3):  # the same batch again: no drift
        batch = (x, y, weights) if i % 2 else (x, y)
        expected = keras_model.train_on_batch(*batch, return_dict=True)
        got = train_on_batch(ours, batch)
        assert set(got) == set(expected)
        for key, value in expected.items():
            assert got[key] == pytest.approx(float(value), rel=1e-5), (i, key)
    for a, b in zip(keras_model.get_weights(), ours.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_one_graph_call_sets_the_learning_rate_and_reads_the_gradient_norm() -> None:
    """With a learning rate and the gradient norm recorded, a step after the first is one call
    of one compiled function (traced once), and it does what the eager calls it replaces did:
    the rate of each step is the one given (SGD: the update shows it), ``grad_norm`` is that
    step's norm, the logs are the step's own."""
    from mlops_trainers import optim
    from mlops_trainers.trainer import _FUSED, train_on_batch
    from mlops_trainers.trainers.vqvae.config import VQVAEConfig

    def sgd_model() -> Any:
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse", metrics=["mae"])
        model.optimizer.build(model.trainable_variables)
        optim.configure(model.optimizer, VQVAEConfig())
        return model

    rng = np.random.default_rng(1)
    reference, ours = sgd_model(), sgd_model()
    for step in range(5):
        x = rng.normal(size=(8, 6)).astype("float32")
        y = rng.normal(size=(8, 1)).astype("float32")
        rate = 0.01 * (step + 1)
        reference.optimizer.learning_rate = rate
        expected = reference.train_on_batch(x, y, return_dict=True)
        norm = optim.gradient_norm(reference.optimizer)
        got = train_on_batch(ours, (x, y), rate)
        assert list(got)[-1] == "grad_norm"
        assert got["grad_norm"] == pytest.approx(norm, rel=1e-5)
        assert got["loss"] == pytest.approx(float(expected["loss"]), rel=1e-5)
        assert got["mae"] == pytest.approx(float(expected["mae"]), rel=1e-5)
        assert float(ours.optimizer.learning_rate) == pytest.approx(rate)
        for a, b in zip(reference.get_weights(), ours.get_weights(), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Steps 2-5 went through the compiled step, traced once (the first builds the model).
    assert _FUSED[ours][1].experimental_get_tracing_count() == 1


def test_compiled_scalars_land_at_their_steps_with_their_values(tmp_path: Path) -> None:
    """One graph call per step writes every log at the step given (an argument: a step traced in
    as a constant would repeat the first one), also after the event file rolls over."""
    tf = pytest.importorskip("tensorflow")
    from mlops_trainers.tensorboard import TensorBoardWriter
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = TensorBoardWriter(tmp_path / "scratch", str(tmp_path / "out"), roll_bytes=1)
    for step in range(1, 6):
        writer.scalars("step", {"loss": step / 10, "lr": 1e-3 * step}, step)
        writer.upload()  # rolls: every file passes 1 byte
    writer.scalars("epoch", {"loss": 0.25}, 1)
    writer.close()
    accumulator = EventAccumulator(str(tmp_path / "scratch" / "tb"), size_guidance={"tensors": 0})
    accumulator.Reload()

    def series(tag: str) -> list[tuple[int, float]]:
        # By step: the accumulator reads the rolled files in name order, and names made within
        # one second need not sort in writing order (seen once: [5, 1, 2, 3, 4]).
        return sorted(
            (e.step, float(tf.make_ndarray(e.tensor_proto))) for e in accumulator.Tensors(tag)
        )

    assert [s for s, _ in series("step/loss")] == [1, 2, 3, 4, 5]
    assert [v for _, v in series("step/loss")] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert [v for _, v in series("step/lr")] == pytest.approx([1e-3 * s for s in range(1, 6)])
    assert series("epoch/loss") == [(1, pytest.approx(0.25))]
    assert writer.files > 1  # the writes went to more than one file
    # ... through one compiled write, traced once (the writer is its argument, not captured).
    assert writer._writes[("step", ("loss", "lr"))].experimental_get_tracing_count() == 1


def test_scalars_are_held_and_written_many_rows_a_call(tmp_path: Path) -> None:
    """Step scalars are written SCALAR_ROWS at a time by one compiled write (traced once, at
    the first row, for full and partial batches of rows), and every held row is written by upload(), so a copy
    never misses a step that was logged."""
    tf = pytest.importorskip("tensorflow")
    from mlops_trainers.tensorboard import SCALAR_ROWS, TensorBoardWriter
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def steps_written() -> list[int]:
        accumulator = EventAccumulator(
            str(tmp_path / "scratch" / "tb"), size_guidance={"tensors": 0}
        )
        accumulator.Reload()
        tags = accumulator.Tags()["tensors"]
        return (
            sorted(e.step for e in accumulator.Tensors("step/loss")) if "step/loss" in tags else []
        )

    writer = TensorBoardWriter(tmp_path / "scratch", str(tmp_path / "out"))
    total = 2 * SCALAR_ROWS + 50
    for step in range(1, total + 1):
        writer.scalars("step", {"loss": step / 1000, "lr": 1e-3}, step)
        if step == 10:
            writer.writer.flush()
            # The first row is written at once (the write is traced with the first step, not
            # SCALAR_ROWS steps into training); the next are held, not written one by one.
            assert steps_written() == [1]
    writer.upload()
    assert steps_written() == list(range(1, total + 1))
    write = writer._writes[("step", ("loss", "lr"))]
    assert write.experimental_get_tracing_count() == 1
    accumulator = EventAccumulator(str(tmp_path / "scratch" / "tb"), size_guidance={"tensors": 0})
    accumulator.Reload()
    values = {
        e.step: float(tf.make_ndarray(e.tensor_proto)) for e in accumulator.Tensors("step/loss")
    }
    assert values[total] == pytest.approx(total / 1000)
    writer.close()
