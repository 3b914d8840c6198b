"""The PBFT replica, normal case, as a pure state machine (Castro & Liskov, OSDI 1999 §4.2-4.3
and §4.6 batching; TOCS 2002 §2-3, signature variant).

Inputs: tick(mono_ms, wall_ms), receive(sender, message), propose(tx), executed(seq, hash).
Output: take_ready() -> Ready(records, messages, committed, stable_checkpoints), in the order the
shell must carry them out: persist the records, then send the messages, then execute the
committed batches and report each with executed().

Rules.
- Quorum Q = ceil((n+f+1)/2) (2f+1 when n = 3f+1): any two quorums share an honest member.
- The primary of view v is v mod n. It assigns consecutive sequence numbers inside the window
  (h, h+L] and broadcasts a signed PRE-PREPARE with the batch. A backup accepts it when it is
  from the primary of its view, in the window, every transaction is well-formed, of this chain
  and client-signed (tx_ok), the digest matches, and it has not accepted another digest for
  that (view, seq); then it broadcasts a PREPARE.
- prepared(seq): the PRE-PREPARE plus Q-1 matching PREPAREs from distinct backups (the primary
  sends none). Prepared -> broadcast COMMIT.
- committed(seq): the PRE-PREPARE plus Q matching COMMITs from distinct members. Q COMMITs mean
  at least f+1 honest members prepared, which is the paper's committed predicate; a replica
  that was not itself prepared may therefore execute a batch on a commit certificate (this is
  how a replica that lost messages recovers them, and it is what state transfer relies on).
- Batches execute strictly in sequence order; each comes out exactly once with its commit
  certificate (Q signed COMMITs).
- Every K sequence numbers a replica signs CHECKPOINT(seq, block hash) after executing seq.
  Q matching CHECKPOINTs make it stable: h moves to seq, and the log at or below h is dropped,
  except a bounded archive of the last L committed batches with their certificates, kept to
  answer FETCH from replicas that lost messages.
- Every input is checked before it counts (member, signature, role, view, window, digest, each
  client signature); a rejected input is dropped and counted in `rejected` by reason, never
  raised.
- Own votes are persisted (Ready.records) before they are sent, so a restarted replica never
  contradicts itself: it reloads them and re-sends the same votes.

Deviations and additions, each for liveness under message loss, which the paper leaves to
retransmission: a replica re-sends its own votes for slots not committed after retransmit_ms;
a replica that sees no progress while it knows of pending work sends FETCH for the next
sequence number, and others answer with the PRE-PREPARE and the COMMITs they hold (relayed: the
signatures name the authors). A backup withholds its PREPARE when the proposed timestamp is
more than timestamp_skew_ms from its clock (not evidence; other replicas may still prepare).

View change is a later issue: view is carried everywhere and the primary is view mod n; the
seams are `view`, `evidence` (conflicting PRE-PREPAREs are kept) and the request pool.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from consortium.crypto.codec import WireFormatError, pack, unpack
from consortium.crypto.signing import Domain, Signer, Verifier
from consortium.ledger.block import batch_digest
from consortium.ledger.certificates import CheckpointCertificate, CommitCertificate
from consortium.ledger.genesis import Genesis, Params
from consortium.ledger.tx import Transaction
from consortium.pbft.messages import (
    Checkpoint,
    Commit,
    Fetch,
    Message,
    Prepare,
    PrePrepare,
    decode,
    encode,
)

POOL_TXS_MAX = 100_000  # client transactions waiting to be ordered
EVIDENCE_MAX = 16
FETCH_ANSWERS_MAX = 4096  # remembered (asker, seq) answers, for rate limiting
FETCH_AHEAD = 4  # sequence numbers a lagging replica asks for at once
RETRANSMIT_SLOTS_MAX = 16  # slots re-sent per tick
STABLE_ARCHIVE_MAX = 4  # recent checkpoint certificates kept for replicas that missed votes


@dataclass(frozen=True, slots=True, kw_only=True)
class PbftConfig:
    chain_id: bytes
    member_keys: tuple[bytes, ...]
    me: int
    params: Params
    retransmit_ms: int = 0  # 0: derived from params.request_timeout_ms

    @property
    def n(self) -> int:
        return len(self.member_keys)

    @property
    def f(self) -> int:
        return (self.n - 1) // 3

    @property
    def quorum(self) -> int:
        return (self.n + self.f + 2) // 2

    @property
    def retransmit_after_ms(self) -> int:
        return self.retransmit_ms or max(20, self.params.request_timeout_ms // 4)

    @classmethod
    def from_genesis(cls, genesis: Genesis, me: int) -> PbftConfig:
        return cls(
            chain_id=genesis.chain_id,
            member_keys=tuple(m.public_key for m in genesis.members),
            me=me,
            params=genesis.params,
        )


@dataclass(frozen=True, slots=True)
class Outbound:
    dest: int | None  # None: every other member
    frame: bytes


@dataclass(frozen=True, slots=True)
class CommittedBatch:
    seq: int
    view: int
    digest: bytes
    proposed_ms: int
    txs: tuple[Transaction, ...]
    certificate: CommitCertificate


@dataclass(slots=True)
class Ready:
    records: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    messages: list[Outbound] = field(default_factory=list)
    committed: list[CommittedBatch] = field(default_factory=list)
    stable_checkpoints: list[CheckpointCertificate] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.records or self.messages or self.committed or self.stable_checkpoints)


@dataclass(frozen=True, slots=True)
class RecoveredState:
    last_executed: int
    last_block_hash: bytes
    stable_checkpoint: CheckpointCertificate | None
    records: list[tuple[bytes, bytes]]


@dataclass(slots=True)
class _Slot:
    seq: int
    preprepare: PrePrepare | None = None
    prepares: dict[int, Prepare] = field(default_factory=dict)
    commits: dict[int, Commit] = field(default_factory=dict)
    sent_prepare: Prepare | None = None
    sent_commit: Commit | None = None
    prepared: bool = False
    committed: bool = False
    certificate: CommitCertificate | None = None
    last_sent_ms: int = 0


def _vote_key(seq: int, kind: str) -> bytes:
    return b"pbft/vote/%020d/%s" % (seq, kind.encode())


VIEW_KEY = b"pbft/view"
PRIMARY_NEXT_KEY = b"pbft/next_seq"


class PbftReplica:
    def __init__(
        self,
        config: PbftConfig,
        signer: Signer,
        verifier: Verifier,
        *,
        tx_ok: Callable[[Transaction], bool],
        recovered: RecoveredState,
    ) -> None:
        assert config.n >= 4, "pbft needs n >= 4"
        assert 0 <= config.me < config.n
        assert signer.public_key == config.member_keys[config.me]
        self.config = config
        self.params = config.params
        self._signer = signer
        self._verifier = verifier
        self._tx_ok = tx_ok
        self.chain_id = config.chain_id
        self.me = config.me
        self.n = config.n
        self.f = config.f
        self.quorum = config.quorum
        self.view = 0
        self.rejected: Counter[str] = Counter()
        self.evidence: list[tuple[PrePrepare, PrePrepare]] = []

        self.last_executed = recovered.last_executed
        self._last_emitted = recovered.last_executed
        self._last_block_hash = recovered.last_block_hash
        cp = recovered.stable_checkpoint
        self.low_watermark = cp.seq if cp is not None and cp.seq <= self.last_executed else 0
        self.stable_certificate = cp if self.low_watermark else None
        self._slots: dict[int, _Slot] = {}
        self._archive: OrderedDict[int, tuple[PrePrepare, CommitCertificate]] = OrderedDict()
        self._checkpoint_votes: dict[int, dict[int, Checkpoint]] = {}
        self._stable_archive: OrderedDict[int, CheckpointCertificate] = OrderedDict()
        if cp is not None:
            self._stable_archive[cp.seq] = cp
        self._own_checkpoint: Checkpoint | None = None
        self._checkpoint_sent_ms = 0

        self._pool: OrderedDict[bytes, Transaction] = OrderedDict()  # tx id -> tx
        self._pool_bytes = 0
        self._in_flight_ids: set[bytes] = set()
        self._pending_since_ms: int | None = None
        self._next_seq = self.last_executed + 1
        self._highest_seen = self.last_executed
        self._progress_ms = 0
        self._fetch_answered: OrderedDict[tuple[int, int], int] = OrderedDict()

        self._mono_ms = 0
        self._wall_ms = 0
        self._ready = Ready()
        self._restore(recovered.records)
        self._check_invariants()

    # --- derived ----------------------------------------------------------------------------

    @property
    def primary(self) -> int:
        return self.view % self.n

    @property
    def is_primary(self) -> bool:
        return self.primary == self.me

    @property
    def high_watermark(self) -> int:
        return self.low_watermark + self.params.window

    @property
    def stable_checkpoint_seq(self) -> int:
        return self.low_watermark

    # --- recovery ---------------------------------------------------------------------------

    def _restore(self, records: list[tuple[bytes, bytes]]) -> None:
        """Reload our own votes so a restarted replica re-sends, never contradicts, them."""
        for key, value in sorted(records):
            if key == VIEW_KEY:
                self.view = int(unpack(value))
                continue
            if key == PRIMARY_NEXT_KEY:
                continue
            if not key.startswith(b"pbft/vote/"):
                continue
            try:
                msg = decode(value, self.params)
            except WireFormatError:
                continue  # our own record: cannot be malformed unless the disk lies
            seq = getattr(msg, "seq", 0)
            if seq <= self.last_executed:
                continue
            slot = self._slot(seq)
            match msg:
                case PrePrepare():
                    slot.preprepare = msg
                    self._next_seq = max(self._next_seq, seq + 1)
                    self._in_flight_ids.update(t.id for t in msg.txs)
                case Prepare():
                    slot.sent_prepare = msg
                    slot.prepares[self.me] = msg
                case Commit():
                    slot.sent_commit = msg
                    slot.commits[self.me] = msg
                    slot.prepared = True
                case _:
                    pass
            self._highest_seen = max(self._highest_seen, seq)

    # --- inputs -----------------------------------------------------------------------------

    def tick(self, mono_ms: int, wall_ms: int) -> None:
        mono_ms = max(mono_ms, self._mono_ms)  # never let time run backwards inside the core
        self._mono_ms = mono_ms
        self._wall_ms = wall_ms
        if self._progress_ms == 0:
            self._progress_ms = mono_ms
        self._maybe_propose()
        self._retransmit()
        self._check_invariants()

    def propose(self, tx: Transaction) -> None:
        if tx.id in self._pool or tx.id in self._in_flight_ids:
            self.rejected["duplicate_request"] += 1
            return
        if len(self._pool) >= POOL_TXS_MAX:
            self.rejected["pool_full"] += 1
            return
        if not self._pool:
            self._pending_since_ms = self._mono_ms
        self._pool[tx.id] = tx
        self._pool_bytes += tx.size
        self._maybe_propose()

    def receive(self, sender: int, msg: bytes | Message) -> None:
        if not 0 <= sender < self.n or sender == self.me:
            self.rejected["not_member"] += 1
            return
        if isinstance(msg, bytes):
            try:
                msg = decode(msg, self.params)
            except WireFormatError:
                self.rejected["malformed"] += 1
                return
        if not 0 <= msg.sender < self.n:
            self.rejected["not_member"] += 1
            return
        if msg.sender == self.me:
            self.rejected["own_message"] += 1
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
            case Fetch():
                self._on_fetch(sender, msg)
        self._check_invariants()

    def executed(self, seq: int, block_hash: bytes) -> None:
        assert seq == self.last_executed + 1, "batches execute strictly in order"
        assert seq <= self._last_emitted, "only emitted batches execute"
        self.last_executed = seq
        self._last_block_hash = block_hash
        self._progress_ms = self._mono_ms
        slot = self._slots.get(seq)
        if slot is not None and slot.preprepare is not None:
            for tx in slot.preprepare.txs:
                self._in_flight_ids.discard(tx.id)
                dropped = self._pool.pop(tx.id, None)
                if dropped is not None:
                    self._pool_bytes -= dropped.size
        if seq % self.params.checkpoint_interval == 0:
            cp = Checkpoint.create(
                self._signer, self.chain_id, seq=seq, block_hash=block_hash, sender=self.me
            )
            self._own_checkpoint = cp
            self._checkpoint_sent_ms = self._mono_ms
            self._checkpoint_votes.setdefault(seq, {})[self.me] = cp
            self._broadcast(cp)
            self._try_stabilise(seq)
        self._maybe_propose()
        self._check_invariants()

    def take_ready(self) -> Ready:
        ready, self._ready = self._ready, Ready()
        return ready

    # --- primary: batching ------------------------------------------------------------------

    def _maybe_propose(self) -> None:
        if not self.is_primary or self._wall_ms == 0:
            return  # proposals carry our wall clock: wait for the first tick to learn it
        params = self.params
        while self._pool and self._next_seq <= self.high_watermark:
            in_flight = self._next_seq - 1 - self.last_executed
            full = (
                len(self._pool) >= params.batch_txs_max
                or self._pool_bytes >= params.batch_bytes_max
            )
            waited = (
                self._pending_since_ms is not None
                and self._mono_ms - self._pending_since_ms >= params.batch_delay_ms
            )
            # Never wait when idle; when busy, wait to fill a batch for at most batch_delay_ms.
            if not (full or in_flight == 0 or waited):
                return
            self._cut_batch()

    def _cut_batch(self) -> None:
        params = self.params
        txs: list[Transaction] = []
        size = 0
        while self._pool and len(txs) < params.batch_txs_max:
            tx_id, tx = next(iter(self._pool.items()))
            if txs and size + tx.size > params.batch_bytes_max:
                break
            del self._pool[tx_id]
            self._pool_bytes -= tx.size
            txs.append(tx)
            size += tx.size
            self._in_flight_ids.add(tx_id)
        self._pending_since_ms = self._mono_ms if self._pool else None
        seq = self._next_seq
        self._next_seq += 1
        proposed_ms = self._wall_ms
        batch = tuple(txs)
        digest = batch_digest(proposed_ms, [t.id for t in batch])
        pp = PrePrepare.create(
            self._signer,
            self.chain_id,
            view=self.view,
            seq=seq,
            digest=digest,
            proposed_ms=proposed_ms,
            sender=self.me,
            txs=batch,
        )
        slot = self._slot(seq)
        assert slot.preprepare is None, "the primary assigns each sequence number once"
        slot.preprepare = pp
        slot.last_sent_ms = self._mono_ms
        self._highest_seen = max(self._highest_seen, seq)
        self._persist(_vote_key(seq, "pp"), encode(pp))
        self._broadcast(pp)
        self._advance(slot)

    # --- message handlers -------------------------------------------------------------------

    def _verify(self, msg: Message) -> bool:
        ok = self._verifier.verify(
            self.config.member_keys[msg.sender], Domain.PBFT, self.chain_id, msg.body, msg.signature
        )
        if not ok:
            self.rejected["bad_signature"] += 1
        return ok

    def _in_window(self, seq: int) -> bool:
        if not self.low_watermark < seq <= self.high_watermark:
            self.rejected["outside_window"] += 1
            return False
        return True

    def _on_preprepare(self, pp: PrePrepare) -> None:
        if pp.view != self.view:
            self.rejected["wrong_view"] += 1
            return
        if pp.sender != self.primary:
            self.rejected["not_primary"] += 1
            return
        if pp.seq <= self.last_executed and pp.seq in self._slots:
            self.rejected["duplicate"] += 1
            return
        if not self._in_window(pp.seq) or not self._verify(pp):
            return
        existing = self._slots.get(pp.seq)
        if existing is not None and existing.preprepare is not None:
            if existing.preprepare.digest == pp.digest:
                self.rejected["duplicate"] += 1
            else:
                # Two signed PRE-PREPAREs for one (view, seq): proof the primary equivocates.
                self.rejected["conflicting_preprepare"] += 1
                if len(self.evidence) < EVIDENCE_MAX:
                    self.evidence.append((existing.preprepare, pp))
            return
        if not self._batch_valid(pp):
            return
        slot = self._slot(pp.seq)
        slot.preprepare = pp
        self._highest_seen = max(self._highest_seen, pp.seq)
        if pp.seq > self.last_executed and not slot.committed and slot.sent_prepare is None:
            if abs(pp.proposed_ms - self._wall_ms) > self.params.timestamp_skew_ms:
                self.rejected["timestamp_skew"] += 1
            else:
                prepare = Prepare.create(
                    self._signer,
                    self.chain_id,
                    view=pp.view,
                    seq=pp.seq,
                    digest=pp.digest,
                    sender=self.me,
                )
                slot.sent_prepare = prepare
                slot.prepares[self.me] = prepare
                slot.last_sent_ms = self._mono_ms
                self._persist(_vote_key(pp.seq, "p"), encode(prepare))
                self._broadcast(prepare)
        self._advance(slot)

    def _batch_valid(self, pp: PrePrepare) -> bool:
        """Stateless checks every honest replica decides alike (DESIGN: evidence material)."""
        params = self.params
        if (
            len(pp.txs) > params.batch_txs_max
            or sum(t.size for t in pp.txs) > params.batch_bytes_max
        ):
            self.rejected["batch_too_large"] += 1
            return False
        if batch_digest(pp.proposed_ms, [t.id for t in pp.txs]) != pp.digest:
            self.rejected["digest_mismatch"] += 1
            return False
        for tx in pp.txs:
            if tx.chain_id != self.chain_id:
                self.rejected["wrong_chain"] += 1
                return False
        for tx in pp.txs:
            if not self._tx_ok(tx):
                self.rejected["bad_client_signature"] += 1
                return False
        return True

    def _vote_checks(self, msg: Prepare | Commit) -> _Slot | None:
        if msg.view != self.view:
            self.rejected["wrong_view"] += 1
            return None
        existing = self._slots.get(msg.seq)
        if existing is None and not self._in_window(msg.seq):
            return None
        if existing is not None and existing.committed and msg.seq <= self.last_executed:
            # A laggard is still voting on a batch we executed: help it along, cheaply.
            self._help_laggard(msg.sender, existing)
            self.rejected["duplicate"] += 1
            return None
        if not self._verify(msg):
            return None
        return self._slot(msg.seq)

    def _on_prepare(self, prepare: Prepare) -> None:
        if prepare.sender == self.primary:
            self.rejected["prepare_from_primary"] += 1
            return
        slot = self._vote_checks(prepare)
        if slot is None:
            return
        earlier = slot.prepares.get(prepare.sender)
        if earlier is not None:
            self.rejected[
                "duplicate" if earlier.digest == prepare.digest else "conflicting_vote"
            ] += 1
            return
        slot.prepares[prepare.sender] = prepare
        self._highest_seen = max(self._highest_seen, prepare.seq)
        self._advance(slot)

    def _on_commit(self, commit: Commit) -> None:
        slot = self._vote_checks(commit)
        if slot is None:
            return
        earlier = slot.commits.get(commit.sender)
        if earlier is not None:
            self.rejected[
                "duplicate" if earlier.digest == commit.digest else "conflicting_vote"
            ] += 1
            return
        slot.commits[commit.sender] = commit
        self._highest_seen = max(self._highest_seen, commit.seq)
        self._advance(slot)

    def _on_checkpoint(self, cp: Checkpoint) -> None:
        if cp.seq <= self.low_watermark:
            self.rejected["stale_checkpoint"] += 1
            # The sender still votes for a checkpoint that is stable here: it missed the
            # votes. Hand it the certificate (Q signed CHECKPOINTs), rate-limited.
            cert = self._stable_archive.get(cp.seq)
            if cert is not None and self._may_answer(cp.sender, -cp.seq):
                for vote in cert.votes:
                    self._send_raw(cp.sender, pack([vote.body, vote.signature]))
            return
        if cp.seq > self.high_watermark or cp.seq % self.params.checkpoint_interval:
            self.rejected["outside_window"] += 1
            return
        votes = self._checkpoint_votes.setdefault(cp.seq, {})
        if cp.sender in votes:
            self.rejected["duplicate"] += 1
            return
        if not self._verify(cp):
            if not votes:
                del self._checkpoint_votes[cp.seq]
            return
        votes[cp.sender] = cp
        self._highest_seen = max(self._highest_seen, cp.seq)
        self._try_stabilise(cp.seq)

    def _may_answer(self, peer: int, key: int) -> bool:
        """Rate limit for help given to one peer: once per retransmit interval per key."""
        last = self._fetch_answered.get((peer, key))
        if last is not None and self._mono_ms - last < self.config.retransmit_after_ms:
            self.rejected["fetch_rate_limited"] += 1
            return False
        self._fetch_answered[(peer, key)] = self._mono_ms
        while len(self._fetch_answered) > FETCH_ANSWERS_MAX:
            self._fetch_answered.popitem(last=False)
        return True

    def _on_fetch(self, sender: int, fetch: Fetch) -> None:
        if fetch.sender != sender:
            self.rejected["sender_mismatch"] += 1
            return
        if not self._verify(fetch) or not self._may_answer(sender, fetch.seq):
            return
        slot = self._slots.get(fetch.seq)
        if slot is not None and slot.preprepare is not None:
            self._send(sender, slot.preprepare)
            if slot.certificate is not None:
                for vote in slot.certificate.votes:
                    self._send_raw(sender, pack([vote.body, vote.signature]))
            else:
                for commit in slot.commits.values():
                    self._send(sender, commit)
            return
        archived = self._archive.get(fetch.seq)
        if archived is not None:
            pp, cert = archived
            self._send(sender, pp)
            for vote in cert.votes:
                self._send_raw(sender, pack([vote.body, vote.signature]))
            return
        self.rejected["fetch_unknown"] += 1

    def _help_laggard(self, peer: int, slot: _Slot) -> None:
        if slot.sent_commit is not None and self._may_answer(peer, slot.seq):
            self._send(peer, slot.sent_commit)

    # --- the predicates ---------------------------------------------------------------------

    def _advance(self, slot: _Slot) -> None:
        pp = slot.preprepare
        if pp is None or slot.committed:
            return
        digest = pp.digest
        if not slot.prepared:
            matching = sum(
                1
                for s, p in slot.prepares.items()
                if p.digest == digest and p.view == pp.view and s != self.primary
            )
            if matching >= self.quorum - 1:
                slot.prepared = True
                if slot.sent_commit is None:
                    commit = Commit.create(
                        self._signer,
                        self.chain_id,
                        view=pp.view,
                        seq=pp.seq,
                        digest=digest,
                        sender=self.me,
                    )
                    slot.sent_commit = commit
                    slot.commits[self.me] = commit
                    slot.last_sent_ms = self._mono_ms
                    self._persist(_vote_key(pp.seq, "c"), encode(commit))
                    self._broadcast(commit)
        senders = sorted(
            s for s, c in slot.commits.items() if c.digest == digest and c.view == pp.view
        )
        if len(senders) >= self.quorum:
            slot.committed = True
            slot.certificate = CommitCertificate(
                pp.view,
                pp.seq,
                digest,
                tuple(slot.commits[s].vote() for s in senders[: self.quorum]),
            )
            self._emit_in_order()

    def _emit_in_order(self) -> None:
        while True:
            slot = self._slots.get(self._last_emitted + 1)
            if slot is None or not slot.committed:
                return
            pp = slot.preprepare
            assert pp is not None and slot.certificate is not None
            self._ready.committed.append(
                CommittedBatch(pp.seq, pp.view, pp.digest, pp.proposed_ms, pp.txs, slot.certificate)
            )
            self._last_emitted = pp.seq
            self._progress_ms = self._mono_ms

    # --- checkpoints ------------------------------------------------------------------------

    def _try_stabilise(self, seq: int) -> None:
        votes = self._checkpoint_votes.get(seq, {})
        if seq > self.last_executed:
            return  # we cannot vouch for it yet; re-checked when we execute seq
        by_hash: dict[bytes, list[int]] = {}
        for sender in sorted(votes):
            by_hash.setdefault(votes[sender].block_hash, []).append(sender)
        own = votes.get(self.me)
        for block_hash in sorted(by_hash):
            senders = by_hash[block_hash]
            if len(senders) < self.quorum:
                continue
            if own is None or own.block_hash != block_hash:
                # A quorum certified a hash we did not compute: our ledger diverged. Never
                # adopt it silently; status shows it (state transfer is a later issue).
                self.rejected["checkpoint_disagrees_with_us"] += 1
                continue
            cert = CheckpointCertificate(
                seq, block_hash, tuple(votes[s].vote() for s in senders[: self.quorum])
            )
            self._stabilise(cert)
            return

    def _stabilise(self, cert: CheckpointCertificate) -> None:
        seq = cert.seq
        assert seq > self.low_watermark
        assert seq <= self.last_executed
        self.low_watermark = seq
        self.stable_certificate = cert
        self._stable_archive[seq] = cert
        while len(self._stable_archive) > STABLE_ARCHIVE_MAX:
            self._stable_archive.popitem(last=False)
        self._ready.stable_checkpoints.append(cert)
        for s in sorted(k for k in self._slots if k <= seq):
            slot = self._slots.pop(s)
            if slot.preprepare is not None and slot.certificate is not None:
                self._archive[s] = (slot.preprepare, slot.certificate)
            for kind in ("pp", "p", "c"):
                self._ready.records.append((_vote_key(s, kind), None))
        while self._archive and next(iter(self._archive)) <= seq - self.params.window:
            self._archive.popitem(last=False)
        for s in [k for k in self._checkpoint_votes if k <= seq]:
            del self._checkpoint_votes[s]
        self._maybe_propose()

    # --- retransmission ---------------------------------------------------------------------

    def _retransmit(self) -> None:
        now = self._mono_ms
        after = self.config.retransmit_after_ms
        resent = 0
        for seq in sorted(self._slots):
            if resent >= RETRANSMIT_SLOTS_MAX:
                break
            slot = self._slots[seq]
            if slot.committed or now - slot.last_sent_ms < after:
                continue
            sent = False
            if slot.preprepare is not None and slot.preprepare.sender == self.me:
                self._broadcast(slot.preprepare)
                sent = True
            if slot.sent_prepare is not None:
                self._broadcast(slot.sent_prepare)
                sent = True
            if slot.sent_commit is not None:
                self._broadcast(slot.sent_commit)
                sent = True
            if sent:
                slot.last_sent_ms = now
                resent += 1
        own = self._own_checkpoint
        if (
            own is not None
            and own.seq > self.low_watermark
            and now - self._checkpoint_sent_ms >= after
        ):
            self._broadcast(own)
            self._checkpoint_sent_ms = now
        # No progress while we know of work: ask peers for the next batches.
        waiting = bool(self._pool) or self._highest_seen > self.last_executed
        if (
            waiting
            and self._last_emitted == self.last_executed
            and now - self._progress_ms >= after
        ):
            start = self.last_executed + 1
            for seq in range(start, min(start + FETCH_AHEAD, self.high_watermark + 1)):
                known = self._slots.get(seq)
                if known is not None and known.committed:
                    continue
                self._broadcast(Fetch.create(self._signer, self.chain_id, seq=seq, sender=self.me))
            self._progress_ms = now

    # --- effects ----------------------------------------------------------------------------

    def _slot(self, seq: int) -> _Slot:
        slot = self._slots.get(seq)
        if slot is None:
            slot = self._slots[seq] = _Slot(seq, last_sent_ms=self._mono_ms)
        return slot

    def _persist(self, key: bytes, value: bytes) -> None:
        self._ready.records.append((key, value))

    def _broadcast(self, msg: Message) -> None:
        self._ready.messages.append(Outbound(None, encode(msg)))

    def _send(self, dest: int, msg: Message) -> None:
        self._ready.messages.append(Outbound(dest, encode(msg)))

    def _send_raw(self, dest: int, frame: bytes) -> None:
        self._ready.messages.append(Outbound(dest, frame))

    # --- invariants and status --------------------------------------------------------------

    def _check_invariants(self) -> None:
        assert self.low_watermark <= self.last_executed <= self._last_emitted
        assert len(self._pool) <= POOL_TXS_MAX
        assert len(self.evidence) <= EVIDENCE_MAX
        assert all(s > self.low_watermark for s in self._slots)
        assert all(s <= self.high_watermark or s <= self._last_emitted for s in self._slots)

    def status(self) -> dict[str, Any]:
        waiting = ""
        nxt = self._slots.get(self.last_executed + 1)
        if self._last_emitted > self.last_executed:
            waiting = f"executing batch {self.last_executed + 1}"
        elif nxt is not None and not nxt.committed:
            if nxt.preprepare is None:
                waiting = f"PRE-PREPARE for seq {nxt.seq} from the primary ({self.primary})"
            elif not nxt.prepared:
                have = sum(1 for s, p in nxt.prepares.items() if p.digest == nxt.preprepare.digest)
                waiting = f"PREPAREs for seq {nxt.seq}: {have} of {self.quorum - 1}"
            else:
                have = sum(1 for c in nxt.commits.values() if c.digest == nxt.preprepare.digest)
                waiting = f"COMMITs for seq {nxt.seq}: {have} of {self.quorum}"
        elif self._pool and not self.is_primary and self._highest_seen <= self.last_executed:
            waiting = f"{len(self._pool)} client transactions not yet proposed by the primary"
        elif self._highest_seen > self.last_executed + self.params.window:
            waiting = (
                f"behind: peers are at seq {self._highest_seen}, we executed "
                f"{self.last_executed} (state transfer comes in a later release)"
            )
        return {
            "mode": "pbft",
            "view": self.view,
            "primary": self.primary,
            "last_executed": self.last_executed,
            "low_watermark": self.low_watermark,
            "high_watermark": self.high_watermark,
            "stable_checkpoint": self.low_watermark,
            "in_flight": max(0, self._next_seq - 1 - self.last_executed) if self.is_primary else 0,
            "slots": len(self._slots),
            "pending_txs": len(self._pool),
            "evidence": len(self.evidence),
            "waiting_for": waiting,
        }
