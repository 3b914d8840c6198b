"""The client protocol, shared by the client library (consortium/client) and the member's
client port (consortium/node/client_port.py); it imports neither, only ledger and crypto.

    messages.py   requests, replies, pushes, verdicts, status: the wire forms and codecs
    verify.py     the proofs a member sends (receipt bundles, signed reads, followed blocks),
                  the one builder of a bundle, and their pure checks
    receipts.py   receipt documents: a receipt checked offline, without any member
    limits.py     the limits both sides keep
    sizing.py     the largest client frames, for genesis validation
    framing.py    length-prefixed frames (also the peer port's)
    tls.py        TLS 1.3 pinned to genesis keys (also the peer port's)

messages, verify, receipts, limits and sizing are pure (no I/O, no Trio); framing and tls do
I/O over Trio streams.
"""
