"""Admitting and revoking clients: approvals, key validation, effective heights, replay,
persistence and the audit."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from consortium.crypto.codec import WireFormatError
from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import Domain, Ed25519Signer
from consortium.ledger.admission import (
    ADMIT,
    CHANGE_TTL_MAX_MS,
    REVOKE,
    Approval,
    ChangeKind,
    ClientChange,
    Proposal,
    ProposalError,
    check_approvals,
    check_client_key,
    effective_height,
)
from consortium.ledger.audit import audit_ledger
from consortium.ledger.block import Block
from consortium.ledger.genesis import Params
from consortium.ledger.store import BlockStore
from consortium.ledger.tx import ConfigChange, Put, Transaction
from tests.ledger.chain_fixture import CLIENT, CREATED_MS, MEMBERS, ChainBuilder, make_genesis

K = 4  # checkpoint interval of these ledgers
PARAMS = Params(checkpoint_interval=K, window=2 * K)
NEW = KeyPair.from_seed(hashlib.sha256(b"new client").digest())
DATA = Path(__file__).parent.parent / "data"
SMALL_ORDER = [
    bytes.fromhex(line.strip())
    for line in (DATA / "ed25519-small-order-keys.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]


def new_chain(mode: str = "pbft") -> ChainBuilder:
    return ChainBuilder(make_genesis(PARAMS, mode=mode))  # type: ignore[arg-type]


def change(
    chain: ChainBuilder,
    kind: ChangeKind,
    key: bytes,
    *,
    nonce: bytes = b"n",
    expiry_ms: int = CREATED_MS + 3_600_000,
    chain_id: bytes | None = None,
) -> ClientChange:
    return ClientChange.create(
        chain_id or chain.genesis.chain_id,
        kind,
        key,
        "label",
        nonce,
        expiry_ms,
        created_ms=chain.head.timestamp_ms,
    )


def approve(
    c: ClientChange,
    signers: tuple[int, ...] = (0, 1, 2),
    *,
    domain: Domain = Domain.CLIENT_CHANGE,
    chain_id: bytes | None = None,
) -> tuple[Approval, ...]:
    return tuple(
        (MEMBERS[i].public, Ed25519Signer(MEMBERS[i]).sign(domain, chain_id or c.chain_id, c.body))
        for i in signers
    )


def config_tx(
    chain: ChainBuilder,
    c: ClientChange,
    approvals: tuple[Approval, ...] | None = None,
    signer: KeyPair = CLIENT,
) -> Transaction:
    return chain.tx(ConfigChange(c, approve(c) if approvals is None else approvals), signer=signer)


def receipt_of(block: Block) -> tuple[str, str]:
    (r,) = block.receipts
    return r.status, r.reason


def until(chain: ChainBuilder, height: int) -> None:
    """Empty blocks up to `height` - 1, so the next block added is at `height`."""
    while chain.head.height < height - 1:
        chain.add([])


# --- approvals ------------------------------------------------------------------------------


def test_a_quorum_of_distinct_member_approvals_is_needed() -> None:
    chain = new_chain()
    g = chain.genesis
    members = [m.public_key for m in g.members]
    c = change(chain, ADMIT, NEW.public)
    assert g.quorum == 3  # pbft n=4: 2f+1
    assert check_approvals(c, approve(c, (0, 1, 2)), members, g.quorum) is None
    assert check_approvals(c, approve(c, (3, 1, 0, 2)), members, g.quorum) is None
    refusal = check_approvals(c, approve(c, (0, 1)), members, g.quorum)
    assert refusal is not None and refusal.reason == "config_no_quorum"
    assert "2 member signatures, 3 needed" in refusal.detail


def test_raft_needs_a_majority() -> None:
    chain = new_chain("raft")
    g = chain.genesis
    members = [m.public_key for m in g.members]
    c = change(chain, ADMIT, NEW.public)
    assert g.quorum == 3  # raft n=4: a majority
    assert check_approvals(c, approve(c, (1, 2, 3)), members, g.quorum) is None
    refusal = check_approvals(c, approve(c, (1, 2)), members, g.quorum)
    assert refusal is not None and refusal.reason == "config_no_quorum"


def test_a_duplicate_signer_never_counts_twice_and_refuses_the_change() -> None:
    chain = new_chain()
    members = [m.public_key for m in chain.genesis.members]
    c = change(chain, ADMIT, NEW.public)
    twice = approve(c, (0, 0, 1))
    refusal = check_approvals(c, twice, members, 3)
    assert refusal is not None and refusal.reason == "config_duplicate_signer"
    # Even with a quorum of distinct signers besides, a duplicate is refused.
    refusal = check_approvals(c, approve(c, (0, 1, 2, 2)), members, 3)
    assert refusal is not None and refusal.reason == "config_duplicate_signer"
    block = chain.add([config_tx(chain, c, twice)])
    assert receipt_of(block) == ("rejected", "config_duplicate_signer")


def test_a_non_member_signer_refuses_the_change() -> None:
    chain = new_chain()
    c = change(chain, ADMIT, NEW.public)
    outsider = (NEW.public, Ed25519Signer(NEW).sign(Domain.CLIENT_CHANGE, c.chain_id, c.body))
    block = chain.add([config_tx(chain, c, (*approve(c), outsider))])
    assert receipt_of(block) == ("rejected", "config_non_member_signer")
    assert NEW.public not in chain.app.admitted and not chain.app.pending


@pytest.mark.parametrize("where", ["domain", "chain"])
def test_an_approval_for_another_domain_or_chain_does_not_verify(where: str) -> None:
    chain = new_chain()
    c = change(chain, ADMIT, NEW.public)
    approvals = (
        approve(c, domain=Domain.TX) if where == "domain" else approve(c, chain_id=b"\x07" * 32)
    )
    block = chain.add([config_tx(chain, c, approvals)])
    assert receipt_of(block) == ("rejected", "config_bad_signature")


def test_a_change_naming_another_chain_is_refused() -> None:
    chain = new_chain()
    c = change(chain, ADMIT, NEW.public, chain_id=b"\x07" * 32)
    block = chain.add([config_tx(chain, c)])
    assert receipt_of(block) == ("rejected", "config_wrong_chain")


# --- keys -----------------------------------------------------------------------------------


def test_small_order_and_malformed_keys_are_refused_at_admission() -> None:
    assert len(SMALL_ORDER) >= 8
    members = [m.public for m in MEMBERS]
    for key in [*SMALL_ORDER, b"\xff" * 32]:
        refusal = check_client_key(key, members)
        assert refusal is not None and refusal.reason == "config_invalid_key", key.hex()
        assert "small-order" in refusal.detail
    chain = new_chain()
    block = chain.add([config_tx(chain, change(chain, ADMIT, SMALL_ORDER[0]))])
    assert receipt_of(block) == ("rejected", "config_invalid_key")
    member = check_client_key(MEMBERS[2].public, members)
    assert member is not None and member.reason == "config_member_key"
    with pytest.raises(WireFormatError, match="32 bytes"):
        ClientChange.create(chain.genesis.chain_id, ADMIT, b"\x01" * 31, "", b"", 1, created_ms=0)


def test_the_cli_refuses_small_order_and_malformed_keys(tmp_path: Path) -> None:
    from consortium.cli.clients import parse_public_key
    from consortium.crypto.keys import InvalidKeyError

    for key in SMALL_ORDER:
        with pytest.raises(InvalidKeyError, match="small-order"):
            parse_public_key(key.hex())
    with pytest.raises(InvalidKeyError, match="64 hex characters"):
        parse_public_key("abcd")
    pub = tmp_path / "k.pub"
    pub.write_text(NEW.public.hex() + "\n")
    assert parse_public_key(str(pub)) == NEW.public
    pem = tmp_path / "k.pem"
    NEW.save(pem)
    assert parse_public_key(str(pem)) == NEW.public


# --- effective heights ----------------------------------------------------------------------


def test_effective_height_is_the_first_checkpoint_after_the_block() -> None:
    assert [effective_height(h, 4) for h in (1, 3, 4, 5, 8)] == [4, 4, 8, 8, 12]


def test_an_admitted_client_is_refused_before_the_effective_height_and_served_from_it() -> None:
    chain = new_chain()
    early = chain.add([chain.tx(Put(b"a", b"1"), signer=NEW)])
    assert receipt_of(early) == ("rejected", "unknown_client")
    c = change(chain, ADMIT, NEW.public)
    accepted = chain.add([config_tx(chain, c)])  # height 2
    (r,) = accepted.receipts
    assert (r.status, r.results) == ("ok", (c.id,))
    assert [p.effective_height for p in chain.app.pending] == [K]
    assert chain.app.pending_admission(NEW.public) is not None
    before = chain.add([chain.tx(Put(b"a", b"2"), signer=NEW)])  # height 3 < 4
    assert receipt_of(before) == ("rejected", "unknown_client")
    at = chain.add([chain.tx(Put(b"a", b"3"), signer=NEW)])  # height 4: effective
    assert at.height == K and receipt_of(at) == ("ok", "")
    assert chain.app.admitted[NEW.public] == "label" and not chain.app.pending
    assert chain.app.get(b"a") == b"3"


def test_a_revoked_client_is_served_before_the_effective_height_and_refused_from_it() -> None:
    chain = new_chain()
    until(chain, 5)
    # A member submits the revocation of the genesis client (members need not be clients).
    revoke = config_tx(chain, change(chain, REVOKE, CLIENT.public), signer=MEMBERS[3])
    assert receipt_of(chain.add([revoke])) == ("ok", "")  # height 5: effective at 8
    before = [chain.add([chain.tx(Put(b"k", b"%d" % h))]) for h in (6, 7)]
    assert [receipt_of(b) for b in before] == [("ok", "")] * 2
    at = chain.add([chain.tx(Put(b"k", b"8"))])
    after = chain.add([chain.tx(Put(b"k", b"9"))])
    assert (at.height, receipt_of(at), receipt_of(after)) == (
        8,
        ("rejected", "unknown_client"),
        ("rejected", "unknown_client"),
    )
    assert chain.app.get(b"k") == b"7"  # what committed before stays
    assert CLIENT.public not in chain.app.admitted


def test_the_keys_ever_admitted_only_grow_and_are_what_a_batch_may_carry() -> None:
    """What a pbft backup prepares and an honest primary batches (KeyValueState.may_submit):
    a key admitted in genesis or by an accepted change, pending or in effect, revoked since or
    not (its transactions stay `unknown_client` receipts after the revocation, as before); a
    member's client change; nothing else. (`changed_ms`, which holds it, is stored state.)"""
    chain = new_chain()
    stranger = chain.tx(Put(b"a", b"1"), signer=NEW)
    member_change = config_tx(chain, change(chain, ADMIT, NEW.public), signer=MEMBERS[3])
    app = chain.app
    assert app.may_submit(chain.tx(Put(b"a", b"1")))  # the genesis client
    assert not app.may_submit(stranger) and not app.ever_admitted(NEW.public)
    assert app.may_submit(member_change)
    assert not app.may_submit(chain.tx(Put(b"a", b"1"), signer=MEMBERS[3]))
    chain.add([member_change])  # height 1: NEW admitted from K, pending until then
    assert app.may_submit(stranger) and NEW.public not in app.admitted
    until(chain, K + 1)
    chain.add([config_tx(chain, change(chain, REVOKE, NEW.public, nonce=b"r"))])
    until(chain, 2 * K + 1)
    assert NEW.public not in app.admitted and app.ever_admitted(NEW.public)
    revoked = chain.add([chain.tx(Put(b"a", b"2"), signer=NEW)])
    assert receipt_of(revoked) == ("rejected", "unknown_client")


def test_a_member_may_submit_only_client_changes() -> None:
    chain = new_chain()
    block = chain.add([chain.tx(Put(b"a", b"1"), signer=MEMBERS[0])])
    assert receipt_of(block) == ("rejected", "unknown_client")


def test_an_empty_block_at_the_effective_height_applies_the_change() -> None:
    chain = new_chain()
    chain.add([config_tx(chain, change(chain, ADMIT, NEW.public))])
    until(chain, K + 1)  # block K is empty
    assert NEW.public in chain.app.admitted


# --- replay, expiry and no-op changes --------------------------------------------------------


def test_a_change_executes_once_even_rewrapped_in_another_transaction() -> None:
    chain = new_chain()
    admit = change(chain, ADMIT, NEW.public)
    approvals = approve(admit)
    block = chain.add([config_tx(chain, admit, approvals), config_tx(chain, admit, approvals)])
    assert [r.reason for r in block.receipts] == ["", "config_duplicate"]
    until(chain, K + 1)
    revoke = change(chain, REVOKE, NEW.public)
    chain.add([config_tx(chain, revoke)])
    until(chain, 2 * K + 1)
    assert NEW.public not in chain.app.admitted
    # Replaying the old admission (its approvals are still valid) does not re-admit the key.
    replay = chain.add([config_tx(chain, admit, approvals)])
    assert receipt_of(replay) == ("rejected", "config_duplicate")


def test_expired_and_too_distant_changes_are_refused() -> None:
    chain = new_chain()
    old = change(chain, ADMIT, NEW.public, expiry_ms=CREATED_MS)
    far = change(chain, ADMIT, NEW.public, expiry_ms=CREATED_MS + CHANGE_TTL_MAX_MS + 10)
    block = chain.add([config_tx(chain, old), config_tx(chain, far)])
    assert [r.reason for r in block.receipts] == ["config_expired", "config_expiry_too_far"]


# Review 1 (issue 6): client admission as merged (69217cf) (a failing test then). "The previous
# test" is test_sign_refuses_a_proposal_expiring_beyond_the_change_ttl, in
# tests/cli/test_clients_cli.py.
def test_a_key_revoked_after_an_approval_was_signed_is_not_re_admitted_by_it() -> None:
    """The ledger side of the previous test: approvals of a change expiring far ahead stay
    usable for as long as its expiry, across a revocation of the same key (the replay set only
    covers changes that executed, and this one was refused as too far when first submitted)."""
    genesis = make_genesis(PARAMS)
    chain = ChainBuilder(genesis)
    year = 365 * 24 * 3600 * 1000
    signed = lambda kind, nonce, expiry: _approved(chain, kind, nonce, expiry)  # noqa: E731
    bomb = signed(ADMIT, b"bomb", CREATED_MS + year)
    first = chain.add([chain.tx(bomb)])
    assert first.receipts[0].reason == "config_expiry_too_far"  # looks dead
    chain.add([chain.tx(signed(ADMIT, b"a2", CREATED_MS + 3_600_000))])
    while chain.head.height < K:
        chain.add([])
    assert NEW.public in chain.app.admitted
    chain.add([chain.tx(signed(REVOKE, b"r", CREATED_MS + 3_600_000))])  # the key is compromised
    while chain.head.height < 2 * K:
        chain.add([])
    assert NEW.public not in chain.app.admitted
    later = CREATED_MS + year - 24 * 3600 * 1000
    replay = chain.add([chain.tx(bomb, expiry_ms=later + 60_000)], proposed_ms=later)
    while chain.head.height < 4 * K:
        chain.add([], proposed_ms=later)
    assert replay.receipts[0].status == "rejected" and NEW.public not in chain.app.admitted, (
        "an approval signed before the revocation re-admitted the revoked key"
    )


def _approved(chain: ChainBuilder, kind: Any, nonce: bytes, expiry: int) -> ConfigChange:
    # (Adjusted by the fix: a change now says when it was created, which must follow the
    # key's last accepted change; each is created when it is signed, at the chain's head.)
    c = ClientChange.create(
        chain.genesis.chain_id,
        kind,
        NEW.public,
        "new",
        nonce,
        expiry,
        created_ms=chain.head.timestamp_ms,
    )
    approvals = tuple(
        (
            MEMBERS[i].public,
            Ed25519Signer(MEMBERS[i]).sign(Domain.CLIENT_CHANGE, c.chain_id, c.body),
        )
        for i in (0, 1, 2)
    )
    return ConfigChange(c, approvals)


def test_changes_that_change_nothing_are_refused() -> None:
    chain = new_chain()
    block = chain.add(
        [
            config_tx(chain, change(chain, ADMIT, CLIENT.public)),  # admitted at genesis
            config_tx(chain, change(chain, REVOKE, NEW.public)),  # never admitted
            config_tx(chain, change(chain, ADMIT, NEW.public, nonce=b"1")),
            config_tx(chain, change(chain, ADMIT, NEW.public, nonce=b"2")),  # pending already
            # Would undo it, but was created (and approved) before that admission was
            # accepted: stale, as any change of a key approved before its last change.
            config_tx(chain, change(chain, REVOKE, NEW.public, nonce=b"3")),
        ]
    )
    assert [r.reason for r in block.receipts] == [
        "config_already_admitted",
        "config_not_admitted",
        "",
        "config_already_admitted",
        "config_superseded",
    ]
    until(chain, K + 1)
    assert NEW.public in chain.app.admitted and not chain.app.pending
    # A revocation created after the admission was accepted undoes it.
    chain.add([config_tx(chain, change(chain, REVOKE, NEW.public, nonce=b"4"))])
    until(chain, 2 * K + 1)
    assert NEW.public not in chain.app.admitted and not chain.app.pending


def test_a_config_operation_must_be_alone_in_its_transaction() -> None:
    chain = new_chain()
    c = change(chain, ADMIT, NEW.public)
    tx = chain.tx(ConfigChange(c, approve(c)), Put(b"a", b"1"))
    with pytest.raises(WireFormatError, match="only operation"):
        Transaction.decode(tx.encode(), chain.genesis.params)
    alone = config_tx(chain, c)
    assert Transaction.decode(alone.encode(), chain.genesis.params) == alone


def test_client_changes_enter_the_state_root() -> None:
    a, b = new_chain(), new_chain()
    a.add([config_tx(a, change(a, ADMIT, NEW.public))])
    b.add([b.tx(Put(b"x", b"1"))])
    assert a.head.state_root != b.head.state_root
    until(a, K + 1)
    until(b, K + 1)
    assert a.blocks[K - 1][0].header.state_root != b.blocks[K - 1][0].header.state_root


# --- the store and the audit ----------------------------------------------------------------


def _admitting_chain() -> ChainBuilder:
    chain = new_chain()
    chain.add([config_tx(chain, change(chain, ADMIT, NEW.public))])
    until(chain, 3)
    chain.add([config_tx(chain, change(chain, REVOKE, CLIENT.public), signer=MEMBERS[0])])
    return chain  # head 3: NEW admitted at 4, CLIENT revoked at 4


def test_admitted_clients_and_pending_changes_survive_a_reopen_and_pass_the_audit(
    tmp_path: Path,
) -> None:
    chain = _admitting_chain()
    path = tmp_path / "ledger.sqlite"
    store = BlockStore.open(path, chain.genesis)
    store.append_blocks(chain.blocks)
    store.close()
    store = BlockStore.open(path, chain.genesis)
    assert store.app.admitted == chain.app.admitted == {CLIENT.public: "c1"}
    assert list(store.app.pending) == list(chain.app.pending) and len(chain.app.pending) == 2
    assert store.app.changed_ms == chain.app.changed_ms and len(chain.app.changed_ms) == 2
    store.close()
    assert audit_ledger(path, chain.genesis).ok
    done = len(chain.blocks)
    chain.add([chain.tx(Put(b"a", b"1"), signer=NEW), chain.tx(Put(b"b", b"1"))])
    store = BlockStore.open(path, chain.genesis)
    store.append_blocks(chain.blocks[done:])
    store.close()
    store = BlockStore.open(path, chain.genesis)
    assert store.app.admitted == {NEW.public: "label"} and not store.app.pending
    assert store.app.state_root == chain.head.state_root
    store.close()
    report = audit_ledger(path, chain.genesis)
    assert report.ok, report.problem
    assert [r.reason for r in chain.blocks[-1][0].receipts] == ["", "unknown_client"]


def test_the_audit_finds_a_change_accepted_without_a_quorum(tmp_path: Path) -> None:
    chain = new_chain()
    chain.app.quorum = 1  # a forger's member: one approval suffices
    c = change(chain, ADMIT, NEW.public)
    block = chain.add([config_tx(chain, c, approve(c, (2,)))])
    assert receipt_of(block) == ("ok", "")
    path = tmp_path / "ledger.sqlite"
    store = BlockStore.open(path, chain.genesis)
    store.append_blocks(chain.blocks)
    store.close()
    report = audit_ledger(path, chain.genesis)
    assert not report.ok and report.problem is not None
    assert report.problem.height == 1
    assert "accepted as a client change (admit)" in report.problem.reason
    assert "1 member signature, 3 needed" in report.problem.reason


def test_the_audit_compares_the_stored_clients_with_re_execution(tmp_path: Path) -> None:
    chain = _admitting_chain()
    path = tmp_path / "ledger.sqlite"
    store = BlockStore.open(path, chain.genesis)
    store.append_blocks(chain.blocks)
    store.close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO clients VALUES (?, ?)", (NEW.public, "sneaked in"))
    db.commit()
    db.close()
    report = audit_ledger(path, chain.genesis)
    assert report.problem is not None and "admitted clients differ" in report.problem.reason
    db = sqlite3.connect(path)
    db.execute("DELETE FROM clients WHERE key = ?", (NEW.public,))
    db.execute(
        "DELETE FROM pending_client_changes "
        "WHERE seq = (SELECT MAX(seq) FROM pending_client_changes)"
    )
    db.commit()
    db.close()
    report = audit_ledger(path, chain.genesis)
    assert report.problem is not None and "pending client changes differ" in report.problem.reason
    store = BlockStore.open(tmp_path / "again.sqlite", chain.genesis)
    store.append_blocks(chain.blocks)
    store.close()
    db = sqlite3.connect(tmp_path / "again.sqlite")
    db.execute("DELETE FROM client_changed")
    db.commit()
    db.close()
    report = audit_ledger(tmp_path / "again.sqlite", chain.genesis)
    assert report.problem is not None and "last client changes differ" in report.problem.reason


def test_approvals_collected_before_a_later_change_of_the_key_are_stale() -> None:
    """An admission approved but not submitted, then the key admitted by another change and
    revoked: the old admission (unexpired, never executed) cannot re-admit it."""
    chain = new_chain()
    old = change(chain, ADMIT, NEW.public, nonce=b"old")
    old_approvals = approve(old)
    chain.add([config_tx(chain, change(chain, ADMIT, NEW.public, nonce=b"other"))])
    until(chain, K + 1)
    chain.add([config_tx(chain, change(chain, REVOKE, NEW.public, nonce=b"revoke"))])
    until(chain, 2 * K + 1)
    assert NEW.public not in chain.app.admitted
    block = chain.add([config_tx(chain, old, old_approvals)])
    assert receipt_of(block) == ("rejected", "config_superseded")
    # A change created after the block time is refused too (its creator's clock is ahead).
    future = ClientChange.create(
        chain.genesis.chain_id,
        ADMIT,
        NEW.public,
        "",
        b"f",
        CREATED_MS + 3_600_000,
        created_ms=chain.head.timestamp_ms + 1_000,
    )
    block = chain.add([config_tx(chain, future)])
    assert receipt_of(block) == ("rejected", "config_created_later")
    fresh = change(chain, ADMIT, NEW.public, nonce=b"fresh")
    block = chain.add([config_tx(chain, fresh)])
    assert receipt_of(block) == ("ok", "")


# --- proposal files -------------------------------------------------------------------------


def test_a_proposal_file_round_trips_merges_and_refuses_edits(tmp_path: Path) -> None:
    chain = new_chain()
    c = change(chain, ADMIT, NEW.public)
    a, b = Proposal(c), Proposal(c)
    a.add(approve(c, (0,))[0])
    b.add(approve(c, (1,))[0])
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    merged = Proposal.load(tmp_path / "a.json")
    merged.merge(Proposal.load(tmp_path / "b.json"), "b.json")
    assert merged.approval_list() == tuple(sorted(approve(c, (0, 1))))
    other = Proposal(change(chain, ADMIT, NEW.public, nonce=b"other"))
    with pytest.raises(ProposalError, match="another change"):
        merged.merge(other, "other.json")
    edited = (tmp_path / "a.json").read_text().replace('"label": "label"', '"label": "evil"')
    with pytest.raises(ProposalError, match="'label'"):
        Proposal.from_json(edited, "edited.json")


def test_a_store_from_before_client_changes_is_given_the_genesis_clients(tmp_path: Path) -> None:
    chain = new_chain()
    chain.add([chain.tx(Put(b"a", b"1"))])
    path = tmp_path / "ledger.sqlite"
    store = BlockStore.open(path, chain.genesis)
    store.append_blocks(chain.blocks)
    store.close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE clients")
    db.execute("DROP TABLE pending_client_changes")
    db.commit()
    db.close()
    assert audit_ledger(path, chain.genesis).ok  # the audit reads such a store too
    store = BlockStore.open(path, chain.genesis)
    assert store.app.admitted == {CLIENT.public: "c1"}
    store.close()
    assert audit_ledger(path, chain.genesis).ok
