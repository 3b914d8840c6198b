"""The client protocol's limits that both sides need: a member refuses a request beyond them,
a decoder refuses a reply beyond them, and a client splits what it sends to stay within them.
The member's own bounds (queues, timeouts, follow pauses) are the client port's business
(node/client_port.py)."""

from __future__ import annotations

CLIENTS_LISTED_MAX = 100_000  # admitted clients one "clients" reply lists
TX_IDS_PER_REQUEST_MAX = 10_000  # ids in one "watch"
TXS_PER_REQUEST_MAX = 100_000  # transactions in one "submit"
KEY_BYTES_MAX = 4096
PROOF_HASHES_MAX = 64
MESSAGE_CHARS_MAX = 4096  # an error message, a verdict's detail
METHOD_CHARS_MAX = 16
FOLLOW_CREDIT_MAX = 1024  # blocks a follow may have in flight
FOLLOWS_PER_CONNECTION_MAX = 8
TRANSFER_NONCE_BYTES = 16
