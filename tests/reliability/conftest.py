"""The reliability suite's summary: each fault class, tried, survived, lost, printed at the end.

A test records what it did with the ``faults`` fixture::

    faults.record("trainer kills (SIGTERM/SIGKILL)", tried=20, survived=20, lost="max 3 steps")

and the table appears in the terminal summary of every run that selected such a test (also
written to ``$MLOPS_RELIABILITY_REPORT`` when set, as Markdown).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_KEY = pytest.StashKey["FaultTable"]()


@dataclass
class FaultTable:
    rows: list[tuple[str, int, int, str]] = field(default_factory=list)

    def record(self, fault: str, *, tried: int, survived: int, lost: str = "0") -> None:
        self.rows.append((fault, tried, survived, lost))

    def markdown(self) -> str:
        lines = ["| fault class | tried | survived | lost |", "|---|---:|---:|---|"]
        lines += [f"| {f} | {t} | {s} | {lost} |" for f, t, s, lost in self.rows]
        return "\n".join(lines)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_KEY] = FaultTable()


@pytest.fixture
def faults(request: pytest.FixtureRequest) -> FaultTable:
    return request.config.stash[_KEY]


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    table = config.stash.get(_KEY, None)
    if table is None or not table.rows:
        return
    terminalreporter.section("reliability: faults tried and survived")
    terminalreporter.write_line(table.markdown())
    report = os.environ.get("MLOPS_RELIABILITY_REPORT")
    if report:
        Path(report).write_text(table.markdown() + "\n")
