"""`consortium node refetch`: the way back from a damaged store that needs no backup.

The ledger file (with its -wal and -shm, which belong to it) is renamed to a dated name in the
same data directory, never deleted: whoever wants to find out what happened still has it. The
data directory is left without a ledger and without the new-member mark, which is exactly a
member that lost its state (node/preflight.py): the next `node start` creates the store with
the lost-state mark in the transaction that creates it, so the member starts in recovery, votes
nothing until it has learned a view or term above any it can have used, and fetches the ledger
from the other members by state transfer, every block checked by its certificates.

The data directory's lock (node/datalock.py) is held while the files move, so a member that
runs, or starts meanwhile, is never pulled out from under: refetch refuses, naming it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from consortium.ledger.genesis import Genesis
from consortium.ledger.store import BlockStore
from consortium.node.config import ConfigError, NodeConfig
from consortium.node.datalock import lock_data_dir
from consortium.node.preflight import NEW_MARK

_COMPANIONS = ("-wal", "-shm")  # SQLite's files beside the ledger, named after it


def _fold_wal(store: Path) -> None:
    """Checkpoint the WAL into the file (best effort: a file SQLite cannot read keeps its -wal
    beside it under the new name)."""
    try:
        db = sqlite3.connect(store)
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()
    except sqlite3.Error:
        pass


def set_ledger_aside(
    config: NodeConfig, now: float | None = None, because: str = "damaged"
) -> Path:
    """Rename the member's ledger (and its -wal, -shm) to ledger.<because>-<UTC time>.sqlite
    in its data directory; return the new name. ConfigError if the member runs or there is no
    ledger."""
    store = config.store_path
    if not store.exists():
        raise ConfigError(
            f"{store}: no ledger to set aside (the next start already fetches it from the "
            "other members)"
        )
    lock = lock_data_dir(config.data_dir, config.name)
    try:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        aside = store.with_name(f"{store.stem}.{because}-{stamp}{store.suffix}")
        n = 1
        while aside.exists():
            n += 1
            aside = store.with_name(f"{store.stem}.{because}-{stamp}-{n}{store.suffix}")
        _fold_wal(store)
        # The file first, then its companions, emptied by the checkpoint: a crash between
        # leaves no WAL with commits behind that a new ledger of that name would replay.
        os.rename(store, aside)
        for suffix in _COMPANIONS:
            companion = Path(f"{store}{suffix}")
            if companion.exists():
                os.rename(companion, Path(f"{aside}{suffix}"))
        # (a ledger existed, so no new-member mark should; one copied in by mistake would
        # make the next start skip recovery)
        (config.data_dir / NEW_MARK).unlink(missing_ok=True)
        fd = os.open(config.data_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        lock.release()
    return aside


def start_over(config: NodeConfig, genesis: Genesis, because: str) -> Path:
    """Set the ledger aside (set_ledger_aside) and create an empty one in its place whose
    recovery mark says why, for `status`: what a member that a quorum proved diverged does by
    itself before it runs again (node/process.py). Returns where the old ledger went."""
    aside = set_ledger_aside(config, because=because)
    BlockStore.open(
        config.store_path, genesis, created_mark=f"a {because} store (set aside as {aside.name})"
    ).close()
    return aside
