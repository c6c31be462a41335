"""What every benchmark shares: timing, the result format, a GCS emulator.

A benchmark is a script ``bench/bench_<name>.py`` that measures ours and a reference *side by
side in the same run* (this machine is noisy: only the ratio means something) and writes
``bench/results/<name>.json`` with :func:`write_rows`. ``bench/run_all.py`` runs every script
and assembles ``bench/results/README.md`` from those files.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

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
    """What a row's ratio should be (issue 13's targets): ``ratio >= value`` or ``<= value``."""

    prefix: str  # the rows it applies to: their ``benchmark`` starts with this
    op: str  # ">=" or "<="
    value: float
    text: str  # as the README shows it
    # Set when today's row compares something else than the target means (another reference):
    # the row is then not judged against the target, and this says why.
    unlike: str = ""

    def met(self, ratio: float) -> bool | None:
        """Whether ``ratio`` meets the target; None when the row cannot be judged by it."""
        if self.unlike:
            return None
        return ratio >= self.value if self.op == ">=" else ratio <= self.value


NOT_FLOP_MATCHED = "not FLOP-matched: ours does more multiply-adds per image; the row to rebuild"
TARGETS = (
    Target("PixelCNN sampling", "<=", 0.05, "≤ 0.05 (≥ 20x faster)"),
    Target("PixelCNN training, masked kernels on their nonzero taps", ">=", 1.5, "≥ 1.5"),
    Target("PixelCNN training", ">=", 1.0, "≥ 1.0", NOT_FLOP_MATCHED),
    Target("VQ-VAE training", ">=", 1.0, "≥ 1.0", NOT_FLOP_MATCHED),
    Target("U-Net training", ">=", 1.0, "≥ 1.0", NOT_FLOP_MATCHED),
    Target("trainer recovery after SIGTERM", "<=", 1.1, "≤ 1.1"),
    Target("steps lost to a", "<=", 1.0, "≤ 1 interval"),
    Target(
        "input pipeline", ">=", 0.7, "≥ 0.7",
        "the reference reads bytes without decoding; the target's is a bare PNG decode",
    ),
    Target(
        "operator: apply", "<=", 1.5, "≤ 1.5",
        "the floor is a serial client loop; the target's is a concurrent client at N=1000",
    ),
)  # fmt: skip


def target_of(benchmark: str) -> Target | None:
    """The first target whose prefix the row's name starts with (the most specific come first)."""
    return next((t for t in TARGETS if benchmark.startswith(t.prefix)), None)


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
        "measured": time.strftime("%Y-%m-%d", time.gmtime()),
        "commit": _commit(),
        "rows": [{**asdict(r), "ratio": r.ratio} for r in rows],
        **(extra or {}),
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(markdown(payload["rows"]))  # type: ignore[arg-type]
    return path


def _commit() -> str:
    proc = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=BENCH,
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else ""


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
    """A real GCS JSON-API emulator (PyPI ``gcp-storage-emulator``) in memory, with ``bucket``;
    sets the environment gcsfs reads. Yields ``gs://<bucket>``."""
    port = free_port()
    exe = Path(sys.executable).parent / "gcp-storage-emulator"
    cmd = [str(exe), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory", "-q"]
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
