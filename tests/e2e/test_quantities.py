"""The quantity grammar of the api (mlops_trainers.quantity) agrees with a real API server: each
value of the unit tests' table is accepted by both, with the same amount, or refused by both;
the few it refuses though the server takes them (STRICTER) are what the table says they are.
A server-side dry run of a ResourceQuota: nothing is created."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator
from decimal import ROUND_UP
from pathlib import Path

import pytest
from cluster import Cluster
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from mlops_trainers.quantity import parse_quantity

# The unit tests' table (tests/trainers/test_quantity.py), not a copy of it.
_spec = importlib.util.spec_from_file_location(
    "quantity_table", Path(__file__).parents[1] / "trainers" / "test_quantity.py"
)
assert _spec is not None and _spec.loader is not None
_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_table)
VALID, INVALID, STRICTER = _table.VALID, _table.INVALID, _table.STRICTER

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def quota(cluster: Cluster) -> Iterator[tuple[client.CoreV1Api, str]]:
    name = cluster.create_namespace(f"e2e-quantity-{uuid.uuid4().hex[:6]}")
    with cluster.api_client() as api:
        yield client.CoreV1Api(api), name
        client.CoreV1Api(api).delete_namespace(name)


def _server(core: client.CoreV1Api, namespace: str, text: str) -> str | None:
    """The API server's canonical form of ``text`` (ResourceQuota.spec.hard), None if refused."""
    body = {"metadata": {"name": "q"}, "spec": {"hard": {"cpu": text}}}
    try:
        made = core.create_namespaced_resource_quota(namespace, body, dry_run="All")
    except ApiException as exc:
        assert exc.status in (400, 422), exc
        return None
    return str(made.spec.hard["cpu"])


@pytest.mark.parametrize("text", [*sorted(VALID), *INVALID, *STRICTER])
def test_the_api_server_agrees(quota: tuple[client.CoreV1Api, str], text: str) -> None:
    core, namespace = quota
    server = _server(core, namespace, text)
    try:
        ours = parse_quantity(text)
    except ValueError:
        if text in STRICTER:
            assert server is not None, f"{text!r}: the API server refuses it too: not STRICTER"
            return
        assert server is None, f"{text!r}: refused here, the API server took it as {server}"
        return
    assert server is not None, f"{text!r}: taken here as {ours}, refused by the API server"
    # The API server rounds every resource list up to thousandths (SetDefaults_ResourceList:
    # "3n" is kept as "1m"); the amount is otherwise the same.
    assert parse_quantity(server) == (ours * 1000).to_integral_value(ROUND_UP) / 1000
