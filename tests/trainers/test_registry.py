"""A trainer kind is one folder: the spec, the run file, the CRD, the docs and the runtime all
derive from the folders of ``mlops_trainers.trainers``, and a new folder is picked up whole.

The convention test writes a throwaway kind (config, trainer and a tiny Keras model) into a
temporary folder, adds it to the package's path in a fresh process, and checks that the kind
validates in a manifest, shows in the CRD and the README tables, becomes a run file, trains
through the shared runtime, and serves its own ``sample://`` data set, with no other file changed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlops_api import ManifestError, parse_manifest, plan_run
from mlops_api.crd import build_crd
from mlops_api.docs import field_tables
from mlops_trainers.config import TRAINER_CONFIGS, TRAINER_KINDS, RunConfig
from mlops_trainers.registry import trainer_kinds
from mlops_trainers.trainer import get_trainer

ROOT = Path(__file__).resolve().parents[2]


def _manifest(kind: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    trainer: dict[str, Any] = {"kind": kind}
    if config is not None:
        trainer["config"] = config
    return {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "MLOps",
        "metadata": {"name": "t", "namespace": "ml"},
        "spec": {"trainer": trainer, "data": "gs://b/d", "output": "gs://b/o"},
    }


def test_every_listing_of_kinds_is_the_folders() -> None:
    folders = sorted(
        p.name
        for p in (ROOT / "trainers" / "mlops_trainers" / "trainers").iterdir()
        if p.is_dir() and (p / "config.py").exists()
    )
    assert list(trainer_kinds()) == folders
    assert list(TRAINER_KINDS) == folders
    assert list(TRAINER_CONFIGS) == folders
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["trainer"]["properties"]["kind"]["enum"] == folders
    tables = field_tables()
    for kind, entry in trainer_kinds().items():
        assert f"#### `spec.trainer.config` when `kind: {kind}`" in tables
        assert (entry.config.__doc__ or "").strip().splitlines()[0] in tables
        trainer = get_trainer(kind)
        assert trainer.kind == kind
        assert trainer.config_class is entry.config
        assert trainer.__module__ == f"mlops_trainers.trainers.{kind}.trainer"


def test_the_spec_and_the_run_file_share_one_union_validated_once() -> None:
    plan = plan_run(parse_manifest(_manifest("segmenter", {"tile_size": 64, "depth": 2})))
    config = plan.config.trainer.config
    assert type(config) is TRAINER_CONFIGS["segmenter"]
    assert (config.tile_size, config.depth) == (64, 2)
    # The run file read back (as a pod does) holds the same model.
    again = RunConfig.model_validate(yaml.safe_load(yaml.safe_dump(plan.config.model_dump())))
    assert again == plan.config
    # A config of one kind is not accepted under another kind's name.
    with pytest.raises(ManifestError, match=r"spec\.trainer"):
        parse_manifest(_manifest("vqvae", {"tile_size": 64}))
    with pytest.raises(ManifestError, match=r"spec\.trainer"):
        parse_manifest(_manifest("nosuchkind"))


def test_config_modules_import_without_tensorflow_numpy_or_scipy() -> None:
    # The operator image installs none of these: validating, rendering the CRD and the docs must
    # not need them.
    code = textwrap.dedent(
        """
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"tensorflow", "keras", "numpy", "scipy", "PIL", "skimage"}:
                    raise ImportError("blocked: " + name)
                return None

        sys.meta_path.insert(0, Block())
        from mlops_api import parse_manifest, plan_run
        from mlops_api.crd import build_crd
        from mlops_api.docs import field_tables
        from mlops_trainers.registry import trainer_kinds

        build_crd()
        field_tables()
        for kind, entry in trainer_kinds().items():
            # The required fields are run references (a prior's parent): name one.
            fields = entry.config.model_fields
            config = {name: "parent" for name, f in fields.items() if f.is_required()}
            manifest = {
                "apiVersion": "mlops.dev/v1alpha1", "kind": "MLOps",
                "metadata": {"name": "t"},
                "spec": {"trainer": {"kind": kind, "config": config}, "data": "gs://b/d",
                         "output": "gs://b/o"},
            }
            plan_run(parse_manifest(manifest))
        print("ok", sorted(trainer_kinds()))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


THROWAWAY_CONFIG = '''
"""Throwaway: fits a line (a test of the convention, never shipped)."""

from pydantic import Field

from mlops_trainers.config_base import TrainerConfig


class ThrowawayConfig(TrainerConfig):
    """A one-weight linear model fitted to y = 3x."""

    learning_rate: float = Field(0.05, gt=0, description="SGD learning rate.")
    batch_size: int = Field(4, ge=1, description="Points per step.")
'''

THROWAWAY_TRAINER = '''
"""The throwaway trainer: in-memory points, a Dense(1) model."""

import numpy as np

from mlops_trainers.data import ArrayBatches
from mlops_trainers.trainer import Trainer

from .config import ThrowawayConfig


class ThrowawayTrainer(Trainer[ThrowawayConfig]):
    config_class = ThrowawayConfig

    def datasets(self):
        x = np.linspace(-1, 1, 32, dtype="float32")[:, None]
        return ArrayBatches((x, 3 * x), self.config.batch_size, self.run.seed, steps_per_epoch_config=3)

    def build_model(self):
        import keras

        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(self.config.learning_rate), loss="mse")
        model.optimizer.build(model.trainable_variables)
        return model
'''

THROWAWAY_SAMPLES = '''
"""The throwaway trainer's own sample data set."""

from mlops_trainers.samples import register_sample


def _write(folder):
    (folder / "points.txt").write_text("1 3\\n")


register_sample("throwaway-points", _write, description="two numbers")
'''

THROWAWAY_CHECK = """
import json, sys
from pathlib import Path

import mlops_trainers.trainers as package

package.__path__.append(sys.argv[1])  # the folder holding throwaway/, before any kind is read

from mlops_api import parse_manifest, plan_run
from mlops_api.crd import build_crd
from mlops_api.docs import field_tables
from mlops_trainers.config import TRAINER_KINDS
from mlops_trainers.runtime import run

assert "throwaway" in TRAINER_KINDS, TRAINER_KINDS
crd = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
assert "throwaway" in crd["properties"]["trainer"]["properties"]["kind"]["enum"]
tables = field_tables()
assert "#### `spec.trainer.config` when `kind: throwaway`" in tables
assert "| `learning_rate` | number | `0.05` | SGD learning rate. |" in tables
manifest = {
    "apiVersion": "mlops.dev/v1alpha1", "kind": "MLOps",
    "metadata": {"name": "line", "namespace": "ml"},
    "spec": {"trainer": {"kind": "throwaway", "config": {"learning_rate": 0.1}},
             "data": "gs://b/unused", "output": "gs://b/o", "epochs": 2, "checkpointEvery": 2},
}
plan = plan_run(parse_manifest(manifest), output=sys.argv[2])
assert type(plan.config.trainer.config).__name__ == "ThrowawayConfig"
assert run(plan.config) == 0
record = json.loads((Path(plan.config.output) / "run.json").read_text())
assert record["kind"] == "throwaway" and record["state"] == "succeeded", record
assert record["global_step"] == 6
print("trained", record["final_metrics"])

from mlops_trainers.samples import resolve_sample

assert (Path(resolve_sample("sample://throwaway-points")) / "points.txt").read_text() == "1 3\\n"
"""


@pytest.mark.slow
def test_a_new_folder_is_a_new_kind_everywhere(tmp_path: Path, subprocess_env: Any) -> None:
    folder = tmp_path / "plugins" / "throwaway"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text('"""Throwaway."""\n')
    (folder / "config.py").write_text(THROWAWAY_CONFIG)
    (folder / "trainer.py").write_text(THROWAWAY_TRAINER)
    (folder / "samples.py").write_text(THROWAWAY_SAMPLES)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            THROWAWAY_CHECK,
            str(tmp_path / "plugins"),
            str(tmp_path / "runs"),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=subprocess_env(MLOPS_SAMPLES_CACHE=str(tmp_path / "samples")),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "trained" in result.stdout


def test_a_folder_breaking_the_convention_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "plugins" / "broken"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "config.py").write_text("X = 1\n")  # no TrainerConfig subclass
    code = (
        "import sys, mlops_trainers.trainers as p; p.__path__.append(sys.argv[1]);"
        "import mlops_trainers.config"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "plugins")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode != 0
    assert "mlops_trainers.trainers.broken.config must define exactly one TrainerConfig" in (
        result.stderr
    )
