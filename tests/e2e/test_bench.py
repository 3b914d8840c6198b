"""`consortium bench compare`, run briefly: it works end to end on real processes in both modes,
and its figures add up (a benchmark's figures are checked here, never its speed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.procs import cli

pytestmark = pytest.mark.e2e

TXS = 400


def test_bench_compare_runs_both_modes_and_its_figures_add_up(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    plot = tmp_path / "bench.png"
    result = cli(
        "bench", "compare", "--txs", str(TXS), "--clients", "2", "--window", "40",
        "--json", str(out), "--plot", str(plot),
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "all ledgers identical and verified" in result.stdout
    assert "committed tx/s" in result.stdout and "ratio" in result.stdout
    runs = {r["config"]["mode"]: r["figures"] for r in json.loads(out.read_text())}
    assert set(runs) == {"pbft", "raft"}
    for mode, fig in runs.items():
        n = fig["members"]
        assert fig["committed"] == fig["submitted"] == TXS, mode
        assert fig["ledgers_verified"] and fig["ledgers_identical"], fig["ledger_problems"]
        assert 0 < fig["latency_ms"]["p50"] <= fig["latency_ms"]["p95"] <= fig["latency_ms"]["p99"]
        assert fig["tx_per_s"] > 0 and fig["blocks"] > 0
        assert fig["txs_per_block"] == pytest.approx(TXS / fig["blocks"], rel=0.01)
        # Messages counted by the runtime, by kind, add up to its total, and the total matches
        # what the transport wrote and received (a few heartbeats may be in flight).
        assert sum(fig["messages_by_kind"].values()) == fig["messages_counted"], mode
        assert (
            abs(fig["frames_sent"] - fig["messages_counted"]) <= 0.05 * fig["messages_counted"] + 20
        )
        assert abs(fig["frames_received"] - fig["frames_sent"]) <= 0.05 * fig["frames_sent"] + 20
        per_tx = fig["per_tx"]
        assert per_tx["messages"] == pytest.approx(fig["messages_counted"] / TXS, rel=0.01)
        # Every committed batch needs at least what the protocol sends for it.
        kinds = fig["messages_by_kind"]
        if mode == "pbft":
            assert kinds.get("preprepare", 0) >= (n - 1) * fig["blocks"]
            assert kinds.get("commit", 0) >= n * (n - 1) * fig["blocks"]
            # Every replica checks every client signature at least once.
            assert per_tx["verifications"] >= n
        else:
            assert kinds.get("append", 0) >= (n - 1) * fig["blocks"]
            assert per_tx["verifications"] >= 1
        assert per_tx["fsyncs"] > 0 and per_tx["signatures"] > 0
        assert fig["ceiling"]["tx_per_s"] > 0
        assert 0 < fig["ceiling"]["achieved_fraction"] < 1
        assert set(fig["per_member"]) == {f"n{i + 1}" for i in range(n)}
        assert all(m["cpu_s"] > 0 and m["peak_rss_mb"] > 0 for m in fig["per_member"].values())
        # The event loop's thread is part of the process: the split adds up, and each part
        # is real (the loop does work; the raft leader's and the pbft members' worker
        # threads check signatures and write blocks).
        for m in fig["per_member"].values():
            assert 0 < m["loop_cpu_s"] <= m["cpu_s"] + 0.05, m
        split = fig["cpu_split"]
        assert split["cpu_ms_per_tx"] == pytest.approx(per_tx["cpu_ms_per_member"], abs=2e-4)
        for name, part in split["per_member"].items():
            three = ("signature_checks_ms_per_tx", "loop_other_ms_per_tx", "rest_ms_per_tx")
            assert sum(part[k] for k in three) == pytest.approx(part["cpu_ms_per_tx"], abs=1e-3)
            # (each member reports its signature threads: TxSignatureCache's default, 2)
            assert part["verify_threads"] == 2 and part["loop_ms_per_tx"] > 0, (name, part)
        assert split["signature_checks_ms_per_tx"] > 0
        for cores in ("2", "4", "8"):
            bound = split["projection_by_cores"][cores]
            assert bound["tx_per_s"] > 0 and bound["member"] in fig["per_member"], bound
        # Throughput by tenth of the run adds up to what committed.
        stability = fig["stability"]
        rates = stability["tx_per_s_by_tenth"]
        assert len(rates) == 10
        assert sum(rates) * stability["span_s"] / 10 == pytest.approx(TXS, rel=0.01)


def test_bench_measures_failover_when_the_leader_is_killed(tmp_path: Path) -> None:
    out = tmp_path / "kill.json"
    result = cli(
        "bench", "--mode", "raft", "--txs", "40000", "--duration", "3", "--clients", "2",
        "--window", "40",
        "--kill-at", "1.0", "--timeout-ms", "500", "--json", str(out),
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    [run] = json.loads(out.read_text())
    fig = run["figures"]
    assert len(fig["killed"]) == 1
    assert fig["failover_s"] is not None and fig["failover_s"] > 0
    assert fig["kill_to_first_commit_s"] is not None
    # The longest stall from the kill on covers the gap to the first commit after it.
    assert fig["stall_after_kill_s"] >= fig["kill_to_first_commit_s"] > 0
    assert fig["committed"] == fig["submitted"]
    assert fig["ledgers_verified"] and fig["ledgers_identical"]
    # Memory was sampled over the run; the killed member stops being sampled.
    rss = fig["stability"]["rss"]
    survivors = {f"n{i + 1}" for i in range(3)} - set(fig["killed"])
    assert survivors <= set(rss), rss
    assert all(r["at_end_mb"] > 0 and r["samples"] >= 2 for r in rss.values())


def test_bench_runs_with_a_member_silent_from_the_start_or_lying_in_its_receipts(
    tmp_path: Path,
) -> None:
    """Issue 18's fault runs: every transaction still commits (a lying member's receipts, each
    signed and proven, are outvoted by the f+1 honest ones: none is reported rejected), the
    silent member is left out of the figures and the audit, and the ledgers agree."""
    for mode, fault in (("raft", ("--silent", "n3")), ("pbft", ("--lying-receipts", "n2"))):
        out = tmp_path / f"{mode}.json"
        result = cli(
            "bench", "--mode", mode, "--txs", "600", "--clients", "2", "--window", "20",
            *fault, "--json", str(out),
            timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        [run] = json.loads(out.read_text())
        fig = run["figures"]
        assert fig["committed"] == fig["submitted"] == 600, fig
        assert fig["ledgers_verified"] and fig["ledgers_identical"]
        members = set(fig["per_member"])
        if fault[0] == "--silent":
            assert run["config"]["silent"] == "n3"
            assert members == {"n1", "n2"}
        else:
            assert run["config"]["lying"] == "n2"
            assert members == {"n1", "n2", "n3", "n4"}
