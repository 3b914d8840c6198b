"""The raft shell's own work around its core (consortium/node/raft_runtime.py): what it
answers the core's `executed` question with, and at what cost on the leader's hot path."""

from __future__ import annotations

from pathlib import Path

from consortium.cli.network import init_network
from consortium.ledger.genesis import Params
from consortium.ledger.state import CachedTable
from consortium.node.config import load_identity
from consortium.node.raft_runtime import RaftMember
from consortium.node.runtime import make_node


def test_the_executed_lookup_costs_one_query_per_batch_and_none_at_execution(
    tmp_path: Path,
) -> None:
    """The leader asks its ledger, for each batch it orders, which ids it executed already (a
    resubmission, a late forward). That is one query of the store per batch, and it fills the
    replay cache with the answers (absences too), so executing the batch later asks the store
    nothing more: the lookup moved to batching, it did not double."""
    init_network(tmp_path / "net", members=3, clients=1, mode="raft", params=Params())
    identity = load_identity(tmp_path / "net" / "nodes" / "n1")
    node = make_node(identity.config, identity.genesis, identity.keys)
    assert isinstance(node, RaftMember)
    try:
        replay = node.app.replay
        assert isinstance(replay, CachedTable)
        ids = [i.to_bytes(32, "big") for i in range(1, 301)]
        before = replay.loads
        assert node._executed(ids) == set()
        assert replay.loads == before + 1
        replay.prefetch(ids)  # what executing the block does first
        assert node._executed(ids) == set()
        assert replay.loads == before + 1
    finally:
        node.store.close()
