"""Pinned membership simulation seeds.

``REGRESSION``: runs that once failed and were fixed. Each must pass forever.
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

from moot.sim.membership_scenario import ScenarioOptions


@dataclass(frozen=True, slots=True)
class PinnedRun:
    """One pinned run and the bug it caught."""

    options: ScenarioOptions
    bug: str


REGRESSION: tuple[PinnedRun, ...] = (
    PinnedRun(
        ScenarioOptions(seed=7, nodes=6, duration_ms=30_000),
        "tick() asserted next_deadline_ms() > now, but a failed probe of an already-suspected member "
        "confirmed the suspicion inside tick and shrank its deadline into the past",
    ),
    PinnedRun(
        ScenarioOptions(seed=110, nodes=7, duration_ms=30_000, loss=0.05, lifeguard=False),
        "after two partitions a node isolated from all others stayed dead to them (and they to it) for "
        "good: the views never merged again",
    ),

    PinnedRun(
        ScenarioOptions(seed=162, nodes=7, duration_ms=22_000),
        "false positive: a probe sent to a member's previous life fails after the member restarted, and "
        "_finish_probe_failed suspects the member's *current* incarnation (memberlist suspects the "
        "incarnation the probe was sent to)",
    ),
    PinnedRun(
        ScenarioOptions(seed=566, nodes=7, duration_ms=20_000),
        "same false positive as seed 162 (restart during an in-flight probe)",
    ),
    PinnedRun(
        ScenarioOptions(seed=41, nodes=6, duration_ms=26_000, lifeguard=False),
        "an 11 s partition {n0,n5} | {n2} | {n1,n3,n4} without Lifeguard splits the federation for "
        "good: each side declared the others dead, push-pull only picks alive members and the death "
        "rumours are no longer gossiped, so nothing ever crosses again (Serf's reconnect is missing)",
    ),
    PinnedRun(
        ScenarioOptions(seed=212, nodes=5, duration_ms=33_000, loss=0.02),
        "the same permanent split with Lifeguard: a 15 s partition isolating n4 outlasts the "
        "suspicion timeout, and n4 and the rest hold each other dead forever",
    ),
    PinnedRun(
        ScenarioOptions(seed=374, nodes=7, duration_ms=20_000, loss=0.1),
        "join gives up on its seeds as soon as anyone else contacts us (tick stops retrying when "
        "alive_count > 1): n4's and n5's joins to n0 were lost, n5/n6 then joined n4, so n4 stopped "
        "retrying and n0 stays alone forever",
    ),
)

OPEN: tuple[PinnedRun, ...] = ()
