"""Errors the member's parts raise to each other, and finding the one that matters in a group."""


class MemberDiverged(Exception):
    """A quorum certified another block than ours at a sequence number: our store is not the
    network's. The member stops (runtime) and its process moves the store aside and starts
    again from peers (process.py), at most once per process."""


class ReadRefused(Exception):
    """A read this member cannot answer now (raft: not confirmed as leader), with the reason."""


def first_leaf(
    group: BaseExceptionGroup[BaseException], kinds: tuple[type[BaseException], ...]
) -> BaseException:
    """The first exception of one of `kinds` in `group` (depth first), else the group itself:
    a member's disk error surfaces as its one-line message, not an exception group trace (trio
    wraps a task's exception in a group by its nursery)."""
    for exc in group.exceptions:
        if isinstance(exc, kinds):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = first_leaf(exc, kinds)
            if found is not exc:
                return found
    return group
