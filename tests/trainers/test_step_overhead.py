"""The runtime's per-step work, compiled (bench/bench_train.py measured it): the same results as
the eager calls it replaces."""

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


def test_train_on_batch_and_compiled_reset_give_keras_train_on_batch_results() -> None:
    """Per-step logs and weights equal Keras' own ``train_on_batch`` step for step: the metrics
    are reset before each step (else the logs would be running means after step 1), the
    optimizer steps the same, sample weights are used."""
    from mlops_trainers.trainer import reset_metrics, train_on_batch

    rng = np.random.default_rng(0)
    batches = [
        (rng.normal(size=(16, 6)).astype("float32"), rng.normal(size=(16, 1)).astype("float32"))
        for _ in range(6)
    ]
    weights = rng.uniform(size=(16,)).astype("float32")
    keras_model, ours = _model(0), _model(0)
    for i, (x, y) in enumerate(batches):
        batch = (x, y, weights) if i % 2 else (x, y)
        expected = keras_model.train_on_batch(*batch, return_dict=True)
        reset_metrics(ours)
        got = train_on_batch(ours, batch)
        assert set(got) == set(expected)
        for key, value in expected.items():
            assert got[key] == pytest.approx(float(value), rel=1e-5), (i, key)
    for a, b in zip(keras_model.get_weights(), ours.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Without the reset the logs would drift from the step's own: the reset is what makes them.
    x, y = batches[0]
    first = train_on_batch(ours, (x, y))
    second = train_on_batch(ours, (x, y))  # no reset: the Mean trackers average both steps
    reset_metrics(ours)
    third = train_on_batch(ours, (x, y))
    assert second["loss"] != pytest.approx(third["loss"], rel=1e-6) or first == second


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
    assert writer.files > 1  # the writes went to more than one file: recompiled per file
