"""PBFT (Castro & Liskov, OSDI 1999; TOCS 2002) as a sans-IO state machine: no clock, I/O,
threads or randomness; time comes in through tick().

    replica.py     PbftReplica, PbftConfig, RecoveredState: the normal case (§4.2-4.3, §4.6)
    rules.py       the papers' predicates: prepared, committed_local, view_to_join
    reasons.py     why the replica drops what it is given: each reason, benign or misbehaviour
    effects.py     Outbound, CommittedBatch, Ready: what the shell carries out, in order
    messages.py    PRE-PREPARE, PREPARE, COMMIT, CHECKPOINT and their canonical wire form
    log.py         slots in the window (h, h+L], the retransmission tail, early messages
    checkpoint.py  checkpoint votes and stable checkpoints (§4.3)
    pool.py        client transactions waiting to be ordered; the primary's batches
    retransmit.py  recovery from message loss by re-sending own frames
    records.py     what is persisted before it is sent, and reading it back after a restart
"""
