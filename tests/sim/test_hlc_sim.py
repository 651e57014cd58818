"""Hybrid logical clocks under the simulator: drifting, stepped wall clocks
(back as well as forward), a lossy, duplicating, reordering network; every
event checked (moot/sim/hlc_scenario.py)."""

from __future__ import annotations

import re

import pytest

from moot.core import hlc
from moot.sim.hlc_scenario import HlcOptions, HlcScenario
from moot.sim.world import SimulationFailure

SEEDS = range(60)


@pytest.mark.parametrize("seed", SEEDS)
def test_hybrid_clocks_are_monotonic_and_keep_happened_before(seed: int) -> None:
    result = HlcScenario(HlcOptions(seed=seed)).run()
    assert result.receipts > 1_000 and result.pairs_ordered > 100
    assert result.steps_back >= 1, "the seed should step some wall clock back"
    assert result.max_logical < hlc.LOGICAL_MAX


class _IgnoresMessages(hlc.Clock):
    """A broken clock: a receipt is stamped like a local event."""

    def observe(self, physical_ms: int, remote: int) -> int:
        return self.tick(physical_ms)


class _FollowsTheWallClock(hlc.Clock):
    """A broken clock: plain wall time, which NTP steps move backwards."""

    def tick(self, physical_ms: int) -> int:
        return hlc.pack(physical_ms, 0)

    def observe(self, physical_ms: int, remote: int) -> int:
        return hlc.pack(physical_ms, 0)


@pytest.mark.parametrize("broken", [_IgnoresMessages, _FollowsTheWallClock])
def test_a_broken_clock_is_caught(broken: type[hlc.Clock]) -> None:
    with pytest.raises(SimulationFailure, match=re.escape("replay: python -m moot.sim hlc --seed 3")):
        HlcScenario(HlcOptions(seed=3), clock_class=broken).run()
