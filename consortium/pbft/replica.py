"""The PBFT replica, normal case, as a pure sans-IO state machine (Castro & Liskov, OSDI 1999
§4.2 normal-case operation, §4.3 garbage collection, §4.6 batching; TOCS 2002 §2.3 and §5.1,
the variant with signatures).

Theory of operation
-------------------
Inputs: tick(mono_ms, wall_ms), receive(sender, frame | message), propose(tx),
executed(seq, block_hash). Output: take_ready() -> Ready(records, messages, committed,
stable_checkpoints), which the shell carries out in that order: persist the records (one
fsync, with any blocks), then send the messages, then execute the committed batches in order
and report each with executed(). The core reads no clock and does no I/O.

Rules (n members, f = (n-1)//3, Q = ceil((n+f+1)/2): any two quorums share f+1 members, so
at least one honest one; Q = 2f+1 when n = 3f+1):

    primary(v) = v mod n. It batches client transactions and assigns the next sequence number
      inside the window (h, h+L], signing PRE-PREPARE(v, seq, digest, proposed_ms) + batch.
    backup accepts a PRE-PREPARE  from primary(v), in view v, in the window, validly signed,
      when it holds no other digest for (v, seq), the batch is within limits, every
      transaction is of this chain and client-signed (tx_ok), and the digest matches. Then it
      persists the PRE-PREPARE and its PREPARE and multicasts the PREPARE, unless the proposed
      timestamp is further than timestamp_skew_ms from its clock: then it withholds its
      PREPARE (counted, not evidence; the others may still prepare the batch). Only a timestamp
      in the future counts: an old one is a retransmission.
    prepared(seq)   the PRE-PREPARE plus Q-1 matching PREPAREs from distinct backups (the
      primary sends none): persist the prepared certificate and our COMMIT, multicast it.
    committed-local(seq)   prepared plus Q matching COMMITs from distinct members (ours
      included); batches come out in Ready.committed strictly in sequence order, each once,
      with a commit certificate of Q signed COMMITs.
    checkpoint   after executing a multiple of K, sign CHECKPOINT(seq, block hash); Q matching
      make it stable: h moves, the log at or below h is collected (pbft/checkpoint.py).

Every peer input is checked before it counts, and anything wrong is dropped and counted in
`rejected` by reason, never raised:

    malformed          the frame does not decode (messages.decode)
    not_member         the authenticated sender is not a member index
    from_self          a message claiming to come from this replica over the network
    sender_mismatch    the signed sender field is not the authenticated sender
    bad_signature      the signature does not verify over the exact body received
    wrong_view         the view is not ours (a higher view is also kept, bounded, for the
                       view-change issue)
    not_primary        a PRE-PREPARE from a member that is not primary of its view
    prepare_from_primary   the primary of the view sent a PREPARE
    outside_window     sequence number at or below h (or a CHECKPOINT above h+L); messages
                       above h+L are buffered per sender, bounded, and re-fed when h moves
    buffer_full        that sender's buffer of early messages is full
    duplicate          the same vote again (retransmissions land here)
    conflicting_vote   a second, different PREPARE/COMMIT/CHECKPOINT from one member
    conflicting_preprepare   a second PRE-PREPARE for (v, seq) with another digest: both
                       signed bodies are kept in `evidence` for the view-change issue
    batch_too_large, wrong_chain, digest_mismatch, bad_client_signature   an invalid batch;
                       stateless, so every honest replica decides alike; kept in `evidence`
    timestamp_skew     our PREPARE was withheld (the PRE-PREPARE itself is accepted)
    not_checkpoint_seq a CHECKPOINT for a sequence number that is not a multiple of K
    stale_checkpoint   a CHECKPOINT at or below our h: the sender lags, we answer it
    checkpoint_mismatch   a quorum certified a block hash other than ours (never adopted)
    and, for propose(): tx_duplicate, pool_full, wrong_chain, tx_too_large.

Retransmission is the only recovery from message loss until view change and state transfer
exist; pbft/retransmit.py decides which own frames to re-send to whom (timers of
retransmit_ms = params.request_timeout_ms // 4 by default, plus gaps and repeats in what peers
send). A replica that lags by more than L needs state transfer (a later issue): status() says so.

Seams for view change (not implemented): `view` and `primary`, the view in every slot and
message, `evidence`, the pool kept by backups, the buffer of higher-view messages, and tick()
as the place for the view-change timer.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from consortium.crypto.codec import WireFormatError
from consortium.crypto.signing import Domain, Signer, Verifier
from consortium.ledger.block import batch_digest
from consortium.ledger.certificates import CheckpointCertificate, CommitCertificate, SignedVote
from consortium.ledger.genesis import Genesis, Params
from consortium.ledger.tx import Transaction
from consortium.pbft import records
from consortium.pbft.checkpoint import CheckpointVotes
from consortium.pbft.effects import CommittedBatch, Outbound, Ready
from consortium.pbft.log import FutureBuffer, MessageLog, Slot
from consortium.pbft.messages import (
    Checkpoint,
    Commit,
    Message,
    Prepare,
    PrePrepare,
    decode,
    encode,
)
from consortium.pbft.pool import TxPool
from consortium.pbft.retransmit import Retransmitter

__all__ = [
    "CommittedBatch",
    "Evidence",
    "Outbound",
    "PbftConfig",
    "PbftReplica",
    "Ready",
    "RecoveredState",
]

EVIDENCE_MAX = 32
PENDING_TXS_MAX = 100_000
PENDING_BYTES_MAX = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class PbftConfig:
    chain_id: bytes
    member_keys: tuple[bytes, ...]  # index = member id (genesis order)
    me: int
    params: Params

    @property
    def n(self) -> int:
        return len(self.member_keys)

    @property
    def f(self) -> int:
        return (self.n - 1) // 3

    @property
    def quorum(self) -> int:
        """ceil((n+f+1)/2): two quorums intersect in at least f+1 members."""
        return (self.n + self.f + 2) // 2

    @classmethod
    def from_genesis(cls, genesis: Genesis, me: int) -> PbftConfig:
        return cls(
            chain_id=genesis.chain_id,
            member_keys=tuple(m.public_key for m in genesis.members),
            me=me,
            params=genesis.params,
        )


@dataclass(frozen=True, slots=True)
class RecoveredState:
    last_executed: int  # ledger height (height == seq in pbft)
    last_block_hash: bytes
    stable_checkpoint: CheckpointCertificate | None
    records: list[tuple[bytes, bytes]]  # what earlier Ready.records persisted


@dataclass(frozen=True, slots=True)
class Evidence:
    """Signed proof (or, for an invalid batch, the primary's signed claim) that the primary of
    `view` misbehaved: material for the view-change issue."""

    reason: str  # conflicting_preprepare | batch_too_large | wrong_chain | digest_mismatch | ...
    view: int
    seq: int
    primary: int
    preprepares: tuple[SignedVote, ...]  # the signed PRE-PREPARE bodies


class PbftReplica:
    def __init__(
        self,
        config: PbftConfig,
        signer: Signer,
        verifier: Verifier,
        *,
        tx_ok: Callable[[Transaction], bool],
        recovered: RecoveredState,
        retransmit_ms: int | None = None,
        pending_txs_max: int = PENDING_TXS_MAX,
        pending_bytes_max: int = PENDING_BYTES_MAX,
    ) -> None:
        params = config.params
        assert config.n >= 4, "pbft needs n = 3f+1 >= 4 members"
        assert 0 <= config.me < config.n
        assert signer.public_key == config.member_keys[config.me], "signer is not member `me`"
        assert params.window % params.checkpoint_interval == 0
        self.config = config
        self.params = params
        self.chain_id = config.chain_id
        self.me = config.me
        self.n = config.n
        self.quorum = config.quorum  # what this replica waits for (a test subclass lowers it)
        self.retransmit_ms = (
            retransmit_ms if retransmit_ms is not None else max(1, params.request_timeout_ms // 4)
        )
        self._signer = signer
        self._verifier = verifier
        self._tx_ok = tx_ok

        self.view = 0
        self.rejected: Counter[str] = Counter()
        self.evidence: deque[Evidence] = deque(maxlen=EVIDENCE_MAX)
        self.last_executed = recovered.last_executed
        self._last_block_hash = recovered.last_block_hash
        self._last_committed = recovered.last_executed  # last seq handed out in Ready.committed
        self._highest_accepted = recovered.last_executed  # highest seq with a PRE-PREPARE
        self._next_seq = recovered.last_executed + 1  # the primary's next sequence number
        self.stable_certificate: CheckpointCertificate | None = None
        self._stable_above = 0  # a quorum certified this seq, above what we executed
        self._log = MessageLog(params.window)
        self._checkpoints = CheckpointVotes(self.me)
        self._pool = TxPool(pending_txs_max, pending_bytes_max, remembered_max=pending_txs_max)
        self._future = FutureBuffer(
            self.n,
            messages_max=3 * params.window,
            bytes_max=2 * params.batch_bytes_max + 64 * 1024,
        )
        self._retransmit = Retransmitter(
            self.n, self.me, self.retransmit_ms, self._log, self._checkpoints
        )
        self._clock_known = False
        self._mono_ms = 0
        self._wall_ms = 0

        self._records: list[tuple[bytes, bytes | None]] = []
        self._messages: list[Outbound] = []
        self._committed: list[CommittedBatch] = []
        self._stable_out: list[CheckpointCertificate] = []
        self._restore(recovered)
        self._check_invariants()

    # --- derived ----------------------------------------------------------------------------

    @property
    def primary(self) -> int:
        return self.view % self.n

    @property
    def low_watermark(self) -> int:
        return self._log.low

    @property
    def high_watermark(self) -> int:
        return self._log.high

    @property
    def stable_checkpoint_seq(self) -> int:
        return self._log.low

    # --- inputs -----------------------------------------------------------------------------

    def tick(self, mono_ms: int, wall_ms: int) -> None:
        """Time: mono_ms drives timers, wall_ms stamps new batches (and the skew check)."""
        self._mono_ms = max(self._mono_ms, mono_ms)
        self._wall_ms = wall_ms
        self._clock_known = True
        self._maybe_propose()
        self._messages.extend(self._retransmit.on_tick(self._mono_ms, self.primary))
        self._check_invariants()

    def receive(self, sender: int, msg: bytes | Message) -> None:
        """A message from authenticated member `sender`: a raw frame or messages.decode()d."""
        self._on_input(sender, msg)
        self._check_invariants()

    def propose(self, tx: Transaction) -> None:
        """A client transaction whose signature the shell verified."""
        reason: str | None
        if tx.chain_id != self.chain_id:
            reason = "wrong_chain"
        elif tx.size > self.params.batch_bytes_max:
            reason = "tx_too_large"
        else:
            reason = self._pool.add(tx, self._mono_ms)
        if reason is not None:
            self.rejected[reason] += 1
        self._maybe_propose()
        self._check_invariants()

    def executed(self, seq: int, block_hash: bytes) -> None:
        """The shell executed committed batch `seq` into a block with this hash."""
        assert seq == self.last_executed + 1, "the shell executes batches strictly in order"
        assert seq <= self._last_committed, "only committed batches execute"
        self.last_executed = seq
        self._last_block_hash = block_hash
        if seq % self.params.checkpoint_interval == 0:
            self._checkpoint(seq, block_hash)
        if self._stable_above <= seq:
            self._stable_above = 0  # caught up; the votes make it stable here, or already did
        self._maybe_propose()
        self._check_invariants()

    def take_ready(self) -> Ready:
        ready = Ready(self._records, self._messages, self._committed, self._stable_out)
        self._records, self._messages, self._committed, self._stable_out = [], [], [], []
        return ready

    # --- dispatch and admission -------------------------------------------------------------

    def _on_input(self, sender: int, msg: bytes | Message) -> None:
        if not 0 <= sender < self.n:
            self.rejected["not_member"] += 1
            return
        if sender == self.me:
            self.rejected["from_self"] += 1
            return
        if isinstance(msg, bytes):
            try:
                msg = decode(msg, self.params)
            except WireFormatError:
                self.rejected["malformed"] += 1
                return
        if msg.sender != sender:
            self.rejected["sender_mismatch"] += 1
            return
        match msg:
            case PrePrepare():
                self._on_preprepare(msg)
            case Prepare():
                self._on_prepare(msg)
            case Commit():
                self._on_commit(msg)
            case Checkpoint():
                self._on_checkpoint(msg)

    def _admit(self, msg: PrePrepare | Prepare | Commit) -> bool:
        """Role, view and window checks, cheapest first; buffers what arrived early."""
        view_primary = msg.view % self.n
        if isinstance(msg, PrePrepare) and msg.sender != view_primary:
            self.rejected["not_primary"] += 1
            return False
        if isinstance(msg, Prepare) and msg.sender == view_primary:
            self.rejected["prepare_from_primary"] += 1
            return False
        if msg.view != self.view:
            # A higher view is kept (bounded) for the view-change issue, and counted either way.
            if msg.view > self.view and not self._future.add(msg.sender, msg):
                self.rejected["buffer_full"] += 1
            else:
                self.rejected["wrong_view"] += 1
            return False
        if msg.seq <= self._log.low:
            self.rejected["outside_window"] += 1
            self._repeated(msg)
            return False
        if msg.seq > self._log.high:
            if not self._future.add(msg.sender, msg):
                self.rejected["buffer_full"] += 1
            self._behind()
            return False
        return True

    def _verified(self, msg: Message) -> bool:
        ok = self._verifier.verify(
            self.config.member_keys[msg.sender], Domain.PBFT, self.chain_id, msg.body, msg.signature
        )
        if not ok:
            self.rejected["bad_signature"] += 1
        return ok

    # --- PRE-PREPARE ------------------------------------------------------------------------

    def _on_preprepare(self, pp: PrePrepare) -> None:
        if not self._admit(pp):
            return
        slot = self._log.get(pp.seq)
        if slot is not None and slot.preprepare is not None:
            accepted = slot.preprepare
            if accepted.digest == pp.digest:
                self.rejected["duplicate"] += 1
                self._repeated(pp)
            elif self._verified(pp):
                # Two signed PRE-PREPAREs for one (view, seq): proof that the primary lies.
                self.rejected["conflicting_preprepare"] += 1
                self._evidence("conflicting_preprepare", accepted, pp)
            return
        if not self._verified(pp):
            return
        problem = self._batch_problem(pp)
        if problem is not None:
            self.rejected[problem] += 1
            self._evidence(problem, pp)
            return
        self._accept_preprepare(self._log.slot(pp.seq, pp.view), pp)

    def _batch_problem(self, pp: PrePrepare) -> str | None:
        """Stateless validity, decided alike by every honest replica (DESIGN: such a batch is
        evidence against the primary). Cheapest first; tx_ok is asked for every transaction."""
        params = self.params
        if len(pp.txs) > params.batch_txs_max or pp.batch_bytes > params.batch_bytes_max:
            return "batch_too_large"
        if any(tx.chain_id != self.chain_id for tx in pp.txs):
            return "wrong_chain"
        if batch_digest(pp.proposed_ms, [tx.id for tx in pp.txs]) != pp.digest:
            return "digest_mismatch"
        signed = [self._tx_ok(tx) for tx in pp.txs]  # every one is asked, by contract
        if not all(signed):
            return "bad_client_signature"
        return None

    def _evidence(self, reason: str, *pps: PrePrepare) -> None:
        first = pps[0]
        self.evidence.append(
            Evidence(reason, first.view, first.seq, first.sender, tuple(p.vote() for p in pps))
        )

    def _accept_preprepare(self, slot: Slot, pp: PrePrepare) -> None:
        assert slot.preprepare is None
        slot.preprepare = pp
        self._highest_accepted = max(self._highest_accepted, pp.seq)
        self._pool.in_flight(pp.seq, pp.txs)
        frame = encode(pp)
        self._persist(slot, "preprepare", frame)
        if pp.sender == self.me:
            slot.own_preprepare = frame
            self._send_own(slot, frame)
        elif self._clock_known and pp.proposed_ms - self._wall_ms > (
            # Only a timestamp in the future: an old one is a retransmitted or delayed batch
            # (a backup back from a partition must still prepare it), and back-dating gains
            # nothing since block time = max(proposed, previous block's time).
            self.params.timestamp_skew_ms
        ):
            slot.prepare_withheld = True
            self.rejected["timestamp_skew"] += 1
        else:
            prepare = Prepare.create(
                self._signer, self.chain_id, pp.view, pp.seq, pp.digest, self.me
            )
            slot.prepares[self.me] = prepare
            frame = encode(prepare)
            self._persist(slot, "prepare", frame)
            slot.own_prepare = frame
            self._send_own(slot, frame)
        self._advance(slot)

    # --- PREPARE and COMMIT -----------------------------------------------------------------

    def _on_prepare(self, prepare: Prepare) -> None:
        if not self._admit(prepare):
            return
        slot = self._log.get(prepare.seq)
        earlier = slot.prepares.get(prepare.sender) if slot is not None else None
        if earlier is not None:
            same = earlier.digest == prepare.digest
            self.rejected["duplicate" if same else "conflicting_vote"] += 1
            if same:
                self._repeated(prepare)
            return
        if not self._verified(prepare):
            return
        slot = self._log.slot(prepare.seq, prepare.view)
        slot.prepares[prepare.sender] = prepare
        self._advance(slot)
        self._gaps(prepare)

    def _on_commit(self, commit: Commit) -> None:
        if not self._admit(commit):
            return
        slot = self._log.get(commit.seq)
        earlier = slot.commits.get(commit.sender) if slot is not None else None
        if earlier is not None:
            same = earlier.digest == commit.digest
            self.rejected["duplicate" if same else "conflicting_vote"] += 1
            if same:
                self._repeated(commit)
            return
        if not self._verified(commit):
            return
        slot = self._log.slot(commit.seq, commit.view)
        slot.commits[commit.sender] = commit
        self._advance(slot)
        self._gaps(commit)

    def _advance(self, slot: Slot) -> None:
        """Apply the prepared and committed-local predicates to one slot."""
        pp = slot.preprepare
        if pp is None:
            return
        if not slot.prepared:
            senders = slot.matching(slot.prepares)
            if len(senders) < self.quorum - 1:
                return
            slot.prepared = True
            certificate = [encode(slot.prepares[s]) for s in senders]
            self._persist(slot, "prepared", records.prepared_value(certificate))
            commit = Commit.create(self._signer, self.chain_id, pp.view, pp.seq, pp.digest, self.me)
            slot.commits[self.me] = commit
            frame = encode(commit)
            self._persist(slot, "commit", frame)
            slot.own_commit = frame
            self._send_own(slot, frame)
        if slot.committed_local:
            return
        senders = slot.matching(slot.commits)
        if len(senders) < self.quorum:
            return
        slot.committed_local = True
        votes = tuple(slot.commits[s].vote() for s in senders[: self.quorum])
        slot.certificate = CommitCertificate(pp.view, pp.seq, pp.digest, votes)
        self._deliver()
        if slot.seq > self._last_committed:
            self._behind()

    def _deliver(self) -> None:
        """Hand out committed batches strictly in sequence order, each exactly once."""
        while True:
            slot = self._log.get(self._last_committed + 1)
            if slot is None or not slot.committed_local:
                return
            pp, certificate = slot.preprepare, slot.certificate
            assert pp is not None and certificate is not None
            self._committed.append(
                CommittedBatch(pp.seq, pp.view, pp.digest, pp.proposed_ms, pp.txs, certificate)
            )
            self._last_committed = pp.seq
            self._pool.committed(pp.seq, pp.txs)

    # --- the primary: batching --------------------------------------------------------------

    def _maybe_propose(self) -> None:
        if self.primary != self.me or not self._clock_known:
            return  # a batch carries our wall clock: wait for the first tick to learn it
        params = self.params
        pool = self._pool
        while pool.pending_count and self._next_seq <= self._log.high:
            idle = self._last_committed >= self._next_seq - 1
            full = (
                pool.pending_count >= params.batch_txs_max
                or pool.pending_bytes >= params.batch_bytes_max
            )
            first_ms = pool.first_arrival_ms
            waited = first_ms is not None and self._mono_ms - first_ms >= params.batch_delay_ms
            # Never wait when idle; when busy, wait at most batch_delay_ms to fill a batch.
            if not (idle or full or waited):
                return
            txs = pool.take_batch(params.batch_txs_max, params.batch_bytes_max)
            seq = self._next_seq
            self._next_seq += 1
            pp = PrePrepare.create(
                self._signer, self.chain_id, self.view, seq, self._wall_ms, self.me, txs
            )
            self._accept_preprepare(self._log.slot(seq, self.view), pp)

    # --- checkpoints ------------------------------------------------------------------------

    def _checkpoint(self, seq: int, block_hash: bytes) -> None:
        vote = Checkpoint.create(self._signer, self.chain_id, seq, block_hash, self.me)
        frame = encode(vote)
        self._records.append((records.checkpoint_key(seq), frame))
        self._messages.append(Outbound(None, frame))
        self._retransmit.checkpoint_sent(self._mono_ms)
        self._checkpoints.add(vote)
        self._try_stable(seq)

    def _on_checkpoint(self, vote: Checkpoint) -> None:
        if vote.seq == 0 or vote.seq % self.params.checkpoint_interval:
            self.rejected["not_checkpoint_seq"] += 1
            return
        peer = vote.sender
        repeat = vote.seq <= self._retransmit.peer_executed[peer]
        if vote.seq <= self._log.low:
            self.rejected["stale_checkpoint"] += 1
        elif vote.seq > self._log.high:
            self.rejected["outside_window"] += 1
            return
        elif not self._verified(vote):
            return
        else:
            problem = self._checkpoints.add(vote)
            if problem is None:
                self._retransmit.executed_by(peer, vote.seq)
                self._try_stable(vote.seq)
                return
            self.rejected[problem] += 1
            if problem != "duplicate":
                return
        # A stale or duplicate vote. Its execution claim steers only what we re-send to the
        # sender, so a stale one is not worth verifying.
        self._retransmit.executed_by(peer, vote.seq)
        if repeat:
            self._messages.extend(
                self._retransmit.repeated_checkpoint(peer, vote.seq, self._mono_ms, self.primary)
            )

    def _try_stable(self, seq: int) -> None:
        block_hash = self._checkpoints.quorum_hash(seq, self.quorum)
        if block_hash is None or seq <= self._log.low:
            return
        if seq > self.last_executed:
            # Certified above what we executed: keep the window so retransmission can still
            # bring us there; adopted when we execute seq (or by state transfer, later).
            self._stable_above = max(self._stable_above, seq)
            return
        own = self._checkpoints.own(seq)
        ours = own.block_hash if own is not None else None
        if ours is None and seq == self.last_executed:
            ours = self._last_block_hash
        if ours is not None and ours != block_hash:
            self.rejected["checkpoint_mismatch"] += 1
            return
        self._stabilize(self._checkpoints.certificate(seq, block_hash, self.quorum))

    def _stabilize(self, cert: CheckpointCertificate) -> None:
        """Persist the certificate, move h, collect the log (OSDI'99 §4.3)."""
        assert self._log.low < cert.seq <= self.last_executed
        self.stable_certificate = cert
        self._stable_out.append(cert)
        self._records.append((records.STABLE_KEY, cert.encode()))
        for slot in self._log.advance(cert.seq):
            self._records.extend((key, None) for key in slot.record_keys)
            slot.record_keys.clear()
        for seq in self._checkpoints.collect(cert.seq, self.params.window):
            self._records.append((records.checkpoint_key(seq), None))
        if self._stable_above <= cert.seq:
            self._stable_above = 0
        for sender, msg in self._future.drain(self.view):
            self._on_input(sender, msg)  # still above the new window: buffered again
        self._maybe_propose()

    # --- retransmission (pbft/retransmit.py) ---------------------------------------------------

    def _repeated(self, msg: PrePrepare | Prepare | Commit) -> None:
        self._messages.extend(
            self._retransmit.repeated_vote(msg.sender, msg.seq, self._mono_ms, self.primary)
        )

    def _gaps(self, msg: Prepare | Commit) -> None:
        self._messages.extend(
            self._retransmit.fill_gaps(msg.sender, msg.seq, self._mono_ms, self.primary)
        )

    def _behind(self) -> None:
        blocked = self._last_committed + 1
        self._messages.extend(self._retransmit.behind(blocked, self._mono_ms, self.primary))

    # --- effects ----------------------------------------------------------------------------

    def _persist(self, slot: Slot, kind: str, value: bytes) -> None:
        key = records.slot_key(slot.seq, kind)
        self._records.append((key, value))
        slot.record_keys.append(key)

    def _send_own(self, slot: Slot, frame: bytes) -> None:
        self._messages.append(Outbound(None, frame))
        self._retransmit.own_sent(slot, self._mono_ms)

    # --- recovery ---------------------------------------------------------------------------

    def _restore(self, recovered: RecoveredState) -> None:
        """Reload own votes, so a restarted replica re-sends them and never contradicts them."""
        restored = records.parse(recovered.records, self.params, self.me)
        window = self.params.window
        certs = [c for c in (recovered.stable_checkpoint, restored.stable) if c is not None]
        usable = [c for c in certs if c.seq <= self.last_executed]
        if usable:
            best = max(usable, key=lambda c: c.seq)
            self.stable_certificate = best
            self._log.advance(best.seq)
        self._stable_above = max([c.seq for c in certs if c.seq > self.last_executed], default=0)
        low = self._log.low
        for vote, _ in restored.checkpoints:
            if vote.seq <= low - window:
                continue
            self._checkpoints.add(vote)
            if vote.seq > low:
                self._retransmit.checkpoint_sent(-self.retransmit_ms)  # re-send at once
        for seq in self._checkpoints.collect(low, window):
            self._records.append((records.checkpoint_key(seq), None))
        for seq in sorted(restored.slots):
            self._restore_slot(restored.slots[seq])
        self._records.extend((key, None) for key in restored.unknown_keys)
        boundary = self.last_executed
        if (
            boundary > low
            and boundary % self.params.checkpoint_interval == 0
            and self._checkpoints.own(boundary) is None
        ):
            self._checkpoint(boundary, self._last_block_hash)

    def _restore_slot(self, saved: records.RestoredSlot) -> None:
        pp = saved.preprepare
        if pp is None or not self._log.in_window(saved.seq):
            self._records.extend((key, None) for key in saved.keys)
            return
        self.view = max(self.view, pp.view)
        slot = self._log.slot(saved.seq, pp.view)
        slot.preprepare = pp
        slot.record_keys = list(saved.keys)
        if pp.sender == self.me:
            slot.own_preprepare = saved.preprepare_frame
            self._next_seq = max(self._next_seq, saved.seq + 1)
        if saved.prepare is not None:
            slot.prepares[self.me] = saved.prepare
            slot.own_prepare = saved.prepare_frame
        for prepare in saved.prepared:
            slot.prepares[prepare.sender] = prepare
        if saved.prepared or saved.commit is not None:
            slot.prepared = True
        if saved.commit is not None:
            slot.commits[self.me] = saved.commit
            slot.own_commit = saved.commit_frame
        if saved.seq <= self.last_executed:
            slot.prepared = slot.committed_local = True
        else:
            self._pool.in_flight(saved.seq, pp.txs)
        self._highest_accepted = max(self._highest_accepted, saved.seq)
        if slot.own_preprepare or slot.own_prepare or slot.own_commit:
            slot.retransmit_at_ms = 0  # re-send on the first tick

    # --- invariants and status --------------------------------------------------------------

    def _check_invariants(self) -> None:
        """Cheap (constant-time) checks after every input; check_invariants() checks all."""
        low = self._log.low
        assert low <= self.last_executed <= self._last_committed <= self._log.high
        assert low % self.params.checkpoint_interval == 0
        assert self._next_seq <= self._log.high + 1 or self.primary != self.me
        assert self._last_committed <= self._highest_accepted
        assert self.stable_certificate is None or self.stable_certificate.seq == low
        assert len(self._log) <= self.params.window
        assert self._stable_above == 0 or self._stable_above > self.last_executed

    def check_invariants(self) -> None:
        self._check_invariants()
        self._log.check()
        self._pool.check()
        self._future.check()
        self._checkpoints.check(self._log.low, self._log.high, self.params.window)
        for slot in self._log.window_slots():
            if slot.seq <= self._last_committed:
                assert slot.committed_local, f"seq {slot.seq} handed out before committing"
            if slot.own_prepare is not None or slot.own_commit is not None:
                assert slot.preprepare is not None
            if self.me in slot.prepares and slot.preprepare is not None:
                assert slot.prepares[self.me].digest == slot.preprepare.digest
            if self.me in slot.commits and slot.preprepare is not None:
                assert slot.commits[self.me].digest == slot.preprepare.digest

    def status(self) -> dict[str, int | str | list[int]]:
        return {
            "mode": "pbft",
            "view": self.view,
            "primary": self.primary,
            "last_executed": self.last_executed,
            "low_watermark": self._log.low,
            "high_watermark": self._log.high,
            "stable_checkpoint": self._log.low,
            "in_flight": max(0, self._highest_accepted - self._last_committed),
            "pending_txs": self._pool.pending_count,
            "log_slots": len(self._log),
            "buffered_messages": len(self._future),
            "evidence": len(self.evidence),
            "peers_executed": list(self._retransmit.peer_executed),
            "waiting_for": self._waiting_for(),
        }

    def _waiting_for(self) -> str:
        """Why nothing moves, in one line (cheap: looks at one slot)."""
        if self._stable_above:
            return (
                f"state transfer: a quorum certified checkpoint {self._stable_above}, above our "
                f"last executed {self.last_executed} (not implemented yet)"
            )
        if self._last_committed > self.last_executed:
            return f"the node to execute seq {self.last_executed + 1}"
        seq = self._last_committed + 1
        slot = self._log.get(seq)
        if slot is not None and slot.preprepare is None:
            return f"pre-prepare for seq {seq} from primary {self.primary}"
        if slot is not None and slot.preprepare is not None and not slot.prepared:
            have = len(slot.matching(slot.prepares))
            withheld = " (ours withheld: timestamp skew)" if slot.prepare_withheld else ""
            return f"prepares for seq {seq}: {have} of {self.quorum - 1}{withheld}"
        if slot is not None and not slot.committed_local:
            have = len(slot.matching(slot.commits))
            return f"commits for seq {seq}: {have} of {self.quorum}"
        pending = self._pool.pending_count
        if pending and self.primary == self.me and self._next_seq > self._log.high:
            nxt = self._log.low + self.params.checkpoint_interval
            return (
                f"window full: seq {self._next_seq} is above h+L = {self._log.high}; "
                f"checkpoint {nxt} to become stable"
            )
        if pending and self.primary != self.me:
            return f"pre-prepare from primary {self.primary} for {pending} pending transactions"
        return ""
