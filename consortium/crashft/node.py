"""The Raft node as a pure state machine (Ongaro & Ousterhout, USENIX ATC 2014; Ongaro's
thesis 2014), run the way etcd runs it: PreVote and CheckQuorum, pipelined AppendEntries with
flow control, leadership transfer, ReadIndex, log compaction with snapshot install.

Theory of operation
-------------------
Events in, effects out, exactly like the PBFT core (node/executor.py carries out a Ready):

    node.tick(mono_ms, wall_ms)   timers; wall time stamps proposals
    node.receive(sender, msg)     a decoded peer message (or its frame); never raises
    node.propose(tx)              a client transaction; the leader checks it with tx_ok
    node.read(read_id)            a linearizable read: released as a ReadState(index) when safe
    node.transfer_leadership(to)  maintenance: hand leadership to `to` (refused unless it is
                                  live, none is under way, and none started within E)
    ready = node.take_ready()     persist ready.records (one fsync), then send ready.messages,
                                  then apply ready.committed / ready.install in order,
                                  reporting each with entry_applied() / installed()
    node.persisted(index, term)   the write of a Ready's records is durable: ready.log_end

Roles. A follower whose randomised election timer ([E, 2E)) fires first runs a PreVote round
for term+1 without changing its term; only a majority of "I would vote for you" answers make it
a candidate (term+1, vote for itself, durable before the requests leave). So a node that was
partitioned or restarted cannot depose a healthy leader. A pre-candidate or candidate asks the
members that have not answered again every heartbeat interval (the paper retries an RPC that
gets no answer, §5.1): asked once, a request or answer the network lost cost the whole
election. CheckQuorum: a leader that has not heard from a majority within E steps down; and a
node that heard from a leader within E ignores vote requests (its lease), unless they come
from a leadership transfer (TimeoutNow).

Replication. Per follower a Progress in one of three states: PROBE (one AppendEntries at a
time until the follower's log matches), REPLICATE (optimistic pipelining: up to inflight_max
appends in flight, each at most append_bytes_max), SNAPSHOT (the entries it needs are
compacted: it fetches blocks). A leader counts itself only for entries the shell reported
durable with persisted() (etcd's storage-append acknowledgement), at every n: counting what it
merely handed to its write made a single member commit, and its shell acknowledge, an entry
that a power cut during that write then lost. It commits by counting only entries of its own
term (Figure 8); it appends a no-op on election so earlier entries commit promptly.

Entries and blocks. A batch entry is one block; the leader signs (chain id, term, index, batch
digest) when it creates the entry, so the certificate travels inside the entry and every node
stores the same one. A no-op makes no block: log index and height differ.

Durability (records, keys below): the hard state (term, vote) and log entries are in the
Ready's records, persisted before the messages that depend on them (vote grants, append
acknowledgements) leave. Records are written from the final log state of a step, so a
truncate-then-overwrite never deletes what it just wrote.

    b"raft/hard"            [term, voted_for or -1]
    b"raft/snap"            [index, term, height, block_hash]: the compaction point
    b"raft/log/<index:8 BE>" entry.encode()

Compaction and snapshots. Once the applied entries in the log exceed 2 x log_keep, the oldest
are dropped (their effect is in the ledger) and the compaction point recorded. A follower that
needs a compacted entry gets SNAPSHOT(index, term, height, block hash): it drops its
uncommitted suffix and FETCHes the blocks it lacks from the leader in bounded chunks; the shell
re-executes each and checks it reproduces the header the leader sent (hash chain and state
root), and the node restarts its log at the snapshot. The ledger itself is the snapshot's
application state: nothing but blocks is copied.

Reads (ReadIndex, thesis §6.4). The leader serves a read only once an entry of its own term
is committed; it notes the commit index, confirms it still leads with a heartbeat round whose
context a majority echoes, and releases ReadState(read_id, index): the shell answers when its
ledger has applied that index. A follower asks the leader for the index and waits the same way;
the id its request carries counts up from a random start per process, so a reply meant for a
read of its previous process never releases a new one.
A deposed leader in a minority never gathers the echoes (and steps down within E), so it
answers no read.

Leadership transfer (thesis §3.10). A leader transferring proposes nothing, so an operator's
request is accepted only for a target heard from within E and not recovering (its heartbeat
replies say so: it cannot campaign), never while another operator's is under way, and at most
once per E counting from the election; it replaces a hand-off the leader started for its own
clock (below), which otherwise would lock operators out. The leader appends a no-op marker, catches
the target up, and sends it TimeoutNow(term, last index) once, only while more than E/2 is left
before it abandons the transfer at E; the target campaigns (voters ignore their lease for it)
only if its log ends at that entry and the entry became durable there at most E/4 before on
its own clock (from persisted() and the shell's tick right after it, not from the append's
arrival: a slow disk is not staleness). A TimeoutNow cannot be recalled: so it is honoured only
while the leader still waits for it, and a copy delayed past the abandonment deposes nobody.
Timing assumed: the shell ticks the core at once after reporting a write durable, before the
acknowledgement it released leaves (the runtime does), and the two members' monotonic clocks
drift apart by less than E/4 over E; the target's write of the marker may take up to E/2 (its
acknowledgement must reach the leader with more than E/2 of the transfer left).

Clocks (deviation from the paper, which has no block time). A batch entry carries the leader's
wall clock, which becomes the block's time (max of it and the previous block's). Followers
never refuse an entry for its time: that would stall commits while heartbeats keep the leader in
office. Instead every APPEND-REPLY and HEARTBEAT-REPLY carries the follower's wall clock; the
leader keeps the last one per follower with the monotonic time it arrived, and before each
batch takes the clocks heard within E, its own included, each advanced by the monotonic time
since (so a jump of its own wall clock shows at once, and a stale sample ages out). It proposes
only while its own clock is within params.timestamp_skew_ms of the median of those clocks
(both middle ones for an even count), and only once it holds a majority of them: a new leader
waits for its first replies (its no-op makes no block and goes at once). A leader whose clock
is off hands leadership (the transfer path: _transferee, TimeoutNow) to the most caught-up
member that answered within E and whose clock agrees, and meanwhile proposes nothing; with no
such member it stays and says why in status. Recovering members are not chosen (they cannot
campaign), and a member a transfer to which was abandoned while we lead comes after those none
failed with (the one abandoned longest ago first): choosing the most caught-up every time made
one that acknowledges but never takes over the target of every hand-off, for good. So no one
clock moves block time by more than
the skew, while a majority's clocks agree (a wrong clock counts as a failure for liveness,
never for safety). As follower, a member measures its own clock against the fresh entries of
its leader (ledger/clock.py) and says in status when it is off.

Clients may contact any node: a follower forwards transactions to the leader and forwards them
again if they are not committed within 2E or the leader changes; clients retransmit too, and
the ledger's replay protection makes a transaction execute at most once.

Recovery. The records keep a member from voting twice in one term (Figure 2: currentTerm and
votedFor are durable before the vote leaves). A member started from a restored backup, or from
an empty data directory although it has run before (the shell knows: `node backup` marks its
copy, `init` and `keygen` mark a new data directory), has forgotten the votes it cast since, and
the entries it acknowledged: voting again it could elect a second leader in one term, or one
that lacks a committed entry. It therefore grants no vote (nor PreVote) and sends no
RequestVote or PreVote until it has learned a term above any it can have voted in, and has
caught up. It asks the others with TERM-QUERY carrying a nonce drawn from the seed for this
start; only TERM-REPORTs echoing it count (an answer of an earlier start is never replayed),
and only from members that are not recovering themselves (the report says so: a restored
member reports the term of its copy). With such reports from a majority of the other members
(not counting itself), the floor is their highest term plus one. The bound: a leader that our
lost vote helped elect in term T had a majority's votes; with k members restored at once (we
are one), at least majority(n) - k of its voters are among the n - k that are not recovering,
and they reached term T for good (terms never go back, and a member that recovered since did
so above every term it voted in); those majority(n - 1) = n - majority(n) + 1 reporters are
more than the n - k - (majority(n) - k) non-recovering members that need not have voted, so one
of them did. (Counting recovering reporters, two members restored at once each learned a floor
at a term they had voted in.) So that such an election is over before the answers are given,
the first query waits 2E after start: a candidate holding our lost vote wins or gives up within
2E (its election timer). The member leaves recovery once its term is >= floor and it has
committed an entry of such a term: a leader elected without its vote appended it, and that
leader's log holds every committed entry, including any this member acknowledged before its
state was lost. Until then it counts as unavailable: it acknowledges appends (each true of its
durable log), so a leader may count it, but it never decides an election; restored into a
healthy cluster, it waits for the next election (a leadership transfer starts one). A
single-member network has nobody to ask or contradict and starts normally.

Liveness of recovery: the answers need majority(n - 1) = ceil(n/2) other members up and not
recovering (k restored and d down with k + d <= floor(n/2)), and the election that lets them
recover needs k + d <= (n - 1) // 2: the fault budget, in which a recovering member counts as
unavailable. Beyond it (two of three members restored at once, or the only members that
reached the lost term restored or down) no member can learn a safe floor, as the lost votes may
have elected a leader only they knew of: the recovering members keep asking every E/2 and wait
for members that are not recovering, and status counts the answers of recovering members.

Membership (docs/design/membership.md, part 4). The node holds the configuration its ledger
applied (`members`: voters and learners by id; RaftConfig.members at start) and follows the
executor's reconfigure(config, index), called when applying the entry at `index` activated
`config` (configuration on apply: an uncommitted entry changes nobody's configuration) and after
a snapshot install. The voters form every majority: commit, elections, CheckQuorum, ReadIndex,
the clock median, the recovery gate's reports. Learners get appends, heartbeats and snapshots
and apply, but never vote, campaign or count. A leader's messages are taken from any id (we may
not have applied the configuration that made it a member: only its entries bring us there);
anything else from an id outside our applied configuration is dropped (`not_member`), and a
vote request from a learner too. A "change entry" holds a transaction carrying a v2 members
change (`member_change_of`, injectable as `change_of`); whether the ledger accepts it is known
only at apply, so the rules are conservative:

    R1  the leader appends a change entry only if (a) an entry of its term has committed
        (Ongaro's fix), (b) no change entry is above what its ledger applied, (c) a majority of
        its configuration's voters reported (APPEND-REPLY, HEARTBEAT-REPLY) an applied epoch
        equal to its own, (d) the entry carries that change alone, (e) a promote's learner is
        within params.window entries of the leader's last index (learner_lag). Otherwise the
        transaction stays in the pool, counted once per reason.
    R2  after appending a change entry the leader appends no batch until it applied it (a
        no-op goes: the transfer marker, a new term's first entry).
    R3  no campaign while the log holds a committed change entry the ledger has not applied
        (etcd's hasUnappliedConfChanges); a voter refuses a (pre-)vote to a candidate whose
        epoch (VOTE's) is below its own applied epoch, or that is no voter of its applied
        configuration. With R1c, members two configurations behind are a minority that can
        collect votes only from each other: only adjacent configurations compete, and their
        majorities intersect.

A member that applies a configuration without it is removed for good (`removed_at`, status
`removed`): it neither campaigns nor answers votes; as leader it stops proposing, hands
leadership to the most caught-up voter of the new configuration (a transfer of its own) and
steps down when that completes, or at once when the transfer is abandoned or nobody can take
it. The shell lingers, then exits.

Nothing here reads a clock, randomness, the network or the disk; randomness for election
timeouts comes from a seed, and everything the node holds is bounded (pool_max, reads_max,
inflight_max, log compaction). Every input (the methods marked @_input) ends with
_check_invariants(): commit within the log, applied within commit, the compaction point
within applied, the leader's own durable match within its log, no entry of a term above ours,
terms that never go back and one vote per term, role-consistent state, every bound; the
simulator and the test harness also call check_invariants() after each step (the uncommitted
end of the log, every follower's progress, the pool against the uncommitted ids).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Concatenate, ParamSpec, TypeVar

from consortium.crashft import messages as m
from consortium.crashft import reasons as drop
from consortium.crashft import rules
from consortium.crashft.log import RaftLog
from consortium.crashft.messages import Entry, TransferredBlock
from consortium.crypto.codec import (
    WireFormatError,
    as_bytes,
    as_int,
    as_list,
    pack,
    unpack,
    unpack_canonical,
)
from consortium.crypto.hashing import sha256
from consortium.crypto.signing import Domain, Signer
from consortium.ledger.certificates import raft_entry_body
from consortium.ledger.clock import ClockOffset, median_band, off_band_ms
from consortium.ledger.genesis import Genesis, Params
from consortium.ledger.membership import (
    CHANGE_FORMAT,
    MEMBERS,
    MEMBERS_MAX,
    VOTER,
    ChangeV2,
    Configuration,
    PromoteLearner,
    genesis_configuration,
)
from consortium.ledger.tx import Transaction

FOLLOWER = "follower"
PRE_CANDIDATE = "pre-candidate"
CANDIDATE = "candidate"
LEADER = "leader"

PROBE = "probe"
REPLICATE = "replicate"
SNAPSHOT = "snapshot"

HARD_KEY = b"raft/hard"
SNAP_KEY = b"raft/snap"
LOG_PREFIX = b"raft/log/"
COMMIT_NOTICE_MS = 5  # RaftConfig.commit_notice_ms from genesis (at most a heartbeat interval)
# Leadership transfer: the leader sends TimeoutNow only while more than E/2 is left before it
# abandons the transfer, and the target honours it only if the entry it names reached it at
# most E/4 before: so a target campaigns only while the leader still waits for it, E/4 to
# spare (the shell's tick granularity, clock rates).
TIMEOUT_NOW_MARGIN_DIVISOR = 2
TIMEOUT_NOW_VALID_DIVISOR = 4
# Forwarded read ids start at a random point below 2**62 (a process never counts its way to
# the wire limit of 2**63 - 1); two processes' ranges overlap with odds of about reads / 2**62.
READ_ID_SPREAD_SHIFT = 2
# How long a shell waits for a read to be released before it gives up (read_abandoned) and
# tells the client so: the runtime and the simulator both.
READ_TIMEOUT_MS = 5_000
_LONG_AGO = -(2**62)
CHANGE_CACHE_MAX = 1 << 16  # entries whose change-entry status is remembered


def log_key(index: int) -> bytes:
    return LOG_PREFIX + index.to_bytes(8, "big")


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _input(
    method: Callable[Concatenate[RaftNode, _P], _R],
) -> Callable[Concatenate[RaftNode, _P], _R]:
    """An input of the core. After the outermost one (an input may take others, as a Forward
    proposes its transactions; the shell hands a whole drain of events as one, inputs()), the
    core does what the input made due (RaftNode._advance: cut batches, commit, replicate,
    compact; what it produces waits for take_ready) and checks its invariants
    (RaftNode._check_invariants), whichever way the input returns. Inside a drain, the
    invariants are checked after each of its inputs too."""

    @functools.wraps(method)
    def checked(self: RaftNode, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if self._in_input:
            return method(self, *args, **kwargs)  # taken by another input
        self._in_input = True
        if self._inputs_open:  # one of a drain's inputs: _advance waits for the drain's end
            try:
                result = method(self, *args, **kwargs)
            finally:
                self._in_input = False
            self._check_invariants()
            return result
        self._inputs_open = True
        try:
            result = method(self, *args, **kwargs)
            self._advance()
        finally:
            self._inputs_open = self._in_input = False
        self._check_invariants()
        return result

    return checked


_CHANGE_MARK = CHANGE_FORMAT.encode()


def member_change_of(tx: Transaction) -> ChangeV2 | None:
    """The v2 member change a transaction carries, if it is a "change entry"'s transaction:
    its single op is the 4-element ["config", body, approvals, possessions] whose body
    decodes as a change of kind "members". Reads the raw op array of the body (whatever
    ledger/tx.py makes of it); never raises. Whether it will be *accepted* is decided at
    apply, so what this says is only a conservative guess (crashft rules R1 to R3)."""
    if _CHANGE_MARK not in tx.body:  # (cheap: nearly every transaction stops here)
        return None
    try:
        body = unpack(tx.body)
        if not isinstance(body, list) or len(body) != 5:
            return None
        ops = body[4]
        if not isinstance(ops, list) or len(ops) != 1:
            return None
        op = ops[0]
        if not isinstance(op, list) or len(op) != 4 or op[0] != "config":
            return None
        if not isinstance(op[1], bytes):
            return None
        change = ChangeV2.decode(op[1])
    except Exception:  # hostile input: never raise, it is no change
        return None
    return change if change.kind == MEMBERS else None


class RecoveryError(Exception):
    """Persisted Raft state that does not decode or does not fit together."""


@dataclass(frozen=True, slots=True)
class RaftConfig:
    me: int  # our member id
    # The configuration applied when the node starts (voters and learners by id); the node
    # follows later ones through reconfigure().
    members: Configuration
    chain_id: bytes
    params: Params
    seed: bytes  # randomness for election timeouts (the core never draws its own)
    election_ms: int = 1000  # E: election timeouts are drawn from [E, 2E)
    heartbeat_ms: int = 100
    pre_vote: bool = True
    check_quorum: bool = True
    inflight_max: int = 64  # appends in flight per follower (REPLICATE)
    append_bytes_max: int = 1 << 20
    append_entries_max: int = 256
    uncommitted_max: int = 64  # entries past the commit index before the leader stops batching
    log_keep: int = 512  # applied entries kept for slow followers; compaction above 2x this
    pool_max: int = 50_000  # client transactions waiting (leader) or being forwarded
    reads_max: int = 10_000
    forward_batch_max: int = 512
    blocks_per_fetch: int = 64
    # A commit index with no append to carry it waits this long for one (the next proposal
    # usually comes first: one message and one follower write per entry saved) before it
    # goes alone; 0 sends it at once.
    commit_notice_ms: int = 0

    @classmethod
    def from_genesis(cls, genesis: Genesis, me: int, seed: bytes, **overrides: Any) -> RaftConfig:
        """E = params.request_timeout_ms (the one timeout genesis names), heartbeats at E/10;
        applied entries kept for slow followers: 8 x params.window (512 by default)."""
        election = genesis.params.request_timeout_ms
        config = cls(
            me=me,
            members=genesis_configuration(genesis),
            chain_id=genesis.chain_id,
            params=genesis.params,
            seed=seed,
            election_ms=election,
            heartbeat_ms=max(1, election // 10),
            append_bytes_max=min(1 << 20, genesis.params.frame_bytes_max // 4),
            log_keep=max(16, 8 * genesis.params.window),
            commit_notice_ms=min(COMMIT_NOTICE_MS, max(1, election // 10)),
        )
        return replace(config, **overrides)


@dataclass(slots=True)
class RecoveredState:
    """What the shell hands a restarting node: its records and its ledger's position."""

    term: int = 0
    voted_for: int | None = None
    snap_index: int = 0
    snap_term: int = 0
    snap_height: int = 0
    snap_hash: bytes = b""
    entries: list[Entry] = field(default_factory=list)
    applied_index: int = 0  # the raft index of the last block in the ledger
    applied_term: int = 0
    height: int = 0
    block_hash: bytes = b""

    @classmethod
    def from_records(
        cls,
        records: list[tuple[bytes, bytes]],
        params: Params,
        *,
        height: int,
        block_hash: bytes,
        last_block_point: tuple[int, int] | None,
    ) -> RecoveredState:
        """Parse what earlier Readys persisted (keys in order); `last_block_point` is the
        (term, index) in the consensus metadata of the ledger's last block, if any."""
        state = cls(height=height, block_hash=block_hash, snap_hash=block_hash)
        entries: list[Entry] = []
        for key, value in records:
            try:
                if key == HARD_KEY:
                    a = as_list(unpack_canonical(value), 2, "raft hard state")
                    state.term = as_int(a[0], "term")
                    vote = as_int(a[1], "vote", lo=-1)
                    state.voted_for = None if vote < 0 else vote
                elif key == SNAP_KEY:
                    a = as_list(unpack_canonical(value), 4, "raft snapshot point")
                    state.snap_index = as_int(a[0], "index")
                    state.snap_term = as_int(a[1], "term")
                    state.snap_height = as_int(a[2], "height")
                    state.snap_hash = as_bytes(a[3], "hash", size=32)
                elif key.startswith(LOG_PREFIX):
                    entries.append(Entry.decode(value, params))
            except WireFormatError as exc:
                raise RecoveryError(f"record {key!r} does not decode: {exc}") from None
        entries = [e for e in entries if e.index > state.snap_index]
        for k, e in enumerate(entries):
            if e.index != state.snap_index + 1 + k:
                raise RecoveryError(
                    f"raft log records are not contiguous after index {state.snap_index}: "
                    f"found {e.index} at position {k}"
                )
        state.entries = entries
        if last_block_point is not None:
            state.applied_term, state.applied_index = last_block_point
        if state.snap_index > state.applied_index:
            state.applied_index, state.applied_term = state.snap_index, state.snap_term
        return state


@dataclass(frozen=True, slots=True)
class Outbound:
    dest: int | None  # None: every other member
    frame: bytes


@dataclass(frozen=True, slots=True)
class Serve:
    """A follower installing a snapshot asked for blocks from_height..to_height: the shell
    answers from its store (crashft.transfer.blocks_reply) with at most `count` blocks."""

    peer: int
    term: int
    from_height: int
    to_height: int
    count: int


@dataclass(frozen=True, slots=True)
class ReadState:
    read_id: int
    index: int  # answer once the ledger has applied this raft index


@dataclass(frozen=True, slots=True)
class Ready:
    """What the core asks of its shell since the last take_ready (node/executor.py carries it
    out, in the order stated there)."""

    records: list[tuple[bytes, bytes | None]]
    # May leave before `records` are durable (etcd's msgs, against msgsAfterAppend): a
    # leader's AppendEntries and heartbeats (Raft thesis 10.2.1: the leader writes its log in
    # parallel with replicating it; it counts itself only for entries the shell reported
    # durable with persisted()). Votes and acknowledgements never are.
    early: list[Outbound]
    messages: list[Outbound]  # only once `records` are durable
    committed: list[Entry]  # apply in order; report entry_applied() for each
    install: list[TransferredBlock]  # re-execute, check, store; report installed()
    serve: list[Serve]
    reads: list[ReadState]
    read_failures: list[tuple[int, str]]
    # (index, term) of the log's last entry when these records were taken, None without
    # records: once they are durable the shell reports node.persisted(*log_end).
    log_end: tuple[int, int] | None = None

    def __bool__(self) -> bool:
        return bool(
            self.records
            or self.early
            or self.messages
            or self.committed
            or self.install
            or self.serve
            or self.reads
            or self.read_failures
        )


@dataclass(slots=True)
class Progress:
    """The leader's view of one follower (etcd's tracker.Progress)."""

    match: int = 0
    next: int = 1
    state: str = PROBE
    probe_sent: bool = False  # PROBE: one append outstanding; wait for a reply or heartbeat
    inflight: deque[int] = field(default_factory=deque)  # last index of each append in flight
    recent_active: bool = True
    pending_snapshot: int = 0
    notice_due_ms: int | None = None  # a commit notice waits for an append until then
    snapshot_sent_ms: int = 0
    last_progress_ms: int = 0
    read_ctx: int = 0  # highest heartbeat context it echoed this term
    heard_ms: int | None = None  # its last append or heartbeat reply this term
    # Its wall clock in its last reply (which came at heard_ms, our monotonic clock): its clock
    # now is wall_ms + (now - heard_ms), whatever our own wall clock does.
    wall_ms: int | None = None
    # Its last heartbeat reply said it is behind its recovery gate: it cannot campaign, so it
    # is no transfer target (a TimeoutNow to it would only stop our proposals for E).
    recovering: bool = False
    # Its applied configuration epoch, from its last reply (-1: not heard this term): R1c.
    epoch: int = -1


@dataclass(slots=True)
class _Pending:
    tx: Transaction
    arrived_ms: int
    forwarded_ms: int | None = None
    forwards: int = 0
    held: str = ""  # why a member change waits in the pool (a reason; counted once per change)


@dataclass(slots=True)
class _Install:
    leader: int
    index: int
    index_term: int
    height: int
    block_hash: bytes
    fetch_due_ms: int = 0
    awaiting: bool = False


@dataclass(slots=True)
class _TermRecovery:
    """What a recovering member has learned (module docstring, "Recovery"); one report each."""

    nonce: bytes
    needed: int  # a majority of the other members, none of them recovering
    reports: dict[int, int] = field(default_factory=dict)  # peer -> highest term it reported
    # Peers whose answers said they are recovering too (not counted; asked again until they
    # answer as members that are not): bounded by n.
    recovering_peers: set[int] = field(default_factory=set)
    floor: int | None = None  # the lowest term it may vote in, once `needed` reports are in
    start_ms: int | None = None  # its first tick: queries wait 2E from here
    asked_ms: int = _LONG_AGO


@dataclass(slots=True)
class _Read:
    ctx: int
    requester: int
    read_id: int
    index: int


class RaftNode:
    def __init__(
        self,
        config: RaftConfig,
        signer: Signer,
        *,
        tx_ok: Callable[[Transaction], bool] = lambda tx: True,
        recovered: RecoveredState | None = None,
        executed: Callable[[list[bytes]], Collection[bytes]] = lambda tx_ids: (),
        recovering: bool = False,
        change_of: Callable[[Transaction], ChangeV2 | None] = member_change_of,
    ) -> None:
        """`tx_ok`: may the leader order this transaction (its signature). `executed`: which of
        these ids the shell's ledger has executed, its last blocks written or not (a leader
        orders none of them again). `recovering`: start behind the recovery gate (module
        docstring, "Recovery"): the records may be older than what this member sent (a
        restored backup, lost state). `change_of`: the member change a transaction carries, if
        it makes its entry a change entry (rules R1 to R3, "Membership")."""
        assert 0 <= config.me < m.MEMBER_MAX
        self.config = config
        self.me = config.me
        self.members = config.members  # the applied configuration (reconfigure)
        self._change_of = change_of
        # Removal: the index of the entry whose application removed us, once applied.
        self.removed_at: int | None = None
        # Whether the entry at (index, term) is a change entry, once asked (pruned as applied).
        self._change_entries: dict[tuple[int, int], bool] = {}
        self._signer = signer
        self._tx_ok = tx_ok
        self._executed = executed
        rec = recovered or RecoveredState()
        # The last entry the shell reported applied (entry_applied, installed): a change entry
        # takes effect only there (configuration on apply).
        self._shell_applied = rec.applied_index
        self.term = rec.term
        self.voted_for = rec.voted_for
        self.role = FOLLOWER
        self.leader: int | None = None
        self.log = RaftLog(rec.snap_index, rec.snap_term)
        for e in rec.entries:
            self.log.append(e)
        self.applied = rec.applied_index
        self.commit = self.applied
        self.height = rec.height
        self.block_hash = rec.block_hash
        self._snap_height = rec.snap_height if rec.snap_index else 0
        self._snap_hash = rec.snap_hash
        # (height, hash) after each applied entry still in the log: compaction points
        self._points: dict[int, tuple[int, bytes]] = {}
        # The log records on disk (contiguous): what _records() must delete when they go.
        self._disk_first = rec.entries[0].index if rec.entries else self.log.first_index
        self._disk_last = rec.entries[-1].index if rec.entries else self.log.last_index
        self._dirty_from: int | None = None
        # The last index of the log as far as it is durable (recovered entries are; the shell
        # reports later writes with persisted()): what the leader counts itself for.
        self._stable_last = self.log.last_index
        self._hard_dirty = False
        self._snap_dirty = False
        if self.log.term_at(self.applied) != rec.applied_term:
            # The ledger is ahead of the log or disagrees with it. The runtime writes installed
            # blocks and the new compaction point in one transaction, so this takes a damaged
            # or foreign store; what the ledger holds is committed, so restart the log there.
            self.log.restore(self.applied, rec.applied_term)
            self._snap_height, self._snap_hash = rec.height, rec.block_hash
            self._snap_dirty = True
            self._mark_dirty(self.applied + 1)
        if self.log.last_term > self.term:
            # Our log or ledger holds an entry of a term our hard state never reached: records
            # older than what they describe (a damaged store; a shell that wrote blocks before
            # the hard state, as the simulator's broken shell does). We were in that term
            # when we took the entry: take it again, durably, with no vote, as the first
            # message of that term would make us do (a term below our own last entry's broke
            # the core's invariants). The votes lost with the records are the shell's to
            # guard against: a store it knows to be damaged starts in recovery (`recovering`).
            self.term, self.voted_for = self.log.last_term, None
            self._hard_dirty = True

        self._now = 0
        self._wall = 0
        self._started = False
        self._election_deadline = 0
        self._heartbeat_due = 0
        self._check_quorum_due = 0
        self._last_leader_contact: int | None = None
        self._rng_counter = 0

        self._votes: dict[int, bool] = {}
        # Our campaign's request, asked again of the members that have not answered
        # (_ask_again), and when next.
        self._vote_request: m.Vote | None = None
        self._vote_again_ms = 0
        self._progress: dict[int, Progress] = {}
        self._transferee: int | None = None
        self._transfer_deadline = 0
        self._timeout_now_sent = False
        self._transfer_allowed_ms = 0  # no operator's transfer accepted before (one per E)
        self._transfer_by_operator = False  # the one under way: an operator's, or ours (clock)
        # Members a transfer to which was abandoned while we lead (they did not catch up or
        # did not campaign), with when: a clock hand-off tries the others first (bounded by n).
        self._transfer_failed_ms: dict[int, int] = {}
        self.last_transfer = ""  # how the last transfer we started ended, if it did not
        # When the last entry of our log, (index, term), became durable here (None: not yet):
        # a TimeoutNow is honoured only while that is recent (_on_timeout_now). persisted()
        # stamps it with our clock as last ticked, and the first tick after restamps it: the
        # shell ticks at once after a durable write, the core learning the time no other way.
        self._last_entry = (self.log.last_index, self.log.last_term)
        self._last_entry_ms: int | None = None
        self._last_entry_restamp = False
        self._commit_dirty = False

        self._pool: dict[bytes, _Pending] = {}
        self._uncommitted_ids: set[bytes] = set()
        self._install: _Install | None = None

        self._read_ctx = 0
        self._reads: deque[_Read] = deque()
        self._reads_unready: deque[tuple[int, int]] = deque()  # (requester, read_id)
        self._read_heartbeat = False
        # Reads forwarded to the leader, by the id they carry on the wire -> the shell's read
        # id. Wire ids count up from a random start drawn from the seed (a new one for each
        # process): a ReadReply to a read of this member's previous process, matched by id
        # alone, released a read issued after the restart at an index older than it.
        self._forwarded_reads: dict[int, int] = {}
        self._read_wire_next = 1 + (
            int.from_bytes(sha256(config.seed + b"/read ids")[:8], "big") >> READ_ID_SPREAD_SHIFT
        )

        self._inputs_open = False  # inside an input (_input) or a drain (inputs())
        self._in_input = False  # inside an input (_input)
        # A follower's pool may hold transactions to forward: a new one arrived, the leader
        # changed, or a tick (forwards are retried after 2E) since the last forward pass.
        self._forward_due = True
        self._forward_scan_ms = 0  # the next tick that scans the pool for retries
        # What take_ready drains: Ready's fields, gathered by the inputs (_advance).
        self._records_out: list[tuple[bytes, bytes | None]] = []
        self._log_end: tuple[int, int] | None = None
        self._early_out: list[Outbound] = []
        self._out: list[Outbound] = []
        self._committed_out: list[Entry] = []
        self._install_out: list[TransferredBlock] = []
        self._serve: list[Serve] = []
        self._ready_reads: list[ReadState] = []
        self._read_failures: list[tuple[int, str]] = []

        self.rejected: Counter[str] = Counter()
        self.elections = 0
        self.leader_commit = 0  # the highest commit index a leader told us (status: "behind")
        self.leader_changes = 0
        self.step_downs: list[str] = []
        self.blocks_installed = 0
        self._install_problem = ""
        self.last_election_reason = ""
        voters_else = self._other_voters()
        self._recovery = (
            _TermRecovery(
                sha256(config.seed + b"/recovery")[: m.NONCE_BYTES], len(voters_else) // 2 + 1
            )
            if recovering and voters_else
            else None
        )
        self._query_answered_ms: dict[int, int] = {}
        # (term, vote) at the last invariant check: terms never go back, one vote per term.
        self._checked_vote = (self.term, self.voted_for)
        # Clocks. As follower: ours against the times our leader stamped (ledger/clock.py).
        # As leader: ours against the median of a majority's (_clock_band); the hand-offs a
        # disagreement caused, for the log (bounded).
        self.clock = ClockOffset(2 * config.params.timestamp_skew_ms)
        self.clock_handoffs: deque[str] = deque(maxlen=8)
        self.clock_handoff_count = 0
        self._clock_handoff_to: int | None = None
        # As leader: why our clock keeps us from proposing, with no one to hand leadership to.
        self.clock_stuck = ""
        self._advance()  # what a recovered state makes due waits in the first Ready

    # --- derived -----------------------------------------------------------------------------

    @property
    def recovering(self) -> bool:
        """Started from records older than what it sent, and not yet past the recovery gate."""
        return self._recovery is not None

    @property
    def is_leader(self) -> bool:
        return self.role == LEADER

    @property
    def n(self) -> int:
        """The voters of the applied configuration: what every majority is of."""
        return self.members.n

    @property
    def majority(self) -> int:
        return self.members.n // 2 + 1

    @property
    def epoch(self) -> int:
        """The applied configuration's epoch."""
        return self.members.epoch

    @property
    def peers(self) -> tuple[int, ...]:
        return tuple(mi.id for mi in self.members.members)

    @property
    def is_voter(self) -> bool:
        return self._is_voter(self.me)

    @property
    def removed(self) -> bool:
        """We applied a configuration without us: we neither campaign nor answer votes (the
        shell lingers, then exits 0)."""
        return self.removed_at is not None

    def _is_voter(self, member: int) -> bool:
        info = self.members.member(member)
        return info is not None and info.role == VOTER

    def _others(self) -> list[int]:
        """Every other member of the applied configuration, voters and learners, by id: who
        gets appends, heartbeats and snapshots."""
        return [mi.id for mi in self.members.members if mi.id != self.me]

    def _other_voters(self) -> list[int]:
        return [mi.id for mi in self.members.voters if mi.id != self.me]

    def _sole_voter(self) -> bool:
        voters = self.members.voters
        return len(voters) == 1 and voters[0].id == self.me

    # --- input: time --------------------------------------------------------------------------

    @_input
    def tick(self, mono_ms: int, wall_ms: int) -> None:
        self._now = mono_ms
        self._wall = wall_ms
        if mono_ms >= self._forward_scan_ms:
            # Forwards not committed are retried after 2E: a pool scan every E/2 finds them.
            self._forward_scan_ms = mono_ms + self.config.election_ms // 2
            self._forward_due = True
        if self._last_entry_restamp:
            self._last_entry_restamp = False
            self._last_entry_ms = mono_ms  # the write became durable since the last tick
        if not self._started:
            self._started = True
            self._reset_election_timer()
            if self._sole_voter():
                self._campaign(pre=False)
            return
        if self.role == LEADER:
            self._tick_leader()
        else:
            if self._now >= self._election_deadline:
                self.last_election_reason = (
                    f"no message from leader {self.leader} for an election timeout"
                    if self.leader is not None
                    else "no leader"
                )
                self._campaign(pre=self.config.pre_vote)
            elif self.role in (PRE_CANDIDATE, CANDIDATE) and self._now >= self._vote_again_ms:
                self._ask_again()
            self._tick_follower()
        if self._recovery is not None:
            self._recovery_tick()

    def _tick_leader(self) -> None:
        cfg = self.config
        if self._now >= self._heartbeat_due:
            self._broadcast_heartbeat()
        if self._now >= self._check_quorum_due:
            self._check_quorum_due = self._now + cfg.election_ms
            active = int(self.is_voter) + sum(
                1 for p in self._other_voters() if self._progress[p].recent_active
            )
            if cfg.check_quorum and active < self.majority:
                self.step_downs.append(
                    f"term {self.term}: heard from {active} of {self.n} members within "
                    f"{cfg.election_ms} ms (check quorum)"
                )
                del self.step_downs[:-8]
                self._become_follower(self.term, None)
                return
            for p in self._others():
                self._progress[p].recent_active = False
        if self._transferee is not None and self._now >= self._transfer_deadline:
            self.last_transfer = (
                f"term {self.term}: transfer to member {self._transferee} abandoned after "
                f"{cfg.election_ms} ms ("
                + (
                    "it did not campaign"
                    if self._timeout_now_sent
                    else "it did not catch up in time"
                )
                + ")"
            )
            self._transfer_failed_ms[self._transferee] = self._now
            self._transferee = None
        if self.removed:
            if self._transferee is None:  # (the hand-over was abandoned, or never began)
                self._step_down_removed()
            return
        if self._transferee is None:
            self._clock_handoff_to = None
            self._maybe_hand_off_for_clock()
        for p in self._others():
            pr = self._progress[p]
            if pr.state == SNAPSHOT and self._now - pr.snapshot_sent_ms >= cfg.election_ms:
                self._send_snapshot(p)
            if pr.notice_due_ms is not None and self._now >= pr.notice_due_ms:
                pr.notice_due_ms = None
                if pr.state == REPLICATE:  # (a probed follower learns it once it matches)
                    self._send_commit(p)

    def _tick_follower(self) -> None:
        inst = self._install
        if inst is not None and not inst.awaiting and self._now >= inst.fetch_due_ms:
            self._fetch_blocks()

    def _random_below(self, k: int) -> int:
        self._rng_counter += 1
        h = sha256(self.config.seed + self._rng_counter.to_bytes(8, "big"))
        return int.from_bytes(h[:8], "big") % max(1, k)

    def _reset_election_timer(self) -> None:
        e = self.config.election_ms
        self._election_deadline = self._now + e + self._random_below(e)

    # --- input: messages ----------------------------------------------------------------------

    @_input
    def receive(self, sender: int, msg: m.Message | bytes) -> None:
        if not 0 <= sender < m.MEMBER_MAX or sender == self.me:
            self.rejected[drop.UNKNOWN_SENDER] += 1
            return
        if isinstance(msg, bytes):
            try:
                msg = m.decode(msg, self.config.params)
            except WireFormatError:
                self.rejected[drop.MALFORMED] += 1
                return
        if self.members.member(sender) is None and not isinstance(msg, m.FROM_LEADER):
            # Not in our applied configuration (R3): a removed member that has not applied its
            # removal yet gets no vote and moves no term. A leader's messages are taken from
            # any id: we may not have applied the configuration that made it a member, and
            # only its entries bring us there (its term was won by a majority of voters).
            self.rejected[drop.NOT_MEMBER] += 1
            return
        if isinstance(msg, m.Vote) and not self._is_voter(sender):
            self.rejected[drop.VOTE_FROM_LEARNER] += 1  # (learners never campaign)
            return
        term = getattr(msg, "term", None)
        if term is not None and not self._term_gate(sender, msg, term):
            return
        match msg:
            case m.Vote():
                self._on_vote(sender, msg)
            case m.VoteReply():
                self._on_vote_reply(sender, msg)
            case m.Append():
                self._on_append(sender, msg)
            case m.AppendReply():
                self._on_append_reply(sender, msg)
            case m.Heartbeat():
                self._on_heartbeat(sender, msg)
            case m.HeartbeatReply():
                self._on_heartbeat_reply(sender, msg)
            case m.Snapshot():
                self._on_snapshot(sender, msg)
            case m.Fetch():
                self._on_fetch(sender, msg)
            case m.Blocks():
                self._on_blocks(sender, msg)
            case m.TimeoutNow():
                self._on_timeout_now(sender, msg)
            case m.Forward():
                self._on_forward(sender, msg)
            case m.Read():
                self._on_read(sender, msg)
            case m.ReadReply():
                self._on_read_reply(sender, msg)
            case m.TermQuery():
                self._on_term_query(sender, msg)
            case m.TermReport():
                self._on_term_report(sender, msg)

    def _in_lease(self) -> bool:
        if not self.config.check_quorum:
            return False
        if self.role == LEADER:
            return True
        return (
            self.leader is not None
            and self._last_leader_contact is not None
            and self._now - self._last_leader_contact < self.config.election_ms
        )

    def _term_gate(self, sender: int, msg: m.Message, term: int) -> bool:
        """etcd's Step preamble: what a message's term does to us, and whether to go on."""
        if term > self.term:
            if isinstance(msg, m.Vote):
                if not msg.transfer and self._in_lease():
                    self.rejected[drop.VOTE_IN_LEASE] += 1
                    return False
                if msg.prevote:
                    return True  # a PreVote never changes our term
            if isinstance(msg, m.VoteReply) and msg.prevote and msg.granted:
                return True  # granted at the term the candidate asked about
            self._become_follower(term, sender if isinstance(msg, m.FROM_LEADER) else None)
            return True
        if term < self.term:
            if isinstance(msg, m.Append | m.Heartbeat) and (
                self.config.pre_vote or self.config.check_quorum
            ):
                # A stale leader (or one that missed our term bump): tell it our term.
                self._send(
                    sender, m.AppendReply(self.term, False, 0, 0, self._wall_out, self.epoch)
                )
            elif isinstance(msg, m.Vote) and msg.prevote:
                self._send(sender, m.VoteReply(self.term, False, True))
            self.rejected[drop.STALE_TERM] += 1
            return False
        return True

    # --- elections ----------------------------------------------------------------------------

    def _become_follower(self, term: int, leader: int | None) -> None:
        was_leader = self.role == LEADER
        if term != self.term:
            self.term = term
            self.voted_for = None
            self._hard_dirty = True
        self.role = FOLLOWER
        if leader != self.leader:
            self.leader_changes += 1
            self._reforward_all()
        self.leader = leader
        self._forward_due = True
        if leader is not None:
            self._last_leader_contact = self._now
        self._reset_election_timer()
        if was_leader:
            self._stop_leading()
        if self._install is not None and self._install.leader != leader:
            self._install = None

    def _stop_leading(self) -> None:
        self._progress.clear()
        self._transferee = None
        self.clock_stuck = ""
        for r in self._reads:
            self._fail_read(r.requester, r.read_id, "leadership lost")
        for requester, read_id in self._reads_unready:
            self._fail_read(requester, read_id, "leadership lost")
        self._reads.clear()
        self._reads_unready.clear()
        # Transactions of our uncommitted entries may be lost with them: keep them, and
        # forward them to the next leader if they are not committed within 2E.
        for index in range(self.commit + 1, self.log.last_index + 1):
            for tx in self.log.entry(index).txs:
                if tx.id not in self._pool and len(self._pool) < self.config.pool_max:
                    self._pool[tx.id] = _Pending(tx, self._now, forwarded_ms=self._now, forwards=1)
        self._uncommitted_ids.clear()

    def _campaign(self, *, pre: bool, transfer: bool = False) -> None:
        if self._recovery is not None:
            # Recovering: we may have voted in the term we would ask for, and our log may lack
            # entries we acknowledged; we ask for no vote until past the recovery gate.
            self._reset_election_timer()
            return
        if not self._may_campaign():
            self._reset_election_timer()
            return
        self.elections += 1
        self._votes = {self.me: True}
        self.leader = None
        self._reset_election_timer()
        if pre:
            self.role = PRE_CANDIDATE
            term = self.term + 1
        else:
            self.role = CANDIDATE
            self.term += 1
            self.voted_for = self.me
            self._hard_dirty = True
            term = self.term
        if self._tally():
            return
        vote = m.Vote(term, self.log.last_index, self.log.last_term, pre, transfer, self.epoch)
        self._send(None, vote)
        self._vote_request = vote
        self._vote_again_ms = self._now + self.config.heartbeat_ms

    def _ask_again(self) -> None:
        """Ask the members that have not answered our campaign again, every heartbeat
        interval (the paper retries an RPC that gets no answer, §5.1). Asked once, a lost
        request or answer cost the whole election (E to 2E until the next): with only a
        majority up every election needs every vote, and a lossy network lost one in each of
        six elections in a row (the simulator's flapping mixes, n = 5 with two down). A voter
        answers a repeat as it would the first: it granted its vote to us (voted_for) or it
        says no; a PreVote is judged afresh."""
        assert self._vote_request is not None, "a candidate without a campaign"
        self._vote_again_ms = self._now + self.config.heartbeat_ms
        for peer in self._other_voters():
            if peer not in self._votes:
                self._send(peer, self._vote_request)

    def _tally(self) -> bool:
        """Act on the votes so far; True if the election is decided."""
        # Only the voters of our applied configuration count (a reply of one that left since
        # it answered is dropped with it).
        granted = sum(1 for p, v in self._votes.items() if v and self._is_voter(p))
        rejected = sum(1 for p, v in self._votes.items() if not v and self._is_voter(p))
        if granted >= self.majority:
            if self.role == PRE_CANDIDATE:
                self._campaign(pre=False)
            else:
                self._become_leader()
            return True
        if rejected >= self.majority:
            self._become_follower(self.term, None)
            return True
        return False

    def _on_vote(self, sender: int, msg: m.Vote) -> None:
        if self._recovery is not None:
            # Recovering: this may be a second vote in its term, or our log may lack an entry
            # we acknowledged (and the candidate too). No grant, PreVote included.
            self.rejected[drop.VOTE_WHILE_RECOVERING] += 1
            self._send(sender, m.VoteReply(self.term, False, msg.prevote))
            return
        refusal = self._vote_refusal(sender, msg)
        if refusal is not None:
            self.rejected[refusal] += 1
            if refusal != drop.VOTE_NOT_VOTER:  # (a learner or removed member stays silent)
                self._send(sender, m.VoteReply(self.term, False, msg.prevote))
            return
        can_vote = (
            self.voted_for == sender
            or (self.voted_for is None and self.leader is None)
            or (msg.prevote and msg.term > self.term)
        )
        if can_vote and rules.log_up_to_date(
            self.log.last_term, self.log.last_index, msg.last_term, msg.last_index
        ):
            self._send(sender, m.VoteReply(msg.term, True, msg.prevote))
            if not msg.prevote:
                if self.voted_for != sender:  # a candidate asking again costs no write
                    self.voted_for = sender
                    self._hard_dirty = True
                self._reset_election_timer()
        else:
            self._send(sender, m.VoteReply(self.term, False, msg.prevote))

    def _may_campaign(self) -> bool:
        """Whether we may start an election: only a voter of our applied configuration (a
        learner never; a removed member never again), and (R3) not while our log holds a
        committed change entry we have not applied: we would campaign, and count votes, with
        a configuration already replaced (etcd's hasUnappliedConfChanges)."""
        if not self.is_voter or self.removed:
            return False
        return not self._change_between(self._shell_applied, self.commit)

    def _vote_refusal(self, sender: int, msg: m.Vote) -> str | None:
        """Why a (pre-)vote request gets no grant for membership's sake, if it does not: we
        are no voter (a learner, or removed: we do not answer), the candidate is no voter of
        our applied configuration, or (R3) its applied epoch is below ours: it may count a
        majority of a configuration two changes old."""
        if not self.is_voter or self.removed:
            return drop.VOTE_NOT_VOTER
        if not self._is_voter(sender):
            return drop.NOT_MEMBER
        if msg.epoch < self.epoch:
            return drop.VOTE_STALE_EPOCH
        return None

    def _on_vote_reply(self, sender: int, msg: m.VoteReply) -> None:
        if self.role == PRE_CANDIDATE and msg.prevote and msg.term == self.term + 1:
            self._votes[sender] = msg.granted
            self._tally()
        elif self.role == PRE_CANDIDATE and msg.prevote and not msg.granted:
            self._votes[sender] = False
            self._tally()
        elif self.role == CANDIDATE and not msg.prevote and msg.term == self.term:
            self._votes[sender] = msg.granted
            self._tally()

    def _become_leader(self) -> None:
        assert self.role == CANDIDATE or self._sole_voter()
        self.role = LEADER
        if self.leader != self.me:
            self.leader_changes += 1
        self.leader = self.me
        self._install = None
        self._progress = {
            p: Progress(next=self.log.last_index + 1, last_progress_ms=self._now)
            for p in self._others()
        }
        self._check_quorum_due = self._now + self.config.election_ms
        self._transfer_allowed_ms = self._now + self.config.election_ms
        self._transfer_failed_ms.clear()
        self._read_ctx = 0
        self._uncommitted_ids = {
            tx.id
            for i in range(self.commit + 1, self.log.last_index + 1)
            for tx in self.log.entry(i).txs
        }
        # Those commit with our log (a leader commits all of it once an entry of its term
        # does): ordering them again made duplicate entries. _stop_leading put them back in
        # the pool in case another leader's log lacked them.
        for i in range(self.commit + 1, self.log.last_index + 1):
            for tx in self.log.entry(i).txs:
                self._pool.pop(tx.id, None)
        # Transactions we were forwarding are ours to order now.
        for pending in self._pool.values():
            pending.forwarded_ms = None
        self.log.append(Entry(self.term, self.log.last_index + 1))  # the no-op (§8)
        self._mark_dirty(self.log.last_index)
        for p in self._others():
            self._send_append(p, allow_empty=True)
        self._heartbeat_due = self._now + self.config.heartbeat_ms

    def _on_timeout_now(self, sender: int, msg: m.TimeoutNow) -> None:
        if self.role == LEADER or sender != self.leader:
            self.rejected[drop.TIMEOUT_NOW_NOT_FROM_LEADER] += 1
            return
        # A TimeoutNow cannot be recalled: one delayed or duplicated past the leader's transfer
        # deadline made us campaign (voters ignore their lease for it) and deposed a leader
        # that had given up the transfer and gone on leading. So it names the leader's last
        # entry, and we act only if our log ends exactly there (nothing the leader appended
        # since has reached us) and that entry became durable here at most E/4 ago on our
        # clock. Our acknowledgement of it left after that write (and the shell's tick after
        # it), the leader sent this only after that acknowledgement and while more than E/2
        # was left before its deadline: whatever we honour, we honour before it abandons the
        # transfer, E/4 to spare (tick granularity, clock rates). The window counts from the
        # write, not from when the append arrived: counted from the arrival, a disk slower
        # than E/4 per write made every TimeoutNow stale, and no transfer (nor a clock
        # hand-off) could complete. The leader appends a no-op when a transfer begins, so in
        # an idle network that entry is fresh.
        point = (msg.index, msg.term)
        if (
            point != (self.log.last_index, self.log.last_term)
            or point != self._last_entry
            or self._last_entry_ms is None
            or self._now - self._last_entry_ms
            > self.config.election_ms // TIMEOUT_NOW_VALID_DIVISOR
        ):
            self.rejected[drop.TIMEOUT_NOW_STALE] += 1
            return
        self.last_election_reason = f"leadership transferred by {sender}"
        self._campaign(pre=False, transfer=True)

    # --- replication: leader side -------------------------------------------------------------

    def _send_append(self, peer: int, *, allow_empty: bool = False) -> bool:
        """Send what `peer` needs next, within flow control; True if something was sent."""
        cfg = self.config
        pr = self._progress[peer]
        if pr.state == SNAPSHOT:
            return False
        if pr.state == PROBE and pr.probe_sent:
            return False
        if pr.state == REPLICATE and len(pr.inflight) >= cfg.inflight_max:
            return False
        prev = pr.next - 1
        prev_term = self.log.term_at(prev)
        if prev_term is None:
            if prev < self.log.snap_index:
                self._send_snapshot(peer)
                return True
            prev = self.log.last_index  # next ran past our log (cannot, but be safe)
            pr.next = prev + 1
            prev_term = self.log.last_term
        entries: list[Entry] = []
        if pr.next <= self.log.last_index:
            entries = self.log.slice(
                pr.next, self.log.last_index, cfg.append_bytes_max, cfg.append_entries_max
            )
        if not entries and not allow_empty:
            return False
        commit = self.commit
        pr.notice_due_ms = None  # this append carries the commit index
        self._send(peer, m.Append(self.term, prev, prev_term, commit, tuple(entries)))
        if pr.state == REPLICATE and entries:
            pr.next = entries[-1].index + 1
            pr.inflight.append(entries[-1].index)
        elif pr.state == PROBE:
            pr.probe_sent = True
        return True

    def _send_snapshot(self, peer: int) -> None:
        pr = self._progress[peer]
        pr.state = SNAPSHOT
        pr.pending_snapshot = self.log.snap_index
        pr.snapshot_sent_ms = self._now
        pr.inflight.clear()
        self._send(
            peer,
            m.Snapshot(
                self.term,
                self.log.snap_index,
                self.log.snap_term,
                self._snap_height,
                self._snap_hash,
            ),
        )

    def _replicate(self, peer: int) -> None:
        pr = self._progress[peer]
        if pr.state == REPLICATE:
            while pr.next <= self.log.last_index and self._send_append(peer):
                pass
        else:
            self._send_append(peer)

    def _on_append_reply(self, sender: int, msg: m.AppendReply) -> None:
        if self.role != LEADER:
            return
        pr = self._progress[sender]
        pr.recent_active = True
        pr.heard_ms, pr.wall_ms = self._now, msg.wall_ms
        pr.epoch = msg.epoch
        if msg.success:
            if msg.index > self.log.last_index:
                self.rejected[drop.APPEND_REPLY_BEYOND_LOG] += 1
                return
            if msg.index > pr.match:
                pr.match = msg.index
                pr.last_progress_ms = self._now
            pr.next = max(pr.next, pr.match + 1)
            while pr.inflight and pr.inflight[0] <= msg.index:
                pr.inflight.popleft()
            if pr.state == PROBE or (pr.state == SNAPSHOT and pr.match >= pr.pending_snapshot):
                pr.state = REPLICATE
                pr.next = pr.match + 1
                pr.inflight.clear()
            pr.probe_sent = False
            if self._maybe_commit():
                self._commit_dirty = True
            self._replicate(sender)
            if sender == self._transferee and pr.match == self.log.last_index:
                self._send_timeout_now(sender)
            return
        # A rejection: msg.index is the prev_index it refused, msg.hint where its log can
        # match ours (at most its last index).
        if pr.state == REPLICATE:
            if msg.index <= pr.match:
                return  # stale (etcd's MaybeDecrTo)
            pr.state = PROBE
            pr.next = pr.match + 1
            pr.inflight.clear()
        elif pr.state == PROBE:
            if msg.index != pr.next - 1:
                return  # stale: not the answer to our current probe
            if msg.index <= pr.match and msg.hint < msg.index:
                # It refuses an entry it acknowledged: it lost it (a disk that lied about
                # fsync, a restored backup). Repair it from what it holds, or it is refused
                # forever.
                self.rejected[drop.FOLLOWER_LOST_ENTRIES] += 1
                pr.match = msg.hint
                pr.next = msg.hint + 1
            else:
                before = pr.next
                pr.next = max(min(msg.index, msg.hint + 1), pr.match + 1)
                if pr.next == before:
                    return  # nothing learnt: re-probe at the next heartbeat, not in a loop
        else:
            return
        pr.probe_sent = False
        self._send_append(sender)

    def _maybe_commit(self) -> bool:
        """Commit by counting, only entries of our own term (Figure 8: rules.commit_index); we
        count ourselves for what the shell reported durable (persisted)."""
        matches = [self._stable_last] if self.is_voter else []
        matches += [self._progress[p].match for p in self._other_voters()]
        if not matches:
            return False  # (no voter: cannot happen in a valid configuration)
        commit = rules.commit_index(matches, self.log.term_at, self.term, self.commit)
        if commit > self.commit:
            self.commit = commit
            return True
        return False

    def _broadcast_heartbeat(self) -> None:
        self._heartbeat_due = self._now + self.config.heartbeat_ms
        if self._reads or self._read_heartbeat:
            self._read_ctx += 1
            self._read_heartbeat = False
        for p in self._others():
            pr = self._progress[p]
            commit = min(pr.match, self.commit)
            self._send(p, m.Heartbeat(self.term, commit, self._read_ctx))

    def _on_heartbeat_reply(self, sender: int, msg: m.HeartbeatReply) -> None:
        if self.role != LEADER:
            return
        pr = self._progress[sender]
        pr.recent_active = True
        pr.heard_ms, pr.wall_ms = self._now, msg.wall_ms
        pr.recovering = msg.recovering
        pr.epoch = msg.epoch
        if msg.ctx > pr.read_ctx:
            pr.read_ctx = min(msg.ctx, self._read_ctx)
            self._release_reads()
        if pr.match < self.log.last_index:
            if pr.state == PROBE:
                pr.probe_sent = False
            elif (
                pr.state == REPLICATE
                and self._now - pr.last_progress_ms >= 2 * self.config.heartbeat_ms
            ):
                # Appends were lost (a real network drops them when a connection breaks):
                # go back to probing from what it acknowledged.
                pr.state = PROBE
                pr.next = pr.match + 1
                pr.inflight.clear()
                pr.probe_sent = False
            self._send_append(sender)

    # --- replication: follower side -----------------------------------------------------------

    def _heard_from_leader(self, sender: int) -> None:
        if self.role != FOLLOWER or self.leader != sender:
            self._become_follower(self.term, sender)
        self._last_leader_contact = self._now
        self._reset_election_timer()

    def _on_append(self, sender: int, msg: m.Append) -> None:
        self._heard_from_leader(sender)
        self.leader_commit = max(self.leader_commit, msg.commit)  # (status only)
        prev, prev_term, entries = msg.prev_index, msg.prev_term, msg.entries
        if prev < self.commit:
            # Everything up to our commit index is committed and so identical: skip it.
            skip = self.commit - prev
            if skip >= len(entries):
                self._send(
                    sender,
                    m.AppendReply(self.term, True, self.commit, 0, self._wall_out, self.epoch),
                )
                return
            entries = entries[skip:]
            prev = self.commit
            term = self.log.term_at(prev)
            assert term is not None
            prev_term = term
        if not rules.entry_matches(self.log.term_at, prev, prev_term):
            hint = self.log.last_index
            if self.log.term_at(prev) is not None:
                # etcd's findConflictByTerm: the last index whose term is <= prev_term
                hint = min(prev - 1, self.log.last_index)
                while hint > self.commit:
                    t = self.log.term_at(hint)
                    if t is None or t <= prev_term:
                        break
                    hint -= 1
            self._send(
                sender,
                m.AppendReply(self.term, False, msg.prev_index, hint, self._wall_out, self.epoch),
            )
            self.rejected[drop.APPEND_MISMATCH] += 1
            return
        fresh = [e for e in entries if e.index > msg.commit and not e.is_noop]
        if fresh and fresh[-1].index > self.log.last_index:
            # A batch not yet committed when the leader sent it, new to us: stamped recently
            # by a leader whose clock agreed with a majority's, so how far ours is from it
            # tells whether ours is off (ledger/clock.py; late or re-sent entries excluded).
            self.clock.add(self._wall - fresh[-1].proposed_ms)
        changed = self.log.merge(prev, entries)
        if changed is not None:
            if changed <= self.commit:
                self.rejected[drop.APPEND_REWRITES_COMMITTED] += (
                    1  # cannot happen with honest peers
                )
            self._mark_dirty(changed)
        last_new = prev + len(entries)
        self.commit = max(self.commit, min(msg.commit, last_new))
        last = (self.log.last_index, self.log.last_term)
        if last != self._last_entry:
            # Fresh from when it is durable (persisted), not from now: the write may take long.
            self._last_entry, self._last_entry_ms = last, None
            self._last_entry_restamp = False
        self._send(sender, m.AppendReply(self.term, True, last_new, 0, self._wall_out, self.epoch))

    def _on_heartbeat(self, sender: int, msg: m.Heartbeat) -> None:
        self._heard_from_leader(sender)
        self.leader_commit = max(self.leader_commit, msg.commit)  # (status only)
        self.commit = max(self.commit, min(msg.commit, self.log.last_index))
        self._send(
            sender,
            m.HeartbeatReply(
                self.term, msg.ctx, self._wall_out, self._recovery is not None, self.epoch
            ),
        )

    def _mark_dirty(self, index: int) -> None:
        """The log changed from `index` on: those entries are to be written, so not durable."""
        if self._dirty_from is None or index < self._dirty_from:
            self._dirty_from = index
        self._stable_last = min(self._stable_last, index - 1)

    # --- snapshots ----------------------------------------------------------------------------

    def _on_snapshot(self, sender: int, msg: m.Snapshot) -> None:
        self._heard_from_leader(sender)
        if msg.index <= self.commit:
            self._send(
                sender, m.AppendReply(self.term, True, self.commit, 0, self._wall_out, self.epoch)
            )
            return
        if self.log.term_at(msg.index) == msg.index_term:
            self.commit = msg.index  # we hold it: fast-forward
            self._send(
                sender, m.AppendReply(self.term, True, msg.index, 0, self._wall_out, self.epoch)
            )
            return
        if msg.height < self.height:
            self.rejected[drop.SNAPSHOT_BELOW_LEDGER] += 1
            return
        inst = self._install
        if inst is not None and inst.index == msg.index and inst.leader == sender:
            return  # already installing it
        # Entries past our commit index disagree with the leader's compacted log somewhere at
        # or before msg.index, so none of them can ever commit: drop them.
        if self.log.last_index > self.commit:
            self.log.truncate_from(self.commit + 1)
            self._mark_dirty(self.commit + 1)
        self._install = _Install(sender, msg.index, msg.index_term, msg.height, msg.block_hash)
        self._fetch_blocks()

    def _fetch_blocks(self) -> None:
        inst = self._install
        assert inst is not None
        inst.fetch_due_ms = self._now + self.config.election_ms
        if self.height >= inst.height:
            self._finish_install()
            return
        self._send(inst.leader, m.Fetch(self.term, self.height + 1, inst.height))

    def _on_fetch(self, sender: int, msg: m.Fetch) -> None:
        if self.role != LEADER or msg.term != self.term:
            self.rejected[drop.FETCH_NOT_LEADER] += 1
            return
        if msg.from_height > msg.to_height or msg.from_height > self.height + 1:
            self.rejected[drop.FETCH_OUT_OF_RANGE] += 1
            return
        if any(s.peer == sender for s in self._serve):
            return
        self._serve.append(
            Serve(
                sender,
                self.term,
                msg.from_height,
                min(msg.to_height, self.height),
                self.config.blocks_per_fetch,
            )
        )

    def _on_blocks(self, sender: int, msg: m.Blocks) -> None:
        inst = self._install
        if inst is None or sender != inst.leader or inst.awaiting:
            self.rejected[drop.BLOCKS_UNEXPECTED] += 1
            return
        self._last_leader_contact = self._now
        self._reset_election_timer()
        want = self.height + 1
        blocks: list[TransferredBlock] = []
        for b in msg.blocks:
            if b.header.height != want + len(blocks) or b.header.height > inst.height:
                break
            blocks.append(b)
        if not blocks:
            self.rejected[drop.BLOCKS_NOT_NEXT] += 1
            return
        inst.awaiting = True
        self._install_out.extend(blocks)

    @_input
    def installed(self, height: int, block_hash: bytes, term: int, index: int) -> None:
        """The shell re-executed and stored a transferred block at `height`, whose consensus
        metadata says (term, index)."""
        self.height, self.block_hash = height, block_hash
        self.blocks_installed += 1
        if index > self.applied:
            if self.log.term_at(index) != term:
                self.log.restore(index, term)
                self._points.clear()
                self._mark_dirty(index + 1)
                self._snap_height, self._snap_hash = height, block_hash
                self._snap_dirty = True
            self.applied = index
            self.commit = max(self.commit, index)
        self._points[index] = (height, block_hash)
        self._applied_to(index)
        inst = self._install
        if inst is not None:
            inst.awaiting = False
            inst.fetch_due_ms = 0  # fetch the next chunk now

    @_input
    def install_failed(self, reason: str) -> None:
        """A transferred block did not reproduce its header: try again later."""
        self.rejected[drop.INSTALL_FAILED] += 1
        if self._install is not None:
            self._install.awaiting = False
            self._install.fetch_due_ms = self._now + self.config.election_ms
        self._install_problem = reason

    def _finish_install(self) -> None:
        inst = self._install
        assert inst is not None
        self._install = None
        if self.height != inst.height or self.block_hash != inst.block_hash:
            self.rejected[drop.INSTALL_MISMATCH] += 1
            return
        if self.log.term_at(inst.index) != inst.index_term:
            self.log.restore(inst.index, inst.index_term)
            self._points.clear()
            self._mark_dirty(inst.index + 1)
        self._snap_height, self._snap_hash = inst.height, inst.block_hash
        self._snap_dirty = True
        self.applied = max(self.applied, inst.index)
        self.commit = max(self.commit, inst.index)
        self._applied_to(inst.index)
        self._send(
            inst.leader, m.AppendReply(self.term, True, inst.index, 0, self._wall_out, self.epoch)
        )

    # --- transactions -------------------------------------------------------------------------

    @contextlib.contextmanager
    def inputs(self) -> Iterator[None]:
        """Inputs given inside this block count as one (the shell's drain of events, and the
        simulator's inputs due at one member at one time): what they make due is done once, at
        its end, as one batch, one forward, one heartbeat round for all the reads; the
        invariants are checked after each input and at the end."""
        assert not self._inputs_open, "inputs() does not nest"
        self._inputs_open = True
        try:
            yield
            self._advance()
        finally:
            self._inputs_open = False
        self._check_invariants()

    @_input
    def propose(self, tx: Transaction) -> bool:
        """Take a client transaction; False if the pool is full (the client should back off)."""
        return self._take(tx)

    @_input
    def propose_all(self, txs: Sequence[Transaction]) -> list[bool]:
        """Take client transactions as one input (so a batch is cut once for all of them); for
        each, whether it was taken (False: the pool is full)."""
        return [self._take(tx) for tx in txs]

    def _take(self, tx: Transaction) -> bool:
        if tx.id in self._pool or tx.id in self._uncommitted_ids:
            self.rejected[drop.DUPLICATE_TX] += 1
            return True
        if len(self._pool) >= self.config.pool_max:
            self.rejected[drop.POOL_FULL] += 1
            return False
        self._pool[tx.id] = _Pending(tx, self._now)
        self._forward_due = True
        return True

    def _on_forward(self, sender: int, msg: m.Forward) -> None:
        for tx in msg.txs:
            if not self._take(tx):
                break

    def _reforward_all(self) -> None:
        self._forward_due = True
        for pending in self._pool.values():
            if pending.forwarded_ms is not None:
                pending.forwarded_ms = None

    def _forward(self) -> None:
        leader = self.leader
        if leader is None or leader == self.me:
            return
        cfg = self.config
        retry_before = self._now - 2 * cfg.election_ms
        batch: list[Transaction] = []
        size = 0
        bytes_max = cfg.params.frame_bytes_max // 2
        dead: list[bytes] = []
        for tx_id, pending in self._pool.items():
            if pending.forwarded_ms is not None and pending.forwarded_ms > retry_before:
                continue
            if pending.forwards >= 4:
                dead.append(tx_id)  # the client has retried elsewhere long since
                continue
            if batch and (
                len(batch) >= cfg.forward_batch_max or size + pending.tx.size + 8 > bytes_max
            ):
                self._send(leader, m.Forward(tuple(batch)))
                batch, size = [], 0
            pending.forwarded_ms = self._now
            pending.forwards += 1
            batch.append(pending.tx)
            size += pending.tx.size + 8
        if batch:
            self._send(leader, m.Forward(tuple(batch)))
        for tx_id in dead:
            del self._pool[tx_id]
            self.rejected[drop.FORWARD_GAVE_UP] += 1

    def _maybe_batch(self) -> None:
        if self.role != LEADER or self._transferee is not None or self.removed:
            return
        if self._pool and not self._clock_agrees():
            return  # block time is our clock: not while it is off the majority's (or unknown)
        if self._change_between(self._shell_applied, self.log.last_index):
            # R2: no batch after a change entry until we applied it; a change first in line
            # waits for the same reason (R1b).
            head = next(iter(self._pool.values()), None)
            if head is not None and self._change_of(head.tx) is not None:
                self._hold(head, drop.CHANGE_UNAPPLIED)
            return
        held: list[tuple[bytes, _Pending]] = []  # member changes R1 keeps in the pool
        try:
            self._cut_batches(held)
        finally:
            for tx_id, pending in held:  # (at the pool's end: the others go first)
                self._pool[tx_id] = pending

    def _cut_batches(self, held: list[tuple[bytes, _Pending]]) -> None:
        cfg = self.config
        params = cfg.params
        while self._pool and self.log.last_index - self.commit < cfg.uncommitted_max:
            idle = self.log.last_index == self.commit
            oldest = next(iter(self._pool.values()))
            if (
                len(self._pool) < params.batch_txs_max
                and not idle
                and self._now - oldest.arrived_ms < params.batch_delay_ms
            ):
                return
            txs: list[Transaction] = []
            size = 0
            change = False
            while self._pool and len(txs) < params.batch_txs_max:
                tx_id, pending = next(iter(self._pool.items()))
                tx = pending.tx
                if txs and size + tx.size > params.batch_bytes_max:
                    break
                if self._change_of(tx) is not None:
                    if txs:
                        # R1d: a change entry carries its change alone (it goes next).
                        self._hold(pending, drop.CHANGE_OWN_ENTRY)
                        break
                    why = self._change_refusal(tx)
                    if why is not None:
                        del self._pool[tx_id]
                        self._hold(pending, why)
                        held.append((tx_id, pending))
                        continue
                    change = True
                del self._pool[tx_id]
                if not self._tx_ok(tx):
                    self.rejected[drop.TX_NOT_OK] += 1
                    continue
                txs.append(tx)
                size += tx.size
                if change:
                    break  # R1d: alone in its entry
            if txs:
                # An id leaves _uncommitted_ids when its entry commits, and the shell applies
                # the entry in that same Ready: from then on only its ledger knows it, and a
                # client's resubmission that met a block still being written (the client port
                # sees only what is durable) or a follower's late forward came back here.
                done = self._executed([t.id for t in txs])
                if done:
                    self.rejected[drop.TX_EXECUTED] += sum(1 for t in txs if t.id in done)
                    txs = [t for t in txs if t.id not in done]
            if not txs:
                continue
            index = self.log.last_index + 1
            proposed_ms = self._wall
            entry = Entry(self.term, index, proposed_ms, self.me, b"", tuple(txs))
            body = raft_entry_body(self.term, index, entry.digest, self.me)
            signature = self._signer.sign(Domain.RAFT_ENTRY, self.config.chain_id, body)
            entry = Entry(self.term, index, proposed_ms, self.me, signature, tuple(txs))
            self.log.append(entry)
            self._mark_dirty(index)
            self._uncommitted_ids.update(t.id for t in txs)
            if change:
                return  # R2: nothing more until we applied it

    def _hold(self, pending: _Pending, reason: str) -> None:
        """A member change stays in the pool for `reason` (counted once per reason it meets)."""
        if pending.held != reason:
            pending.held = reason
            self.rejected[reason] += 1

    def _change_between(self, lo: int, hi: int) -> bool:
        """Whether our log holds a change entry at an index in (lo, hi] (compacted entries
        are applied: never)."""
        for index in range(max(lo + 1, self.log.first_index), min(hi, self.log.last_index) + 1):
            entry = self.log.entry(index)
            key = (index, entry.term)
            found = self._change_entries.get(key)
            if found is None:
                found = any(self._change_of(tx) is not None for tx in entry.txs)
                if len(self._change_entries) >= CHANGE_CACHE_MAX:
                    self._change_entries.clear()
                self._change_entries[key] = found
            if found:
                return True
        return False

    def _change_refusal(self, tx: Transaction) -> str | None:
        """R1: why the leader may not append this member change now, or None. Checked in the
        design's order (docs/design/membership.md, part 4); (d) is _cut_batches' (the entry
        carries the change alone) and R2 is _maybe_batch's."""
        if not self._r1a_ok():
            return drop.CHANGE_TERM_UNCOMMITTED
        if self._change_between(self._shell_applied, self.log.last_index):
            return drop.CHANGE_UNAPPLIED  # (b)
        if not self._r1c_ok():
            return drop.CHANGE_EPOCHS_BEHIND
        change = self._change_of(tx)
        assert change is not None
        for op in change.ops:
            if isinstance(op, PromoteLearner):
                lag = self.learner_lag(op.id)
                if lag is not None and lag > self.config.params.window:
                    return drop.LEARNER_BEHIND  # (e)
        return None

    def _r1a_ok(self) -> bool:
        """R1a (Ongaro's fix): an entry of our own term has committed."""
        return self.log.term_at(self.commit) == self.term

    def _r1c_ok(self) -> bool:
        """R1c: a majority of our configuration's voters (us included) reported an applied
        epoch equal to ours, so at most a minority is on an older configuration when we
        propose the next one."""
        same = int(self.is_voter) + sum(
            1 for p in self._other_voters() if self._progress[p].epoch == self.epoch
        )
        return same >= self.majority

    def learner_lag(self, member: int) -> int | None:
        """How many entries the learner `member` is behind our last index, as leader; None when
        we do not lead or it is no learner of our applied configuration (the shell's client
        port refuses a promote with `learner_behind` above params.window)."""
        info = self.members.member(member)
        if self.role != LEADER or info is None or info.role == VOTER or member == self.me:
            return None
        return max(0, self.log.last_index - self._progress[member].match)

    # --- clocks -------------------------------------------------------------------------------

    @property
    def _wall_out(self) -> int:
        """Our wall clock for a reply (never negative on the wire)."""
        return max(0, self._wall)

    def _clock_band(self) -> tuple[tuple[int, int], int] | None:
        """The median band (ledger/clock.py) of the clocks of the members heard within an
        election timeout, ours included, each follower's advanced by our monotonic clock since
        its reply arrived (so a jump of our own wall clock shows at once), and how many there
        are; None while fewer than a majority."""
        clocks = [self._wall]
        for p in self._other_voters():
            clock = self._peer_clock(p)
            if clock is not None:
                clocks.append(clock)
        if len(clocks) < self.majority:
            return None
        return median_band(clocks), len(clocks)

    def _peer_clock(self, peer: int) -> int | None:
        """`peer`'s wall clock now, from its last reply if that came within an election
        timeout: what it said, advanced by our monotonic clock since (not our wall clock)."""
        pr = self._progress[peer]
        if pr.wall_ms is None or pr.heard_ms is None:
            return None
        if self._now - pr.heard_ms >= self.config.election_ms:
            return None
        return pr.wall_ms + (self._now - pr.heard_ms)

    def _agrees(self, clock_ms: int, band: tuple[int, int]) -> bool:
        skew = self.config.params.timestamp_skew_ms
        return abs(clock_ms - band[0]) <= skew and abs(clock_ms - band[1]) <= skew

    def _clock_agrees(self) -> bool:
        """Whether we may stamp a batch: our clock within timestamp_skew_ms of the median of a
        majority's. Followers never refuse an entry for its time (that would stall commits
        while heartbeats keep us in office), so this is the only check; a new leader waits
        for its first replies (its no-op makes no block and goes at once)."""
        known = self._clock_band()
        return known is not None and self._agrees(self._wall, known[0])

    def _maybe_hand_off_for_clock(self) -> None:
        """Our clock is off the majority's: hand leadership (the transfer path, TimeoutNow) to
        a member whose clock agrees, that answered within an election timeout and that can
        campaign (not recovering); none such, we stay and propose nothing (status says why).

        Which one: first those no transfer to which was abandoned while we lead, then the one
        abandoned longest ago; among equals the most caught-up, lowest id first. Always the
        most caught-up made a member that acknowledges but does not take over (its TimeoutNow
        lost, a slow disk, a recovering member not yet known as one) the target of every
        hand-off after the last, and we proposed nothing for good."""
        known = self._clock_band()
        if known is None or self._agrees(self._wall, known[0]):
            self.clock_stuck = ""
            return
        band, count = known
        agree = [
            p
            for p in self._other_voters()
            if self._progress[p].recent_active
            and (clock := self._peer_clock(p)) is not None
            and self._agrees(clock, band)
        ]
        able = [p for p in agree if not self._progress[p].recovering]
        if not able:
            self.clock_stuck = (
                f"own clock {off_band_ms(self._wall, band):+d} ms off the median of {count} "
                "members' clocks: not proposing, and no member whose clock agrees to hand "
                "leadership to"
                + (
                    f" (members {', '.join(map(str, agree))} agree but are recovering: they "
                    "cannot campaign)"
                    if agree
                    else ""
                )
            )
            return
        self.clock_stuck = ""
        target = min(
            able,
            key=lambda p: (
                self._transfer_failed_ms.get(p, _LONG_AGO),
                -self._progress[p].match,
                p,
            ),
        )
        # No operator's limits (this is our own step), and the operator's allowance is left
        # alone: an operator's request replaces this hand-off (transfer_leadership).
        self._start_transfer(target, by_operator=False)
        self._clock_handoff_to = target
        self.clock_handoff_count += 1
        off_ms = off_band_ms(self._wall, band)
        self.clock_handoffs.append(
            f"term {self.term}: own clock {off_ms:+d} ms off the median of {count} members' "
            f"clocks (timestamp_skew_ms {self.config.params.timestamp_skew_ms}): handing "
            f"leadership to member {target}"
        )

    def _clock_status(self) -> dict[str, Any]:
        if self.role != LEADER:
            return self.clock.status("entries its leader proposed")
        known = self._clock_band()
        skew = self.config.params.timestamp_skew_ms
        if known is None:
            heard = 1 + sum(1 for p in self._other_voters() if self._peer_clock(p) is not None)
            return {
                "offset_ms": None,
                "samples": heard,
                "needed": self.majority,
                "limit_ms": skew,
                "disagrees": False,
                "basis": "members' clocks",
                "handing_to": None,
            }
        band, count = known
        return {
            "offset_ms": off_band_ms(self._wall, band),
            "samples": count,
            "needed": self.majority,
            "limit_ms": skew,
            "disagrees": not self._agrees(self._wall, band),
            "basis": "members' clocks",
            "handing_to": self._clock_handoff_to
            if self._clock_handoff_to == self._transferee
            else None,
        }

    # --- reads --------------------------------------------------------------------------------

    @_input
    def read(self, read_id: int) -> None:
        """A linearizable read: released as ReadState(read_id, index) or failed with a reason."""
        self._read(read_id)

    def _read(self, read_id: int) -> None:
        if self.role == LEADER:
            self._leader_read(self.me, read_id)
        elif self.leader is not None:
            if len(self._forwarded_reads) >= self.config.reads_max:
                self._read_failures.append((read_id, "overloaded: too many reads waiting"))
                return
            wire_id = self._read_wire_next
            self._read_wire_next += 1
            self._forwarded_reads[wire_id] = read_id
            self._send(self.leader, m.Read(wire_id))
        else:
            self._read_failures.append((read_id, "no leader: an election is in progress"))

    @_input
    def read_abandoned(self, read_id: int) -> None:
        """The shell gave up waiting (its timeout): forget a forwarded read."""
        for wire_id, mine in self._forwarded_reads.items():
            if mine == read_id:
                del self._forwarded_reads[wire_id]
                return

    def _leader_read(self, requester: int, read_id: int) -> None:
        if len(self._reads) + len(self._reads_unready) >= self.config.reads_max:
            self._fail_read(requester, read_id, "overloaded: too many reads waiting")
            return
        if self.log.term_at(self.commit) != self.term:
            self._reads_unready.append((requester, read_id))  # until our term commits
            return
        if self._sole_voter():
            self._release(requester, read_id, self.commit)
            return
        self._reads.append(_Read(self._read_ctx + 1, requester, read_id, self.commit))
        self._read_heartbeat = True

    def _release_reads(self) -> None:
        # The latest heartbeat round a majority (ours included) echoed (thesis §6.4).
        confirmed = rules.majority_match(
            [self._read_ctx] * self.is_voter
            + [self._progress[p].read_ctx for p in self._other_voters()]
        )
        while self._reads and self._reads[0].ctx <= confirmed:
            r = self._reads.popleft()
            self._release(r.requester, r.read_id, r.index)

    def _release(self, requester: int, read_id: int, index: int) -> None:
        if requester == self.me:
            self._ready_reads.append(ReadState(read_id, index))
        else:
            self._send(requester, m.ReadReply(read_id, index, True))

    def _fail_read(self, requester: int, read_id: int, reason: str) -> None:
        if requester == self.me:
            self._read_failures.append((read_id, reason))
        else:
            self._send(requester, m.ReadReply(read_id, 0, False))

    def _on_read(self, sender: int, msg: m.Read) -> None:
        if self.role != LEADER:
            self._send(sender, m.ReadReply(msg.read_id, 0, False))
            return
        self._leader_read(sender, msg.read_id)

    def _on_read_reply(self, sender: int, msg: m.ReadReply) -> None:
        read_id = self._forwarded_reads.pop(msg.read_id, None)
        if read_id is None:
            return  # abandoned, answered already, or a read of an earlier process of ours
        if msg.ok:
            self._ready_reads.append(ReadState(read_id, msg.index))
        else:
            self._read_failures.append((read_id, f"member {sender} is no longer the leader"))

    # --- leadership transfer ------------------------------------------------------------------

    @_input
    def transfer_leadership(self, target: int) -> str | None:
        """An operator's request to hand leadership to `target`: None once the transfer has
        started (not once leadership moved: the caller watches for that), else why not.

        A leader that transfers proposes nothing, so each request costs the network commits:
        requests signed by any client, re-sent every 300 ms naming a crashed member, cut a
        healthy cluster to a tenth of its commits, each one restarting the transfer. So the
        target must have acknowledged an append or heartbeat within the last election
        timeout E (a member that is down or cut off is refused at once), a request while a
        transfer is under way is refused (it does not restart it), and we accept at most one
        per E, counting from our election too (leadership moves at most once per E on
        request). A transfer we start is abandoned after E, as before.

        An operator's request replaces a hand-off we started for our clock (and counts as the
        operator's one per E; those hand-offs do not): they follow one another with no gap
        while our clock is off, and refusing an operator while one ran locked the operator out
        for good (a TimeoutNow already sent for it may still make that member take over
        first). A target behind its recovery gate is refused: it cannot campaign."""
        cfg = self.config
        if self.role != LEADER:
            return f"not the leader (leader: {self.leader})"
        if self.removed:
            return "we left the configuration: leadership goes to a member of the new one"
        if self.members.member(target) is None:
            return f"no member {target}"
        if not self._is_voter(target):
            return f"member {target} is a learner: it cannot campaign"
        if target == self.me:
            return "already the leader"
        if self._transferee is not None and self._transfer_by_operator:
            return (
                f"a transfer to member {self._transferee} is under way (abandoned in "
                f"{self._transfer_deadline - self._now} ms if it does not complete)"
            )
        if self._now < self._transfer_allowed_ms:
            return (
                f"at most one transfer per election timeout ({cfg.election_ms} ms): "
                f"try again in {self._transfer_allowed_ms - self._now} ms"
            )
        heard = self._progress[target].heard_ms
        if heard is None or self._now - heard >= cfg.election_ms:
            return (
                f"member {target} acknowledged nothing within the last election timeout "
                f"({cfg.election_ms} ms): it is down, cut off or restarting"
            )
        if self._progress[target].recovering:
            return (
                f"member {target} is recovering (restored from a backup or lost state): it "
                "cannot campaign until a later term has committed; name another member"
            )
        self._clock_handoff_to = None
        self._start_transfer(target, by_operator=True)
        return None

    def _start_transfer(self, target: int, *, by_operator: bool) -> None:
        """Stop proposing, bring `target` up to date, then send it TimeoutNow; abandoned at
        the deadline (E). No checks: transfer_leadership makes them for operators."""
        self._transferee = target
        self._transfer_deadline = self._now + self.config.election_ms
        self._transfer_by_operator = by_operator
        if by_operator:
            # (and how the last one ended is no longer news: the operator watches this one)
            self._transfer_allowed_ms = self._transfer_deadline
            self.last_transfer = ""
        self._timeout_now_sent = False
        # A marker no-op: the entry TimeoutNow names must reach the target after the transfer
        # began (its freshness bounds when the target may act on it, _on_timeout_now), and
        # in an idle network the last entry is old.
        self.log.append(Entry(self.term, self.log.last_index + 1))
        self._mark_dirty(self.log.last_index)
        self._replicate(target)

    def _send_timeout_now(self, target: int) -> None:
        cfg = self.config
        if self._timeout_now_sent:
            return  # one per transfer: a copy can only arrive later than the first
        if self._now > self._transfer_deadline - cfg.election_ms // TIMEOUT_NOW_MARGIN_DIVISOR:
            return  # too late: the target's window could outlast our deadline
        self._timeout_now_sent = True
        self._send(target, m.TimeoutNow(self.term, self.log.last_index))

    # --- recovery gate (module docstring, "Recovery") -----------------------------------------

    def _recovery_tick(self) -> None:
        rec = self._recovery
        assert rec is not None
        if rec.start_ms is None:
            rec.start_ms = self._now
        floor = rec.floor
        if (
            floor is not None
            and self.term >= floor
            and (self.log.term_at(self.commit) or 0) >= floor
        ):
            self._recovery = None  # the shell then deletes its mark (node/runtime.py)
            return
        if floor is not None or self._now - rec.start_ms < 2 * self.config.election_ms:
            return
        if self._now - rec.asked_ms < self.config.election_ms // 2:
            return
        rec.asked_ms = self._now
        for p in self._others():
            if p not in rec.reports:
                self._send(p, m.TermQuery(rec.nonce))

    def _on_term_query(self, sender: int, msg: m.TermQuery) -> None:
        if (
            self._now - self._query_answered_ms.get(sender, _LONG_AGO)
            < self.config.election_ms // 4
        ):
            self.rejected[drop.QUERY_TOO_OFTEN] += 1
            return
        self._query_answered_ms[sender] = self._now
        self._send(sender, m.TermReport(msg.nonce, self.term, self._recovery is not None))

    def _on_term_report(self, sender: int, msg: m.TermReport) -> None:
        rec = self._recovery
        if rec is None or msg.nonce != rec.nonce:
            # Not recovering, or an answer to a query of an earlier start: a replay, or late.
            self.rejected[drop.STALE_TERM_REPORT] += 1
            return
        if rec.floor is not None:
            return  # decided: later answers change nothing
        if msg.recovering:
            # Restored too: it reports the term of its copy, which may be below a term it
            # voted in (with us, for a leader that only restored members and down ones know
            # of). Counted, two members restored at once each learned a floor at a term they
            # had voted in. It is asked again until it answers as a member that is not.
            rec.recovering_peers.add(sender)
            return
        rec.recovering_peers.discard(sender)
        if not self._is_voter(sender):
            return  # (a learner's term is no voter's: it says nothing of the votes cast)
        rec.reports[sender] = max(rec.reports.get(sender, 0), msg.current_term)
        if len(rec.reports) >= rec.needed:
            rec.floor = max(rec.reports.values()) + 1

    # --- output -------------------------------------------------------------------------------

    def _send(self, dest: int | None, msg: m.Message) -> None:
        early = self.role == LEADER and isinstance(msg, (m.Append, m.Heartbeat))
        (self._early_out if early else self._out).append(Outbound(dest, m.encode(msg)))

    @_input
    def entry_applied(self, index: int, height: int, block_hash: bytes) -> None:
        """The shell applied the committed entry `index` (a no-op leaves height unchanged)."""
        self.height, self.block_hash = height, block_hash
        self._points[index] = (height, block_hash)
        self._applied_to(index)

    def _applied_to(self, index: int) -> None:
        self._shell_applied = max(self._shell_applied, index)
        if len(self._change_entries) > 2 * len(self.log) + 64:
            self._change_entries = {
                k: v for k, v in self._change_entries.items() if k[0] > self._shell_applied
            }

    @_input
    def reconfigure(self, config: Configuration, index: int) -> None:
        """Applying the entry at `index` activated `config` (configuration on apply: the
        executor calls this right after entry_applied or installed for that entry, and after
        a snapshot install with the configuration the ledger ends in). A configuration not
        newer than ours is ignored (a repeat).

        From here the voters of `config` form every majority. A leader tracks the members
        added and forgets the removed. A member `config` leaves out is removed for good: it
        neither campaigns nor answers votes; as leader it stops proposing, hands leadership
        to the most caught-up voter of `config` (a transfer of its own) and steps down once
        that completes or is abandoned."""
        if config.epoch <= self.members.epoch:
            return
        was_member = self.members.member(self.me) is not None
        self.members = config
        self._applied_to(index)
        if was_member and config.member(self.me) is None and self.removed_at is None:
            # (a joiner replaying configurations from before its addition was never in them)
            self.removed_at = index
        for p in [p for p in self._query_answered_ms if config.member(p) is None]:
            del self._query_answered_ms[p]
        for p in [p for p in self._transfer_failed_ms if not self._is_voter(p)]:
            del self._transfer_failed_ms[p]
        if self.role == LEADER:
            for p in [p for p in self._progress if config.member(p) is None]:
                del self._progress[p]
            for p in self._others():
                if p not in self._progress:
                    self._progress[p] = Progress(
                        next=self.log.last_index + 1, last_progress_ms=self._now
                    )
                    self._send_append(p, allow_empty=True)  # a probe: where do our logs match
            if self._transferee is not None and not self._is_voter(self._transferee):
                self._transferee = None
            if self._clock_handoff_to is not None and not self._is_voter(self._clock_handoff_to):
                self._clock_handoff_to = None
            if self.removed and self._transferee is None and not self._hand_over():
                self._step_down_removed()
        elif self.role in (PRE_CANDIDATE, CANDIDATE):
            if not self.is_voter or self.removed:
                self._become_follower(self.term, None)
            else:
                self._tally()

    def _hand_over(self) -> bool:
        """Removed as leader: start a transfer to the most caught-up voter of the new
        configuration heard from within E (lowest id among equals); False if there is none."""
        able = [
            p
            for p in self._other_voters()
            if self._progress[p].recent_active and not self._progress[p].recovering
        ]
        if not able:
            return False
        target = min(able, key=lambda p: (-self._progress[p].match, p))
        self._start_transfer(target, by_operator=False)
        return True

    def _step_down_removed(self) -> None:
        self.step_downs.append(
            f"term {self.term}: removed from the configuration at index {self.removed_at} "
            f"(epoch {self.epoch}): stepped down"
        )
        del self.step_downs[:-8]
        self._become_follower(self.term, None)

    def _advance(self) -> None:
        """What the last input made due (run after every outermost input, never by the shell):
        cut batches (leader) or forward the pool (follower), compact, gather the log records
        to write, commit by Figure 8's rule and replicate (leader), release reads, hand the
        committed entries to the shell. Its output waits in the Ready take_ready drains."""
        if self.role == LEADER:
            self._maybe_batch()
        elif self.role == FOLLOWER and self._forward_due:
            self._forward_due = False  # (set again by a new transaction, a leader, a tick)
            self._forward()
        self._maybe_compact()
        records = self._records()
        if records:
            self._records_out += records
            self._log_end = (self.log.last_index, self.log.last_term)
        if self.role == LEADER:
            if self._maybe_commit():
                self._commit_dirty = True
            for p in self._others():
                sent = False
                if self._progress[p].state != SNAPSHOT:
                    pr = self._progress[p]
                    if pr.state == REPLICATE:
                        while pr.next <= self.log.last_index and self._send_append(p):
                            sent = True
                    else:
                        sent = self._send_append(p)
                if self._commit_dirty and not sent:
                    self._commit_notice(p)
            self._commit_dirty = False
            if self._read_heartbeat:
                self._broadcast_heartbeat()
            if self._reads_unready and self.log.term_at(self.commit) == self.term:
                waiting = list(self._reads_unready)
                self._reads_unready.clear()
                for requester, read_id in waiting:
                    self._leader_read(requester, read_id)
                if self._read_heartbeat:
                    self._broadcast_heartbeat()
        if self.commit > self.applied:
            first = max(self.applied + 1, self.log.first_index)
            for index in range(first, self.commit + 1):
                e = self.log.entry(index)
                self._committed_out.append(e)
                for tx in e.txs:
                    self._pool.pop(tx.id, None)
                    self._uncommitted_ids.discard(tx.id)
            self.applied = self.commit
        if (
            self._install is not None
            and not self._install.awaiting
            and self._install.fetch_due_ms == 0
        ):
            self._fetch_blocks()
        if self._snap_dirty:
            self._records_out.append(
                (
                    SNAP_KEY,
                    pack(
                        [
                            self.log.snap_index,
                            self.log.snap_term,
                            self._snap_height,
                            self._snap_hash,
                        ]
                    ),
                )
            )
            self._snap_dirty = False

    def take_ready(self) -> Ready:
        """Everything the inputs since the last call asked of the shell (a drain: no input, no
        work of its own). Carry it out in the order node/executor.py states."""
        ready = Ready(
            records=self._records_out,
            early=self._early_out,
            messages=self._out,
            committed=self._committed_out,
            install=self._install_out,
            serve=self._serve,
            reads=self._ready_reads,
            read_failures=self._read_failures,
            log_end=self._log_end if self._records_out else None,
        )
        self._records_out = []
        self._log_end = None
        self._early_out = []
        self._out = []
        self._committed_out = []
        self._install_out = []
        self._serve = []
        self._ready_reads = []
        self._read_failures = []
        return ready

    @_input
    def persisted(self, index: int, term: int) -> None:
        """The shell's write of a Ready's records is durable, that Ready's log_end being
        (index, term): our log up to `index` is on disk (writes complete in order). Only now
        does a leader count itself for those entries, at every n: a single member commits an
        entry here, never in the Ready that first writes it."""
        if self.log.term_at(index) != term:
            return  # overwritten since (a new leader's entries): a later Ready reports them
        if (index, term) == self._last_entry and self._last_entry_ms is None:
            self._last_entry_ms = self._now  # (and again at the next tick: see tick())
            self._last_entry_restamp = True
        if index > self._stable_last:
            self._stable_last = index
            if self.role == LEADER and self._maybe_commit():
                self._commit_dirty = True

    def _commit_notice(self, peer: int) -> None:
        """Tell `peer` the new commit index: with the next append, or alone once
        commit_notice_ms passed without one (_tick_leader)."""
        delay = self.config.commit_notice_ms
        pr = self._progress[peer]
        if delay <= 0:
            self._send_commit(peer)
        elif pr.notice_due_ms is None:
            pr.notice_due_ms = self._now + delay

    def _send_commit(self, peer: int) -> None:
        pr = self._progress[peer]
        if pr.state == SNAPSHOT:
            return
        prev = pr.next - 1
        prev_term = self.log.term_at(prev)
        if prev_term is None:
            return
        self._send(peer, m.Append(self.term, prev, prev_term, self.commit, ()))

    def _maybe_compact(self) -> None:
        keep = self.config.log_keep
        applied_in_log = self.applied - self.log.snap_index
        if applied_in_log <= 2 * keep:
            return
        target = self.applied - keep
        if self._dirty_from is not None:
            target = min(target, self._dirty_from - 1)
        best = max((i for i in self._points if i <= target), default=None)
        if best is None or best <= self.log.snap_index:
            return
        self._snap_height, self._snap_hash = self._points[best]
        self.log.compact_to(best)
        self._points = {i: p for i, p in self._points.items() if i > best}
        self._snap_dirty = True

    def _records(self) -> list[tuple[bytes, bytes | None]]:
        records: list[tuple[bytes, bytes | None]] = []
        if self._hard_dirty:
            vote = -1 if self.voted_for is None else self.voted_for
            records.append((HARD_KEY, pack([self.term, vote])))
            self._hard_dirty = False
        # Compacted or restored: what is on disk at or below the compaction point goes.
        snap = self.log.snap_index
        if self._disk_first <= snap:
            for i in range(self._disk_first, min(self._disk_last, snap) + 1):
                records.append((log_key(i), None))
            self._disk_first = snap + 1
            self._disk_last = max(self._disk_last, snap)
        if self._dirty_from is not None:
            for i in range(max(self._dirty_from, self.log.first_index), self.log.last_index + 1):
                records.append((log_key(i), self.log.entry(i).encode()))
            for i in range(self.log.last_index + 1, self._disk_last + 1):
                records.append((log_key(i), None))
            self._disk_last = self.log.last_index
            self._dirty_from = None
        return records

    # --- invariants ---------------------------------------------------------------------------

    def _check_invariants(self) -> None:
        """Cheap (constant-time) checks after every input (@_input); check_invariants() checks
        the rest. Our own bugs only: peer input never reaches an assertion."""
        cfg = self.config
        log = self.log
        assert self.applied <= self.commit, (self.applied, self.commit)
        assert self.commit <= log.last_index, (self.commit, log.last_index)
        assert log.snap_index <= self.applied, (log.snap_index, self.applied)
        # What the leader counts itself for (its own match) is in its log, and durable.
        assert self._stable_last <= log.last_index, (self._stable_last, log.last_index)
        assert log.last_term <= self.term, (log.last_term, self.term)
        term, vote = self._checked_vote
        assert self.term >= term, (self.term, term)  # terms never go back
        if self.term == term and vote is not None:
            assert self.voted_for == vote, (term, vote, self.voted_for)  # one vote per term
        self._checked_vote = (self.term, self.voted_for)
        if self.role == LEADER:
            assert self.leader == self.me
            assert self.voted_for == self.me
            assert set(self._progress) == set(self._others())
        else:
            assert self.leader != self.me
            assert not self._progress
            assert self._transferee is None
            assert not self._uncommitted_ids  # (a leader's, put back in the pool on losing)
        if self.role == CANDIDATE:
            assert self.voted_for == self.me
        if self._transferee is not None:
            assert self._transferee != self.me
        if self._recovery is not None:
            assert self.role == FOLLOWER  # it never campaigns
            assert len(self._recovery.reports) <= MEMBERS_MAX
            assert len(self._recovery.recovering_peers) <= MEMBERS_MAX
        assert len(self._pool) <= cfg.pool_max
        assert len(self._reads) + len(self._reads_unready) <= cfg.reads_max
        assert len(self._forwarded_reads) <= cfg.reads_max
        assert len(self._transfer_failed_ms) <= MEMBERS_MAX
        assert len(self._query_answered_ms) <= MEMBERS_MAX
        assert len(self._change_entries) <= CHANGE_CACHE_MAX
        if self.removed:
            assert self.role not in (CANDIDATE, PRE_CANDIDATE)
        assert self._last_entry_ms is None or self._last_entry_ms <= self._now

    def check_invariants(self) -> None:
        """Everything _check_invariants() checks, and what takes longer: the uncommitted end
        of the log, every follower's progress, the pool against the uncommitted ids (the
        simulator calls this after every step)."""
        self._check_invariants()
        log = self.log
        first = max(log.first_index, self.commit)
        prev_term = log.term_at(first - 1)
        assert prev_term is not None
        for index in range(first, log.last_index + 1):
            entry = log.entry(index)
            assert entry.index == index
            assert entry.term >= prev_term, (index, entry.term, prev_term)  # terms only rise
            prev_term = entry.term
        assert self._uncommitted_ids.isdisjoint(self._pool)
        for p, pr in self._progress.items():
            assert p != self.me
            assert pr.match < pr.next <= log.last_index + 1, (p, pr.match, pr.next)
            assert len(pr.inflight) <= self.config.inflight_max
            if pr.state != REPLICATE:
                assert not pr.inflight, (p, pr.state)
            if pr.inflight:
                assert pr.match < pr.inflight[0], (p, pr)
                assert pr.inflight[-1] < pr.next, (p, pr)
                assert all(a < b for a, b in itertools.pairwise(pr.inflight)), (p, pr)

    # --- status -------------------------------------------------------------------------------

    @property
    def pending_count(self) -> int:
        """Client transactions held here and not yet committed: waiting for the log, or in it
        uncommitted (read-only, for the shell)."""
        return len(self._pool) + len(self._uncommitted_ids)

    def status(self) -> dict[str, Any]:
        progress = {
            str(p): {
                "match": pr.match,
                "next": pr.next,
                "state": pr.state,
                "recent_active": pr.recent_active,
                "lag": max(0, self.log.last_index - pr.match),
                "recovering": pr.recovering,
            }
            for p, pr in sorted(self._progress.items())
        }
        return {
            "mode": "raft",
            "role": self.role,
            "epoch": self.epoch,
            "voter": self.is_voter,
            "removed": self.removed,
            "removed_at": self.removed_at,
            "learners": [
                {"id": mi.id, "match": self._progress[mi.id].match, "lag": lag}
                for mi in self.members.members
                if (lag := self.learner_lag(mi.id)) is not None
            ],
            "term": self.term,
            "leader": self.leader,
            "voted_for": self.voted_for,
            "commit_index": self.commit,
            "applied_index": self.applied,
            "leader_commit": self.leader_commit if self.role != LEADER else self.commit,
            "last_index": self.log.last_index,
            "snapshot_index": self.log.snap_index,
            "log_entries": len(self.log),
            "progress": progress,
            "transferring_to": self._transferee,
            "last_transfer": self.last_transfer,
            "pending_txs": len(self._pool),
            "pending_reads": len(self._reads) + len(self._reads_unready),
            "elections": self.elections,
            "blocks_installed": self.blocks_installed,
            "step_downs": list(self.step_downs),
            "installing_snapshot": None
            if self._install is None
            else {
                "index": self._install.index,
                "height": self._install.height,
                "behind": self._install.height - self.height,
            },
            "election": self._election_progress(),
            "recovering": None
            if self._recovery is None
            else {
                "reports": len(self._recovery.reports),
                "recovering_peers": len(self._recovery.recovering_peers),
                "needed": self._recovery.needed,
                "floor": self._recovery.floor,
                "term": self.term,
                "commit_term": self.log.term_at(self.commit),
            },
            "unresponsive": [p for p in self._others() if not self._progress[p].recent_active]
            if self.role == LEADER
            else [],
            "clock": self._clock_status(),
            "clock_handoffs": list(self.clock_handoffs),
            "clock_handoff_count": self.clock_handoff_count,
            "waiting_for": self._waiting_for(),
        }

    def _election_progress(self) -> dict[str, Any] | None:
        """While this member campaigns: the term, the votes it holds (its own included) and the
        majority needed; pre-vote is the PreVote round before the term moves (read-only)."""
        if self.role not in (PRE_CANDIDATE, CANDIDATE):
            return None
        return {
            "pre_vote": self.role == PRE_CANDIDATE,
            "term": self.term + 1 if self.role == PRE_CANDIDATE else self.term,
            "votes": sum(1 for v in self._votes.values() if v),
            "needed": self.majority,
            "reason": self.last_election_reason,
        }

    def _waiting_for(self) -> str:
        if self.role == PRE_CANDIDATE:
            have = sum(1 for v in self._votes.values() if v)
            return (
                f"pre-vote for term {self.term + 1}: {have} of {self.majority} needed "
                f"({self.last_election_reason})"
            )
        if self.role == CANDIDATE:
            have = sum(1 for v in self._votes.values() if v)
            return f"election for term {self.term}: {have} of {self.majority} votes"
        if self._install is not None:
            return (
                f"installing snapshot: behind by {self._install.height - self.height} blocks, "
                f"fetching from member {self._install.leader}"
            )
        if self.role == FOLLOWER and self.leader is None:
            return "no leader known (waiting for an election)"
        if self.role == LEADER:
            behind = [p for p in self._others() if not self._progress[p].recent_active]
            live = int(self.is_voter) + sum(1 for p in self._other_voters() if p not in behind)
            if live < self.majority:
                return f"no quorum: members {', '.join(map(str, behind))} not responding"
            if self.log.term_at(self.commit) != self.term:
                return f"committing the first entry of term {self.term}"
            if self._transferee is not None:
                return f"transferring leadership to member {self._transferee}"
            if self._pool:
                clock = self._clock_status()
                if clock["offset_ms"] is None:
                    return (
                        f"clocks of a majority before proposing: {clock['samples']} of "
                        f"{self.majority} heard"
                    )
                if clock["disagrees"]:
                    return (
                        f"own clock {clock['offset_ms']:+d} ms off the median of "
                        f"{clock['samples']} members' clocks: not proposing"
                    )
        return ""
