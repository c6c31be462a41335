"""A checkpoint builds no throwaway Keras layers.

Keras 3's ``saving_lib.get_attr_skipset`` caches under one key and looks up under another, so
without ``checkpoints._keras_skipsets`` every ``save_weights`` and ``load_weights`` constructed a
``Layer`` (or ``Optimizer``, ``Metric``...) for each object it walked: most of a checkpoint's
time (an ad-hoc probe of the segmenter: about 90 ms of 145 ms). The files are unchanged: the
weights and the optimizer's state come back equal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from keras.src.ops.operation import Operation
from mlops_trainers.checkpoints import load_checkpoint, save_checkpoint


def _model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
            keras.layers.GroupNormalization(2),
            keras.layers.Conv2D(4, 3, padding="same"),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", metrics=["mae"])
    model.train_on_batch(np.ones((2, 8, 8, 1)), np.zeros((2, 3)))
    return model


def test_saving_and_loading_a_checkpoint_constructs_no_keras_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = str(tmp_path / "run-g1-0123abcd")
    state = {"epoch": 0, "step_in_epoch": 1, "kind": "test", "trainer_config": {}}
    model = _model(0)
    save_checkpoint(model, run, tmp_path, {**state, "global_step": 1})  # Keras' sets, once

    built: list[str] = []
    original = Operation.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        built.append(type(self).__name__)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Operation, "__init__", counting)
    saved = save_checkpoint(model, run, tmp_path, {**state, "global_step": 2})
    assert built == [], f"constructed while saving: {len(built)}: {sorted(set(built))}"
    other = _model(1)
    built.clear()  # other's own layers
    load_checkpoint(other, saved, tmp_path)
    assert built == [], f"constructed while loading: {len(built)}: {sorted(set(built))}"
    monkeypatch.undo()

    for ours, theirs in zip(model.weights, other.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    for ours, theirs in zip(model.optimizer.variables, other.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
