"""Fault injection: a schedule of crashes, partitions, loss and clock faults, drawn from a seed.

Rules (TigerBeetle's VOPR):

- A ``FaultPlan`` is a pure function of ``(rng, node_count, config)``: the
  same seed gives the same faults at the same milliseconds.
- **Swarm testing** (Groce et al. 2012): each seed first decides which fault
  kinds are on at all (each with probability 1/2), so some seeds hammer
  one kind hard and some run fault-free, instead of every seed mixing a
  little of everything.
- **Two phases.** In the *safety phase* (``[safety_start_ms,
  liveness_start_ms)``) faults happen: crashes and restarts, graceful leaves,
  symmetric and one-way partitions with heals, loss and duplication bursts,
  forward clock steps. At ``liveness_start_ms`` everything heals: partitions
  go, loss returns to the base level, duplication to zero, and every down
  node restarts except those whose crash was drawn *permanent* (they stay
  down so the liveness phase also checks that the dead are declared dead).
- Clock offsets and drifts (``plan_clocks``) are drawn from their own stream
  before the run: they hold for the whole run, both phases.
- This module injects; it checks nothing. Checkers live elsewhere and learn
  what happened through ``FaultTarget.fault_applied``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from moot.sim.clock import LocalClock
from moot.sim.world import World

# Fault kinds swarm testing turns on or off per seed, in a fixed order so the
# draw is deterministic.
FAULT_KINDS: Final = ("crash", "partition", "one_way", "loss", "duplication", "clock_step")


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Bounds on what the fault plan may draw; the seed picks within them."""

    safety_ms: int = 30_000
    """Length of the safety phase (faults on)."""

    slot_ms_min: int = 1_000
    """Shortest network-condition slot: a partition or a loss burst lasts at least this."""

    slot_ms_max: int = 40_000
    """Longest network-condition slot: long enough that a partition outlasts
    Lifeguard's longest suspicion timeout (24 s below 10 members), so both
    sides declare each other dead and must still merge after the heal."""

    crashes_max: int = 4
    """Most crash (or leave) events in one safety phase."""

    down_fraction_max: float = 0.5
    """At most ``floor((n - 1) * this)`` nodes are down at once, so a
    majority keeps running and the view has someone to converge on."""

    downtime_ms_min: int = 500
    """Shortest time a crashed node stays down before restarting."""

    downtime_ms_max: int = 30_000
    """Longest time a crashed node stays down (if the phase lasts)."""

    permanent_crash_probability: float = 0.3
    """Chance a crash lasts through the liveness phase."""

    leave_probability: float = 0.2
    """Chance a node goes down by a graceful leave instead of a crash."""

    loss_max: float = 0.3
    """Highest loss probability of a loss burst."""

    duplicate_max: float = 0.2
    """Highest duplication probability of a duplication burst."""

    drift_ppm_max: int = 200
    """Clock drift drawn per node from ``[-this, +this]`` ppm."""

    clock_offset_ms_max: int = 10_000_000
    """Local clock offset drawn per node from ``[0, this]`` (boot times differ)."""

    clock_steps_max: int = 2
    """Most forward clock steps (VM pauses) in one safety phase."""

    clock_step_ms_max: int = 3_000
    """Largest forward clock step."""

    def validate(self) -> None:
        """Raise ValueError naming the first field that makes no sense."""
        if self.safety_ms < 0:
            raise ValueError("FaultConfig.safety_ms must be >= 0")
        if not 0 < self.slot_ms_min <= self.slot_ms_max:
            raise ValueError("FaultConfig needs 0 < slot_ms_min <= slot_ms_max")
        if not 0 < self.downtime_ms_min <= self.downtime_ms_max:
            raise ValueError("FaultConfig needs 0 < downtime_ms_min <= downtime_ms_max")
        for name in ("permanent_crash_probability", "leave_probability", "loss_max", "duplicate_max",
                     "down_fraction_max"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"FaultConfig.{name} must be within [0, 1]")
        if self.crashes_max < 0 or self.clock_steps_max < 0 or self.clock_step_ms_max < 1:
            raise ValueError("FaultConfig counts must be >= 0 and clock_step_ms_max >= 1")


# -- faults -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fault:
    """Something that happens to the world at global time ``at_ms``."""

    at_ms: int

    def describe(self) -> str:
        """One line for the log and the trace."""
        fields = " ".join(f"{name}={getattr(self, name)}" for name in self.__slots__)
        return f"{type(self).__name__}(at_ms={self.at_ms}{' ' if fields else ''}{fields})"


@dataclass(frozen=True, slots=True)
class Crash(Fault):
    """Node ``node`` stops without a word."""

    node: int
    permanent: bool = False


@dataclass(frozen=True, slots=True)
class Leave(Fault):
    """Node ``node`` leaves gracefully, then stops."""

    node: int
    permanent: bool = False


@dataclass(frozen=True, slots=True)
class Restart(Fault):
    """Node ``node`` boots a fresh core from its disk and rejoins."""

    node: int


# Fault descriptions list node indexes up to this many, then only counts.
DESCRIBE_NODES_MAX: Final = 24


def _nodes_text(nodes: tuple[int, ...]) -> str:
    if len(nodes) <= DESCRIBE_NODES_MAX:
        return str(nodes)
    return f"<{len(nodes)} nodes from {nodes[0]}>"


@dataclass(frozen=True, slots=True)
class Partition(Fault):
    """Symmetric partition into ``groups`` of node indexes."""

    groups: tuple[tuple[int, ...], ...]

    def describe(self) -> str:
        """One line for the log and the trace."""
        return f"Partition(at_ms={self.at_ms} groups=({', '.join(_nodes_text(g) for g in self.groups)}))"


@dataclass(frozen=True, slots=True)
class OneWayPartition(Fault):
    """Messages from ``sources`` to ``destinations`` are dropped; the reverse flows."""

    sources: tuple[int, ...]
    destinations: tuple[int, ...]

    def describe(self) -> str:
        """One line for the log and the trace."""
        return (
            f"OneWayPartition(at_ms={self.at_ms} sources={_nodes_text(self.sources)} "
            f"destinations={_nodes_text(self.destinations)})"
        )


@dataclass(frozen=True, slots=True)
class Heal(Fault):
    """Every partition ends."""


@dataclass(frozen=True, slots=True)
class SetLoss(Fault):
    """Loss probability becomes ``probability``."""

    probability: float


@dataclass(frozen=True, slots=True)
class SetDuplication(Fault):
    """Duplication probability becomes ``probability``."""

    probability: float


@dataclass(frozen=True, slots=True)
class ClockStep(Fault):
    """Node ``node``'s local clock jumps forward by ``delta_ms``."""

    node: int
    delta_ms: int


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Everything the seed decided about faults for one run."""

    safety_start_ms: int
    liveness_start_ms: int
    kinds_enabled: tuple[str, ...]
    faults: tuple[Fault, ...] = field(default=())
    base_loss: float = 0.0

    def describe(self) -> list[str]:
        """The plan as log lines."""
        lines = [
            f"fault phases: safety [{self.safety_start_ms}, {self.liveness_start_ms}) ms, "
            f"liveness from {self.liveness_start_ms} ms",
            f"fault kinds enabled: {', '.join(self.kinds_enabled) or 'none'}; base loss {self.base_loss}",
        ]
        lines.extend(fault.describe() for fault in self.faults)
        return lines

    @property
    def permanently_down(self) -> tuple[int, ...]:
        """Nodes that stay down through the liveness phase."""
        down = [f.node for f in self.faults if isinstance(f, Crash | Leave) and f.permanent]
        return tuple(sorted(down))


@dataclass(frozen=True, slots=True)
class ClockPlan:
    """Per-node local clock offsets and drifts for the whole run."""

    offsets_ms: tuple[int, ...]
    drifts_ppm: tuple[int, ...]

    def clock(self, node: int) -> LocalClock:
        """Node ``node``'s local clock."""
        return LocalClock(offset_ms=self.offsets_ms[node], drift_ppm=self.drifts_ppm[node])


def plan_clocks(rng: random.Random, node_count: int, config: FaultConfig) -> ClockPlan:
    """Per-node clock offsets and drifts (drawn even when faults are off: clocks always differ)."""
    offsets = tuple(rng.randint(0, config.clock_offset_ms_max) for _ in range(node_count))
    drifts = tuple(rng.randint(-config.drift_ppm_max, config.drift_ppm_max) for _ in range(node_count))
    return ClockPlan(offsets, drifts)


def plan_faults(
    rng: random.Random,
    node_count: int,
    config: FaultConfig,
    *,
    safety_start_ms: int,
    enabled: bool,
    base_loss: float = 0.0,
) -> FaultPlan:
    """Draw the fault plan for one run (see module doc)."""
    config.validate()
    assert node_count >= 1
    assert safety_start_ms >= 0
    liveness_start_ms = safety_start_ms + config.safety_ms
    if not enabled:
        return FaultPlan(safety_start_ms, liveness_start_ms, (), (), base_loss)
    kinds = tuple(kind for kind in FAULT_KINDS if rng.random() < 0.5)
    faults: list[Fault] = []
    if "crash" in kinds:
        faults.extend(_plan_crashes(rng, node_count, config, safety_start_ms, liveness_start_ms))
    network_kinds = tuple(kind for kind in kinds if kind in ("partition", "one_way", "loss", "duplication"))
    if network_kinds:
        faults.extend(
            _plan_network(rng, node_count, config, network_kinds, safety_start_ms, liveness_start_ms, base_loss)
        )
    if "clock_step" in kinds:
        for _ in range(rng.randint(1, max(1, config.clock_steps_max))):
            at_ms = rng.randrange(safety_start_ms, max(safety_start_ms + 1, liveness_start_ms))
            faults.append(ClockStep(at_ms, rng.randrange(node_count), rng.randint(1, config.clock_step_ms_max)))
    # Stable sort: faults at the same millisecond keep their drawing order.
    faults.sort(key=lambda fault: fault.at_ms)
    return FaultPlan(safety_start_ms, liveness_start_ms, kinds, tuple(faults), base_loss)


def _plan_crashes(
    rng: random.Random, node_count: int, config: FaultConfig, start_ms: int, end_ms: int
) -> list[Fault]:
    down_max = int((node_count - 1) * config.down_fraction_max)
    if down_max < 1 or end_ms <= start_ms:
        return []
    times = sorted(rng.randrange(start_ms, end_ms) for _ in range(rng.randint(1, max(1, config.crashes_max))))
    down_until: dict[int, int] = {}  # node -> restart time (end_ms + 1 if it stays down)
    faults: list[Fault] = []
    for at_ms in times:
        for node in [node for node, until in down_until.items() if until <= at_ms]:
            del down_until[node]
        if len(down_until) >= down_max:
            continue
        up = [node for node in range(node_count) if node not in down_until]
        node = rng.choice(up)
        permanent = rng.random() < config.permanent_crash_probability
        graceful = rng.random() < config.leave_probability
        faults.append(Leave(at_ms, node, permanent) if graceful else Crash(at_ms, node, permanent))
        restart_ms = at_ms + rng.randint(config.downtime_ms_min, config.downtime_ms_max)
        if permanent or restart_ms >= end_ms:
            down_until[node] = end_ms + 1  # restarted (or not) by the liveness phase
        else:
            down_until[node] = restart_ms
            faults.append(Restart(restart_ms, node))
    return faults


def _plan_network(
    rng: random.Random,
    node_count: int,
    config: FaultConfig,
    kinds: Sequence[str],
    start_ms: int,
    end_ms: int,
    base_loss: float,
) -> list[Fault]:
    faults: list[Fault] = []
    at_ms = start_ms
    while at_ms < end_ms:
        slot_ms = rng.randint(config.slot_ms_min, config.slot_ms_max)
        slot_end_ms = min(end_ms, at_ms + slot_ms)
        # Half the slots are calm so faults come and go.
        if rng.random() < 0.5:
            kind = rng.choice(list(kinds))
            if kind == "partition" and node_count >= 2:
                faults.append(Partition(at_ms, _random_groups(rng, node_count)))
                faults.append(Heal(slot_end_ms))
            elif kind == "one_way" and node_count >= 2:
                sources, destinations = _random_cut(rng, node_count)
                faults.append(OneWayPartition(at_ms, sources, destinations))
                faults.append(Heal(slot_end_ms))
            elif kind == "loss":
                faults.append(SetLoss(at_ms, round(rng.uniform(base_loss, max(base_loss, config.loss_max)), 3)))
                faults.append(SetLoss(slot_end_ms, base_loss))
            elif kind == "duplication":
                faults.append(SetDuplication(at_ms, round(rng.uniform(0.0, config.duplicate_max), 3)))
                faults.append(SetDuplication(slot_end_ms, 0.0))
        at_ms = slot_end_ms
    return faults


def _random_groups(rng: random.Random, node_count: int) -> tuple[tuple[int, ...], ...]:
    group_count = rng.randint(2, min(3, node_count))
    shuffled = list(range(node_count))
    rng.shuffle(shuffled)
    # Every group gets at least one node; the rest land anywhere.
    groups: list[list[int]] = [[shuffled[i]] for i in range(group_count)]
    for node in shuffled[group_count:]:
        groups[rng.randrange(group_count)].append(node)
    return tuple(tuple(sorted(group)) for group in groups)


def _random_cut(rng: random.Random, node_count: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    shuffled = list(range(node_count))
    rng.shuffle(shuffled)
    split = rng.randint(1, node_count - 1)
    return tuple(sorted(shuffled[:split])), tuple(sorted(shuffled[split:]))


# -- applying ----------------------------------------------------------------------------


class FaultTarget(Protocol):
    """The scenario side of fault injection: node lifecycle and notifications."""

    def crash(self, node: int) -> None:
        """Stop ``node`` now."""
        ...

    def leave(self, node: int) -> None:
        """Make ``node`` leave gracefully, then stop it."""
        ...

    def restart(self, node: int) -> None:
        """Boot ``node`` again from its disk and rejoin."""
        ...

    def is_up(self, node: int) -> bool:
        """Whether ``node`` is running."""
        ...

    def fault_applied(self, fault: Fault) -> None:
        """Called after each fault took effect (checkers learn of it here)."""
        ...


def install(plan: FaultPlan, world: World[Any, Any], target: FaultTarget) -> None:
    """Schedule every fault of ``plan``, and the liveness phase's healing, on ``world``."""
    for fault in plan.faults:
        world.schedule(fault.at_ms, fault.describe(), _applier(world, target, fault))
    permanent = set(plan.permanently_down)

    def heal_everything() -> None:
        apply_fault(world, target, Heal(plan.liveness_start_ms))
        apply_fault(world, target, SetLoss(plan.liveness_start_ms, plan.base_loss))
        apply_fault(world, target, SetDuplication(plan.liveness_start_ms, 0.0))
        for node in range(len(world.nodes)):
            if node not in permanent and not target.is_up(node):
                apply_fault(world, target, Restart(plan.liveness_start_ms, node))

    world.schedule(plan.liveness_start_ms, "liveness phase: heal everything", heal_everything)


def _applier(world: World[Any, Any], target: FaultTarget, fault: Fault) -> Callable[[], None]:
    return lambda: apply_fault(world, target, fault)


def apply_fault(world: World[Any, Any], target: FaultTarget, fault: Fault) -> None:
    """Make ``fault`` happen now."""
    network = world.network
    nodes = world.nodes
    if isinstance(fault, Crash):
        if not target.is_up(fault.node):
            return
        target.crash(fault.node)
    elif isinstance(fault, Leave):
        if not target.is_up(fault.node):
            return
        target.leave(fault.node)
    elif isinstance(fault, Restart):
        if target.is_up(fault.node):
            return
        target.restart(fault.node)
    elif isinstance(fault, Partition):
        network.partition([[nodes[i].address for i in group] for group in fault.groups])
    elif isinstance(fault, OneWayPartition):
        network.block_one_way(
            [nodes[i].address for i in fault.sources], [nodes[i].address for i in fault.destinations]
        )
    elif isinstance(fault, Heal):
        network.heal()
    elif isinstance(fault, SetLoss):
        network.set_loss(fault.probability)
    elif isinstance(fault, SetDuplication):
        network.set_duplication(fault.probability)
    elif isinstance(fault, ClockStep):
        nodes[fault.node].clock.add_step(world.now_ms, fault.delta_ms)
        world.reschedule(fault.node)  # its timers may be due earlier now
    else:  # pragma: no cover - the fault kinds are closed
        raise AssertionError(f"unknown fault {fault!r}")
    target.fault_applied(fault)
