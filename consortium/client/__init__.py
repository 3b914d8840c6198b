"""The client library: talks to every member's client port and believes f+1 of them (pbft) or
one (raft). It speaks consortium/protocol and never imports the node.

    client.py    ConsortiumClient: connections to every member, submit, wait, reads, lookups
    sync.py      SyncClient: the same for code that does not run Trio
    tally.py     the f+1 tally that decides a transaction, pure
    follow.py    following committed blocks (f+1 agreement, credit)
    outcome.py   TxOutcome, what the client reports about one transaction
    receipts.py  the receipt document of a decided transaction
    gateway.py   GatewayClient: the same decision through the members' HTTP/JSON gateways
    errors.py    ClientError

    from consortium.client import ConsortiumClient
"""

from consortium.client.client import ConsortiumClient
from consortium.client.errors import ClientError
from consortium.client.follow import CommittedBlock
from consortium.client.outcome import TxOutcome
from consortium.client.sync import SyncClient

__all__ = ["ClientError", "CommittedBlock", "ConsortiumClient", "SyncClient", "TxOutcome"]
