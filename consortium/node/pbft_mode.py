"""The pbft mode of a member: the PBFT replica (pbft/replica.py) and what the shell does for it
alone: decoding peer frames and verifying a PRE-PREPARE's client signatures ahead on worker
threads, answering FETCH from the block store, the fast-path read, its status fields and log
lines, and the running clock its view-change timers use. Composed into runtime.Node."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

from consortium.crypto.signing import Domain, Signer
from consortium.ledger.certificates import decode_certificate
from consortium.ledger.membership import genesis_configuration
from consortium.ledger.store import RECOVERY_MARK_KEY
from consortium.node.parts import MemberParts
from consortium.pbft import messages as pbft_messages
from consortium.pbft import reasons as drop
from consortium.pbft.epochs import PbftEpochs
from consortium.pbft.replica import PbftConfig, PbftReplica, RecoveredState
from consortium.pbft.replica import Serve as PbftServe
from consortium.pbft.transfer import blocks_reply

TICK_IDLE_MAX_MS = 16  # (runtime.py) the coarsest timer granularity when idle
STALL_MIN_MS = 4 * TICK_IDLE_MAX_MS  # a core loop iteration longer than this may be a stall


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


class PbftMode:
    """The pbft side of a member (runtime.Node composes it in)."""

    name = "pbft"

    def __init__(self, parts: MemberParts) -> None:
        self.parts = parts
        self.genesis = parts.genesis
        self.me = parts.me
        store = parts.store
        head = store.head
        nonce = [None if parts.recovering_from is None else os.urandom(16)]

        def make(config: PbftConfig, signer: Signer, recovered: RecoveredState) -> PbftReplica:
            recovery_nonce, nonce[0] = nonce[0], None  # (only the replica started here)
            return PbftReplica(
                config,
                signer,
                parts.verifier,
                tx_ok=parts.tx_cache.check,
                # The state executed so far (written or not): keys admitted ever, never fewer.
                ever_admitted=parts.app.may_submit,
                recovered=recovered,
                recovery_nonce=recovery_nonce,
            )

        # One replica per configuration (pbft/epochs.py); the genesis one until part D feeds
        # the store's configuration and pending change here.
        self.core = PbftEpochs(
            genesis_configuration(self.genesis),
            self.me,
            self.genesis.params,
            parts.signer,
            make=make,
            recovered=RecoveredState(
                last_executed=head.height,
                last_block_hash=head.hash,
                stable_checkpoint=store.latest_checkpoint(),
                # (the recovery mark is the shell's, not one of the core's records)
                records=[r for r in store.load_records() if r[0] != RECOVERY_MARK_KEY],
            ),
            seed=os.urandom(16),
        )
        self.start_applied_index = 0  # (raft's; no raft index in pbft)
        self.clock = RunningClock(max(STALL_MIN_MS, self.genesis.params.request_timeout_ms // 2))
        self._view_logged = (self.core.view, self.core.active)

    # --- inputs -----------------------------------------------------------------------------

    def core_ms(self, mono_ms: int) -> int:
        """The clock the core's timers run on (RunningClock: stalls of the process skipped)."""
        return self.clock.advance(mono_ms)

    async def decode(self, sender: int, frame: bytes) -> pbft_messages.Message | None:
        """A peer frame decoded (None: malformed, counted), with the client signatures of a
        batch the core may accept verified ahead on worker threads."""
        try:
            msg = pbft_messages.decode(frame, self.genesis.params)
        except pbft_messages.WireFormatError as exc:
            self.core.rejected[drop.MALFORMED] += 1
            self.parts.ratelog.warning(
                f"malformed:{sender}", f"malformed message from member {sender}: {exc}"
            )
            return None
        if (
            isinstance(msg, pbft_messages.PrePrepare)
            and msg.txs
            and self._worth_verifying(sender, msg)
        ) or (isinstance(msg, pbft_messages.Batch) and self.core.wants_batch(msg, sender)):
            # Fill the signature cache on worker threads; the core's tx_ok then hits it.
            await self.parts.tx_cache.verify_all(msg.txs)
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
        return self.parts.verifier.verify_ahead(
            key, Domain.PBFT, self.parts.chain_id, pp.body, pp.signature
        )

    def inputs(self) -> contextlib.AbstractContextManager[None]:
        """A drain of events (PbftReplica.inputs: each taken as it comes)."""
        return self.core.inputs()

    def receive(self, sender: int, msg: Any) -> None:
        self.core.receive(sender, msg)

    def propose(self, txs: list[Any]) -> None:
        self.core.propose_all(txs)

    def read(self, read_id: int) -> None:
        raise AssertionError("ReadIndex is raft's (pbft reads take the fast path)")

    def read_abandoned(self, read_id: int) -> None:
        raise AssertionError("ReadIndex is raft's (pbft reads take the fast path)")

    def transfer(self, target: int, term: int, body: bytes) -> str | None:
        raise AssertionError("leadership transfer is raft's (refused in transfer_leadership)")

    def leader_hint(self) -> int | None:
        return None  # a client sends to every member: none is the one to send to

    def diverged(self) -> str | None:
        """Why our store is not the network's (a quorum certified another block), or None."""
        found = self.core.diverged
        if found is None:
            return None
        seq, ours, certified = found
        return (
            f"at seq {seq} this member executed block {ours.hex()[:12]}, a quorum certified "
            f"{certified.hex()[:12]}"
        )

    # --- what the executor asks ---------------------------------------------------------------

    def attach(self, applied_index: Callable[[], int]) -> None:
        pass  # (raft's reads wait for the index applied; pbft's read the state as it is)

    def serve(self, request: Any) -> None:
        assert isinstance(request, PbftServe)
        self.core.served(request, self._serve_blocks(request))

    def reads(self, released: list[Any], failed: list[tuple[int, str]]) -> None:
        raise AssertionError("reads are released by a raft core only")

    def after_step(self) -> None:
        self._log_view(self.core)

    def _serve_blocks(self, serve: PbftServe) -> int:
        """Answer a peer's FETCH from the block store (pbft/transfer.py) within what the core
        granted from the peer's budget; returns the answer's size, which the core charges."""

        def block_at(seq: int) -> pbft_messages.TransferredBlock | None:
            stored = self.parts.store.get_block(seq)
            if stored is None or stored.certificate is None:
                return None
            consensus = stored.block.header.consensus
            return pbft_messages.TransferredBlock(
                proposed_ms=int(consensus[2]),
                txs=stored.block.txs,
                certificate=decode_certificate(stored.certificate),
            )

        frame = blocks_reply(
            self.parts.signer,
            self.parts.chain_id,
            self.me,
            self.genesis.params,
            serve.from_seq,
            self.parts.store.height,
            serve.stable or self.core.stable_certificate,
            block_at,
            serve.bytes_max,
            epoch=serve.epoch,
            last_seq=serve.last_seq,
        )
        self.parts.send_peer(serve.peer, frame)
        return len(frame)

    def _log_view(self, core: PbftEpochs) -> None:
        """One line per view change and per view entered (rate-limited by its nature)."""
        state = (core.view, core.active)
        if state == self._view_logged:
            return
        self._view_logged = state
        if core.active:
            self.parts.log.warning(
                "view %d: entered, primary %s", core.view, self.genesis.members[core.primary].name
            )
        else:
            self.parts.log.warning(
                "view change to %d: %s", core.view, core.last_view_change_reason or "joined"
            )

    # --- reads and maintenance ----------------------------------------------------------------

    async def read_value(self, key: bytes) -> list[Any]:
        """The fast path: our current value, signed with the height and block hash it was read
        at; a client accepts it at a quorum of matching replies."""
        return self.parts.signed_read(key, self.parts.app.kv.get(key))

    async def transfer_leadership(self, target: int, term: int, body: bytes) -> str | None:
        return (
            "leadership transfer is a raft operation; in pbft the primary changes only by a "
            "view change"
        )

    # --- status -------------------------------------------------------------------------------

    def log_fields(self) -> dict[str, object]:
        """The protocol position stamped on every log line (logs.NodeContext)."""
        core = self.core
        return {
            "node": self.parts.member.name,
            "mode": "pbft",
            "view": core.view,
            "seq": core.last_executed,
            "height": self.parts.store.height,
        }

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
            "stalls": {"count": self.clock.stalls, "skipped_ms": self.clock.skipped_ms},
        }
