"""Consortium: a permissioned ledger node ordering client-signed transactions with PBFT or Raft."""

__version__ = "0.1.0"
