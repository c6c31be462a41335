"""Issue 14, part 4: results people can look at and load.

TensorBoard scalars, images and hparams readable while a run trains; the curves PNG next to
``metrics.csv``; labelled image grids; ``model.keras`` of every kind loading with plain Keras
after one import; and ``mlops run``'s progress bar, devices line and quiet start-up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlops_trainers import storage, tensorboard
from mlops_trainers.config import RunConfig
from mlops_trainers.runtime import run
from mlops_trainers.trainers.vqvae.trainer import VQVAETrainer
from tiny_vqvae import TINY_VQVAE

ROOT = Path(__file__).resolve().parents[2]
TINY = {**TINY_VQVAE, "steps_per_epoch": 6, "reconstructions": 3}


def _events(folder: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


@pytest.mark.slow
def test_tensorboard_is_readable_while_training_and_has_images_and_hparams(
    tmp_path: Path, images: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Copy the event files after every step (30 s in production) to see them mid-epoch.
    monkeypatch.setattr(tensorboard, "UPLOAD_EVERY_S", 0.0)
    output = tmp_path / "runs" / "tb-g1-0123abcd"
    seen: dict[int, list[int]] = {}
    real_step = VQVAETrainer.train_step

    def step_and_look(
        self: VQVAETrainer, model: Any, batch: Any, *rest: Any
    ) -> Mapping[str, float]:
        logs = real_step(self, model, batch, *rest)
        # What TensorBoard pointed at the output would show right now.
        seen[len(seen)] = _steps(output / "tb", "step/loss")
        return logs

    monkeypatch.setattr(VQVAETrainer, "train_step", step_and_look)
    config = RunConfig(
        run_id=output.name,
        name="tb",
        trainer={"kind": "vqvae", "config": TINY},
        data=images,
        output_prefix=str(output.parent),
        output=str(output),
        epochs=2,
        checkpoint_every=100,
    )
    assert run(config) == 0
    # Mid-epoch 1 (no epoch had ended), the steps so far were already in the output.
    assert seen[4] == [1, 2, 3, 4], seen

    events = _events(output / "tb")
    tags = set(events.Tags()["tensors"])
    assert {"step/loss", "step/lr", "step/grad_norm", "epoch/loss", "epoch/rollbacks"} <= tags
    assert _steps(output / "tb", "epoch/loss") == [1, 2]
    assert _steps(output / "tb", "step/loss") == list(range(1, 13))
    # The epoch PNGs, as TensorBoard images (the images plugin: width, height, PNG bytes).
    image = events.Tensors("reconstructions")[-1]
    assert image.step == 2
    width, height, png = (bytes(v) for v in image.tensor_proto.string_val)
    assert png.startswith(b"\x89PNG") and int(width) > 0 and int(height) > 0
    assert events.SummaryMetadata("reconstructions").plugin_data.plugin_name == "images"
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    values = data.session_start_info.hparams
    assert values["kind"].string_value == "vqvae"
    assert values["learning_rate"].number_value == pytest.approx(2e-3)
    assert values["spike_guard.factor"].number_value == 3.0

    # The curves next to metrics.csv, and labelled reconstructions.
    from PIL import Image

    with Image.open(output / "metrics.png") as curves:
        assert curves.size[0] >= 600 and curves.size[1] >= 150
    with Image.open(output / "reconstructions" / "epoch-0002.png") as grid:
        # Labelled rows: a margin on the left wider than the images' grid alone would need.
        assert grid.size[0] > 3 * 64


def _steps(folder: Path, tag: str) -> list[int]:
    """The steps of a scalar tag (tf.summary writes TF2 scalars as tensors)."""
    if not folder.exists():
        return []
    events = _events(folder)
    if tag not in events.Tags()["tensors"]:
        return []
    return [e.step for e in events.Tensors(tag)]


def test_metric_curves_draw_one_labelled_panel_per_metric() -> None:
    from mlops_trainers.artifacts import labelled_rows, metric_curves

    rows = [
        {"epoch": str(e), "global_step": str(10 * e), "time": "t", "loss": str(1 / e), "lr": "0.1"}
        for e in range(1, 5)
    ]
    curves = metric_curves(rows, title="run")
    assert curves.ndim == 3 and curves.shape[2] == 3 and curves.dtype == np.uint8
    blank = metric_curves([], title="run")
    assert (curves != 255).sum() > (blank != 255).sum()  # lines and labels drawn
    tiles = np.random.default_rng(0).random((3, 28, 28, 1))
    figure = labelled_rows([("input", tiles), ("output", tiles)], title="t")
    assert figure.shape[0] >= 2 * 64 and figure.shape[1] >= 3 * 64  # small images enlarged


# === model.keras with plain Keras ===

LOAD_SCRIPT = textwrap.dedent(
    """
    import sys
    import keras
    import numpy as np
    if sys.argv[2] == "register":
        import mlops_trainers.saving  # noqa: F401
    model = keras.saving.load_model(sys.argv[1])
    x = np.load(sys.argv[3])
    out = model(x if x.dtype != np.int32 else x)
    out = out["reconstruction"] if isinstance(out, dict) else out
    np.save(sys.argv[4], keras.ops.convert_to_numpy(out))
    print(type(model).__name__)
    """
)


def _models() -> dict[str, tuple[Any, np.ndarray]]:
    """One built, compiled model of each kind (as the trainers build them) and an input."""
    from mlops_trainers.trainers.pixelcnn.pixelcnn import PixelCNN
    from mlops_trainers.trainers.segmenter.bce_dice_loss import BCEDiceLoss
    from mlops_trainers.trainers.segmenter.masked_segmentation_metric import (
        MaskedSegmentationMetric,
    )
    from mlops_trainers.trainers.segmenter.unet import UNet
    from mlops_trainers.trainers.tokenizer.tokenizer import Tokenizer
    from mlops_trainers.trainers.vqvae.config import VQVAEConfig
    from mlops_trainers.trainers.vqvae.trainer import build_vqvae

    rng = np.random.default_rng(0)
    vqvae = build_vqvae(VQVAEConfig(**{**TINY, "activation": "leaky_relu", "kernel_size": 3}))
    unet = UNet(bands=4, base_filters=4, depth=2)
    logits = unet.logits_model()
    logits.compile(
        optimizer="adam",
        loss=BCEDiceLoss(pos_weight=2.0, from_logits=True, dice="batch"),
        metrics=[MaskedSegmentationMetric("iou", from_logits=True)],
    )
    pixelcnn = PixelCNN(num_embeddings=8, grid_size=4, filters=8, layers=2, kernel_size=3)
    pixelcnn.compile(optimizer="adam")
    tokenizer = Tokenizer(
        channels=1, base_filters=8, channel_multipliers=(1, 2), groups=4, latent_dim=4,
        num_embeddings=8,
    )  # fmt: skip
    tokenizer.compile(optimizer="adam")
    image = rng.random((2, 16, 16, 1)).astype(np.float32)
    return {
        "vqvae": (vqvae, image),
        "segmenter": (unet, rng.random((2, 16, 16, 4)).astype(np.float32)),
        "pixelcnn": (pixelcnn, rng.integers(0, 8, (2, 4, 4)).astype(np.int32)),
        "tokenizer": (tokenizer, image),
    }


@pytest.mark.slow
def test_every_kind_loads_with_plain_keras_after_one_import(tmp_path: Path) -> None:
    import keras

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    script = tmp_path / "load.py"
    script.write_text(LOAD_SCRIPT)
    for kind, (model, x) in _models().items():
        path = tmp_path / f"{kind}.keras"
        model.save(path)
        np.save(tmp_path / f"{kind}-x.npy", x)
        out = model(x)
        expected = keras.ops.convert_to_numpy(
            out["reconstruction"] if isinstance(out, dict) else out
        )
        args = [str(path), "register", str(tmp_path / f"{kind}-x.npy"), str(tmp_path / "y.npy")]
        done = subprocess.run(
            [sys.executable, str(script), *args],
            check=False,
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-5)
        # Without the import Keras does not know our classes: the import is what makes it work.
        args[1] = "plain"
        bare = subprocess.run(
            [sys.executable, str(script), *args],
            check=False,
            env=env,
            capture_output=True,
            text=True,
        )
        assert bare.returncode != 0 and "mlops_trainers" in bare.stderr, kind


@pytest.mark.slow
def test_mlops_trainers_load_reads_a_run_folder(tmp_path: Path, images: str) -> None:
    import mlops_trainers

    output = tmp_path / "load-g1-0123abcd"
    config = RunConfig(
        run_id=output.name,
        name="load",
        trainer={"kind": "vqvae", "config": {**TINY, "steps_per_epoch": 2}},
        data=images,
        output_prefix=str(tmp_path),
        output=str(output),
        epochs=1,
        checkpoint_every=100,
    )
    assert run(config) == 0
    for url in (str(output), f"file://{output}/model.keras"):
        model = mlops_trainers.load(url)
        assert type(model).__name__ == "VQVAE" and model.image_size == 16
    with pytest.raises(FileNotFoundError, match="no model at"):
        mlops_trainers.load(str(tmp_path / "nothing-here"))
    assert storage.exists(storage.join(str(output), "model.keras"))


# === mlops run on a terminal ===

MANIFEST = """
apiVersion: mlops.dev/v1alpha1
kind: MLOps
metadata: {name: tiny}
spec:
  trainer:
    kind: vqvae
    config: {image_size: 16, channels: 1, batch_size: 8, learning_rate: 0.002, base_filters: 8,
             residual_blocks: 0, latent_dim: 4, num_embeddings: 8, steps_per_epoch: 4,
             reconstructions: 2}
  data: sample://fashion-mnist
  output: gs://bucket/runs
  epochs: 2
  checkpointEvery: 100
"""


@pytest.mark.slow
def test_mlops_run_shows_a_progress_bar_the_devices_and_no_tensorflow_noise(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "tiny.yaml"
    manifest.write_text(MANIFEST)
    mlops = str(Path(sys.executable).with_name("mlops"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "ABSL_"))}

    def mlops_run(*flags: str) -> subprocess.CompletedProcess[str]:
        out = tmp_path / f"out{len(flags)}"
        command = [mlops, "run", str(manifest), "--output", str(out), *flags]
        return subprocess.run(
            command, check=False, env=env, capture_output=True, text=True, timeout=600
        )

    done = mlops_run()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Epoch 1/2" in done.stdout and "Epoch 2/2" in done.stdout
    assert "━" in done.stdout and "4/4" in done.stdout  # Keras' Progbar, with its ETA column
    assert "devices: CPU only" in done.stderr
    noise = ("absl::InitializeLog", "cpu_feature_guard", "oneDNN", "I0000 ", "W0000 ")
    assert not [line for line in done.stderr.splitlines() if any(n in line for n in noise)]
    # Asked for: TensorFlow speaks (so the check above can fail).
    loud = mlops_run("--tf-logs", "--no-progress")
    assert loud.returncode == 0
    assert any(n in loud.stderr for n in noise), loud.stderr[:2000]
    assert "━" not in loud.stdout


def test_with_a_progress_bar_the_periodic_lines_stay_out_of_the_terminal() -> None:
    import io
    import logging

    from mlops_trainers import runtime

    stream = io.StringIO()
    logger = logging.getLogger("mlops_trainers")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        for progress in (True, False):
            runtime._setup_logging(progress=progress)
            logger.info("periodic", extra={runtime.PROGRESS_LINE: True})
            logger.info("epoch done")
        assert stream.getvalue().splitlines() == ["epoch done", "periodic", "epoch done"]
    finally:
        logger.removeHandler(handler)
