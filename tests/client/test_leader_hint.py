"""raft: a follower that accepts and forwards a transaction names the leader in its verdict
("leader:N"), and the client sends its next submissions to the leader itself (one hop and one
follower apply fewer per transaction) while it is connected; a retransmission forgets the
hint."""

from __future__ import annotations

import pytest
import trio

from consortium.client.client import ConsortiumClient, _TxState
from consortium.crypto.keys import KeyPair
from consortium.ledger.genesis import Params
from consortium.ledger.tx import Put
from consortium.protocol.messages import leader_hint
from consortium.sim.cluster import sim_genesis

GENESIS = sim_genesis(3, Params(), mode="raft")
ADDRESSES = {i: ("127.0.0.1", 1 + i) for i in range(3)}


@pytest.mark.parametrize(
    ("detail", "index"),
    [
        ("leader:2", 2),
        ("leader:0", 0),
        ("", None),
        ("leader:3", None),  # not a member of a 3-member network
        ("leader:-1", None),
        ("leader:x", None),
        ("leader:99999999", None),
        ("leader 2", None),
    ],
)
def test_a_leader_hint_names_a_member_or_nothing(detail: str, index: int | None) -> None:
    assert leader_hint(detail, 3) == index


def test_the_client_follows_a_followers_leader_hint_until_it_is_unreachable() -> None:
    async def main() -> None:
        client = ConsortiumClient(GENESIS, KeyPair.generate(), addresses=ADDRESSES)
        for m in client._members.values():
            m.online = True
        assert [m.index for m in client._submit_targets()] == [0]  # no hint: the rotation
        tx = client.make_tx([Put(b"k", b"v")])
        client._txs[tx.id] = _TxState(tx, first_sent=trio.current_time())
        client._on_submit_reply(0, [[tx.id, "accepted", "leader:2"]])
        assert [m.index for m in client._submit_targets()] == [2]
        client._members[2].online = False  # the leader we were told of is unreachable
        assert [m.index for m in client._submit_targets()] == [0]

    trio.run(main)


# --- minor: a leader hint that is a digit to str.isdigit but not to int() ---------------------


# (Review 4: a failing test for what the raft leader hint change broke.)
@pytest.mark.parametrize("detail", ["leader:\u00b2", "leader:\u0661", "leader:1\u00b9"])
def test_a_leader_hint_in_other_digits_is_no_hint_and_raises_nothing(detail: str) -> None:
    """messages.leader_hint checks `str.isdigit()`, which is True for '²' (int() refuses it:
    ValueError in the client's reply handler) and for Arabic-Indic digits (int() takes them):
    only ASCII digits are a member index."""
    assert leader_hint(detail, 3) is None
