"""What the CLI prints: endpoint tables, status tables, receipts and audit results.

Imported by the commands when they run; it imports trio only to ask for statuses, and the
audit only for its type, so that printing a table does not load them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from consortium.cli.common import plural
from consortium.node.explain import fault_budget, join_names

if TYPE_CHECKING:
    from consortium.ledger.audit import AuditReport
    from consortium.ledger.genesis import Genesis


def endpoint_table(genesis: Genesis, directory: Path) -> None:
    typer.echo(f"{'member':<8} {'peer address':<22} {'client address':<22} home")
    for m in genesis.members:
        typer.echo(
            f"{m.name:<8} {m.peer_address:<22} {m.client_address:<22} {directory}/nodes/{m.name}"
        )
    gateways = _gateway_urls(directory)
    if gateways:
        typer.echo(f"HTTP/JSON gateways ({directory}/gateways.json, docs/gateway.md):")
        for name, url in gateways:
            typer.echo(f"  {name:<8} {url}")


def _gateway_urls(directory: Path) -> list[tuple[str, str]]:
    """(member, URL) of the network's gateways.json (`init --gateway`); [] without one, or
    with one that cannot be read (it is client configuration; the members do not read it)."""
    try:
        doc = json.loads((directory / "gateways.json").read_text())
        return [(str(g["member"]), str(g["url"])) for g in doc["gateways"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


async def collect_status(
    genesis: Genesis,
    timeout_s: float,
    members: list[int] | None = None,
    options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Ask each member (or those in `members`) for its status, all at once. A member that does
    not answer within `timeout_s` is reported as unreachable, with why; never an exception.
    `options` are ConsortiumClient keyword arguments (TLS)."""
    import trio

    from consortium.client import ConsortiumClient

    wanted = list(range(genesis.n)) if members is None else members
    results: dict[int, dict[str, Any]] = {}
    async with ConsortiumClient(genesis, **(options or {})) as client:

        async def one(i: int) -> None:
            try:
                with trio.fail_after(timeout_s + 1):
                    results[i] = await client.status(i, timeout_s)
            except Exception as exc:  # a member that is down or stuck: report, do not stop
                why = "no answer in time" if isinstance(exc, trio.TooSlowError) else str(exc)
                results[i] = {
                    "member": genesis.members[i].name,
                    "unreachable": True,
                    "error": f"unreachable at {genesis.members[i].client_address} ({why})",
                }

        async with trio.open_nursery() as nursery:
            for i in wanted:
                nursery.start_soon(one, i)
    return [results[i] for i in wanted]


def lag_notes(genesis: Genesis, statuses: list[dict[str, Any]]) -> dict[str, str]:
    """Members more than two checkpoint intervals below the highest height any member reported,
    by name, with how far: a member cannot always know it is behind (cut off, it hears of no
    later checkpoint), but a look at all of them can."""
    heights = {
        str(s["member"]): int(s["height"])
        for s in statuses
        if not s.get("error") and isinstance(s.get("height"), int)
    }
    if not heights:
        return {}
    top = max(heights.values())
    leader = min(name for name, h in heights.items() if h == top)
    lag_max = 2 * genesis.params.checkpoint_interval
    return {
        name: f"behind by {top - h:,} blocks (height {h:,}; {leader} has {top:,})"
        for name, h in heights.items()
        if top - h > lag_max
    }


def counts_as_up(s: dict[str, Any]) -> bool:
    """Answered, and neither diverged nor recovering: a member in either counts as one of the
    f faulty (pbft) or as unavailable (raft), so it is no part of the fault budget."""
    if s.get("error"):
        return False
    core = s.get("core") or {}
    return not core.get("diverged") and not core.get("recovering")


def network_doc(genesis: Genesis, statuses: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole network as the members answered: who is up, the fault budget, who is not
    ready and why (a member far below the others is not ready, whatever it says)."""
    answered = [s for s in statuses if not s.get("error")]
    up = sum(1 for s in statuses if counts_as_up(s))
    lagging = lag_notes(genesis, statuses)
    return {
        "chain_name": genesis.chain_name,
        "chain_id": genesis.chain_id.hex(),
        "mode": genesis.mode,
        "n": genesis.n,
        "f": genesis.f,
        "quorum": genesis.quorum,
        "up": up,
        "unreachable": [str(s.get("member")) for s in statuses if s.get("error")],
        "fault_budget": fault_budget(genesis.n, genesis.f, genesis.quorum, up),
        "not_ready": {
            str(s["member"]): _reasons(s, lagging)
            for s in answered
            if not s.get("ready", True) or str(s["member"]) in lagging
        },
    }


def _reasons(s: dict[str, Any], lagging: dict[str, str]) -> list[str]:
    reasons = list(s.get("not_progressing_because", []))
    lag = lagging.get(str(s["member"]))
    if lag is not None and not any(r.startswith("behind by") for r in reasons):
        reasons.append(lag)
    return reasons


def status_table(genesis: Genesis, statuses: list[dict[str, Any]]) -> None:
    net = network_doc(genesis, statuses)
    typer.echo(
        f"network {genesis.chain_name} ({genesis.chain_id.hex()[:12]}…): mode {genesis.mode}, "
        f"{net['fault_budget']}"
        + (f"; unreachable: {join_names(net['unreachable'])}" if net["unreachable"] else "")
    )
    versions = versions_line(statuses)
    if versions:
        typer.echo(versions)
    raft = genesis.mode == "raft"
    view, primary, mark = (
        ("term", "leader", "snapshot") if raft else ("view", "primary", "checkpoint")
    )
    typer.echo(
        f"{'member':<7} {view:>5} {primary:<8} {'height':>7} {mark:>10} "
        f"{'peers':>6}  {'head':<14} note"
    )
    lagging = lag_notes(genesis, statuses)
    for s in statuses:
        if s.get("error"):
            typer.echo(
                f"{s.get('member', '?'):<7} {'-':>5} {'-':<8} {'-':>7} {'-':>10} "
                f"{'-':>6}  {'-':<14} {s['error']}"
            )
            continue
        peers = s.get("peers", [])
        # Connected: frames came both ways within 3 ping intervals (transport.peer_status).
        connected = sum(1 for p in peers if p.get("outbound_live") and p.get("inbound_live"))
        note = "; ".join(_reasons(s, lagging) + list(s.get("warnings", []))) or "ok"
        typer.echo(
            f"{s['member']:<7} {s.get(view, '?')!s:>5} {s.get(primary, '?')!s:<8} "
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


def versions_line(statuses: list[dict[str, Any]]) -> str:
    """The release each member that answered runs: one version for all, or each member's
    (a rolling upgrade half done shows); empty if none said (a member older than the field)."""
    found = {str(s["member"]): str(s["version"]) for s in statuses if s.get("version")}
    if not found:
        return ""
    if len(set(found.values())) == 1:
        return f"version {next(iter(found.values()))} ({plural(len(found), 'member')})"
    return "versions: " + ", ".join(f"{name} {v}" for name, v in found.items())


def member_report(s: dict[str, Any]) -> None:
    """One member in detail: position, readiness with reasons, fault budget, each peer."""
    if s.get("error"):
        typer.echo(f"{s.get('member', '?')}: {s['error']}")
        return
    raft = s.get("mode") == "raft"
    view, primary, mark = (
        ("term", "leader", "snapshot index") if raft else ("view", "primary", "stable checkpoint")
    )
    role = f", role {s.get('role')}" if raft else ""
    typer.echo(
        f"{s['member']} ({s['mode']}, member {int(s['index']) + 1} of {s['n']}{role}"
        + (f", version {s['version']}" if s.get("version") else "")
        + "): "
        f"{view} {s.get(view)}, {primary} {s.get(primary) or 'none'}, "
        f"height {s['height']:,}, head {str(s['head_hash'])[:16]}…, {mark} "
        f"{s.get('stable_checkpoint')}"
    )
    if s.get("ready"):
        typer.echo("ready: making progress")
    else:
        typer.echo("NOT READY:")
        for reason in s.get("not_progressing_because", []):
            typer.echo(f"  - {reason}")
    for warning in s.get("warnings", []):
        typer.echo(f"warning: {warning}")
    typer.echo(f"fault budget: {s.get('fault_budget')} (as this member sees it)")
    if s.get("waiting_for"):
        typer.echo(f"waiting for: {s['waiting_for']}")
    errors = {str(p.get("name")): str(p.get("last_error") or "") for p in s.get("peers", [])}
    typer.echo("peers:")
    for name, row in s.get("peer_state", {}).items():
        lag = "" if row.get("lag") is None else f"lag {row['lag']:,}"
        why = errors.get(name, "") if row.get("state") != "connected" else ""
        typer.echo(f"  {name:<8} {row.get('state', '?'):<14} {lag:<12} {why}".rstrip())


def print_outcome(outcome: Any, *, as_json: bool, net: Path | None = None) -> None:
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
        typer.echo(
            f"confirmed by {outcome.confirmations} "
            + (
                "member's signed receipt"
                if outcome.confirmations == 1
                else "members' signed receipts"
            )
        )
    if receipt is not None:
        typer.echo(
            f"receipt   {receipt.status}"
            + (f" ({receipt.reason})" if receipt.reason else "")
            + f", results [{', '.join(show_result(r) for r in receipt.results)}], index "
            f"{receipt.index}"
        )
    where = f" --net {net}" if net is not None and str(net) != "net" else ""
    if outcome.status == "unreachable":
        typer.echo(
            "not handed to any member: check that the members run and that --net names this "
            "network (`consortium status`). Submitting it again is safe."
        )
    if outcome.status == "unknown":
        typer.echo(
            "no member has a receipt for this id: check the id; a transaction submitted a "
            f"moment ago may still commit (`consortium tx status {doc['tx_id']}{where} --wait "
            "10`)."
        )
    if outcome.status == "pending":
        if "unknown_client" in (outcome.reason or ""):
            typer.echo(
                "members do not (yet) know this client key: if it was admitted recently, it is "
                "accepted once they reach the effective height (see `consortium client list"
                f"{where}`); otherwise ask the operators to admit it (docs/clients-admission.md)."
            )
        typer.echo(
            f"pending: may still commit; check with `consortium tx status {doc['tx_id']}"
            f"{where}`. Re-submitting the same transaction is safe: it executes at most once."
        )


def print_block(block: Any, genesis: Genesis, *, as_json: bool) -> None:
    """One followed block (client/follow.py CommittedBlock) on one line."""
    receipts = block.receipts
    rejected = sum(1 for r in receipts if r.status != "ok")
    signers = [genesis.members[s].name for s in block.signers]
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "height": block.height,
                    "block_hash": block.block_hash.hex(),
                    "prev_hash": block.header.prev_hash.hex(),
                    "timestamp_ms": block.header.timestamp_ms,
                    "txs": len(receipts),
                    "rejected": rejected,
                    "tx_ids": [t.hex() for t in block.tx_ids],
                    "signers": signers,
                }
            )
        )
        return
    when = time.strftime("%H:%M:%S", time.localtime(block.header.timestamp_ms / 1000))
    typer.echo(
        f"{block.height:>8}  {block.block_hash.hex()[:16]}…  {when}  {len(receipts):>4} txs"
        f"  {rejected:>3} rejected  signed by {','.join(signers)}"
    )


def show_result(r: object) -> str:
    """One operation's result in words: a value quoted (so an empty one shows), a key that
    has none `absent`, a del's or cas's flag as true/false."""
    if r is None:
        return "absent"
    if isinstance(r, bool):
        return "true" if r else "false"
    shown = _show(r)
    return json.dumps(shown) if isinstance(shown, str) else str(shown)


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
