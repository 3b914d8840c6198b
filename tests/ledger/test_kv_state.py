"""The default application: put/del/cas/get, deterministic rejections, replay protection."""

from __future__ import annotations

from consortium.crypto.keys import KeyPair
from consortium.ledger.block import genesis_state_root
from consortium.ledger.genesis import Params
from consortium.ledger.state import KeyValueState
from consortium.ledger.tx import CompareAndSet, Delete, Get, Put, Transaction
from tests.ledger.chain_fixture import CREATED_MS, ChainBuilder, make_genesis


def reasons(block: object) -> list[str]:
    return [r.reason for r in block.receipts]  # type: ignore[attr-defined]


def test_put_get_delete_and_their_results() -> None:
    chain = ChainBuilder()
    chain.add([chain.tx(Put(b"a", b"1"), Put(b"b", b"2"))])
    block = chain.add([chain.tx(Get(b"a"), Delete(b"b"), Get(b"b"), Delete(b"b"), Get(b"zz"))])
    (receipt,) = block.receipts
    assert receipt.status == "ok" and receipt.reason == ""
    assert receipt.results == (b"1", True, None, False, None)
    assert chain.app.kv == {b"a": b"1"}
    assert chain.app.get(b"b") is None


def test_reads_see_earlier_writes_of_the_same_transaction_and_block() -> None:
    chain = ChainBuilder()
    block = chain.add(
        [
            chain.tx(Put(b"a", b"1"), Get(b"a")),
            chain.tx(Get(b"a"), Put(b"a", b"2")),
            chain.tx(Get(b"a")),
        ]
    )
    assert [r.results for r in block.receipts] == [(None, b"1"), (b"1", None), (b"2",)]


def test_compare_and_set_creates_replaces_and_deletes() -> None:
    chain = ChainBuilder()
    block = chain.add(
        [
            chain.tx(CompareAndSet(b"a", None, b"1")),  # expected absent
            chain.tx(CompareAndSet(b"a", b"1", b"2")),
            chain.tx(CompareAndSet(b"a", b"2", None)),  # new nil deletes
        ]
    )
    assert [(r.status, r.results) for r in block.receipts] == [("ok", (True,))] * 3
    assert chain.app.get(b"a") is None


def test_a_compare_and_set_mismatch_undoes_the_whole_transaction_and_spends_the_id() -> None:
    chain = ChainBuilder()
    chain.add([chain.tx(Put(b"a", b"1"))])
    mismatch = chain.tx(Put(b"x", b"written first"), CompareAndSet(b"a", b"0", b"2"), Delete(b"a"))
    block = chain.add([mismatch])
    (receipt,) = block.receipts
    assert (receipt.status, receipt.reason, receipt.results) == ("rejected", "cas_mismatch", ())
    assert chain.app.kv == {b"a": b"1"}  # neither the put before it nor the delete after it
    assert mismatch.id in chain.app.replay  # it executed: a retry is a duplicate
    assert reasons(chain.add([mismatch])) == ["duplicate"]


def test_a_duplicate_in_the_same_block_and_in_a_later_block_is_rejected() -> None:
    chain = ChainBuilder()
    tx = chain.tx(Put(b"a", b"1"))
    first = chain.add([tx, tx])
    assert reasons(first) == ["", "duplicate"]
    assert first.receipts[1].status == "rejected"
    assert reasons(chain.add([tx])) == ["duplicate"]
    assert chain.app.get(b"a") == b"1"


def test_expiry_is_judged_against_the_block_time() -> None:
    ttl = Params().tx_ttl_max_ms
    chain = ChainBuilder()
    ts = CREATED_MS + 1_000
    block = chain.add(
        [
            chain.tx(Put(b"a", b"1"), expiry_ms=ts - 1),
            chain.tx(Put(b"b", b"1"), expiry_ms=ts),  # expires exactly now: still valid
            chain.tx(Put(b"c", b"1"), expiry_ms=ts + ttl),  # as far as allowed
            chain.tx(Put(b"d", b"1"), expiry_ms=ts + ttl + 1),
        ],
        proposed_ms=ts,
    )
    assert reasons(block) == ["expired", "", "", "expiry_too_far"]
    assert sorted(chain.app.kv) == [b"b", b"c"]


def test_unknown_clients_and_other_chains_are_rejected_and_change_nothing() -> None:
    chain = ChainBuilder()
    stranger = chain.tx(Put(b"a", b"1"), signer=KeyPair.from_seed(b"\x09" * 32))
    foreign = Transaction.create(
        KeyPair.from_seed(b"\x09" * 32), b"\x01" * 32, b"n", CREATED_MS + 60_000, [Put(b"a", b"")]
    )
    root_before = chain.app.state_root
    block = chain.add([stranger, foreign])
    assert reasons(block) == ["unknown_client", "wrong_chain"]
    assert chain.app.kv == {} and chain.app.replay == {}
    assert chain.app.state_root != root_before  # every block moves the root, even a no-op one


def test_execution_is_pure_and_deterministic() -> None:
    a, b = ChainBuilder(), ChainBuilder()
    for chain in (a, b):
        chain.add_puts(5)
        chain.add([chain.tx(CompareAndSet(b"k1", b"value 1", b"x"), Get(b"k2"))])
    assert a.head == b.head
    assert [blk.receipts for blk, _, _ in a.blocks] == [blk.receipts for blk, _, _ in b.blocks]
    txs = (a.tx(Put(b"z", b"1")),)
    kv_before, root_before = dict(a.app.kv), a.app.state_root
    first = a.app.execute(3, CREATED_MS + 3, txs)
    again = a.app.execute(3, CREATED_MS + 3, txs)
    assert first == again  # same inputs, same execution
    assert (a.app.kv, a.app.state_root) == (kv_before, root_before)  # execute changed nothing


def test_the_replay_set_is_pruned_once_ids_expire_and_they_stay_rejected() -> None:
    chain = ChainBuilder()
    short = chain.tx(Put(b"a", b"1"), expiry_ms=CREATED_MS + 100)
    long = chain.tx(Put(b"b", b"1"), expiry_ms=CREATED_MS + 10_000)
    chain.add([short, long], proposed_ms=CREATED_MS + 10)
    assert set(chain.app.replay) == {short.id, long.id}
    block = chain.add([short], proposed_ms=CREATED_MS + 1_000)
    assert set(chain.app.replay) == {long.id}  # forgotten...
    assert reasons(block) == ["expired"]  # ...and it can never run again
    chain.add([], proposed_ms=CREATED_MS + 20_000)
    assert chain.app.replay == {}


def test_a_state_loaded_with_its_replay_set_rejects_the_same_duplicates() -> None:
    chain = ChainBuilder()
    tx = chain.tx(Put(b"a", b"1"))
    chain.add([tx])
    g = make_genesis()
    reloaded = KeyValueState(
        g.chain_id,
        g.params,
        g.client_keys(),
        chain.app.state_root,
        kv=dict(chain.app.kv),
        replay=dict(chain.app.replay),
    )
    execution = reloaded.execute(2, CREATED_MS + 2, (tx,))
    assert execution.receipts[0].reason == "duplicate"
    assert execution == chain.app.execute(2, CREATED_MS + 2, (tx,))
    assert genesis_state_root(g.chain_id) != chain.app.state_root
