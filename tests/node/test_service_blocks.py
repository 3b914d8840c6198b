"""`block` requests, the member side: ClientService over a real BlockStore
(tests/node/fakes.py FakeNode) on a real ClientServer on 127.0.0.1.

A stranger's one write of 3,000 pipelined `block` requests for a ~4 MB block froze a member
for 21 s: every buffered frame was served with no checkpoint between them, each block read,
decoded and re-encoded on the event loop (~7 ms), also after the client had gone. The event
loop probe (tests/node/fakes.py max_gap_while) measures CPU time, not wall time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from consortium.crypto.codec import pack, unpack
from consortium.ledger.tx import Put
from consortium.node import service as service_module
from consortium.protocol.framing import FrameReader, encode_frame
from tests.ledger.chain_fixture import ChainBuilder
from tests.node.fakes import max_gap_while, members

REQUESTS = 3000
STALL_MAX_S = 0.1  # the longest the core may wait for the loop (a few pbft/raft ticks)


def big_chain() -> ChainBuilder:
    """One block of ~4.4 MB: 2,000 transactions of 2 KB values."""
    chain = ChainBuilder()
    chain.add([chain.tx(Put(b"k%d" % i, b"v" * 2000)) for i in range(2000)])
    chain.add_puts(3)
    return chain


def requests(count: int, height: int) -> bytes:
    return b"".join(encode_frame(pack(["block", i + 1, height])) for i in range(count))


@pytest.mark.parametrize("reads", [0, 20])
async def test_pipelined_block_requests_do_not_freeze_the_members_event_loop(
    tmp_path: Path, reads: int
) -> None:
    """3,000 `block` requests for the big block in one write (~45 KB), from a client that
    reads none of the replies, or some then leaves: the loop never stalls over STALL_MAX_S."""
    chain = big_chain()
    async with members(tmp_path, [chain]) as (_, addresses):

        async def work() -> None:
            stream = await trio.open_tcp_stream(*addresses[0])
            await stream.send_all(requests(REQUESTS, 1))
            reader = FrameReader(stream, 32 << 20)
            for _ in range(reads):
                frame = await reader.read()
                assert frame is not None
                _, status, block = unpack(frame)
                assert status == "ok" and len(block[1]) == 2000
            await trio.sleep(0.5)
            await stream.aclose()
            await trio.sleep(0.2)

        gap = await max_gap_while(work)
    assert gap < STALL_MAX_S, f"the event loop was frozen for {gap:.2f} s of CPU"


async def test_a_block_is_answered_as_before_and_read_once_for_many_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer is the same bytes as packing the decoded block was; repeated requests for
    one height read and encode it once (the cache), a height not stored is None."""
    chain = big_chain()
    reads: list[int] = []
    encode = service_module.ClientService._encode_block

    def counting(self: service_module.ClientService, height: int) -> bytes | None:
        reads.append(height)
        return encode(self, height)

    monkeypatch.setattr(service_module.ClientService, "_encode_block", counting)
    with trio.fail_after(30):
        async with members(tmp_path, [chain]) as (nodes, addresses):
            stream = await trio.open_tcp_stream(*addresses[0])
            reader = FrameReader(stream, 32 << 20)
            await stream.send_all(requests(5, 1) + encode_frame(pack(["block", 9, 2])))
            await stream.send_all(encode_frame(pack(["block", 10, 99])))
            replies = [await reader.read() for _ in range(7)]
            stored = nodes[0].store.get_block(2)
            assert stored is not None
            expected = pack(
                [
                    9,
                    "ok",
                    [
                        stored.block.header.to_array(),
                        [t.to_array() for t in stored.block.txs],
                        [r.to_array() for r in stored.block.receipts],
                        stored.certificate,
                        [v.to_array() for v in stored.block_signatures],
                    ],
                ]
            )
            assert replies[5] == expected
            assert replies[6] == pack([10, "ok", None])
            assert len({r[2:] for r in replies[:5] if r is not None}) == 1  # one block, 5 ids
            assert reads == [1, 2]
            await stream.aclose()
