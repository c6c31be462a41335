"""ONNX export of the U-Net: ONNX Runtime matches Keras on tiles and on whole scenes.

Works with TensorFlow 2.21 + Keras 3.15 + tf2onnx 1.17.0 + onnx 1.23.2 + onnxruntime 1.32.0
(measured max |keras - onnx| = 1.2e-07 on float32 probabilities). Those packages are required,
not optional: a missing one fails here rather than skipping the check.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from mlops_trainers.onnx_export import export_onnx, load_session, main, max_abs_diff, onnx_predictor
from mlops_trainers.tiling import predict_scene
from mlops_trainers.trainers.segmenter.bce_dice_loss import BCEDiceLoss
from mlops_trainers.trainers.segmenter.unet import UNet

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[UNet, str]:
    """A U-Net trained a few steps (so BatchNorm statistics are not the identity), exported."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = UNet(bands=4, base_filters=4, depth=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=BCEDiceLoss())
    x = rng.random((8, 32, 32, 4)).astype(np.float32)
    y = np.stack([(x[..., 0] > 0.5), np.ones((8, 32, 32))], -1).astype(np.float32)
    for _ in range(3):
        model.train_on_batch(x, y)
    path = str(tmp_path_factory.mktemp("onnx") / "unet.onnx")
    export_onnx(model, path)
    return model, path


def test_onnx_matches_keras_on_tiles_of_any_size(trained: tuple[UNet, str]) -> None:
    model, path = trained
    session = load_session(path)
    assert session.get_inputs()[0].name == "scene"
    rng = np.random.default_rng(1)
    for shape in ((1, 32, 32, 4), (3, 16, 48, 4), (2, 64, 64, 4)):
        x = rng.random(shape).astype(np.float32)
        diff = max_abs_diff(model, session, x)
        print(f"{shape}: max |keras - onnx| = {diff:.2e}")
        assert diff < TOLERANCE


@pytest.mark.parametrize("overlap", [0, 8])
def test_onnx_predicts_a_whole_scene_like_keras(trained: tuple[UNet, str], overlap: int) -> None:
    model, path = trained
    scene = np.random.default_rng(2).random((50, 70, 4)).astype(np.float32)
    ours = predict_scene(onnx_predictor(load_session(path)), scene, 32, overlap=overlap)
    theirs = model.predict_scene(scene, tile_size=32, overlap=overlap)
    assert ours.shape == (50, 70)
    np.testing.assert_allclose(ours, theirs, atol=TOLERANCE)


def test_cli_exports_and_checks_a_saved_model(
    trained: tuple[UNet, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, _ = trained
    model.save(tmp_path / "unet.keras")
    assert (
        main(
            [
                str(tmp_path / "unet.keras"),
                str(tmp_path / "out" / "unet.onnx"),
                "--check-size",
                "16",
            ]
        )
        == 0
    )
    assert "max |keras - onnx|" in capsys.readouterr().out
    assert (tmp_path / "out" / "unet.onnx").stat().st_size > 1000
