"""One process per member: the data directory is locked while a member runs.

Two processes on one data directory (a second `node start` of the same home, or a copy whose
node.toml names the same data_dir) would both write the ledger and both sign as the member:
they knock each other off the network, and in pbft that is how a member equivocates by
accident. So a member takes an exclusive `flock` on DATA_DIR/member.lock before it opens its
store, writes its PID there for whoever finds it taken, and holds it until it ends. The kernel
releases a flock when the process ends however it ends (SIGKILL and power loss included), so a
stale file never locks anyone out; the file itself is never deleted (deleting it would let a
second process lock a new file while the first still holds the old one).

Others only probe the lock (`held_by`): `consortium init --force` refuses to delete the homes of
members that run, and `node start` names the running process before it checks its ports.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from consortium.node.config import ConfigError

LOCK_FILE = "member.lock"


class DataDirInUse(ConfigError):
    """The data directory is locked by another process; the message names it."""

    def __init__(self, data_dir: Path, pid: int | None, name: str | None) -> None:
        who = f"process {pid}" if pid is not None else "another process"
        of = f" of {name}" if name else ""
        super().__init__(
            f"{data_dir} is in use by {who} (another `node start`{of}?); stop it first"
        )
        self.data_dir = data_dir
        self.pid = pid


class DataDirLock:
    """A held lock on a data directory; `release()` (or the end of the process) frees it."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor releases the flock

    def __del__(self) -> None:  # a Node that is built but never run still lets go
        self.release()


def lock_data_dir(data_dir: Path, name: str | None = None) -> DataDirLock:
    """Take the data directory's lock (creating the directory and the lock file if need be),
    write our PID into it, and return it held. Raises DataDirInUse, naming the holder's PID,
    if another process (or another open in this one) holds it: at once, never waiting."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # No O_TRUNC: the file may be the running member's, whose PID we must still read.
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        pid = _read_pid(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise DataDirInUse(data_dir, pid, name) from None
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return DataDirLock(data_dir, fd)


def held_by(data_dir: Path) -> int | None:
    """Whether another open holds the data directory's lock: 0 if it is held by a process
    whose PID is not written yet, its PID if written, None if it is free. Writes nothing."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # never locked: no member has run here since locking began
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            pid = _read_pid(fd)
            return 0 if pid is None else pid
        return None  # free (closing the descriptor lets go of our shared lock)
    finally:
        os.close(fd)


def check_free(data_dir: Path, name: str | None = None) -> None:
    """Raise DataDirInUse if another process holds the data directory's lock (a probe: a
    second `node start` says so before it checks ports it would find taken)."""
    pid = held_by(data_dir)
    if pid is not None:
        raise DataDirInUse(data_dir, pid or None, name)


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    return None
