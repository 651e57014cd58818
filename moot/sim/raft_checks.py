"""Invariant checkers for simulated Raft + KV runs (they observe; they inject nothing).

What is checked (Raft paper, Figure 3), after every carried-out ``Output``
of every node, i.e. after every delivered message, tick, client round,
compaction, crash and restart:

(a) **Election safety.** At most one node is ever leader of a given term,
    across the whole run (crashes and restarts included).
(b) **Log matching.** If two logs hold an entry with the same index and
    term, they hold the same entries up to it. Checked incrementally: every
    entry a node appends (``Output.entries``, and every entry a restarted
    node reads back from its disk) is recorded globally under its (index,
    term) together with the term of the entry before it. Two different
    entries, or two different predecessor terms, under one (index, term)
    fail the run. By induction on the index this is the property itself,
    at O(1) per appended entry. ``final`` also compares every pair of logs
    entry by entry, as a cross-check of the incremental rule.
(c) **Leader completeness.** An entry known committed while some node was in
    term T (a node handed it out to apply at term T) is in the log of every
    leader of a term above T: checked for all known committed entries when a
    node is first seen leading a term, and for every current leader when an
    entry first becomes known committed.
(d) **State machine safety.** No two nodes ever apply different entries at
    one index: every entry any node applies is recorded per index for the
    whole run. ``final`` also requires nodes at the same applied index to
    hold byte-identical KV snapshots.

The client-level checks (linearizability, no acknowledged write lost) live in
``raft_scenario`` next to the history they read; this module is Raft only.

Every failure raises ``RaftCheckFailure``; the scenario appends the command
that replays the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import NoReturn, Protocol

from moot.core.raft import Output
from moot.core.raft_messages import Entry
from moot.sim.world import SimulationFailure


class RaftCheckFailure(SimulationFailure):
    """A Raft safety property was broken; the message says which."""


class RaftView(Protocol):
    """What the checkers read from a ``RaftNode``."""

    @property
    def node_id(self) -> str:
        """The node."""
        ...

    @property
    def role(self) -> str:
        """follower, pre_candidate, candidate or leader."""
        ...

    @property
    def term(self) -> int:
        """Current term."""
        ...

    @property
    def first_index(self) -> int:
        """First index not compacted."""
        ...

    @property
    def last_index(self) -> int:
        """Last index held."""
        ...

    def log_term(self, index: int) -> int | None:
        """Term at ``index`` (None if compacted or absent)."""
        ...

    def log_entry(self, index: int) -> Entry:
        """The entry at ``index``."""
        ...


class RaftChecks:
    """Checks (a)-(d) of the module doc over one run."""

    def __init__(self, live_rafts: Callable[[], Iterable[RaftView]]) -> None:
        """``live_rafts`` lists the Raft nodes of the nodes that are up."""
        self._live_rafts = live_rafts
        self.leaders: dict[int, str] = {}  # term -> the one node that led it
        self._appended: dict[tuple[int, int], tuple[Entry, int | None]] = {}  # (index, term) -> entry, prev term
        self.applied: dict[int, Entry] = {}  # index -> the entry applied there
        self._commit_term: dict[int, int] = {}  # index -> lowest term of a node that knew it committed
        self.applied_max = 0
        self.checks_run = 0

    # -- hooks ------------------------------------------------------------------------

    def after_output(self, raft: RaftView, out: Output, global_ms: int) -> None:
        """``raft`` carried out ``out`` (persisted, sent, applied); check (a)-(d)."""
        self.checks_run += 1
        if out.entries:
            self._record_appended(raft, out.entries, global_ms)
        if out.committed_entries:
            self._record_applied(raft, out.committed_entries, global_ms)
        if raft.role == "leader":
            self._check_leader(raft, global_ms)

    def restarted(self, raft: RaftView, stored_entries: Sequence[Entry], global_ms: int) -> None:
        """A node booted from its disk: what it read back must agree with what was appended."""
        if stored_entries:
            self._record_appended(raft, stored_entries, global_ms)

    # -- (a) election safety --------------------------------------------------------------

    def _check_leader(self, raft: RaftView, global_ms: int) -> None:
        known = self.leaders.get(raft.term)
        if known is None:
            self.leaders[raft.term] = raft.node_id
            self._check_complete(raft, self._commit_term.items(), global_ms)
        elif known != raft.node_id:
            self._fail(
                global_ms,
                f"election safety: {known} and {raft.node_id} were both leader of term {raft.term}",
            )

    # -- (b) log matching ------------------------------------------------------------------

    def _record_appended(self, raft: RaftView, entries: Sequence[Entry], global_ms: int) -> None:
        appended = self._appended
        previous_term = raft.log_term(entries[0].index - 1)
        for entry in entries:
            key = (entry.index, entry.term)
            seen = appended.get(key)
            if seen is None:
                appended[key] = (entry, previous_term)
            else:
                seen_entry, seen_previous = seen
                if seen_entry != entry:
                    self._fail(
                        global_ms,
                        f"log matching: {raft.node_id} holds {entry!r} where another log holds "
                        f"{seen_entry!r} (same index and term)",
                    )
                if previous_term is not None and seen_previous is not None and previous_term != seen_previous:
                    self._fail(
                        global_ms,
                        f"log matching: {raft.node_id}'s entry ({entry.index}, {entry.term}) follows term "
                        f"{previous_term}, another log's follows term {seen_previous}",
                    )
                if seen_previous is None and previous_term is not None:
                    appended[key] = (seen_entry, previous_term)
            previous_term = entry.term

    def check_logs_pairwise(self, rafts: Sequence[RaftView], global_ms: int) -> None:
        """(b) the slow way: every pair of logs agrees below their highest common (index, term)."""
        for position, first in enumerate(rafts):
            for second in rafts[position + 1 :]:
                low = max(first.first_index, second.first_index)
                high = min(first.last_index, second.last_index)
                top = 0
                for index in range(high, low - 1, -1):
                    if first.log_term(index) == second.log_term(index):
                        top = index
                        break
                for index in range(low, top + 1):
                    if first.log_entry(index) != second.log_entry(index):
                        self._fail(
                            global_ms,
                            f"log matching: {first.node_id} and {second.node_id} agree at {top} but "
                            f"differ at {index}",
                        )

    # -- (c) leader completeness -----------------------------------------------------------

    def _check_complete(self, leader: RaftView, committed: Iterable[tuple[int, int]], global_ms: int) -> None:
        first = leader.first_index
        for index, commit_term in committed:
            if commit_term >= leader.term or index < first:
                continue  # not yet required, or compacted into the leader's snapshot (so applied: (d))
            expected = self.applied[index]
            if leader.log_term(index) != expected.term or leader.log_entry(index) != expected:
                self._fail(
                    global_ms,
                    f"leader completeness: {leader.node_id}, leader of term {leader.term}, lacks entry "
                    f"{index} (term {expected.term}) known committed in term {commit_term}",
                )

    # -- (d) state machine safety ----------------------------------------------------------

    def _record_applied(self, raft: RaftView, entries: Sequence[Entry], global_ms: int) -> None:
        applied = self.applied
        commit_term = self._commit_term
        new: list[tuple[int, int]] = []
        for entry in entries:
            seen = applied.get(entry.index)
            if seen is None:
                applied[entry.index] = entry
                commit_term[entry.index] = raft.term
                new.append((entry.index, raft.term))
                self.applied_max = max(self.applied_max, entry.index)
            elif seen != entry:
                self._fail(
                    global_ms,
                    f"state machine safety: {raft.node_id} applies {entry!r} at {entry.index}, another "
                    f"node applied {seen!r}",
                )
            elif raft.term < commit_term[entry.index]:
                commit_term[entry.index] = raft.term
                new.append((entry.index, raft.term))
        if new:
            for leader in self._live_rafts():
                if leader.role == "leader":
                    self._check_complete(leader, new, global_ms)

    def check_states_agree(self, states: Sequence[tuple[str, int, bytes]], global_ms: int) -> None:
        """(d) at the end: nodes at one applied index hold identical state images."""
        by_index: dict[int, tuple[str, bytes]] = {}
        for node_id, applied_index, image in states:
            seen = by_index.setdefault(applied_index, (node_id, image))
            if seen[1] != image:
                self._fail(
                    global_ms,
                    f"state machine safety: {seen[0]} and {node_id} both applied through {applied_index} "
                    "but their KV snapshots differ",
                )

    def _fail(self, global_ms: int, message: str) -> NoReturn:
        raise RaftCheckFailure(f"at {global_ms} ms: {message}")


__all__ = ["RaftCheckFailure", "RaftChecks", "RaftView"]
