"""One train step of a trainer on 1 device and on 2 replicas, in a fresh process (the helper of
``test_data_parallel.py``; not a test module).

``python data_parallel_step.py CASES.json OUT.json``, with ``MLOPS_CPU_REPLICAS=2`` in the
environment: the logical CPU devices must be made before TensorFlow initialises, which is why
this runs in its own process. CASES.json is a list of ``{"run": run file, "steps": n}``. Each run
file is built twice with the same seed, once as the runtime builds it on one device and once
under the 2-replica strategy; each takes the first batch of epoch 0 through the trainer's
``train_step``, then the first batch of step 1 (the compiled step's first call), and the
2-replica model ``n - 2`` more, then a spike-guard snapshot, one step and the snapshot's
restore. OUT.json gets, per case, both models' logs of their first two steps, how many times the
2-replica compiled step was traced (None: it did not run), the largest
difference between the two models' states (weights and optimizer) after that step, the largest
difference between the two replicas' copies of any variable after the steps, and between every
copy and the restored snapshot.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any


def _build(config: Any, scratch: Path) -> tuple[Any, Any, Any]:
    """What the runtime does before the first step, on whatever strategy is in scope."""
    import keras
    from mlops_trainers import optim
    from mlops_trainers.trainer import RunContext, get_trainer

    keras.utils.set_random_seed(config.seed)
    trainer = get_trainer(config.trainer.kind)(config, RunContext(config, scratch))
    trainer.prepare()
    data = trainer.datasets()
    model = trainer.build_model()
    optim.configure(model.optimizer, trainer.config)
    trainer.on_train_begin(model, fresh=True)
    return trainer, model, data


def _compare(strategy: Any, config: Any, steps: int, scratch: Path) -> dict[str, Any]:
    import numpy as np
    from mlops_trainers import optim
    from mlops_trainers import trainer as trainer_module
    from mlops_trainers.spike_guard import Snapshot, model_state_variables

    one_trainer, one_model, data = _build(config, scratch)
    batch = next(iter(data.batches(0, 0)))
    second = next(iter(data.batches(0, 1)))
    one_logs = dict(one_trainer.train_step(one_model, batch))
    one_logs["grad_norm"] = optim.gradient_norm(one_model.optimizer) or 0.0
    one = [np.asarray(v.numpy()) for v in model_state_variables(one_model)]

    with strategy.scope():
        trainer, model, data = _build(config, scratch)
        two_logs = dict(trainer.train_step(model, batch))
        two_logs["grad_norm"] = optim.gradient_norm(model.optimizer) or 0.0
        variables = model_state_variables(model)
        two = [np.asarray(v.numpy()) for v in variables]

    # The second step is the compiled one (train_on_batch's first call builds it). Both start
    # from the 2-replica model's state, so that they compute the same thing exactly (the states
    # after one step differ by float roundoff, which a second step's logs would show).
    for variable, value in zip(model_state_variables(one_model), two, strict=True):
        variable.assign(value)
    one_next = dict(one_trainer.train_step(one_model, second))
    with strategy.scope():
        # More steps on 2 replicas only: do the replicas' copies stay equal?
        more = list(data.batches(0, 1))[:steps]
        two_next = dict(trainer.train_step(model, second))
        for batch in more[1:-1]:
            trainer.train_step(model, batch)
        # Whether those steps were the one compiled call (trainer._FUSED), and its traces.
        fused = trainer_module._FUSED.get(model)
        traces = None if fused is None else fused[1].experimental_get_tracing_count()
        # The spike guard's rollback: a snapshot, one more step, the snapshot restored on
        # every replica's copy.
        snapshot = Snapshot.take(model, {}, [])
        trainer.train_step(model, more[-1])
        snapshot.restore(model)
        restore_diff = 0.0
        for variable, saved in zip(variables, snapshot.values, strict=True):
            for copy in strategy.experimental_local_results(getattr(variable, "value", variable)):
                restore_diff = max(restore_diff, float(np.max(np.abs(copy.numpy() - saved))))
        replica_diff, worst_replica = 0.0, ""
        for variable in variables:
            copies = strategy.experimental_local_results(getattr(variable, "value", variable))
            arrays = [np.asarray(c.numpy()) for c in copies]
            diff = max(float(np.max(np.abs(a - arrays[0]), initial=0.0)) for a in arrays)
            if diff >= replica_diff:
                replica_diff, worst_replica = diff, variable.path
    diffs = {
        v.path: float(np.max(np.abs(a.astype("float64") - b), initial=0.0))
        for v, a, b in zip(variables, one, two, strict=True)
    }
    worst = max(diffs, key=lambda k: diffs[k])
    return {
        "kind": config.trainer.kind,
        "one": one_logs,
        "two": two_logs,
        "one_next": one_next,
        "two_next": two_next,
        "fused_traces": traces,
        "state_diffs": diffs,
        "max_state_diff": diffs[worst],
        "worst_state": worst,
        "max_replica_diff": replica_diff,
        "max_restore_diff": restore_diff,
        "worst_replica": worst_replica,
        "variables": [v.path for v in variables],
    }


def main(cases_file: str, out: str) -> None:
    from mlops_trainers import distribute
    from mlops_trainers.config import RunConfig

    strategy = distribute.strategy_for([])  # before anything initialises TensorFlow
    assert strategy is not None and strategy.num_replicas_in_sync == 2
    scratch = Path(tempfile.mkdtemp(prefix="dp-step-"))
    results = []
    for case in json.loads(Path(cases_file).read_text()):
        config = RunConfig.model_validate(case["run"])
        results.append(_compare(strategy, config, int(case.get("steps", 1)), scratch))
    Path(out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
