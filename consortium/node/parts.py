"""What a mode (pbft_mode.PbftMode, raft_mode.RaftMode) gets of the member it runs in: its
identity, its store and signers, and the few shell operations it calls. The shell
(runtime.Node) builds it and composes the mode in; the mode never imports the shell."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from consortium.ledger.genesis import Genesis, Member
from consortium.ledger.state import KeyValueState
from consortium.ledger.store import BlockStore
from consortium.node.events import Event
from consortium.node.logs import RateLimitedLog
from consortium.node.verification import CountingSigner, CountingVerifier, TxSignatureCache


@dataclass(frozen=True, slots=True)
class MemberParts:
    genesis: Genesis
    member: Member
    signer: CountingSigner
    verifier: CountingVerifier  # protocol messages, on the core's thread
    tx_cache: TxSignatureCache  # client signatures
    store: BlockStore
    app: KeyValueState  # the state executed so far (written or not)
    log: logging.Logger
    ratelog: RateLimitedLog
    recovering_from: str | None  # a restored backup or lost state (node/preflight.py)
    events: trio.MemorySendChannel[Event]  # to the core task
    send_peer: Callable[[int | None, bytes], None]  # counted, to one member or all (None)
    now: Callable[[], tuple[int, int]]  # (monotonic ms, wall ms)
    signed_read: Callable[[bytes, bytes | None], list[Any]]  # a read signed at our head
    count_rejected_submit: Callable[[str, int], None]  # metrics: refused at submit, by reason

    @property
    def me(self) -> int:
        return self.member.index

    @property
    def chain_id(self) -> bytes:
        return self.genesis.chain_id
