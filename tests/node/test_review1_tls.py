"""Review 1 (issue 6): failing test for TLS pinning on the client port (merge 4e25b3b)."""

from __future__ import annotations

import trio

from consortium.node.api import ClientServer
from consortium.node.client import ClientError, ConsortiumClient
from tests.ledger.chain_fixture import CLIENT
from tests.node.test_client import honest
from tests.node.test_tls import GENESIS, IDS
from tests.node.test_transport import HOST


async def test_a_revoked_client_loses_its_open_tls_connection() -> None:
    """The client port pins the TLS key against the clients admitted now, but only at the
    handshake (service.py _tls_name). With [tls] client = true the pin is the only gate on
    reads, follow streams, blocks and receipts; a revoked client that keeps its connection
    open (SyncClient and follow hold one for hours) keeps reading every committed block
    after its revocation takes effect. Expect the member to drop (or refuse requests on)
    connections whose key is no longer admitted."""
    admitted = {CLIENT.public}
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            member = honest(1)[0]
            server = ClientServer(
                member,
                listen=(HOST, 0),
                frame_bytes_max=1 << 20,
                params=GENESIS.params,
                tls=IDS[0],
                tls_accepts=lambda key: "c1" if key in admitted else None,
            )
            port = await nursery.start(server.run)
            async with ConsortiumClient(
                GENESIS, CLIENT, addresses={0: (HOST, port)}, tls_keys=CLIENT, connect_timeout_s=5
            ) as client:
                assert (await client.status(0))["member"] == 0
                admitted.clear()  # the revocation takes effect at this member
                try:
                    await client.status(0)
                    served_after_revocation = True
                except ClientError:
                    served_after_revocation = False
            nursery.cancel_scope.cancel()
    assert not served_after_revocation, "a revoked client is still served on its open connection"


async def test_a_revocation_taking_effect_closes_the_revoked_key_s_connections() -> None:
    """Without a request (a follow stream, an idle SyncClient), the member closes the
    connection when the revocation applies (service.py calls recheck_tls_keys at checkpoint
    boundaries)."""
    admitted = {CLIENT.public}
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            member = honest(1)[0]
            server = ClientServer(
                member,
                listen=(HOST, 0),
                frame_bytes_max=1 << 20,
                params=GENESIS.params,
                tls=IDS[0],
                tls_accepts=lambda key: "c1" if key in admitted else None,
            )
            port = await nursery.start(server.run)
            async with ConsortiumClient(
                GENESIS, CLIENT, addresses={0: (HOST, port)}, tls_keys=CLIENT, connect_timeout_s=5
            ) as client:
                assert (await client.status(0))["member"] == 0
                assert server.recheck_tls_keys() == 0 and len(server.connections) == 1
                admitted.clear()
                assert server.recheck_tls_keys() == 1
                while server.connections:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                assert server.counters["tls_revoked_disconnected"] == 1
            nursery.cancel_scope.cancel()
