"""Storage and checkpoints through fsspec, the same tests on a local folder and on a real GCS
emulator (gcsfs): reads, writes, listings, and checkpoints that are complete or ignored."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from mlops_trainers import storage
from mlops_trainers.checkpoints import (
    MANIFEST,
    WEIGHTS,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)


def _model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def test_files_round_trip(storage_root: str) -> None:
    url = storage.join(storage_root, "a", "b.json")
    assert not storage.exists(url)
    storage.write_json(url, {"x": [1, 2]})
    storage.write_bytes(storage.join(storage_root, "a", "c", "d.bin"), b"\x00\x01")
    assert storage.read_json(url) == {"x": [1, 2]}
    assert storage.list_dir(storage.join(storage_root, "a")) == ["b.json", "c"]
    assert storage.list_dir(storage.join(storage_root, "missing")) == []
    storage.remove(storage.join(storage_root, "a", "c"), recursive=True)
    storage.remove(storage.join(storage_root, "a", "never"))  # missing: not an error
    assert storage.list_dir(storage.join(storage_root, "a")) == ["b.json"]


def test_only_complete_checkpoints_count(storage_root: str, tmp_path: Path) -> None:
    run = storage.join(storage_root, "run-g1-0123abcd")
    model = _model(0)
    model.train_on_batch(np.ones((4, 3)), np.zeros((4, 2)))
    state = {"epoch": 0, "step_in_epoch": 3, "kind": "test", "trainer_config": {}}
    saved = save_checkpoint(model, run, tmp_path, {**state, "global_step": 3})
    # A newer checkpoint whose upload was cut off: weights written, no manifest.
    partial = storage.join(run, "checkpoints", "step-0000000006")
    storage.write_bytes(storage.join(partial, WEIGHTS), b"half a file")
    # And one whose manifest lists a size the weights do not have.
    torn = storage.join(run, "checkpoints", "step-0000000009")
    storage.write_bytes(storage.join(torn, WEIGHTS), b"short")
    storage.write_json(storage.join(torn, MANIFEST), {**saved.manifest, "global_step": 9})
    newest = latest_checkpoint(run)
    assert newest is not None
    assert newest.url == saved.url
    assert resolve_checkpoint(run).url == saved.url
    assert resolve_checkpoint(saved.url).step == 3

    fresh = _model(1)
    load_checkpoint(fresh, newest, tmp_path / "restore")
    for a, b in zip(fresh.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(fresh.optimizer.iterations.numpy()) == 1  # the optimizer state came back too

    # Saving prunes: the newest three complete ones stay, incomplete older leftovers go.
    for step in (12, 15, 18):
        save_checkpoint(model, run, tmp_path, {**state, "global_step": step})
    assert [c.step for c in list_checkpoints(run)] == [12, 15, 18]
    assert storage.list_dir(storage.join(run, "checkpoints")) == [
        "step-0000000012",
        "step-0000000015",
        "step-0000000018",
    ]
