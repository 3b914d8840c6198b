"""What keeping the table digests costs the store's write, per transaction (docs/operations.md,
"A damaged store"): 40 blocks of 500 one-key transactions saved with the digest triggers on,
or with them dropped, CPU time of save() only.

    PYTHONPATH=. python scripts/digest_cost.py on; PYTHONPATH=. python scripts/digest_cost.py off

Alternate the two a few times: the machine is shared and noisy.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from consortium.cli.network import init_network, load_client_setup
from consortium.ledger.digests import DIGESTED
from consortium.ledger.state import build_block
from consortium.ledger.store import BlockStore
from consortium.ledger.tx import Put, Transaction
from consortium.node.config import load_identity

BLOCKS, PER_BLOCK = 40, 500


def main(mode: str) -> None:
    directory = Path(tempfile.mkdtemp())
    init_network(directory / "net", members=4, clients=1)
    genesis = load_identity(directory / "net" / "nodes" / "n1").genesis
    key = load_client_setup(directory / "net").keys()[0]
    store = BlockStore.open(directory / "ledger.sqlite", genesis)
    if mode == "off":
        for table in DIGESTED:
            for kind in ("insert", "update", "delete"):
                store._db.execute(f"DROP TRIGGER IF EXISTS temp.digest_{table}_{kind}")
    expiry = store.head.timestamp_ms + 500_000
    batches = [
        [
            Transaction.create(
                key, genesis.chain_id, b"%08d" % n, expiry, [Put(b"k%08d" % n, b"v" * 32)]
            )
            for n in range(b * PER_BLOCK, (b + 1) * PER_BLOCK)
        ]
        for b in range(BLOCKS)
    ]
    spent = 0.0
    for txs in batches:
        head = store.head
        proposed = head.timestamp_ms + 1
        block, execution = build_block(
            head, ("pbft", head.height, proposed), proposed, tuple(txs), store.app
        )
        started = time.process_time()
        store.save(blocks=[(block, execution, None)])
        spent += time.process_time() - started
    store.close()
    print(f"digests {mode}: {spent / (BLOCKS * PER_BLOCK) * 1e6:.1f} µs CPU per transaction")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "on")
