"""Moved to consortium/client/follow.py."""

# TEMPORARY re-export for consortium/cli until the CLI split lands (issue 14)
from consortium.client.follow import CommittedBlock

__all__ = ["CommittedBlock"]
