"""The raft side of a member around its core (consortium/node/raft_mode.py): what it
answers the core's `executed` question with, and at what cost on the leader's hot path."""

from __future__ import annotations

from pathlib import Path

from consortium.cli.network import init_network
from consortium.ledger.genesis import Params
from consortium.ledger.state import CachedTable
from consortium.node.config import load_identity
from consortium.node.events import PeerMessage
from consortium.node.raft_mode import RaftMode
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
    assert isinstance(node.mode, RaftMode)
    try:
        replay = node.app.replay
        assert isinstance(replay, CachedTable)
        ids = [i.to_bytes(32, "big") for i in range(1, 301)]
        before = replay.loads
        assert node.mode._executed(ids) == set()
        assert replay.loads == before + 1
        replay.prefetch(ids)  # what executing the block does first
        assert node.mode._executed(ids) == set()
        assert replay.loads == before + 1
    finally:
        node.store.close()


def test_an_executed_id_past_its_expiry_is_not_taken_for_executed(tmp_path: Path) -> None:
    """As in the in-memory replay set (pruned at each block): the store keeps an executed
    transaction's id with its expiry (format 4), and only an expiry at or after the head's
    time makes it executed for the leader's batches, as for the replay check."""
    init_network(tmp_path / "net", members=3, clients=1, mode="raft", params=Params())
    identity = load_identity(tmp_path / "net" / "nodes" / "n1")
    node = make_node(identity.config, identity.genesis, identity.keys)
    assert isinstance(node.mode, RaftMode)
    try:
        old, live, never = (bytes([i]) * 32 for i in (1, 2, 3))
        node.app.replay[old] = 4_999
        node.app.replay[live] = 5_000
        node.app.last_timestamp_ms = 5_000
        assert node.mode._executed([old, live, never]) == {live}
    finally:
        node.store.close()


def test_a_targets_transfer_window_starts_when_its_write_is_durable(tmp_path: Path) -> None:
    """A transfer's target honours TimeoutNow only within E/4 of the leader's last entry
    becoming durable here (crashft/node.py, _on_timeout_now). The core learns time only from
    ticks, so after reporting a write durable the shell ticks it at once: a write that took
    300 ms then starts the window when it ended, not when the append was handled."""
    import trio
    import trio.testing

    from consortium.crashft import messages as rm

    init_network(tmp_path / "net", members=3, clients=1, mode="raft", params=Params())
    identity = load_identity(tmp_path / "net" / "nodes" / "n1")
    node = make_node(identity.config, identity.genesis, identity.keys)
    assert isinstance(node.mode, RaftMode)
    clock = trio.testing.MockClock()

    async def main() -> tuple[int | None, int]:
        core = node.core
        core.tick(*node._now())
        node._handle(PeerMessage(1, rm.Append(1, 0, 0, 0, (rm.Entry(1, 1),))))  # n2 leads
        handled_ms = node._now()[0]
        commit = node.store.commit_staged

        def slow_disk() -> None:
            commit()
            clock.jump(0.3)  # the fsync took 300 ms

        node.store.commit_staged = slow_disk  # type: ignore[method-assign]
        await node._carry_out_ready()
        return core._last_entry_ms, handled_ms

    try:
        stamped_ms, handled_ms = trio.run(main, clock=clock)
    finally:
        node.store.close()
    assert stamped_ms == handled_ms + 300
