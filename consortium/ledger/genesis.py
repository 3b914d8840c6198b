"""The genesis file: the network's members, clients, mode and parameters.

genesis.json is what operators read and exchange; its identity is the chain id, SHA-256 of the
canonical msgpack encoding of its contents (a fixed-order array, so JSON whitespace or key order
never change it). The chain id is the network id: it is in every signature and checked in the
peer handshake, so two networks never accept each other's messages.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from consortium.crypto.codec import digest_of
from consortium.crypto.keys import InvalidKeyError, validate_public_key

GENESIS_FORMAT = "consortium-genesis/1"
Mode = Literal["pbft", "raft"]
MODES: tuple[Mode, ...] = ("pbft", "raft")


class GenesisError(ValueError):
    """A genesis file that cannot be used; the message names the file, the key and the fix."""


_DAY_MS = 24 * 3600 * 1000
# The largest value a member accepts for each parameter: far above any sensible setting, low
# enough that sizes derived from them stay bounded.
PARAMS_MAX = {
    "batch_txs_max": 100_000,
    "batch_bytes_max": 1 << 30,
    "batch_delay_ms": 60_000,
    "checkpoint_interval": 1 << 16,
    "window": 1 << 17,
    "tx_ttl_max_ms": 366 * _DAY_MS,
    "tx_bytes_max": 1 << 29,
    "ops_per_tx_max": 1 << 16,
    "key_bytes_max": 1 << 20,
    "value_bytes_max": 1 << 29,
    "timestamp_skew_ms": 366 * _DAY_MS,
    "frame_bytes_max": 1 << 30,
    "request_timeout_ms": _DAY_MS,
}


@dataclass(frozen=True, slots=True)
class Params:
    """Network-wide parameters every member must agree on (they are hashed into the chain id)."""

    batch_txs_max: int = 512  # transactions per batch (= per block)
    batch_bytes_max: int = 4 * 1024 * 1024  # encoded transaction bytes per batch
    batch_delay_ms: int = 2  # how long a busy primary waits to fill a batch
    checkpoint_interval: int = 32  # K: a checkpoint every K sequence numbers
    window: int = 64  # L: sequence numbers in flight above the low watermark (a multiple of K)
    tx_ttl_max_ms: int = 10 * 60 * 1000  # expiry may be at most this far past the block time
    tx_bytes_max: int = 64 * 1024
    ops_per_tx_max: int = 64
    key_bytes_max: int = 1024
    value_bytes_max: int = 32 * 1024
    timestamp_skew_ms: int = 30_000  # a backup withholds PREPARE for a timestamp this far off
    frame_bytes_max: int = 16 * 1024 * 1024
    request_timeout_ms: int = 2_000  # base view-change timer (used by the view-change issue)

    def as_array(self) -> list[int]:
        return [getattr(self, f.name) for f in fields(self)]

    def validate(self, where: str) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise GenesisError(f"{where}: params.{f.name} must be a non-negative integer")
            # Members size logs, tables and buffers from these: an absurd value is refused
            # here, at load, not met later as a member that runs out of memory.
            if v > PARAMS_MAX[f.name]:
                raise GenesisError(
                    f"{where}: params.{f.name} ({v:,}) is larger than the most a member "
                    f"accepts ({PARAMS_MAX[f.name]:,})"
                )
        positive = ("batch_txs_max", "checkpoint_interval", "window", "tx_bytes_max")
        for name in positive:
            if getattr(self, name) <= 0:
                raise GenesisError(f"{where}: params.{name} must be positive")
        if self.window % self.checkpoint_interval:
            raise GenesisError(
                f"{where}: params.window ({self.window}) must be a multiple of "
                f"params.checkpoint_interval ({self.checkpoint_interval})"
            )
        if self.window < 2 * self.checkpoint_interval:
            raise GenesisError(
                f"{where}: params.window must be at least twice params.checkpoint_interval, "
                "or the primary stalls at every checkpoint"
            )
        if self.tx_bytes_max * 2 > self.frame_bytes_max:
            raise GenesisError(f"{where}: params.frame_bytes_max must be at least 2x tx_bytes_max")
        # Clocks. Block time may run up to timestamp_skew_ms ahead of or behind the members'
        # clocks (a proposer at the edge of the skew check, or one whose batches stop being
        # prepared), so a transaction's expiry is judged against a time that far off, on
        # either side: a ttl of at least 4 x skew leaves a client at least half of it.
        if self.timestamp_skew_ms * 4 > self.tx_ttl_max_ms:
            raise GenesisError(
                f"{where}: params.timestamp_skew_ms ({self.timestamp_skew_ms}) must be at most "
                f"params.tx_ttl_max_ms / 4 ({self.tx_ttl_max_ms // 4}): lower timestamp_skew_ms "
                "or raise tx_ttl_max_ms"
            )


def full_batch_frame_fix(size: int) -> str:
    """The fix to name when a frame carrying a full batch takes `size` bytes, more than
    params.frame_bytes_max (each protocol's frame check, node/genesis.py)."""
    return f"raise params.frame_bytes_max to at least {size:,} or lower params.batch_bytes_max"


@dataclass(frozen=True, slots=True)
class Member:
    index: int
    name: str
    public_key: bytes
    peer_address: str  # host:port for other members
    client_address: str  # host:port for clients

    def to_doc(self) -> dict[str, str]:
        """The member's entry in genesis.json (and `consortium keygen`'s member.json)."""
        return {
            "name": self.name,
            "public_key": self.public_key.hex(),
            "peer_address": self.peer_address,
            "client_address": self.client_address,
        }

    @classmethod
    def from_doc(cls, doc: Any, index: int, at: str) -> Member:
        _only_keys(doc, {"name", "public_key", "peer_address", "client_address"}, at)
        return cls(
            index=index,
            name=_str(doc, "name", at),
            public_key=_key(doc, at),
            peer_address=_address(doc, "peer_address", at),
            client_address=_address(doc, "client_address", at),
        )


@dataclass(frozen=True, slots=True)
class Client:
    name: str
    public_key: bytes


@dataclass(frozen=True, slots=True)
class Genesis:
    chain_name: str
    mode: Mode
    created_ms: int
    members: tuple[Member, ...]
    clients: tuple[Client, ...]
    params: Params = field(default_factory=Params)

    # --- derived -----------------------------------------------------------------------------

    def as_array(self) -> list[Any]:
        return [
            GENESIS_FORMAT,
            self.chain_name,
            self.mode,
            self.created_ms,
            [[m.name, m.public_key, m.peer_address, m.client_address] for m in self.members],
            [[c.name, c.public_key] for c in self.clients],
            self.params.as_array(),
        ]

    @property
    def chain_id(self) -> bytes:
        return digest_of(self.as_array())

    @property
    def n(self) -> int:
        return len(self.members)

    @property
    def f(self) -> int:
        """Faults tolerated: Byzantine with n >= 3f+1 in pbft, crashes with n >= 2f+1 in raft."""
        return (self.n - 1) // 3 if self.mode == "pbft" else (self.n - 1) // 2

    @property
    def quorum(self) -> int:
        """pbft: ceil((n+f+1)/2), so any two quorums share an honest member (2f+1 at n = 3f+1).
        raft: a majority."""
        if self.mode == "pbft":
            return (self.n + self.f + 2) // 2
        return self.n // 2 + 1

    def member_by_key(self, public_key: bytes) -> Member | None:
        for m in self.members:
            if m.public_key == public_key:
                return m
        return None

    def member_by_name(self, name: str) -> Member | None:
        for m in self.members:
            if m.name == name:
                return m
        return None

    def client_keys(self) -> frozenset[bytes]:
        return frozenset(c.public_key for c in self.clients)

    # --- JSON --------------------------------------------------------------------------------

    def to_json(self) -> str:
        doc = {
            "format": GENESIS_FORMAT,
            "chain_name": self.chain_name,
            "mode": self.mode,
            "created_ms": self.created_ms,
            "members": [m.to_doc() for m in self.members],
            "clients": [{"name": c.name, "public_key": c.public_key.hex()} for c in self.clients],
            "params": {f.name: getattr(self.params, f.name) for f in fields(self.params)},
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def load(cls, path: Path) -> Genesis:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise GenesisError(f"{path}: cannot read genesis file: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise GenesisError(
                f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}); "
                "a genesis file is UTF-8 JSON"
            ) from None
        return cls.from_json(text, where=str(path))

    @classmethod
    def from_json(cls, text: str, where: str = "genesis.json") -> Genesis:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GenesisError(f"{where}: not valid JSON: {exc}") from None
        except RecursionError:
            raise GenesisError(f"{where}: not a genesis file: JSON nested too deeply") from None
        if not isinstance(doc, dict):
            raise GenesisError(f"{where}: expected a JSON object at the top level")
        known = {"format", "chain_name", "mode", "created_ms", "members", "clients", "params"}
        for key in doc:
            if key not in known:
                raise GenesisError(
                    f"{where}: unknown key '{key}' (known: {', '.join(sorted(known))})"
                )
        if doc.get("format") != GENESIS_FORMAT:
            raise GenesisError(f"{where}: 'format' must be '{GENESIS_FORMAT}'")
        mode = doc.get("mode")
        if mode not in MODES:
            raise GenesisError(f"{where}: 'mode' must be one of {', '.join(MODES)}, not {mode!r}")
        chain_name = doc.get("chain_name")
        if not isinstance(chain_name, str) or not chain_name:
            raise GenesisError(f"{where}: 'chain_name' must be a non-empty string")
        created_ms = doc.get("created_ms")
        if not isinstance(created_ms, int) or isinstance(created_ms, bool) or created_ms < 0:
            raise GenesisError(f"{where}: 'created_ms' must be a non-negative integer")

        members_doc = doc.get("members")
        if not isinstance(members_doc, list) or not members_doc:
            raise GenesisError(f"{where}: 'members' must be a non-empty list")
        members: list[Member] = []
        for i, m in enumerate(members_doc):
            members.append(Member.from_doc(m, i, f"{where}: members[{i}]"))
        clients: list[Client] = []
        clients_doc = doc.get("clients", [])
        if not isinstance(clients_doc, list):
            raise GenesisError(f"{where}: 'clients' must be a list")
        for i, c in enumerate(clients_doc):
            at = f"{where}: clients[{i}]"
            _only_keys(c, {"name", "public_key"}, at)
            clients.append(Client(name=_str(c, "name", at), public_key=_key(c, at)))

        params_doc = doc.get("params", {})
        if not isinstance(params_doc, dict):
            raise GenesisError(f"{where}: 'params' must be an object")
        names = {f.name for f in fields(Params)}
        for key in params_doc:
            if key not in names:
                raise GenesisError(
                    f"{where}: unknown parameter 'params.{key}' (known: {', '.join(sorted(names))})"
                )
        params = Params(**params_doc)
        params.validate(where)
        genesis = cls(chain_name, mode, created_ms, tuple(members), tuple(clients), params)
        genesis.validate(where)
        return genesis

    def validate(self, where: str = "genesis") -> None:
        """The checks of the file alone. Whether members with these parameters can exchange
        every frame they must is node/genesis.py's check (it needs the protocols' encodings,
        which import this module): a genesis to run or to write is loaded through there."""
        self.params.validate(where)
        names = [m.name for m in self.members] + [c.name for c in self.clients]
        dup = {x for x in names if names.count(x) > 1}
        if dup:
            raise GenesisError(f"{where}: duplicate names {sorted(dup)}")
        keys = [m.public_key for m in self.members] + [c.public_key for c in self.clients]
        if len(set(keys)) != len(keys):
            raise GenesisError(f"{where}: a public key is listed twice")
        if self.mode == "pbft" and self.n < 4:
            raise GenesisError(
                f"{where}: pbft needs at least 4 members (n = 3f+1 with f >= 1); got {self.n}"
            )
        if self.mode == "raft" and self.n < 1:
            raise GenesisError(f"{where}: raft needs at least 1 member")


def _only_keys(obj: Any, allowed: set[str], at: str) -> None:
    if not isinstance(obj, dict):
        raise GenesisError(f"{at}: expected an object")
    for key in obj:
        if key not in allowed:
            raise GenesisError(f"{at}: unknown key '{key}' (known: {', '.join(sorted(allowed))})")


def _str(obj: dict[str, Any], key: str, at: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not v or len(v) > 64:
        raise GenesisError(f"{at}: '{key}' must be a non-empty string of at most 64 characters")
    return v


def _key(obj: dict[str, Any], at: str) -> bytes:
    v = obj.get("public_key")
    try:
        raw = bytes.fromhex(v) if isinstance(v, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise GenesisError(f"{at}: 'public_key' must be 64 hex characters (an Ed25519 public key)")
    try:
        return validate_public_key(raw)
    except InvalidKeyError as exc:
        raise GenesisError(f"{at}: {exc}") from None


def _address(obj: dict[str, Any], key: str, at: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str):
        raise GenesisError(f"{at}: '{key}' must be 'host:port'")
    parse_advertised_address(v, f"{at}: '{key}'")
    return v


_ADDRESS_EXAMPLES = "e.g. 10.0.0.1:7101, node1.example.org:7101 or [fd00::1]:7101"
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def parse_address(text: str, at: str) -> tuple[str, int]:
    """'host:port' -> (host, port). The host is an IPv4 address, a DNS name, or an IPv6
    address in brackets; the port is 1..65535. Anything else (a scheme, a path, a space, an
    unbracketed IPv6 address, 10.0.0.300) is an error that names `at` and shows the form."""
    bad = f"{at}: '{text}' is not 'host:port' with a port in 1..65535 ({_ADDRESS_EXAMPLES})"
    if "/" in text:
        raise GenesisError(f"{at}: '{text}' is not 'host:port': no scheme or path, just host:port")
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise GenesisError(bad)
    if host.startswith("[") or host.endswith("]"):
        try:
            if not (host.startswith("[") and host.endswith("]")):
                raise ValueError(host)
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise GenesisError(f"{at}: '{host}' is not an IPv6 address in brackets") from None
        return host[1:-1], int(port_text)
    if ":" in host and _is_ipv6(host):
        raise GenesisError(f"{at}: '{text}': write an IPv6 address in brackets, e.g. [{host}]:7101")
    if all(part.isdigit() for part in host.split(".")):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise GenesisError(
                f"{at}: '{host}' is not an IPv4 address ({_ADDRESS_EXAMPLES})"
            ) from None
    elif (
        ":" in host or len(host) > 253 or not all(_HOST_LABEL.fullmatch(x) for x in host.split("."))
    ):
        raise GenesisError(f"{at}: '{host}' is not a host name or IP address ({_ADDRESS_EXAMPLES})")
    return host, int(port_text)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def parse_advertised_address(text: str, at: str) -> tuple[str, int]:
    """An address others connect to (genesis): `parse_address`, and never a wildcard."""
    host, port = parse_address(text, at)
    if host in ("0.0.0.0", "::"):
        raise GenesisError(
            f"{at}: '{text}' means 'listen on every interface'; genesis lists the address "
            "other members and clients connect to, e.g. this host's 10.0.0.1:7101 (a node may "
            "still listen on 0.0.0.0 in its node.toml [listen])"
        )
    return host, port
