"""`consortium`: run a network, submit signed transactions, watch it, audit its ledger."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import trio
import typer

from consortium.cli import output
from consortium.cli.clients import clients_app
from consortium.cli.network import (
    ClientSetup,
    LocalNetwork,
    NetworkError,
    init_network,
    load_client_setup,
)
from consortium.cli.sim import sim as sim_command
from consortium.crypto.keys import InvalidKeyError, KeyPair
from consortium.ledger.genesis import MODES, Genesis, GenesisError
from consortium.ledger.store import StoreError
from consortium.node.config import ConfigError
from consortium.node.genesis import load_genesis

if TYPE_CHECKING:
    from consortium.cli.bench import BenchConfig, BenchRun
    from consortium.node.client import TxOutcome

app = typer.Typer(
    help="Consortium: a permissioned ledger node ordering client-signed transactions "
    "with PBFT (Byzantine faults) or Raft (crash faults).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
node_app = typer.Typer(help="Run one member.", no_args_is_help=True)
tx_app = typer.Typer(
    help="Sign and submit transactions; their status and receipts; verify a receipt offline.",
    no_args_is_help=True,
)
ledger_app = typer.Typer(
    help="Audit a ledger offline; follow committed blocks.", no_args_is_help=True
)
leader_app = typer.Typer(help="Raft leadership (maintenance).", no_args_is_help=True)
app.add_typer(leader_app, name="leader")
bench_app = typer.Typer(
    help="Benchmark real member processes on loopback: one mode, or pbft against raft."
)
app.add_typer(bench_app, name="bench")
app.add_typer(node_app, name="node")
app.add_typer(tx_app, name="tx")
app.add_typer(ledger_app, name="ledger")
app.add_typer(clients_app, name="client")
app.command("sim")(sim_command)

NetOpt = Annotated[
    Path,
    typer.Option(
        "--net",
        envvar="CONSORTIUM_NET",
        help="Network directory written by `consortium init` (holds client.toml).",
    ),
]

EXIT_USAGE = 2
EXIT_FAILED = 1


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def init(
    directory: Annotated[Path, typer.Option("--dir", help="Where to write the network.")] = Path(
        "net"
    ),
    members: Annotated[
        int | None, typer.Option(help="Number of members (default: 4 for pbft, 3 for raft).")
    ] = None,
    clients: Annotated[int, typer.Option(help="Client keys to admit in genesis.")] = 3,
    mode: Annotated[str, typer.Option(help="Consensus: pbft or raft.")] = "pbft",
    chain_name: Annotated[str, typer.Option(help="A name for the network.")] = "local",
    force: Annotated[bool, typer.Option(help="Replace an existing directory.")] = False,
    tls: Annotated[
        bool,
        typer.Option(
            help="TLS 1.3 on every peer and client port, mutual, keys pinned by genesis "
            "(docs/tls.md)."
        ),
    ] = False,
    hosts: Annotated[
        str | None,
        typer.Option(
            help="Members on separate hosts: one address or DNS name per member, comma "
            "separated (n1 first). Default: every member on 127.0.0.1, ports chosen free."
        ),
    ] = None,
    peer_port: Annotated[int, typer.Option(help="With --hosts: the peer port.")] = 7101,
    client_port: Annotated[int, typer.Option(help="With --hosts: the client port.")] = 7201,
    listen_host: Annotated[
        str | None,
        typer.Option(help="With --hosts: listen here (e.g. 0.0.0.0) instead of on the host."),
    ] = None,
) -> None:
    """Write a network in one directory: keys, genesis, one node home per member, client
    config. Without --hosts it runs on this machine (`consortium up`); with --hosts, copy
    nodes/<name> to each host and run `consortium node start --home` there. Members that do
    not share keys use `consortium keygen` and `consortium genesis` instead."""
    from consortium.cli.deployment import hosts_addresses

    if mode not in MODES:
        raise _fail(f"--mode must be one of {', '.join(MODES)}")
    addresses = None
    try:
        if hosts is not None:
            host_list = [h.strip() for h in hosts.split(",") if h.strip()]
            if members is not None and members != len(host_list):
                raise _fail(f"--members {members} but --hosts names {len(host_list)} hosts")
            members = len(host_list)
            addresses = hosts_addresses(host_list, peer_port, client_port)
        elif listen_host is not None:
            raise _fail("--listen-host goes with --hosts")
        if members is None:
            members = 4 if mode == "pbft" else 3
        genesis = init_network(
            directory,
            members=members,
            clients=clients,
            mode="pbft" if mode == "pbft" else "raft",
            chain_name=chain_name,
            force=force,
            tls=tls,
            addresses=addresses,
            listen_host=listen_host,
        )
    except (NetworkError, GenesisError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(
        f"wrote {directory}: {genesis.mode} network of {genesis.n} members "
        f"(f={genesis.f}, quorum {genesis.quorum}), {len(genesis.clients)} clients, "
        f"chain id {genesis.chain_id.hex()[:16]}…" + (", TLS on every port" if tls else "")
    )
    output.endpoint_table(genesis, directory)
    if addresses is None:
        typer.echo(f"next: consortium up --net {directory}")
    else:
        typer.echo(
            f"next: copy {directory}/nodes/<name> to each member's host (it holds that "
            "member's private key), then there: consortium node check --home DIR; "
            "consortium node start --home DIR"
        )


@app.command()
def keygen(
    home: Annotated[Path, typer.Option("--home", help="The new member's home directory.")],
    name: Annotated[str, typer.Option(help="The member's name in genesis, e.g. n1.")],
    peer: Annotated[str, typer.Option(help="host:port other members dial, e.g. 10.0.0.1:7101.")],
    client: Annotated[str, typer.Option(help="host:port clients dial, e.g. 10.0.0.1:7201.")],
    listen_host: Annotated[
        str | None,
        typer.Option(help="Listen here (e.g. 0.0.0.0) instead of on --peer/--client's host."),
    ] = None,
) -> None:
    """Create a member on its own host: a new key (config/node_key.pem, mode 0600, encrypted
    if CONSORTIUM_KEY_PASSPHRASE is set), config/node.toml, and config/member.json with the
    public key and addresses to send to whoever assembles genesis (`consortium genesis`)."""
    from consortium.cli.deployment import key_passphrase, member_file
    from consortium.cli.deployment import keygen as make_member

    try:
        member = make_member(
            home,
            name=name,
            peer_address=peer,
            client_address=client,
            listen_host=listen_host,
            passphrase=key_passphrase(),
        )
    except NetworkError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"member {member.name}: public key {member.public_key.hex()}")
    typer.echo(f"  peers dial {member.peer_address}, clients dial {member.client_address}")
    typer.echo(f"wrote {home}/config/node_key.pem (private: never copy it off this host)")
    typer.echo(f"wrote {home}/config/node.toml")
    typer.echo(f"wrote {member_file(home)}: send this file to whoever assembles genesis")


@app.command("genesis")
def genesis_command(
    member: Annotated[
        list[Path],
        typer.Option(
            "--member",
            help="A member's member.json from `consortium keygen` (or its home directory); "
            "once per member, in order: the first is n1, view 0's primary.",
        ),
    ],
    directory: Annotated[
        Path, typer.Option("--dir", help="Where to write genesis.json and client files.")
    ] = Path("net"),
    mode: Annotated[str, typer.Option(help="Consensus: pbft or raft.")] = "pbft",
    clients: Annotated[int, typer.Option(help="Client keys to create and admit.")] = 3,
    chain_name: Annotated[str, typer.Option(help="A name for the network.")] = "consortium",
    force: Annotated[bool, typer.Option(help="Replace an existing genesis.json.")] = False,
) -> None:
    """Assemble genesis.json from the members' public keys and addresses; also client keys and
    a client.toml, so `consortium status/tx --net DIR` work from here. Then copy genesis.json
    to every member's HOME/config/genesis.json."""
    from consortium.cli.deployment import assemble_genesis

    if mode not in MODES:
        raise _fail(f"--mode must be one of {', '.join(MODES)}")
    try:
        genesis = assemble_genesis(
            directory,
            member,
            mode="pbft" if mode == "pbft" else "raft",
            clients=clients,
            chain_name=chain_name,
            force=force,
        )
    except NetworkError as exc:
        raise _fail(str(exc)) from None
    typer.echo(
        f"wrote {directory}/genesis.json: {genesis.mode} network '{genesis.chain_name}' of "
        f"{genesis.n} members (f={genesis.f}, quorum {genesis.quorum}), "
        f"{len(genesis.clients)} clients, chain id {genesis.chain_id.hex()[:16]}…"
    )
    typer.echo(f"{'member':<8} {'peer address':<22} client address")
    for m in genesis.members:
        typer.echo(f"{m.name:<8} {m.peer_address:<22} {m.client_address}")
    typer.echo(
        f"next: copy {directory}/genesis.json to each member's HOME/config/genesis.json, then "
        "on each host: consortium node check --home HOME; consortium node start --home HOME"
    )


@app.command()
def up(net: NetOpt = Path("net")) -> None:
    """Run every member of a local network as its own OS process, until Ctrl-C."""
    try:
        setup = load_client_setup(net)
        network = LocalNetwork(net)
    except (NetworkError, GenesisError) as exc:
        raise _fail(str(exc)) from None
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    network.start()
    typer.echo(f"started {len(network.procs)} members; logs in {net}/nodes/*/node.log")
    output.endpoint_table(setup.genesis, net)
    typer.echo("Ctrl-C stops all members.")
    try:
        while not stop:
            time.sleep(0.2)
            dead = network.dead()
            if len(dead) == len(network.procs):
                typer.echo("all members exited; see their node.log", err=True)
                break
    finally:
        codes = network.stop()
        typer.echo("stopped: " + ", ".join(f"{n} ({c})" for n, c in codes.items()))


@node_app.command("start")
def node_start(
    home: Annotated[Path, typer.Option("--home", help="The member's home directory.")],
    test_byzantine: Annotated[
        str | None,
        typer.Option(
            "--test-byzantine",
            hidden=True,
            help="TESTS ONLY: misbehave as primary (silent-primary, equivocating-primary).",
        ),
    ] = None,
    test_partition_file: Annotated[
        Path | None,
        typer.Option(
            "--test-partition-file",
            hidden=True,
            help="TESTS ONLY: drop all traffic with the members named in this file.",
        ),
    ] = None,
    test_clock_offset_file: Annotated[
        Path | None,
        typer.Option(
            "--test-clock-offset-file",
            hidden=True,
            help="TESTS ONLY: add the milliseconds in this file to the wall clock (re-read).",
        ),
    ] = None,
) -> None:
    """Run one member from its home directory (config/node.toml, node_key.pem, genesis.json)."""
    from consortium.node.runtime import TEST_BYZANTINE_MODES

    if test_byzantine is not None and test_byzantine not in TEST_BYZANTINE_MODES:
        raise _fail(f"--test-byzantine: choose one of {', '.join(TEST_BYZANTINE_MODES)}")
    from consortium.node.config import load_identity
    from consortium.node.logs import setup_logging
    from consortium.node.preflight import check_data_dir, check_listen
    from consortium.node.runtime import make_node

    passphrase = os.environ.get("CONSORTIUM_KEY_PASSPHRASE")
    try:
        identity = load_identity(home, passphrase.encode() if passphrase else None)
        check_data_dir(identity.config, identity.genesis)
        check_listen(identity.config)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    log = setup_logging(identity.member.name, identity.config.log_level, identity.config.log_format)

    async def main() -> None:
        node = make_node(
            identity.config,
            identity.genesis,
            identity.keys,
            log=log,
            test_byzantine=test_byzantine,
            test_partition_file=test_partition_file,
            test_clock_offset_file=test_clock_offset_file,
        )
        if test_byzantine is not None:
            log.warning("TEST MODE: this member misbehaves as primary (%s)", test_byzantine)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                async for signum in signals:
                    log.info("signal %d: stopping", signum)
                    nursery.cancel_scope.cancel()
                    break

    try:
        try:
            trio.run(main)
        except BaseExceptionGroup as group:  # a task's error, wrapped by its nursery
            # Only the errors that say what the operator must fix (a failed write, a broken
            # config) are shown alone; anything else keeps its traceback (it is a bug).
            found = first_leaf(group, (StoreError, ConfigError))
            if found is group:
                raise
            raise found from None
    except (StoreError, ConfigError) as exc:
        raise _fail(str(exc), EXIT_FAILED) from None
    except ValueError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot start member {identity.member.name}: {exc}", EXIT_FAILED) from None


def first_leaf(
    group: BaseExceptionGroup[BaseException], kinds: tuple[type[BaseException], ...]
) -> BaseException:
    """The first exception of one of `kinds` in `group` (depth first), else the group itself:
    a member's disk error surfaces as its one-line message, not an exception group trace."""
    for exc in group.exceptions:
        if isinstance(exc, kinds):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = first_leaf(exc, kinds)
            if found is not exc:
                return found
    return group


@node_app.command("cert")
def node_cert(
    home: Annotated[Path, typer.Option("--home", help="The member's home directory.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the certificate (PEM) to this file.")
    ] = None,
) -> None:
    """Show (or write) the TLS certificate this member presents. It is derived from
    config/node_key.pem and genesis at every start, never read from a file, never expires:
    this is for inspection and for tools such as `openssl s_client` (docs/tls.md)."""
    from consortium.crypto.certs import certificate_fingerprint, certificate_pem, issue_certificate
    from consortium.node.config import load_identity

    passphrase = os.environ.get("CONSORTIUM_KEY_PASSPHRASE")
    try:
        identity = load_identity(home, passphrase.encode() if passphrase else None)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    cert = issue_certificate(identity.keys, identity.member.name, identity.genesis.chain_id)
    config = identity.config
    typer.echo(f"member:       {identity.member.name} (key matches {config.genesis_path})")
    typer.echo(f"public key:   {identity.keys.public.hex()}")
    typer.echo(f"fingerprint:  SHA256 {certificate_fingerprint(cert)}")
    typer.echo(
        f"valid:        {cert.not_valid_before_utc:%Y-%m-%d} to "
        f"{cert.not_valid_after_utc:%Y-%m-%d} (dates are not checked)"
    )
    toml = config.config_dir / "node.toml"
    typer.echo(
        f"tls:          peer port {'on' if config.tls_peer else 'off'}, "
        f"client port {'on' if config.tls_client else 'off'} ({toml} [tls])"
    )
    if out is not None:
        out.write_bytes(certificate_pem(cert))
        typer.echo(f"wrote {out} (for inspection only: the member derives it at start)")


@node_app.command("check")
def node_check(
    home: Annotated[Path, typer.Option("--home", help="The member's home directory.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each peer.")] = 3.0,
) -> None:
    """Check a member's home before starting it (or while it runs): config, key against
    genesis, data directory's network, listen addresses, and whether each peer is reachable.
    Exits 1 on a problem that stops the node from starting; unreachable peers are reported."""
    from consortium.node.config import load_identity
    from consortium.node.preflight import check_data_dir, check_listen, probe_peers

    passphrase = os.environ.get("CONSORTIUM_KEY_PASSPHRASE")
    try:
        identity = load_identity(home, passphrase.encode() if passphrase else None)
        genesis = identity.genesis
        typer.echo(
            f"ok   config, key and genesis: member {identity.member.name} "
            f"({identity.member.index + 1} of {genesis.n}) of {genesis.mode} network "
            f"'{genesis.chain_name}' ({genesis.chain_id.hex()[:12]}…)"
        )
        data = check_data_dir(identity.config, genesis)
        typer.echo(
            f"ok   data directory {identity.config.data_dir}: "
            + (f"this network's ledger, height {data.height}" if data.exists else "empty")
        )
        if data.recovering is not None:
            typer.echo(
                f"note it starts in recovery from {data.recovering}: no vote until it has "
                "learned a view (pbft) or term (raft) above any it can have used "
                "(docs/operations.md, Restoring)"
            )
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_FAILED) from None
    try:
        check_listen(identity.config)
        typer.echo("ok   listen addresses can be bound")
    except ConfigError as exc:
        if "already in use" not in str(exc):
            raise _fail(str(exc), EXIT_FAILED) from None
        typer.echo(f"note {exc} (fine if this member is running)")
    probes = trio.run(probe_peers, identity.config, genesis, identity.member.index, timeout)
    for p in probes:
        if p.error:
            typer.echo(f"warn peer {p.name} at {p.address}: {p.error}")
        else:
            typer.echo(f"ok   peer {p.name} at {p.address} reachable")
    down = [p.name for p in probes if p.error]
    need = genesis.quorum - 1
    reachable = len(probes) - len(down)
    typer.echo(
        f"{reachable} of {len(probes)} peers reachable; this member needs {need} of them "
        "for a quorum"
        + ("" if reachable >= need else ": start them, or fix the addresses or firewall")
    )


@node_app.command("backup")
def node_backup(
    home: Annotated[Path, typer.Option("--home", help="The member's home directory.")],
    to: Annotated[Path, typer.Option("--to", help="The backup file to write (must be new).")],
) -> None:
    """Copy the member's ledger (blocks, state, certificates, its consensus records) to a
    new file, consistently, while the node runs (SQLite's online backup API), then verify
    the copy. The copy is marked as a restored backup: a member started on it votes nothing
    until it has learned a later view or term. Back up config/ (node_key.pem, node.toml,
    genesis.json) separately."""
    from consortium.ledger.backup import backup_store
    from consortium.node.config import load_config

    try:
        config = load_config(home)
        genesis = load_genesis(config.genesis_path)
        result = backup_store(config.store_path, to, genesis)
    except (ConfigError, GenesisError, StoreError) as exc:
        raise _fail(str(exc), EXIT_FAILED) from None
    typer.echo(
        f"backed up {config.store_path} to {result.path}: height {result.height}, head "
        f"{result.head_hash.hex()[:16]}…, {result.size_bytes:,} bytes; verified; marked as a "
        "restored backup (a member started on it recovers first: docs/operations.md, Restoring)"
    )


def _parse_ops(op: str, args: list[str]) -> list[object]:
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
        raise _fail(f"unknown operation '{op}'; one of: {', '.join(usage.values())}")
    if len(args) != arity[op]:
        raise _fail(f"usage: consortium tx submit {usage[op]}")
    if op == "put":
        return [Put(b(args[0]), b(args[1]))]
    if op == "del":
        return [Delete(b(args[0]))]
    if op == "cas":
        return [CompareAndSet(b(args[0]), opt(args[1]), opt(args[2]))]
    return [Get(b(args[0]))]


EXIT_PENDING = 3  # not decided within the wait: it may still commit (never "failed")


def _client_keys(net: Path, client: int) -> tuple[ClientSetup, KeyPair, dict[str, Any]]:
    try:
        setup = load_client_setup(net)
        if not 1 <= client <= len(setup.key_paths):
            raise _fail(f"--client must be 1..{len(setup.key_paths)}")
        keys = setup.keys()[client - 1]
        return setup, keys, setup.client_options(keys)
    except (NetworkError, GenesisError, InvalidKeyError) as exc:
        raise _fail(str(exc)) from None


def _tx_id(text: str) -> bytes:
    try:
        tx_id = bytes.fromhex(text)
    except ValueError:
        tx_id = b""
    if len(tx_id) != 32:
        raise _fail(f"transaction id {text!r}: expected 64 hex digits (as `tx submit` prints)")
    return tx_id


def _write_receipt(outcome: TxOutcome, genesis: Genesis, genesis_path: Path, out: Path) -> None:
    try:
        out.write_text(outcome.receipt_document(genesis))
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc}", EXIT_FAILED) from None
    assert outcome.proof is not None
    typer.echo(
        f"receipt written to {out}: {len(outcome.proof.signatures)} member signatures; "
        f"check it offline with `consortium tx verify-receipt {out} --genesis {genesis_path}`"
    )


def _finish(outcome: TxOutcome, net: Path, as_json: bool, out: Path | None = None) -> None:
    """Print an outcome; exit 0 committed, 1 rejected at submit, 3 pending."""
    output.print_outcome(outcome, as_json=as_json, net=net)
    if outcome.status == "pending":
        raise typer.Exit(EXIT_PENDING)
    if outcome.status == "rejected":
        raise typer.Exit(EXIT_FAILED)
    if out is not None:
        setup = load_client_setup(net)
        _write_receipt(outcome, setup.genesis, setup.genesis_path or net / "genesis.json", out)


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
    wait: WaitOpt = 10.0,
    receipt_out: ReceiptOutOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Sign a transaction, submit it to every member, wait for f+1 matching signed receipts.
    Exit 0 committed (the receipt says whether it took effect), 1 rejected, 3 pending."""
    from consortium.node.client import ConsortiumClient

    ops = _parse_ops(op, args or [])
    setup, keys, options = _client_keys(net, client)

    async def main() -> TxOutcome:
        async with ConsortiumClient(setup.genesis, keys, **options) as c:
            tx = c.make_tx(ops)  # type: ignore[arg-type]
            [tx_id] = await c.submit([tx])
            if not as_json:
                typer.echo(f"submitted {tx_id.hex()}", err=True)
            [outcome] = await c.wait([tx_id], timeout_s=max(0.0, wait))
            await c.flush()  # a submit with --wait 0 still reaches the members
            return outcome

    _finish(trio.run(main), net, as_json, receipt_out)


@tx_app.command("status")
def tx_status(
    tx_id: Annotated[str, typer.Argument(help="The transaction id (hex), as submit printed.")],
    net: NetOpt = Path("net"),
    wait: Annotated[
        float,
        typer.Option("--wait", help="Wait this long for it to commit (default: ask once)."),
    ] = 0.0,
    receipt_out: ReceiptOutOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Ask the members for a transaction's receipt (whoever submitted it): committed once f+1
    members' signed receipts agree (raft: one). Exit 0 committed, 3 not (yet) committed."""
    from consortium.node.client import ConsortiumClient

    wanted = _tx_id(tx_id)
    setup, _, options = _client_keys(net, 1)

    async def main() -> TxOutcome:
        async with ConsortiumClient(setup.genesis, **options) as c:
            outcome = await c.lookup(wanted, timeout_s=5.0)
            if outcome.status == "pending" and wait > 0:
                outcome = await c.wait_one(wanted, timeout_s=wait)
            return outcome

    _finish(trio.run(main), net, as_json, receipt_out)


@tx_app.command("receipt")
def tx_receipt(
    tx_id: Annotated[str, typer.Argument(help="The transaction id (hex), as submit printed.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the receipt document.")],
    net: NetOpt = Path("net"),
    wait: Annotated[
        float, typer.Option("--wait", help="Wait this long for it to commit (default: ask once).")
    ] = 0.0,
) -> None:
    """Fetch a committed transaction's receipt from the members and write the receipt
    document (receipt, Merkle proof, header, f+1 member signatures) for offline checking."""
    tx_status(tx_id, net=net, wait=wait, receipt_out=out, as_json=False)


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
    from consortium.node.receipts import ReceiptFormatError, describe, loads, verify_receipt

    genesis_path = genesis_path or net / "genesis.json"
    try:
        genesis = load_genesis(genesis_path)
    except GenesisError as exc:
        raise _fail(str(exc)) from None
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc}") from None
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
    from consortium.node.client import ClientError, ConsortiumClient

    if from_height < 0:
        raise _fail("--from must be a height (0 or more)")
    if count is not None and count < 1:
        raise _fail("--count must be at least 1")
    try:
        setup = load_client_setup(net)
        options = setup.client_options()
    except (NetworkError, GenesisError, InvalidKeyError) as exc:
        raise _fail(str(exc)) from None
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
        trio.run(main)
    except ClientError as exc:
        raise _fail(str(exc), EXIT_FAILED) from None
    except KeyboardInterrupt:
        pass


@app.command()
def read(
    key: Annotated[str, typer.Argument(help="The key to read.")],
    net: NetOpt = Path("net"),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a quorum.")] = 5.0,
) -> None:
    """Fast-path read: the value a quorum of members sign for KEY right now. For a read
    ordered with writes, use `consortium tx submit get KEY`."""
    from consortium.node.client import ClientError, ConsortiumClient

    try:
        setup = load_client_setup(net)
        options = setup.client_options()
    except (NetworkError, GenesisError, InvalidKeyError) as exc:
        raise _fail(str(exc)) from None

    async def main() -> bytes | None:
        async with ConsortiumClient(setup.genesis, **options) as c:
            return await c.get(key.encode(), timeout_s=timeout)

    try:
        value = trio.run(main)
    except ClientError as exc:
        raise _fail(str(exc), EXIT_FAILED) from None
    typer.echo("(absent)" if value is None else output.show_value(value))


@app.command()
def status(
    net: NetOpt = Path("net"),
    member: Annotated[
        str | None, typer.Option("--member", help="Show one member in detail (its name).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until Ctrl-C.")] = False,
    every: Annotated[
        float, typer.Option("--every", help="Seconds between refreshes with --watch.")
    ] = 2.0,
    count: Annotated[
        int | None, typer.Option("--count", help="With --watch: stop after this many.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each member.")] = 2.0,
) -> None:
    """Mode, view/term, primary/leader, height, checkpoint and peers of every member (or one,
    with --member), the fault budget, and why a member is not making progress, in words.
    A member that does not answer is shown as unreachable."""
    try:
        setup = load_client_setup(net)
        options = setup.client_options()
    except (NetworkError, GenesisError, InvalidKeyError) as exc:
        raise _fail(str(exc)) from None
    genesis = setup.genesis
    members: list[int] | None = None
    if member is not None:
        found = genesis.member_by_name(member)
        if found is None:
            names = ", ".join(m.name for m in genesis.members)
            raise _fail(f"--member: no member named {member!r} (members: {names})")
        members = [found.index]
    if every <= 0:
        raise _fail("--every must be a positive number of seconds")
    shown = 0
    statuses: list[dict[str, object]] = []
    while True:
        try:
            statuses = trio.run(output.collect_status, genesis, timeout, members, options)
        except KeyboardInterrupt:  # Ctrl-C while asking, in --watch: just stop
            break
        if watch and not as_json and shown and os.isatty(1):
            typer.echo("\x1b[2J\x1b[H", nl=False)  # clear the terminal between refreshes
        if as_json:
            doc: object = (
                statuses[0]
                if member is not None
                else {"network": output.network_doc(genesis, statuses), "members": statuses}
            )
            typer.echo(json.dumps(doc, indent=None if watch else 2, default=str))
        elif member is not None:
            output.member_report(statuses[0])
        else:
            output.status_table(genesis, statuses)
        shown += 1
        if not watch or (count is not None and shown >= count):
            break
        if not as_json:
            typer.echo(f"-- {time.strftime('%H:%M:%S')}, every {every:g} s; Ctrl-C stops")
        try:
            time.sleep(every)
        except KeyboardInterrupt:
            break
    if not statuses or all(s.get("error") for s in statuses):
        raise typer.Exit(EXIT_FAILED)


@leader_app.command("transfer")
def leader_transfer(
    to: Annotated[str, typer.Option("--to", help="The member to hand leadership to (name).")],
    home: Annotated[
        Path | None,
        typer.Option("--home", help="A member's home: its key (config/node_key.pem) signs."),
    ] = None,
    net: Annotated[
        Path | None,
        typer.Option(
            "--net",
            envvar="CONSORTIUM_NET",
            help="Instead of --home: a network directory `consortium init` wrote, whose "
            "first member home (nodes/) signs.",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the new leader.")] = 10.0,
) -> None:
    """Raft maintenance: hand leadership to another member (TimeoutNow), e.g. before taking
    the current leader down. Signed with a member's key (CONSORTIUM_KEY_PASSPHRASE if it is
    encrypted) for the leader's current term; a client key cannot move leadership. The leader
    answers when it accepts the transfer (a target that acknowledged nothing for an election
    timeout, or a transfer under way, is refused); this then waits until the target leads."""
    from consortium.node.client import ClientError, ConsortiumClient

    genesis, keys, tls = _member_signer(home, net)
    if genesis.mode != "raft":
        raise _fail(
            "leadership transfer is a raft operation; in pbft the primary changes by "
            "view change only"
        )
    target = genesis.member_by_name(to)
    if target is None:
        raise _fail(
            f"--to: no member named {to!r} (members: {', '.join(m.name for m in genesis.members)})"
        )

    async def main() -> str:
        async with ConsortiumClient(genesis, keys, tls_keys=keys if tls else None) as c:
            await c.wait_connected(timeout_s=min(timeout, 5.0))
            with trio.fail_after(timeout):
                while True:
                    leader = await c.find_leader(timeout_s=timeout)
                    if leader == target.index:
                        return f"{to} already leads"
                    term = (await c.status(leader)).get("term")
                    if not isinstance(term, int):
                        continue
                    try:
                        await c.transfer_leadership(leader, target.index, term, timeout_s=timeout)
                        break
                    except ClientError as exc:
                        # Leadership moved between our status request and the transfer
                        # request: sign again for the new leader's term.
                        if "sign it again" not in str(exc) and "not the leader" not in str(exc):
                            raise
                    await trio.sleep(0.05)
                while True:
                    s = await c.status(target.index)
                    if s.get("role") == "leader":
                        return (
                            f"{to} leads term {s.get('term')} (was {genesis.members[leader].name})"
                        )
                    await trio.sleep(0.05)

    try:
        typer.echo(trio.run(main))
    except ClientError as exc:
        raise _fail(str(exc), EXIT_FAILED) from None
    except trio.TooSlowError:
        raise _fail(f"{to} did not become leader within {timeout:g} s", EXIT_FAILED) from None


def _member_signer(home: Path | None, net: Path | None) -> tuple[Genesis, KeyPair, bool]:
    """(genesis, a member's keys, whether its client port uses TLS) from --home, or from the
    first member home of a network directory `consortium init` wrote; a one-line error for
    anything else (a client key never signs a leadership transfer)."""
    from consortium.cli.deployment import key_passphrase
    from consortium.cli.network import node_homes
    from consortium.node.config import load_config, load_identity

    if home is None and net is not None:
        try:
            homes = node_homes(net)
        except NetworkError:
            homes = []
        if not homes:
            raise _fail(
                f"{net} holds no member home (nodes/): a leadership transfer is signed by a "
                "member's key, never a client's; run it with --home MEMBER_HOME"
            )
        home = homes[0]
    if home is None:
        raise _fail("sign it with a member's key: --home MEMBER_HOME")
    passphrase = key_passphrase()
    try:
        identity = load_identity(home, passphrase)
    except ConfigError as exc:
        with contextlib.suppress(ConfigError, GenesisError, InvalidKeyError, OSError):
            config = load_config(home)
            public = KeyPair.load(config.key_path, passphrase).public
            clients = {c.public_key: c.name for c in load_genesis(config.genesis_path).clients}
            if public in clients:
                raise _fail(
                    f"{config.key_path} is client {clients[public]!r}'s key: a leadership "
                    "transfer is signed by a member's key, never a client's"
                ) from None
        raise _fail(str(exc)) from None
    return identity.genesis, identity.keys, identity.config.tls_client


@ledger_app.command("verify")
def ledger_verify(
    home: Annotated[Path | None, typer.Option("--home", help="A member's home directory.")] = None,
    db: Annotated[Path | None, typer.Option(help="A ledger file (ledger.sqlite).")] = None,
    genesis_path: Annotated[
        Path | None, typer.Option("--genesis", help="The genesis file to audit against.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Audit a ledger from the genesis file alone: hash chain, Merkle roots, every certificate,
    every client signature, and re-execution to the same state roots."""
    from consortium.ledger.audit import audit_ledger

    if home is not None:
        db = db or home / "data" / "ledger.sqlite"
        genesis_path = genesis_path or home / "config" / "genesis.json"
    if db is None or genesis_path is None:
        raise _fail("give --home DIR, or both --db FILE and --genesis FILE")
    if not db.exists():
        raise _fail(f"{db}: no ledger file")
    try:
        genesis = load_genesis(genesis_path)
    except GenesisError as exc:
        raise _fail(str(exc)) from None
    report = audit_ledger(db, genesis)
    output.print_audit(db, report, as_json=as_json)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where to put the demo network.")] = Path(
        "demo-net"
    ),
    members: Annotated[
        int | None, typer.Option(help="Members (default: 4 for pbft, 3 for raft).")
    ] = None,
    clients: Annotated[int, typer.Option(help="Concurrent clients.")] = 4,
    txs: Annotated[int, typer.Option(help="Transactions to submit in all.")] = 2000,
    mode: Annotated[str, typer.Option(help="Consensus: pbft or raft.")] = "pbft",
    keep: Annotated[bool, typer.Option(help="Leave the network directory in place.")] = True,
) -> None:
    """Start a network of real processes (pbft by default), submit signed transactions from
    several clients, show progress, then print every member's height and head hash and audit
    each ledger. Exits 0 only if every ledger is identical and verifies."""
    from consortium.cli.demo import run_demo

    if mode not in MODES:
        raise _fail(f"--mode must be one of {', '.join(MODES)}")
    if members is None:
        members = 4 if mode == "pbft" else 3
    ok = run_demo(
        directory,
        members=members,
        clients=clients,
        txs=txs,
        keep=keep,
        mode="pbft" if mode == "pbft" else "raft",
    )
    if not ok:
        raise typer.Exit(EXIT_FAILED)


def _bench_config(**options: object) -> BenchConfig:
    from consortium.cli.bench import BenchConfig

    return BenchConfig(**options)  # type: ignore[arg-type]


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    mode: Annotated[str, typer.Option(help="pbft or raft.")] = "pbft",
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
        str | None,
        typer.Option(
            help="pbft: run n1 as a test-only Byzantine primary (silent-primary, "
            "equivocating-primary)."
        ),
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

    if mode not in MODES:
        raise _fail(f"--mode must be one of {', '.join(MODES)}")
    if byzantine_primary is not None and mode != "pbft":
        raise _fail("--byzantine-primary is a pbft test mode")
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
        tls=tls,
    )
    try:
        result = run_bench(config)
    except BenchError as exc:
        raise _fail(str(exc), EXIT_FAILED) from None
    for line in table([result]):
        typer.echo(line)
    for line in per_member_lines(result):
        typer.echo(line)
    _bench_verdict([result], as_json)


def _bench_verdict(runs: list[BenchRun], as_json: Path | None) -> None:
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


def _config_doc(run: BenchRun) -> dict[str, object]:
    from dataclasses import asdict

    return asdict(run.config)


@bench_app.command("compare")
def bench_compare(
    members: Annotated[
        str | None,
        typer.Option(help="Sizes as pbft,raft (default 4,3: the same f=1)."),
    ] = None,
    same: Annotated[str, typer.Option(help="f: 3f+1 vs 2f+1; n: the same n for both.")] = "f",
    sweep: Annotated[bool, typer.Option(help="Also n = 7, 10 (pbft) and 5, 7 (raft).")] = False,
    clients: Annotated[int, typer.Option(help="Concurrent clients.")] = 4,
    txs: Annotated[int, typer.Option(help="Transactions per run.")] = 10_000,
    window: Annotated[int, typer.Option(help="Transactions in flight per client.")] = 200,
    payload: Annotated[int, typer.Option(help="Encoded bytes per transaction.")] = 200,
    as_json: Annotated[Path | None, typer.Option("--json", help="Write every figure here.")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Draw the figures against n (PNG or SVG; matplotlib).")
    ] = None,
) -> None:
    """The same workload on pbft and raft networks, one after the other, side by side with the
    ratios and what the protocols predict."""
    from consortium.cli.bench import BenchError, run_bench, table

    if same not in ("f", "n"):
        raise _fail("--same must be f or n")
    if members is not None:
        try:
            p, r = (int(x) for x in members.split(","))
        except ValueError:
            raise _fail("--members: two sizes, pbft,raft, e.g. 4,3") from None
        pairs = [(p, r)]
    else:
        pairs = [(4, 3)] if same == "f" else [(4, 4)]
    if sweep:
        pairs += [(7, 5), (10, 7)] if same == "f" else [(7, 7), (10, 10)]
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise _fail(
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
        raise _fail(str(exc), EXIT_FAILED) from None
    if plot is not None:
        from consortium.cli.bench import draw

        draw(runs, plot)
        typer.echo(f"plot written to {plot}")
    _bench_verdict(runs, as_json)


if __name__ == "__main__":  # pragma: no cover
    app(prog_name="consortium")
