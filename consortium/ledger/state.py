"""The application: a deterministic state machine behind a small interface, and the default
key-value store.

Execution of one agreed batch, given the previous header, is a pure function of the batch and the
state, so every honest member derives the same receipts, state root and block. State-dependent
failures are deterministic `rejected` receipts that change nothing:

    unknown_client   the signing key is not an admitted client (a member's key may submit
                     only a client change)
    wrong_chain      the body names another chain (also refused before ordering)
    duplicate        the id already executed (in an earlier block, or earlier in this block)
    expired          expiry_ms < block timestamp
    expiry_too_far   expiry_ms - block timestamp > tx_ttl_max_ms
    cas_mismatch     a compare-and-set found another value (the whole transaction is undone)
    config_*         a client change was refused (ledger/admission.py: no quorum, a bad or
                     duplicate or non-member approval, an invalid key, a replayed, expired or
                     no-op change); the transaction's id is spent, the change's is not

Admitted clients are state too (ledger/admission.py): the set `admitted` and the changes
`pending` until their effective height E, a checkpoint boundary. A block at height E first
applies the changes pending for E, then executes its transactions against the new set. Both
updates are proportional to the changes, and both enter the state root when they happen.

Replay protection is by id: an id executes at most once. Only unexpired ids need remembering
(an expired id is rejected anyway), so the replay set is bounded by tx_ttl_max_ms times the rate.

Memory. A member's state lives in its block store; `kv` and `replay` are then `CachedTable`s:
reads go through a cache to the store, bounded in entries and in bytes of keys and values (64 MiB
per table in a member's store), and what was applied but is not durable yet stays in memory until
the store says it is (`durable`; never evicted, bounded by what one store write holds). A
member's memory is thus bounded whatever the size of its state. Simulators and the offline audit
use plain dicts.

State root. Deviation from a Merkleised state: the root is a hash chain over each block's state
changes, root_h = H("state", root_{h-1}, sorted writes, ids consumed). It commits to the whole
state (two replicas with equal roots applied identical histories from genesis), updates in time
proportional to the block's writes, never to the size of the state, and is recomputed by the
offline audit. It does not give per-key proofs against the root; receipts carry Merkle proofs
against the block instead.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, overload

from consortium.crypto.codec import digest_of
from consortium.crypto.merkle import merkle_root
from consortium.ledger.admission import (
    ADMIT,
    CHANGE_TTL_MAX_MS,
    PendingChange,
    Refusal,
    check_approvals,
    check_client_key,
    effective_height,
)
from consortium.ledger.block import (
    OK,
    REJECTED,
    Block,
    BlockHeader,
    Receipt,
    receipts_root,
)
from consortium.ledger.genesis import Params
from consortium.ledger.tx import CompareAndSet, ConfigChange, Delete, Get, Put, Transaction

if TYPE_CHECKING:
    from consortium.ledger.genesis import Genesis


@dataclass(frozen=True, slots=True)
class Execution:
    """The outcome of executing one block, before it is applied."""

    receipts: tuple[Receipt, ...]
    writes: dict[bytes, bytes | None]  # key -> new value (None: deleted)
    consumed: tuple[tuple[bytes, int], ...]  # (tx id, expiry_ms) now in the replay set
    state_root: bytes
    timestamp_ms: int
    activated: tuple[PendingChange, ...] = ()  # pending client changes applied at this height
    recorded: tuple[PendingChange, ...] = ()  # client changes accepted in this block


class _Overlay:
    """The admitted set during a block that applies pending changes (without copying it)."""

    __slots__ = ("_base", "_changed")

    def __init__(self, base: Mapping[bytes, str], changed: dict[bytes, bool]) -> None:
        self._base = base
        self._changed = changed

    def __contains__(self, key: object) -> bool:
        changed = self._changed.get(key)  # type: ignore[call-overload]
        return key in self._base if changed is None else changed


class Application(Protocol):
    @property
    def state_root(self) -> bytes: ...

    def execute(
        self, height: int, timestamp_ms: int, txs: tuple[Transaction, ...]
    ) -> Execution: ...

    def apply(self, execution: Execution) -> None: ...


V = TypeVar("V")


class Table(Protocol[V]):
    """What the application needs of its key-value and replay maps (a dict is one)."""

    def get(self, key: bytes, /) -> V | None: ...

    def __contains__(self, key: object, /) -> bool: ...

    def __getitem__(self, key: bytes, /) -> V: ...

    def __setitem__(self, key: bytes, value: V, /) -> None: ...

    def __delitem__(self, key: bytes, /) -> None: ...


def entry_bytes(key: bytes, value: object) -> int:
    """What a cached entry counts against a CachedTable's byte budget: its key and value
    (an int or an absence counts 8 bytes)."""
    return len(key) + (len(value) if isinstance(value, bytes) else 8)


class CachedTable(Generic[V]):
    """A map kept in the store: `load(key)` reads the durable value (None: absent). What was
    written since (applied, not yet durable) is held in `_dirty` until `durable` is told the
    store has it (never evicted: bounded by what one store write holds); clean values are
    cached, at most `cache_max` of them (absences too) and at most `bytes_max` bytes of keys
    and values (entry_bytes), least recently used first out."""

    def __init__(
        self,
        load: Callable[[bytes], V | None],
        cache_max: int = 65_536,
        load_many: Callable[[list[bytes]], dict[bytes, V]] | None = None,
        bytes_max: int = 64 << 20,
    ) -> None:
        assert cache_max > 0 and bytes_max > 0
        self._load = load
        self._load_many = load_many
        self._cache_max = cache_max
        self._bytes_max = bytes_max
        self._dirty: dict[bytes, V | None] = {}  # None: deleted
        # The write counter at each dirty key's last write: `durable(items, upto)` unpins a
        # key only when nothing written after `upto` (a block applied after the store write
        # that holds `items` was staged) changed it since, even back to the same value.
        self._dirty_at: dict[bytes, int] = {}
        self.writes = 0
        self._clean: OrderedDict[bytes, V | None] = OrderedDict()
        self._clean_bytes = 0
        self.loads = 0

    @overload
    def get(self, key: bytes, /) -> V | None: ...

    @overload
    def get(self, key: bytes, default: V, /) -> V: ...

    def get(self, key: bytes, default: V | None = None, /) -> V | None:
        if key in self._dirty:
            value = self._dirty[key]
        else:
            clean = self._clean
            if key in clean:
                clean.move_to_end(key)
                value = clean[key]
            else:
                value = self._load(key)
                self.loads += 1
                self._keep(key, value)
        return default if value is None else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and self.get(key) is not None

    def __getitem__(self, key: bytes) -> V:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: bytes, value: V) -> None:
        self._write(key, value)

    def __delitem__(self, key: bytes) -> None:
        self._write(key, None)

    def pop(self, key: bytes, default: V | None = None) -> V | None:
        value = self.get(key)
        self._write(key, None)
        return default if value is None else value

    def _write(self, key: bytes, value: V | None) -> None:
        self.writes += 1
        self._dirty[key] = value
        self._dirty_at[key] = self.writes

    def prefetch(self, keys: Iterable[bytes]) -> None:
        """Read these (a block's) from the store in one go rather than one by one."""
        if self._load_many is None:
            return
        wanted = [k for k in keys if k not in self._dirty and k not in self._clean]
        if not wanted:
            return
        found = self._load_many(wanted)
        self.loads += 1
        for key in wanted:
            self._keep(key, found.get(key))

    def durable(self, items: Iterable[tuple[bytes, V | None]], upto: int) -> None:
        """The store now holds a write with these keys, made of writes up to `upto` (this
        table's `writes` counter when it was staged): unpin each key not written again since,
        keeping its last value, which the store holds."""
        dirty, dirty_at = self._dirty, self._dirty_at
        for key, _ in items:
            if key in dirty and dirty_at[key] <= upto:
                del dirty_at[key]
                self._keep(key, dirty.pop(key))

    @property
    def pinned(self) -> int:
        """Values applied but not yet durable (bounded by the blocks in one store write)."""
        return len(self._dirty)

    @property
    def cached_bytes(self) -> int:
        """Bytes of keys and values in the clean cache (at most bytes_max)."""
        return self._clean_bytes

    def _keep(self, key: bytes, value: V | None) -> None:
        clean = self._clean
        if key in clean:
            self._clean_bytes -= entry_bytes(key, clean[key])
        clean[key] = value
        clean.move_to_end(key)
        self._clean_bytes += entry_bytes(key, value)
        while len(clean) > self._cache_max or self._clean_bytes > self._bytes_max:
            old_key, old_value = clean.popitem(last=False)
            self._clean_bytes -= entry_bytes(old_key, old_value)


@dataclass
class KeyValueState:
    """The default application. `execute` is pure; `apply` commits an Execution.

    `clients` are the admitted clients this state starts with (keys, or key -> label); the
    current set is `admitted`. `member_keys` and `quorum` decide client changes; a state made
    without them (simulators, which never change clients) refuses every change."""

    chain_id: bytes
    params: Params
    clients: Collection[bytes] | Mapping[bytes, str]
    state_root: bytes
    kv: Table[bytes] = field(default_factory=dict)
    # executed id -> expiry; a replay only while its expiry is not before the block's time (in
    # memory, expired ids are pruned; a store's table keeps a transaction's id past its expiry)
    replay: Table[int] = field(default_factory=dict)
    _expiry_heap: list[tuple[int, bytes]] = field(default_factory=list)
    last_timestamp_ms: int = 0
    member_keys: tuple[bytes, ...] = ()
    quorum: int = 0
    pending: deque[PendingChange] = field(default_factory=deque)  # by effective height
    # client key -> block time of its last accepted change (a change must be created after it)
    changed_ms: dict[bytes, int] = field(default_factory=dict)
    admitted: dict[bytes, str] = field(init=False)  # client key -> label
    _pending_last: dict[bytes, PendingChange] = field(init=False)  # key -> its latest change

    def __post_init__(self) -> None:
        if isinstance(self.replay, dict):
            self._expiry_heap = [(exp, tid) for tid, exp in self.replay.items()]
            heapq.heapify(self._expiry_heap)
        c = self.clients
        self.admitted = dict(c) if isinstance(c, Mapping) else dict.fromkeys(c, "")
        self._pending_last = {p.client_key: p for p in self.pending}
        assert all(
            a.effective_height <= b.effective_height
            for a, b in zip(self.pending, list(self.pending)[1:], strict=False)
        ), "pending client changes are ordered by effective height"
        assert self.quorum >= 1 or not self.member_keys, "a quorum of at least one member"

    @classmethod
    def for_genesis(
        cls,
        genesis: Genesis,
        state_root: bytes,
        *,
        admitted: Mapping[bytes, str] | None = None,
        pending: list[PendingChange] | None = None,
        changed_ms: dict[bytes, int] | None = None,
        kv: Table[bytes] | None = None,
        replay: Table[int] | None = None,
        last_timestamp_ms: int = 0,
    ) -> KeyValueState:
        """The state of `genesis`'s network at `state_root` (at genesis when the rest is
        omitted): genesis clients by name, member keys and quorum for client changes."""
        return cls(
            genesis.chain_id,
            genesis.params,
            {c.public_key: c.name for c in genesis.clients} if admitted is None else admitted,
            state_root,
            kv={} if kv is None else kv,
            replay={} if replay is None else replay,
            last_timestamp_ms=last_timestamp_ms,
            member_keys=tuple(m.public_key for m in genesis.members),
            quorum=genesis.quorum,
            pending=deque(pending or ()),
            changed_ms={} if changed_ms is None else changed_ms,
        )

    def ever_admitted(self, key: bytes) -> bool:
        """Whether `key` was admitted at some height of this state: in genesis, or by an
        accepted client change (in effect or pending; revoked since or not). `changed_ms`
        records every key with an accepted change, and a revocation needs the key admitted,
        so this set only grows, deterministically, with the blocks executed."""
        return key in self.admitted or key in self.changed_ms

    def may_submit(self, tx: Transaction) -> bool:
        """Whether a batch may carry `tx` in this state (pbft: what a backup prepares and an
        honest primary batches): its key was ever admitted, or it is a member's client change
        (a member may submit one without being a client). Anything else can only execute as a
        permanent `unknown_client` receipt."""
        if self.ever_admitted(tx.client_key):
            return True
        return (
            bool(tx.ops)
            and isinstance(tx.ops[0], ConfigChange)
            and tx.client_key in self.member_keys
        )

    def will_be_admitted(self, key: bytes) -> bool:
        """Whether `key` is admitted once every pending change has taken effect."""
        last = self._pending_last.get(key)
        return key in self.admitted if last is None else last.kind == ADMIT

    def pending_admission(self, key: bytes) -> PendingChange | None:
        """The pending change that will admit `key`, if `key` is not admitted now."""
        last = self._pending_last.get(key)
        return last if last is not None and last.kind == ADMIT else None

    def get(self, key: bytes) -> bytes | None:
        return self.kv.get(key)

    def execute(self, height: int, timestamp_ms: int, txs: tuple[Transaction, ...]) -> Execution:
        writes: dict[bytes, bytes | None] = {}
        consumed: list[tuple[bytes, int]] = []
        seen_here: set[bytes] = set()
        receipts: list[Receipt] = []
        ttl_max = self.params.tx_ttl_max_ms
        activated: list[PendingChange] = []
        for p in self.pending:  # ordered by effective height: a prefix applies here
            if p.effective_height > height:
                break
            activated.append(p)
        admitted: Mapping[bytes, str] | _Overlay = self.admitted
        if activated:
            admitted = _Overlay(self.admitted, {p.client_key: p.kind == ADMIT for p in activated})
        recorded: list[PendingChange] = []

        if isinstance(self.replay, CachedTable):
            self.replay.prefetch(tx.id for tx in txs)
        if isinstance(self.kv, CachedTable):
            self.kv.prefetch(
                op.key
                for tx in txs
                for op in tx.ops
                if isinstance(op, Delete | CompareAndSet | Get)
            )

        def current(key: bytes) -> bytes | None:
            return writes[key] if key in writes else self.kv.get(key)

        for index, tx in enumerate(txs):
            reason = ""
            if tx.chain_id != self.chain_id:
                reason = "wrong_chain"
            elif tx.client_key not in admitted and not (
                # A member may submit a client change without being a client.
                tx.ops and isinstance(tx.ops[0], ConfigChange) and tx.client_key in self.member_keys
            ):
                reason = "unknown_client"
            elif tx.id in seen_here or (
                tx.id in self.replay and self.replay[tx.id] >= timestamp_ms
            ):
                reason = "duplicate"
            elif tx.expiry_ms < timestamp_ms:
                reason = "expired"
            elif tx.expiry_ms - timestamp_ms > ttl_max:
                reason = "expiry_too_far"
            results: list[bytes | bool | None] = []
            if not reason:
                local: dict[bytes, bytes | None] = {}

                def read(key: bytes, local: dict[bytes, bytes | None] = local) -> bytes | None:
                    return local[key] if key in local else current(key)

                for op in tx.ops:
                    match op:
                        case Put(key=k, value=v):
                            local[k] = v
                            results.append(None)
                        case Delete(key=k):
                            results.append(read(k) is not None)
                            local[k] = None
                        case CompareAndSet(key=k, expected=e, new=n):
                            if read(k) != e:
                                reason = "cas_mismatch"
                                break
                            local[k] = n
                            results.append(True)
                        case Get(key=k):
                            results.append(read(k))
                        case ConfigChange():
                            refusal = self._check_change(op, timestamp_ms, seen_here, recorded)
                            if refusal is not None:
                                reason = refusal.reason
                                break
                            c = op.change
                            p = PendingChange(
                                effective_height(height, self.params.checkpoint_interval),
                                c.id,
                                c.kind,
                                c.client_key,
                                c.label,
                            )
                            recorded.append(p)
                            seen_here.add(c.id)
                            consumed.append((c.id, c.expiry_ms))
                            results.append(c.id)
                if not reason:
                    writes.update(local)
            if reason in ("", "cas_mismatch") or reason.startswith("config_"):
                # The id is spent whether or not its operations applied: it executed.
                seen_here.add(tx.id)
                consumed.append((tx.id, tx.expiry_ms))
            if reason:
                receipts.append(Receipt(tx.id, REJECTED, reason, (), height, index))
            else:
                receipts.append(Receipt(tx.id, OK, "", tuple(results), height, index))

        hashed = [
            "state",
            self.state_root,
            [[k, writes[k]] for k in sorted(writes)],
            [tid for tid, _ in consumed],
        ]
        if activated or recorded:
            hashed.append(
                ["clients", [p.to_array() for p in activated], [p.to_array() for p in recorded]]
            )
        root = digest_of(hashed)
        return Execution(
            tuple(receipts),
            writes,
            tuple(consumed),
            root,
            timestamp_ms,
            tuple(activated),
            tuple(recorded),
        )

    def _check_change(
        self,
        op: ConfigChange,
        timestamp_ms: int,
        seen_here: set[bytes],
        recorded: list[PendingChange],
    ) -> Refusal | None:
        """Why a client change cannot be accepted in this block, or None; cheapest first."""
        c = op.change
        if c.chain_id != self.chain_id:
            return Refusal("config_wrong_chain", "the change names another chain")
        if c.id in seen_here or (c.id in self.replay and self.replay[c.id] >= timestamp_ms):
            return Refusal("config_duplicate", "this change already executed")
        if c.expiry_ms < timestamp_ms:
            return Refusal("config_expired", "the change expired before it was ordered")
        if c.expiry_ms - timestamp_ms > CHANGE_TTL_MAX_MS or (
            c.expiry_ms - c.created_ms > CHANGE_TTL_MAX_MS
        ):
            return Refusal(
                "config_expiry_too_far",
                "the change expires more than a week after the block or after its creation",
            )
        if c.created_ms > timestamp_ms:
            return Refusal("config_created_later", "the change was created after the block time")
        refusal = check_client_key(c.client_key, self.member_keys)
        if refusal is not None:
            return refusal
        if not self.member_keys:
            return Refusal("config_no_quorum", "this state has no members to approve changes")
        # Accepted earlier in this block: the latest accepted change for the key decides.
        # (Changes of one block are few: a scan of them is cheaper than another map.)
        later = self.will_be_admitted(c.client_key)
        for p in recorded:
            if p.client_key == c.client_key:
                later = p.kind == ADMIT
        if c.kind == ADMIT and later:
            return Refusal("config_already_admitted", "the key is admitted (or will be)")
        if c.kind != ADMIT and not later:
            return Refusal("config_not_admitted", "the key is not admitted (or will not be)")
        # A compare-and-set on the key's history: approvals collected before the key's last
        # accepted change are stale (e.g. an old admission after a revocation).
        last = self.changed_ms.get(c.client_key)
        if any(p.client_key == c.client_key for p in recorded):
            last = timestamp_ms  # a change of the key accepted earlier in this block
        if last is not None and c.created_ms <= last:
            return Refusal(
                "config_superseded",
                "the change was created before the key's last accepted change (at "
                f"{last} ms): its approvals predate it; propose and approve it again",
            )
        return check_approvals(c, op.approvals, self.member_keys, self.quorum)

    def apply(self, execution: Execution) -> None:
        for k, v in execution.writes.items():
            if v is None:
                if k in self.kv:
                    del self.kv[k]
            else:
                self.kv[k] = v
        in_memory = isinstance(self.replay, dict)
        for tid, exp in execution.consumed:
            self.replay[tid] = exp
            if in_memory:  # (a stored replay table forgets expired ids in the store)
                heapq.heappush(self._expiry_heap, (exp, tid))
        for p in execution.activated:
            first = self.pending.popleft()
            assert first == p, "pending client changes apply in order"
            if p.kind == ADMIT:
                self.admitted[p.client_key] = p.label
            else:
                self.admitted.pop(p.client_key, None)
            if self._pending_last.get(p.client_key) == p:
                del self._pending_last[p.client_key]
        for p in execution.recorded:
            self.pending.append(p)
            self._pending_last[p.client_key] = p
            self.changed_ms[p.client_key] = execution.timestamp_ms
        self.state_root = execution.state_root
        self.last_timestamp_ms = execution.timestamp_ms
        self._prune(execution.timestamp_ms)

    def _prune(self, now_ms: int) -> None:
        """Forget ids whose expiry has passed: they would be rejected as expired anyway."""
        heap = self._expiry_heap
        while heap and heap[0][0] < now_ms:
            exp, tid = heapq.heappop(heap)
            if self.replay.get(tid) == exp:
                del self.replay[tid]

    def write_mark(self) -> tuple[int, int]:
        """Where the cached tables' writes are now (for `durable`): what is applied so far."""
        kv = self.kv.writes if isinstance(self.kv, CachedTable) else 0
        replay = self.replay.writes if isinstance(self.replay, CachedTable) else 0
        return kv, replay

    def durable(self, execution: Execution, mark: tuple[int, int] | None = None) -> None:
        """The store holds `execution`'s writes now, in a write staged at `mark` (write_mark()
        then; None: nothing applied since): cached tables may let them go, except what a
        later, unwritten execution changed again."""
        kv_mark, replay_mark = self.write_mark() if mark is None else mark
        if isinstance(self.kv, CachedTable):
            self.kv.durable(execution.writes.items(), kv_mark)
        if isinstance(self.replay, CachedTable):
            self.replay.durable(execution.consumed, replay_mark)


def build_block(
    prev: BlockHeader,
    consensus: tuple[str | int, ...],
    proposed_ms: int,
    txs: tuple[Transaction, ...],
    app: Application,
) -> tuple[Block, Execution]:
    """Execute an agreed batch on top of `prev`; pure with respect to `app` (call app.apply)."""
    height = prev.height + 1
    timestamp_ms = max(proposed_ms, prev.timestamp_ms)
    execution = app.execute(height, timestamp_ms, txs)
    header = BlockHeader(
        chain_id=prev.chain_id,
        height=height,
        prev_hash=prev.hash,
        timestamp_ms=timestamp_ms,
        tx_root=merkle_root([t.id for t in txs]),
        state_root=execution.state_root,
        receipts_root=receipts_root(execution.receipts),
        consensus=consensus,
    )
    return Block(header, txs, execution.receipts), execution
