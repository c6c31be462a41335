"""Issue 14, part 1: the spike guard, on a VQ-VAE learning real Fashion-MNIST images.

A poisoned batch (its pixels x1000, at a known step) makes a loss spike. Measured here (4 epochs
of 25 steps, last epoch's mean loss): unpoisoned 0.0281; poisoned with the guard (one rollback,
the batch skipped, the learning rate halved) 0.0301, 7 % above; poisoned without the guard
1.19, 42x above (Adam's second moments are wrecked by one huge gradient and training stalls).
The test asserts the guarded run within 10 % of the clean one and the unguarded run far off.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlops_trainers import storage
from mlops_trainers.config import RunConfig
from mlops_trainers.config_base import SpikeGuardConfig
from mlops_trainers.contract import EXIT_FATAL, Summary
from mlops_trainers.runtime import run
from mlops_trainers.spike_guard import SpikeDetector
from mlops_trainers.trainers.vqvae.trainer import VQVAETrainer

CONFIG = {
    "image_size": 32,
    "channels": 1,
    "batch_size": 16,
    "learning_rate": 2e-3,
    "base_filters": 16,
    "downsample": 2,
    "residual_blocks": 1,
    "latent_dim": 8,
    "num_embeddings": 32,
    "steps_per_epoch": 25,
    "reconstructions": 4,
}
EPOCHS = 4
POISON_AT = (2, 5)  # (epoch, batch), both 0-based: global step 56


class Poisoned:
    """The trainer's batches, with the pixels of the chosen ones multiplied by 1000."""

    def __init__(self, data: Any, poisoned: Callable[[int, int], bool]) -> None:
        self.data = data
        self.poisoned = poisoned

    @property
    def steps_per_epoch(self) -> int:
        return int(self.data.steps_per_epoch)

    def batches(self, epoch: int, start_step: int = 0) -> Iterable[Any]:
        for k, batch in enumerate(self.data.batches(epoch, start_step)):
            if self.poisoned(epoch, start_step + k):
                yield {"image": batch["image"] * 1000.0, "mask": batch["mask"]}
            else:
                yield batch


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> str:
    from mlops_trainers.data import list_images

    listing = tmp_path_factory.mktemp("data") / "images.txt"
    listing.write_text("\n".join(list_images("sample://fashion-mnist")[:512]) + "\n")
    return str(listing)


def _run(
    tmp_path: Path,
    images: str,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    poisoned: Callable[[int, int], bool] | None,
    **guard: Any,
) -> tuple[int, list[dict[str, str]], Path]:
    real = VQVAETrainer.datasets
    if poisoned is not None:
        monkeypatch.setattr(VQVAETrainer, "datasets", lambda self: Poisoned(real(self), poisoned))
    summary = tmp_path / f"{name}-summary.json"
    monkeypatch.setenv("MLOPS_SUMMARY_FILE", str(summary))
    config = RunConfig(
        run_id=f"{name}-g1-0123abcd",
        name=name,
        trainer={"kind": "vqvae", "config": {**CONFIG, "spike_guard": guard}},
        data=images,
        output_prefix=str(tmp_path / "runs"),
        output=str(tmp_path / "runs" / f"{name}-g1-0123abcd"),
        epochs=EPOCHS,
        checkpoint_every=1000,
    )
    code = run(config)
    monkeypatch.setattr(VQVAETrainer, "datasets", real)
    metrics = storage.join(config.output, "metrics.csv")
    rows = list(csv.DictReader(io.StringIO(storage.read_text(metrics)))) if code == 0 else []
    return code, rows, summary


@pytest.mark.slow
def test_a_poisoned_batch_is_rolled_back_and_the_run_recovers(
    tmp_path: Path, images: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    code, clean, _ = _run(tmp_path, images, monkeypatch, "clean", None)
    assert code == 0 and [r["rollbacks"] for r in clean] == ["0"] * EPOCHS

    caplog.set_level("INFO", "mlops_trainers")
    code, guarded, summary = _run(
        tmp_path, images, monkeypatch, "guarded", lambda e, s: (e, s) == POISON_AT
    )
    assert code == 0
    spikes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loss spike")]
    assert len(spikes) == 1 and "epoch 3, batch 6 (global step 56)" in spikes[0], spikes
    assert "rolled back to global step 50" in spikes[0].lower()
    assert any("skipping batch 6 of epoch 3" in r.getMessage() for r in caplog.records)
    # Counted in metrics.csv, with the halved learning rate from then on.
    assert [r["rollbacks"] for r in guarded] == ["0", "0", "1", "1"]
    assert float(guarded[3]["lr"]) == pytest.approx(CONFIG["learning_rate"] * 0.5)
    clean_loss, guarded_loss = float(clean[-1]["loss"]), float(guarded[-1]["loss"])
    print(f"last epoch loss: clean {clean_loss:.4f}, guarded {guarded_loss:.4f}")
    assert abs(guarded_loss - clean_loss) <= 0.10 * clean_loss

    # In the summary, and so in the operator's status.metrics.
    reported = Summary.parse(summary.read_text())
    assert reported is not None and reported.metrics["rollbacks"] == 1.0
    from mlops_operator.queueing import QueueView
    from mlops_operator.reconcile import Policy, decide
    from mlops_operator.views import view_workflow
    from mlops_workflows.render import RenderSettings

    body = {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "MLOps",
        "metadata": {"name": "guarded", "namespace": "ml", "generation": 1, "uid": "u"},
        "spec": {"trainer": {"kind": "vqvae"}, "data": "gs://b/d", "output": "gs://b/o"},
        "status": {},
    }
    policy = Policy(render=RenderSettings())
    # An open GPU queue: the run starts at once (queueing has its own tests).
    queue = QueueView(key="ml/gpu", capacity=None)
    first = decide(body, [], policy, queue=queue)
    assert first.status is not None
    run_id = first.status.run_id or ""
    body["status"] = first.status.model_dump(mode="json", by_alias=True)
    workflow = view_workflow(
        {
            "metadata": {"name": run_id, "namespace": "ml", "labels": {"mlops.dev/run-id": run_id}},
            "spec": {},
            "status": {
                "phase": "Succeeded",
                "nodes": {
                    "a": {
                        "id": "a",
                        "type": "Pod",
                        "phase": "Succeeded",
                        "outputs": {
                            "exitCode": "0",
                            "parameters": [{"name": "summary", "value": summary.read_text()}],
                        },
                    }
                },
            },
        }
    )
    done = decide(body, [workflow], policy, queue=queue)
    assert done.status is not None and done.status.metrics["rollbacks"] == 1.0

    # Without the guard the same batch wrecks the run.
    code, unguarded, _ = _run(
        tmp_path, images, monkeypatch, "unguarded", lambda e, s: (e, s) == POISON_AT, enabled=False
    )
    assert code == 0
    print(f"unguarded last epoch loss {float(unguarded[-1]['loss']):.4f}")
    assert float(unguarded[-1]["loss"]) > 3 * clean_loss


@pytest.mark.slow
def test_a_run_that_keeps_spiking_fails_with_the_reason(
    tmp_path: Path, images: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, summary = _run(
        tmp_path,
        images,
        monkeypatch,
        "diverging",
        lambda e, s: e >= 1 and s >= 5,  # every batch from epoch 2, batch 6 on
        max_rollbacks=3,
    )
    assert code == EXIT_FATAL  # never retried: the same run would spike again
    reported = json.loads(summary.read_text())
    assert reported["state"] == "failed"
    assert "spike_guard.max_rollbacks = 3" in reported["error"]
    assert "loss spike at epoch 2" in reported["error"]
    assert reported["metrics"]["rollbacks"] == 3.0
    status = storage.read_json(str(tmp_path / "runs" / "diverging-g1-0123abcd" / "status.json"))
    assert status["state"] == "failed" and status["retry"] is False and status["rollbacks"] == 3


def test_detector_calls_spikes_against_the_running_median() -> None:
    detector = SpikeDetector(SpikeGuardConfig(factor=3.0, window=5, min_history=3))
    assert detector.spike(100.0) is None  # too little history to judge: accepted
    for loss in (1.0, 1.2, 0.9):
        assert detector.spike(loss) is None
    # History (100, 1, 1.2, 0.9): median 1.1, so 3.2 (< 3.3) is no spike; then the median of
    # (100, 1, 1.2, 0.9, 3.2) is 1.2, and 3.7 (> 3.6) is one.
    assert detector.spike(3.2) is None
    reason = detector.spike(3.7)
    assert reason is not None and "running median 1.2" in reason
    assert detector.history.maxlen == 5 and 3.7 not in detector.history  # spikes never join
    assert "not finite" in (detector.spike(float("nan")) or "")
    assert "not finite" in (detector.spike(float("inf")) or "")
    # The window forgets: after five small losses the old 100 no longer counts.
    for _ in range(5):
        detector.spike(0.1)
    assert detector.median == pytest.approx(0.1)
    assert np.isfinite(detector.median or np.nan)


def test_a_snapshot_is_every_state_variable_read_in_one_compiled_call() -> None:
    """Snapshot.take reads the weights, optimizer slots and iteration count in one graph call
    (traced once), as copies: what it holds is what eager reads give, and a later step changes
    the model, not the snapshot; its restore brings the model back."""
    import keras
    from mlops_trainers import spike_guard
    from mlops_trainers.spike_guard import Snapshot, model_state_variables
    from mlops_trainers.trainer import train_on_batch

    keras.utils.set_random_seed(3)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(8)(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    rng = np.random.default_rng(0)
    batch = (rng.normal(size=(8, 4)).astype("float32"), rng.normal(size=(8, 2)).astype("float32"))
    train_on_batch(model, batch)
    variables = model_state_variables(model)
    eager = [np.array(v.numpy()) for v in variables]
    snapshot = Snapshot.take(model, {"step": 1}, [0.5])
    assert len(snapshot.values) == len(variables) > 4  # the optimizer's slots are in it
    for value, expected in zip(snapshot.values, eager, strict=True):
        np.testing.assert_array_equal(value, expected)
    train_on_batch(model, batch)
    again = Snapshot.take(model, {}, [])
    reader = spike_guard._READERS[model][1]
    assert reader.experimental_get_tracing_count() == 1  # both snapshots: one trace
    changed = [not np.array_equal(a, b) for a, b in zip(again.values, eager, strict=True)]
    assert any(changed) and all(
        np.array_equal(value, expected)
        for value, expected in zip(snapshot.values, eager, strict=True)
    )
    snapshot.restore(model)
    for variable, expected in zip(variables, eager, strict=True):
        np.testing.assert_array_equal(variable.numpy(), expected)
