"""Trainer kills, locally: one tiny VQ-VAE run killed 20 times at random moments and restarted.

Issue 7: "20 kills at random points (SIGTERM and SIGKILL, including during a checkpoint write):
every restart resumes, no checkpoint is ever corrupt, lost work never exceeds one checkpoint
interval." The trainer is a real subprocess (``python -m mlops_trainers --config FILE``), as in a
pod, on a local output folder. The kills alternate SIGTERM and SIGKILL; a seeded RNG picks, for
each, one of three moments:

* ``step``: a random number of steps (1 to two checkpoint intervals) after the restart resumed,
  plus a random fraction of a step;
* ``checkpoint``: while a checkpoint is being written: the checkpoints folder is busy-polled and
  the signal goes out as soon as a new ``step-*`` folder is there without its manifest (its
  weights, or the weights' temporary file, being written); after 4 missed writes, right after
  the 4th;
* ``startup``: a random delay (0.5 to 6 s) after the process was started (TensorFlow import,
  data, model build, resume), whether or not it has trained a step yet (at most two intervals).

After each kill (the process has exited) every checkpoint folder that has a manifest must be
complete (the weights file has the manifest's size) and loadable into a freshly built model;
the steps lost (the dead process's last finished step, from ``ARGO_PROGRESS_FILE``, minus the
newest complete checkpoint) must be 0 after a SIGTERM (it checkpoints on the signal) and at most
``checkpoint_every`` after a SIGKILL; and the restarted process must log that it resumed from
exactly that newest complete checkpoint. Finally the run is let finish: ``run.json`` says
succeeded at the last step; ``attempts.json`` counts every process that got past its imports
(21, less the start-up kills that landed earlier) and no application error; ``metrics.csv`` has
one row per epoch.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow

KILLS = 20
SEED = 7_2024
EVERY = 4  # checkpoint_every
STEPS_PER_EPOCH = 10  # epoch ends (checkpoint + metrics.csv + PNG) fall between periodic ones
EPOCHS = 15
TOTAL = EPOCHS * STEPS_PER_EPOCH
CONFIG = {
    "image_size": 16,
    "channels": 3,
    "batch_size": 8,
    "learning_rate": 2e-3,
    "base_filters": 8,
    "downsample": 2,
    "residual_blocks": 1,
    "latent_dim": 4,
    "num_embeddings": 16,
    "steps_per_epoch": STEPS_PER_EPOCH,
    "reconstructions": 2,
}
RUN_ID = "kills-g1-0123abcd"
DEADLINE_S = 180.0  # one process: start, resume, a few steps (the machine is shared and slow)
MID_CHECKPOINT_TRIES = 4  # checkpoints to watch for an open write before killing anyway
RESUMED = re.compile(r"resumed from (\S+): epoch \d+, step \d+ of the epoch \(global step (\d+)\)")


@dataclass
class Kill:
    index: int
    signum: int
    mode: str  # step | checkpoint | startup
    resumed: int | None = None  # the step this process resumed from (None: fresh start)
    killed_at: int = 0  # its last finished step when it died
    exit_code: int | None = None
    newest: int | None = None  # the newest complete checkpoint after it died
    mid_write: int | None = None  # the signal went out while this checkpoint had no manifest
    left_incomplete: bool = False  # after it died, that folder still had no manifest
    problems: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.killed_at - (self.newest or 0)

    def describe(self) -> str:
        name = signal.Signals(self.signum).name
        mid = f" mid-checkpoint {self.mid_write}" if self.mid_write is not None else ""
        left = " (left incomplete)" if self.left_incomplete else ""
        return (
            f"kill {self.index + 1:2d} {name:7s} {self.mode:10s} resumed {self.resumed} "
            f"died at {self.killed_at} exit {self.exit_code} newest {self.newest} "
            f"lost {self.lost}{mid}{left}"
        )


class Trainer:
    """One trainer process, with its own log and progress file."""

    def __init__(self, run_file: Path, workdir: Path, tag: str) -> None:
        self.progress = workdir / f"progress-{tag}"
        self.log = workdir / f"trainer-{tag}.log"
        env = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONUNBUFFERED": "1",
            "KERAS_BACKEND": "tensorflow",
            "ARGO_PROGRESS_FILE": str(self.progress),
            # Every step: the file is the exact step the process reached (the steps lost).
            "MLOPS_PROGRESS_EVERY_S": "0",
        }
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mlops_trainers", "--config", str(run_file)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.started = time.monotonic()

    def step(self) -> int | None:
        """The last finished step (the resumed one right after the resume), None before."""
        try:
            return int(self.progress.read_text().split("/")[0])
        except (FileNotFoundError, ValueError):
            return None

    def resumed(self) -> tuple[bool, int | None]:
        """(whether it got past the resume, the step it resumed from or None when fresh)."""
        text = self.log.read_text(errors="replace")
        match = RESUMED.search(text)
        if match:
            return True, int(match.group(2))
        return self.step() is not None, None

    def alive(self) -> bool:
        return self.process.poll() is None

    def fail(self, why: str) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait()
        pytest.fail(f"{why}:\n{self.log.read_text(errors='replace')[-4000:]}")

    def wait_until(self, ready: Any, what: str) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not ready():
            if not self.alive():
                self.fail(f"the trainer exited {self.process.returncode} before {what}")
            if time.monotonic() > deadline:
                self.fail(f"no {what} within {DEADLINE_S}s")
            time.sleep(0.01)

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.fail(f"the trainer did not exit within {DEADLINE_S}s")
            raise


class Auditor:
    """Checks every checkpoint folder of the run; loads each complete one into a built model."""

    def __init__(self, output: Path, scratch: Path) -> None:
        from mlops_trainers.trainers.vqvae.config import VQVAEConfig
        from mlops_trainers.trainers.vqvae.trainer import build_vqvae

        self.output = output
        self.scratch = scratch
        self.model = build_vqvae(VQVAEConfig.model_validate(CONFIG), seed=0)
        self.loaded: set[tuple[int, float]] = set()  # (step, manifest "written"): loaded once

    def folders(self) -> dict[int, Path]:
        folder = self.output / "checkpoints"
        if not folder.is_dir():
            return {}
        return {
            int(p.name.removeprefix("step-")): p
            for p in folder.iterdir()
            if re.fullmatch(r"step-\d{10}", p.name)
        }

    def audit(self) -> tuple[int | None, list[str]]:
        """(the newest complete checkpoint's step, problems). Call with no trainer running."""
        from mlops_trainers.checkpoints import (
            MANIFEST,
            list_checkpoints,
            load_checkpoint,
            read_checkpoint,
        )

        problems = []
        for step, path in sorted(self.folders().items()):
            manifest_path = path / MANIFEST
            if not manifest_path.exists():
                continue  # incomplete (killed mid-write, or mid-prune): readers ignore it
            try:
                manifest = json.loads(manifest_path.read_text())
            except ValueError as err:
                problems.append(f"{path.name}: unreadable manifest ({err})")
                continue
            if int(manifest["global_step"]) != step:
                problems.append(f"{path.name}: manifest says step {manifest['global_step']}")
            for name, size in manifest["files"].items():
                actual = (path / name).stat().st_size if (path / name).exists() else None
                if actual != size:
                    problems.append(f"{path.name}/{name}: {actual} bytes, manifest says {size}")
            info = read_checkpoint(str(path))
            if info is None:
                problems.append(f"{path.name}: has a manifest but read_checkpoint rejects it")
                continue
            key = (step, float(manifest["written"]))
            if key not in self.loaded:
                try:
                    load_checkpoint(self.model, info, self.scratch, optimizer=True)
                except Exception as err:  # any failure to load is the finding
                    problems.append(f"{path.name}: does not load: {type(err).__name__}: {err}")
                    continue
                self.loaded.add(key)
        complete = list_checkpoints(str(self.output))
        return (complete[-1].step if complete else None), problems


def _kill_mid_checkpoint(trainer: Trainer, auditor: Auditor, after: int) -> int | None:
    """Poll for a checkpoint folder newer than ``after`` with no manifest yet: its step when one
    is seen (the signal goes out now), None after MID_CHECKPOINT_TRIES missed ones."""
    seen: set[int] = set()
    deadline = time.monotonic() + DEADLINE_S
    folder = auditor.output / "checkpoints"
    while len(seen) < MID_CHECKPOINT_TRIES:
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            names = []
        for name in names:
            if not name.startswith("step-"):
                continue
            step = int(name[5:])
            if step <= after or step in seen:
                continue
            if not os.path.exists(os.path.join(folder, name, "checkpoint.json")):
                return step
            seen.add(step)  # missed: its manifest is already there
        if not trainer.alive():
            trainer.fail("the trainer exited while a checkpoint write was awaited")
        if time.monotonic() > deadline:
            trainer.fail("no checkpoint write seen")
        # Busy-polling: a local write is over in about a millisecond.
    return None


def _schedule(rng: np.random.Generator) -> list[tuple[int, str]]:
    """(signal, moment) of each kill: signals alternate; 6 mid-checkpoint (4 of them SIGKILL,
    which leaves the write unfinished), 2 at start-up, the rest at random steps."""
    signals = [signal.SIGTERM if i % 2 == 0 else signal.SIGKILL for i in range(KILLS)]
    modes = ["step"] * KILLS
    odd = [i for i in range(1, KILLS) if i % 2]
    even = [i for i in range(2, KILLS) if i % 2 == 0]
    picked_odd = rng.choice(odd, 5, replace=False)
    picked_even = rng.choice(even, 3, replace=False)
    for i in [*picked_odd[:4], *picked_even[:2]]:
        modes[int(i)] = "checkpoint"
    for i in (picked_odd[4], picked_even[2]):
        modes[int(i)] = "startup"
    return list(zip(signals, modes, strict=True))


def test_twenty_random_kills(tmp_path: Path, faults: Any) -> None:
    rng = np.random.default_rng(SEED)
    runs = tmp_path / "runs"
    output = runs / RUN_ID
    run_file = tmp_path / "run.yaml"
    run_file.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "run_id": RUN_ID,
                "name": "kills",
                "trainer": {"kind": "vqvae", "config": CONFIG},
                "data": "sample://skimage",
                "output_prefix": str(runs),
                "output": str(output),
                "epochs": EPOCHS,
                "checkpoint_every": EVERY,
                "seed": 0,
            }
        )
    )
    auditor = Auditor(output, tmp_path / "scratch")
    kills: list[Kill] = []
    began = time.monotonic()
    newest: int | None = None  # the newest complete checkpoint before this process started

    for index, (signum, mode) in enumerate(_schedule(rng)):
        kill = Kill(index, signum, mode)
        kills.append(kill)
        # Folders already there (an incomplete one a SIGKILL left) are not a write in flight.
        stale = max(auditor.folders(), default=0)
        trainer = Trainer(run_file, tmp_path, f"{index:02d}")
        if mode == "startup":
            # A random moment in the first seconds; on a fast machine, at most 2 intervals in.
            until = time.monotonic() + float(rng.uniform(0.5, 6.0))
            while time.monotonic() < until and (trainer.step() or 0) < (newest or 0) + 2 * EVERY:
                time.sleep(0.01)
            past_resume, kill.resumed = trainer.resumed()
        else:
            trainer.wait_until(lambda t=trainer: t.resumed()[0], "resume")
            _, kill.resumed = trainer.resumed()
            start = kill.resumed or 0
            if mode == "step":
                target = start + int(rng.integers(1, 2 * EVERY + 1))
                trainer.wait_until(lambda t=trainer, n=target: (t.step() or 0) >= n, "step")
                time.sleep(float(rng.uniform(0.0, 0.15)))
            else:
                kill.mid_write = _kill_mid_checkpoint(trainer, auditor, max(start, stale))
            past_resume = True
        if not trainer.alive():
            trainer.fail(f"the trainer exited {trainer.process.returncode} before kill {index}")
        trainer.process.send_signal(signum)
        kill.exit_code = trainer.wait()
        # A start-up kill may land before the resume line was written: read it again.
        if mode == "startup":
            past_resume, kill.resumed = trainer.resumed()
        if past_resume and kill.resumed != newest:
            kill.problems.append(f"resumed from {kill.resumed}, newest complete was {newest}")
        step = trainer.step()
        kill.killed_at = step if step is not None else (newest or 0)

        # The process is dead: audit everything it left.
        kill.newest, problems = auditor.audit()
        kill.problems += problems
        if kill.mid_write is not None:
            folder = auditor.folders().get(kill.mid_write)
            kill.left_incomplete = folder is not None and not (folder / "checkpoint.json").exists()
        if signum == signal.SIGTERM:
            # 143 once the runtime's handler is installed; before that (Python still importing)
            # the default action ends it, having trained nothing.
            if kill.exit_code == -signal.SIGTERM:
                if step is not None and step != (kill.resumed or 0):
                    kill.problems.append(f"SIGTERM killed it outright after step {step}")
            elif kill.exit_code != 143:
                kill.problems.append(f"SIGTERM: exit {kill.exit_code}, expected 143")
            if kill.lost != 0:
                kill.problems.append(f"SIGTERM lost {kill.lost} steps")
        else:
            if kill.exit_code != -signal.SIGKILL:
                kill.problems.append(f"SIGKILL: exit {kill.exit_code}")
            if not 0 <= kill.lost <= EVERY:
                kill.problems.append(f"SIGKILL lost {kill.lost} steps (> {EVERY})")
        if kill.killed_at >= TOTAL:
            pytest.fail(f"the run finished before kill {index + 1}: make it longer")
        print(kill.describe(), *kill.problems, flush=True)
        newest = kill.newest

    # Let it finish.
    final = Trainer(run_file, tmp_path, "final")
    code = final.wait()
    assert code == 0, final.log.read_text(errors="replace")[-4000:]
    _, resumed = final.resumed()
    record = json.loads((output / "run.json").read_text())
    attempts = json.loads((output / "attempts.json").read_text())
    _, problems = auditor.audit()
    took = time.monotonic() - began

    survived = sum(not k.problems for k in kills)
    max_lost = max(k.lost for k in kills)
    mid = sum(k.mid_write is not None for k in kills)
    left = sum(k.left_incomplete for k in kills)
    print(
        f"kills survived {survived}/{len(kills)}, max steps lost {max_lost} "
        f"(checkpoint every {EVERY}); {mid} signals mid-checkpoint-write, {left} left an "
        f"incomplete checkpoint; {took:.0f} s",
        flush=True,
    )
    faults.record(
        "trainer kills (SIGTERM+SIGKILL, some mid-checkpoint)",
        tried=len(kills),
        survived=survived,
        lost=f"max {max_lost} steps (interval {EVERY}); {mid} mid-checkpoint",
    )
    assert not problems, problems
    assert resumed == newest, (resumed, newest)
    assert record["state"] == "succeeded"
    assert record["global_step"] == TOTAL
    # A start-up kill may land before the process counted its attempt (still importing).
    startups = sum(k.mode == "startup" for k in kills)
    assert KILLS + 1 - startups <= attempts["attempts"] <= KILLS + 1, attempts
    assert attempts["app_errors"] == 0, attempts
    assert record["attempt"] == attempts["attempts"]
    assert final.progress.read_text().strip() == f"{TOTAL}/{TOTAL}"
    rows = (output / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(e) for e in range(1, EPOCHS + 1)]
    failed = [f"{k.describe()}: {'; '.join(k.problems)}" for k in kills if k.problems]
    assert not failed, "\n".join(failed)
    assert max_lost <= EVERY
    assert mid >= 3, f"only {mid} kills landed during a checkpoint write"
