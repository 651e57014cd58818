"""The simulator's own machinery, driven by a tiny fake core: clock, network, world, faults, tracker."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from moot.core import wire
from moot.sim import faults
from moot.sim.clock import LocalClock
from moot.sim.membership_checks import ALIVE, DEAD, LEFT, SUSPECT, ViewTracker
from moot.sim.network import Network, NetworkConfig
from moot.sim.world import CoreContractError, CoreCrashed, SimNode, World, derive_seed

pytestmark = pytest.mark.sim

# -- a fake core -----------------------------------------------------------------------------


@dataclass
class FakeSend:
    address: str
    message: Any


@dataclass
class FakeOutput:
    incarnation: int | None = None
    messages: list[FakeSend] = field(default_factory=list)
    events: list[str] = field(default_factory=list)


class HeartbeatCore:
    """Every ``period_ms`` pings every peer, announcing its incarnation; answers pings with acks.

    Every ``bump_every`` ticks it raises its incarnation (reported in
    ``FakeOutput.incarnation`` unless ``forget_to_persist``).
    """

    def __init__(
        self,
        node_id: str,
        address: str,
        peers: list[str],
        rng: random.Random,
        now_ms: int,
        incarnation: int,
        *,
        period_ms: int = 100,
        bump_every: int = 3,
        forget_to_persist: bool = False,
    ) -> None:
        self.node_id = node_id
        self.address = address
        self.peers = peers
        self.period_ms = period_ms
        self.incarnation = incarnation
        self.bump_every = bump_every
        self.forget_to_persist = forget_to_persist
        self.next_tick_ms = now_ms + rng.randrange(period_ms)
        self.ticks = 0
        self.seq = 0
        self.tick_times: list[tuple[int, int]] = []  # (now_ms, deadline it was for)
        self.received: list[tuple[str, int]] = []

    def next_deadline_ms(self) -> int:
        return self.next_tick_ms

    def tick(self, now_ms: int) -> FakeOutput:
        out = FakeOutput()
        if now_ms < self.next_tick_ms:
            return out
        self.tick_times.append((now_ms, self.next_tick_ms))
        self.next_tick_ms = now_ms + self.period_ms
        self.ticks += 1
        if self.ticks % self.bump_every == 0:
            self.incarnation += 1
            if not self.forget_to_persist:
                out.incarnation = self.incarnation
        alive = wire.Alive(node_id=self.node_id, incarnation=self.incarnation, address=self.address)
        for peer in self.peers:
            self.seq += 1
            ping = wire.Ping(
                seq=self.seq, target_id="x", source_id=self.node_id, source_address=self.address, gossip=(alive,)
            )
            out.messages.append(FakeSend(peer, ping))
        return out

    def step(self, now_ms: int, message: Any) -> FakeOutput:
        out = FakeOutput()
        if isinstance(message, wire.Ping):
            self.received.append((message.source_id, message.seq))
            out.messages.append(FakeSend(message.source_address, wire.Ack(seq=message.seq, source_id=self.node_id)))
            out.events.append(f"ping from {message.source_id}")
        return out


class FakeDriver:
    """The CoreDriver for HeartbeatCore; records what the world tells it."""

    def __init__(self, peers: dict[str, list[str]], **core_options: Any) -> None:
        self.peers = peers
        self.core_options = core_options
        self.events: list[tuple[int, str, str]] = []
        self.lifecycle: list[tuple[int, str, str]] = []
        self.write_in_observe = False

    def create(self, node: SimNode[HeartbeatCore], rng: random.Random, now_ms: int) -> HeartbeatCore:
        return HeartbeatCore(
            node.node_id, node.address, self.peers[node.address], rng, now_ms,
            node.disk.get("incarnation", 0), **self.core_options,
        )

    def persist(self, node: SimNode[HeartbeatCore], effects: FakeOutput) -> None:
        if effects.incarnation is not None:
            node.disk.put("incarnation", effects.incarnation)

    def audit(self, node: SimNode[HeartbeatCore], effects: FakeOutput) -> None:
        persisted = node.disk.get("incarnation", 0)
        for send in effects.messages:
            for item in getattr(send.message, "gossip", ()):
                if isinstance(item, wire.Alive) and item.node_id == node.node_id and item.incarnation > persisted:
                    raise CoreContractError(f"{node.node_id} announces {item.incarnation}, disk has {persisted}")

    def observe(self, node: SimNode[HeartbeatCore], effects: FakeOutput, global_ms: int) -> None:
        if self.write_in_observe:
            node.disk.put("oops", 1)
        for event in effects.events:
            self.events.append((global_ms, node.node_id, event))

    def started(self, node: SimNode[HeartbeatCore], global_ms: int) -> None:
        self.lifecycle.append((global_ms, node.node_id, "started"))

    def crashed(self, node: SimNode[HeartbeatCore], global_ms: int) -> None:
        self.lifecycle.append((global_ms, node.node_id, "crashed"))


def build_world(
    seed: int,
    *,
    count: int = 3,
    drifts: tuple[int, ...] = (0, 0, 0),
    jitter_ms: int = 3,
    wire_roundtrip: bool = False,
    **core_options: Any,
) -> tuple[World[HeartbeatCore, FakeOutput], FakeDriver]:
    addresses = [f"h{i}:1" for i in range(count)]
    driver = FakeDriver({a: [b for b in addresses if b != a] for a in addresses}, **core_options)
    network = Network(
        NetworkConfig(regions=("a", "b"), latency_ms=((1, 20), (20, 1)), jitter_ms=jitter_ms, wire_roundtrip=wire_roundtrip),
        random.Random(derive_seed(seed, "network")),
    )
    world: World[HeartbeatCore, FakeOutput] = World(driver, network, root_seed=seed)
    for i, address in enumerate(addresses):
        world.add_node(f"h{i}", address, ("a", "b")[i % 2], LocalClock(offset_ms=1000 * i, drift_ppm=drifts[i % len(drifts)]))
    for i in range(count):
        world.start(i)
    return world, driver


# -- clock ------------------------------------------------------------------------------------


def test_local_clock_applies_offset_and_drift_exactly() -> None:
    fast = LocalClock(offset_ms=1_000, drift_ppm=200)
    slow = LocalClock(offset_ms=0, drift_ppm=-200)
    assert fast.local_ms(0) == 1_000
    assert fast.local_ms(1_000_000) == 1_000 + 1_000_200
    assert slow.local_ms(1_000_000) == 999_800
    assert slow.local_ms(4) == 3  # floor(4 * 0.9998)


def test_global_for_local_is_the_earliest_global_time_reaching_the_deadline() -> None:
    rng = random.Random(1)
    for _ in range(2_000):
        clock = LocalClock(offset_ms=rng.randrange(10_000), drift_ppm=rng.randint(-1_000, 1_000))
        at_ms = 0
        for _ in range(rng.randrange(4)):
            at_ms += rng.randrange(5_000)
            clock.add_step(at_ms, rng.randint(1, 3_000))
        not_before_ms = rng.randrange(20_000)
        deadline_ms = clock.local_ms(not_before_ms) + rng.randint(-100, 20_000)
        wake_ms = clock.global_ms_for(deadline_ms, not_before_ms)
        assert wake_ms >= not_before_ms
        assert clock.local_ms(wake_ms) >= deadline_ms
        if wake_ms > not_before_ms:
            assert clock.local_ms(wake_ms - 1) < deadline_ms


def test_a_forward_clock_step_brings_a_wake_up_earlier() -> None:
    clock = LocalClock(offset_ms=0, drift_ppm=0)
    assert clock.global_ms_for(10_000, 0) == 10_000
    clock.add_step(2_000, 5_000)
    assert clock.local_ms(1_999) == 1_999
    assert clock.local_ms(2_000) == 7_000
    assert clock.global_ms_for(10_000, 0) == 5_000
    assert clock.global_ms_for(6_000, 0) == 2_000  # reached by the jump itself


def test_clock_refuses_backward_steps() -> None:
    clock = LocalClock()
    with pytest.raises(AssertionError):
        clock.add_step(10, -5)


# -- network ----------------------------------------------------------------------------------


def make_network(seed: int = 0, jitter_ms: int = 0) -> Network:
    network = Network(
        NetworkConfig(regions=("x", "y"), latency_ms=((2, 30), (40, 2)), jitter_ms=jitter_ms), random.Random(seed)
    )
    for address, region in (("a", "x"), ("b", "x"), ("c", "y"), ("d", "y")):
        network.add_endpoint(address, region)
    return network


def test_delay_follows_the_region_matrix_in_each_direction() -> None:
    network = make_network()
    assert network.route(100, "a", "b") == (102,)
    assert network.route(100, "a", "c") == (130,)
    assert network.route(100, "c", "a") == (140,)


def test_symmetric_partition_groups_and_the_unnamed_rest() -> None:
    network = make_network()
    network.partition([["a"], ["b", "c"]])
    assert network.is_blocked("a", "b") and network.is_blocked("b", "a")
    assert not network.is_blocked("b", "c")
    assert network.is_blocked("c", "d")  # d is in the unnamed group
    assert network.route(0, "a", "b") == ()
    assert network.stats["a"].messages_dropped == 1
    network.heal()
    assert not network.partitioned
    assert network.route(0, "a", "b") == (2,)


def test_asymmetric_blocks_drop_one_direction_only() -> None:
    network = make_network()
    network.block("a", "b")
    assert network.is_blocked("a", "b")
    assert not network.is_blocked("b", "a")
    network.block_one_way(["c"], ["a", "d"])
    assert network.is_blocked("c", "a") and network.is_blocked("c", "d")
    assert not network.is_blocked("a", "c") and not network.is_blocked("d", "c")
    network.heal()
    assert not network.is_blocked("a", "b") and not network.is_blocked("c", "a")


def test_loss_and_duplication() -> None:
    network = make_network()
    network.set_loss(1.0)
    assert all(network.route(0, "a", "b") == () for _ in range(100))
    network.set_loss(0.0)
    network.set_duplication(1.0)
    assert network.route(0, "a", "b") == (2, 2)
    network.set_duplication(0.0)
    network.set_loss(0.5)
    delivered = sum(len(network.route(0, "a", "b")) for _ in range(2_000))
    assert 850 < delivered < 1_150


def test_jitter_reorders_messages_on_one_link() -> None:
    network = make_network(seed=3, jitter_ms=20)
    arrivals = [network.route(sent_ms, "a", "b")[0] for sent_ms in range(200)]
    assert all(2 <= arrival - sent <= 22 for sent, arrival in enumerate(arrivals))
    assert any(later < earlier for earlier, later in itertools.pairwise(arrivals))


def test_wire_roundtrip_decodes_and_counts_bytes() -> None:
    network = make_network()
    ping = wire.Ping(seq=1, target_id="b", source_id="a", source_address="a:1")
    body = network.encode("a", ping)
    assert network.decode("b", body) == ping
    assert network.stats["a"].bytes_sent == len(body) + wire.FRAME_HEADER_BYTES
    assert network.stats["b"].bytes_received == len(body) + wire.FRAME_HEADER_BYTES


# -- world ------------------------------------------------------------------------------------------


def test_same_seed_same_trace_and_different_seed_different_trace() -> None:
    hashes = []
    for seed in (5, 5, 6):
        world, _ = build_world(seed, drifts=(150, -150, 0))
        world.network.set_loss(0.1)
        world.network.set_duplication(0.1)
        world.run_until(5_000)
        hashes.append(world.trace_hash)
    assert hashes[0] == hashes[1]
    assert hashes[0] != hashes[2]


def test_nodes_wake_when_their_drifting_local_clock_reaches_the_deadline() -> None:
    world, _ = build_world(1, drifts=(200, -200, 0))
    world.run_until(20_000)
    for node in world.nodes:
        core = node.live_core()
        assert core.ticks > 150
        for now_ms, deadline_ms in core.tick_times:
            assert now_ms >= deadline_ms
            # Woken at the first global millisecond that reached it.
            global_ms = node.clock.global_ms_for(deadline_ms, 0)
            assert node.clock.local_ms(global_ms) == now_ms


def test_messages_arrive_and_wire_roundtrip_changes_nothing() -> None:
    plain, _ = build_world(2)
    plain.run_until(2_000)
    carried, _ = build_world(2, wire_roundtrip=True)
    carried.run_until(2_000)
    assert plain.trace_hash == carried.trace_hash
    assert carried.network.bytes_total > 0
    assert len(plain.nodes[0].live_core().received) > 20


def test_crash_drops_wakeups_and_inbound_messages_and_restart_reads_the_disk() -> None:
    world, driver = build_world(4, jitter_ms=0)
    world.run_until(1_000)
    victim = world.nodes[1]
    incarnation = victim.live_core().incarnation
    assert incarnation > 0 and victim.disk.get("incarnation") == incarnation
    ticks_before = world.stats.wakes
    world.crash(1)
    assert victim.core is None
    world.run_until(2_000)
    assert world.stats.lost_to_down_nodes > 0
    others_wakes = world.stats.wakes - ticks_before
    assert others_wakes > 0
    world.start(1)
    assert victim.live_core().incarnation == incarnation
    assert victim.live_core().tick_times == []
    world.run_until(3_000)
    assert victim.live_core().ticks > 5
    assert [kind for _, node_id, kind in driver.lifecycle if node_id == "h1"] == ["started", "crashed", "started"]


def test_persist_happens_before_send() -> None:
    # The audit (run on every effects object) checks that no Alive about the
    # sender leaves ahead of its disk; a whole healthy run passes it.
    world, _ = build_world(8)
    world.run_until(3_000)
    assert all(node.disk.writes > 0 for node in world.nodes)


def test_a_core_announcing_an_unpersisted_incarnation_fails_the_audit() -> None:
    world, _ = build_world(8, forget_to_persist=True)
    with pytest.raises(CoreContractError, match="announces"):
        world.run_until(3_000)


def test_the_disk_refuses_writes_outside_the_persist_step() -> None:
    world, driver = build_world(8)
    driver.write_in_observe = True
    with pytest.raises(CoreContractError, match="outside the persist step"):
        world.run_until(1_000)


def test_a_core_exception_names_the_node_and_time() -> None:
    world, _ = build_world(9)
    core = world.nodes[2].live_core()

    def broken(now_ms: int) -> FakeOutput:
        raise ValueError("boom")

    core.tick = broken  # type: ignore[method-assign]
    with pytest.raises(CoreCrashed, match=r"ValueError\(boom\) at \d+ ms while waking node h2"):
        world.run_until(1_000)


def test_a_tick_that_leaves_a_past_deadline_breaks_the_contract() -> None:
    world, _ = build_world(9)
    core = world.nodes[0].live_core()
    core.next_deadline_ms = lambda: 0  # type: ignore[method-assign]
    with pytest.raises(CoreContractError, match="not in the future"):
        world.run_until(1_000)


def test_scheduled_actions_run_in_order_at_their_time() -> None:
    world, _ = build_world(1)
    seen: list[tuple[int, str]] = []
    world.schedule(50, "second", lambda: seen.append((world.now_ms, "second")))
    world.schedule(10, "first", lambda: seen.append((world.now_ms, "first")))
    world.schedule(50, "third", lambda: seen.append((world.now_ms, "third")))
    world.run_until(100)
    assert seen == [(10, "first"), (50, "second"), (50, "third")]


def test_derive_seed_is_stable_across_processes_and_versions() -> None:
    # Pinned: changing the derivation would make every printed replay
    # command replay something else.
    assert derive_seed(1, "network") == derive_seed(1, "network")
    assert derive_seed(1, "network") != derive_seed(2, "network")
    assert derive_seed(1, "network") != derive_seed(1, "faults")
    assert derive_seed(0, "network") == 0x3D2C048716D74AB7
    assert derive_seed(7, "core/n3/1") == 0xBE5DF181F5311E4D


# -- faults -----------------------------------------------------------------------------------------


def test_fault_plan_is_a_function_of_the_seed_and_respects_limits() -> None:
    config = faults.FaultConfig(safety_ms=60_000, crashes_max=8)
    kinds_seen: set[str] = set()
    for seed in range(200):
        plan = faults.plan_faults(random.Random(seed), 7, config, safety_start_ms=1_000, enabled=True)
        again = faults.plan_faults(random.Random(seed), 7, config, safety_start_ms=1_000, enabled=True)
        assert plan == again
        kinds_seen.update(plan.kinds_enabled)
        down: dict[int, None] = {}
        for fault in plan.faults:
            assert plan.safety_start_ms <= fault.at_ms <= plan.liveness_start_ms
            if isinstance(fault, faults.Crash | faults.Leave):
                assert fault.node not in down
                down[fault.node] = None
                assert len(down) <= 3  # (7 - 1) * 0.5
            elif isinstance(fault, faults.Restart):
                assert fault.node in down
                del down[fault.node]
        assert [f.at_ms for f in plan.faults] == sorted(f.at_ms for f in plan.faults)
    assert kinds_seen == set(faults.FAULT_KINDS)


def test_no_faults_plan_is_empty() -> None:
    plan = faults.plan_faults(random.Random(1), 5, faults.FaultConfig(), safety_start_ms=0, enabled=False)
    assert plan.faults == () and plan.kinds_enabled == ()


# -- view tracker ---------------------------------------------------------------------------------------


def brute_force_mismatches(tracker: ViewTracker) -> int:
    count = 0
    n = len(tracker.up)
    for observer in range(n):
        if not tracker.up[observer]:
            continue
        for subject in range(n):
            if subject == observer:
                continue
            state = tracker.state(observer, subject)
            if tracker.up[subject]:
                count += state != ALIVE
            else:
                count += state in (ALIVE, SUSPECT)
    return count


@pytest.mark.parametrize("seed", range(20))
def test_view_tracker_mismatch_count_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(2, 9)
    tracker = ViewTracker([f"n{i}" for i in range(n)])
    for _ in range(400):
        node = rng.randrange(n)
        action = rng.random()
        if action < 0.15:
            if tracker.up[node]:
                tracker.stopped(node)
            else:
                tracker.started(node, based=rng.random() < 0.5)
        elif tracker.up[node]:
            tracker.observed(node, rng.randrange(n), rng.choice((ALIVE, SUSPECT, DEAD, LEFT)))
        assert tracker.mismatches == brute_force_mismatches(tracker)


# -- checkers, on synthetic events ---------------------------------------------------------------


@dataclass
class FakeEvent:
    kind: str
    node_id: str
    incarnation: int


def make_checks(*, clean: bool = True) -> tuple[Any, list[tuple[int, str, Any]], Network]:
    from moot.sim.membership_checks import MembershipChecks

    network = make_network()
    scheduled: list[tuple[int, str, Any]] = []
    checks = MembershipChecks(
        ["a", "b", "c"],
        ["a", "b", "c"],
        detection_bound_ms=1_000,
        detection_loss_max=0.2,
        clean=clean,
        replay_command="python -m moot.sim membership --seed 42 --nodes 3",
        schedule=lambda at_ms, label, action: scheduled.append((at_ms, label, action)),
        snapshot=None,
        incarnation_of=lambda index: 1,
    )
    for index in range(3):
        checks.started(index)
    for observer, subject in ((0, "b"), (0, "c"), (1, "a"), (1, "c"), (2, "a"), (2, "b")):
        checks.events(observer, [FakeEvent("joined", subject, 1)], 0)
    assert checks.tracker.mismatches == 0
    return checks, scheduled, network


def test_detection_fails_with_the_replay_command_when_an_observer_never_declares() -> None:
    from moot.sim.membership_checks import CheckFailure

    checks, scheduled, network = make_checks()
    checks.stopped(2, 100, 1, crashed=True, network=network)
    checks.events(0, [FakeEvent("dead", "c", 1)], 500)
    [(at_ms, _, due)] = scheduled
    assert at_ms == 1_100
    with pytest.raises(CheckFailure, match=r"(?s)c crashed at 100 ms.*: b\nreplay: python -m moot.sim"):
        due()


def test_detection_is_excused_by_a_partition_or_high_loss_and_done_when_all_declare() -> None:
    checks, scheduled, network = make_checks()
    checks.stopped(2, 100, 1, crashed=True, network=network)
    network.partition([["a", "c"], ["b"]])
    checks.network_changed(network)  # b is cut off from c: b owes nothing
    checks.events(0, [FakeEvent("dead", "c", 1)], 700)
    scheduled[0][2]()  # passes
    assert checks.detection.stats.time_to_all_know_ms == [600]
    assert not checks.false_positives.clean  # a partition happened


def test_false_positive_fails_a_clean_run_and_is_only_counted_after() -> None:
    from moot.sim.membership_checks import CheckFailure

    checks, _, network = make_checks()
    with pytest.raises(CheckFailure, match="false positive"):
        checks.events(0, [FakeEvent("suspect", "b", 1)], 10)
    checks, _, network = make_checks()
    network.set_loss(0.1)
    checks.network_changed(network)
    checks.events(0, [FakeEvent("suspect", "b", 1)], 10)
    assert len(checks.false_positives.false_positives) == 1


def test_accusing_a_previous_life_is_not_a_false_positive() -> None:
    checks, _, network = make_checks()
    checks.stopped(1, 50, 1, crashed=True, network=network)
    checks.started(1)
    checks.events(0, [FakeEvent("dead", "b", 1)], 60)  # about the life that crashed at incarnation 1
    assert checks.false_positives.false_positives == []


def test_convergence_fails_at_its_deadline_naming_the_disagreement() -> None:
    from moot.sim.membership_checks import CheckFailure

    checks, _, _ = make_checks(clean=False)
    checks.convergence.arm("liveness", 0, 500)
    assert checks.convergence.check(100)
    checks.convergence.arm("liveness", 200, 500)
    checks.events(0, [FakeEvent("dead", "b", 1)], 200)
    assert not checks.convergence.check(300)
    with pytest.raises(CheckFailure, match="a sees b as dead"):
        checks.convergence.check(500)
