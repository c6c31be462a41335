"""Checkpoints that a kill at any moment cannot corrupt, and how runs and checkpoints are found.

Layout under a run's output URL::

    checkpoints/step-0000000120/model.weights.h5   weights, optimizer state, quantizer RNG state
    checkpoints/step-0000000120/checkpoint.json    manifest: step, epoch, step in epoch, files
                                                   and sizes, trainer kind and config; LAST

A checkpoint is *complete* only when its manifest exists and every file it lists has the listed
size. The manifest is written last, so a process killed mid-write leaves an incomplete folder
that readers ignore (and the next save prunes). There is no rename: GCS has no atomic folder
rename and a "move" is a copy plus delete (about 33 s per object on the emulator). Deleting old
checkpoints removes the manifest first, for the same reason.

A checkpoint is self-describing (kind + trainer config in the manifest), so another run can build
the model it belongs to (PixelCNN's ``vqvae``, ``resume.from_url``, ``resume.parent_run``).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_trainers import storage
from mlops_trainers.contract import RUN_FILE, parse_run_id
from mlops_trainers.errors import ConfigError

if TYPE_CHECKING:
    import keras

__all__ = [
    "BEST_DIR",
    "CHECKPOINTS_DIR",
    "KEEP_CHECKPOINTS",
    "MANIFEST",
    "WEIGHTS",
    "CheckpointInfo",
    "find_run",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "read_checkpoint",
    "resolve_checkpoint",
    "resolve_model_reference",
    "save_best",
    "save_checkpoint",
]

CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"  # early stopping's best epoch (never pruned)
MANIFEST = "checkpoint.json"
WEIGHTS = "model.weights.h5"
KEEP_CHECKPOINTS = 3  # complete checkpoints kept per run; older ones are deleted
_NAME = re.compile(r"step-(\d{10})")


# The Keras object types whose attributes its weight files never hold (saving_lib's skip sets).
_KERAS_SKIPSET_TYPES = (
    "Operation",
    "Layer",
    "Functional",
    "Sequential",
    "Metric",
    "Optimizer",
    "Loss",
)


def _keras_skipsets() -> None:
    """Store Keras' skip sets under the key it looks them up by, before it saves or loads weights.

    Keras 3 (saving_lib.get_attr_skipset) caches each set under ``saving_attr_skipset_<type>``
    but reads ``saving_attr_skiplist_<type>``: the cache never hits, and every ``save_weights``
    or ``load_weights`` builds a throwaway Layer for each object it walks (54 for the
    segmenter: about 90 ms of a 145 ms checkpoint). The sets are Keras' own, so the files are
    the same. Per thread, and cleared by ``clear_session``, as Keras' state is: hence each time.
    """
    from keras.src.backend.common import global_state
    from keras.src.saving import saving_lib

    for obj_type in _KERAS_SKIPSET_TYPES:
        key = f"saving_attr_skiplist_{obj_type}"
        if global_state.get_global_attribute(key) is None:
            global_state.set_global_attribute(key, saving_lib.get_attr_skipset(obj_type))


def checkpoint_name(step: int) -> str:
    return f"step-{step:010d}"


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint: its URL and manifest."""

    url: str
    manifest: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.manifest["global_step"])

    @property
    def epoch(self) -> int:
        return int(self.manifest["epoch"])

    @property
    def step_in_epoch(self) -> int:
        return int(self.manifest["step_in_epoch"])

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def trainer_config(self) -> dict[str, Any]:
        return dict(self.manifest["trainer_config"])

    @property
    def run_id(self) -> str | None:
        return self.manifest.get("run_id")

    @property
    def weights_url(self) -> str:
        return storage.join(self.url, WEIGHTS)


def read_checkpoint(url: str) -> CheckpointInfo | None:
    """The checkpoint at ``url`` if it is complete, else None."""
    fs, path = storage.filesystem(url)
    fs.invalidate_cache()
    manifest_url = storage.join(url, MANIFEST)
    try:
        manifest = storage.read_json(manifest_url)
    except (FileNotFoundError, ValueError):
        return None
    for name, size in manifest.get("files", {}).items():
        try:
            info = fs.info(storage.join(path, name))
        except FileNotFoundError:
            return None
        if int(info.get("size", -1)) != int(size):
            return None
    return CheckpointInfo(url.rstrip("/"), manifest)


def list_checkpoints(run_url: str, *, complete: bool = True) -> list[CheckpointInfo]:
    """The complete checkpoints of a run, oldest first."""
    folder = storage.join(run_url, CHECKPOINTS_DIR)
    found = []
    for name in storage.list_dir(folder):
        if not _NAME.fullmatch(name):
            continue
        info = read_checkpoint(storage.join(folder, name))
        if info is not None:
            found.append(info)
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(run_url: str) -> CheckpointInfo | None:
    """The newest complete checkpoint of a run, or None."""
    found = list_checkpoints(run_url)
    return found[-1] if found else None


def save_checkpoint(
    model: keras.Model,
    run_url: str,
    scratch: Path,
    state: dict[str, Any],
    *,
    keep: int = KEEP_CHECKPOINTS,
) -> CheckpointInfo:
    """Write weights, then the manifest (``state`` + file sizes) last; prune old checkpoints."""
    step = int(state["global_step"])
    url = storage.join(run_url, CHECKPOINTS_DIR, checkpoint_name(step))
    local = scratch / "checkpoint" / WEIGHTS
    local.parent.mkdir(parents=True, exist_ok=True)
    _keras_skipsets()
    model.save_weights(local)
    data = local.read_bytes()
    storage.write_bytes(storage.join(url, WEIGHTS), data)
    manifest = {**state, "files": {WEIGHTS: len(data)}, "written": time.time()}
    storage.write_json(storage.join(url, MANIFEST), manifest)
    info = CheckpointInfo(url, manifest)
    _prune(run_url, step, keep)
    return info


def save_best(
    model: keras.Model, run_url: str, scratch: Path, state: dict[str, Any]
) -> CheckpointInfo:
    """The weights of the best epoch so far under ``<run>/best/`` (early stopping's
    ``restore_best``): the manifest is removed first and written last, so a kill in between
    leaves no best rather than a best whose manifest does not describe its weights."""
    url = storage.join(run_url, BEST_DIR)
    storage.remove(storage.join(url, MANIFEST))
    local = scratch / "best" / WEIGHTS
    local.parent.mkdir(parents=True, exist_ok=True)
    _keras_skipsets()
    model.save_weights(local)
    data = local.read_bytes()
    storage.write_bytes(storage.join(url, WEIGHTS), data)
    manifest = {**state, "files": {WEIGHTS: len(data)}, "written": time.time()}
    storage.write_json(storage.join(url, MANIFEST), manifest)
    return CheckpointInfo(url, manifest)


def _prune(run_url: str, newest: int, keep: int) -> None:
    folder = storage.join(run_url, CHECKPOINTS_DIR)
    complete = [c.step for c in list_checkpoints(run_url)]
    keep_steps = set(complete[-keep:]) | {newest}
    for name in storage.list_dir(folder):
        match = _NAME.fullmatch(name)
        if not match:
            continue
        step = int(match.group(1))
        # Older complete ones beyond `keep`, and incomplete leftovers older than the newest.
        if step in keep_steps or step > newest:
            continue
        url = storage.join(folder, name)
        storage.remove(storage.join(url, MANIFEST))  # readers stop trusting it first
        storage.remove(url, recursive=True)


def load_checkpoint(
    model: keras.Model, checkpoint: CheckpointInfo, scratch: Path, *, optimizer: bool = True
) -> None:
    """Load weights (and the optimizer state, or reset it to fresh) into a built model."""
    local = scratch / "restore" / WEIGHTS
    storage.get_file(checkpoint.weights_url, local)
    _keras_skipsets()
    try:
        model.load_weights(local)
    except ValueError as err:
        raise ConfigError(
            f"the checkpoint {checkpoint.url} does not fit this model (was the trainer config "
            f"changed?): {err}"
        ) from err
    if not optimizer and getattr(model, "optimizer", None) is not None:
        import keras

        for variable in model.optimizer.variables:
            variable.assign(keras.ops.zeros(variable.shape, variable.dtype))


# === Finding runs and checkpoints ===


def resolve_checkpoint(url: str) -> CheckpointInfo:
    """A checkpoint URL, or a run URL (its newest complete checkpoint)."""
    url = url.rstrip("/")
    direct = read_checkpoint(url)
    if direct is not None:
        return direct
    newest = latest_checkpoint(url)
    if newest is not None:
        return newest
    raise ConfigError(
        f"no complete checkpoint at {url}: looked for {storage.join(url, MANIFEST)} and "
        f"{storage.join(url, CHECKPOINTS_DIR, 'step-*', MANIFEST)}"
    )


def find_run(
    output_prefix: str, name: str, *, namespace: str | None, exclude: str | None = None
) -> str:
    """The output URL of the newest run of MLOps ``namespace/name`` under ``output_prefix``.

    Runs are ``<output_prefix>/<name>-g<generation>-<hash>`` (the name shortened to fit 63
    characters) with a ``run.json`` naming them; the highest generation wins, then the newest
    start. Only runs with a complete checkpoint count. Two MLOps objects of the same name in
    different namespaces may share an output prefix: a run of the other one never matches
    (``run.json``'s ``namespace`` must equal ``namespace``; a local run, None, matches only None).
    """
    stem = name.replace(".", "-")
    candidates: list[tuple[int, float, str]] = []
    seen, elsewhere = [], []
    for entry in storage.list_dir(output_prefix):
        parsed = parse_run_id(entry)
        if parsed is None or entry == exclude or not stem.startswith(parsed.stem):
            continue
        url = storage.join(output_prefix, entry)
        try:
            record = storage.read_json(storage.join(url, RUN_FILE))
        except (FileNotFoundError, ValueError):
            continue
        if record.get("name") != name:
            continue
        if record.get("namespace") != namespace:
            elsewhere.append(f"{entry} (namespace {record.get('namespace')})")
            continue
        seen.append(entry)
        if latest_checkpoint(url) is None:
            continue
        started = float(record.get("first_started") or record.get("started") or 0.0)
        candidates.append((parsed.generation, started, url))
    if not candidates:
        where = f"namespace {namespace}" if namespace is not None else "no namespace (local)"
        if seen:
            detail = f"runs {', '.join(seen)} have no complete checkpoint"
        elif elsewhere:
            detail = f"only runs of other namespaces: {', '.join(elsewhere)}"
        else:
            detail = f"no {stem}-g*/{RUN_FILE} naming it"
        raise ConfigError(f"run {name!r} of {where} not found under {output_prefix}: {detail}")
    return max(candidates)[2]


def resolve_model_reference(
    reference: str, output_prefix: str, *, namespace: str | None, exclude: str | None = None
) -> tuple[CheckpointInfo, dict[str, Any]]:
    """A run name (of the same namespace) or a run/checkpoint URL -> its newest complete
    checkpoint, and provenance."""
    if "://" in reference or "/" in reference:
        checkpoint = resolve_checkpoint(reference)
        provenance: dict[str, Any] = {"reference": reference, "url": reference}
    else:
        run_url = find_run(output_prefix, reference, namespace=namespace, exclude=exclude)
        checkpoint = resolve_checkpoint(run_url)
        provenance = {"reference": reference, "run_name": reference, "url": run_url}
    provenance.update(
        {
            "checkpoint": checkpoint.url,
            "run_id": checkpoint.run_id,
            "kind": checkpoint.kind,
            "step": checkpoint.step,
        }
    )
    return checkpoint, provenance
