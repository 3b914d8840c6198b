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
from consortium.ledger.store import BlockStore, StoreError
from consortium.node.config import ConfigError, NodeConfig
from consortium.node.datalock import lock_data_dir
from consortium.node.preflight import NEW_MARK

_COMPANIONS = ("-wal", "-shm")  # SQLite's files beside the ledger, named after it
# In the data directory, written when a member that diverged started over (start_over): a
# second divergence, in this process or any later one, stops instead of fetching again.
REFETCHED_MARK = "refetched-after-divergence"


class DivergedAgain(StoreError):
    """A member diverged from a quorum again after it had re-fetched the ledger: no damaged
    disk but a bug, or code that executes differently from the others'. Restarting cannot fix
    it (node start exits 2, which the systemd unit does not restart)."""


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
        if because != "diverged":
            # An operator's own refetch, after looking: the member may start over by itself
            # again should it diverge again.
            (config.data_dir / REFETCHED_MARK).unlink(missing_ok=True)
        _fsync(config.data_dir)
    finally:
        lock.release()
    return aside


def start_over(config: NodeConfig, genesis: Genesis, because: str) -> Path:
    """Set the ledger aside (set_ledger_aside) and create an empty one in its place whose
    recovery mark says why, for `status`: what a member that a quorum proved diverged does by
    itself before it runs again (node/process.py). Returns where the old ledger went."""
    aside = set_ledger_aside(config, because=because)
    mark = config.data_dir / REFETCHED_MARK
    mark.write_text(
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: diverged from the network; the "
        f"ledger was set aside as {aside.name} and fetched again from the other members.\n"
        "A second divergence stops the member instead of fetching again. Delete this file, or\n"
        "run `consortium node refetch`, once you know why it diverged.\n"
    )
    _fsync(mark)
    _fsync(config.data_dir)
    BlockStore.open(
        config.store_path, genesis, created_mark=f"a {because} store (set aside as {aside.name})"
    ).close()
    return aside


def diverged_before(data_dir: Path) -> str | None:
    """What REFETCHED_MARK says, if this member already started over after a divergence."""
    try:
        return (data_dir / REFETCHED_MARK).read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
