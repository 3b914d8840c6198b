"""`consortium demo`: a 4-member PBFT network of real processes, several clients, an audit.

What a newcomer sees: the network is written and started, clients submit signed transactions
with a progress line, then each member's height and head hash are printed side by side and every
member's ledger is audited offline from the genesis file alone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import trio
import typer

from consortium.cli.network import LocalNetwork, init_network, load_client_setup
from consortium.cli.progress import live_bar
from consortium.client import ConsortiumClient
from consortium.crypto.keys import KeyPair
from consortium.ledger.audit import audit_ledger
from consortium.ledger.genesis import Genesis, Mode
from consortium.ledger.tx import Put, Transaction
from consortium.node.genesis import load_genesis

CHUNK = 50  # transactions one client submits before waiting for them


async def wait_until_up(
    genesis: Genesis,
    timeout_s: float,
    options: dict[str, Any] | None = None,
    members: list[int] | None = None,
) -> None:
    """Every member (of `members`, indexes; all by default) answers status (its client port
    is open and its core is running). `options`: ConsortiumClient keyword arguments
    (ClientSetup.client_options())."""
    deadline = trio.current_time() + timeout_s
    async with ConsortiumClient(genesis, **(options or {})) as client:
        for i in range(genesis.n) if members is None else members:
            while True:
                try:
                    await client.status(i, 1.0)
                    break
                except Exception:
                    if trio.current_time() > deadline:
                        raise RuntimeError(
                            f"member {genesis.members[i].name} did not come up within "
                            f"{timeout_s:.0f} s; see its node.log"
                        ) from None
                    await trio.sleep(0.2)


async def drive(
    genesis: Genesis, keys: list[KeyPair], total: int, progress: bool = True
) -> tuple[int, int, float]:
    """Submit `total` transactions spread over the clients; returns (ok, not ok, seconds)."""
    per_client = [
        total // len(keys) + (1 if i < total % len(keys) else 0) for i in range(len(keys))
    ]
    committed = 0
    failed = 0
    started = time.monotonic()

    # On a terminal, a live bar with the rate (standard error); piped, the plain lines.
    bar = live_bar(total, "committed", "tx", enabled=progress)
    tty = sys.stdout.isatty()
    shown = [0]

    def show() -> None:
        if not progress:
            return
        done = committed + failed
        if bar is not None:
            bar.update(done, rated=committed)
            return
        rate = committed / max(1e-6, time.monotonic() - started)
        progress_bar = "#" * int(30 * done / max(1, total))
        line = f"  [{progress_bar:<30}] {committed}/{total} committed  {rate:,.0f} tx/s"
        if tty:
            typer.echo("\r" + line, nl=False)
        elif done >= shown[0] + max(1, total // 4) or done == total:
            shown[0] = done
            typer.echo(line)

    async def one_client(k: KeyPair, count: int, ci: int) -> None:
        nonlocal committed, failed
        async with ConsortiumClient(genesis, k) as client:
            sent = 0
            while sent < count:
                n = min(CHUNK, count - sent)
                txs: list[Transaction] = [
                    client.make_tx(
                        [Put(f"c{ci}/k{sent + j}".encode(), f"value {sent + j}".encode())]
                    )
                    for j in range(n)
                ]
                outcomes = await client.submit_and_wait(txs, timeout_s=30.0)
                for o in outcomes:
                    if (
                        o.status == "committed"
                        and o.receipt is not None
                        and o.receipt.status == "ok"
                    ):
                        committed += 1
                    else:
                        failed += 1
                sent += n
                show()

    try:
        async with trio.open_nursery() as nursery:
            for ci, (k, count) in enumerate(zip(keys, per_client, strict=True)):
                nursery.start_soon(one_client, k, count, ci)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.monotonic() - started
    if progress and tty and bar is None:
        typer.echo("")
    return committed, failed, elapsed


async def wait_for_leader(genesis: Genesis, timeout_s: float) -> int:
    """raft: the member that reports itself leader, once one is elected."""
    async with ConsortiumClient(genesis) as client:
        return await client.find_leader(timeout_s=timeout_s)


async def heights(
    genesis: Genesis, members: list[int], options: dict[str, Any] | None = None
) -> dict[int, int]:
    """Each member's current height, from its status."""
    out: dict[int, int] = {}
    async with ConsortiumClient(genesis, **(options or {})) as client:
        for i in members:
            out[i] = int((await client.status(i, 2.0))["height"])
    return out


async def wait_same_height(
    genesis: Genesis,
    members: list[int],
    timeout_s: float,
    options: dict[str, Any] | None = None,
) -> int:
    """Wait until the members report one height (the last commits reached everyone)."""
    with trio.fail_after(timeout_s):
        while True:
            hs = await heights(genesis, members, options)
            if len(set(hs.values())) == 1:
                return next(iter(hs.values()))
            await trio.sleep(0.1)


async def member_metrics(genesis: Genesis) -> list[tuple[str, dict[str, object]]]:
    async with ConsortiumClient(genesis) as client:
        return [(m.name, (await client.status(m.index, 2.0))["metrics"]) for m in genesis.members]


def run_demo(
    directory: Path, *, members: int, clients: int, txs: int, keep: bool, mode: Mode = "pbft"
) -> bool:
    typer.echo(f"== writing a {members}-member {mode.upper()} network in {directory}")
    genesis = init_network(directory, members=members, clients=clients, mode=mode, force=True)
    setup = load_client_setup(directory)
    typer.echo(
        f"   chain id {genesis.chain_id.hex()[:16]}…, n={genesis.n}, f={genesis.f}, "
        f"quorum {genesis.quorum}"
    )
    network = LocalNetwork(directory)
    ok = True
    try:
        network.start()
        typer.echo(f"== started {members} member processes (logs: {directory}/nodes/*/node.log)")
        trio.run(wait_until_up, genesis, 30.0)
        if genesis.mode == "raft":
            trio.run(wait_for_leader, genesis, 30.0)  # the first election takes E..2E
        typer.echo(f"== {clients} clients submit {txs} signed transactions")
        committed, failed, elapsed = trio.run(drive, genesis, setup.keys(), txs)
        typer.echo(
            f"   {committed} committed, {failed} not, in {elapsed:.2f} s: "
            f"{committed / elapsed:,.0f} committed tx/s"
        )
        ok = failed == 0 and committed == txs
        # Let the last block's commits reach every member, then stop them cleanly.
        trio.run(wait_same_height, genesis, list(range(genesis.n)), 20.0)
        metrics = trio.run(member_metrics, genesis)
        for name, figures in metrics:
            typer.echo(
                f"   {name}: {figures['fsyncs_per_block']} fsyncs per block (one per core step), "
                f"{figures['signatures_verified']} client signatures verified"
            )
    finally:
        codes = network.stop()
    if any(c not in (0, None) for c in codes.values()):
        typer.echo(f"   member exit codes: {codes}", err=True)
    typer.echo("== each member's ledger")
    heads: set[tuple[int, bytes]] = set()
    for m in genesis.members:
        home = directory / "nodes" / m.name
        report = audit_ledger(
            home / "data" / "ledger.sqlite", load_genesis(home / "config" / "genesis.json")
        )
        heads.add((report.height, report.head_hash))
        verdict = (
            f"verify OK ({report.certificates_checked} certificates)"
            if report.ok
            else f"verify FAILED at {report.problem.height if report.problem else '?'}: "
            f"{report.problem.reason if report.problem else ''}"
        )
        typer.echo(
            f"   {m.name}: height {report.height:>5}  "
            f"head {report.head_hash.hex()[:16]}…  {verdict}"
        )
        ok = ok and report.ok
    if len(heads) != 1:
        typer.echo("   members disagree on the head", err=True)
        ok = False
    typer.echo("== " + ("all ledgers identical and verified" if ok else "DEMO FAILED"))
    if not keep:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
    return ok
