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
                     no-op change), or a member change (membership.py; and
                     config_members_unavailable: member changes are not enabled in this
                     release, `member_changes`); the transaction's id is spent, the change's
                     is not

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

import bisect
import heapq
import itertools
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, overload

from consortium.crypto.codec import digest_of
from consortium.crypto.merkle import merkle_root
from consortium.ledger.admission import (
    ADMIT,
    CHANGE_TTL_MAX_MS,
    REVOKE,
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
from consortium.ledger.membership import (
    CLIENTS,
    AdmitClient,
    Configuration,
    RevokeClient,
    apply_ops,
    approval_problem,
    genesis_configuration,
    possession_problem,
)
from consortium.ledger.membership import effective_height as member_effective_height
from consortium.ledger.tx import (
    CONFIG_OPS,
    CompareAndSet,
    ConfigChange,
    ConfigChangeV2,
    Delete,
    Get,
    Put,
    Transaction,
)

if TYPE_CHECKING:
    from consortium.ledger.genesis import Genesis

# A pending member change (pbft) or one accepted in a block: (effective height, change id,
# the next configuration).
PendingMember = tuple[int, bytes, Configuration]
MEMBER_KEY = "member"  # used_keys kinds: a key that was a member's, or a client's
CLIENT_KEY = "client"


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
    # A member change accepted in this block: (effective height, change id, next configuration)
    member_accepted: PendingMember | None = None
    config_activated: Configuration | None = None  # in force from the end of this block
    used: tuple[tuple[bytes, str], ...] = ()  # keys new to used_keys in this block, with kind
    height: int = 0


class _Used:
    """used_keys during a block: the state's and those new in this block (without copying)."""

    __slots__ = ("_base", "_here")

    def __init__(self, base: Mapping[bytes, str], here: Mapping[bytes, str]) -> None:
        self._base = base
        self._here = here

    def __contains__(self, key: object) -> bool:
        return key in self._here or key in self._base

    def __len__(self) -> int:
        return len(self._base) + sum(1 for k in self._here if k not in self._base)

    def __iter__(self) -> Iterator[bytes]:
        yield from self._base
        yield from (k for k in self._here if k not in self._base)


def used_keys_of(client_keys: Iterable[bytes], member_keys: Iterable[bytes]) -> dict[bytes, str]:
    """used_keys from the keys clients and members ever had (a key both: a member's, as
    never happens in a ledger: keys are never reused)."""
    used = dict.fromkeys(client_keys, CLIENT_KEY)
    used.update(dict.fromkeys(member_keys, MEMBER_KEY))
    return used


def _by_effective_height(p: PendingChange) -> int:
    return p.effective_height


@dataclass(slots=True)
class _Block:
    """What the changes of the block being executed share."""

    height: int
    timestamp_ms: int
    seen_here: set[bytes]
    recorded: list[PendingChange]
    member: PendingMember | None = None  # a member change accepted in this block
    used: dict[bytes, str] = field(default_factory=dict)  # keys used first in this block


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
    current set is `admitted`. `config` is the configuration in force (membership.py), which
    decides client and member changes and who may submit them; `member_keys` and `quorum`
    are derived from it (a state made with neither, as the simulators make theirs, refuses
    every change). `configs` holds every configuration with the first height it orders
    (`config_at`), `pending_member` a pbft member change waiting for its effective height,
    and `used_keys` every key that was ever a member's or a client's (never reused)."""

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
    # by (effective height, acceptance order): a v1 change accepted after a v2 one may take
    # effect before it
    pending: list[PendingChange] = field(default_factory=list)
    # client key -> block time of its last accepted change (a change must be created after it)
    changed_ms: dict[bytes, int] = field(default_factory=dict)
    config: Configuration | None = None
    pending_member: PendingMember | None = None
    configs: dict[int, tuple[int, Configuration]] = field(default_factory=dict)
    used_keys: dict[bytes, str] = field(default_factory=dict)  # key -> member | client
    # Whether a v2 change of kind "members" may be accepted. False in every production path
    # until the consensus cores and the node follow configurations (issue 19 parts B to D):
    # such a change is refused as config_members_unavailable. v2 client changes are not gated.
    member_changes: bool = False
    admitted: dict[bytes, str] = field(init=False)  # client key -> label
    _pending_last: dict[bytes, PendingChange] = field(init=False)  # key -> its latest change
    _used_names: set[str] = field(init=False)  # every name a member ever had
    _highest_id: int = field(init=False)  # the highest member id ever given
    _starts: list[int] = field(init=False)  # configs' first heights, ascending (config_at)
    _by_start: list[Configuration] = field(init=False)

    def __post_init__(self) -> None:
        if isinstance(self.replay, dict):
            self._expiry_heap = [(exp, tid) for tid, exp in self.replay.items()]
            heapq.heapify(self._expiry_heap)
        c = self.clients
        self.admitted = dict(c) if isinstance(c, Mapping) else dict.fromkeys(c, "")
        self.pending = list(self.pending)
        self._pending_last = {p.client_key: p for p in self.pending}
        assert all(
            a.effective_height <= b.effective_height for a, b in itertools.pairwise(self.pending)
        ), "pending client changes are ordered by effective height"
        if self.config is not None:
            if not self.member_keys:
                self.member_keys = tuple(m.public_key for m in self.config.members)
                self.quorum = self.config.quorum
            if not self.configs:
                self.configs = {self.config.epoch: (1, self.config)}
        if not self.used_keys:
            # What execution gives: every client key with an accepted change (changed_ms has
            # each, pending or applied, revoked since or not) besides those admitted now, and
            # every member key of every configuration (and of a pending one).
            configs = [c for _, c in self.configs.values()]
            if self.pending_member is not None:
                configs.append(self.pending_member[2])
            self.used_keys = used_keys_of(
                [*self.admitted, *self.changed_ms, *(p.client_key for p in self.pending)],
                [*self.member_keys, *(m.public_key for c in configs for m in c.members)],
            )
        assert self.quorum >= 1 or not self.member_keys, "a quorum of at least one member"
        self._index_configs()

    def _index_configs(self) -> None:
        every = [c for _, c in self.configs.values()]
        if self.pending_member is not None:
            every.append(self.pending_member[2])
        self._used_names = {m.name for c in every for m in c.members}
        self._highest_id = max((c.members[-1].id for c in every if c.members), default=-1)
        ordered = sorted(self.configs.values(), key=lambda x: x[0])
        self._starts = [start for start, _ in ordered]
        self._by_start = [c for _, c in ordered]

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
        configs: dict[int, tuple[int, Configuration]] | None = None,
        pending_member: PendingMember | None = None,
        used_keys: dict[bytes, str] | None = None,
        member_changes: bool = False,
    ) -> KeyValueState:
        """The state of `genesis`'s network at `state_root` (at genesis when the rest is
        omitted): genesis clients by name, the genesis configuration, the keys of both as
        used."""
        first = genesis_configuration(genesis)
        configs = configs or {0: (1, first)}
        config = configs[max(configs)][1]
        if used_keys is None:
            used_keys = used_keys_of(
                [
                    *(c.public_key for c in genesis.clients),
                    *(admitted or ()),
                    *(changed_ms or ()),
                    *(p.client_key for p in pending or ()),
                ],
                [m.public_key for _, c in configs.values() for m in c.members]
                + (
                    []
                    if pending_member is None
                    else [m.public_key for m in pending_member[2].members]
                ),
            )
        return cls(
            genesis.chain_id,
            genesis.params,
            {c.public_key: c.name for c in genesis.clients} if admitted is None else admitted,
            state_root,
            kv={} if kv is None else kv,
            replay={} if replay is None else replay,
            last_timestamp_ms=last_timestamp_ms,
            member_keys=tuple(m.public_key for m in config.members),
            quorum=config.quorum,
            pending=sorted(pending or (), key=lambda p: p.effective_height),
            changed_ms={} if changed_ms is None else changed_ms,
            config=config,
            pending_member=pending_member,
            configs=dict(configs),
            used_keys=used_keys,
            member_changes=member_changes,
        )

    def config_at(self, height: int) -> Configuration:
        """config(h): the configuration that orders and certifies `height` (the one committed
        by header h-1; genesis's for heights up to its first change)."""
        assert self._by_start, "a state without a configuration"
        i = bisect.bisect_right(self._starts, height) - 1
        return self._by_start[max(i, 0)]

    def ever_admitted(self, key: bytes) -> bool:
        """Whether `key` was admitted at some height of this state: in genesis, or by an
        accepted client change (in effect or pending; revoked since or not). `changed_ms`
        and used_keys (kind client) record every key with an accepted change, and a
        revocation needs the key admitted, so this set only grows, deterministically, with
        the blocks executed."""
        return (
            key in self.admitted or key in self.changed_ms or self.used_keys.get(key) == CLIENT_KEY
        )

    def may_submit(self, tx: Transaction) -> bool:
        """Whether a batch may carry `tx` in this state (pbft: what a backup prepares and an
        honest primary batches): its key was ever admitted, or it is a config change by a key
        that was ever a member's (a member may submit one without being a client; a key of
        an earlier configuration counts, so the answer only grows). Anything else can only
        execute as a permanent `unknown_client` receipt."""
        if self.ever_admitted(tx.client_key):
            return True
        return (
            bool(tx.ops)
            and isinstance(tx.ops[0], CONFIG_OPS)
            and (tx.client_key in self.member_keys or tx.client_key in self.used_keys)
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
        block = _Block(height, timestamp_ms, seen_here, recorded)

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
                # A member of the configuration in force may submit a config change without
                # being a client.
                tx.ops and isinstance(tx.ops[0], CONFIG_OPS) and tx.client_key in self.member_keys
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
                            refusal = self._check_change(
                                op, timestamp_ms, seen_here, recorded, block.used
                            )
                            if refusal is not None:
                                reason = refusal.reason
                                break
                            c = op.change
                            self._record_client(
                                block,
                                effective_height(height, self.params.checkpoint_interval),
                                c.id,
                                c.kind,
                                c.client_key,
                                c.label,
                            )
                            seen_here.add(c.id)
                            consumed.append((c.id, c.expiry_ms))
                            results.append(c.id)
                        case ConfigChangeV2():
                            refusal = self._execute_v2(op, block)
                            if refusal is not None:
                                reason = refusal.reason
                                break
                            seen_here.add(op.change.id)
                            consumed.append((op.change.id, op.change.expiry_ms))
                            results.append(op.change.id)
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

        # The configuration activated at the end of this block: pbft, the pending change at
        # its effective height; raft, a change accepted in this block.
        config_activated: Configuration | None = None
        if block.member is not None and self.config is not None and self.config.mode == "raft":
            config_activated = block.member[2]
        elif self.pending_member is not None:
            assert self.pending_member[0] >= height, "a pending member change was skipped"
            if self.pending_member[0] == height:
                config_activated = self.pending_member[2]

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
        if block.member is not None or config_activated is not None:
            accepted = (
                None
                if block.member is None
                else [block.member[0], block.member[1], block.member[2].digest]
            )
            hashed.append(
                [
                    "members",
                    accepted,
                    None if config_activated is None else config_activated.digest,
                ]
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
            block.member,
            config_activated,
            tuple(block.used.items()),
            height,
        )

    def _record_client(
        self,
        block: _Block,
        effective: int,
        change_id: bytes,
        kind: str,
        client_key: bytes,
        label: str,
    ) -> None:
        """An accepted client change: pending until `effective`, or until the key's latest
        pending change if that takes effect later (so a key's changes apply in the order they
        were accepted, whether v1 or v2), and its key used for good."""
        last = self._pending_last.get(client_key)
        for p in block.recorded:
            if p.client_key == client_key:
                last = p
        if last is not None:
            effective = max(effective, last.effective_height)
        block.recorded.append(
            PendingChange(
                effective, change_id, ADMIT if kind == ADMIT else REVOKE, client_key, label
            )
        )
        if client_key not in self.used_keys and client_key not in block.used:
            block.used[client_key] = CLIENT_KEY

    def _shared_problem(
        self,
        chain_id: bytes,
        change_id: bytes,
        expiry_ms: int,
        created_ms: int,
        timestamp_ms: int,
        seen_here: set[bytes],
    ) -> Refusal | None:
        """The checks every change passes first, v1 or v2, in this order."""
        if chain_id != self.chain_id:
            return Refusal("config_wrong_chain", "the change names another chain")
        if change_id in seen_here or (
            change_id in self.replay and self.replay[change_id] >= timestamp_ms
        ):
            return Refusal("config_duplicate", "this change already executed")
        if expiry_ms < timestamp_ms:
            return Refusal("config_expired", "the change expired before it was ordered")
        if expiry_ms - timestamp_ms > CHANGE_TTL_MAX_MS or (
            expiry_ms - created_ms > CHANGE_TTL_MAX_MS
        ):
            return Refusal(
                "config_expiry_too_far",
                "the change expires more than a week after the block or after its creation",
            )
        if created_ms > timestamp_ms:
            return Refusal("config_created_later", "the change was created after the block time")
        return None

    def _check_change(
        self,
        op: ConfigChange,
        timestamp_ms: int,
        seen_here: set[bytes],
        recorded: list[PendingChange],
        used_here: Mapping[bytes, str],
    ) -> Refusal | None:
        """Why a v1 client change cannot be accepted in this block, or None; cheapest first.
        v1 changes are judged by today's rules while the configuration is genesis's (epoch
        0), and refused as superseded from epoch 1 on. A key that was ever a member's
        (used_keys, or made one earlier in this block: a pending pbft member's key too) is
        refused as a member's key, as today's members are: else a v1 admit could make the
        pending member's key a client's as well."""
        c = op.change
        refusal = self._shared_problem(
            c.chain_id, c.id, c.expiry_ms, c.created_ms, timestamp_ms, seen_here
        )
        if refusal is not None:
            return refusal
        if self.config is not None and self.config.epoch > 0:
            return Refusal(
                "config_superseded",
                f"a v1 client change is valid only in the genesis configuration; this is epoch "
                f"{self.config.epoch}: propose a v2 change under it",
            )
        refusal = check_client_key(c.client_key, self.member_keys)
        if refusal is not None:
            return refusal
        if MEMBER_KEY in (self.used_keys.get(c.client_key), used_here.get(c.client_key)):
            return Refusal("config_member_key", "the key is a member's key, not a client's")
        if not self.member_keys:
            return Refusal("config_no_quorum", "this state has no members to approve changes")
        refusal = self._client_problem(c.kind, c.client_key, c.created_ms, timestamp_ms, recorded)
        if refusal is not None:
            return refusal
        return check_approvals(c, op.approvals, self.member_keys, self.quorum)

    def _client_problem(
        self,
        kind: str,
        key: bytes,
        created_ms: int,
        timestamp_ms: int,
        recorded: list[PendingChange],
        used: Collection[bytes] | None = None,
    ) -> Refusal | None:
        """Today's rules of a client change past its key's validity: it changes something,
        (v2: an admitted key was never used before), and it was created after the key's last
        accepted change."""
        # Accepted earlier in this block: the latest accepted change for the key decides.
        # (Changes of one block are few: a scan of them is cheaper than another map.)
        later = self.will_be_admitted(key)
        for p in recorded:
            if p.client_key == key:
                later = p.kind == ADMIT
        if kind == ADMIT and later:
            return Refusal("config_already_admitted", "the key is admitted (or will be)")
        if kind != ADMIT and not later:
            return Refusal("config_not_admitted", "the key is not admitted (or will not be)")
        if kind == ADMIT and used is not None and key in used:
            return Refusal(
                "config_key_used",
                f"key {key.hex()[:16]}… was a member's or a client's before: keys are never reused",
            )
        # A compare-and-set on the key's history: approvals collected before the key's last
        # accepted change are stale (e.g. an old admission after a revocation).
        last = self.changed_ms.get(key)
        if any(p.client_key == key for p in recorded):
            last = timestamp_ms  # a change of the key accepted earlier in this block
        if last is not None and created_ms <= last:
            return Refusal(
                "config_superseded",
                "the change was created before the key's last accepted change (at "
                f"{last} ms): its approvals predate it; propose and approve it again",
            )
        return None

    def _execute_v2(self, op: ConfigChangeV2, block: _Block) -> Refusal | None:
        """Judge a v2 change in the design's order (docs/design/membership.md 1.3) and, if it
        is accepted, record it in `block`; the refusal otherwise."""
        change = op.change
        refusal = self._shared_problem(
            change.chain_id,
            change.id,
            change.expiry_ms,
            change.created_ms,
            block.timestamp_ms,
            block.seen_here,
        )
        if refusal is not None:
            return refusal
        if change.kind != CLIENTS and not self.member_changes:
            return Refusal(
                "config_members_unavailable", "member changes are not enabled in this release"
            )
        config = self.config
        if config is None or not self.member_keys:
            return Refusal("config_no_quorum", "this state has no members to approve changes")
        if change.epoch != config.epoch or change.config_digest != config.digest:
            return Refusal(
                "config_superseded",
                f"the change was approved under configuration {change.epoch} "
                f"({change.config_digest.hex()[:12]}…); configuration {config.epoch} "
                f"({config.digest.hex()[:12]}…) is in force: propose it again",
            )
        body = change.encode()
        used = _Used(self.used_keys, block.used)
        if change.kind == CLIENTS:
            cop = change.ops[0]
            assert isinstance(cop, AdmitClient | RevokeClient)
            refusal = check_client_key(cop.client_key, ()) or self._client_problem(
                "admit" if isinstance(cop, AdmitClient) else "revoke",
                cop.client_key,
                change.created_ms,
                block.timestamp_ms,
                block.recorded,
                used,
            )
            if refusal is None:
                refusal = approval_problem(config, body, op.approvals)
            if refusal is not None:
                return refusal
            h = block.height
            effective = (
                member_effective_height("pbft", h, self.params)
                if (config.mode == "pbft")
                else h + 1
            )
            label = cop.label if isinstance(cop, AdmitClient) else ""
            kind = ADMIT if isinstance(cop, AdmitClient) else REVOKE
            self._record_client(block, effective, change.id, kind, cop.client_key, label)
            return None
        if self.pending_member is not None or block.member is not None:
            pending = self.pending_member or block.member
            assert pending is not None
            return Refusal(
                "config_change_pending",
                f"a member change is pending until height {pending[0]}: one change at a time",
            )
        result = apply_ops(
            config,
            change,
            highest_id=self._highest_id,
            used_keys=used,
            used_names=self._used_names,
        )
        if isinstance(result, Refusal):
            return result
        refusal = possession_problem(change, op.possessions) or approval_problem(
            config, body, op.approvals
        )
        if refusal is not None:
            return refusal
        block.member = (
            member_effective_height(config.mode, block.height, self.params),
            change.id,
            result,
        )
        for key in change.new_keys:
            block.used[key] = MEMBER_KEY
        return None

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
        if execution.activated:
            n = len(execution.activated)
            assert tuple(self.pending[:n]) == execution.activated, (
                "pending client changes apply in order"
            )
            del self.pending[:n]
        for p in execution.activated:
            if p.kind == ADMIT:
                self.admitted[p.client_key] = p.label
            else:
                self.admitted.pop(p.client_key, None)
            if self._pending_last.get(p.client_key) == p:
                del self._pending_last[p.client_key]
        for p in execution.recorded:
            bisect.insort_right(self.pending, p, key=_by_effective_height)
            self._pending_last[p.client_key] = p
            self.changed_ms[p.client_key] = execution.timestamp_ms
        for key, kind in execution.used:
            self.used_keys.setdefault(key, kind)
        if execution.member_accepted is not None:
            if execution.config_activated is None:
                self.pending_member = execution.member_accepted
            next_config = execution.member_accepted[2]
            self._used_names.update(m.name for m in next_config.members)
            self._highest_id = max(self._highest_id, next_config.members[-1].id)
        if execution.config_activated is not None:
            self._activate(execution.config_activated, execution.height + 1)
        self.state_root = execution.state_root
        self.last_timestamp_ms = execution.timestamp_ms
        self._prune(execution.timestamp_ms)

    def _activate(self, config: Configuration, first_height: int) -> None:
        self.config = config
        self.pending_member = None
        self.configs[config.epoch] = (first_height, config)
        self.member_keys = tuple(m.public_key for m in config.members)
        self.quorum = config.quorum
        self._index_configs()

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
    # The configuration in force after this block: activated by it, or the app's (an
    # application without configurations has none).
    after = execution.config_activated or getattr(app, "config", None)
    header = BlockHeader(
        chain_id=prev.chain_id,
        height=height,
        prev_hash=prev.hash,
        timestamp_ms=timestamp_ms,
        tx_root=merkle_root([t.id for t in txs]),
        state_root=execution.state_root,
        receipts_root=receipts_root(execution.receipts),
        consensus=consensus,
        config_digest=after.digest if after is not None and after.epoch >= 1 else None,
    )
    return Block(header, txs, execution.receipts), execution
