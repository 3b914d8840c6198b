"""`consortium status` and GET /readyz explain, in words, why a PBFT member is not making
progress: the words are computed from the replica's real state (driven here through the
harness) by node/explain.py, with member names."""

from __future__ import annotations

from dataclasses import replace

from pbft_harness import PARAMS, RETRANSMIT_MS, WALL, Group, drive

from consortium.ledger.genesis import Params
from consortium.node.explain import PeerLink, blockers, fault_budget, peer_rows, peer_warnings

NAMES = ["n1", "n2", "n3", "n4"]


def links(me: int, down: set[int] = frozenset()) -> list[PeerLink]:  # type: ignore[assignment]
    return [
        PeerLink(i, NAMES[i], outbound=i not in down, inbound=i not in down)
        for i in range(4)
        if i != me
    ]


def reasons(group: Group, me: int, down: set[int] = frozenset()) -> list[str]:  # type: ignore[assignment]
    return blockers(
        "pbft",
        group.replicas[me].status(),
        names=NAMES,
        me=me,
        quorum=group.genesis.quorum,
        links=links(me, down),
        behind_blocks_max=PARAMS.window,
    )


def test_a_healthy_idle_member_has_no_reason_and_is_ready() -> None:
    group = Group()
    assert reasons(group, 1) == []


def test_a_view_change_in_progress_counts_the_view_change_messages_it_holds() -> None:
    group = Group()
    backup = group.replicas[1]
    group.take(1)
    backup.propose(group.txs[0])  # a request the primary never orders: the backup suspects it
    for _ in range(10):
        group.tick_all(PARAMS.request_timeout_ms // 2)
    assert not backup.active and backup.view == 1
    assert reasons(group, 1) == ["view change to 1 in progress: 1 of 3 needed VIEW-CHANGE messages"]
    # Two more members join (their VIEW-CHANGEs delivered to n2): a quorum; n2 is the new
    # primary, sends NEW-VIEW and is active in view 1: nothing left to explain.
    for i in (2, 3):
        group.replicas[i].propose(group.txs[0])
    for _ in range(10):
        group.tick_all(PARAMS.request_timeout_ms // 2)
    for i in (2, 3):
        group.deliver(i, group.take(i).messages, to=[1])
    assert backup.active and backup.view == 1 and backup.primary == 1
    assert reasons(group, 1) == []


def test_a_view_change_waiting_for_an_unreachable_new_primary_names_it() -> None:
    group = Group()
    n3 = group.replicas[2]
    for i in (1, 2, 3):
        group.take(i)
        group.replicas[i].propose(group.txs[0])
    for _ in range(10):
        group.tick_all(PARAMS.request_timeout_ms // 2)
    # n3 gets the VIEW-CHANGEs of n2 and n4 (a quorum with its own); view 1's primary is n2,
    # which then went down before sending NEW-VIEW.
    for i in (1, 3):
        group.deliver(i, group.take(i).messages, to=[2])
    assert n3.view == 1 and not n3.active
    assert reasons(group, 2, down={1}) == [
        "view change to 1: waiting for NEW-VIEW from n2 (unreachable) (3 VIEW-CHANGE messages held)"
    ]


def test_a_member_far_behind_says_by_how_much_and_from_whom_it_catches_up() -> None:
    group = Group()
    r = group.replicas[1]
    group.take(1)
    for s in (0, 2, 3):  # a stable checkpoint at 1,200, far above n2's window
        r.receive(s, group.checkpoint(1200, s))
    group.tick_all(RETRANSMIT_MS)
    source = r.status()["catching_up"]["from"]
    assert reasons(group, 1) == [f"behind by 1,200 blocks, catching up from {NAMES[source]}"]
    rows = peer_rows("pbft", r.status(), links(1), 0, NAMES)
    assert rows["n1"] == {"state": "connected", "executed": 1200, "lag": 0}


# Review 2 of issue 6: the peer lag status and /metrics show (failing test).
def test_peers_that_executed_as_far_as_we_did_show_no_lag() -> None:
    """explain.peer_rows takes a pbft peer's progress from peers_executed, which only
    CHECKPOINT votes move (every checkpoint_interval). Peers level with us show a lag of up
    to K-1 blocks, forever on an idle network: in the walkthrough, `status --member n1`
    printed 'n3 connected lag 27' with every member at height 59, and
    consortium_peer_lag_blocks says the same, so a lag alert fires on a healthy network."""
    params = Params(
        batch_txs_max=1,
        batch_delay_ms=10,
        checkpoint_interval=8,
        window=16,
        timestamp_skew_ms=1_000,
        request_timeout_ms=400,
    )
    group = Group(params=params)
    for tx in group.txs[:5]:
        group.replicas[0].propose(tx)
        group.tick_all(20)
        group.pump()
    assert all(r.last_executed == 5 for r in group.replicas)
    links = [PeerLink(i, NAMES[i], True, True) for i in (1, 2, 3)]
    rows = peer_rows("pbft", group.replicas[0].status(), links, 5, NAMES)
    assert [rows[n]["lag"] for n in NAMES[1:]] == [0, 0, 0], rows


def test_no_quorum_names_the_unreachable_members() -> None:
    group = Group()
    assert reasons(group, 0, down={2, 3}) == ["no quorum: n3 and n4 unreachable"]
    assert reasons(group, 0, down={1, 2, 3}) == ["no quorum: n2, n3 and n4 unreachable"]
    assert reasons(group, 0, down={3}) == []  # one down of n=4: still a quorum


def test_two_processes_claiming_a_peer_are_a_warning_not_a_reason_to_be_unready() -> None:
    """A stray copy of n3's home is the operators' to stop; it does not stop this member, so
    it must not take n1 out of a load balancer (ready stays true)."""
    claim = "two processes claim n3 (from 10.0.0.3:1 and 10.0.0.9:2)"
    links = [PeerLink(i, f"n{i + 1}", True, True, duplicate=claim * (i == 2)) for i in (1, 2, 3)]
    names = ["n1", "n2", "n3", "n4"]
    assert (
        blockers("pbft", {}, names=names, me=0, quorum=3, links=links, behind_blocks_max=64) == []
    )
    assert peer_warnings(links) == [
        f"{claim}: the newer connection is refused while the older answers; stop one of them "
        "(two copies of n3's home)"
    ]


def test_connection_states_are_named_per_direction() -> None:
    assert PeerLink(1, "n2", outbound=True, inbound=True).state == "connected"
    assert PeerLink(1, "n2", outbound=True, inbound=False).state == "outbound only"
    assert PeerLink(1, "n2", outbound=False, inbound=True).state == "inbound only"
    assert PeerLink(1, "n2", outbound=False, inbound=False).state == "unreachable"


# (Review 2 of issue 6, major: ready while no peer can reach this member; a failing test that
# showed what the review found.)
def test_a_member_no_peer_can_reach_is_not_ready() -> None:
    """explain.blockers counts a peer as up when WE reach it (outbound). Peers deliver to us
    on THEIR outbound connection (transport: two one-way connections); when none of them can
    reach us (our listen address not the one genesis lists, a firewall on our peer port) we
    hear nothing, yet an idle member says ready (GET /readyz 200) with '4 of 4 up, tolerates
    1 more', and 'behind' never shows since peers' progress comes from their messages."""
    links = [PeerLink(i, f"n{i + 1}", outbound=True, inbound=False) for i in (1, 2, 3)]
    reasons = blockers(
        "pbft",
        {"last_executed": 0, "peers_executed": [0, 0, 0, 0]},
        names=["n1", "n2", "n3", "n4"],
        me=0,
        quorum=3,
        links=links,
        behind_blocks_max=64,
    )
    assert reasons, "no peer can deliver to this member, yet it is ready"


def test_a_member_stalled_with_pending_transactions_says_what_it_waits_for() -> None:
    group = Group()
    backup = group.replicas[1]
    group.take(1)
    backup.propose(group.txs[0])
    got = blockers(
        "pbft",
        backup.status(),
        names=NAMES,
        me=1,
        quorum=3,
        links=links(1),
        behind_blocks_max=PARAMS.window,
        stalled_s=2.5,
    )
    assert got == [
        "no progress for 2.5 s with 1 transactions pending: waiting for pre-prepare from "
        "primary n1 for 1 pending transactions"
    ]


def test_the_fault_budget_counts_what_more_may_fail() -> None:
    assert fault_budget(4, 1, 3, 4) == "n=4 f=1: 4 of 4 up, tolerates 1 more"
    assert fault_budget(4, 1, 3, 3) == "n=4 f=1: 3 of 4 up, tolerates 0 more"
    assert fault_budget(4, 1, 3, 2).startswith("n=4 f=1: 2 of 4 up, no quorum (3 needed)")
    assert fault_budget(7, 2, 5, 6) == "n=7 f=2: 6 of 7 up, tolerates 1 more"


def test_a_member_whose_clock_is_far_off_says_so_instead_of_silently_lagging() -> None:
    group = Group(params=replace(PARAMS, window=16, checkpoint_interval=8))
    backup = group.replicas[1]
    for seq in range(1, 6):
        group.mono_ms += 10
        backup.tick(group.mono_ms, WALL + group.mono_ms + 600_000)
        drive(group, 1, group.preprepare(seq, group.txs[seq : seq + 1]))
    assert backup.last_executed == 5  # the others prepared without it
    assert reasons(group, 1) == [
        "clock: this member's clock is 600.0 s ahead of the batches a quorum committed (more "
        "than 2.0 s): its PREPAREs are withheld; fix its time source"
    ]
    assert reasons(group, 2) == []


def test_a_member_alone_in_a_view_change_says_so_and_that_it_counts_as_faulty() -> None:
    # n4 was paused past the timeout: it suspected the primary and asked for view 1 alone,
    # while the others went on committing in view 0 (their messages reach it, too late).
    group = Group()
    n4 = group.replicas[3]
    group.take(3)
    n4.propose(group.txs[0])
    for _ in range(4):
        group.mono_ms += PARAMS.request_timeout_ms // 2
        n4.tick(group.mono_ms, 0)
    assert (n4.view, n4.active) == (1, False)
    assert reasons(group, 3) == ["view change to 1 in progress: 1 of 3 needed VIEW-CHANGE messages"]
    for i in range(3):
        group.replicas[i].propose(group.txs[1])
    for _ in range(2 * PARAMS.request_timeout_ms // RETRANSMIT_MS):
        group.tick_all(RETRANSMIT_MS)
        group.pump()
    assert all(group.replicas[i].last_executed >= 1 for i in range(3))
    assert all(group.replicas[i].view == 0 for i in range(3))
    progress = n4.status()["view_change"]
    assert progress["alone"] == {"members": [0, 1, 2], "view": 0, "needed_to_move_others": 2}
    waited = progress["waited_ms"] / 1000
    # (and, since this harness serves no blocks, the probe for them is still out)
    alone, behind = reasons(group, 3)
    assert alone == (
        f"view change to 1: this member is alone in it for {waited:.1f} s while n1, n2 and n3 "
        "work in view 0; it counts as one of the f faulty members until their next view change "
        "reaches view 1, and follows their blocks by state transfer meanwhile"
    )
    # (the member asked first is drawn from the core's seed)
    assert behind in [f"behind by 2 blocks, catching up from n{i}" for i in (1, 2, 3)]
    assert n4.status()["waiting_for"].startswith("view change to 1 alone: members 0, 1, 2 work")
