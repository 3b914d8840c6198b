"""What the member's tasks hand its core task (runtime.Node._core_loop): one bounded channel of
typed events, handled in order by the one task that touches the core."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from consortium.ledger.tx import Transaction


@dataclass(frozen=True, slots=True)
class PeerMessage:
    """A decoded message from authenticated member `sender`."""

    sender: int
    msg: Any  # pbft.messages.Message or crashft.messages.Message, by mode


@dataclass(frozen=True, slots=True)
class Propose:
    """Client transactions whose signatures were verified at the client port."""

    txs: list[Transaction]


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """Raft ReadIndex: confirm leadership for read `read_id` (raft_mode.RaftMode.read_value)."""

    read_id: int


@dataclass(frozen=True, slots=True)
class ReadAbandoned:
    """The reader gave up on read `read_id` (raft)."""

    read_id: int


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """A member-signed leadership transfer (raft), answered through `answer` and `answered`."""

    target: int
    term: int
    body: bytes
    answer: list[str | None] = field(default_factory=list)
    answered: trio.Event = field(default_factory=trio.Event)


Event = PeerMessage | Propose | ReadRequest | ReadAbandoned | TransferRequest
