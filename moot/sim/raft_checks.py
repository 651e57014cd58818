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

(e) **Configuration safety** (dissertation 4.1, single-server changes):

    - *Single-server rule.* The committed configurations, replayed from the
      conf-change entries as they are first applied (starting from the
      bootstrap configuration), form one sequence in which each change is
      valid (add a non-member as learner, promote a learner, remove a
      member, never the last voter) and changes the voter set by at most
      one server.
    - *In force only once committed.* After every output, a node's
      configuration is the committed one at some index between what it
      handed out to apply and its commit index: never a configuration of an
      uncommitted entry, never one older than what it applied. Two nodes,
      leaders of one term or not, thus only ever disagree by where they are
      in the one committed sequence. (The literal "two leaders of a term
      hold equal configurations" is implied by (a): a term has one leader.)
    - *One change at a time.* A leader appends a conf change only once it
      has applied an entry of its own term (its no-op) and every earlier
      conf change in its log; and a leader is always a voter of its own
      configuration.

    After the heal the scenario also requires every live member to hold the
    leader's configuration (``check_members_agree``).

The client-level checks (linearizability, no acknowledged write lost) live in
``raft_scenario`` next to the history they read; this module is Raft only.

Every failure raises ``RaftCheckFailure``; the scenario appends the command
that replays the run.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from typing import NoReturn, Protocol

from moot.core.raft import Output
from moot.core.raft_messages import ConfChange, ConfState, Entry, decode_conf_change
from moot.sim.world import SimulationFailure

EMPTY_CONF = ConfState(())  # no voters, no learners: before a log-bootstrapped group's index 1


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

    @property
    def voters(self) -> tuple[str, ...]:
        """Voters of the configuration in force, sorted."""
        ...

    @property
    def learners(self) -> tuple[str, ...]:
        """Learners of the configuration in force, sorted."""
        ...

    @property
    def commit_index(self) -> int:
        """Highest index known committed."""
        ...

    @property
    def applied_index(self) -> int:
        """Highest index applied (acknowledged with ``advance``)."""
        ...


class RaftChecks:
    """Checks (a)-(e) of the module doc over one run."""

    def __init__(
        self, live_rafts: Callable[[], Iterable[RaftView]], *, bootstrap_conf: ConfState = EMPTY_CONF
    ) -> None:
        """``live_rafts`` lists the Raft nodes of the nodes that are up;
        ``bootstrap_conf`` is the configuration before log index 1 (what the
        nodes were built with; empty when the log bootstraps it)."""
        self._live_rafts = live_rafts
        # (e): the committed configurations in index order; index 0 is the bootstrap.
        self._conf_indexes: list[int] = [0]
        self._confs: list[ConfState] = [bootstrap_conf]
        self.conf_changes: dict[str, int] = {"add_learner": 0, "promote": 0, "remove": 0}
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
            if out.entries:
                self._check_conf_appends(raft, out.entries, global_ms)
        self._check_conf_in_force(raft, out, global_ms)

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
                if entry.kind == "conf_change":
                    self._record_conf_change(raft, entry, global_ms)
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

    # -- (e) configuration safety --------------------------------------------------------

    @property
    def committed_confs(self) -> list[tuple[int, ConfState]]:
        """The committed configurations so far, (index of the change, configuration)."""
        return list(zip(self._conf_indexes, self._confs, strict=True))

    def _record_conf_change(self, raft: RaftView, entry: Entry, global_ms: int) -> None:
        """A conf change applied for the first time: extend the committed sequence."""
        if entry.index <= self._conf_indexes[-1]:
            self._fail(
                global_ms,
                f"configuration safety: conf change at {entry.index} first applied (by {raft.node_id}) after "
                f"the one at {self._conf_indexes[-1]}",
            )
        change = decode_conf_change(entry.data)
        before = self._confs[-1]
        problem = _invalid_change(before, change)
        if problem:
            self._fail(
                global_ms,
                f"configuration safety: committed conf change {change.kind} {change.node_id} at {entry.index} "
                f"is invalid in {before!r}: {problem}",
            )
        after = apply_conf_change(before, change)
        changed = set(before.voters) ^ set(after.voters)
        # Holds by construction of apply_conf_change; kept as the property's statement.
        assert len(changed) <= 1, f"single-server rule: {before!r} -> {after!r}"
        self._conf_indexes.append(entry.index)
        self._confs.append(after)
        self.conf_changes[change.kind] += 1

    def _committed_conf_at(self, index: int) -> ConfState:
        return self._confs[bisect.bisect_right(self._conf_indexes, index) - 1]

    def _check_conf_in_force(self, raft: RaftView, out: Output, global_ms: int) -> None:
        """(e) the node's configuration is the committed one at an index in [handed out, commit]."""
        handed = out.committed_entries[-1].index if out.committed_entries else raft.applied_index
        commit = raft.commit_index
        voters, learners = raft.voters, raft.learners
        position = bisect.bisect_right(self._conf_indexes, handed) - 1
        conf = self._confs[position]
        if conf.voters == voters and conf.learners == learners:
            return
        for at, conf in zip(self._conf_indexes[position + 1 :], self._confs[position + 1 :], strict=True):
            if at > commit:
                break
            if conf.voters == voters and conf.learners == learners:
                return
        # Conf changes committed at the node (below its commit index) but applied nowhere yet.
        conf = self._confs[-1]
        for index in range(max(self.applied_max, handed) + 1, commit + 1):
            entry = raft.log_entry(index)
            if entry.kind == "conf_change":
                conf = apply_conf_change(conf, decode_conf_change(entry.data))
                if conf.voters == voters and conf.learners == learners:
                    return
        self._fail(
            global_ms,
            f"configuration safety: {raft.node_id} (applied {handed}, commit {commit}) has voters {voters} "
            f"learners {learners}, which is no committed configuration between those indexes "
            f"(committed at {handed}: {self._committed_conf_at(handed)!r})",
        )

    def _check_conf_appends(self, leader: RaftView, entries: Sequence[Entry], global_ms: int) -> None:
        """(e) one change at a time, and only after the leader's no-op applied; a leader is a voter."""
        if leader.node_id not in leader.voters:
            self._fail(global_ms, f"configuration safety: {leader.node_id} leads term {leader.term} but is not a voter")
        applied = leader.applied_index
        for entry in entries:
            if entry.kind != "conf_change" or entry.term != leader.term:
                continue
            applied_term = leader.log_term(applied)
            if applied_term is not None and applied_term != leader.term:
                self._fail(
                    global_ms,
                    f"configuration safety: {leader.node_id} appends a conf change at {entry.index} in term "
                    f"{leader.term} before applying an entry of its term (applied {applied}, of term {applied_term})",
                )
            for index in range(max(applied, leader.first_index) + 1, entry.index):
                if leader.log_entry(index).kind == "conf_change":
                    self._fail(
                        global_ms,
                        f"configuration safety: {leader.node_id} appends a conf change at {entry.index} while the "
                        f"one at {index} is not applied (applied {applied}): two changes at once",
                    )

    def check_members_agree(self, rafts: Sequence[RaftView], global_ms: int) -> None:
        """After the heal: every live member of the leader's configuration holds that configuration."""
        leaders = [raft for raft in rafts if raft.role == "leader"]
        if len(leaders) != 1:
            self._fail(global_ms, f"configuration: {len(leaders)} leaders among the live nodes at the end")
        leader = leaders[0]
        members = set(leader.voters) | set(leader.learners)
        for raft in rafts:
            if raft.node_id in members and (raft.voters, raft.learners) != (leader.voters, leader.learners):
                self._fail(
                    global_ms,
                    f"configuration: {raft.node_id} holds voters {raft.voters} learners {raft.learners}, the "
                    f"leader {leader.node_id} voters {leader.voters} learners {leader.learners}",
                )

    def _fail(self, global_ms: int, message: str) -> NoReturn:
        raise RaftCheckFailure(f"at {global_ms} ms: {message}")


def apply_conf_change(conf: ConfState, change: ConfChange) -> ConfState:
    """``conf`` after ``change`` (as ``RaftNode`` applies it)."""
    voters = set(conf.voters)
    learners = set(conf.learners)
    if change.kind == "add_learner":
        learners.add(change.node_id)
    elif change.kind == "promote":
        learners.discard(change.node_id)
        voters.add(change.node_id)
    else:
        voters.discard(change.node_id)
        learners.discard(change.node_id)
    return ConfState(tuple(sorted(voters)), tuple(sorted(learners)))


def _invalid_change(conf: ConfState, change: ConfChange) -> str:
    """Why ``change`` may not be applied to ``conf`` ("" if it may)."""
    member = change.node_id in conf.voters or change.node_id in conf.learners
    if change.kind == "add_learner" and member:
        return "already a member"
    if change.kind == "promote" and change.node_id not in conf.learners:
        return "not a learner"
    if change.kind == "remove" and not member:
        return "not a member"
    if change.kind == "remove" and conf.voters == (change.node_id,):
        return "removes the last voter"
    return ""


__all__ = ["RaftCheckFailure", "RaftChecks", "RaftView", "apply_conf_change"]
