"""Member changes across pbft epochs (design docs/design/membership.md 3.2-3.4), driven through
`PbftEpochs` by a hand-wired group: the test plays the shell (executes committed batches,
feeds `config_pending(E, next)` right after block c) and the network (delivers every frame to
every live member, by member id).

Scenarios: 4 -> 5 (the added member votes from e+1), 5 -> 4 (the removed member goes quiet),
a key rotation at n=4, a replacement (remove n4, add n5), a primary silent while a change is
pending, old-epoch messages above E, next-epoch messages buffered and bounded, the empty-batch
rule bringing an idle network to E, and a restart with a pending change.
"""

from __future__ import annotations

from collections.abc import Iterable

from consortium.crypto.signing import Signer
from consortium.ledger.certificates import CheckpointCertificate, CommitCertificate
from consortium.ledger.genesis import Params
from consortium.ledger.membership import (
    Configuration,
    MemberInfo,
    effective_height,
    genesis_configuration,
)
from consortium.ledger.tx import Transaction
from consortium.pbft.effects import Serve
from consortium.pbft.epochs import PbftEpochs
from consortium.pbft.messages import (
    Checkpoint,
    Commit,
    Prepare,
    PrePrepare,
    TransferredBlock,
    decode,
    encode,
)
from consortium.pbft.replica import PbftConfig, PbftReplica, RecoveredState
from consortium.pbft.transfer import blocks_reply
from consortium.sim.cluster import (
    EPOCH_MS,
    HmacSigner,
    HmacVerifier,
    member_keys,
    sim_genesis,
    workload,
)

PARAMS = Params(
    batch_txs_max=4,
    batch_delay_ms=10,
    checkpoint_interval=2,
    window=4,
    timestamp_skew_ms=1_000,
    request_timeout_ms=400,
)
WALL = EPOCH_MS + 10_000
KEYS = member_keys(8)
SIGNERS = [HmacSigner(k.public, k.seed()) for k in KEYS]
VERIFIER = HmacVerifier({k.public: k.seed() for k in KEYS})
ORDERING = (PrePrepare, Prepare, Commit, Checkpoint)


def block_hash(seq: int) -> bytes:
    from consortium.crypto.hashing import sha256

    return sha256(b"block %d" % seq)


def configuration(chain_id: bytes, epoch: int, ids_keys: dict[int, int]) -> Configuration:
    """Epoch `epoch` with member id -> key index (member_keys)."""
    return Configuration(
        chain_id,
        epoch,
        "pbft",
        tuple(
            MemberInfo(i, f"n{i + 1}", KEYS[k].public, f"127.0.0.1:{7000 + i}", "127.0.0.1:9000")
            for i, k in sorted(ids_keys.items())
        ),
    )


class EpochGroup:
    """Members by id; `key_of[id]` is the key index each signs with in the current epoch."""

    def __init__(self, n: int = 4, params: Params = PARAMS) -> None:
        self.params = params
        self.genesis = sim_genesis(n, params)
        assert all(m.public_key == KEYS[i].public for i, m in enumerate(self.genesis.members))
        self.chain_id = self.genesis.chain_id
        self.config = genesis_configuration(self.genesis)
        self.configs = {0: self.config}
        self.txs = workload(self.chain_id, 64)
        self.used = 0
        self.mono_ms = 1
        self.key_of = {i: i for i in range(n)}
        self.nodes: dict[int, PbftEpochs] = {i: self.make(i, self.config) for i in range(n)}
        self.executed: dict[int, list[int]] = {i: [] for i in range(n)}
        self.certs: dict[int, CommitCertificate] = {}
        self.batches: dict[int, tuple[int, tuple[Transaction, ...]]] = {}
        self.sent: dict[int, list[bytes]] = {i: [] for i in range(n)}
        self.change: tuple[int, int, Configuration, dict[int, int]] | None = None  # c, E, next
        self.silent: set[int] = set()
        self.silent_from_c: set[int] = set()  # fall silent once block c executed there
        self.cut: set[int] = set()  # cut off the network: nothing to or from them
        self.blocks: dict[int, dict[int, TransferredBlock]] = {i: {} for i in range(n)}
        self.tick(0)

    def make(
        self,
        i: int,
        config: Configuration,
        *,
        start: int = 0,
        recovered: RecoveredState | None = None,
        pending: tuple[int, Configuration] | None = None,
    ) -> PbftEpochs:
        def make_replica(cfg: PbftConfig, signer: Signer, rec: RecoveredState) -> PbftReplica:
            replica = PbftReplica(
                cfg, signer, VERIFIER, tx_ok=lambda tx: True, recovered=rec, pending_txs_max=1000
            )
            replica._probes_left = 0  # no shell serves blocks here
            return replica

        return PbftEpochs(
            config,
            i,
            self.params,
            SIGNERS[self.key_of[i]],
            make=make_replica,
            recovered=recovered or RecoveredState(start, block_hash(start), None, []),
            start=start,
            pending=pending,
        )

    # --- the shell and the network ----------------------------------------------------------

    def plan(self, c: int, ids_keys: dict[int, int]) -> int:
        """A change accepted in block c to configuration epoch+1 with these members."""
        end = effective_height("pbft", c, self.params)
        nxt = configuration(self.chain_id, self.config.epoch + 1, ids_keys)
        self.change = (c, end, nxt, ids_keys)
        return end

    def tick(self, advance_ms: int) -> None:
        self.mono_ms += advance_ms
        for node in self.nodes.values():
            node.tick(self.mono_ms, WALL + self.mono_ms)

    def propose(self, count: int, to: Iterable[int] | None = None) -> None:
        txs = self.txs[self.used : self.used + count]
        self.used += count
        for i in sorted(self.nodes if to is None else to):
            self.nodes[i].propose_all(txs)

    def _execute(self, i: int, seq: int, cert: CommitCertificate) -> None:
        node = self.nodes[i]
        node.executed(seq, block_hash(seq))
        self.executed[i].append(seq)
        self.certs.setdefault(seq, cert)
        self.blocks[i][seq] = TransferredBlock(
            proposed_ms=self.batches[seq][0], txs=self.batches[seq][1], certificate=cert
        )
        if self.change is not None and seq == self.change[0]:
            _c, end, nxt, ids_keys = self.change
            rotated = ids_keys.get(i)
            signer = SIGNERS[rotated] if rotated is not None and rotated != self.key_of[i] else None
            node.config_pending(end, nxt, signer)
            if i in self.silent_from_c:
                self.silent.add(i)

    def pump(self, rounds: int = 60) -> None:
        for _ in range(rounds):
            moved = False
            for i in sorted(self.nodes):
                node = self.nodes[i]
                ready = node.take_ready()
                if not ready:
                    continue
                moved = True
                for batch in ready.committed:
                    self.batches.setdefault(batch.seq, (batch.proposed_ms, batch.txs))
                    self._execute(i, batch.seq, batch.certificate)
                if i in self.silent or i in self.cut:
                    continue
                for out in ready.messages:
                    self.sent[i].append(out.frame)
                    for dst in sorted(self.nodes):
                        if dst != i and dst not in self.cut and out.dest in (None, dst):
                            self.nodes[dst].receive(i, out.frame)
                for serve in ready.serve:
                    self._serve(i, serve)
            self._join()
            if not moved:
                break

    def _serve(self, i: int, serve: Serve) -> None:
        """Answer a FETCH from member i's executed blocks, as the shell does."""
        node, blocks = self.nodes[i], self.blocks[i]
        height = max(blocks, default=0)
        stable = serve.stable or node.stable_certificate
        signer = SIGNERS[self.key_of[i]] if serve.epoch == node.epoch else SIGNERS[i]
        frame = blocks_reply(
            signer,
            self.chain_id,
            i,
            self.params,
            serve.from_seq,
            height,
            stable,
            blocks.get,
            serve.bytes_max,
            epoch=serve.epoch,
            last_seq=serve.last_seq,
        )
        node.served(serve, len(frame))
        if serve.peer in self.nodes and serve.peer not in self.cut:
            self.nodes[serve.peer].receive(i, frame)

    def run(self, ms: int, step_ms: int = 50) -> None:
        for _ in range(ms // step_ms):
            self.tick(step_ms)
            self.pump()

    def _join(self) -> None:
        """An added member starts once someone entered its epoch: it executed up to E (state
        transfer, not modelled here) and holds the E certificate."""
        if self.change is None:
            return
        _c, end, nxt, ids_keys = self.change
        entered = [n for n in self.nodes.values() if n.epoch == nxt.epoch]
        if not entered:
            return
        cert = next((n.stable_certificate for n in entered if n.replica is not None), None)
        for i in ids_keys:
            if i not in self.nodes and cert is not None and cert.seq == end:
                self.key_of[i] = ids_keys[i]
                self.nodes[i] = self.make(
                    i,
                    nxt,
                    start=end,
                    recovered=RecoveredState(end, block_hash(end), cert, []),
                )
                self.nodes[i].tick(self.mono_ms, WALL + self.mono_ms)
                self.executed[i], self.sent[i], self.blocks[i] = [], [], {}
        if all(n.epoch == nxt.epoch for n in self.nodes.values()):
            self.config = nxt
            self.configs[nxt.epoch] = nxt
            self.key_of.update(ids_keys)
            self.change = None

    def ordering_sent(self, i: int, since: int = 0) -> list[object]:
        return [
            m
            for m in (decode(f, self.params) for f in self.sent[i][since:])
            if isinstance(m, ORDERING)
        ]


def _through_change(g: EpochGroup, ids_keys: dict[int, int], *, c: int = 1) -> int:
    end = g.plan(c, ids_keys)
    g.propose(1)
    g.run(3_000)
    return end


def _epoch_1_commits(g: EpochGroup, first: int) -> None:
    g.propose(2)
    g.run(3_000)
    for i, node in g.nodes.items():
        if node.replica is not None and i not in g.cut:
            assert first in g.executed[i] or node.last_executed >= first, (i, g.executed[i])


# --- the scenarios ----------------------------------------------------------------------------


def test_4_to_5_the_added_member_votes_from_the_next_epoch() -> None:
    g = EpochGroup(4)
    cfg0 = g.config
    end = _through_change(g, {0: 0, 1: 1, 2: 2, 3: 3, 4: 4})
    assert end == 6  # ceil((1 + L) / K) * K with L=4, K=2
    for i in range(4):
        node = g.nodes[i]
        assert node.epoch == 1 and node.last_executed == end, (i, node.status())
        assert node.stable_certificate is not None and node.stable_certificate.seq == end
        # The E certificate is epoch 0's: Q of the old voters, and only against that epoch.
        assert node.stable_certificate.verify(cfg0, VERIFIER) is None
        assert node.stable_certificate.verify(g.configs[1], VERIFIER) is not None
    assert 4 in g.nodes and g.nodes[4].epoch == 1
    for seq in range(1, end + 1):
        assert g.certs[seq].verify(cfg0, VERIFIER) is None
    _epoch_1_commits(g, end + 1)
    cert = g.certs[end + 1]
    assert cert.verify(g.configs[1], VERIFIER) is None
    assert cert.verify(cfg0, VERIFIER) is not None  # names epoch 1
    assert g.nodes[4].last_executed >= end + 1
    own = [m for m in g.ordering_sent(4) if isinstance(m, Commit)]
    assert own and all(m.epoch == 1 for m in own), "the added member votes in epoch 1"


def test_5_to_4_the_removed_member_stops_ordering() -> None:
    g = EpochGroup(5)
    end = _through_change(g, {0: 0, 1: 1, 2: 2, 3: 3})
    removed = g.nodes[4]
    assert removed.removed_at == end and removed.replica is None
    mark = len(g.sent[4])
    for i in range(4):
        assert g.nodes[i].epoch == 1 and g.nodes[i].last_executed == end
    _epoch_1_commits(g, end + 1)
    assert g.certs[end + 1].verify(g.configs[1], VERIFIER) is None
    assert g.ordering_sent(4, mark) == [], "a removed member sends no ordering message"
    # Its epoch-0 messages are stale to the others.
    late = Prepare.create(SIGNERS[4], g.chain_id, 0, end, bytes(32), 4, epoch=0)
    before = g.nodes[0].rejected["stale_epoch"]
    g.nodes[0].receive(4, encode(late))
    assert g.nodes[0].rejected["stale_epoch"] == before + 1


def test_a_rotated_key_counts_for_its_epoch_and_not_after() -> None:
    g = EpochGroup(4)
    cfg0 = g.config
    end = _through_change(g, {0: 0, 1: 1, 2: 2, 3: 5})  # member 3: key 3 -> key 5
    assert all(n.epoch == 1 and n.last_executed == end for n in g.nodes.values())
    # Its epoch-0 boundary checkpoint, signed with the old key, counts for epoch 0.
    stable = g.nodes[0].stable_certificate
    assert stable is not None and stable.verify(cfg0, VERIFIER) is None
    _epoch_1_commits(g, end + 1)
    assert g.certs[end + 1].verify(g.configs[1], VERIFIER) is None
    # The old key is refused for epoch 1.
    node = g.nodes[1]
    seq = node.last_executed + 1
    old = Commit.create(SIGNERS[3], g.chain_id, node.view, seq, bytes(32), 3, epoch=1)
    new = Commit.create(SIGNERS[5], g.chain_id, node.view, seq, bytes(32), 3, epoch=1)
    before = node.rejected["bad_signature"]
    node.receive(3, encode(old))
    assert node.rejected["bad_signature"] == before + 1
    node.receive(3, encode(new))
    assert node.rejected["bad_signature"] == before + 1  # the new key verifies


def test_a_replacement_removes_n4_and_adds_n5() -> None:
    g = EpochGroup(4)
    end = _through_change(g, {0: 0, 1: 1, 2: 2, 4: 4})
    assert g.nodes[3].removed_at == end
    assert all(g.nodes[i].epoch == 1 for i in (0, 1, 2, 4))
    _epoch_1_commits(g, end + 1)
    assert g.certs[end + 1].verify(g.configs[1], VERIFIER) is None
    assert g.nodes[4].last_executed >= end + 1


def test_a_primary_silent_while_a_change_is_pending_is_replaced() -> None:
    g = EpochGroup(4)
    end = g.plan(1, {0: 0, 1: 1, 2: 2, 3: 3, 4: 4})
    g.silent_from_c.add(0)  # the primary of view 0 stops short of E
    g.propose(1)
    g.pump()
    for i in (1, 2, 3):
        node = g.nodes[i]
        assert node.end == end and node.last_executed == 1 and node.view == 0
    g.run(6_000)
    for i in (1, 2, 3):
        node = g.nodes[i]
        assert node.epoch == 1 and node.last_executed == end, (i, node.status())
    # Reached E through a view change: view 1's primary (member 1) proposed up to E.
    led = [m for m in g.ordering_sent(1) if isinstance(m, PrePrepare) and m.epoch == 0]
    assert led and all(m.view >= 1 for m in led) and max(m.seq for m in led) == end


def test_the_empty_batch_rule_brings_an_idle_network_to_e_and_no_further() -> None:
    g = EpochGroup(4)
    end = g.plan(1, {0: 0, 1: 1, 2: 2, 3: 3})  # same members: a new epoch all the same
    g.propose(1)
    g.run(2_000)
    assert all(n.epoch == 1 and n.last_executed == end for n in g.nodes.values())
    epoch0 = [m for m in g.ordering_sent(0) if isinstance(m, PrePrepare) and m.epoch == 0]
    assert max(m.seq for m in epoch0) == end, "never proposed above E"
    assert [m.seq for m in epoch0 if m.txs == ()] == list(range(2, end + 1))
    # Idle in epoch 1: no change pending, no empty batches.
    assert not [m for m in g.ordering_sent(0) if isinstance(m, PrePrepare) and m.epoch == 1]


def test_old_epoch_messages_above_e_are_refused() -> None:
    g = EpochGroup(4)
    end = g.plan(1, {0: 0, 1: 1, 2: 2, 3: 3})
    g.propose(1)
    g.pump(rounds=1)  # not yet at E
    node = g.nodes[2]
    for _ in range(5):
        if node.end == end:
            break
        g.pump(rounds=1)
    assert node.end == end and node.last_executed < end
    above = Prepare.create(SIGNERS[1], g.chain_id, 0, end + 1, bytes(32), 1, epoch=0)
    vote = Checkpoint.create(SIGNERS[1], g.chain_id, end + 2, bytes(32), 1, epoch=0)
    before = node.rejected["beyond_epoch"]
    node.receive(1, encode(above))
    node.receive(1, encode(vote))
    assert node.rejected["beyond_epoch"] == before + 2


def test_next_epoch_messages_are_buffered_bounded_and_fed_in() -> None:
    g = EpochGroup(4)
    g.plan(1, {0: 0, 1: 1, 2: 2, 3: 3, 4: 4})
    g.propose(1)
    g.pump(rounds=2)
    node = g.nodes[2]
    assert node.end is not None and node.epoch == 0
    # From a member of the pending configuration: kept; from anyone else: unknown_epoch.
    early = Prepare.create(SIGNERS[4], g.chain_id, 0, 1_000, bytes(32), 4, epoch=1)
    node.receive(4, encode(early))
    assert node.status()["next_epoch_buffered"] == 1
    stranger = Prepare.create(SIGNERS[5], g.chain_id, 0, 1_000, bytes(32), 5, epoch=1)
    before = node.rejected["unknown_epoch"]
    node.receive(5, encode(stranger))
    assert node.rejected["unknown_epoch"] == before + 1
    far = Prepare.create(SIGNERS[1], g.chain_id, 0, 1_000, bytes(32), 1, epoch=2)
    node.receive(1, encode(far))
    assert node.rejected["unknown_epoch"] == before + 2
    # Bounded per sender.
    for seq in range(2_000, 2_100):
        node.receive(
            4, encode(Prepare.create(SIGNERS[4], g.chain_id, 0, seq, bytes(32), 4, epoch=1))
        )
    assert node.rejected["next_epoch_full"] > 0
    assert node.status()["next_epoch_buffered"] <= 3 * PARAMS.window


def test_a_restart_with_a_pending_change_keeps_its_end() -> None:
    g = EpochGroup(4)
    nxt = configuration(g.chain_id, 1, {0: 0, 1: 1, 2: 2, 3: 3})
    node = g.make(1, g.config, pending=(6, nxt))
    assert node.end == 6 and node.replica is not None and node.replica.config.end == 6
    above = Prepare.create(SIGNERS[2], g.chain_id, 0, 7, bytes(32), 2, epoch=0)
    node.receive(2, encode(above))
    assert node.rejected["beyond_epoch"] == 1


def test_the_e_certificate_is_q_of_the_old_voters() -> None:
    g = EpochGroup(4)
    end = _through_change(g, {0: 0, 1: 1, 2: 2, 4: 4})
    cert = g.nodes[0].stable_certificate
    assert isinstance(cert, CheckpointCertificate) and cert.seq == end
    # Three old voters suffice (Q=3 of 4); fewer do not.
    short = CheckpointCertificate(cert.seq, cert.block_hash, cert.votes[:2])
    assert short.verify(genesis_configuration(g.genesis), VERIFIER) is not None


def test_a_view_change_right_after_entering_carries_no_certificate_for_the_start() -> None:
    """In e+1 the stable certificate is E's, made by configuration e: a VIEW-CHANGE at the
    epoch's start carries nil for it (as seq 0 at genesis), so the view change succeeds."""
    g = EpochGroup(4)
    end = _through_change(g, {0: 0, 1: 1, 2: 2, 3: 3, 4: 4})
    assert all(n.epoch == 1 for n in g.nodes.values())
    mark = {i: len(g.sent[i]) for i in g.nodes}
    g.silent.add(0)  # the primary of (epoch 1, view 0)
    g.propose(2)
    g.run(8_000)
    for i in (1, 2, 3, 4):
        node = g.nodes[i]
        assert node.view >= 1 and node.active, (i, node.status())
        assert node.last_executed > end, (i, node.status())
    vcs = [decode(f, g.params) for f in g.sent[1][mark[1] :]]
    own = [m for m in vcs if type(m).__name__ == "ViewChange"]
    assert own and own[0].stable is None and own[0].stable_seq == end


def test_a_replica_never_votes_at_or_below_its_epochs_start() -> None:
    """S_e < seq: even started without the E certificate, the low watermark is the start."""
    from consortium.pbft import records

    g = EpochGroup(4)
    nxt = configuration(g.chain_id, 1, {0: 0, 1: 1, 2: 2, 3: 3})
    stale_view = [(records.VIEW_KEY, records.view_value(3, False, 2))]  # epoch 0's record
    node = g.make(1, nxt, start=6, recovered=RecoveredState(6, block_hash(6), None, stale_view))
    assert node.low_watermark == 6
    assert (node.view, node.active) == (0, True), "views restart at 0 in every epoch"
    at_start = Prepare.create(SIGNERS[2], g.chain_id, 0, 6, bytes(32), 2, epoch=1)
    node.receive(2, encode(at_start))
    assert node.rejected["outside_window"] == 1


def test_a_member_cut_off_across_the_boundary_catches_up_into_the_next_epoch() -> None:
    """Cut off before block c, it learns of the change only from the blocks it fetches: the
    others (in e+1) serve epoch-e blocks up to E with the E certificate, and it enters e+1."""
    g = EpochGroup(4)
    g.cut.add(3)
    end = _through_change(g, {0: 0, 1: 1, 2: 2, 3: 3})
    assert [g.nodes[i].epoch for i in range(4)] == [1, 1, 1, 0]
    _epoch_1_commits(g, end + 1)
    g.propose(4)
    g.run(3_000)
    top = g.nodes[0].last_executed
    assert top >= end + 2
    g.cut.clear()
    g.run(10_000)
    late = g.nodes[3]
    assert late.epoch == 1, late.status()
    assert late.last_executed >= end + 2, late.status()


def test_an_idle_member_cut_off_across_the_boundary_catches_up_too() -> None:
    """As above, with no transaction of its own to wait for: what it hears of the later
    epoch (f+1 members claiming it) is what starts its catch-up."""
    g = EpochGroup(4)
    g.cut.add(3)
    end = g.plan(1, {0: 0, 1: 1, 2: 2, 3: 3})
    g.propose(1, to=(0, 1, 2))
    g.run(3_000)
    g.propose(4, to=(0, 1, 2))
    g.run(3_000)
    assert g.nodes[0].epoch == 1 and g.nodes[0].last_executed >= end + 1
    g.cut.clear()
    g.propose(2, to=(0, 1, 2))
    g.run(10_000)
    late = g.nodes[3]
    assert late.epoch == 1, late.status()
    assert late.last_executed == g.nodes[0].last_executed, late.status()


def test_a_transferred_certificate_above_e_is_never_adopted() -> None:
    """Keys that left after E may sign epoch-e CHECKPOINTs above E (design 3.3): such a
    certificate in a BLOCKS answer would move h past E, and the member would never enter e+1."""
    from consortium.pbft.messages import Blocks

    g = EpochGroup(4)
    nxt = configuration(g.chain_id, 1, {0: 0, 1: 1, 4: 4, 5: 5})
    node = g.make(1, g.config, pending=(6, nxt))
    node.tick(g.mono_ms, WALL + g.mono_ms)
    assert node.replica is not None
    node.replica._fetch_from(2)
    votes = tuple(
        Checkpoint.create(SIGNERS[k], g.chain_id, 8, block_hash(8), k, epoch=0).vote()
        for k in (0, 2, 3)
    )
    cert = CheckpointCertificate(8, block_hash(8), votes)
    assert cert.verify(g.config, VERIFIER) is None  # a valid certificate of epoch 0's keys
    reply = Blocks.create(SIGNERS[2], g.chain_id, 1, 8, cert, (), 2, epoch=0)
    node.receive(2, encode(reply))
    assert node.low_watermark == 0
    assert node.rejected["beyond_epoch"] == 1


def test_the_e_certificate_reaches_the_shell_as_a_stable_checkpoint() -> None:
    """Whether E's certificate forms before or in the step that enters e+1, the shell is
    handed it among the stable checkpoints (it stores it in `checkpoints`)."""
    g = EpochGroup(4)
    seen: dict[int, set[int]] = {i: set() for i in range(4)}
    take = {i: g.nodes[i].take_ready for i in range(4)}

    def spy(i: int):  # type: ignore[no-untyped-def]
        def take_ready():  # type: ignore[no-untyped-def]
            ready = take[i]()
            seen[i].update(c.seq for c in ready.stable_checkpoints)
            return ready

        return take_ready

    for i in range(4):
        g.nodes[i].take_ready = spy(i)  # type: ignore[method-assign]
    end = _through_change(g, {0: 0, 1: 1, 2: 2, 3: 3})
    assert all(g.nodes[i].epoch == 1 for i in range(4))
    assert all(end in seen[i] for i in range(4)), seen


def test_a_fetch_in_the_next_epoch_is_served_from_its_start_only() -> None:
    """An answer never spans two configurations: in e+1 a FETCH from below S_{e+1} is served
    from S_{e+1}+1 (epoch e's blocks come with epoch e's FETCH and E certificate)."""
    from consortium.pbft.messages import Fetch

    g = EpochGroup(4)
    end = _through_change(g, {0: 0, 1: 1, 2: 2, 3: 3})
    _epoch_1_commits(g, end + 1)
    node = g.nodes[0]
    node.take_ready()
    node.receive(1, encode(Fetch.create(SIGNERS[1], g.chain_id, 2, 1, epoch=1)))
    serves = node.take_ready().serve
    assert [(s.from_seq, s.epoch) for s in serves] == [(end + 1, 1)]
    # The same FETCH naming epoch 0 is epoch 0's: blocks up to E with the E certificate.
    g.mono_ms += 1_000
    node.tick(g.mono_ms, WALL + g.mono_ms)
    node.take_ready()
    node.receive(1, encode(Fetch.create(SIGNERS[1], g.chain_id, 2, 1, epoch=0)))
    serves = node.take_ready().serve
    assert [(s.from_seq, s.epoch, s.last_seq) for s in serves] == [(2, 0, end)]
    assert serves[0].stable is not None and serves[0].stable.seq == end


def test_f_plus_1_voters_speaking_in_a_later_epoch_start_a_fetch() -> None:
    """Their later-epoch messages cannot be checked here, but how far they claim to be (a
    VIEW-REPORT's last executed, a BLOCKS's height, a seq) steers state transfer once f+1
    voters of ours claim it; one voter alone does not."""
    from consortium.pbft.messages import Blocks, Fetch, ViewReport

    g = EpochGroup(4)
    g.run(2_000)  # idle: nothing to fetch
    node = g.nodes[3]
    node.take_ready()
    report = ViewReport.create(SIGNERS[1], g.chain_id, bytes(16), 0, 40, 1, epoch=2)
    node.receive(1, encode(report))
    fetches = [m for m in (decode(o.frame, g.params) for o in node.take_ready().messages)]
    assert not [m for m in fetches if isinstance(m, Fetch)], "one claim is not enough"
    blocks = Blocks.create(SIGNERS[2], g.chain_id, 1, 40, None, (), 2, epoch=1)
    node.receive(2, encode(blocks))
    out = [decode(o.frame, g.params) for o in node.take_ready().messages]
    assert [m.from_seq for m in out if isinstance(m, Fetch)] == [1]
    assert node.rejected["unknown_epoch"] == 2
