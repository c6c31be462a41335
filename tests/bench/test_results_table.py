"""The Performance table in README.md is generated from bench/results/*.json, never typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from common import TARGETS, target_of  # noqa: E402


def test_readme_performance_table_is_the_json_files() -> None:
    """`bench/run_all.py --check`: README.md's table is what the JSON files say (a figure edited
    by hand, or a JSON file rewritten by a bench run without `--table`, fails here)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run_all.py"), "--check"],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_targets_judge_both_directions_and_rows_unlike_theirs_are_not_judged() -> None:
    sampling = target_of("PixelCNN sampling, 40x40 codes")
    assert sampling is not None and sampling.op == "<="
    assert sampling.met(0.041) is True and sampling.met(0.06) is False
    cropped = target_of("PixelCNN training, masked kernels on their nonzero taps, 16x16")
    assert cropped is not None and cropped.value == 1.5  # the more specific prefix wins
    assert cropped.met(1.34) is False and cropped.met(1.6) is True
    unlike = target_of("VQ-VAE training, 32px")
    assert unlike is not None and unlike.met(5.0) is None and "FLOP" in unlike.unlike
    assert target_of("something else entirely") is None
    # Every prefix is reachable: none is shadowed by a shorter one listed before it.
    for i, t in enumerate(TARGETS):
        assert not any(t.prefix.startswith(u.prefix) for u in TARGETS[:i]), t.prefix
