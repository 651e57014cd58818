"""Simulated scenario: hybrid logical clocks (``moot.core.hlc``) on nodes
whose wall clocks disagree, drift, and are stepped (forward and back, as NTP
does), over a network that delays, loses, duplicates and reorders.

Every node runs a ``moot.core.hlc.Clock`` on its *wall* clock: the world's
local clock (offset and drift from the seed) plus an adjustment the scenario
steps at random moments by up to ``STEP_MS_MAX`` either way. On each wake-up
a node stamps a local event or sends its timestamp to one or more peers; a
receipt is stamped with ``observe``. Sim-only vector clocks ride along as
ground truth for happened-before.

Checked for every event, on the fly: the node's timestamps strictly
increase (monotonic, whatever its wall clock did); a receipt is later than
its send; the timestamp's wall part is at least the node's wall clock and at
most the largest wall clock any node has shown so far (the paper's bound);
and over sampled pairs of events, ``vector(e) < vector(f)`` implies
``hlc(e) < hlc(f)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final

from moot.core import hlc
from moot.sim.clock import LocalClock
from moot.sim.network import Network, NetworkConfig
from moot.sim.world import SimNode, SimulationFailure, World, derive_seed, run_with_replay

WALL_EPOCH_MS: Final = 1_795_000_000_000  # late 2026: wall clocks are large numbers
CLOCK_OFFSET_MS_MAX: Final = 3_000  # boot-time disagreement of the wall clocks
DRIFT_PPM_MAX: Final = 200
STEP_MS_MAX: Final = 2_000  # an NTP step, either way
STEP_EVERY_MS_MAX: Final = 4_000
ACT_EVERY_MS_MAX: Final = 40
FAN_OUT_MAX: Final = 3
PAIRS_CHECKED: Final = 4_000
REGIONS: Final = ("a", "b", "c")
LATENCY_MS: Final = ((1, 30, 80), (30, 1, 60), (80, 60, 1))


@dataclass(frozen=True, slots=True)
class Stamp:
    """What a node sends: its timestamp, and the ground truth beside it."""

    sender: int
    timestamp: int
    vector: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Send:
    address: str
    message: Stamp


@dataclass(slots=True)
class Event:
    node: int
    kind: str  # local | send | receive
    timestamp: int
    vector: tuple[int, ...]
    wall_ms: int
    sent: int = -1  # a receipt: the send's timestamp


@dataclass(slots=True)
class Effects:
    messages: list[Send] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


class HlcNode:
    """One node: a hybrid clock on a wall clock it does not control."""

    def __init__(self, index: int, count: int, addresses: list[str], rng: random.Random, now_ms: int) -> None:
        self.index = index
        self.addresses = addresses
        self.rng = rng
        self.clock = hlc.Clock()
        self.vector = [0] * count
        self.adjust_ms = 0  # the scenario steps the wall clock through this
        self._deadline_ms = now_ms + rng.randint(1, ACT_EVERY_MS_MAX)

    def wall_ms(self, now_ms: int) -> int:
        return WALL_EPOCH_MS + now_ms + self.adjust_ms

    def step(self, now_ms: int, message: Stamp) -> Effects:
        wall = self.wall_ms(now_ms)
        timestamp = self.clock.observe(wall, message.timestamp)
        self.vector = [max(mine, theirs) for mine, theirs in zip(self.vector, message.vector, strict=True)]
        self.vector[self.index] += 1
        event = Event(self.index, "receive", timestamp, tuple(self.vector), wall, sent=message.timestamp)
        return Effects(events=[event])

    def tick(self, now_ms: int) -> Effects:
        effects = Effects()
        if now_ms < self._deadline_ms:
            return effects
        self._deadline_ms = now_ms + self.rng.randint(1, ACT_EVERY_MS_MAX)
        wall = self.wall_ms(now_ms)
        timestamp = self.clock.tick(wall)
        self.vector[self.index] += 1
        vector = tuple(self.vector)
        if self.rng.random() < 0.3:
            effects.events.append(Event(self.index, "local", timestamp, vector, wall))
            return effects
        effects.events.append(Event(self.index, "send", timestamp, vector, wall))
        peers = [address for i, address in enumerate(self.addresses) if i != self.index]
        for address in self.rng.sample(peers, self.rng.randint(1, min(FAN_OUT_MAX, len(peers)))):
            effects.messages.append(Send(address, Stamp(self.index, timestamp, vector)))
        return effects

    def next_deadline_ms(self) -> int:
        return self._deadline_ms


@dataclass(slots=True)
class HlcOptions:
    seed: int
    nodes: int = 5
    duration_ms: int = 20_000
    loss: float = 0.05
    duplication: float = 0.05

    def validate(self) -> None:
        if self.seed < 0 or self.nodes < 2 or self.duration_ms < 1 or not 0 <= self.loss < 1:
            raise ValueError(f"bad HLC scenario options: {self}")

    def command(self) -> str:
        return f"python -m moot.sim hlc --seed {self.seed} --nodes {self.nodes} --duration-ms {self.duration_ms}"


@dataclass(slots=True)
class HlcResult:
    events: int
    receipts: int
    steps_back: int
    max_logical: int
    max_ahead_ms: int
    pairs_ordered: int


class HlcScenario:
    """Builds the world, runs it, checks every event (see module doc)."""

    def __init__(self, options: HlcOptions, *, clock_class: type[hlc.Clock] = hlc.Clock) -> None:
        options.validate()
        self.options = options
        seed = options.seed
        self.rng = random.Random(derive_seed(seed, "scenario"))
        clock_rng = random.Random(derive_seed(seed, "clock"))
        network = Network(
            NetworkConfig(regions=REGIONS, latency_ms=LATENCY_MS, jitter_ms=20),
            random.Random(derive_seed(seed, "network")),
        )
        network.set_loss(options.loss)
        network.set_duplication(options.duplication)
        self.clock_class = clock_class
        self.world: World[HlcNode, Effects] = World(self, network, root_seed=seed)
        self.addresses = [f"10.0.0.{index + 1}:7000" for index in range(options.nodes)]
        for index, address in enumerate(self.addresses):
            clock = LocalClock(
                offset_ms=clock_rng.randint(0, CLOCK_OFFSET_MS_MAX),
                drift_ppm=clock_rng.randint(-DRIFT_PPM_MAX, DRIFT_PPM_MAX),
            )
            self.world.add_node(f"n{index}", address, self.rng.choice(REGIONS), clock)
        self.events: list[Event] = []
        self.last: list[int] = [0] * options.nodes
        self.max_wall_seen = 0
        self.steps_back = 0

    # -- the driver hooks (moot.sim.world.CoreDriver) --------------------------------

    def create(self, node: SimNode[HlcNode], rng: random.Random, now_ms: int) -> HlcNode:
        core = HlcNode(node.index, self.options.nodes, self.addresses, rng, now_ms)
        core.clock = self.clock_class()
        return core

    def persist(self, node: SimNode[HlcNode], effects: Effects) -> None:
        pass

    def audit(self, node: SimNode[HlcNode], effects: Effects) -> None:
        pass

    def started(self, node: SimNode[HlcNode], global_ms: int) -> None:
        pass

    def crashed(self, node: SimNode[HlcNode], global_ms: int) -> None:
        pass

    def observe(self, node: SimNode[HlcNode], effects: Effects, global_ms: int) -> None:
        if not effects.events:
            return
        for other in self.world.nodes:
            if other.core is not None:
                wall = other.core.wall_ms(other.clock.local_ms(global_ms))
                self.max_wall_seen = max(self.max_wall_seen, wall)
        for event in effects.events:
            self._check(event, global_ms)
            self.events.append(event)

    def _check(self, event: Event, global_ms: int) -> None:
        where = f"n{event.node} at {global_ms} ms ({event.kind}, {hlc.format_timestamp(event.timestamp)})"
        if event.timestamp <= self.last[event.node]:
            self._fail(f"not monotonic: {where} is not after the node's previous {self.last[event.node]}")
        self.last[event.node] = event.timestamp
        if event.kind == "receive" and event.timestamp <= event.sent:
            self._fail(f"a receipt is not after its send: {where}, sent at {event.sent}")
        wall_part, _ = hlc.unpack(event.timestamp)
        if wall_part < event.wall_ms:
            self._fail(f"behind the node's own wall clock: {where}, wall {event.wall_ms}")
        if wall_part > self.max_wall_seen:
            self._fail(f"ahead of every wall clock so far: {where}, largest wall {self.max_wall_seen}")

    def _fail(self, message: str) -> None:
        raise SimulationFailure(f"{message}\nreplay: {self.options.command()}")

    # -- running ------------------------------------------------------------------------

    def run(self) -> HlcResult:
        return run_with_replay(self._run, self.options.command)

    def _run(self) -> HlcResult:
        world = self.world
        for index in range(self.options.nodes):
            world.start(index)
        at = self.rng.randint(1, STEP_EVERY_MS_MAX)
        while at < self.options.duration_ms:
            world.schedule(at, "step", self._step_a_clock)
            at += self.rng.randint(1, STEP_EVERY_MS_MAX)
        world.run_until(self.options.duration_ms)
        return self._finish()

    def _step_a_clock(self) -> None:
        node = self.world.nodes[self.rng.randrange(self.options.nodes)]
        assert node.core is not None
        delta = self.rng.randint(-STEP_MS_MAX, STEP_MS_MAX)
        node.core.adjust_ms += delta
        self.steps_back += delta < 0
        self.world.trace(f"{self.world.now_ms} wall step n{node.index} {delta}")

    def _finish(self) -> HlcResult:
        events = self.events
        if len(events) < 100 * self.options.nodes:
            self._fail(f"too few events to mean anything: {len(events)}")
        ordered = 0
        for _ in range(PAIRS_CHECKED):
            first, second = self.rng.sample(events, 2)
            if _before(second.vector, first.vector):
                first, second = second, first
            if _before(first.vector, second.vector):
                ordered += 1
                if first.timestamp >= second.timestamp:
                    self._fail(
                        f"happened-before not kept: n{first.node} {first.kind} {first.timestamp} precedes "
                        f"n{second.node} {second.kind} {second.timestamp} but does not stamp lower"
                    )
        return HlcResult(
            events=len(events),
            receipts=sum(event.kind == "receive" for event in events),
            steps_back=self.steps_back,
            max_logical=max(hlc.unpack(event.timestamp)[1] for event in events),
            max_ahead_ms=max(node.core.clock.max_ahead_ms for node in self.world.nodes if node.core is not None),
            pairs_ordered=ordered,
        )


def _before(first: tuple[int, ...], second: tuple[int, ...]) -> bool:
    """Vector-clock happened-before: ``first <= second`` everywhere and not equal."""
    return first != second and all(a <= b for a, b in zip(first, second, strict=True))
