"""Seeded Raft fault mixes, shared by the simulation tests and `consortium sim --mode raft`.

Every run: clients submit `txs` transactions in random bursts to random nodes and issue
linearizable reads at random nodes, while the mix's faults happen; then the network heals,
everything restarts, and every transaction must commit into identical ledgers. The checkers
(raft_cluster.RaftChecker) run after every step throughout.

    lossy       5% loss, 5% duplication, 1-30 ms delay (reordering)
    crashes     lossy, plus crashes of random members (the leader half the time), half of them
                in the middle of a write so the unsynced part is lost, at most a minority down
                (or armed to crash) at a time, each restarted from disk 0.1-1.5 s after the
                crash itself
    partitions  lossy, plus random partitions (the leader alone, a minority, halves) healed
                after a while
    mixed       all of the above, and a leadership transfer now and then
    total-crash lossy, plus every member losing power at once (most of them in the middle of a
                write) and all restarting together: at n = 1 the only member, whose
                acknowledged entries must survive (not in the default tier of every n)

run_raft_restore: a follower restored from a backup around an election, with or without
recovery (not one of RAFT_MIXES: its own tests run it).

run_raft_flapping: the flapping mixes (FLAPPING: flap-down, flap-mute; their course in
flapping.py, shared with PBFT's), Raft's liveness after the network stabilises with at most
f = (n - 1) // 2 members faulty. f members are faulty for the whole run (flap-down: crashed
from the start, never back; flap-mute: running, hearing everything, heard by no one), and three
to five partitions of the others come and go, each with a new split (no side a majority: at
n = 3 the two live members are split one and one), each held 1.1 to 3 x 2E (2E: the upper end
of the election timeout range [E, 2E); raft has no doubling timeout, so every live member's
timer fires in it, and a leader steps down by CheckQuorum), with short heals of up to E between
them, so some votes and appends get through and most do not; a few transactions are submitted
before and during them, and linearizable reads are issued now and then (as each partition
begins and ends). Then the network heals for good, and every transaction must commit at every
live member, into identical ledgers, within flapping_deadline_ms of simulated time from the end
of the last partition, after which a read at every live member must be released
(final_reads). Clients act as the real client does (RaftSimCluster client_rotates): a crashed
member is never sent a transaction, and each retransmission goes to the next member up.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from consortium.crashft.node import READ_TIMEOUT_MS
from consortium.sim.checkers import LivenessViolation
from consortium.sim.cluster import workload
from consortium.sim.flapping import FLAPPING, Flaps, Submitter, flap, make_faulty, settle
from consortium.sim.network import NetworkFaults
from consortium.sim.raft_cluster import RaftSimBackup, RaftSimCluster

LOSSY = NetworkFaults(delay_ms=(1, 30), drop=0.05, duplicate=0.05)
RAFT_MIXES = ("lossy", "crashes", "partitions", "mixed", "total-crash")
DEADLINE_MS = 120_000


def _crash_some(cluster: RaftSimCluster) -> None:
    rng = cluster.rng
    # A member armed to crash at its next write is as good as down: counting it keeps at most
    # a minority down at a time, and never arms or crashes it a second time.
    up = [x.index for x in cluster.nodes if x.up and not x.crash_mid_write]
    leaders = [x.index for x in cluster.leaders() if x.index in up]
    down = cluster.n - len(up)
    if down >= (cluster.n - 1) // 2 or not up:
        return
    victim = leaders[0] if leaders and rng.random() < 0.5 else rng.choice(up)
    mid_write = rng.random() < 0.5
    # The restart counts from the crash itself: a mid-write crash comes at the victim's next
    # write, which a restart planned by the clock could precede (it was skipped, and the
    # member stayed down until the end of the run).
    back_ms = rng.randint(100, 1500)
    if mid_write:
        cluster.crash_mid_write(victim, restart_after_ms=back_ms)
    else:
        cluster.crash(victim, restart_after_ms=back_ms)


def _crash_all(cluster: RaftSimCluster) -> None:
    rng = cluster.rng
    if not all(x.up and not x.crash_mid_write for x in cluster.nodes):
        return
    back_ms = cluster.now_ms + rng.randint(100, 1500)
    for i in range(cluster.n):
        if rng.random() < 0.75:
            cluster.crash_mid_write(i)  # at its next write
        else:
            cluster.crash(i)
        cluster.at(back_ms, partial(_restart_after_crash, cluster, i))


def _restart_after_crash(cluster: RaftSimCluster, i: int) -> None:
    node = cluster.nodes[i]
    if node.up and node.crash_mid_write:  # it has not written since: wait for its crash
        cluster.at(cluster.now_ms + 100, lambda: _restart_after_crash(cluster, i))
    else:
        _restart(cluster, i)


def _restart(cluster: RaftSimCluster, i: int) -> None:
    if not cluster.nodes[i].up:
        cluster.restart(i)


def _partition_some(cluster: RaftSimCluster) -> None:
    rng = cluster.rng
    members = list(range(cluster.n))
    leaders = [x.index for x in cluster.leaders()]
    choice = rng.random()
    if leaders and choice < 0.4:
        cluster.net.isolate(leaders[0], cluster.n)
    else:
        rng.shuffle(members)
        cut = rng.randint(1, cluster.n - 1)
        cluster.net.partition([members[:cut], members[cut:]])
    cluster.at(cluster.now_ms + rng.randint(200, 2000), cluster.net.heal)


def _transfer_some(cluster: RaftSimCluster) -> None:
    leaders = cluster.leaders()
    if leaders:
        target = cluster.rng.choice([i for i in range(cluster.n) if i != leaders[0].index])
        cluster.transfer(leaders[0].index, target)


def run_raft(
    seed: int,
    n: int = 3,
    mix: str = "lossy",
    *,
    txs: int = 80,
    trace: Callable[[str], None] | None = None,
    **options: object,
) -> RaftSimCluster:
    assert mix in RAFT_MIXES, mix
    cluster = RaftSimCluster(seed, n, faults=LOSSY, **options)  # type: ignore[arg-type]
    cluster.trace = trace
    rng = cluster.rng
    pool = workload(cluster.chain_id, txs)
    i = 0
    while i < txs:
        k = rng.randint(1, 8)
        cluster.submit(pool[i : i + k])
        i += k
        cluster.run_until(cluster.now_ms + rng.randint(0, 150))
        if rng.random() < 0.25:
            cluster.read(rng.randrange(n))
        if mix in ("crashes", "mixed") and rng.random() < 0.15:
            _crash_some(cluster)
        if mix == "total-crash" and rng.random() < 0.15:
            _crash_all(cluster)
        if mix in ("partitions", "mixed") and rng.random() < 0.12:
            _partition_some(cluster)
        if mix == "mixed" and rng.random() < 0.05:
            _transfer_some(cluster)
    cluster.run_until(cluster.now_ms + 2_500)  # pending restarts and heals happen
    cluster.net.heal()
    for node in cluster.nodes:
        cluster.disarm(node.index)  # armed but not yet fired: no crash after the healing
    # Every member that crashed has its restart planned, at most 1.5 s after its crash.
    restarts_by_ms = cluster.now_ms + 1_600
    while not all(node.up for node in cluster.nodes):
        assert cluster.now_ms < restarts_by_ms, "a crashed member has no restart planned"
        cluster.step()
    for _ in range(3):
        cluster.read(rng.randrange(n))
    if not cluster.run_until_committed(cluster.now_ms + DEADLINE_MS):
        explain = "; ".join(f"{x.name}: {x.explain()}" for x in cluster.nodes)
        raise LivenessViolation(f"seed {seed} ({mix}, n={n}): not everything committed ({explain})")
    cluster.run_until(cluster.now_ms + 1_000)
    cluster.check_converged()
    return cluster


def run_raft_restore(
    seed: int,
    n: int = 3,
    *,
    recovery: bool = True,
    txs: int = 60,
    trace: Callable[[str], None] | None = None,
) -> RaftSimCluster:
    """Restore from a backup around an election: a quarter into the workload a follower is
    backed up; half way the leader crashes; once the follower has voted in the election that
    follows, it stops, and 0-100 ms later starts from its backup (marked as a restored backup;
    recovery=False: today's start without the mark) while the old leader restarts and the new
    one is cut off for 1-2.5 s. Restored without recovery, it can vote again in the term it
    voted in (the equivocation checker reports it) or elect a leader lacking an entry it had
    acknowledged. Then everything must commit into identical ledgers."""
    cluster = RaftSimCluster(seed, n, faults=LOSSY)
    cluster.trace = trace
    rng = cluster.rng
    pool = workload(cluster.chain_id, txs)
    copy: RaftSimBackup | None = None
    old_leader, old_term, restoring = -1, 0, False

    def restore(backup: RaftSimBackup, cut: list[int]) -> None:
        cluster.restore(backup.index, backup, recovery=recovery)
        if not cluster.nodes[old_leader].up:
            cluster.restart(old_leader)
        for x in cut:
            cluster.net.isolate(x, n)
        cluster.at(cluster.now_ms + rng.randint(1_000, 2_500), cluster.net.heal)

    i = 0
    while i < txs or not restoring:
        if i < txs:
            k = rng.randint(1, 8)
            cluster.submit(pool[i : i + k])
            i += k
        cluster.run_until(cluster.now_ms + rng.randint(0, 150))
        leaders = [x.index for x in cluster.leaders()]
        if copy is None and i >= txs // 4 and leaders:
            copy = cluster.backup(rng.choice([x for x in range(n) if x != leaders[0]]))
        elif copy is not None and old_leader < 0 and i >= txs // 2 and leaders:
            if leaders[0] != copy.index:
                old_leader, old_term = leaders[0], cluster.nodes[leaders[0]].raft.term
                cluster.crash(old_leader)
        elif old_leader >= 0 and not restoring and copy is not None:
            voter = cluster.nodes[copy.index].raft
            if voter.term > old_term and voter.voted_for is not None:
                restoring = True
                cluster.crash(copy.index)
                cut = [x for x in leaders if x != copy.index]
                cluster.at(cluster.now_ms + rng.randint(0, 100), partial(restore, copy, cut))
        if cluster.now_ms > DEADLINE_MS:
            raise LivenessViolation(f"seed {seed}: the restore never happened")
    cluster.run_until(cluster.now_ms + 3_000)
    cluster.net.heal()
    for node in cluster.nodes:
        if not node.up:
            cluster.restart(node.index)
    if not cluster.run_until_committed(cluster.now_ms + DEADLINE_MS):
        explain = "; ".join(f"{x.name}: {x.explain()}" for x in cluster.nodes)
        raise LivenessViolation(
            f"seed {seed} (restore, n={n}): not everything committed ({explain})"
        )
    if recovery and copy is not None:
        _transfer_until_recovered(cluster, copy.index, f"seed {seed} (restore, n={n}): ")
    cluster.run_until(cluster.now_ms + 1_000)
    cluster.check_converged()
    return cluster


TRANSFER_TRIES = 5


def _transfer_until_recovered(cluster: RaftSimCluster, restored: int, what: str) -> None:
    """A restored member still recovering once everything committed waits for an election
    in a term at or above its floor; the operator's remedy (docs/raft.md) is a leadership
    transfer to a member that is not recovering, which is such an election. Asked every 2E
    (a TimeoutNow the lossy network lost, or the leader refused), the member must recover
    within TRANSFER_TRIES x 2E."""
    election_max_ms = 2 * cluster.nodes[0].raft.config.election_ms
    deadline_ms = cluster.now_ms + TRANSFER_TRIES * election_max_ms
    next_try_ms = cluster.now_ms
    refused: str | None = None  # why the leader refused the last transfer asked, if it did
    while cluster.nodes[restored].raft.recovering:
        if cluster.now_ms >= deadline_ms:
            raise LivenessViolation(
                f"{what}n{restored + 1} still recovering after {TRANSFER_TRIES} leadership "
                f"transfers ({cluster.nodes[restored].explain()}; last transfer: "
                f"{refused or 'accepted'})"
            )
        leaders = cluster.leaders()
        if cluster.now_ms >= next_try_ms and leaders:
            leader = leaders[0].index
            targets = [
                x.index
                for x in cluster.nodes
                if x.index != leader and x.up and not x.raft.recovering
            ]
            refused = cluster.transfer(leader, cluster.rng.choice(targets))
            next_try_ms = cluster.now_ms + election_max_ms
        cluster.step()


def flapping_deadline_ms(cluster: RaftSimCluster, mix: str) -> int:
    """How long after the last partition ended everything must have committed (simulated
    time): 4 x 2E, 2E the upper end of the election timeout range [E, 2E), which Raft never
    doubles (an election that loses its votes waits for the next one), and in flap-mute one
    client retransmission interval more per mute member (a mute member takes a transaction and
    answers nothing: the client sends it to the next member after client_retry_ms, 1 s as the
    real client's retransmit_s, and that may be the other mute one). In flap-down the client
    never sends to a crashed member. With the simulator's E = 300 ms: flap-down 2.4 s;
    flap-mute 3.4 s at n = 3 and 4.4 s at n = 5. docs/raft.md has the measured figures."""
    deadline = 4 * 2 * cluster.nodes[0].raft.config.election_ms
    if mix == "flap-mute":
        deadline += (cluster.n - 1) // 2 * cluster.client_retry_ms
    return deadline


READ_ATTEMPTS = 4


def final_reads(cluster: RaftSimCluster, members: list[int], what: str) -> int:
    """A linearizable read at every member in `members`, each released (and so checked) within
    2E plus READ_ATTEMPTS read timeouts: a read the runtime gives up on (READ_TIMEOUT_MS: a
    forwarded read or its answer lost) or that fails (no leader yet) is asked again at once,
    as a client would. LivenessViolation otherwise. The reads it issued."""
    began_ms = cluster.now_ms
    election_max_ms = 2 * cluster.nodes[0].raft.config.election_ms
    deadline_ms = began_ms + election_max_ms + READ_ATTEMPTS * READ_TIMEOUT_MS
    asked = {i: (cluster.read(i), cluster.now_ms) for i in members}
    issued = len(asked)
    while asked:
        for i, (read_id, at_ms) in list(asked.items()):
            outcome = cluster.read_outcomes.get((i, read_id))
            if outcome == "":
                del asked[i]
            elif outcome is not None or cluster.now_ms - at_ms >= READ_TIMEOUT_MS:
                cluster.abandon_read(i, read_id)
                asked[i] = (cluster.read(i), cluster.now_ms)
                issued += 1
        if not asked:
            break
        if cluster.now_ms >= deadline_ms:
            raise LivenessViolation(
                f"{what}the reads at "
                + ", ".join(f"n{i + 1}" for i in sorted(asked))
                + f" not answered {(cluster.now_ms - began_ms) / 1000:.1f} s after they began"
            )
        cluster.step()
    return issued


def run_raft_flapping(
    seed: int,
    n: int = 3,
    mix: str = "flap-down",
    *,
    txs: int = 8,
    trace: Callable[[str], None] | None = None,
    **options: object,
) -> tuple[RaftSimCluster, Flaps]:
    """A flapping mix (the module says what it does); the cluster after it, and what it did.
    LivenessViolation if not everything committed within flapping_deadline_ms of the heal, or
    if a read at a live member then is not released in time (final_reads)."""
    assert mix in FLAPPING, mix
    assert n >= 2, "partitions need two members that are not faulty"
    options.setdefault("client_rotates", True)
    cluster = RaftSimCluster(seed, n, faults=LOSSY, **options)  # type: ignore[arg-type]
    cluster.trace = trace
    rng = cluster.rng
    flaps = Flaps()
    flaps.faulty = make_faulty(cluster, mix, (n - 1) // 2)
    live = [node for node in cluster.nodes if node.index not in flaps.faulty]
    members = [node.index for node in live]
    election_max_ms = 2 * live[0].raft.config.election_ms

    def terms() -> list[tuple[int, bool]]:
        return [(node.raft.term, node.raft.leader is not None) for node in live]

    def read_now_and_then() -> None:
        if rng.random() < 0.5:
            cluster.read(rng.choice(members))

    flap(
        cluster,
        members,
        flaps,
        Submitter(cluster, txs),
        timeout_ms=lambda: election_max_ms,
        hold_max=3,
        lead_in_ms=2 * election_max_ms,
        state=terms,
        now_and_then=read_now_and_then,
    )
    for _ in range(2):
        cluster.read(rng.choice(members))
    what = f"seed {seed} ({mix}, n={n}): "
    settle(cluster, live, flaps, flapping_deadline_ms(cluster, mix), what=what)
    final_reads(cluster, members, what)
    return cluster, flaps
