"""Quorum arithmetic (Castro & Liskov, OSDI'99 §4.1 and §4.2; TOCS'02 §2.2-2.3):
Q = ceil((n+f+1)/2) with f = floor((n-1)/3)."""

from __future__ import annotations

from itertools import combinations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consortium.ledger.genesis import Params
from consortium.pbft.replica import PbftConfig


def config(n: int) -> PbftConfig:
    return PbftConfig(
        chain_id=b"\x00" * 32,
        members=tuple((i, i.to_bytes(32, "big")) for i in range(n)),
        me=0,
        params=Params(),
    )


@pytest.mark.parametrize("n", range(4, 14))
def test_quorum_is_ceil_of_n_plus_f_plus_1_over_2(n: int) -> None:
    c = config(n)
    assert c.f == (n - 1) // 3
    assert c.quorum == -(-(n + c.f + 1) // 2)
    if n == 3 * c.f + 1:
        assert c.quorum == 2 * c.f + 1


@pytest.mark.parametrize("n", range(4, 14))
def test_any_two_quorums_intersect_in_at_least_f_plus_1_members(n: int) -> None:
    c = config(n)
    # Arithmetic: |A ∩ B| >= 2Q - n, and 2Q - n >= f + 1.
    assert 2 * c.quorum - n >= c.f + 1
    if n <= 9:  # exhaustively, where the number of pairs stays small
        quorums = [set(q) for q in combinations(range(n), c.quorum)]
        assert min(len(a & b) for a in quorums for b in quorums) >= c.f + 1


@pytest.mark.parametrize("n", range(4, 14))
def test_a_quorum_forms_with_f_members_silent(n: int) -> None:
    c = config(n)
    assert c.quorum <= n - c.f


@given(st.integers(min_value=4, max_value=1000))
def test_quorum_intersection_holds_for_any_size(n: int) -> None:
    c = config(n)
    assert n >= 3 * c.f + 1
    assert 2 * c.quorum - n >= c.f + 1
    assert c.quorum <= n - c.f
