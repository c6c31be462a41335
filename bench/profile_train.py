"""Where a training step's time goes, by TensorFlow op type: ours against the keras.io port that
``bench_train.py`` compares it with (scaled to the same multiply-adds), in one process.

``bench_train.py`` says how fast each side is; this says why they differ. For each kind it builds
our model and the matched reference exactly as ``bench_train.py`` does, runs ``--warmup`` steps
of ``model.fit`` on each, then profiles ``--steps`` more with TensorFlow's profiler, and reads
the host's self-time per op type from the trace (the profiler's ``framework_op_stats``: what
TensorBoard's profile tab shows). With each op type's FLOPs per step (counted on the traced
step, as ``bench_train.py`` counts them) the table gives GFLOP/s per op type: a convolution of
our shapes against one of theirs, and the time spent in ops that do no multiply-adds at all.

    python bench/profile_train.py [--kinds vqvae tokenizer] [--steps 30]

Writes ``bench/results/profile_<kind>.json`` and ``profile_<kind>.md`` (the table it prints): a
diagnosis. No row of ``results.json`` comes from it, but ``run_all.py`` adds its conclusion
(``common.profile_cause``) to the notes of the kind's keras.io row when that row misses its target.
"""

from __future__ import annotations

import argparse
import glob
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench_train import KINDS, Kind, _dataset, _x_y, _xy, match
from common import RESULTS, commit, machine, profile_cause, today

# oneDNN's rewrites of the graph's ops, as the trace names them -> the graph op whose FLOPs
# they do (a fused convolution also adds its bias and activation; a filter gradient "WithBias"
# also sums the bias gradient).
ONEDNN = {
    "_MklNativeConv2D": "Conv2D",
    "_MklNativeFusedConv2D": "Conv2D",
    "_MklNativeConv2DBackpropInput": "Conv2DBackpropInput",
    "_MklNativeConv2DBackpropFilter": "Conv2DBackpropFilter",
    "_MklNativeConv2DBackpropFilterWithBias": "Conv2DBackpropFilter",
    "_MklNativeMatMul": "MatMul",
    "_MklNativeFusedMatMul": "MatMul",
    "_MklNativeBatchMatMulV2": "BatchMatMulV2",
    "_MklNativeMaxPool": "MaxPool",
    "_MklNativeMaxPoolGrad": "MaxPoolGrad",
}


def _op_times(model: Any, dataset: Any, warmup: int, steps: int) -> dict[str, float]:
    """Host self-time per op type, in ms per step, of ``steps`` profiled ``fit`` steps."""
    import tensorflow as tf
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    model.fit(dataset, epochs=1, steps_per_epoch=warmup, verbose=0)
    logdir = tempfile.mkdtemp(prefix="bench-profile-")
    tf.profiler.experimental.start(logdir)
    try:
        model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    finally:
        tf.profiler.experimental.stop()
    (path,) = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
    data, ok = plugin.xspace_to_tools_data([path], "framework_op_stats", {})
    if not ok:
        raise RuntimeError(f"the profiler could not read {path}")
    table = json.loads(data)[0]  # [0]: all ops; [1] excludes the idle time
    cols = [c["id"] for c in table["cols"]]
    times: dict[str, float] = {}
    for row in table["rows"]:
        values = dict(zip(cols, (cell["v"] for cell in row["c"]), strict=True))
        if values["host_or_device"] != "Host" or values["type"] == "IDLE":
            continue
        kind = ONEDNN.get(str(values["type"]), str(values["type"]))
        times[kind] = times.get(kind, 0.0) + float(values["total_self_time"]) / 1000 / steps
    return times


def profile(kind: Kind, warmup: int, steps: int, root: Path) -> dict[str, Any]:
    import keras
    from mlops_trainers.trainer import RunContext, get_trainer

    m = match(kind, warmup=warmup, steps=steps, root=root)
    reference = m.reference
    # Ours built anew after the matching's clear_session, as bench_train.measure builds it.
    trainer = get_trainer(kind.kind)(m.probe, RunContext(m.probe, m.scratch))
    trainer.prepare()
    model = trainer.build_model()
    # Both from the same batches, whole and prefetched: no input work on either side.
    sides = {
        "ours": (model, _dataset([_xy(*_x_y(b)) for b in m.batches]), m.ours_work),
        "reference": (reference, _dataset([_xy(*b) for b in m.ref_batches]), m.ref_work),
    }
    result: dict[str, Any] = {"kind": kind.kind, "reference_scale": m.scale}
    for name, (net, data, work) in sides.items():
        times = _op_times(net, data, warmup, steps)
        result[name] = {
            "ms_per_step": sum(times.values()),
            "macs_per_example": work.macs_per_example,
            "ms_by_op": dict(sorted(times.items(), key=lambda kv: -kv[1])),
            "gflop_by_op": {k: v / 1e9 for k, v in work.by_op.items()},
        }
    keras.utils.clear_session()
    return result


def table(result: dict[str, Any], top: int = 14) -> str:
    ours, ref = result["ours"], result["reference"]
    kinds = sorted(
        set(ours["ms_by_op"]) | set(ref["ms_by_op"]),
        key=lambda k: -(ours["ms_by_op"].get(k, 0.0) + ref["ms_by_op"].get(k, 0.0)),
    )
    lines = [
        f"{result['kind']}: ours {ours['ms_per_step']:.1f} ms/step, keras.io (width "
        f"x{result['reference_scale']:.3g}) {ref['ms_per_step']:.1f} ms/step, "
        f"{ours['macs_per_example'] / 1e6:.1f} vs {ref['macs_per_example'] / 1e6:.1f} M "
        "multiply-adds/example (host self-time, profiled fit steps)",
        "| op type | ours ms/step | keras.io ms/step | ours GFLOP/s | keras.io GFLOP/s |",
        "|---|---:|---:|---:|---:|",
    ]

    def rate(side: dict[str, Any], op: str) -> str:
        ms, gflop = side["ms_by_op"].get(op, 0.0), side["gflop_by_op"].get(op, 0.0)
        return f"{gflop / ms * 1000:.1f}" if ms > 0 and gflop > 0 else "-"

    for op in kinds[:top]:
        lines.append(
            f"| {op} | {ours['ms_by_op'].get(op, 0.0):.2f} | {ref['ms_by_op'].get(op, 0.0):.2f} "
            f"| {rate(ours, op)} | {rate(ref, op)} |"
        )
    rest = kinds[top:]
    lines.append(
        f"| {len(rest)} other op types | {sum(ours['ms_by_op'].get(k, 0.0) for k in rest):.2f} "
        f"| {sum(ref['ms_by_op'].get(k, 0.0) for k in rest):.2f} | | |"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--kinds", nargs="+", choices=sorted(KINDS), default=["pixelcnn", "tokenizer", "vqvae"]
    )
    parser.add_argument("--steps", type=int, default=30, help="profiled steps per side")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-profile-runs-"))
    for name in args.kinds:
        result = profile(KINDS[name], args.warmup, args.steps, root)
        result.update(machine=machine(), measured=today(), commit=commit())
        (RESULTS / f"profile_{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        text = table(result)
        (RESULTS / f"profile_{name}.md").write_text(f"{text}\n\n{result['machine']}\n")
        print(f"{text}\ncause: {profile_cause(result)}", flush=True)


if __name__ == "__main__":
    main()
