"""The automatic voter planner: growth, replacement, grace, trimming, placement."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from moot.core.raft_messages import ConfChange, ConfState
from moot.core.voters import MemberState, MemberStatus, VoterPolicy, plan

POLICY = VoterPolicy(dead_grace_ms=1_000)


def members(states: dict[str, MemberState], since_ms: int = 0, regions: dict[str, str] | None = None) -> list[MemberStatus]:
    regions = regions or {}
    return [
        MemberStatus(node, state, since_ms, {"region": regions[node]} if node in regions else {})
        for node, state in states.items()
    ]


def apply(conf: ConfState, change: ConfChange) -> ConfState:
    voters, learners = set(conf.voters), set(conf.learners)
    if change.kind == "add_learner":
        learners.add(change.node_id)
    elif change.kind == "promote":
        learners.discard(change.node_id)
        voters.add(change.node_id)
    else:
        voters.discard(change.node_id)
        learners.discard(change.node_id)
    return ConfState(tuple(sorted(voters)), tuple(sorted(learners)))


def settle(
    conf: ConfState,
    states: dict[str, MemberState],
    *,
    leader: str,
    now_ms: int = 10_000,
    regions: dict[str, str] | None = None,
) -> tuple[ConfState, list[ConfChange]]:
    changes = []
    for _ in range(50):
        change = plan(
            conf,
            leader_id=leader,
            members=members(states, regions=regions),
            caught_up=dict.fromkeys(conf.learners, True),
            now_ms=now_ms,
            policy=POLICY,
        )
        if change is None:
            return conf, changes
        changes.append(change)
        conf = apply(conf, change)
    raise AssertionError(f"no fixed point: {changes}")


def test_a_bootstrapped_group_grows_to_three_then_five_voters_learner_first() -> None:
    states: dict[str, MemberState] = {"a": "alive", "b": "alive", "c": "alive"}
    conf, changes = settle(ConfState(("a",)), states, leader="a")
    assert conf == ConfState(("a", "b", "c"))
    assert [(c.kind, c.node_id) for c in changes] == [
        ("add_learner", "b"), ("promote", "b"), ("add_learner", "c"), ("promote", "c"),
    ]
    states |= {"d": "alive", "e": "alive"}
    conf, _ = settle(conf, states, leader="a")
    assert conf.voters == ("a", "b", "c", "d", "e")


def test_a_learner_is_promoted_only_once_it_caught_up() -> None:
    conf = ConfState(("a",), ("b",))
    states = members({"a": "alive", "b": "alive", "c": "alive"})
    waiting = plan(conf, leader_id="a", members=states, caught_up={"b": False}, now_ms=0, policy=POLICY)
    assert waiting is None, "must not add yet another learner or skip ahead while b catches up"
    ready = plan(conf, leader_id="a", members=states, caught_up={"b": True}, now_ms=0, policy=POLICY)
    assert ready == ConfChange("promote", "b")


def test_a_dead_voter_keeps_its_seat_for_the_grace_period_then_is_replaced_before_removal() -> None:
    conf = ConfState(("a", "b", "c"))
    states = {"a": "alive", "b": "alive", "c": "dead", "d": "alive"}
    early = plan(conf, leader_id="a", members=members(states, since_ms=9_500), caught_up={}, now_ms=10_000, policy=POLICY)
    assert early == ConfChange("add_learner", "d"), "c keeps its seat; d only follows the log"
    conf, changes = settle(conf, states, leader="a")
    assert [(c.kind, c.node_id) for c in changes] == [("add_learner", "d"), ("promote", "d"), ("remove", "c")]
    assert conf.voters == ("a", "b", "d")


def test_a_member_that_left_is_removed_at_once() -> None:
    conf = ConfState(("a", "b", "c"))
    change = plan(
        conf,
        leader_id="a",
        members=members({"a": "alive", "b": "alive", "c": "left"}, since_ms=10_000),
        caught_up={},
        now_ms=10_000,
        policy=POLICY,
    )
    assert change == ConfChange("remove", "c")


def test_no_live_voter_is_trimmed_while_another_voter_is_dead_within_its_grace() -> None:
    # 5 voters, one just died: 4 alive want 3 voters, but trimming a live
    # voter now would leave 3 live of 4 voters... and the next death a stall.
    conf = ConfState(("a", "b", "c", "d", "e"))
    states = members({"a": "alive", "b": "alive", "c": "alive", "d": "alive", "e": "dead"}, since_ms=9_900)
    assert plan(conf, leader_id="a", members=states, caught_up={}, now_ms=10_000, policy=POLICY) is None


def test_the_leader_is_never_removed_and_trimming_takes_the_most_crowded_region() -> None:
    conf = ConfState(("a", "b", "c", "d"))
    regions = {"a": "x", "b": "x", "c": "x", "d": "y"}
    change = plan(
        conf,
        leader_id="c",
        members=members({"a": "alive", "b": "alive", "c": "alive", "d": "alive"}, regions=regions),
        caught_up={},
        now_ms=0,
        policy=POLICY,
    )
    assert change is not None
    assert change.kind == "remove"
    assert change.node_id in ("a", "b")


def test_new_voters_come_from_the_regions_with_fewest_voters() -> None:
    regions = {"a": "lahore", "b": "lahore", "c": "karachi", "d": "singapore"}
    conf, _ = settle(ConfState(("a",)), dict.fromkeys(regions, "alive"), leader="a", regions=regions)  # type: ignore[arg-type]
    # Three voters from four members: one per region, not two from lahore.
    assert conf.voters == ("a", "c", "d")
    placed = plan(
        ConfState(("a",)),
        leader_id="a",
        members=members({"a": "alive", "b": "alive", "c": "alive"}, regions={"a": "x", "b": "x", "c": "y"}),
        caught_up={},
        now_ms=0,
        policy=POLICY,
    )
    assert placed == ConfChange("add_learner", "c")


def test_successive_loss_of_three_of_five_keeps_a_live_majority_every_step() -> None:
    nodes = ["a", "b", "c", "d", "e"]
    states: dict[str, MemberState] = dict.fromkeys(nodes, "alive")
    conf, _ = settle(ConfState(("a",)), states, leader="a")
    assert len(conf.voters) == 5
    for victim in ("b", "a", "c"):
        states[victim] = "dead"
        leader = min(v for v in conf.voters if states[v] == "alive")
        conf, changes = settle(conf, states, leader=leader)
        alive = [n for n in nodes if states[n] == "alive"]
        assert set(conf.voters) <= set(alive), (victim, conf, changes)
        assert len(conf.voters) == VoterPolicy().wanted(len(alive))


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_no_change_ever_leaves_the_live_voters_short_of_a_majority(seed: int) -> None:
    """Random deaths, returns and leaves: every single change keeps a
    majority of the (new) voters alive whenever the old voters had one."""
    rng = random.Random(seed)
    nodes = [f"n{i}" for i in range(rng.randint(3, 8))]
    states: dict[str, MemberState] = dict.fromkeys(nodes, "alive")
    since = dict.fromkeys(nodes, 0)
    conf = ConfState((nodes[0],))
    now = 0
    for _ in range(60):
        now += rng.choice((100, 500, 2_000))
        if rng.random() < 0.2:
            node = rng.choice(nodes)
            states[node] = rng.choice(("alive", "dead", "suspect", "left"))
            since[node] = now
        live = [v for v in conf.voters if states[v] in ("alive", "suspect")]
        if len(live) * 2 <= len(conf.voters):
            continue  # no quorum: no leader, nothing is planned
        leader = live[0]
        change = plan(
            conf,
            leader_id=leader,
            members=[MemberStatus(n, states[n], since[n], {}) for n in nodes],
            caught_up=dict.fromkeys(conf.learners, True),
            now_ms=now,
            policy=POLICY,
        )
        if change is None:
            continue
        assert not (change.kind == "remove" and change.node_id == leader)
        new = apply(conf, change)
        assert new.voters, "the last voter was removed"
        new_live = [v for v in new.voters if states[v] in ("alive", "suspect")]
        assert len(new_live) * 2 > len(new.voters), (conf, change, states)
        conf = new


def test_a_voter_that_answers_raft_is_never_removed_whatever_membership_says() -> None:
    # Found by the chaos test: the leader's membership view held a live
    # voter dead for 10 s (a stale rumour) while that voter voted for it.
    conf = ConfState(("a", "b", "c"))
    states = members({"a": "alive", "b": "alive", "c": "dead", "d": "alive"}, since_ms=0)
    stale_view = plan(
        conf, leader_id="a", members=states, caught_up={}, now_ms=10_000, policy=POLICY, responsive={"c": True}
    )
    assert stale_view == ConfChange("add_learner", "d"), "c keeps its seat; d only follows the log"
    truly_dead = plan(
        conf, leader_id="a", members=states, caught_up={}, now_ms=10_000, policy=POLICY, responsive={"c": False}
    )
    assert truly_dead == ConfChange("add_learner", "d")


def test_every_other_healthy_member_follows_the_log_as_a_learner() -> None:
    # Regression (moot demo hung): a voter trimmed when the federation shrank
    # left the group and its state froze; it now comes back as a learner.
    states: dict[str, MemberState] = {"a": "alive", "b": "alive", "c": "alive", "d": "alive", "e": "dead"}
    conf, changes = settle(ConfState(("a", "b", "c", "d", "e")), states, leader="a", now_ms=10_000)
    assert len(conf.voters) == 3 and "a" in conf.voters
    assert set(conf.voters) | set(conf.learners) == {"a", "b", "c", "d"}, "every live member is a replica"
    assert ("add_learner", "e") not in [(c.kind, c.node_id) for c in changes]
