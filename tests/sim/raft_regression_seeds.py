"""Pinned Raft + KV simulation seeds.

``REGRESSION``: runs that once failed and were fixed; each must pass forever.
Add a run here (with a line saying what it caught) once the bug it found is
fixed, as STYLE.md asks.

``OPEN``: runs that fail on a known core bug, reported and not yet fixed.
They run as strict xfail: when the fix lands they start passing, the strict
xfail fails, and the run moves to ``REGRESSION``.

Each entry replays with ``options.command()``. A seed means a run only for
the fault generator and scenario of the commit that pinned it: when those
change on purpose, find the seeds again with a sweep.
"""

from __future__ import annotations

from dataclasses import dataclass

from moot.sim.raft_scenario import RaftScenarioOptions


@dataclass(frozen=True, slots=True)
class PinnedRaftRun:
    """One pinned run and the bug it caught."""

    options: RaftScenarioOptions
    bug: str


REGRESSION: tuple[PinnedRaftRun, ...] = (
    PinnedRaftRun(
        RaftScenarioOptions(seed=4, nodes=3, duration_ms=1_000, clients=2, snapshot_entries=4),
        "scenario bug, kept as a check of the client bookkeeping: a late reply to attempt 1 of an "
        "earlier operation was taken as the answer to attempt 1 of the next one",
    ),
    # Core bug (fixed in raft.py: _removing_self, and the removed leader
    # hands over): a leader that proposed its own removal kept appending
    # client writes after it, committed the removal with the other voter of
    # a two-voter group, applied it and stepped down. The other voter had
    # not learned the commit, so still needed the old leader's vote, which
    # the old leader refused (its log was longer); no leader, ever.
    PinnedRaftRun(RaftScenarioOptions.for_seed(2341), "leader self-removal deadlock (no faults at all)"),
    PinnedRaftRun(RaftScenarioOptions.for_seed(1843), "leader self-removal deadlock"),
    PinnedRaftRun(RaftScenarioOptions.for_seed(2459), "leader self-removal deadlock"),
)

OPEN: tuple[PinnedRaftRun, ...] = ()
