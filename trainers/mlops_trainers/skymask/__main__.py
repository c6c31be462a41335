"""``python -m mlops_trainers.skymask FRAMES_URL --out MASK.png``."""

from __future__ import annotations

from mlops_trainers.skymask.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
