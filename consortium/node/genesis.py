"""The genesis a network can run: the file's own checks (ledger/genesis.py) and, on top, that
members and clients can exchange every frame they must under its parameters.

The frame check needs the real encodings of pbft's, raft's and the client protocol's messages,
and all three import ledger/genesis.py (Params): so it cannot live there, and lives here, above
them. Whatever loads a genesis to run a member or to write or use a network (`node start`,
`consortium init`, the audit, ...) loads it through load_genesis or validate_genesis; reading one
through ledger/genesis.py alone skips the frame check (tests/node/test_genesis_frames.py checks
that the node and the CLI do not)."""

from __future__ import annotations

import functools
from pathlib import Path

from consortium.ledger.genesis import Genesis, GenesisError, Mode, Params


@functools.cache
def frame_size_problem(params: Params, mode: Mode, n: int) -> str | None:
    """Why members with these parameters could not exchange every message they must, if they
    could not; None when every worst-case frame (each protocol's worst_case_frames: the real
    encodings with every field at its largest) fits what its receiver decodes. Found in
    review: legal parameters (256 KiB batches at n >= 10, window 256 at n >= 22) made every
    NEW-VIEW too big to decode, so after one primary crash the members cycled through views
    for ever; a raft frame limit below one batch halted the cluster for good.

    The consensus frames first (the mode's own check), then the client's. The encodings are
    imported when the check first runs, so importing this module stays cheap (the CLI imports
    it with its commands, and `consortium --help` loads no protocol). Cached: a genesis is
    validated often."""
    from consortium.crashft import messages as raft_messages
    from consortium.pbft import messages as pbft_messages
    from consortium.protocol import sizing

    if mode == "pbft":
        problem = pbft_messages.frame_size_problem(params, n)
    else:
        problem = raft_messages.frame_size_problem(params)
    return problem if problem is not None else sizing.frame_size_problem(params, n, mode)


def check_frames(genesis: Genesis, where: str) -> None:
    """GenesisError, naming `where` and the fix, if the genesis's members could not exchange
    every frame they must."""
    problem = frame_size_problem(genesis.params, genesis.mode, genesis.n)
    if problem is not None:
        raise GenesisError(f"{where}: {problem}")


def validate_genesis(genesis: Genesis, where: str = "genesis") -> None:
    """Every check of a genesis: the file's own (Genesis.validate), then the frames."""
    genesis.validate(where)
    check_frames(genesis, where)


def load_genesis(path: Path) -> Genesis:
    """The genesis file at `path`, with every check (Genesis.load, then the frames)."""
    genesis = Genesis.load(path)
    check_frames(genesis, str(path))
    return genesis


def genesis_from_json(text: str, where: str = "genesis.json") -> Genesis:
    """A genesis from its JSON text, with every check (Genesis.from_json, then the frames)."""
    genesis = Genesis.from_json(text, where)
    check_frames(genesis, where)
    return genesis
