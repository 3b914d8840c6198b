"""Length-prefixed frames: a 4-byte big-endian length, then the body (one msgpack value).

The length is checked against the maximum BEFORE the body is read, so an oversize frame costs
the reader four bytes, not the frame. A zero length, an oversize length, or an EOF inside a
frame raise FrameError; the caller closes that connection and nothing else changes.
Reads are buffered (up to 64 KiB per receive) and several frames are parsed per read.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import trio

HEADER = struct.Struct(">I")
RECEIVE_BYTES = 65536


class FrameError(Exception):
    """A frame that breaks the framing rules; the connection must be closed."""


def encode_frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def encode_frames(bodies: Iterable[bytes]) -> bytes:
    """Frames concatenated for one send_all (coalescing)."""
    parts: list[bytes] = []
    for body in bodies:
        parts.append(HEADER.pack(len(body)))
        parts.append(body)
    return b"".join(parts)


class FrameReader:
    def __init__(self, stream: trio.abc.ReceiveStream, frame_bytes_max: int) -> None:
        self._stream = stream
        self._max = frame_bytes_max
        self._buf = bytearray()
        self._pos = 0

    def set_limit(self, frame_bytes_max: int) -> None:
        """Raise the limit after a handshake (which runs with a small one)."""
        self._max = frame_bytes_max

    def _available(self) -> int:
        return len(self._buf) - self._pos

    def _compact(self) -> None:
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0

    async def _fill(self, need: int) -> bool:
        """Read until `need` bytes are buffered; False on EOF."""
        while self._available() < need:
            self._compact()
            chunk = await self._stream.receive_some(RECEIVE_BYTES)
            if not chunk:
                return False
            self._buf += chunk
        return True

    async def read(self) -> bytes | None:
        """The next frame body, or None on a clean EOF between frames."""
        if not await self._fill(HEADER.size):
            if self._available():
                raise FrameError("connection closed inside a frame header")
            return None
        (length,) = HEADER.unpack_from(self._buf, self._pos)
        if length == 0:
            raise FrameError("zero-length frame")
        if length > self._max:
            raise FrameError(f"frame of {length} bytes exceeds the limit of {self._max}")
        if not await self._fill(HEADER.size + length):
            raise FrameError("connection closed inside a frame")
        start = self._pos + HEADER.size
        body = bytes(self._buf[start : start + length])
        self._pos = start + length
        return body


async def send_frames(stream: trio.abc.SendStream, bodies: Iterable[bytes]) -> None:
    await stream.send_all(encode_frames(bodies))
