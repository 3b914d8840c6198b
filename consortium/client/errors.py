"""The client library's error."""

from __future__ import annotations


class ClientError(RuntimeError):
    """A request that could not be answered as asked (no quorum, member unreachable, ...)."""
