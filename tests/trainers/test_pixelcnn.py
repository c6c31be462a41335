"""The PixelCNN prior: causal in raster order, compiled sampling that follows what it learnt,
config/save round trips, and the trainer on the codes of a VQ-VAE run (``sample://fashion-mnist``)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from keras import ops
from mlops_trainers.config import RunConfig
from mlops_trainers.data import list_images
from mlops_trainers.runtime import run
from mlops_trainers.trainers.pixelcnn.pixelcnn import PixelCNN


def _model(k: int = 8, size: int = 6) -> PixelCNN:
    keras.utils.set_random_seed(0)
    return PixelCNN(k, size, filters=16, layers=3, kernel_size=3)


def test_logits_depend_only_on_earlier_codes() -> None:
    model = _model(k=8, size=6)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 8, (1, 6, 6)).astype("int32")
    base = ops.convert_to_numpy(model(codes)).reshape(36, 8)
    for t in range(36):
        changed = codes.copy()
        i, j = divmod(t, 6)
        changed[0, i, j] = (changed[0, i, j] + 3) % 8
        logits = ops.convert_to_numpy(model(changed)).reshape(36, 8)
        moved = np.abs(logits - base).max(-1) > 1e-6
        assert not moved[: t + 1].any(), (
            f"position {t} leaks into positions {np.flatnonzero(moved[: t + 1])}"
        )
        if t == 0:
            assert moved[1:].any()  # and later positions do see it


def test_config_round_trip_and_reload(tmp_path: Path) -> None:
    model = _model()
    rebuilt = PixelCNN.from_config(model.get_config())
    assert rebuilt.get_config() == model.get_config()
    codes = np.random.default_rng(1).integers(0, 8, (2, 6, 6)).astype("int32")
    path = tmp_path / "prior.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, PixelCNN)
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded(codes)), ops.convert_to_numpy(model(codes)), atol=1e-6
    )


def test_sampling_is_one_compiled_loop_and_follows_the_model() -> None:
    tf = pytest.importorskip("tensorflow")
    model = _model(k=8, size=6)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    # A distribution a prior can learn exactly: every grid is a vertical stripe pattern
    # (column j holds code j % 4 + 2), so each code follows from the one above it.
    grid = np.tile((np.arange(6) % 4 + 2)[None, :], (6, 1)).astype("int32")
    batch = {"codes": np.repeat(grid[None], 16, 0), "valid": np.ones((16, 6, 6), "float32")}
    first = model.train_on_batch(batch, return_dict=True)["bits_per_code"]
    for _ in range(60):
        logs = model.train_on_batch(batch, return_dict=True)
    assert logs["bits_per_code"] < 0.2 * first
    samples = ops.convert_to_numpy(model.sample(8, temperature=1.0, seed=3))
    assert samples.shape == (8, 6, 6)
    assert samples.dtype == np.int32
    assert (samples == grid[None]).mean() > 0.9
    again = ops.convert_to_numpy(model.sample(8, temperature=1.0, seed=3))
    np.testing.assert_array_equal(samples, again)  # the seed fixes the draws
    # One traced function for every call: not a predict() per position.
    assert isinstance(model._sampler, tf.types.experimental.PolymorphicFunction)
    assert model._sampler.experimental_get_tracing_count() == 1
    model.sample(4, temperature=0.5, seed=4)
    assert model._sampler.experimental_get_tracing_count() <= 2  # a new batch size at most


@pytest.mark.parametrize(("k", "size", "kernel"), [(8, 6, 3), (16, 7, 5)])
def test_row_sampler_draws_what_a_forward_per_position_draws(
    k: int, size: int, kernel: int
) -> None:
    """The sampler recomputes only the row being drawn; with the same noise it must draw the
    very codes a whole-grid forward per position draws (random weights: every logit matters)."""
    keras.utils.set_random_seed(1)
    model = PixelCNN(k, size, filters=16, layers=4, kernel_size=kernel)
    for seed, temperature in ((0, 1.0), (5, 0.7)):
        fast = ops.convert_to_numpy(model.sample(6, temperature, seed=seed))
        full = ops.convert_to_numpy(model.sample_full(6, temperature, seed=seed))
        np.testing.assert_array_equal(fast, full)
        assert len(np.unique(fast)) > 1, "a degenerate draw would match anything"


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_row_sampler_under_mixed_precision_draws_what_a_forward_per_position_draws(
    policy: str,
) -> None:
    """The compiled (XLA) sampler and the whole-grid reference both run the layers in half
    precision and draw in float32: the same codes, bar an argmax that a rounding could flip."""
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(1)
        model = PixelCNN(16, 7, filters=16, layers=4, kernel_size=5)
        fast = ops.convert_to_numpy(model.sample(4, 1.0, seed=0))
        full = ops.convert_to_numpy(model.sample_full(4, 1.0, seed=0))
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert fast.dtype == np.int32 and fast.shape == (4, 7, 7)
    assert (fast == full).mean() > 0.95
    assert len(np.unique(fast)) > 1


@pytest.mark.slow
def test_prior_trains_on_the_codes_of_a_vqvae_run(tmp_path: Path, make_run_file: Any) -> None:
    prefix = str(tmp_path / "runs")
    files = list_images("sample://fashion-mnist")[:512]
    listing = tmp_path / "fashion.txt"
    listing.write_text("\n".join(files) + "\n")  # a file list: the other data source kind
    vqvae = make_run_file(
        prefix,
        "fashion-vq-g1-0123abcd",
        "vqvae",
        {
            "image_size": 28,
            "channels": 1,
            "batch_size": 16,
            "learning_rate": 3e-3,
            "base_filters": 8,
            "downsample": 2,  # 28 -> 7x7 codes
            "residual_blocks": 1,
            "latent_dim": 4,
            "num_embeddings": 16,
            "steps_per_epoch": 20,
            "reconstructions": 4,
        },
        data=str(listing),
        epochs=1,
        checkpoint_every=100,
        name="fashion-vq",
    )
    assert run(RunConfig.model_validate(vqvae)) == 0
    prior = make_run_file(
        prefix,
        "fashion-prior-g1-0123abcd",
        "pixelcnn",
        {
            "vqvae": "fashion-vq",
            "batch_size": 16,
            "learning_rate": 3e-3,
            "filters": 16,
            "layers": 3,
            "kernel_size": 3,
            "steps_per_epoch": 15,
            "samples": 4,
        },
        data=str(listing),
        epochs=2,
        checkpoint_every=10,
        name="fashion-prior",
    )
    assert run(RunConfig.model_validate(prior)) == 0
    out = Path(prior["output"])
    rows = list(csv.DictReader(io.StringIO((out / "metrics.csv").read_text())))
    bits = [float(r["bits_per_code"]) for r in rows]
    assert bits[-1] < bits[0]
    assert bits[-1] < math.log2(16)  # better than a uniform prior over the codebook
    for epoch in (1, 2):
        assert (out / "samples" / f"epoch-{epoch:04d}.png").stat().st_size > 0
    record = json.loads((out / "run.json").read_text())
    assert record["inputs"]["vqvae"]["run_id"] == "fashion-vq-g1-0123abcd"
    assert record["inputs"]["vqvae"]["checkpoint"].endswith("step-0000000020")
    assert record["final_metrics"]["uniform_bits_per_code"] == pytest.approx(4.0)


def test_a_prior_refuses_a_parent_that_makes_no_codes(tmp_path: Path) -> None:
    from mlops_trainers.checkpoints import CheckpointInfo
    from mlops_trainers.code_grids import load_code_source
    from mlops_trainers.errors import ConfigError

    segmenter = CheckpointInfo(
        "file:///runs/seg/checkpoints/step-0000000010", {"kind": "segmenter"}
    )
    with pytest.raises(ConfigError, match="segmenter checkpoint; a prior reads the codes"):
        load_code_source(segmenter, tmp_path)


@pytest.mark.slow
def test_prior_trains_on_the_codes_of_a_tokenizer_run(tmp_path: Path, make_run_file: Any) -> None:
    prefix = str(tmp_path / "runs")
    tokenizer = make_run_file(
        prefix,
        "sky-tok-g1-0123abcd",
        "tokenizer",
        {
            "image_size": 32,
            "channels": 3,
            "batch_size": 8,
            "learning_rate": 3e-3,
            "base_filters": 8,
            "channel_multipliers": [1, 2, 2],  # 32 px -> 8x8 tokens
            "groups": 4,
            "latent_dim": 8,
            "num_embeddings": 32,
            "steps_per_epoch": 10,
            "reconstructions": 0,
        },
        data="sample://webcam",
        epochs=1,
        checkpoint_every=100,
        name="sky-tok",
    )
    assert run(RunConfig.model_validate(tokenizer)) == 0
    prior = make_run_file(
        prefix,
        "sky-prior-g1-0123abcd",
        "pixelcnn",
        {
            "vqvae": "sky-tok",  # the field names the parent, a tokenizer run here
            "batch_size": 16,
            "learning_rate": 3e-3,
            "filters": 16,
            "layers": 3,
            "kernel_size": 3,
            "steps_per_epoch": 15,
            "samples": 4,
        },
        data="sample://webcam",
        epochs=1,
        checkpoint_every=100,
        name="sky-prior",
    )
    assert run(RunConfig.model_validate(prior)) == 0
    out = Path(prior["output"])
    record = json.loads((out / "run.json").read_text())
    assert record["inputs"]["vqvae"]["kind"] == "tokenizer"
    assert record["inputs"]["data"]["images"] == 64
    final = record["final_metrics"]
    assert final["bits_per_code"] < math.log2(32)
    # Sky codes only: the ground's codes are constant and would flatter the prior.
    assert final["bits_per_valid_code"] < math.log2(32)
    assert (out / "samples" / "epoch-0001.png").stat().st_size > 0


@pytest.mark.parametrize("stack", ["vertical", "horizontal", "full"])
@pytest.mark.parametrize("mask_type", ["A", "B"])
@pytest.mark.parametrize("kernel", [(3, 3), (5, 5), (1, 5), (1, 3), (1, 1), (3, 5)])
def test_masked_conv_on_its_nonzero_taps_equals_the_masked_same_conv(
    stack: str, mask_type: str, kernel: tuple[int, int]
) -> None:
    """The convolution computed on the cropped kernel (the zero taps skipped) gives what the
    full masked kernel with "same" padding gives, for every mask."""
    from mlops_trainers.trainers.pixelcnn.masked_conv2d import MaskedConv2D, causal_mask

    keras.utils.set_random_seed(2)
    layer = MaskedConv2D(6, kernel, mask_type, stack, use_bias=False)
    x = np.random.default_rng(3).normal(size=(2, 7, 9, 4)).astype("float32")
    got = ops.convert_to_numpy(layer(x))
    mask = causal_mask(kernel, mask_type, stack)[:, :, None, None]
    want = ops.convert_to_numpy(ops.conv(x, layer.kernel * mask, padding="same"))
    assert got.shape == want.shape == (2, 7, 9, 6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
