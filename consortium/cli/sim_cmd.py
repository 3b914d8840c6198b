"""`consortium sim`: the command line of the simulator (its options and help).

The simulator itself (sim.py, over consortium/sim/) is imported when the command runs: importing
this module (for `consortium --help`) loads typer and nothing heavy. The help names the
simulator's mixes and behaviours; they are repeated here for that reason, and
tests/cli/test_cli_imports.py checks that they are the simulator's own.
"""

# No `from __future__ import annotations` here: typer would evaluate every string
# annotation of every command at each start (main.py).

from typing import Annotated, Literal

import typer

# consortium/sim: flapping.FLAPPING, raft_scenarios.RAFT_MIXES, byzantine.BEHAVIOURS (its keys, in
# order) and clock_scenarios.CLOCK_MIXES.
FLAPPING = ("flap-down", "flap-mute")
RAFT_MIXES = ("lossy", "crashes", "partitions", "mixed", "total-crash")
BEHAVIOURS = (
    "equivocating-primary",
    "silent-primary",
    "slow-primary",
    "conflicting-votes",
    "forged-votes",
    "replay",
    "off-by-one",
    "wrong-digest",
    "flooding",
    "tampering-new-primary",
    "lying-transfer",
    "slow-transfer",
    "unknown-client",
)
CLOCK_MIXES = {"pbft": ("clock-primary", "clock-backup"), "raft": ("clock-leader",)}


def sim(
    mode: Annotated[
        Literal["pbft", "raft"], typer.Option(help="pbft, or raft (crash faults only).")
    ] = "pbft",
    mix: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Fault mix (repeatable, or 'all'). pbft: {', '.join(FLAPPING)} (partitions "
            "held past the view-change timeout and flapped, f members crashed or mute for the "
            "whole run; every transaction must commit within 4 x the capped timeout after "
            f"healing); raft: {', '.join(RAFT_MIXES + FLAPPING)} (the same two: partitions "
            "held past 2E, the election timeout's upper end; 4 x max(2E, client retry))."
        ),
    ] = None,
    n: Annotated[
        int | None, typer.Option(help="Members (pbft: 3f+1 >= 4, default 4; raft: default 3).")
    ] = None,
    seeds: Annotated[str, typer.Option(help="Seeds: 0-99, or 1,5,9.")] = "0-19",
    txs: Annotated[int, typer.Option(help="Transactions submitted per run.")] = 60,
    faults: Annotated[
        Literal["clean", "lossy", "heavy"], typer.Option(help="Network faults.")
    ] = "lossy",
    partition: Annotated[bool, typer.Option(help="Split the members, no side a quorum.")] = False,
    crash: Annotated[bool, typer.Option(help="Crash the primary mid-run, restart it.")] = False,
    byzantine: Annotated[
        list[str] | None,
        typer.Option(help=f"Behaviour (repeatable, or 'all'): {', '.join(BEHAVIOURS)}."),
    ] = None,
    liars: Annotated[str, typer.Option(help="Byzantine member indexes, e.g. 0 or 0,4.")] = "0",
    trace: Annotated[
        int | None, typer.Option(help="Replay this one seed and print its trace.")
    ] = None,
    trace_lines: Annotated[int, typer.Option(help="Stop the trace after this many lines.")] = 400,
    clock: Annotated[
        list[str] | None,
        typer.Option(
            help="Clock mix (repeatable, or 'all'): one member's clock wrong or jumping; "
            f"pbft {', '.join(CLOCK_MIXES['pbft'])}; raft {', '.join(CLOCK_MIXES['raft'])}."
        ),
    ] = None,
) -> None:
    """Seeded simulations: safety checked after every step, liveness after healing."""
    from consortium.cli.sim import run

    run(
        mode=mode,
        mix=mix,
        n=n,
        seeds=seeds,
        txs=txs,
        faults=faults,
        partition=partition,
        crash=crash,
        byzantine=byzantine,
        liars=liars,
        trace=trace,
        trace_lines=trace_lines,
        clock=clock,
    )
