"""Checks a node's home can run, before it runs: `consortium node check` and `node start`.

- listen addresses: each is bound once and released, so a node copied to the wrong host, a
  port already taken or a privileged port is an error naming node.toml's key and the fix,
  not a bare OSError from deep inside the listener.
- data directory: the chain id stamped in an existing store is read (read-only, without
  loading the state) and compared with genesis.json's, so a data directory of another
  network is named before anything is written. It also says whether the member will start in
  recovery (below).
- peers: a TCP connection to each member's peer address, so an unreachable member (not
  started, wrong address, firewall, no route) is visible in one place. Only `node check`
  probes; a starting node just keeps dialing.

Recovery marks. A member whose consensus records may be older than what it sent must start in
recovery (it signs no vote until it has learned a view or term above any it can have used):
  - a store restored from `node backup` carries the mark inside it (store.RECOVERY_MARK_KEY);
  - an empty data directory is either new or the remains of a member that lost its state.
    `consortium init` and `keygen` write NEW_MARK into the data directory they create, so a
    network's first start is not held up; the node deletes it once its store exists. An empty
    data directory without it has run before: the node creates its store with the mark in it,
    in the transaction that creates the store (open_store). Written after it, as it was, a kill
    between the two left an unmarked store, and the next start was a normal one (review).
The mark in the store goes only in the write after the core left recovery (runtime.py), so a
crash during recovery starts in recovery again.
"""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from consortium.ledger.digests import (
    FORMAT_WITHOUT_DIGESTS,
    STORE_FORMAT,
    digested_tables,
    stored_digests,
    table_digest,
)
from consortium.ledger.genesis import Genesis, parse_address
from consortium.ledger.store import LOST_STATE, RECOVERY_MARK_KEY, BlockStore, StoreDamaged
from consortium.node.config import ConfigError, NodeConfig, config_path

NEW_MARK = "new-member"  # in the data directory: this member has never run (init, keygen)
_NEW_MARK_TEXT = (
    "Written by `consortium init` or `consortium keygen`: this member has never run, so its\n"
    "first start does not wait to learn the view or term (docs/operations.md, Restoring).\n"
    "The node deletes this file once its ledger exists. Never copy it into a data directory\n"
    "of a member that has run: that member could vote twice.\n"
)


def mark_new(data_dir: Path) -> None:
    """Mark a data directory that `init` or `keygen` just created as new (durably)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / NEW_MARK
    path.write_text(_NEW_MARK_TEXT)
    _sync(path)
    _sync(data_dir)


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_store(config: NodeConfig, genesis: Genesis) -> tuple[BlockStore, str | None]:
    """At start: open the member's store, creating it if there is none, and what the member
    recovers from (status words), or None for a normal start. A store created in a data
    directory not marked new carries the lost-state mark from the transaction that creates it,
    so no kill leaves it unmarked; the new-member mark goes once the store exists."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    new = (config.data_dir / NEW_MARK).exists()
    path = config.store_path
    if not path.exists():  # (a store set aside by a process killed before it moved these)
        _keep_orphans(path, path.with_name(f"{path.name}.orphan-{time.time_ns()}"))
    store = BlockStore.open(config.store_path, genesis, created_mark=None if new else LOST_STATE)
    try:
        return store, recovery_on_start(config.data_dir, store)
    except BaseException:
        store.close()
        raise


def _keep_orphans(path: Path, kept: Path) -> None:
    """Move `path`'s -wal and -shm files, if any, next to `kept`: SQLite would replay an old
    write-ahead log into a store created at `path`."""
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(kept.with_name(kept.name + suffix))


def recovery_on_start(data_dir: Path, store: BlockStore) -> str | None:
    """With the store open (open_store): what the member recovers from, or None for a normal
    start; removes the new-member mark, since a store exists now."""
    new_mark = data_dir / NEW_MARK
    if new_mark.exists():
        new_mark.unlink()  # the store exists now: the next empty start is a lost state
        _sync(data_dir)
    return store.recovery_mark()


def check_listen(config: NodeConfig) -> None:
    """Raise ConfigError unless every listen address (peer, client, and [http] when set)
    can be bound on this host now."""
    where = config_path(config.home)
    listens = [("listen.peer", config.peer_listen), ("listen.client", config.client_listen)]
    if config.http_listen is not None:
        listens.append(("http.listen", config.http_listen))
    for key, (host, port) in listens:
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise ConfigError(
                f"{where}: '{key}' {shown}: cannot resolve host '{host}' ({exc.strerror}); "
                "use an IP address of this host, or 0.0.0.0 to listen on all of them"
            ) from None
        family, kind, proto, _, sockaddr = infos[0]
        with socket.socket(family, kind, proto) as s:
            # As trio's listeners do, so a port in TIME_WAIT after a restart is no error.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(sockaddr)
            except OSError as exc:
                raise ConfigError(f"{where}: '{key}' {shown}: {_bind_advice(exc)}") from None


def _bind_advice(exc: OSError) -> str:
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            "not an address of this host (is this home on the right machine?); listen on "
            "one of this host's addresses, or on 0.0.0.0 with the same port (behind NAT, "
            "where genesis lists an address no interface has)"
        )
    if exc.errno == errno.EADDRINUSE:
        return (
            "port already in use: is this member already running, or another program on that "
            "port? (`ss -ltnp` shows which)"
        )
    if exc.errno == errno.EACCES:
        return "permission denied: ports below 1024 need privileges; use e.g. 7101"
    return f"cannot listen: {exc.strerror or exc}"


@dataclass(frozen=True, slots=True)
class DataDirState:
    exists: bool
    height: int
    recovering: str | None = None  # what a start recovers from (None: a normal start)


def check_data_dir(config: NodeConfig, genesis: Genesis, *, tables: bool = False) -> DataDirState:
    """The store's chain id must be genesis's; raise ConfigError naming both otherwise. With
    `tables` (node check), also every table against its digest, as `node start` will (a start
    does that once, in the store: not here too)."""
    path = config.store_path
    if not path.exists():
        new = (config.data_dir / NEW_MARK).exists()
        return DataDirState(exists=False, height=0, recovering=None if new else LOST_STATE)
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'chain_id'").fetchone()
            top = db.execute("SELECT MAX(height) FROM blocks").fetchone()
            mark = db.execute(
                "SELECT value FROM records WHERE key = ?", (RECOVERY_MARK_KEY,)
            ).fetchone()
            damaged = _damaged_tables(db) if tables and row is not None else []
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise ConfigError(
            f"{path}: not a readable block store ({exc}); point node.data_dir in "
            f"{config_path(config.home)} at this member's data directory, or an empty one"
        ) from None
    if row is None or not isinstance(row[0], bytes):
        raise ConfigError(f"{path}: the block store has no chain id stamp; it is damaged")
    stamped: bytes = row[0]
    if stamped != genesis.chain_id:
        raise ConfigError(
            f"{path}: data directory belongs to network {stamped.hex()[:8]}…, but "
            f"{config.genesis_path} is network {genesis.chain_id.hex()[:8]}…. Either "
            "genesis.json is not the one this member ran with (copy the right one), or this is "
            "a new network: move the old data directory away (nothing deletes it for you)"
        )
    if damaged:
        raise ConfigError(StoreDamaged(path, damaged).advice(config.home))
    recovering = None if mark is None else bytes(mark[0]).decode("utf-8", "replace")
    return DataDirState(exists=True, height=int(top[0] or 0), recovering=recovering)


def _damaged_tables(db: sqlite3.Connection) -> list[str]:
    """The digested tables that do not match their digests (all of them when a store of
    format 3 or later has none; a store of format 2 has none to compare yet: its start
    audits it)."""
    stored = stored_digests(db)
    schema = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if schema is not None and isinstance(schema[0], int) and schema[0] > STORE_FORMAT:
        raise ConfigError(
            f"the block store is of format {schema[0]}, newer than this release reads "
            f"({STORE_FORMAT}): run the release that wrote it"
        )
    if not stored and schema is not None and schema[0] == FORMAT_WITHOUT_DIGESTS:
        return []
    return [
        t
        for t in digested_tables(schema[0] if schema is not None else None)
        if t not in stored or table_digest(db, t) != stored[t]
    ]


@dataclass(frozen=True, slots=True)
class PeerProbe:
    name: str
    address: str
    error: str  # "" when a TCP connection was made


async def probe_peers(
    config: NodeConfig, genesis: Genesis, me: int, timeout_s: float
) -> list[PeerProbe]:
    """Open (and close) a TCP connection to every other member's peer address, at once."""
    results: dict[int, PeerProbe] = {}

    async def probe(index: int) -> None:
        member = genesis.members[index]
        address = member.peer_address
        override = config.peers.get(member.name)
        if override is not None:
            host, port = override
        else:
            host, port = parse_address(address, "genesis")
        if override is not None:
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        error = ""
        try:
            with trio.fail_after(timeout_s):
                stream = await trio.open_tcp_stream(host, port)
            await stream.aclose()
        except trio.TooSlowError:
            error = f"no answer within {timeout_s:g} s (host down, firewall, or no route)"
        except OSError as exc:
            error = _connect_advice(exc)
        results[index] = PeerProbe(member.name, address, error)

    async with trio.open_nursery() as nursery:
        for m in genesis.members:
            if m.index != me:
                nursery.start_soon(probe, m.index)
    return [results[i] for i in sorted(results)]


def _connect_advice(exc: OSError) -> str:
    # trio folds its attempts (one per resolved address) into one OSError caused by a group
    cause = exc.__cause__
    if exc.errno is None and isinstance(cause, BaseExceptionGroup):
        first = cause.exceptions[0]
        if isinstance(first, OSError):
            exc = first
    if exc.errno == errno.ECONNREFUSED:
        return "connection refused: the host answers but nothing listens there (not started?)"
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"{exc.strerror}: no route to that address from this host"
    return str(exc) or exc.__class__.__name__
