"""Prometheus metrics: reconciles, errors, API errors, and runs by phase."""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, start_http_server

RECONCILES = Counter(
    "mlops_reconciles_total", "Reconciles of MLOps objects, by outcome.", ["outcome"]
)
ERRORS = Counter(
    "mlops_reconcile_errors_total",
    "Reconciles that failed (and were retried, or reported in status), by handler and reason.",
    ["handler", "reason"],
)
API_ERRORS = Counter(
    "mlops_api_errors_total",
    "Failed Kubernetes API calls, by HTTP code (or 'network', 'credentials').",
    ["code"],
)
RUNS = Gauge("mlops_runs", "MLOps objects by phase, as this operator last wrote them.", ["phase"])
STATUS_UPDATES = Counter("mlops_status_updates_total", "Status writes.")

_phases: dict[str, str] = {}
_lock = threading.Lock()


def observe_phase(key: str, phase: str | None) -> None:
    """Remember ``key``'s phase (None when deleted) and refresh the per-phase gauge."""
    with _lock:
        if phase is None:
            _phases.pop(key, None)
        else:
            _phases[key] = phase
        counts: dict[str, int] = {}
        for value in _phases.values():
            counts[value] = counts.get(value, 0) + 1
        for name in ("Pending", "Queued", "Running", "Succeeded", "Failed", "Stopped"):
            RUNS.labels(phase=name).set(counts.get(name, 0))


def serve(port: int) -> None:
    if port > 0:
        start_http_server(port)
