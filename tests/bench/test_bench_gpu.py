"""bench/bench_gpu.py: the GPU rows, measured where a GPU is and said to be missing where none is.

No machine this project runs on has a GPU, so the script's GPU path runs here as its ``--cpu``
dry run (mixed_float16 + XLA on the CPU): the same arms, so the first GPU run does not fail on
the script."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))


def _no_gpu() -> None:
    from mlops_trainers import precision

    if precision.visible_gpus():
        pytest.skip("a GPU is visible: the rows are measured, not said to be missing")


def test_without_a_gpu_the_results_say_the_gpu_rows_are_not_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_gpu()
    import bench_gpu
    import common
    import run_all

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(run_all, "RESULTS", tmp_path)
    assert bench_gpu.main([]) == 0
    payload = json.loads((tmp_path / "gpu.json").read_text())
    assert payload["rows"] == []
    assert payload["not_measured"]["what"] == "GPU rows"
    assert "no GPU visible to TensorFlow" in payload["not_measured"]["why"]
    # Under the tables (README's and bench/results'), not left out silently.
    table = run_all.readme_table(run_all.collect())
    assert "\n\nNot measured: GPU rows (bench/results/gpu.json, " in table
    assert table.rstrip().endswith("bench/bench_gpu.py measures these rows where one is.")


def test_the_dry_run_times_every_arm_under_mixed_precision_and_xla(tmp_path: Path) -> None:
    """The small-step VQ-VAE through the three arms, the fast ones at mixed_float16 + XLA: fit's
    model really is float16 and XLA-compiled, every arm gives a rate, and the loop-vs-fit row is
    judged by the CPU's bound (0.95)."""
    _no_gpu()
    import bench_gpu
    from bench_train import SMALL_STEP
    from common import target_of

    m = bench_gpu.measure(
        SMALL_STEP, "small_step", bench_gpu.FAST_ON_CPU, warmup=2, steps=3, rounds=1,
        root=tmp_path, orders=random.Random(0),
    )  # fmt: skip
    assert (m["policy"], m["jit_compile"], m["replicas"]) == ("mixed_float16", True, 1)
    assert set(m["rates"]) == {"runtime", "fit", "runtime_float32"}
    assert all(len(v) == 1 and math.isfinite(v[0]) and v[0] > 0 for v in m["rates"].values())
    loop, switches = bench_gpu.rows_of(m)
    assert loop.benchmark == "gpu_small_step: runtime loop vs the same model in model.fit"
    target = target_of(loop.benchmark)
    assert target is not None and target.value == 0.95
    assert switches.benchmark.endswith("precision and XLA at auto vs float32 without XLA")
    assert target_of(switches.benchmark) is None  # reported: what the switches buy
    assert "precision mixed_float16, XLA on" in loop.notes
