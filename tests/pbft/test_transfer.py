"""State transfer. Serving (pbft/transfer.py): every BLOCKS answer decodes at the asker, with
full blocks at the default parameters too (found in review: the answer was budgeted on
transaction bytes alone and outgrew the decode limit, so catch-up stalled for ever), and within
the asking member's budget. Asking (pbft/replica.py): from a random member first, rotating away
from one that answers slowly."""

from __future__ import annotations

from dataclasses import replace

from pbft_harness import WALL, Group, block_hash, stable_votes

from consortium.crypto.keys import KeyPair
from consortium.ledger.block import batch_digest, genesis_block
from consortium.ledger.certificates import CommitCertificate
from consortium.ledger.genesis import Params
from consortium.ledger.tx import Put, Transaction
from consortium.pbft.messages import (
    BatchRequest,
    Blocks,
    Commit,
    Fetch,
    TransferredBlock,
    decode,
    encode,
    frame_bytes_limit,
)
from consortium.pbft.replica import (
    SERVED_FRAMES_PER_INTERVAL,
    PbftConfig,
    PbftReplica,
    RecoveredState,
)
from consortium.pbft.transfer import blocks_reply
from consortium.sim.cluster import EPOCH_MS, workload

DEFAULT = Params()


def block(group: Group, seq: int, txs: tuple[Transaction, ...]) -> TransferredBlock:
    digest = batch_digest(1, [t.id for t in txs])
    votes = tuple(
        Commit.create(group.signers[s], group.chain_id, 0, seq, digest, s).vote()
        for s in range(group.n)  # more than Q: as large as a certificate gets here
    )
    return TransferredBlock(
        proposed_ms=1, txs=txs, certificate=CommitCertificate(0, seq, digest, votes)
    )


def reply(group: Group, from_seq: int, height: int, blocks: dict[int, TransferredBlock]) -> Blocks:
    frame = blocks_reply(
        group.signers[0], group.chain_id, 0, DEFAULT, from_seq, height, None, blocks.get
    )
    assert len(frame) <= frame_bytes_limit(DEFAULT)
    msg = decode(frame, DEFAULT)  # raises WireFormatError if the asker would refuse it
    assert isinstance(msg, Blocks)
    return msg


def test_full_blocks_at_the_default_parameters_travel_in_answers_the_asker_decodes() -> None:
    group = Group(params=DEFAULT)
    txs = workload(group.chain_id, DEFAULT.batch_txs_max)  # 512 transactions per block
    height = DEFAULT.window
    blocks = {seq: block(group, seq, txs) for seq in range(1, height + 1)}
    seq, answers = 1, 0
    while seq <= height:
        msg = reply(group, seq, height, blocks)
        assert msg.blocks and msg.blocks[0].seq == seq
        seq += len(msg.blocks)
        answers += 1
    assert answers > 1  # they did not all fit one: the budget cut the answer


def test_a_worst_case_block_fits_one_answer_alone() -> None:
    """512 transactions whose sizes add up to batch_bytes_max exactly, under a certificate of
    every member's COMMIT, plus the next block: the first must still travel, alone."""
    group = Group(params=DEFAULT)
    client = KeyPair.from_seed(b"transfer-worst-case".ljust(32, b"\x00"))
    count = DEFAULT.batch_txs_max
    per_tx = DEFAULT.batch_bytes_max // count

    def tx(i: int, size: int) -> Transaction:
        probe = Transaction.create(
            client, group.chain_id, b"%d" % i, EPOCH_MS + 60_000, [Put(b"k", b"")]
        )
        value = b"v" * (size - probe.size - 1)  # (its bin header grows from 2 to 3 bytes)
        made = Transaction.create(
            client, group.chain_id, b"%d" % i, EPOCH_MS + 60_000, [Put(b"k", value)]
        )
        assert made.size == size, made.size
        return made

    txs = tuple(tx(i, per_tx) for i in range(count))
    assert sum(t.size for t in txs) == DEFAULT.batch_bytes_max
    blocks = {1: block(group, 1, txs), 2: block(group, 2, txs)}
    msg = reply(group, 1, 2, blocks)
    assert [b.seq for b in msg.blocks] == [1]


# --- the asker: whom it asks, and rotating away from a slow member ------------------------


def chain(group: Group, height: int) -> dict[int, TransferredBlock]:
    """Blocks 1..height of empty batches, each under a commit certificate of every member."""
    return {seq: block(group, seq, ()) for seq in range(1, height + 1)}


def catch_up(
    group: Group, me: int, throttler: int, height: int, *, padded: bool = False
) -> tuple[int, int]:
    """Replica `me` starts at genesis while the others are at `height` (each showed it by a
    CHECKPOINT) and catches up by FETCH. Honest members answer at once from `chain`, as the
    shell does (blocks_reply, with the stable checkpoint certificate of their height);
    `throttler` answers each FETCH with one valid block, just before the asker's timeout
    (`padded`: the same block `window` times, which the asker skips after the first).
    Returns (simulated ms it took, FETCHes the throttler got)."""
    blocks = chain(group, height)
    k = group.params.checkpoint_interval
    stable = stable_votes(group, height - height % k, range(group.n))
    r = group.replicas[me]
    r._fetch_next = throttler  # the throttler comes first in its round robin
    start_ms = group.mono_ms
    for s in range(group.n):
        if s != me:
            r.receive(s, group.checkpoint(height - height % k, s))
    interval = r.retransmit_ms
    due: list[tuple[int, int, bytes]] = []  # (deliver at, sender, frame)
    asked_throttler = 0
    while r.last_executed < height:
        assert group.mono_ms - start_ms < 1_000 * interval, "catch-up never finished"
        group.mono_ms += 1
        r.tick(group.mono_ms, WALL + group.mono_ms)
        for at_ms, src, frame in [d for d in due if d[0] <= group.mono_ms]:
            due.remove((at_ms, src, frame))
            r.receive(src, frame)
        ready = r.take_ready()
        for batch in ready.committed:
            r.executed(batch.seq, block_hash(batch.seq))
        for out in ready.messages:
            fetch = decode(out.frame, group.params)
            if not isinstance(fetch, Fetch):
                continue
            peer = out.dest
            assert peer is not None
            if peer == throttler:
                asked_throttler += 1
                one = tuple(blocks[s] for s in (fetch.from_seq,) if s in blocks)
                if padded:
                    one = one * group.params.window
                reply = Blocks.create(
                    group.signers[peer], group.chain_id, fetch.from_seq, height, stable, one, peer
                )
                due.append((group.mono_ms + interval - 1, peer, encode(reply)))
            else:
                frame = blocks_reply(
                    group.signers[peer],
                    group.chain_id,
                    peer,
                    group.params,
                    fetch.from_seq,
                    height,
                    stable,
                    blocks.get,
                )
                due.append((group.mono_ms + 1, peer, frame))
    return group.mono_ms - start_ms, asked_throttler


def test_a_member_trickling_one_block_per_fetch_does_not_set_the_pace_of_catch_up() -> None:
    """A member that answers each FETCH with one valid block just before the asker's timeout
    was never rotated away (it did answer, with a valid block) and slowed a whole cluster's
    catch-up from 4 s to 198 s. An answer with fewer blocks than fit one frame while its
    sender claims more counts as slow: the next FETCH goes to another member, and the slow
    one is asked again only when no other member can be."""
    group = Group()  # L = 4: an honest answer carries 4 blocks here
    height = 40
    took_ms, asked = catch_up(group, 3, 0, height)
    interval = group.replicas[3].retransmit_ms
    assert took_ms < 3 * interval, f"{took_ms} ms to catch up {height} blocks"
    assert asked == 1  # once, first: then never again while honest members answer
    r = group.replicas[3]
    assert r.transfer_slow == 1 and r.transferred == height
    # Honest members sent all that fit (L blocks): never judged slow, asked again and again.
    assert [p for p in range(group.n) if r._fetch_slow_ms[p] > 0] == [0]


def test_whom_a_replica_asks_first_is_drawn_from_its_seed() -> None:
    """Round robin from the next member made one member every restarted replica's first
    choice; the start is drawn from PbftConfig.seed (the core has no randomness of its own),
    never the replica itself, the same for the same seed."""
    group = Group()
    firsts = set()
    for k in range(24):
        config = replace(PbftConfig.from_genesis(group.genesis, 1), seed=b"%d" % k)
        replica = PbftReplica(
            config,
            group.signers[1],
            group.verifier,
            tx_ok=group.tx_ok,
            recovered=RecoveredState(0, genesis_block(group.genesis).hash, None, []),
        )
        again = PbftReplica(
            config,
            group.signers[1],
            group.verifier,
            tx_ok=group.tx_ok,
            recovered=RecoveredState(0, genesis_block(group.genesis).hash, None, []),
        )
        first = replica._pick_fetch_peer(0)
        assert first == again._pick_fetch_peer(0) and first != 1
        firsts.add(first)
    assert firsts == {0, 2, 3}


# --- what a member may make us send: bytes per interval -----------------------------------


def fetch_each(
    group: Group,
    r: PbftReplica,
    peer: int,
    starts: range,
    blocks: dict[int, TransferredBlock],
) -> list[int]:
    """Member `peer` asks `r` for blocks from each of `starts` in turn; `r`'s shell answers
    each FETCH it lets through (blocks_reply, within the grant) and reports the frame's size.
    Returns the sizes of the answers sent."""
    height = max(blocks)
    sizes: list[int] = []
    for from_seq in starts:
        r.receive(peer, Fetch.create(group.signers[peer], group.chain_id, from_seq, peer))
        for serve in r.take_ready().serve:
            frame = blocks_reply(
                group.signers[r.me],
                group.chain_id,
                r.me,
                group.params,
                serve.from_seq,
                height,
                None,
                blocks.get,
                serve.bytes_max,
            )
            assert len(frame) <= frame_bytes_limit(group.params)
            r.served(serve, len(frame))
            sizes.append(len(frame))
    return sizes


def test_small_answers_cost_little_of_a_members_budget() -> None:
    """Answers to FETCH were counted (4 per interval, each up to a full batch): a catching-up
    member asking for small blocks was held to 4 answers per interval, while a Byzantine one
    asking for full ones got 4 full frames. Now each member's budget is in bytes, shared by
    its BATCH and BLOCKS answers, and the shell gives back what an answer did not use."""
    group = Group()
    at = RecoveredState(400, block_hash(400), stable_votes(group, 400, range(group.n)), [])
    r = group.replicas[0] = group.make(0, at)  # it holds the 400 blocks it serves
    answers = fetch_each(group, r, 3, range(1, 400, group.params.window), chain(group, 400))
    assert len(answers) == 100 and r.rejected["answers_over_budget"] == 0


def test_full_answers_stop_at_the_members_budget_per_interval() -> None:
    params = replace(Params(), batch_bytes_max=64 * 1024, batch_txs_max=8)
    group = Group(params=params)
    r = group.replicas[0]
    client = KeyPair.from_seed(b"transfer-budget".ljust(32, b"\x00"))
    txs = tuple(
        Transaction.create(
            client, group.chain_id, b"%d" % i, EPOCH_MS + 60_000, [Put(b"k", b"v" * 7_900)]
        )
        for i in range(8)
    )
    blocks = {seq: block(group, seq, txs) for seq in range(1, 65)}
    limit = frame_bytes_limit(params)
    sent = sum(fetch_each(group, r, 3, range(1, 65), blocks))
    # Two frames' worth per interval, and the last answer admitted may overdraw by one.
    assert 2 * limit - limit // 2 < sent <= (SERVED_FRAMES_PER_INTERVAL + 1) * limit
    assert r.rejected["answers_over_budget"] > 0
    group.tick_all(r.retransmit_ms)  # the next interval: the budget is back
    assert fetch_each(group, r, 3, range(100, 101), blocks)


def test_batch_answers_stop_at_the_members_budget_per_interval() -> None:
    """A BATCH-REQ was answered 16 times per interval whatever the batch's size: up to
    128 MiB/s of full batches one Byzantine member could ask for. The same byte budget as
    BLOCKS answers (shared) now bounds them."""
    params = replace(Params(), batch_bytes_max=64 * 1024, batch_txs_max=8)
    group = Group(params=params)
    client = KeyPair.from_seed(b"transfer-budget".ljust(32, b"\x00"))
    txs = tuple(
        Transaction.create(
            client, group.chain_id, b"%d" % i, EPOCH_MS + 60_000, [Put(b"k", b"v" * 7_900)]
        )
        for i in range(8)
    )
    r = group.replicas[1]
    pp = group.preprepare(1, txs)
    r.receive(0, pp)
    r.take_ready()
    ask = BatchRequest.create(group.signers[3], group.chain_id, pp.digest, 3)
    sent = 0
    for _ in range(20):
        r.receive(3, ask)
        sent += sum(len(m.frame) for m in r.take_ready().messages if m.dest == 3)
    limit = frame_bytes_limit(params)
    assert limit < sent <= (SERVED_FRAMES_PER_INTERVAL + 1) * limit
    assert r.rejected["answers_over_budget"] > 0


def test_batch_requests_for_a_small_batch_cost_a_bounded_number_of_signatures() -> None:
    """Each BATCH answer is signed, and a BATCH-REQ is answered without checking its own
    signature: with the budget in bytes only, one member asking again and again for a small
    batch it knows the digest of (any batch of the window, the empty batch of a null request)
    makes us sign tens of thousands of answers per interval (8 MiB of 300-byte answers at the
    default parameters), where 16 were answered before. An honest member asks for each batch
    it lacks at most once per interval, and for at most `window` batches."""
    group = Group(params=DEFAULT)
    r = group.replicas[1]
    pp = group.preprepare(1, group.txs[:1])
    r.receive(0, pp)
    r.take_ready()
    ask = BatchRequest.create(group.signers[3], group.chain_id, pp.digest, 3)
    answers = 0
    for _ in range(1_000):  # within one interval
        r.receive(3, ask)
        answers += sum(1 for m in r.take_ready().messages if m.dest == 3)
    assert answers <= DEFAULT.window, f"{answers} signed answers to one member in one interval"


def test_a_trickling_member_cannot_pass_for_a_full_answer_by_repeating_its_one_block() -> None:
    """An answer counts as full when it carries `window` blocks, however many of them the
    asker can use: the blocks at or below what it committed are skipped unchecked, and so are
    those after the first that does not follow. A throttler that repeats its one valid block
    `window` times is never slow, and the asker keeps asking it (one block per interval)."""
    group = Group()  # L = 4: an honest answer carries 4 blocks here
    height = 40
    took_ms, asked = catch_up(group, 3, 0, height, padded=True)
    interval = group.replicas[3].retransmit_ms
    assert took_ms < 3 * interval, f"{took_ms} ms to catch up {height} blocks ({asked} asks)"


def test_fetches_beyond_our_height_cost_a_bounded_number_of_signatures() -> None:
    """The same for FETCH: each one is verified and answered with a signed BLOCKS read from
    the store, and one above our height is answered with no block, a few hundred bytes that
    the shell gives back to the budget. A member asking from height+1, height+2, ... (each a
    new start, so never a `duplicate`) gets thousands of answers per interval, where 4 were
    answered before; an honest member asks again only after an answer with blocks, or a
    probe every few intervals."""
    group = Group(params=DEFAULT)
    r = group.replicas[0]
    answers = fetch_each(group, r, 3, range(1_000, 3_000), chain(group, 10))
    assert len(answers) <= 16, f"{len(answers)} signed answers without a block in one interval"
