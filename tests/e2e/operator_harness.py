"""Shared by the operator e2e tests: the operator as a subprocess, and one test namespace.

The operator runs as ``python -m kopf run --module=mlops_operator ...``, exactly the command of
its image, so a test can SIGKILL and restart it like a real one, and can run it with any
kubeconfig (the admin's, or a ServiceAccount token's to prove the chart's RBAC is enough).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mlops-operator"
CRD = CHART / "crds" / "mlops.dev_mlops.yaml"
GROUP, VERSION, PLURAL = "mlops.dev", "v1alpha1", "mlops"
ARGO = ("argoproj.io", "v1alpha1")
T = TypeVar("T")

# Settings every e2e operator gets: kwok's fake pods have no Argo executor to report outputs
# with (so no summary output parameter). Every delay and timeout stays at its production
# default: a shortened one would hide timing bugs.
E2E_OPERATOR_ENV = {
    "MLOPS_REPORT_SUMMARY": "false",
    "MLOPS_DEFAULT_IMAGE": "docker.io/local/mlops-trainer:e2e",
}
# ``python -c WITHOUT_CLIENT kopf run ...`` is ``python -m kopf run ...`` with the ``kubernetes``
# package unimportable (None in sys.modules makes every import of it raise ImportError).
WITHOUT_CLIENT = (
    "import runpy, sys; sys.modules['kubernetes'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_module('kopf', run_name='__main__', alter_sys=True)"
)
# The e2e suite against another version of the operator (a checkout of an older commit, to show
# that a new test fails there): its source tree's packages come first on the operator's path.
OPERATOR_SRC_ENV = "MLOPS_E2E_OPERATOR_SRC"
PACKAGE_DIRS = ("api", "trainers", "workflows", "operator", "cli")


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 90.0, every: float = 0.5
) -> T:
    """Poll ``probe`` until it returns something truthy, or fail naming ``what``.

    API errors that a moment can cure (404, 409, 5xx) count as "not yet"; others raise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except ApiException as exc:
            last = exc
            if exc.status not in (404, 409, 500, 503):
                raise
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}"[:2000])


# Below Linux's ephemeral range (32768-60999), where any outgoing connection may take a port
# between the moment it was found free and the moment the operator binds it, and apart from the
# clusters' ports (2xxxx).
_PORTS = range(10000, 20000)


def free_port(*, besides: Sequence[int] = ()) -> int:
    """A port free on 127.0.0.1 now and not one of ``besides``; ``Operator.start`` picks again
    if it is taken by then."""
    for port in random.sample(_PORTS, 50):
        if port in besides:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_PORTS}")


def _two_ports() -> tuple[int, int]:
    """The operator's liveness and metrics ports: two different ones. (Two calls of a "bind to
    port 0" once gave the same port twice: the metrics server took it, kopf's liveness server
    failed to bind it and the operator stopped, while the harness's liveness probe got the
    metrics server's 200.)"""
    health = free_port()
    return health, free_port(besides=[health])


class Operator:
    """The operator as a subprocess; started and stopped by its own PID, never by name.

    ``args`` follow ``kopf run --module=mlops_operator`` (e.g. ``--standalone``,
    ``--namespace=NS`` or ``--all-namespaces``); the liveness endpoint is added on a free port.
    ``env`` is added to the e2e defaults; the metrics port is always a free one."""

    def __init__(
        self,
        kubeconfig: str | Path,
        log: Path,
        *,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.kubeconfig, self.log = str(kubeconfig), log
        self.args = list(args)
        self.env = {**E2E_OPERATOR_ENV, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.health_port, self.metrics_port = _two_ports()

    def start(self) -> None:
        """Start it and wait for its liveness. A port taken between ``free_port`` and the
        operator's bind (another test session's process) is no failure: new ports, again."""
        for attempt in range(3):
            start = self.log.stat().st_size if self.log.exists() else 0
            self._spawn()
            try:
                wait_for("operator liveness", self.healthy, timeout=60)
                return
            except AssertionError:
                exited = self.proc is not None and self.proc.poll() is not None
                text = self.log.read_bytes()[start:].decode(errors="replace").lower()
                if attempt == 2 or not exited or "address already in use" not in text:
                    raise
                self.health_port, self.metrics_port = _two_ports()

    def _spawn(self) -> None:
        env = {
            **os.environ,
            **self.env,
            "KUBECONFIG": self.kubeconfig,
            "MLOPS_METRICS_PORT": str(self.metrics_port),
        }
        src = os.environ.get(OPERATOR_SRC_ENV)
        if src:
            paths = [str(Path(src) / d) for d in PACKAGE_DIRS]
            env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
        # The operator image installs no Kubernetes client (kopf would import it if present):
        # this venv has one for the tests, so the operator runs with it unimportable, as there.
        # An older checkout's operator (OPERATOR_SRC_ENV) may still need it.
        launch = ["-m", "kopf"] if src else ["-c", WITHOUT_CLIENT, "kopf"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    *launch,
                    "run",
                    "--module=mlops_operator",
                    *self.args,
                    f"--liveness=http://127.0.0.1:{self.health_port}/healthz",
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @classmethod
    def from_deployment(
        cls, deployment: Mapping[str, Any], kubeconfig: str | Path, log: Path
    ) -> Operator:
        """The operator exactly as the chart's Deployment runs it (its args and env), as a local
        process: kwok fakes pods, so the Deployment's own pod never really runs here."""
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        args = [
            a
            for a in container.get("args") or []
            if a not in ("run", "--module=mlops_operator") and not a.startswith("--liveness=")
        ]
        env = {e["name"]: str(e.get("value", "")) for e in container.get("env") or []}
        return cls(kubeconfig, log, args=args, env=env)

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"the operator exited ({self.proc.returncode}):\n{self.log_tail()}"
            )
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
            ) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as resp:
            return str(resp.read().decode())

    def log_tail(self, chars: int = 5000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


class Env:
    """One test namespace: MLOps objects and the children the operator made for them."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api, self.ns = api, namespace
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def manifest(self, name: str, **spec: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "trainer": {"kind": "vqvae", "config": {"image_size": 32}},
            "data": "gs://bucket/images",
            "output": "gs://bucket/runs",
            "epochs": 1,
            "resources": {
                "cpu": "1",
                "memory": "1Gi",
                "gpu": {"count": 1, "type": "nvidia-tesla-t4"},
            },
            "queue": "wide",
        }
        base.update(spec)
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "MLOps",
            "metadata": {"name": name},
            "spec": base,
        }

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, manifest
        )
        return obj

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, name
        )
        return obj

    def patch_spec(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, name, {"spec": spec}
        )
        return obj

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def names(self) -> list[str]:
        items = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL)["items"]
        return [str(item["metadata"]["name"]) for item in items]

    def delete_all(self, timeout: float = 120.0) -> None:
        """Delete every MLOps object here and wait until they are gone: call it while the
        operator still runs, or their finalizers keep them (and the namespace) forever."""
        for name in self.names():
            try:
                self.delete(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        wait_for(f"MLOps objects in {self.ns} to be deleted", lambda: not self.names(), timeout)

    def uid(self, name: str) -> str | None:
        try:
            return str(self.get(name)["metadata"]["uid"])
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def workflows(self, name: str | None = None, uid: str | None = None) -> list[dict[str, Any]]:
        """The operator's Workflows here; of one object (``name``, or its ``uid`` once it is
        gone) when given: those whose ownerReference is that object."""
        items: list[dict[str, Any]] = self.custom.list_namespaced_custom_object(
            *ARGO,
            self.ns,
            "workflows",
            label_selector="app.kubernetes.io/managed-by=mlops-operator",
        )["items"]
        owner = uid or (self.uid(name) if name else None)
        if name is None and uid is None:
            return items
        return [
            wf
            for wf in items
            if owner in {r.get("uid") for r in wf["metadata"].get("ownerReferences") or []}
        ]

    def config_maps(
        self, name: str | None = None, uid: str | None = None
    ) -> list[client.V1ConfigMap]:
        items: list[client.V1ConfigMap] = self.core.list_namespaced_config_map(
            self.ns, label_selector="app.kubernetes.io/managed-by=mlops-operator"
        ).items
        owner = uid or (self.uid(name) if name else None)
        if name is None and uid is None:
            return items
        return [cm for cm in items if owner in {r.uid for r in cm.metadata.owner_references or []}]

    def pods(self, name: str) -> list[client.V1Pod]:
        """The trainer pods of the object ``name`` (Argo copies the Workflow's labels)."""
        runs = {wf["metadata"]["name"] for wf in self.workflows(name)}
        items: list[client.V1Pod] = self.core.list_namespaced_pod(
            self.ns, label_selector="app.kubernetes.io/managed-by=mlops-operator"
        ).items
        return [
            p
            for p in items
            if (p.metadata.labels or {}).get("workflows.argoproj.io/workflow") in runs
        ]

    def event_list(self, name: str) -> list[client.CoreV1Event]:
        items: list[client.CoreV1Event] = self.core.list_namespaced_event(
            self.ns, field_selector=f"involvedObject.name={name}"
        ).items
        return items

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.get(name).get("status") or {}
        return status

    def phase_is(self, name: str, *phases: str) -> dict[str, Any] | None:
        status = self.status(name)
        return status if status.get("phase") in phases else None

    def describe(self, name: str) -> str:
        """What the object ``name``, its Workflows and their pods show now, one line each: a
        timed-out wait says which of operator, Argo and the (fake) kubelet stopped moving."""
        lines = []
        try:
            status = self.status(name)
            lines.append(f"MLOps {name}: {status.get('phase')!r} {status.get('message', '')!r}")
            for wf in self.workflows(name):
                st = wf.get("status") or {}
                nodes = ", ".join(
                    f"{n.get('displayName')}={n.get('phase')} {n.get('message', '')!r}"
                    for n in (st.get("nodes") or {}).values()
                )
                lines.append(
                    f"  Workflow {wf['metadata']['name']}: {st.get('phase')!r}"
                    f" {st.get('message', '')!r}; nodes: {nodes}"
                )
            for pod in self.pods(name):
                states = ", ".join(
                    f"{c.name}={next(k for k, v in c.state.to_dict().items() if v)}"
                    for c in (pod.status.container_statuses or [])
                    if c.state
                )
                lines.append(
                    f"  Pod {pod.metadata.name}: {pod.status.phase}"
                    f" deletionTimestamp={pod.metadata.deletion_timestamp}"
                    f" resourceVersion={pod.metadata.resource_version}; {states}"
                )
        except ApiException as exc:
            lines.append(f"({name}: API error {exc.status} while describing it)")
        return "\n".join(lines)

    @contextmanager
    def explained(self, *names: str) -> Iterator[None]:
        """A wait that times out in here says, besides what it waited for, what ``names``
        show (``describe``)."""
        try:
            yield
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n" + "\n".join(self.describe(n) for n in names)) from None

    def events(self, name: str) -> set[str]:
        """Reasons of the Kubernetes Events about the MLOps object ``name``."""
        items = self.core.list_namespaced_event(
            self.ns, field_selector=f"involvedObject.name={name}"
        ).items
        return {e.reason for e in items}


def end_pod(
    env: Env,
    pod: client.V1Pod,
    *,
    exit_code: int,
    message: str | None = None,
    reason: str | None = None,
) -> None:
    """End a running kwok pod the way a kubelet reports it: ``exit_code`` 0 succeeds (every
    container, Argo's ``wait`` included, exits 0); anything else fails the main container with
    that code, with the pod-level ``reason``/``message`` a kubelet sets (e.g. GKE's node shutdown:
    reason Terminated, "Pod was terminated in response to imminent node shutdown.")."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    statuses = []
    for c in pod.status.container_statuses or []:
        code = 0 if exit_code == 0 or c.name == "wait" else exit_code
        statuses.append(
            {
                **env.api.sanitize_for_serialization(c),
                "ready": False,
                "started": False,
                "state": {
                    "terminated": {
                        "exitCode": code,
                        "reason": "Completed" if code == 0 else "Error",
                        "startedAt": c.state.running.started_at.isoformat()
                        if c.state and c.state.running
                        else now,
                        "finishedAt": now,
                    }
                },
            }
        )
    status: dict[str, Any] = {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "containerStatuses": statuses,
    }
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    env.core.patch_namespaced_pod_status(pod.metadata.name, env.ns, {"status": status})
