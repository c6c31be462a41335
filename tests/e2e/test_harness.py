"""The e2e harness's own small parts that need no cluster (run by the [local] session)."""

from __future__ import annotations

import random

import operator_harness
import pytest


def test_the_operators_two_ports_differ_even_when_the_same_port_is_offered_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What happened with "bind to port 0" twice in a CI run: the same free port both times.
    offered = [15007, 15008, 15009]
    monkeypatch.setattr(random, "sample", lambda population, k: list(offered) if k else [])
    health, metrics = operator_harness._two_ports()
    assert health != metrics and {health, metrics} <= set(offered)


def test_free_ports_are_below_the_ephemeral_range() -> None:
    ports = [operator_harness.free_port() for _ in range(20)]
    assert all(10000 <= p < 20000 for p in ports)
