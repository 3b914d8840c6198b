"""Moved: the client protocol to consortium/protocol, the client port to node/client_port.py."""

# TEMPORARY re-export for consortium/cli until the CLI split lands (issue 14)
from consortium.protocol.messages import ClientList

__all__ = ["ClientList"]
