"""`consortium ledger`: follow committed blocks as they commit (`follow`), and audit a ledger
offline from the genesis file alone (`verify`).

The audit, the client library and trio are imported inside the commands: importing this
module (for `consortium --help`) loads typer and nothing heavy.
"""

# No `from __future__ import annotations` here: typer would evaluate every string
# annotation of every command at each start (main.py).

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from consortium.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    NetOpt,
    client_setup,
    fail,
    run_trio,
)

ledger_app = typer.Typer(
    help="Audit a ledger offline; follow committed blocks.", no_args_is_help=True
)


@ledger_app.command("follow")
def ledger_follow(
    net: NetOpt = Path("net"),
    from_height: Annotated[int, typer.Option("--from", help="The first height to show.")] = 1,
    count: Annotated[
        int | None, typer.Option("--count", help="Stop after this many blocks.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Print committed blocks from a height on, one line per block, as they commit (Ctrl-C
    stops): in pbft each once f+1 members signed the same block, in raft as one member
    signed it; each checked to link to the one before."""

    from consortium.cli import output
    from consortium.client import ClientError, ConsortiumClient

    if from_height < 0:
        raise fail("--from must be a height (0 or more)")
    if count is not None and count < 1:
        raise fail("--count must be at least 1")
    setup, options = client_setup(net)
    genesis = setup.genesis

    async def main() -> None:
        shown = 0
        async with (
            ConsortiumClient(genesis, **options) as c,
            contextlib.aclosing(c.follow(from_height)) as blocks,
        ):
            async for block in blocks:
                output.print_block(block, genesis, as_json=as_json)
                shown += 1
                if count is not None and shown >= count:
                    return

    try:
        run_trio(main)
    except ClientError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None  # Ctrl-C stops it: quietly


@ledger_app.command("verify")
def ledger_verify(
    home: Annotated[Path | None, typer.Option("--home", help="A member's home directory.")] = None,
    db: Annotated[Path | None, typer.Option(help="A ledger file (ledger.sqlite).")] = None,
    genesis_path: Annotated[
        Path | None, typer.Option("--genesis", help="The genesis file to audit against.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    trust: Annotated[
        str | None,
        typer.Option(
            "--trust",
            help="A trust anchor HEIGHT:HASH: the block at HEIGHT must hash to HASH (64 hex "
            "characters), and the ledger must reach it.",
        ),
    ] = None,
) -> None:
    """Audit a ledger from the genesis file alone: hash chain, Merkle roots, every certificate,
    every client signature, and re-execution to the same state roots. With --home, the ledger
    is the one the member's node.toml names (its data_dir)."""
    from consortium.cli import output
    from consortium.ledger.audit import audit_ledger
    from consortium.ledger.genesis import GenesisError

    if home is not None:
        # The ledger node.toml names (its data_dir), not a default path beside it: auditing a
        # stale copy while the member's own ledger was damaged printed OK.
        from consortium.node.config import ConfigError, load_config

        try:
            config = load_config(home)
        except ConfigError as exc:
            raise fail(str(exc)) from None
        db = db or config.store_path
        genesis_path = genesis_path or config.genesis_path
    if db is None or genesis_path is None:
        raise fail("give --home DIR, or both --db FILE and --genesis FILE")
    anchor = None if trust is None else parse_trust(trust)
    if not db.exists():
        raise fail(f"{db}: no ledger file")
    try:
        from consortium.node.genesis import load_genesis  # (with the frame check)

        genesis = load_genesis(genesis_path)
    except GenesisError as exc:
        raise fail(str(exc)) from None
    report = audit_ledger(db, genesis, trust=anchor)
    output.print_audit(db, report, as_json=as_json)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def parse_trust(text: str) -> tuple[int, bytes]:
    """`--trust HEIGHT:HASH` as (height, block hash), or the error that says how to write it."""
    height, sep, digest = text.partition(":")
    try:
        # (ASCII digits only: "²".isdigit() is true and int() refuses it; int() also refuses
        # a string of more digits than Python converts)
        if not sep or not (height.isascii() and height.isdigit()):
            raise ValueError
        at = int(height)
        block_hash = bytes.fromhex(digest)
        if len(block_hash) != 32:
            raise ValueError
    except ValueError:
        raise fail(
            f"--trust {text[:80]!r}: expected HEIGHT:HASH, a height and a block hash of 64 hex "
            "characters (`consortium member list` prints it as 'trust anchor: E:HASH')"
        ) from None
    return at, block_hash
