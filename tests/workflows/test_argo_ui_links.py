"""The links each run's page in Argo's UI shows (the ``links`` of Argo's ConfigMap, as the local
cluster has them in hack/cluster/manifests/argo.yaml and the README shows them): every variable
they use is one the operator writes on each Workflow, and the TensorBoard link, opened in a real
Chromium on a real TensorBoard, shows that run and no other."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from browser import new_page, screenshot
from mlops_api import read_manifest
from mlops_workflows.render import render
from playwright.sync_api import Browser

ROOT = Path(__file__).resolve().parents[2]
ARGO_CONFIG = ROOT / "hack" / "cluster" / "manifests" / "argo.yaml"
EXAMPLE = ROOT / "examples" / "vqvae.yaml"
VARIABLE = re.compile(r"\$\{workflow\.metadata\.(labels|annotations)\.([^}]+)\}")


def links() -> list[dict[str, str]]:
    (config,) = [
        d for d in yaml.safe_load_all(ARGO_CONFIG.read_text()) if d and d["kind"] == "ConfigMap"
    ]
    value: list[dict[str, str]] = yaml.safe_load(config["data"]["links"])
    return value


def expand(url: str, workflow: dict[str, Any]) -> str:
    """What Argo's UI makes of a link (ui/src/shared/components/links.tsx, processURL): each
    ${workflow.metadata.labels|annotations.KEY} replaced by that value, or "" when missing."""
    return VARIABLE.sub(lambda m: workflow["metadata"].get(m[1], {}).get(m[2], ""), url)


def test_every_link_starts_with_http_and_uses_what_the_operator_writes() -> None:
    workflow = render(read_manifest(EXAMPLE)).workflow
    found = links()
    assert {link["name"] for link in found} == {"Output folder", "TensorBoard"}
    for link in found:
        assert link["scope"] == "workflow"
        # argo-server refuses to start with any other link (config.Sanitize, its
        # --allowed-link-protocol): a link cannot be a ${...} annotation alone.
        assert link["url"].startswith(("https://", "http://")), link
        used = VARIABLE.findall(link["url"])
        assert used, link
        for kind, key in used:
            assert workflow["metadata"][kind].get(key), (kind, key, link)
    output = workflow["metadata"]["annotations"]["mlops.dev/output"]
    folder = next(link for link in found if link["name"] == "Output folder")
    assert expand(folder["url"], workflow) == (
        "https://console.cloud.google.com/storage/browser/" + output.removeprefix("gs://")
    )


def test_the_readme_shows_the_same_links() -> None:
    readme = (ROOT / "README.md").read_text()
    lines = ARGO_CONFIG.read_text().splitlines()
    start = lines.index("  links: |")
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("    "))
    block = "\n".join(lines[start:end])
    assert block in readme, f"README.md does not show hack/cluster's Argo links:\n{block}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _event_files(logdir: Path, run_ids: list[str]) -> None:
    """Each run's TensorBoard folder as a trainer writes it: <run id>/tb/train under the prefix."""
    code = (
        "import sys, tensorflow as tf\n"
        "for run in sys.argv[2:]:\n"
        "    w = tf.summary.create_file_writer(f'{sys.argv[1]}/{run}/tb/train')\n"
        "    with w.as_default():\n"
        "        for step in range(3):\n"
        "            tf.summary.scalar('loss', 1.0 / (step + 1), step=step)\n"
        "    w.flush()\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(logdir), *run_ids], check=True, capture_output=True
    )


@pytest.mark.browser
def test_tensorboard_link_shows_only_that_run(chromium_browser: Browser, tmp_path: Path) -> None:
    workflow = render(read_manifest(EXAMPLE)).workflow
    run_id = workflow["metadata"]["labels"]["mlops.dev/run-id"]
    other = "vqvae-other-g1-0123abcd"
    logdir = tmp_path / "runs"
    _event_files(logdir, [run_id, other])
    port = _free_port()
    # The link's TensorBoard is one serving the runs' prefix; here on a free port.
    link = next(x for x in links() if x["name"] == "TensorBoard")["url"]
    url = expand(link, workflow).replace("http://127.0.0.1:6006/", f"http://127.0.0.1:{port}/")
    assert f"runFilter={run_id}" in url
    log = (tmp_path / "tensorboard.log").open("wb")
    exe = Path(sys.executable).with_name("tensorboard")
    tb = subprocess.Popen(
        [str(exe), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2) as r:
                    if {f"{run_id}/tb/train", f"{other}/tb/train"} <= set(yaml.safe_load(r)):
                        break
            except OSError:
                pass
            assert tb.poll() is None, (tmp_path / "tensorboard.log").read_text()
            assert time.monotonic() < deadline, "TensorBoard did not list both runs in 60 s"
            time.sleep(0.5)

        def runs_shown(address: str, shot: str) -> str:
            page = new_page(chromium_browser)
            page.goto(address)
            # The time-series dashboard's card of the one scalar, then its run table.
            page.get_by_text("loss", exact=True).first.wait_for()
            page.get_by_text(f"{run_id}/tb/train").first.wait_for()
            screenshot(page, tmp_path, shot)
            text = page.inner_text("body")
            page.context.close()
            return text

        # Without the filter both runs are there (the page really lists runs) ...
        assert other in runs_shown(f"http://127.0.0.1:{port}/#timeseries", "tensorboard-all")
        # ... and the link shows the run and nothing else.
        shown = runs_shown(url, "tensorboard-link")
        assert run_id in shown and other not in shown
    finally:
        tb.terminate()
        tb.wait(timeout=30)
        log.close()
