"""Errors the member's parts raise to each other."""


class ReadRefused(Exception):
    """A read this member cannot answer now (raft: not confirmed as leader), with the reason."""
