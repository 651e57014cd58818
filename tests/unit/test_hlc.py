"""moot.core.hlc: hybrid logical clocks, rule by rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moot.core import hlc


def test_a_timestamp_packs_into_an_int_that_sorts_as_the_pair() -> None:
    assert hlc.unpack(hlc.pack(1_795_000_000_123, 7)) == (1_795_000_000_123, 7)
    assert hlc.pack(5, hlc.LOGICAL_MAX) < hlc.pack(6, 0)
    assert hlc.pack(hlc.WALL_MS_MAX, hlc.LOGICAL_MAX) < 2**63
    for bad in ((-1, 0), (0, hlc.LOGICAL_MAX + 1), (hlc.WALL_MS_MAX + 1, 0)):
        with pytest.raises(ValueError, match="not a hybrid timestamp"):
            hlc.pack(*bad)
    with pytest.raises(ValueError, match="not a hybrid timestamp"):
        hlc.unpack(-5)


def test_format_reads_as_utc_time_with_the_count() -> None:
    assert hlc.format_timestamp(hlc.pack(1_795_000_000_123, 0)) == "2026-11-18T11:06:40.123Z"
    assert hlc.format_timestamp(hlc.pack(1_795_000_000_123, 4)) == "2026-11-18T11:06:40.123Z+4"


def test_tick_follows_the_wall_clock_and_counts_when_it_stands_still_or_goes_back() -> None:
    clock = hlc.Clock()
    assert clock.tick(1000) == hlc.pack(1000, 0)
    assert clock.tick(1000) == hlc.pack(1000, 1)
    assert clock.tick(400) == hlc.pack(1000, 2)  # an NTP step back: order kept
    assert clock.tick(1001) == hlc.pack(1001, 0)


def test_observe_takes_the_largest_time_seen_and_counts_past_it() -> None:
    clock = hlc.Clock()
    clock.tick(1000)
    assert clock.observe(1000, hlc.pack(5000, 3)) == hlc.pack(5000, 4)  # a clock ahead of ours
    assert clock.max_ahead_ms == 4000
    assert clock.observe(1200, hlc.pack(5000, 9)) == hlc.pack(5000, 10)
    assert clock.observe(1300, hlc.pack(900, 50)) == hlc.pack(5000, 11)  # an old message
    assert clock.observe(7000, hlc.pack(6000, 2)) == hlc.pack(7000, 0)  # our clock caught up


def test_a_full_counter_moves_the_wall_part_on() -> None:
    clock = hlc.Clock()
    clock.observe(10, hlc.pack(10, hlc.LOGICAL_MAX - 1))
    assert clock.last == hlc.pack(10, hlc.LOGICAL_MAX)
    assert clock.tick(10) == hlc.pack(11, 0)


@given(st.lists(st.tuples(st.integers(0, 10_000), st.none() | st.integers(0, 2**40) | st.integers(0, 2**63 - 1)), min_size=1, max_size=80))
def test_every_timestamp_is_larger_than_the_last_and_than_what_was_received(
    steps: list[tuple[int, int | None]],
) -> None:
    clock = hlc.Clock()
    previous = 0
    for physical, remote in steps:
        stamped = clock.tick(physical) if remote is None else clock.observe(physical, remote)
        assert stamped > previous
        if remote is not None and hlc.unpack(remote)[0] - physical <= hlc.AHEAD_MS_MAX:
            assert stamped > remote  # adopted: not from a clock too far ahead
        assert hlc.unpack(stamped)[0] >= physical
        previous = stamped


def test_a_stamp_far_ahead_of_our_clock_is_not_adopted() -> None:
    clock = hlc.Clock()
    clock.tick(1_000)
    far = hlc.pack(1_000 + hlc.AHEAD_MS_MAX + 1, 0)
    stamped = clock.observe(1_000, far)
    assert stamped == hlc.pack(1_000, 1) and clock.ignored == 1  # a year-ahead clock drags nobody along
    assert clock.max_ahead_ms == hlc.AHEAD_MS_MAX + 1
    near = hlc.pack(1_000 + hlc.AHEAD_MS_MAX, 0)
    assert clock.observe(1_000, near) == hlc.pack(1_000 + hlc.AHEAD_MS_MAX, 1)


def test_the_largest_timestamp_never_breaks_the_clock() -> None:
    clock = hlc.Clock()
    clock.observe(hlc.WALL_MS_MAX, hlc.TIMESTAMP_MAX)  # a forged frame at the end of time
    assert clock.tick(hlc.WALL_MS_MAX) == hlc.TIMESTAMP_MAX
    assert clock.tick(0) == hlc.TIMESTAMP_MAX
