"""Pinned regressions of the membership core, each found by a failing run."""

from __future__ import annotations

import random

from moot.core import wire
from moot.core.membership import Membership
from moot.core.membership_config import MembershipConfig


def test_confirmation_during_tick_that_expires_suspicion_is_handled_in_the_same_tick() -> None:
    # Found by the 5-process integration test: our own failed probe confirmed
    # an existing suspicion inside tick(), moving its deadline into the past,
    # and tick() returned with a deadline <= now (assertion in tick). Here c
    # suspects b at t=0 (deadline 24 s, 11.4 s after one confirmation); our
    # first probe of b fails after 11.4 s, so our confirmation lands in the past.
    config = MembershipConfig.lan()
    for seed in range(20):
        node = Membership(config, node_id="a", address="a:1", rng=random.Random(seed), now_ms=0)
        for name in ("b", "c", "d", "e"):
            node.step(0, wire.Gossip(source_id=name, gossip=(wire.Alive(node_id=name, incarnation=1, address=f"{name}:1"),)))
        node.step(0, wire.Gossip(source_id="c", gossip=(wire.Suspect(node_id="b", incarnation=1, from_id="c"),)))
        now = 11_500
        while now < 30_000:
            node.tick(now)  # must never leave a deadline at or before now
            assert node.next_deadline_ms() > now
            now = node.next_deadline_ms()
        assert {m.node_id: m.state for m in node.members()}["b"] == "dead"
