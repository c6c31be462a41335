"""Data-parallel training (several GPUs in a pod, :mod:`mlops_trainers.distribute`), tested on the
CPU split into 2 logical devices (``MLOPS_CPU_REPLICAS=2``).

The split must happen before TensorFlow initialises, so everything that trains on 2 replicas runs
in a fresh process: ``data_parallel_step.py`` (beside this file) for the numbers of one step, the
trainer's own entry point for a real run.

* One step on 2 replicas over a global batch gives the loss, metrics, gradient norm and updated
  weights and optimizer state of one device on the same batch; the replicas' copies of every
  variable (the VQ-VAE's EMA codebook included) stay identical over steps; the spike guard's
  snapshot restores every copy.
* A 2-replica run stopped by SIGTERM resumes (on 2 replicas) to the weights of an uninterrupted
  2-replica run, and its checkpoints load on one device, unchanged.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from h5_arrays import h5_arrays
from mlops_trainers import distribute, precision, storage
from test_resume import (
    CASES,
    CONFIG,
    EVERY,
    TOTAL,
    Trainer,
    _final_weights,
    _run_file,
    train_parent,
)  # fmt: skip

HELPER = Path(__file__).with_name("data_parallel_step.py")
REPLICAS = {distribute.CPU_REPLICAS_ENV: "2"}


# === Without a strategy (this process): nothing changes ===


def test_one_device_has_no_strategy_and_nothing_is_scaled(monkeypatch: pytest.MonkeyPatch) -> None:
    from keras import ops

    monkeypatch.delenv(distribute.CPU_REPLICAS_ENV, raising=False)
    assert distribute.strategy_for([]) is None
    assert distribute.strategy_for([precision.Gpu("one", (8, 0))]) is None
    assert distribute.replicas() == 1
    loss = ops.convert_to_tensor(2.5)
    assert distribute.scale_loss(loss) is loss
    assert distribute.mean_count(loss) is loss
    assert distribute.all_reduce_sum(loss) is loss


def test_the_cpu_replicas_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw, wanted in (("", 0), ("1", 0), ("2", 2), ("4", 4)):
        monkeypatch.setenv(distribute.CPU_REPLICAS_ENV, raw)
        assert distribute.cpu_replicas() == wanted
    monkeypatch.setenv(distribute.CPU_REPLICAS_ENV, "two")
    with pytest.raises(ValueError, match="MLOPS_CPU_REPLICAS"):
        distribute.cpu_replicas()


def test_xla_is_off_under_a_strategy() -> None:
    # Keras would compile strategy.run whole, which fails on the other replicas' variables.
    gpus = [precision.Gpu("a", (8, 0)), precision.Gpu("b", (8, 0))]
    assert precision.resolve("auto", "auto", gpus[:1]).jit_compile
    assert precision.resolve("auto", "on", gpus[:1]).jit_compile
    assert not precision.resolve("auto", "auto", gpus, replicas=2).jit_compile
    assert not precision.resolve("auto", "on", gpus, replicas=2).jit_compile


def test_the_devices_line_names_the_replicas() -> None:
    from mlops_trainers.runtime import describe_devices

    gpus = [precision.Gpu("H100", (9, 0))] * 2
    assert "MirroredStrategy over 2 replicas (GPUs)" in describe_devices(gpus, replicas=2)
    assert "MirroredStrategy" not in describe_devices(gpus[:1])


# === One step on 2 replicas against one device (a subprocess) ===

TOKENIZER = CASES["maskgit"].parent
assert TOKENIZER is not None
# name: (kind, trainer config, data, steps on 2 replicas); PARENT: the tokenizer run's URL.
PARENT = "<parent>"
STEP_CASES: dict[str, tuple[str, dict[str, Any], str, int]] = {
    # The restart draws from the first replica's slice (not the whole batch): off for equality.
    "vqvae": (
        "vqvae",
        {**CONFIG, "dead_code_restart": False, "clipnorm": 0.05},
        "sample://skimage",
        3,
    ),
    "vqvae-restarts": ("vqvae", CONFIG, "sample://skimage", 3),
    "tokenizer": ("tokenizer", TOKENIZER.config, TOKENIZER.data, 2),
    "vle": ("vle", CASES["vle"].config, "sample://skimage", 2),
    "maskgit": ("maskgit", {**CASES["maskgit"].config, "tokenizer": PARENT}, "sample://webcam", 2),
    "pixelcnn": (
        "pixelcnn",
        {
            "vqvae": PARENT,  # the field names the codes' model: a tokenizer run here
            "batch_size": 8,
            "learning_rate": 2e-3,
            "filters": 8,
            "layers": 2,
            "kernel_size": 3,
            "steps_per_epoch": 4,
            "samples": 0,
        },
        "sample://webcam",
        2,
    ),
    # Keras' compiled losses; the U-Net's BatchNorm synchronised over the replicas.
    "floodpred": ("floodpred", CASES["floodpred"].config, CASES["floodpred"].data, 2),
    "segmenter": (
        "segmenter",
        {
            "tile_size": 32,
            "bands": 4,
            "batch_size": 8,
            "learning_rate": 3e-3,
            "base_filters": 8,
            "depth": 2,
            "steps_per_epoch": 4,
            "predictions": 0,
            "export_onnx": False,
        },
        "sample://clouds",
        2,
    ),
}
# Equal to one device within float tolerance (the VQ-VAE's restarts differ: see above).
EXACT = ("vqvae", "tokenizer", "vle", "maskgit", "pixelcnn", "floodpred", "segmenter")


@pytest.fixture(scope="module")
def steps(
    tmp_path_factory: pytest.TempPathFactory, make_run_file: Any, subprocess_env: Any
) -> dict[str, dict[str, Any]]:
    """Each case's numbers from one helper process (one TensorFlow start for all)."""

    tmp = tmp_path_factory.mktemp("data-parallel-steps")
    # The codes the priors train on: a tiny tokenizer run, here, on one device.
    parent = train_parent(make_run_file, TOKENIZER, str(tmp / "parents"), "dp-parent-g1-0123abcd")
    cases = [
        {
            "run": make_run_file(
                str(tmp / "runs"),
                f"dp-{name}-g1-0123abcd",
                kind,
                {k: parent["output"] if v == PARENT else v for k, v in config.items()},
                data=data,
                epochs=1,
                checkpoint_every=100,
                seed=7,
            ),
            "steps": steps,
        }
        for name, (kind, config, data, steps) in STEP_CASES.items()
    ]
    (tmp / "cases.json").write_text(json.dumps(cases))
    done = subprocess.run(
        [sys.executable, str(HELPER), str(tmp / "cases.json"), str(tmp / "out.json")],
        env=subprocess_env(**REPLICAS),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    results = json.loads((tmp / "out.json").read_text())
    return dict(zip(STEP_CASES, results, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("name", EXACT)
def test_one_step_on_two_replicas_equals_one_device(
    steps: dict[str, dict[str, Any]], name: str
) -> None:
    result = steps[name]
    one, two = result["one"], result["two"]
    # The loss of the global batch (not replicas x), every metric, the global gradient norm.
    assert one.keys() == two.keys()
    for key, value in one.items():
        if not _sparse_exception(name, key):
            assert two[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    # Weights, EMA statistics and optimizer slots (Adam's momentum holds the gradient). Adam's
    # first step moves every weight by about the learning rate whatever its gradient, dividing
    # by |gradient| + epsilon: float32 roundoff in a gradient near zero (an attention key bias,
    # which softmax ignores) or in the synchronised BatchNorm's variance (E[x^2] - E[x]^2, not
    # two passes) shows there, up to about 0.5% of a step.
    # The second step is the compiled one on both (reset, learning rate, step, the metrics
    # read across the replicas and the norm in one graph call, traced once), from the same
    # state (the 2-replica model's after the first step): equal too.
    # The segmenter's IoU, Dice, precision and recall count pixels whose probability is over
    # 0.5: the synchronised BatchNorm's roundoff (above) flips a pixel at the threshold there
    # (in this step, one of this batch's few thousand: 2.4e-4 of the IoU), so they are held to
    # a few pixels.
    assert result["fused_traces"] == 1
    assert result["one_next"].keys() == result["two_next"].keys() == one.keys()
    for key, value in result["one_next"].items():
        if not _sparse_exception(name, key):
            pixels = name == "segmenter" and key in ("iou", "dice", "precision", "recall")
            tolerance = (
                pytest.approx(value, abs=1e-3)
                if pixels
                else pytest.approx(value, rel=1e-5, abs=1e-7)
            )
            assert result["two_next"][key] == tolerance, key
    lr = float(STEP_CASES[name][1].get("learning_rate", 1e-3))
    diffs = {k: v for k, v in result["state_diffs"].items() if not _sparse_exception(name, k)}
    worst = max(diffs, key=lambda k: diffs[k])
    assert diffs[worst] < 0.01 * lr, worst


def _sparse_exception(name: str, key: str) -> bool:
    """The MaskGIT's position embedding (and its Adam slots, and the gradient norm): looked up
    once per step, not per example, so its gradient (an IndexedSlices) has one row per position
    on one device and one per position and replica on two. Keras treats an IndexedSlices' rows
    one by one, repeated indices apart (Adam's second moment, the norm of its rows), so these
    differ slightly; the gradient itself, summed, is the same."""
    return name == "maskgit" and ("positions" in key or key == "grad_norm")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STEP_CASES))
def test_replicas_stay_identical_and_a_snapshot_restores_them(
    steps: dict[str, dict[str, Any]], name: str
) -> None:
    result = steps[name]
    assert result["max_replica_diff"] == 0.0, result["worst_replica"]
    assert result["max_restore_diff"] == 0.0


@pytest.mark.slow
def test_the_vqvae_codebook_with_restarts_is_the_same_on_both_replicas(
    steps: dict[str, dict[str, Any]],
) -> None:
    result = steps["vqvae-restarts"]
    ema = {"quantizer/ema_count", "quantizer/ema_sum", "quantizer/usage", "quantizer/embeddings"}
    assert ema <= set(result["variables"])
    assert result["max_replica_diff"] == 0.0, result["worst_replica"]
    # Its loss and metrics are still the single device's (the restarts change the codebook
    # after the step: where the fresh codes come from differs, not what the step computed).
    for key, value in result["one"].items():
        assert result["two"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


# === A real run on 2 replicas: stopped, resumed, loaded on one device ===


def _weights_after_loading(checkpoint: Any, scratch: Path) -> dict[str, np.ndarray]:
    """The checkpoint loaded into a VQ-VAE built on one device (this process), saved again."""
    from mlops_trainers.checkpoints import load_checkpoint
    from mlops_trainers.trainers.vqvae.config import VQVAEConfig
    from mlops_trainers.trainers.vqvae.trainer import build_vqvae

    model = build_vqvae(VQVAEConfig(**CONFIG), seed=7)
    load_checkpoint(model, checkpoint, scratch, optimizer=True)
    local = scratch / "reloaded.weights.h5"
    model.save_weights(local)
    return h5_arrays(local)


def _checkpoint_arrays(checkpoint: Any, scratch: Path) -> dict[str, np.ndarray]:
    local = scratch / f"{checkpoint.step}.weights.h5"
    storage.get_file(checkpoint.weights_url, local)
    return h5_arrays(local)


@pytest.mark.slow
def test_a_two_replica_run_stops_resumes_and_its_checkpoints_load_on_one_device(
    tmp_path: Path, make_run_file: Any, subprocess_env: Any
) -> None:
    from mlops_trainers.checkpoints import latest_checkpoint

    case = CASES["vqvae"]
    root = str(tmp_path / "runs")
    env = subprocess_env(**REPLICAS)

    # An uninterrupted 2-replica run: what the stopped one must end with.
    straight = Trainer(
        _run_file(tmp_path, make_run_file, case, root, "dp-straight-g1-0123abcd"),
        tmp_path,
        env,
        "dp-straight",
    )
    assert straight.wait() == 0, straight.log.read_text()
    log = straight.log.read_text()
    assert "data-parallel, MirroredStrategy over 2 replicas" in log, log

    # 1. SIGTERM mid-epoch: a checkpoint at that step, exit 143.
    path = _run_file(tmp_path, make_run_file, case, root, "dp-stopped-g1-0123abcd")
    output = storage.join(root, "dp-stopped-g1-0123abcd")
    first = Trainer(path, tmp_path, env, "dp-sigterm")
    seen = first.wait_for_step(EVERY + 3)
    first.process.send_signal(signal.SIGTERM)
    assert first.wait() == 143, first.log.read_text()
    stopped = latest_checkpoint(output)
    assert stopped is not None and stopped.step >= seen > EVERY

    # 2. That 2-replica checkpoint loads on one device as saved (weights and optimizer state),
    #    and a one-device run starts from it and trains.
    saved = _checkpoint_arrays(stopped, tmp_path)
    reloaded = _weights_after_loading(stopped, tmp_path)
    assert reloaded.keys() == saved.keys()
    for name, array in saved.items():
        np.testing.assert_array_equal(reloaded[name], array, err_msg=name)
    child = make_run_file(
        root,
        "dp-one-device-g1-0123abcd",
        "vqvae",
        case.config,
        data=case.data,
        epochs=1,
        checkpoint_every=100,
        seed=7,
        resume={"from_url": stopped.url},
    )
    child_path = tmp_path / "one-device.yaml"
    child_path.write_text(yaml.safe_dump(child))
    single = Trainer(child_path, tmp_path, subprocess_env(), "dp-one-device")
    assert single.wait() == 0, single.log.read_text()
    assert "MirroredStrategy" not in single.log.read_text()
    record = storage.read_json(storage.join(root, "dp-one-device-g1-0123abcd", "run.json"))
    assert record["state"] == "succeeded"

    # 3. Restarted on 2 replicas, it resumes there and ends as the uninterrupted run.
    second = Trainer(path, tmp_path, env, "dp-final")
    assert second.wait() == 0, second.log.read_text()
    record = storage.read_json(storage.join(output, "run.json"))
    assert record["resumed_from"]["step"] == stopped.step
    assert record["global_step"] == TOTAL
    ours = _final_weights(output, tmp_path)
    theirs = _final_weights(storage.join(root, "dp-straight-g1-0123abcd"), tmp_path)
    assert ours.keys() == theirs.keys()
    for name, array in ours.items():
        np.testing.assert_allclose(array, theirs[name], rtol=1e-4, atol=1e-5, err_msg=name)

    # 4. The final checkpoint loads on one device too.
    final = latest_checkpoint(output)
    assert final is not None
    reloaded = _weights_after_loading(final, tmp_path)
    for name, array in ours.items():
        np.testing.assert_array_equal(reloaded[name], array, err_msg=name)
