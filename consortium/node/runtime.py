"""The node process: one Trio program around one consensus core.

Tasks (one nursery):
    peers      PeerNetwork: authenticated peer connections, bounded queues, coalesced sends
    pump       reads peer frames, decodes them, pre-verifies the client signatures a PRE-PREPARE
               carries on worker threads, and hands the message to the core task
    clients    ClientServer: submissions, receipts, reads, blocks, status
    http       (opt-in, node.toml [http]) GET /healthz /readyz /status /metrics
    core       the only task that touches the core: feeds it events and ticks, then carries out
               each Ready in the order the core requires:
                   1. execute committed batches into blocks (deterministic, in sequence order)
                   2. ONE durable write (fsync) for the step: the core's records (own votes,
                      stable checkpoints) and the new blocks with their certificates and our
                      block signatures
                   3. send the core's messages (a vote is on disk before it leaves)
                   4. tell the core what executed; push receipts to waiting clients

Completed I/O comes back to the core as input, never as a callback into it.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, assert_never

import trio

from consortium.crashft import reasons as raft_reasons
from consortium.crypto.keys import KeyPair
from consortium.crypto.merkle import MerkleTree
from consortium.crypto.signing import Domain, Ed25519Signer, Ed25519Verifier
from consortium.ledger.block import Block, Receipt
from consortium.ledger.certificates import (
    SignedVote,
    block_signature_body,
    decode_certificate,
)
from consortium.ledger.clock import expiry_now_ms
from consortium.ledger.genesis import Genesis
from consortium.ledger.state import Execution
from consortium.ledger.store import RECOVERY_MARK_KEY, StoreError
from consortium.ledger.tx import Transaction
from consortium.node.config import NodeConfig
from consortium.node.executor import (
    Durable,
    Effect,
    Executed,
    Executor,
    NoOpApplied,
    Outgoing,
    Reads,
    Refused,
    Send,
    Serve,
    Write,
)
from consortium.node.explain import PeerLink, blockers, fault_budget, name_members, peer_rows
from consortium.node.http import HttpServer, Response, json_response, text
from consortium.node.logs import RateLimitedLog, attach_context
from consortium.node.metrics import (
    BATCH_TXS_BUCKETS,
    CONTENT_TYPE,
    FSYNC_S_BUCKETS,
    LATENCY_S_BUCKETS,
    Histogram,
    prometheus_text,
)
from consortium.node.preflight import open_store
from consortium.node.transport import PeerNetwork
from consortium.node.verification import (
    CountingSigner,
    CountingVerifier,
    TxSignatureCache,
    message_kind,
)
from consortium.pbft import messages as pbft_messages
from consortium.pbft import reasons as pbft_reasons
from consortium.pbft.replica import PbftConfig, PbftReplica, RecoveredState
from consortium.pbft.replica import Serve as PbftServe
from consortium.pbft.transfer import blocks_reply
from consortium.protocol.messages import encode_block_receipts
from consortium.protocol.tls import TlsIdentity
from consortium.protocol.verify import read_body, receipt_bundle

TICK_MS = 2
TICK_IDLE_MAX_MS = 16  # the coarsest timer granularity when idle (timeouts are >= 50 ms)
STALL_MIN_MS = 4 * TICK_IDLE_MAX_MS  # a core loop iteration longer than this may be a stall
TEST_BYZANTINE_MODES = ("silent-primary", "equivocating-primary")
EVENTS_MAX = 8192  # bounded queue between the pump/clients and the core task
WATCHED_TXS_MAX = 200_000  # transactions with a waiting client, over all connections
WATCH_SCAN_BLOCKS = 64  # how often (in blocks) watches of expired transactions are forgotten
# Watches by id (a client following ids it did not submit here) carry no expiry a block could
# judge, and anyone reaching the client port may send them: they get a fixed age and a share of
# WATCHED_TXS_MAX, so strangers watching random ids never make submits "overloaded".
ID_WATCH_AGE_S = 600.0  # a watch by id is forgotten after this (the client asks again)
ID_WATCHES_SHARE = 4  # watches by id take at most WATCHED_TXS_MAX // this, node-wide
DRAIN_MAX = 512  # events handled per core step before taking the Ready
HEALTH_TICK_AGE_S = 5.0  # /healthz fails when the core loop has not ticked for this long
REJECTIONS_LOG_INTERVAL_S = 10.0  # peer messages dropped by the core: one summary line per
# Whether a drop reason means a peer sent something no honest member would, by mode: each
# core's table of reasons says (pbft/reasons.py, crashft/reasons.py). The rest (duplicates,
# stale views, full buffers) happen between honest members and are summarised at debug level.
MISBEHAVIOUR_BY_MODE: dict[str, Callable[[str], bool]] = {
    "pbft": pbft_reasons.is_misbehaviour,
    "raft": raft_reasons.is_misbehaviour,
}


class RunningClock:
    """The pbft core's monotonic clock: milliseconds this process ran. A core loop iteration
    longer than `stall_ms` (the process was stopped, its host suspended, the loop held up)
    advances it by `stall_ms` only.

    The core's view-change timers measure how long it watched the primary fail to make
    progress. A backup that was not running watched nothing: counting that time, it suspected
    the primary at its first tick after a SIGSTOP longer than the timeout and asked alone for
    the next view, while the others went on without it; it cannot go back (its VIEW-CHANGE
    promised to leave the view), so it counted as one of the f faulty until their next view
    change (measured: 40 s and more). Not counting the stall, it first reads what
    arrived meanwhile and catches up. Only timers are affected, never safety; a primary that
    really stalls is still suspected by the members that watched it. (Raft keeps the plain
    clock: its leader advances follower clock samples by it.)
    """

    def __init__(self, stall_ms: int) -> None:
        assert stall_ms > 0
        self.stall_ms = stall_ms
        self.stalls = 0  # iterations cut short, for status
        self.skipped_ms = 0  # real time not counted
        self._last_ms: int | None = None
        self._ms = 0

    def advance(self, mono_ms: int) -> int:
        """The clock at real monotonic time `mono_ms` (non-decreasing calls)."""
        if self._last_ms is None:
            self._ms = mono_ms
        else:
            elapsed = max(0, mono_ms - self._last_ms)
            if elapsed > self.stall_ms:
                self.stalls += 1
                self.skipped_ms += elapsed - self.stall_ms
            self._ms += min(elapsed, self.stall_ms)
        self._last_ms = mono_ms
        return self._ms


@dataclass(slots=True)
class NodeMetrics:
    started_ms: int = 0
    blocks: int = 0
    txs_committed: int = 0
    steps: int = 0
    fsyncs: int = 0
    submitted: int = 0
    rejected_at_submit: dict[str, int] = field(default_factory=dict)
    sent_by_kind: Counter[str] = field(default_factory=Counter)
    bytes_by_kind: Counter[str] = field(default_factory=Counter)
    received_by_kind: Counter[str] = field(default_factory=Counter)
    received_bytes_by_kind: Counter[str] = field(default_factory=Counter)
    batch_txs: Histogram = field(default_factory=lambda: Histogram(BATCH_TXS_BUCKETS))
    commit_latency_s: Histogram = field(default_factory=lambda: Histogram(LATENCY_S_BUCKETS))
    fsync_s: Histogram = field(default_factory=lambda: Histogram(FSYNC_S_BUCKETS))


class Node:
    """One member. `run()` serves until cancelled; `status()` is always cheap."""

    def __init__(
        self,
        config: NodeConfig,
        genesis: Genesis,
        keys: KeyPair,
        *,
        log: logging.Logger | None = None,
        peer_listen: tuple[str, int] | None = None,
        client_listen: tuple[str, int] | None = None,
        http_listen: tuple[str, int] | None = None,
        test_byzantine: str | None = None,
        test_partition_file: Path | None = None,
        test_clock_offset_file: Path | None = None,
    ) -> None:
        assert test_byzantine in (None, *TEST_BYZANTINE_MODES), test_byzantine
        member = genesis.member_by_key(keys.public)
        assert member is not None, "load_identity checks the key is a member"
        self.config = config
        self.test_byzantine = test_byzantine
        self.test_partition_file = test_partition_file
        self.test_clock_offset_file = test_clock_offset_file
        self._test_clock_offset_ms = 0  # TESTS ONLY: added to every wall clock reading
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.member = member
        self.me = member.index
        self.keys = keys
        self.signer = CountingSigner(Ed25519Signer(keys))
        ed25519 = Ed25519Verifier()
        self.verifier = CountingVerifier(ed25519)  # protocol messages, on the core's thread
        self.log = log or logging.getLogger(f"consortium.node.{member.name}")
        self._ratelog = RateLimitedLog(self.log)
        if test_clock_offset_file is not None and test_clock_offset_file.exists():
            self._set_test_clock_offset(test_clock_offset_file.read_text())
        self.metrics = NodeMetrics(started_ms=int(time.time() * 1000))
        self.tx_cache = TxSignatureCache(ed25519)  # client signatures, counted there

        # What this member recovers from (a restored backup, lost state), while its core is
        # behind the recovery gate; None for a normal start (node/preflight.py).
        self.store, self.recovering_from = open_store(config, genesis)
        self.app = self.store.app

        addresses = {m.index: _split(m.peer_address) for m in genesis.members}
        for name, addr in config.peers.items():
            m = genesis.member_by_name(name)
            if m is not None:
                addresses[m.index] = addr
        # TLS certificates are derived from our key (protocol/tls.py): nothing to load or renew.
        self.tls = (
            TlsIdentity(keys, member.name, self.chain_id)
            if config.tls_peer or config.tls_client
            else None
        )
        self.peers = PeerNetwork(
            genesis,
            self.me,
            self.signer,
            self.verifier,
            listen=peer_listen or config.peer_listen,
            peer_addresses={i: a for i, a in addresses.items() if i != self.me},
            frame_bytes_max=genesis.params.frame_bytes_max,
            tls=self.tls if config.tls_peer else None,
            log=self.log,
        )
        self.client_listen = client_listen or config.client_listen
        self.http_listen = http_listen or config.http_listen
        self.http: HttpServer | None = None
        self.http_port = 0

        applied_index = self._init_core()
        # Carries out the core's Readies (node/executor.py: the order of a step, stated once).
        self.executor = Executor(
            self.core,
            self.app,
            self.store.head,
            self.signer,
            self.chain_id,
            self.me,
            durable_head=lambda: self.store.head,
            applied_index=applied_index,
        )
        attach_context(self.log, self.log_fields)
        self._last_tick_s: float | None = None  # trio clock, seconds
        self._core_clock = (
            RunningClock(max(STALL_MIN_MS, genesis.params.request_timeout_ms // 2))
            if genesis.mode == "pbft"
            else None
        )
        # When the height last moved, or work last arrived to an idle member (stall clock).
        self._moved_s: float | None = None
        self._moved_height = self.store.height
        self._rejections_due_s = 0.0
        self._rejections_seen: Counter[str] = Counter()
        # The network's agreed time: the last executed block's time, and our monotonic clock
        # (trio, seconds) when it executed here (our start, for the head we open with).
        self._agreed_ms = self.store.head.timestamp_ms
        self._agreed_at_s: float | None = None
        self._clock_logged = False  # the core said our clock disagrees (logged once)
        self._events_send, self._events_recv = trio.open_memory_channel[tuple[str, Any, Any]](
            EVENTS_MAX
        )
        # tx id -> connections waiting for its receipt (bounded in total)
        self._watchers: dict[bytes, list[Any]] = {}
        self._watch_count = 0
        self._watch_expiry: dict[bytes, int] = {}  # watched id -> its transaction's expiry
        # Watches by id: (id, connection) -> (monotonic deadline, connection), oldest first
        # (one fixed age, so insertion order is deadline order); counted per connection too.
        self._id_watches: dict[tuple[bytes, int], tuple[float, Any]] = {}
        # per connection, its watches by id, oldest first (so the fullest can give one up)
        self._id_watches_by_conn: dict[int, OrderedDict[bytes, None]] = {}
        self._blocks_since_scan = 0
        # Watched duplicates of each executed block, answered once it is durable (by height).
        self._duplicates: dict[int, list[tuple[bytes, list[Any]]]] = {}
        self._on_block: list[Callable[[Block], None]] = []
        self._writing: trio.Event | None = None  # a write of blocks in flight (Node._write)
        self._write_failed = False  # a background write failed: nothing after it is written
        self._nursery: trio.Nursery | None = None
        self.client_port = 0
        self.peer_port = 0
        # The client port's TLS status; the ClientService replaces it with its server's.
        self.client_tls_status: Callable[[], dict[str, object]] = lambda: {
            "client": config.tls_client
        }

    def _init_core(self) -> int:
        """The PBFT replica, recovered from the store (RaftMember overrides this); returns the
        raft index applied (0 in pbft)."""
        head = self.store.head
        self.core = PbftReplica(
            PbftConfig.from_genesis(self.genesis, self.me, seed=os.urandom(16)),
            self.signer,
            self.verifier,
            tx_ok=self.tx_cache.check,
            # The state executed so far (written or not): keys admitted ever, never fewer.
            ever_admitted=self.app.may_submit,
            recovered=RecoveredState(
                last_executed=head.height,
                last_block_hash=head.hash,
                stable_checkpoint=self.store.latest_checkpoint(),
                # (the recovery mark is the shell's, not one of the core's records)
                records=[r for r in self.store.load_records() if r[0] != RECOVERY_MARK_KEY],
            ),
            recovery_nonce=None if self.recovering_from is None else os.urandom(16),
        )
        self._view_logged = (self.core.view, self.core.active)
        return 0

    # --- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from consortium.node.service import ClientService

        service = ClientService(self)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.peers.run)
                self.peer_port = self.peers.listen_port
                self.client_port = await nursery.start(service.run)
                if self.http_listen is not None:
                    self.http = HttpServer(self.http_routes(), self.http_listen, log=self.log)
                    self.http_port = await nursery.start(self.http.run)
                if self._agreed_at_s is None:
                    self._agreed_at_s = trio.current_time()  # the head's time, as of our start
                nursery.start_soon(self._pump)
                nursery.start_soon(self._core_loop)
                if self.test_partition_file is not None:
                    nursery.start_soon(self._watch_test_partition, self.test_partition_file)
                if self.test_clock_offset_file is not None:
                    nursery.start_soon(self._watch_test_clock_offset, self.test_clock_offset_file)
                self.log.info(
                    "member %s (%d of %d) up: mode %s, height %d, peer port %d, client port %d%s",
                    self.member.name,
                    self.me,
                    self.genesis.n,
                    self.genesis.mode,
                    self.store.height,
                    self.peer_port,
                    self.client_port,
                    f", http port {self.http_port}" if self.http is not None else "",
                )
                if self.recovering_from is not None:
                    self.log.warning(
                        "recovering from %s: this member votes in no view or term it may have "
                        "used before its state was lost, and counts as faulty (pbft) or "
                        "unavailable (raft) until it has learned a later one and caught up",
                        self.recovering_from,
                    )
                task_status.started()
        finally:
            self.store.close()

    async def _watch_test_partition(self, path: Path) -> None:
        """TESTS ONLY: every 50 ms, cut this member off from the members named in `path` (one
        per line; a missing or empty file heals), in both directions."""
        while True:
            try:
                names = (await trio.Path(path).read_text()).split()
            except OSError:
                names = []
            cut = {m.index for m in self.genesis.members if m.name in names and m.index != self.me}
            if cut != self.peers.test_cut:
                self.log.warning(
                    "TEST PARTITION: cut off from %s",
                    ", ".join(self.genesis.members[i].name for i in sorted(cut)) or "nobody",
                )
                self.peers.test_cut = cut
            await trio.sleep(0.05)

    async def _watch_test_clock_offset(self, path: Path) -> None:
        """TESTS ONLY (node start --test-clock-offset-file): every 50 ms, read how many ms (an
        integer, negative for behind; a missing or empty file is 0) to add to this member's
        wall clock, so a test can set a member's clock wrong, or make it jump, while it runs
        (a test replaces the file by a rename, so no read sees it half written)."""
        while True:
            await trio.sleep(0.05)
            await self._read_test_clock_offset(path)

    async def _read_test_clock_offset(self, path: Path) -> None:
        try:
            text = await trio.Path(path).read_text()
        except OSError:
            text = ""
        self._set_test_clock_offset(text)

    def _set_test_clock_offset(self, text: str) -> None:
        try:
            offset_ms = int(text.strip() or 0)
        except ValueError:
            offset_ms = 0
        if offset_ms != self._test_clock_offset_ms:
            self.log.warning("TEST CLOCK: wall clock offset by %+d ms", offset_ms)
            self._test_clock_offset_ms = offset_ms

    async def propose(self, txs: list[Transaction]) -> None:
        """Hand client transactions (signatures already verified) to the core task."""
        await self._events_send.send(("propose", txs, None))

    async def _pump(self) -> None:
        async for sender, frame in self.peers.inbound:
            self.peers.consumed(frame)
            self.count_received(frame)
            msg = await self._peer_message(sender, frame)
            if msg is not None:
                await self._events_send.send(("peer", sender, msg))

    async def _peer_message(self, sender: int, frame: bytes) -> pbft_messages.Message | None:
        """A peer frame decoded (None: malformed, counted), with the client signatures of a
        batch the core may accept verified ahead on worker threads."""
        try:
            msg = pbft_messages.decode(frame, self.genesis.params)
        except pbft_messages.WireFormatError as exc:
            self.core.rejected["malformed"] += 1
            self._ratelog.warning(
                f"malformed:{sender}", f"malformed message from member {sender}: {exc}"
            )
            return None
        if (
            isinstance(msg, pbft_messages.PrePrepare)
            and msg.txs
            and self._worth_verifying(sender, msg)
        ) or (isinstance(msg, pbft_messages.Batch) and self.core.wants_batch(msg, sender)):
            # Fill the signature cache on worker threads; the core's tx_ok then hits it.
            await self.tx_cache.verify_all(msg.txs)
        return msg

    def _worth_verifying(self, sender: int, pp: pbft_messages.PrePrepare) -> bool:
        """Spend client-signature checks only on a PRE-PREPARE the core could accept: from the
        current primary, in our view and window, and signed by it. That check is the core's
        own, made ahead (verify_ahead): the core's check of the same bytes then costs nothing,
        so each PRE-PREPARE's signature is verified once. Anything else the core drops
        cheaply, so a hostile member cannot buy our CPU with junk batches."""
        core = self.core
        if not (sender == pp.sender == core.primary and pp.view == core.view):
            return False
        if not core.low_watermark < pp.seq <= core.high_watermark:
            return False
        key = self.genesis.members[sender].public_key
        return self.verifier.verify_ahead(key, Domain.PBFT, self.chain_id, pp.body, pp.signature)

    def _now(self) -> tuple[int, int]:
        return int(trio.current_time() * 1000), self.wall_ms()

    def wall_ms(self) -> int:
        """This member's wall clock (ms since the epoch): what its core stamps and checks."""
        return int(time.time() * 1000) + self._test_clock_offset_ms

    def expiry_now_ms(self) -> int:
        """The time a submitted transaction's expiry is judged against (ledger/clock.py): the
        earlier of our wall clock and the last block's time advanced by our monotonic clock
        since it executed here, so our clock far ahead refuses no honest transaction."""
        now_s = trio.current_time()
        if self._agreed_at_s is None:
            self._agreed_at_s = now_s
        since_ms = int((now_s - self._agreed_at_s) * 1000)
        return expiry_now_ms(self.wall_ms(), self._agreed_ms, since_ms)

    async def _core_loop(self) -> None:
        core = self.core
        recv = self._events_recv
        tick_ms = TICK_MS
        while True:
            mono_ms, _ = self._now()
            woken = False
            self._last_tick_s = mono_ms / 1000
            with trio.move_on_at((mono_ms + tick_ms) / 1000):
                event = await recv.receive()
                woken = True
                self._handle(event)
                for _ in range(DRAIN_MAX):
                    try:
                        event = recv.receive_nowait()
                    except trio.WouldBlock:
                        break
                    self._handle(event)
            mono_ms, wall_ms = self._now()
            clock = self._core_clock
            core.tick(mono_ms if clock is None else clock.advance(mono_ms), wall_ms)
            worked = await self._carry_out_ready()
            if self.recovering_from is not None and not core.recovering:
                await self._recovered()
            self._watch_progress(mono_ms / 1000)
            # Idle (no event, nothing to carry out): tick less often, up to TICK_IDLE_MAX_MS,
            # instead of waking 500 times a second for nothing; any event restores TICK_MS.
            tick_ms = TICK_MS if woken or worked else min(2 * tick_ms, TICK_IDLE_MAX_MS)
            await trio.lowlevel.checkpoint()

    async def _recovered(self) -> None:
        """The core left recovery: delete the mark, durably, after the writes of the step that
        took it there (a crash before this one starts in recovery again: safe, and slower)."""
        store = self.store
        if self._writing is not None:
            await self._writing.wait()
        if store.stage(blocks=[], records=[(RECOVERY_MARK_KEY, None)], block_signatures=[]):
            store.commit_staged()
            store.finish_staged()
        self.log.warning(
            "recovered from %s: past the recovery gate, taking part again", self.recovering_from
        )
        self.recovering_from = None

    def _watch_progress(self, now_s: float) -> None:
        """Keep the stall clock (status: "no progress for X s") and, every few seconds, log
        what the core dropped from peers since the last summary."""
        self._log_clock()
        height = self.store.height
        if self._moved_s is None or height != self._moved_height or self.core.pending_count == 0:
            self._moved_height = height
            self._moved_s = now_s
        if now_s < self._rejections_due_s:
            return
        self._rejections_due_s = now_s + REJECTIONS_LOG_INTERVAL_S
        current = Counter(self.core.rejected)
        new = current - self._rejections_seen
        self._rejections_seen = current
        if not new:
            return
        misbehaviour = MISBEHAVIOUR_BY_MODE[self.genesis.mode]
        bad = {k: v for k, v in new.items() if misbehaviour(k)}
        benign = {k: v for k, v in new.items() if k not in bad}
        if bad:
            self.log.warning(
                "peer messages dropped as invalid in the last %.0f s: %s",
                REJECTIONS_LOG_INTERVAL_S,
                ", ".join(f"{k} {v}" for k, v in sorted(bad.items())),
            )
        if benign:
            self.log.debug(
                "peer messages dropped as redundant in the last %.0f s: %s",
                REJECTIONS_LOG_INTERVAL_S,
                ", ".join(f"{k} {v}" for k, v in sorted(benign.items())),
            )

    def _log_clock(self) -> None:
        """Say so, once, when the core finds this member's clock off the network's time (and
        when it agrees again): the status shows it too (explain.py)."""
        clock = self.core.clock
        disagrees = clock.disagrees
        if disagrees == self._clock_logged:
            return
        self._clock_logged = disagrees
        if disagrees:
            self.log.warning(
                "this member's clock is %+.1f s off the time of the batches a quorum accepted "
                "(more than %.1f s): fix its time source (NTP)",
                (clock.offset_ms or 0) / 1000,
                clock.limit_ms / 1000,
            )
        else:
            self.log.warning("this member's clock agrees with the network's time again")

    def count_received(self, frame: bytes) -> None:
        kind = message_kind(frame)
        self.metrics.received_by_kind[kind] += 1
        self.metrics.received_bytes_by_kind[kind] += len(frame)

    def saved(self, blocks: list[tuple[Block, Execution, bytes | None]]) -> None:
        """Figures for one durable write: its fsync time, and per block its size and how long
        after its proposed timestamp it became durable here."""
        self.metrics.fsyncs += 1
        self.metrics.fsync_s.observe(self.store.last_commit_s)
        if blocks:
            wall_ms = self.wall_ms()
            for block, _, _ in blocks:
                self.metrics.batch_txs.observe(len(block.txs))
                self.metrics.commit_latency_s.observe(
                    max(0.0, wall_ms - block.header.timestamp_ms) / 1000
                )

    def _handle(self, event: tuple[str, Any, Any]) -> None:
        kind, a, b = event
        if kind == "peer":
            self.core.receive(a, b)
        elif kind == "propose":
            self.core.propose_all(a)
        else:
            raise AssertionError(f"unknown event {kind}")

    async def _carry_out_ready(self) -> bool:
        """Carry out what the core asks for, step by step, in the order the executor gives
        (node/executor.py); False when it asked for nothing."""
        worked = False
        while effects := self.executor.step():
            worked = True
            self.metrics.steps += 1
            await self._carry_out(effects)
            self._after_step()
        return worked

    async def _carry_out(self, effects: list[Effect]) -> None:
        queued = False  # something left for peers or clients ahead of this step's write
        for effect in effects:
            match effect:
                case Send(messages=messages):
                    self._send_all(messages)
                    queued = True
                case Executed(block=block, vote=vote):
                    queued = self._push_receipts(block, vote) or queued
                case NoOpApplied():
                    pass
                case Refused(reason=reason):
                    self._ratelog.warning("install", reason)
                case Write():
                    await self._write(effect, early=queued)
                case Serve(request=request):
                    self._serve(request)
                case Reads(released=released, failed=failed):
                    self._reads(released, failed)
                case Durable(blocks=blocks):
                    self._blocks_durable(blocks)
                case _:
                    assert_never(effect)

    def _after_step(self) -> None:
        """After each step (RaftMember: release reads, log the leader)."""
        self._log_view(self.core)

    def _serve(self, request: Any) -> None:
        assert isinstance(request, PbftServe)
        self.core.served(request, self._serve_blocks(request))

    def _reads(self, released: list[Any], failed: list[tuple[int, str]]) -> None:
        raise AssertionError("reads are released by a raft core only")

    def send_peer(self, dest: int | None, frame: bytes) -> None:
        """Send (dest None: to every other member), counting messages and bytes by kind."""
        kind = message_kind(frame)
        copies = self.genesis.n - 1 if dest is None else 1
        self.metrics.sent_by_kind[kind] += copies
        self.metrics.bytes_by_kind[kind] += copies * len(frame)
        if dest is None:
            self.peers.broadcast(frame)
        else:
            self.peers.send(dest, frame)

    def _send_byzantine(self, dest: int | None, frame: bytes) -> None:
        """Test-only misbehaviour while primary (the core stays honest; only what leaves
        changes): `silent-primary` sends nothing; `equivocating-primary` sends each of its
        PRE-PREPAREs to half the backups and, to the other half, first the same batch stamped
        one millisecond later (another digest) and then the original, both correctly signed."""
        core = self.core
        dests = [i for i in range(self.genesis.n) if i != self.me] if dest is None else [dest]
        if core.primary != self.me or not core.active:
            for d in dests:
                self.peers.send(d, frame)
            return
        if self.test_byzantine == "silent-primary":
            return
        msg = pbft_messages.decode(frame, self.genesis.params)
        if not isinstance(msg, pbft_messages.PrePrepare) or not msg.txs:
            for d in dests:
                self.peers.send(d, frame)
            return
        twin = pbft_messages.PrePrepare.create(
            self.signer, self.chain_id, msg.view, msg.seq, msg.proposed_ms + 1, self.me, msg.txs
        )
        for d in dests:
            if d % 2 == 0:
                self.peers.send(d, frame)
            else:  # the twin, then the original: these backups hold both, signed
                self.peers.send(d, pbft_messages.encode(twin))
                self.peers.send(d, frame)

    def _serve_blocks(self, serve: PbftServe) -> int:
        """Answer a peer's FETCH from the block store (pbft/transfer.py) within what the core
        granted from the peer's budget; returns the answer's size, which the core charges."""

        def block_at(seq: int) -> pbft_messages.TransferredBlock | None:
            stored = self.store.get_block(seq)
            if stored is None or stored.certificate is None:
                return None
            consensus = stored.block.header.consensus
            return pbft_messages.TransferredBlock(
                proposed_ms=int(consensus[2]),
                txs=stored.block.txs,
                certificate=decode_certificate(stored.certificate),
            )

        frame = blocks_reply(
            self.signer,
            self.chain_id,
            self.me,
            self.genesis.params,
            serve.from_seq,
            self.store.height,
            self.core.stable_certificate,
            block_at,
            serve.bytes_max,
        )
        self.send_peer(serve.peer, frame)
        return len(frame)

    def _log_view(self, core: PbftReplica) -> None:
        """One line per view change and per view entered (rate-limited by its nature)."""
        state = (core.view, core.active)
        if state == self._view_logged:
            return
        self._view_logged = state
        if core.active:
            self.log.warning(
                "view %d: entered, primary %s", core.view, self.genesis.members[core.primary].name
            )
        else:
            self.log.warning(
                "view change to %d: %s", core.view, core.last_view_change_reason or "joined"
            )

    # --- reads and maintenance ---------------------------------------------------------------

    async def read_value(self, key: bytes) -> list[Any]:
        """A signed read of `key`: in pbft the fast path (our current value, signed with the
        height and block hash it was read at; a client accepts it at a quorum of matching
        replies). RaftMember overrides this with ReadIndex. Raises ReadRefused."""
        value = self.app.kv.get(key)
        return self.signed_read(key, value)

    def signed_read(self, key: bytes, value: bytes | None) -> list[Any]:
        head = self.executor.head  # what self.app reflects, which `value` was read from
        body = read_body(key, value, head.height, head.hash, self.me)
        sig = self.signer.sign(Domain.READ, self.chain_id, body)
        return [key, value, head.height, head.hash, self.me, sig]

    async def transfer_leadership(self, target: int, term: int, body: bytes) -> str | None:
        """Hand leadership to member `target`, as a member-signed request for `term` (whose
        signed `body` a leader carries out at most once) asks; why not, or None (raft only)."""
        return (
            "leadership transfer is a raft operation; in pbft the primary changes only by a "
            "view change"
        )

    # --- client notifications ---------------------------------------------------------------

    def watch(self, tx_id: bytes, conn: Any, expiry_ms: int | None = None) -> bool:
        """Push `tx_id`'s receipt to `conn` (which keeps the ids it watches in `conn.watched`)
        when its block executes; with `expiry_ms` (a submitted transaction's), forget the watch
        once a block's time has passed it (the transaction can never execute then). False when
        too many are watched."""
        if self._watch_count >= WATCHED_TXS_MAX:
            return False
        conns = self._watchers.setdefault(tx_id, [])
        if conn not in conns:
            conns.append(conn)
            conn.watched.add(tx_id)
            self._watch_count += 1
        elif expiry_ms is not None:
            self._forget_id_watch(tx_id, conn)  # submitted now: it expires with the transaction
        if expiry_ms is not None:
            self._watch_expiry[tx_id] = max(expiry_ms, self._watch_expiry.get(tx_id, 0))
        return True

    def watch_id(self, tx_id: bytes, conn: Any, per_connection_max: int) -> bool:
        """A watch by id (no transaction submitted here): like `watch`, but forgotten after
        ID_WATCH_AGE_S and within its own share of the node-wide bound (at most
        WATCHED_TXS_MAX // ID_WATCHES_SHARE, and `per_connection_max` per connection), so
        submits keep room. False when that share is full."""
        now_s = time.monotonic()
        self._forget_aged_id_watches(now_s)
        if tx_id in conn.watched:
            return True  # already watched (by id, or submitted: which expires on its own)
        mine = len(self._id_watches_by_conn.get(id(conn), ()))
        if mine >= per_connection_max:
            return False
        if len(
            self._id_watches
        ) >= WATCHED_TXS_MAX // ID_WATCHES_SHARE and not self._share_id_watch(mine):
            return False
        if not self.watch(tx_id, conn):
            return False
        self._id_watches[(tx_id, id(conn))] = (now_s + ID_WATCH_AGE_S, conn)
        self._id_watches_by_conn.setdefault(id(conn), OrderedDict())[tx_id] = None
        return True

    def _share_id_watch(self, mine: int) -> bool:
        """The share of watches by id is full: a connection holding fewer than the fullest one
        (by two or more) takes the fullest one's oldest watch, so whoever fills the share
        cannot lock others out (max-min fair); the evicted client watches again or asks for
        the receipt. False when the asker already holds its fair part."""
        fullest = max(self._id_watches_by_conn.items(), key=lambda kv: len(kv[1]), default=None)
        if fullest is None or len(fullest[1]) < mine + 2:
            return False
        conn_id, watched = fullest
        tx_id = next(iter(watched))
        _, conn = self._id_watches[(tx_id, conn_id)]
        self.unwatch_connection(conn, {tx_id})
        return True

    def _forget_id_watch(self, tx_id: bytes, conn: Any) -> None:
        if self._id_watches.pop((tx_id, id(conn)), None) is not None:
            watched = self._id_watches_by_conn[id(conn)]
            del watched[tx_id]
            if not watched:
                del self._id_watches_by_conn[id(conn)]

    def _forget_aged_id_watches(self, now_s: float) -> None:
        """Watches by id older than ID_WATCH_AGE_S (oldest first: stops at the first young one)."""
        while self._id_watches:
            (tx_id, _), (deadline_s, conn) = next(iter(self._id_watches.items()))
            if deadline_s > now_s:
                return
            self.unwatch_connection(conn, {tx_id})

    def unwatch_connection(self, conn: Any, tx_ids: set[bytes]) -> None:
        for tx_id in tx_ids:
            conns = self._watchers.get(tx_id)
            conn.watched.discard(tx_id)
            self._forget_id_watch(tx_id, conn)
            if conns and conn in conns:
                conns.remove(conn)
                self._watch_count -= 1
                if not conns:
                    del self._watchers[tx_id]
                    self._watch_expiry.pop(tx_id, None)

    def _unwatch(self, tx_id: bytes) -> list[Any]:
        """Every connection watching `tx_id`, no longer watching it."""
        conns = self._watchers.pop(tx_id, None) or []
        self._watch_expiry.pop(tx_id, None)
        self._watch_count -= len(conns)
        for conn in conns:
            conn.watched.discard(tx_id)
            self._forget_id_watch(tx_id, conn)
        return conns

    def _forget_expired_watches(self, block_ms: int) -> None:
        """Watches of transactions that expired before this block's time: they cannot execute
        any more, so no receipt will come (the client sees them pending and resubmits or gives
        up). Scanned every WATCH_SCAN_BLOCKS blocks, bounded by WATCHED_TXS_MAX."""
        self._blocks_since_scan += 1
        if self._blocks_since_scan < WATCH_SCAN_BLOCKS:
            return
        self._blocks_since_scan = 0
        for tx_id in [t for t, exp in self._watch_expiry.items() if exp < block_ms]:
            self._unwatch(tx_id)

    async def _write(self, write: Write, *, early: bool) -> None:
        """Carry out the step's write (one transaction, one fsync), then what waited for it.

        Writes go in order, one at a time. A write that holds (records: votes, log entries,
        checkpoints, what messages depend on) holds this task until it is durable, as the
        core requires. Under load (events waiting or transactions pending in the core): when
        something was queued ahead of it (`early`: receipts, a raft leader's appends) its
        fsync runs on a worker thread so the connections send those meanwhile, and a write of
        blocks alone holds nothing (node/executor.py): its messages have left already and the
        core goes on with the next events while the block is written; what needs the block
        stored (Durable) comes after, and until then the executor's head is the head to
        execute on. Otherwise (one transaction at a time) the write runs here: the thread
        hand-offs cost more."""
        if self._writing is not None:
            await self._writing.wait()
        if self._write_failed:
            # Its blocks were rolled back: writing what followed them (a compaction point, a
            # stable checkpoint above them) would leave the disk in a state no crash produces.
            raise StoreError(
                f"{self.store.path}: an earlier block write failed; nothing more is written"
            )
        store = self.store
        staged = store.stage(
            blocks=write.blocks,
            records=write.records,
            block_signatures=write.signatures,
            checkpoints=write.checkpoints,
        )
        # A worker thread costs a hand-off each way: measured, more than it saves when one
        # transaction at a time flows; worth it under load (events waiting or transactions
        # pending in the core), where the core goes on while the block is written.
        busy = self._events_recv.statistics().current_buffer_used > 0 or self.core.pending_count > 0
        if staged and not write.holds and self._nursery is not None and busy:
            done = trio.Event()
            self._writing = done
            self._nursery.start_soon(self._finish_write, write, done)
            return
        if staged:
            if early and busy:
                await trio.to_thread.run_sync(store.commit_staged)
            else:
                store.commit_staged()
            store.finish_staged()
            self.saved(write.blocks)
        await self._carry_out(self.executor.write_done(write.n, self._now()))

    async def _finish_write(self, write: Write, done: trio.Event) -> None:
        try:
            await trio.to_thread.run_sync(self.store.commit_staged)
            self.store.finish_staged()
            self.saved(write.blocks)
        except BaseException:
            # Set before `done` wakes the next write: its exception reaches the nursery only
            # after that write has run.
            self._write_failed = True
            self.executor.write_failed(write.n)
            raise
        finally:
            self._writing = None
            done.set()
        for effect in self.executor.write_done(write.n, self._now()):
            # A write of blocks alone holds nothing: only what needs its blocks stored.
            assert isinstance(effect, Durable), effect
            self._blocks_durable(effect.blocks)

    def _send_all(self, messages: Sequence[Outgoing]) -> None:
        for out in messages:
            if self.test_byzantine is not None:
                self._send_byzantine(out.dest, out.frame)
            else:
                self.send_peer(out.dest, out.frame)

    def _push_receipts(self, block: Block, vote: SignedVote) -> bool:
        """Push the receipts watched in `block` as soon as it executed, before its write: one
        "receipts" frame per connection (header and block signature once, each receipt with
        its Merkle proof); whether any was pushed. Watched duplicates are answered once the
        block is durable (_block_durable), with the first receipt of their id.

        Why before the write: the transaction is already committed and its block fixed. In
        pbft 2f+1 members prepared the batch durably before any COMMIT left, so it commits
        at this sequence number in every later view and re-executes to the same block (its
        timestamp is the proposal's); in raft the entry is durable on a majority. A member
        that loses power before writing the block rebuilds the same one. So under load, where
        the write runs on a worker thread (Node._write), a client holds a true receipt one
        fsync sooner; only a lookup on this member in that window says "pending"."""
        by_conn: dict[int, tuple[Any, list[Receipt]]] = {}
        duplicates: list[tuple[bytes, list[Any]]] = []
        for index, tx in enumerate(block.txs):
            if tx.id not in self._watchers:
                continue
            conns = self._unwatch(tx.id)
            receipt = block.receipts[index]
            if receipt.reason == "duplicate":
                duplicates.append((tx.id, conns))
                continue
            for conn in conns:
                by_conn.setdefault(id(conn), (conn, []))[1].append(receipt)
        if by_conn:
            tree = MerkleTree([r.encode() for r in block.receipts])
            for conn, receipts in by_conn.values():
                conn.push_block_receipts(encode_block_receipts(block.header, vote, tree, receipts))
        if duplicates:
            self._duplicates.setdefault(block.height, []).extend(duplicates)
        return bool(by_conn)

    def _blocks_durable(self, blocks: list[tuple[Block, SignedVote]]) -> None:
        for block, vote in blocks:
            self.metrics.blocks += 1
            self.metrics.txs_committed += len(block.txs)
            self._block_durable(block, vote)

    def _block_durable(self, block: Block, vote: SignedVote) -> None:
        """After `block`'s write: answer watched duplicates with the first receipt of their
        id (a later copy of an id that already executed is never reported as its result; the
        first may be in a block of the same write), expire watches, tell followers."""
        # With the ids watched while the write ran (a watch checks the store first, which did
        # not have this block yet): answered now.
        self._push_receipts(block, vote)
        for tx_id, conns in self._duplicates.pop(block.height, []):
            first = self.first_receipt_bundle(tx_id)
            if first is not None:
                for conn in conns:
                    conn.push_receipt(first)
        self._forget_expired_watches(block.header.timestamp_ms)
        self._forget_aged_id_watches(time.monotonic())
        # (The core loop's last tick: this block executed within it; None before the first.)
        self._agreed_ms, self._agreed_at_s = block.header.timestamp_ms, self._last_tick_s
        for hook in self._on_block:
            hook(block)

    def make_bundle(
        self, block: Block, index: int, vote: SignedVote, tree: MerkleTree | None = None
    ) -> list[Any]:
        return receipt_bundle(block.header, block.receipts, index, vote, tree).to_array()

    def first_receipt_bundle(self, tx_id: bytes) -> list[Any] | None:
        """One id's first receipt bundle (client answers go through bundles.ReceiptBundles,
        which batches and caches; this is for the rare single lookup)."""
        receipt = self.store.receipt_of(tx_id)
        if receipt is None:
            return None
        stored = self.store.block_receipts(receipt.height)
        assert stored is not None, "a receipt's block is stored with it"
        header, receipts = stored
        vote = self.own_block_signature(receipt.height)
        return receipt_bundle(header, receipts, receipt.index, vote).to_array()

    def own_block_signature(self, height: int) -> SignedVote:
        """Our signature over block `height`: stored, or signed again (Ed25519 is
        deterministic). Reads no transactions."""
        block_hash = self.store.block_hash_at(height)
        assert block_hash is not None
        body = block_signature_body(height, block_hash, self.me)
        for vote in self.store.block_signatures(height):
            if vote.body == body:
                return vote
        return SignedVote(body, self.signer.sign(Domain.BLOCK, self.chain_id, body))

    # --- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What `consortium status` and GET /status show: the fields both modes share, then
        the mode's own (mode_status; RaftMember overrides it), and why it cannot make
        progress, in words (explain.py)."""
        core = self.core.status()
        if core.get("recovering") is not None:
            core["recovering"]["from"] = self.recovering_from or "a restart"
        head = self.store.head
        genesis = self.genesis
        names = [m.name for m in genesis.members]
        peers = self.peers.peer_status()
        links = [
            PeerLink(
                int(str(p["index"])),
                str(p["name"]),
                bool(p["outbound_connected"]),
                bool(p["inbound_connected"]),
            )
            for p in peers
        ]
        up = 1 + sum(1 for link in links if link.up)  # both directions (PeerLink.up)
        reasons = blockers(
            genesis.mode,
            core,
            names=names,
            me=self.me,
            quorum=genesis.quorum,
            links=links,
            behind_blocks_max=genesis.params.window,
            stalled_s=self.stalled_s(),
        )
        return {
            "member": self.member.name,
            "index": self.me,
            "mode": genesis.mode,
            "chain_id": self.chain_id.hex(),
            "n": genesis.n,
            "f": genesis.f,
            "quorum": genesis.quorum,
            **self.mode_status(core),
            "height": head.height,
            "head_hash": head.hash.hex(),
            "ready": not reasons,
            "not_progressing_because": reasons,
            "waiting_for": name_members(str(core.get("waiting_for") or ""), names),
            # Our clock against the network's time (ledger/clock.py); wall_ms what it reads.
            "clock": {**(core.get("clock") or {}), "wall_ms": self.wall_ms()},
            "up": up,
            "reachable": f"{up} of {genesis.n} reachable",
            "fault_budget": fault_budget(genesis.n, genesis.f, genesis.quorum, up),
            "peer_state": peer_rows(genesis.mode, core, links, head.height, names),
            "core": core,
            "peers": peers,
            "rejected": dict(sorted(self.core.rejected.items())),
            "transport": dict(sorted(self.peers.counters.items())),
            "tls": self.tls_status(),
            "metrics": self.metrics_doc(),
        }

    def stalled_s(self) -> float | None:
        """How long transactions have waited with the height not moving, once that exceeds
        twice the request timeout (a view change or election should have happened by then);
        None otherwise."""
        if self._moved_s is None or self._last_tick_s is None:
            return None
        waited = self._last_tick_s - self._moved_s
        limit = 2 * self.genesis.params.request_timeout_ms / 1000
        return waited if waited > limit else None

    # --- HTTP: health, readiness, status, metrics -------------------------------------------

    def http_routes(self) -> dict[str, Callable[[], Response]]:
        return {
            "/healthz": self.healthz,
            "/readyz": self.readyz,
            "/status": lambda: json_response(200, self.status()),
            "/metrics": lambda: Response(200, prometheus_text(self).encode(), CONTENT_TYPE),
        }

    def healthz(self) -> Response:
        """Alive: the process answers and the core loop has ticked recently."""
        if self._last_tick_s is None:
            return text(503, "not healthy: the core loop has not started")
        age_s = trio.current_time() - self._last_tick_s
        if age_s > HEALTH_TICK_AGE_S:
            return text(503, f"not healthy: the core loop last ticked {age_s:.1f} s ago")
        return text(200, f"ok: core loop ticked {age_s * 1000:.0f} ms ago")

    def readyz(self) -> Response:
        """Ready: the member can make progress now; else 503 with every reason, one a line."""
        doc = self.status()
        budget = doc["fault_budget"]
        if doc["ready"]:
            return text(200, f"ready: {self.member.name} at height {doc['height']}; {budget}")
        reasons = "\n".join(doc["not_progressing_because"])
        return text(503, f"not ready: {self.member.name}; {budget}\n{reasons}")

    def log_fields(self) -> dict[str, object]:
        """The protocol position stamped on every log line (logs.NodeContext)."""
        core = self.core
        return {
            "node": self.member.name,
            "mode": "pbft",
            "view": core.view,
            "seq": core.last_executed,
            "height": self.store.height,
        }

    def tls_status(self) -> dict[str, Any]:
        """Whether each port uses TLS, what we present, and the last one-sided connection."""
        return {**self.peers.tls_status(), **self.client_tls_status()}

    def mode_status(self, core: dict[str, Any]) -> dict[str, Any]:
        return {
            "view": core.get("view"),
            "view_active": core.get("view_active"),
            "view_changes": core.get("view_changes"),
            "evidence": [
                {**e, "primary": self.genesis.members[int(e["primary"])].name}
                for e in core.get("evidence", [])
            ],
            "primary": self.genesis.members[self.core.primary].name,
            "stable_checkpoint": core.get("stable_checkpoint"),
            # Core loop iterations that took longer than a stall (the process was stopped, its
            # host suspended): the time beyond it did not count towards view-change timers.
            "stalls": (
                {"count": self._core_clock.stalls, "skipped_ms": self._core_clock.skipped_ms}
                if self._core_clock is not None
                else None
            ),
        }

    def metrics_doc(self) -> dict[str, Any]:
        """Counters for operators and `consortium bench` (cumulative since start)."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        peers = self.peers.peer_status()
        return {
            "blocks": self.metrics.blocks,
            "txs_committed": self.metrics.txs_committed,
            "fsyncs": self.store.fsync_count,
            "fsyncs_per_block": round(self.store.fsync_count / max(1, self.metrics.blocks), 3),
            "signatures_verified": self.tx_cache.verified,
            "signature_cache_hits": self.tx_cache.hits,
            "signatures_trusted": self.tx_cache.trusted,
            "protocol_verifications": self.verifier.count,
            "signatures": self.signer.count,
            "messages_sent": sum(self.metrics.sent_by_kind.values()),
            "messages_sent_by_kind": dict(sorted(self.metrics.sent_by_kind.items())),
            "bytes_sent_by_kind": dict(sorted(self.metrics.bytes_by_kind.items())),
            "messages_received_by_kind": dict(sorted(self.metrics.received_by_kind.items())),
            "bytes_received_by_kind": dict(sorted(self.metrics.received_bytes_by_kind.items())),
            "frames_sent": sum(int(str(p["frames_sent"])) for p in peers),
            "frames_received": sum(int(str(p["frames_received"])) for p in peers),
            "bytes_sent": sum(int(str(p["bytes_sent"])) for p in peers),
            "bytes_received": sum(int(str(p["bytes_received"])) for p in peers),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "peak_rss_kb": usage.ru_maxrss,
            "submitted": self.metrics.submitted,
            "rejected_at_submit": self.metrics.rejected_at_submit,
            "uptime_s": round(time.time() - self.metrics.started_ms / 1000, 1),
        }

    def status_json(self) -> str:
        return json.dumps(self.status(), default=str)


class ReadRefused(Exception):
    """A read this member cannot answer now (raft: not confirmed as leader), with the reason."""


def make_node(config: NodeConfig, genesis: Genesis, keys: KeyPair, **options: Any) -> Node:
    """The member for this network's mode: Node (pbft) or RaftMember (raft)."""
    if genesis.mode == "raft":
        from consortium.node.raft_runtime import RaftMember

        return RaftMember(config, genesis, keys, **options)
    return Node(config, genesis, keys, **options)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def data_dir_of(home: Path) -> Path:
    return home / "data"
