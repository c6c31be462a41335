"""Issue 14, part 1: the training options every trainer gets from the runtime, with no code of
its own: ``clipnorm``, the gradient norm in the step logs, warmup and cosine/step/plateau
schedules, and early stopping with the best weights kept."""

from __future__ import annotations

import csv
import io
import itertools
import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from mlops_trainers import optim, storage
from mlops_trainers.checkpoints import BEST_DIR, read_checkpoint
from mlops_trainers.config import RunConfig
from mlops_trainers.runtime import run
from mlops_trainers.trainers.vqvae.config import VQVAEConfig

# === The learning rate of every step ===


def test_warmup_then_cosine_to_the_final_fraction() -> None:
    config = VQVAEConfig(
        learning_rate=1e-3,
        schedule={"kind": "cosine", "warmup_steps": 10, "final_fraction": 0.1},
    )
    total = 111  # 10 warmup steps, then steps 10..110: 100 intervals of cosine
    lrs = [optim.learning_rate(config, step, total, epoch=0) for step in range(total)]
    assert lrs[0] == pytest.approx(1e-4)  # 1/10 of the way up
    assert lrs[9] == pytest.approx(1e-3)  # warm
    assert max(lrs) == pytest.approx(1e-3)
    assert lrs[60] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert lrs[-1] == pytest.approx(1e-4)  # the final fraction, at the last step
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))  # never rises again
    # The spike guard's and a plateau's factors multiply it.
    assert optim.learning_rate(config, 60, total, 0, scale=0.25) == pytest.approx(0.25 * lrs[60])


def test_step_schedule_decays_every_n_epochs() -> None:
    config = VQVAEConfig(
        learning_rate=1.0, schedule={"kind": "step", "every_epochs": 2, "factor": 0.1}
    )
    assert [optim.learning_rate(config, 0, 100, epoch) for epoch in range(5)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01]
    )
    assert VQVAEConfig().learning_rate == 1e-4  # the FAFA seed's rate


# === clipnorm and the gradient norm, on any Keras optimizer ===


@pytest.mark.parametrize("clipnorm", [None, 0.5])
def test_clipnorm_clips_the_global_norm_and_the_norm_is_logged(clipnorm: float | None) -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
    # SGD: the update is lr x the (clipped) gradient, so the clipping shows in the weights.
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    model.optimizer.build(model.trainable_variables)
    optim.configure(model.optimizer, VQVAEConfig(clipnorm=clipnorm))
    x = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], np.float32)
    y = np.array([[10.0, -4.0], [3.0, 8.0]], np.float32)
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = keras.losses.mean_squared_error(y, model(x))
        loss = tf.reduce_mean(loss)
    grads = tape.gradient(loss, model.trainable_variables)
    expected = float(np.sqrt(sum(float(tf.reduce_sum(g * g)) for g in grads)))
    before = [w.copy() for w in model.get_weights()]
    model.train_on_batch(x, y)
    assert optim.gradient_norm(model.optimizer) == pytest.approx(expected, rel=1e-5)
    moved = np.sqrt(
        sum(((a - b) ** 2).sum() for a, b in zip(model.get_weights(), before, strict=True))
    )
    assert moved == pytest.approx(clipnorm if clipnorm else expected, rel=1e-4)
    # The optimizer is still a plain Keras class: nothing of ours in a saved model.
    assert type(model.optimizer) is keras.optimizers.SGD


# === Plateau and early stopping, through the runtime ===


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> str:
    from mlops_trainers.data import list_images

    listing = tmp_path_factory.mktemp("data") / "images.txt"
    listing.write_text("\n".join(list_images("sample://fashion-mnist")[:64]) + "\n")
    return str(listing)


def _rows(output: str) -> list[dict[str, Any]]:
    return list(csv.DictReader(io.StringIO(storage.read_text(storage.join(output, "metrics.csv")))))


@pytest.mark.slow
def test_plateau_decays_and_early_stopping_keeps_the_best_epoch(
    tmp_path: Path, images: str
) -> None:
    """``loss`` watched in ``max`` mode: a falling loss never improves, so the plateau decays
    after one epoch and the run stops after two, keeping epoch 1's weights as the model."""
    config = RunConfig(
        run_id="plateau-g1-0123abcd",
        name="plateau",
        trainer={
            "kind": "vqvae",
            "config": {
                "image_size": 16,
                "channels": 1,
                "batch_size": 8,
                "learning_rate": 2e-3,
                "base_filters": 8,
                "residual_blocks": 0,
                "latent_dim": 4,
                "num_embeddings": 8,
                "steps_per_epoch": 4,
                "reconstructions": 2,
                "schedule": {"kind": "plateau", "monitor": "loss", "mode": "max", "patience": 1},
                "early_stopping": {
                    "enabled": True,
                    "monitor": "loss",
                    "mode": "max",
                    "patience": 2,
                },
            },
        },
        data=images,
        output_prefix=str(tmp_path),
        output=str(tmp_path / "plateau-g1-0123abcd"),
        epochs=6,
        checkpoint_every=100,
    )
    assert run(config) == 0
    rows = _rows(config.output)
    losses = [float(r["loss"]) for r in rows]
    assert len(rows) == 3 and losses[0] > losses[1] > losses[2]  # stopped after 3 of 6 epochs
    lrs = [float(r["lr"]) for r in rows]
    assert lrs == pytest.approx([2e-3, 2e-3, 1e-3])  # decayed after epoch 2 (1 bad epoch)
    record = storage.read_json(storage.join(config.output, "run.json"))
    assert record["state"] == "succeeded" and record["global_step"] == 12
    best = read_checkpoint(storage.join(config.output, BEST_DIR))
    assert (
        best is not None
        and best.epoch == 1
        and best.manifest["value"] == pytest.approx(losses[0], rel=1e-5)
    )
    # The final model is the best epoch's, not the last one's.
    from mlops_trainers.checkpoints import load_checkpoint
    from mlops_trainers.trainers.vqvae.trainer import build_vqvae

    final = keras.saving.load_model(Path(config.output) / "model.keras")
    kept = build_vqvae(VQVAEConfig.model_validate(best.trainer_config))
    load_checkpoint(kept, best, tmp_path / "restore")
    for a, b in zip(final.weights, kept.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
