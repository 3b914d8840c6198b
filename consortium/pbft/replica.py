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
at least one honest one; Q = 2f+1 when n = 3f+1; the papers' predicates are functions in
pbft/rules.py):

    primary(v) = v mod n. It batches client transactions and assigns the next sequence number
      inside the window (h, h+L], signing PRE-PREPARE(v, seq, digest, proposed_ms) + batch.
    backup accepts a PRE-PREPARE  from primary(v), in view v, in the window, validly signed,
      when it holds no other digest for (v, seq), the batch is within limits, every
      transaction is of this chain and client-signed (tx_ok), and the digest matches. Then it
      persists the PRE-PREPARE and its PREPARE and multicasts the PREPARE, unless the proposed
      timestamp is further than timestamp_skew_ms from its clock, before or after it: then it
      withholds its PREPARE (counted, not evidence; the others may still prepare the batch,
      and if they cannot, the batch costs a view change). So the time of every prepared batch
      is within the skew of the clocks of f+1 honest backups, whoever proposed it, and block
      time = max(proposed, previous) can be neither pushed ahead nor held back by more than
      the skew. Live while Q members, among them the primary, have clocks within
      timestamp_skew_ms - d of each other (d: a PRE-PREPARE's delay until a backup takes it);
      a member whose clock is off counts as one of the f for liveness, never for safety.
      Batches re-issued in a NEW-VIEW are exempt (their time was fixed in an earlier view).
      Committed batches also give this member its own clock's offset (ledger/clock.py; only
      from a PRE-PREPARE that came before the others' votes and prepared within an interval,
      so a primary choosing when it reaches us cannot fake it: _sample_clock).
    prepared(seq)   the PRE-PREPARE plus Q-1 matching PREPAREs from distinct backups (the
      primary sends none): persist the prepared certificate and our COMMIT, multicast it.
    committed-local(seq)   prepared plus Q matching COMMITs from distinct members (ours
      included); batches come out in Ready.committed strictly in sequence order, each once,
      with a commit certificate of Q signed COMMITs and the transactions its digest names
      (checked once more as it goes out: a mismatch is a bug, never a block).
    checkpoint   after executing a multiple of K, sign CHECKPOINT(seq, block hash); Q matching
      make it stable: h moves, the log at or below h is collected (pbft/checkpoint.py).

Every peer input is checked before it counts, and anything wrong is dropped and counted in
`rejected` by reason, never raised. The reasons are one table, pbft/reasons.py: each name,
whether honest members cause it too (benign) or never (misbehaviour), and what it means; the
replica counts only names from it. The cheap checks come first (membership, sender, role, view,
window) and a signature is verified last. An invalid batch (batch_too_large, wrong_chain,
digest_mismatch, bad_client_signature) fails a stateless check, so every honest replica decides
alike: it is kept in `evidence`, as are both signed bodies of a conflicting_preprepare, for the
view change below. Messages above h+L, or for a view not entered yet, are buffered per sender,
bounded, and re-fed when h moves or the view starts. Some reasons count what we hold back
rather than drop (timestamp_skew and never_admitted withhold our PREPARE) or our own giving up
(batch_request_abandoned).

Retransmission (pbft/retransmit.py) recovers from message loss inside a view.

View change (OSDI'99 §4.4; proofs in pbft/viewchange.py). A backup suspects the primary when
(a) it has work (pending or accepted, unexecuted batches) and nothing executed for the current
timeout; (b) a transaction it forwarded to the primary (it waited a timeout in our pool: the
client's copy to the primary may be lost, or the primary censors it) is still in no accepted
batch a timeout later; (c) the primary proves itself faulty: two signed PRE-PREPAREs for one
(view, seq), or a batch failing a stateless check (kept in `evidence`); or (d) a NEW-VIEW from
it does not recompute. It then moves to view v+1: persists the view, multicasts
VIEW-CHANGE(v+1, stable certificate, prepared proofs) and re-sends it until a NEW-VIEW for v+1
or later arrives. Once Q members (ours included) sent valid VIEW-CHANGEs for v+1 or a later view
(each member's latest counts) it starts a timer; if no valid NEW-VIEW arrives in time it moves
on to v+2 (a NEW-VIEW for v+1 that does not recompute moves it on at once; one whose contents
do not match the digest its primary signed was changed by a relay and is dropped as malformed,
blaming no one; a bad one for any other view is dropped and counted, since one faulty member is
primary of infinitely many views). Later views count for the timer only: a NEW-VIEW for v+1
still carries Q VIEW-CHANGEs for exactly v+1. Counting only those for exactly v+1 (the rule
before) deadlocks after a healed partition with a member down: one member at v+2 alone, the
others at v+1 with Q-1 each, and no timer anywhere (docs/protocol.md, "View-change timers",
sketches why the rule is live). The timeout doubles with each successive view change, up to
TIMEOUT_DOUBLINGS_MAX times, and returns to params.request_timeout_ms once a request executes.
f+1 VIEW-CHANGEs for views above ours make us join the smallest of the f+1 highest (a faulty
replica alone cannot start a view change).
A replica that asked alone for a view the others never join (it was cut off past the timeout
while they went on; the node runtime does not count the time its process was stopped, so a
pause alone does not do this) cannot go back to their view, which its VIEW-CHANGE promised to
leave, and must not drag them along (one member alone never forces a view change). It counts as
one of the f faulty until their view changes reach its view, says so in status (`alone`), and
keeps its ledger current by fetching their blocks every two intervals (and its CHECKPOINTs
still count for them). A replica holding an accepted batch that saw nothing commit for a whole
timeout fetches too: the members whose votes it lacks may have moved on to a later view, and
only a signer re-sends its vote.
The new primary, with Q VIEW-CHANGEs, fetches any batch it lacks by digest, then sends NEW-VIEW
with the re-issued PRE-PREPAREs (null requests for gaps); every replica recomputes it, persists
it, drops the old view's slots (keeping, at most L, the batches they hold that the NEW-VIEW
re-issues), re-issues the transactions of dropped batches to its pool, fetches missing batches
by digest (BATCH-REQ to all, again each interval while still needed, BATCH_ASKS_MAX times at
most at the base timeout, as many more as the timeout has doubled), and runs the re-issued
sequence numbers through PREPARE and COMMIT in the new view. Neither the skew check nor the
admitted-key check applies to re-issued batches. A replica that holds the NEW-VIEW relays it to
a peer still asking for the old view change, so laggards join without another view change.

State transfer. A stable checkpoint certificate above what we committed (from Q CHECKPOINTs, a
NEW-VIEW's min_s, or a peer's answer) is adopted at once: h moves to it and the log below is
collected, unless it names another block hash than we signed or executed there. Whenever h is
above what we committed, or f+1 peers showed (by CHECKPOINTs or the height their BLOCKS claim)
that they executed beyond it and we are stuck, we FETCH blocks from one peer at a time: from a
random one first (config.seed), then round robin, rotating on a bad answer and on a slow one:
no answer within the interval, or fewer blocks that advance us than fit one frame while the
peer claims more (blocks we had, repeated or out of order do not count). A slow peer is asked
again only when every other one was slow too (or after FETCH_SLOW_SKIP_INTERVALS). Each block
in BLOCKS is checked by its own commit certificate (Q signed COMMITs for (view, seq, digest))
and digest == batch_digest(proposed_ms, ids), so f lying peers can only waste a round trip, and
f slow ones a round trip each; accepted blocks come out in Ready.committed like any committed
batch. Serving FETCH reads the block store, so the core hands it to the shell (Ready.serve,
within what is left of the asker's byte budget, SERVED_FRAMES_PER_INTERVAL frames per interval
shared with BATCH answers; and, since each answer is signed, at most `window` BATCH-REQs and
EMPTY_FETCHES_PER_INTERVAL FETCHes beyond our height per peer per interval) and the shell
answers (pbft/transfer.py) and reports the answer's size (served()).

Recovery gate (pbft/recovery.py). A replica started with a recovery nonce (its state may be
older than what it sent: a restored backup, or lost state) signs no PRE-PREPARE, PREPARE,
COMMIT, NEW-VIEW or VIEW-CHANGE for a view below its floor: one above the (n-f-1)-th smallest
view reported, in answers signed over its fresh nonce (VIEW-QUERY, VIEW-REPORT), by n-f-1 other
members, which bounds every view it can have acted in. Re-sent copies of its records, CHECKPOINT
(the hash of deterministic execution of committed batches: it cannot differ from one signed
before), state transfer, batches by digest and forwarding stay allowed. It leaves recovery once
active in a view >= floor and executed past that view's NEW-VIEW, its h and the (f+1)-th
highest height reported; until then it counts as one of the f faulty members.
"""

from __future__ import annotations

import contextlib
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from consortium.crypto.codec import WireFormatError, pack
from consortium.crypto.hashing import sha256
from consortium.crypto.signing import Domain, Signer, Verifier
from consortium.ledger.block import batch_digest
from consortium.ledger.certificates import (
    CheckpointCertificate,
    CommitCertificate,
    SignedVote,
    commit_body,
)
from consortium.ledger.clock import OFFSET_SAMPLES_MAX, ClockOffset
from consortium.ledger.genesis import Genesis, Params
from consortium.ledger.membership import Configuration
from consortium.ledger.tx import Transaction
from consortium.pbft import reasons as drop
from consortium.pbft import records, rules
from consortium.pbft.checkpoint import CheckpointVotes
from consortium.pbft.effects import CommittedBatch, Outbound, Ready, Serve
from consortium.pbft.log import FutureBuffer, MessageLog, Slot
from consortium.pbft.messages import (
    Batch,
    BatchRequest,
    Blocks,
    Checkpoint,
    Commit,
    Fetch,
    Message,
    NewView,
    Prepare,
    PreparedProof,
    PrePrepare,
    TransferredBlock,
    ViewChange,
    ViewQuery,
    ViewReport,
    decode,
    encode,
    frame_bytes_limit,
    new_view_digest,
    proofs_digest_of,
)
from consortium.pbft.pool import TxPool
from consortium.pbft.recovery import ViewRecovery
from consortium.pbft.retransmit import Retransmitter
from consortium.pbft.viewchange import (
    NULL_DIGEST,
    NULL_PROPOSED_MS,
    Members,
    NewViewPlan,
    check_checkpoint_certificate,
    check_commit_certificate,
    check_new_view,
    check_view_change,
    plan_new_view,
)

__all__ = [
    "CommittedBatch",
    "Evidence",
    "Outbound",
    "PbftConfig",
    "PbftReplica",
    "Ready",
    "RecoveredState",
    "Serve",
]

EVIDENCE_MAX = 32
FORWARD_PER_TICK = 256  # overdue transactions a backup forwards to the primary per tick
FORWARD_DIGEST = b"\xff" * 32  # marks a BATCH of forwarded transactions (no batch has it)
# What a peer may make us send per retransmission interval answering its BATCH-REQs and
# FETCHes, together, in bytes: this many of the largest frames we send (frame_bytes_limit: a
# full batch and its envelope). At the default parameters 2 x 4,263,936 bytes per 500 ms, about
# 16 MiB/s per peer; the last answer admitted may overdraw it by one frame at most. Counted in
# answers of up to a full batch each, it was 128 MiB/s (review).
SERVED_FRAMES_PER_INTERVAL = 2
# Bytes alone do not bound what answers cost us: each is signed (87 us), so one member asking
# again and again for a small batch (or for blocks beyond our height: an 84-byte answer that
# goes back to the byte budget) got about 30,000 signed answers per 500 ms, more than a core
# (review). So a peer's BATCH-REQs are also counted, answered or not (each costs a lookup):
# `window` per interval, what an honest member asks at most (it asks for each batch it lacks
# once per interval, and lacks at most `window`). A FETCH for blocks we hold costs its bytes
# (every answer carries a block, and a peer's starts must rise within a quarter interval), but
# one beyond our height carries none: at most this many per interval (an honest member asking
# there is probing, and moves on to another member after our empty answer).
EMPTY_FETCHES_PER_INTERVAL = 4
# A batch asked for by digest (BATCH-REQ to all) is asked again each interval while it is still
# needed, at most this many times at the base view-change timeout (4 timeouts), as many more
# as the timeout has doubled (_batch_asks_max); then it is given up (counted) until the view
# changes.
BATCH_ASKS_MAX = 16
# A member that answered a FETCH slowly (fewer blocks than fit while it claims more) or not at
# all is asked again only after this many intervals, unless no other member can be.
FETCH_SLOW_SKIP_INTERVALS = 16
# Transactions a backup may forward to us as primary per interval, in full batches: each new
# one costs a client-signature check, so this bounds what one member can make us verify.
FORWARDED_BATCHES_PER_INTERVAL = 4
_LONG_AGO = -(2**62)
# The view-change timeout doubles per successive view change up to this many times (64 x the
# base): long enough to outlast any delay after the network stabilises, short enough that a
# network that lost many primaries in a row still tries the next one within minutes.
TIMEOUT_DOUBLINGS_MAX = 6
PENDING_TXS_MAX = 100_000
PENDING_BYTES_MAX = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class PbftConfig:
    """One epoch's replica: its configuration's voters (member id, key), sorted by id, and
    the part of the ledger it orders, (start, end] (pbft/epochs.py)."""

    chain_id: bytes
    members: tuple[tuple[int, bytes], ...]  # the voters (member id, public key), by id
    me: int  # this replica's member id
    params: Params
    # Randomness for the core, which draws none of its own (the first member asked for blocks
    # is drawn from it, so that a faulty member is not every restarted replica's first choice).
    # The node passes fresh random bytes; the simulator derives them from its seed.
    seed: bytes = b""
    epoch: int = 0
    start: int = 0  # S_e = E_{e-1}: the epoch orders seqs above it; the initial low watermark
    end: int | None = None  # E_e once a change is pending: the epoch orders nothing above it

    def __post_init__(self) -> None:
        ids = [i for i, _ in self.members]
        assert ids == sorted(set(ids)), "members sorted by id, ids distinct"
        assert self.end is None or self.end > self.start

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(i for i, _ in self.members)

    @property
    def keys(self) -> dict[int, bytes]:
        return dict(self.members)

    @property
    def member_keys(self) -> tuple[bytes, ...]:
        return tuple(k for _, k in self.members)

    @property
    def n(self) -> int:
        return len(self.members)

    def primary(self, view: int) -> int:
        """The primary of `view`: voters[view mod n] (ledger Configuration.primary)."""
        return self.members[view % len(self.members)][0]

    @property
    def f(self) -> int:
        return (self.n - 1) // 3

    @property
    def quorum(self) -> int:
        """ceil((n+f+1)/2): two quorums intersect in at least f+1 members."""
        return (self.n + self.f + 2) // 2

    @classmethod
    def from_genesis(cls, genesis: Genesis, me: int, *, seed: bytes = b"") -> PbftConfig:
        """Epoch 0: genesis member i as id i, from seq 0."""
        return cls(
            chain_id=genesis.chain_id,
            members=tuple((i, m.public_key) for i, m in enumerate(genesis.members)),
            me=me,
            params=genesis.params,
            seed=seed,
        )

    @classmethod
    def from_configuration(
        cls,
        config: Configuration,
        me: int,
        params: Params,
        *,
        start: int = 0,
        end: int | None = None,
        seed: bytes = b"",
    ) -> PbftConfig:
        return cls(
            chain_id=config.chain_id,
            members=tuple((m.id, m.public_key) for m in config.voters),
            me=me,
            params=params,
            seed=seed,
            epoch=config.epoch,
            start=start,
            end=end,
        )


@dataclass(slots=True)
class _Wanted:
    """A batch we asked for by digest: when we last asked, and how many times."""

    asked_ms: int
    asks: int = 1


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

    reason: str  # a drop reason (pbft/reasons.py): conflicting_preprepare, digest_mismatch, ...
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
        ever_admitted: Callable[[Transaction], bool] | None = None,
        recovery_nonce: bytes | None = None,
    ) -> None:
        """`recovery_nonce`: None for a normal start; a fresh random nonce (16 bytes, drawn by
        the shell) to start in recovery, when this member's state may be older than what it
        sent (a restored backup, or lost state): pbft/recovery.py."""
        params = config.params
        assert config.n >= 4, "pbft needs n = 3f+1 >= 4 members"
        assert config.me in config.keys, "`me` is not a voter of this epoch"
        assert signer.public_key == config.keys[config.me], "signer is not member `me`"
        assert params.window % params.checkpoint_interval == 0
        self.config = config
        self.params = params
        self.chain_id = config.chain_id
        self.me = config.me
        self.n = config.n
        self.epoch = config.epoch
        self.ids = config.ids  # the voters' member ids, sorted
        self._keys = config.keys
        self._others = tuple(i for i in self.ids if i != self.me)
        self.f = config.f
        self.quorum = config.quorum  # what this replica waits for (a test subclass lowers it)
        self.retransmit_ms = (
            retransmit_ms if retransmit_ms is not None else max(1, params.request_timeout_ms // 4)
        )
        self._signer = signer
        self._verifier = verifier
        self._tx_ok = tx_ok
        # Whether a transaction's key was ever admitted in the state this replica executed
        # (genesis, or an accepted client change; or it is a member's client change): the
        # shell's ledger state answers (KeyValueState.may_submit). Without it (a core with no
        # ledger, as in unit tests) every key is taken as admitted, as before the rule.
        self._ever_admitted = ever_admitted or (lambda tx: True)
        self._held_for_config = False  # messages wait in _future until config(seq) is known
        self._unadmitted: set[int] = set()  # seqs whose PREPARE waits for an admission (<= L)
        self._members = Members(
            self.chain_id,
            self._keys,
            self.quorum,
            params.window,
            epoch=config.epoch,
            start=config.start,
        )

        self.view = 0
        self.active = True  # normal operation in self.view (False: moving to it)
        self.view_changes = 0  # view changes this replica started or joined
        # Highest seq each peer sent us a valid COMMIT for: status only (the peers' lag; a
        # checkpoint, which moves peer_executed, comes only every checkpoint_interval).
        self.peers_committed = dict.fromkeys(self.ids, 0)
        self.last_view_change_reason = ""
        self.view_change_history: deque[tuple[int, str]] = deque(maxlen=16)  # (view, why)
        self.rejected: Counter[str] = Counter()
        self.evidence: deque[Evidence] = deque(maxlen=EVIDENCE_MAX)
        self.last_executed = recovered.last_executed
        self._last_block_hash = recovered.last_block_hash
        self._last_committed = recovered.last_executed  # last seq handed out in Ready.committed
        self._highest_accepted = recovered.last_executed  # highest seq with a PRE-PREPARE
        # What we committed in (h, last committed]: a seq we committed never gets our PREPARE
        # or COMMIT for another digest, whatever a NEW-VIEW or a primary says (a second guard:
        # a valid NEW-VIEW re-issues exactly these, OSDI'99 §4.4).
        self._committed_digests: dict[int, bytes] = {}
        self._next_seq = recovered.last_executed + 1  # the primary's next sequence number
        self.stable_certificate: CheckpointCertificate | None = None
        self._log = MessageLog(params.window)
        self._checkpoints = CheckpointVotes(self.me)
        self._pool = TxPool(pending_txs_max, pending_bytes_max, remembered_max=pending_txs_max)
        self._future = FutureBuffer(
            self.ids,
            messages_max=3 * params.window,
            bytes_max=2 * params.batch_bytes_max + 64 * 1024,
        )
        self._retransmit = Retransmitter(
            self.ids, self.me, self.retransmit_ms, self._log, self._checkpoints
        )
        self._clock_known = False
        self._mono_ms = 0
        self._wall_ms = 0
        self.clock = ClockOffset(2 * params.timestamp_skew_ms)  # ours against committed times

        # View change.
        self._prepared: dict[int, PreparedProof] = {}  # seq -> highest view's, batch attached
        self._vcs: dict[int, ViewChange] = {}  # sender -> its latest valid VIEW-CHANGE
        self._checked_vcs: OrderedDict[bytes, None] = OrderedDict()  # frames already checked
        self._own_vc: bytes | None = None
        self._vc_resend_at: int | None = None
        self._vc_backoff = 1
        self._nv_frame: bytes | None = None  # the NEW-VIEW that started self.view
        self._reissued_max = 0  # its max_s: fresh PRE-PREPAREs in self.view start above it
        self._nv_sent = False  # as primary of self.view
        self._nv_relayed_ms = dict.fromkeys(self.ids, _LONG_AGO)
        self._vc_checked_ms = dict.fromkeys(self.ids, _LONG_AGO)
        self._nv_checked_ms = dict.fromkeys(self.ids, _LONG_AGO)
        self._timeouts = 0  # successive view changes since a request last executed
        self._work_since_ms: int | None = None  # progress timer (a)
        self._nv_timer_at: int | None = None  # waiting for NEW-VIEW (Q members at >= view)
        self._vc_since_ms = 0  # when we started or joined the view change under way (status)
        # Per peer, the view and time of its latest PRE-PREPARE/PREPARE/COMMIT for a view below
        # ours: status only, to say when we wait alone while the others work in a lower view.
        self._seen_working = dict.fromkeys(self.ids, (-1, _LONG_AGO))
        self._wanted: dict[bytes, _Wanted] = {}  # batch digest -> when and how often asked
        # The batches the NEW-VIEW we are building as primary still lacks (<= L), and those
        # given up after BATCH_ASKS_MAX asks in this (view, active) state (<= L).
        self._nv_missing: frozenset[bytes] = frozenset()
        self._abandoned: set[bytes] = set()
        self._abandoned_in = (self.view, self.active)
        # Batches that came by digest, for the NEW-VIEW being built or entered (<= L).
        self._fetched: OrderedDict[bytes, tuple[int, tuple[Transaction, ...]]] = OrderedDict()
        # Bytes each peer may still make us send this interval (BATCH and BLOCKS answers),
        # and the BATCH-REQs and FETCHes beyond our height it may still make: refilled per
        # interval.
        self._serve_budget = dict.fromkeys(self.ids, self._serve_budget_full)
        self._batch_asks_left = dict.fromkeys(self.ids, params.window)
        self._empty_fetches_left = dict.fromkeys(self.ids, EMPTY_FETCHES_PER_INTERVAL)
        self._forward_tokens = dict.fromkeys(self.ids, self._forward_budget)
        self._forwarded_this_interval = 0  # what we forwarded to the primary this interval
        self._tokens_refilled_ms = 0

        # State transfer.
        self._rng_counter = 0
        self._fetch_peer: int | None = None
        self._fetch_sent_ms = _LONG_AGO
        # Round robin over the others from a random one (never this replica), by position in
        # the voters (at epoch 0 position and id agree).
        mine = self.ids.index(self.me)
        self._fetch_next = (mine + 1 + self._random_below(self.n - 1)) % self.n
        # when each last answered slowly, or not, and the height each claimed in its last BLOCKS
        self._fetch_slow_ms = dict.fromkeys(self.ids, _LONG_AGO)
        self._fetch_claims = dict.fromkeys(self.ids, 0)
        # The smallest a block can encode to (no transaction, Q minimal COMMITs): an answer
        # with less room left than this in its frame could not have carried another block.
        vote = SignedVote(commit_body(0, 0, 1, bytes(32), 0), bytes(64))
        cert = CommitCertificate(0, 1, bytes(32), (vote,) * self.quorum)
        self._block_bytes_min = len(
            pack(TransferredBlock(proposed_ms=0, txs=(), certificate=cert).to_array())
        )
        self.transfer_slow = 0  # answers with fewer blocks than fit while the peer had more
        self._served_ms = dict.fromkeys(self.ids, _LONG_AGO)
        self._served_from = dict.fromkeys(self.ids, 0)
        self._progress_ms = 0  # last time something committed here
        self._transferred_to = 0  # highest seq delivered by state transfer
        self.transferred = 0  # blocks accepted by state transfer
        self.transfer_retries = 0  # FETCHes that timed out (lost, or a silent peer)
        # At start we ask f+1 peers (one honest at least) whether they are ahead of our
        # ledger: a replica restarted into an idle network would otherwise never hear of it.
        self._probes_left = self.f + 1

        # Recovery gate (pbft/recovery.py): set before _restore, which may want to send.
        self._recovery = (
            None
            if recovery_nonce is None
            else ViewRecovery(recovery_nonce, self.ids, self.f, self.me)
        )
        self._query_answered_ms = dict.fromkeys(self.ids, _LONG_AGO)
        self._report_checked_ms = dict.fromkeys(self.ids, _LONG_AGO)
        # Our execution diverged from what a quorum certified: (seq, our block hash, theirs).
        # From then on we sign nothing (_may_speak): votes from a state the network disowns
        # are worth nothing, and the operator recovers the member (docs/operations.md).
        self.diverged: tuple[int, bytes, bytes] | None = None
        self.withheld_diverged = 0

        self._records: list[tuple[bytes, bytes | None]] = []
        self._messages: list[Outbound] = []
        self._committed: list[CommittedBatch] = []
        self._stable_out: list[CheckpointCertificate] = []
        self._serve: list[Serve] = []
        self._restore(recovered)
        self._check_invariants()

    # --- derived ----------------------------------------------------------------------------

    @property
    def primary(self) -> int:
        return self.config.primary(self.view)

    @property
    def low_watermark(self) -> int:
        return self._log.low

    @property
    def high_watermark(self) -> int:
        return self._log.high

    @property
    def stable_checkpoint_seq(self) -> int:
        return self._log.low

    @property
    def timeout_ms(self) -> int:
        """The view-change timeout: doubles per successive view change, base once a request
        executes."""
        return self.params.request_timeout_ms << min(self._timeouts, TIMEOUT_DOUBLINGS_MAX)

    @property
    def recovering(self) -> bool:
        """Started from state older than what it sent, and not yet past the recovery gate."""
        return self._recovery is not None

    def expecting_blocks_from(self, peer: int) -> bool:
        return self._fetch_peer == peer

    @property
    def _forward_budget(self) -> int:
        return FORWARDED_BATCHES_PER_INTERVAL * self.params.batch_txs_max

    @property
    def _serve_budget_full(self) -> int:
        return SERVED_FRAMES_PER_INTERVAL * frame_bytes_limit(self.params)

    def _random_below(self, k: int) -> int:
        """A number in [0, k), drawn from config.seed and a counter (the core's only
        randomness, so a run stays a function of its inputs)."""
        self._rng_counter += 1
        h = sha256(self.config.seed + self._rng_counter.to_bytes(8, "big"))
        return int.from_bytes(h[:8], "big") % max(1, k)

    def wants_batch(self, batch: Batch, sender: int | None = None) -> bool:
        """Whether the shell should verify this batch's client signatures ahead of the core
        (a batch asked for by digest whose transactions are those the digest names, or
        transactions forwarded to us as primary, within what the authenticated `sender` may
        still forward this interval)."""
        if batch.digest == FORWARD_DIGEST:
            peer = batch.sender if sender is None else sender
            return (
                self.primary == self.me
                and self.active
                and peer == batch.sender
                and peer in self._keys
                and len(batch.txs) <= self._forward_tokens[peer]
            )
        # The digest first (one hash): any member that saw our BATCH-REQ knows it and could
        # attach other transactions, each such BATCH a full batch of client-signature checks
        # before the core found the digest wrong (review).
        return batch.digest in self._wanted and batch.digest == batch_digest(
            batch.proposed_ms, [tx.id for tx in batch.txs]
        )

    # --- inputs -----------------------------------------------------------------------------

    def tick(self, mono_ms: int, wall_ms: int) -> None:
        """Time: mono_ms drives timers, wall_ms stamps new batches (and the skew check)."""
        first = not self._clock_known
        self._mono_ms = max(self._mono_ms, mono_ms)
        self._wall_ms = wall_ms
        self._clock_known = True
        if first:
            self._progress_ms = self._mono_ms
            self._vc_since_ms = self._mono_ms  # (restarted during a view change)
            self._judge_waiting_skew()
        self._maybe_propose()
        if self.active:
            self._messages.extend(self._retransmit.on_tick(self._mono_ms, self.primary))
        self._view_change_timers()
        self._batch_requests()
        self._maybe_fetch()
        self._recovery_tick()
        self._check_invariants()

    def receive(self, sender: int, msg: bytes | Message) -> None:
        """A message from authenticated member `sender`: a raw frame or messages.decode()d."""
        self._on_input(sender, msg)
        self._check_invariants()

    def propose(self, tx: Transaction) -> None:
        """A client transaction whose signature the shell verified."""
        self.propose_all((tx,))

    def inputs(self) -> contextlib.AbstractContextManager[None]:
        """A drain of inputs (the shell's events, the simulator's inputs due at one time): the
        replica takes each as it comes, and batches by its own rules (the batch timer)."""
        return contextlib.nullcontext()

    def propose_all(self, txs: Sequence[Transaction]) -> None:
        """Client transactions whose signatures the shell verified, pooled together before a
        batch is cut (an idle primary batches a whole submission, not its first transaction)."""
        reason: drop.Reason | None
        for tx in txs:
            if tx.chain_id != self.chain_id:
                reason = drop.WRONG_CHAIN
            elif tx.size > self.params.batch_bytes_max:
                reason = drop.TX_TOO_LARGE
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
        if self.active and self._timeouts:
            self._timeouts = 0  # a request executed: the timeout returns to its base
            self._records.append(
                (records.VIEW_KEY, records.view_value(self.view, True, 0, epoch=self.epoch))
            )
        if self._work_since_ms is not None:
            self._work_since_ms = self._mono_ms
        stable = self.stable_certificate
        if stable is not None and stable.seq == seq and stable.block_hash != block_hash:
            # Blocks accepted by commit certificate re-executed to another hash than the one Q
            # members certified: our execution diverged. Never adopt silently.
            self._diverged_at(seq, block_hash, stable.block_hash)
        if seq % self.params.checkpoint_interval == 0 and seq > self._log.low:
            self._checkpoint(seq, block_hash)
        if self._unadmitted:
            self._prepare_admitted()
        if self._held_for_config and self.active:
            self._held_for_config = False
            for sender, msg in self._future.drain(self.view):
                self._on_input(sender, msg)  # held again while still not known
        self._maybe_propose()
        self._check_invariants()

    def served(self, serve: Serve, frame_bytes: int) -> None:
        """The shell answered `serve` with a BLOCKS frame of this size: what the grant did not
        use goes back to the peer's budget (an answer over it, one block that alone exceeds
        the grant, is charged in full)."""
        peer = serve.peer
        left = self._serve_budget[peer] + serve.bytes_max - frame_bytes
        self._serve_budget[peer] = min(self._serve_budget_full, left)
        self._check_invariants()

    def take_ready(self) -> Ready:
        ready = Ready(
            self._records, [], self._messages, self._committed, self._stable_out, self._serve
        )
        self._records, self._messages, self._committed = [], [], []
        self._stable_out, self._serve = [], []
        return ready

    # --- dispatch and admission -------------------------------------------------------------

    def _on_input(self, sender: int, msg: bytes | Message) -> None:
        if sender not in self._keys:
            self.rejected[drop.NOT_MEMBER] += 1
            return
        if sender == self.me:
            self.rejected[drop.FROM_SELF] += 1
            return
        if isinstance(msg, bytes):
            try:
                msg = decode(msg, self.params)
            except WireFormatError:
                self.rejected[drop.MALFORMED] += 1
                return
        if msg.epoch != self.epoch:
            # (pbft/epochs.py routes by epoch: only its own epoch's messages reach a replica)
            self.rejected[drop.STALE_EPOCH if msg.epoch < self.epoch else drop.UNKNOWN_EPOCH] += 1
            return
        if msg.sender != sender and not isinstance(msg, NewView):
            # (a NEW-VIEW is self-authenticating: any replica may relay the primary's)
            self.rejected[drop.SENDER_MISMATCH] += 1
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
            case ViewChange():
                self._on_view_change(msg)
            case NewView():
                self._on_new_view(msg)
            case BatchRequest():
                self._on_batch_request(msg)
            case Batch():
                self._on_batch(msg)
            case Fetch():
                self._on_fetch(msg)
            case Blocks():
                self._on_blocks(msg)
            case ViewQuery():
                self._on_view_query(msg)
            case ViewReport():
                self._on_view_report(msg)

    def _admit(self, msg: PrePrepare | Prepare | Commit) -> bool:
        """Role, view and window checks, cheapest first; buffers what arrived early."""
        view_primary = self.config.primary(msg.view)
        if isinstance(msg, PrePrepare) and msg.sender != view_primary:
            self.rejected[drop.NOT_PRIMARY] += 1
            return False
        if isinstance(msg, Prepare) and msg.sender == view_primary:
            self.rejected[drop.PREPARE_FROM_PRIMARY] += 1
            return False
        if msg.view > self.view or (msg.view == self.view and not self.active):
            # A view we have not entered yet: kept (bounded) and re-fed when we enter it.
            if not self._future.add(msg.sender, msg):
                self.rejected[drop.BUFFER_FULL] += 1
            else:
                self.rejected[drop.WRONG_VIEW] += 1
            return False
        if msg.view < self.view:
            self.rejected[drop.WRONG_VIEW] += 1
            self._seen_working[msg.sender] = (msg.view, self._mono_ms)
            self._relay_new_view(msg.sender)
            return False
        if msg.seq <= self._log.low:
            self.rejected[drop.OUTSIDE_WINDOW] += 1
            self._repeated(msg)
            return False
        end = self.config.end
        if end is not None and msg.seq > end:
            self.rejected[drop.BEYOND_EPOCH] += 1
            return False
        if msg.seq > self._log.high:
            if not self._future.add(msg.sender, msg):
                self.rejected[drop.BUFFER_FULL] += 1
            self._behind()
            return False
        if not self._knows_config(msg.seq):
            # Its configuration is not fixed by what we executed yet: kept until it is.
            self._held_for_config = True
            if not self._future.add(msg.sender, msg):
                self.rejected[drop.BUFFER_FULL] += 1
            return False
        return True

    def _verified(self, msg: Message) -> bool:
        ok = self._verifier.verify(
            self._keys[msg.sender], Domain.PBFT, self.chain_id, msg.body, msg.signature
        )
        if not ok:
            self.rejected[drop.BAD_SIGNATURE] += 1
        return ok

    # --- PRE-PREPARE ------------------------------------------------------------------------

    def _on_preprepare(self, pp: PrePrepare) -> None:
        if not self._admit(pp):
            return
        slot = self._log.get(pp.seq)
        if slot is not None and slot.preprepare is not None:
            accepted = slot.preprepare
            if accepted.digest == pp.digest:
                self.rejected[drop.DUPLICATE] += 1
                self._repeated(pp)
            elif self._verified(pp):
                # Two signed PRE-PREPAREs for one (view, seq): proof that the primary lies.
                self.rejected[drop.CONFLICTING_PREPREPARE] += 1
                self._evidence(drop.CONFLICTING_PREPREPARE, accepted, pp)
            return
        if slot is not None and slot.reissued is not None:
            # A re-issued sequence number: the NEW-VIEW fixed the signed PRE-PREPARE; this is
            # the same one with its batch attached (the primary's retransmission).
            self._fill_batch(slot, pp.proposed_ms, pp.digest, pp.txs)
            return
        if pp.seq <= self._reissued_max:
            # The NEW-VIEW that started this view fixed every seq up to its max_s; the primary
            # proposes afresh only above it. (Not evidence: whether we still hold the re-issued
            # slot depends on our state, e.g. a restart, not on the message alone.)
            self.rejected[drop.NOT_REISSUED] += 1
            return
        if not self._verified(pp):
            return
        problem = self._batch_problem(pp)
        if problem is not None:
            self.rejected[problem] += 1
            self._evidence(problem, pp)
            return
        self._accept_preprepare(self._log.slot(pp.seq, pp.view), pp)

    def _batch_problem(self, pp: PrePrepare) -> drop.Reason | None:
        """Stateless validity, decided alike by every honest replica (such a batch is evidence
        against the primary: docs/pbft-faults.md). Cheapest first; tx_ok is asked for every
        transaction."""
        return self._txs_problem(pp.proposed_ms, pp.digest, pp.txs)

    def _txs_problem(
        self, proposed_ms: int, digest: bytes, txs: tuple[Transaction, ...]
    ) -> drop.Reason | None:
        params = self.params
        if len(txs) > params.batch_txs_max or sum(t.size for t in txs) > params.batch_bytes_max:
            return drop.BATCH_TOO_LARGE
        if any(tx.chain_id != self.chain_id for tx in txs):
            return drop.WRONG_CHAIN
        if batch_digest(proposed_ms, [tx.id for tx in txs]) != digest:
            return drop.DIGEST_MISMATCH
        signed = [self._tx_ok(tx) for tx in txs]  # every one is asked, by contract
        if not all(signed):
            return drop.BAD_CLIENT_SIGNATURE
        return None

    def _evidence(self, reason: drop.Reason, *pps: PrePrepare) -> None:
        first = pps[0]
        self.evidence.append(
            Evidence(reason, first.view, first.seq, first.sender, tuple(p.vote() for p in pps))
        )
        if first.view == self.view and self.active:
            self._start_view_change(self.view + 1, f"primary misbehaved: {reason}")

    def _conflicts_committed(self, seq: int, digest: bytes) -> bool:
        committed = self._committed_digests.get(seq)
        if committed is None or committed == digest:
            return False
        self.rejected[drop.CONFLICTS_COMMITTED] += 1
        return True

    def _accept_preprepare(self, slot: Slot, pp: PrePrepare, *, reissued: bool = False) -> None:
        assert slot.preprepare is None
        if self._conflicts_committed(pp.seq, pp.digest):
            return  # we committed another batch there: never vote for this one
        slot.preprepare = pp
        slot.reissued = None
        self._highest_accepted = max(self._highest_accepted, pp.seq)
        if pp.seq > self._last_committed:  # (a re-issued seq we committed is no work)
            self._pool.in_flight(pp.seq, pp.txs)
            self._work_started()
        if not reissued and pp.sender != self.me and self._clock_known:
            self._sample_clock(slot, pp)
        frame = encode(pp)
        self._persist(slot, "preprepare", frame)
        if pp.sender == self.me:
            slot.own_preprepare = frame
            self._send_own(slot, frame)
        elif not reissued and self._timestamp_skewed(pp.proposed_ms):
            slot.prepare_withheld = True
            self.rejected[drop.TIMESTAMP_SKEW] += 1
        elif not reissued and not self._all_admitted(pp.txs):
            # (prepared once an admission executes here; seqs at or below h are gone, so the
            # set stays within the window)
            self._unadmitted = {s for s in self._unadmitted if s > self._log.low} | {pp.seq}
            self.rejected[drop.NEVER_ADMITTED] += 1
        elif not self._may_speak(pp.view):
            self._withheld()  # recovering: we may have prepared another digest here
        else:
            prepare = Prepare.create(
                self._signer, self.chain_id, pp.view, pp.seq, pp.digest, self.me, epoch=self.epoch
            )
            slot.prepares[self.me] = prepare
            frame = encode(prepare)
            self._persist(slot, "prepare", frame)
            slot.own_prepare = frame
            self._send_own(slot, frame)
        self._advance(slot)

    def _sample_clock(self, slot: Slot, pp: PrePrepare) -> None:
        """Keep our clock reading as a fresh PRE-PREPARE arrives, for the offset sample its
        batch gives once it commits (_deliver), only if no other member's vote for it came
        first; and (_advance) only if it prepares here within an interval.

        The offset is taken on arrival, which the primary controls. Sent to us two skews late
        (stamped honestly, sent at once to the others), an exact clock read as two skews ahead
        (review); sent to us early and to the others late, as behind. Each honest backup that
        prepared the batch checked its time against its own clock: its PREPARE coming after
        the PRE-PREPARE bounds how late it reached us, and a prepared certificate within an
        interval (Q-1 PREPAREs: at least one honest backup's when the primary lies) bounds
        how early. So a sample is within timestamp_skew_ms + max(interval, d) of our clock's
        offset from an honest backup's (d: its PREPARE's delay to us), whatever the primary
        does. A network delaying messages past a skew (a partition healing) can still make
        samples late; the median of the last 16 absorbs a few, fresh batches the rest."""
        for votes in (slot.prepares, slot.commits):
            if any(s != self.me and v.digest == pp.digest for s, v in votes.items()):
                return
        slot.accepted_wall_ms = self._wall_ms
        slot.accepted_mono_ms = self._mono_ms

    def _all_admitted(self, txs: tuple[Transaction, ...]) -> bool:
        """A backup withholds its PREPARE (counted, never evidence) for a fresh PRE-PREPARE
        carrying a transaction whose key was never admitted in the state it executed: such a
        batch would commit as permanent `unknown_client` receipts (ledger spam). Keys revoked
        since were admitted once and stay `unknown_client` receipts, as before. The set only
        grows, so a lagging backup at worst waits until it executes the admitting block
        (_prepare_admitted), and the others may prepare the batch meanwhile.

        Re-issued batches (a NEW-VIEW's) are exempt, as from the skew check: Q members, f+1
        of them honest, prepared each in an earlier view, so its keys were admitted in an
        honest member's state and will be in ours; some members may have committed it, and
        withholding our PREPARE there could only stall the view."""
        return all(self._ever_admitted(tx) for tx in txs)

    def _prepare_admitted(self) -> None:
        """After a block executed: PREPARE the batches withheld for a key never admitted that
        the block admitted (the withheld slot still in this view, not yet committed here).
        Never one withheld for its timestamp too: the wait is for a key, not a way around the
        skew check (review)."""
        if not self._clock_known:
            return  # (_judge_waiting_skew has not looked at them yet)
        for seq in sorted(self._unadmitted):
            slot = self._log.get(seq)
            pp = None if slot is None else slot.preprepare
            if (
                slot is None
                or pp is None
                or slot.own_prepare
                or slot.committed_local
                or slot.prepare_withheld
            ):
                # gone, prepared, committed, or withheld for its time: nothing to do
                self._unadmitted.discard(seq)
            elif self._all_admitted(pp.txs) and self._may_speak(pp.view):
                self._unadmitted.discard(seq)
                # As _accept_preprepare does: persist our PREPARE, then send it.
                prepare = Prepare.create(
                    self._signer,
                    self.chain_id,
                    pp.view,
                    pp.seq,
                    pp.digest,
                    self.me,
                    epoch=self.epoch,
                )
                slot.prepares[self.me] = prepare
                frame = encode(prepare)
                self._persist(slot, "prepare", frame)
                slot.own_prepare = frame
                self._send_own(slot, frame)
                self._advance(slot)

    def _judge_waiting_skew(self) -> None:
        """On the first tick: the PRE-PREPAREs waiting for an admission that were accepted
        before we knew our clock (restored from our records after a restart, where why we
        withheld our PREPARE was in memory only) are judged by the skew check now, as if
        accepted now. A batch withheld for its timestamp that also carried a new key was
        prepared once the key was admitted, its time never checked again (review)."""
        for seq in sorted(self._unadmitted):
            slot = self._log.get(seq)
            pp = None if slot is None else slot.preprepare
            if slot is not None and pp is not None and self._timestamp_skewed(pp.proposed_ms):
                slot.prepare_withheld = True
                self.rejected[drop.TIMESTAMP_SKEW] += 1
                self._unadmitted.discard(seq)

    def _timestamp_skewed(self, proposed_ms: int) -> bool:
        """A fresh PRE-PREPARE's timestamp further than timestamp_skew_ms from our clock, in
        either direction. Both ways: block time = max(proposed, previous block's time), so a
        primary stamping the future moves block time ahead for everyone, and one stamping the
        past (time 0, or a frozen clock) stops it, after which every transaction commits as
        expiry_too_far (and an expired one still executes). A batch delayed past the skew is
        withheld too: if the others cannot prepare it without us, it costs a view change, and
        the new primary re-issues it (re-issued batches are exempt)."""
        return (
            self._clock_known and abs(proposed_ms - self._wall_ms) > self.params.timestamp_skew_ms
        )

    # --- PREPARE and COMMIT -----------------------------------------------------------------

    def _on_prepare(self, prepare: Prepare) -> None:
        if not self._admit(prepare):
            return
        slot = self._log.get(prepare.seq)
        earlier = slot.prepares.get(prepare.sender) if slot is not None else None
        if earlier is not None:
            same = earlier.digest == prepare.digest
            self.rejected[drop.DUPLICATE if same else drop.CONFLICTING_VOTE] += 1
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
            self.rejected[drop.DUPLICATE if same else drop.CONFLICTING_VOTE] += 1
            if same:
                self._repeated(commit)
            return
        if not self._verified(commit):
            return
        slot = self._log.slot(commit.seq, commit.view)
        slot.commits[commit.sender] = commit
        self.peers_committed[commit.sender] = max(self.peers_committed[commit.sender], commit.seq)
        self._advance(slot)
        self._gaps(commit)

    def _advance(self, slot: Slot) -> None:
        """Apply the prepared and committed-local predicates to one slot."""
        pp = slot.preprepare
        if pp is None:
            return
        if not slot.prepared:
            kept = rules.prepared(pp, slot.prepares, self.quorum)
            if kept is None or self._conflicts_committed(pp.seq, pp.digest):
                return
            slot.prepared = True
            if (
                slot.accepted_wall_ms is not None
                and self._mono_ms - slot.accepted_mono_ms > self.retransmit_ms
            ):
                slot.accepted_wall_ms = None  # prepared long after it came: no sample (below)
            # Exactly Q-1 PREPAREs: what prepared means, and what check_proof admits (every
            # matching one made each VIEW-CHANGE, and so the NEW-VIEW's bound that genesis
            # checks, grow with n-1 instead of Q-1).
            proof = PreparedProof(preprepare=pp, prepares=tuple(slot.prepares[s] for s in kept))
            held = self._prepared.get(pp.seq)
            if held is None or held.view <= pp.view:
                self._prepared[pp.seq] = proof
                value = records.proof_value(encode(pp), [encode(p) for p in proof.prepares])
                self._records.append((records.proof_key(pp.seq), value))
            if self._may_speak(pp.view):
                commit = Commit.create(
                    self._signer,
                    self.chain_id,
                    pp.view,
                    pp.seq,
                    pp.digest,
                    self.me,
                    epoch=self.epoch,
                )
                slot.commits[self.me] = commit
                frame = encode(commit)
                self._persist(slot, "commit", frame)
                slot.own_commit = frame
                self._send_own(slot, frame)
            else:
                self._withheld()  # recovering: the certificate is kept, our vote is not sent
        if slot.committed_local:
            return
        signers = rules.committed_local(pp, slot.prepared, slot.commits, self.quorum)
        if signers is None:
            return
        slot.committed_local = True
        votes = tuple(slot.commits[s].vote() for s in signers)
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
            if slot.accepted_wall_ms is not None:
                # A quorum prepared it, so f+1 honest backups found its time within the skew
                # of their clocks: how far ours is from it (ledger/clock.py).
                self.clock.add(slot.accepted_wall_ms - pp.proposed_ms)
            self._hand_out(
                CommittedBatch(pp.seq, pp.view, pp.digest, pp.proposed_ms, pp.txs, certificate)
            )

    def _hand_out(self, batch: CommittedBatch) -> None:
        assert batch.seq == self._last_committed + 1
        # Never hand the shell transactions other than those the certified digest names: the
        # shell would execute a block no other member has (a forked ledger). Every path here
        # checked it already (a fresh batch on acceptance, a re-issued one when its batch was
        # filled, a transferred block against its certificate): this is the last guard, one
        # hash of the batch's ids per committed batch (about 40 us at 512 transactions).
        assert batch_digest(batch.proposed_ms, [tx.id for tx in batch.txs]) == batch.digest, (
            f"seq {batch.seq}: its transactions are not those its digest names"
        )
        self._committed.append(batch)
        self._last_committed = batch.seq
        if batch.seq > self._log.low:  # (state transfer also hands out blocks below h)
            self._committed_digests[batch.seq] = batch.digest
        self._highest_accepted = max(self._highest_accepted, batch.seq)
        self._pool.committed(batch.seq, batch.txs)
        self._progress_ms = self._mono_ms

    # --- the primary: batching --------------------------------------------------------------

    def _maybe_propose(self) -> None:
        if self.primary != self.me or not self.active or not self._clock_known:
            return  # a batch carries our wall clock: wait for the first tick to learn it
        if not self._may_speak(self.view):
            return  # recovering: we may have proposed in this view before our state was lost
        params = self.params
        pool = self._pool
        limit = self._propose_limit()
        while not pool.pending_count and self._change_pending() and self._next_seq <= limit:
            # A change is pending and nothing else to order: empty batches bring the ledger
            # to E even on an idle network (pipelined within the window, never above E).
            self._propose(())
        while pool.pending_count and self._next_seq <= limit:
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
            admitted = tuple(tx for tx in txs if self._ever_admitted(tx))
            if len(admitted) < len(txs):
                # Keys never admitted in our state: honest backups would withhold their
                # PREPAREs for the batch (ledger spam). Dropped; a client's retry after its
                # admission executes here is batched.
                self.rejected[drop.TX_NEVER_ADMITTED] += len(txs) - len(admitted)
                txs = admitted
                if not txs:
                    continue
            self._propose(txs)

    def _propose(self, txs: tuple[Transaction, ...]) -> None:
        """As primary: the next sequence number gets this batch (empty while a change waits
        for its E on an idle network)."""
        seq = self._next_seq
        self._next_seq += 1
        pp = PrePrepare.create(
            self._signer,
            self.chain_id,
            self.view,
            seq,
            self._wall_ms,
            self.me,
            txs,
            epoch=self.epoch,
        )
        self._accept_preprepare(self._log.slot(seq, self.view), pp)

    def _change_pending(self) -> bool:
        """A configuration change is pending and E is not yet executed: work (timer (a)), and
        what the primary proposes empty batches for."""
        end = self.config.end
        return end is not None and self.last_executed < end

    def _propose_limit(self) -> int:
        """The highest seq the primary may propose: the window, and never above E."""
        end = self.config.end
        return self._log.high if end is None else min(self._log.high, end)

    def _knows_config(self, seq: int) -> bool:
        """Whether config(seq) is fixed by what we executed (design 3.2, the vote rule):
        config(seq) depends only on blocks <= seq-L-1, because a change at c >= seq-L has
        E >= seq. Bites only after a stable certificate was adopted above what we executed."""
        return self.config.end is not None or seq <= self.last_executed + self.params.window + 1

    def set_end(self, end: int) -> None:
        """A member change is pending: this epoch orders nothing above `end` (E). Called by
        pbft/epochs.py when the block accepting the change executed (E >= that block + L, so no
        honest replica voted above E)."""
        assert self.config.end is None or self.config.end == end
        assert end > self.config.start
        self.config = replace(self.config, end=end)
        self._members = replace(self._members, end=end)
        self._maybe_propose()
        self._check_invariants()

    # --- checkpoints ------------------------------------------------------------------------

    def _checkpoint(self, seq: int, block_hash: bytes) -> None:
        vote = Checkpoint.create(
            self._signer, self.chain_id, seq, block_hash, self.me, epoch=self.epoch
        )
        frame = encode(vote)
        self._records.append((records.checkpoint_key(seq), frame))
        self._messages.append(Outbound(None, frame))
        self._retransmit.checkpoint_sent(self._mono_ms)
        self._checkpoints.add(vote)
        self._try_stable(seq)

    def _on_checkpoint(self, vote: Checkpoint) -> None:
        if vote.seq == 0 or vote.seq % self.params.checkpoint_interval:
            self.rejected[drop.NOT_CHECKPOINT_SEQ] += 1
            return
        peer = vote.sender
        if self.config.end is not None and vote.seq > self.config.end:
            self.rejected[drop.BEYOND_EPOCH] += 1
            return
        repeat = vote.seq <= self._retransmit.peer_executed[peer]
        if vote.seq <= self._log.low:
            self.rejected[drop.STALE_CHECKPOINT] += 1
        elif vote.seq > self._log.high:
            self.rejected[drop.OUTSIDE_WINDOW] += 1
            if vote.seq > self._retransmit.peer_executed[peer] and self._verified(vote):
                # A peer far ahead: its claim steers state transfer (f+1 such claims).
                self._retransmit.executed_by(peer, vote.seq)
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
            if problem != drop.DUPLICATE:
                return
        # A stale or duplicate vote. Its execution claim steers only what we re-send to the
        # sender, so a stale one is not worth verifying.
        self._retransmit.executed_by(peer, vote.seq)
        if repeat and self.active:
            self._messages.extend(
                self._retransmit.repeated_checkpoint(peer, vote.seq, self._mono_ms, self.primary)
            )

    def _try_stable(self, seq: int) -> None:
        block_hash = self._checkpoints.quorum_hash(seq, self.quorum)
        if block_hash is None or seq <= self._log.low:
            return
        own = self._checkpoints.own(seq)
        ours = own.block_hash if own is not None else None
        if ours is None and seq == self.last_executed:
            ours = self._last_block_hash
        if ours is not None and ours != block_hash:
            self._diverged_at(seq, ours, block_hash)
            return
        # Above what we executed: we fell behind; adopt it and fetch the blocks below it.
        self._stabilize(self._checkpoints.certificate(seq, block_hash, self.quorum))

    def _stabilize(self, cert: CheckpointCertificate) -> None:
        """Persist the certificate, move h, collect the log (OSDI'99 §4.3). A certificate above
        what we committed is adopted too: state transfer fetches the blocks up to it."""
        assert self._log.low < cert.seq
        self.stable_certificate = cert
        self._stable_out.append(cert)
        self._records.append((records.STABLE_KEY, cert.encode()))
        for slot in self._log.advance(cert.seq):
            self._records.extend((key, None) for key in slot.record_keys)
            slot.record_keys.clear()
        for seq in self._checkpoints.collect(cert.seq, self.params.window):
            self._records.append((records.checkpoint_key(seq), None))
        for seq in [s for s in self._prepared if s <= cert.seq]:
            del self._prepared[seq]
            self._records.append((records.proof_key(seq), None))
        for seq in [s for s in self._committed_digests if s <= cert.seq]:
            del self._committed_digests[seq]
        if cert.seq > self._last_committed:
            self._highest_accepted = max(self._highest_accepted, cert.seq)
        self._next_seq = max(self._next_seq, cert.seq + 1)
        if self.active:
            for sender, msg in self._future.drain(self.view):
                self._on_input(sender, msg)  # still above the new window: buffered again
        self._maybe_propose()
        self._maybe_fetch()

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

    # --- view change: timers ----------------------------------------------------------------

    def _work_started(self) -> None:
        if self._work_since_ms is None:
            self._work_since_ms = self._mono_ms

    def _view_change_timers(self) -> None:
        now = self._mono_ms
        if not self.active:
            if self._nv_timer_at is not None and now >= self._nv_timer_at:
                self._nv_timer_at = None
                self._start_view_change(self.view + 1, "no valid NEW-VIEW in time")
                return
            if self._vc_resend_at is not None and now >= self._vc_resend_at and self._own_vc:
                self._messages.append(Outbound(None, self._own_vc))
                self._vc_backoff = min(2 * self._vc_backoff, 8)
                self._vc_resend_at = now + self.retransmit_ms * self._vc_backoff
            self._try_new_view()
            return
        pool = self._pool
        if not (
            pool.pending_count
            or pool.in_flight_count
            or self._behind_committed()
            or self._change_pending()
        ):
            self._work_since_ms = None
            return
        self._work_started()
        if self.primary == self.me:
            return
        if self._log.low > self._last_committed:
            # A quorum certified a checkpoint above what we committed: the network is making
            # progress and we are behind. State transfer, not a view change, is the cure.
            self._work_since_ms = now
            return
        assert self._work_since_ms is not None
        if now - max(self._work_since_ms, self._progress_ms) >= self.timeout_ms:
            self._start_view_change(self.view + 1, "no request executed within the timeout")
            return
        # Transactions waiting a timeout go to the primary (the client's copy may be lost);
        # one still in no accepted batch a timeout after that means the primary censors it.
        overdue = pool.overdue(now, self.timeout_ms, FORWARD_PER_TICK)
        forward: list[Transaction] = []
        # No more per interval than the primary accepts from one backup (the rest would be
        # dropped there and, marked forwarded here, make us suspect an honest primary): the
        # others wait, unforwarded, for the next interval (review).
        room = self._forward_budget - self._forwarded_this_interval
        for entry in overdue:
            if entry.forwarded_ms is None:
                if len(forward) >= room:
                    continue
                entry.forwarded_ms = now
                forward.append(entry.tx)
            elif now - entry.forwarded_ms >= self.timeout_ms:
                self._start_view_change(
                    self.view + 1, "a forwarded transaction stayed out of every batch"
                )
                return
        self._forwarded_this_interval += len(forward)
        # In batches the primary can decode: at most batch_txs_max and batch_bytes_max each
        # (one larger BATCH was refused whole as malformed; found in review).
        chunk: list[Transaction] = []
        size = 0
        for tx in [*forward, None]:
            if chunk and (
                tx is None
                or len(chunk) >= self.params.batch_txs_max
                or size + tx.size > self.params.batch_bytes_max
            ):
                batch = Batch.create(
                    self._signer,
                    self.chain_id,
                    NULL_PROPOSED_MS,
                    tuple(chunk),
                    self.me,
                    digest=FORWARD_DIGEST,
                    epoch=self.epoch,
                )
                self._messages.append(Outbound(self.primary, encode(batch)))
                chunk, size = [], 0
            if tx is not None:
                chunk.append(tx)
                size += tx.size

    def _behind_committed(self) -> bool:
        """An accepted batch (or a re-issued one awaiting its batch) not committed yet."""
        if self._highest_accepted <= self._last_committed:
            return False
        return any(
            (slot.preprepare is not None or slot.reissued is not None)
            and not slot.committed_local
            and slot.seq > self._last_committed
            for slot in self._log.window_slots()
        )

    # --- view change: VIEW-CHANGE -----------------------------------------------------------

    def _start_view_change(self, view: int, why: str) -> None:
        """Move to `view`: persist it, then multicast VIEW-CHANGE (OSDI'99 §4.4)."""
        assert view > self.view or (view == self.view and not self.active and view > 0)
        if not self._may_speak(view):
            return  # recovering: we stay where we are; a NEW-VIEW still brings us along
        self.view = view
        self.active = False
        self.view_changes += 1
        self.last_view_change_reason = why
        self.view_change_history.append((view, why))
        self._timeouts += 1
        self._nv_timer_at = None
        self._vc_since_ms = self._mono_ms
        self._nv_sent = False
        self._work_since_ms = None
        low = self._log.low
        proofs = tuple(
            self._prepared[s].without_batch(self.quorum - 1)
            for s in sorted(self._prepared)
            if low < s <= low + self.params.window
        )
        # At the epoch's start the stable certificate (E of the previous epoch) is the
        # previous configuration's, which this epoch never checks: nil, as seq 0 at genesis.
        stable = self.stable_certificate
        if stable is not None and stable.seq <= self.config.start:
            stable = None
        vc = ViewChange.create(
            self._signer,
            self.chain_id,
            view,
            stable,
            proofs,
            self.me,
            epoch=self.epoch,
            stable_seq=self.config.start,
        )
        frame = encode(vc)
        self._own_vc = frame
        self._vcs[self.me] = vc
        self._records.append(
            (records.VIEW_KEY, records.view_value(view, False, self._timeouts, epoch=self.epoch))
        )
        self._records.append((records.VIEW_CHANGE_KEY, frame))
        self._messages.append(Outbound(None, frame))
        self._vc_backoff = 1
        self._vc_resend_at = self._mono_ms + self.retransmit_ms
        self._on_quorum_of_view_changes()
        self._try_new_view()

    def _on_view_change(self, vc: ViewChange) -> None:
        if vc.view < self.view or (vc.view == self.view and self.active):
            self.rejected[drop.STALE_VIEW_CHANGE] += 1
            self._relay_new_view(vc.sender)
            return
        held = self._vcs.get(vc.sender)
        if held is not None and held.view >= vc.view:
            self.rejected[drop.DUPLICATE] += 1
            return
        if self._mono_ms - self._vc_checked_ms[vc.sender] < self.retransmit_ms // 2:
            # Checking one costs up to L*Q signature checks: a member that raises its view
            # with every message gets one checked per half interval (honest ones re-send).
            self.rejected[drop.VIEW_CHANGE_TOO_OFTEN] += 1
            return
        if not self._verified(vc):
            return
        # The sender signed it: its budget is spent now, before the expensive proof checks, so
        # VIEW-CHANGEs with bad proofs cost it the same half interval as good ones.
        self._vc_checked_ms[vc.sender] = self._mono_ms
        if not self._view_change_ok(vc):
            return
        self._vcs[vc.sender] = vc
        # f+1 members moving above our view include an honest one: join the smallest view
        # among the f+1 highest (OSDI'99 §4.5.2 "liveness").
        target = rules.view_to_join(
            self.view, (v.view for s, v in self._vcs.items() if s != self.me), self.f
        )
        if target is not None:  # above our view, so a move (never a restart of ours)
            self._start_view_change(target, f"{self.f + 1} members moved to view {target}")
            return
        if not self.active:
            # Any VIEW-CHANGE for our view or a later one counts toward our NEW-VIEW timer; only
            # one for exactly our view can complete a NEW-VIEW we would send.
            self._on_quorum_of_view_changes()
            if vc.view == self.view:
                self._try_new_view()

    def _view_change_ok(self, vc: ViewChange) -> bool:
        # The signed body names the proofs only by digest: first make sure the proofs attached
        # are those (one hash), so the cache below, keyed on the signed bytes, can never vouch
        # for a frame whose proofs someone stripped or swapped (a Byzantine new primary would
        # put such a frame in its NEW-VIEW to drop a committed batch).
        if vc.proofs_digest != proofs_digest_of(vc.stable, vc.prepared):
            self.rejected[drop.BAD_VIEW_CHANGE] += 1
            return False
        key = sha256(vc.body + vc.signature)
        if key in self._checked_vcs:
            return True
        problem = check_view_change(self._members, self._verifier, vc)
        if problem is not None:
            self.rejected[drop.BAD_VIEW_CHANGE] += 1
            return False
        self._checked_vcs[key] = None
        while len(self._checked_vcs) > 4 * self.n:
            self._checked_vcs.popitem(last=False)
        return True

    def _view_changes_for(self, view: int) -> list[ViewChange]:
        """The VIEW-CHANGEs for exactly `view`, by member: what a NEW-VIEW for it carries."""
        return [self._vcs[s] for s in sorted(self._vcs) if self._vcs[s].view == view]

    def _members_at_or_above(self, view: int) -> int:
        """Members (ours included) whose latest valid VIEW-CHANGE is for `view` or a later one:
        what the NEW-VIEW timer counts."""
        return sum(1 for vc in self._vcs.values() if vc.view >= view)

    def _on_quorum_of_view_changes(self) -> None:
        """Start the NEW-VIEW timer once Q members asked for our view or a later one.

        Counting only VIEW-CHANGEs for exactly our view deadlocks: after a healed partition with
        a member down, one member can sit at v+2 holding only its own VIEW-CHANGE while the
        others sit at v+1 holding Q-1 each (its VIEW-CHANGE for v+1 was replaced by the one for
        v+2); nobody's timer runs and f+1 never ask for one view above the rest, forever. A
        member that asked for a later view has given up on ours too, so it counts here: with Q
        of them, at least Q-f correct members are not working in any view below ours, and
        either our view starts in time or we move on and meet them. This only starts a timer;
        a NEW-VIEW still carries Q VIEW-CHANGEs for exactly its view, so safety is untouched.
        """
        if (
            not self.active
            and self._nv_timer_at is None
            and self._members_at_or_above(self.view) >= self.quorum
        ):
            self._nv_timer_at = self._mono_ms + self.timeout_ms

    # --- view change: NEW-VIEW --------------------------------------------------------------

    def _try_new_view(self) -> None:
        """As primary of the view we are moving to: with Q VIEW-CHANGEs and every batch they
        name, send NEW-VIEW and enter the view."""
        if self.active or self._nv_sent or self.primary != self.me:
            return
        if not self._may_speak(self.view):
            return  # recovering: we may have sent a NEW-VIEW for this view already
        vcs = self._view_changes_for(self.view)
        if len(vcs) < self.quorum:
            return
        # Ours first, then by member: a deterministic choice of Q.
        vcs.sort(key=lambda vc: (vc.sender != self.me, vc.sender))
        chosen = vcs[: self.quorum]
        plan = plan_new_view(chosen)
        stable = plan.stable
        if stable is not None and stable.seq > self._log.low and self._differs_from_ours(stable):
            # (counted there) Our execution diverged from the Q members who certified it: we
            # cannot lead a view starting from it. Their NEW-VIEW timers move them on.
            self._nv_sent = True
            return
        batches: dict[int, tuple[Transaction, ...]] = {}
        missing: set[bytes] = set()
        for item in plan.reissue:
            txs = () if item.null else self._find_batch(item.digest)
            if txs is None:
                missing.add(item.digest)
                self._want(item.digest)
            else:
                batches[item.seq] = txs
        self._nv_missing = frozenset(missing)
        if missing:
            return  # BATCH-REQs are out; we try again when a batch arrives or on tick
        pps = tuple(
            PrePrepare.create(
                self._signer,
                self.chain_id,
                self.view,
                item.seq,
                item.proposed_ms,
                self.me,
                batches[item.seq],
                digest=item.digest,
                epoch=self.epoch,
            )
            for item in plan.reissue
        )
        nv = NewView.create(
            self._signer,
            self.chain_id,
            self.view,
            tuple(encode(vc) for vc in chosen),
            tuple(replace(pp, txs=()) for pp in pps),
            self.me,
            epoch=self.epoch,
        )
        self._nv_sent = True
        frame = encode(nv)
        self._messages.append(Outbound(None, frame))
        self._enter_view(frame, plan, pps)

    def _on_new_view(self, nv: NewView) -> None:
        if nv.view < self.view or (nv.view == self.view and self.active):
            self.rejected[drop.STALE_NEW_VIEW] += 1
            return
        if nv.sender != self.config.primary(nv.view):
            self.rejected[drop.NOT_PRIMARY] += 1
            return
        if not self._verified(nv):
            return
        if nv.proofs_digest != new_view_digest(nv.view_change_frames, nv.preprepares):
            # The primary signed other contents than these: someone on the way (a relay) swapped
            # them. Not the primary's doing, so no evidence and no view change: drop it as a
            # malformed message, like any frame damaged in transit.
            self.rejected[drop.MALFORMED] += 1
            return
        if nv.view != self.view:
            # A NEW-VIEW for a view we are not waiting for costs up to n proof checks: at most
            # one per signer per half interval (any faulty member is primary of infinitely
            # many views), stamped now that its signature verified (review).
            if self._mono_ms - self._nv_checked_ms[nv.sender] < self.retransmit_ms // 2:
                self.rejected[drop.RATE_LIMITED] += 1
                return
            self._nv_checked_ms[nv.sender] = self._mono_ms
        decoded: list[ViewChange] = []
        problem: str | None = None
        # Cheap checks first (shape, distinct senders, the view), signatures and proofs last.
        if len(nv.view_change_frames) > self.n:
            problem = f"{len(nv.view_change_frames)} view changes from {self.n} members"
        for frame in nv.view_change_frames if problem is None else ():
            try:
                vc = decode(frame, self.params)
            except WireFormatError:
                problem = "a view change does not decode"
                break
            if not isinstance(vc, ViewChange):
                problem = "not a view change"
                break
            if vc.view != nv.view or any(other.sender == vc.sender for other in decoded):
                problem = "a view change for another view, or a sender counted twice"
                break
            decoded.append(vc)
        for vc in decoded if problem is None else ():
            if not (
                self._members.signed(self._verifier, vc.sender, vc.body, vc.signature)
                and self._view_change_ok(vc)
            ):
                problem = "a view change does not check"
                break
        if problem is None:
            problem = check_new_view(self._members, self._verifier, nv, decoded)
        if problem is not None:
            self.rejected[drop.BAD_NEW_VIEW] += 1
            if nv.view != self.view or self.active:
                # A view we are not moving to (any higher one: a single faulty member is primary
                # of infinitely many): dropped and counted, never a reason to move.
                return
            # The primary of the view we wait to enter signed these very contents (its digest
            # matches them) and they do not recompute: it is faulty.
            self.evidence.append(
                Evidence(
                    drop.BAD_NEW_VIEW,
                    nv.view,
                    0,
                    nv.sender,
                    (SignedVote(nv.body, nv.signature),),
                )
            )
            self._start_view_change(nv.view + 1, f"bad NEW-VIEW from the primary: {problem}")
            return
        if nv.view > self.view:
            self.view_changes += 1
        self.view = nv.view
        self.active = False
        self._enter_view(encode(nv), plan_new_view(decoded), nv.preprepares)

    def _enter_view(
        self, frame: bytes, plan: NewViewPlan, preprepares: tuple[PrePrepare, ...]
    ) -> None:
        """Start normal operation in self.view with the NEW-VIEW's re-issued PRE-PREPAREs."""
        assert not self.active
        self._nv_frame = frame
        self._own_vc = None
        self._vc_resend_at = None
        self._nv_timer_at = None
        self._work_since_ms = None
        self._progress_ms = self._mono_ms
        self._records.append(
            (
                records.VIEW_KEY,
                records.view_value(self.view, True, self._timeouts, epoch=self.epoch),
            )
        )
        self._records.append((records.NEW_VIEW_KEY, frame))
        self._records.append((records.VIEW_CHANGE_KEY, None))
        # The old view's slots go; their batches' transactions not re-issued are pending again.
        reissued = {pp.seq: pp.digest for pp in preprepares}
        # The batches we hold that the NEW-VIEW re-issues stay (<= L of them, with the others
        # fetched by digest): found here, not asked of the peers again (review).
        self._keep_batches(set(reissued.values()))
        old_digests: dict[int, bytes] = {}
        for slot in self._log.reset():
            self._records.extend((key, None) for key in slot.record_keys)
            if slot.preprepare is not None:
                old_digests[slot.seq] = slot.preprepare.digest
        self._pool.release(reissued, old_digests, self._mono_ms)
        # The admission wait is by seq: an entry of the old view would release our PREPARE for
        # whatever the new view puts at that number, a batch we withheld for its timestamp
        # included (review). Re-issued batches are exempt from the wait, and the new view's
        # fresh ones join it as they come.
        self._unadmitted.clear()
        self._pool.forget_forwarding()  # forward to the new primary before suspecting it
        if (
            plan.stable is not None
            and plan.stable.seq > self._log.low
            and not self._differs_from_ours(plan.stable)
        ):
            self._stabilize(plan.stable)  # not active yet: proposes nothing, drains nothing
        low = self._log.low
        for pp in preprepares:
            if pp.seq <= low or pp.seq > self._log.high:
                # (above h+L only when we refused the NEW-VIEW's checkpoint as not ours: our
                # execution diverged, and this replica takes no part in those seqs)
                continue
            slot = self._log.slot(pp.seq, self.view)
            if pp.sender == self.me and _carries_its_batch(pp):
                # Built here (_try_new_view): each with the batch we found for it.
                slot.redo = pp.seq <= self._last_committed
                self._accept_preprepare(slot, pp, reissued=True)
                continue
            # Another primary's, or our own relayed back to us: a NEW-VIEW carries no batches,
            # and a primary that lost its state (or was restored from a backup) after sending
            # it gets it back from a peer. Taking such an own PRE-PREPARE as complete would
            # re-send it without its batch and commit the digest with no transactions, a
            # block no one else has (review): the batch is found here or fetched by digest.
            self._reissue(slot, pp)
        # Batches of the old view that the new one does not re-issue are gone: what is accepted
        # now is only what the NEW-VIEW re-issued (or what we committed).
        self._highest_accepted = max(
            self._last_committed,
            max((slot.seq for slot in self._log.window_slots() if slot.preprepare), default=0),
        )
        self._next_seq = max(plan.max_s, low, self._last_committed) + 1
        self._reissued_max = plan.max_s
        for s in [s for s in self._vcs if self._vcs[s].view <= self.view]:
            del self._vcs[s]
        self.active = True
        self._drop_unneeded_batch_requests()  # the old view's, and the NEW-VIEW's now built
        for sender, msg in self._future.drain(self.view):
            self._on_input(sender, msg)
        self._deliver()
        self._maybe_propose()

    def _reissue(self, slot: Slot, pp: PrePrepare) -> None:
        """A PRE-PREPARE the NEW-VIEW of this view re-issued by digest: accept it once its batch
        is here (a null request at once), asking peers for the batch otherwise."""
        slot.redo = pp.seq <= self._last_committed
        slot.reissued = replace(pp, txs=())
        if pp.digest == NULL_DIGEST and pp.proposed_ms == NULL_PROPOSED_MS:
            self._fill_batch(slot, NULL_PROPOSED_MS, NULL_DIGEST, ())
            return
        txs = self._find_batch(pp.digest)
        if txs is not None:
            self._fill_batch(slot, pp.proposed_ms, pp.digest, txs)
        else:
            self._want(pp.digest)

    def _relay_new_view(self, peer: int) -> None:
        """A peer still in an older view: the NEW-VIEW we hold brings it here (it is
        self-authenticating, so any replica may relay it). At most once per interval."""
        if self._nv_frame is None or not self.active:
            return
        if self._mono_ms - self._nv_relayed_ms[peer] < self.retransmit_ms:
            return
        self._nv_relayed_ms[peer] = self._mono_ms
        self._messages.append(Outbound(peer, self._nv_frame))

    # --- batches by digest ------------------------------------------------------------------

    def _find_batch(self, digest: bytes) -> tuple[Transaction, ...] | None:
        if digest == NULL_DIGEST:
            return ()
        fetched = self._fetched.get(digest)
        if fetched is not None:
            return fetched[1]
        for proof in self._prepared.values():
            held = proof.preprepare
            if held.digest == digest and (held.txs or _empty_batch(held)):
                return held.txs
        for slot in self._log.window_slots():
            pp = slot.preprepare
            if pp is not None and pp.digest == digest:
                return pp.txs
        return None

    def _keep_batches(self, digests: set[bytes]) -> None:
        """Before the log is reset for a new view: the batches of its slots with these digests
        go where _find_batch looks (_fetched, at most L, oldest out first)."""
        for slot in self._log.window_slots():
            pp = slot.preprepare
            if pp is None or pp.digest not in digests or pp.digest in self._fetched:
                continue
            if pp.txs or _empty_batch(pp):
                self._fetched[pp.digest] = (pp.proposed_ms, pp.txs)
        while len(self._fetched) > self.params.window:
            self._fetched.popitem(last=False)

    def _want(self, digest: bytes) -> None:
        if digest in self._wanted:
            return
        state = (self.view, self.active)
        if self._abandoned_in != state:
            self._abandoned_in, self._abandoned = state, set()
        if digest in self._abandoned:
            return  # asked _batch_asks_max times in this state already: the timers take over
        if len(self._wanted) >= self.params.window:
            # (not silently: a view change or state transfer is then what recovers)
            self.rejected[drop.BATCH_REQUESTS_FULL] += 1
            return
        self._wanted[digest] = _Wanted(self._mono_ms)
        request = encode(
            BatchRequest.create(self._signer, self.chain_id, digest, self.me, epoch=self.epoch)
        )
        self._messages.append(Outbound(None, request))

    def _batch_needed(self, digest: bytes) -> bool:
        """Whether a batch asked for by digest is still needed: for the NEW-VIEW we build as
        primary, or by a re-issued slot of this view that waits for it (and that we did not
        commit with another digest: we never vote there). The view moved on, the NEW-VIEW was
        sent, the slot was filled (or it left the window): not needed."""
        if not self.active:
            return self.primary == self.me and not self._nv_sent and digest in self._nv_missing
        return any(
            slot.reissued is not None
            and slot.reissued.digest == digest
            and self._committed_digests.get(slot.seq, digest) == digest
            for slot in self._log.window_slots()
        )

    def _drop_unneeded_batch_requests(self) -> None:
        for digest in [d for d in self._wanted if not self._batch_needed(d)]:
            del self._wanted[digest]

    def _batch_requests(self) -> None:
        """Ask again, each interval, for the batches still needed, _batch_asks_max times at
        most: a digest nobody holds (after crash-restart runs some were asked for forever,
        1,800 requests per idle 10 s, and filled the set) is then given up and counted."""
        for digest, want in list(self._wanted.items()):
            if self._mono_ms - want.asked_ms < self.retransmit_ms:
                continue
            if not self._batch_needed(digest):
                del self._wanted[digest]
                continue
            if want.asks >= self._batch_asks_max:
                del self._wanted[digest]
                if len(self._abandoned) < self.params.window:
                    self._abandoned.add(digest)
                self.rejected[drop.BATCH_REQUEST_ABANDONED] += 1
                continue
            want.asked_ms = self._mono_ms
            want.asks += 1
            request = encode(
                BatchRequest.create(self._signer, self.chain_id, digest, self.me, epoch=self.epoch)
            )
            self._messages.append(Outbound(None, request))
        if self._mono_ms - self._tokens_refilled_ms >= self.retransmit_ms:
            self._tokens_refilled_ms = self._mono_ms
            # (an overdrawn budget starts the interval that much lower)
            full = self._serve_budget_full
            self._serve_budget = {
                p: min(full, left + full) for p, left in self._serve_budget.items()
            }
            self._batch_asks_left = dict.fromkeys(self.ids, self.params.window)
            self._empty_fetches_left = dict.fromkeys(self.ids, EMPTY_FETCHES_PER_INTERVAL)
            self._forward_tokens = dict.fromkeys(self.ids, self._forward_budget)
            self._forwarded_this_interval = 0

    @property
    def _batch_asks_max(self) -> int:
        """How often a batch is asked for before it is given up: BATCH_ASKS_MAX at the base
        timeout, scaled as the view-change timeout doubles. A fixed count gave up after 16
        intervals while the others waited up to 64 times longer for our NEW-VIEW: a batch that
        came back later (its holder back from a partition) was refused as unwanted and the
        NEW-VIEW never went out (review). Asked longer than the others wait, it is no longer
        needed: their timers change the view, and a new view drops the request."""
        return BATCH_ASKS_MAX * (self.timeout_ms // self.params.request_timeout_ms)

    def _on_batch_request(self, req: BatchRequest) -> None:
        # (Not verified: the transport authenticated the sender, the only one we answer.)
        if self._serve_budget[req.sender] <= 0 or self._batch_asks_left[req.sender] <= 0:
            self.rejected[drop.ANSWERS_OVER_BUDGET] += 1
            return
        self._batch_asks_left[req.sender] -= 1
        txs = self._find_batch(req.digest)
        if txs is None:
            return
        proposed_ms = self._proposed_ms_of(req.digest)
        if proposed_ms is None:
            return
        batch = Batch.create(
            self._signer, self.chain_id, proposed_ms, txs, self.me, epoch=self.epoch
        )
        frame = encode(batch)
        self._serve_budget[req.sender] -= len(frame)
        self._messages.append(Outbound(req.sender, frame))

    def _proposed_ms_of(self, digest: bytes) -> int | None:
        fetched = self._fetched.get(digest)
        if fetched is not None:
            return fetched[0]
        for proof in self._prepared.values():
            if proof.digest == digest:
                return proof.preprepare.proposed_ms
        for slot in self._log.window_slots():
            if slot.preprepare is not None and slot.preprepare.digest == digest:
                return slot.preprepare.proposed_ms
        return None

    def _on_batch(self, batch: Batch) -> None:
        if batch.digest == FORWARD_DIGEST:
            self._on_forwarded(batch)
            return
        if batch.digest not in self._wanted:
            self.rejected[drop.UNWANTED_BATCH] += 1
            return
        problem = self._txs_problem(batch.proposed_ms, batch.digest, batch.txs)
        if problem is not None:
            self.rejected[drop.BAD_BATCH] += 1
            return
        del self._wanted[batch.digest]
        self._fetched[batch.digest] = (batch.proposed_ms, batch.txs)
        while len(self._fetched) > self.params.window:
            self._fetched.popitem(last=False)
        for slot in self._log.window_slots():
            held = slot.reissued
            if held is not None and held.digest == batch.digest:
                self._fill_batch(slot, batch.proposed_ms, batch.digest, batch.txs)
        self._try_new_view()

    def _fill_batch(
        self, slot: Slot, proposed_ms: int, digest: bytes, txs: tuple[Transaction, ...]
    ) -> None:
        held = slot.reissued
        assert held is not None
        if (proposed_ms, digest) != (held.proposed_ms, held.digest):
            self.rejected[drop.BAD_BATCH] += 1
            return
        if self._txs_problem(proposed_ms, digest, txs) is not None:
            self.rejected[drop.BAD_BATCH] += 1
            return
        self._accept_preprepare(slot, replace(held, txs=txs), reissued=True)

    def _on_forwarded(self, batch: Batch) -> None:
        """A backup forwarded transactions that waited too long: propose them first."""
        if self.primary != self.me or len(batch.txs) > self.params.batch_txs_max:
            self.rejected[drop.UNWANTED_BATCH] += 1
            return
        for tx in batch.txs:
            if self._pool.to_front(tx.id) or self._pool.known(tx.id):
                continue  # one we hold, batched or committed (already checked): nothing to verify
            if self._forward_tokens[batch.sender] <= 0:
                self.rejected[drop.FORWARDED_TOO_MANY] += 1
                continue
            self._forward_tokens[batch.sender] -= 1
            if tx.chain_id != self.chain_id or not self._tx_ok(tx):
                self.rejected[drop.BAD_CLIENT_SIGNATURE] += 1
                continue
            reason = self._pool.add(tx, self._mono_ms)
            if reason is None:
                self._pool.to_front(tx.id)
        self._maybe_propose()

    # --- state transfer ---------------------------------------------------------------------

    def _transfer_target(self) -> int:
        """How far f+1 peers (one honest at least) showed they executed, or our h."""
        claims = sorted(
            (max(self._retransmit.peer_executed[p], self._fetch_claims[p]) for p in self.ids),
            reverse=True,
        )
        return max(self._log.low, claims[self.f] if len(claims) > self.f else 0)

    def _claimed(self, peer: int) -> int:
        """How far `peer` claims to have executed: by its CHECKPOINTs or its last BLOCKS."""
        return max(self._retransmit.peer_executed[peer], self._fetch_claims[peer])

    def claim_executed(self, peer: int, seq: int) -> None:
        """`peer` showed, outside this epoch's messages, that it executed up to `seq` (it
        speaks in a later epoch: pbft/epochs.py). Like a CHECKPOINT above the window, it only
        steers state transfer (the (f+1)-th highest claim), and nothing is adopted from it."""
        if peer == self.me or peer not in self._keys:
            return
        self._retransmit.executed_by(peer, seq)
        self._maybe_fetch()
        self._check_invariants()

    def _maybe_fetch(self) -> None:
        if not self._clock_known:
            return
        now = self._mono_ms
        interval = self.retransmit_ms
        if self._fetch_peer is not None:
            if now - self._fetch_sent_ms < interval:
                return
            self.transfer_retries += 1  # lost, or a silent peer: ask the next one
            self._fetch_slow_ms[self._fetch_peer] = now
            self._fetch_peer = None
        target = self._transfer_target()
        behind_h = self._log.low > self._last_committed
        stuck = now - self._progress_ms >= interval
        needed = target > self._last_committed and (behind_h or stuck)
        # A replica waiting alone in a view change takes no part in the old view, which may
        # go on committing without it: it keeps its ledger current by asking now and then.
        # So does one holding an accepted batch that saw nothing commit for a whole timeout:
        # the others may have committed it with votes it can no longer get (their signers moved
        # on to a later view, and only a signer re-sends its vote), and in an idle network no
        # CHECKPOINT would ever tell it (found by the simulator's flapping mixes: a primary,
        # which never suspects itself, one COMMIT short of a block the others had executed).
        quiet_ms = now - max(self._progress_ms, self._fetch_sent_ms)
        probe = (not self.active and quiet_ms >= 2 * interval) or (
            quiet_ms >= self.timeout_ms and self._behind_committed()
        )
        if needed or probe or self._probes_left > 0:
            self._fetch_from(self._pick_fetch_peer(target))

    def _pick_fetch_peer(self, target: int) -> int:
        """Round robin from a random start, preferring peers that did not answer slowly (or not
        at all) in the last FETCH_SLOW_SKIP_INTERVALS and, among them, those that claimed to
        have executed up to the target: a slow member is asked again only when every other
        one was slow too, whatever it claims (one that claims to be far ahead and trickles
        blocks must not set the pace of our catch-up)."""
        order = [self.ids[(self._fetch_next + i) % self.n] for i in range(self.n)]
        order = [p for p in order if p != self.me]
        skip_ms = FETCH_SLOW_SKIP_INTERVALS * self.retransmit_ms
        prompt = [p for p in order if self._mono_ms - self._fetch_slow_ms[p] >= skip_ms]
        ahead = [p for p in order if self._claimed(p) >= target]
        peer = ([p for p in prompt if p in ahead] or prompt or ahead or order)[0]
        self._fetch_next = (self.ids.index(peer) + 1) % self.n
        return peer

    def _fetch_from(self, peer: int) -> None:
        self._fetch_peer = peer
        self._fetch_sent_ms = self._mono_ms
        fetch = Fetch.create(
            self._signer, self.chain_id, self._last_committed + 1, self.me, epoch=self.epoch
        )
        self._messages.append(Outbound(peer, encode(fetch)))

    def _on_fetch(self, fetch: Fetch) -> None:
        # A peer catching up asks for the next blocks as soon as it has the last: serve that
        # at once; the same or an earlier start again only once per quarter interval.
        last_ms, last_from = self._served_ms[fetch.sender], self._served_from[fetch.sender]
        if fetch.from_seq <= last_from and self._mono_ms - last_ms < self.retransmit_ms // 4:
            self.rejected[drop.DUPLICATE] += 1  # or a retry too soon
            return
        budget = self._serve_budget[fetch.sender]
        empty = fetch.from_seq > self.last_executed  # the answer will carry no block
        if budget <= 0 or (empty and self._empty_fetches_left[fetch.sender] <= 0):
            self.rejected[drop.ANSWERS_OVER_BUDGET] += 1
            return
        # The answer may take what is left of the peer's budget (one frame at most), charged
        # now, before its signature is checked (a bad one forfeits it, so junk FETCHes cost
        # their sender the budget, not us a check each); the shell gives back what it did not
        # use (served()).
        grant = min(budget, frame_bytes_limit(self.params))
        self._serve_budget[fetch.sender] -= grant
        if empty:
            self._empty_fetches_left[fetch.sender] -= 1
        if not self._verified(fetch):
            return
        self._served_ms[fetch.sender] = self._mono_ms
        self._served_from[fetch.sender] = fetch.from_seq
        self._relay_new_view(fetch.sender)  # a restarted peer may not know our view either
        # Only this epoch's blocks, (S_e, E_e]: an answer never spans two configurations (an
        # earlier epoch's are served through pbft/epochs.py, with its E certificate).
        self._serve.append(
            Serve(
                fetch.sender,
                max(self.config.start + 1, fetch.from_seq),
                grant,
                epoch=self.epoch,
                last_seq=self.config.end,
            )
        )

    def _on_blocks(self, reply: Blocks) -> None:
        if reply.sender != self._fetch_peer:
            cert = reply.stable
            if (
                not reply.blocks
                and cert is not None
                and cert.seq == self.config.end
                and cert.seq > self._log.low
            ):
                # A certificate-only answer for our own E (a removed member, or one already in
                # the next epoch, answering our CHECKPOINT or VIEW-CHANGE): taken unasked.
                if not self._verified(reply):
                    return
                if check_checkpoint_certificate(self._members, self._verifier, cert) is not None:
                    self.rejected[drop.BAD_TRANSFER] += 1
                elif not self._differs_from_ours(cert):
                    self._stabilize(cert)
                return
            self.rejected[drop.UNASKED_BLOCKS] += 1
            return
        if not self._verified(reply):
            return
        peer = reply.sender
        self._fetch_claims[peer] = reply.height  # its latest claim replaces the one before
        cert = reply.stable
        end = self.config.end
        if cert is not None and end is not None and cert.seq > end:
            # Epoch-e votes above E: only keys that left after E was certified sign there
            # (design 3.3). Adopting it would move h past E, and we would never enter e+1.
            self.rejected[drop.BEYOND_EPOCH] += 1
            cert = None
        if cert is not None and cert.seq > self._log.low:
            # (it moves our window, a hint only: a block above what fixes its configuration,
            # last executed + L + 1, is never accepted, below)
            if check_checkpoint_certificate(self._members, self._verifier, cert) is not None:
                self.rejected[drop.BAD_TRANSFER] += 1
                self._fetch_from(self._pick_fetch_peer(self._transfer_target()))
                return
            if not self._differs_from_ours(cert):
                self._stabilize(cert)
        usable: list[TransferredBlock] = []  # the blocks that advanced us
        for block in reply.blocks:
            seq = block.seq
            if seq <= self._last_committed:
                continue
            if seq != self._last_committed + 1 or seq > self._log.high:
                break
            if self.config.end is not None and seq > self.config.end:
                break  # (the next configuration certifies it: pbft/epochs.py)
            if not self._knows_config(seq):
                break  # config(seq) is not fixed by what we executed: asked again later
            problem = self._transferred_problem(block)
            if problem is not None:
                # A lying or broken peer: never trust it for this round; ask the next one.
                self.rejected[drop.BAD_TRANSFER] += 1
                self._fetch_from(self._pick_fetch_peer(self._transfer_target()))
                return
            c = block.certificate
            self._hand_out(CommittedBatch(seq, c.view, c.digest, block.proposed_ms, block.txs, c))
            slot = self._log.get(seq)
            if slot is not None:
                slot.redo = True
                held = slot.reissued
                if held is not None and (held.digest, held.proposed_ms) == (
                    c.digest,
                    block.proposed_ms,
                ):
                    # The batch a re-issued slot waits for came with the block (its commit
                    # certificate vouches for it): prepare it here, no need to ask for it.
                    self._accept_preprepare(slot, replace(held, txs=block.txs), reissued=True)
            self._transferred_to = seq
            self.transferred += 1
            usable.append(block)
        delivered = len(usable)
        if not delivered and self._probes_left > 0:
            self._probes_left -= 1  # one more peer says we are not behind it
        more = reply.height > self._last_committed  # the peer claims blocks we still lack
        full = more and self._full_answer(reply, usable)
        if more and not full:
            # Fewer blocks than fit one frame while it claims more: slow, whatever the reason
            # (a peer that trickles one valid block per FETCH, each just before our timeout,
            # slowed a whole cluster's catch-up from 4 s to 198 s): ask another next. An honest
            # peer cut short by its budget or a large next block costs only that rotation.
            self._fetch_slow_ms[peer] = self._mono_ms
            self.transfer_slow += 1
        behind = self._transfer_target() > self._last_committed or more
        if delivered and more and full:
            self._fetch_from(peer)  # keep going with a peer that sends all that fits
        elif (delivered and behind) or self._log.low > self._last_committed:
            self._fetch_from(self._pick_fetch_peer(self._transfer_target()))
        else:
            self._fetch_peer = None
        self._deliver()

    def _full_answer(self, reply: Blocks, usable: list[TransferredBlock]) -> bool:
        """Whether a BLOCKS answer whose sender claims more carried all that could fit, judged
        by the `usable` blocks only (those that advanced us): `window` of them, or too little
        room left beside them in one frame for even the smallest block. Blocks we already
        had, repeated or out of order fill a frame for nothing: a member repeating its one
        valid block `window` times passed for a full answer and set the pace of our catch-up,
        one block per interval (review)."""
        if len(usable) >= self.params.window:
            return True
        used = len(encode(replace(reply, blocks=tuple(usable))))  # that answer's exact frame
        return frame_bytes_limit(self.params) - used < self._block_bytes_min

    def _differs_from_ours(self, cert: CheckpointCertificate) -> bool:
        """A valid stable checkpoint certificate for a hash other than the one we signed (or
        executed) at its sequence number: our execution diverged from Q members'. Never adopt
        it silently: count it and refuse it, as _try_stable does for Q CHECKPOINTs."""
        own = self._checkpoints.own(cert.seq)
        ours = own.block_hash if own is not None else None
        if ours is None and cert.seq == self.last_executed:
            ours = self._last_block_hash
        if ours is None or ours == cert.block_hash:
            return False
        self._diverged_at(cert.seq, ours, cert.block_hash)
        return True

    def _diverged_at(self, seq: int, ours: bytes, certified: bytes) -> None:
        """A quorum certified `certified` at `seq` where we executed (or signed) `ours`: Q
        members, f+1 of them honest at least, executed the same batches to another block. Our
        state is the wrong one (a damaged store, a bug): counted, and we stop signing."""
        self.rejected[drop.CHECKPOINT_MISMATCH] += 1
        if self.diverged is None:
            self.diverged = (seq, ours, certified)

    def _transferred_problem(self, block: TransferredBlock) -> str | None:
        c = block.certificate
        params = self.params
        if len(block.txs) > params.batch_txs_max or (
            sum(t.size for t in block.txs) > params.batch_bytes_max
        ):
            return drop.BATCH_TOO_LARGE
        if batch_digest(block.proposed_ms, [t.id for t in block.txs]) != c.digest:
            return drop.DIGEST_MISMATCH
        # A valid commit certificate means Q members, f+1 of them honest, accepted this batch
        # after checking its client signatures, so they are not checked again here.
        return check_commit_certificate(self._members, self._verifier, c)

    # --- effects ----------------------------------------------------------------------------

    def _persist(self, slot: Slot, kind: str, value: bytes) -> None:
        key = records.slot_key(slot.seq, kind)
        self._records.append((key, value))
        if key not in slot.record_keys:
            slot.record_keys.append(key)

    def _send_own(self, slot: Slot, frame: bytes) -> None:
        self._messages.append(Outbound(None, frame))
        self._retransmit.own_sent(slot, self._mono_ms)

    # --- recovery ---------------------------------------------------------------------------

    def _restore(self, recovered: RecoveredState) -> None:
        """Reload own votes, view and proofs, so a restarted replica re-sends them and never
        contradicts them."""
        restored = records.parse(recovered.records, self.params, self.me)
        window = self.params.window
        certs = [c for c in (recovered.stable_checkpoint, restored.stable) if c is not None]
        if certs:
            best = max(certs, key=lambda c: c.seq)
            self.stable_certificate = best
            self._log.advance(best.seq)
            if best.seq > self._last_committed:
                self._highest_accepted = best.seq
        if self.config.start > self._log.low:
            # The epoch orders only above its start (S_e): never a vote at or below it, even
            # when no certificate for it was passed in.
            self._log.advance(self.config.start)
            self._highest_accepted = max(self._highest_accepted, self.config.start)
        low = self._log.low
        self._next_seq = max(self._next_seq, low + 1)
        if restored.epoch != self.epoch:
            # A view record of another epoch (the step entering this one writes [e, 0, 1, 0]
            # with the rest): views restart at 0 in every epoch.
            restored.view, restored.active, restored.timeouts = 0, True, 0
            restored.view_change = restored.new_view = None
        self.view, self.active = restored.view, restored.active
        self._timeouts = restored.timeouts  # a restart does not reset the view-change timer
        for vote, _ in restored.checkpoints:
            if vote.seq <= low - window:
                continue
            self._checkpoints.add(vote)
            if vote.seq > low:
                self._retransmit.checkpoint_sent(-self.retransmit_ms)  # re-send at once
        for seq in self._checkpoints.collect(low, window):
            self._records.append((records.checkpoint_key(seq), None))
        for seq, (pp, prepares, key) in sorted(restored.proofs.items()):
            if seq <= low:
                self._records.append((key, None))
                continue
            self._prepared[seq] = PreparedProof(preprepare=pp, prepares=tuple(prepares))
            # (No committed digest is taken from a stored proof: a block that came by state
            # transfer may have committed another digest in a later view. The second guard
            # covers what this process commits from now on.)
        for seq in sorted(restored.slots):
            self._restore_slot(restored.slots[seq])
        self._records.extend((key, None) for key in restored.unknown_keys)
        if not self.active:
            if restored.view_change is not None:
                self._own_vc = restored.view_change
                vc = decode(restored.view_change, self.params)
                assert isinstance(vc, ViewChange)
                self._vcs[self.me] = vc
                self._vc_resend_at = 0  # re-send on the first tick
            else:
                self._start_view_change(self.view + 1, "restarted during a view change")
        else:
            self._nv_frame = restored.new_view
            nv = None if restored.new_view is None else decode(restored.new_view, self.params)
            if isinstance(nv, NewView) and nv.view == self.view:
                self._reissued_max = max((pp.seq for pp in nv.preprepares), default=0)
                if self.primary == self.me:
                    self._next_seq = max(self._next_seq, self._reissued_max + 1)
                # Re-issued slots whose batch had not arrived before the restart were in
                # memory only: rebuild them from the NEW-VIEW, or the primary's retransmission
                # of one would be refused as not re-issued and the seq would stall (review).
                for pp in nv.preprepares:
                    if pp.seq <= self._log.low:
                        continue
                    held = self._log.get(pp.seq)
                    if held is None or (held.preprepare is None and held.reissued is None):
                        self._reissue(self._log.slot(pp.seq, self.view), pp)
        # A fresh PRE-PREPARE whose PREPARE we withheld for a key never admitted here waits
        # for the admitting block again (_prepare_admitted): the wait was in memory only, and
        # after a restart the slot would never get our PREPARE. Whether we also withheld it for
        # its timestamp was in memory too: the first tick judges that again
        # (_judge_waiting_skew).
        for slot in self._log.window_slots():
            accepted = slot.preprepare
            if (
                accepted is not None
                and accepted.sender != self.me
                and slot.own_prepare is None
                and not slot.committed_local
                and slot.seq > self._reissued_max
                and not self._all_admitted(accepted.txs)
            ):
                self._unadmitted.add(slot.seq)
        boundary = self.last_executed
        if (
            boundary > low
            and boundary % self.params.checkpoint_interval == 0
            and self._checkpoints.own(boundary) is None
        ):
            self._checkpoint(boundary, self._last_block_hash)

    def _restore_slot(self, saved: records.RestoredSlot) -> None:
        pp = saved.preprepare
        if pp is None or not self._log.in_window(saved.seq) or pp.view != self.view:
            # Records of an older view (we crashed moving to this one) are not slots anymore,
            # and we never send an old view's messages again; what they proved lives on in the
            # prepared proofs.
            self._records.extend((key, None) for key in saved.keys)
            return
        slot = self._log.slot(saved.seq, pp.view)
        slot.preprepare = pp
        slot.record_keys = list(saved.keys)
        if pp.sender == self.me:
            slot.own_preprepare = saved.preprepare_frame
            self._next_seq = max(self._next_seq, saved.seq + 1)
        if saved.prepare is not None:
            slot.prepares[self.me] = saved.prepare
            slot.own_prepare = saved.prepare_frame
        proof = self._prepared.get(saved.seq)
        if proof is not None and proof.view == pp.view and proof.digest == pp.digest:
            for prepare in proof.prepares:
                slot.prepares[prepare.sender] = prepare
            slot.prepared = True
        if saved.commit is not None:
            slot.prepared = True
            slot.commits[self.me] = saved.commit
            slot.own_commit = saved.commit_frame
        if saved.seq <= self.last_executed:
            slot.prepared = slot.committed_local = True
        else:
            self._pool.in_flight(saved.seq, pp.txs)
        self._highest_accepted = max(self._highest_accepted, saved.seq)
        if slot.own_preprepare or slot.own_prepare or slot.own_commit:
            self._retransmit.resend_soon(slot)  # re-send on the first tick

    # --- recovery gate (pbft/recovery.py) ---------------------------------------------------

    def _may_speak(self, view: int) -> bool:
        """Whether we may sign a vote, a proposal, a NEW-VIEW or a VIEW-CHANGE for `view`: never
        once our execution diverged from a quorum's; otherwise always, unless recovering, and
        then only above every view we can have used."""
        if self.diverged is not None:
            return False
        return self._recovery is None or self._recovery.allows(view)

    def _withheld(self) -> None:
        if self.diverged is not None:
            self.withheld_diverged += 1
            return
        assert self._recovery is not None
        self._recovery.withheld += 1

    def _recovery_tick(self) -> None:
        rec = self._recovery
        if rec is None:
            return
        floor = rec.floor
        target = max(rec.target, self._reissued_max, self._log.low)
        if (
            floor is not None
            and self.active
            and self.view >= floor
            and self._nv_frame is not None
            and self.last_executed >= target
        ):
            self._recovery = None  # the shell then deletes its mark (node/runtime.py)
            return
        if rec.asked_ms is not None and self._mono_ms - rec.asked_ms < self.retransmit_ms:
            return
        rec.asked_ms = self._mono_ms
        query = encode(
            ViewQuery.create(self._signer, self.chain_id, rec.nonce, self.me, epoch=self.epoch)
        )
        for peer in rec.unanswered():
            self._messages.append(Outbound(peer, query))

    def _on_view_query(self, query: ViewQuery) -> None:
        # Each answer costs a signature: one per peer per half interval (an honest recovering
        # member asks once per interval).
        if self._mono_ms - self._query_answered_ms[query.sender] < self.retransmit_ms // 2:
            self.rejected[drop.QUERY_TOO_OFTEN] += 1
            return
        if not self._verified(query):
            return
        self._query_answered_ms[query.sender] = self._mono_ms
        report = ViewReport.create(
            self._signer,
            self.chain_id,
            query.nonce,
            self.view,
            self.last_executed,
            self.me,
            epoch=self.epoch,
        )
        self._messages.append(Outbound(query.sender, encode(report)))

    def _on_view_report(self, report: ViewReport) -> None:
        rec = self._recovery
        if rec is None or report.nonce != rec.nonce:
            # Not recovering, or an answer to a query of an earlier start: a replay, or late.
            self.rejected[drop.STALE_VIEW_REPORT] += 1
            return
        # Each check costs a signature: a peer already counted is never asked again and its
        # further reports add nothing (dropped unchecked), and one not yet counted is checked
        # at most once per half interval (an honest member answers no more often), so neither
        # copies of an answer nor junk buy us a check per message (review).
        if report.sender in rec.reports:
            self.rejected[drop.DUPLICATE] += 1
            return
        if self._mono_ms - self._report_checked_ms[report.sender] < self.retransmit_ms // 2:
            self.rejected[drop.REPORT_TOO_OFTEN] += 1
            return
        self._report_checked_ms[report.sender] = self._mono_ms
        if not self._verified(report):
            return
        rec.add(report.sender, report.view, report.last_executed)

    # --- invariants and status --------------------------------------------------------------

    def _check_invariants(self) -> None:
        """Cheap (constant-time) checks after every input; check_invariants() checks all."""
        low = self._log.low
        assert self.last_executed <= self._last_committed <= self._log.high
        assert low % self.params.checkpoint_interval == 0
        assert self._next_seq <= self._log.high + 1 or self.primary != self.me
        assert self._next_seq > low or self.primary != self.me or not self.active
        assert self._last_committed <= self._highest_accepted
        assert self.stable_certificate is None or self.stable_certificate.seq == low
        assert len(self._log) <= self.params.window
        assert len(self._prepared) <= self.params.window
        assert len(self._wanted) <= self.params.window
        assert len(self._abandoned) <= self.params.window
        assert len(self._unadmitted) <= self.params.window
        assert len(self._fetched) <= self.params.window
        assert len(self._committed_digests) <= self.params.window
        assert len(self._vcs) <= self.n
        # (a recovering replica may sit in a restored view change it may not speak in)
        assert self.active or self._own_vc is not None or self._recovery is not None
        assert self._recovery is None or len(self._recovery.reports) < self.n
        assert len(self.clock) <= OFFSET_SAMPLES_MAX

    def check_invariants(self) -> None:
        self._check_invariants()
        self._log.check()
        self._pool.check()
        self._future.check()
        self._checkpoints.check(self._log.low, self._log.high, self.params.window)
        assert all(0 <= k <= self.params.window for k in self._batch_asks_left.values())
        assert all(0 <= k <= EMPTY_FETCHES_PER_INTERVAL for k in self._empty_fetches_left.values())
        for seq, proof in self._prepared.items():
            assert proof.seq == seq and self._log.low < seq <= self._log.high
        for slot in self._log.window_slots():
            if slot.seq <= self._last_committed:
                # (or it came by state transfer, and the slot holds late votes for it)
                assert slot.committed_local or slot.redo or slot.seq <= self._transferred_to, (
                    f"seq {slot.seq} handed out early"
                )
            if slot.own_prepare is not None or slot.own_commit is not None:
                assert slot.preprepare is not None
            if self.me in slot.prepares and slot.preprepare is not None:
                assert slot.prepares[self.me].digest == slot.preprepare.digest
            if self.me in slot.commits and slot.preprepare is not None:
                assert slot.commits[self.me].digest == slot.preprepare.digest

    @property
    def pending_count(self) -> int:
        """Client transactions held and not yet executed: in no batch yet, or in a batch not
        yet committed (read-only, for the shell)."""
        return self._pool.pending_count + self._pool.in_flight_count

    def status(self) -> dict[str, Any]:
        return {
            "mode": "pbft",
            "view": self.view,
            "view_active": self.active,
            "view_changes": self.view_changes,
            "view_change_history": [f"{v}: {why}" for v, why in self.view_change_history],
            "view_timeout_ms": self.timeout_ms,
            "primary": self.primary,
            "last_executed": self.last_executed,
            "low_watermark": self._log.low,
            "high_watermark": self._log.high,
            "stable_checkpoint": self._log.low,
            "in_flight": max(0, self._highest_accepted - self._last_committed),
            "pending_txs": self._pool.pending_count,
            "log_slots": len(self._log),
            "buffered_messages": len(self._future),
            "transferred_blocks": self.transferred,
            "transfer_slow_answers": self.transfer_slow,  # FETCHes moved on from a slow member
            "evidence": [
                {"reason": e.reason, "view": e.view, "seq": e.seq, "primary": e.primary}
                for e in self.evidence
            ],
            "peers_executed": list(self._retransmit.peer_executed.values()),
            "peers_committed": list(self.peers_committed.values()),
            "view_change": self._view_change_progress(),
            "catching_up": self._catching_up(),
            "recovering": None
            if self._recovery is None
            else self._recovery.status(
                self.view,
                self.active,
                self.last_executed,
                max(self._recovery.target, self._reissued_max, self._log.low),
            ),
            "clock": self.clock.status("batches a quorum committed"),
            "diverged": None
            if self.diverged is None
            else {
                "seq": self.diverged[0],
                "ours": self.diverged[1].hex(),
                "certified": self.diverged[2].hex(),
                "withheld": self.withheld_diverged,
            },
            "waiting_for": self._waiting_for(),
        }

    def _view_change_progress(self) -> dict[str, Any] | None:
        """While a view change runs: the view it goes to, the VIEW-CHANGEs held for exactly it
        (a NEW-VIEW needs Q), the members at it or a later view (the NEW-VIEW timer needs Q),
        whether the timer runs, how long we have waited, the member that must send NEW-VIEW,
        and whether we wait alone (read-only, for status)."""
        if self.active:
            return None
        return {
            "view": self.view,
            "view_changes": len(self._view_changes_for(self.view)),
            "members_at_or_above": self._members_at_or_above(self.view),
            "needed": self.quorum,
            "new_view_from": self.primary,
            "new_view_timer_running": self._nv_timer_at is not None,
            "waited_ms": max(0, self._mono_ms - self._vc_since_ms),
            "alone": self._alone(),
        }

    def _alone(self) -> dict[str, Any] | None:
        """Whether we wait in a view change the others will not join: fewer than f+1 members
        (ours included) asked for our view or a later one, a whole timeout has passed, and
        peers were seen working in a lower view meanwhile (read-only, for status).

        Such a replica (paused, or cut off, past the timeout while the others went on) cannot
        return to the lower view: its VIEW-CHANGE promised not to act in it, and a NEW-VIEW for
        our view built from that VIEW-CHANGE would miss anything it prepared there afterwards.
        Nor may the others follow it: one member alone must never force a view change. So it
        counts as one of the f faulty members until the others' view changes reach its view
        (its VIEW-CHANGE already counts toward their timer then), and meanwhile it follows
        their blocks by state transfer (_maybe_fetch's probe) and keeps signing CHECKPOINTs.
        """
        if self.active or self._members_at_or_above(self.view) > self.f:
            return None
        now = self._mono_ms
        if now - self._vc_since_ms < self.timeout_ms:
            return None
        working = [
            (view, peer)
            for peer, (view, seen_ms) in self._seen_working.items()
            if peer != self.me
            and 0 <= view < self.view
            and seen_ms >= self._vc_since_ms
            and now - seen_ms <= self.timeout_ms
        ]
        if not working:
            return None
        return {
            "members": [peer for _, peer in working],
            "view": max(view for view, _ in working),
            "needed_to_move_others": self.f + 1,
        }

    def _catching_up(self) -> dict[str, Any] | None:
        """While a state transfer runs: how many blocks behind the f+1 claim we are and the
        member asked (read-only, for status)."""
        target = self._transfer_target()
        if target > self._last_committed and (
            self._log.low > self._last_committed or self._fetch_peer is not None
        ):
            return {
                "behind": target - self._last_committed,
                "target": target,
                "from": self._fetch_peer,
            }
        return None

    def _waiting_for(self) -> str:
        """Why nothing moves, in one line (cheap: looks at one slot)."""
        if not self.active:
            have = len(self._view_changes_for(self.view))
            members = self._members_at_or_above(self.view)
            alone = self._alone()
            if alone is not None:
                return (
                    f"view change to {self.view} alone: members "
                    f"{', '.join(str(p) for p in alone['members'])} work in view "
                    f"{alone['view']}; one of the f faulty until their view change reaches "
                    f"view {self.view} (blocks follow by state transfer)"
                )
            if members < self.quorum:
                return (
                    f"view change to {self.view} in progress: {members} of {self.quorum} "
                    "needed VIEW-CHANGE messages"
                )
            if have < self.quorum:
                return (
                    f"view change to {self.view}: {members} members at view {self.view} or "
                    f"later, {have} for view {self.view}; view {self.view + 1} next unless a "
                    "NEW-VIEW comes in time"
                )
            return (
                f"view change to {self.view}: NEW-VIEW from primary {self.primary} "
                f"({have} VIEW-CHANGEs held)"
            )
        target = self._transfer_target()
        if target > self._last_committed and (
            self._log.low > self._last_committed or self._fetch_peer is not None
        ):
            return (
                f"state transfer: behind by {target - self._last_committed} blocks, catching "
                f"up from member {self._fetch_peer}"
            )
        if self._last_committed > self.last_executed:
            return f"the node to execute seq {self.last_executed + 1}"
        seq = self._last_committed + 1
        slot = self._log.get(seq)
        if slot is not None and slot.reissued is not None:
            return f"the batch re-issued for seq {seq} (asked by digest)"
        if slot is not None and slot.preprepare is None:
            return f"pre-prepare for seq {seq} from primary {self.primary}"
        if slot is not None and slot.preprepare is not None and not slot.prepared:
            have = len(slot.matching(slot.prepares))
            withheld = " (ours withheld: timestamp skew)" if slot.prepare_withheld else ""
            if seq in self._unadmitted and slot.own_prepare is None:
                withheld = " (ours withheld: a client key never admitted here)"
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


def _empty_batch(pp: PrePrepare) -> bool:
    return batch_digest(pp.proposed_ms, []) == pp.digest


def _carries_its_batch(pp: PrePrepare) -> bool:
    """Whether a PRE-PREPARE's transactions are those its digest names (one hash)."""
    return batch_digest(pp.proposed_ms, [tx.id for tx in pp.txs]) == pp.digest
