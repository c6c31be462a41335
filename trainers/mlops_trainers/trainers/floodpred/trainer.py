"""The ``floodpred`` trainer: the next flood frames (depth, velocity) from the past ones and the bed.

Data: a flood data set (:mod:`~mlops_trainers.trainers.floodpred.simulations`: one ``.npz`` per
simulation, filelists split by simulation) or ``sample://shallow-water``, simulated here. The
training simulations are read once for the normalisation (streaming statistics, recorded in
``run.json`` under ``inputs.normalisation``) and kept in memory; batches are windows ``(past,
future)`` drawn per ``(seed, epoch)`` and, with ``augment``, turned by one of the 8 symmetries of
the square drawn from ``(seed, epoch, step)``: a resumed run sees the same batches.

Loss: MSE over the normalised depth and velocity of every future frame.

Each epoch evaluates every window of the validation simulations (held out whole), in physical
units, against the **persistence** baseline (the last past frame repeated): RMSE and MAE per
channel and per horizon, and the wet/dry IoU at ``wet_threshold`` per horizon. The full table goes
to ``evaluation/epoch-NNNN.csv``; metrics.csv gets, for the model (``val_``) and persistence
(``persistence_``), per-channel RMSE/MAE over all horizons, the depth RMSE and the wet IoU at the
first and last horizon, and ``val_skill`` = 1 - RMSE_model / RMSE_persistence over all
normalised channels (> 0: the model beats persistence). The last epoch also scores the test split
(``test_``). ``predictions/epoch-NNNN.png``: per validation window a row of the past depths, the
true future depths and the predicted ones (water in blue over the grey bed).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlops_trainers.data import ArrayBatches, resolve_data_url
from mlops_trainers.errors import DataError
from mlops_trainers.trainer import Trainer
from mlops_trainers.trainers.floodpred.config import FloodPredConfig
from mlops_trainers.trainers.floodpred.simulations import (
    BED,
    DEPTH,
    FIELDS,
    Normalisation,
    RotateWindows,
    WindowBatch,
    load_simulation,
    make_window,
    read_filelists,
    window_starts,
)

__all__ = ["FloodPredTrainer", "evaluate_windows", "forecast_scores"]

EVAL_BATCH = 32


# === Evaluation ===


def forecast_scores(
    truth: np.ndarray, forecast: np.ndarray, wet_threshold: float
) -> dict[tuple[str, int], dict[str, float]]:
    """Scores per (channel, horizon) of forecasts (N, F, H, W, 3) in physical units: RMSE, MAE,
    and for depth the wet/dry IoU (wet: depth > ``wet_threshold``; both dry everywhere: 1)."""
    out: dict[tuple[str, int], dict[str, float]] = {}
    for h in range(truth.shape[1]):
        for c, name in enumerate(FIELDS):
            error = forecast[:, h, ..., c] - truth[:, h, ..., c]
            scores = {
                "rmse": float(np.sqrt(np.mean(error**2))),
                "mae": float(np.mean(np.abs(error))),
            }
            if c == DEPTH:
                wet_true = truth[:, h, ..., c] > wet_threshold
                wet_pred = forecast[:, h, ..., c] > wet_threshold
                union = int((wet_true | wet_pred).sum())
                scores["wet_iou"] = float((wet_true & wet_pred).sum() / union) if union else 1.0
            out[(name, h + 1)] = scores
    return out


def evaluate_windows(
    model: Any,
    simulations: Sequence[np.ndarray],
    config: FloodPredConfig,
    norm: Normalisation,
) -> tuple[dict[str, dict[tuple[str, int], dict[str, float]]], dict[str, float], list[Any]]:
    """Every window of ``simulations``: scores of the model and of persistence (physical units),
    the skill over normalised channels, and per simulation the (frames, start) of the window
    with the largest change of depth, to draw."""
    p, f = config.past, config.future
    truths, forecasts, persistences = [], [], []
    sq_model = sq_persist = 0.0
    examples: list[Any] = []
    for frames in simulations:
        starts = window_starts(len(frames), p, f, config.window_stride)
        for i in range(0, len(starts), EVAL_BATCH):
            pairs = [make_window(frames, s, p, f, norm) for s in starts[i : i + EVAL_BATCH]]
            x = np.stack([a for a, _ in pairs])
            y = np.stack([b for _, b in pairs])
            pred = np.asarray(model.predict_on_batch(x))
            persist = np.tile(x[..., 3 * (p - 1) : 3 * p], (1, 1, 1, f))
            sq_model += float(((pred - y) ** 2).sum())
            sq_persist += float(((persist - y) ** 2).sum())

            def frames_of(a: np.ndarray) -> np.ndarray:
                n, h, w, _ = a.shape
                return norm.physical(a.reshape(n, h, w, f, 3).transpose(0, 3, 1, 2, 4))

            prediction = frames_of(pred)
            # Depth cannot be negative: the forecast is scored as a map would show it.
            prediction[..., DEPTH] = np.maximum(prediction[..., DEPTH], 0.0)
            truths.append(frames_of(y))
            forecasts.append(prediction)
            persistences.append(frames_of(persist))
        if starts:
            # The window persistence gets most wrong: where the water moves, worth drawing.
            change = [
                float(
                    np.abs(frames[s + p + f - 1, ..., DEPTH] - frames[s + p - 1, ..., DEPTH]).sum()
                )
                for s in starts
            ]
            examples.append((frames, starts[int(np.argmax(change))]))
    if not truths:
        raise DataError("no window fits in the evaluation simulations (too few frames?)")
    truth = np.concatenate(truths)
    scores = {
        "model": forecast_scores(truth, np.concatenate(forecasts), config.wet_threshold),
        "persistence": forecast_scores(truth, np.concatenate(persistences), config.wet_threshold),
    }
    skill = 1.0 - float(np.sqrt(sq_model / max(sq_persist, 1e-12)))
    return scores, {"skill": skill}, examples


def summary(
    scores: Mapping[tuple[str, int], Mapping[str, float]], prefix: str, future: int
) -> dict[str, float]:
    """Per-channel RMSE/MAE over all horizons, depth RMSE and wet IoU at the first and last."""
    out: dict[str, float] = {}
    for name in FIELDS:
        for metric in ("rmse", "mae"):
            values = [scores[(name, h)][metric] for h in range(1, future + 1)]
            if metric == "rmse":
                out[f"{prefix}rmse_{name}"] = float(np.sqrt(np.mean(np.square(values))))
            else:
                out[f"{prefix}mae_{name}"] = float(np.mean(values))
    for h in sorted({1, future}):
        out[f"{prefix}rmse_depth_h{h}"] = scores[("depth", h)]["rmse"]
        out[f"{prefix}wet_iou_h{h}"] = scores[("depth", h)]["wet_iou"]
    return out


def _water(depth: np.ndarray, bed: np.ndarray, top: float) -> np.ndarray:
    """RGB of a depth map over its bed: grey relief, water in blue by depth."""
    relief = (bed - bed.min()) / max(float(np.ptp(bed)), 1e-6)
    grey = np.repeat((0.35 + 0.5 * relief)[..., None], 3, axis=-1)
    # sqrt: a thin sheet of water spreading over dry land stays visible next to a deep reservoir.
    alpha = np.sqrt(np.clip(depth / max(top, 1e-6), 0.0, 1.0))[..., None]
    blue = np.array([0.05, 0.25, 0.85])
    rgb: np.ndarray = (grey * (1 - alpha) + blue * alpha).astype(np.float32)
    return rgb


# === Trainer ===


class FloodPredTrainer(Trainer[FloodPredConfig]):
    """Flood-frame prediction; see the module docstring."""

    config_class = FloodPredConfig

    def prepare(self) -> None:
        self.root = resolve_data_url(self.run.data)
        self.splits = read_filelists(self.root)
        self.norm = Normalisation.from_simulations(self.splits["train"])
        self.inputs["dataset"] = {
            "url": self.run.data,
            **{split: len(urls) for split, urls in self.splits.items()},
        }
        self.inputs["normalisation"] = self.norm.as_dict()
        self.context.log.info(
            "%s: %s simulations; normalisation %s",
            self.run.data,
            {k: len(v) for k, v in self.splits.items()},
            {k: round(v, 4) for k, v in self.norm.as_dict().items()},
        )
        self.eval_metrics: dict[str, float] = {}
        self._loaded: dict[str, list[np.ndarray]] = {}

    def simulations(self, split: str) -> list[np.ndarray]:
        if split not in self._loaded:
            sims = [load_simulation(url) for url in self.splits[split]]
            factor = 2**self.config.downsample
            for url, frames in zip(self.splits[split], sims, strict=True):
                if frames.shape[1] % factor or frames.shape[2] % factor:
                    raise DataError(
                        f"{url}: frames of {frames.shape[1]}x{frames.shape[2]} cells; "
                        f"downsample {self.config.downsample} needs multiples of {factor}"
                    )
            self._loaded[split] = sims
        return self._loaded[split]

    def datasets(self) -> ArrayBatches:
        c = self.config
        sims = self.simulations("train")
        index = [
            (i, s)
            for i, frames in enumerate(sims)
            for s in window_starts(len(frames), c.past, c.future, c.window_stride)
        ]
        if not index:
            raise DataError(
                f"no training window: simulations have {min(len(s) for s in sims)} frames, a "
                f"window needs past + future = {c.past + c.future}"
            )
        self.inputs["windows"] = len(index)
        arrays = (np.array([i for i, _ in index]), np.array([s for _, s in index]))
        transform = WindowBatch(
            sims, c.past, c.future, self.norm, RotateWindows(self.run.seed) if c.augment else None
        )
        return ArrayBatches(arrays, c.batch_size, self.run.seed, c.steps_per_epoch, transform)

    def build_model(self) -> Any:
        import keras

        from mlops_trainers.trainers.floodpred.flood_predictor import FloodPredictor

        c = self.config
        model = FloodPredictor(
            c.past,
            c.future,
            encoder=c.encoder,
            filters=c.filters,
            downsample=c.downsample,
            latent_blocks=c.latent_blocks,
            name="floodpred",
        )
        model.compile(optimizer=keras.optimizers.Adam(c.learning_rate), loss="mse")
        model.optimizer.build(model.trainable_variables)
        return model

    def _score(self, model: Any, split: str, prefix: str, epoch: int) -> list[Any]:
        scores, extra, examples = evaluate_windows(
            model, self.simulations(split), self.config, self.norm
        )
        f = self.config.future
        self.eval_metrics.update(summary(scores["model"], prefix, f))
        self.eval_metrics.update(summary(scores["persistence"], f"{prefix}persistence_", f))
        self.eval_metrics[f"{prefix}skill"] = extra["skill"]
        rows = [
            {"split": split, "forecast": who, "channel": name, "horizon": h, **values}
            for who, table in scores.items()
            for (name, h), values in sorted(table.items(), key=lambda kv: (kv[0][1], kv[0][0]))
        ]
        buffer = io.StringIO()
        writer = csv.DictWriter(
            buffer, ["split", "forecast", "channel", "horizon", "rmse", "mae", "wet_iou"]
        )
        writer.writeheader()
        writer.writerows(rows)
        self.context.write_bytes(
            f"evaluation/{split}-epoch-{epoch:04d}.csv", buffer.getvalue().encode()
        )
        return examples

    def on_epoch_end(self, epoch: int, model: Any, logs: Mapping[str, float]) -> dict[str, float]:
        self.eval_metrics = {}
        if self.splits["val"]:
            examples = self._score(model, "val", "val_", epoch)
            m = self.eval_metrics
            self.context.log.info(
                "epoch %d validation: depth RMSE %.4f m (persistence %.4f), velocity x RMSE %.4f "
                "m/s (persistence %.4f), wet IoU at horizon %d %.3f (persistence %.3f), skill %.3f",
                epoch,
                m["val_rmse_depth"],
                m["val_persistence_rmse_depth"],
                m["val_rmse_velocity_x"],
                m["val_persistence_rmse_velocity_x"],
                self.config.future,
                m[f"val_wet_iou_h{self.config.future}"],
                m[f"val_persistence_wet_iou_h{self.config.future}"],
                m["val_skill"],
            )
            if self.config.predictions and examples:
                self.context.write_png(
                    f"predictions/epoch-{epoch:04d}.png", self._panel(model, examples)
                )
        if epoch == self.run.epochs and self.splits["test"]:
            self._score(model, "test", "test_", epoch)
            self.context.log.info(
                "test: skill %.3f, depth RMSE %.4f m (persistence %.4f)",
                self.eval_metrics["test_skill"],
                self.eval_metrics["test_rmse_depth"],
                self.eval_metrics["test_persistence_rmse_depth"],
            )
        return dict(self.eval_metrics)

    def _panel(self, model: Any, examples: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
        """Rows: past depths | true future depths | predicted future depths, over the bed (a blank
        tile between the groups)."""
        from mlops_trainers.artifacts import image_grid

        c = self.config
        picked = [examples[i] for i in np.linspace(0, len(examples) - 1, c.predictions).astype(int)]
        tiles = []
        for frames, start in picked[: c.predictions]:
            x, _ = make_window(frames, start, c.past, c.future, self.norm)
            pred = np.asarray(model.predict_on_batch(x[None]))[0]
            h, w = pred.shape[:2]
            depth = self.norm.physical(pred.reshape(h, w, c.future, 3))[..., DEPTH]
            bed = frames[0, ..., BED]
            window = frames[start : start + c.past + c.future, ..., DEPTH]
            top = float(window.max())
            blank = np.ones((h, w, 3), np.float32)
            row = [_water(d, bed, top) for d in window[: c.past]]
            row += [blank, *[_water(d, bed, top) for d in window[c.past :]], blank]
            row += [_water(np.maximum(depth[..., k], 0.0), bed, top) for k in range(c.future)]
            tiles.extend(row)
        return image_grid(np.stack(tiles), columns=c.past + 2 * c.future + 2)

    def final_metrics(self, logs: Mapping[str, float]) -> dict[str, float]:
        return {**logs, **self.eval_metrics}
