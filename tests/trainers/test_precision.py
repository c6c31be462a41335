"""Mixed precision and XLA (``trainer.config.precision`` / ``jit_compile``): what ``auto`` picks per
device, that the choice really takes effect in every trainer (16-bit layers, float32 quantizer
distances and losses, a loss-scaled optimizer under float16, an XLA-compiled train step), that
the numbers stay sane, and that a checkpoint resumes under the same policy and is refused under
one whose optimizer state differs.

There is no GPU here: the runs force the policy and XLA on the CPU, which TensorFlow executes
(slowly: 16-bit math is emulated) with the same graphs a GPU would get.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlops_trainers import storage
from mlops_trainers.precision import Gpu, resolve

keras = pytest.importorskip("keras")


# === What auto picks ===


@pytest.mark.parametrize(
    ("gpus", "policy", "jit"),
    [
        ([], "float32", False),
        ([Gpu("NVIDIA A100-SXM4-40GB", (8, 0))], "mixed_bfloat16", True),
        ([Gpu("NVIDIA L4", (8, 9)), Gpu("NVIDIA L4", (8, 9))], "mixed_bfloat16", True),
        ([Gpu("Tesla T4", (7, 5))], "mixed_float16", True),
        ([Gpu("Tesla V100-SXM2-16GB", (7, 0)), Gpu("NVIDIA A100", (8, 0))], "mixed_float16", True),
        ([Gpu("Tesla P100-PCIE-16GB", (6, 0))], "float32", True),
        ([Gpu("unknown", None)], "float32", True),
    ],
)
def test_auto_picks_by_device(gpus: list[Gpu], policy: str, jit: bool) -> None:
    got = resolve("auto", "auto", gpus)
    assert (got.policy, got.jit_compile) == (policy, jit), got


def test_explicit_choices_win_over_the_device() -> None:
    assert resolve("mixed_bfloat16", "on", []).policy == "mixed_bfloat16"
    assert resolve("mixed_bfloat16", "on", []).jit_compile is True
    a100 = [Gpu("NVIDIA A100", (8, 0))]
    assert resolve("float32", "off", a100).policy == "float32"
    assert resolve("float32", "off", a100).jit_compile is False


def test_bad_choices_are_refused_by_the_config_naming_the_field() -> None:
    from mlops_trainers.config import TRAINER_CONFIGS
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="precision"):
        TRAINER_CONFIGS["vqvae"].model_validate({"precision": "float16"})
    with pytest.raises(ValidationError, match="jit_compile"):
        TRAINER_CONFIGS["vqvae"].model_validate({"jit_compile": True})


def test_the_policy_is_put_back_after_a_run_even_a_failed_one() -> None:
    from mlops_trainers.precision import dtype_policy

    before = keras.config.dtype_policy().name
    with pytest.raises(RuntimeError), dtype_policy("mixed_float16"):
        assert keras.config.dtype_policy().name == "mixed_float16"
        raise RuntimeError("boom")
    assert keras.config.dtype_policy().name == before


# === Every trainer, forced to 16 bits and XLA ===

TOKENIZER = {
    "image_size": 16,
    "channels": 3,
    "batch_size": 8,
    "base_filters": 8,
    "channel_multipliers": [1, 2, 2],
    "groups": 4,
    "latent_dim": 4,
    "num_embeddings": 16,
    "sky_mask": {"enabled": False},
    "steps_per_epoch": 4,
    "reconstructions": 0,
}
STEPS = 4
CASES: dict[str, tuple[dict[str, Any], str]] = {
    "vqvae": (
        {
            "image_size": 16,
            "channels": 3,
            "batch_size": 8,
            "learning_rate": 2e-3,
            "base_filters": 8,
            "downsample": 2,
            "residual_blocks": 1,
            "latent_dim": 4,
            "num_embeddings": 16,
            "reconstructions": 2,
        },
        "sample://skimage",
    ),
    "tokenizer": (TOKENIZER, "sample://webcam"),
    "segmenter": (
        {
            "tile_size": 32,
            "bands": 4,
            "batch_size": 4,
            "base_filters": 8,
            "depth": 2,
            "predictions": 1,
            "export_onnx": False,
        },
        "sample://clouds",
    ),
    "vle": (
        {
            "image_size": 16,
            "channels": 1,
            "batch_size": 4,
            "max_tokens": 2,
            "variant": "mask",
            "filters": 8,
            "downsample": 1,
            "latent_channels": 8,
            "baseline": False,
            "validation_images": 4,
            "previews": 1,
        },
        "sample://fashion-mnist-canvases",
    ),
    "floodpred": (
        {
            "past": 2,
            "future": 2,
            "window_stride": 2,
            "batch_size": 4,
            "filters": 8,
            "downsample": 1,
            "latent_blocks": 1,
            "predictions": 1,
        },
        "sample://shallow-water",
    ),
    # The priors, on the codes of one tokenizer run (trained once, in float32).
    "pixelcnn": (
        {"vqvae": "tok", "batch_size": 8, "filters": 16, "layers": 2, "samples": 2},
        "sample://webcam",
    ),
    "maskgit": (
        {
            "tokenizer": "tok",
            "batch_size": 8,
            "dim": 16,
            "layers": 1,
            "heads": 2,
            "mlp_dim": 32,
            "decode_steps": 2,
            "validation_grids": 4,
            "samples": 2,
        },
        "sample://webcam",
    ),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs folder holding the priors' tokenizer run ``tok``."""
    from mlops_trainers.config import RunConfig
    from mlops_trainers.runtime import run

    root = tmp_path_factory.mktemp("precision") / "runs"
    config = _run_file(root, "tok-g1-0123abcd", "tokenizer", TOKENIZER, data="sample://webcam")
    assert run(RunConfig.model_validate(config)) == 0
    return root


def _run_file(
    root: Path, run_id: str, kind: str, config: dict[str, Any], *, data: str, epochs: int = 1
) -> dict[str, Any]:
    return {
        "version": 1,
        "run_id": run_id,
        "name": run_id.rsplit("-g", 1)[0],
        "trainer": {"kind": kind, "config": {"steps_per_epoch": STEPS, **config}},
        "data": data,
        "output_prefix": str(root),
        "output": str(root / run_id),
        "epochs": epochs,
        "checkpoint_every": 100,
        "seed": 3,
    }


def _xla_functions(function: Any, seen: set[int] | None = None) -> list[Any]:
    """The tf.functions compiled with XLA reachable from ``function``'s closures (Keras wraps
    the XLA-compiled step in plain Python functions)."""
    seen = set() if seen is None else seen
    if id(function) in seen:
        return []
    seen.add(id(function))
    found = [function] if getattr(function, "_jit_compile", None) else []
    inner = getattr(function, "_python_function", None) or function
    for cell in getattr(inner, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if callable(value):
            found += _xla_functions(value, seen)
    return found


class Captured:
    """The model the runtime trained (recorded when the runtime applies the XLA choice)."""

    model: Any = None


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Captured:
    from mlops_trainers import precision

    box = Captured()
    apply = precision.apply_jit

    def recording(model: Any, on: bool) -> bool:
        box.model = model
        return apply(model, on)

    monkeypatch.setattr(precision, "apply_jit", recording)
    return box


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(CASES))
def test_every_trainer_trains_in_float16_under_xla(
    kind: str, runs: Path, captured: Captured, caplog: pytest.LogCaptureFixture
) -> None:
    """Each trainer, forced to mixed_float16 and XLA, trains through the runtime to a finished
    run with finite metrics; its layers compute in float16 over float32 variables, the losses it
    reports are float32, the optimizer scales the loss, and the train step is XLA-compiled."""
    from mlops_trainers.config import RunConfig
    from mlops_trainers.runtime import run

    config, data = CASES[kind]
    forced = {**config, "precision": "mixed_float16", "jit_compile": "on"}
    run_file = _run_file(runs, f"{kind}-f16-g1-0123abcd", kind, forced, data=data)
    with caplog.at_level("INFO", logger="mlops_trainers"):
        assert run(RunConfig.model_validate(run_file)) == 0
    assert "precision mixed_float16, XLA on (CPU only)" in caplog.text
    record = json.loads(storage.read_text(f"{run_file['output']}/run.json"))
    metrics = record["final_metrics"]
    assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics
    model = captured.model
    assert model.dtype_policy.name == "mixed_float16"
    weights = [w for w in model.weights if w.dtype not in {"int32", "int64"}]
    assert weights and all(w.dtype == "float32" for w in weights), {
        w.path: w.dtype for w in weights if w.dtype != "float32"
    }
    computing = {layer.compute_dtype for layer in model._flatten_layers() if layer.weights}
    assert "float16" in computing
    assert type(model.optimizer).__name__ == "LossScaleOptimizer"
    assert model.jit_compile is True
    assert _xla_functions(model.train_function), "the train step is not XLA-compiled"
    # Every quantizer computes its distances in float32.
    for layer in model._flatten_layers():
        if "quantizer" in type(layer).__name__.lower():
            assert layer.compute_dtype == "float32", (layer.name, layer.compute_dtype)
    manifest = json.loads(
        storage.read_text(f"{run_file['output']}/checkpoints/step-{STEPS:010d}/checkpoint.json")
    )
    assert manifest["precision"] == "mixed_float16"
    assert keras.config.dtype_policy().name == "float32"  # the process policy is back


# === Numbers: 16-bit training follows float32 training ===


@pytest.mark.slow
def test_mixed_precision_vqvae_learns_like_float32(tmp_path: Path) -> None:
    """The VQ-VAE, 3 epochs on the same images and seed in float32, mixed_bfloat16 and
    mixed_float16: every loss finite, the reconstruction error within 25% of float32's and as
    many codes in use (within 2 of 16)."""
    from mlops_trainers.config import RunConfig
    from mlops_trainers.runtime import run

    config, data = CASES["vqvae"]
    results = {}
    for policy in ("float32", "mixed_bfloat16", "mixed_float16"):
        run_file = _run_file(
            tmp_path, f"vq-{policy.replace('_', '-')}-g1-0123abcd", "vqvae",
            {**config, "precision": policy, "steps_per_epoch": 10}, data=data, epochs=3,
        )  # fmt: skip
        assert run(RunConfig.model_validate(run_file)) == 0
        rows = storage.read_text(f"{run_file['output']}/metrics.csv").splitlines()
        header = rows[0].split(",")
        last = dict(zip(header, rows[-1].split(","), strict=True))
        results[policy] = {k: float(v) for k, v in last.items() if k in ("recon_mse", "codes_used")}
        assert all(math.isfinite(v) for v in results[policy].values()), (policy, last)
    base = results["float32"]
    for policy in ("mixed_bfloat16", "mixed_float16"):
        got = results[policy]
        assert got != base, results  # 16-bit math did run: not float32's numbers to the bit
        assert got["recon_mse"] == pytest.approx(base["recon_mse"], rel=0.25), results
        assert abs(got["codes_used"] - base["codes_used"]) * 16 <= 2, results


# === Resume ===


@pytest.mark.slow
def test_a_float16_checkpoint_resumes_in_float16_and_is_refused_in_float32(
    tmp_path: Path,
) -> None:
    from mlops_trainers.config import RunConfig
    from mlops_trainers.runtime import run

    config, data = CASES["vqvae"]
    forced = {**config, "precision": "mixed_float16"}
    first = _run_file(tmp_path, "vq-resume-g1-0123abcd", "vqvae", forced, data=data)
    assert run(RunConfig.model_validate(first)) == 0
    # The same run, one epoch more: it resumes its own checkpoint (loss scale included).
    again = {**first, "epochs": 2}
    assert run(RunConfig.model_validate(again)) == 0
    record = json.loads(storage.read_text(f"{first['output']}/run.json"))
    assert record["global_step"] == 2 * STEPS
    # Under float32 the optimizer state has no loss scale: refused (exit 2), naming the option.
    as_float32 = {
        **first,
        "epochs": 3,
        "trainer": {
            "kind": "vqvae",
            "config": {**first["trainer"]["config"], "precision": "float32"},
        },
    }
    assert run(RunConfig.model_validate(as_float32)) == 2
    status = json.loads(storage.read_text(f"{first['output']}/status.json"))
    assert "trainer.config.precision" in json.dumps(status), status
    assert np.isfinite(record["final_metrics"]["loss"])
