"""Persisted state and server restarts (Ongaro's thesis §3.8): a member restarts from its records
(term, vote, log) and its ledger, refuses records that do not fit together, and reconciles a
ledger ahead of its log."""

from __future__ import annotations

import pytest
from raft_harness import E, log_terms, started

from consortium.crashft import messages as m
from consortium.crashft.node import (
    FOLLOWER,
    HARD_KEY,
    SNAP_KEY,
    RaftNode,
    RecoveredState,
    RecoveryError,
    log_key,
)
from consortium.crypto.codec import pack
from consortium.sim.cluster import EPOCH_MS


def test_a_restarted_member_resumes_its_term_vote_and_log_from_its_records() -> None:
    g = started()
    g.propose(0, *g.txs[:4])
    g.propose(0, *g.txs[4:8])
    g.settle()
    before = {i: (g.node(i).term, g.node(i).voted_for, log_terms(g.node(i))) for i in range(3)}
    entries = [g.node(1).log.entry(i).encode() for i in range(1, 4)]
    for i in (1, 0):  # a follower, then the leader
        g.crash(i)
        raft = g.restart(i)
        assert (raft.term, raft.voted_for, log_terms(raft)) == before[i]
        assert raft.role == FOLLOWER
    assert [g.node(1).log.entry(i).encode() for i in range(1, 4)] == entries
    assert g.node(1).commit == 3  # its ledger applied through index 3
    g.run(3 * E)
    assert len(g.leaders()) == 1 and g.node(g.leaders()[0]).term == 2
    assert len({tuple(x.block_hashes) for x in g.members}) == 1


def test_records_that_do_not_fit_together_are_refused() -> None:
    g = started()
    records = sorted(g.members[0].records.items())
    params = g.params
    kwargs = {"height": 0, "block_hash": g.members[0].head.hash, "last_block_point": None}
    state = RecoveredState.from_records(records, params, **kwargs)  # type: ignore[arg-type]
    assert (state.term, state.voted_for, [e.index for e in state.entries]) == (1, 0, [1])
    gap = [*records, (log_key(3), m.Entry(1, 3).encode())]
    with pytest.raises(RecoveryError, match="not contiguous"):
        RecoveredState.from_records(sorted(gap), params, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(RecoveryError, match="does not decode"):
        RecoveredState.from_records([(HARD_KEY, b"\xc1")], params, **kwargs)  # type: ignore[arg-type]


def test_a_restart_with_the_ledger_ahead_of_the_log_restarts_the_log_at_the_ledger() -> None:
    """Found in review: a ledger ahead of the log records (a damaged store, or a crash between
    an install's blocks and its compaction point before they were written together) must move
    the compaction point to the ledger's head, and delete the stale log records."""
    g = started()
    stale = [m.Entry(1, 4), m.Entry(1, 5)]
    rec = RecoveredState(
        term=1,
        snap_index=3,
        snap_term=1,
        snap_height=2,
        snap_hash=b"\x02" * 32,
        entries=stale,
        applied_index=9,
        applied_term=1,
        height=8,
        block_hash=b"\x08" * 32,
    )
    node = RaftNode(g.config(2), g.signers[2], recovered=rec)
    assert (node.log.snap_index, node.log.snap_term, node.log.last_index) == (9, 1, 9)
    assert (node.commit, node.applied) == (9, 9)
    records = dict(node.take_ready().records)
    assert records[SNAP_KEY] == pack([9, 1, 8, b"\x08" * 32])
    assert records[log_key(4)] is None and records[log_key(5)] is None


def test_records_older_than_the_ledger_restart_in_the_ledgers_term_without_a_vote() -> None:
    """Found by the invariant checks (the simulator's broken shell, which writes blocks before
    the records, mixed seed 19): a ledger holding an entry of term 2 beside a hard state of
    term 0 restarted the log at that entry, so the last entry's term was above the member's
    own. It was in term 2 when it took the entry: it takes term 2 again, durably, with no
    vote, as the first message of term 2 would make it do."""
    g = started()
    rec = RecoveredState(
        term=0,
        applied_index=5,
        applied_term=2,
        height=3,
        block_hash=b"\x03" * 32,
    )
    node = RaftNode(g.config(2), g.signers[2], recovered=rec)
    assert (node.term, node.voted_for, node.log.last_term) == (2, None, 2)
    node.tick(0, EPOCH_MS)
    node.check_invariants()
    assert dict(node.take_ready().records)[HARD_KEY] == pack([2, -1])
