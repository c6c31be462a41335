"""The operator's own API client (mlops_operator.kube over urllib3, credentials from
mlops_operator.credentials), against a real HTTP server on loopback; the e2e suites run it against
the real API server (client certificates, ServiceAccount tokens) and, on the real node, in a pod
(in-cluster credentials)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml
from mlops_api.naming import LABEL_OWNER_UID, LABEL_RUN_ID
from mlops_operator import credentials, handlers, kube

ROOT = Path(__file__).resolve().parents[2]


class _Recorder(BaseHTTPRequestHandler):
    """Answers from ``server.answers`` (path -> list of (status, body)), records each request."""

    def _answer(self) -> None:
        server: Any = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        server.seen.append(
            {
                "method": self.command,
                "path": self.path,
                "auth": self.headers.get("Authorization"),
                "type": self.headers.get("Content-Type"),
                "body": json.loads(body) if body else None,
            }
        )
        queue = server.answers.get(self.path.split("?")[0]) or [(404, {"reason": "NotFound"})]
        status, payload = queue.pop(0) if len(queue) > 1 else queue[0]
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    # http.server dispatches on these names.
    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer  # noqa: N815

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Any]:
    httpd: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    httpd.seen, httpd.answers = [], {}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _use(server: Any, **creds: Any) -> credentials.Credentials:
    made = credentials.Credentials(server=f"http://127.0.0.1:{server.server_port}", **creds)
    kube.load_config(5.0, made)
    return made


def test_requests_carry_the_token_and_the_right_paths(server: Any, tmp_path: Path) -> None:
    _use(server, static_token="abc")
    server.answers["/api/v1/namespaces/ns/pods"] = [
        (200, {"items": [
            {"metadata": {"name": "p1"}, "status": {"phase": "Running"}},
            {"metadata": {"name": "p0"}, "status": {"phase": "Succeeded"}},
        ]})
    ]  # fmt: skip
    assert kube.live_pods("ns", "uid-1", run="r-1") == ["p1"]
    server.answers["/apis/argoproj.io/v1alpha1/namespaces/ns/workflows/wf"] = [(200, {})]
    kube.stop_workflow("ns", "wf", ended=2)
    listed, patched = server.seen
    assert listed["auth"] == "Bearer abc"
    selector = f"{LABEL_OWNER_UID}=uid-1,{LABEL_RUN_ID}=r-1"
    assert listed["path"] == "/api/v1/namespaces/ns/pods?" + urlencode({"labelSelector": selector})
    assert patched["method"] == "PATCH"
    assert patched["type"] == "application/merge-patch+json"
    assert patched["body"]["spec"] == {"shutdown": "Stop"}


def test_errors_carry_the_servers_reason_and_are_classified(server: Any) -> None:
    _use(server, static_token="abc")
    path = "/api/v1/namespaces/ns/configmaps"
    server.answers[path] = [
        (403, {"kind": "Status", "reason": "Forbidden", "message": "exceeded quota: q"})
    ]
    with pytest.raises(kube.ApiError) as info:
        kube.create_child(
            {"kind": "ConfigMap", "metadata": {"namespace": "ns", "name": "c"}}, "uid-1"
        )
    assert (info.value.status, info.value.reason) == (403, "Forbidden")
    assert "exceeded quota: q" in str(info.value) and info.value.transient
    server.answers[path] = [(422, {"reason": "Invalid", "message": "denied by policy"})]
    with pytest.raises(kube.ApiError) as info:
        kube.create_child(
            {"kind": "ConfigMap", "metadata": {"namespace": "ns", "name": "c"}}, "uid-1"
        )
    assert not info.value.transient
    # 404 on a read is "absent", not an error.
    assert kube.get_child("Workflow", "ns", "gone") is None


def test_a_conflict_is_ours_only_when_we_own_the_object(server: Any) -> None:
    _use(server, static_token="abc")
    obj = {"kind": "Workflow", "metadata": {"namespace": "ns", "name": "wf"}}
    server.answers["/apis/argoproj.io/v1alpha1/namespaces/ns/workflows"] = [
        (409, {"reason": "AlreadyExists"})
    ]
    owned = {"metadata": {"ownerReferences": [{"uid": "uid-1", "kind": "MLOps", "name": "m"}]}}
    server.answers["/apis/argoproj.io/v1alpha1/namespaces/ns/workflows/wf"] = [(200, owned)]
    assert kube.create_child(obj, "uid-1") == "exists"
    with pytest.raises(kube.ChildConflictError, match="MLOps m"):
        kube.create_child(obj, "uid-2")


def test_a_network_failure_is_a_transient_error(server: Any) -> None:
    _use(server, static_token="abc")
    server.shutdown()
    server.server_close()
    with pytest.raises(kube.ApiError) as info:
        kube.ping()
    assert info.value.status is None and info.value.transient
    assert kube.HEALTH.last_error.startswith("GET /version: ")


def test_a_401_reads_a_rotated_token_file_and_retries_once(server: Any, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("old\n")
    _use(server, token_path=str(token))
    server.answers["/version"] = [(200, {"major": "1"})]
    kube.ping()
    token.write_text("new\n")  # the kubelet rotated it; the cached one is refused now
    server.answers["/version"] = [(401, {"reason": "Unauthorized"}), (200, {"major": "1"})]
    kube.ping()
    assert [s["auth"] for s in server.seen] == ["Bearer old", "Bearer old", "Bearer new"]


def _kubeconfig(tmp_path: Path, user: dict[str, Any], cluster: dict[str, Any]) -> Path:
    path = tmp_path / "config"
    path.write_text(
        yaml.safe_dump(
            {
                "current-context": "c",
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u",
                                                       "namespace": "team"}}],
                "clusters": [{"name": "k", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
            }
        )
    )  # fmt: skip
    return path


def test_kubeconfig_paths_are_relative_to_their_file(tmp_path: Path) -> None:
    path = _kubeconfig(
        tmp_path,
        {"client-certificate": "pki/admin.crt", "client-key": "pki/admin.key"},
        {"server": "https://10.0.0.1:6443/", "certificate-authority": "pki/ca.crt"},
    )
    creds = credentials.from_kubeconfig(str(path))
    assert creds.server == "https://10.0.0.1:6443"
    assert creds.ca_path == str(tmp_path / "pki" / "ca.crt")
    assert creds.cert_path == str(tmp_path / "pki" / "admin.crt")
    assert creds.default_namespace == "team" and creds.token() is None


def test_the_first_kubeconfig_to_name_an_entry_wins(tmp_path: Path) -> None:
    first = _kubeconfig(tmp_path, {"token": "mine"}, {"server": "https://a:1"})
    other = tmp_path / "other"
    other.mkdir()
    second = _kubeconfig(other, {"token": "theirs"}, {"server": "https://b:2"})
    creds = credentials.from_kubeconfig(f"{first}:{second}")
    assert (creds.server, creds.token()) == ("https://a:1", "mine")


def test_no_context_says_where_it_looked(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("{}")
    with pytest.raises(credentials.CredentialsError, match=str(empty)):
        credentials.from_kubeconfig(str(empty))


def test_an_exec_plugin_token_is_renewed_when_it_expires(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    plugin = tmp_path / "plugin.py"
    # A real plugin process: counts its runs; its first token expires at once (within the
    # renewal margin), the second an hour later.
    plugin.write_text(
        "import datetime, json, os, pathlib, sys\n"
        f"calls = pathlib.Path({str(calls)!r})\n"
        "n = len(calls.read_text()) if calls.exists() else 0\n"
        "calls.write_text('x' * (n + 1))\n"
        "assert json.loads(os.environ['KUBERNETES_EXEC_INFO'])['kind'] == 'ExecCredential'\n"
        "until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=n)\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1',\n"
        "  'kind': 'ExecCredential', 'status': {'token': f'{os.environ[\"WHO\"]}-{n}',\n"
        "  'expirationTimestamp': until.isoformat().replace('+00:00', 'Z')}}))\n"
    )
    path = _kubeconfig(
        tmp_path,
        {"exec": {"command": sys.executable, "args": [str(plugin)],
                  "env": [{"name": "WHO", "value": "gke"}],
                  "apiVersion": "client.authentication.k8s.io/v1"}},
        {"server": "https://a:1"},
    )  # fmt: skip
    creds = credentials.from_kubeconfig(str(path))
    assert creds.token() == "gke-0"
    assert creds.token() == "gke-1"  # the first had expired: the plugin ran again
    assert creds.token() == "gke-1"  # kept until its expiry
    expiry = creds.expiration()
    assert expiry is not None and expiry > datetime.now(UTC) + timedelta(minutes=50)
    info = handlers.connection_info(creds)
    assert info.token == "gke-2" and info.expiration is not None  # kopf's login fetches anew


def test_a_failing_exec_plugin_says_why(tmp_path: Path) -> None:
    path = _kubeconfig(
        tmp_path,
        {"exec": {"command": sys.executable, "args": ["-c", "import sys; sys.exit('no login')"]}},
        {"server": "https://a:1"},
    )
    with pytest.raises(credentials.CredentialsError, match="exited 1: no login"):
        credentials.from_kubeconfig(str(path)).token()


def test_in_cluster_credentials_read_the_service_account(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa-token\n")
    (tmp_path / "namespace").write_text("mlops-system")
    creds = credentials.in_cluster("fd00::1", "443", tmp_path)
    assert creds.server == "https://[fd00::1]:443"
    assert (creds.token(), creds.default_namespace) == ("sa-token", "mlops-system")
    assert creds.ca_path is None  # no ca.crt in this folder


def test_inline_certificates_load_into_the_tls_context(tmp_path: Path) -> None:
    """A self-signed certificate and key made by openssl, inline as kubeconfig holds them."""
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=mlops-test"],
        check=True, capture_output=True,
    )  # fmt: skip
    b64 = {p: base64.b64encode(p.read_bytes()).decode() for p in (key, cert)}
    creds = credentials.Credentials(
        server="https://a:1", ca_data=b64[cert], cert_data=b64[cert], key_data=b64[key]
    )
    context = creds.ssl_context()
    assert context.get_ca_certs()[0]["subject"] == ((("commonName", "mlops-test"),),)


def test_the_operator_runs_without_the_kubernetes_client() -> None:
    """The operator image installs none: neither the project's dependencies nor the operator
    extra ask for it, and the operator's modules import with it unimportable."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    needed = project["dependencies"] + extras["operator"] + extras["render"]
    assert not [r for r in needed if r.startswith("kubernetes")]
    code = (
        "import sys; sys.modules['kubernetes'] = None\n"
        "import mlops_operator.handlers, mlops_operator.kube, mlops_cli.main\n"
        "assert 'kubernetes' not in {m.split('.')[0] for m in sys.modules if sys.modules[m]}\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_credentials_that_fail_during_a_run_are_a_transient_error(
    server: Any, tmp_path: Path
) -> None:
    # An exec plugin that stops working (a gcloud login expired) and a token file that is gone
    # (between the kubelet's swaps): both are waited out like an unreachable server (the
    # handlers retry ApiErrors with backoff), never a raw exception out of a handler.
    failing = {"command": sys.executable, "args": ["-c", "import sys; sys.exit('no login')"]}
    _use(server, exec_config=failing)
    with pytest.raises(kube.ApiError) as info:
        kube.ping()
    assert info.value.status is None and info.value.transient
    assert info.value.reason == "CredentialsError"
    assert "exited 1: no login" in info.value.message
    assert kube.HEALTH.last_error.startswith("GET /version: exec credential plugin")
    _use(server, token_path=str(tmp_path / "gone"))
    with pytest.raises(kube.ApiError) as info:
        kube.ping()
    assert info.value.transient and info.value.reason == "CredentialsError"
    assert str(tmp_path / "gone") in info.value.message
    assert server.seen == []  # nothing was sent without its credentials
