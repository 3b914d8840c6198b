"""`consortium tx`: sign and submit transactions, ask for their status and receipts, check a
receipt offline; and `consortium read`, the fast-path read.

The client library, trio and the crypto libraries are imported inside the commands: importing
this module (for `consortium --help`) loads typer and nothing heavy.
"""

# No `from __future__ import annotations` here: typer would evaluate every string
# annotation of every command at each start (main.py).

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from consortium.cli.common import (
    EXIT_FAILED,
    EXIT_PENDING,
    EXIT_UNREACHABLE,
    NetOpt,
    client_keys,
    client_setup,
    fail,
    plural,
    run_trio,
)

if TYPE_CHECKING:
    from consortium.client import TxOutcome
    from consortium.ledger.genesis import Genesis
    from consortium.ledger.tx import Op

tx_app = typer.Typer(
    help="Sign and submit transactions; their status and receipts; verify a receipt offline.",
    no_args_is_help=True,
)


def _parse_ops(op: str, args: list[str]) -> "list[Op]":
    from consortium.ledger.tx import CompareAndSet, Delete, Get, Put

    def b(s: str) -> bytes:
        return s.encode()

    def opt(s: str) -> bytes | None:
        return None if s == "-" else s.encode()

    usage = {
        "put": "put KEY VALUE",
        "del": "del KEY",
        "cas": "cas KEY EXPECTED NEW   ('-' means absent)",
        "get": "get KEY",
    }
    arity = {"put": 2, "del": 1, "cas": 3, "get": 1}
    if op not in arity:
        raise fail(f"unknown operation '{op}'; one of: {', '.join(usage.values())}")
    if len(args) != arity[op]:
        raise fail(f"usage: consortium tx submit {usage[op]}")
    if op == "put":
        return [Put(b(args[0]), b(args[1]))]
    if op == "del":
        return [Delete(b(args[0]))]
    if op == "cas":
        return [CompareAndSet(b(args[0]), opt(args[1]), opt(args[2]))]
    return [Get(b(args[0]))]


def _tx_id(text: str) -> bytes:
    try:
        tx_id = bytes.fromhex(text)
    except ValueError:
        tx_id = b""
    if len(tx_id) != 32:
        raise fail(f"transaction id {text!r}: expected 64 hex digits (as `tx submit` prints)")
    return tx_id


def _write_receipt(
    outcome: "TxOutcome", genesis: "Genesis", genesis_path: Path, out: Path, force: bool
) -> None:
    try:
        with out.open("w" if force else "x") as f:  # "x": never over a file that appeared
            f.write(outcome.receipt_document(genesis))
    except FileExistsError:
        raise fail(f"{out} exists; pass --force to replace it", EXIT_FAILED) from None
    except OSError as exc:
        raise fail(f"cannot write {out}: {exc}", EXIT_FAILED) from None
    assert outcome.proof is not None
    typer.echo(
        f"receipt written to {out}: {plural(len(outcome.proof.signatures), 'member signature')}; "
        f"check it offline with `consortium tx verify-receipt {out} --genesis {genesis_path}`"
    )


def _finish(
    outcome: "TxOutcome", net: Path, as_json: bool, out: Path | None = None, force: bool = False
) -> None:
    """Print an outcome; exit 0 committed, 1 rejected at submit, 3 pending (or unknown to
    every member), 4 no member reachable."""
    from consortium.cli import output
    from consortium.cli.network import load_client_setup

    output.print_outcome(outcome, as_json=as_json, net=net)
    if outcome.status in ("pending", "unknown"):
        raise typer.Exit(EXIT_PENDING)
    if outcome.status == "unreachable":
        raise typer.Exit(EXIT_UNREACHABLE)
    if outcome.status == "rejected":
        raise typer.Exit(EXIT_FAILED)
    if out is not None:
        setup = load_client_setup(net)
        _write_receipt(
            outcome, setup.genesis, setup.genesis_path or net / "genesis.json", out, force
        )


def _refuse_existing(out: Path | None, force: bool) -> None:
    """Before anything is asked of the members: an existing receipt file is kept unless
    --force (it may be the only copy of a proof someone relies on)."""
    if out is not None and out.exists() and not force:
        raise fail(f"{out} exists; pass --force to replace it")


WaitOpt = Annotated[
    float,
    typer.Option(
        "--wait",
        "--timeout",
        help="Seconds to wait for the outcome; then it is 'pending' (exit 3): it may still "
        "commit, and `consortium tx status ID` tells later.",
    ),
]
ReceiptOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--receipt-out",
        help="Write the receipt document (JSON: receipt, Merkle proof, header, f+1 member "
        "signatures) here, for `consortium tx verify-receipt`.",
    ),
]


@tx_app.command("submit")
def tx_submit(
    op: Annotated[str, typer.Argument(help="put | del | cas | get")],
    args: Annotated[list[str] | None, typer.Argument(help="KEY [VALUE ...]")] = None,
    net: NetOpt = Path("net"),
    client: Annotated[int, typer.Option(help="Which client key of client.toml (1-based).")] = 1,
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            help="Sign with this client key file (PEM) instead of client.toml's; encrypted "
            "keys read CONSORTIUM_KEY_PASSPHRASE.",
        ),
    ] = None,
    wait: WaitOpt = 10.0,
    receipt_out: ReceiptOutOpt = None,
    force: Annotated[bool, typer.Option(help="Replace an existing --receipt-out file.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Sign a transaction, submit it to every member, wait for f+1 matching signed receipts.

    \b
    Exit status:
      0  committed (the receipt says whether it took effect)
      1  rejected
      3  pending: it may still commit
      4  no member reachable"""

    from consortium.client import ConsortiumClient

    ops = _parse_ops(op, args or [])
    _refuse_existing(receipt_out, force)
    setup, keys, options = client_keys(net, client, key)

    async def main() -> "TxOutcome":
        async with ConsortiumClient(setup.genesis, keys, **options) as c:
            tx = c.make_tx(ops)
            [tx_id] = await c.submit([tx])
            if not c.connected_members():
                return c.outcome(tx_id)  # handed to no member: "unreachable", no wait
            if not as_json:
                typer.echo(f"submitted {tx_id.hex()}", err=True)
            [outcome] = await c.wait([tx_id], timeout_s=max(0.0, wait))
            await c.flush()  # a submit with --wait 0 still reaches the members
            return outcome

    _finish(run_trio(main), net, as_json, receipt_out, force)


@tx_app.command("status")
def tx_status(
    tx_id: Annotated[str, typer.Argument(help="The transaction id (hex), as submit printed.")],
    net: NetOpt = Path("net"),
    wait: Annotated[
        float,
        typer.Option("--wait", help="Wait this long for it to commit (default: ask once)."),
    ] = 0.0,
    receipt_out: ReceiptOutOpt = None,
    force: Annotated[bool, typer.Option(help="Replace an existing --receipt-out file.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Ask the members for a transaction's receipt (whoever submitted it): committed once f+1
    members' signed receipts agree (raft: one).

    \b
    Exit status:
      0  committed
      3  not (yet) committed ("unknown": every member answered it has no receipt)
      4  no member reachable"""

    from consortium.client import ConsortiumClient

    wanted = _tx_id(tx_id)
    _refuse_existing(receipt_out, force)
    setup, options = client_setup(net)  # no signing: a missing key file is no matter

    async def main() -> "TxOutcome":
        async with ConsortiumClient(setup.genesis, **options) as c:
            outcome = await c.lookup(wanted, timeout_s=5.0)
            if outcome.status in ("pending", "unknown") and wait > 0:
                outcome = await c.wait_one(wanted, timeout_s=wait)
            return outcome

    _finish(run_trio(main), net, as_json, receipt_out, force)


@tx_app.command("receipt")
def tx_receipt(
    tx_id: Annotated[str, typer.Argument(help="The transaction id (hex), as submit printed.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the receipt document.")],
    net: NetOpt = Path("net"),
    wait: Annotated[
        float, typer.Option("--wait", help="Wait this long for it to commit (default: ask once).")
    ] = 0.0,
    force: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
) -> None:
    """Fetch a committed transaction's receipt from the members and write the receipt
    document (receipt, Merkle proof, header, f+1 member signatures) for offline checking.
    An existing --out file is kept unless --force."""
    tx_status(tx_id, net=net, wait=wait, receipt_out=out, force=force, as_json=False)


@tx_app.command("verify-receipt")
def tx_verify_receipt(
    path: Annotated[Path, typer.Argument(help="A receipt document (tx submit --receipt-out).")],
    genesis_path: Annotated[
        Path | None,
        typer.Option("--genesis", help="The network's genesis.json (default: NET/genesis.json)."),
    ] = None,
    net: NetOpt = Path("net"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check a receipt document offline, against the genesis file alone: the network, the
    receipt's Merkle proof to the block header, and f+1 distinct members' signatures over the
    header's hash (raft: one). Prints what it proves; exit 1 (and what is wrong) if it does not."""
    from consortium.ledger.genesis import GenesisError
    from consortium.protocol.receipts import ReceiptFormatError, describe, loads, verify_receipt

    genesis_path = genesis_path or net / "genesis.json"
    try:
        from consortium.node.genesis import load_genesis  # (with the frame check)

        genesis = load_genesis(genesis_path)
    except GenesisError as exc:
        raise fail(str(exc)) from None
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc}") from None
    try:
        proof = loads(text)
        problem = verify_receipt(proof, genesis)
    except ReceiptFormatError as exc:
        problem = f"not a valid receipt document: {exc}"
        proof = None
    if as_json:
        doc: dict[str, Any] = {"file": str(path), "valid": problem is None, "problem": problem}
        if proof is not None and problem is None:
            doc.update(
                tx_id=proof.receipt.tx_id.hex(),
                status=proof.receipt.status,
                reason=proof.receipt.reason,
                height=proof.receipt.height,
                index=proof.receipt.index,
                block_hash=proof.block_hash.hex(),
                signers=[genesis.members[s].name for s in proof.signers()],
            )
        typer.echo(json.dumps(doc, indent=2))
    elif problem is None and proof is not None:
        typer.echo(f"{path}: VALID receipt of network {genesis_path}")
        for line in describe(proof, genesis):
            typer.echo(f"  {line}")
    else:
        typer.echo(f"{path}: INVALID: {problem}", err=True)
    if problem is not None:
        raise typer.Exit(EXIT_FAILED)


def read(
    key: Annotated[str, typer.Argument(help="The key to read.")],
    net: NetOpt = Path("net"),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a quorum.")] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Fast-path read: the value a quorum of members sign for KEY right now. Prints the value
    as it is, or `absent: 'KEY' has no value` when the key has none (an empty value prints an
    empty line); --json says {"key", "present", "value"}. For a read ordered with writes, use
    `consortium tx submit get KEY`."""

    from consortium.cli import output
    from consortium.client import ClientError, ConsortiumClient

    setup, options = client_setup(net)

    async def main() -> bytes | None:
        async with ConsortiumClient(setup.genesis, **options) as c:
            return await c.get(key.encode(), timeout_s=timeout)

    try:
        value = run_trio(main)
    except ClientError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    if as_json:
        shown = None if value is None else output.show_value(value)
        typer.echo(json.dumps({"key": key, "present": value is not None, "value": shown}))
    elif value is None:
        typer.echo(f"absent: {key!r} has no value")
    else:
        typer.echo(output.show_value(value))
