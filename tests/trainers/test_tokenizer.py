"""Cloud tokenizer: layers round-trip their configs, the codebook has no dead codes, the sky mask
shields the ground, and a model trained on webcam frames round-trips its tokens, also reloaded.

The frames come from :func:`mlops_trainers.skymask.synthetic.synthetic_webcam`: real scikit-image photographs
(grass, brick, gravel) as the ground, drifting clouds, day to night. Measured on this machine
(32x32 frames, 8x8 tokens, K=32, 300 steps): reconstruction MSE on the sky 0.53 -> 0.002, all 32
codes used in a batch, 81 % of sky tokens unchanged by encode -> decode -> encode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from keras import ops
from mlops_trainers.skymask.synthetic import synthetic_webcam
from mlops_trainers.trainers.tokenizer.codebook_quantizer import CodebookQuantizer
from mlops_trainers.trainers.tokenizer.group_norm_residual_block import GroupNormResidualBlock
from mlops_trainers.trainers.tokenizer.residual_upsample_block import ResidualUpsampleBlock
from mlops_trainers.trainers.tokenizer.tokenizer import Tokenizer
from mlops_trainers.trainers.tokenizer.trainer import token_stability

TINY: dict[str, Any] = {
    "base_filters": 8,
    "channel_multipliers": (1, 2, 2),
    "num_embeddings": 32,
    "latent_dim": 8,
    "groups": 4,
}


def _np(x: object) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x))


@pytest.fixture(scope="module")
def frames() -> tuple[np.ndarray, np.ndarray]:
    """32 frames (32x32, day to night) and the sky mask broadcast to (N, 32, 32, 1)."""
    images, sky = synthetic_webcam(frames=32, height=32, width=32, phase="cycle", seed=0)
    mask = np.broadcast_to(sky[None, ..., None], (*images.shape[:3], 1)).astype(np.float32)
    return images.astype(np.float32) / 255.0, mask.copy()


def test_layers_round_trip_their_configs() -> None:
    x = np.random.default_rng(0).random((2, 8, 8, 6)).astype(np.float32)
    for layer in (
        GroupNormResidualBlock(12, groups=4, name="res"),
        ResidualUpsampleBlock(4, groups=8, name="up"),
    ):
        y = _np(layer(x))
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
        assert _np(clone(x)).shape == y.shape
    assert _np(ResidualUpsampleBlock(4)(x)).shape == (2, 16, 16, 4)
    quantizer = CodebookQuantizer(16, 6, beta=0.5, unused_code_weight=0.2)
    assert (
        CodebookQuantizer.from_config(quantizer.get_config()).get_config() == quantizer.get_config()
    )
    model = Tokenizer(channels=3, **TINY, name="tok")
    assert Tokenizer.from_config(model.get_config()).get_config() == model.get_config()


def test_unused_codes_are_pulled_to_their_nearest_encoder_vector() -> None:
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the gradient is taken with tf.GradientTape")
    quantizer = CodebookQuantizer(3, 2, unused_code_weight=1.0)
    quantizer.build((None, 2))
    quantizer.embeddings.assign(np.array([[0.0, 0.0], [5.0, 5.0], [-4.0, 0.0]], np.float32))
    z = tf.constant([[[[0.1, 0.0], [0.2, 0.1], [1.0, 1.0]]]], tf.float32)  # all nearest to code 0
    with tf.GradientTape() as tape:
        out = quantizer(z)
        loss = out["vq_loss"]
    grad = tape.gradient(loss, quantizer.embeddings).numpy()
    assert float(out["codes_used"]) == 1.0 and float(out["unused_loss"]) > 0
    # Gradient descent moves code 1 towards (1, 1) and code 2 towards (0.1, 0): its nearest vectors.
    step = quantizer.embeddings.numpy() - 0.1 * grad
    assert np.linalg.norm(step[1] - [1.0, 1.0]) < np.linalg.norm([4.0, 4.0])
    assert np.linalg.norm(step[2] - [0.1, 0.0]) < 4.1
    # Latents with no sky (weight 0) are invisible to the codebook.
    masked = quantizer(z, weight=tf.constant([[[1.0, 1.0, 0.0]]]))
    assert float(masked["codes_used"]) == 1.0
    assert float(masked["perplexity"]) == pytest.approx(1.0)


def test_ground_pixels_change_neither_tokens_nor_loss(
    frames: tuple[np.ndarray, np.ndarray],
) -> None:
    images, mask = frames
    model = Tokenizer(channels=3, **TINY)
    other = images[:4] * mask[:4] + (1 - mask[:4]) * np.random.default_rng(0).random(
        images[:4].shape
    )
    other = other.astype(np.float32)
    np.testing.assert_array_equal(
        _np(model.encode(images[:4], mask[:4])), _np(model.encode(other, mask[:4]))
    )
    a = {"image": images[:4], "mask": mask[:4]}
    b = {"image": other, "mask": mask[:4]}
    assert float(_np(model.compute_loss(a, y_pred=model(a)))) == pytest.approx(
        float(_np(model.compute_loss(b, y_pred=model(b)))), rel=1e-5
    )
    with pytest.raises(ValueError, match="multiples of 4"):
        model.encode(np.zeros((1, 30, 32, 3), np.float32))


@pytest.mark.slow
def test_trained_tokenizer_round_trips_tokens_and_reloads(
    frames: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    images, mask = frames
    keras.utils.set_random_seed(0)
    model = Tokenizer(channels=3, **TINY)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    rng = np.random.default_rng(0)
    history = []
    for _ in range(300):
        pick = rng.choice(len(images), 8)
        history.append(
            model.train_on_batch({"image": images[pick], "mask": mask[pick]}, return_dict=True)
        )
    first, last = history[0], history[-1]
    print(f"first {first}\nlast {last}")
    assert last["reconstruction_error"] < 0.05 * first["reconstruction_error"]
    assert last["loss"] < 0.05 * first["loss"]
    assert last["codes_used"] >= 0.75 * TINY["num_embeddings"]  # no dead codes

    stability, used = token_stability(model, images, mask)
    print(f"token stability {stability:.3f}, {used} codes")
    assert stability >= 0.6  # measured 0.81
    assert used >= 0.75 * TINY["num_embeddings"]

    codes = _np(model.encode(images, mask))
    assert codes.shape == (32, 8, 8) and codes.dtype == np.int32
    decoded = _np(model.decode(codes))
    assert decoded.shape == images.shape and decoded.min() >= 0 and decoded.max() <= 1
    model.save(tmp_path / "tokenizer.keras")
    loaded = keras.saving.load_model(tmp_path / "tokenizer.keras")
    assert isinstance(loaded, Tokenizer)
    np.testing.assert_array_equal(_np(loaded.encode(images, mask)), codes)
    np.testing.assert_allclose(_np(loaded.decode(codes)), decoded, atol=1e-6)


# === The trainer, through the shared runtime ===


def _write_camera(folder: Path, seed: int, phase: str) -> np.ndarray:
    """A folder of 16 frames (48x64, real textures as the ground); returns the known sky."""
    from PIL import Image

    frames_, sky = synthetic_webcam(frames=16, height=48, width=64, phase=phase, seed=seed)
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames_):
        Image.fromarray(frame).save(folder / f"frame-{i:04d}.png")
    return sky


def test_cameras_are_found_and_a_camera_folder_may_hold_its_own_mask(tmp_path: Path) -> None:
    from mlops_trainers.skymask.frames import MASK_NAME, mask_png
    from mlops_trainers.trainers.tokenizer.config import SkyMaskConfig, TokenizerConfig
    from mlops_trainers.trainers.tokenizer.trainer import camera_sky, find_cameras

    sky_a = _write_camera(tmp_path / "cam-a", seed=0, phase="day")
    _write_camera(tmp_path / "cam-b", seed=1, phase="night")
    own = np.zeros_like(sky_a)
    own[:10] = True
    (tmp_path / "cam-b" / MASK_NAME).write_bytes(mask_png(own))
    cameras = find_cameras(str(tmp_path))
    assert [c.name for c in cameras] == ["cam-a", "cam-b"]
    assert all(len(c.frames) == 16 for c in cameras)  # skymask.png is not a frame
    assert find_cameras(str(tmp_path / "cam-a"))[0].frames == cameras[0].frames
    # Small frames: the default clean-up sizes are for webcam-sized frames.
    config = TokenizerConfig(sky_mask=SkyMaskConfig(min_hole=16, min_island=16, closing=2))
    computed = camera_sky(cameras[0], config)
    assert (computed & sky_a).sum() / (computed | sky_a).sum() >= 0.9
    np.testing.assert_array_equal(camera_sky(cameras[1], config), own)
    off = TokenizerConfig(sky_mask=SkyMaskConfig(enabled=False))
    assert camera_sky(cameras[0], off).all()


@pytest.mark.slow
def test_tokenizer_trains_through_the_runtime_and_saves_its_token_api(tmp_path: Path) -> None:
    import csv
    import io
    import json

    from mlops_trainers.config import RunConfig
    from mlops_trainers.runtime import run
    from mlops_trainers.trainers.tokenizer.config import SkyMaskConfig, TokenizerConfig

    _write_camera(tmp_path / "data" / "cam-a", seed=0, phase="cycle")
    _write_camera(tmp_path / "data" / "cam-b", seed=1, phase="day")
    config = TokenizerConfig(
        image_size=32,
        batch_size=8,
        learning_rate=3e-3,
        **TINY,
        sky_mask=SkyMaskConfig(min_hole=16, min_island=16, closing=2),
        steps_per_epoch=8,
        reconstructions=4,
    )
    output = tmp_path / "runs" / "tok-1"
    run_config = RunConfig(
        run_id="tok-1",
        name="tok",
        trainer={"kind": "tokenizer", "config": config},
        data=str(tmp_path / "data"),
        output_prefix=str(tmp_path / "runs"),
        output=str(output),
        epochs=2,
        checkpoint_every=100,
    )
    assert run(run_config) == 0

    rows = list(csv.DictReader(io.StringIO((output / "metrics.csv").read_text())))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["loss"]) < float(rows[0]["loss"])
    assert float(rows[1]["reconstruction_error"]) < float(rows[0]["reconstruction_error"])
    record = json.loads((output / "run.json").read_text())
    assert record["state"] == "succeeded"
    assert record["inputs"]["cameras"] == {"cam-a": 16, "cam-b": 16}
    for key in ("reconstruction_error", "perplexity", "codes_used", "token_stability"):
        assert key in record["final_metrics"], key
    assert (output / "reconstructions" / "epoch-0002.png").exists()
    assert (output / "skymask" / "cam-a.png").exists() and (
        output / "skymask" / "cam-b.png"
    ).exists()

    # The saved model is the tokenizer with its encode/decode API: images <-> token grids.
    model = keras.saving.load_model(output / "model.keras")
    assert isinstance(model, Tokenizer)
    images, _ = synthetic_webcam(frames=4, height=32, width=32, phase="day", seed=3)
    x = images.astype(np.float32) / 255.0
    codes = _np(model.encode(x))
    assert codes.shape == (4, 8, 8) and codes.min() >= 0 and codes.max() < TINY["num_embeddings"]
    decoded = _np(model.decode(codes))
    assert decoded.shape == x.shape
    # Running it again finds the finished run's checkpoint and trains no further.
    assert run(run_config) == 0
    assert json.loads((output / "run.json").read_text())["global_step"] == 16
