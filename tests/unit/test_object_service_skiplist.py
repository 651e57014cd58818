"""Which peers the object service skips, and for how long (moot/runtime/object_service.py)."""

from __future__ import annotations

from moot.runtime.object_service import SkipList


def test_a_marked_peer_is_skipped_for_the_period_then_asked_again() -> None:
    skips = SkipList(3.0)
    assert not skips.skipped("n2", 100.0)
    skips.mark("n2", 100.0)
    assert skips.skipped("n2", 100.0) and skips.skipped("n2", 102.9)
    assert not skips.skipped("n3", 101.0), "other peers are not affected"
    # Regression (benchmark run of 2026-11-27): a peer that timed out once was
    # skipped forever by repair, which never pruned the marks; 14 chunks of a
    # killed holder stayed on two nodes instead of three.
    assert not skips.skipped("n2", 103.0)
    assert not skips.skipped("n2", 1e9)
    skips.mark("n2", 200.0)
    skips.mark("n2", 202.0)  # a later mark extends the period
    assert skips.skipped("n2", 204.0) and not skips.skipped("n2", 205.0)
