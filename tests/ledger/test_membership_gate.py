"""The release gate on member changes (KeyValueState.member_changes): until the consensus cores
and the node follow configurations (issue 19 parts B to D), a v2 change of kind "members" is
refused as config_members_unavailable right after the checks shared with v1, by every state a
production path builds (the default), by a store's state and by the audit's re-execution.
v2 client changes are not gated."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from consortium.ledger.audit import audit_ledger
from consortium.ledger.block import genesis_state_root
from consortium.ledger.membership import AdmitClient
from consortium.ledger.state import KeyValueState
from consortium.ledger.store import BlockStore
from tests.ledger.chain_fixture import CREATED_MS, ChainBuilder
from tests.ledger.membership_fixture import (
    HOUR_MS,
    PARAMS,
    SPARES,
    accepted,
    add_op,
    member_chain,
    refused,
    v2_change,
    v2_tx,
)
from tests.ledger.test_membership_audit import failed, store_of

ROOT = Path(__file__).resolve().parents[2]


def gated_chain() -> ChainBuilder:
    """A chain whose state is built as production builds it (member_changes left default)."""
    chain = ChainBuilder(member_chain().genesis)
    assert chain.app.member_changes is False and chain.genesis.params == PARAMS
    return chain


def test_the_default_state_refuses_a_member_change_and_accepts_a_client_change() -> None:
    chain = gated_chain()
    assert refused(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))])) == (
        "config_members_unavailable"
    )
    assert chain.app.pending_member is None and SPARES[0].public not in chain.app.used_keys
    admit = v2_change(chain, AdmitClient(SPARES[1].public, "c"), kind="clients", nonce=b"c")
    accepted(chain.add([v2_tx(chain, admit)]))
    # the same member change is accepted by a state that enables them
    enabled = member_chain()
    accepted(enabled.add([v2_tx(enabled, v2_change(enabled, add_op(0)))]))


def test_the_gate_comes_right_after_the_shared_checks() -> None:
    chain = gated_chain()
    chain.add([])
    expired = v2_change(chain, add_op(0), expiry_ms=CREATED_MS - 1, created_ms=CREATED_MS - 2)
    assert refused(chain.add([v2_tx(chain, expired)])) == "config_expired"
    # before config_superseded (another epoch) and before the approvals (none here)
    assert chain.app.config is not None
    elsewhere = replace(chain.app.config, epoch=1)
    superseded = v2_change(chain, add_op(0), nonce=b"s", config=elsewhere)
    enabled = member_chain()
    enabled.add([])
    assert refused(enabled.add([v2_tx(enabled, superseded, approved=())])) == "config_superseded"
    assert refused(chain.add([v2_tx(chain, superseded, approved=())])) == (
        "config_members_unavailable"
    )
    later = v2_change(chain, add_op(0), nonce=b"t", created_ms=chain.head.timestamp_ms + HOUR_MS)
    assert refused(chain.add([v2_tx(chain, later)])) == "config_created_later"


def test_the_store_and_the_audit_default_to_the_gate(tmp_path: Path) -> None:
    """A ledger that accepted a member change fails `ledger verify` of this release (its
    re-execution refuses the change), and verifies with the gate open."""
    chain = member_chain()
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))]))
    path = tmp_path / "ledger.sqlite"
    store_of(path, chain)
    store = BlockStore.open(path, chain.genesis)
    try:
        assert store.app.member_changes is False
    finally:
        store.close()
    store = BlockStore.open(path, chain.genesis, member_changes=True)
    try:
        assert store.app.member_changes is True
    finally:
        store.close()
    height, reason = failed(audit_ledger(path, chain.genesis))
    assert height == 1 and reason.startswith("re-execution gives a different state_root")
    assert audit_ledger(path, chain.genesis, member_changes=True).ok
    state = KeyValueState.for_genesis(chain.genesis, genesis_state_root(chain.genesis.chain_id))
    assert state.member_changes is False


def test_no_production_code_opens_the_gate() -> None:
    """Only tests enable member changes in this release."""
    opened = re.compile(r"member_changes\s*=\s*True")
    for path in sorted((ROOT / "consortium").rglob("*.py")):
        assert not opened.search(path.read_text()), f"{path.relative_to(ROOT)} opens the gate"
    for path in sorted((ROOT / "scripts").rglob("*.py")):
        assert not opened.search(path.read_text()), f"{path.relative_to(ROOT)} opens the gate"
