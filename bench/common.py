"""What every benchmark shares: timing, the result format, a GCS emulator.

A benchmark is a script ``bench/bench_<name>.py`` that measures ours and a reference *side by
side in the same run* (this machine is noisy: only the ratio means something) and writes
``bench/results/<name>.json`` with :func:`write_rows`. ``bench/run_all.py`` runs every script
and assembles ``bench/results/README.md`` from those files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Before TensorFlow is imported by a benchmark: its C++ INFO/WARNING lines would drown the figures.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"


@dataclass(frozen=True)
class Row:
    """One figure: ours against a reference (or a floor), same sizes, same run."""

    benchmark: str
    ours: float
    reference: float
    unit: str
    reference_name: str
    notes: str = ""

    @property
    def ratio(self) -> float:
        """ours / reference (for a rate, > 1 is faster than the reference; for a time, < 1 is)."""
        return self.ours / self.reference if self.reference else float("nan")


@dataclass(frozen=True)
class Target:
    """What a row's ratio should be (issue 13's targets): ``ratio >= value`` or ``<= value``; or,
    for a bound the issue sets on our own figure (requests per object, MiB), what ``ours`` should
    be (``absolute``): the ratio then still says how far ours is from the reference."""

    pattern: str  # the rows it applies to: a regular expression their ``benchmark`` starts with
    op: str  # ">=" or "<="
    value: float
    text: str  # as the README shows it
    # Set when today's row compares something else than the target means (another reference):
    # the row is then not judged against the target, and this says why.
    unlike: str = ""
    absolute: bool = False

    def met(self, value: float) -> bool | None:
        """Whether ``value`` (the ratio, or ``ours`` for an absolute target) meets the target;
        None when the row cannot be judged by it."""
        if self.unlike:
            return None
        return value >= self.value if self.op == ">=" else value <= self.value


TARGETS = (
    Target(r"PixelCNN sampling", "<=", 0.05, "≤ 0.05 (≥ 20x faster)"),
    Target(r"PixelCNN training, masked kernels on their nonzero taps", ">=", 1.5, "≥ 1.5"),
    Target(r"train_\w+: runtime loop vs the same model in model\.fit", ">=", 0.95, "≥ 0.95"),
    Target(r"train_\w+: vs keras\.io at the same multiply-adds", ">=", 1.0, "≥ 1.0"),
    # bench_gpu.py: the loop beside a GPU step, the same bound as on the CPU.
    Target(r"gpu_\w+: runtime loop vs the same model in model\.fit", ">=", 0.95, "≥ 0.95"),
    Target(r"trainer recovery after SIGTERM", "<=", 1.1, "≤ 1.1"),
    Target(r"goodput under a SIGTERM", ">=", 0.9, "≥ 0.9"),
    Target(r"steps lost to a", "<=", 1.0, "≤ 1 interval"),
    Target(r"input pipeline, epoch 2 from the uint8 cache", ">=", 5.0, "≥ 5x epoch 1"),
    Target(r"input pipeline, epoch 1", ">=", 0.7, "≥ 0.7"),
    # bench_operator.py's rows are operator_n<N>; issue 13 sets a target for N=1000 only (the
    # smaller N is there for the CPU slope, and is reported without a target). Requests and
    # RSS are bounds on our own figures, judged on ``ours``; RSS "< 150" is judged as <= 150.
    Target(r"operator_n1000: API requests per object", "<=", 5.0, "ours ≤ 5", absolute=True),
    Target(r"operator_n1000: peak RSS", "<=", 150.0, "ours < 150 MiB", absolute=True),
    Target(r"operator_n1000", "<=", 1.5, "≤ 1.5 (vs a concurrent plain client)"),
)  # fmt: skip


# An op type "does the multiply-adds" when it is a convolution or a matmul (an elementwise Mul
# counts FLOPs too, but its time is memory traffic) carrying this share of the step's FLOPs.
MULTIPLY_ADD_SHARE = 0.01
MULTIPLY_ADD_OPS = re.compile(r".*(Conv|MatMul)")


def profile_cause(profile: Mapping[str, Any], others: int = 3) -> str:
    """Where a profiled step (``profile_train.py``) loses against the keras.io port, and the
    bound that sets: the ratio ours would reach if every op that does no multiply-adds cost what
    the reference's do, the convolutions (and matmuls) then deciding it alone."""
    ours, ref = profile["ours"], profile["reference"]
    flops = {**ref["gflop_by_op"], **ours["gflop_by_op"]}
    total = sum(ours["gflop_by_op"].values())
    heavy = sorted(
        (
            op
            for op, g in flops.items()
            if MULTIPLY_ADD_OPS.match(op) and g >= MULTIPLY_ADD_SHARE * total
        ),
        key=lambda op: -ours["ms_by_op"].get(op, 0.0),
    )

    def ms(side: Mapping[str, Any], ops: Iterable[str]) -> float:
        return sum(side["ms_by_op"].get(op, 0.0) for op in ops)

    t_ours, t_ref = float(ours["ms_per_step"]), float(ref["ms_per_step"])
    heavy_ours, heavy_ref = ms(ours, heavy), ms(ref, heavy)
    rest_ours, rest_ref = t_ours - heavy_ours, t_ref - heavy_ref
    extra = sorted(
        (
            (ours["ms_by_op"].get(op, 0.0) - ref["ms_by_op"].get(op, 0.0), op)
            for op in set(ours["ms_by_op"]) - set(heavy)
        ),
        reverse=True,
    )[:others]

    def rate(side: Mapping[str, Any], op: str) -> float:
        return float(side["gflop_by_op"].get(op, 0.0)) / max(side["ms_by_op"].get(op, 0.0), 1e-9)

    slowest = max(heavy, key=lambda op: ms(ours, [op]) - ms(ref, [op]))
    return (
        f"profiled ({t_ours:.1f} vs {t_ref:.1f} ms/step): the multiply-add ops "
        f"({', '.join(heavy)}) take {heavy_ours:.1f} vs {heavy_ref:.1f} ms "
        f"({heavy_ref / heavy_ours:.2f}x keras.io's speed; the furthest behind, {slowest}, "
        f"at {rate(ours, slowest) * 1000:.0f} vs {rate(ref, slowest) * 1000:.0f} GFLOP/s), "
        f"all other ops {rest_ours:.1f} vs "
        f"{rest_ref:.1f} ms, most in "
        + ", ".join(f"{op} ({d:+.1f} ms)" for d, op in extra)
        + f"; with keras.io's cost for the other ops ours would reach "
        f"{t_ref / (heavy_ours + rest_ref):.2f}, the bound its convolutions set"
    )


def target_of(benchmark: str) -> Target | None:
    """The first target whose pattern matches the start of the row's name (the most specific
    come first)."""
    return next((t for t in TARGETS if re.match(t.pattern, benchmark)), None)


def judge(benchmark: str, ours: float, ratio: float) -> bool | None:
    """Whether a row meets its target (None: no target, or one it cannot be judged by)."""
    target = target_of(benchmark)
    if target is None:
        return None
    return target.met(ours if target.absolute else ratio)


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls, in seconds (the least disturbed by the machine)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_rows(name: str, rows: list[Row], extra: dict[str, object] | None = None) -> Path:
    """Write ``bench/results/<name>.json`` and print the rows as a Markdown table."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "name": name,
        "machine": machine(),
        # When and from which commit: the README's table says where each figure comes from.
        "measured": today(),
        "commit": commit(),
        "rows": [{**asdict(r), "ratio": r.ratio} for r in rows],
        **(extra or {}),
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(markdown(payload["rows"]))  # type: ignore[arg-type]
    return path


def rounds_parser(
    doc: str | None, *, out: str, steps: int, warmup: int, rounds: int = 5,
    kinds: Sequence[str] = (),
) -> argparse.ArgumentParser:  # fmt: skip
    """The arguments every paired-rounds training bench takes (``--kinds`` where it has kinds),
    with that bench's defaults."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    if kinds:
        parser.add_argument("--kinds", nargs="+", choices=list(kinds), default=list(kinds))
    parser.add_argument("--steps", type=int, default=steps, help="timed steps per round and arm")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--seed", type=int, default=0, help="of the rounds' random orders")
    parser.add_argument("--out", default=out, help="bench/results/<out>.json")
    return parser


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def commit() -> str:
    """HEAD's short hash, ``+changes`` when code outside ``bench/results`` differs from it (the
    figures then come from uncommitted code, and say so)."""

    def git(*args: str) -> str:
        proc = subprocess.run(
            ["git", *args], cwd=BENCH, capture_output=True, text=True, check=False
        )  # fmt: skip
        return proc.stdout.strip() if proc.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    changed = [
        line for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
        if "bench/results/" not in line
    ]  # fmt: skip
    return f"{head}+changes" if head and changed else head


def markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| benchmark | ours | reference | ratio ours/ref | unit | reference is | notes |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['benchmark']} | {_num(r['ours'])} | {_num(r['reference'])} | "
            f"**{_num(r['ratio'])}** | {r['unit']} | {r['reference_name']} | {r.get('notes', '')} |"
        )
    return "\n".join(lines)


def _num(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def gcs_emulator(bucket: str = "bench") -> Iterator[str]:
    """A real GCS JSON-API emulator (PyPI ``gcp-storage-emulator``, through hack/gcs_emulator.py)
    in memory, with ``bucket``; sets the environment gcsfs reads. Yields ``gs://<bucket>``."""
    port = free_port()
    launcher = Path(__file__).parents[1] / "hack" / "gcs_emulator.py"
    cmd = [sys.executable, str(launcher), "start", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--in-memory", "-q"]
    cmd += ["--default-bucket", bucket]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    host = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")
    }
    os.environ["STORAGE_EMULATOR_HOST"] = host
    # gcsfs probes for hierarchical namespaces with an API the emulator lacks.
    os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{host}/storage/v1/b", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the GCS emulator did not start") from None
                time.sleep(0.2)
        yield f"gs://{bucket}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# === Work per step, the machine's roofline, paired ratios ===

# The ops whose FLOPs are the multiply-adds of convolutions and matrix products (TF's profiler
# counts 2 per multiply-add); elementwise work (bias, activations, the optimizer) is left out of
# "multiply-adds" but kept in the total.
MAC_OPS = frozenset(
    {
        "Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter",
        "DepthwiseConv2dNative", "DepthwiseConv2dNativeBackpropInput",
        "DepthwiseConv2dNativeBackpropFilter", "MatMul", "BatchMatMulV2", "BatchMatMulV3",
    }
)  # fmt: skip


@dataclass(frozen=True)
class StepWork:
    """What one training step computes, counted on its traced TensorFlow graph."""

    macs: float  # multiply-adds of convolutions and matrix products (forward + backward)
    flops: float  # every op TF's profiler has a FLOP count for
    batch: int
    by_op: dict[str, float]
    uncounted: tuple[str, ...]  # heavy op types in the graph without a FLOP count (should be ())

    @property
    def macs_per_example(self) -> float:
        return self.macs / self.batch


def train_step_work(model: object, x: object, y: object = None) -> StepWork:
    """Trace ``model.train_step((x, y, None))`` (what ``fit`` and ``train_on_batch`` run) on
    the shapes of ``x``/``y`` and count its FLOPs with TensorFlow's profiler: the forward, the
    gradients and the optimizer update, as compiled, not a formula."""
    import tensorflow as tf

    def spec(a: object) -> object:
        t = tf.convert_to_tensor(a)
        return tf.TensorSpec(t.shape, t.dtype)

    x_spec = tf.nest.map_structure(spec, x)
    y_spec = None if y is None else tf.nest.map_structure(spec, y)
    step = tf.function(lambda a, b: model.train_step((a, b, None)))  # type: ignore[attr-defined]
    graph = step.get_concrete_function(x_spec, y_spec).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph=graph, options=options)
    by_op: dict[str, float] = {}
    for node in profile.children:
        kind = graph.get_operation_by_name(node.name).type
        by_op[kind] = by_op.get(kind, 0.0) + float(node.total_float_ops)
    # TF's profiler has no count for depthwise convolutions (keras.io's U-Net is made of
    # separable ones): 2 x (elements of the forward output) x kernel taps, for each of the three.
    for op in graph.get_operations():
        if op.type.startswith("DepthwiseConv2dNative"):
            by_op[op.type] = by_op.get(op.type, 0.0) + _depthwise_flops(op)
    heavy = {"Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "MatMul", "Einsum"}
    heavy |= {"DepthwiseConv2dNative", "BatchMatMulV2", "BatchMatMulV3", "Conv3D"}
    present = {op.type for op in graph.get_operations()}
    batch = int(tf.nest.flatten(x_spec)[0].shape[0])
    return StepWork(
        macs=sum(v for k, v in by_op.items() if k in MAC_OPS) / 2,
        flops=float(profile.total_float_ops),
        batch=batch,
        by_op=by_op,
        uncounted=tuple(sorted(k for k in present & heavy if not by_op.get(k))),
    )


def _depthwise_flops(op: object) -> float:
    import numpy as np
    import tensorflow as tf

    inputs = op.inputs  # type: ignore[attr-defined]
    if op.type == "DepthwiseConv2dNative":  # type: ignore[attr-defined]
        taps = inputs[1].shape[:2]
        out = op.outputs[0].shape  # type: ignore[attr-defined]
    elif op.type == "DepthwiseConv2dNativeBackpropInput":  # type: ignore[attr-defined]
        taps, out = inputs[1].shape[:2], inputs[2].shape
    else:  # BackpropFilter: (input, filter_sizes, out_backprop)
        taps, out = tf.get_static_value(inputs[1])[:2], inputs[2].shape
    return 2.0 * float(np.prod(out)) * float(np.prod(taps))


def roofline(repeats: int = 5) -> dict[str, float]:
    """GFLOP/s this machine reaches on a large float32 GEMM and a large 3x3 convolution (the
    best of ``repeats`` calls each), measured now, in the process that measures the models."""
    import tensorflow as tf

    n = 1024
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    gemm = tf.function(lambda: tf.matmul(a, b))
    images = tf.random.normal((16, 32, 32, 128))
    kernel = tf.random.normal((3, 3, 128, 128))
    conv = tf.function(lambda: tf.nn.conv2d(images, kernel, 1, "SAME"))
    out: dict[str, float] = {}
    for name, fn, flops in (
        ("gemm", gemm, 2 * n**3),
        ("conv3x3", conv, 2 * 16 * 32 * 32 * 128 * 128 * 9),
    ):
        fn().numpy()  # trace
        seconds = best_of(lambda fn=fn: fn().numpy(), repeats)  # type: ignore[misc]
        out[name] = flops / seconds / 1e9
    out["peak"] = max(out["gemm"], out["conv3x3"])
    return out


@dataclass(frozen=True)
class Paired:
    """Per-round ratios a/b of rounds run in random order: their geometric mean and its 95%
    t-interval (on the logs: a ratio's error is multiplicative)."""

    ratios: tuple[float, ...]
    mean: float
    low: float
    high: float

    @classmethod
    def of(cls, ratios: list[float]) -> Paired:
        import math
        import statistics

        from scipy import stats

        logs = [math.log(r) for r in ratios]
        centre = statistics.fmean(logs)
        if len(logs) < 2:
            return cls(tuple(ratios), math.exp(centre), float("nan"), float("nan"))
        half = stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
        return cls(
            tuple(ratios), math.exp(centre), math.exp(centre - half), math.exp(centre + half)
        )

    def text(self) -> str:
        per_round = ", ".join(f"{r:.3g}" for r in self.ratios)
        return (
            f"paired over {len(self.ratios)} rounds in random order: {self.mean:.3g} "
            f"(95% interval {self.low:.3g}-{self.high:.3g}; per round {per_round})"
        )
