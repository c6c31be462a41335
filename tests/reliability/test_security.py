"""Security: trainer pods are locked down, and no credential ends up in a ConfigMap, a Workflow,
run.json or the logs.

The operator's RBAC against the real API server (a non-admin token can do what it needs and
nothing more) is in ``tests/e2e/test_operator_rbac.py``; the chart's operator Deployment security
context in ``tests/charts/test_chart.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlops_api import read_manifest
from mlops_workflows.render import RenderSettings, render

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
SECRET_VALUE = "sekrit-0123456789abcdef"  # a credential's value: must never be written anywhere


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_trainer_pods_are_locked_down(path: Path, faults: Any) -> None:
    wf = render(read_manifest(path)).workflow["spec"]
    pod = wf["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 1000
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    for template in wf["templates"]:
        sc = template["container"]["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["runAsNonRoot"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}


def test_gcs_key_is_a_secret_reference_never_a_value() -> None:
    rendered = render(read_manifest(EXAMPLES[0]), RenderSettings(gcs_secret="trainer-gcs-key"))
    cm_text = json.dumps(rendered.config_map)
    assert "trainer-gcs-key" not in cm_text and "key.json" not in cm_text
    volumes = {v["name"]: v for v in rendered.workflow["spec"]["volumes"]}
    assert volumes["gcs-key"]["secret"] == {"secretName": "trainer-gcs-key"}
    (template,) = rendered.workflow["spec"]["templates"]
    env = {e["name"]: e.get("value") for e in template["container"]["env"]}
    # A path to the mounted file, not the key itself.
    assert env["GOOGLE_APPLICATION_CREDENTIALS"].endswith("/key.json")


@pytest.mark.slow
def test_no_credentials_in_run_outputs_or_logs(tmp_path: Path, faults: Any) -> None:
    """A real (tiny) local run with credentials in its environment: their values appear in no
    file it writes and not in its log."""
    manifest = yaml.safe_load((ROOT / "examples" / "vqvae.yaml").read_text())
    manifest["spec"]["epochs"] = 1
    manifest["spec"]["trainer"]["config"].update(steps_per_epoch=2, reconstructions=2)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(manifest))
    key = tmp_path / "key.json"
    key.write_text(json.dumps({"type": "service_account", "private_key": SECRET_VALUE}))
    env = {
        **os.environ,
        "GOOGLE_APPLICATION_CREDENTIALS": str(key),
        "AWS_SECRET_ACCESS_KEY": SECRET_VALUE,
        "MLOPS_TOKEN": SECRET_VALUE,
    }
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "mlops"), "run", str(path), "--output", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    leaks = [
        str(p) for p in out.rglob("*") if p.is_file() and SECRET_VALUE.encode() in p.read_bytes()
    ]
    if SECRET_VALUE in proc.stdout + proc.stderr:
        leaks.append("<log>")
    files = sum(1 for p in out.rglob("*") if p.is_file())
    faults.record(
        "credentials in run outputs and logs", tried=files + 1, survived=files + 1 - len(leaks)
    )
    assert not leaks, leaks
    (run_json,) = out.rglob("run.json")
    assert SECRET_VALUE not in run_json.read_text()
