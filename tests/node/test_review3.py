"""Review 3: regressions found in the review-1/review-2 fix commits (failing until fixed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from consortium.crypto.codec import unpack
from consortium.node import api, runtime, service
from consortium.node.service import ClientService
from tests.node.test_follow import FakeNode, build_chain, open_store
from tests.node.test_review2 import _member


def _last_reply(conn: api.ClientConnection) -> list[object]:
    return unpack(conn._queue[-1])  # type: ignore[no-any-return]


# --- aa7d64b: FOLLOWS_MAX is node-wide with no share per connection or source --------------


async def test_a_stranger_cannot_take_every_follow_slot_of_a_member(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """service._follow: FOLLOWS_MAX = 32 over all connections, 8 per connection, no
    authentication on a plain client port. 4 connections of a stranger following from the
    head (caught up, with credit) never pause, so FOLLOW_PAUSE_MAX_S never ends them; from
    then on every honest client's follow at this member is refused 'try later', forever (and
    at f+1 members: no follow can gather f+1 copies)."""
    monkeypatch.setattr(api, "FOLLOW_PAUSE_MAX_S", 0.2)
    chain = build_chain(2)
    node = FakeNode(0, open_store(tmp_path, "m0"))
    node.append(chain, 0)
    svc = ClientService(node)  # type: ignore[arg-type]
    head = node.store.height
    strangers = [api.ClientConnection(i + 1, "stranger", frames_max=1000) for i in range(4)]
    honest = api.ClientConnection(99, "honest follower", frames_max=1000)
    async with trio.open_nursery() as nursery:
        svc._nursery = nursery
        for conn in strangers:
            for f in range(api.FOLLOWS_PER_CONNECTION_MAX):
                await svc.handle(conn, api.FollowRequest(f + 1, head + 1, api.FOLLOW_CREDIT_MAX))
        await trio.sleep(1.0)  # far past FOLLOW_PAUSE_MAX_S: the strangers' follows still run
        await svc.handle(honest, api.FollowRequest(1, 1, api.FOLLOW_CREDIT_MAX))
        nursery.cancel_scope.cancel()
    node.store.close()
    reply = _last_reply(honest)
    assert reply[1] != "error", f"an honest client's follow was refused: {reply[2]}"


# --- c92f487: watches by id share one node-wide bound with strangers ----------------------


async def test_strangers_watching_random_ids_cannot_lock_honest_watches_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """runtime.watch_id: watches by id take at most WATCHED_TXS_MAX // 4 = 50,000 node-wide,
    5,000 per connection, no authentication without TLS. Ten connections watching random ids
    (re-watched every ID_WATCH_AGE_S) fill the share, and every honest watch by id
    (`consortium tx status`, ConsortiumClient.wait_one/watch of an id submitted elsewhere or
    before a restart) is refused 'too many pending receipts watched': its receipt is never
    pushed and the client reports 'pending' for a committed transaction. The review-2
    lockout moved from submits to watches. Scaled down: share 10, 5 per connection."""
    monkeypatch.setattr(runtime, "WATCHED_TXS_MAX", 40)
    monkeypatch.setattr(service, "ID_WATCHES_PER_CONNECTION_MAX", 5)
    node = _member(tmp_path)
    svc = ClientService(node)
    for c in range(2):
        stranger = api.ClientConnection(c + 1, "stranger", frames_max=1000)
        await svc.handle(stranger, api.WatchRequest(1, [os.urandom(32) for _ in range(5)]))
    honest = api.ClientConnection(9, "honest client", frames_max=1000)
    await svc.handle(honest, api.WatchRequest(1, [os.urandom(32)]))
    node.store.close()
    reply = _last_reply(honest)
    assert reply[1] != "error", f"an honest watch by id was refused: {reply[2]}"
