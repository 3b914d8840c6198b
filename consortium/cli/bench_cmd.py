"""`consortium bench` and `consortium bench compare`: the command line of the benchmark.

The benchmark itself (bench.py: member processes, clients, figures, the plot) is imported
inside the commands: importing this module (for `consortium --help`) loads typer and nothing
heavy.
"""

# No `from __future__ import annotations` here: typer would evaluate every string
# annotation of every command at each start (main.py).

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from consortium.cli.common import EXIT_FAILED, fail

if TYPE_CHECKING:
    from consortium.cli.bench import BenchConfig, BenchRun

bench_app = typer.Typer(
    help="Benchmark real member processes on loopback: one mode, or pbft against raft."
)


def _bench_config(**options: object) -> "BenchConfig":
    from consortium.cli.bench import BenchConfig

    return BenchConfig(**options)  # type: ignore[arg-type]


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    mode: Annotated[Literal["pbft", "raft"], typer.Option(help="Consensus.")] = "pbft",
    members: Annotated[
        int | None, typer.Option(help="Members (default: 4 for pbft, 3 for raft).")
    ] = None,
    clients: Annotated[int, typer.Option(help="Concurrent clients.")] = 4,
    txs: Annotated[int, typer.Option(help="Transactions (a cap with --duration).")] = 10_000,
    duration: Annotated[
        float | None, typer.Option(help="Stop submitting after this many seconds.")
    ] = None,
    window: Annotated[int, typer.Option(help="Transactions in flight per client.")] = 200,
    batch_txs: Annotated[int, typer.Option(help="Batch (block) size limit.")] = 512,
    payload: Annotated[int, typer.Option(help="Encoded bytes per transaction.")] = 200,
    kill_at: Annotated[
        float | None,
        typer.Option(help="kill -9 the primary/leader this many seconds in; measure failover."),
    ] = None,
    byzantine_primary: Annotated[
        Literal["silent-primary", "equivocating-primary"] | None,
        typer.Option(help="pbft: run n1 as a test-only Byzantine primary."),
    ] = None,
    silent: Annotated[
        str | None,
        typer.Option(help="Never start this member (n2, ...): silent from the start."),
    ] = None,
    lying_receipts: Annotated[
        str | None,
        typer.Option(help="Run this member (n2, ...) lying to clients in every receipt."),
    ] = None,
    timeout_ms: Annotated[int, typer.Option(help="View-change / election timeout.")] = 1_000,
    tls: Annotated[bool, typer.Option(help="TLS on every peer and client port.")] = False,
    as_json: Annotated[Path | None, typer.Option("--json", help="Write every figure here.")] = None,
) -> None:
    """Run a local network of real member processes in one mode, drive it with concurrent
    clients submitting pre-signed transactions, and report throughput, latency percentiles,
    per-transaction costs and the measured ceiling; every ledger must be identical and verify."""
    if ctx.invoked_subcommand is not None:
        return
    from consortium.cli.bench import BenchError, per_member_lines, run_bench, table

    if byzantine_primary is not None and mode != "pbft":
        raise fail("--byzantine-primary is a pbft test mode")
    config = _bench_config(
        mode=mode,
        members=members or (4 if mode == "pbft" else 3),
        clients=clients,
        txs=txs,
        duration_s=duration,
        window=window,
        batch_txs=batch_txs,
        payload_bytes=payload,
        timeout_ms=timeout_ms,
        kill_at_s=kill_at,
        byzantine=byzantine_primary,
        silent=silent,
        lying=lying_receipts,
        tls=tls,
    )
    try:
        result = run_bench(config)
    except BenchError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    for line in table([result]):
        typer.echo(line)
    for line in per_member_lines(result):
        typer.echo(line)
    _bench_verdict([result], as_json)


def _bench_verdict(runs: "list[BenchRun]", as_json: Path | None) -> None:
    if as_json is not None:
        as_json.write_text(
            json.dumps(
                [
                    {
                        "config": r.config.__dict__
                        if hasattr(r.config, "__dict__")
                        else _config_doc(r),
                        "figures": r.figures,
                    }
                    for r in runs
                ],
                indent=2,
                default=str,
            )
        )
        typer.echo(f"figures written to {as_json}")
    bad = [
        r for r in runs if not (r.figures["ledgers_verified"] and r.figures["ledgers_identical"])
    ]
    for r in bad:
        typer.echo(
            f"{r.config.mode}: LEDGERS DIFFER OR FAIL VERIFY: {r.figures['ledger_problems']}",
            err=True,
        )
    if bad:
        raise typer.Exit(EXIT_FAILED)
    typer.echo("all ledgers identical and verified")


def _config_doc(run: "BenchRun") -> dict[str, object]:
    from dataclasses import asdict

    return asdict(run.config)


@bench_app.command("compare")
def bench_compare(
    members: Annotated[
        str | None,
        typer.Option(help="Sizes as pbft,raft (default 4,3: the same f=1)."),
    ] = None,
    same: Annotated[
        Literal["f", "n"], typer.Option(help="f: 3f+1 vs 2f+1; n: the same n for both.")
    ] = "f",
    sweep: Annotated[bool, typer.Option(help="Also n = 7, 10 (pbft) and 5, 7 (raft).")] = False,
    clients: Annotated[int, typer.Option(help="Concurrent clients.")] = 4,
    txs: Annotated[int, typer.Option(help="Transactions per run.")] = 10_000,
    window: Annotated[int, typer.Option(help="Transactions in flight per client.")] = 200,
    payload: Annotated[int, typer.Option(help="Encoded bytes per transaction.")] = 200,
    as_json: Annotated[Path | None, typer.Option("--json", help="Write every figure here.")] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            help="Draw the figures (PNG or SVG; matplotlib): bars, or lines against n with --sweep."
        ),
    ] = None,
) -> None:
    """The same workload on pbft and raft networks, one after the other, side by side with the
    ratios and what the protocols predict."""
    from consortium.cli.bench import BenchError, run_bench, table

    if members is not None:
        try:
            p, r = (int(x) for x in members.split(","))
        except ValueError:
            raise fail("--members: two sizes, pbft,raft, e.g. 4,3") from None
        pairs = [(p, r)]
    else:
        pairs = [(4, 3)] if same == "f" else [(4, 4)]
    if sweep:
        pairs += [(7, 5), (10, 7)] if same == "f" else [(7, 7), (10, 10)]
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise fail(
                "--plot needs matplotlib: .venv/bin/pip install 'consortium[plot]'"
            ) from None
    runs: list[BenchRun] = []
    try:
        for p, r in pairs:
            pair = []
            for mode, n in (("pbft", p), ("raft", r)):
                typer.echo(f"== {mode} n={n}", err=True)
                pair.append(
                    run_bench(
                        _bench_config(
                            mode=mode,
                            members=n,
                            clients=clients,
                            txs=txs,
                            window=window,
                            payload_bytes=payload,
                        )
                    )
                )
            for line in table(pair, ratio=True):
                typer.echo(line)
            runs += pair
    except BenchError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    if plot is not None:
        from consortium.cli.bench import draw

        draw(runs, plot)
        typer.echo(f"plot written to {plot}")
    _bench_verdict(runs, as_json)
