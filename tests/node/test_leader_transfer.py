"""Leadership transfer requests at the client port (raft maintenance): signed by a member's key
only, for the leader's current term, carried out at most once per term, and never judged by the
leader's wall clock (service.ClientService._maintenance_refusal, raft_mode.RaftMode.transfer). The
core's own rules (a live target, none while one is under way, one per election timeout) are in
tests/raft/test_leadership_transfer.py; the end-to-end refusals in tests/e2e/test_raft.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

import pytest
import trio
import trio.testing

from consortium.cli.network import init_network
from consortium.crashft.node import LEADER
from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import Domain, Ed25519Signer, Ed25519Verifier
from consortium.ledger.genesis import Params
from consortium.node.config import load_identity
from consortium.node.events import PeerMessage
from consortium.node.raft_mode import RaftMode
from consortium.node.runtime import Node, make_node
from consortium.node.service import ClientService
from consortium.protocol.limits import TRANSFER_NONCE_BYTES
from consortium.protocol.messages import TransferRequest, transfer_body
from tests.ledger.chain_fixture import CLIENT, MEMBERS, make_genesis

GENESIS = make_genesis(mode="raft")
NONCE = bytes(TRANSFER_NONCE_BYTES)


class _Node:
    """What _maintenance_refusal reads of a member: n1 of GENESIS, c1 admitted."""

    me = 0
    genesis = GENESIS
    chain_id = GENESIS.chain_id
    verifier = Ed25519Verifier()

    def add_block_listener(self, listener: object) -> None:
        pass

    def first_receipt_bundle(self, tx_id: bytes) -> None:
        return None

    class app:  # the node's application state, as the service sees it
        admitted: ClassVar[dict[bytes, str]] = {CLIENT.public: "c1"}


def request(signer: KeyPair, target: int = 1, term: int = 3) -> TransferRequest:
    body = transfer_body(target, term, signer.public, 0, NONCE)
    sig = Ed25519Signer(signer).sign(Domain.MAINTENANCE, GENESIS.chain_id, body)
    return TransferRequest(1, target, body, sig)


def test_a_transfer_signed_by_an_admitted_clients_key_is_refused() -> None:
    """A leader transferring proposes nothing: any admitted client could stall the network
    with transfer requests. Only a member's key may ask."""
    svc = ClientService(_Node())  # type: ignore[arg-type]
    why = svc._maintenance_refusal(request(CLIENT))
    assert isinstance(why, str) and "not a member's" in why
    assert svc._maintenance_refusal(request(MEMBERS[2])) == 3  # the term it is signed for


def test_a_leader_whose_wall_clock_is_wrong_still_accepts_a_member_signed_transfer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A leader whose clock was 600 s off refused `leader transfer` (a freshness check against
    its wall clock): the one leader an operator most needs to move. Freshness is the term."""
    svc = ClientService(_Node())  # type: ignore[arg-type]
    real = time.time
    for skew_s in (600.0, -600.0):
        monkeypatch.setattr(time, "time", lambda s=skew_s: real() + s)
        assert svc._maintenance_refusal(request(MEMBERS[1])) == 3


class _Core:
    role = LEADER
    leader = 0
    term = 5

    def __init__(self) -> None:
        self.targets: list[int] = []
        self.refusal: str | None = None  # what transfer_leadership answers

    def transfer_leadership(self, target: int) -> str | None:
        self.targets.append(target)
        return self.refusal


@pytest.fixture
def raft_node(tmp_path: Path) -> Node:
    """Member n1 of a raft network."""
    init_network(tmp_path / "net", members=3, clients=1, mode="raft", params=Params())
    identity = load_identity(tmp_path / "net" / "nodes" / "n1")
    return make_node(identity.config, identity.genesis, identity.keys)


@pytest.fixture
def raft_member(raft_node: Node) -> RaftMode:
    """Member n1's raft part (raft_mode.RaftMode), composed into a real member."""
    assert isinstance(raft_node.mode, RaftMode)
    return raft_node.mode


def test_a_transfer_request_is_good_in_the_term_it_names_and_once(raft_member: RaftMode) -> None:
    core = _Core()
    raft_member.core = core  # type: ignore[assignment]
    body = transfer_body(2, 5, MEMBERS[0].public, 0, NONCE)
    assert "signed for term 4" in (raft_member._transfer(2, 4, body) or "")
    assert raft_member._transfer(2, 5, body) is None
    assert raft_member._transfer(2, 5, body) == "a replay of a request already carried out"
    core.term = 6  # the transfer carried out moved the term on
    assert "signed for term 5" in (raft_member._transfer(2, 5, body) or "")
    again = transfer_body(2, 6, MEMBERS[0].public, 0, NONCE)
    assert raft_member._transfer(2, 6, again) is None
    assert core.targets == [2, 2]
    core.role = "follower"
    assert "not the leader" in (raft_member._transfer(2, 6, body) or "")


def test_a_refused_request_replayed_when_it_would_be_taken_is_refused_as_a_replay(
    raft_member: RaftMode,
) -> None:
    """Bodies differ by their nonce, so the leader remembers every body of its term, refused
    ones too: a request refused (say, within an election timeout of the last transfer) and
    replayed by whoever saw it once the core would take it must not move leadership."""
    core = _Core()
    raft_member.core = core  # type: ignore[assignment]
    body = transfer_body(2, 5, MEMBERS[0].public, 0, NONCE)
    core.refusal = "at most one transfer per election timeout"
    assert raft_member._transfer(2, 5, body) == core.refusal
    core.refusal = None
    assert raft_member._transfer(2, 5, body) == "a replay of a request already refused"
    fresh = transfer_body(2, 5, MEMBERS[0].public, 0, b"\x01" * TRANSFER_NONCE_BYTES)
    assert raft_member._transfer(2, 5, fresh) is None  # the operator asking again
    assert core.targets == [2, 2]


def test_a_timeout_now_that_waited_out_a_pause_is_judged_at_the_time_it_is_handled(
    raft_node: Node,
) -> None:
    """The target honours a TimeoutNow only if the entry it names arrived at most E/4 before
    (the leader gives the transfer up at E). The loop hands the core events with the time of
    its last tick: a member paused after that entry arrived judged a TimeoutNow that queued
    meanwhile as if no time had passed, and campaigned against a leader that had given up."""
    from consortium.crashft import messages as rm

    async def main() -> str:
        member = raft_node
        core = member.core
        core.tick(*member._now())
        member._handle(PeerMessage(1, rm.Append(1, 0, 0, 0, (rm.Entry(1, 1),))))  # n2 leads
        assert (core.role, core.leader, core.log.last_index) == ("follower", 1, 1)
        await member._carry_out_ready()  # written: the window starts (persisted, then a tick)
        assert core._last_entry_ms == member._now()[0]
        await trio.sleep(core.config.election_ms / 2 / 1000)  # paused: no tick meanwhile
        member._handle(PeerMessage(1, rm.TimeoutNow(1, 1)))
        assert core.rejected["timeout_now_stale"] == 1
        return core.role

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == "follower"


# --- minor: a signed leadership transfer replays at another member ---------------------------


# (Review 2 of issue 6: a failing test that showed what the review found.)
def test_a_transfer_carried_out_at_one_member_is_refused_as_a_replay_at_another() -> None:
    """service._maintenance_refusal: the signed body is (target, issued_ms, key); it does not
    name the leader it is addressed to, and each member remembers only the bodies it carried
    out itself. An operator moves leadership n1 -> n2 (R1 to n1), then n2 -> n3 (R2 to n2);
    anyone who saw R1 on the plain client port replays it to n3 within 60 s and leadership
    goes back to n2."""

    class _Node:
        def __init__(self, me: int) -> None:
            self.me = me
            self.genesis = GENESIS
            self.chain_id = GENESIS.chain_id
            self.verifier = Ed25519Verifier()

            class _App:
                admitted: ClassVar[dict[bytes, str]] = {CLIENT.public: "c1"}

            self.app = _App()

        def add_block_listener(self, listener: object) -> None:
            pass

        def first_receipt_bundle(self, tx_id: bytes) -> None:
            return None

    assert isinstance(CLIENT, KeyPair)
    n1, n3 = ClientService(_Node(0)), ClientService(_Node(2))  # type: ignore[arg-type]
    # (Since issue 13 signed by a member's key, for the leader's term.)
    body = transfer_body(1, 7, MEMBERS[3].public, 0, NONCE)
    sig = Ed25519Signer(MEMBERS[3]).sign(Domain.MAINTENANCE, GENESIS.chain_id, body)
    r1 = TransferRequest(5, 1, body, sig)
    assert n1._maintenance_refusal(r1) == 7  # carried out at n1 (the leader then)
    assert isinstance(n3._maintenance_refusal(r1), str), "the same signed request moves n3 too"


def test_an_operator_who_asks_again_after_an_abandoned_transfer_is_not_refused_as_a_replay(
    raft_member: RaftMode,
) -> None:
    """`leader transfer` to a member that did not take over in time (a transfer is abandoned
    after an election timeout: the target lagged, or was recovering) leaves the term as it was.
    The operator runs the same command again: the client signs the same body (target, term,
    key, leader: nothing fresh in it), and the leader refused it for the rest of the term as
    "a replay of a request already carried out", though it is a new request, from the
    operator, that the core's own rules (one per election timeout) would take."""
    from consortium.client.client import ConsortiumClient

    core = _Core()
    raft_member.core = core  # type: ignore[assignment]
    sent: list[tuple[int, bytes, bytes]] = []

    async def operator_runs_the_command() -> None:
        client = ConsortiumClient(GENESIS, MEMBERS[0])

        async def capture(member: int, method: str, *args: object, timeout_s: float) -> None:
            assert (member, method) == (0, "transfer")
            target, body, signature = args
            sent.append((target, body, signature))  # type: ignore[arg-type]

        client._request = capture  # type: ignore[method-assign]
        await client.transfer_leadership(0, 2, core.term)

    trio.run(operator_runs_the_command)
    (target, body, _) = sent[0]
    assert raft_member._transfer(target, core.term, body) is None
    # ... the transfer is abandoned after an election timeout; the term did not move ...
    trio.run(operator_runs_the_command)
    (target, body, _) = sent[1]
    assert raft_member._transfer(target, core.term, body) is None
    assert core.targets == [2, 2]
