"""What the CLI prints: endpoint tables, status tables, receipts and audit results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio
import typer

from consortium.ledger.audit import AuditReport
from consortium.ledger.genesis import Genesis


def endpoint_table(genesis: Genesis, directory: Path) -> None:
    typer.echo(f"{'member':<8} {'peer address':<22} {'client address':<22} home")
    for m in genesis.members:
        typer.echo(
            f"{m.name:<8} {m.peer_address:<22} {m.client_address:<22} {directory}/nodes/{m.name}"
        )


async def collect_status(
    genesis: Genesis, timeout_s: float, options: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Every member's status; `options` are ConsortiumClient keyword arguments (TLS)."""
    from consortium.node.client import ConsortiumClient

    results: list[dict[str, Any]] = [{} for _ in genesis.members]
    async with ConsortiumClient(genesis, **(options or {})) as client:

        async def one(i: int) -> None:
            try:
                results[i] = await client.status(i, timeout_s)
            except Exception as exc:  # a member that is down or stuck: report, do not stop
                results[i] = {
                    "member": genesis.members[i].name,
                    "error": f"unreachable at {genesis.members[i].client_address} ({exc})",
                }

        async with trio.open_nursery() as nursery:
            for i in range(genesis.n):
                nursery.start_soon(one, i)
    return results


def status_table(genesis: Genesis, statuses: list[dict[str, Any]]) -> None:
    up = sum(1 for s in statuses if not s.get("error"))
    down = genesis.n - up
    budget = (
        f"tolerates {genesis.f - down} more"
        if down <= genesis.f
        else f"fault budget exceeded by {down - genesis.f}: no progress until a member returns"
    )
    typer.echo(
        f"network {genesis.chain_name} ({genesis.chain_id.hex()[:12]}…): mode {genesis.mode}, "
        f"n={genesis.n} f={genesis.f}: {up} of {genesis.n} up, {budget}"
    )
    raft = genesis.mode == "raft"
    view, primary, mark = (
        ("term", "leader", "snapshot") if raft else ("view", "primary", "checkpoint")
    )
    typer.echo(
        f"{'member':<7} {view:>5} {primary:<8} {'height':>7} {mark:>10} "
        f"{'peers':>6}  {'head':<14} note"
    )
    for s in statuses:
        if s.get("error"):
            typer.echo(
                f"{s.get('member', '?'):<7} {'-':>5} {'-':<8} {'-':>7} {'-':>10} "
                f"{'-':>6}  {'-':<14} {s['error']}"
            )
            continue
        peers = s.get("peers", [])
        connected = sum(1 for p in peers if p.get("outbound_connected"))
        note = "; ".join(s.get("not_progressing_because", [])) or "ok"
        typer.echo(
            f"{s['member']:<7} {s.get('view', '?')!s:>5} {s.get('primary', '?')!s:<8} "
            f"{s.get('height', '?')!s:>7} {s.get('stable_checkpoint', '?')!s:>10} "
            f"{connected:>3}/{len(peers):<2}  {str(s.get('head_hash', ''))[:12]}… {note}"
        )
    for s in statuses:
        if s.get("role") == "leader" and s.get("followers"):
            followers = ", ".join(
                f"{name} match {f.get('match')} (lag {f.get('lag')}, {f.get('state')})"
                for name, f in s["followers"].items()
            )
            typer.echo(
                f"leader {s['member']} (term {s.get('term')}, commit index "
                f"{s.get('commit_index')}): {followers}"
            )
        for e in s.get("evidence", []) or []:
            typer.echo(
                f"evidence held by {s['member']}: primary {e.get('primary')} of view "
                f"{e.get('view')}, seq {e.get('seq')}: {e.get('reason')}"
            )


def print_outcome(outcome: Any, *, as_json: bool) -> None:
    receipt = getattr(outcome, "receipt", None)
    doc = {
        "tx_id": outcome.tx_id.hex(),
        "status": outcome.status,
        "height": outcome.height,
        "block_hash": outcome.block_hash.hex() if outcome.block_hash else None,
        "confirmations": outcome.confirmations,
        "reason": outcome.reason,
        "receipt": None
        if receipt is None
        else {
            "status": receipt.status,
            "reason": receipt.reason,
            "results": [_show(r) for r in receipt.results],
            "height": receipt.height,
            "index": receipt.index,
        },
    }
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    typer.echo(f"tx id     {doc['tx_id']}")
    typer.echo(f"status    {outcome.status}" + (f" ({outcome.reason})" if outcome.reason else ""))
    if outcome.height is not None:
        typer.echo(f"block     {outcome.height}  {doc['block_hash']}")
        typer.echo(f"confirmed by {outcome.confirmations} members' signed receipts")
    if receipt is not None:
        typer.echo(
            f"receipt   {receipt.status}"
            + (f" ({receipt.reason})" if receipt.reason else "")
            + f", results {[_show(r) for r in receipt.results]}, index {receipt.index}"
        )
    if outcome.status == "pending":
        typer.echo(
            "not confirmed within the timeout; it may still commit. Re-submitting the same "
            "transaction is safe: it executes at most once."
        )


def show_value(v: bytes) -> str:
    shown = _show(v)
    return shown if isinstance(shown, str) else repr(shown)


def _show(v: object) -> object:
    if isinstance(v, bytes):
        try:
            return v.decode()
        except UnicodeDecodeError:
            return v.hex()
    return v


def print_audit(db: Path, report: AuditReport, *, as_json: bool) -> None:
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ledger": str(db),
                    "ok": report.ok,
                    "height": report.height,
                    "head_hash": report.head_hash.hex(),
                    "blocks_checked": report.blocks_checked,
                    "certificates_checked": report.certificates_checked,
                    "problem": None
                    if report.problem is None
                    else {"height": report.problem.height, "reason": report.problem.reason},
                },
                indent=2,
            )
        )
        return
    if report.ok:
        typer.echo(
            f"{db}: OK — {report.blocks_checked} blocks to height {report.height}, "
            f"head {report.head_hash.hex()[:16]}…, {report.certificates_checked} certificates "
            "checked, state re-executed"
        )
    else:
        assert report.problem is not None
        typer.echo(
            f"{db}: FAILED at height {report.problem.height}: {report.problem.reason}", err=True
        )
