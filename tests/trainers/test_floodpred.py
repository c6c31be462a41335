"""Flood prediction: the shallow-water solver keeps a lake at rest, conserves water and matches
Ritter's dam break; normalisation streams; augmentation turns the velocity with the grid; an
untrained predictor is persistence; a trained one beats persistence on held-out simulations."""

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
from mlops_trainers.trainers.floodpred.flood_predictor import FloodPredictor
from mlops_trainers.trainers.floodpred.samples import write_simulations
from mlops_trainers.trainers.floodpred.shallow_water import (
    GRAVITY,
    dam_break,
    random_bathymetry,
    rising_water,
    simulate,
)
from mlops_trainers.trainers.floodpred.simulations import (
    ChannelStats,
    Normalisation,
    RotateWindows,
    make_window,
    rotate_fields,
    window_starts,
)
from mlops_trainers.trainers.floodpred.trainer import forecast_scores

# === The solver ===


def test_a_lake_at_rest_stays_at_rest_over_any_bed() -> None:
    bed = random_bathymetry(32, np.random.default_rng(0))
    depth = np.maximum(float(np.median(bed)) - bed, 0.0)  # wet valleys, dry hills
    assert 0.2 < (depth > 0).mean() < 0.8
    sim = simulate(depth, bed, frames=3, frame_dt=5.0, manning=0.02)
    assert np.abs(sim.frames[..., 1:3]).max() < 1e-10
    np.testing.assert_allclose(sim.frames[-1, ..., 0], depth, atol=1e-6)


def test_a_closed_dam_break_keeps_its_water_and_stays_non_negative() -> None:
    sim = dam_break(32, np.random.default_rng(1), frames=12, frame_dt=0.5)
    depth = sim.frames[..., 0]
    assert depth.min() >= 0.0
    volume = depth.sum(axis=(1, 2))
    assert np.abs(volume / volume[0] - 1).max() < 1e-5
    moved = np.abs(depth[-1] - depth[0]).mean()
    assert moved > 0.05  # and it did flow
    np.testing.assert_array_equal(sim.frames[0, ..., 3], sim.frames[-1, ..., 3])  # bed static


def test_dam_break_over_a_dry_flat_bed_follows_ritter() -> None:
    # Ritter (1892): h = (2 sqrt(g h0) - x / t)^2 / (9 g) between -sqrt(g h0) t and 2 sqrt(g h0) t.
    cells, dx, t = 160, 0.5, 2.5
    depth = np.zeros((3, cells))
    depth[:, : cells // 2] = 1.0
    sim = simulate(depth, np.zeros_like(depth), frames=2, frame_dt=t, dx=dx)
    h = sim.frames[-1, 1, :, 0]
    x = (np.arange(cells) + 0.5) * dx - cells // 2 * dx
    c0 = np.sqrt(GRAVITY)
    ritter = np.clip((2 * c0 - x / t) ** 2 / (9 * GRAVITY), 0.0, 1.0)
    ritter[x > 2 * c0 * t] = 0.0
    moving = x > -c0 * t
    # A first-order scheme smears the profile a little, but puts it in the right place.
    assert np.abs(h - ritter)[moving].sum() / ritter[moving].sum() < 0.15
    for level in (0.1, 0.5):
        ours = x[np.nonzero(h > level)[0].max()]
        exact = x[np.nonzero(ritter > level)[0].max()]
        assert abs(ours - exact) <= 2 * dx, (level, ours, exact)


def test_rising_water_floods_the_low_ground() -> None:
    sim = rising_water(32, np.random.default_rng(2), frames=10, frame_dt=1.0)
    wet = (sim.frames[..., 0] > 0.05).mean(axis=(1, 2))
    assert wet[-1] > wet[0] + 0.1
    assert np.all(np.diff(wet) >= -0.02)


# === Data ===


def test_streaming_statistics_match_the_whole_array() -> None:
    rng = np.random.default_rng(3)
    chunks = [rng.normal(2.0, 3.0, size=n) for n in (5, 1000, 1, 77)]
    stats = ChannelStats()
    for chunk in chunks:
        stats.add(chunk)
    everything = np.concatenate(chunks)
    assert stats.count == everything.size
    assert stats.mean == pytest.approx(everything.mean(), rel=1e-12)
    assert stats.std == pytest.approx(everything.std(), rel=1e-12)


def test_normalisation_scales_velocity_without_centring_it(tmp_path: Path) -> None:
    write_simulations(tmp_path, count=3, size=16, frames=6, split={"train": 3})
    urls = sorted(str(p) for p in (tmp_path / "simulations").glob("*.npz"))
    norm = Normalisation.from_simulations(urls)
    frames = np.concatenate([np.load(u)["frames"] for u in urls])
    assert norm.depth_mean == pytest.approx(frames[..., 0].mean(), rel=1e-5)
    assert norm.velocity_scale == pytest.approx(np.sqrt((frames[..., 1:3] ** 2).mean()), rel=1e-5)
    still = np.zeros((2, 2, 4), np.float32)
    assert np.all(norm.fields(still)[..., 1:] == 0.0)  # zero velocity stays zero
    np.testing.assert_allclose(
        norm.physical(norm.fields(frames[:4])), frames[:4, ..., :3], atol=1e-5
    )


def test_windows_are_cut_past_then_future_with_the_bed_last() -> None:
    frames = np.random.default_rng(4).random((9, 4, 4, 4)).astype(np.float32)
    frames[..., 3] = frames[:1, ..., 3]
    norm = Normalisation(0.0, 1.0, 1.0, 0.0, 1.0)
    assert window_starts(9, 3, 2, 1) == [0, 1, 2, 3, 4]
    assert window_starts(9, 3, 2, 2) == [0, 2, 4]
    x, y = make_window(frames, 2, 3, 2, norm)
    assert x.shape == (4, 4, 3 * 3 + 1) and y.shape == (4, 4, 3 * 2)
    np.testing.assert_array_equal(x[..., 6:9], frames[4, ..., :3])  # the last past frame
    np.testing.assert_array_equal(x[..., 9], frames[0, ..., 3])  # the bed
    np.testing.assert_array_equal(y[..., 3:6], frames[6, ..., :3])  # the second future frame


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_augmentation_turns_the_velocity_with_the_grid(k: int, flip: bool) -> None:
    # A blob that moves one cell along +x and two along +y between two frames, with that velocity.
    size = 16
    yy, xx = np.mgrid[0:size, 0:size]

    def blob(cx: float, cy: float) -> np.ndarray:
        return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 4.0)

    frames = np.zeros((1, size, size, 7), np.float32)  # [d, u, v] twice, then the bed
    frames[0, ..., 0], frames[0, ..., 3] = blob(6, 5), blob(7, 7)
    frames[0, ..., 1] = frames[0, ..., 4] = 1.0
    frames[0, ..., 2] = frames[0, ..., 5] = 2.0
    out = rotate_fields(frames, k, flip)[0]

    def centre(depth: np.ndarray) -> np.ndarray:
        return np.array([(depth * xx).sum(), (depth * yy).sum()]) / depth.sum()

    moved = centre(out[..., 3]) - centre(out[..., 0])
    # (u, v) is where it went (up to the blob cut at the border); a wrong turn is off by >= 1.
    np.testing.assert_allclose(out[0, 0, 1:3], moved, atol=1e-3)
    np.testing.assert_allclose(out[0, 0, 4:6], moved, atol=1e-3)


def test_augmentation_repeats_for_the_same_step() -> None:
    x = np.random.default_rng(5).random((2, 8, 8, 7)).astype(np.float32)
    y = np.random.default_rng(6).random((2, 8, 8, 6)).astype(np.float32)
    augment = RotateWindows(seed=1)
    a = augment((x, y), 3, 7)
    np.testing.assert_array_equal(a[0], augment((x, y), 3, 7)[0])
    assert any(not np.array_equal(augment((x, y), 3, s)[0], a[0]) for s in range(8, 14))


# === Model and scores ===


@pytest.mark.parametrize("encoder", ["simple", "resnet"])
def test_an_untrained_predictor_is_persistence(encoder: str, tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    model = FloodPredictor(3, 2, encoder=encoder, filters=8, downsample=2, latent_blocks=1)
    x = np.random.default_rng(7).normal(size=(2, 16, 16, 10)).astype(np.float32)
    out = np.asarray(ops.convert_to_numpy(model(x)))
    np.testing.assert_array_equal(out, np.tile(x[..., 6:9], (1, 1, 1, 2)))
    again = FloodPredictor.from_config(model.get_config())
    assert again.get_config() == model.get_config()
    model.save(tmp_path / "flood.keras")
    loaded = keras.saving.load_model(tmp_path / "flood.keras")
    assert isinstance(loaded, FloodPredictor)
    np.testing.assert_array_equal(np.asarray(ops.convert_to_numpy(loaded(x))), out)


def test_forecast_scores() -> None:
    truth = np.zeros((1, 2, 2, 2, 3), np.float32)
    truth[0, :, 0, :, 0] = 1.0  # the top row is wet at both horizons
    forecast = truth.copy()
    forecast[0, 1, :, :, 0] = 1.0  # horizon 2: everything wet, error 1 on the bottom row
    forecast[0, 0, 0, 0, 1] = 2.0  # horizon 1: one velocity error of 2
    scores = forecast_scores(truth, forecast, wet_threshold=0.5)
    assert scores[("depth", 1)] == {"rmse": 0.0, "mae": 0.0, "wet_iou": 1.0}
    assert scores[("depth", 2)]["rmse"] == pytest.approx(np.sqrt(0.5))
    assert scores[("depth", 2)]["mae"] == pytest.approx(0.5)
    assert scores[("depth", 2)]["wet_iou"] == pytest.approx(0.5)
    assert scores[("velocity_x", 1)] == {"rmse": pytest.approx(1.0), "mae": pytest.approx(0.5)}


# === The trainer ===


@pytest.mark.slow
def test_trained_predictor_beats_persistence_on_held_out_simulations(
    tmp_path: Path, make_run_file: Any
) -> None:
    config = make_run_file(
        str(tmp_path / "runs"),
        "flood-g1-0123abcd",
        "floodpred",
        {
            "past": 4,
            "future": 6,
            "batch_size": 8,
            "learning_rate": 1e-3,
            "filters": 16,
            "downsample": 1,
            "latent_blocks": 2,
            "steps_per_epoch": 40,
            "predictions": 2,
        },
        data="sample://shallow-water",
        epochs=2,
        checkpoint_every=100,
    )
    assert run(RunConfig.model_validate(config)) == 0
    out = Path(config["output"])
    final = json.loads((out / "run.json").read_text())["final_metrics"]
    print({k: round(v, 4) for k, v in final.items() if "rmse_depth" in k or "skill" in k})
    for split in ("val", "test"):  # simulations never seen in training
        assert final[f"{split}_skill"] > 0.1
        assert final[f"{split}_rmse_depth"] < final[f"{split}_persistence_rmse_depth"]
        assert final[f"{split}_rmse_depth_h6"] < final[f"{split}_persistence_rmse_depth_h6"]
        assert final[f"{split}_wet_iou_h6"] > final[f"{split}_persistence_wet_iou_h6"]
    rows = list(csv.DictReader(io.StringIO((out / "evaluation/val-epoch-0002.csv").read_text())))
    assert len(rows) == 2 * 6 * 3  # model and persistence x horizons x channels
    persistence_h = [
        float(r["rmse"]) for r in rows if r["forecast"] == "persistence" and r["channel"] == "depth"
    ]
    assert persistence_h == sorted(persistence_h)  # the further ahead, the worse it gets
    for epoch in (1, 2):
        assert (out / "predictions" / f"epoch-{epoch:04d}.png").stat().st_size > 0
    record = json.loads((out / "run.json").read_text())
    assert record["inputs"]["dataset"]["train"] == 16
    assert record["inputs"]["normalisation"]["velocity_scale"] > 0
