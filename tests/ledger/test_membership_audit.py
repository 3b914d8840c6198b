"""`ledger verify` across member changes (docs/design/membership.md 6.4): every height judged by
config(h); a change applied at the wrong height, a change without a quorum, a signature by a
key that left, a missing E certificate and tables that differ are named; the trust anchor."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from consortium.crypto.codec import as_list, pack, unpack_canonical
from consortium.crypto.signing import Domain
from consortium.ledger import state as state_module
from consortium.ledger.audit import AuditReport, audit_ledger
from consortium.ledger.block import batch_digest
from consortium.ledger.certificates import (
    CheckpointCertificate,
    CommitCertificate,
    RaftEntryCertificate,
    SignedVote,
    legacy_commit_body,
    raft_entry_body,
)
from consortium.ledger.membership import RemoveMember, RotateKey
from consortium.ledger.store import BlockStore
from consortium.ledger.tx import Put
from tests.ledger.chain_fixture import MEMBERS
from tests.ledger.membership_fixture import (
    SPARES,
    K,
    MemberChain,
    accepted,
    add_op,
    approvals,
    member_chain,
    signer,
    v2_change,
    v2_tx,
)
from tests.ledger.test_membership_store import activation_checkpoints
from tests.ledger.test_store_integrity import _sql


def store_of(
    path: Path,
    chain: MemberChain,
    *,
    checkpoints: bool = True,
    signatures: bool = True,
) -> None:
    store = BlockStore.open(path, chain.genesis, member_changes=True)
    try:
        store.save(
            blocks=chain.blocks,
            checkpoints=activation_checkpoints(chain) if checkpoints else [],
            block_signatures=[
                (b.height, v)
                for b, _, _ in chain.blocks
                if signatures
                for v in chain.block_signatures(b)
            ],
        )
    finally:
        store.close()


def failed(report: AuditReport) -> tuple[int, str]:
    assert not report.ok and report.problem is not None
    return report.problem.height, report.problem.reason


def pbft_history() -> MemberChain:
    """Add s0 (epoch 1), then rotate n2's key (epoch 2), with puts between."""
    chain = member_chain()
    chain.add([chain.tx(Put(b"a", b"1"))])
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))]))
    chain.run_to(chain.app.pending_member[0])  # type: ignore[index]
    chain.add([chain.tx(Put(b"b", b"2"))])
    accepted(
        chain.add([v2_tx(chain, v2_change(chain, RotateKey(1, SPARES[1].public), nonce=b"k"))])
    )
    chain.run_to(chain.app.pending_member[0] + 2)  # type: ignore[index]
    assert chain.app.config is not None and chain.app.config.epoch == 2
    return chain


@pytest.mark.parametrize("mode", ["pbft", "raft"])
def test_a_ledger_that_changes_members_verifies(tmp_path: Path, mode: str) -> None:
    if mode == "pbft":
        chain = pbft_history()
    else:
        chain = member_chain("raft")
        accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))]))
        accepted(chain.add([v2_tx(chain, v2_change(chain, RemoveMember(0), nonce=b"r"))]))
        chain.add([chain.tx(Put(b"a", b"1"))])  # led and signed by n2 (id 1) now
    path = tmp_path / "ledger.sqlite"
    store_of(path, chain)
    report = audit_ledger(path, chain.genesis, member_changes=True)
    assert report.ok, report.problem
    assert report.height == chain.head.height and report.head_hash == chain.head.hash


def test_a_change_applied_at_the_wrong_height_is_named(tmp_path: Path) -> None:
    """(teeth: the member's state applies the change K blocks late; its state root at c is
    right, so only the header's configuration shows it)"""
    chain = member_chain()
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))]))
    e, change_id, config = chain.app.pending_member  # type: ignore[misc]
    chain.app.pending_member = (e + K, change_id, config)
    chain.run_to(e + K + 1)
    assert chain.blocks[e - 1][0].header.config_digest is None
    assert chain.blocks[e + K - 1][0].header.config_digest == config.digest
    path = tmp_path / "ledger.sqlite"
    store = BlockStore.open(path, chain.genesis, member_changes=True)
    store.save(blocks=chain.blocks[: e + K], checkpoints=[chain.checkpoint(e + K)])
    store.close()
    height, reason = failed(audit_ledger(path, chain.genesis, member_changes=True))
    assert height == e
    assert reason == (
        f"configuration change accepted at 1 applied at the wrong height: header {e} commits "
        f"no configuration change, the rules put it at {e}"
    )


def test_a_change_accepted_without_a_quorum_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = member_chain()
    chain.add([])
    change = v2_change(chain, add_op(0))
    two = approvals(chain, change, [MEMBERS[0].public, MEMBERS[1].public])
    monkeypatch.setattr(state_module, "approval_problem", lambda *a, **k: None)  # a forger
    accepted(chain.add([v2_tx(chain, change, approved=two)]))
    monkeypatch.undo()
    path = tmp_path / "ledger.sqlite"
    store_of(path, chain)
    height, reason = failed(audit_ledger(path, chain.genesis, member_changes=True))
    assert height == 2
    assert reason.startswith(f"change {change.id.hex()[:12]}… (transaction 0) accepted at 2 ")
    assert "without a quorum of configuration 0: 2 voter signature(s), 3 needed" in reason


def test_a_change_accepted_without_its_possession_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = member_chain()
    change = v2_change(chain, add_op(0))
    monkeypatch.setattr(state_module, "possession_problem", lambda *a, **k: None)
    accepted(chain.add([v2_tx(chain, change, proven=())]))
    monkeypatch.undo()
    path = tmp_path / "ledger.sqlite"
    store_of(path, chain)
    height, reason = failed(audit_ledger(path, chain.genesis, member_changes=True))
    assert height == 1 and "without valid proofs of possession" in reason


def test_certificates_are_judged_by_the_configuration_of_their_height(tmp_path: Path) -> None:
    """After the rotation the old key of n2 certifies nothing; before it, it did."""
    chain = pbft_history()
    first = chain.app.configs[2][0]  # the first height epoch 2 orders
    block, execution, _ = chain.blocks[first - 1]
    # n2 votes with its rotated-away key, under epoch 2's body
    votes = []
    for i, keypair in ((0, MEMBERS[0]), (1, MEMBERS[1]), (2, MEMBERS[2]), (3, MEMBERS[3])):
        body = pack(["commit", 2, 0, first, _digest(chain, first), i])
        sig = signer(keypair.public).sign(
            Domain.PBFT,
            chain.genesis.chain_id,
            body,
        )
        votes.append(SignedVote(body, sig))
    chain.blocks[first - 1] = (
        block,
        execution,
        CommitCertificate(0, first, _digest(chain, first), tuple(votes)).encode(),
    )
    path = tmp_path / "ledger.sqlite"
    store_of(path, chain)
    height, reason = failed(audit_ledger(path, chain.genesis, member_changes=True))
    assert height == first and reason == "commit certificate: commit vote 1: bad signature by n2"


def test_a_legacy_certificate_is_refused_after_epoch_0(tmp_path: Path) -> None:
    chain = pbft_history()
    first = chain.app.configs[1][0]
    block, execution, _ = chain.blocks[first - 1]
    digest = _digest(chain, first)
    votes = []
    for i in (0, 1, 2, 3):
        body = legacy_commit_body(0, first, digest, i)
        sig = signer(MEMBERS[i].public).sign(
            Domain.PBFT,
            chain.genesis.chain_id,
            body,
        )
        votes.append(SignedVote(body, sig))
    chain.blocks[first - 1] = (
        block,
        execution,
        CommitCertificate(0, first, digest, tuple(votes)).encode(),
    )
    path = tmp_path / "ledger.sqlite"
    store_of(path, chain)
    height, reason = failed(audit_ledger(path, chain.genesis, member_changes=True))
    assert height == first and reason.startswith("commit certificate: commit vote 0:")


def _digest(chain: MemberChain, height: int) -> bytes:
    from consortium.ledger.block import batch_digest

    block = chain.blocks[height - 1][0]
    return batch_digest(block.header.proposed_ms, [t.id for t in block.txs])


def test_a_block_signature_by_a_key_that_left_is_refused(tmp_path: Path) -> None:
    chain = pbft_history()
    path = tmp_path / "ledger.sqlite"
    store_of(path, chain, signatures=False)
    first = chain.app.configs[2][0]
    block = chain.blocks[first - 1][0]
    from consortium.ledger.certificates import block_signature_body

    body = block_signature_body(block.height, block.hash, 1)
    old = SignedVote(
        body, signer(MEMBERS[1].public).sign(Domain.BLOCK, chain.genesis.chain_id, body)
    )
    store = BlockStore.open(path, chain.genesis, member_changes=True)
    store.add_block_signatures(first, [old])
    store.close()
    height, reason = failed(audit_ledger(path, chain.genesis, member_changes=True))
    assert height == first and reason == "block signature: block vote 0: bad signature by n2"
    # the same key signed the block before the rotation's boundary validly
    ok = tmp_path / "ok.sqlite"
    store_of(ok, chain, signatures=False)
    earlier = chain.blocks[first - 2][0]
    body = block_signature_body(earlier.height, earlier.hash, 1)
    vote = SignedVote(
        body, signer(MEMBERS[1].public).sign(Domain.BLOCK, chain.genesis.chain_id, body)
    )
    store = BlockStore.open(ok, chain.genesis, member_changes=True)
    store.add_block_signatures(earlier.height, [vote])
    store.close()
    assert audit_ledger(ok, chain.genesis, member_changes=True).ok


def test_a_raft_block_led_by_a_removed_member_is_refused(tmp_path: Path) -> None:
    chain = member_chain("raft")
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))]))
    accepted(chain.add([v2_tx(chain, v2_change(chain, RemoveMember(0), nonce=b"r"))]))
    chain.signers = None
    # the removed n1 leads the next block anyway
    removed = chain.app.configs[0][1]
    original = chain.config_at
    chain.config_at = lambda h: removed if h == chain.head.height + 1 else original(h)  # type: ignore[method-assign]
    chain.add([chain.tx(Put(b"a", b"1"))])
    path = tmp_path / "ledger.sqlite"
    store_of(path, chain, signatures=False)
    height, reason = failed(audit_ledger(path, chain.genesis, member_changes=True))
    assert (
        height == 3 and reason == "leader certificate: leader 0 is not a member of configuration 2"
    )


def test_a_missing_checkpoint_at_the_activation_height_is_named(tmp_path: Path) -> None:
    chain = member_chain()
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))]))
    e = chain.app.pending_member[0]  # type: ignore[index]
    chain.run_to(e)
    path = tmp_path / "ledger.sqlite"
    store_of(path, chain, checkpoints=False)
    assert audit_ledger(
        path, chain.genesis, member_changes=True
    ).ok  # block E alone may wait for it
    chain.add([])
    path = tmp_path / "longer.sqlite"
    store_of(path, chain, checkpoints=False)
    height, reason = failed(audit_ledger(path, chain.genesis, member_changes=True))
    assert height == e + 1
    assert reason == (
        f"configuration 1 was activated at {e} and orders this block, but no checkpoint "
        f"certificate of {e} is stored"
    )


@pytest.mark.parametrize(
    "table, statement, words",
    [
        (
            "used_keys",
            "DELETE FROM used_keys WHERE key = ?",
            "used keys",
        ),
        (
            "configurations",
            "UPDATE configurations SET first_height = first_height + 1 WHERE epoch = 1",
            "configurations",
        ),
        ("pending_member_change", "DELETE FROM pending_member_change", "pending member change"),
    ],
)
def test_the_membership_tables_must_equal_re_execution(
    tmp_path: Path, table: str, statement: str, words: str
) -> None:
    chain = member_chain()
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))]))
    chain.run_to(chain.app.pending_member[0])  # type: ignore[index]
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(1), nonce=b"2"))]))  # pending
    path = tmp_path / "ledger.sqlite"
    store_of(path, chain)
    assert audit_ledger(path, chain.genesis, member_changes=True).ok
    if table == "used_keys":
        statement = "DELETE FROM used_keys WHERE key = ?"
        _sql(path, statement, (SPARES[1].public,))
    else:
        _sql(path, statement)
    height, reason = failed(audit_ledger(path, chain.genesis, member_changes=True))
    assert height == chain.head.height and f"the stored {words}" in reason


def test_a_chain_entry_must_be_the_ledgers(tmp_path: Path) -> None:
    chain = member_chain()
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))]))
    e = chain.app.pending_member[0]  # type: ignore[index]
    chain.run_to(e + 1)
    config = chain.app.configs[1][1]
    certificate = chain.checkpoint(e)
    header = chain.blocks[e - 1][0].header
    path = tmp_path / "ledger.sqlite"
    store_of(path, chain)
    store = BlockStore.open(path, chain.genesis, member_changes=True)
    store.put_config_chain(1, pack([1, config.encode(), header.encode(), certificate.encode()]))
    store.close()
    assert audit_ledger(path, chain.genesis, member_changes=True).ok
    wrong = tmp_path / "wrong.sqlite"
    store_of(wrong, chain)
    other = chain.blocks[e - 2][0].header  # the header below the activation
    store = BlockStore.open(wrong, chain.genesis, member_changes=True)
    store.put_config_chain(1, pack([1, config.encode(), other.encode(), certificate.encode()]))
    store.close()
    _, reason = failed(audit_ledger(wrong, chain.genesis, member_changes=True))
    assert reason == (
        f"configuration chain entry 1: its header is not the ledger's at the activation height {e}"
    )


def test_the_trust_anchor(tmp_path: Path) -> None:
    chain = pbft_history()
    path = tmp_path / "ledger.sqlite"
    store_of(path, chain)
    e = chain.app.configs[1][0] - 1
    good = chain.blocks[e - 1][0].hash
    assert audit_ledger(path, chain.genesis, member_changes=True, trust=(e, good)).ok
    height, reason = failed(
        audit_ledger(path, chain.genesis, member_changes=True, trust=(e, b"\1" * 32))
    )
    assert height == e and reason.startswith(f"block {e} hashes to {good.hex()[:12]}…, the trust")
    beyond = chain.head.height + 5
    height, reason = failed(
        audit_ledger(path, chain.genesis, member_changes=True, trust=(beyond, good))
    )
    assert reason == (
        f"the ledger ends at height {chain.head.height} and does not reach the trust anchor at "
        f"height {beyond}"
    )


def test_ledger_verify_takes_trust(tmp_path: Path) -> None:
    from consortium.cli.main import app

    # (no member change: `ledger verify` re-executes as this release's node, which refuses
    # them: KeyValueState.member_changes)
    chain = member_chain()
    for _ in range(6):
        chain.add_puts(1)
    path = tmp_path / "ledger.sqlite"
    store_of(path, chain)
    genesis_file = tmp_path / "genesis.json"
    genesis_file.write_text(chain.genesis.to_json())
    e = 4
    good = chain.blocks[e - 1][0].hash.hex()
    base = ["ledger", "verify", "--db", str(path), "--genesis", str(genesis_file)]
    result = CliRunner().invoke(app, [*base, "--trust", f"{e}:{good}"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, [*base, "--trust", f"{chain.head.height + 1}:{good}"])
    assert result.exit_code != 0 and "does not reach the trust anchor" in result.output
    for bad in ("12:nothex", f"\u00b2:{good}", f"{'1' * 5000}:{good}", f"-1:{good}"):
        result = CliRunner().invoke(app, [*base, "--trust", bad])
        assert result.exit_code == 2 and "expected HEIGHT:HASH" in result.output, bad[:20]
        assert result.exception is None or isinstance(result.exception, SystemExit), bad[:20]


def test_a_header_committing_another_configuration_is_named(tmp_path: Path) -> None:
    """A 9-field header whose digest is not re-execution's, and an 8-field header where a
    9-field one belongs (after the activation), are both named before any other field."""
    import sqlite3
    from dataclasses import replace

    chain = member_chain("raft")
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))]))
    chain.add([])
    block, _, cert = chain.blocks[1]  # height 2, under configuration 1
    assert block.header.config_digest is not None
    for forged_digest, words in (
        (b"\5" * 32, "re-execution gives configuration"),
        (None, "applied at the wrong height: header 2 commits no configuration change"),
    ):
        path = tmp_path / f"{forged_digest is None}.sqlite"
        store_of(path, chain, signatures=False)
        forged = replace(block.header, config_digest=forged_digest)
        db = sqlite3.connect(path)
        db.execute(
            "UPDATE blocks SET hash = ?, header = ? WHERE height = 2",
            (forged.hash, forged.encode()),
        )
        db.commit()
        db.close()
        height, reason = failed(audit_ledger(path, chain.genesis, member_changes=True))
        assert height == 2 and words in reason, reason
    assert cert is not None


def _tagged_commit(
    chain: MemberChain, height: int, epoch: int, legacy: tuple[int, ...] = ()
) -> bytes:
    """A commit certificate of `height` by the first quorum of config(height)'s voters, each
    vote tagged with `epoch` (those in `legacy`: today's body instead), validly signed."""
    config = chain.config_at(height)
    digest = _digest(chain, height)
    votes = []
    for m in config.voters[: config.quorum]:
        if m.id in legacy:
            body = legacy_commit_body(0, height, digest, m.id)
        else:
            body = pack(["commit", epoch, 0, height, digest, m.id])
        sig = signer(m.public_key).sign(Domain.PBFT, chain.genesis.chain_id, body)
        votes.append(SignedVote(body, sig))
    return CommitCertificate(0, height, digest, tuple(votes)).encode()


def test_epoch_0_certificates_may_carry_epoch_tagged_votes(tmp_path: Path) -> None:
    """After the upgrade members sign tagged bodies at epoch 0 too: commit and checkpoint
    certificates and a chain entry certified by configuration 0 with them verify (as do
    today's bodies, stored before the upgrade, and a certificate mixing the two)."""
    chain = member_chain()
    chain.legacy = False
    chain.add([chain.tx(Put(b"a", b"1"))])
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))]))
    e = chain.app.pending_member[0]  # type: ignore[index]
    chain.run_to(e + 1)
    block, execution, _ = chain.blocks[0]
    chain.blocks[0] = (block, execution, _tagged_commit(chain, 1, 0, legacy=(0,)))  # mixed
    path = tmp_path / "ledger.sqlite"
    store_of(path, chain)
    config = chain.app.configs[1][1]
    header = chain.blocks[e - 1][0].header
    certificate = chain.checkpoint(e)
    assert len(as_list(unpack_canonical(certificate.votes[0].body))) == 5  # tagged
    store = BlockStore.open(path, chain.genesis, member_changes=True)
    store.put_config_chain(1, pack([1, config.encode(), header.encode(), certificate.encode()]))
    store.close()
    report = audit_ledger(path, chain.genesis, member_changes=True)
    assert report.ok, report.problem


@pytest.mark.parametrize("where", ["epoch 0", "epoch 1"])
def test_a_vote_tagged_with_another_epoch_is_refused(tmp_path: Path, where: str) -> None:
    """Signed by the right keys for the right block, but naming another configuration: the
    epoch field is compared too."""
    chain = pbft_history()
    height = 1 if where == "epoch 0" else chain.app.configs[1][0]
    epoch = chain.config_at(height).epoch
    block, execution, _ = chain.blocks[height - 1]
    chain.blocks[height - 1] = (block, execution, _tagged_commit(chain, height, epoch + 1))
    path = tmp_path / "ledger.sqlite"
    store_of(path, chain)
    assert failed(audit_ledger(path, chain.genesis, member_changes=True)) == (
        height,
        f"commit certificate: commit vote 0 names epoch {epoch + 1}, not {epoch}",
    )


def test_a_chain_entry_certified_under_another_epoch_is_refused(tmp_path: Path) -> None:
    chain = member_chain()
    chain.legacy = False
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))]))
    e = chain.app.pending_member[0]  # type: ignore[index]
    chain.run_to(e + 1)
    path = tmp_path / "ledger.sqlite"
    store_of(path, chain)
    config = chain.app.configs[1][1]
    header = chain.blocks[e - 1][0].header
    genesis_config = chain.app.configs[0][1]
    votes = []
    for m in genesis_config.voters[: genesis_config.quorum]:
        body = pack(["checkpoint", 1, e, header.hash, m.id])  # names the next epoch
        votes.append(
            SignedVote(body, signer(m.public_key).sign(Domain.PBFT, header.chain_id, body))
        )
    certificate = CheckpointCertificate(e, header.hash, tuple(votes))
    store = BlockStore.open(path, chain.genesis, member_changes=True)
    store.put_config_chain(1, pack([1, config.encode(), header.encode(), certificate.encode()]))
    store.close()
    _, reason = failed(audit_ledger(path, chain.genesis, member_changes=True))
    assert reason == ("configuration chain entry 1: checkpoint vote 0 names epoch 1, not 0")


def test_a_raft_block_led_by_a_learner_is_refused(tmp_path: Path) -> None:
    """A learner never campaigns, so an entry it signed as leader is no raft history."""
    chain = member_chain("raft")
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))]))  # s0 (id 4), a learner
    config = chain.app.config
    assert config is not None and config.member(4).role == "learner"  # type: ignore[union-attr]
    block = chain.add([chain.tx(Put(b"a", b"1"))])
    term, index, proposed_ms = block.header.consensus[1:]
    digest = batch_digest(int(proposed_ms), [t.id for t in block.txs])
    body = raft_entry_body(int(term), int(index), digest, 4)
    sig = signer(SPARES[0].public).sign(Domain.RAFT_ENTRY, chain.genesis.chain_id, body)
    cert = RaftEntryCertificate(int(term), int(index), digest, 4, sig).encode()
    chain.blocks[-1] = (block, chain.blocks[-1][1], cert)
    path = tmp_path / "ledger.sqlite"
    store_of(path, chain, signatures=False)
    assert failed(audit_ledger(path, chain.genesis, member_changes=True)) == (
        2,
        "leader certificate: leader s0 is a learner of configuration 1: learners never lead",
    )


def _entry_store(tmp_path: Path, chain: MemberChain, name: str, certificate: bytes) -> Path:
    """A store of `chain` whose configuration chain entry 1 carries `certificate`."""
    first, config = chain.app.configs[1]
    header = chain.blocks[first - 2][0].header  # the activation height is first - 1
    path = tmp_path / f"{name}.sqlite"
    store_of(path, chain)
    store = BlockStore.open(path, chain.genesis, member_changes=True)
    store.put_config_chain(1, pack([1, config.encode(), header.encode(), certificate]))
    store.close()
    return path


def test_a_pbft_chain_entry_needs_a_valid_quorum_certificate(tmp_path: Path) -> None:
    chain = member_chain()
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))]))
    e = chain.app.pending_member[0]  # type: ignore[index]
    chain.run_to(e + 1)
    good = chain.checkpoint(e)
    assert audit_ledger(
        _entry_store(tmp_path, chain, "good", good.encode()), chain.genesis, member_changes=True
    ).ok
    chain.signers = (0, 1)  # two of configuration 0's voters: its quorum is 3
    few = chain.checkpoint(e)
    chain.signers = None
    _, reason = failed(
        audit_ledger(
            _entry_store(tmp_path, chain, "few", few.encode()), chain.genesis, member_changes=True
        )
    )
    assert reason == "configuration chain entry 1: 2 distinct checkpoint signatures, 3 needed"
    # n2's vote signed by another key
    body = good.votes[1].body
    forged_vote = SignedVote(
        body, signer(SPARES[7].public).sign(Domain.PBFT, chain.genesis.chain_id, body)
    )
    forged = CheckpointCertificate(e, good.block_hash, (good.votes[0], forged_vote, good.votes[2]))
    _, reason = failed(
        audit_ledger(
            _entry_store(tmp_path, chain, "forged", forged.encode()),
            chain.genesis,
            member_changes=True,
        )
    )
    assert reason == "configuration chain entry 1: checkpoint vote 1: bad signature by n2"


def test_a_raft_chain_entry_needs_a_signature_by_a_member_of_the_previous_configuration(
    tmp_path: Path,
) -> None:
    from consortium.ledger.certificates import block_signature_body

    chain = member_chain("raft")
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))]))
    chain.add([])
    c = chain.app.configs[1][0] - 1
    header = chain.blocks[c - 1][0].header

    def entry_certificate(signer_id: int, key: bytes) -> bytes:
        body = block_signature_body(c, header.hash, signer_id)
        return pack([body, signer(key).sign(Domain.BLOCK, chain.genesis.chain_id, body)])

    cases = {
        "good": (entry_certificate(1, MEMBERS[1].public), None),
        "forged": (
            entry_certificate(1, SPARES[7].public),
            "configuration chain entry 1: block vote 0: bad signature by n2",
        ),
        # the member it added (id 4) is not of the configuration before it
        "newcomer": (
            entry_certificate(4, SPARES[0].public),
            "configuration chain entry 1: block vote 0: signer 4 is not a member",
        ),
    }
    for name, (certificate, want) in cases.items():
        report = audit_ledger(
            _entry_store(tmp_path, chain, name, certificate), chain.genesis, member_changes=True
        )
        if want is None:
            assert report.ok, report.problem
        else:
            assert failed(report)[1] == want, name


@pytest.mark.parametrize(
    "statement, words",
    [
        ("UPDATE configurations SET first_height = 'one' WHERE epoch = 0", "configurations"),
        ("UPDATE configurations SET value = 'text' WHERE epoch = 1", "configurations"),
        ("UPDATE configurations SET digest = 7 WHERE epoch = 0", "configurations"),
        ("UPDATE pending_member_change SET change_id = 'id'", "pending_member_change"),
        ("UPDATE pending_member_change SET effective_height = 2.5", "pending_member_change"),
        ("UPDATE used_keys SET key = 'a key' WHERE kind = 'client'", "used_keys"),
        ("UPDATE config_chain SET entry = 'an entry'", "config_chain"),
    ],
)
def test_a_membership_cell_of_the_wrong_type_is_named(
    tmp_path: Path, statement: str, words: str
) -> None:
    """A tampered file is reported, never a TypeError or a silent conversion (bytes(7) is
    seven zero bytes)."""
    chain = member_chain()
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))]))
    e = chain.app.pending_member[0]  # type: ignore[index]
    chain.run_to(e + 1)
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(1), nonce=b"2"))]))  # pending
    path = _entry_store(tmp_path, chain, "ledger", chain.checkpoint(e).encode())
    assert audit_ledger(path, chain.genesis, member_changes=True).ok
    _sql(path, statement)
    height, reason = failed(audit_ledger(path, chain.genesis, member_changes=True))
    assert height == chain.head.height and reason.startswith(f"a row of {words} holds "), reason


def test_an_oversized_chain_entry_is_named(tmp_path: Path) -> None:
    chain = member_chain()
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))]))
    chain.run_to(chain.app.pending_member[0] + 1)  # type: ignore[index]
    path = tmp_path / "ledger.sqlite"
    store_of(path, chain)
    _sql(path, "INSERT INTO config_chain VALUES (1, ?)", (pack([1, b"x" * (1 << 20), b"", b""]),))
    _, reason = failed(audit_ledger(path, chain.genesis, member_changes=True))
    assert reason.startswith("configuration chain entry 1: does not decode"), reason
