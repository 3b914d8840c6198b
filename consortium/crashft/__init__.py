"""Raft for crash faults (Ongaro & Ousterhout, USENIX ATC 2014; Ongaro's thesis, 2014) as a
sans-IO state machine: no clock, I/O, threads or randomness; time comes in through tick().

    node.py        RaftNode, RaftConfig, RecoveredState, Ready: the whole core
    rules.py       the papers' rules: log_up_to_date, entry_matches, commit_index (Figure 8)
    reasons.py     why the node drops what it is given: each reason, benign or misbehaviour
    log.py         the log in memory, after the compaction point
    messages.py    the messages, log entries and their canonical wire form
    transfer.py    snapshot install, the shell's half: serving and checking blocks
"""
