"""MaskGIT: the cosine masking and decoding schedules, a bidirectional model, iterative decoding
that keeps what it chose and follows what it learnt, config/save round trips, and the trainer on
the codes of a tokenizer run, whose held-out NLL falls below the codes' unigram entropy."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from keras import ops
from mlops_trainers.config import RunConfig
from mlops_trainers.runtime import run
from mlops_trainers.trainers.maskgit.maskgit import MaskGIT
from mlops_trainers.trainers.maskgit.masking import (
    MaskTokens,
    cosine_mask_ratio,
    decoding_schedule,
    draw_masks,
)
from mlops_trainers.trainers.maskgit.trainer import unigram_bits
from mlops_trainers.trainers.maskgit.transformer_block import TransformerBlock


def _np(x: object) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x))


def _model(k: int = 8, size: int = 6) -> MaskGIT:
    keras.utils.set_random_seed(0)
    return MaskGIT(k, size, dim=32, layers=2, heads=4, mlp_dim=64)


def test_training_masks_follow_the_cosine_schedule() -> None:
    masks = draw_masks(np.random.default_rng(0), 4000, 64)
    counts = masks.sum(1)
    assert counts.min() >= 1 and counts.max() <= 64
    # E[cos(pi r / 2)] = 2 / pi for r ~ U(0, 1): more masking than a linear schedule's 1/2.
    assert counts.mean() / 64 == pytest.approx(2 / math.pi, abs=0.02)
    assert cosine_mask_ratio(np.array([0.0, 1.0])) == pytest.approx([1.0, 0.0])
    batch = {"codes": np.zeros((3, 4, 4), np.int32), "valid": np.ones((3, 4, 4), np.float32)}
    first = MaskTokens(seed=2)(batch, 1, 5)["mask"]
    np.testing.assert_array_equal(first, MaskTokens(seed=2)(batch, 1, 5)["mask"])  # resumable
    assert first.shape == (3, 4, 4)


def test_decoding_schedule_reveals_tokens_every_step() -> None:
    left = decoding_schedule(36, 8)
    assert left[-1] == 0
    assert np.all(np.diff(np.concatenate([[36], left])) < 0)
    np.testing.assert_array_equal(decoding_schedule(4, 4), [3, 2, 1, 0])
    with pytest.raises(ValueError, match="at most one step a token"):
        decoding_schedule(4, 5)


def test_every_logit_sees_the_whole_grid() -> None:
    model = _model()
    codes = np.random.default_rng(1).integers(0, 8, (1, 6, 6)).astype(np.int32)
    base = _np(model(codes))
    changed = codes.copy()
    changed[0, 5, 5] = (changed[0, 5, 5] + 3) % 8  # the last position, in raster order
    moved = np.abs(_np(model(changed)) - base).max(-1) > 1e-6
    assert moved.all()  # bidirectional: the first position sees the last one too
    # A masked input is the [MASK] code at those positions.
    mask = np.zeros((1, 6, 6), np.float32)
    mask[0, :2] = 1
    explicit = np.where(mask > 0, 8, codes).astype(np.int32)
    np.testing.assert_allclose(
        _np(model({"codes": codes, "mask": mask})), _np(model(explicit)), atol=1e-6
    )


def test_loss_counts_masked_tokens_only() -> None:
    model = _model()
    codes = np.random.default_rng(2).integers(0, 8, (2, 6, 6)).astype(np.int32)
    mask = np.zeros((2, 6, 6), np.float32)
    mask[:, 0, :3] = 1
    logits = _np(model({"codes": codes, "mask": mask}))
    other = codes.copy()
    other[mask == 0] = (other[mask == 0] + 1) % 8  # change every unmasked target
    a, _ = model.masked_nats({"codes": codes, "mask": mask}, logits)
    b, _ = model.masked_nats({"codes": other, "mask": mask}, logits)
    assert float(_np(a)) == pytest.approx(float(_np(b)))


def test_decoding_keeps_what_it_chose_and_follows_the_schedule() -> None:
    # Step by step (uncompiled): after step t exactly schedule[t] tokens are masked, and a token
    # once kept never changes.
    model = _model()
    schedule = ops.convert_to_tensor(decoding_schedule(36, 6))
    noise = {
        "tokens": -np.log(-np.log(np.random.default_rng(4).uniform(1e-9, 1, (6, 2, 36, 8)))),
        "choice": np.random.default_rng(5).gumbel(size=(6, 2, 36)),
        "temperature": 1.0,
    }
    noise = {k: ops.convert_to_tensor(v, "float32") for k, v in noise.items()}
    before = None
    for steps in range(1, 7):
        out = _np(model._decode_loop(noise, schedule, steps))
        assert ((out == 8).sum(axis=(1, 2)) == int(_np(schedule)[steps - 1])).all()
        if before is not None:
            kept = before != 8
            np.testing.assert_array_equal(out[kept], before[kept])
        before = out
    assert (before < 8).all()  # nothing left masked


@pytest.mark.slow
def test_sampling_is_one_compiled_loop_and_follows_the_model() -> None:
    tf = pytest.importorskip("tensorflow")
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    # One grid to learn: vertical stripes, column j holds code j % 4 + 2.
    grid = np.tile((np.arange(6) % 4 + 2)[None, :], (6, 1)).astype(np.int32)
    codes = np.repeat(grid[None], 16, 0)
    valid = np.ones_like(codes, np.float32)
    masks = MaskTokens(seed=0)
    first = model.train_on_batch(masks({"codes": codes, "valid": valid}, 0, 0), return_dict=True)
    for step in range(1, 60):
        batch = masks({"codes": codes, "valid": valid}, 0, step)
        logs = model.train_on_batch(batch, return_dict=True)
    assert logs["bits_per_code"] < 0.2 * first["bits_per_code"]
    samples = _np(model.sample(8, steps=6, seed=3))
    assert samples.shape == (8, 6, 6) and samples.dtype == np.int32
    assert (samples == grid[None]).mean() > 0.9
    np.testing.assert_array_equal(samples, _np(model.sample(8, steps=6, seed=3)))
    assert isinstance(model._sampler, tf.types.experimental.PolymorphicFunction)
    assert model._sampler.experimental_get_tracing_count() == 1


def test_config_round_trip_and_reload(tmp_path: Path) -> None:
    block = TransformerBlock(16, heads=2, mlp_dim=32, dropout=0.1)
    assert TransformerBlock.from_config(block.get_config()).get_config() == block.get_config()
    with pytest.raises(ValueError, match="must divide"):
        TransformerBlock(10, heads=3)
    model = _model()
    assert MaskGIT.from_config(model.get_config()).get_config() == model.get_config()
    codes = np.random.default_rng(1).integers(0, 8, (2, 6, 6)).astype(np.int32)
    model.save(tmp_path / "maskgit.keras")
    loaded = keras.saving.load_model(tmp_path / "maskgit.keras")
    assert isinstance(loaded, MaskGIT)
    np.testing.assert_allclose(_np(loaded(codes)), _np(model(codes)), atol=1e-6)


def test_unigram_bits() -> None:
    train = np.array([0, 0, 1, 1])
    # Add-one smoothing over K = 4: p = (3, 3, 1, 1) / 8.
    assert unigram_bits(train, np.array([0, 1]), 4) == pytest.approx(-math.log2(3 / 8))
    assert unigram_bits(train, np.array([3]), 4) == pytest.approx(3.0)


@pytest.fixture(scope="module")
def webcam_day(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """192 frames of one camera through a day of drifting clouds, with its known sky mask: the
    last 48 (held out) show cloud fields no earlier frame had."""
    from mlops_trainers.skymask.frames import mask_png
    from mlops_trainers.skymask.synthetic import synthetic_webcam
    from PIL import Image

    folder = tmp_path_factory.mktemp("webcam") / "camera"
    folder.mkdir()
    frames, sky = synthetic_webcam(frames=192, height=48, width=64, phase="day", seed=3)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame-{i:04d}.png")
    (folder / "skymask.png").write_bytes(mask_png(sky))
    return folder


@pytest.mark.slow
def test_prior_beats_the_unigram_on_held_out_codes(
    tmp_path: Path, make_run_file: Any, webcam_day: Path
) -> None:
    # Measured while writing this (two seeds, these sizes): the held-out NLL of sky codes is
    # 0.3 to 0.8 bits after 100 steps against 2.6 for the unigram; after 50 steps it can still
    # be above it.
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
        data=str(webcam_day),
        epochs=1,
        checkpoint_every=100,
        name="sky-tok",
    )
    assert run(RunConfig.model_validate(tokenizer)) == 0
    prior = make_run_file(
        prefix,
        "sky-maskgit-g1-0123abcd",
        "maskgit",
        {
            "tokenizer": "sky-tok",
            "batch_size": 16,
            "learning_rate": 2e-3,
            "dim": 32,
            "layers": 2,
            "heads": 4,
            "mlp_dim": 64,
            "decode_steps": 6,
            "validation_grids": 48,
            "steps_per_epoch": 40,
            "samples": 4,
        },
        data=str(webcam_day),
        epochs=3,
        checkpoint_every=100,
        name="sky-maskgit",
    )
    assert run(RunConfig.model_validate(prior)) == 0
    out = Path(prior["output"])
    record = json.loads((out / "run.json").read_text())
    final = record["final_metrics"]
    print({k: round(v, 3) for k, v in final.items() if "bits" in k})
    assert final["val_bits_per_code"] < final["unigram_bits_per_code"] < math.log2(32)
    # Sky codes only (the ground's never change): well below the unigram, so context is used.
    assert final["val_bits_per_valid_code"] < final["unigram_bits_per_valid_code"] - 1.0
    assert record["inputs"]["tokenizer"]["run_id"] == "sky-tok-g1-0123abcd"
    assert record["inputs"]["tokenizer"]["kind"] == "tokenizer"
    assert record["inputs"]["data"] == {"url": str(webcam_day), "grids": 144, "held_out": 48}
    for epoch in (1, 2, 3):
        assert (out / "samples" / f"epoch-{epoch:04d}.png").stat().st_size > 0
