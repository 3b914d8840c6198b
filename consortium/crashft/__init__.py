"""Raft crash-fault mode (a later issue)."""
