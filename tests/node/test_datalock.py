"""One process per member (node/datalock.py): a data directory is locked while a member runs,
a second open refuses at once naming the holder's PID, and the kernel frees the lock when the
holder ends, by SIGKILL too."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from consortium.cli.network import init_network
from consortium.node.config import load_identity
from consortium.node.datalock import (
    LOCK_FILE,
    DataDirInUse,
    check_free,
    held_by,
    lock_data_dir,
)
from consortium.node.process import load_member
from consortium.node.runtime import make_node


def test_a_second_open_of_a_data_dir_refuses_naming_the_holder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = lock_data_dir(data, "n2")
    assert (data / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    with pytest.raises(DataDirInUse) as refused:
        lock_data_dir(data, "n2")
    assert str(refused.value) == (
        f"{data} is in use by process {os.getpid()} (another `node start` of n2?); stop it first"
    )
    assert refused.value.pid == os.getpid()
    assert (data / LOCK_FILE).read_text() == f"{os.getpid()}\n"  # the refusal wrote nothing
    first.release()
    lock_data_dir(data, "n2").release()  # free again once released


def test_the_probe_writes_nothing_and_sees_the_holder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    assert held_by(data) is None
    assert list(data.iterdir()) == []  # a probe of a never-locked directory creates nothing
    lock = lock_data_dir(data)
    assert held_by(data) == os.getpid()
    with pytest.raises(DataDirInUse, match=f"process {os.getpid()}"):
        check_free(data, "n1")
    lock.release()
    assert held_by(data) is None
    check_free(data, "n1")


def test_the_lock_is_freed_when_its_process_is_killed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path\n"
            "from consortium.node.datalock import lock_data_dir\n"
            f"lock = lock_data_dir(Path({str(data)!r}))\n"
            "print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DataDirInUse, match=f"process {holder.pid} "):
            lock_data_dir(data)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        holder.stdout.close()
    lock_data_dir(data).release()  # the file stays, with a dead PID in it: no matter


def test_a_member_holds_its_data_dir_until_it_stops(tmp_path: Path) -> None:
    init_network(tmp_path / "net", members=4, clients=1)
    home = tmp_path / "net" / "nodes" / "n2"
    identity = load_identity(home)
    node = make_node(identity.config, identity.genesis, identity.keys)
    data = identity.config.data_dir
    before = sorted(p.name for p in data.iterdir())
    # A second member on the same home: refused at load (before its ports, which would
    # only say "in use") and at the store's open, naming this process.
    message = f"{data} is in use by process {os.getpid()} (another `node start` of n2?)"
    with pytest.raises(DataDirInUse, match=re.escape(message)):
        load_member(home)
    with pytest.raises(DataDirInUse, match=f"process {os.getpid()}"):
        make_node(identity.config, identity.genesis, identity.keys)
    assert sorted(p.name for p in data.iterdir()) == before  # nothing written by either

    async def run_briefly() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            nursery.cancel_scope.cancel()

    trio.run(run_briefly)
    assert held_by(data) is None  # run() let go as it ended
    again = make_node(identity.config, identity.genesis, identity.keys)
    again.store.close()
    again.data_lock.release()
