"""The Argo UI links the chart README tells an admin to configure resolve, on a real rendered
Workflow, to the run's own folder and run id: resolved here as Argo's UI does it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from mlops_api import read_manifest
from mlops_workflows.render import browser_url, render

ROOT = Path(__file__).resolve().parents[2]
CHART_README = ROOT / "charts" / "mlops-operator" / "README.md"


def _links() -> list[dict[str, str]]:
    text = CHART_README.read_text()
    section = text[text.index("## Links in the Argo UI") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "no yaml block in the chart README's links section"
    links: list[dict[str, str]] = yaml.safe_load(yaml.safe_load(block.group(1))["links"])
    return links


def _resolve(url: str, obj: dict[str, Any]) -> str:
    """Argo's UI (``processURL`` and ``splitWithMetadataKnowledge``): ``${a.b.c}`` is looked up
    in ``obj`` part by part; under ``workflow.metadata.labels``/``annotations`` the rest of the
    expression is one key (keys have dots); a missing ``workflow.*`` value becomes ""."""

    def one(match: re.Match[str]) -> str:
        expr = match.group(1)
        parts = expr.split(".")
        if expr.startswith(("workflow.metadata.labels", "workflow.metadata.annotations")):
            parts = [*parts[:3], ".".join(parts[3:])]
        value: Any = obj
        for part in parts:
            value = value.get(part) if isinstance(value, dict) else None
        return str(value) if value else ("" if parts[0] == "workflow" else "null")

    return re.sub(r"\$\{([^}]*)\}", one, url)


def test_the_documented_links_resolve_to_the_runs_folder_and_run_id() -> None:
    rendered = render(read_manifest(ROOT / "examples" / "vqvae.yaml"))
    workflow = rendered.workflow
    output = rendered.plan.config.output
    assert output.startswith("gs://")
    pod = {"metadata": {"name": "p", "namespace": "ml"}, "status": {}}
    resolved = {
        link["name"]: _resolve(link["url"], {**pod, "workflow": workflow}) for link in _links()
    }
    assert resolved["Run folder"] == browser_url(output)
    assert resolved["Run folder"].startswith("https://console.cloud.google.com/storage/browser/")
    assert resolved["Attempt logs"] == browser_url(output) + "/logs"
    assert resolved["TensorBoard"].endswith("=" + rendered.plan.run_id)
    for name, url in resolved.items():
        assert "${" not in url and "null" not in url, (name, url)
