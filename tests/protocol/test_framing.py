"""Framing: exact frames, frames split across reads, limits checked before the body is read.

The streams are fakes and memory streams, so every test runs on trio's autojump clock: a
reader that hangs (reading a body it should refuse) fails its fail_after at once, and a slow
machine never does."""

from __future__ import annotations

import itertools
import struct

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from consortium.protocol.framing import (
    RECEIVE_BYTES,
    FrameError,
    FrameReader,
    encode_frame,
    encode_frames,
    send_frames,
)


class CountingReceive(trio.abc.ReceiveStream):
    """A receive stream over fixed chunks that counts receive_some calls (never blocks: when
    the chunks run out it either reports EOF or, with hang=True, waits forever)."""

    def __init__(self, chunks: list[bytes], *, hang: bool = False) -> None:
        self.chunks = list(chunks)
        self.calls = 0
        self.max_bytes_asked: list[int | None] = []
        self.hang = hang

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        self.calls += 1
        self.max_bytes_asked.append(max_bytes)
        await trio.lowlevel.checkpoint()
        if self.chunks:
            return self.chunks.pop(0)
        if self.hang:
            await trio.sleep_forever()
        return b""

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class CountingSend(trio.abc.SendStream):
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.writes.append(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def test_a_frame_is_a_big_endian_length_then_the_body() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frames([b"a", b"bc"]) == b"\x00\x00\x00\x01a\x00\x00\x00\x02bc"
    assert encode_frames([]) == b""
    with pytest.raises(ValueError, match=r"1\.\."):
        encode_frame(b"")


async def test_exact_frames_come_out_whole_and_eof_between_frames_is_none(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bodies = [b"a", b"bb" * 20, bytes(range(256))]
    stream = CountingReceive([encode_frames(bodies)])
    reader = FrameReader(stream, 1000)
    with trio.fail_after(5):
        assert [await reader.read() for _ in bodies] == bodies
        assert await reader.read() is None
    # All three frames came from one receive: frames in the buffer are handed out first.
    assert stream.calls == 2
    assert all(n == RECEIVE_BYTES for n in stream.max_bytes_asked)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
async def test_frames_split_across_reads_come_out_whole(
    chunk: int, autojump_clock: trio.testing.MockClock
) -> None:
    bodies = [b"x" * n for n in (1, 5, 100, 33)]
    data = encode_frames(bodies)
    reader = FrameReader(
        CountingReceive([data[i : i + chunk] for i in range(0, len(data), chunk)]), 100
    )
    with trio.fail_after(5):
        assert [await reader.read() for _ in bodies] == bodies
        assert await reader.read() is None


async def test_an_oversize_frame_is_refused_before_its_body_is_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Only the 4-byte header exists and the stream never ends: reading the body would hang.
    stream = CountingReceive([struct.pack(">I", 2**31)], hang=True)
    reader = FrameReader(stream, 100)
    with trio.fail_after(5), pytest.raises(FrameError, match="exceeds the limit of 100"):
        await reader.read()
    assert stream.calls == 1


async def test_the_limit_is_inclusive(autojump_clock: trio.testing.MockClock) -> None:
    reader = FrameReader(CountingReceive([encode_frame(b"x" * 100)]), 100)
    with trio.fail_after(5):
        assert await reader.read() == b"x" * 100


async def test_a_zero_length_frame_is_an_error(autojump_clock: trio.testing.MockClock) -> None:
    reader = FrameReader(CountingReceive([struct.pack(">I", 0)], hang=True), 100)
    with trio.fail_after(5), pytest.raises(FrameError, match="zero-length"):
        await reader.read()


async def test_eof_inside_a_frame_body_is_an_error(autojump_clock: trio.testing.MockClock) -> None:
    reader = FrameReader(CountingReceive([encode_frame(b"hello")[:-2]]), 100)
    with trio.fail_after(5), pytest.raises(FrameError, match="inside a frame"):
        await reader.read()


async def test_eof_inside_a_frame_header_is_an_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reader = FrameReader(CountingReceive([b"\x00\x00"]), 100)
    with trio.fail_after(5), pytest.raises(FrameError, match="inside a frame header"):
        await reader.read()


async def test_the_limit_can_be_raised_after_a_handshake(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reader = FrameReader(CountingReceive([encode_frames([b"a", b"b" * 50])]), 10)
    with trio.fail_after(5):
        assert await reader.read() == b"a"
        reader.set_limit(100)
        assert await reader.read() == b"b" * 50


async def test_many_frames_are_written_with_one_send_all(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stream = CountingSend()
    with trio.fail_after(5):
        await send_frames(stream, [b"one", b"two", b"three"])
        await send_frames(stream, [])
    assert stream.writes == [encode_frames([b"one", b"two", b"three"])]


async def test_a_large_frame_over_a_real_stream_pair(
    autojump_clock: trio.testing.MockClock,
) -> None:
    left, right = trio.testing.memory_stream_pair()
    body = bytes(range(256)) * 4096  # 1 MiB, many receives
    reader = FrameReader(right, 2 << 20)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_frames, left, [body, b"tail"])
            assert await reader.read() == body
            assert await reader.read() == b"tail"


@settings(max_examples=60, deadline=None)
@given(
    bodies=st.lists(st.binary(min_size=1, max_size=300), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=20),
)
def test_any_split_of_any_frames_reads_back_the_same_frames(
    bodies: list[bytes], cuts: list[int]
) -> None:
    data = encode_frames(bodies)
    points = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    chunks = [data[a:b] for a, b in itertools.pairwise(points) if b > a]

    async def main() -> list[bytes]:
        reader = FrameReader(CountingReceive(chunks), 300)
        out = []
        with trio.fail_after(5):
            while (body := await reader.read()) is not None:
                out.append(body)
        return out

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == bodies
