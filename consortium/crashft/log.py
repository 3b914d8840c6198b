"""The Raft log in memory: entries after the last compaction point (snapshot), indexed from 1.

Entries at or below `snap_index` are compacted: their effect is in the ledger, and only the
(index, term) of the last one is kept, for the AppendEntries consistency check (Raft §7).
"""

from __future__ import annotations

from consortium.crashft.messages import Entry


class RaftLog:
    def __init__(self, snap_index: int = 0, snap_term: int = 0) -> None:
        self.snap_index = snap_index
        self.snap_term = snap_term
        self._entries: list[Entry] = []

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def first_index(self) -> int:
        return self.snap_index + 1

    @property
    def last_index(self) -> int:
        return self.snap_index + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self.snap_term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at `index`; None when compacted away or not in the log."""
        if index == self.snap_index:
            return self.snap_term
        if self.snap_index < index <= self.last_index:
            return self._entries[index - self.snap_index - 1].term
        return None

    def entry(self, index: int) -> Entry:
        assert self.snap_index < index <= self.last_index, (index, self.snap_index)
        return self._entries[index - self.snap_index - 1]

    def slice(self, lo: int, hi: int, bytes_max: int, count_max: int) -> list[Entry]:
        """Entries lo..hi (inclusive), at least one if any, at most bytes_max / count_max."""
        assert lo > self.snap_index
        out: list[Entry] = []
        size = 0
        for index in range(lo, min(hi, self.last_index) + 1):
            e = self._entries[index - self.snap_index - 1]
            if out and (size + e.size > bytes_max or len(out) >= count_max):
                break
            out.append(e)
            size += e.size
        return out

    def append(self, entry: Entry) -> None:
        assert entry.index == self.last_index + 1, (entry.index, self.last_index)
        self._entries.append(entry)

    def merge(self, prev_index: int, entries: tuple[Entry, ...]) -> int | None:
        """Append `entries` after prev_index (which the caller checked matches), truncating a
        conflicting suffix (Raft §5.3). Returns the lowest index whose content changed, or None
        when everything was already there."""
        changed: int | None = None
        for e in entries:
            if e.index <= self.snap_index:
                continue  # compacted, hence committed, hence identical
            existing = self.term_at(e.index)
            if existing == e.term:
                continue
            if existing is not None:
                self.truncate_from(e.index)
            self.append(e)
            if changed is None:
                changed = e.index
        return changed

    def truncate_from(self, index: int) -> None:
        assert index > self.snap_index
        del self._entries[index - self.snap_index - 1 :]

    def compact_to(self, index: int) -> None:
        assert self.snap_index <= index <= self.last_index
        term = self.term_at(index)
        assert term is not None
        del self._entries[: index - self.snap_index]
        self.snap_index, self.snap_term = index, term

    def restore(self, index: int, term: int) -> None:
        """Drop every entry and start after (index, term)."""
        self._entries.clear()
        self.snap_index, self.snap_term = index, term
