"""A consistent copy of a live block store: `consortium node backup`.

The store is SQLite in WAL mode, so copying ledger.sqlite with cp while the node runs can
miss the commits still in ledger.sqlite-wal, or catch the file mid-checkpoint. SQLite's online
backup API copies the database as one reader sees it: with every page copied in a single step,
that is one read transaction, so the copy is exactly the store after some whole commit (a whole
block with its state, certificates and consensus records). Readers never block the node's
writer in WAL mode, so the node keeps committing while the copy is taken.

The copy is written beside its destination, synced, renamed into place, then opened as a
block store of this genesis and verified (hash chain, Merkle roots) before it is reported.

The copy is marked as a restored backup (store.RECOVERY_MARK_KEY, a record inside the file, so
copying the file back into a data directory carries it): the consensus records in it are
those of the moment of the copy, and the member may have signed more since. A member started
on it therefore starts in recovery and votes nothing until it has learned a view or term above
any it can have used (pbft/recovery.py, crashft/node.py "Recovery"). The live store is never
marked: only the copy.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from consortium.ledger.digests import put_record_outside
from consortium.ledger.genesis import Genesis
from consortium.ledger.store import RECOVERY_MARK_KEY, RESTORED_BACKUP, BlockStore, StoreError


@dataclass(frozen=True, slots=True)
class BackupResult:
    path: Path
    height: int
    head_hash: bytes
    size_bytes: int


def backup_store(source: Path, destination: Path, genesis: Genesis) -> BackupResult:
    """Copy the store at `source` to `destination` (which must not exist) and verify it."""
    if not source.exists():
        raise StoreError(f"{source}: no block store to back up (has this member ever started?)")
    if destination.exists():
        raise StoreError(f"{destination} already exists; back up to a new file")
    if not destination.parent.is_dir():
        raise StoreError(f"{destination.parent}: no such directory for the backup")
    partial = destination.with_name(destination.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        src = sqlite3.connect(source)
        try:
            dst = sqlite3.connect(partial)
            try:
                src.backup(dst)  # pages=-1: all pages in one step, one consistent snapshot
                # (with the records digest moved by it: the copy opens clean)
                put_record_outside(dst, RECOVERY_MARK_KEY, RESTORED_BACKUP.encode())
                dst.commit()
                # The copy is a plain rollback-journal file until a store opens it (in WAL).
                dst.execute("PRAGMA journal_mode=DELETE")
            finally:
                dst.close()
        finally:
            src.close()
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(partial, destination)
        dir_fd = os.open(destination.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise StoreError(f"{source}: backup to {destination} failed: {exc}") from None
    store = BlockStore.open(destination, genesis, verify=True)
    try:
        head = store.head
        height, head_hash = head.height, head.hash
    finally:
        store.close()
    return BackupResult(destination, height, head_hash, destination.stat().st_size)
