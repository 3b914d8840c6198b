"""Networks whose members run on separate hosts, each operator holding its own key.

`consortium init` writes a whole network in one place, keys included; that suits one operator.
When members do not share keys, the flow is:

    on each member's host    consortium keygen --home DIR --name n1
                                 --peer HOST:7101 --client HOST:7201
                             writes DIR/config/node_key.pem (0600, never leaves the host),
                             DIR/config/node.toml and DIR/config/member.json (name, public
                             key, addresses: the only thing sent to the assembler)
    one person               consortium genesis --dir net --member n1.json --member n2.json ...
                             writes net/genesis.json, client keys and net/client.toml
    on each member's host    copy net/genesis.json to DIR/config/genesis.json, then
                             consortium node check --home DIR; consortium node start --home DIR

The member order given to `genesis` is the member index order (n1 is the first primary).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from consortium.cli.network import NetworkError, write_client_side
from consortium.crypto.keys import KeyPair
from consortium.ledger.genesis import (
    Client,
    Genesis,
    GenesisError,
    Member,
    Mode,
    Params,
    parse_address,
    parse_advertised_address,
)
from consortium.node.config import write_config
from consortium.node.genesis import validate_genesis
from consortium.node.preflight import mark_new

MEMBER_FILE = "member.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def member_file(home: Path) -> Path:
    return home / "config" / MEMBER_FILE


def check_name(name: str, what: str = "--name") -> str:
    if not _NAME.fullmatch(name):
        raise NetworkError(
            f"{what}: '{name}' is not a member name: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. n1, acme-bank)"
        )
    return name


def host_port(host: str, port: int) -> str:
    """'host:port', bracketing an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def listen_address(advertised: str, listen_host: str | None, what: str) -> str:
    """Where the node listens for an address it advertises: the same, or `listen_host`
    (e.g. 0.0.0.0 behind NAT, where the advertised address is not on any interface)."""
    host, port = parse_advertised_address(advertised, what)
    if listen_host is None:
        return host_port(host, port)
    text = host_port(listen_host, port)
    parse_address(text, "--listen-host")
    return text


def keygen(
    home: Path,
    *,
    name: str,
    peer_address: str,
    client_address: str,
    listen_host: str | None = None,
    passphrase: bytes | None = None,
) -> Member:
    """A new member's key and node config in `home`, and its member.json for the assembler.
    Refuses to replace an existing key: a member's key is its identity in genesis."""
    check_name(name)
    try:
        peer_listen = listen_address(peer_address, listen_host, "--peer")
        client_listen = listen_address(client_address, listen_host, "--client")
    except GenesisError as exc:
        raise NetworkError(str(exc)) from None
    if peer_address == client_address:
        raise NetworkError(f"--peer and --client are both {peer_address}; use two ports")
    key_path = home / "config" / "node_key.pem"
    if key_path.exists():
        raise NetworkError(
            f"{key_path} already exists: a member's key is its identity in genesis, so keygen "
            f"never replaces it. Its public key and addresses are in {member_file(home)}; to "
            "start over, move the home directory away"
        )
    keys = KeyPair.generate()
    keys.save(key_path, passphrase)
    write_config(home, name=name, peer_listen=peer_listen, client_listen=client_listen)
    mark_new(home / "data")  # its first start needs no recovery (node/preflight.py)
    member = Member(0, name, keys.public, peer_address, client_address)
    member_file(home).write_text(json.dumps(member.to_doc(), indent=2) + "\n")
    return member


def load_member(path: Path) -> Member:
    """A member.json written by keygen (or a home directory holding one)."""
    if path.is_dir():
        path = member_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise NetworkError(
            f"{path}: cannot read member file ({exc.strerror}); `consortium keygen` writes it "
            "to HOME/config/member.json on the member's host"
        ) from None
    except UnicodeDecodeError as exc:
        raise NetworkError(
            f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}); "
            "a member file is UTF-8 JSON"
        ) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NetworkError(f"{path}: not valid JSON: {exc}") from None
    try:
        return Member.from_doc(doc, 0, str(path))
    except GenesisError as exc:
        raise NetworkError(str(exc)) from None


def assemble_genesis(
    directory: Path,
    member_paths: Sequence[Path],
    *,
    mode: Mode = "pbft",
    clients: int = 3,
    chain_name: str = "consortium",
    params: Params | None = None,
    force: bool = False,
) -> Genesis:
    """genesis.json from the members' member.json files (in that order), with new client keys
    and a client.toml in `directory`, so that `consortium status/tx --net DIR` work there."""
    if not member_paths:
        raise NetworkError("give each member with --member HOME/config/member.json")
    members: list[Member] = []
    where: dict[str, Path] = {}
    for i, path in enumerate(member_paths):
        m = load_member(path)
        if any(path.resolve() == p.resolve() for p in member_paths[:i]):
            raise NetworkError(f"--member {path} is given twice")
        for other in members:
            clash = {m.peer_address, m.client_address} & {other.peer_address, other.client_address}
            problem = (
                "the same name"
                if m.name == other.name
                else "the same public key"
                if m.public_key == other.public_key
                else f"the same address {min(clash)}"
                if clash
                else ""
            )
            if problem:
                raise NetworkError(
                    f"{path} and {where[other.name]} give {problem}; every member needs its own "
                    "name, key (run keygen on each host) and addresses"
                )
        where[m.name] = path
        members.append(Member(i, m.name, m.public_key, m.peer_address, m.client_address))
    _prepare(directory, force)
    client_keys = [KeyPair.generate() for _ in range(clients)]
    taken = {m.name for m in members}
    client_names = [f"c{i + 1}" for i in range(len(client_keys))]
    for c in client_names:
        if c in taken:
            raise NetworkError(f"a member is named {c}, which is a client's name; rename it")
    genesis = Genesis(
        chain_name=chain_name,
        mode=mode,
        created_ms=int(time.time() * 1000),
        members=tuple(members),
        clients=tuple(
            Client(name, k.public) for name, k in zip(client_names, client_keys, strict=True)
        ),
        params=params or Params(),
    )
    try:
        validate_genesis(genesis, str(directory / "genesis.json"))
    except GenesisError as exc:
        raise NetworkError(str(exc)) from None
    write_client_side(directory, genesis, client_keys)
    return genesis


def _prepare(directory: Path, force: bool) -> None:
    if (directory / "genesis.json").exists() and not force:
        raise NetworkError(
            f"{directory / 'genesis.json'} already exists; choose another --dir or pass "
            "--force to replace it (members that started on it must then move their data away)"
        )
    if force:
        # The old network's client keys are admitted by no other genesis.
        shutil.rmtree(directory / "clients", ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)


def hosts_addresses(
    hosts: Sequence[str], peer_port: int, client_port: int
) -> list[tuple[str, str]]:
    """(peer, client) addresses for members on `hosts`, in order; a host named again gets the
    next ports (peer_port+1, client_port+1, ...), so several members may share a host."""
    seen: dict[str, int] = {}
    out: list[tuple[str, str]] = []
    for host in hosts:
        k = seen.get(host, 0)
        seen[host] = k + 1
        peer = host_port(host, peer_port + k)
        client = host_port(host, client_port + k)
        try:
            parse_advertised_address(peer, f"--hosts '{host}'")
            parse_advertised_address(client, f"--hosts '{host}'")
        except GenesisError as exc:
            raise NetworkError(str(exc)) from None
        out.append((peer, client))
    addresses = [a for pair in out for a in pair]
    if len(set(addresses)) != len(addresses):
        raise NetworkError(
            f"--peer-port {peer_port} and --client-port {client_port} are too close for "
            "members sharing a host; leave at least as many ports between them as members"
        )
    return out


def key_passphrase() -> bytes | None:
    value = os.environ.get("CONSORTIUM_KEY_PASSPHRASE")
    return value.encode() if value else None
