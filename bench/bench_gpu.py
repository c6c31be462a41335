"""GPU rows: what the trainers' GPU switches buy, and the runtime loop beside a GPU step.

Measured only where TensorFlow sees a GPU. Without one (every machine this project has run on so
far) it measures nothing: it writes ``bench/results/gpu.json`` with no rows and ``not_measured``
saying why, and ``run_all.py`` prints that under the tables, so the results say the GPU rows are
not measured rather than leaving them out.

With one, for each trainer kind of ``bench_train.KINDS`` (at that bench's sizes) and its
small-step VQ-VAE, in rounds run in random order and paired:

- ``gpu_<kind>: runtime loop vs the same model in model.fit``: the real ``mlops run`` loop
  (periodic checkpoint, metrics, TensorBoard, spike guard, Argo's progress file) with
  ``precision`` and ``jit_compile`` at ``auto``, what a GPU pod gets (mixed precision, XLA),
  against ``model.fit`` of the same model under the same policy and XLA setting. Target ≥ 0.95,
  as on the CPU: beside a GPU step of a few ms the loop's host work is its largest share.
- ``gpu_<kind>: precision and XLA at auto vs float32 without XLA``: the runtime loop both ways,
  what the switches buy on that GPU (no target).

Several GPUs: the runtime trains data-parallel over all of them (``MirroredStrategy``, as a pod
with ``resources.gpu.count > 1`` does) and ``fit`` under the same strategy; the notes say how
many replicas.

    python bench/bench_gpu.py [--kinds vqvae small_step] [--steps 200] [--rounds 5]

in a checkout set up with TensorFlow's CUDA wheels (``pip install -c constraints-gpu.txt -e
'.[trainer,dev]'``). ``--cpu`` runs the same arms on the CPU, the fast arm at
``mixed_float16`` + XLA (what ``auto`` picks on a 7.x GPU): a dry run of this script that prints
its rows and writes nothing, its figures being no GPU's (``tests/bench/test_bench_gpu.py``).
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common`, also when imported

import common
from bench_train import (
    KINDS,
    SMALL_STEP,
    Kind,
    _fit_arm,
    _rounds,
    _runtime_arm,
    probe_trainer,
    scope,
    with_parent,
)
from common import Paired, Row

FAST = {"precision": "auto", "jit_compile": "auto"}  # a GPU pod's defaults
FAST_ON_CPU = {"precision": "mixed_float16", "jit_compile": "on"}  # --cpu: what auto picks on 7.x
PLAIN = {"precision": "float32", "jit_compile": "off"}


def no_gpu_reason() -> str | None:
    """Why the GPU rows cannot be measured here (None: a GPU is visible)."""
    from mlops_trainers import precision

    if precision.visible_gpus():
        return None
    return (
        f"no GPU visible to TensorFlow on this machine ({common.machine()}); "
        "bench/bench_gpu.py measures these rows where one is"
    )


def measure(
    kind: Kind, label: str, fast: dict[str, str], *, warmup: int, steps: int, rounds: int,
    root: Path, orders: random.Random,
) -> dict[str, Any]:  # fmt: skip
    """The runtime at ``fast`` and at float32 without XLA, and ``fit`` at ``fast``, paired."""
    from mlops_trainers import distribute, precision

    base = with_parent(kind, dict(kind.config, steps_per_epoch=warmup + steps + 1), root)
    fast_config, plain_config = dict(base, **fast), dict(base, **PLAIN)
    gpus = precision.visible_gpus()
    strategy = distribute.strategy_for(gpus)
    replicas = 1 if strategy is None else int(strategy.num_replicas_in_sync)
    accel = precision.resolve(fast["precision"], fast["jit_compile"], gpus, replicas=replicas)

    # fit's model: the trainer's build_model() under the policy and XLA setting the runtime
    # resolves for the fast arm (mlops_trainers.runtime does the same before its first step).
    trainer, scratch, signature = probe_trainer(kind, fast_config, root)
    with scope(strategy), precision.dtype_policy(accel.policy):
        model = trainer.build_model()
    jit = precision.apply_jit(model, accel.jit_compile)

    def arm(config: dict[str, Any]) -> Callable[[], float]:
        def runtime() -> float:
            return _runtime_arm(kind, config, root, warmup, steps)[0]

        return runtime

    def fit() -> float:
        with scope(strategy):
            return _fit_arm(trainer, model, signature, warmup, steps)

    arms: dict[str, Callable[[], float]] = {
        "runtime": arm(fast_config), "fit": fit, "runtime_float32": arm(plain_config),
    }  # fmt: skip
    rates, drawn = _rounds(label, arms, rounds, orders)
    shutil.rmtree(scratch, ignore_errors=True)

    def pair(a: str, b: str) -> Paired:
        return Paired.of([x / y for x, y in zip(rates[a], rates[b], strict=True)])

    return dict(
        kind=label, config=base, fast=fast, policy=accel.policy, jit_compile=jit,
        replicas=replicas, devices=[g.name for g in gpus] or ["CPU"], warmup=warmup,
        steps=steps, rounds=rounds, orders=drawn, rates=rates,
        vs_fit=pair("runtime", "fit").__dict__, vs_float32=pair("runtime", "runtime_float32").__dict__,
    )  # fmt: skip


def rows_of(m: dict[str, Any]) -> list[Row]:
    import statistics

    med = {name: statistics.median(v) for name, v in m["rates"].items()}
    vs_fit, vs_plain = Paired(**m["vs_fit"]), Paired(**m["vs_float32"])
    where = (
        f"on {', '.join(m['devices'])}, {m['replicas']} replica(s); precision {m['policy']}, "
        f"XLA {'on' if m['jit_compile'] else 'off'}; batch {m['config']['batch_size']}; "
        f"{m['steps']} timed steps after {m['warmup']} per round"
    )
    name = f"gpu_{m['kind']}"
    return [
        Row(
            f"{name}: runtime loop vs the same model in model.fit",
            med["runtime"],
            med["runtime"] / vs_fit.mean,
            "steps/s",
            "plain model.fit of build_model() under the same policy and XLA, the trainer's data",
            f"{vs_fit.text()}; {where}",
        ),
        Row(
            f"{name}: precision and XLA at auto vs float32 without XLA",
            med["runtime"],
            med["runtime"] / vs_plain.mean,
            "steps/s",
            "the same runtime loop at float32, XLA off",
            f"{vs_plain.text()}; {where}",
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.rounds_parser(
        __doc__, out="gpu", steps=200, warmup=20, kinds=[*sorted(KINDS), "small_step"]
    )
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="a dry run on the CPU (mixed_float16 + XLA): prints its rows, writes nothing",
    )
    args = parser.parse_args(None if argv is None else list(argv))
    why = no_gpu_reason()
    if why is not None and not args.cpu:
        print(f"GPU rows not measured: {why}", flush=True)
        common.write_rows(args.out, [], extra={"not_measured": {"what": "GPU rows", "why": why}})
        return 0
    fast = FAST if why is None else FAST_ON_CPU
    orders = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="bench-gpu-runs-"))
    rows: list[Row] = []
    detail: list[dict[str, Any]] = []
    try:
        for i, name in enumerate(args.kinds, 1):
            print(f"[{i}/{len(args.kinds)}] gpu_{name} ...", flush=True)
            kind = SMALL_STEP if name == "small_step" else KINDS[name]
            m = measure(
                kind, name, fast, warmup=args.warmup, steps=args.steps, rounds=args.rounds,
                root=root, orders=orders,
            )  # fmt: skip
            detail.append(m)
            rows += rows_of(m)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if why is not None:  # --cpu: the dry run's figures are no GPU's, and go nowhere
        print(common.markdown([{**asdict(r), "ratio": r.ratio} for r in rows]))
        print(f"a --cpu dry run: nothing written ({why})")
        return 0
    common.write_rows(args.out, rows, extra={"detail": detail})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
