"""Local networks: `consortium init` writes one, `consortium up` runs it as OS processes.

Layout written by init (the network directory, `./net` by default):

    genesis.json                the network; its hash is the chain id
    client.toml                 what client commands read: genesis path, client key files, and
                                whether the members' client ports use TLS (`tls = true`)
    clients/<name>.pem          client keys (PKCS#8 PEM, mode 0600)
    nodes/<name>/config/        node.toml (with an [http] listener on loopback), node_key.pem,
                                genesis.json
    gateways.json               with --gateway: each member's HTTP/JSON gateway URL
                                (docs/gateway.md), client configuration like client.toml
    nodes/<name>/data/          the block store and consensus state
    nodes/<name>/node.log       the node's log when started by `consortium up`
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from consortium.crypto.keys import KeyPair
from consortium.ledger.genesis import Client, Genesis, Member, Mode, Params


class NetworkError(RuntimeError):
    """A network directory that cannot be used; the message says what to do."""


HTTP_PORT_BASE = 9301  # with --hosts: member i serves /healthz, /metrics on 127.0.0.1:9301+i
GATEWAY_PORT_OFFSET = 100  # with --hosts: a member's gateway port is its client port + 100
GATEWAYS_FILE = "gateways.json"


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL = (32768, 60999)  # Linux's default, where the file cannot be read
LOWEST_CHOSEN = 10000  # below: ports registered to well-known services, more often in use


def ephemeral_range(path: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's ephemeral port range (first, last): where it picks the local port of
    every outgoing connection, so a port chosen there may be taken by one before the member
    that was given it starts."""
    try:
        first, last = (int(x) for x in path.read_text().split())
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
    return (first, last) if 0 < first <= last <= 65535 else DEFAULT_EPHEMERAL


def free_ports(
    count: int, host: str = "127.0.0.1", *, ephemeral: tuple[int, int] | None = None
) -> list[int]:
    """Ports free now, all distinct, outside the kernel's ephemeral range (above): random
    ports from 10000 to 65535 that are not in it, each bound together with the others (so
    free at once and distinct), then released."""
    first, last = ephemeral or ephemeral_range()
    candidates = [
        *range(LOWEST_CHOSEN, min(first, 65536)),
        *range(max(last + 1, LOWEST_CHOSEN), 65536),
    ]
    if len(candidates) < count:
        raise NetworkError(
            f"the kernel's ephemeral port range {first}-{last} leaves fewer than {count} "
            f"ports from {LOWEST_CHOSEN} up; narrow it (net.ipv4.ip_local_port_range) or "
            "give addresses with --hosts"
        )
    chooser = random.SystemRandom()
    with ExitStack() as stack:
        ports: list[int] = []
        for port in chooser.sample(candidates, len(candidates)):
            if len(ports) == count:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((host, port))
            except OSError:
                s.close()
                continue  # in use (or reserved): another
            stack.enter_context(s)
            ports.append(port)
        if len(ports) < count:
            raise NetworkError(f"fewer than {count} free ports on {host} outside {first}-{last}")
        return ports


def init_network(
    directory: Path,
    *,
    members: int,
    clients: int = 3,
    mode: Mode = "pbft",
    chain_name: str = "local",
    host: str = "127.0.0.1",
    params: Params | None = None,
    force: bool = False,
    tls: bool = False,
    addresses: Sequence[tuple[str, str]] | None = None,
    listen_host: str | None = None,
    gateway: bool = False,
) -> Genesis:
    """A whole network in `directory`. Loopback ports chosen free, or, for members on
    separate hosts, `addresses` (peer, client) per member (`deployment.hosts_addresses`); each
    node then listens on its own address, or on `listen_host` with the same port. `gateway`:
    each member also serves the HTTP/JSON gateway (on a free loopback port, or with
    `addresses` on its client host at the client port + GATEWAY_PORT_OFFSET), and
    gateways.json lists their URLs."""
    # Imported here: every client command reads client.toml through this module, and needs
    # neither the node's config writer nor the block store behind mark_new.
    from consortium.node.config import write_config
    from consortium.node.preflight import mark_new

    if addresses is not None and len(addresses) != members:
        raise NetworkError(f"{len(addresses)} hosts given for {members} members")
    gateways: list[str] = []  # each member's gateway address, host:port
    if addresses is not None and gateway:
        gateways = gateway_addresses(addresses)  # (checked before anything is written)
    if directory.exists() and any(directory.iterdir()):
        if not force:
            raise NetworkError(
                f"{directory} already exists and is not empty; choose another --dir or pass "
                "--force to replace it"
            )
        running = running_members(directory)
        if running:
            names = ", ".join(f"{name} (process {pid})" if pid else name for name, pid in running)
            raise NetworkError(
                f"{directory}: members of this network are running: {names}; stop them first "
                "(Ctrl-C in `consortium up`, or stop each `node start`); nothing was deleted"
            )
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Per member: peer, client and HTTP (health/metrics) ports, all distinct. The HTTP
    # listener is plain and unauthenticated, so init puts it on loopback whatever the hosts.
    if addresses is None:
        ports = free_ports((4 if gateway else 3) * members, host)
        addresses = [
            (f"{host}:{ports[2 * i]}", f"{host}:{ports[2 * i + 1]}") for i in range(members)
        ]
        http_ports = (
            ports[2 * members : 3 * members] if host == "127.0.0.1" else free_ports(members)
        )
        if gateway:
            gateways = [f"{host}:{p}" for p in ports[3 * members :]]
    else:
        http_ports = [HTTP_PORT_BASE + i for i in range(members)]  # one host each
    member_keys = [KeyPair.generate() for _ in range(members)]
    member_list = tuple(
        Member(
            index=i,
            name=f"n{i + 1}",
            public_key=k.public,
            peer_address=addresses[i][0],
            client_address=addresses[i][1],
        )
        for i, k in enumerate(member_keys)
    )
    client_keys = [KeyPair.generate() for _ in range(clients)]
    client_list = tuple(Client(f"c{i + 1}", k.public) for i, k in enumerate(client_keys))
    genesis = Genesis(
        chain_name=chain_name,
        mode=mode,
        created_ms=int(time.time() * 1000),
        members=member_list,
        clients=client_list,
        params=params or Params(),
    )
    from consortium.node.genesis import validate_genesis  # (sizes frames: imports the cores)

    validate_genesis(genesis, str(directory / "genesis.json"))
    text = write_client_side(directory, genesis, client_keys, tls=tls)
    for k, m in zip(member_keys, member_list, strict=True):
        home = directory / "nodes" / m.name
        write_config(
            home,
            name=m.name,
            peer_listen=_listen(m.peer_address, listen_host),
            client_listen=_listen(m.client_address, listen_host),
            http_listen=f"127.0.0.1:{http_ports[m.index]}",
            gateway_listen=_listen(gateways[m.index], listen_host) if gateway else None,
            tls=tls,
        )
        k.save(home / "config" / "node_key.pem")
        (home / "config" / "genesis.json").write_text(text)
        mark_new(home / "data")  # its first start needs no recovery (node/preflight.py)
    if gateway:
        write_gateways(directory, genesis, gateways, tls=tls)
    return genesis


def gateway_addresses(addresses: Sequence[tuple[str, str]]) -> list[str]:
    """Each member's gateway address with --hosts: its client port + GATEWAY_PORT_OFFSET on its
    client host. NetworkError, in one line, when one is another listener's address (a peer
    or client port of a member on that host, another gateway) or its member's HTTP port, or no
    port at all: e.g. --client-port 7000 --peer-port 7100."""
    taken: dict[str, str] = {}
    for i, (peer, client) in enumerate(addresses):
        taken[peer] = f"n{i + 1}'s peer port"
        taken[client] = f"n{i + 1}'s client port"
    gateways = []
    for i, (_, client) in enumerate(addresses):
        client_host, _, client_port = client.rpartition(":")
        port = int(client_port) + GATEWAY_PORT_OFFSET
        address = f"{client_host}:{port}"
        clash = (
            "beyond 65535"
            if port > 65535
            else taken.get(address)
            or (f"n{i + 1}'s HTTP port" if port == HTTP_PORT_BASE + i else None)
        )
        if clash:
            raise NetworkError(
                f"--gateway: n{i + 1}'s gateway port {port} (its client port + "
                f"{GATEWAY_PORT_OFFSET}) is {clash} on {client_host}; choose --client-port "
                "and --peer-port so that no port is another's + 100"
            )
        taken[address] = f"n{i + 1}'s gateway port"
        gateways.append(address)
    return gateways


def write_gateways(
    directory: Path, genesis: Genesis, gateways: Sequence[str], *, tls: bool
) -> Path:
    """gateways.json (docs/gateway.md): the chain id and each member's gateway URL, in genesis
    order. Client configuration, never trusted: a client believes what f+1 members signed."""
    import json

    scheme = "https" if tls else "http"
    doc = {
        "chain_id": genesis.chain_id.hex(),
        "gateways": [
            {"member": m.name, "url": f"{scheme}://{address}"}
            for m, address in zip(genesis.members, gateways, strict=True)
        ],
    }
    path = directory / GATEWAYS_FILE
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def running_members(directory: Path) -> list[tuple[str, int]]:
    """The members under `directory`/nodes whose data directory is locked by a running
    process (node/datalock.py), with its PID (0 if not yet written). Writes nothing."""
    from consortium.node.config import ConfigError, load_config
    from consortium.node.datalock import held_by

    nodes = directory / "nodes"
    if not nodes.is_dir():
        return []
    running: list[tuple[str, int]] = []
    for home in sorted(nodes.iterdir(), key=lambda p: (len(p.name), p.name)):
        if not home.is_dir():
            continue
        data_dirs = {home / "data"}
        # node.toml may name another data_dir: both are this member's. A broken node.toml
        # names none, and the default one is still checked.
        with contextlib.suppress(ConfigError, OSError, ValueError):
            data_dirs.add(load_config(home).data_dir)
        for data in sorted(data_dirs):
            pid = held_by(data)
            if pid is not None:
                running.append((home.name, pid))
                break
    return running


def write_client_side(
    directory: Path, genesis: Genesis, client_keys: Sequence[KeyPair], *, tls: bool = False
) -> str:
    """genesis.json, clients/<name>.pem and client.toml in `directory`; the genesis text."""
    text = genesis.to_json()
    (directory / "genesis.json").write_text(text)
    for k, c in zip(client_keys, genesis.clients, strict=True):
        k.save(directory / "clients" / f"{c.name}.pem")
    (directory / "client.toml").write_text(client_toml(genesis, tls=tls))
    return text


def client_toml(genesis: Genesis, *, tls: bool = False) -> str:
    """client.toml's text for `genesis`'s clients (keys under clients/): a comment saying who
    reads it, then the settings as tomli_w writes them (quoted and escaped as TOML needs)."""
    import tomli_w

    doc: dict[str, Any] = {
        "genesis": "genesis.json",
        "keys": [f"clients/{c.name}.pem" for c in genesis.clients],
    }
    if tls:
        doc["tls"] = True
    return (
        "# Read by `consortium tx`, `status` and `demo`: the network's genesis, the client key\n"
        "# files (`--client N` picks the Nth, `tx submit --key FILE` another)"
        + (", and tls = true: the\n# members' client ports use TLS (docs/tls.md)" if tls else "")
        + ".\n"
        + tomli_w.dumps(doc)
    )


def _listen(advertised: str, listen_host: str | None) -> str:
    if listen_host is None:
        return advertised
    port = advertised.rpartition(":")[2]
    return f"[{listen_host}]:{port}" if ":" in listen_host else f"{listen_host}:{port}"


@dataclass(frozen=True, slots=True)
class ClientSetup:
    directory: Path
    genesis: Genesis
    key_paths: tuple[Path, ...]
    tls: bool = False
    genesis_path: Path | None = None  # the genesis file client.toml names

    def keys(self) -> list[KeyPair]:
        """Every client key of client.toml (demo and bench drive them all)."""
        return [self.key(i) for i in range(1, len(self.key_paths) + 1)]

    def key(self, number: int) -> KeyPair:
        """Client key `number` (1-based) of client.toml, and only that one: a missing or
        broken other key file breaks no command that does not use it."""
        if not 1 <= number <= len(self.key_paths):
            raise NetworkError(
                f"{self.directory / 'client.toml'}: no client key {number}; 'keys' lists "
                f"{len(self.key_paths)} (--client 1..{len(self.key_paths)})"
            )
        path = self.key_paths[number - 1]
        if not path.exists():
            raise NetworkError(
                f"{path}: no such key file (client key {number} of "
                f"{self.directory / 'client.toml'}); restore it, remove it from 'keys', or "
                "choose another with --client N or --key FILE"
            )
        return KeyPair.load(path)

    def client_options(self, keys: KeyPair | None = None) -> dict[str, Any]:
        """ConsortiumClient keyword arguments this network needs: with TLS, the key whose
        certificate the client presents (`keys`, else the first client key)."""
        if not self.tls:
            return {}
        if keys is None:
            if not self.key_paths:
                raise NetworkError(
                    f"{self.directory / 'client.toml'}: tls = true needs a client key to "
                    "present, but 'keys' lists none"
                )
            # The first key whose file is there: one missing file does not stop `status`.
            present = [i for i, p in enumerate(self.key_paths, 1) if p.exists()]
            keys = self.key(present[0] if present else 1)
        return {"tls_keys": keys}


def load_client_setup(directory: Path) -> ClientSetup:
    path = directory / "client.toml"
    if not path.exists():
        raise NetworkError(
            f"{path}: no client configuration; run `consortium init --dir {directory}` first, "
            "or point --net at a network directory"
        )
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise NetworkError(
            f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}); "
            "client.toml is UTF-8 TOML"
        ) from None
    except OSError as exc:
        raise NetworkError(f"{path}: cannot read client configuration ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise NetworkError(f"{path}: not valid TOML: {exc}") from None
    for key in doc:
        if key not in ("genesis", "keys", "tls"):
            raise NetworkError(f"{path}: unknown key '{key}' (known: genesis, keys, tls)")
    tls = doc.get("tls", False)
    if not isinstance(tls, bool):
        raise NetworkError(
            f"{path}: 'tls' must be true or false (whether the members' client ports use TLS)"
        )
    genesis_file = doc.get("genesis")
    keys = doc.get("keys", [])
    if not isinstance(genesis_file, str) or not isinstance(keys, list):
        raise NetworkError(f"{path}: 'genesis' must be a path and 'keys' a list of paths")
    from consortium.node.genesis import load_genesis  # (with the frame check)

    genesis = load_genesis(directory / genesis_file)
    return ClientSetup(
        directory, genesis, tuple(directory / str(k) for k in keys), tls, directory / genesis_file
    )


def node_homes(directory: Path) -> list[Path]:
    nodes = directory / "nodes"
    if not nodes.is_dir():
        raise NetworkError(f"{nodes}: no node homes; run `consortium init --dir {directory}` first")
    homes = sorted(p for p in nodes.iterdir() if (p / "config" / "node.toml").exists())
    # n1, n2, ..., n10 in numeric order
    return sorted(homes, key=lambda p: (len(p.name), p.name))


class LocalNetwork:
    """N member processes (`python -m consortium node start --home ...`), logs to node.log."""

    def __init__(self, directory: Path, *, log_level: str = "info") -> None:
        self.directory = directory
        self.homes = node_homes(directory)
        self.log_level = log_level
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str | None = None, *, faults: tuple[str, ...] = ()) -> None:
        """Start every member (or `name`) that is not running. With `faults` (tests and
        `bench --byzantine` only), the members started run under the test entry point with
        those options (python -m consortium.testing.member: --byzantine, --partition-file,
        --clock-offset-file) instead of `consortium node start`."""
        for home in self.homes:
            if name is not None and home.name != name:
                continue
            proc = self.procs.get(home.name)
            if proc is not None and proc.poll() is None:
                continue
            log = (home / "node.log").open("ab")
            command = (
                ["-m", "consortium.testing.member", "--home", str(home), *faults]
                if faults
                else ["-m", "consortium", "node", "start", "--home", str(home)]
            )
            self.procs[home.name] = subprocess.Popen(
                [sys.executable, *command],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                # Its own session: a Ctrl-C in the terminal reaches `up` only, which then
                # stops every member in order with SIGTERM.
                start_new_session=True,
            )
            log.close()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        proc.send_signal(sig)
        proc.wait(timeout=10)

    def stop(self, timeout_s: float = 10.0) -> dict[str, int | None]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes: dict[str, int | None] = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        return codes

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def http_address(self, name: str) -> tuple[str, int] | None:
        """Where member `name` answers GET /readyz (node.toml [http]), or None without it.
        Raises NetworkError if its node.toml cannot be read (its start says why: node.log)."""
        from consortium.node.config import ConfigError, load_config

        try:
            listen = load_config(self.directory / "nodes" / name).http_listen
        except (ConfigError, OSError, ValueError) as exc:
            raise NetworkError(str(exc)) from None
        if listen is None:
            return None
        host, port = listen
        return ({"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host), port)

    def readiness(self, name: str, timeout_s: float = 1.0) -> tuple[int, str] | None:
        """Member `name`'s answer to GET /readyz: (HTTP status, first line), or None while
        it does not answer (not listening yet) or has no [http] listener."""
        import http.client

        try:
            address = self.http_address(name)
        except NetworkError:
            return None
        if address is None:
            return None
        conn = http.client.HTTPConnection(*address, timeout=timeout_s)
        try:
            conn.request("GET", "/readyz")
            reply = conn.getresponse()
            body = reply.read(4096).decode("utf-8", "replace")
            return reply.status, (body.splitlines() or [""])[0]
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def log_tail(self, name: str, lines: int = 5) -> list[str]:
        """The last `lines` lines of member `name`'s node.log (its last 64 KB read)."""
        path = self.directory / "nodes" / name / "node.log"
        try:
            with path.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.strip()][-lines:]

    def __enter__(self) -> LocalNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def with_params(genesis: Genesis, **changes: int) -> Genesis:
    return replace(genesis, params=replace(genesis.params, **changes))
