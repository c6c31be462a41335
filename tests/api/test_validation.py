"""Issue 14, part 3: every trainer-config and cross-field constraint is refused before anything is
created, by ``mlops validate`` and by the operator, naming the field; never first in the pod.

Each case is checked three ways: :func:`mlops_api.parse_manifest` (with and without the
cluster-only rules), ``mlops validate FILE`` (exit 1, ``FILE: field: message``), and the
operator's :func:`mlops_operator.reconcile.decide` (``Failed``/``SpecInvalid`` naming the field,
nothing created). Cases marked cluster-only are accepted by ``mlops run``'s parse (local paths
are fine on this machine) and by ``mlops validate --local``.
"""

from __future__ import annotations

import copy
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from mlops_api import ManifestError, parse_manifest
from mlops_cli.main import main
from mlops_operator.reconcile import Policy, decide
from mlops_workflows.render import RenderSettings

AT = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
POLICY = Policy(render=RenderSettings(), default_image="docker.io/local/trainer:1")


class Case(NamedTuple):
    id: str
    kind: str
    config: dict[str, Any]
    spec: dict[str, Any]
    path: str
    message: str
    cluster_only: bool = False


PCNN = {"vqvae": "vqvae-demo"}

CASES = [
    # --- trainer configs: rules the model or the trainer used to find in the pod ---
    Case("pixelcnn-even-kernel-4", "pixelcnn", {**PCNN, "kernel_size": 4}, {}, "spec.trainer.config.kernel_size", "odd"),
    Case("pixelcnn-even-kernel-6", "pixelcnn", {**PCNN, "kernel_size": 6}, {}, "spec.trainer.config.kernel_size", "odd"),
    Case("vqvae-size-vs-downsample", "vqvae", {"image_size": 100, "downsample": 3}, {}, "spec.trainer.config.image_size", "multiple of 2 ** downsample = 8"),
    Case("vqvae-640-downsample-6-is-valid", "vqvae", {"image_size": 640, "downsample": 6, "kernel_size": 4}, {}, "", ""),  # valid: 640 = 10 x 64
    Case("vqvae-600-downsample-4", "vqvae", {"image_size": 600, "downsample": 4}, {}, "spec.trainer.config.image_size", "e.g. 592 or 608"),
    Case("vqvae-kmeans-too-few-vectors", "vqvae", {"image_size": 16, "downsample": 2, "batch_size": 2, "num_embeddings": 64, "kmeans_init": True}, {}, "spec.trainer.config.kmeans_init", "needs at least num_embeddings"),
    Case("vqvae-kernel-size-2", "vqvae", {"kernel_size": 2}, {}, "spec.trainer.config.kernel_size", ""),
    Case("vqvae-unknown-activation", "vqvae", {"activation": "gelu"}, {}, "spec.trainer.config.activation", ""),
    Case("vqvae-unknown-initializer", "vqvae", {"kernel_initializer": "zeros"}, {}, "spec.trainer.config.kernel_initializer", ""),
    Case("tokenizer-size-vs-stages", "tokenizer", {"image_size": 60, "channel_multipliers": [1, 2, 2, 4]}, {}, "spec.trainer.config.image_size", "multiple of 2 ** (stages - 1)"),
    Case("tokenizer-even-sky-window", "tokenizer", {"sky_mask": {"window": 4}}, {}, "spec.trainer.config.sky_mask.window", "odd"),
    Case("segmenter-tile-vs-depth", "segmenter", {"tile_size": 100, "depth": 3}, {}, "spec.trainer.config.tile_size", "multiple of 2 ** depth"),
    Case("segmenter-overlap-too-large", "segmenter", {"tile_size": 64, "overlap": 32}, {}, "spec.trainer.config.overlap", "2 * overlap must be less than tile_size"),
    Case("segmenter-unknown-dice-mode", "segmenter", {"dice": "image"}, {}, "spec.trainer.config.dice", ""),
    # --- the shared training options ---
    Case("schedule-plateau-unknown-metric", "vqvae", {"schedule": {"kind": "plateau", "monitor": "val_iou"}}, {}, "spec.trainer.config.schedule.monitor", "not a metric this trainer reports"),
    Case("early-stop-unknown-metric", "pixelcnn", {**PCNN, "early_stopping": {"enabled": True, "monitor": "iou"}}, {}, "spec.trainer.config.early_stopping.monitor", "bits_per_code"),
    Case("schedule-unknown-kind", "vqvae", {"schedule": {"kind": "linear"}}, {}, "spec.trainer.config.schedule.kind", ""),
    Case("schedule-factor-not-below-1", "segmenter", {"schedule": {"kind": "step", "factor": 1.5}}, {}, "spec.trainer.config.schedule.factor", ""),
    Case("warmup-longer-than-the-run", "vqvae", {"steps_per_epoch": 10, "schedule": {"warmup_steps": 50}}, {"epochs": 5}, "spec.trainer.config.schedule.warmup_steps", "never ends"),
    Case("clipnorm-zero", "vqvae", {"clipnorm": 0}, {}, "spec.trainer.config.clipnorm", ""),
    Case("spike-factor-not-above-1", "vqvae", {"spike_guard": {"factor": 1.0}}, {}, "spec.trainer.config.spike_guard.factor", ""),
    Case("spike-lr-factor-not-below-1", "vqvae", {"spike_guard": {"lr_factor": 1.0}}, {}, "spec.trainer.config.spike_guard.lr_factor", ""),
    Case("spike-history-beyond-window", "tokenizer", {"spike_guard": {"window": 10, "min_history": 20}}, {}, "spec.trainer.config.spike_guard.min_history", "exceeds window"),
    Case("spike-negative-rollbacks", "segmenter", {"spike_guard": {"max_rollbacks": -1}}, {}, "spec.trainer.config.spike_guard.max_rollbacks", ""),
    # --- data, references, resources ---
    Case("unknown-sample", "vqvae", {}, {"data": "sample://imagenet"}, "spec.data", "sample://skimage"),
    Case("sample-name-typo", "vqvae", {}, {"data": "sample://fashion_mnist"}, "spec.data", "no bundled data set"),
    Case("pixelcnn-vqvae-is-a-sample", "pixelcnn", {"vqvae": "sample://skimage"}, {}, "spec.trainer.config.vqvae", "a data set, not a run"),
    Case("pixelcnn-vqvae-is-itself", "pixelcnn", {"vqvae": "demo"}, {}, "spec.trainer.config.vqvae", "this object's own name"),
    Case("pixelcnn-vqvae-bad-scheme", "pixelcnn", {"vqvae": "ftp://host/runs/v"}, {}, "spec.trainer.config.vqvae", "scheme 'ftp'"),
    Case("pixelcnn-vqvae-not-a-name", "pixelcnn", {"vqvae": "My_VQVAE"}, {}, "spec.trainer.config.vqvae", "neither a run name"),
    Case("gpu-type-without-gpu", "vqvae", {}, {"resources": {"gpu": {"count": 0, "type": "nvidia-l4"}}}, "spec.resources.gpu.type", "count is 0"),
    # The API server refuses an upper-case K and non-ASCII digits; the Kubernetes Python client's
    # parser, used before, took both, and the run failed only when Argo made its pod.
    Case("cpu-upper-case-k", "vqvae", {}, {"resources": {"cpu": "1K"}}, "spec.resources.cpu", "is not a Kubernetes quantity"),
    Case("memory-arabic-digits", "vqvae", {}, {"resources": {"memory": "\u0661\u0666Gi"}}, "spec.resources.memory", "is not a Kubernetes quantity"),
    Case("resume-from-a-sample", "vqvae", {}, {"resume": {"from": "sample://skimage"}}, "spec.resume.from", "scheme 'sample'"),
    # --- cluster-only: a pod cannot reach this machine ---
    Case("output-local-path", "vqvae", {}, {"output": "./mlops-runs"}, "spec.output", "local path", True),
    Case("output-absolute-path", "vqvae", {}, {"output": "/srv/runs"}, "spec.output", "local path", True),
    Case("output-file-url", "vqvae", {}, {"output": "file:///srv/runs"}, "spec.output", "local path", True),
    Case("data-local-path", "vqvae", {}, {"data": "/home/me/frames"}, "spec.data", "local path", True),
    Case("data-file-url", "segmenter", {}, {"data": "file:///data/38-Cloud_training"}, "spec.data", "local path", True),
    Case("resume-from-local-run", "vqvae", {}, {"resume": {"from": "mlops-runs/vqvae-demo-g1-0123abcd"}}, "spec.resume.from", "local path", True),
    Case("resume-from-file-url", "vqvae", {}, {"resume": {"from": "file:///runs/v"}}, "spec.resume.from", "local path", True),
    Case("pixelcnn-vqvae-local-path", "pixelcnn", {"vqvae": "mlops-runs/vqvae-demo-g1-0123abcd"}, {}, "spec.trainer.config.vqvae", "local path", True),
    Case("pixelcnn-vqvae-file-url", "pixelcnn", {"vqvae": "file:///runs/vqvae"}, {}, "spec.trainer.config.vqvae", "local path", True),
]  # fmt: skip

INVALID_CASES = [c for c in CASES if c.path]


def manifest(case: Case) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "trainer": {"kind": case.kind, "config": copy.deepcopy(case.config)},
        "data": "gs://bucket/data",
        "output": "gs://bucket/runs",
        **copy.deepcopy(case.spec),
    }
    return {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "MLOps",
        "metadata": {"name": "demo", "namespace": "ml", "generation": 1, "uid": "uid-1"},
        "spec": spec,
    }


def test_there_are_at_least_30_cases() -> None:
    assert len(INVALID_CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_parse_manifest_refuses_naming_the_field(case: Case) -> None:
    if not case.path:
        parse_manifest(manifest(case), cluster=True)  # a valid neighbour: accepted
        return
    with pytest.raises(ManifestError) as info:
        parse_manifest(manifest(case), cluster=True)
    paths = [e.path for e in info.value.errors]
    assert case.path in paths, info.value
    assert case.message in str(info.value)
    if case.cluster_only:
        parse_manifest(manifest(case), cluster=False)  # mlops run: fine on this machine
    else:
        with pytest.raises(ManifestError):
            parse_manifest(manifest(case), cluster=False)


@pytest.mark.parametrize("case", INVALID_CASES, ids=lambda c: c.id)
def test_mlops_validate_refuses(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"{case.id}.yaml"
    path.write_text(yaml.safe_dump(manifest(case)))
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: {case.path}: " in err and "Traceback" not in err
    assert case.message in err
    if case.cluster_only:
        assert main(["validate", "--local", str(path)]) == 0


@pytest.mark.parametrize("case", INVALID_CASES, ids=lambda c: c.id)
def test_the_operator_creates_nothing(case: Case) -> None:
    decision = decide({**manifest(case), "status": {}}, [], POLICY, AT)
    assert decision.create == ()
    status = decision.status
    assert status is not None
    assert (status.phase, status.reason) == ("Failed", "SpecInvalid")
    assert case.path in status.message and case.message in status.message
    assert status.run_id is None


def test_sample_names_are_known_without_numpy(tmp_path: Path) -> None:
    """The operator image has no NumPy: the names come from the sources, not from imports."""
    import subprocess

    from mlops_trainers.samples import registered_samples, sample_names

    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('numpy', 'scipy', 'PIL', 'tensorflow', 'keras'):\n"
        "            raise ImportError(f'{name} is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    code = (
        "from mlops_api import parse_manifest\n"
        "from mlops_trainers.samples import sample_names\n"
        "print(sorted(sample_names()))\n"
    )
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    static = set(yaml.safe_load(out.stdout))
    # ... and they are exactly the samples the registry makes once their modules are imported.
    import importlib

    from mlops_trainers.samples import SAMPLE_MODULES, _trainer_sample_modules

    # The trainers' own sample modules too: passed in the whole suite only because earlier
    # tests had imported them, and failed when run alone.
    for module in [*SAMPLE_MODULES.values(), *_trainer_sample_modules()]:
        importlib.import_module(module)
    assert static == set(registered_samples()) == set(sample_names())


def test_a_scratch_output_is_allowed_only_when_the_run_says_so() -> None:
    """The chart's `helm test` writes its throwaway run to the pod's /tmp; the operator refused
    it after local outputs were ruled out in a cluster (the chart e2e's helm-test run ended
    SpecInvalid). The run names the exception; a plain local output is still refused."""
    scratch = {"output": "file:///tmp/mlops-helm-test"}
    doc = manifest(Case("scratch", "vqvae", {}, scratch, "", ""))
    with pytest.raises(ManifestError, match=r"spec\.output"):
        parse_manifest(doc, cluster=True)
    doc["metadata"]["annotations"] = {"mlops.dev/scratch-output": "true"}
    assert parse_manifest(doc, cluster=True).spec.output == "file:///tmp/mlops-helm-test"
