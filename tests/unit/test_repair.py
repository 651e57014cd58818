"""The repair planner: asking, owner election, single pushes, safe drops, expiry, bounded work."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moot.core.placement import Candidate, holders, rank
from moot.core.repair import Effects, RepairConfig, RepairPlanner

CONFIG = RepairConfig(
    tick_interval_ms=100,
    attention_delay_ms=10,
    knowledge_ttl_ms=10_000,
    query_timeout_ms=1_000,
    push_timeout_ms=3_000,
    sweep_pass_ms_min=0,
)
NODES = ("a", "b", "c", "d", "e", "f")
MEMBERS = [Candidate(node) for node in NODES]


def chunk_where(condition: Callable[[list[str]], bool]) -> str:
    """The first chunk id ``c<i>`` whose ranking over NODES satisfies ``condition``."""
    for index in range(10_000):
        chunk_id = f"c{index}"
        if condition(rank(chunk_id, MEMBERS)):
            return chunk_id
    raise AssertionError("no such chunk")


def planner(node_id: str = "a", config: RepairConfig = CONFIG, members: list[Candidate] = MEMBERS) -> RepairPlanner:
    result = RepairPlanner(config, node_id=node_id, now_ms=0)
    result.set_members(0, members)
    return result


def queried(effects: Effects) -> dict[str, list[str]]:
    return {node: sorted(chunks) for node, chunks in effects.queries.items()}


def test_config_profiles_validate() -> None:
    for config in (RepairConfig(), RepairConfig.lan(), RepairConfig.wan(), RepairConfig.sim()):
        config.validate()
    with pytest.raises(ValueError, match="replicas"):
        RepairConfig(replicas=0).validate()
    with pytest.raises(ValueError, match="sweep_pass_ms_min"):
        RepairConfig(sweep_pass_ms_min=60_000, knowledge_ttl_ms=60_000).validate()


def test_a_holder_asks_the_other_desired_holders_once_per_timeout() -> None:
    chunk = chunk_where(lambda ranking: ranking[0] == "a")
    desired = rank(chunk, MEMBERS)[:3]
    node = planner()
    node.add_local(chunk)
    effects = node.tick(100)
    assert queried(effects) == {other: [chunk] for other in desired[1:]}
    assert node.tick(200).queries == {}  # asked, not answered, not timed out
    assert queried(node.tick(1_100)) == {other: [chunk] for other in desired[1:]}


def test_answers_expire_after_the_ttl_and_are_asked_again() -> None:
    chunk = chunk_where(lambda ranking: ranking[0] == "a")
    desired = rank(chunk, MEMBERS)[:3]
    node = planner()
    node.add_local(chunk)
    node.tick(100)
    for other in desired[1:]:
        node.on_has_reply(150, other, [chunk], [])
    assert node.tick(5_000).queries == {}
    assert queried(node.tick(10_150)) == {other: [chunk] for other in desired[1:]}


def test_the_highest_ranked_holder_pushes_to_the_absent_desired_holder() -> None:
    chunk = chunk_where(lambda ranking: ranking[0] == "a")
    _, second, third = rank(chunk, MEMBERS)[:3]
    node = planner()
    node.add_local(chunk)
    node.tick(100)
    node.on_has_reply(150, second, [chunk], [])
    node.on_has_reply(150, third, [], [chunk])
    assert node.next_deadline_ms() == 160  # news: tick soon
    assert node.tick(160).pushes == [(chunk, third)]


def test_a_lower_ranked_holder_defers_to_a_higher_ranked_one() -> None:
    chunk = chunk_where(lambda ranking: ranking[1] == "a")
    first, _, third = rank(chunk, MEMBERS)[:3]
    node = planner()
    node.add_local(chunk)
    node.tick(100)
    node.on_has_reply(150, first, [chunk], [])
    node.on_has_reply(150, third, [], [chunk])
    assert node.tick(200).pushes == []


def test_a_lower_ranked_holder_repairs_when_the_higher_one_lacks_the_chunk() -> None:
    chunk = chunk_where(lambda ranking: ranking[1] == "a")
    first, _, third = rank(chunk, MEMBERS)[:3]
    node = planner()
    node.add_local(chunk)
    node.tick(100)
    node.on_has_reply(150, first, [], [chunk])
    node.on_has_reply(150, third, [], [chunk])
    assert sorted(node.tick(200).pushes) == sorted([(chunk, first), (chunk, third)])


def test_the_next_holder_takes_over_when_the_owner_dies() -> None:
    chunk = chunk_where(lambda ranking: ranking[1] == "a")
    first, _, third = rank(chunk, MEMBERS)[:3]
    node = planner()
    node.add_local(chunk)
    node.tick(100)
    node.on_has_reply(150, first, [chunk], [])
    node.on_has_reply(150, third, [], [chunk])
    assert node.tick(200).pushes == []
    survivors = [member for member in MEMBERS if member.node_id != first]
    node.set_members(250, survivors)
    assert node.next_deadline_ms() == 260  # the dead owner's chunks get attention at once
    new_desired = holders(chunk, survivors, 3)
    assert new_desired[0] == "a"
    effects = node.tick(260)
    newcomer = [n for n in new_desired if n not in ("a", third)]
    assert queried(effects) == {n: [chunk] for n in newcomer}
    assert effects.pushes == [(chunk, third)]
    node.on_has_reply(350, newcomer[0], [], [chunk])
    assert node.tick(360).pushes == [(chunk, newcomer[0])]


def test_two_holders_agree_on_a_single_owner() -> None:
    chunk = chunk_where(lambda ranking: ranking[0] != "a" and ranking[1] == "a")
    first, second, third = rank(chunk, MEMBERS)[:3]
    holders_now = {first: planner(first), second: planner(second)}
    for node in holders_now.values():
        node.add_local(chunk)
        node.tick(100)
    # Both ask the desired holders; the answers are what the world holds.
    for node in holders_now.values():
        for other in (first, second, third):
            if other != node.node_id:
                present = other in holders_now
                node.on_has_reply(150, other, [chunk] if present else [], [] if present else [chunk])
    pushes = [push for node in holders_now.values() for push in node.tick(200).pushes]
    assert pushes == [(chunk, third)]


def test_a_push_in_flight_is_not_repeated_before_its_timeout() -> None:
    chunk = chunk_where(lambda ranking: ranking[0] == "a")
    _, second, third = rank(chunk, MEMBERS)[:3]
    node = planner()
    node.add_local(chunk)
    node.tick(100)
    node.on_has_reply(150, second, [chunk], [])
    node.on_has_reply(150, third, [], [chunk])
    assert node.tick(200).pushes == [(chunk, third)]
    for now_ms in range(300, 3_200, 100):
        assert node.tick(now_ms).pushes == []
    assert node.tick(3_200).pushes == [(chunk, third)]  # lost: pushed again after the timeout
    node.on_push_result(3_300, chunk, third, stored=True)
    for now_ms in range(3_400, 9_000, 100):
        assert node.tick(now_ms).pushes == []


def test_a_failed_push_backs_off() -> None:
    chunk = chunk_where(lambda ranking: ranking[0] == "a")
    _, second, third = rank(chunk, MEMBERS)[:3]
    node = planner()
    node.add_local(chunk)
    node.tick(100)
    node.on_has_reply(150, second, [chunk], [])
    node.on_has_reply(150, third, [], [chunk])
    assert node.tick(200).pushes == [(chunk, third)]
    node.on_push_result(250, chunk, third, stored=False)
    assert node.tick(300).pushes == []
    assert node.tick(3_200).pushes == [(chunk, third)]


def test_an_extra_copy_is_dropped_only_when_every_desired_holder_confirmed() -> None:
    chunk = chunk_where(lambda ranking: "a" not in ranking[:3])
    desired = rank(chunk, MEMBERS)[:3]
    node = planner()
    node.add_local(chunk)
    assert queried(node.tick(100)) == {other: [chunk] for other in desired}
    node.on_has_reply(150, desired[0], [chunk], [])
    node.on_has_reply(150, desired[1], [chunk], [])
    node.on_has_reply(150, desired[2], [], [chunk])
    effects = node.tick(200)
    assert effects.drops == []
    assert node.holds(chunk)
    node.on_has_reply(250, desired[2], [chunk], [])
    assert node.tick(300).drops == [chunk]
    assert not node.holds(chunk)
    assert node.local_count == 0


def test_confirmations_older_than_the_ttl_do_not_allow_a_drop() -> None:
    chunk = chunk_where(lambda ranking: "a" not in ranking[:3])
    desired = rank(chunk, MEMBERS)[:3]
    config = dataclasses.replace(CONFIG, tick_interval_ms=100_000, attention_delay_ms=10)
    node = planner(config=config)
    node.add_local(chunk)
    node.tick(100)
    node.on_has_reply(150, desired[0], [chunk], [])
    node.on_has_reply(150, desired[1], [chunk], [])
    node.on_has_reply(10_200, desired[2], [chunk], [])  # the first two expired at 10_150
    effects = node.tick(10_210)
    assert effects.drops == []
    assert queried(effects) == {desired[0]: [chunk], desired[1]: [chunk]}


def test_a_desired_holder_never_drops() -> None:
    chunk = chunk_where(lambda ranking: ranking[2] == "a")
    node = planner()
    node.add_local(chunk)
    node.tick(100)
    for other in NODES:
        if other != "a":
            node.on_has_reply(150, other, [chunk], [])
    for now_ms in range(200, 2_000, 100):
        assert node.tick(now_ms).drops == []
    assert node.holds(chunk)


def test_a_corrupt_copy_removed_locally_is_pushed_back_by_the_owner() -> None:
    chunk = chunk_where(lambda ranking: ranking[0] == "a")
    _, second, third = rank(chunk, MEMBERS)[:3]
    owner, victim = planner("a"), planner(second)
    owner.add_local(chunk)
    victim.add_local(chunk)
    owner.tick(100)
    owner.on_has_reply(150, second, *victim.answer_has_query([chunk]))
    owner.on_has_reply(150, third, [chunk], [])
    assert owner.tick(200).pushes == []
    victim.remove_local(chunk)  # the scrub found it corrupt; the runtime deleted it
    assert victim.answer_has_query([chunk]) == ([], [chunk])
    asked = owner.tick(10_200)  # knowledge expired: asked again
    assert second in asked.queries
    owner.on_has_reply(10_250, second, *victim.answer_has_query([chunk]))
    assert owner.tick(10_300).pushes == [(chunk, second)]


def test_fewer_members_than_replicas_lowers_r() -> None:
    node = planner(members=[Candidate("a"), Candidate("b")])
    assert node.replicas_effective == 2
    node.add_local("x")
    assert queried(node.tick(100)) == {"b": ["x"]}


def test_this_node_is_always_a_member() -> None:
    node = planner(members=[Candidate("b"), Candidate("c")])
    assert [c.node_id for c in node.live_candidates()] == ["a", "b", "c"]


def test_work_per_tick_is_bounded_and_the_cursor_covers_every_chunk() -> None:
    config = dataclasses.replace(CONFIG, scan_chunks_per_tick_max=50, query_chunks_per_tick_max=64)
    node = planner(config=config)
    chunks = [f"k{index}" for index in range(1_000)]
    for chunk in chunks:
        node.add_local(chunk)
    asked: set[str] = set()
    for step in range(40):
        effects = node.tick(100 + step * 10)
        count = sum(len(ids) for ids in effects.queries.values())
        assert count <= 64
        for ids in effects.queries.values():
            asked.update(ids)
    # Every chunk this node holds has other desired holders to ask about.
    assert asked == set(chunks)


def test_the_sweep_waits_between_passes() -> None:
    config = dataclasses.replace(CONFIG, sweep_pass_ms_min=5_000, query_timeout_ms=1)
    node = planner(config=config)
    node.add_local("x")
    assert node.tick(100).queries != {}
    assert node.tick(200).queries == {}  # the pass is over; the next one starts at 5_100 at the earliest
    assert node.tick(5_200).queries != {}


def test_replies_about_chunks_no_longer_held_are_ignored() -> None:
    node = planner()
    node.add_local("x")
    node.tick(100)
    node.remove_local("x")
    node.on_has_reply(150, "b", [], ["x"])
    node.on_push_result(150, "x", "b", stored=True)
    assert node.tick(200) == Effects({}, [], [], 300)


@settings(max_examples=150, deadline=None)
@given(
    operations=st.lists(
        st.tuples(st.sampled_from(("add", "remove", "tick")), st.integers(min_value=0, max_value=30)),
        max_size=120,
    )
)
def test_inventory_and_cursor_stay_consistent(operations: list[tuple[str, int]]) -> None:
    config = dataclasses.replace(CONFIG, scan_chunks_per_tick_max=7)
    node = planner(config=config)
    held: set[str] = set()
    now_ms = 0
    for operation, number in operations:
        chunk = f"k{number}"
        if operation == "add":
            node.add_local(chunk)
            held.add(chunk)
        elif operation == "remove":
            node.remove_local(chunk)
            held.discard(chunk)
        else:
            now_ms += 100
            node.tick(now_ms)
        assert sorted(node.local_chunk_ids()) == sorted(held)
    # With ticks alone, every held chunk is examined (asked about) within two passes.
    asked: set[str] = set()
    for _ in range(2 * (len(held) // 7 + 2)):
        now_ms += 2_000  # past query_timeout_ms: each visit asks again
        for ids in node.tick(now_ms).queries.values():
            asked.update(ids)
    assert asked == held
