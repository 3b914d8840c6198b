"""The rules of the Raft papers that decide safety, as named pure functions (Ongaro & Ousterhout,
USENIX ATC 2014, "the Raft paper"; Ongaro's thesis, 2014), so that a reader looking for "the
Figure 8 rule" finds it here and not inside the node's message handling (crashft/node.py calls
these).

    log_up_to_date(...)   RequestVote's election restriction (paper §5.4.1, thesis §3.6.1)
    entry_matches(...)    AppendEntries' consistency check (paper §5.3, thesis §3.5)
    majority_match(...)   the highest value a majority has reached: what a leader may count
    commit_index(...)     the leader's commit rule, own term only (Figure 8: paper §5.4.2,
                          thesis §3.6.2)

ReadIndex (thesis §6.4) releases a read once a majority echoed a heartbeat round started after
it: majority_match over the rounds each member echoed (RaftNode._release_reads).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["commit_index", "entry_matches", "log_up_to_date", "majority_match"]


def log_up_to_date(
    last_term: int, last_index: int, candidate_last_term: int, candidate_last_index: int
) -> bool:
    """Whether a candidate's log is at least as up-to-date as ours (paper §5.4.1, thesis
    §3.6.1), the condition for our vote (and PreVote): the log whose last entry has the later
    term is more up-to-date; with the same last term, the longer log is.

    A leader needs a majority's votes, and every committed entry is on a majority: one voter
    holds it, and grants its vote only to a log at least as up-to-date as its own, which then
    holds the entry too (Leader Completeness)."""
    return (candidate_last_term, candidate_last_index) >= (last_term, last_index)


def entry_matches(term_at: Callable[[int], int | None], index: int, term: int) -> bool:
    """The AppendEntries consistency check (paper §5.3, thesis §3.5): a follower takes entries
    after (prev_index, prev_term) only if its log holds an entry at prev_index with that term
    (`term_at(index)`: the term of the entry there, None when it has none). By the Log
    Matching property the two logs are then identical up to it."""
    return term_at(index) == term


def majority_match(values: Sequence[int]) -> int:
    """The highest value that a majority of the members has reached, one value per member
    (the leader's own included): the majority-th highest. For match indexes, the highest index
    a majority stores; for the heartbeat rounds of ReadIndex, the latest round a majority
    echoed (thesis §6.4)."""
    assert values
    return sorted(values, reverse=True)[len(values) // 2]


def commit_index(
    match_indexes: Sequence[int],
    term_at: Callable[[int], int | None],
    current_term: int,
    commit: int,
) -> int:
    """The leader's commit index after counting (Figure 8: paper §5.4.2, thesis §3.6.2): N,
    the highest index a majority stores (majority_match over `match_indexes`, one per member,
    the leader's own included), if N > commit and the leader's entry at N is of its current
    term; else `commit` unchanged. Entries of earlier terms are never committed by counting
    replicas, only with an entry of the current term after them (Log Matching): Figure 8 shows
    an entry of an old term on a majority that a later leader still overwrites.

    Only N needs checking, not every index between commit and N: terms only rise along a log
    and a leader's log holds no entry of a term above its own, so if the entry at N is not of
    the current term, none below it is."""
    n = majority_match(match_indexes)
    if n > commit and term_at(n) == current_term:
        return n
    return commit
