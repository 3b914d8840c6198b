"""Log compaction (Ongaro's thesis chapter 5; the Raft paper §7): applied entries beyond a bound
are dropped, their effect being in the ledger; a follower that needs a compacted entry gets a
snapshot point and fetches the blocks it lacks (the ledger is the snapshot: crashft/node.py,
"Compaction and snapshots")."""

from __future__ import annotations

from raft_harness import E, started

from consortium.crashft import messages as m
from consortium.crashft.node import LOG_PREFIX, SNAP_KEY, log_key


def test_compaction_bounds_the_log_and_a_lagging_follower_catches_up_by_snapshot() -> None:
    keep = 2
    g = started(log_keep=keep, append_entries_max=2, blocks_per_fetch=2)
    for k in range(12):  # n3 is cut off while 12 batches commit
        g.propose(0, *g.txs[4 * k : 4 * k + 4])
        g.settle((0, 1))
        g.heartbeat(0, (0, 1))
    n1 = g.node(0)
    assert n1.commit == 13 and g.members[0].head.height == 12
    assert n1.log.snap_index > 0 and len(n1.log) <= 2 * keep + 1
    for i in (0, 1):
        records = g.members[i].records
        log_records = sorted(k for k in records if k.startswith(LOG_PREFIX))
        raft = g.node(i)
        assert log_records == [log_key(x) for x in range(raft.log.first_index, 14)]
        assert SNAP_KEY in records
    # n3 rejoins: the entries it needs are compacted, so it fetches the blocks.
    g.run(2 * E)
    kinds = {type(q.msg) for q in g.delivered if 2 in (q.src, q.dst)}
    assert {m.Snapshot, m.Fetch, m.Blocks} <= kinds
    n3 = g.node(2)
    assert n3.blocks_installed >= 1 and n3.commit == 13
    assert g.members[2].block_hashes == g.members[0].block_hashes
    assert len(n3.log) <= 2 * keep + 1
    # And it goes on replicating normally, and restarts from its records.
    g.propose(0, *g.txs[60:64])
    g.run(E)
    assert g.members[2].head.height == 13
    g.crash(2)
    n3 = g.restart(2)
    assert n3.log.last_index == 14 and n3.log.snap_index == g.node(2).log.snap_index
    g.run(E)
    assert len({tuple(x.block_hashes) for x in g.members}) == 1
