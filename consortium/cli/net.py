"""The network commands at the top level: write a network (`init` on one host; `keygen` and
`genesis` across hosts), run it here (`up`), see it (`status`) and try it (`demo`).

The work is in network.py, deployment.py, demo.py and output.py, imported inside each command:
importing this module (for `consortium --help`) loads typer and nothing heavy.
"""

# No `from __future__ import annotations` here: typer would evaluate every string
# annotation of every command at each start (main.py).

import json
import os
import signal
import time
from pathlib import Path
from typing import Annotated, Literal

import typer

from consortium.cli.common import EXIT_FAILED, NetOpt, client_setup, fail


def init(
    directory: Annotated[Path, typer.Option("--dir", help="Where to write the network.")] = Path(
        "net"
    ),
    members: Annotated[
        int | None, typer.Option(help="Number of members (default: 4 for pbft, 3 for raft).")
    ] = None,
    clients: Annotated[int, typer.Option(help="Client keys to admit in genesis.")] = 3,
    mode: Annotated[Literal["pbft", "raft"], typer.Option(help="Consensus.")] = "pbft",
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
    gateway: Annotated[
        bool,
        typer.Option(
            help="Every member also serves the HTTP/JSON gateway (docs/gateway.md); their URLs "
            "go to gateways.json."
        ),
    ] = False,
) -> None:
    """Write a network in one directory: keys, genesis, one node home per member, client
    config. Without --hosts it runs on this machine (`consortium up`); with --hosts, copy
    nodes/<name> to each host and run `consortium node start --home` there. Members that do
    not share keys use `consortium keygen` and `consortium genesis` instead."""
    from consortium.cli import output
    from consortium.cli.deployment import hosts_addresses
    from consortium.cli.network import NetworkError, init_network
    from consortium.ledger.genesis import GenesisError

    addresses = None
    try:
        if hosts is not None:
            host_list = [h.strip() for h in hosts.split(",") if h.strip()]
            if members is not None and members != len(host_list):
                raise fail(f"--members {members} but --hosts names {len(host_list)} hosts")
            members = len(host_list)
            addresses = hosts_addresses(host_list, peer_port, client_port)
        elif listen_host is not None:
            raise fail("--listen-host goes with --hosts")
        if members is None:
            members = 4 if mode == "pbft" else 3
        genesis = init_network(
            directory,
            members=members,
            clients=clients,
            mode=mode,
            chain_name=chain_name,
            force=force,
            tls=tls,
            addresses=addresses,
            listen_host=listen_host,
            gateway=gateway,
        )
    except (NetworkError, GenesisError) as exc:
        raise fail(str(exc)) from None
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
    from consortium.cli.network import NetworkError

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
        raise fail(str(exc)) from None
    typer.echo(f"member {member.name}: public key {member.public_key.hex()}")
    typer.echo(f"  peers dial {member.peer_address}, clients dial {member.client_address}")
    typer.echo(f"wrote {home}/config/node_key.pem (private: never copy it off this host)")
    typer.echo(f"wrote {home}/config/node.toml")
    typer.echo(f"wrote {member_file(home)}: send this file to whoever assembles genesis")


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
    mode: Annotated[Literal["pbft", "raft"], typer.Option(help="Consensus.")] = "pbft",
    clients: Annotated[int, typer.Option(help="Client keys to create and admit.")] = 3,
    chain_name: Annotated[str, typer.Option(help="A name for the network.")] = "consortium",
    force: Annotated[bool, typer.Option(help="Replace an existing genesis.json.")] = False,
) -> None:
    """Assemble genesis.json from the members' public keys and addresses; also client keys and
    a client.toml, so `consortium status/tx --net DIR` work from here. Then copy genesis.json
    to every member's HOME/config/genesis.json."""
    from consortium.cli.deployment import assemble_genesis
    from consortium.cli.network import NetworkError

    try:
        genesis = assemble_genesis(
            directory,
            member,
            mode=mode,
            clients=clients,
            chain_name=chain_name,
            force=force,
        )
    except NetworkError as exc:
        raise fail(str(exc)) from None
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


READY_WAIT_S = 60.0  # how long `up` waits for every member to be ready before it says so


def up(net: NetOpt = Path("net")) -> None:
    """Run every member of a local network as its own OS process, until Ctrl-C. Says when
    each member is ready (its GET /readyz answers 200) with its HTTP port, reports a member
    that exits (its exit code and the end of its node.log), and exits non-zero if every
    member has exited."""
    from consortium.cli import output
    from consortium.cli.network import LocalNetwork, NetworkError, load_client_setup
    from consortium.ledger.genesis import GenesisError

    try:
        setup = load_client_setup(net)
        network = LocalNetwork(net)
    except (NetworkError, GenesisError) as exc:
        raise fail(str(exc)) from None
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    network.start()
    names = list(network.procs)
    typer.echo(f"starting {len(names)} members; logs in {net}/nodes/*/node.log")
    exited: dict[str, int] = {}

    def report_exits() -> None:
        for name in network.dead():
            if name not in exited:
                code = network.procs[name].returncode
                exited[name] = code
                typer.echo(f"{name} exited with code {code}; the end of its node.log:", err=True)
                for line in network.log_tail(name):
                    typer.echo(f"  {line}", err=True)

    all_failed = False
    try:
        waiting = set(names)
        last: dict[str, str] = {}
        deadline = time.monotonic() + READY_WAIT_S
        while waiting and not stop:
            report_exits()
            waiting -= set(exited)
            for name in sorted(waiting, key=names.index):
                try:
                    address = network.http_address(name)
                except NetworkError as exc:  # its start fails on it too: wait for its exit
                    last[name] = str(exc)
                    continue
                if address is None:
                    typer.echo(f"{name} running (no [http] in its node.toml to ask if it is ready)")
                    waiting.discard(name)
                    continue
                answer = network.readiness(name)
                if answer is not None and answer[0] == 200:
                    typer.echo(f"{name} ready: http {address[0]}:{address[1]} ({answer[1]})")
                    waiting.discard(name)
                elif answer is not None:
                    last[name] = answer[1]
            if waiting and time.monotonic() > deadline:
                for name in sorted(waiting, key=names.index):
                    typer.echo(
                        f"{name} running but not ready after {READY_WAIT_S:g} s: "
                        f"{last.get(name, 'its HTTP port does not answer')} (consortium status)"
                    )
                waiting.clear()
            if waiting:
                time.sleep(0.2)
        if not stop:
            report_exits()
            running = len(names) - len(exited)
            if running == 0:
                all_failed = True
                typer.echo("all members exited; none is running", err=True)
            else:
                typer.echo(
                    f"started {running} of {len(names)} members"
                    + (f" ({', '.join(sorted(exited, key=names.index))} exited)" if exited else "")
                )
                output.endpoint_table(setup.genesis, net)
                typer.echo("Ctrl-C stops all members.")
        while not stop and not all_failed:
            time.sleep(0.2)
            report_exits()
            if len(exited) == len(names):
                all_failed = True
                typer.echo("all members exited; none is running", err=True)
    finally:
        codes = network.stop()
        typer.echo("stopped: " + ", ".join(f"{n} ({c})" for n, c in codes.items()))
    if all_failed:
        raise typer.Exit(EXIT_FAILED)


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
    import trio

    from consortium.cli import output

    setup, options = client_setup(net)
    genesis = setup.genesis
    members: list[int] | None = None
    if member is not None:
        found = genesis.member_by_name(member)
        if found is None:
            names = ", ".join(m.name for m in genesis.members)
            raise fail(f"--member: no member named {member!r} (members: {names})")
        members = [found.index]
    if every <= 0:
        raise fail("--every must be a positive number of seconds")
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


def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where to put the demo network.")] = Path(
        "demo-net"
    ),
    members: Annotated[
        int | None, typer.Option(help="Members (default: 4 for pbft, 3 for raft).")
    ] = None,
    clients: Annotated[int, typer.Option(help="Concurrent clients.")] = 4,
    txs: Annotated[int, typer.Option(help="Transactions to submit in all.")] = 2000,
    mode: Annotated[Literal["pbft", "raft"], typer.Option(help="Consensus.")] = "pbft",
    keep: Annotated[bool, typer.Option(help="Leave the network directory in place.")] = True,
) -> None:
    """Start a network of real processes (pbft by default), submit signed transactions from
    several clients, show progress, then print every member's height and head hash and audit
    each ledger. Exits 0 only if every ledger is identical and verifies."""
    from consortium.cli.demo import run_demo

    if members is None:
        members = 4 if mode == "pbft" else 3
    ok = run_demo(
        directory,
        members=members,
        clients=clients,
        txs=txs,
        keep=keep,
        mode=mode,
    )
    if not ok:
        raise typer.Exit(EXIT_FAILED)
