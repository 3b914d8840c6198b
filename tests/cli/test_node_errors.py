"""A member's fatal error inside the Trio nurseries (trio wraps a task's exception in an
exception group) reaches the operator as its one-line message: `node start` finds it in the
group (cli.main.first_leaf) and exits with it, instead of printing a group traceback."""

from __future__ import annotations

from consortium.cli.main import first_leaf
from consortium.ledger.store import StoreError


def test_the_first_store_error_is_found_in_nested_groups() -> None:
    disk = StoreError("ledger.sqlite: write failed, nothing written (disk I/O error)")
    group = BaseExceptionGroup(
        "tasks", [RuntimeError("other"), BaseExceptionGroup("core", [disk, StoreError("2nd")])]
    )
    assert first_leaf(group, (StoreError,)) is disk


def test_a_group_without_a_known_error_is_left_as_it_is() -> None:
    group = BaseExceptionGroup("tasks", [RuntimeError("bug"), KeyError("k")])
    assert first_leaf(group, (StoreError, OSError)) is group
