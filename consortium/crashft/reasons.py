"""Why a Raft node drops (or gives up on) what it is given: every key of RaftNode.rejected, in
one table, each classed and explained once. The node counts only these names (a typo is an
AttributeError, not a new reason: tests/docs/test_drop_reasons.py checks the core's source),
the node's shell reads the class to summarise what was dropped (node/runtime.py: misbehaviour
as a warning, the rest at debug level), and docs/operations-metrics.md ("Dropped messages")
lists exactly this table.

Raft mode trusts its members not to lie (crashft/messages.py), so the classes read:

    BENIGN        happens between members that work correctly: loss, delay, duplication and
                  reordering in the network, restarts and elections, a restored backup, a
                  member behind the others, load, and our own bounded waits.
    MISBEHAVIOUR  no correctly working member sends or causes it: a bug, a damaged store, a
                  diverged execution, or something other than a member at the other end.

Some reasons are counted for client transactions (propose, and a follower's forwarding)
rather than for peer messages.
"""

from __future__ import annotations

from consortium.ledger import reasons as shared
from consortium.ledger.reasons import BENIGN, MISBEHAVIOUR, ReasonTable

Reason = shared.Reason
TABLE = ReasonTable()
_reason = TABLE.add


def is_misbehaviour(reason: str) -> bool:
    """Whether a reason means something no correctly working member causes (an unknown one counts as
    misbehaviour: better a warning than silence)."""
    return TABLE.is_misbehaviour(reason)


# --- any peer message ----------------------------------------------------------------------------

MALFORMED = _reason("malformed", MISBEHAVIOUR, "the frame does not decode")
UNKNOWN_SENDER = _reason("unknown_sender", MISBEHAVIOUR, "the sender is not another member's index")
STALE_TERM = _reason(
    "stale_term", BENIGN, "a message of a term below ours (a stale leader is told our term)"
)

# --- elections -----------------------------------------------------------------------------------

VOTE_IN_LEASE = _reason(
    "vote_in_lease",
    BENIGN,
    "a vote request within an election timeout of hearing from our leader (CheckQuorum lease)",
)
VOTE_WHILE_RECOVERING = _reason(
    "vote_while_recovering",
    BENIGN,
    "a vote request refused: we are behind the recovery gate (restored or lost state)",
)
TIMEOUT_NOW_NOT_FROM_LEADER = _reason(
    "timeout_now_not_from_leader", BENIGN, "a TimeoutNow from a member we do not follow"
)
TIMEOUT_NOW_STALE = _reason(
    "timeout_now_stale",
    BENIGN,
    "a TimeoutNow for an entry not our last, or that became durable here over E/4 ago",
)

# --- replication ---------------------------------------------------------------------------------

APPEND_MISMATCH = _reason(
    "append_mismatch",
    BENIGN,
    "an append whose previous entry we do not hold: refused, the leader backs up",
)
APPEND_REPLY_BEYOND_LOG = _reason(
    "append_reply_beyond_log",
    MISBEHAVIOUR,
    "a follower acknowledged an index beyond the leader's log",
)
FOLLOWER_LOST_ENTRIES = _reason(
    "follower_lost_entries",
    BENIGN,
    "a follower refused an entry it had acknowledged (a restored backup, or a lying disk)",
)
APPEND_REWRITES_COMMITTED = _reason(
    "append_rewrites_committed",
    MISBEHAVIOUR,
    "an append that changed an entry at or below our commit index",
)

# --- snapshots and block transfer ----------------------------------------------------------------

SNAPSHOT_BELOW_LEDGER = _reason(
    "snapshot_below_ledger", BENIGN, "a snapshot whose height is below our ledger's: ignored"
)
FETCH_NOT_LEADER = _reason(
    "fetch_not_leader", BENIGN, "a FETCH while we do not lead, or of another term"
)
FETCH_OUT_OF_RANGE = _reason(
    "fetch_out_of_range", BENIGN, "a FETCH starting past our height, or with from > to"
)
BLOCKS_UNEXPECTED = _reason(
    "blocks_unexpected",
    BENIGN,
    "BLOCKS while we install no snapshot from its sender, or still apply the last ones",
)
BLOCKS_NOT_NEXT = _reason("blocks_not_next", BENIGN, "BLOCKS that do not start at our next height")
INSTALL_FAILED = _reason(
    "install_failed",
    MISBEHAVIOUR,
    "a transferred block did not reproduce its header here: fetched again later",
)
INSTALL_MISMATCH = _reason(
    "install_mismatch",
    MISBEHAVIOUR,
    "the blocks installed end at another hash than the snapshot named",
)

# --- the recovery gate ---------------------------------------------------------------------------

QUERY_TOO_OFTEN = _reason(
    "query_too_often",
    BENIGN,
    "a member's TERM-QUERY within a quarter election timeout of the last we answered",
)
STALE_TERM_REPORT = _reason(
    "stale_term_report",
    BENIGN,
    "a TERM-REPORT while not recovering, or carrying another start's nonce",
)

# --- client transactions -------------------------------------------------------------------------

DUPLICATE_TX = _reason(
    "duplicate_tx", BENIGN, "a transaction already pooled or in an uncommitted entry"
)
POOL_FULL = _reason("pool_full", BENIGN, "a transaction refused: the pool is full")
FORWARD_GAVE_UP = _reason(
    "forward_gave_up",
    BENIGN,
    "a follower dropped a transaction it forwarded to leaders four times without a commit",
)
TX_NOT_OK = _reason(
    "tx_not_ok", BENIGN, "as leader, a transaction whose client signature does not verify"
)
TX_EXECUTED = _reason(
    "tx_executed", BENIGN, "as leader, a transaction the ledger executed already: not ordered"
)

# --- membership (crashft/node.py, "Membership") -------------------------------------------------

NOT_MEMBER = _reason(
    "not_member",
    BENIGN,
    "a message other than a leader's from an id outside our applied configuration (a removed "
    "member that has not applied its removal, or one we have not applied the addition of)",
)
VOTE_STALE_EPOCH = _reason(
    "vote_stale_epoch",
    BENIGN,
    "a vote request from a candidate whose applied configuration epoch is below ours (R3)",
)
VOTE_NOT_VOTER = _reason(
    "vote_not_voter",
    BENIGN,
    "a vote request while we are no voter of our applied configuration (a learner, or removed)",
)
VOTE_FROM_LEARNER = _reason(
    "vote_from_learner",
    BENIGN,
    "a vote request from a learner of our applied configuration: dropped before it moves our term",
)
CHANGE_TERM_UNCOMMITTED = _reason(
    "change_term_uncommitted",
    BENIGN,
    "a member change waits in the pool: no entry of the leader's term has committed yet (R1a)",
)
CHANGE_UNAPPLIED = _reason(
    "change_unapplied",
    BENIGN,
    "a member change waits in the pool: an earlier change entry is not applied yet (R1b)",
)
CHANGE_EPOCHS_BEHIND = _reason(
    "change_epochs_behind",
    BENIGN,
    "a member change waits in the pool: fewer than a majority of voters reported the "
    "leader's applied epoch (R1c)",
)
CHANGE_OWN_ENTRY = _reason(
    "change_own_entry",
    BENIGN,
    "a batch was cut before a member change: a change entry carries that change alone (R1d)",
)
LEARNER_BEHIND = _reason(
    "learner_behind",
    BENIGN,
    "a promote waits in the pool: the learner's match index is over params.window entries "
    "behind the leader's last index (R1e)",
)
