"""Invariant checkers for simulated membership runs (they observe; they inject nothing).

What is checked, precisely (times are global simulated milliseconds):

(a) **Detection.** When member X *crashes* (not a graceful leave) at time
    ``t``, an obligation is created for every observer O that is up at ``t``
    and has X as alive or suspect in its view. O must declare X dead (or
    left) by ``t + B``, where ``B`` is ``config.detection_bound_ms(n)`` for
    the run's ``n`` nodes, stretched by the slowest clock drift allowed.
    The obligation for O is void, and not checked, if before O declares:
    O itself goes down; X restarts (a restarted X is not dead); a partition
    rule drops messages from O to X or from X to O; or the network's loss
    probability rises above ``detection_loss_max``.
(b) **No false positives.** A member O accusing X (suspect, dead or left) at
    an incarnation of X's *current* life while X is up is a false positive.
    (X's current life is every incarnation above the one X had when it last
    went down; lower ones may be about its previous life.) While the run is
    *clean* — no loss, no partition and no clock step has happened yet;
    jitter, duplication, clock drift, crashes and restarts are allowed — a
    false positive fails the run. After that they are only counted.
(c) **Convergence.** Once armed with a deadline (after the join; after the
    liveness phase healed every fault), every up observer must, at one
    moment before the deadline, see every other up member as alive at the
    member's current incarnation, and every down member as dead, left or
    forgotten. The alive sets are tracked from events in O(1) per event; the
    incarnations, and that the events agree with ``members()``, are checked
    on snapshots for runs of at most ``SNAPSHOT_NODES_MAX`` nodes.
(d) **Determinism** is checked by running a seed twice and comparing
    ``World.trace_hash`` (tests and the CLI test do this).

Every failure raises ``CheckFailure`` whose message ends with the command
that replays the run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, NoReturn, Protocol

from moot.sim.clock import PPM
from moot.sim.network import Network
from moot.sim.world import SimulationFailure

ALIVE: Final = 0
SUSPECT: Final = 1
DEAD: Final = 2
LEFT: Final = 3
STATE_NAMES: Final = ("alive", "suspect", "dead", "left")
STATE_OF_KIND: Final = {"joined": ALIVE, "alive": ALIVE, "updated": ALIVE, "suspect": SUSPECT, "dead": DEAD, "left": LEFT}
STATE_OF_NAME: Final = {"alive": ALIVE, "suspect": SUSPECT, "dead": DEAD, "left": LEFT}

# Above this many nodes, convergence is judged from events alone: a
# members() snapshot of every node costs O(n^2) per check.
SNAPSHOT_NODES_MAX: Final = 200

# How many mismatches a convergence failure lists.
MISMATCHES_REPORTED_MAX: Final = 12


class CheckFailure(SimulationFailure):
    """An invariant was broken; the message says which and how to replay it."""


class MemberViewLike(Protocol):
    """What the checkers read from ``Membership.members()``."""

    @property
    def node_id(self) -> str:
        """The member."""
        ...

    @property
    def state(self) -> str:
        """alive, suspect, dead or left."""
        ...

    @property
    def incarnation(self) -> int:
        """Its incarnation as this view has it."""
        ...


class MemberEventLike(Protocol):
    """What the checkers read from a ``MemberEvent``."""

    @property
    def kind(self) -> str:
        """joined, alive, suspect, dead, left or updated."""
        ...

    @property
    def node_id(self) -> str:
        """The member the event is about."""
        ...

    @property
    def incarnation(self) -> int:
        """Its incarnation in the event."""
        ...


# -- view tracking ----------------------------------------------------------------------


class ViewTracker:
    """Every up observer's view of every member, from events, with a running mismatch count.

    ``mismatches`` counts pairs (up observer O, member S != O) where O's view
    disagrees with reality: S is up but O does not have it alive, or S is
    down but O has it alive or suspect. Zero means the alive sets agree.

    An observer may start *based*: from the bootstrapped membership in which
    every node is alive (``Membership``'s ``shared_members``). Its view is
    then "alive" for every member it has no event about, without storing
    n entries per observer.

    Cost: each event O(1); a start O(1); a stop O(size of the stopped view).
    """

    def __init__(self, node_ids: Sequence[str]) -> None:
        self.node_ids = list(node_ids)
        self.index_of = {node_id: index for index, node_id in enumerate(node_ids)}
        assert len(self.index_of) == len(node_ids), "node ids must be distinct"
        count = len(node_ids)
        self.up = [False] * count
        self.up_count = 0
        self.based = [False] * count
        self.based_up_count = 0
        # Explicit (event-made) entries only; the base is implicit.
        self.views: list[dict[int, int]] = [{} for _ in range(count)]
        # counts[s][state]: explicit entries for s among up observers.
        self.counts: list[list[int]] = [[0, 0, 0, 0] for _ in range(count)]
        # explicit_based[s]: up based observers with an explicit entry for s.
        self.explicit_based = [0] * count
        self.mismatches = 0

    def _bad(self, subject: int, state: int | None) -> bool:
        if self.up[subject]:
            return state != ALIVE
        return state is not None and state <= SUSPECT

    def _alive_count(self, subject: int) -> int:
        # Up observers (other than subject) with subject alive: explicit plus implicit.
        self_based = 1 if self.up[subject] and self.based[subject] else 0
        implicit = self.based_up_count - self_based - self.explicit_based[subject]
        assert implicit >= 0
        return self.counts[subject][ALIVE] + implicit

    def _subject_mismatches(self, subject: int) -> int:
        if self.up[subject]:
            return (self.up_count - 1) - self._alive_count(subject)
        return self._alive_count(subject) + self.counts[subject][SUSPECT]

    def started(self, index: int, *, based: bool = False) -> None:
        """``index`` is up with a fresh view: empty, or the bootstrapped one (``based``)."""
        assert not self.up[index]
        assert not self.views[index]
        before = self._subject_mismatches(index)
        others_up = self.up_count
        others_down = len(self.up) - 1 - others_up
        # As an observer: based, it wrongly has every down member alive;
        # empty, it is missing every up member.
        contributed = others_down if based else others_up
        self.up[index] = True
        self.up_count += 1
        self.based[index] = based
        if based:
            self.based_up_count += 1
        after = self._subject_mismatches(index)
        self.mismatches += contributed + after - before
        assert self.mismatches >= 0

    def stopped(self, index: int) -> None:
        """``index`` went down; its view is gone."""
        assert self.up[index]
        based = self.based[index]
        contributed = 0
        explicit_up = 0
        for subject, state in self.views[index].items():
            contributed += self._bad(subject, state)
            explicit_up += self.up[subject]
            self.counts[subject][state] -= 1
            if based:
                self.explicit_based[subject] -= 1
        explicit_down = len(self.views[index]) - explicit_up
        if based:
            contributed += (len(self.up) - self.up_count) - explicit_down  # implicit alive, but down
        else:
            contributed += (self.up_count - 1) - explicit_up  # up members it never heard of
        self.mismatches -= contributed
        self.views[index] = {}
        if based:
            self.based_up_count -= 1
            self.based[index] = False
        before = self._subject_mismatches(index)
        self.up[index] = False
        self.up_count -= 1
        after = self._subject_mismatches(index)
        self.mismatches += after - before
        assert self.mismatches >= 0

    def observed(self, observer: int, subject: int, state: int) -> None:
        """``observer`` now has ``subject`` in ``state``."""
        if subject == observer or not self.up[observer]:
            return
        view = self.views[observer]
        explicit = view.get(subject)
        old = explicit if explicit is not None else (ALIVE if self.based[observer] else None)
        if old == state:
            return
        counts = self.counts[subject]
        if explicit is not None:
            counts[explicit] -= 1
        elif self.based[observer]:
            self.explicit_based[subject] += 1
        counts[state] += 1
        view[subject] = state
        self.mismatches += self._bad(subject, state) - self._bad(subject, old)

    def state(self, observer: int, subject: int) -> int | None:
        """``observer``'s view of ``subject`` (None: never heard of it)."""
        explicit = self.views[observer].get(subject)
        if explicit is None and self.based[observer] and subject != observer:
            return ALIVE
        return explicit

    def list_mismatches(self, limit: int) -> list[str]:
        """Up to ``limit`` mismatches, described."""
        found: list[str] = []
        for observer, observer_up in enumerate(self.up):
            if not observer_up:
                continue
            for subject in range(len(self.up)):
                if subject == observer:
                    continue
                state = self.state(observer, subject)
                if self._bad(subject, state):
                    seen = "nothing" if state is None else STATE_NAMES[state]
                    actual = "up" if self.up[subject] else "down"
                    found.append(f"{self.node_ids[observer]} sees {self.node_ids[subject]} as {seen} ({actual})")
                    if len(found) >= limit:
                        return found
        return found


# -- (a) detection -------------------------------------------------------------------------


@dataclass(slots=True)
class _Obligation:
    subject: int
    crashed_ms: int
    deadline_ms: int
    pending: dict[int, None]
    observers_total: int
    last_declared_ms: int | None = None


@dataclass(slots=True)
class DetectionStats:
    """How detection went across the run."""

    crashes_checked: int = 0
    crashes_voided: int = 0
    observers_voided: int = 0
    undetermined: int = 0
    time_to_all_know_ms: list[int] = field(default_factory=list)


class DetectionChecker:
    """Check (a): crashed members are declared dead by every eligible observer within the bound."""

    def __init__(
        self,
        tracker: ViewTracker,
        addresses: Sequence[str],
        bound_ms: int,
        loss_max: float,
        fail: Callable[[str], NoReturn],
    ) -> None:
        assert bound_ms > 0
        self.tracker = tracker
        self.addresses = list(addresses)
        self.bound_ms = bound_ms
        self.loss_max = loss_max
        self._fail = fail
        self.active: dict[int, _Obligation] = {}
        self.stats = DetectionStats()

    def crashed(self, subject: int, now_ms: int, network: Network) -> int | None:
        """``subject`` crashed: open its obligation; returns the deadline to check it at."""
        tracker = self.tracker
        observers: dict[int, None] = {}
        for observer, observer_up in enumerate(tracker.up):
            state = tracker.state(observer, subject) if observer_up and observer != subject else None
            if state is not None and state <= SUSPECT:
                observers[observer] = None
        if not observers:
            return None
        obligation = _Obligation(subject, now_ms, now_ms + self.bound_ms, observers, len(observers))
        self.active[subject] = obligation
        self.stats.crashes_checked += 1
        self.network_changed(network)
        return obligation.deadline_ms

    def declared(self, observer: int, subject: int, now_ms: int) -> None:
        """``observer`` declared ``subject`` dead or left."""
        obligation = self.active.get(subject)
        if obligation is None or observer not in obligation.pending:
            return
        del obligation.pending[observer]
        obligation.last_declared_ms = now_ms
        self._maybe_done(obligation)

    def observer_down(self, observer: int) -> None:
        """``observer`` went down: it owes nothing any more."""
        for obligation in list(self.active.values()):
            if observer in obligation.pending:
                del obligation.pending[observer]
                self.stats.observers_voided += 1
                self._maybe_done(obligation)

    def subject_up(self, subject: int) -> None:
        """``subject`` restarted: its crash no longer needs detecting."""
        obligation = self.active.pop(subject, None)
        if obligation is not None:
            self.stats.crashes_voided += 1

    def network_changed(self, network: Network) -> None:
        """Void what the new network conditions excuse (see module doc)."""
        if network.loss_probability > self.loss_max:
            self.stats.crashes_voided += len(self.active)
            self.active.clear()
            return
        if not network.partitioned:
            return
        for obligation in list(self.active.values()):
            subject_address = self.addresses[obligation.subject]
            for observer in list(obligation.pending):
                observer_address = self.addresses[observer]
                if network.is_blocked(observer_address, subject_address) or network.is_blocked(
                    subject_address, observer_address
                ):
                    del obligation.pending[observer]
                    self.stats.observers_voided += 1
            self._maybe_done(obligation)

    def _maybe_done(self, obligation: _Obligation) -> None:
        if obligation.pending:
            return
        del self.active[obligation.subject]
        if obligation.last_declared_ms is not None:
            self.stats.time_to_all_know_ms.append(obligation.last_declared_ms - obligation.crashed_ms)

    def due(self, subject: int, crashed_ms: int, now_ms: int) -> None:
        """The deadline of ``subject``'s crash at ``crashed_ms`` passed: fail if someone still owes."""
        obligation = self.active.get(subject)
        if obligation is None or obligation.crashed_ms != crashed_ms or not obligation.pending:
            return
        names = ", ".join(self.tracker.node_ids[o] for o in obligation.pending)
        self._fail(
            f"check (a) detection: {self.tracker.node_ids[subject]} crashed at {crashed_ms} ms and by "
            f"{now_ms} ms (bound {self.bound_ms} ms) these members had not declared it dead: {names}"
        )

    def finish(self) -> None:
        """End of run: obligations still open with their deadline ahead are undetermined."""
        self.stats.undetermined += len(self.active)


# -- (b) false positives --------------------------------------------------------------------


@dataclass(slots=True)
class FalsePositive:
    """One wrong accusation."""

    at_ms: int
    observer: str
    subject: str
    kind: str
    incarnation: int


class FalsePositiveChecker:
    """Check (b): nobody accuses a member that is up, while the run is clean."""

    def __init__(self, tracker: ViewTracker, *, clean: bool, fail: Callable[[str], NoReturn]) -> None:
        self.tracker = tracker
        self.clean = clean
        self._fail = fail
        count = len(tracker.up)
        self.incarnation_when_down = [-1] * count
        self.false_positives: list[FalsePositive] = []

    def went_down(self, subject: int, incarnation: int) -> None:
        """``subject`` went down at ``incarnation``: accusations up to it may be about that life."""
        self.incarnation_when_down[subject] = max(self.incarnation_when_down[subject], incarnation)

    def dirty(self) -> None:
        """Loss, a partition or a clock step happened: from now on only count."""
        self.clean = False

    def accused(self, observer: int, subject: int, kind: str, incarnation: int, now_ms: int) -> None:
        """``observer`` emitted a suspect, dead or left event about ``subject``."""
        if not self.tracker.up[subject] or incarnation <= self.incarnation_when_down[subject]:
            return
        names = self.tracker.node_ids
        record = FalsePositive(now_ms, names[observer], names[subject], kind, incarnation)
        self.false_positives.append(record)
        if self.clean:
            self._fail(
                f"check (b) false positive in a clean run: at {now_ms} ms {record.observer} marked "
                f"{record.subject} {kind} at incarnation {incarnation} while it is up"
            )


# -- (c) convergence -----------------------------------------------------------------------------


class ConvergenceChecker:
    """Check (c): every up member's view agrees (alive set and incarnations) before a deadline."""

    def __init__(
        self,
        tracker: ViewTracker,
        *,
        snapshot: Callable[[int], Sequence[MemberViewLike]] | None,
        incarnation_of: Callable[[int], int],
        fail: Callable[[str], NoReturn],
    ) -> None:
        self.tracker = tracker
        self._snapshot = snapshot
        self._incarnation_of = incarnation_of
        self._fail = fail
        self.phase: str | None = None
        self.armed_ms = 0
        self.deadline_ms = 0
        self.converged_ms: dict[str, int] = {}

    def arm(self, phase: str, now_ms: int, deadline_ms: int) -> None:
        """From now, ``phase`` must converge by ``deadline_ms``."""
        assert deadline_ms >= now_ms
        self.phase = phase
        self.armed_ms = now_ms
        self.deadline_ms = deadline_ms

    def check(self, now_ms: int) -> bool:
        """True (and disarmed) if converged now; fails the run if the deadline passed."""
        phase = self.phase
        assert phase is not None
        if self.tracker.mismatches == 0 and self._snapshot_agrees():
            self.converged_ms[phase] = now_ms - self.armed_ms
            self.phase = None
            return True
        if now_ms >= self.deadline_ms:
            details = self.tracker.list_mismatches(MISMATCHES_REPORTED_MAX) or self._snapshot_mismatches()
            self._fail(
                f"check (c) convergence: phase {phase!r} armed at {self.armed_ms} ms did not converge by "
                f"{self.deadline_ms} ms; for example: {'; '.join(details)}"
            )
        return False

    def _snapshot_agrees(self) -> bool:
        return not self._snapshot_mismatches(limit=1)

    def _snapshot_mismatches(self, limit: int = MISMATCHES_REPORTED_MAX) -> list[str]:
        snapshot = self._snapshot
        if snapshot is None:
            return []
        tracker = self.tracker
        names = tracker.node_ids
        found: list[str] = []
        for observer, observer_up in enumerate(tracker.up):
            if not observer_up:
                continue
            seen = {view.node_id: view for view in snapshot(observer)}
            for subject, name in enumerate(names):
                if subject == observer:
                    continue
                view = seen.get(name)
                if tracker.up[subject]:
                    expected = self._incarnation_of(subject)
                    if view is None or view.state != "alive" or view.incarnation != expected:
                        what = "nothing" if view is None else f"{view.state}@{view.incarnation}"
                        found.append(f"{names[observer]} sees {name} as {what}, it is alive@{expected}")
                elif view is not None and view.state in ("alive", "suspect"):
                    found.append(f"{names[observer]} sees {name} as {view.state}@{view.incarnation}, it is down")
                if len(found) >= limit:
                    return found
        return found

    def events_agree_with_snapshot(self) -> None:
        """Fail if the event-derived views differ from ``members()`` (a core emitting wrong events)."""
        snapshot = self._snapshot
        if snapshot is None:
            return
        tracker = self.tracker
        names = tracker.node_ids
        for observer, observer_up in enumerate(tracker.up):
            if not observer_up:
                continue
            seen = {view.node_id: STATE_OF_NAME[view.state] for view in snapshot(observer)}
            for subject, name in enumerate(names):
                if subject == observer:
                    continue
                from_events = tracker.state(observer, subject)
                from_view = seen.get(name)
                # A forgotten (reaped) dead member has no event: absent == dead/left.
                if from_view is None and (from_events is None or from_events >= DEAD):
                    continue
                if from_events != from_view:
                    shown = "nothing" if from_events is None else STATE_NAMES[from_events]
                    actual = "nothing" if from_view is None else STATE_NAMES[from_view]
                    self._fail(
                        f"events disagree with members(): {names[observer]}'s events say {name} is {shown}, "
                        f"its members() says {actual}"
                    )


# -- all together -----------------------------------------------------------------------------------


def stretched_bound_ms(bound_ms: int, drift_ppm_max: int) -> int:
    """``bound_ms`` of the slowest allowed local clock, in global milliseconds."""
    assert 0 <= drift_ppm_max < PPM
    return math.ceil(bound_ms * PPM / (PPM - drift_ppm_max))


class MembershipChecks:
    """Checks (a)-(c) wired together; the scenario feeds it what happens."""

    def __init__(
        self,
        node_ids: Sequence[str],
        addresses: Sequence[str],
        *,
        detection_bound_ms: int,
        detection_loss_max: float,
        clean: bool,
        replay_command: str,
        schedule: Callable[[int, str, Callable[[], None]], None],
        snapshot: Callable[[int], Sequence[MemberViewLike]] | None,
        incarnation_of: Callable[[int], int],
    ) -> None:
        self.replay_command = replay_command
        self._schedule = schedule
        self.tracker = ViewTracker(node_ids)
        self.detection = DetectionChecker(self.tracker, addresses, detection_bound_ms, detection_loss_max, self.fail)
        self.false_positives = FalsePositiveChecker(self.tracker, clean=clean, fail=self.fail)
        self.convergence = ConvergenceChecker(
            self.tracker, snapshot=snapshot, incarnation_of=incarnation_of, fail=self.fail
        )

    def fail(self, message: str) -> NoReturn:
        """Raise ``CheckFailure`` with the replay command."""
        raise CheckFailure(f"{message}\nreplay: {self.replay_command}")

    def started(self, index: int, *, based: bool = False) -> None:
        """Node ``index`` booted a fresh core (``based``: on the bootstrapped membership)."""
        self.detection.subject_up(index)
        self.tracker.started(index, based=based)

    def stopped(self, index: int, now_ms: int, incarnation: int, *, crashed: bool, network: Network) -> None:
        """Node ``index`` went down (``crashed``: without a word; else after leaving)."""
        self.tracker.stopped(index)
        self.false_positives.went_down(index, incarnation)
        self.detection.observer_down(index)
        if crashed:
            deadline_ms = self.detection.crashed(index, now_ms, network)
            if deadline_ms is not None:
                self._schedule(
                    deadline_ms,
                    f"check detection of {self.tracker.node_ids[index]}",
                    lambda: self.detection.due(index, now_ms, deadline_ms),
                )

    def events(self, observer: int, events: Sequence[MemberEventLike], now_ms: int) -> None:
        """``observer``'s core emitted ``events``."""
        index_of = self.tracker.index_of
        for event in events:
            subject = index_of.get(event.node_id)
            if subject is None:
                self.fail(f"{self.tracker.node_ids[observer]} reported an unknown member {event.node_id!r}")
            state = STATE_OF_KIND[event.kind]
            self.tracker.observed(observer, subject, state)
            if state != ALIVE and subject != observer:
                self.false_positives.accused(observer, subject, event.kind, event.incarnation, now_ms)
                if state >= DEAD:
                    self.detection.declared(observer, subject, now_ms)

    def network_changed(self, network: Network) -> None:
        """Loss or partitions changed."""
        if network.loss_probability > 0 or network.partitioned:
            self.false_positives.dirty()
        self.detection.network_changed(network)

    def clock_stepped(self) -> None:
        """Some node's clock jumped."""
        self.false_positives.dirty()
