"""Checkpoints on GCS: the runtime's steps/s with each checkpoint's upload beside the next steps
(ours, since fd568ed) against the same run with each upload in line, finished before the next
step (the runtime before fd568ed, restored here by waiting for the upload inside the checkpoint).

Both arms are whole ``mlops run``s of one epoch in this process, output on the GCS emulator
(``common.gcs_emulator``: gcsfs over HTTP, as in a pod), the same trainer and config, the same
checkpoints (every ``--every`` steps), rounds in random order; the ratio is paired per round.
The emulator answers from memory on this machine, in the same 2 cores as the training, so a
request costs CPU and no waiting; GCS is a network round trip away. Each ``--latency-ms`` value
is a row: 0 is the emulator as it is, another puts that many milliseconds before each request
(a proxy in front of the emulator, ``tests/trainers/stalling_proxy.py``), an assumed round trip,
not a measured one.

    python bench/bench_checkpoint.py [--kinds tokenizer] [--latency-ms 0 30] [--every 10]

Writes ``bench/results/checkpoint.json``.
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench_train import KINDS, _rate, _rounds, _StepClock
from common import Paired, Row, gcs_emulator, rounds_parser, write_rows

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "trainers"))
from stalling_proxy import stalling_proxy  # the tests' proxy, on the path above


@contextlib.contextmanager
def _storage(latency_ms: float) -> Iterator[str]:
    """The emulator's bucket URL, reached through a proxy adding ``latency_ms`` per request."""
    with gcs_emulator() as bucket:
        if not latency_ms:
            yield bucket
            return
        host = os.environ["STORAGE_EMULATOR_HOST"]
        with stalling_proxy(host, lambda *_: False, latency_ms / 1e3) as proxy:
            os.environ["STORAGE_EMULATOR_HOST"] = proxy.url
            try:
                yield bucket
            finally:
                os.environ["STORAGE_EMULATOR_HOST"] = host


def _run(kind: str, config: dict[str, Any], data: str, bucket: str, every: int) -> Any:
    from mlops_trainers.config import RunConfig

    name = f"ckpt-{kind}-g1-{uuid.uuid4().hex[:8]}"
    return RunConfig(
        run_id=name,
        name=name.rsplit("-g", 1)[0],
        trainer={"kind": kind, "config": config},
        data=data,
        output_prefix=bucket,
        output=f"{bucket}/{name}",
        epochs=1,
        checkpoint_every=every,
    )


def _arm(
    cfg: Any, warmup: int, steps: int, *, in_line: bool
) -> tuple[float, float]:  # fmt: skip
    """One run's steps/s over the timed steps, and the seconds its checkpoints held the
    training thread in them; ``in_line``: each checkpoint waits for its own upload."""
    from mlops_trainers import runtime

    real = runtime._Run._checkpoint

    def checkpoint_in_line(run: Any, trainer: Any, model: Any) -> None:
        real(run, trainer, model)
        run._settle()

    if in_line:
        runtime._Run._checkpoint = checkpoint_in_line  # type: ignore[method-assign]
    clock = _StepClock()  # times whichever _checkpoint is in place
    try:
        if runtime.run(cfg) != 0:
            raise SystemExit(f"the run failed ({cfg.output})")
    finally:
        clock.close()
        runtime._Run._checkpoint = real  # type: ignore[method-assign]
    return _rate(clock.starts, warmup, steps), clock.checkpoint_seconds(warmup, steps)


def measure(
    kind_name: str, *, latency_ms: float, warmup: int, steps: int, every: int, rounds: int,
    orders: random.Random,
) -> dict[str, Any]:  # fmt: skip
    kind = KINDS[kind_name]
    config = dict(kind.config, steps_per_epoch=warmup + steps + 1)
    held: dict[str, list[float]] = {"beside": [], "in_line": []}
    with _storage(latency_ms) as bucket:

        def arm(in_line: bool) -> Callable[[], float]:
            def call() -> float:
                cfg = _run(kind.kind, config, kind.data, bucket, every)
                rate, seconds = _arm(cfg, warmup, steps, in_line=in_line)
                held["in_line" if in_line else "beside"].append(seconds)
                return rate

            return call

        label = f"{kind_name}, {latency_ms:g} ms"
        rates, drawn = _rounds(label, {"beside": arm(False), "in_line": arm(True)}, rounds, orders)
    paired = Paired.of([a / b for a, b in zip(rates["beside"], rates["in_line"], strict=True)])
    return {
        "kind": kind_name, "latency_ms": latency_ms, "config": config, "warmup": warmup, "steps": steps, "every": every,
        "rounds": rounds, "orders": drawn, "rates": rates, "held_s": held,
        "paired": paired.__dict__,
    }  # fmt: skip


def row(m: dict[str, Any]) -> Row:
    paired = Paired(**m["paired"])
    checkpoints = m["steps"] // m["every"]
    per = {k: 1e3 * statistics.median(v) / checkpoints for k, v in m["held_s"].items()}
    latency = m["latency_ms"]
    where = (
        "the GCS emulator (in memory, same machine)" if not latency
        else f"the GCS emulator behind a proxy adding {latency:g} ms to each request (assumed)"
    )  # fmt: skip
    return Row(
        f"checkpoint_gcs_{m['kind']}, {latency:g} ms per request: the upload beside the next "
        "steps vs in line",
        statistics.median(m["rates"]["beside"]),
        statistics.median(m["rates"]["in_line"]),
        "steps/s",
        "the same runs with each checkpoint's upload finished before the next step "
        "(the runtime before fd568ed)",
        f"{paired.text()}; {m['steps']} timed steps after {m['warmup']} per round, a checkpoint "
        f"every {m['every']} steps on {where}; the training "
        f"thread held {per['beside']:.0f} ms per checkpoint (writing the weights) against "
        f"{per['in_line']:.0f} ms (writing, uploading, the manifest, pruning)",
    )


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = rounds_parser(
        __doc__, out="checkpoint", steps=50, warmup=5, kinds=["tokenizer", "vqvae"]
    )
    parser.set_defaults(kinds=["tokenizer"])
    parser.add_argument("--every", type=int, default=10, help="checkpoint_every of both arms")
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 30.0])
    args = parser.parse_args(argv)
    orders = random.Random(args.seed)
    results = [
        measure(k, latency_ms=latency, warmup=args.warmup, steps=args.steps, every=args.every,
                rounds=args.rounds, orders=orders)
        for k in args.kinds for latency in args.latency_ms
    ]  # fmt: skip
    write_rows(args.out, [row(m) for m in results], {"runs": results})
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
