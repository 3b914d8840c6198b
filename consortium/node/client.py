"""Moved to consortium/client."""

# TEMPORARY re-export for consortium/cli until the CLI split lands (issue 14)
from consortium.client import ClientError, ConsortiumClient, SyncClient, TxOutcome

__all__ = ["ClientError", "ConsortiumClient", "SyncClient", "TxOutcome"]
