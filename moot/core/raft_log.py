"""The Raft log held in memory, with stable/unstable and commit bookkeeping.

Positions (etcd's raftLog, simplified to one list):

    snapshot.index < first_index <= ... <= stable_index <= ... <= last_index

- Entries at or below ``snapshot_index`` are compacted into the snapshot;
  only its (index, term) stay known.
- ``stable_index``: entries up to here are on stable storage. Entries above
  it are *unstable*: the next Output asks the caller to persist them. When a
  follower overwrites a conflicting suffix, ``stable_index`` drops to just
  before the conflict, so storage is told to replace from there.
- ``committed``: known committed (never decreases, never above last_index).
- ``applied``: handed to the state machine and acknowledged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moot.core.raft_messages import Entry, Snapshot, SnapshotMeta

if TYPE_CHECKING:
    from collections.abc import Sequence


class RaftLog:
    """One node's log (see module doc)."""

    def __init__(self, snapshot: SnapshotMeta | None, entries: Sequence[Entry], committed: int) -> None:
        """Restore from storage: the snapshot metadata and the entries after it."""
        self.snapshot_index = snapshot.index if snapshot else 0
        self.snapshot_term = snapshot.term if snapshot else 0
        self._entries: list[Entry] = list(entries)
        for offset, entry in enumerate(self._entries):
            assert entry.index == self.snapshot_index + 1 + offset, "stored log has a gap"
            if offset:
                assert entry.term >= self._entries[offset - 1].term, "stored log terms go backwards"
        self.stable_index = self.last_index()
        self.committed = max(committed, self.snapshot_index)
        assert self.committed <= self.last_index(), "stored commit index beyond the stored log"
        self.applied = self.snapshot_index

    # -- positions ----------------------------------------------------------------

    def first_index(self) -> int:
        """Index of the first entry still held (snapshot_index + 1)."""
        return self.snapshot_index + 1

    def last_index(self) -> int:
        """Index of the last entry (the snapshot index when empty)."""
        return self.snapshot_index + len(self._entries)

    def last_term(self) -> int:
        """Term of the last entry (or of the snapshot)."""
        return self._entries[-1].term if self._entries else self.snapshot_term

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``; None if compacted away or beyond the end."""
        if index == self.snapshot_index:
            return self.snapshot_term
        if index < self.snapshot_index or index > self.last_index():
            return None
        return self._entries[index - self.snapshot_index - 1].term

    def entry(self, index: int) -> Entry:
        """The entry at ``index``, which must be held."""
        assert self.first_index() <= index <= self.last_index()
        found = self._entries[index - self.snapshot_index - 1]
        assert found.index == index
        return found

    def matches(self, index: int, term: int) -> bool:
        """True if our entry at ``index`` has ``term``."""
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft 5.4.1: is a log ending at (last_index, last_term) at least as
        up to date as ours?"""
        if last_term != self.last_term():
            return last_term > self.last_term()
        return last_index >= self.last_index()

    # -- reading ------------------------------------------------------------------

    def slice(self, low: int, high: int, *, count_max: int, bytes_max: int) -> list[Entry]:
        """Entries [low, high), at most ``count_max`` and about ``bytes_max``
        bytes, but always at least one if the range is not empty."""
        assert self.first_index() <= low
        assert high <= self.last_index() + 1
        result: list[Entry] = []
        size = 0
        for index in range(low, min(high, low + count_max)):
            entry = self.entry(index)
            size += len(entry.data)
            if result and size > bytes_max:
                break
            result.append(entry)
        return result

    def unstable_entries(self) -> list[Entry]:
        """Entries the caller has not yet persisted."""
        assert self.stable_index >= self.snapshot_index
        return self._entries[self.stable_index - self.snapshot_index :]

    def bytes_after(self, above: int) -> int:
        """Bytes of entry data above index ``above`` (uncommitted back-pressure)."""
        start = max(above, self.snapshot_index) - self.snapshot_index
        return sum(len(entry.data) for entry in self._entries[start:])

    # -- writing ------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Leader path: append new entries right after the last one."""
        for entry in entries:
            assert entry.index == self.last_index() + 1
            assert entry.term >= self.last_term()
            self._entries.append(entry)

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry that is new or disagrees with ours; 0 if none."""
        for entry in entries:
            if not self.matches(entry.index, entry.term):
                if entry.index <= self.snapshot_index:
                    continue  # compacted, hence committed, hence equal (Log Matching)
                return entry.index
        return 0

    def try_append(self, prev_index: int, prev_term: int, entries: Sequence[Entry]) -> int | None:
        """Follower path: if our log holds (prev_index, prev_term), append
        ``entries`` truncating any conflicting suffix and return the last
        index now known to match the leader; None if it does not match."""
        if prev_index < self.snapshot_index:
            # Already compacted: committed, so it matches; skip the covered part.
            entries = [entry for entry in entries if entry.index > self.snapshot_index]
            prev_index, prev_term = self.snapshot_index, self.snapshot_term
            if entries and entries[0].index != prev_index + 1:
                return None
        if not self.matches(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            assert conflict > self.committed, "a committed entry conflicts with the leader's log"
            del self._entries[conflict - self.snapshot_index - 1 :]
            self.stable_index = min(self.stable_index, conflict - 1)
            self.append([entry for entry in entries if entry.index >= conflict])
        assert self.last_index() >= last_new
        return last_new

    def hint_for(self, index: int, term: int) -> tuple[int, int]:
        """Fast backtracking: the largest (i, term(i)) with i <= index and
        term(i) <= term, a position at which the leader is likely to match
        (etcd's findConflictByTerm)."""
        index = min(index, self.last_index())
        while index > self.snapshot_index:
            found = self.term(index)
            assert found is not None
            if found <= term:
                return index, found
            index -= 1
        return self.snapshot_index, self.snapshot_term

    def commit_to(self, index: int) -> bool:
        """Raise the commit index to ``index`` if higher; True if it moved."""
        if index <= self.committed:
            return False
        assert index <= self.last_index(), "commit beyond the last index"
        self.committed = index
        return True

    def stable_to(self, index: int) -> None:
        """The caller persisted entries through ``index``."""
        assert index <= self.last_index()
        self.stable_index = max(self.stable_index, index)

    def applied_to(self, index: int) -> None:
        """The caller applied entries through ``index``."""
        assert self.applied <= index <= self.committed
        self.applied = index

    def compact(self, index: int) -> None:
        """Drop entries through ``index`` (already applied and snapshotted)."""
        assert self.snapshot_index < index <= self.applied
        term = self.term(index)
        assert term is not None
        del self._entries[: index - self.snapshot_index]
        self.snapshot_index, self.snapshot_term = index, term
        assert self.first_index() == index + 1

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log with ``snapshot`` (a follower behind it)."""
        meta = snapshot.meta
        assert meta.index > self.committed, "a snapshot must move the commit index"
        if self.matches(meta.index, meta.term):
            # Keep the matching suffix beyond the snapshot, as the paper says.
            del self._entries[: meta.index - self.snapshot_index]
        else:
            self._entries.clear()
        self.snapshot_index, self.snapshot_term = meta.index, meta.term
        self.committed = meta.index
        self.applied = meta.index
        self.stable_index = max(self.snapshot_index, min(self.stable_index, self.last_index()))
