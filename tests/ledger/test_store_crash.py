"""kill -9 at any moment: the store reopens to the last whole block, which verifies."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from consortium.ledger.audit import audit_ledger
from consortium.ledger.store import BlockStore
from tests.ledger.chain_fixture import ChainBuilder, same_state

ROOT = Path(__file__).parents[2]
TXS_PER_BLOCK = 3
ROUNDS = 2
START_S_MAX = 5.0  # interpreter start-up, not the store's to bound

# The writer continues whatever chain the store holds (the fixture is deterministic), then
# appends block after block with a record in the same save, printing each height only after
# save() returned, i.e. once that block is durable.
CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.ledger.chain_fixture import ChainBuilder
from consortium.ledger.store import BlockStore
chain = ChainBuilder()
store = BlockStore.open(Path({path!r}), chain.genesis)
for _ in range(store.height):
    chain.add_puts({txs})
assert chain.head == store.head
print(store.height, flush=True)
while True:
    chain.add_puts({txs})
    height = chain.head.height
    store.save(blocks=chain.blocks[-1:], records=[(b"height", b"%d" % height)])
    print(height, flush=True)
"""


def _run_and_kill(path: Path, rng: random.Random) -> tuple[int, int]:
    """Start a writer, SIGKILL it at a random moment; (height it started at, last durable)."""
    child = CHILD.format(root=str(ROOT), path=str(path), txs=TXS_PER_BLOCK)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + START_S_MAX
        first = proc.stdout.readline()
        assert first and time.monotonic() < deadline, f"the writer did not start ({proc.poll()})"
        # A moment unrelated to block boundaries: mid-build, mid-save or mid-commit.
        time.sleep(rng.uniform(0.05, 0.25))
    finally:
        proc.kill()
        proc.wait()
    out = proc.stdout.read().split()
    proc.stdout.close()
    start = int(first)
    return start, max([start, *(int(x) for x in out)])


def test_after_kill_9_the_store_reopens_to_the_last_whole_block(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    rng = random.Random()
    height = 0
    for _ in range(ROUNDS):
        start, durable = _run_and_kill(path, rng)
        assert start == height  # the writer found exactly what the last reopen found
        assert durable > start, "the writer should have made progress"
        store = BlockStore.open(path, ChainBuilder().genesis)  # verify=True: all re-checked
        try:
            height = store.height
            # Every save that returned survived; at most the one in flight landed too, whole.
            assert durable <= height <= durable + 1
            assert store.load_records() == [(b"height", b"%d" % height)]
        finally:
            store.close()

    chain = ChainBuilder()
    for _ in range(height):
        chain.add_puts(TXS_PER_BLOCK)
    store = BlockStore.open(path, chain.genesis)
    try:
        assert store.head == chain.head
        assert same_state(store, chain.app)
        assert store.app.state_root == chain.app.state_root
    finally:
        store.close()
    report = audit_ledger(path, chain.genesis)
    assert report.ok, report.problem
    assert report.height == height and report.head_hash == chain.head.hash
