"""Unit tests of the SWIM/Lifeguard core, driven by a tiny in-test network.

The simulator (tests/sim) runs the same core over many seeds with faults;
these tests pin individual rules with hand-built situations.
"""

from __future__ import annotations

import heapq
import random

import pytest

from moot.core import wire
from moot.core.broadcast_queue import BroadcastQueue
from moot.core.membership import MemberEvent, Membership, Output
from moot.core.membership_config import MembershipConfig
from moot.core.suspicion import Suspicion


class Net:
    """Nodes exchanging messages with a fixed one-way delay, on one clock."""

    def __init__(self, count: int, *, seed: int = 1, delay_ms: int = 2, config: MembershipConfig | None = None):
        self.config = config or MembershipConfig.sim()
        self.now = 0
        self.delay_ms = delay_ms
        self.queue: list[tuple[int, int, str, wire.MembershipMessage]] = []
        self.counter = 0
        self.nodes: dict[str, Membership] = {}
        self.down: set[str] = set()
        self.events: list[tuple[str, MemberEvent]] = []
        self.persisted: dict[str, int] = {}
        root = random.Random(seed)
        for index in range(count):
            self.add(f"n{index}", root.randrange(2**32))

    def add(self, node_id: str, seed: int, incarnation: int = 0) -> Membership:
        node = Membership(
            self.config,
            node_id=node_id,
            address=f"{node_id}:7000",
            labels={"region": "lahore"},
            cpus=2,
            rng=random.Random(seed),
            now_ms=self.now,
            incarnation=incarnation,
        )
        self.nodes[node_id] = node
        self.down.discard(node_id)
        return node

    def apply(self, node_id: str, out: Output) -> None:
        if out.incarnation is not None:
            self.persisted[node_id] = out.incarnation
        for send in out.messages:
            target = send.address.split(":")[0]
            self.counter += 1
            heapq.heappush(self.queue, (self.now + self.delay_ms, self.counter, target, send.message))
        self.events.extend((node_id, event) for event in out.events)

    def join_all(self) -> None:
        for node_id, node in self.nodes.items():
            if node_id != "n0":
                self.apply(node_id, node.join(self.now, ["n0:7000"]))

    def run_until(self, end_ms: int) -> None:
        while True:
            live = [(n.next_deadline_ms(), i) for i, n in self.nodes.items() if i not in self.down]
            next_tick = min(live)[0] if live else end_ms + 1
            next_message = self.queue[0][0] if self.queue else end_ms + 1
            when = min(next_tick, next_message)
            if when > end_ms:
                self.now = end_ms
                return
            self.now = max(self.now, when)
            if next_message <= next_tick:
                _, _, target, message = heapq.heappop(self.queue)
                if target in self.nodes and target not in self.down:
                    self.apply(target, self.nodes[target].step(self.now, message))
            else:
                for node_id, node in self.nodes.items():
                    if node_id not in self.down and node.next_deadline_ms() <= self.now:
                        self.apply(node_id, node.tick(self.now))

    def states(self, observer: str) -> dict[str, str]:
        return {m.node_id: m.state for m in self.nodes[observer].members()}


def test_nodes_join_and_converge() -> None:
    net = Net(5)
    net.join_all()
    net.run_until(10_000)
    for node_id in net.nodes:
        assert net.states(node_id) == {f"n{i}": "alive" for i in range(5)}


def test_crashed_member_declared_dead_by_all_within_bound() -> None:
    net = Net(5)
    net.join_all()
    net.run_until(10_000)
    net.down.add("n3")
    crash_ms = net.now
    bound = net.config.detection_bound_ms(5)
    net.run_until(crash_ms + bound)
    for node_id in net.nodes:
        if node_id != "n3":
            assert net.states(node_id)["n3"] == "dead"
    detected = [e.at_ms for who, e in net.events if e.kind == "dead" and e.node_id == "n3"]
    assert len(detected) == 4
    # Gossip and confirmations make detection far faster than the worst-case bound.
    assert max(detected) - crash_ms < net.config.suspicion_timeout_max_ms(5) + 5 * net.config.probe_interval_ms


def test_no_false_positives_without_faults() -> None:
    net = Net(8, seed=3)
    net.join_all()
    net.run_until(120_000)
    assert not [e for _, e in net.events if e.kind in ("suspect", "dead")]


def test_restarted_node_rejoins_with_higher_incarnation() -> None:
    net = Net(4)
    net.join_all()
    net.run_until(10_000)
    old = net.nodes["n2"].incarnation
    net.down.add("n2")
    net.run_until(net.now + net.config.detection_bound_ms(4))
    assert net.states("n0")["n2"] == "dead"
    restarted = net.add("n2", seed=99, incarnation=net.persisted["n2"])
    assert restarted.incarnation == old + 1
    net.apply("n2", restarted.join(net.now, ["n0:7000"]))
    net.run_until(net.now + 10_000)
    for node_id in net.nodes:
        view = {m.node_id: m for m in net.nodes[node_id].members()}
        assert view["n2"].state == "alive"
        assert view["n2"].incarnation > old


def test_suspected_member_refutes() -> None:
    net = Net(4)
    net.join_all()
    net.run_until(10_000)
    before = net.nodes["n1"].incarnation
    rumour = wire.Suspect(node_id="n1", incarnation=before, from_id="n0")
    net.apply("n0", net.nodes["n0"].step(net.now, wire.Gossip(source_id="n0", gossip=(rumour,))))
    assert net.states("n0")["n1"] == "suspect"
    net.run_until(net.now + 5_000)
    assert net.nodes["n1"].incarnation == before + 1
    assert net.persisted["n1"] == before + 1
    for node_id in net.nodes:
        assert net.states(node_id)["n1"] == "alive"


def test_graceful_leave_is_seen_as_left() -> None:
    net = Net(4)
    net.join_all()
    net.run_until(10_000)
    net.apply("n3", net.nodes["n3"].leave(net.now))
    net.run_until(net.now + 1_000)
    net.down.add("n3")
    net.run_until(net.now + 30_000)
    for node_id in ("n0", "n1", "n2"):
        assert net.states(node_id)["n3"] == "left"


def test_metadata_update_spreads() -> None:
    net = Net(3)
    net.join_all()
    net.run_until(5_000)
    net.apply("n1", net.nodes["n1"].update_metadata(net.now, {"region": "karachi"}, 8))
    net.run_until(net.now + 3_000)
    view = {m.node_id: m for m in net.nodes["n2"].members()}
    assert view["n1"].labels == {"region": "karachi"}
    assert view["n1"].cpus == 8


def test_rtt_estimates_appear_for_all_members() -> None:
    net = Net(5, delay_ms=10)
    net.join_all()
    net.run_until(60_000)
    for node_id, node in net.nodes.items():
        for other in net.nodes:
            if other != node_id:
                estimate = node.estimate_rtt_ms(other)
                assert estimate is not None
                assert 5.0 < estimate < 60.0, (node_id, other, estimate)


def test_determinism_same_seed_same_events() -> None:
    def run() -> list[tuple[str, str, str, int]]:
        net = Net(6, seed=42)
        net.join_all()
        net.run_until(20_000)
        net.down.add("n4")
        net.run_until(60_000)
        return [(who, e.kind, e.node_id, e.at_ms) for who, e in net.events]

    assert run() == run()


def test_suspicion_timeout_shrinks_with_confirmations() -> None:
    suspicion = Suspicion(
        started_ms=0, first_accuser="a", timeout_min_ms=1_000, timeout_max_ms=6_000, confirmations_expected=2
    )
    assert suspicion.deadline_ms == 6_000
    assert suspicion.confirm("b")
    assert 1_000 < suspicion.deadline_ms < 6_000
    assert not suspicion.confirm("b")
    assert suspicion.confirm("c")
    assert suspicion.deadline_ms == 1_000
    assert not suspicion.confirm("d")  # no more than expected


def test_broadcast_queue_limits_and_replaces() -> None:
    queue: BroadcastQueue[str] = BroadcastQueue(items_max=3)
    queue.push("a", "a1")
    queue.push("a", "a2")
    assert len(queue) == 1
    assert queue.take(5, transmit_limit=2) == ["a2"]
    assert queue.take(5, transmit_limit=2) == ["a2"]
    assert queue.take(5, transmit_limit=2) == []
    for key in "wxyz":
        queue.push(key, key)
    assert len(queue) == 3


def test_config_profiles_validate_and_bad_values_rejected() -> None:
    for name in ("lan", "wan", "local", "sim"):
        MembershipConfig.named(name).validate()
    with pytest.raises(ValueError, match="probe_timeout_ms"):
        MembershipConfig(probe_timeout_ms=2_000, probe_interval_ms=1_000).validate()
    with pytest.raises(ValueError, match="unknown membership profile"):
        MembershipConfig.named("moon")
    lan = MembershipConfig.lan()
    assert lan.retransmit_limit(10) == 4 * 2
    assert lan.suspicion_timeout_min_ms(100) == 8_000
    assert lan.push_pull_interval_scaled_ms(10) == 30_000
    assert lan.push_pull_interval_scaled_ms(1_000) > 30_000


def test_large_view_probes_every_member_once_per_round() -> None:
    # Above PROBE_LIST_MEMBERS_MAX the probe order is an affine permutation
    # of table slots; it must still visit every other member once a round.
    from moot.core.membership import PROBE_LIST_MEMBERS_MAX, SharedMembers

    count = PROBE_LIST_MEMBERS_MAX + 300
    alive = [wire.Alive(node_id=f"n{i}", incarnation=1, address=f"n{i}:7000") for i in range(count)]
    shared = SharedMembers.of(alive, now_ms=0)
    node = Membership(
        MembershipConfig.sim(), node_id="n5", address="n5:7000", rng=random.Random(4), now_ms=0, shared_members=shared
    )
    targets: list[str] = []
    now = 0
    while len(targets) < 2 * (count - 1):
        now = node.next_deadline_ms()
        for send in node.tick(now).messages:
            if isinstance(send.message, wire.Ping):
                targets.append(send.message.target_id)
                # Answer at once so nobody becomes suspect.
                ack = wire.Ack(seq=send.message.seq, source_id=send.message.target_id)
                node.step(now, ack)
    first, second = targets[: count - 1], targets[count - 1 :]
    expected = sorted(f"n{i}" for i in range(count) if i != 5)
    assert sorted(first) == expected
    assert sorted(second) == expected
    assert first != second  # a fresh permutation each round


def test_leaving_while_still_retrying_a_join_keeps_the_tick_contract() -> None:
    """Regression (found by a benchmark: a restarted node whose --join list
    named a killed node was stopped, and died on tick's postcondition): the
    join retry deadline must not outlive the leave, since tick no longer
    retries joins then."""
    net = Net(2, seed=4)
    net.down.add("n1")  # the seed never answers, so the join keeps retrying
    node = net.nodes["n0"]
    net.apply("n0", node.join(net.now, ["n1:7000"]))
    net.run_until(500)
    net.apply("n0", node.leave(net.now))
    for _ in range(50):
        deadline = max(node.next_deadline_ms(), net.now)
        net.now = deadline
        net.apply("n0", node.tick(deadline))
        assert node.next_deadline_ms() > net.now


def test_the_last_node_leaving_still_gossips_with_a_transmit_limit_of_at_least_one() -> None:
    """Regression (found by the chaos test): everyone else had left and one
    member was recently dead, so after our own leave the alive count was 0,
    the retransmit limit 0, and the gossip round failed the queue's assert."""
    assert MembershipConfig.sim().retransmit_limit(0) >= 1
    net = Net(3, seed=5)
    net.join_all()
    net.run_until(2_000)
    net.apply("n1", net.nodes["n1"].leave(net.now))
    net.run_until(3_000)
    net.down.add("n2")
    node = net.nodes["n0"]
    deadline = net.now + 60_000
    while node.alive_count() > 1:  # until n0 declares n2 dead (still a gossip target for a while)
        assert net.now < deadline, net.states("n0")
        net.run_until(net.now + 100)
    net.apply("n0", node.leave(net.now))
    assert node.alive_count() == 0
    end = net.now + 3_000
    while net.now < end:
        net.now = max(node.next_deadline_ms(), net.now)
        net.apply("n0", node.tick(net.now))
