"""Where the API server is and who the operator is to it: in-cluster (the pod's ServiceAccount),
else the kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``, its current context).

One loader for both of the operator's clients: kopf's (its login handler turns these into a
``kopf.ConnectionInfo``) and the handlers' own calls (:mod:`mlops_operator.kube`). The operator
image installs no Kubernetes client library: the ``kubernetes`` package and what it pulls in
(google-auth, requests, oauthlib) were 128 MB of its 187 MB venv, and kopf imports the package
whenever it is installed, which cost the operator about 17 MiB of RSS for nothing.

Supported: a token, a token file (in-cluster: re-read, since the kubelet rotates bound tokens),
client certificates (files or inline data), the cluster CA (file or data), insecure-skip-tls-
verify, and ``exec`` credential plugins (e.g. GKE's ``gke-gcloud-auth-plugin``; their token is
kept until its expiry). Not supported: the legacy ``auth-provider`` plugins beyond a cached
``access-token`` (kubectl itself dropped them in 1.26).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# A token file is re-read at most this often (the kubelet refreshes it well before it expires).
TOKEN_FILE_TTL_S = 60.0
# An exec plugin's token is renewed this long before the expiry it reported.
EXEC_MARGIN = timedelta(minutes=1)


class CredentialsError(Exception):
    """No usable credentials, said so with where they were looked for."""


@dataclass
class Credentials:
    """The API server's address and how to authenticate; :meth:`token` is always current."""

    server: str
    ca_path: str | None = None
    ca_data: str | None = None  # base64 PEM, as kubeconfig holds it
    insecure: bool = False
    cert_path: str | None = None
    cert_data: str | None = None  # base64 PEM
    key_path: str | None = None
    key_data: str | None = None  # base64 PEM
    default_namespace: str | None = None
    static_token: str | None = None
    token_path: str | None = None
    exec_config: dict[str, Any] | None = None
    _token: str | None = field(default=None, repr=False)
    _token_until: float = field(default=0.0, repr=False)
    _expiration: datetime | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def token(self) -> str | None:
        """The bearer token to send now (None: client certificates only)."""
        if self.static_token:
            return self.static_token
        if not self.token_path and not self.exec_config:
            return None
        with self._lock:
            if self._token is None or time.monotonic() >= self._token_until:
                self._refresh()
            return self._token

    def expiration(self) -> datetime | None:
        """When the current token stops working, if known (kopf logs in again by then)."""
        self.token()
        return self._expiration

    def invalidate(self) -> None:
        """Forget the token (the server answered 401): the next call fetches a new one."""
        with self._lock:
            self._token, self._token_until = None, 0.0

    def _refresh(self) -> None:
        if self.token_path:
            try:
                self._token = Path(self.token_path).read_text().strip() or None
            except OSError as exc:
                raise CredentialsError(f"token file {self.token_path}: {exc}") from None
            self._token_until = time.monotonic() + TOKEN_FILE_TTL_S
            return
        assert self.exec_config is not None
        status = _run_exec(self.exec_config)
        self._token = status.get("token")
        expires = status.get("expirationTimestamp")
        if expires:
            until = datetime.fromisoformat(str(expires).replace("Z", "+00:00"))
            self._expiration = until
            left = (until - EXEC_MARGIN - datetime.now(UTC)).total_seconds()
            self._token_until = time.monotonic() + max(left, 0.0)
        else:
            self._expiration, self._token_until = None, float("inf")

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context of every connection: the cluster's CA, the client certificate."""
        context = ssl.create_default_context(
            cafile=self.ca_path,
            cadata=base64.b64decode(self.ca_data).decode() if self.ca_data else None,
        )
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_path or self.cert_data:
            with contextlib.ExitStack() as stack:
                # Python's ssl loads a certificate only from a file: inline data lives in one
                # only this user may read, for as long as loading takes.
                cert = self.cert_path or _held(stack, self.cert_data)
                key = self.key_path or (_held(stack, self.key_data) if self.key_data else None)
                context.load_cert_chain(cert, key)
        return context


def load() -> Credentials:
    """In-cluster credentials when running in a pod, else the kubeconfig's current context."""
    host, port = (
        os.environ.get("KUBERNETES_SERVICE_HOST"),
        os.environ.get("KUBERNETES_SERVICE_PORT"),
    )
    token = SERVICE_ACCOUNT / "token"
    if host and port and token.exists():
        return in_cluster(host, port, SERVICE_ACCOUNT)
    return from_kubeconfig()


def in_cluster(host: str, port: str, account: Path) -> Credentials:
    if ":" in host:  # IPv6
        host = f"[{host}]"
    namespace = account / "namespace"
    ca = account / "ca.crt"
    return Credentials(
        server=f"https://{host}:{port}",
        ca_path=str(ca) if ca.exists() else None,
        token_path=str(account / "token"),
        default_namespace=namespace.read_text().strip() if namespace.exists() else None,
    )


def from_kubeconfig(paths: str | None = None) -> Credentials:
    """The current context of the kubeconfig files (``$KUBECONFIG``'s list: the first file to
    name a context, cluster or user wins, as kubectl merges them)."""
    listed = paths if paths is not None else os.environ.get("KUBECONFIG", "")
    files = [Path(p).expanduser() for p in listed.split(os.pathsep) if p]
    if not files:
        files = [Path("~/.kube/config").expanduser()]
    current: str | None = None
    named: dict[str, dict[str, Any]] = {"contexts": {}, "clusters": {}, "users": {}}
    bases: dict[tuple[str, str], Path] = {}
    for path in files:
        if not path.exists():
            continue
        config = yaml.safe_load(path.read_text()) or {}
        current = current or config.get("current-context")
        for section, key in (("contexts", "context"), ("clusters", "cluster"), ("users", "user")):
            for item in config.get(section) or []:
                if item.get("name") not in named[section]:
                    named[section][item["name"]] = item.get(key) or {}
                    bases[(section, item["name"])] = path.parent
    where = os.pathsep.join(str(f) for f in files)
    if not current or current not in named["contexts"]:
        raise CredentialsError(
            f"not in a pod (no KUBERNETES_SERVICE_HOST and service account token), and no "
            f"current context in the kubeconfig ({where})"
        )
    context = named["contexts"][current]
    cluster = named["clusters"].get(context.get("cluster", ""))
    if not cluster or not cluster.get("server"):
        raise CredentialsError(f"context {current}: its cluster has no server ({where})")
    user = named["users"].get(context.get("user", ""), {})
    cluster_base = bases[("clusters", context["cluster"])]
    user_base = bases.get(("users", context.get("user", "")), cluster_base)

    def file_of(entry: dict[str, Any], key: str, base: Path) -> str | None:
        # kubeconfig resolves relative paths against the file that names them.
        value = entry.get(key)
        return str((base / value).resolve()) if value else None

    provider = (user.get("auth-provider") or {}).get("config") or {}
    return Credentials(
        server=str(cluster["server"]).rstrip("/"),
        ca_path=file_of(cluster, "certificate-authority", cluster_base),
        ca_data=cluster.get("certificate-authority-data"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        cert_path=file_of(user, "client-certificate", user_base),
        cert_data=user.get("client-certificate-data"),
        key_path=file_of(user, "client-key", user_base),
        key_data=user.get("client-key-data"),
        default_namespace=context.get("namespace"),
        static_token=user.get("token") or provider.get("access-token"),
        token_path=file_of(user, "tokenFile", user_base),
        exec_config=user.get("exec"),
    )


def _held(stack: contextlib.ExitStack, data: str | None) -> str:
    """Base64 PEM ``data`` in a temporary file (mode 0600), removed when ``stack`` closes."""
    assert data is not None
    held = stack.enter_context(tempfile.NamedTemporaryFile(suffix=".pem"))  # noqa: SIM115
    held.write(base64.b64decode(data))
    held.flush()
    return held.name


def _run_exec(spec: dict[str, Any]) -> dict[str, Any]:
    """Run an exec credential plugin; its ExecCredential's status (token, expiry)."""
    command = [str(spec["command"]), *[str(a) for a in spec.get("args") or []]]
    env = {**os.environ, **{e["name"]: str(e["value"]) for e in spec.get("env") or []}}
    api_version = spec.get("apiVersion", "client.authentication.k8s.io/v1")
    env["KUBERNETES_EXEC_INFO"] = json.dumps(
        {"apiVersion": api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
    )
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CredentialsError(f"exec credential plugin {command[0]}: {exc}") from None
    if done.returncode != 0:
        raise CredentialsError(
            f"exec credential plugin {command[0]} exited {done.returncode}: "
            f"{done.stderr.strip()[:500]}"
        )
    try:
        status = json.loads(done.stdout)["status"]
    except (ValueError, KeyError, TypeError):
        raise CredentialsError(
            f"exec credential plugin {command[0]} wrote no ExecCredential status"
        ) from None
    if not status.get("token"):
        raise CredentialsError(
            f"exec credential plugin {command[0]} gave no token (client certificates from a "
            "plugin are not supported)"
        )
    return dict(status)
