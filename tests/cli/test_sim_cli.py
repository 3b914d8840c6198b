"""`consortium sim`: a summary per behaviour, a non-zero exit and a replay command when a seed
fails, and a readable trace of one seed."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from consortium.cli.main import app
from consortium.sim import scenarios

runner = CliRunner()


def test_sim_runs_seeds_and_prints_a_summary() -> None:
    result = runner.invoke(
        app, ["sim", "--seeds", "0-3", "--txs", "20", "--byzantine", "wrong-digest", "--crash"]
    )
    assert result.exit_code == 0, result.output
    row = [line for line in result.output.splitlines() if line.startswith("wrong-digest")]
    assert row and row[0].split()[1:5] == ["4", "4", "0", "0"]


def test_a_failing_seed_exits_non_zero_and_says_how_to_replay_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A silent primary and a deadline far shorter than a view change: nothing can commit.
    monkeypatch.setattr(scenarios, "DEADLINE_MS", 50)
    result = runner.invoke(app, ["sim", "--seeds", "5,6", "--byzantine", "silent-primary"])
    assert result.exit_code == 1, result.output
    assert "FAILED silent-primary seed 5: liveness: not everything committed" in result.output
    assert "replay: consortium sim --n 4 --txs 60 --faults lossy --liars 0 " in result.output
    assert "--byzantine silent-primary --trace 5" in result.output


def test_trace_replays_one_seed_event_by_event() -> None:
    result = runner.invoke(
        app, ["sim", "--trace", "3", "--crash", "--faults", "clean", "--trace-lines", "100000"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("CRASH" in line for line in lines) and any("RESTART" in line for line in lines)
    assert any("VIEW changing to 1" in line for line in lines)
    assert any(" COMMIT seq 1 " in line for line in lines)
    assert any("-> n2  PREPREPARE v0 s1" in line for line in lines)
    assert lines[-1].startswith("seed 3: ok")
    again = runner.invoke(
        app, ["sim", "--trace", "3", "--crash", "--faults", "clean", "--trace-lines", "100000"]
    )
    assert again.output == result.output  # same seed, same trace


def test_bad_options_are_refused_with_the_fix() -> None:
    result = runner.invoke(app, ["sim", "--byzantine", "nonsense"])
    assert result.exit_code != 0 and "choose from" in result.output
    result = runner.invoke(app, ["sim", "--liars", "0,1"])
    assert result.exit_code != 0 and "at most f = 1" in result.output
    result = runner.invoke(app, ["sim", "--seeds", "9-3"])
    assert result.exit_code != 0 and "not a range" in result.output


def test_sim_runs_raft_fault_mixes_and_replays_a_seed() -> None:
    result = runner.invoke(app, ["sim", "--mode", "raft", "--seeds", "0-4", "--mix", "crashes"])
    assert result.exit_code == 0, result.output
    row = [line for line in result.output.splitlines() if line.startswith("crashes")]
    assert row and row[0].split()[1:5] == ["5", "5", "0", "0"]
    traced = runner.invoke(
        app,
        ["sim", "--mode", "raft", "--mix", "partitions", "--trace", "2", "--trace-lines", "99999"],
    )
    assert traced.exit_code == 0, traced.output
    assert " LEADER of term " in traced.output and "APPEND" in traced.output
    assert traced.output.strip().endswith("seed 2 (partitions, n=3): ok")


def test_a_failing_raft_seed_exits_non_zero_and_says_how_to_replay_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from consortium.sim import raft_cluster, raft_scenarios

    # Transactions that never arrive anywhere: what a core that drops them would do.
    monkeypatch.setattr(raft_cluster.RaftSimCluster, "_send_to", lambda self, tx, i: None)
    monkeypatch.setattr(raft_scenarios, "DEADLINE_MS", 2_000)
    result = runner.invoke(app, ["sim", "--mode", "raft", "--seeds", "7", "--mix", "lossy"])
    assert result.exit_code == 1, result.output
    assert "FAILED lossy seed 7: liveness: seed 7 (lossy, n=3): not everything committed" in (
        result.output
    )
    assert (
        "replay: consortium sim --mode raft --n 3 --txs 60 --mix lossy --trace 7" in result.output
    )


def test_sim_runs_clock_mixes_in_both_modes_and_replays_a_seed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result = runner.invoke(app, ["sim", "--clock", "all", "--seeds", "0-2", "--txs", "12"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:5] for line in result.output.splitlines()[1:]}
    assert rows == {"clock-primary": ["3", "3", "0", "0"], "clock-backup": ["3", "3", "0", "0"]}
    result = runner.invoke(
        app, ["sim", "--mode", "raft", "--clock", "clock-leader", "--seeds", "4"]
    )
    assert result.exit_code == 0 and "clock-leader        1      1" in result.output, result.output
    traced = runner.invoke(
        app, ["sim", "--clock", "clock-primary", "--trace", "1", "--trace-lines", "99999"]
    )
    assert traced.exit_code == 0, traced.output
    assert " n1 CLOCK " in traced.output and "VIEW changing to 1" in traced.output
    assert traced.output.strip().endswith("ok") and "seed 1 (clock-primary: " in traced.output
    # A member judging submissions by its own clock (today's rule) fails, with the replay line.
    from consortium.cli import sim as sim_cli
    from consortium.sim.clock_scenarios import run_clock

    monkeypatch.setattr(
        sim_cli, "run_clock", lambda *a, **k: run_clock(*a, **k, own_clock_expiry=True)
    )
    failed = runner.invoke(app, ["sim", "--clock", "clock-backup", "--seeds", "0"])
    assert failed.exit_code == 1, failed.output
    assert "FAILED clock-backup (ahead) seed 0: safety: clock: n" in failed.output
    assert "replay: consortium sim --mode pbft --n 4 --txs 60 --clock clock-backup --trace 0" in (
        failed.output
    )
    bad = runner.invoke(app, ["sim", "--mode", "raft", "--clock", "clock-primary"])
    assert bad.exit_code != 0 and "raft has clock-leader or all" in bad.output


def test_sim_runs_the_flapping_mixes_and_says_how_to_replay_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result = runner.invoke(app, ["sim", "--mix", "all", "--seeds", "0-2", "--txs", "6"])
    assert result.exit_code == 0, result.output
    for mix in ("flap-down", "flap-mute"):
        row = [line for line in result.output.splitlines() if line.startswith(mix)]
        assert row and row[0].split()[1:5] == ["3", "3", "0", "0"], result.output
    # No time at all after healing, and transactions submitted at the heal: a liveness failure.
    monkeypatch.setattr(scenarios, "flapping_deadline_ms", lambda cluster: 0)
    result = runner.invoke(app, ["sim", "--mix", "flap-mute", "--seeds", "4", "--txs", "20"])
    assert result.exit_code == 1, result.output
    assert "FAILED flap-mute seed 4: liveness: not everything committed" in result.output
    assert "replay: consortium sim --n 4 --txs 20 --faults lossy --liars 0 --mix flap-mute " in (
        result.output
    )
    assert "--mix flap-mute --trace 4" in result.output
    result = runner.invoke(app, ["sim", "--mix", "nonsense"])
    assert result.exit_code != 0 and "choose from flap-down, flap-mute" in result.output
    result = runner.invoke(app, ["sim", "--mix", "flap-down", "--crash"])
    assert result.exit_code != 0 and "brings its own faults" in result.output


def test_sim_runs_the_raft_flapping_mixes_and_says_how_to_replay_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from consortium.sim import raft_scenarios

    result = runner.invoke(
        app, ["sim", "--mode", "raft", "--mix", "all", "--seeds", "0-2", "--txs", "6"]
    )
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:5] for line in result.output.splitlines()[1:]}
    assert rows["flap-down"] == rows["flap-mute"] == ["3", "3", "0", "0"], result.output
    assert rows["crashes"] == ["3", "3", "0", "0"], result.output  # all: every raft mix
    flags = ["--mode", "raft", "--mix", "flap-mute", "--txs", "8", "--trace-lines", "99999"]
    traced = runner.invoke(app, ["sim", *flags, "--trace", "3"])
    assert traced.exit_code == 0, traced.output
    assert " MUTE for the whole run" in traced.output and " PARTITION n" in traced.output
    assert " HEALED for good" in traced.output and " LEADER of term " in traced.output
    assert traced.output.strip().endswith("seed 3 (flap-mute, n=3): ok")
    # No time at all after healing, and transactions submitted at the heal: a liveness failure.
    monkeypatch.setattr(raft_scenarios, "flapping_deadline_ms", lambda cluster, mix: 0)
    result = runner.invoke(
        app, ["sim", "--mode", "raft", "--mix", "flap-down", "--seeds", "4", "--txs", "20"]
    )
    assert result.exit_code == 1, result.output
    assert (
        "FAILED flap-down seed 4: liveness: seed 4 (flap-down, n=3): not everything committed "
        "0.0 s after the last heal" in result.output
    )
    assert "replay: consortium sim --mode raft --n 3 --txs 20 --mix flap-down --trace 4" in (
        result.output
    )
    result = runner.invoke(app, ["sim", "--mode", "raft", "--mix", "flap-up"])
    assert result.exit_code != 0 and "choose from lossy, crashes" in result.output
    assert "flap-down, flap-mute or all" in result.output
    result = runner.invoke(app, ["sim", "--mode", "raft", "--mix", "flap-mute", "--n", "1"])
    assert result.exit_code != 0 and "a flapping mix needs n >= 2" in result.output
