"""Why a PBFT replica drops (or holds back) what it is given: every key of
PbftReplica.rejected, in one table, each classed and explained once. The replica counts only
these names (a typo is an AttributeError, not a new reason: tests/docs/test_drop_reasons.py
checks the cores' source), the node's shell reads the class to summarise what was dropped
(node/runtime.py: misbehaviour as a warning, the rest at debug level), and
docs/operations-metrics.md ("Dropped messages") lists exactly this table.

The two classes:

    BENIGN        happens between honest members that work correctly: loss, delay,
                  duplication and reordering in the network, restarts, a member behind or
                  ahead of the others, load, and our own bounded waits.
    MISBEHAVIOUR  no honest, correctly working member sends or causes it: a faulty or
                  malicious member, a damaged store, a diverged execution, or a bug.

Some reasons are counted for what clients submit (propose) rather than for peer messages; a
few count our own giving up (batch_request_abandoned, batch_requests_full).
"""

from __future__ import annotations

from consortium.ledger import reasons as shared
from consortium.ledger.reasons import BENIGN, MISBEHAVIOUR, ReasonTable

Reason = shared.Reason
TABLE = ReasonTable()
_reason = TABLE.add


def is_misbehaviour(reason: str) -> bool:
    """Whether a reason means something no honest member causes (an unknown one counts as
    misbehaviour: better a warning than silence)."""
    return TABLE.is_misbehaviour(reason)


# --- any peer message ----------------------------------------------------------------------------

MALFORMED = _reason(
    "malformed",
    MISBEHAVIOUR,
    "the frame does not decode (or a NEW-VIEW's contents are not those its primary signed)",
)
NOT_MEMBER = _reason("not_member", MISBEHAVIOUR, "the authenticated sender is not a member index")
FROM_SELF = _reason(
    "from_self", MISBEHAVIOUR, "a message from the network that claims to come from this member"
)
SENDER_MISMATCH = _reason(
    "sender_mismatch", MISBEHAVIOUR, "the signed sender field is not the authenticated sender"
)
BAD_SIGNATURE = _reason(
    "bad_signature", MISBEHAVIOUR, "the signature does not verify over the body received"
)
STALE_EPOCH = _reason(
    "stale_epoch",
    BENIGN,
    "a message of an epoch (configuration) before ours: a member finishing or behind it",
)
UNKNOWN_EPOCH = _reason(
    "unknown_epoch",
    BENIGN,
    "a message of an epoch after the next one we know, or of the next one from a member not in "
    "it (we may be behind)",
)
BEYOND_EPOCH = _reason(
    "beyond_epoch",
    MISBEHAVIOUR,
    "an ordering message or checkpoint certificate for a seq above our epoch's end E: no "
    "honest member votes there",
)
NEXT_EPOCH_FULL = _reason(
    "next_epoch_full",
    BENIGN,
    "a message of the next epoch dropped: its sender's buffer until we enter that epoch is full",
)
DUPLICATE = _reason(
    "duplicate",
    BENIGN,
    "the same vote, VIEW-CHANGE or VIEW-REPORT again, or a FETCH repeated too soon",
)

# --- PRE-PREPARE, PREPARE, COMMIT ----------------------------------------------------------------

WRONG_VIEW = _reason(
    "wrong_view",
    BENIGN,
    "a vote for a view other than ours (one for a later view is kept, bounded, until we enter it)",
)
BUFFER_FULL = _reason(
    "buffer_full", BENIGN, "the sender's bounded buffer of early messages is full"
)
OUTSIDE_WINDOW = _reason(
    "outside_window",
    BENIGN,
    "a vote at or below h, or a CHECKPOINT above h+L (votes above h+L are buffered)",
)
NOT_PRIMARY = _reason(
    "not_primary", MISBEHAVIOUR, "a PRE-PREPARE or NEW-VIEW from a member not primary of its view"
)
PREPARE_FROM_PRIMARY = _reason(
    "prepare_from_primary", MISBEHAVIOUR, "the primary of the view sent a PREPARE"
)
CONFLICTING_VOTE = _reason(
    "conflicting_vote",
    MISBEHAVIOUR,
    "a second, different PREPARE, COMMIT or CHECKPOINT from one member for one slot",
)
CONFLICTING_PREPREPARE = _reason(
    "conflicting_preprepare",
    MISBEHAVIOUR,
    "a second PRE-PREPARE for one (view, seq) with another digest: evidence, a view change",
)
BATCH_TOO_LARGE = _reason(
    "batch_too_large",
    MISBEHAVIOUR,
    "a batch over batch_txs_max or batch_bytes_max: evidence against the primary",
)
WRONG_CHAIN = _reason(
    "wrong_chain",
    MISBEHAVIOUR,
    "a batch (or a submitted transaction) of another chain: evidence against the primary",
)
DIGEST_MISMATCH = _reason(
    "digest_mismatch",
    MISBEHAVIOUR,
    "a batch whose transactions are not those its digest names: evidence against the primary",
)
BAD_CLIENT_SIGNATURE = _reason(
    "bad_client_signature",
    MISBEHAVIOUR,
    "a batch or forwarded transaction whose client signature does not verify",
)
CONFLICTS_COMMITTED = _reason(
    "conflicts_committed",
    MISBEHAVIOUR,
    "a PRE-PREPARE at a seq we committed, for another digest: never prepared nor committed",
)
NOT_REISSUED = _reason(
    "not_reissued",
    BENIGN,
    "a fresh PRE-PREPARE at or below the max_s of the NEW-VIEW that started this view",
)
TIMESTAMP_SKEW = _reason(
    "timestamp_skew",
    BENIGN,
    "our PREPARE withheld: the proposed time is further than timestamp_skew_ms from our clock",
)
NEVER_ADMITTED = _reason(
    "never_admitted",
    BENIGN,
    "our PREPARE withheld until a block admits a key of the batch never admitted here",
)

# --- checkpoints ---------------------------------------------------------------------------------

NOT_CHECKPOINT_SEQ = _reason(
    "not_checkpoint_seq", MISBEHAVIOUR, "a CHECKPOINT for a seq that is not a multiple of K"
)
STALE_CHECKPOINT = _reason(
    "stale_checkpoint", BENIGN, "a CHECKPOINT at or below our h: the sender lags, we answer it"
)
CHECKPOINT_MISMATCH = _reason(
    "checkpoint_mismatch",
    MISBEHAVIOUR,
    "a quorum certified another block hash than ours at a seq: execution diverged, not adopted",
)

# --- view change ---------------------------------------------------------------------------------

STALE_VIEW_CHANGE = _reason(
    "stale_view_change", BENIGN, "a VIEW-CHANGE for a view below ours, or for the one we are in"
)
VIEW_CHANGE_TOO_OFTEN = _reason(
    "view_change_too_often",
    BENIGN,
    "a member's VIEW-CHANGE within half an interval of the last one we checked from it",
)
BAD_VIEW_CHANGE = _reason(
    "bad_view_change", MISBEHAVIOUR, "a VIEW-CHANGE whose proofs do not check"
)
STALE_NEW_VIEW = _reason(
    "stale_new_view", BENIGN, "a NEW-VIEW for a view below ours, or for the one we are in"
)
RATE_LIMITED = _reason(
    "rate_limited",
    BENIGN,
    "a NEW-VIEW for a view we do not wait for, within half an interval of its signer's last",
)
BAD_NEW_VIEW = _reason(
    "bad_new_view",
    MISBEHAVIOUR,
    "a NEW-VIEW that does not recompute from its VIEW-CHANGEs (for ours: evidence, next view)",
)

# --- batches by digest, forwarded transactions ---------------------------------------------------

UNWANTED_BATCH = _reason(
    "unwanted_batch",
    BENIGN,
    "a BATCH we did not ask for (or no longer need), or one forwarded to a non-primary",
)
BAD_BATCH = _reason(
    "bad_batch",
    MISBEHAVIOUR,
    "a BATCH asked for by digest whose contents fail the batch checks",
)
FORWARDED_TOO_MANY = _reason(
    "forwarded_too_many",
    BENIGN,
    "transactions forwarded to us as primary beyond what a member may forward per interval",
)
ANSWERS_OVER_BUDGET = _reason(
    "answers_over_budget",
    BENIGN,
    "a BATCH-REQ or FETCH beyond what its sender may make us send per interval",
)
BATCH_REQUEST_ABANDONED = _reason(
    "batch_request_abandoned",
    BENIGN,
    "our own: a batch asked for by digest too many times, given up until the view changes",
)
BATCH_REQUESTS_FULL = _reason(
    "batch_requests_full",
    BENIGN,
    "our own: a batch not asked for, `window` requests already open",
)

# --- state transfer ------------------------------------------------------------------------------

UNASKED_BLOCKS = _reason(
    "unasked_blocks", BENIGN, "a BLOCKS answer from a member we are not fetching from (late)"
)
BAD_TRANSFER = _reason(
    "bad_transfer",
    MISBEHAVIOUR,
    "a BLOCKS answer with a block or certificate that does not check: we ask another member",
)

# --- the recovery gate ---------------------------------------------------------------------------

STALE_VIEW_REPORT = _reason(
    "stale_view_report",
    BENIGN,
    "a VIEW-REPORT while not recovering, or carrying another start's nonce",
)
QUERY_TOO_OFTEN = _reason(
    "query_too_often",
    BENIGN,
    "a member's VIEW-QUERY within half an interval of the last we answered",
)
REPORT_TOO_OFTEN = _reason(
    "report_too_often",
    BENIGN,
    "a member's VIEW-REPORT within half an interval of the last we checked",
)

# --- transactions submitted here (propose) -------------------------------------------------------

TX_DUPLICATE = _reason(
    "tx_duplicate", BENIGN, "a transaction this member holds, ordered or committed already"
)
POOL_FULL = _reason(
    "pool_full", BENIGN, "a transaction refused: the pool of pending transactions is full"
)
TX_TOO_LARGE = _reason(
    "tx_too_large", BENIGN, "a submitted transaction larger than batch_bytes_max"
)
TX_NEVER_ADMITTED = _reason(
    "tx_never_admitted",
    BENIGN,
    "as primary, a transaction whose key was never admitted here, dropped from a batch",
)
