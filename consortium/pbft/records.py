"""What a PBFT replica persists, and how it reads it back after a restart (Castro & Liskov,
TOCS 2002 §4.2 "a replica must not send conflicting messages after a restart"; the rule
"durable before the message that depends on it leaves", node/executor.py).

Theory of operation
-------------------
The shell stores Ready.records opaquely (key -> value, None deletes) in the same fsync as any
blocks, before it sends Ready.messages. Keys and values:

    b"pbft/log/<seq:020d>/preprepare"  the accepted PRE-PREPARE frame (ours as primary, or the
                                       primary's): persisted before our PREPARE leaves, so a
                                       restarted replica still holds the batch it voted for
    b"pbft/log/<seq:020d>/prepare"     our PREPARE frame
    b"pbft/log/<seq:020d>/commit"      our COMMIT frame
    b"pbft/proof/<seq:020d>"           [PRE-PREPARE frame with its batch, [Q-1 PREPARE frames]]:
                                       the prepared certificate of the highest view for seq,
                                       before our COMMIT leaves; it outlives view changes (a
                                       VIEW-CHANGE must carry it) until a checkpoint covers seq
    b"pbft/checkpoint/<seq:020d>"      our CHECKPOINT frame
    b"pbft/stable"                     the latest stable CheckpointCertificate (encode())
    b"pbft/view"                       [view, active, timeouts]: written before our VIEW-CHANGE
                                       leaves, when we enter a view, and when a request executes
                                       after view changes; timeouts (successive view changes, which
                                       double the view-change timer) is absent in records written
                                       before it existed and then reads as 0
    b"pbft/viewchange"                 our VIEW-CHANGE frame for the view we are moving to
    b"pbft/newview"                    the NEW-VIEW frame that started our current view

Slot records belong to the current view: entering a new view deletes them (in the same write
as the new view's), so after a restart every slot record is of the view in b"pbft/view".

Frames are exactly what was sent, so a restarted replica re-sends the same signed bytes and
never signs a second, conflicting vote for one (view, seq). Sequence numbers are zero-padded so
the keys sort numerically. When a checkpoint becomes stable, the log records at or below it and
own checkpoint records below it are deleted in the same Ready that persists the certificate.

Records are this replica's own data: one that does not decode means the disk or the operator
changed it, and restarting on it could make the replica contradict itself, so `parse` raises
RecoveryError naming the key instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from consortium.crypto.codec import (
    WireFormatError,
    as_bytes,
    as_int,
    as_list,
    pack,
    unpack_canonical,
)
from consortium.ledger.certificates import CheckpointCertificate
from consortium.ledger.genesis import Params
from consortium.pbft.messages import (
    Checkpoint,
    Commit,
    NewView,
    Prepare,
    PrePrepare,
    ViewChange,
    decode,
)

STABLE_KEY = b"pbft/stable"
VIEW_KEY = b"pbft/view"
VIEW_CHANGE_KEY = b"pbft/viewchange"
NEW_VIEW_KEY = b"pbft/newview"
_LOG_PREFIX = b"pbft/log/"
_PROOF_PREFIX = b"pbft/proof/"
_CHECKPOINT_PREFIX = b"pbft/checkpoint/"
SLOT_KINDS = ("preprepare", "prepare", "commit")


class RecoveryError(ValueError):
    """The consensus records in the data directory cannot be read back."""


def slot_key(seq: int, kind: str) -> bytes:
    assert kind in SLOT_KINDS
    return _LOG_PREFIX + b"%020d/%s" % (seq, kind.encode())


def checkpoint_key(seq: int) -> bytes:
    return _CHECKPOINT_PREFIX + b"%020d" % seq


def view_value(view: int, active: bool, timeouts: int = 0, *, epoch: int = 0) -> bytes:
    """[view, active, timeouts] at epoch 0 (as before epochs existed); [epoch, view, active,
    timeouts] from epoch 1 on (pbft/epochs.py)."""
    if epoch == 0:
        return pack([view, 1 if active else 0, timeouts])
    return pack([epoch, view, 1 if active else 0, timeouts])


def proof_key(seq: int) -> bytes:
    return _PROOF_PREFIX + b"%020d" % seq


def proof_value(preprepare_frame: bytes, prepare_frames: list[bytes]) -> bytes:
    return pack([preprepare_frame, prepare_frames])


@dataclass(slots=True)
class RestoredSlot:
    seq: int
    preprepare: PrePrepare | None = None
    preprepare_frame: bytes | None = None
    prepare: Prepare | None = None
    prepare_frame: bytes | None = None
    commit: Commit | None = None
    commit_frame: bytes | None = None
    keys: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class Restored:
    stable: CheckpointCertificate | None = None
    checkpoints: list[tuple[Checkpoint, bytes]] = field(default_factory=list)  # (vote, frame)
    slots: dict[int, RestoredSlot] = field(default_factory=dict)
    proofs: dict[int, tuple[PrePrepare, list[Prepare], bytes]] = field(default_factory=dict)
    epoch: int = 0  # of the view record (pbft/epochs.py); 0 when absent or 3 fields
    view: int = 0
    active: bool = True
    timeouts: int = 0  # successive view changes since a request last executed
    view_change: bytes | None = None
    new_view: bytes | None = None
    unknown_keys: list[bytes] = field(default_factory=list)


# Fields of each recorded message's body in protocol version 3 (epoch second, sender last);
# protocol 2 wrote one fewer: no epoch.
_BODY_FIELDS = {
    "preprepare": 7,
    "prepare": 6,
    "commit": 6,
    "checkpoint": 5,
    "viewchange": 6,
    "newview": 5,
}


def _protocol_2_frame(value: bytes) -> bool:
    """Is this record a message frame as protocol version 2 wrote it (a body without the
    epoch)? A prepared proof is [PRE-PREPARE frame, [PREPARE frames]]: its PRE-PREPARE says."""
    try:
        a = as_list(unpack_canonical(value), what="record")
        if len(a) == 2 and isinstance(a[1], list):
            a = as_list(unpack_canonical(as_bytes(a[0], "frame")), what="record")
        body = as_list(unpack_canonical(as_bytes(a[0], "body")), what="body")
    except (WireFormatError, IndexError):
        return False
    kind = body[0] if body else None
    return isinstance(kind, str) and _BODY_FIELDS.get(kind) == len(body) + 1


def parse(records: list[tuple[bytes, bytes]], params: Params, me: int) -> Restored:
    out = Restored()
    for key, value in sorted(records):
        try:
            _parse_one(out, key, value, params, me)
        except WireFormatError as exc:
            if _protocol_2_frame(value):
                # Dropping them is not safe: a member's votes since its stable checkpoint are
                # what its VIEW-CHANGE carries, so a network restarted without them could
                # re-order heights some members hold (an outside review found the fork).
                raise RecoveryError(
                    f"consensus record {key!r} was written by protocol version 2: a pbft "
                    "network cannot be upgraded in place to protocol 3 yet (docs/operations.md, "
                    "'Upgrading to protocol 3'); run the previous release"
                ) from None
            raise RecoveryError(
                f"consensus record {key!r} does not decode ({exc}); the data directory was "
                "changed outside the node: restore it from a backup"
            ) from None
    return out


def _parse_one(out: Restored, key: bytes, value: bytes, params: Params, me: int) -> None:
    if key == STABLE_KEY:
        out.stable = CheckpointCertificate.from_array(unpack_canonical(value))
        return
    if key == VIEW_KEY:
        a = as_list(unpack_canonical(value), what="view record")
        if len(a) not in (2, 3, 4):  # [view, active] before timeouts were persisted
            raise WireFormatError("view record: expected [epoch, view, active, timeouts]")
        if len(a) == 4:  # from epoch 1 on; 2 or 3 fields read as epoch 0
            out.epoch, a = as_int(a[0], "epoch"), a[1:]
        out.view, out.active = as_int(a[0], "view"), bool(as_int(a[1], "active"))
        out.timeouts = as_int(a[2], "timeouts") if len(a) == 3 else 0
        return
    if key == VIEW_CHANGE_KEY:
        vc = decode(value, params)
        if not isinstance(vc, ViewChange) or vc.sender != me:
            raise WireFormatError("not our VIEW-CHANGE")
        out.view_change = value
        return
    if key == NEW_VIEW_KEY:
        if not isinstance(decode(value, params), NewView):
            raise WireFormatError("not a NEW-VIEW")
        out.new_view = value
        return
    if key.startswith(_PROOF_PREFIX):
        seq_text = key[len(_PROOF_PREFIX) :]
        a = as_list(unpack_canonical(value), 2, "prepared proof")
        pp = decode(as_bytes(a[0], "pre-prepare frame"), params)
        if not isinstance(pp, PrePrepare) or not seq_text.isdigit() or pp.seq != int(seq_text):
            raise WireFormatError("prepared proof holds another message")
        prepares = []
        for frame in as_list(a[1], what="prepares"):
            prepare = decode(as_bytes(frame, "prepare frame"), params)
            if not isinstance(prepare, Prepare) or prepare.seq != pp.seq:
                raise WireFormatError("prepared proof holds another message")
            prepares.append(prepare)
        out.proofs[pp.seq] = (pp, prepares, key)
        return
    if key.startswith(_CHECKPOINT_PREFIX):
        vote = decode(value, params)
        if not isinstance(vote, Checkpoint) or vote.sender != me:
            raise WireFormatError("not one of our CHECKPOINTs")
        out.checkpoints.append((vote, value))
        return
    if not key.startswith(_LOG_PREFIX):
        out.unknown_keys.append(key)
        return
    seq_text, _, kind = key[len(_LOG_PREFIX) :].partition(b"/")
    if not seq_text.isdigit() or kind.decode("ascii", "replace") not in SLOT_KINDS:
        out.unknown_keys.append(key)
        return
    seq = int(seq_text)
    slot = out.slots.setdefault(seq, RestoredSlot(seq))
    slot.keys.append(key)
    msg = decode(value, params)
    if getattr(msg, "seq", None) != seq:
        raise WireFormatError("record for another sequence number")
    if kind == b"preprepare" and isinstance(msg, PrePrepare):
        slot.preprepare, slot.preprepare_frame = msg, value
    elif kind == b"prepare" and isinstance(msg, Prepare) and msg.sender == me:
        slot.prepare, slot.prepare_frame = msg, value
    elif kind == b"commit" and isinstance(msg, Commit) and msg.sender == me:
        slot.commit, slot.commit_frame = msg, value
    else:
        raise WireFormatError(f"record {kind!r} holds another kind of message")
