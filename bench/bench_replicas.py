"""The runtime loop against ``model.fit`` on 2 data-parallel replicas (``resources.gpu.count``
> 1 trains under a ``MirroredStrategy``): ``bench_train.py``'s small-step pair, both arms on a
MirroredStrategy over 2 logical CPU devices (``MLOPS_CPU_REPLICAS=2``, set here before
TensorFlow starts, hence a script of its own).

As for one device, the model is so small that a step takes a few ms, so the loop's host work per
step (its calls into TensorFlow, the batch split over the replicas, logs, TensorBoard, the spike
guard) shows as it would beside a GPU step. Row: ``train_small_step_2replicas``.

    python bench/bench_replicas.py [--steps 500] [--rounds 10]
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPLICAS = 2


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from common import rounds_parser  # no TensorFlow: the replicas are set below, before it

    parser = rounds_parser(__doc__, out="replicas", steps=500, warmup=20, rounds=10)
    args = parser.parse_args(None if argv is None else list(argv))

    from mlops_trainers import distribute

    # Before anything starts TensorFlow: the CPU is split into the replicas' devices then.
    os.environ[distribute.CPU_REPLICAS_ENV] = str(REPLICAS)
    from bench_train import measure_small_step, small_step_row
    from common import write_rows

    root = Path(tempfile.mkdtemp(prefix="bench-replicas-runs-"))
    try:
        measured = measure_small_step(
            warmup=args.warmup, steps=args.steps, rounds=args.rounds, root=root,
            orders=random.Random(args.seed), replicas=REPLICAS,
        )  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_rows(args.out, [small_step_row(measured)], extra={"detail": measured})
    return measured


if __name__ == "__main__":
    main()
