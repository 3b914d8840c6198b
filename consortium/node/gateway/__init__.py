"""The HTTP/JSON gateway: the client port's requests over HTTP/1.1 (docs/gateway.md, the contract;
openapi.json, its machine-readable form, served at GET /openapi.json).

Theory of operation
-------------------
One way to do a step. Every gateway request becomes the native `Request` (protocol/messages.py),
built as the native frame and decoded by the native `decode_request` (so its size and shape
checks are the native ones; the submit's are made per transaction: below), and is served by
the member's one `ClientHandler.handle(conn, request)` (node/service.py), the very call the
native port makes. `conn` is a
`GatewayConnection`, a `ClientConnection` (node/client_port.py) whose queued frames the gateway
reads back (`take`) and translates to JSON instead of writing them to a socket. Admission,
signature checks and their rationing, replay refusal, watch and follow bounds, overload rules:
all the handler's, identical for both ports. One HTTP connection is one client connection:
its watches, follows and signature budget live as long as it, and `handler.disconnected(conn)`
is called when it ends, whatever ended it.

    POST /v1/transactions[?wait_ms=N]        SubmitRequest; with N, the receipts the handler
                                             pushes for the accepted ids within N ms
    GET  /v1/transactions/{id}/receipt       ReceiptRequest; with wait_ms and none yet, a
                                             WatchRequest and its push
    GET  /v1/kv/{key}                        GetRequest (the signed fast-path read)
    GET  /v1/blocks/{height}                 BlockRequest
    GET  /v1/follow?from=H                   FollowRequest, CreditRequest as the stream drains,
                                             UnfollowRequest at its end: Server-Sent Events
    GET  /v1/status                          StatusRequest
    GET  /openapi.json                       the document (package data)

The submit is the one request not built as its native frame: its transactions are checked one
at a time as decode_request checks the frame (each canonical msgpack, the frame's size, their
number), yielding between them, as a 16 MiB frame checked in one step holds the event loop
for half a second; and its body is parsed as JSON only when small (a large one is read by a
linear scan of the one shape it may have: server._scan_submit).

What the member signed reaches the client as the exact canonical msgpack the native port
sends, base64-encoded: a client checks it as it checks the native port's answers. A "receipts"
push (one block's receipts for a connection) is split into per-transaction bundles
(`BlockReceipts.bundles`), each `pack(bundle.to_array())`.

Bounds (every one tested, tests/node/test_gateway.py): the HTTP wire's (http11.py: head bytes
and deadline, body bytes and deadline with a minimum rate, idle keep-alive, every write under a
deadline, body bytes held over all connections and per source, charged as they arrive);
connections in all and per source (sources.ConnectionCaps, the client port's own rule, silent
connections evicted first); SSE streams at once (`SSE_STREAMS_MAX`); an SSE stream holds at most
`SSE_CREDIT` blocks in its connection's queue (credit is granted only as blocks are written to
the socket; a block beyond it, a bug, ends the stream with a reason), the streams are shared
max-min fairly among sources (`_share_stream`, as the member shares follows), and a write
that does not finish within `SSE_SEND_TIMEOUT_S` ends the stream (slow reader: `event: error`,
best effort); `wait_ms` at most WAIT_MS_MAX; transactions per request the native
TXS_PER_REQUEST_MAX; replies and pushes the ClientConnection's own bounds. A bug
reached by client input is answered 500 `internal`, logged with its traceback, and the server
goes on.

TLS (`[tls] gateway = true`): HTTPS with the member's identity, as on the client port: TLS 1.3,
mutual, the client presenting a certificate for a key the client port admits (an admitted
client's or a member's: `tls_accepts`), checked again at each request (a revoked key is
answered 403 `forbidden` and the connection closes), and by `recheck_tls_keys` when client
changes take effect (the member calls it with the client port's: a request waiting or a stream
of a revoked key is cut off then, with its 403 or its `forbidden` event).

Counters (status `gateway.events`, /metrics `consortium_gateway_events_total{event}`):
`connections`, `request_<endpoint>`, `error_<code>`, `sse_streams`, `sse_slow_reader`,
`sse_shared_fairly`, `sse_credit_exceeded`, the caps' refusals and evictions, `tls_*`.
"""

from __future__ import annotations

from consortium.node.gateway.server import GatewayConnection, GatewayServer

__all__ = ["GatewayConnection", "GatewayServer"]
