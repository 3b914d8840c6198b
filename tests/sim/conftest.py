"""Counts what the simulation tier covered: clusters (one per seed and scenario, PBFT's SimCluster
and Raft's RaftSimCluster) and simulated time, printed at the end of the run (the figures quoted
in closing notes come from here)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from consortium.sim.cluster import SimCluster
from consortium.sim.raft_cluster import RaftSimCluster

_clusters: list[SimCluster | RaftSimCluster] = []  # this test's, until it ends
_totals = {"clusters": 0, "simulated_ms": 0, "steps": 0}


@pytest.fixture(autouse=True)
def _count_simulations(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for cls in (SimCluster, RaftSimCluster):
        monkeypatch.setattr(cls, "__init__", _counting(cls.__init__))
    yield
    for cluster in _clusters:
        _totals["clusters"] += 1
        _totals["simulated_ms"] += cluster.now_ms
        _totals["steps"] += cluster.steps
    _clusters.clear()


def _counting(original: Callable[..., None]) -> Callable[..., None]:
    def init(self: SimCluster | RaftSimCluster, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)
        _clusters.append(self)

    return init


def pytest_sessionfinish(session: pytest.Session) -> None:
    # Under pytest-xdist a worker hands its counts to the controller (tests/conftest.py sums).
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["simulation"] = dict(_totals)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _totals["clusters"]:
        terminalreporter.write_line(
            f"simulation: {_totals['clusters']} seeded runs, "
            f"{_totals['simulated_ms'] / 1000:,.0f} s simulated, {_totals['steps']:,} steps"
        )
