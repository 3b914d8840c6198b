"""TESTS ONLY: faults composed around a real member (runtime.Node) by the test entry point
(member.py): a Byzantine primary's sends, a partition read from a file, a wall clock offset
read from a file. The member itself is unchanged: each fault replaces one of its parts
(`node.outbound`, `node.wall_clock`, the transport's `send` and `inbound`) before it runs."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from consortium.crypto.signing import Domain, Signer
from consortium.ledger.block import Block, receipts_root
from consortium.ledger.certificates import SignedVote, block_signature_body
from consortium.node.runtime import Node
from consortium.pbft import messages as pbft_messages
from consortium.pbft.epochs import PbftEpochs

BYZANTINE_BEHAVIOURS = ("silent-primary", "equivocating-primary")
FORGED_REASON = "forged"  # what a member that lies in its receipts says of every transaction
POLL_S = 0.05  # how often a fault file is read again


def byzantine_outbound(node: Node, behaviour: str) -> Callable[[int | None, bytes], None]:
    """What leaves a member that misbehaves while primary (its core stays honest; only what
    leaves changes): `silent-primary` sends nothing; `equivocating-primary` sends each of its
    PRE-PREPAREs to half the backups and, to the other half, first the same batch stamped one
    millisecond later (another digest) and then the original, both correctly signed."""
    assert behaviour in BYZANTINE_BEHAVIOURS, behaviour
    if node.genesis.mode != "pbft":
        raise ValueError("--byzantine is a pbft test mode")
    core = node.core
    assert isinstance(core, PbftEpochs)
    send = node.send_peer
    others = [i for i in range(node.genesis.n) if i != node.me]

    def outbound(dest: int | None, frame: bytes) -> None:
        if core.primary != node.me or not core.active:
            send(dest, frame)
            return
        if behaviour == "silent-primary":
            return
        msg = pbft_messages.decode(frame, node.genesis.params)
        if not isinstance(msg, pbft_messages.PrePrepare) or not msg.txs:
            send(dest, frame)
            return
        twin = pbft_messages.PrePrepare.create(
            node.signer, node.chain_id, msg.view, msg.seq, msg.proposed_ms + 1, node.me, msg.txs
        )
        for d in others if dest is None else [dest]:
            if d % 2 == 0:
                send(d, frame)
            else:  # the twin, then the original: these backups hold both, signed
                send(d, pbft_messages.encode(twin))
                send(d, frame)

    return outbound


PARTITION_QUEUE = 64  # frames between the transport and the member (its byte budget holds)


def partition(node: Node, path: Path) -> Callable[[], Awaitable[None]]:
    """Cut the member off from the members named in `path` (one per line; a missing or empty
    file heals), both ways, while the connections stay up, as a network partition drops
    packets: the transport's `send` and its `inbound` channel are wrapped now (call it before
    the member runs), and the returned task, to start beside the member (the member hears
    nothing until it runs), reads the file every POLL_S and forwards what is not cut."""
    peers = node.peers
    cut: set[int] = set()
    send = peers.send
    upstream = peers.inbound
    forward, peers.inbound = trio.open_memory_channel[tuple[int, bytes]](PARTITION_QUEUE)

    def send_unless_cut(dest: int, frame: bytes) -> bool:
        if dest in cut:
            peers.counters["test_partition_dropped"] += 1
            return False
        return send(dest, frame)

    peers.send = send_unless_cut  # type: ignore[method-assign]

    async def follow() -> None:
        async with forward, trio.open_nursery() as nursery:
            nursery.start_soon(_read_cut, node, path, cut)
            async for sender, frame in upstream:
                if sender in cut:
                    peers.consumed(frame)
                    peers.counters["test_partition_dropped"] += 1
                    continue
                await forward.send((sender, frame))
            nursery.cancel_scope.cancel()  # the transport is done

    return follow


async def _read_cut(node: Node, path: Path, cut: set[int]) -> None:
    while True:
        try:
            names = (await trio.Path(path).read_text()).split()
        except OSError:
            names = []
        now = {m.index for m in node.genesis.members if m.name in names and m.index != node.me}
        if now != cut:
            node.log.warning(
                "TEST PARTITION: cut off from %s",
                ", ".join(node.genesis.members[i].name for i in sorted(now)) or "nobody",
            )
            cut.clear()
            cut.update(now)
        await trio.sleep(POLL_S)


class OffsetClock:
    """A wall clock `offset_ms` off the system's, the offset read from a file (an integer, ms,
    negative for behind; missing or empty is 0) at start and every POLL_S by follow(), so a
    test can set a member's clock wrong, or make it jump, while it runs (a test replaces the
    file by a rename, so no read sees it half written)."""

    def __init__(self, path: Path, log: Callable[[str], None]) -> None:
        self.path = path
        self.offset_ms = 0
        self._log = log
        with contextlib.suppress(OSError):
            self.set(path.read_text())

    def __call__(self) -> int:
        return int(time.time() * 1000) + self.offset_ms

    def set(self, text: str) -> None:
        try:
            offset_ms = int(text.strip() or 0)
        except ValueError:
            offset_ms = 0
        if offset_ms != self.offset_ms:
            self._log(f"TEST CLOCK: wall clock offset by {offset_ms:+d} ms")
            self.offset_ms = offset_ms

    async def read(self) -> None:
        try:
            text = await trio.Path(self.path).read_text()
        except OSError:
            text = ""
        self.set(text)

    async def follow(self) -> None:
        while True:
            await trio.sleep(POLL_S)
            await self.read()


def corrupt_state(node: Node, path: Path) -> Callable[[], Awaitable[None]]:
    """A store that rots while the member runs: once `path` appears, the value of the key it
    names (its text, UTF-8) is replaced in the member's in-memory state by b"rotten", and the
    file is deleted (so a member started again runs clean). The member executes on from the
    wrong value without knowing: what a quorum's checkpoints must catch (runtime.py)."""

    async def follow() -> None:
        while True:
            try:
                key = (await trio.Path(path).read_text()).encode()
            except OSError:
                await trio.sleep(POLL_S)
                continue
            node.store.app.kv[key] = b"rotten"
            await trio.Path(path).unlink()
            node.log.warning("TEST ROT: the value of %r in this member's state is wrong now", key)
            return

    return follow


def forge_receipts(
    block: Block, signer: Signer, chain_id: bytes, me: int
) -> tuple[Block, SignedVote]:
    """`block` as a lying member tells clients of it: every receipt rejected (`FORGED_REASON`),
    in a header whose receipts root is the forged receipts', with `signer`'s valid block
    signature over it. Its proofs and its signature check out; only the tally of f+1 matching
    members refuses it (the header is not the one the others sign)."""
    forged = tuple(
        dataclasses.replace(r, status="rejected", reason=FORGED_REASON, results=())
        for r in block.receipts
    )
    header = dataclasses.replace(block.header, receipts_root=receipts_root(forged))
    body = block_signature_body(header.height, header.hash, me)
    return Block(header, block.txs, forged), SignedVote(
        body, signer.sign(Domain.BLOCK, chain_id, body)
    )


def lying_receipts(node: Node) -> None:
    """A member that lies to clients in every receipt it pushes, and signs the lie
    (`forge_receipts`). The ledger, its votes and its peers are unaffected; only what it tells
    clients is wrong. A client must count it as one member that does not agree, at no cost in
    time (issue 18: p99 within 1.5x of the all-honest run; `consortium bench
    --lying-receipts`). Call it before the member runs: it replaces `executed` on the member's
    receipt watches (node/watches.py), so every push of a block's receipts lies."""
    watches = node.service.watches
    honest = watches.executed

    def executed(block: Block, vote: SignedVote) -> bool:
        return honest(*forge_receipts(block, node.signer, node.chain_id, node.me))

    watches.executed = executed  # type: ignore[method-assign]
