"""PbftEpochs (pbft/epochs.py, design 3.2 and 3.3): a change pending at every member after
block c takes effect at E = ceil((c+L)/K)*K; epoch e orders exactly (S_e, E], epoch e+1 from
E+1, entered only with E executed and its certificate by Q_e voters of e."""

from __future__ import annotations

from epoch_harness import EpochGroup
from pbft_harness import PARAMS, block_hash

from consortium.crypto.codec import pack
from consortium.ledger.certificates import CheckpointCertificate
from consortium.ledger.membership import effective_height
from consortium.pbft import reasons as drop
from consortium.pbft import records
from consortium.pbft.messages import Commit, Prepare
from consortium.pbft.replica import RecoveredState

# PARAMS: K = 2, L = 4. A change accepted in block 2 takes effect at 6.
C = 2
E = effective_height("pbft", C, PARAMS)


def _to_c(group: EpochGroup) -> None:
    for tx in group.txs[:2]:  # one block each
        group.propose((tx,))
        group.run(200)
    assert all(group.executed(i) >= C for i in group.nodes if i not in group.down)


def _pending(group: EpochGroup, config: object) -> None:
    for i, node in group.nodes.items():
        if i not in group.down:
            node.config_pending(E, config)  # type: ignore[arg-type]


def _assert_one_configuration_per_seq(group: EpochGroup, end: int) -> None:
    """No seq ordered by two configurations: epoch 0 ordered (0, E], epoch 1 above E, and
    every member committed the same digest at each seq."""
    digests: dict[int, bytes] = {}
    for seen in group.committed.values():
        for seq, (epoch, digest) in seen.items():
            assert epoch == (0 if seq <= end else 1), (seq, epoch)
            assert digests.setdefault(seq, digest) == digest


def test_the_idle_network_reaches_e_with_empty_batches_and_enters_epoch_1() -> None:
    assert E == 6
    group = EpochGroup(4)
    _to_c(group)
    c1 = group.configuration(1, [(0, 0), (1, 1), (2, 2), (3, 3)])
    _pending(group, c1)
    group.run(1_000)
    for i, node in group.nodes.items():
        assert node.epoch == 1, i
        assert node.replica is not None and node.replica.config.start == E
        assert node.low_watermark == E and node.view == 0
        cert = group.certificate(i, 1)
        assert cert.seq == E and cert.verify(group.config0, group.verifier) is None
    # Nothing was proposed beyond E in epoch 0, and the gap c..E was filled by empty batches.
    assert max(group.committed[0]) == E
    _assert_one_configuration_per_seq(group, E)


def test_members_order_the_next_epoch_with_its_voters_and_a_rotated_key() -> None:
    group = EpochGroup(4)
    _to_c(group)
    c1 = group.configuration(1, [(0, 0), (1, 1), (2, 4), (3, 3)])
    # Member 2 signs epoch 1 with its new key (key index 4).
    for i, node in group.nodes.items():
        node.config_pending(E, c1, group.signers[4] if i == 2 else None)
    group.run(1_000)
    group.propose(group.txs[10:14])
    group.run(1_000)
    for i in group.nodes:
        assert max(group.committed[i]) > E, i
    _assert_one_configuration_per_seq(group, E)
    # A PREPARE for epoch 1 signed with member 2's old key is refused as a bad signature.
    node = group.nodes[1]
    seq = node.last_executed + 1
    forged = Prepare.create(group.signers[2], group.chain_id, 0, seq, b"x" * 32, 2, epoch=1)
    before = node.rejected[drop.BAD_SIGNATURE]
    node.receive(2, forged)
    assert node.rejected[drop.BAD_SIGNATURE] == before + 1


def test_an_added_member_votes_from_the_next_epoch() -> None:
    group = EpochGroup(4)
    _to_c(group)
    c1 = group.configuration(1, [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)])
    _pending(group, c1)
    group.run(1_000)
    assert all(node.epoch == 1 for node in group.nodes.values())
    # The joiner caught up to E (by state transfer, outside this test) and starts in epoch 1.
    cert = group.certificate(0, 1)
    group.nodes[4] = group.make(c1, 4, 4, RecoveredState(E, block_hash(E), cert, []), start=E)
    group.tick_all(0)
    group.down = {3}  # with n = 5 (f = 1, Q = 4) the joiner's votes are needed
    group.propose(group.txs[20:24])
    group.run(1_000)
    for i in (0, 1, 2, 4):
        assert max(group.committed[i]) > E, i
    _assert_one_configuration_per_seq(group, E)


def test_a_removed_member_stops_at_e_and_answers_with_the_certificate() -> None:
    group = EpochGroup(5)
    _to_c(group)
    c1 = group.configuration(1, [(0, 0), (1, 1), (2, 2), (3, 3)])  # removes member 4
    _pending(group, c1)
    group.run(1_000)
    removed = group.nodes[4]
    assert removed.removed_at == E and removed.replica is None
    assert all(group.nodes[i].epoch == 1 for i in range(4))
    # It sends nothing more of its own; it answers an epoch-0 CHECKPOINT with a BLOCKS that
    # carries the E certificate and no block.
    stale = group.nodes[0]._previous_signer()  # (member 0's epoch-0 signer)
    from consortium.pbft.messages import Blocks, Checkpoint, decode

    vote = Checkpoint.create(stale, group.chain_id, E, block_hash(E), 0, epoch=0)
    removed.tick(group.mono_ms + 200, 0)
    removed.receive(0, vote)
    ready = removed.take_ready()
    answers = [decode(o.frame, PARAMS) for o in ready.messages]
    assert len(answers) == 1 and isinstance(answers[0], Blocks)
    assert answers[0].stable is not None and answers[0].stable.seq == E
    assert answers[0].blocks == ()
    removed.receive(0, vote)  # at most once per interval per peer
    assert not removed.take_ready().messages
    group.propose(group.txs[30:33])
    group.run(1_000)
    assert max(group.committed[0]) > E and max(group.committed[4]) == E
    # After 4 timeouts it answers no more (the shell then exits 0).
    removed.tick(group.mono_ms + 5 * PARAMS.request_timeout_ms, 0)
    removed.receive(1, Checkpoint.create(group.signers[1], group.chain_id, E, block_hash(E), 1))
    assert not removed.take_ready().messages


def test_a_replacement_removes_and_adds_in_one_change() -> None:
    group = EpochGroup(4)
    _to_c(group)
    c1 = group.configuration(1, [(0, 0), (1, 1), (2, 2), (4, 4)])  # remove 3, add 4
    _pending(group, c1)
    group.run(1_000)
    assert group.nodes[3].removed_at == E
    cert = group.certificate(0, 1)
    group.nodes[4] = group.make(c1, 4, 4, RecoveredState(E, block_hash(E), cert, []), start=E)
    group.tick_all(0)
    group.propose(group.txs[40:44])
    group.run(1_000)
    for i in (0, 1, 2, 4):
        assert max(group.committed[i]) > E, i
    _assert_one_configuration_per_seq(group, E)


def test_old_epoch_votes_above_e_are_refused() -> None:
    group = EpochGroup(4)
    _to_c(group)
    c1 = group.configuration(1, [(0, 0), (1, 1), (2, 2), (3, 3)])
    _pending(group, c1)
    node = group.nodes[1]
    assert node.epoch == 0 and node.end == E
    # A COMMIT of epoch 0 above E, inside the window: never counted.
    node.receive(2, Commit.create(group.signers[2], group.chain_id, 0, E + 1, b"y" * 32, 2))
    assert node.rejected[drop.BEYOND_EPOCH] == 1


def test_next_epoch_messages_are_buffered_bounded_and_fed_in() -> None:
    group = EpochGroup(4)
    _to_c(group)
    c1 = group.configuration(1, [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)])
    node = group.nodes[1]
    early = Prepare.create(group.signers[4], group.chain_id, 0, E + 1, b"z" * 32, 4, epoch=1)
    node.receive(4, early)
    assert node.rejected[drop.UNKNOWN_EPOCH] == 1  # no change pending: not known
    _pending(group, c1)
    node.receive(4, early)
    assert len(node._next) == 1
    for k in range(3 * PARAMS.window + 5):
        node.receive(
            4,
            Prepare.create(group.signers[4], group.chain_id, 0, E + 1, bytes([k]) * 32, 4, epoch=1),
        )
    assert node.rejected[drop.NEXT_EPOCH_FULL] > 0
    assert len(node._next) <= 3 * PARAMS.window
    # A non-member of the pending configuration is not buffered.
    node.receive(5, Prepare.create(group.signers[5], group.chain_id, 0, 7, b"z" * 32, 5, epoch=1))
    assert node.rejected[drop.UNKNOWN_EPOCH] == 2
    group.run(1_000)
    assert node.epoch == 1 and len(node._next) == 0


def test_a_silent_primary_while_a_change_is_pending_is_replaced_and_e_is_reached() -> None:
    group = EpochGroup(4)
    _to_c(group)
    c1 = group.configuration(1, [(0, 0), (1, 1), (2, 2), (3, 3)])
    _pending(group, c1)
    group.down = {0}  # the primary of view 0 stops
    group.run(6_000)
    for i in (1, 2, 3):
        assert group.nodes[i].epoch == 1, i
        assert group.executed(i) >= E
    _assert_one_configuration_per_seq(group, E)


def test_a_restart_with_a_pending_change_from_the_store() -> None:
    group = EpochGroup(4)
    _to_c(group)
    c1 = group.configuration(1, [(0, 0), (1, 1), (2, 2), (3, 3)])
    _pending(group, c1)
    # Member 3 restarts: its store holds the pending change, passed to the constructor.
    node = group.nodes[3]
    recovered = RecoveredState(node.last_executed, block_hash(node.last_executed), None, [])
    group.nodes[3] = group.make(group.config0, 3, 3, recovered, pending=(E, c1))
    assert group.nodes[3].end == E and group.nodes[3].replica.config.end == E
    group.tick_all(0)
    group.run(1_000)
    assert all(node.epoch == 1 for node in group.nodes.values())


def test_entering_the_next_epoch_writes_the_view_record_with_its_epoch() -> None:
    group = EpochGroup(4)
    _to_c(group)
    _pending(group, group.configuration(1, [(0, 0), (1, 1), (2, 2), (3, 3)]))
    group.run(1_000)
    views = [v for k, v in group.records[1] if k == records.VIEW_KEY]
    assert pack([1, 0, 1, 0]) in views
    # A 3-field record (every record written before epochs) reads as epoch 0; 4 fields name it.
    restored = records.parse([(records.VIEW_KEY, pack([5, 1, 2]))], PARAMS, 1)
    assert (restored.epoch, restored.view, restored.timeouts) == (0, 5, 2)
    restored = records.parse([(records.VIEW_KEY, pack([1, 0, 1, 0]))], PARAMS, 1)
    assert (restored.epoch, restored.view, restored.active) == (1, 0, True)


def test_votes_wait_until_what_fixes_their_configuration_is_executed() -> None:
    """A replica that adopted a stable certificate above what it executed holds back votes
    above last_executed + L + 1 (their configuration depends on blocks it lacks) and takes
    them once it executed far enough."""
    group = EpochGroup(4)
    node = group.nodes[1]
    replica = node.replica
    assert replica is not None
    # Jump the window: a stable certificate at 8 while nothing is executed (K = 2, L = 4).
    from consortium.pbft.messages import Checkpoint

    votes = tuple(
        Checkpoint.create(group.signers[s], group.chain_id, 8, block_hash(8), s).vote()
        for s in (0, 2, 3)
    )
    replica._stabilize(CheckpointCertificate(8, block_hash(8), votes))
    assert replica.low_watermark == 8 and replica.last_executed == 0
    early = Prepare.create(group.signers[2], group.chain_id, 0, 9, b"p" * 32, 2)
    node.receive(2, early)
    assert replica._held_for_config and len(replica._future) == 1
    assert 9 not in {s for s in range(9, 13) if replica._log.get(s) is not None}


def test_a_fetch_of_the_previous_epoch_is_served_up_to_e_with_its_certificate() -> None:
    from consortium.pbft.messages import Fetch, TransferredBlock
    from consortium.pbft.transfer import blocks_reply

    group = EpochGroup(4)
    _to_c(group)
    _pending(group, group.configuration(1, [(0, 0), (1, 1), (2, 2), (3, 3)]))
    group.run(1_000)
    node = group.nodes[0]
    assert node.epoch == 1
    node.tick(group.mono_ms + 1_000, 0)
    node.receive(3, Fetch.create(group.signers[3], group.chain_id, 3, 3, epoch=0))
    [serve] = node.take_ready().serve
    assert (serve.epoch, serve.last_seq, serve.from_seq) == (0, E, 3)
    assert serve.stable is not None and serve.stable.seq == E
    # The answer stops at E even when the server's ledger is higher (never spans two epochs).
    cert = group.certificate(0, 1)
    frame = blocks_reply(
        group.signers[0],
        group.chain_id,
        0,
        PARAMS,
        3,
        E + 3,
        serve.stable,
        lambda seq: TransferredBlock(proposed_ms=0, txs=(), certificate=_fake(seq)),
        epoch=0,
        last_seq=E,
    )
    from consortium.pbft.messages import Blocks, decode

    answer = decode(frame, PARAMS)
    assert isinstance(answer, Blocks) and answer.epoch == 0
    assert [b.seq for b in answer.blocks] == list(range(3, E + 1)) and answer.stable == cert


def _fake(seq: int) -> object:
    from consortium.ledger.certificates import CommitCertificate

    return CommitCertificate(0, seq, b"f" * 32, ())
