"""Recovery: seconds from a trainer kill to the restarted trainer's first training step, and the
steps lost, against a cold start of the same run.

A trainer is a real process (``python -m mlops_trainers --config FILE``, as in a pod) training the
VQ-VAE of ``examples/vqvae.yaml`` on a local output folder. Each round:

1. **cold start**: a fresh run, from the process start to its first finished step (Python and
   TensorFlow import, data, model build, first step's tracing): the reference;
2. it trains to the middle of the next full checkpoint interval, gets **SIGTERM** (a spot preemption: it
   finishes the step, checkpoints, exits 143) and is restarted at once: kill -> first step of
   the restarted process, which resumed from the newest complete checkpoint;
3. the same with **SIGKILL** (no chance to checkpoint: it resumes from the last periodic one).

Steps come from ``ARGO_PROGRESS_FILE`` (rewritten after every step; polled every 5 ms). Lost steps
= the killed process's last finished step - the step the restart resumed from (its log line).
Each restart's time is broken down by phase from its own log lines (``exit``: kill -> the old
process gone; ``start``: process start -> the run's first line, i.e. Python, TensorFlow, Keras;
``data``; ``build``: the model; ``load``: the checkpoint; ``first_step``: the first batch and the
step's tracing), and a cold start's the same way. Rows: recovery / cold start (< 1: recovering is cheaper than starting over; about 1: restarting
is all process start and tracing), and steps lost / checkpoint interval. The medians of
``--rounds`` rounds.

The kills of a round come in a random order. With ``--goodput-epochs N``, also **goodput**: the
same N-epoch run uninterrupted and SIGTERMed every ``--kill-every`` seconds on average (random
times), restarted at once each time; their wall times' ratio, and the cost of one kill.

    python bench/bench_recovery.py [--rounds 3] [--every 20] [--goodput-epochs 450 --kill-every 300]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common`, also when imported

from common import BENCH, Row, write_rows

EXAMPLE = BENCH.parent / "examples" / "vqvae.yaml"
DEADLINE_S = 300.0
RESUMED = re.compile(r"resumed from \S+: .*\(global step (\d+)\)")


class Trainer:
    """One trainer process with its own progress file and log."""

    def __init__(self, run_file: Path, workdir: Path, tag: str) -> None:
        self.progress = workdir / f"progress-{tag}"
        self.log = workdir / f"trainer-{tag}.log"
        env = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONUNBUFFERED": "1",
            "KERAS_BACKEND": "tensorflow",
            "ARGO_PROGRESS_FILE": str(self.progress),
            # Every step: the file is the exact step the process reached (the kill's moment,
            # the first step after the restart, the steps lost).
            "MLOPS_PROGRESS_EVERY_S": "0",
        }
        self.started = time.perf_counter()
        self.started_wall = time.time()
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mlops_trainers", "--config", str(run_file)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def step(self) -> int | None:
        try:
            return int(self.progress.read_text().split("/")[0])
        except (FileNotFoundError, ValueError):
            return None

    def phases(self, since: float) -> dict[str, float]:
        """Seconds of each start-up phase, from the trainer's own log lines (wall clock, ms):
        ``since`` (time.time() of the kill, or of the start) -> each line's time."""
        marks = {
            "start": r"INFO run \S+, attempt \d+:",  # Python, TensorFlow and Keras imported
            "data": r"INFO \d+ images at ",
            "build": r"INFO model built in ",
            "load": r"INFO resumed from ",
            "first_step": r"INFO first step in ",  # the first batch and the step's tracing
        }
        text = self.log.read_text(errors="replace")
        out: dict[str, float] = {}
        last = since
        for name, pattern in marks.items():
            match = re.search(r"^(\S+ \S+) " + pattern, text, re.MULTILINE)
            if match is None:
                continue
            at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out[name] = at - last
            last = at
        return out

    def resumed_from(self) -> int:
        match = RESUMED.search(self.log.read_text(errors="replace"))
        return int(match.group(1)) if match else 0

    def wait_for_step(self, target: int) -> float:
        """perf_counter() when the progress file first shows a step >= ``target``."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            step = self.step()
            if step is not None and step >= target:
                return time.perf_counter()
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the trainer exited {self.process.returncode} before step {target}:\n"
                    + self.log.read_text(errors="replace")[-3000:]
                )
            if time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"no step {target} within {DEADLINE_S}s")
            time.sleep(0.005)

    def first_step_after_resume(self) -> tuple[float, int]:
        """(perf_counter() at its first finished step, the step it resumed from)."""
        deadline = time.monotonic() + DEADLINE_S
        while self.step() is None:  # written once the run has resumed, before training
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(self.log.read_text(errors="replace")[-3000:])
            time.sleep(0.005)
        resumed = self.resumed_from()
        return self.wait_for_step(resumed + 1), resumed

    def kill(self, signum: int) -> tuple[int, int]:
        """Send ``signum``; (exit code, last finished step) once it has exited."""
        self.process.send_signal(signum)
        code = self.process.wait(timeout=DEADLINE_S)
        return code, self.step() or 0


def run_file(
    workdir: Path,
    output_prefix: Path,
    run_id: str,
    every: int,
    epochs: int,
    *,
    trainer: dict[str, Any] | None = None,
) -> Path:
    """The example's run file; ``trainer`` changes some of its trainer config."""
    manifest = yaml.safe_load(EXAMPLE.read_text())
    spec = manifest["spec"]
    spec["trainer"]["config"].update(trainer or {})
    config = {
        "version": 1,
        "run_id": run_id,
        "name": manifest["metadata"]["name"],
        "trainer": spec["trainer"],
        "data": spec["data"],
        "output_prefix": str(output_prefix),
        "output": str(output_prefix / run_id),
        "epochs": epochs,
        "checkpoint_every": every,
        "seed": spec.get("seed", 0),
    }
    path = workdir / f"{run_id}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _mid_interval(resumed: int, every: int) -> int:
    """The step halfway between the first two periodic checkpoints after ``resumed``."""
    return (resumed // every + 1) * every + every // 2


def one_round(workdir: Path, index: int, every: int) -> dict[str, Any]:
    run_id = f"recovery-g1-{index:08x}"
    path = run_file(workdir, workdir / "runs", run_id, every, epochs=50)
    result: dict[str, Any] = {}

    cold = Trainer(path, workdir, f"{index}-cold")
    result["cold_s"] = cold.wait_for_step(1) - cold.started
    result["cold_phases"] = cold.phases(cold.started_wall)
    current, after = cold, _mid_interval(0, every)
    # The two kills in a random order per round (seeded): neither always meets a process that
    # has run longer (warmer caches, a bigger log).
    order = [signal.SIGTERM, signal.SIGKILL]
    random.Random(index).shuffle(order)
    result["order"] = [signal.Signals(s).name for s in order]
    for signum in order:
        name = signal.Signals(signum).name
        current.wait_for_step(after)
        killed = time.perf_counter()
        code, died_at = current.kill(signum)
        exited = time.perf_counter()
        restarted = Trainer(path, workdir, f"{index}-{name}")
        first, resumed = restarted.first_step_after_resume()
        phases = {"exit": exited - killed, **restarted.phases(restarted.started_wall)}
        result[name] = {
            "phases": phases,
            "recovery_s": first - killed,
            "exit_s": exited - killed,
            "restart_to_first_step_s": first - restarted.started,
            "exit_code": code,
            "died_at": died_at,
            "resumed_from": resumed,
            "lost": died_at - resumed,
        }
        print(f"round {index} {name}: {result[name]}", flush=True)
        current, after = restarted, _mid_interval(resumed, every)
    current.process.kill()
    current.process.wait()
    print(f"round {index} cold start: {result['cold_s']:.2f} s", flush=True)
    return result


def _finish(trainer: Trainer) -> int:
    code = trainer.process.wait(timeout=DEADLINE_S * 10)
    if code != 0:
        raise RuntimeError(f"exit {code}:\n" + trainer.log.read_text(errors="replace")[-3000:])
    return code


def goodput(workdir: Path, interval_s: float, epochs: int, every: int, seed: int) -> dict[str, Any]:
    """The same run (``epochs`` of the demo) once uninterrupted and once SIGTERMed at random
    times (uniform in 0.5-1.5 x ``interval_s`` after each start) and restarted at once, as a
    spot pod is; in a random order. Goodput = uninterrupted wall time / interrupted wall time,
    each from the first process start to the run's end."""
    rng = random.Random(seed)
    out: dict[str, Any] = {"interval_s": interval_s, "epochs": epochs}
    sides = ["uninterrupted", "interrupted"]
    rng.shuffle(sides)
    out["order"] = sides
    for side in sides:
        run_id = f"goodput-{side[:6]}-g1-{seed:08x}"
        # The VQ-VAE's own learning rate: the demo's 2e-3 is for its 4 epochs, and over ~100
        # the spike guard ran out of rollbacks (exit 2) in the first try of this bench.
        path = run_file(
            workdir, workdir / "runs", run_id, every, epochs=epochs,
            trainer={"learning_rate": 1e-4},
        )  # fmt: skip
        began = time.perf_counter()
        trainer = Trainer(path, workdir, f"goodput-{side}")
        kills = 0
        if side == "interrupted":
            while True:
                due = trainer.started + interval_s * rng.uniform(0.5, 1.5)
                while trainer.process.poll() is None and time.perf_counter() < due:
                    time.sleep(0.05)
                if trainer.process.poll() is not None:
                    break  # the run ended before this kill was due
                code, _ = trainer.kill(signal.SIGTERM)
                if code == 0:
                    break  # it finished as the signal came
                kills += 1
                trainer = Trainer(path, workdir, f"goodput-{side}-{kills}")
        _finish(trainer)
        out[side] = {"seconds": time.perf_counter() - began, "kills": kills}
        print(f"goodput {side}: {out[side]}", flush=True)
    out["goodput"] = out["uninterrupted"]["seconds"] / out["interrupted"]["seconds"]
    # What each kill cost: the extra wall time over the kills (process start, checkpoint
    # load, the re-traced step, the partial step lost).
    kills = max(1, out["interrupted"]["kills"])
    out["cost_per_kill_s"] = (
        out["interrupted"]["seconds"] - out["uninterrupted"]["seconds"]
    ) / kills
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--every", type=int, default=20, help="checkpoint_every (steps)")
    parser.add_argument(
        "--kill-every", type=float, default=300.0, help="goodput: mean seconds between kills"
    )
    parser.add_argument(
        "--goodput-epochs",
        type=int,
        default=450,
        help="goodput: run length (0: no goodput row); 450 epochs take ~3 kill intervals here",
    )
    args = parser.parse_args(None if argv is None else list(argv))

    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        rounds = [one_round(Path(tmp), i, args.every) for i in range(args.rounds)]
        good = (
            goodput(Path(tmp), args.kill_every, args.goodput_epochs, args.every, seed=7)
            if args.goodput_epochs
            else None
        )
    cold = statistics.median(r["cold_s"] for r in rounds)
    rows = []
    for name, what in (
        ("SIGTERM", "checkpoints on the signal, exits 143"),
        ("SIGKILL", "no checkpoint: back to the last periodic one"),
    ):
        recovery = statistics.median(r[name]["recovery_s"] for r in rounds)
        # Each round's recovery over its own cold start: the machine's drift cancels.
        paired = statistics.median(r[name]["recovery_s"] / r["cold_s"] for r in rounds)
        lost = statistics.median(r[name]["lost"] for r in rounds)
        exit_s = statistics.median(r[name]["exit_s"] for r in rounds)
        phases = {
            k: statistics.median(r[name]["phases"].get(k, 0.0) for r in rounds)
            for k in rounds[0][name]["phases"]
        }
        cold_phases = {
            k: statistics.median(r["cold_phases"].get(k, 0.0) for r in rounds)
            for k in rounds[0]["cold_phases"]
        }
        breakdown = ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
        cold_breakdown = ", ".join(f"{k} {v:.2f}" for k, v in cold_phases.items())
        rows.append(
            Row(
                f"trainer recovery after {name} (VQ-VAE demo, kill -> first step after restart)",
                recovery,
                cold,
                "s",
                "cold start of the same run to its first step",
                f"{what}; dying took {exit_s:.2f} s; steps lost {lost:g}; "
                f"medians of {args.rounds} rounds; median per-round ratio {paired:.2f}; "
                f"seconds by phase: {breakdown} (cold start: {cold_breakdown})",
            )
        )
        rows.append(
            Row(
                f"steps lost to a {name} (checkpoint every {args.every}, killed mid-interval)",
                lost,
                float(args.every),
                "steps",
                "one checkpoint interval (the bound)",
                f"median of {args.rounds} rounds",
            )
        )
    if good is not None:
        interval = args.kill_every
        # A shorter interval than the target's (a kill every 5 minutes) also says what the
        # measured cost per kill would leave at 5 minutes: a projection, labelled so.
        projected = 300.0 / (300.0 + good["cost_per_kill_s"])
        projection = (
            f", so a kill every 300 s would leave {projected:.3f} (projected from this cost, "
            "not run)"
            if interval < 300
            else ""
        )
        rows.append(
            Row(
                f"goodput under a SIGTERM every ~{interval:g} s (VQ-VAE demo, "
                f"{good['interrupted']['kills']} kills)",
                good["goodput"],
                1.0,
                "x",
                "the same run uninterrupted (= 1)",
                f"interrupted {good['interrupted']['seconds']:.0f} s vs uninterrupted "
                f"{good['uninterrupted']['seconds']:.0f} s; {good['cost_per_kill_s']:.1f} s "
                f"lost per kill{projection}",
            )
        )
    detail = {"rounds": rounds, "every": args.every, "goodput": good}
    write_rows("recovery", rows, extra={"detail": detail})
    return {"rounds": rounds}


if __name__ == "__main__":
    main()
