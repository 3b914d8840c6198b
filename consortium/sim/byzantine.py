"""Byzantine behaviours for the simulator: factories (see cluster.ReplicaFactory) that run the
unmodified honest core and tamper with what it emits, by overriding take_ready() and tick().

A Byzantine replica holds only its own signing key: it can re-sign anything as itself but never
produce another member's signature, which is all PBFT assumes. Randomness comes from a
random.Random seeded by (seed, member), so a run stays a pure function of its seed. Anything a
behaviour does not specifically handle passes through unchanged. Every queue here is bounded.

    equivocating-primary  as primary: each PRE-PREPARE to half the backups, and to the other half
                          the same batch stamped 1 ms later (another digest), both signed
    silent-primary        as primary: sends nothing at all
    slow-primary          as primary: holds each PRE-PREPARE for 0.8 x the view-change timeout
    conflicting-votes     its PREPAREs and COMMITs carry a random digest for some peers
    forged-votes          adds messages naming another member as sender, and copies of its own
                          votes with corrupted signatures
    replay                re-sends a sample of its own old frames to random peers
    off-by-one            re-signs half of its votes with the view or sequence number off by one
    wrong-digest          as primary: PRE-PREPAREs whose digest does not match their batch
    flooding              honest, plus up to 10 junk frames per tick: random bytes, votes for
                          far-future sequence numbers, duplicates
    tampering-new-primary as the primary of a new view: strips the prepared proofs from the
                          other members' VIEW-CHANGE frames (bodies and signatures untouched)
                          and sends a NEW-VIEW computed from what is left, so that a batch
                          committed before could be re-proposed (f liars cannot start a view
                          change: tests make an honest primary fail before a view they lead)
    lying-transfer        answers every FETCH itself with forged BLOCKS: its committed blocks
                          with their transactions replaced (the commit certificate no longer
                          matches), or, where it has none, a block under a certificate signed
                          by itself only
    slow-transfer         answers every FETCH itself with one valid block (claiming its whole
                          height), repeated as often as fits one answer (up to `window`
                          copies: passing for a full answer), each answer held until before
                          the asker's timeout, and sends no CHECKPOINT: a throttle on whoever
                          catches up from it
    unknown-client        as primary: adds to each PRE-PREPARE a transaction validly signed by
                          a key never admitted (ledger spam, which would commit as
                          `unknown_client` receipts)

`accomplices` (all the members running the behaviour, set by the factory) is what colluding
members know of each other (no behaviour here needs it yet).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from dataclasses import replace

from consortium.crypto.codec import WireFormatError
from consortium.crypto.hashing import sha256
from consortium.crypto.keys import KeyPair
from consortium.ledger.block import batch_digest
from consortium.ledger.certificates import CommitCertificate
from consortium.ledger.tx import Put, Transaction
from consortium.pbft.effects import Outbound, Ready, Serve
from consortium.pbft.messages import (
    Blocks,
    Checkpoint,
    Commit,
    Message,
    NewView,
    Prepare,
    PrePrepare,
    TransferredBlock,
    ViewChange,
    decode,
    encode,
    frame_bytes_limit,
)
from consortium.pbft.replica import PbftReplica
from consortium.pbft.viewchange import plan_new_view
from consortium.sim.cluster import ReplicaFactory, replica_factory

HELD_MAX = 256  # frames a slow primary holds, or a replayer remembers
BLOCKS_HELD_MAX = 4096  # committed blocks a member serving FETCHes itself remembers
STRANGER = KeyPair.from_seed(sha256(b"sim-stranger"))  # a client key no genesis admits


class Byzantine(PbftReplica):
    """The honest core, with its output rewritten by `tamper`."""

    seed = 0
    accomplices: frozenset[int] = frozenset()

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.rng = random.Random(self.seed * 1_000 + self.me)
        self.now_ms = 0
        self.ticked = False  # extra() adds traffic once per tick, not once per take_ready

    def tick(self, mono_ms: int, wall_ms: int) -> None:
        self.now_ms = mono_ms
        self.ticked = True
        super().tick(mono_ms, wall_ms)

    def take_ready(self) -> Ready:
        ready = super().take_ready()
        out: list[Outbound] = []
        for msg in ready.messages:
            out.extend(self.tamper(msg))
        if self.ticked:
            self.ticked = False
            out.extend(self.extra())
        serve = self.serve(ready, out)
        return Ready(ready.records, [], out, ready.committed, ready.stable_checkpoints, serve)

    # --- overridden by behaviours -----------------------------------------------------------

    def tamper(self, out: Outbound) -> list[Outbound]:
        return [out]

    def serve(self, ready: Ready, out: list[Outbound]) -> list[Serve]:
        """What the shell should serve (FETCHes): a behaviour may answer them itself in out."""
        return ready.serve

    def extra(self) -> list[Outbound]:
        return []

    # --- helpers ----------------------------------------------------------------------------

    def peers(self, out: Outbound) -> list[int]:
        return [i for i in range(self.n) if i != self.me] if out.dest is None else [out.dest]

    def decoded(self, frame: bytes) -> Message | None:
        try:
            return decode(frame, self.params)
        except WireFormatError:
            return None

    def leading(self) -> bool:
        return self.primary == self.me and self.active

    def resign(self, msg: Prepare | Commit, *, view: int, seq: int, digest: bytes) -> bytes:
        cls = Prepare if isinstance(msg, Prepare) else Commit
        return encode(cls.create(self._signer, self.chain_id, view, seq, digest, self.me))


class EquivocatingPrimary(Byzantine):
    def tamper(self, out: Outbound) -> list[Outbound]:
        msg = self.decoded(out.frame)
        if not (self.leading() and isinstance(msg, PrePrepare) and msg.sender == self.me):
            return [out]
        twin = PrePrepare.create(
            self._signer, self.chain_id, msg.view, msg.seq, msg.proposed_ms + 1, self.me, msg.txs
        )
        return [Outbound(p, out.frame if p % 2 == 0 else encode(twin)) for p in self.peers(out)]


class SilentPrimary(Byzantine):
    def tamper(self, out: Outbound) -> list[Outbound]:
        return [] if self.leading() else [out]


class SlowPrimary(Byzantine):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.held: deque[tuple[int, Outbound]] = deque(maxlen=HELD_MAX)

    def tamper(self, out: Outbound) -> list[Outbound]:
        msg = self.decoded(out.frame)
        if self.leading() and isinstance(msg, PrePrepare) and msg.sender == self.me:
            delay = int(0.8 * self.params.request_timeout_ms)
            self.held.append((self.now_ms + delay, out))
            return []
        return [out]

    def extra(self) -> list[Outbound]:
        due: list[Outbound] = []
        while self.held and self.held[0][0] <= self.now_ms:
            due.append(self.held.popleft()[1])
        return due


class ConflictingVotes(Byzantine):
    def tamper(self, out: Outbound) -> list[Outbound]:
        msg = self.decoded(out.frame)
        if not isinstance(msg, Prepare | Commit) or msg.sender != self.me:
            return [out]
        result = []
        for p in self.peers(out):
            if self.rng.random() < 0.5:
                wrong = self.rng.randbytes(32)
                result.append(
                    Outbound(p, self.resign(msg, view=msg.view, seq=msg.seq, digest=wrong))
                )
            else:
                result.append(Outbound(p, out.frame))
        return result


class ForgedVotes(Byzantine):
    def tamper(self, out: Outbound) -> list[Outbound]:
        msg = self.decoded(out.frame)
        result = [out]
        if isinstance(msg, Prepare | Commit) and msg.sender == self.me:
            victim = self.rng.choice([i for i in range(self.n) if i != self.me])
            cls = Prepare if isinstance(msg, Prepare) else Commit
            # A vote whose body names another member, signed with our own key...
            named = cls.create(self._signer, self.chain_id, msg.view, msg.seq, msg.digest, victim)
            # ...and our own vote with a signature we never made.
            broken = replace(msg, signature=bytes(b ^ 0x01 for b in msg.signature))
            result += [Outbound(None, encode(named)), Outbound(None, encode(broken))]
        return result


class Replay(Byzantine):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.seen: deque[bytes] = deque(maxlen=HELD_MAX)

    def tamper(self, out: Outbound) -> list[Outbound]:
        if self.rng.random() < 0.2:
            self.seen.append(out.frame)
        return [out]

    def extra(self) -> list[Outbound]:
        if not self.seen or self.rng.random() < 0.7:
            return []
        peer = self.rng.choice([i for i in range(self.n) if i != self.me])
        return [Outbound(peer, self.rng.choice(self.seen)) for _ in range(3)]


class OffByOne(Byzantine):
    def tamper(self, out: Outbound) -> list[Outbound]:
        msg = self.decoded(out.frame)
        if not isinstance(msg, Prepare | Commit) or self.rng.random() < 0.5:
            return [out]
        view, seq = msg.view, msg.seq
        if self.rng.random() < 0.5:
            view = max(0, view + self.rng.choice((-1, 1)))
        else:
            seq = max(1, seq + self.rng.choice((-1, 1)))
        return [Outbound(out.dest, self.resign(msg, view=view, seq=seq, digest=msg.digest))]


class WrongDigest(Byzantine):
    def tamper(self, out: Outbound) -> list[Outbound]:
        msg = self.decoded(out.frame)
        if not (self.leading() and isinstance(msg, PrePrepare) and msg.sender == self.me):
            return [out]
        bad = PrePrepare.create(
            self._signer,
            self.chain_id,
            msg.view,
            msg.seq,
            msg.proposed_ms,
            self.me,
            msg.txs,
            digest=self.rng.randbytes(32),
        )
        return [Outbound(out.dest, encode(bad))]


class Flooding(Byzantine):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.last: deque[bytes] = deque(maxlen=16)

    def tamper(self, out: Outbound) -> list[Outbound]:
        self.last.append(out.frame)
        return [out]

    def extra(self) -> list[Outbound]:
        junk: list[Outbound] = []
        for _ in range(self.rng.randint(0, 10)):
            kind = self.rng.random()
            if kind < 0.3:
                frame = self.rng.randbytes(self.rng.randint(1, 600))
            elif kind < 0.6:
                seq = self.low_watermark + self.params.window * self.rng.randint(2, 50)
                frame = encode(
                    Prepare.create(
                        self._signer, self.chain_id, self.view, seq, self.rng.randbytes(32), self.me
                    )
                )
            elif self.last:
                frame = self.rng.choice(self.last)
            else:
                continue
            junk.append(Outbound(None, frame))
        return junk


class TamperingNewPrimary(Byzantine):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        # (view, seq) -> the digest we put there instead of the batch the proofs named
        self.substituted: dict[tuple[int, int], bytes] = {}
        self.held_vcs: list[ViewChange] = []

    def _try_new_view(self) -> None:
        # Every VIEW-CHANGE we hold, not only the Q the honest core picks.
        self.held_vcs = self._view_changes_for(self.view)
        super()._try_new_view()

    def tamper(self, out: Outbound) -> list[Outbound]:
        msg = self.decoded(out.frame)
        if isinstance(msg, NewView) and msg.sender == self.me:
            # One NEW-VIEW per peer, leaving out the peer's own VIEW-CHANGE where we hold
            # enough others: a replica that never prepared the batch sees no proof of it.
            result = []
            for p in self.peers(out):
                vcs = [vc for vc in self.held_vcs if vc.view == msg.view]
                others = [vc for vc in vcs if vc.sender != p]
                chosen = others if len(others) >= self.quorum else vcs
                chosen.sort(key=lambda vc: (vc.sender != self.me, vc.sender))
                result.append(Outbound(p, self.tampered_new_view(msg.view, chosen[: self.quorum])))
            return result
        if (
            isinstance(msg, PrePrepare)
            and msg.sender == self.me
            and (msg.view, msg.seq) in self.substituted
        ):
            # Our honest core re-issues the batch the stripped proofs named: propose an
            # empty batch there instead (another digest), which is the whole point.
            empty = PrePrepare.create(
                self._signer, self.chain_id, msg.view, msg.seq, msg.proposed_ms + 1, self.me, ()
            )
            self.substituted[msg.view, msg.seq] = empty.digest
            return [Outbound(out.dest, encode(empty))]
        if isinstance(msg, Commit) and msg.sender == self.me:
            digest = self.substituted.get((msg.view, msg.seq))
            if digest is not None:
                return [
                    Outbound(out.dest, self.resign(msg, view=msg.view, seq=msg.seq, digest=digest))
                ]
        return [out]

    def tampered_new_view(self, view: int, honest: list[ViewChange]) -> bytes:
        frames: list[bytes] = []
        vcs: list[ViewChange] = []
        for vc in honest:
            if vc.sender == self.me:
                # Our own we can simply sign again, without proofs.
                vc = ViewChange.create(self._signer, self.chain_id, vc.view, vc.stable, (), self.me)
            elif vc.prepared:
                vc = replace(vc, prepared=())  # the signed body still names the proofs
            frames.append(encode(vc))
            vcs.append(vc)
        plan = plan_new_view(vcs)
        kept = {item.seq: item.digest for item in plan.reissue}
        for item in plan_new_view(honest).reissue:
            if kept.get(item.seq) != item.digest:
                self.substituted[view, item.seq] = item.digest
        while len(self.substituted) > HELD_MAX:
            del self.substituted[next(iter(self.substituted))]
        pps = tuple(
            PrePrepare.create(
                self._signer,
                self.chain_id,
                view,
                item.seq,
                item.proposed_ms,
                self.me,
                (),
                digest=item.digest,
            )
            for item in plan.reissue
        )
        nv = NewView.create(self._signer, self.chain_id, view, tuple(frames), pps, self.me)
        return encode(nv)


class LyingTransfer(Byzantine):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.blocks: deque[TransferredBlock] = deque(maxlen=HELD_MAX)

    def serve(self, ready: Ready, out: list[Outbound]) -> list[Serve]:
        for batch in ready.committed:
            self.blocks.append(
                TransferredBlock(
                    proposed_ms=batch.proposed_ms, txs=batch.txs, certificate=batch.certificate
                )
            )
        for request in ready.serve:
            held = [b for b in self.blocks if b.seq >= request.from_seq][:16]
            if held:
                # Each block's transactions rotated to the next block's (or dropped): the
                # certificate, which we cannot forge, no longer matches.
                forged = tuple(
                    replace(b, txs=held[(i + 1) % len(held)].txs if len(held) > 1 else ())
                    for i, b in enumerate(held)
                )
            else:
                digest = batch_digest(0, [])
                vote = Commit.create(
                    self._signer, self.chain_id, self.view, request.from_seq, digest, self.me
                ).vote()
                cert = CommitCertificate(self.view, request.from_seq, digest, (vote,))
                forged = (TransferredBlock(proposed_ms=0, txs=(), certificate=cert),)
            reply = Blocks.create(
                self._signer,
                self.chain_id,
                request.from_seq,
                self.last_executed,
                None,
                forged,
                self.me,
            )
            out.append(Outbound(request.peer, encode(reply)))
        return []


class SlowTransfer(Byzantine):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.blocks: dict[int, TransferredBlock] = {}
        self.held: deque[tuple[int, Outbound]] = deque(maxlen=HELD_MAX)

    def tamper(self, out: Outbound) -> list[Outbound]:
        if isinstance(self.decoded(out.frame), Checkpoint):
            return []  # withheld: nobody learns from us how far we are
        return [out]

    def serve(self, ready: Ready, out: list[Outbound]) -> list[Serve]:
        for batch in ready.committed:
            self.blocks[batch.seq] = TransferredBlock(
                proposed_ms=batch.proposed_ms, txs=batch.txs, certificate=batch.certificate
            )
            self.blocks.pop(batch.seq - BLOCKS_HELD_MAX, None)
        for request in ready.serve:
            one = tuple(self.blocks[s] for s in (request.from_seq,) if s in self.blocks)
            height = max(self.blocks, default=0)
            copies = self.params.window
            while True:
                reply = Blocks.create(
                    self._signer,
                    self.chain_id,
                    request.from_seq,
                    height,
                    None,
                    one * copies,
                    self.me,
                )
                if copies == 1 or len(encode(reply)) <= frame_bytes_limit(self.params):
                    break
                copies //= 2
            # Before the asker gives up on us (its retransmission interval, as ours), with room
            # for both legs of the network's delay: held later, the answer came after the
            # timeout and counted as none at all, which is not the throttle under test.
            due = self.now_ms + self.retransmit_ms // 2
            self.held.append((due, Outbound(request.peer, encode(reply))))
        return []

    def extra(self) -> list[Outbound]:
        due: list[Outbound] = []
        while self.held and self.held[0][0] <= self.now_ms:
            due.append(self.held.popleft()[1])
        return due


class UnknownClient(Byzantine):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.spam = 0

    def tamper(self, out: Outbound) -> list[Outbound]:
        msg = self.decoded(out.frame)
        if not (self.leading() and isinstance(msg, PrePrepare) and msg.sender == self.me):
            return [out]
        self.spam += 1
        stranger = Transaction.create(
            STRANGER,
            self.chain_id,
            b"spam-%d-%d" % (self.me, self.spam),
            msg.proposed_ms + 60_000,
            [Put(b"spam", b"%d" % self.spam)],
        )
        txs = (*msg.txs[: self.params.batch_txs_max - 1], stranger)
        spam = PrePrepare.create(
            self._signer, self.chain_id, msg.view, msg.seq, msg.proposed_ms, self.me, txs
        )
        return [Outbound(out.dest, encode(spam))]


BEHAVIOURS: dict[str, type[Byzantine]] = {
    "equivocating-primary": EquivocatingPrimary,
    "silent-primary": SilentPrimary,
    "slow-primary": SlowPrimary,
    "conflicting-votes": ConflictingVotes,
    "forged-votes": ForgedVotes,
    "replay": Replay,
    "off-by-one": OffByOne,
    "wrong-digest": WrongDigest,
    "flooding": Flooding,
    "tampering-new-primary": TamperingNewPrimary,
    "lying-transfer": LyingTransfer,
    "slow-transfer": SlowTransfer,
    "unknown-client": UnknownClient,
}


def byzantine(name: str, seed: int = 0, accomplices: Iterable[int] = ()) -> ReplicaFactory:
    """The factory for behaviour `name` (one of BEHAVIOURS); `accomplices` are all the members
    running it (colluders may coordinate)."""
    cls: type[Byzantine] = type(
        f"{BEHAVIOURS[name].__name__}Seeded",
        (BEHAVIOURS[name],),
        {"seed": seed, "accomplices": frozenset(accomplices)},
    )

    return replica_factory(cls)
