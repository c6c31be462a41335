"""Upgrading the chart across a change of the MLOps CRD, the documented way (chart README,
"Upgrading"): Helm installs ``crds/`` on the first install only and never upgrades it, so the new
CRD is applied first, then the release is upgraded::

    helm show crds CHART | kubectl apply --server-side --force-conflicts -f -   # or: mlops crd | ...
    helm upgrade RELEASE CHART

The "old" chart is a copy of this one whose CRD lacks ``spec.suspend`` (the newest field). The CRD
is cluster-wide and shared by the whole e2e session, so it is not deleted (that would delete every
MLOps object of the session): the old CRD is put in place as Helm 4's first install leaves it,
server-side applied by the field manager ``helm``. That ownership is why ``--force-conflicts`` is
part of the documented command, and the test shows the command without it failing.

The operator runs as a local process from the release's Deployment before and after the upgrade
(kwok fakes its pod, see test_chart_install.py); the session's CRD is restored at the end.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster import CRD_PATH, Cluster
from operator_harness import CHART, Env, Operator, wait_for

pytestmark = pytest.mark.e2e

CRD_NAME = "mlops.mlops.dev"
# The smallest spec kwok can "run"; `suspend` is the field the old CRD lacks.
SPEC: dict[str, Any] = {
    "trainer": {"kind": "vqvae", "config": {"image_size": 16}},
    "data": "sample://skimage",
    "output": "gs://bucket/runs",
    "epochs": 1,
    "resources": {"cpu": "500m", "memory": "1Gi", "gpu": {"count": 0}},
    "spot": False,
    "queue": None,
}


def _manifest(name: str, **spec: Any) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "mlops.dev/v1alpha1",
            "kind": "MLOps",
            "metadata": {"name": name},
            "spec": {**SPEC, **spec},
        }
    )


def _spec_fields(cluster: Cluster) -> set[str]:
    crd = yaml.safe_load(cluster.kubectl("get", "crd", CRD_NAME, "-o", "yaml").stdout)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return set(schema["properties"]["spec"]["properties"])


def _restore_session_crd(cluster: Cluster) -> None:
    """The CRD as the `mlops_crd` fixture applies it for the rest of the session."""
    cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=mlops-e2e",
        "-f",
        str(CRD_PATH),
    )
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")


@pytest.fixture
def old_chart(tmp_path: Path) -> Path:
    """This chart, version 0.0.1, with a CRD that lacks spec.suspend."""
    chart = tmp_path / "old" / "mlops-operator"
    shutil.copytree(CHART, chart)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    (chart / "Chart.yaml").write_text(yaml.safe_dump({**meta, "version": "0.0.1"}))
    crd_path = chart / "crds" / CRD_PATH.name
    crd = yaml.safe_load(crd_path.read_text())
    for version in crd["spec"]["versions"]:
        del version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["suspend"]
    crd_path.write_text(yaml.safe_dump(crd, sort_keys=False))
    return chart


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    ns = cluster.create_namespace(f"e2e-upgrade-{uuid.uuid4().hex[:6]}")
    try:
        yield ns
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _operator(cluster: Cluster, ns: str, release: str, tmp_path: Path, tag: str) -> Operator:
    """The operator as the release's Deployment runs it, with its ServiceAccount's token."""
    deployment = yaml.safe_load(
        cluster.kubectl(
            "get",
            "deployment",
            "-o",
            "yaml",
            f"--namespace={ns}",
            "-l",
            f"app.kubernetes.io/instance={release}",
        ).stdout
    )["items"][0]
    sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    kubeconfig = cluster.write_token_kubeconfig(
        tmp_path / f"kubeconfig-{tag}", cluster.service_account_token(ns, sa), user=sa
    )
    return Operator.from_deployment(deployment, kubeconfig, tmp_path / f"operator-{tag}.log")


def test_upgrade_across_a_crd_change(
    cluster: Cluster, old_chart: Path, namespace: str, tmp_path: Path
) -> None:
    ns, release = namespace, f"upg-{namespace[-6:]}"
    old_crd = old_chart / "crds" / CRD_PATH.name
    try:
        # 1. The old release, with the old CRD as Helm's install leaves it (field manager helm).
        cluster.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=helm",
            "-f",
            str(old_crd),
        )
        wait_for("the old CRD", lambda: "suspend" not in _spec_fields(cluster), timeout=60)
        cluster.helm(
            "install",
            release,
            str(old_chart),
            f"--namespace={ns}",
            "--set=trainer.reportSummary=false",
            "--wait",
            "--timeout=180s",
        )
        # The old CRD refuses the new field (strict field validation names it).
        refused = cluster.kubectl(
            "apply",
            f"--namespace={ns}",
            "--validate=strict",
            "-f",
            "-",
            input=_manifest("too-new", suspend=True),
            check=False,
        )
        assert refused.returncode != 0 and "suspend" in refused.stderr, refused.stderr

        # 2. An object made under the old release runs to the end.
        with cluster.api_client() as api:
            env = Env(api, ns)
            operator = _operator(cluster, ns, release, tmp_path, "old")
            operator.start()
            try:
                cluster.kubectl(
                    "apply", f"--namespace={ns}", "-f", "-", input=_manifest("made-before")
                )
                before = wait_for(
                    "made-before to finish",
                    lambda: env.phase_is("made-before", "Succeeded", "Failed"),
                    timeout=180,
                )
                assert before["phase"] == "Succeeded", (before, operator.log_tail())
                uid = env.uid("made-before")
            finally:
                operator.stop()

            # 3. The documented upgrade: the new CRD first, then the chart. Without
            # --force-conflicts the apply fails: Helm's install owns the CRD's fields.
            crd = subprocess.run(
                [str(Path(sys.executable).parent / "mlops"), "crd"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            shown = cluster.helm("show", "crds", str(CHART)).stdout
            assert [d for d in yaml.safe_load_all(shown) if d] == [yaml.safe_load(crd)]
            conflict = cluster.kubectl("apply", "--server-side", "-f", "-", input=crd, check=False)
            assert conflict.returncode != 0 and 'conflict with "helm"' in conflict.stderr, (
                conflict.stderr
            )
            assert "suspend" not in _spec_fields(cluster)
            cluster.kubectl(
                "apply",
                "--server-side",
                "--force-conflicts",
                "-f",
                "-",
                input=shown,
            )
            cluster.kubectl(
                "wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}"
            )
            cluster.helm(
                "upgrade",
                release,
                str(CHART),
                f"--namespace={ns}",
                "--set=trainer.reportSummary=false",
                "--wait",
                "--timeout=180s",
            )
            history = cluster.helm("history", release, f"--namespace={ns}", "-o", "json").stdout
            assert [h["chart"] for h in yaml.safe_load(history)] == [
                "mlops-operator-0.0.1",
                "mlops-operator-0.1.0",
            ]

            # 4. The new field is accepted and kept, the old object survived as it was, and the
            # upgraded operator acts on the new field.
            assert "suspend" in _spec_fields(cluster)
            operator = _operator(cluster, ns, release, tmp_path, "new")
            operator.start()
            try:
                wait_for(
                    "the API to accept spec.suspend",
                    lambda: (
                        cluster.kubectl(
                            "apply",
                            f"--namespace={ns}",
                            "--validate=strict",
                            "-f",
                            "-",
                            input=_manifest("made-after", suspend=True),
                            check=False,
                        ).returncode
                        == 0
                    ),
                    timeout=30,
                )
                assert env.get("made-after")["spec"]["suspend"] is True
                after = wait_for(
                    "made-after to be suspended",
                    lambda: env.phase_is("made-after", "Suspended"),
                    timeout=60,
                )
                assert after["reason"] == "Suspended"
                assert env.uid("made-before") == uid
                survived = env.status("made-before")
                assert survived["phase"] == "Succeeded"
                assert survived["runId"] == before["runId"]
                env.delete_all()
            finally:
                operator.stop()
        cluster.helm("uninstall", release, f"--namespace={ns}", "--wait")
        # crds/ is never deleted by Helm: the objects' type outlives the release.
        cluster.kubectl("get", "crd", CRD_NAME)
    finally:
        cluster.helm("uninstall", release, f"--namespace={ns}", "--wait", check=False)
        _restore_session_crd(cluster)
