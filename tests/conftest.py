"""Run-wide reporting. `make test` runs the unit and simulation tiers on every core with
pytest-xdist, then the end-to-end tier alone (its tests time real processes); each worker's
simulation counts (tests/sim/conftest.py) are summed here for the one summary line."""

from __future__ import annotations

from typing import Any

import pytest

_from_workers = {"clusters": 0, "simulated_ms": 0, "steps": 0}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    counts = getattr(node, "workeroutput", {}).get("simulation")
    if counts:
        for key in _from_workers:
            _from_workers[key] += int(counts.get(key, 0))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _from_workers["clusters"]:
        terminalreporter.write_line(
            f"simulation: {_from_workers['clusters']} seeded runs, "
            f"{_from_workers['simulated_ms'] / 1000:,.0f} s simulated, "
            f"{_from_workers['steps']:,} steps (over all workers)"
        )
