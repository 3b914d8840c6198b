"""The profile summariser (scripts/profile_bench.py): categories, idle samples, the weighting
of the main thread against the worker threads, and the report's ms per transaction."""

from __future__ import annotations

import pytest

from scripts.profile_bench import Column, ProfileError, category, inclusive, report, summarise

MAIN = "_run_module_as_main (<frozen runpy>:198);run (trio/_core/_run.py:2532)"
WORKER = "Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982)"

RAW = "\n".join(
    [
        # main thread: 60 busy samples
        f"{MAIN};Node._core_loop (consortium/node/runtime.py:364) 10",
        f"{MAIN};unpack (consortium/crypto/codec.py:41) 25",
        f"{MAIN};Replica.on_prepare (consortium/pbft/replica.py:10);"
        "signed_message (consortium/crypto/signing.py:45) 5",
        f"{MAIN};Block.sign (consortium/ledger/block.py:9);"
        "Ed25519Signer.sign (consortium/crypto/signing.py:84) 5",
        f"{MAIN};_SocketType._nonblocking_helper (trio/_socket.py:1050) 15",
        # idle: the loop in epoll, a worker waiting for a job, a frameless native thread
        f"{MAIN};EpollIOManager.get_events (trio/_core/_io_epoll.py:243) 500",
        f"{WORKER};WorkerThread._work (trio/_core/_thread_cache.py:211) 700",
        " 9",
        # worker threads: 40 busy samples
        f"{WORKER};Transaction.verify_signature (consortium/ledger/tx.py:90);"
        "Ed25519Verifier.verify (consortium/crypto/signing.py:107) 30",
        f"{WORKER};BlockStore.commit_staged (consortium/ledger/store.py:849) 10",
    ]
)


def test_categories_by_innermost_frame() -> None:
    assert category(["x (consortium/ledger/store.py:1)"]) == "sqlite store"
    assert category(["x (consortium/pbft/replica.py:1)"]) == "consensus core"
    assert category(["x (consortium/node/client_port.py:1)"]) == "client port/transport"
    assert category(["x (trio/_core/_run.py:1)"]) == "trio/event loop"
    assert category(["x (consortium/crypto/merkle.py:1)"]) == "hashing/Merkle"
    assert category(["x (somewhere/else.py:1)"]) == "other"
    # signed_message serves both: the caller decides
    verify = ["Ed25519Verifier.verify (consortium/crypto/signing.py:104)"]
    assert category([*verify, "signed_message (consortium/crypto/signing.py:45)"]) == (
        "Ed25519 verify"
    )


def test_raw_samples_without_thread_weights() -> None:
    p = summarise(RAW)
    assert (p.main.busy, p.workers.busy, p.idle) == (60, 40, 1209)
    assert p.share("codec/msgpack") == pytest.approx(0.25)
    # signed_message under a caller naming neither verify nor sign counts as verify
    assert p.share("Ed25519 verify") == pytest.approx(0.30 + 0.05)
    assert p.share("Ed25519 sign") == pytest.approx(0.05)
    assert p.share("client port/transport") == pytest.approx(0.15)
    assert p.share("sqlite store") == pytest.approx(0.10)
    assert sum(p.share(c) for c in p.main.by_category | p.workers.by_category) == pytest.approx(1)


def test_main_thread_weight_from_its_cpu() -> None:
    # The main thread used 90% of the CPU: its 60 samples stand for 0.9, the workers' 40 for 0.1.
    p = summarise(RAW, main_cpu_fraction=0.9)
    assert p.share("codec/msgpack") == pytest.approx(0.9 * 25 / 60)
    assert p.share("Ed25519 verify") == pytest.approx(0.1 * 30 / 40 + 0.9 * 5 / 60)
    assert p.share("sqlite store") == pytest.approx(0.1 * 10 / 40)
    top = p.functions()[0]
    assert top[0] == "unpack (consortium/crypto/codec.py)" and top[1] == 25
    callers = dict((name, share) for name, _, share in p.callers())
    assert callers["Transaction.verify_signature (consortium/ledger/tx.py)"] == pytest.approx(
        0.1 * 30 / 40
    )


def test_report_in_ms_per_transaction() -> None:
    p = summarise(RAW, main_cpu_fraction=0.5)
    text = report([Column("pbft n2 (backup)", p, 0.2, "run")])
    # codec: 0.5 * 25/60 of 0.2 ms
    assert "| codec/msgpack | 0.042 (21%) |" in text
    assert "| **CPU ms per tx** | 0.200 |" in text


def test_a_line_that_is_not_a_stack_is_an_error() -> None:
    with pytest.raises(ProfileError, match="line 2"):
        summarise(f"{MAIN};x (a.py:1) 3\ngarbage")


def test_inclusive_counts_stacks_holding_every_part() -> None:
    p = summarise(RAW, main_cpu_fraction=0.9)
    # 30 worker samples under verify_signature; "&" needs both parts in one stack
    assert inclusive(RAW, "Transaction.verify_signature", p) == pytest.approx(0.1 * 30 / 40)
    assert inclusive(RAW, "Replica.on_prepare&signing.py", p) == pytest.approx(0.9 * 5 / 60)
    assert inclusive(RAW, "Replica.on_prepare&store.py", p) == 0
    # idle stacks never count, whatever they hold
    assert inclusive(RAW, "WorkerThread._work", p) == 0
