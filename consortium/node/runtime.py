"""The node process: one Trio program around one consensus core, composed of parts:

    mode       pbft_mode.PbftMode or raft_mode.RaftMode: the core, and what only that mode's
               shell does (decoding and pre-verifying peer frames, reads, fetch answers, status)
    executor   node/executor.py: carries out each Ready as ordered effects (the same code the
               simulator runs; the order of a step is stated there, once)
    service    service.ClientService: the client port, with the receipt watches it owns
               (watches.py), told of each block as the member's block listener

Tasks (one nursery):
    peers      PeerNetwork: authenticated peer connections, bounded queues, coalesced sends
    pump       reads peer frames and has the mode decode them (pbft: pre-verifying the client
               signatures a PRE-PREPARE carries on worker threads), then hands them to the core
    clients    ClientServer: submissions, receipts, reads, blocks, status
    http       (opt-in, node.toml [http]) GET /healthz /readyz /status /metrics, and the
               browser explorer's /explorer/ with `explorer = true` (node/explorer)
    gateway    (opt-in, node.toml [gateway]) the HTTP/JSON gateway (node/gateway): the client
               port's requests as JSON, served by the same ClientService
    core       the only task that touches the core: feeds it events and ticks, then carries out
               the executor's effects (Node._carry_out; writes in Node._write)

Completed I/O comes back to the core as input (executor.write_done), never as a callback into
the core.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, assert_never

import trio

from consortium.crashft import reasons as raft_reasons
from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import Domain, Ed25519Signer, Ed25519Verifier
from consortium.ledger.block import Block
from consortium.ledger.certificates import (
    SignedVote,
    block_signature_body,
)
from consortium.ledger.clock import expiry_now_ms
from consortium.ledger.genesis import Genesis
from consortium.ledger.state import Execution
from consortium.ledger.store import StoreError
from consortium.ledger.tx import Transaction
from consortium.node.config import NodeConfig
from consortium.node.datalock import lock_data_dir
from consortium.node.errors import MemberDiverged, ReadRefused
from consortium.node.events import (
    Event,
    PeerMessage,
    Propose,
    ReadAbandoned,
    ReadRequest,
    TransferRequest,
)
from consortium.node.executor import (
    ConsensusCore,
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
from consortium.node.http import HttpServer

if TYPE_CHECKING:
    from consortium.node.explorer import ReceiptGatherer
    from consortium.node.gateway import GatewayServer
from consortium.node.logs import RateLimitedLog, attach_context
from consortium.node.metrics import (
    BATCH_TXS_BUCKETS,
    FSYNC_S_BUCKETS,
    LATENCY_S_BUCKETS,
    Histogram,
)
from consortium.node.parts import MemberParts
from consortium.node.pbft_mode import PbftMode
from consortium.node.preflight import open_store
from consortium.node.raft_mode import RaftMode
from consortium.node.service import ClientService
from consortium.node.status import MemberStatus
from consortium.node.transport import PeerNetwork
from consortium.node.verification import (
    CountingSigner,
    CountingVerifier,
    TxSignatureCache,
    message_kind,
)
from consortium.pbft import reasons as pbft_reasons
from consortium.protocol.tls import TlsIdentity
from consortium.protocol.verify import read_body, receipt_bundle

TICK_MS = 2
TICK_IDLE_MAX_MS = 16  # the coarsest timer granularity when idle (timeouts are >= 50 ms)
EVENTS_MAX = 8192  # bounded queue between the pump/clients and the core task
DRAIN_MAX = 512  # events handled per core step before taking the Ready
REJECTIONS_LOG_INTERVAL_S = 10.0  # peer messages dropped by the core: one summary line per
# Whether a drop reason means a peer sent something no honest member would, by mode: each
# core's table of reasons says (pbft/reasons.py, crashft/reasons.py). The rest (duplicates,
# stale views, full buffers) happen between honest members and are summarised at debug level.
MISBEHAVIOUR_BY_MODE: dict[str, Callable[[str], bool]] = {
    "pbft": pbft_reasons.is_misbehaviour,
    "raft": raft_reasons.is_misbehaviour,
}


class BlockListener(Protocol):
    """Told of each block (service.ClientService: receipt watches, follows, admissions)."""

    def executed(self, block: Block, vote: SignedVote) -> bool:
        """The block executed, its write not yet durable; True if it queued frames for
        clients (receipts), which the write then lets leave while it fsyncs (Node._write)."""
        ...

    def durable(self, block: Block, vote: SignedVote) -> None:
        """The block is durable in our store."""
        ...


def system_wall_ms() -> int:
    return int(time.time() * 1000)


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
    """One member: a shell around one consensus core, its mode composed in (PbftMode or
    RaftMode). `run()` serves until cancelled; `status()` is always cheap."""

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
        gateway_listen: tuple[str, int] | None = None,
        wall_clock: Callable[[], int] = system_wall_ms,
    ) -> None:
        member = genesis.member_by_key(keys.public)
        assert member is not None, "load_identity checks the key is a member"
        self.config = config
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.member = member
        self.me = member.index
        self.keys = keys
        self.wall_clock = wall_clock  # ms since the epoch (consortium.testing may offset it)
        self.signer = CountingSigner(Ed25519Signer(keys))
        ed25519 = Ed25519Verifier()
        self.verifier = CountingVerifier(ed25519)  # protocol messages, on the core's thread
        self.log = log or logging.getLogger(f"consortium.node.{member.name}")
        self._ratelog = RateLimitedLog(self.log)
        self.metrics = NodeMetrics(started_ms=int(time.time() * 1000))
        self.tx_cache = TxSignatureCache(ed25519)  # client signatures, counted there

        # One process per member: the data directory is ours until run() ends (datalock.py).
        self.data_lock = lock_data_dir(config.data_dir, member.name)
        # What this member recovers from (a restored backup, lost state), while its core is
        # behind the recovery gate; None for a normal start (node/preflight.py).
        try:
            self.store, self.recovering_from = open_store(config, genesis)
        except BaseException:
            self.data_lock.release()
            raise
        self.app = self.store.app

        addresses = {m.index: _split(m.peer_address) for m in genesis.members}
        for name, addr in config.peers.items():
            m = genesis.member_by_name(name)
            if m is not None:
                addresses[m.index] = addr
        # TLS certificates are derived from our key (protocol/tls.py): nothing to load or renew.
        self.tls = (
            TlsIdentity(keys, member.name, self.chain_id)
            if config.tls_peer or config.tls_client or config.tls_gateway
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
        # Where the core's messages go (consortium.testing wraps it to misbehave).
        self.outbound: Callable[[int | None, bytes], None] = self.send_peer
        self.client_listen = client_listen or config.client_listen
        self.http_listen = http_listen or config.http_listen
        self.http: HttpServer | None = None
        self.http_port = 0
        self.gateway_listen = gateway_listen or config.gateway_listen
        self.gateway: GatewayServer | None = None
        self.gateway_port = 0
        self._events_send, self._events_recv = trio.open_memory_channel[Event](EVENTS_MAX)

        parts = MemberParts(
            genesis=genesis,
            member=member,
            signer=self.signer,
            verifier=self.verifier,
            tx_cache=self.tx_cache,
            store=self.store,
            app=self.app,
            log=self.log,
            ratelog=self._ratelog,
            recovering_from=self.recovering_from,
            events=self._events_send,
            send_peer=self.send_peer,
            now=self._now,
            signed_read=self.signed_read,
            count_rejected_submit=self._count_rejected_submit,
        )
        self.mode: PbftMode | RaftMode = (
            RaftMode(parts) if genesis.mode == "raft" else PbftMode(parts)
        )
        # The shell needs of the core only what both cores offer (executor.ConsensusCore).
        self.core: ConsensusCore = self.mode.core
        # Carries out the core's Readies (node/executor.py: the order of a step, stated once).
        self.executor = Executor(
            self.mode.core,
            self.app,
            self.store.head,
            self.signer,
            self.chain_id,
            self.me,
            durable_head=lambda: self.store.head,
            applied_index=self.mode.start_applied_index,
            recovery_mark=self.recovering_from is not None,
        )
        self.mode.attach(lambda: self.executor.applied_index)
        attach_context(self.log, self.mode.log_fields)
        self.last_tick_s: float | None = None  # trio clock, seconds
        # When the height last moved, or work last arrived to an idle member (stall clock).
        self.moved_s: float | None = None
        # The event loop's thread, once run() started (status: its CPU apart from the
        # worker threads', the figure that bounds one member's throughput on any machine)
        self.loop_thread: int | None = None
        self._moved_height = self.store.height
        self._rejections_due_s = 0.0
        self._rejections_seen: Counter[str] = Counter()
        # The network's agreed time: the last executed block's time, and our monotonic clock
        # (trio, seconds) when it executed here (our start, for the head we open with).
        self._agreed_ms = self.store.head.timestamp_ms
        self._agreed_at_s: float | None = None
        self._clock_logged = False  # the core said our clock disagrees (logged once)
        self._listeners: list[BlockListener] = []
        self._writing: trio.Event | None = None  # a write of blocks in flight (Node._write)
        self._write_failed = False  # a background write failed: nothing after it is written
        self._nursery: trio.Nursery | None = None
        self.client_port = 0
        self.peer_port = 0
        # The client port's TLS status; the ClientService replaces it with its server's.
        self.client_tls_status: Callable[[], dict[str, object]] = lambda: {
            "client": config.tls_client
        }
        # The client port's event counters (client_port.ClientServer.counters), likewise.
        self.client_port_events: Callable[[], dict[str, int]] = dict
        # The gateway's address and counters (GatewayServer.status), when it runs.
        self.gateway_status: Callable[[], dict[str, Any] | None] = lambda: None
        self.service = ClientService(self)
        self.status_view = MemberStatus(self)
        # The explorer's receipt documents with f+1 signatures (node/explorer: the client's
        # code, which the node may not import; `consortium node start` sets it).
        self.receipt_gatherer: ReceiptGatherer | None = None

    def add_block_listener(self, listener: BlockListener) -> None:
        self._listeners.append(listener)

    # --- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.loop_thread = threading.get_ident()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.peers.run)
                self.peer_port = self.peers.listen_port
                self.client_port = await nursery.start(self.service.run)
                if self.gateway_listen is not None:
                    from consortium.node.gateway import GatewayServer

                    gateway_tls = self.tls if self.config.tls_gateway else None
                    self.gateway = GatewayServer(
                        self.service,
                        listen=self.gateway_listen,
                        frame_bytes_max=self.genesis.params.frame_bytes_max,
                        source_connections_max=self.config.client_connections_per_source,
                        source_counts=self.service.connection_sources,
                        tls=gateway_tls,
                        tls_accepts=self.service.tls_name if gateway_tls is not None else None,
                        log=self.log,
                    )
                    self.gateway_port = await nursery.start(self.gateway.run)
                    if gateway_tls is not None:  # (a revoked key's connections close here too)
                        self.service.tls_rechecks.append(self.gateway.recheck_tls_keys)
                    self.gateway_status = self.gateway.status
                if self.http_listen is not None:
                    # The metrics registry (prometheus_client's import, ~0.1 s) now, before the
                    # core loop runs, not inside the first scrape on the event loop.
                    self.status_view.exposition.prepare()
                    routes = self.status_view.http_routes()
                    explorer = None
                    if self.config.http_explorer:  # (node/explorer: off unless asked for)
                        from consortium.node.explorer import Explorer

                        explorer = Explorer(
                            self,
                            self.status_view.status,
                            client_tls=self.config.tls_client,
                            gather=self.receipt_gatherer,
                        ).request_routes()
                    self.http = HttpServer(
                        routes, self.http_listen, request_routes=explorer, log=self.log
                    )
                    self.http_port = await nursery.start(self.http.run)
                if self._agreed_at_s is None:
                    self._agreed_at_s = trio.current_time()  # the head's time, as of our start
                nursery.start_soon(self._pump)
                nursery.start_soon(self._core_loop)
                self.log.info(
                    "member %s (%d of %d) up: mode %s, height %d, peer port %d, client port %d%s%s",
                    self.member.name,
                    self.me,
                    self.genesis.n,
                    self.genesis.mode,
                    self.store.height,
                    self.peer_port,
                    self.client_port,
                    f", http port {self.http_port}" if self.http is not None else "",
                    f", gateway {self.gateway.url}" if self.gateway is not None else "",
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
            self.loop_thread = None  # (its CPU clock is never read after the loop ends)
            self.store.close()
            self.data_lock.release()

    async def propose(self, txs: list[Transaction]) -> None:
        """Hand client transactions (signatures already verified) to the core task."""
        await self._events_send.send(Propose(txs))

    async def _pump(self) -> None:
        async for sender, frame in self.peers.inbound:
            self.peers.consumed(frame)
            self.count_received(frame)
            msg = await self.mode.decode(sender, frame)
            if msg is not None:
                await self._events_send.send(PeerMessage(sender, msg))

    def _now(self) -> tuple[int, int]:
        return int(trio.current_time() * 1000), self.wall_ms()

    def wall_ms(self) -> int:
        """This member's wall clock (ms since the epoch): what its core stamps and checks."""
        return self.wall_clock()

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
        mode = self.mode
        recv = self._events_recv
        tick_ms = TICK_MS
        while True:
            mono_ms, _ = self._now()
            woken = False
            self.last_tick_s = mono_ms / 1000
            with trio.move_on_at((mono_ms + tick_ms) / 1000):
                events = [await recv.receive()]
                woken = True
                for _ in range(DRAIN_MAX):
                    try:
                        events.append(recv.receive_nowait())
                    except trio.WouldBlock:
                        break
                self._handle_all(events)
            mono_ms, wall_ms = self._now()
            core.tick(mode.core_ms(mono_ms), wall_ms)
            worked = await self._carry_out_ready()
            if self.recovering_from is not None and not core.recovering:
                self._recovered()
            self._check_diverged()
            self._watch_progress(mono_ms / 1000)
            # Idle (no event, nothing to carry out): tick less often, up to TICK_IDLE_MAX_MS,
            # instead of waking 500 times a second for nothing; any event restores TICK_MS.
            tick_ms = TICK_MS if woken or worked else min(2 * tick_ms, TICK_IDLE_MAX_MS)
            await trio.lowlevel.checkpoint()

    def _handle_all(self, events: list[Event]) -> None:
        """A drain of events, handled in order as one input of the core (raft: RaftNode.inputs:
        one batch, one forward, one heartbeat round for all of them)."""
        with self.mode.inputs():
            for event in events:
                self._handle(event)

    def _handle(self, event: Event) -> None:
        mode = self.mode
        match event:
            case PeerMessage(sender=sender, msg=msg):
                mode.receive(sender, msg)
            case Propose(txs=txs):
                mode.propose(txs)
            case ReadRequest(read_id=read_id):
                mode.read(read_id)
            case ReadAbandoned(read_id=read_id):
                mode.read_abandoned(read_id)
            case TransferRequest():
                event.answer.append(mode.transfer(event.target, event.term, event.body))
                event.answered.set()
            case _:
                assert_never(event)

    def _check_diverged(self) -> None:
        """Stop the member once a quorum has certified another block than ours: its core signs
        nothing more (pbft's `diverged`), and the store it would serve and vote from is not
        the network's. The process sets the store aside and starts again from peers."""
        why = self.mode.diverged()
        if why is None:
            return
        self.log.error(
            "diverged from the network: %s; this member's store is not the network's: "
            "stopping to set it aside and re-fetch the ledger from peers",
            why,
        )
        raise MemberDiverged(why)

    def _recovered(self) -> None:
        """The core left recovery: the executor deleted the store's mark in the write of the
        step that took it there, durable now (a crash before it starts in recovery again:
        safe, and slower)."""
        self.log.warning(
            "recovered from %s: past the recovery gate, taking part again", self.recovering_from
        )
        self.recovering_from = None

    def _watch_progress(self, now_s: float) -> None:
        """Keep the stall clock (status: "no progress for X s") and, every few seconds, log
        what the core dropped from peers since the last summary."""
        self._log_clock()
        height = self.store.height
        if self.moved_s is None or height != self._moved_height or self.core.pending_count == 0:
            self._moved_height = height
            self.moved_s = now_s
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

    async def _carry_out_ready(self) -> bool:
        """Carry out what the core asks for, step by step, in the order the executor gives
        (node/executor.py); False when it asked for nothing."""
        worked = False
        while effects := self.executor.step():
            worked = True
            self.metrics.steps += 1
            await self._carry_out(effects)
            self.mode.after_step()
        return worked

    async def _carry_out(self, effects: list[Effect]) -> None:
        queued = False  # something left for peers or clients ahead of this step's write
        for effect in effects:
            match effect:
                case Send(messages=messages):
                    self._send_all(messages)
                    queued = True
                case Executed(block=block, vote=vote):
                    for listener in self._listeners:
                        queued = listener.executed(block, vote) or queued
                case NoOpApplied():
                    pass
                case Refused(reason=reason):
                    self._ratelog.warning("install", reason)
                case Write():
                    await self._write(effect, early=queued)
                case Serve(request=request):
                    self.mode.serve(request)
                case Reads(released=released, failed=failed):
                    self.mode.reads(released, failed)
                case Durable(blocks=blocks):
                    self._blocks_durable(blocks)
                case _:
                    assert_never(effect)

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

    def _send_all(self, messages: Sequence[Outgoing]) -> None:
        outbound = self.outbound
        for out in messages:
            outbound(out.dest, out.frame)

    def _count_rejected_submit(self, reason: str, count: int) -> None:
        rejected = self.metrics.rejected_at_submit
        rejected[reason] = rejected.get(reason, 0) + count

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

    def _blocks_durable(self, blocks: list[tuple[Block, SignedVote]]) -> None:
        for block, vote in blocks:
            self.metrics.blocks += 1
            self.metrics.txs_committed += len(block.txs)
            # (The core loop's last tick: this block executed within it; None before the first.)
            self._agreed_ms, self._agreed_at_s = block.header.timestamp_ms, self.last_tick_s
            for listener in self._listeners:
                listener.durable(block, vote)

    # --- reads and maintenance ----------------------------------------------------------------

    async def read_value(self, key: bytes) -> list[Any]:
        """A signed read of `key` (pbft: the fast path; raft: ReadIndex). Raises ReadRefused."""
        return await self.mode.read_value(key)

    def leader_hint(self) -> int | None:
        """raft: the leader a client should submit to next, when it is another member."""
        return self.mode.leader_hint()

    def signed_read(self, key: bytes, value: bytes | None) -> list[Any]:
        head = self.executor.head  # what self.app reflects, which `value` was read from
        body = read_body(key, value, head.height, head.hash, self.me)
        sig = self.signer.sign(Domain.READ, self.chain_id, body)
        return [key, value, head.height, head.hash, self.me, sig]

    async def transfer_leadership(self, target: int, term: int, body: bytes) -> str | None:
        """Whether this member (the raft leader) hands leadership to `target` as the signed
        `body` asks; why not, or None."""
        return await self.mode.transfer_leadership(target, term, body)

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

    # --- status (status.py) -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.status_view.status()

    def status_json(self) -> str:
        return self.status_view.status_json()


def make_node(config: NodeConfig, genesis: Genesis, keys: KeyPair, **options: Any) -> Node:
    """The member for this network's mode (its mode part chosen from genesis)."""
    return Node(config, genesis, keys, **options)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def data_dir_of(home: Path) -> Path:
    return home / "data"


__all__ = ["BlockListener", "Node", "ReadRefused", "make_node"]
