"""Review 2 of issue 6: the peer lag status and /metrics show (failing test)."""

from __future__ import annotations

from pbft_harness import Group

from consortium.ledger.genesis import Params
from consortium.node.explain import PeerLink, peer_rows

NAMES = ["n1", "n2", "n3", "n4"]


def test_peers_that_executed_as_far_as_we_did_show_no_lag() -> None:
    """explain.peer_rows takes a pbft peer's progress from peers_executed, which only
    CHECKPOINT votes move (every checkpoint_interval). Peers level with us show a lag of up
    to K-1 blocks, forever on an idle network: in the walkthrough, `status --member n1`
    printed 'n3 connected lag 27' with every member at height 59, and
    consortium_peer_lag_blocks says the same, so a lag alert fires on a healthy network."""
    params = Params(
        batch_txs_max=1,
        batch_delay_ms=10,
        checkpoint_interval=8,
        window=16,
        timestamp_skew_ms=1_000,
        request_timeout_ms=400,
    )
    group = Group(params=params)
    for tx in group.txs[:5]:
        group.replicas[0].propose(tx)
        group.tick_all(20)
        group.pump()
    assert all(r.last_executed == 5 for r in group.replicas)
    links = [PeerLink(i, NAMES[i], True, True) for i in (1, 2, 3)]
    rows = peer_rows("pbft", group.replicas[0].status(), links, 5, NAMES)
    assert [rows[n]["lag"] for n in NAMES[1:]] == [0, 0, 0], rows
