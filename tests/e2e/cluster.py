"""The local test cluster of ``hack/cluster`` as a small typed handle for e2e tests.

The cluster is real Kubernetes (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)
plus kwok (fake nodes, fake pod lifecycle) and Argo's workflow-controller, run as plain processes
by ``hack/cluster/up.sh``. This module only starts/stops it through those scripts and gives tests
clients for it; it holds no cluster logic of its own.

With ``MLOPS_E2E_KUBECONFIG`` set, :meth:`Cluster.external` points the same handle at an existing
cluster instead (``make e2e-kind``: kind + Argo + kwok, see ``hack/kind/``); nothing is built,
started or stopped then.
"""

from __future__ import annotations

import base64
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, config

ROOT = Path(__file__).resolve().parents[2]
HACK = ROOT / "hack" / "cluster"
CRD_PATH = ROOT / "charts" / "mlops-operator" / "crds" / "mlops.dev_mlops.yaml"
T = TypeVar("T")

# Set to a kubeconfig: run the e2e tests against that (existing) cluster, not the local one.
EXTERNAL_KUBECONFIG_ENV = "MLOPS_E2E_KUBECONFIG"
# On an external cluster, the non-admin identity is this ServiceAccount (no static tokens there).
EXTERNAL_USER_NS, EXTERNAL_USER_SA = "mlops-e2e-users", "mlops-e2e-user"


def external_kubeconfig() -> Path | None:
    """The kubeconfig of an existing cluster to test against, if ``MLOPS_E2E_KUBECONFIG`` names one."""
    value = os.environ.get(EXTERNAL_KUBECONFIG_ENV, "").strip()
    return Path(value).expanduser().resolve() if value else None


# A cold build of every binary takes 15-30 min on 2 cores; starting a built cluster takes < 1 min.
BUILD_TIMEOUT_S = float(os.environ.get("MLOPS_CLUSTER_BUILD_TIMEOUT_S", "3600"))
UP_TIMEOUT_S = float(os.environ.get("MLOPS_CLUSTER_UP_TIMEOUT_S", "600"))
DOWN_TIMEOUT_S = 120.0


def script_env() -> dict[str, str]:
    """The settings ``hack/cluster/env.sh`` exports, read back from it (one source of truth)."""
    out = subprocess.run(
        [str(HACK / "env.sh")], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    env: dict[str, str] = {}
    for line in out.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, _, value = words[1].partition("=")
            env[key] = value
    return env


def run_script(name: str, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``hack/cluster/<name>``; its progress (stderr) goes wherever ``kwargs`` send it."""
    return subprocess.run([str(HACK / name)], text=True, timeout=timeout, check=False, **kwargs)


def record_pid(state_dir: Path, component: str, pid: int) -> None:
    """Record a cluster process that a test (re)started as lib.sh's ``start`` does: its PID and
    its start time (field 22 of /proc/PID/stat, after the command name), which ``our_pid``
    checks; with only the PID, down.sh would take the process for another's and leave it."""
    started = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19]
    pids = state_dir / "pids"
    (pids / f"{component}.start").write_text(f"{started}\n")
    (pids / f"{component}.pid").write_text(f"{pid}\n")


def is_up() -> bool:
    """Whether the cluster of ``$MLOPS_CLUSTER_DIR`` runs (``hack/cluster/status.sh``)."""
    return run_script("status.sh", 60, capture_output=True).returncode == 0


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 60.0, every: float = 0.5
) -> T:
    """Poll ``probe`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}"
            )
        time.sleep(every)


@dataclass(frozen=True)
class Cluster:
    """A running local cluster: where its kubeconfigs and binaries are, and clients for it."""

    kubeconfig: Path
    """Admin kubeconfig (static token, group ``system:masters``)."""
    user_kubeconfig: Path
    """Kubeconfig of a non-admin user: RBAC decides what it may do (it starts with nothing)."""
    user_name: str
    """That user's name, for ``kubectl auth can-i --as=...`` and RoleBindings."""
    bin_dir: Path
    """kubectl, helm and the cluster's own binaries."""
    state_dir: Path
    """``$MLOPS_CLUSTER_DIR``: certs, tokens, logs (``logs/<component>.log``); for an external
    cluster, a scratch folder."""
    ca_cert: Path
    """The CA that signed the API server's certificate."""
    server: str
    """The API server's URL."""
    local: bool = True
    """True for the cluster of ``hack/cluster``; False for one named by ``MLOPS_E2E_KUBECONFIG``."""

    @classmethod
    def from_env(cls) -> Cluster:
        env = script_env()
        kubeconfig = Path(env["KUBECONFIG"])
        server, _ = _server_and_ca(kubeconfig)
        return cls(
            kubeconfig=kubeconfig,
            user_kubeconfig=Path(env["MLOPS_KUBECONFIG_USER"]),
            user_name=yaml.safe_load(Path(env["MLOPS_KUBECONFIG_USER"]).read_text())["users"][0][
                "name"
            ],
            bin_dir=Path(env["MLOPS_CLUSTER_BIN"]),
            state_dir=kubeconfig.parent,
            ca_cert=kubeconfig.parent / "pki" / "ca.crt",
            server=server,
        )

    @classmethod
    def external(cls, kubeconfig: Path, scratch: Path) -> Cluster:
        """An existing cluster (kind, or any other): kubectl and helm from ``MLOPS_CLUSTER_BIN`` or
        PATH; the non-admin user is a ServiceAccount made here with no RBAC of its own."""
        bin_dir = (
            Path(os.environ["MLOPS_CLUSTER_BIN"]) if os.environ.get("MLOPS_CLUSTER_BIN") else None
        )
        if bin_dir is None:
            kubectl = shutil.which("kubectl")
            if kubectl is None or shutil.which("helm") is None:
                raise RuntimeError(
                    "kubectl and helm must be on PATH (or in MLOPS_CLUSTER_BIN) for an external cluster"
                )
            bin_dir = Path(kubectl).resolve().parent
        scratch.mkdir(parents=True, exist_ok=True)
        server, ca_data = _server_and_ca(kubeconfig)
        ca_cert = scratch / "ca.crt"
        ca_cert.write_bytes(ca_data)
        handle = cls(
            kubeconfig=kubeconfig,
            user_kubeconfig=scratch / "kubeconfig-user",
            user_name=f"system:serviceaccount:{EXTERNAL_USER_NS}:{EXTERNAL_USER_SA}",
            bin_dir=bin_dir,
            state_dir=scratch,
            ca_cert=ca_cert,
            server=server,
            local=False,
        )
        with handle.api_client() as api:
            core = client.CoreV1Api(api)
            for create, body in (
                (core.create_namespace, {"metadata": {"name": EXTERNAL_USER_NS}}),
                (
                    lambda b: core.create_namespaced_service_account(EXTERNAL_USER_NS, b),
                    {"metadata": {"name": EXTERNAL_USER_SA}},
                ),
            ):
                try:
                    create(body)
                except client.exceptions.ApiException as exc:
                    if exc.status != 409:
                        raise
        token = handle.service_account_token(EXTERNAL_USER_NS, EXTERNAL_USER_SA, 24 * 3600)
        handle.write_token_kubeconfig(handle.user_kubeconfig, token, user=EXTERNAL_USER_SA)
        return handle

    # --- paths and environment ---------------------------------------------------------------

    @property
    def kubectl_path(self) -> Path:
        return _tool(self.bin_dir, "kubectl")

    @property
    def helm_path(self) -> Path:
        return _tool(self.bin_dir, "helm")

    def env(self, *, user: bool = False) -> dict[str, str]:
        """``os.environ`` plus KUBECONFIG (admin, or the non-admin user) and PATH with our bin dir,
        for subprocesses (the operator, helm, kubectl)."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.user_kubeconfig if user else self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    # --- kubectl / helm ----------------------------------------------------------------------

    def kubectl(
        self,
        *args: str,
        user: bool = False,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl as the admin (or, with ``user=True``, as the non-admin user).

        With ``check=True`` a non-zero exit raises, and the message carries kubectl's stderr."""
        kubeconfig = self.user_kubeconfig if user else self.kubeconfig
        proc = subprocess.run(
            [str(self.kubectl_path), f"--kubeconfig={kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {shlex.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}"[
                    :4000
                ]
            )
        return proc

    def helm(
        self, *args: str, check: bool = True, timeout: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        """Run helm as the admin."""
        proc = subprocess.run(
            [str(self.helm_path), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"helm {shlex.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}"[
                    :4000
                ]
            )
        return proc

    # --- API clients ---------------------------------------------------------------------------

    def api_client(self, *, user: bool = False) -> client.ApiClient:
        """A fresh ``kubernetes.client.ApiClient`` from the admin (or non-admin) kubeconfig.

        The caller closes it (``with cluster.api_client() as api: ...``)."""
        path = self.user_kubeconfig if user else self.kubeconfig
        return config.new_client_from_config(config_file=str(path))

    def token_api_client(self, token: str) -> client.ApiClient:
        """An ApiClient that authenticates with a bearer token (e.g. a ServiceAccount's)."""
        cfg = client.Configuration()
        cfg.host = self.server
        cfg.ssl_ca_cert = str(self.ca_cert)
        cfg.api_key = {"authorization": token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(cfg)

    def service_account_token(self, namespace: str, name: str, expiration_s: int = 3600) -> str:
        """A real ServiceAccount token from the TokenRequest API (signed by the API server)."""
        with self.api_client() as api:
            request = client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_s)
            )
            response = client.CoreV1Api(api).create_namespaced_service_account_token(
                name, namespace, request
            )
        return str(response.status.token)

    def write_token_kubeconfig(self, path: Path, token: str, user: str = "token-user") -> Path:
        """Write a kubeconfig that logs in with ``token`` (e.g. to run the operator as its
        ServiceAccount, as in its Pod)."""
        ca = base64.b64encode(self.ca_cert.read_bytes()).decode()
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "mlops-local",
                    "cluster": {"server": self.server, "certificate-authority-data": ca},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": "mlops-local", "user": user}}],
            "current-context": user,
        }
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)
        return path

    # --- namespaces ------------------------------------------------------------------------------

    def create_namespace(
        self, name: str, labels: Mapping[str, str] | None = None, timeout: float = 60.0
    ) -> str:
        """Create a namespace and wait until its ``default`` ServiceAccount exists (made by the
        controller manager a moment later; until then the ServiceAccount admission plugin rejects
        pods that use it)."""
        with self.api_client() as api:
            core = client.CoreV1Api(api)
            core.create_namespace(
                client.V1Namespace(
                    metadata=client.V1ObjectMeta(name=name, labels=dict(labels or {}))
                )
            )

            def default_sa() -> bool:
                names = {
                    sa.metadata.name for sa in core.list_namespaced_service_account(name).items
                }
                return "default" in names

            wait_for(f"ServiceAccount {name}/default", default_sa, timeout=timeout)
        return name

    def logs(self, component: str, tail: int = 100) -> str:
        """The end of a component's log (etcd, kube-apiserver, kube-controller-manager,
        kube-scheduler, kwok, workflow-controller), for assertion messages."""
        if not self.local:
            return f"(external cluster: read {component}'s logs there)"
        path = self.state_dir / "logs" / f"{component}.log"
        if not path.exists():
            return f"(no log at {path})"
        return "\n".join(path.read_text(errors="replace").splitlines()[-tail:])


def _tool(bin_dir: Path, name: str) -> Path:
    """``bin_dir/name``, else ``name`` from PATH (an external cluster's kubectl and helm)."""
    path = bin_dir / name
    if path.exists():
        return path
    found = shutil.which(name)
    return Path(found) if found else path


def _server_and_ca(kubeconfig: Path) -> tuple[str, bytes]:
    """The current context's API server URL and CA certificate (PEM) from a kubeconfig."""
    doc = yaml.safe_load(kubeconfig.read_text())
    contexts = {c["name"]: c["context"] for c in doc.get("contexts") or []}
    current = doc.get("current-context") or next(iter(contexts), None)
    cluster_name = contexts[current]["cluster"] if current in contexts else None
    clusters = {c["name"]: c["cluster"] for c in doc.get("clusters") or []}
    cluster = clusters.get(cluster_name) if cluster_name else next(iter(clusters.values()))
    if cluster is None:
        raise RuntimeError(f"{kubeconfig}: no cluster for the current context")
    if cluster.get("certificate-authority-data"):
        ca = base64.b64decode(cluster["certificate-authority-data"])
    elif cluster.get("certificate-authority"):
        ca = (kubeconfig.parent / cluster["certificate-authority"]).read_bytes()
    else:
        raise RuntimeError(f"{kubeconfig}: the cluster has no CA certificate")
    return str(cluster["server"]), ca


def build(log: Callable[[str], None]) -> None:
    """Build (or find in the cache) every binary: ``hack/cluster/build.sh``. Raises on failure
    with the end of its output."""
    with (
        tempfile.TemporaryFile("w+") as out,
        subprocess.Popen(
            [str(HACK / "build.sh")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        ) as proc,
    ):
        assert proc.stderr is not None
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        for line in proc.stderr:  # progress lines, every 30 s at most while compiling
            out.write(line)
            log(line.rstrip("\n"))
            if time.monotonic() > deadline:
                proc.kill()
                break
        rc = proc.wait(timeout=60)
        if rc != 0:
            out.seek(0)
            tail = "".join(out.readlines()[-40:])
            raise RuntimeError(f"hack/cluster/build.sh failed (exit {rc}):\n{tail}")


def up() -> None:
    """Start the cluster (``hack/cluster/up.sh``; idempotent). Raises with its output on failure."""
    proc = run_script("up.sh", UP_TIMEOUT_S, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"hack/cluster/up.sh failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}"
        )


def down() -> None:
    """Stop the cluster (``hack/cluster/down.sh``). Raises with its output on failure."""
    proc = run_script("down.sh", DOWN_TIMEOUT_S, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"hack/cluster/down.sh failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
