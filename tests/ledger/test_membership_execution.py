"""Executing v2 changes (docs/design/membership.md 1.3, 2.1): members join, leave, rotate keys
and move, in pbft and raft; every refusal in the design's order; v1 changes only at epoch 0;
used keys never come back; the 9th header field from the activation block on."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from consortium.crypto.codec import WireFormatError, digest_of, pack
from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import Domain, Ed25519Signer
from consortium.ledger.admission import ADMIT, REVOKE, ClientChange
from consortium.ledger.block import BlockHeader
from consortium.ledger.genesis import Params
from consortium.ledger.membership import (
    MEMBERS_MAX,
    AdmitClient,
    ChangeV2,
    Configuration,
    MemberInfo,
    PromoteLearner,
    RemoveMember,
    RevokeClient,
    RotateKey,
    SetAddresses,
    effective_height,
    genesis_configuration,
)
from consortium.ledger.state import Execution, KeyValueState
from consortium.ledger.tx import ConfigChange, ConfigChangeV2, Put, Transaction
from tests.ledger.chain_fixture import CLIENT, CREATED_MS, MEMBERS
from tests.ledger.membership_fixture import (
    HOUR_MS,
    PARAMS,
    SPARES,
    K,
    L,
    MemberChain,
    accepted,
    add_op,
    approvals,
    member_chain,
    possessions,
    refused,
    v2_change,
    v2_tx,
)

NEWCLIENT = KeyPair.from_seed(hashlib.sha256(b"a v2 client").digest())


def E(c: int) -> int:
    return effective_height("pbft", c, PARAMS)


# --- the op on the wire ------------------------------------------------------------------------


def test_the_v2_op_round_trips_and_is_the_only_op_of_its_transaction() -> None:
    chain = member_chain()
    change = v2_change(chain, add_op(0))
    tx = v2_tx(chain, change)
    again = Transaction.decode(tx.encode(), PARAMS)
    (op,) = again.ops
    assert isinstance(op, ConfigChangeV2) and op.change == change
    assert len(op.approvals) == 3 and len(op.possessions) == 1
    both = chain.tx(Put(b"a", b"1"))
    bad = Transaction.create(
        CLIENT, chain.genesis.chain_id, b"x", CREATED_MS + 9, [both.ops[0], tx.ops[0]]
    )
    with pytest.raises(WireFormatError, match="only operation"):
        Transaction.decode(bad.encode(), PARAMS)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda a, p, b: (a * 43, p, b),  # 129 approvals
        lambda a, p, b: (a, p * 5, b),  # 5 possessions
        lambda a, p, b: (a, p, b + b"\0" * 2048),  # a body above 2,048 bytes
        lambda a, p, b: (a, p, 7),  # not bytes
        lambda a, p, b: (a, [[b"k", b"s"]], b),  # a malformed possession
    ],
    ids=["approvals", "possessions", "body", "body-type", "possession-shape"],
)
def test_a_malformed_v2_op_raises_wire_format_error_only(mangle: object) -> None:
    chain = member_chain()
    change = v2_change(chain, add_op(0))
    a = [list(x) for x in approvals(chain, change)]
    p = [list(x) for x in possessions(change)]
    a2, p2, b2 = mangle(a, p, change.encode())  # type: ignore[operator]
    body = pack(
        [chain.genesis.chain_id, CLIENT.public, b"n", CREATED_MS + 9, [["config", b2, a2, p2]]]
    )
    sig = Ed25519Signer(CLIENT).sign(Domain.TX, chain.genesis.chain_id, body)
    with pytest.raises(WireFormatError):
        Transaction.from_array([body, sig], PARAMS)


# --- pbft: accept at c, take effect at E -------------------------------------------------------


def test_a_pbft_add_is_pending_until_E_and_header_E_is_the_first_to_commit_it() -> None:
    chain = member_chain()
    genesis_config = chain.app.config
    assert genesis_config is not None and genesis_config.epoch == 0
    block = chain.add([v2_tx(chain, v2_change(chain, add_op(0)))])
    accepted(block)
    c = block.height
    e = E(c)
    assert e == -(-(c + L) // K) * K and e % K == 0 and e >= c + L
    execution = chain.blocks[-1][1]
    assert execution.member_accepted is not None and execution.config_activated is None
    assert execution.member_accepted[0] == e
    new = execution.member_accepted[2]
    assert new.epoch == 1 and new.n == 5 and new.member(4) is not None
    assert new.member(4).public_key == SPARES[0].public  # type: ignore[union-attr]
    assert chain.app.pending_member == execution.member_accepted
    assert SPARES[0].public in chain.app.used_keys  # at once
    chain.run_to(e - 1)
    assert all(b.header.config_digest is None for b, _, _ in chain.blocks)
    assert chain.app.config == genesis_config
    block_e = chain.add([chain.tx(Put(b"a", b"1"))])
    assert block_e.header.config_digest == new.digest
    assert len(block_e.header.to_array()) == 9
    assert BlockHeader.from_array(block_e.header.to_array()) == block_e.header
    assert chain.blocks[-1][1].config_activated == new
    assert chain.app.config == new and chain.app.pending_member is None
    assert chain.app.config_at(e) == genesis_config and chain.app.config_at(e + 1) == new
    assert chain.app.configs == {0: (1, genesis_config), 1: (e + 1, new)}
    assert chain.app.member_keys == tuple(m.public_key for m in new.members)
    assert chain.app.quorum == new.quorum == 4
    after = chain.add([])
    assert after.header.config_digest == new.digest


def test_the_state_root_carries_the_members_element_only_when_something_happened() -> None:
    chain = member_chain()
    twin = member_chain()
    tx = v2_tx(chain, v2_change(chain, add_op(0)))
    chain.add([tx])
    # The same block with the change refused (no quorum) has another root: the element is
    # committed only when a change is accepted or activated.
    twin.nonce = chain.nonce - 1
    change = v2_change(twin, add_op(0))
    twin.add([v2_tx(twin, change, approved=approvals(twin, change, [MEMBERS[0].public]))])
    assert twin.blocks[-1][0].receipts[0].reason == "config_no_quorum"
    assert chain.head.state_root != twin.head.state_root
    e = chain.blocks[-1][1].member_accepted[0]  # type: ignore[index]
    chain.run_to(e - 1)
    twin.run_to(e - 1)
    a = chain.app.execute(e, CREATED_MS + e, ())
    b = twin.app.execute(e, CREATED_MS + e, ())
    assert a.config_activated is not None and b.config_activated is None


def _root_parts(prev_root: bytes, execution: Execution) -> list[object]:
    """The state root's elements before the optional ones (ledger-format.md)."""
    return [
        "state",
        prev_root,
        [[k, execution.writes[k]] for k in sorted(execution.writes)],
        [tid for tid, _ in execution.consumed],
    ]


@pytest.mark.parametrize("mode", ["pbft", "raft"])
def test_the_members_element_of_the_state_root_is_exactly_as_documented(mode: str) -> None:
    """["members", accepted, activated]: pbft accepts at c (accepted only) and activates at
    E (activated only); raft does both in block c. Each root differs from the one without
    the element."""
    chain = member_chain(mode)  # type: ignore[arg-type]
    prev = chain.head.state_root
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))]))
    execution = chain.blocks[-1][1]
    assert execution.member_accepted is not None
    e, change_id, new = execution.member_accepted
    parts = _root_parts(prev, execution)
    activated = new.digest if mode == "raft" else None
    assert execution.state_root == digest_of(
        [*parts, ["members", [e, change_id, new.digest], activated]]
    )
    assert execution.state_root != digest_of(parts)
    if mode == "pbft":
        chain.run_to(e - 1)
        prev = chain.head.state_root
        chain.add([])
        execution = chain.blocks[-1][1]
        assert execution.config_activated == new
        parts = _root_parts(prev, execution)
        assert execution.state_root == digest_of([*parts, ["members", None, new.digest]])
        assert execution.state_root != digest_of(parts)


def test_a_pbft_network_adds_removes_rotates_and_moves_members() -> None:
    chain = member_chain()
    chain.add([v2_tx(chain, v2_change(chain, add_op(0)))])  # +s0 as id 4
    chain.run_to(E(1))
    c1 = chain.app.config
    assert c1 is not None and [m.id for m in c1.members] == [0, 1, 2, 3, 4]
    # The new member approves and signs from now on (the fixture signs with config(h)).
    approvers = [c1.key_of(i) for i in (4, 3, 2, 1)]
    change = v2_change(chain, RemoveMember(0), nonce=b"r")
    block = chain.add([v2_tx(chain, change, approved=approvals(chain, change, approvers))])  # type: ignore[arg-type]
    accepted(block)
    chain.run_to(E(block.height))
    c2 = chain.app.config
    assert c2 is not None and c2.epoch == 2 and [m.id for m in c2.members] == [1, 2, 3, 4]
    assert c2.primary(0) == 1
    # n1's key is gone: it may no longer submit a change (not a client, not a member)
    change = v2_change(chain, RotateKey(2, SPARES[1].public), nonce=b"k")
    gone = chain.add([v2_tx(chain, change, by=MEMBERS[0])])
    assert refused(gone) == "unknown_client"
    rotate = chain.add([v2_tx(chain, change, by=MEMBERS[1])])  # a member may submit
    accepted(rotate)
    chain.run_to(E(rotate.height))
    c3 = chain.app.config
    assert (
        c3 is not None and c3.key_of(2) == SPARES[1].public and c3.by_key(MEMBERS[2].public) is None
    )
    change = v2_change(chain, SetAddresses(3, "10.9.9.9:7101", "10.9.9.9:7201"), nonce=b"a")
    moved = chain.add([v2_tx(chain, change)])
    accepted(moved)
    chain.run_to(E(moved.height))
    c4 = chain.app.config
    assert c4 is not None and c4.epoch == 4
    assert c4.member(3) == MemberInfo(3, "n4", MEMBERS[3].public, "10.9.9.9:7101", "10.9.9.9:7201")
    assert sorted(chain.app.configs) == [0, 1, 2, 3, 4]
    for epoch, (first, config) in chain.app.configs.items():
        assert chain.app.config_at(first) == config
        if epoch:
            assert chain.app.config_at(first - 1).epoch == epoch - 1


def test_a_replacement_in_one_pbft_change_needs_a_possession_for_the_new_key_only() -> None:
    chain = member_chain()
    change = v2_change(chain, RemoveMember(3), add_op(0))
    block = chain.add([v2_tx(chain, change)])
    accepted(block)
    new = chain.app.pending_member[2]  # type: ignore[index]
    assert [m.id for m in new.members] == [0, 1, 2, 4]


# --- raft: the change is in force at the end of block c -----------------------------------------


def test_a_raft_network_adds_a_learner_promotes_rotates_moves_and_removes() -> None:
    chain = member_chain("raft")
    add = chain.add([v2_tx(chain, v2_change(chain, add_op(0)))])
    accepted(add)
    c1 = chain.app.config
    assert c1 is not None and c1.epoch == 1
    assert add.header.config_digest == c1.digest  # header c commits the new configuration
    assert chain.blocks[-1][1].config_activated == c1
    assert chain.app.config_at(add.height) == genesis_configuration(chain.genesis)
    assert chain.app.config_at(add.height + 1) == c1
    learner = c1.member(4)
    assert learner is not None and learner.role == "learner" and c1.n == 4  # not a voter yet
    # A learner never approves.
    change = v2_change(chain, PromoteLearner(4), nonce=b"p")
    keys = [SPARES[0].public, MEMBERS[0].public, MEMBERS[1].public]
    assert refused(chain.add([v2_tx(chain, change, approved=approvals(chain, change, keys))])) == (
        "config_non_member_signer"
    )
    change = v2_change(chain, PromoteLearner(4), nonce=b"p2")
    accepted(chain.add([v2_tx(chain, change)]))
    c2 = chain.app.config
    assert c2 is not None and c2.n == 5 and c2.member(4).role == "voter"  # type: ignore[union-attr]
    change = v2_change(chain, RotateKey(1, SPARES[2].public), nonce=b"k")
    accepted(chain.add([v2_tx(chain, change)]))
    change = v2_change(chain, SetAddresses(2, "10.1.1.1:7101", "10.1.1.1:7201"), nonce=b"a")
    accepted(chain.add([v2_tx(chain, change)]))
    change = v2_change(chain, RemoveMember(0), nonce=b"r")
    accepted(chain.add([v2_tx(chain, change)]))
    last = chain.app.config
    assert last is not None and last.epoch == 5 and [m.id for m in last.members] == [1, 2, 3, 4]
    assert last.key_of(1) == SPARES[2].public
    # the fixture's leader is config(h)'s first voter: n2 (id 1) now
    assert chain.add([]).header.config_digest == last.digest


def test_raft_allows_one_member_change_per_block_and_one_op_per_change() -> None:
    chain = member_chain("raft")
    two = v2_change(chain, add_op(0), add_op(1))
    assert refused(chain.add([v2_tx(chain, two)])) == "config_not_single_server"
    first = v2_tx(chain, v2_change(chain, add_op(0), nonce=b"1"))
    second = v2_tx(chain, v2_change(chain, add_op(1), nonce=b"2"))
    block = chain.add([first, second])
    assert [r.reason for r in block.receipts] == ["", "config_change_pending"]


def test_a_v2_client_change_takes_effect_at_h_plus_1_in_raft() -> None:
    chain = member_chain("raft")
    change = v2_change(chain, AdmitClient(NEWCLIENT.public, "new"), kind="clients")
    block = chain.add([v2_tx(chain, change)])
    accepted(block)
    assert [p.effective_height for p in chain.app.pending] == [block.height + 1]
    served = chain.add([chain.tx(Put(b"x", b"1"), signer=NEWCLIENT)])
    assert served.receipts[0].status == "ok"


# --- clients under v2, and v1 at epoch 0 only ---------------------------------------------------


def test_a_v2_client_change_is_pending_until_the_pbft_boundary_and_v1_can_overtake_it() -> None:
    chain = member_chain()
    v2 = v2_change(chain, AdmitClient(NEWCLIENT.public, "new"), kind="clients")
    block = chain.add([v2_tx(chain, v2)])
    accepted(block)
    assert [p.effective_height for p in chain.app.pending] == [E(block.height)]
    other = KeyPair.from_seed(b"\1" * 32)
    v1 = ClientChange.create(
        chain.genesis.chain_id,
        ADMIT,
        other.public,
        "v1",
        b"v1",
        CREATED_MS + HOUR_MS,
        created_ms=chain.head.timestamp_ms,
    )
    from tests.ledger.test_admission import approve

    accepted(chain.add([chain.tx(ConfigChange(v1, approve(v1)))]))
    # sorted by effective height: the later v1 change comes first
    assert [p.client_key for p in chain.app.pending] == [other.public, NEWCLIENT.public]
    assert chain.app.pending[0].effective_height < chain.app.pending[1].effective_height
    chain.run_to(E(block.height))
    assert NEWCLIENT.public in chain.app.admitted and other.public in chain.app.admitted
    assert not chain.app.pending


def test_a_v1_revoke_after_a_v2_admit_of_the_key_waits_for_it_and_ends_revoked() -> None:
    """A key's changes apply in the order they were accepted: the v1 revoke's own E (the
    next boundary) is before the v2 admit's (c+L rounded up), so it takes the admit's, else
    the admit would apply last and the revoked key end admitted."""
    chain = member_chain()
    admit = v2_change(chain, AdmitClient(NEWCLIENT.public, "new"), kind="clients")
    accepted(chain.add([v2_tx(chain, admit)]))
    e_admit = E(1)
    v1 = ClientChange.create(
        chain.genesis.chain_id,
        REVOKE,
        NEWCLIENT.public,
        "",
        b"v1",
        CREATED_MS + HOUR_MS,
        created_ms=chain.head.timestamp_ms + 1,  # after the admit's block time
    )
    from tests.ledger.test_admission import approve

    accepted(chain.add([chain.tx(ConfigChange(v1, approve(v1)))]))
    assert e_admit > (2 // K + 1) * K  # the revoke's own effective height comes first
    assert [(p.kind, p.effective_height) for p in chain.app.pending] == [
        (ADMIT, e_admit),
        (REVOKE, e_admit),
    ]
    chain.run_to(e_admit)
    assert NEWCLIENT.public not in chain.app.admitted and not chain.app.pending


def test_v1_changes_are_refused_as_superseded_from_epoch_1() -> None:
    chain = member_chain()
    chain.add([v2_tx(chain, v2_change(chain, add_op(0)))])
    chain.run_to(E(1))
    v1 = ClientChange.create(
        chain.genesis.chain_id,
        ADMIT,
        NEWCLIENT.public,
        "v1",
        b"v1",
        CREATED_MS + HOUR_MS,
        created_ms=chain.head.timestamp_ms,
    )
    from tests.ledger.test_admission import approve

    assert refused(chain.add([chain.tx(ConfigChange(v1, approve(v1)))])) == "config_superseded"


def _v1_admit(chain: object, key: bytes, nonce: bytes = b"v1") -> Transaction:
    from tests.ledger.test_admission import approve

    assert isinstance(chain, MemberChain)
    v1 = ClientChange.create(
        chain.genesis.chain_id,
        ADMIT,
        key,
        "v1",
        nonce,
        CREATED_MS + HOUR_MS,
        created_ms=chain.head.timestamp_ms,
    )
    return chain.tx(ConfigChange(v1, approve(v1)))


def test_a_v1_admit_of_a_pending_members_key_is_refused() -> None:
    """Still at epoch 0 (pbft, before E), a v1 change must not make the key of a member
    about to join a client's too: it is refused as a member's key, as a genesis member's is."""
    chain = member_chain()
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))]))
    assert chain.app.pending_member is not None and chain.app.config.epoch == 0  # type: ignore[union-attr]
    assert refused(chain.add([_v1_admit(chain, SPARES[0].public)])) == "config_member_key"
    # and in the block that makes it a member's
    other = member_chain()
    add = v2_tx(other, v2_change(other, add_op(1), nonce=b"m"))
    block = other.add([add, _v1_admit(other, SPARES[1].public)])
    assert [r.reason for r in block.receipts] == ["", "config_member_key"]
    assert SPARES[1].public not in {p.client_key for p in other.app.pending}


def test_used_keys_are_never_admitted_again() -> None:
    chain = member_chain()
    admit = v2_change(chain, AdmitClient(NEWCLIENT.public, "new"), kind="clients", nonce=b"a")
    accepted(chain.add([v2_tx(chain, admit)]))
    chain.run_to(E(1))
    revoke = v2_change(chain, RevokeClient(NEWCLIENT.public), kind="clients", nonce=b"r")
    accepted(chain.add([v2_tx(chain, revoke)]))
    chain.run_to(E(chain.head.height))
    assert NEWCLIENT.public not in chain.app.admitted
    again = v2_change(chain, AdmitClient(NEWCLIENT.public, "again"), kind="clients", nonce=b"g")
    assert refused(chain.add([v2_tx(chain, again)])) == "config_key_used"
    # a member's key as a client, and a client's key as a member
    member = v2_change(chain, AdmitClient(MEMBERS[1].public, "m"), kind="clients", nonce=b"m")
    assert refused(chain.add([v2_tx(chain, member)])) == "config_key_used"
    client = v2_change(chain, add_op(0, key=NEWCLIENT.public), nonce=b"c")
    assert refused(chain.add([v2_tx(chain, client, proven=())])) == "config_key_used"
    # a removed member's key and a rotated-away key never come back
    remove = v2_change(chain, RemoveMember(3), add_op(1), nonce=b"x")
    accepted(chain.add([v2_tx(chain, remove)]))
    chain.run_to(E(chain.head.height))
    back = v2_change(chain, add_op(0, name="back", key=MEMBERS[3].public), nonce=b"b")
    assert refused(chain.add([v2_tx(chain, back)])) == "config_key_used"


def test_a_key_new_earlier_in_the_block_is_used() -> None:
    chain = member_chain()
    admit = v2_tx(chain, v2_change(chain, AdmitClient(SPARES[0].public, "x"), kind="clients"))
    add = v2_tx(chain, v2_change(chain, add_op(0), nonce=b"2"))
    block = chain.add([admit, add])
    assert [r.reason for r in block.receipts] == ["", "config_key_used"]


def test_a_member_may_submit_and_used_keys_count_for_may_submit() -> None:
    chain = member_chain()
    change = v2_change(chain, RemoveMember(3), add_op(1))
    tx = v2_tx(chain, change, by=MEMBERS[3])
    assert chain.app.may_submit(tx)
    accepted(chain.add([tx]))
    chain.run_to(E(1))
    # n4 left: its config transactions may still be carried (the set only grows), they
    # execute as unknown_client
    later = v2_tx(chain, v2_change(chain, add_op(0), nonce=b"z"), by=MEMBERS[3])
    assert chain.app.may_submit(later)
    assert not chain.app.may_submit(chain.tx(Put(b"a", b"1"), signer=MEMBERS[3]))
    assert refused(chain.add([later])) == "unknown_client"


# --- every refusal, in order --------------------------------------------------------------------


def _refusal(chain, change, **kw) -> str:  # type: ignore[no-untyped-def]
    return refused(chain.add([v2_tx(chain, change, **kw)]))


def test_the_shared_checks_come_first() -> None:
    chain = member_chain()
    ts = chain.head.timestamp_ms + 1  # the next block's time
    other = replace(chain.app.config, chain_id=b"\7" * 32)  # type: ignore[type-var]
    assert _refusal(chain, v2_change(chain, add_op(0), config=other)) == "config_wrong_chain"
    change = v2_change(chain, add_op(0), nonce=b"d")
    accepted(chain.add([v2_tx(chain, change)]))
    again = v2_tx(chain, change)
    assert refused(chain.add([again])) == "config_duplicate"
    ts = chain.head.timestamp_ms + 1
    assert (
        _refusal(
            chain, v2_change(chain, add_op(1), nonce=b"e", expiry_ms=ts - 1, created_ms=ts - 2)
        )
        == "config_expired"
    )
    far = ts + 8 * 24 * HOUR_MS
    assert _refusal(chain, v2_change(chain, add_op(1), nonce=b"f", expiry_ms=far)) == (
        "config_expiry_too_far"
    )
    later = v2_change(chain, add_op(1), nonce=b"g", created_ms=ts + 10, expiry_ms=ts + HOUR_MS)
    assert _refusal(chain, later) == "config_created_later"


def test_a_change_under_another_epoch_or_digest_is_superseded() -> None:
    chain = member_chain()
    config = chain.app.config
    assert config is not None
    wrong_epoch = replace(config, epoch=1)
    wrong_members = replace(
        config, members=(*config.members[:3], replace(config.members[3], name="x"))
    )
    assert _refusal(chain, v2_change(chain, add_op(0), config=wrong_epoch)) == "config_superseded"
    assert _refusal(chain, v2_change(chain, add_op(0), config=wrong_members, nonce=b"2")) == (
        "config_superseded"
    )
    # and one approved before a change took effect
    before = v2_change(chain, add_op(1), nonce=b"b")
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0), nonce=b"3"))]))
    chain.run_to(E(chain.head.height))
    assert _refusal(chain, before) == "config_superseded"


def test_one_member_change_at_a_time_in_pbft() -> None:
    chain = member_chain()
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))]))
    e = E(1)
    chain.run_to(e - 1)
    # pending through block E itself (its transactions execute under the old configuration)
    assert _refusal(chain, v2_change(chain, add_op(1), nonce=b"2")) == "config_change_pending"
    assert chain.head.height == e and chain.app.config.epoch == 1  # type: ignore[union-attr]
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(1), nonce=b"3"))]))


@pytest.mark.parametrize(
    "ops, reason",
    [
        ((PromoteLearner(1),), "config_mode"),
        ((RemoveMember(9),), "config_unknown_member"),
        ((RemoveMember(1), RotateKey(1, SPARES[1].public)), "config_unknown_member"),
        (
            (RotateKey(1, SPARES[1].public), SetAddresses(1, "10.0.0.1:1", "10.0.0.1:2")),
            "config_conflicting_ops",
        ),
        ((RotateKey(1, b"\0" * 32),), "config_invalid_key"),
        ((add_op(0), add_op(1, key=SPARES[0].public)), "config_key_used"),
        ((add_op(0, name="n2"),), "config_name_used"),
        ((add_op(0), add_op(1, name="s0")), "config_name_used"),
        ((SetAddresses(1, "nowhere", "10.0.0.1:2"),), "config_invalid_address"),
        ((RemoveMember(1),), "config_too_few_members"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_each_op_refusal_of_a_pbft_change(ops: tuple, reason: str) -> None:  # type: ignore[type-arg]
    chain = member_chain()
    change = v2_change(chain, *ops)
    proven = tuple(
        change.prove_possession(Ed25519Signer(k)) for k in SPARES[:2] if k.public in change.new_keys
    )
    assert _refusal(chain, change, proven=proven) == reason


def test_a_raft_promote_of_a_voter_is_refused() -> None:
    chain = member_chain("raft")
    assert _refusal(chain, v2_change(chain, PromoteLearner(1))) == "config_not_learner"


def test_a_change_beyond_the_largest_configuration_is_refused() -> None:
    chain = member_chain()
    keys = [
        KeyPair.from_seed(hashlib.sha256(b"big %d" % i).digest()).public for i in range(MEMBERS_MAX)
    ]
    big = Configuration(
        chain.genesis.chain_id,
        0,
        "pbft",
        tuple(MemberInfo(i, f"b{i}", k, "10.0.0.1:1", "10.0.0.1:2") for i, k in enumerate(keys)),
    )
    app = KeyValueState(
        chain.genesis.chain_id,
        PARAMS,
        {CLIENT.public: "c"},
        b"\0" * 32,
        config=big,
        member_changes=True,
    )
    change = ChangeV2.create(
        big, "members", [add_op(0)], b"n", CREATED_MS + HOUR_MS, created_ms=CREATED_MS
    )
    tx = chain.tx(ConfigChangeV2(change, (), possessions(change)))
    execution = app.execute(1, CREATED_MS + 1, (tx,))
    assert execution.receipts[0].reason == "config_too_many_members"


@pytest.mark.parametrize(
    "case", ["missing", "extra", "twice", "wrong-body", "approval-as-possession"]
)
def test_each_new_key_needs_exactly_one_valid_possession(case: str) -> None:
    chain = member_chain()
    change = v2_change(chain, add_op(0))
    other = v2_change(chain, add_op(0), nonce=b"other")
    good = change.prove_possession(Ed25519Signer(SPARES[0]))
    proven = {
        "missing": (),
        "extra": (good, change.prove_possession(Ed25519Signer(SPARES[1]))),
        "twice": (good, good),
        "wrong-body": (other.prove_possession(Ed25519Signer(SPARES[0])),),
        "approval-as-possession": (change.approve(Ed25519Signer(SPARES[0])),),
    }[case]
    assert _refusal(chain, change, proven=proven) == "config_bad_possession"


@pytest.mark.parametrize(
    "case, reason",
    [
        ("two", "config_no_quorum"),
        ("twice", "config_duplicate_signer"),
        ("stranger", "config_non_member_signer"),
        ("client-domain", "config_bad_signature"),
    ],
)
def test_approvals_are_judged_against_the_voters_of_the_configuration_in_force(
    case: str, reason: str
) -> None:
    chain = member_chain()
    change = v2_change(chain, add_op(0))
    m = [k.public for k in MEMBERS]
    approved = {
        "two": approvals(chain, change, m[:2]),
        "twice": approvals(chain, change, [m[0], m[0], m[1]]),
        "stranger": approvals(chain, change, [m[0], m[1], SPARES[3].public]),
        "client-domain": approvals(chain, change, m[:3], domain=Domain.CLIENT_CHANGE),
    }[case]
    assert _refusal(chain, change, approved=approved) == reason


def test_v2_client_refusals() -> None:
    chain = member_chain()
    admitted = v2_change(chain, AdmitClient(CLIENT.public, "c"), kind="clients")
    assert _refusal(chain, admitted) == "config_already_admitted"
    absent = v2_change(chain, RevokeClient(NEWCLIENT.public), kind="clients", nonce=b"2")
    assert _refusal(chain, absent) == "config_not_admitted"
    bad = v2_change(chain, AdmitClient(b"\0" * 32, "z"), kind="clients", nonce=b"3")
    assert _refusal(chain, bad) == "config_invalid_key"
    few = v2_change(chain, AdmitClient(NEWCLIENT.public, "n"), kind="clients", nonce=b"4")
    assert _refusal(chain, few, approved=approvals(chain, few, [MEMBERS[0].public])) == (
        "config_no_quorum"
    )


def test_ids_are_never_reused() -> None:
    chain = member_chain("raft")
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))]))  # id 4
    accepted(chain.add([v2_tx(chain, v2_change(chain, RemoveMember(4), nonce=b"r"))]))
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(1), nonce=b"a"))]))
    config = chain.app.config
    assert config is not None and config.member(4) is None and config.member(5) is not None
    assert _refusal(chain, v2_change(chain, add_op(2, name="s0"), nonce=b"b")) == "config_name_used"


def test_a_state_without_a_configuration_refuses_v2_changes() -> None:
    chain = member_chain()
    change = v2_change(chain, add_op(0))
    bare = KeyValueState(
        chain.genesis.chain_id, PARAMS, {CLIENT.public: "c"}, b"\0" * 32, member_changes=True
    )
    execution = bare.execute(1, CREATED_MS + 1, (v2_tx(chain, change),))
    assert execution.receipts[0].reason == "config_no_quorum"
    assert execution.member_accepted is None


def test_params_fix_the_effective_height() -> None:
    p = Params(checkpoint_interval=32, window=64)
    assert [effective_height("pbft", c, p) for c in (45, 64, 65)] == [128, 128, 160]
    assert REVOKE == "revoke"


def test_a_state_built_without_used_keys_derives_them_as_execution_does() -> None:
    """From the clients admitted, every key with an accepted change (a revoked one too, and a
    pending one) and every member key of every configuration, pending ones included."""
    from tests.ledger.test_admission import approve

    chain = member_chain()
    gone = KeyPair.from_seed(hashlib.sha256(b"a client revoked").digest())
    for kind, nonce in ((ADMIT, b"a"), (REVOKE, b"r")):
        c = ClientChange.create(
            chain.genesis.chain_id,
            kind,
            gone.public,
            "g" if kind == ADMIT else "",
            nonce,
            CREATED_MS + HOUR_MS,
            created_ms=chain.head.timestamp_ms + 1,
        )
        accepted(chain.add([chain.tx(ConfigChange(c, approve(c)))]))
        chain.run_to(chain.app.pending[-1].effective_height)
    assert gone.public not in chain.app.admitted and gone.public in chain.app.changed_ms
    admit = v2_change(chain, AdmitClient(NEWCLIENT.public, "n"), kind="clients", nonce=b"n")
    accepted(chain.add([v2_tx(chain, admit)]))  # pending
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))]))  # pending member
    app = chain.app
    rebuilt = KeyValueState(
        app.chain_id,
        app.params,
        dict(app.admitted),
        app.state_root,
        pending=list(app.pending),
        changed_ms=dict(app.changed_ms),
        config=app.config,
        configs=dict(app.configs),
        pending_member=app.pending_member,
    )
    assert rebuilt.used_keys == app.used_keys
    assert {gone.public, NEWCLIENT.public, SPARES[0].public} <= set(rebuilt.used_keys)
    again = KeyValueState.for_genesis(
        chain.genesis,
        app.state_root,
        admitted=dict(app.admitted),
        pending=list(app.pending),
        changed_ms=dict(app.changed_ms),
        configs=dict(app.configs),
        pending_member=app.pending_member,
    )
    assert again.used_keys == app.used_keys
