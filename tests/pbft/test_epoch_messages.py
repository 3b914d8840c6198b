"""Epoch-tagged pbft bodies and certificates checked against a Configuration (design 3.1):
every body names its epoch second and its sender (a member id) last; COMMIT and CHECKPOINT
certificates count Q distinct voters of the configuration, each vote naming its epoch; legacy
epoch-less bodies count only at epoch 0 and only from a store."""

from __future__ import annotations

from dataclasses import replace

import pytest

from consortium.crypto.codec import WireFormatError, pack
from consortium.crypto.signing import PROTOCOL_VERSION, Domain
from consortium.ledger.certificates import (
    CheckpointCertificate,
    CommitCertificate,
    SignedVote,
    block_signature_body,
    checkpoint_body,
    commit_body,
    legacy_checkpoint_body,
    legacy_commit_body,
    verify_block_signatures,
)
from consortium.ledger.genesis import Params
from consortium.ledger.membership import Configuration, MemberInfo, genesis_configuration
from consortium.pbft.messages import (
    Batch,
    BatchRequest,
    Blocks,
    Checkpoint,
    Commit,
    Fetch,
    NewView,
    Prepare,
    PrePrepare,
    ViewChange,
    ViewQuery,
    ViewReport,
    decode,
    encode,
    worst_case_frames,
)
from consortium.sim.cluster import HmacSigner, HmacVerifier, member_keys, sim_genesis

KEYS = member_keys(7)
SIGNERS = [HmacSigner(k.public, k.seed()) for k in KEYS]
VERIFIER = HmacVerifier({k.public: k.seed() for k in KEYS})
GENESIS = sim_genesis(4)
CHAIN = GENESIS.chain_id
DIGEST = b"d" * 32
PARAMS = Params()


def config_of(epoch: int, ids_keys: list[tuple[int, int]]) -> Configuration:
    """Configuration `epoch` with member id -> sim key index."""
    return Configuration(
        CHAIN,
        epoch,
        "pbft",
        tuple(
            MemberInfo(i, f"m{i}", KEYS[k].public, f"127.0.0.1:{7000 + i}", "127.0.0.1:9000")
            for i, k in ids_keys
        ),
    )


def test_protocol_version_is_3() -> None:
    assert PROTOCOL_VERSION == 3


def test_every_body_names_its_epoch_second_and_its_sender_last() -> None:
    s, e = SIGNERS[0], 7
    pp = PrePrepare.create(s, CHAIN, 2, 9, 1234, 300, (), epoch=e)
    msgs = [
        pp,
        Prepare.create(s, CHAIN, 2, 9, DIGEST, 300, epoch=e),
        Commit.create(s, CHAIN, 2, 9, DIGEST, 300, epoch=e),
        Checkpoint.create(s, CHAIN, 8, DIGEST, 300, epoch=e),
        ViewChange.create(s, CHAIN, 3, None, (), 300, epoch=e, stable_seq=64),
        NewView.create(s, CHAIN, 3, (), (), 300, epoch=e),
        BatchRequest.create(s, CHAIN, DIGEST, 300, epoch=e),
        Batch.create(s, CHAIN, 1234, (), 300, epoch=e),
        Fetch.create(s, CHAIN, 5, 300, epoch=e),
        Blocks.create(s, CHAIN, 5, 9, None, (), 300, epoch=e),
        ViewQuery.create(s, CHAIN, b"q" * 16, 300, epoch=e),
        ViewReport.create(s, CHAIN, b"q" * 16, 3, 9, 300, epoch=e),
    ]
    from consortium.crypto.codec import unpack_canonical

    for msg in msgs:
        fields = unpack_canonical(msg.body)
        assert fields[1] == e and fields[-1] == 300, fields
        back = decode(encode(msg), PARAMS)
        assert back.epoch == e and back.sender == 300 and back.body == msg.body
    # A VIEW-CHANGE without a certificate names the epoch's start as its stable seq.
    assert decode(encode(msgs[4]), PARAMS).stable_seq == 64  # type: ignore[union-attr]
    assert Commit.create(s, CHAIN, 2, 9, DIGEST, 300, epoch=e).body == commit_body(
        e, 2, 9, DIGEST, 300
    )
    assert Checkpoint.create(s, CHAIN, 8, DIGEST, 300, epoch=e).body == checkpoint_body(
        e, 8, DIGEST, 300
    )


def test_a_sender_id_of_2_to_the_16_or_more_does_not_decode() -> None:
    ok = Commit.create(SIGNERS[0], CHAIN, 0, 1, DIGEST, 65535)
    assert decode(encode(ok), PARAMS).sender == 65535
    bad = Commit.create(SIGNERS[0], CHAIN, 0, 1, DIGEST, 65536)
    with pytest.raises(WireFormatError):
        decode(encode(bad), PARAMS)


def test_a_legacy_body_does_not_decode_from_the_wire() -> None:
    body = legacy_commit_body(0, 1, DIGEST, 0)
    frame = pack([body, SIGNERS[0].sign(Domain.PBFT, CHAIN, body)])
    with pytest.raises(WireFormatError):
        decode(frame, PARAMS)


def _commit_cert(
    config_epoch: int, voters: list[tuple[int, int]], *, legacy: bool = False
) -> CommitCertificate:
    votes = []
    for member_id, key in voters:
        body = (
            legacy_commit_body(0, 5, DIGEST, member_id)
            if legacy
            else commit_body(config_epoch, 0, 5, DIGEST, member_id)
        )
        votes.append(SignedVote(body, SIGNERS[key].sign(Domain.PBFT, CHAIN, body)))
    return CommitCertificate(0, 5, DIGEST, tuple(votes))


def _checkpoint_cert(
    epoch: int, voters: list[tuple[int, int]], *, legacy: bool = False
) -> CheckpointCertificate:
    votes = []
    for member_id, key in voters:
        body = (
            legacy_checkpoint_body(8, DIGEST, member_id)
            if legacy
            else checkpoint_body(epoch, 8, DIGEST, member_id)
        )
        votes.append(SignedVote(body, SIGNERS[key].sign(Domain.PBFT, CHAIN, body)))
    return CheckpointCertificate(8, DIGEST, tuple(votes))


# epoch 1: genesis members 0, 2, 3 (key i) and an added member id 4 with key 5 (1 was removed)
EPOCH1 = [(0, 0), (2, 2), (3, 3), (4, 5)]


def test_certificates_count_q_voters_of_the_configuration_by_member_id() -> None:
    c1 = config_of(1, EPOCH1)
    assert c1.quorum == 3
    assert _commit_cert(1, [(0, 0), (2, 2), (4, 5)]).verify(c1, VERIFIER) is None
    assert _checkpoint_cert(1, [(0, 0), (2, 2), (4, 5)]).verify(c1, VERIFIER) is None
    # Too few.
    assert "3 needed" in (_commit_cert(1, [(0, 0), (4, 5)]).verify(c1, VERIFIER) or "")
    # The removed member 1 (its key still valid at epoch 0) is no member of epoch 1.
    problem = _commit_cert(1, [(0, 0), (1, 1), (4, 5)]).verify(c1, VERIFIER)
    assert problem is not None and "not a member of epoch 1" in problem
    # Id 4's key is key 5: a vote by id 4 signed with another key does not verify.
    problem = _commit_cert(1, [(0, 0), (2, 2), (4, 4)]).verify(c1, VERIFIER)
    assert problem is not None and "bad signature" in problem


def test_votes_must_name_the_configurations_epoch() -> None:
    c1 = config_of(1, EPOCH1)
    # Epoch-0 votes from the same keys do not make an epoch-1 certificate, nor the reverse.
    problem = _commit_cert(0, [(0, 0), (2, 2), (3, 3)]).verify(c1, VERIFIER)
    assert problem is not None and "epoch 0" in problem
    g = genesis_configuration(GENESIS)
    problem = _checkpoint_cert(1, [(0, 0), (2, 2), (3, 3)]).verify(g, VERIFIER)
    assert problem is not None and "epoch 1" in problem
    assert _checkpoint_cert(0, [(0, 0), (2, 2), (3, 3)]).verify(g, VERIFIER) is None


def test_a_rotated_key_counts_for_its_epoch_and_not_after() -> None:
    # Member 2 rotates from key 2 to key 6 between epochs 0 and 1.
    c0 = config_of(0, [(0, 0), (1, 1), (2, 2), (3, 3)])
    c1 = config_of(1, [(0, 0), (1, 1), (2, 6), (3, 3)])
    assert _checkpoint_cert(0, [(0, 0), (1, 1), (2, 2)]).verify(c0, VERIFIER) is None
    old_key_in_new_epoch = _checkpoint_cert(1, [(0, 0), (1, 1), (2, 2)])
    assert "bad signature" in (old_key_in_new_epoch.verify(c1, VERIFIER) or "")
    assert _checkpoint_cert(1, [(0, 0), (1, 1), (2, 6)]).verify(c1, VERIFIER) is None


def test_legacy_bodies_count_only_at_epoch_0_and_only_from_a_store() -> None:
    g = genesis_configuration(GENESIS)
    legacy = _commit_cert(0, [(0, 0), (1, 1), (2, 2)], legacy=True)
    assert legacy.verify(g, VERIFIER, stored=True) is None
    assert legacy.verify(g, VERIFIER) is not None  # from the wire: never
    legacy_cp = _checkpoint_cert(0, [(0, 0), (1, 1), (2, 2)], legacy=True)
    assert legacy_cp.verify(g, VERIFIER, stored=True) is None
    assert legacy_cp.verify(g, VERIFIER) is not None
    # At epoch 1 a legacy body is refused even from a store.
    c1 = config_of(1, EPOCH1)
    assert (
        _commit_cert(1, [(0, 0), (2, 2), (3, 3)], legacy=True).verify(c1, VERIFIER, stored=True)
        is not None
    )
    assert (
        _checkpoint_cert(1, [(0, 0), (2, 2), (3, 3)], legacy=True).verify(c1, VERIFIER, stored=True)
        is not None
    )


def test_block_signatures_are_checked_against_the_configuration_of_the_height() -> None:
    c1 = config_of(1, EPOCH1)

    def sig(member_id: int, key: int) -> SignedVote:
        body = block_signature_body(70, DIGEST, member_id)
        return SignedVote(body, SIGNERS[key].sign(Domain.BLOCK, CHAIN, body))

    assert verify_block_signatures((sig(4, 5), sig(0, 0)), 70, DIGEST, c1, VERIFIER, 2) is None
    problem = verify_block_signatures((sig(1, 1), sig(0, 0)), 70, DIGEST, c1, VERIFIER, 2)
    assert problem is not None and "not a member" in problem


def test_worst_case_frames_size_the_sender_at_the_largest_id() -> None:
    small = worst_case_frames(PARAMS, 4)
    # Every frame at n = 4 is sized with 3-byte senders and 9-byte epochs: re-encoding a
    # PRE-PREPARE with sender 65,535 and the largest epoch fits the computed size.
    pp = PrePrepare.create(SIGNERS[0], CHAIN, 2**63 - 1, 2**63 - 1, 2**63 - 1, 65535, ())
    assert len(encode(replace(pp))) - 1 <= small["PRE-PREPARE"]
