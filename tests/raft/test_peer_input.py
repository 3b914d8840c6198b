"""What a peer sends is checked and counted by reason (crashft/reasons.py), never raised (no
section of the papers, which assume well-formed messages from members)."""

from __future__ import annotations

from raft_harness import started

from consortium.crashft import messages as m
from consortium.crashft.node import FOLLOWER
from consortium.crypto.codec import pack


def test_malformed_frames_and_unknown_senders_are_counted_never_raised() -> None:
    g = started()
    n2 = g.node(1)
    canonical = m.encode(m.TimeoutNow(1, 1))
    assert canonical[-1:] == b"\x01"
    frames = [
        b"",
        b"\xff\x00garbage",
        pack(["vote", 1]),  # wrong number of fields
        pack(["nonsense", 1]),
        pack(["append", 1, 0, 0, 0, [[1, 3]]]),  # entry index not prev + 1
        pack(["append", 1, 0, 0, 0, [[1, 1, 0, 0, b"short", []]]]),  # bad signature size
        canonical[:-1] + b"\xcc\x01",  # the same message, non-canonical integer encoding
        b"\x90" * (g.params.frame_bytes_max + 1),
    ]
    for frame in frames:
        assert g.receive(1, 0, frame).messages == []
    assert n2.rejected["malformed"] == len(frames)
    for sender in (-1, 1, 1 << 16):  # no member id, or our own
        g.receive(1, sender, m.encode(m.Vote(9, 9, 9, False, True)))
    assert n2.rejected["unknown_sender"] == 3
    for sender in (3, 99):  # an id, but no member of the configuration n2 applied
        g.receive(1, sender, m.encode(m.Vote(9, 9, 9, False, True)))
    assert n2.rejected["not_member"] == 2
    assert (n2.term, n2.leader, n2.role) == (1, 0, FOLLOWER)
