"""The figures `bench compare --plot` draws (bench.figure), read from the matplotlib objects,
not from pixels: bars without --sweep, lines against n with it, every axis from zero, integer
member counts on the x axis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pytest
from matplotlib.patches import Rectangle

from consortium.cli.bench import PANELS, BenchConfig, BenchRun, draw, figure, lookup


def run(mode: str, n: int, scale: float = 1.0) -> BenchRun:
    """A run's figures as run_bench records them, with values far from zero (so an axis that
    autoscaled would not start there)."""
    figures: dict[str, Any] = {
        "members": n,
        "tx_per_s": 1000.0 * scale,
        "latency_ms": {"p99": 250.0 + n},
        "per_tx": {
            "messages": 40.0 + n,
            "verifications": 12.0 + n,
            "bytes": 5000.0 + n,
            "cpu_ms_per_member": 1.5 + n / 10,
        },
    }
    return BenchRun(BenchConfig(mode=mode, members=n), figures)  # type: ignore[arg-type]


def test_one_size_per_mode_draws_one_bar_per_mode_per_figure() -> None:
    runs = [run("pbft", 4), run("raft", 3, scale=1.1)]
    fig = figure(runs)
    try:
        axes = fig.axes
        assert len(axes) == len(PANELS)
        for ax, (title, key) in zip(axes, PANELS, strict=True):
            assert ax.get_title() == title
            bars = [p for p in ax.patches if isinstance(p, Rectangle)]
            assert [b.get_height() for b in bars] == [lookup(r.figures, key) for r in runs]
            assert not ax.get_lines(), f"{title}: a one-point line"
            labels = [t.get_text() for t in ax.get_xticklabels()]
            assert labels == ["pbft\nn=4", "raft\nn=3"]
            assert ax.get_ylim()[0] == 0, title
            assert ax.get_ylim()[1] >= max(b.get_height() for b in bars)
            assert bars[0].get_facecolor() != bars[1].get_facecolor()  # modes told apart
    finally:
        plt.close(fig)


def test_a_sweep_draws_lines_against_integer_member_counts_from_zero() -> None:
    runs = [run("pbft", n) for n in (4, 7, 10)] + [run("raft", n) for n in (3, 5, 7)]
    fig = figure(runs)
    try:
        for ax, (title, _) in zip(fig.axes, PANELS, strict=True):
            lines = ax.get_lines()
            assert [list(line.get_xdata()) for line in lines] == [[4, 7, 10], [3, 5, 7]]
            assert [t.get_text() for t in ax.get_legend().get_texts()] == ["pbft", "raft"]
            ticks = list(ax.get_xticks())
            assert ticks == [3, 4, 5, 7, 10], title
            assert all(float(t).is_integer() for t in ticks)
            assert ax.get_ylim()[0] == 0, title
            assert not [p for p in ax.patches if isinstance(p, Rectangle)]
    finally:
        plt.close(fig)


def test_draw_writes_the_file_by_its_suffix(tmp_path: Path) -> None:
    runs = [run("pbft", 4), run("raft", 3)]
    draw(runs, tmp_path / "bench.png")
    draw(runs, tmp_path / "bench.svg")
    assert (tmp_path / "bench.png").read_bytes().startswith(b"\x89PNG")
    assert b"<svg" in (tmp_path / "bench.svg").read_bytes()[:1000]
    assert not plt.get_fignums()  # closed, not left to pile up in a long process


def test_the_cpu_split_and_its_projection_follow_the_formula() -> None:
    """Three parts that add up, per member; the projection is the lowest over members of
    min(C / CPU per tx, 1 / event-loop CPU per tx, verification threads / client-signature
    CPU per tx), with the member and the bound that set it."""
    from consortium.cli.bench import _cpu_split

    def member(cpu: float, loop: float, client: float, protocol: float) -> dict[str, Any]:
        return {
            "cpu_s": cpu,
            "loop_cpu_s": loop,
            "client_verifications": client,
            "protocol_verifications": protocol,
            "verify_threads": 2,
        }

    # 10,000 txs, 20,000 checks/s: 10,000 client checks = 0.05 ms per tx.
    members = {"n1": member(3.0, 1.0, 10_000, 2_000), "n2": member(1.0, 0.5, 0, 0)}
    split = _cpu_split(members, vps=20_000.0, txs=10_000)
    n1 = split["per_member"]["n1"]
    assert n1["cpu_ms_per_tx"] == 0.3 and n1["signature_checks_ms_per_tx"] == 0.06
    assert n1["loop_other_ms_per_tx"] == 0.09  # 0.1 on the loop, 0.01 of it protocol checks
    assert n1["rest_ms_per_tx"] == 0.15  # 0.2 on workers, 0.05 of it client checks
    parts = ("signature_checks_ms_per_tx", "loop_other_ms_per_tx", "rest_ms_per_tx")
    assert sum(n1[k] for k in parts) == pytest.approx(n1["cpu_ms_per_tx"])
    assert split["cpu_ms_per_tx"] == 0.2  # the mean over members
    # n1 binds: 2 cores / 0.3 ms = 6,667 (cores); with 4 and 8, its loop: 1 / 0.1 ms.
    assert split["projection_by_cores"] == {
        "2": {"tx_per_s": 6667, "member": "n1", "bound": "cores"},
        "4": {"tx_per_s": 10000, "member": "n1", "bound": "event loop"},
        "8": {"tx_per_s": 10000, "member": "n1", "bound": "event loop"},
    }
    # Signature threads bind when client checks dominate: 2 threads / 0.5 ms = 4,000.
    members["n1"] = member(8.0, 1.0, 100_000, 0)
    split = _cpu_split(members, vps=20_000.0, txs=10_000)
    assert split["projection_by_cores"]["8"] == {
        "tx_per_s": 4000,
        "member": "n1",
        "bound": "signature threads",
    }
    # A run whose measured rate reads slow: the estimate is capped at the workers' CPU (0.2 ms
    # per tx here), so the rest is 0, never negative, and the parts still add up.
    members["n1"] = member(3.0, 1.0, 10_000, 2_000)
    slow = _cpu_split(members, vps=2_000.0, txs=10_000)["per_member"]["n1"]
    assert slow["client_checks_ms_per_tx"] == pytest.approx(0.2)
    assert slow["rest_ms_per_tx"] == pytest.approx(0.0)
    assert sum(slow[k] for k in parts) == pytest.approx(slow["cpu_ms_per_tx"])
    members["n2"]["loop_cpu_s"] = None
    assert _cpu_split(members, vps=20_000.0, txs=10_000) == {}
