"""Variable-length embeddings: the ConvLSTM carries state, steps past T change nothing, the image
is rebuilt from the tokens alone, the mask losses and statistics measure what they say, the
canvases know their objects, and a trained VLE's MSE falls with the number of tokens."""

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
from mlops_trainers.trainers.vle.conv_lstm_cell import ConvLSTMCell
from mlops_trainers.trainers.vle.plain_autoencoder import PlainAutoencoder
from mlops_trainers.trainers.vle.samples import MAX_OBJECTS, compose_canvases
from mlops_trainers.trainers.vle.trainer import RequestedTokens, mask_statistics
from mlops_trainers.trainers.vle.variable_length_embedding import VariableLengthEmbedding


def _np(x: object) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x))


def _model(variant: str = "vanilla", **kwargs: Any) -> VariableLengthEmbedding:
    keras.utils.set_random_seed(0)
    return VariableLengthEmbedding(
        1, max_tokens=3, variant=variant, filters=8, downsample=1, **kwargs
    )


def _images(n: int = 2, size: int = 16) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (n, size, size, 1)).astype(np.float32)


def test_conv_lstm_cell_carries_its_state() -> None:
    cell = ConvLSTMCell(4, name="cell")
    rng = np.random.default_rng(1)
    x1, x2, other = (rng.normal(size=(1, 6, 6, 3)).astype(np.float32) for _ in range(3))
    state = cell.initial_state(ops.convert_to_tensor(x1))
    _, state = cell(x1, state)
    h2, _ = cell(x2, state)
    _, state_b = cell(other, cell.initial_state(ops.convert_to_tensor(x1)))
    h2_b, _ = cell(x2, state_b)
    # The same second input, a different first one: the second output differs.
    assert np.abs(_np(h2) - _np(h2_b)).max() > 1e-4
    # The forget gate's bias starts at 1, the others at 0.
    bias = _np(cell.gates.bias).reshape(4, 4)
    np.testing.assert_array_equal(bias, [[0] * 4, [1] * 4, [0] * 4, [0] * 4])
    assert ConvLSTMCell.from_config(cell.get_config()).get_config() == cell.get_config()


@pytest.mark.parametrize("variant", ["vanilla", "mask"])
def test_steps_past_t_change_nothing_and_tokens_alone_rebuild_the_image(variant: str) -> None:
    model = _model(variant)
    x = _images()
    out = model({"image": x, "tokens": np.array([2, 3], np.int32)})
    steps, rec = _np(out["steps"]), _np(out["reconstruction"])
    np.testing.assert_array_equal(_np(out["active"]), [[1, 1, 0], [1, 1, 1]])
    np.testing.assert_array_equal(steps[0, 2], steps[0, 1])  # example 0 asked for 2 tokens
    assert np.abs(steps[1, 2] - steps[1, 1]).max() > 1e-6
    np.testing.assert_array_equal(rec, steps[np.arange(2), [1, 2]])
    # A receiver with the tokens (and T, t) rebuilds the reconstruction: sum of the decoded steps.
    tokens = _np(out["tokens"])
    rebuilt = np.zeros_like(x)
    for t in range(3):
        cond = model.condition(t, 2)
        decoded = model.decoder([ops.convert_to_tensor(tokens[:, t]), cond])
        if variant == "mask":
            r, logit = (_np(d) for d in decoded)
            r = r * 0.5 * (1 + np.tanh(model.mask_scale * logit))
        else:
            r = _np(decoded[0] if isinstance(decoded, list | tuple) else decoded)
        rebuilt += (t < np.array([2, 3]))[:, None, None, None] * r
    np.testing.assert_allclose(rebuilt, rec, atol=1e-5)
    assert tokens.shape == (2, 3, 4, 4, 8)
    # The first tokens do not depend on how many were requested: a prefix is an embedding.
    fewer = model({"image": x, "tokens": np.array([1, 1], np.int32)})
    np.testing.assert_allclose(_np(fewer["tokens"])[:, 0], tokens[:, 0], atol=1e-6)
    np.testing.assert_allclose(_np(fewer["reconstruction"]), steps[:, 0], atol=1e-6)


def test_config_round_trips_and_a_saved_model_reloads(tmp_path: Path) -> None:
    model = _model("mask", mask_scale=3.0)
    again = VariableLengthEmbedding.from_config(model.get_config())
    assert again.get_config() == model.get_config()
    plain = PlainAutoencoder(1, filters=8, downsample=1, latent_channels=16)
    assert PlainAutoencoder.from_config(plain.get_config()).get_config() == plain.get_config()
    assert [b.latent_channels for b in model.baselines] == [8, 16, 24]  # k tokens' worth
    x = {"image": _images(), "tokens": np.array([1, 3], np.int32)}
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.optimizer.build(model.trainable_variables)
    model.save(tmp_path / "vle.keras")
    loaded = keras.saving.load_model(tmp_path / "vle.keras")
    assert isinstance(loaded, VariableLengthEmbedding)
    np.testing.assert_allclose(
        _np(loaded(x)["reconstruction"]), _np(model(x)["reconstruction"]), atol=1e-6
    )
    with pytest.raises(ValueError, match="variant"):
        VariableLengthEmbedding(1, variant="other")


def test_mask_difference_loss_punishes_repeated_masks() -> None:
    model = _model("mask")
    ones = np.ones((1, 3, 4, 4, 1), np.float32)
    active = np.ones((1, 3), np.float32)
    # Every mask the same (the collapse): d = 0, exp(-0) = 1 for both terms.
    assert float(_np(model.mask_difference_loss(ones, active))) == pytest.approx(2.0)
    assert float(_np(model.mask_difference_loss(0 * ones, active))) == pytest.approx(2.0)
    # Disjoint quarters: d = 2 quarters' worth = 0.5 against the previous one.
    quarters = np.zeros_like(ones)
    quarters[0, 0, :2, :2] = quarters[0, 1, :2, 2:] = quarters[0, 2, 2:, :2] = 1
    expected = (np.exp(-0.5) + np.exp(-0.5) + np.exp(-0.5) + np.exp(-0.75)) / 2
    assert float(_np(model.mask_difference_loss(quarters, active))) == pytest.approx(expected)
    # Inactive steps do not count.
    assert float(
        _np(model.mask_difference_loss(quarters, np.array([[1, 1, 0]], np.float32)))
    ) == pytest.approx(2 * np.exp(-0.5))


def test_mask_statistics() -> None:
    masks = np.zeros((2, 3, 2, 2, 1), np.float32)
    masks[:, 0, 0, :] = 1  # top half
    masks[:, 1] = 1  # everything: half of it on the top half already drawn
    masks[0, 2] = 0  # empty
    masks[1, 2, 1, 1] = 1
    stats = mask_statistics(masks)
    assert stats["mask_area_t1"] == pytest.approx(0.5)
    assert stats["mask_area_t2"] == pytest.approx(1.0)
    assert stats["mask_overlap_t2"] == pytest.approx(0.5)
    assert stats["mask_overlap_t3"] == pytest.approx(1.0)
    assert stats["mask_area_t3"] == pytest.approx(0.125)
    assert stats["mask_empty_share"] == pytest.approx(1 / 6)
    assert stats["mask_full_share"] == pytest.approx(2 / 6)


def test_tokens_are_drawn_per_step_and_repeat_on_resume() -> None:
    class Images:
        steps_per_epoch = 40

        def batches(self, epoch: int, start_step: int = 0) -> Any:
            for _ in range(start_step, self.steps_per_epoch):
                yield {"image": np.zeros((2, 4, 4, 1), np.float32)}

    data = RequestedTokens(Images(), max_tokens=4, seed=3)  # type: ignore[arg-type]
    drawn = [int(b["tokens"][0]) for b in data.batches(1)]
    assert set(drawn) == {1, 2, 3, 4}
    assert [int(b["tokens"][0]) for b in data.batches(1, 25)] == drawn[25:]
    assert drawn != [int(b["tokens"][0]) for b in data.batches(2)]
    first = next(iter(data.batches(0)))
    assert float(first["image"].min()) == -1.0  # [0, 1] images scaled to [-1, 1]


def test_canvases_know_their_objects() -> None:
    rng = np.random.default_rng(0)
    articles = (rng.random((20, 28, 28)) * 255).astype(np.uint8)
    canvases, masks, labels = compose_canvases(articles, np.arange(20) % 10, 50, size=32)
    assert canvases.shape == (50, 32, 32) and masks.shape == (50, MAX_OBJECTS, 32, 32)
    present = labels >= 0
    assert set(present.sum(1)) <= {1, 2, 3} and len(set(present.sum(1))) > 1
    assert not masks[~present].any()
    # Visible masks never overlap, and cover exactly the inked pixels.
    assert masks.sum(1).max() == 1
    np.testing.assert_array_equal(masks.any(1), canvases > 40)


@pytest.mark.slow
def test_mse_falls_with_tokens(tmp_path: Path, make_run_file: Any) -> None:
    # 120 steps on the canvases, through the runtime: the held-out MSE after k tokens falls
    # with k (with an embedding of the total T instead of the tokens so far, it had not after
    # 300 steps).
    config = make_run_file(
        str(tmp_path / "runs"),
        "vle-g1-0123abcd",
        "vle",
        {
            "image_size": 32,
            "channels": 1,
            "batch_size": 16,
            "learning_rate": 2e-3,
            "max_tokens": 3,
            "variant": "vanilla",
            "filters": 16,
            "downsample": 2,
            "latent_channels": 8,
            "baseline": True,
            "validation_images": 64,
            "steps_per_epoch": 60,
            "previews": 3,
        },
        data="sample://fashion-mnist-canvases",
        epochs=2,
        checkpoint_every=100,
    )
    assert run(RunConfig.model_validate(config)) == 0
    out = Path(config["output"])
    rows = list(csv.DictReader(io.StringIO((out / "metrics.csv").read_text())))
    final = json.loads((out / "run.json").read_text())["final_metrics"]
    curve = [final[f"val_mse_k{k}"] for k in (1, 2, 3)]
    baseline = [final[f"baseline_mse_k{k}"] for k in (1, 2, 3)]
    print("MSE after k tokens", curve, "plain autoencoders", baseline)
    assert curve[0] > curve[1] > curve[2]
    assert float(rows[-1]["val_mse_k3"]) < float(rows[0]["val_mse_k3"])
    # Being able to stop after any k costs little against a plain autoencoder that always
    # gets the whole budget (measured while writing this: within 15 % after 100 and 200 steps).
    assert curve[2] < 1.5 * baseline[2]
    for epoch in (1, 2):
        assert (out / "reconstructions" / f"epoch-{epoch:04d}.png").stat().st_size > 0
