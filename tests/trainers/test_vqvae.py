"""The VQ-VAE: configs round-trip, saved models reload, padding is masked, the codebook stays
alive, and the trainer learns on real images (``sample://skimage``)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from keras import ops
from mlops_trainers.config import RunConfig
from mlops_trainers.runtime import run
from mlops_trainers.trainers.vqvae.residual_block import ResidualBlock
from mlops_trainers.trainers.vqvae.vector_quantizer import VectorQuantizer
from mlops_trainers.trainers.vqvae.vqvae import VQVAE

SMALL = {
    "image_size": 16,
    "channels": 3,
    "base_filters": 8,
    "downsample": 2,
    "residual_blocks": 1,
    "latent_dim": 4,
    "num_embeddings": 16,
}


def _model(**overrides: object) -> VQVAE:
    kwargs = {k: v for k, v in SMALL.items()}
    kwargs.update(overrides)
    return VQVAE(seed=0, **kwargs)  # type: ignore[arg-type]


def _batch(size: int = 16, count: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.random((count, size, size, 3)).astype("float32")
    mask = np.zeros((count, size, size, 1), "float32")
    mask[:, 2:-2, 4:-4] = 1.0  # a padded, wider-than-tall picture
    return {"image": image * mask, "mask": mask}


def test_layers_and_model_round_trip_their_configs() -> None:
    block = ResidualBlock(8, hidden_filters=3, name="r")
    assert ResidualBlock.from_config(block.get_config()).get_config() == block.get_config()
    quantizer = VectorQuantizer(16, 4, beta=0.5, ema=False, dead_code_threshold=0.01, seed=3)
    again = VectorQuantizer.from_config(quantizer.get_config())
    assert again.get_config() == quantizer.get_config()
    model = _model(ema=False, beta=0.3)
    rebuilt = VQVAE.from_config(model.get_config())
    assert rebuilt.get_config() == model.get_config()
    assert rebuilt.latent_size == 4


def test_saved_model_reloads_and_reconstructs_identically(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    batch = _batch()
    for _ in range(3):
        model.train_on_batch(batch)
    path = tmp_path / "vqvae.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, VQVAE)
    ours = model(batch, training=False)
    theirs = loaded(batch, training=False)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(ours["codes"]), ops.convert_to_numpy(theirs["codes"])
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(ours["reconstruction"]),
        ops.convert_to_numpy(theirs["reconstruction"]),
        atol=1e-6,
    )


def test_reconstruction_error_counts_only_unpadded_pixels() -> None:
    keras.utils.set_random_seed(0)
    model = _model()
    batch = _batch()
    out = model(batch, training=False)
    model.compute_loss(x=batch, y_pred=out)
    recon = ops.convert_to_numpy(out["reconstruction"])
    squared = ((recon - batch["image"]) ** 2).mean(-1, keepdims=True)
    expected = (squared * batch["mask"]).sum() / batch["mask"].sum()
    assert float(model.recon_tracker.result()) == pytest.approx(expected, rel=1e-5)
    # Whatever the model makes of the padding does not count: only the mask decides.
    everything = (squared).mean()
    assert abs(expected - everything) > 1e-4


def test_dead_codes_are_restarted_from_encoder_outputs() -> None:
    keras.utils.set_random_seed(0)
    quantizer = VectorQuantizer(8, 2, ema=True, dead_code_restart=True, seed=0)
    quantizer.build((None, 4, 4, 2))
    # A codebook far from the data: without restarts one code would take every latent.
    quantizer.embeddings.assign(np.full((8, 2), 100.0, "float32") + np.arange(8)[:, None])
    quantizer.ema_sum.assign(quantizer.embeddings)
    rng = np.random.default_rng(0)
    latents = rng.normal(size=(4, 4, 4, 2)).astype("float32")
    quantizer(latents, training=True)
    codebook = ops.convert_to_numpy(quantizer.embeddings)
    flat = latents.reshape(-1, 2)
    distance = ((codebook[:, None, :] - flat[None, :, :]) ** 2).sum(-1).min(1)
    assert (distance < 1e-10).sum() >= 7  # re-seeded exactly onto encoder outputs
    codes = ops.convert_to_numpy(quantizer.codes(latents))
    assert len(np.unique(codes)) >= 4


def test_kmeans_init_spreads_the_codebook_over_the_data() -> None:
    keras.utils.set_random_seed(0)
    model = _model(dead_code_restart=False)
    batch = _batch(count=8)
    model.kmeans_init(batch["image"], batch["mask"])
    out = model(batch, training=False)
    valid = ops.convert_to_numpy(model.latent_mask(ops.convert_to_tensor(batch["mask"]))) > 0
    codes = ops.convert_to_numpy(out["codes"])[valid]
    assert len(np.unique(codes)) >= 8


@pytest.mark.slow
def test_trainer_learns_on_real_images(tmp_path: Path, make_run_file: Any) -> None:
    config = make_run_file(
        str(tmp_path / "runs"),
        "skimage-g1-0123abcd",
        "vqvae",
        {
            **SMALL,
            "downsample": 1,  # 8x8 codes of 16 pixels: enough capacity to beat the mean quickly
            "batch_size": 8,
            "learning_rate": 3e-3,
            "steps_per_epoch": 25,
            "reconstructions": 4,
        },
        data="sample://skimage",
        epochs=3,
        checkpoint_every=10,
        image="example.org/trainer:test",
    )
    assert run(RunConfig.model_validate(config)) == 0
    out = Path(config["output"])
    rows = list(csv.DictReader(io.StringIO((out / "metrics.csv").read_text())))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    first, last = float(rows[0]["recon_mse"]), float(rows[-1]["recon_mse"])
    assert last < 0.8 * first, rows
    assert float(rows[-1]["codes_used"]) > 0.25  # the codebook did not collapse
    assert float(rows[-1]["perplexity"]) > 3.0
    for epoch in (1, 2, 3):
        assert (out / "reconstructions" / f"epoch-{epoch:04d}.png").stat().st_size > 0
    record = json.loads((out / "run.json").read_text())
    assert record["state"] == "succeeded"
    assert record["image"] == "example.org/trainer:test"
    assert record["inputs"]["data"] == {"url": "sample://skimage", "images": 540}
    assert record["final_metrics"]["recon_mse"] == pytest.approx(last, rel=1e-4)
    loaded = keras.saving.load_model(out / "model.keras")
    assert isinstance(loaded, VQVAE)
