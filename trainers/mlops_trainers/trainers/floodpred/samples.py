"""``sample://shallow-water``: flood simulations made here by the shallow-water solver.

``SIMULATIONS`` runs over random beds (seeded: the same files everywhere), alternating dam breaks
and rising water, on a ``SIZE`` x ``SIZE`` grid of 1 m cells, ``FRAMES`` frames ``FRAME_DT`` s
apart, in the layout :mod:`~mlops_trainers.trainers.floodpred.simulations` reads, split by
simulation into train / val / test (both scenarios in every split). About ten seconds on one core.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlops_trainers.samples import register_sample
from mlops_trainers.trainers.floodpred.shallow_water import CHANNELS, dam_break, rising_water

__all__ = ["FRAMES", "SIZE", "write_simulations"]

SIZE = 64
FRAMES = 36
FRAME_DT = 0.5
SIMULATIONS = 24
SPLIT = {"train": 16, "val": 4, "test": 4}
SEED = 4004


def write_simulations(
    folder: Path,
    *,
    count: int = SIMULATIONS,
    size: int = SIZE,
    frames: int = FRAMES,
    split: dict[str, int] | None = None,
    seed: int = SEED,
) -> None:
    """Write ``count`` simulations and the filelists of their split into ``folder``."""
    split = split or SPLIT
    if sum(split.values()) != count:
        raise ValueError(f"split {split} does not add up to {count} simulations")
    (folder / "simulations").mkdir(parents=True)
    (folder / "filelists").mkdir()
    names = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        make = dam_break if i % 2 == 0 else rising_water
        sim = make(size, rng, frames=frames, frame_dt=FRAME_DT)
        name = f"simulations/{i:03d}-{sim.scenario}.npz"
        np.savez_compressed(
            folder / name,
            frames=sim.frames,
            channels=np.array(CHANNELS),
            dt=sim.dt,
            dx=sim.dx,
            scenario=sim.scenario,
        )
        names.append(name)
    start = 0
    for name, n in split.items():
        (folder / "filelists" / f"{name}.txt").write_text(
            "\n".join(names[start : start + n]) + "\n"
        )
        start += n


register_sample(
    "shallow-water",
    write_simulations,
    version="1",
    description=f"{SIMULATIONS} shallow-water flood simulations (dam breaks, rising water), "
    f"{SIZE}x{SIZE} cells, {FRAMES} frames",
)
