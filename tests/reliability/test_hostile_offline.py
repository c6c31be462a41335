"""Bad input, offline: every hostile manifest is rejected naming its field, never with a traceback,
and nothing a manifest says ever reaches a shell.

The same corpus goes to the real API server and operator in ``test_hostile_e2e.py``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hostile_corpus import YAML_ATTACKS, Case, cases
from mlops_api import ManifestError, parse_manifest
from mlops_cli.main import main
from mlops_workflows.render import render

ROOT = Path(__file__).resolve().parents[2]
CASES = cases()
REJECTED = [c for c in CASES if c.expect is not None]
ACCEPTED = [c for c in CASES if c.expect is None]
# What the trainer container runs, whatever the manifest says.
FIXED_ARGV = ["python", "-m", "mlops_trainers", "--config", "/etc/mlops/run.yaml"]


def test_the_corpus_is_big_enough() -> None:
    assert len(REJECTED) >= 40
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


@pytest.mark.parametrize("case", REJECTED, ids=lambda c: c.id)
def test_rejected_naming_the_field(case: Case) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(case.manifest)
    paths = [e.path for e in info.value.errors]
    assert any(p == case.expect or p.startswith(f"{case.expect}.") for p in paths), (
        f"expected an error at {case.expect}, got {info.value}"
    )
    for error in info.value.errors:
        # A message fit for a terminal and a status condition: bounded, no echo of a 1 MiB value.
        assert error.message and len(error.message) < 2000, error.message[:200]


@pytest.mark.parametrize("case", REJECTED, ids=lambda c: c.id)
def test_validate_cli_exit_1_no_traceback(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(case.manifest, allow_unicode=True))
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if path.stat().st_size > 1 << 20:  # refused before parsing: a ConfigMap holds at most 1 MiB
        assert "larger than 1048576 bytes" in err
    else:
        assert f"{case.expect}" in err


@pytest.mark.parametrize("case", ACCEPTED, ids=lambda c: c.id)
def test_hostile_looking_but_valid_is_accepted_and_renders(case: Case) -> None:
    obj = parse_manifest(case.manifest)
    rendered = render(obj)
    assert len(rendered.plan.run_id) <= 63
    for value in rendered.workflow["metadata"]["labels"].values():
        assert len(value) <= 63  # a label value the API server accepts
    assert len(json.dumps(rendered.config_map)) < 1 << 20


@pytest.mark.parametrize("name", sorted(YAML_ATTACKS))
def test_yaml_attacks_fail_fast_and_clean(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(YAML_ATTACKS[name])
    start = time.monotonic()
    assert main(["validate", str(path)]) == 1
    assert time.monotonic() - start < 10, "must not expand or walk an alias bomb"
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip()


def test_no_manifest_string_reaches_a_shell() -> None:
    """Every string field set to something a shell would love, yet valid: the workflow's
    container runs the fixed argv, and the values reach its pods only through the ConfigMap's
    data (the Workflow's annotations show the output to people, never to a process)."""
    doc = {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "MLOps",
        "metadata": {"name": "shellish"},
        "spec": {
            "trainer": {"kind": "vqvae"},
            "data": "gs://bucket/x~y=z,w+v!",
            "output": "gs://bucket/o#frag?q=1",
            "image": "registry.local:5000/repo/img:tag",
        },
    }
    rendered = render(parse_manifest(doc))
    templates = rendered.workflow["spec"]["templates"]
    containers = [t["container"] for t in templates if "container" in t]
    assert containers
    for container in containers:
        assert container["command"] + container.get("args", []) == FIXED_ARGV
    text = json.dumps(
        {"spec": rendered.workflow["spec"], "labels": rendered.workflow["metadata"]["labels"]}
    )
    for value in ("x~y=z,w+v!", "o#frag?q=1"):
        assert value not in text  # only in the run file the trainer parses as YAML
    assert "x~y=z,w+v!" in rendered.config_map["data"]["run.yaml"]


def test_no_shell_anywhere_in_our_code() -> None:
    """No ``shell=True``, ``os.system`` or ``sh -c`` in the packages: nothing is ever
    interpreted by a shell, whatever a manifest says."""
    pattern = re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\(|[\"']sh[\"'],\s*[\"']-c[\"']")
    offenders = []
    for package in ("api", "workflows", "operator", "cli", "trainers"):
        for path in (ROOT / package).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_summary(faults: Any) -> None:
    """One line for the suite's table: every case through parse + render, counted."""
    survived = 0
    for case in CASES:
        try:
            obj = parse_manifest(case.manifest)
        except ManifestError as exc:
            survived += any(
                e.path == case.expect or e.path.startswith(f"{case.expect}.") for e in exc.errors
            )
        else:
            survived += case.expect is None and bool(render(obj).workflow)
    faults.record("bad input: hostile manifests, offline", tried=len(CASES), survived=survived)
    assert survived == len(CASES)
