"""Consortium: a permissioned ledger node ordering client-signed transactions with PBFT or Raft."""

from consortium import compiled as _compiled

__version__ = "0.1.0"

_compiled.install()  # before anything imports a compiled module (compiled.py)


def version() -> str:
    """The installed distribution's version (what `pip show consortium` says), or this
    package's own __version__ when it runs from a source tree that is not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("consortium")
    except PackageNotFoundError:
        return __version__
