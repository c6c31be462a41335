"""U-Net, its BCE + Dice loss and its masked metrics: config round trips, padding, no NaN."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops
from mlops_trainers.trainers.segmenter.bce_dice_loss import BCEDiceLoss
from mlops_trainers.trainers.segmenter.masked_segmentation_metric import MaskedSegmentationMetric
from mlops_trainers.trainers.segmenter.unet import UNet


def _np(x: object) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x))


def _target(mask: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    valid = np.ones_like(mask) if valid is None else valid
    return np.stack([mask, valid], axis=-1).astype(np.float32)


def test_unet_shapes_and_config_round_trip(tmp_path: Path) -> None:
    model = UNet(bands=3, base_filters=4, depth=2, name="u")
    x = np.random.default_rng(0).random((2, 24, 40, 3)).astype(np.float32)
    y = _np(model(x))
    assert y.shape == (2, 24, 40, 1) and (y >= 0).all() and (y <= 1).all()
    clone = UNet.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    assert clone.count_params() == model.count_params()
    model.save(tmp_path / "u.keras")
    loaded = keras.saving.load_model(tmp_path / "u.keras")
    assert isinstance(loaded, UNet)
    np.testing.assert_allclose(_np(loaded(x)), y, atol=1e-6)


def test_predict_scene_covers_any_size() -> None:
    model = UNet(bands=2, base_filters=4, depth=2)
    scene = np.random.default_rng(1).random((37, 50, 2)).astype(np.float32)
    prob = model.predict_scene(scene, tile_size=16)
    assert prob.shape == (37, 50)
    with pytest.raises(ValueError, match="multiple of 2 \\*\\* depth"):
        model.predict_scene(scene, tile_size=10)


def test_loss_and_metrics_on_empty_and_full_tiles_are_finite() -> None:
    loss = BCEDiceLoss(pos_weight=3.0, dice_weight=1.0)
    zeros = np.zeros((2, 8, 8), np.float32)
    ones = np.ones((2, 8, 8), np.float32)
    for truth in (zeros, ones):
        for pred in (zeros, ones, np.full_like(zeros, 0.5)):
            value = float(_np(loss(_target(truth), pred[..., None])))
            assert np.isfinite(value)
        # A perfect answer on an all-empty or all-full tile costs (almost) nothing.
        assert float(_np(loss(_target(truth), truth[..., None]))) < 1e-3
    # All padding: nothing to score, still no NaN.
    assert float(_np(loss(_target(ones, zeros), zeros[..., None]))) == pytest.approx(0.0, abs=1e-6)
    for kind in ("iou", "dice", "precision", "recall"):
        metric = MaskedSegmentationMetric(kind)
        metric.update_state(_target(zeros), zeros[..., None])
        assert float(_np(metric.result())) == 1.0  # nothing to find, nothing found


def test_padding_changes_neither_loss_nor_metrics() -> None:
    rng = np.random.default_rng(2)
    truth = (rng.random((2, 16, 16)) > 0.5).astype(np.float32)
    pred = rng.random((2, 16, 16, 1)).astype(np.float32)
    valid = np.ones_like(truth)
    valid[:, 10:] = 0
    other = pred.copy()
    other[:, 10:] = 1.0 - other[:, 10:]  # garbage in the padding only
    loss = BCEDiceLoss(pos_weight=2.0)
    np.testing.assert_allclose(
        _np(loss(_target(truth, valid), pred)), _np(loss(_target(truth, valid), other)), rtol=1e-6
    )
    for kind in ("iou", "dice", "precision", "recall"):
        a, b = MaskedSegmentationMetric(kind), MaskedSegmentationMetric(kind)
        a.update_state(_target(truth, valid), pred)
        b.update_state(_target(truth, valid), other)
        assert float(_np(a.result())) == float(_np(b.result()))


def test_metric_values_are_exact_counts() -> None:
    truth = np.array([[1, 1, 0, 0]], np.float32)[None]  # (1, 1, 4)
    pred = np.array([[0.9, 0.2, 0.7, 0.1]], np.float32)[None, ..., None]
    # tp=1, fp=1, fn=1
    expected = {"iou": 1 / 3, "dice": 2 / 4, "precision": 1 / 2, "recall": 1 / 2}
    for kind, value in expected.items():
        metric = MaskedSegmentationMetric(kind, threshold=0.5)
        metric.update_state(_target(truth), pred)
        metric.update_state(_target(np.zeros_like(truth)), np.zeros_like(pred))  # adds nothing
        assert float(_np(metric.result())) == pytest.approx(value)
        clone = MaskedSegmentationMetric.from_config(metric.get_config())
        assert clone.get_config() == metric.get_config()
        metric.reset_state()
        assert float(_np(metric.result())) == 1.0
    with pytest.raises(ValueError, match="kind"):
        MaskedSegmentationMetric("accuracy")


def test_pos_weight_raises_the_cost_of_missed_clouds() -> None:
    truth = np.ones((1, 4, 4), np.float32)
    miss = np.full((1, 4, 4, 1), 0.1, np.float32)
    plain = BCEDiceLoss(pos_weight=1.0, dice_weight=0.0)
    heavy = BCEDiceLoss(pos_weight=5.0, dice_weight=0.0)
    assert float(_np(heavy(_target(truth), miss))) == pytest.approx(
        5 * float(_np(plain(_target(truth), miss))), rel=1e-5
    )
    assert BCEDiceLoss.from_config(heavy.get_config()).get_config() == heavy.get_config()


def test_loss_falls_on_generated_tiles() -> None:
    rng = np.random.default_rng(3)
    x = rng.random((32, 16, 16, 2)).astype(np.float32) * 0.3
    mask = (rng.random((32, 16, 16)) > 0.6).astype(np.float32)
    x[..., 0] += mask * 0.6  # bright where cloudy
    y = _target(mask)
    keras.utils.set_random_seed(0)
    model = UNet(bands=2, base_filters=4, depth=1)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=BCEDiceLoss(),
        metrics=[MaskedSegmentationMetric("iou")],
    )
    first = model.train_on_batch(x, y, return_dict=True)
    for _ in range(30):
        last = model.train_on_batch(x, y, return_dict=True)
    assert last["loss"] < 0.5 * first["loss"]
    assert last["iou"] > 0.8


# === Training as the seed tuned it (issue 14): BCE on logits, batch Dice, pos_weight ===


def test_bce_on_logits_equals_bce_on_probabilities_and_keeps_a_gradient() -> None:
    import tensorflow as tf

    rng = np.random.default_rng(4)
    truth = (rng.random((2, 8, 8)) > 0.6).astype(np.float32)
    logits = rng.normal(0, 2, (2, 8, 8, 1)).astype(np.float32)
    prob = 1 / (1 + np.exp(-logits))
    for dice in ("tile", "batch"):
        on_logits = BCEDiceLoss(pos_weight=3.0, from_logits=True, dice=dice)
        on_probs = BCEDiceLoss(pos_weight=3.0, dice=dice)
        np.testing.assert_allclose(
            _np(on_logits(_target(truth), logits)), _np(on_probs(_target(truth), prob)), rtol=1e-4
        )
    # A confidently wrong pixel: the clipped probability has no gradient left, the logit has.
    x = tf.Variable(np.full((1, 1, 1, 1), -30.0, np.float32))
    one = _target(np.ones((1, 1, 1), np.float32))
    for loss, expect_gradient in (
        (BCEDiceLoss(dice_weight=0.0, from_logits=True), True),
        (BCEDiceLoss(dice_weight=0.0), False),
    ):
        with tf.GradientTape() as tape:
            value = loss(one, x if loss.from_logits else tf.sigmoid(x))
        gradient = float(tape.gradient(value, x).numpy().ravel()[0])
        assert np.isfinite(float(value))
        assert (abs(gradient) > 0.5) is expect_gradient, (loss.from_logits, gradient)


def test_batch_dice_is_one_ratio_over_the_batch() -> None:
    truth = np.zeros((2, 4, 4), np.float32)
    truth[1, :2] = 1.0  # tile 0 clear, tile 1 half cloud
    pred = np.zeros((2, 4, 4, 1), np.float32)
    pred[0, 0, 0] = 1.0  # one false pixel on the clear tile
    pred[1, :2] = 1.0  # tile 1 exactly right
    tile = float(_np(BCEDiceLoss(dice_weight=1.0, dice="tile")(_target(truth), pred)))
    batch = float(_np(BCEDiceLoss(dice_weight=1.0, dice="batch")(_target(truth), pred)))
    bce = float(_np(BCEDiceLoss(dice_weight=0.0)(_target(truth), pred)))
    # tile: mean of (1 - 1/2) and (1 - 17/17); batch: 1 - (2*8 + 1) / (9 + 8 + 1).
    assert tile - bce == pytest.approx(0.5 * (1 - 1 / 2), rel=1e-4)
    assert batch - bce == pytest.approx(1 - 17 / 18, rel=1e-4)
    assert (
        BCEDiceLoss.from_config(BCEDiceLoss(dice="batch", from_logits=True).get_config()).dice
        == "batch"
    )
    with pytest.raises(ValueError, match="dice"):
        BCEDiceLoss(dice="image")


def test_logits_model_shares_the_layers_and_the_sigmoid_is_after() -> None:
    model = UNet(bands=2, base_filters=4, depth=1)
    x = np.random.default_rng(5).random((1, 8, 8, 2)).astype(np.float32)
    logits = _np(model.logits_model()(x))
    np.testing.assert_allclose(_np(model(x)), 1 / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-6)
    assert {w.path for w in model.logits_model().weights} <= {w.path for w in model.weights}
