"""The membership scenario: N real ``Membership`` cores across three regions, under faults.

A run, all of it a function of ``ScenarioOptions`` (the seed above all):

1. **Build.** Nodes ``n0..n{N-1}`` listen at ``n<i>:7000``, each placed in
   lahore, karachi or singapore (drawn from the seed) with a local clock
   of its own offset and drift. One-way delays come from ``LATENCY_MS``
   plus up to ``JITTER_MS`` of jitter.
2. **Join.** ``n0`` starts at 0 ms; every other node starts at a random
   time in the join window and joins up to two nodes started before it.
   Once all are up, the views must converge (check (c)) within
   ``join_bound_ms``. With ``bootstrap`` (large runs) every node instead
   starts at 0 ms on one shared membership in which all are alive.
3. **Safety phase** (``--duration-ms`` long, from the moment the join
   converged): the fault plan (``faults.py``) crashes, restarts and
   partitions; checks (a) and (b) watch every event.
4. **Liveness phase**: everything heals, down nodes restart (except those
   whose crash was drawn permanent) and the views must converge again
   within ``liveness_bound_ms``. The run ends as soon as they do.

Seeds (``world.derive_seed(seed, purpose)``): ``network`` (delays, loss,
duplication), ``clock`` (offsets, drifts), ``scenario`` (regions, start
times, join seeds), ``faults`` (the fault plan), ``core/<node_id>/<epoch>``
(each life of each core).
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from moot.core import wire
from moot.core.membership import Membership, MemberView, Output, SharedMembers
from moot.core.membership_config import MembershipConfig
from moot.sim import faults as fault_plan
from moot.sim.faults import ClockStep, Fault, FaultConfig, FaultPlan
from moot.sim.membership_checks import (
    SNAPSHOT_NODES_MAX,
    CheckFailure,
    MembershipChecks,
    stretched_bound_ms,
)
from moot.sim.network import Network, NetworkConfig
from moot.sim.world import (
    CoreContractError,
    SimNode,
    World,
    derive_seed,
    run_with_replay,
)

REGIONS: Final = ("lahore", "karachi", "singapore")

# One-way delays in ms: about half the round trips public looking-glass data
# shows (within a metro ~2 ms RTT; Lahore-Karachi ~25 ms; Pakistan to
# Singapore ~80-90 ms). Rows are senders, columns receivers.
LATENCY_MS: Final = (
    (1, 12, 45),
    (12, 1, 40),
    (45, 40, 1),
)

# Queueing noise on every path. It reorders messages; even at its worst a
# round trip (2 * (45 + 10) ms) stays far below the sim profile's 500 ms
# probe timeout, so jitter alone must never cause a suspicion (check (b)).
JITTER_MS: Final = 10

# A loss above this excuses a late detection (check (a)); at or below it,
# the crash must still be detected in time.
DETECTION_LOSS_MAX: Final = 0.3

PORT: Final = 7000

# A correct core may miss the convergence bounds with at most this
# probability per member pair (see ``anti_entropy_rounds``): rare enough that
# thousands of seeds never flake.
CONVERGENCE_MISS_PROBABILITY: Final = 1e-6

# Above this many nodes the CLI bootstraps instead of joining one by one
# (each join's push-pull carries the whole view: O(n^2) work overall).
BOOTSTRAP_NODES_MIN: Final = 257


@dataclass(frozen=True, slots=True)
class ScenarioOptions:
    """Everything that determines a membership run; ``command()`` replays it."""

    seed: int
    nodes: int = 6
    duration_ms: int = 30_000
    loss: float = 0.0
    faults: bool = True
    lifeguard: bool = True
    profile: str = "sim"
    wire: bool = False
    bootstrap: bool = False
    """Start every node on the shared bootstrapped membership (all alive)
    instead of joining one by one: how large runs skip an O(n^2) join."""

    def validate(self) -> None:
        """Raise ValueError naming the first option that makes no sense."""
        if self.seed < 0:
            raise ValueError("--seed must be >= 0")
        if self.nodes < 1:
            raise ValueError("--nodes must be >= 1")
        if self.duration_ms < 0:
            raise ValueError("--duration-ms must be >= 0")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError("--loss must be within [0, 1)")
        MembershipConfig.named(self.profile)

    def command(self) -> str:
        """The command line that replays this run exactly."""
        return (
            f"python -m moot.sim membership --seed {self.seed} --nodes {self.nodes} "
            f"--duration-ms {self.duration_ms} --loss {self.loss} "
            f"{'--faults' if self.faults else '--no-faults'} "
            f"{'--lifeguard' if self.lifeguard else '--no-lifeguard'} --profile {self.profile} "
            f"{'--wire' if self.wire else '--no-wire'} {'--bootstrap' if self.bootstrap else '--no-bootstrap'}"
        )

    def membership_config(self) -> MembershipConfig:
        """The core's config for this run."""
        config = MembershipConfig.named(self.profile)
        if config.lifeguard != self.lifeguard:
            config = dataclasses.replace(config, lifeguard=self.lifeguard)
        return config


@dataclass(slots=True)
class ScenarioResult:
    """What a run did and measured."""

    options: ScenarioOptions
    trace_hash: str
    end_ms: int
    log: list[str]
    messages_total: int
    bytes_total: int
    deliveries: int
    wakes: int
    lost_to_down_nodes: int
    join_converged_ms: int | None
    liveness_converged_ms: int | None
    time_to_all_know_ms: list[int]
    crashes_checked: int
    crashes_voided: int
    detection_undetermined: int
    false_positives: int
    false_positives_in_clean_run: bool
    busiest_member: str = ""
    busiest_member_messages_sent: int = 0
    checks: list[str] = field(default_factory=list)

    def report(self) -> list[str]:
        """Human-readable stats lines."""
        seconds = max(self.end_ms, 1) / 1000
        per_member = self.messages_total / max(1, self.options.nodes) / seconds
        detect = self.time_to_all_know_ms
        detect_text = (
            f"n={len(detect)} median={statistics.median(detect):.0f} max={max(detect)}"
            if detect
            else "n=0"
        )
        lines = [
            f"simulated {self.end_ms} ms: {self.deliveries} deliveries, {self.wakes} wake-ups, "
            f"{self.lost_to_down_nodes} messages lost to down nodes",
            f"messages per member per second: {per_member:.2f} (busiest: {self.busiest_member} "
            f"{self.busiest_member_messages_sent / seconds:.2f})",
            f"join converged after {self.join_converged_ms} ms; liveness converged after "
            f"{self.liveness_converged_ms} ms",
            f"crash detection (time to all know, ms): {detect_text}; crashes checked {self.crashes_checked}, "
            f"voided {self.crashes_voided}, undetermined {self.detection_undetermined}",
            f"false positives: {self.false_positives}"
            f"{' (run was clean: check (b) enforced)' if self.false_positives_in_clean_run else ''}",
        ]
        if self.bytes_total:
            lines.append(f"bytes per member per second: {self.bytes_total / max(1, self.options.nodes) / seconds:.0f}")
        return lines


def anti_entropy_rounds(loss: float) -> int:
    """Push-pull rounds after which all of them failing is below CONVERGENCE_MISS_PROBABILITY.

    A round fails if its request or its reply is lost: ``1 - (1 - loss)^2``.
    At least two rounds, so a round that starts just before a change counts
    as no round.
    """
    assert 0.0 <= loss < 1.0
    round_failure = 1.0 - (1.0 - loss) ** 2
    if round_failure <= 0.0:
        return 2
    return max(2, math.ceil(math.log(CONVERGENCE_MISS_PROBABILITY) / math.log(round_failure)))


class MembershipScenario:
    """One membership run: the world's ``CoreDriver`` and the fault plan's ``FaultTarget``."""

    def __init__(
        self,
        options: ScenarioOptions,
        *,
        fault_config: FaultConfig | None = None,
        trace_sink: Callable[[str], None] | None = None,
        trace_messages: bool = False,
        audit: bool = True,
    ) -> None:
        options.validate()
        self.options = options
        self.config = options.membership_config()
        base_faults = fault_config or FaultConfig()
        self.fault_config = dataclasses.replace(base_faults, safety_ms=options.duration_ms)
        count = options.nodes
        seed = options.seed
        self.log: list[str] = []
        self.rng = random.Random(derive_seed(seed, "scenario"))
        network = Network(
            NetworkConfig(regions=REGIONS, latency_ms=LATENCY_MS, jitter_ms=JITTER_MS, wire_roundtrip=options.wire),
            random.Random(derive_seed(seed, "network")),
        )
        self.world: World[Membership, Output] = World(
            self, network, root_seed=seed, audit=audit, trace_messages=trace_messages, trace_sink=trace_sink
        )
        clocks = fault_plan.plan_clocks(random.Random(derive_seed(seed, "clock")), count, self.fault_config)
        self.cpus = [self.rng.choice((1, 2, 4, 8)) for _ in range(count)]
        for index in range(count):
            region = REGIONS[self.rng.randrange(len(REGIONS))]
            self.world.add_node(f"n{index}", f"n{index}:{PORT}", region, clocks.clock(index))
        self.incarnations = [0] * count
        self._leaving = False
        self.detection_bound_ms = stretched_bound_ms(
            self.config.detection_bound_ms(count), self.fault_config.drift_ppm_max
        )
        # Convergence leans on anti-entropy: gossip may miss a member, but
        # each push-pull round repairs a view unless its request or reply is
        # lost. ``rounds`` makes missing every round less likely than
        # CONVERGENCE_MISS_PROBABILITY even at the run's base loss.
        rounds = anti_entropy_rounds(options.loss)
        round_ms = self.config.push_pull_interval_scaled_ms(count)
        drift_ppm_max = self.fault_config.drift_ppm_max
        self.join_window_ms = min(60_000, 100 * count)
        # Join: every view complete within ``rounds`` anti-entropy rounds of the last start.
        self.join_bound_ms = stretched_bound_ms(rounds * round_ms, drift_ppm_max)
        # Liveness: crashed members are detected (detection bound), and
        # members wrongly held dead hear of it and refute, or are repaired by
        # anti-entropy, within ``rounds`` rounds.
        self.liveness_bound_ms = self.detection_bound_ms + stretched_bound_ms(rounds * round_ms, drift_ppm_max)
        self.check_interval_ms = 100 if count <= SNAPSHOT_NODES_MAX else 1_000
        nodes = self.world.nodes
        self.checks = MembershipChecks(
            [node.node_id for node in nodes],
            [node.address for node in nodes],
            detection_bound_ms=self.detection_bound_ms,
            detection_loss_max=DETECTION_LOSS_MAX,
            clean=options.loss == 0.0,
            replay_command=options.command(),
            schedule=self.world.schedule,
            snapshot=self._snapshot if count <= SNAPSHOT_NODES_MAX else None,
            incarnation_of=lambda index: self.incarnations[index],
        )
        network.set_loss(options.loss)
        self._shared_members = self._bootstrap_members() if options.bootstrap else None
        self.plan: FaultPlan | None = None
        self._log_options(clocks)

    # -- the run ---------------------------------------------------------------

    def run(self) -> ScenarioResult:
        """Run all phases; raises ``SimulationFailure`` (with the replay command) on a broken invariant."""
        return run_with_replay(self._run, self.options.command)

    def _run(self) -> ScenarioResult:
        world = self.world
        checks = self.checks
        if self.options.bootstrap:
            start_times = [0] * self.options.nodes
            for index in range(self.options.nodes):
                world.schedule(0, f"start n{index}", self._bootstrapper(index))
        else:
            start_times = [0] + [self.rng.randint(0, self.join_window_ms) for _ in range(1, self.options.nodes)]
            order = sorted(range(self.options.nodes), key=lambda index: (start_times[index], index))
            for position, index in enumerate(order):
                world.schedule(start_times[index], f"start n{index}", self._starter(index, order, position))
        last_start_ms = max(start_times)
        join_deadline_ms = last_start_ms + self.join_bound_ms
        world.schedule(last_start_ms, "arm join convergence", lambda: self._arm("join", join_deadline_ms))
        world.run_until(join_deadline_ms)
        join_converged = checks.convergence.converged_ms.get("join")
        assert join_converged is not None  # else the checker failed the run at the deadline

        plan = fault_plan.plan_faults(
            random.Random(derive_seed(self.options.seed, "faults")),
            self.options.nodes,
            self.fault_config,
            safety_start_ms=world.now_ms,
            enabled=self.options.faults,
            base_loss=self.options.loss,
        )
        self.plan = plan
        self.log.extend(plan.describe())
        fault_plan.install(plan, world, self)
        liveness_deadline_ms = plan.liveness_start_ms + self.liveness_bound_ms
        world.schedule(plan.liveness_start_ms, "arm liveness convergence", lambda: self._arm("liveness", liveness_deadline_ms))
        world.run_until(liveness_deadline_ms)
        assert checks.convergence.converged_ms.get("liveness") is not None
        checks.convergence.events_agree_with_snapshot()
        checks.detection.finish()
        return self._result()

    def _starter(self, index: int, order: list[int], position: int) -> Callable[[], None]:
        def start() -> None:
            # Join up to two of the nodes started before (all still up: no
            # faults during the join).
            earlier = [order[p] for p in self.rng.sample(range(position), min(2, position))]
            self._boot(index, earlier)

        return start

    def _bootstrapper(self, index: int) -> Callable[[], None]:
        def start() -> None:
            self.world.start(index)

        return start

    def _boot(self, index: int, seed_nodes: list[int]) -> None:
        world = self.world
        world.start(index)
        addresses = [world.nodes[other].address for other in seed_nodes]
        world.call(index, lambda core, now_ms: core.join(now_ms, addresses))

    def _arm(self, phase: str, deadline_ms: int) -> None:
        self.checks.convergence.arm(phase, self.world.now_ms, deadline_ms)
        self._convergence_tick()

    def _convergence_tick(self) -> None:
        world = self.world
        if self.checks.convergence.check(world.now_ms):
            world.stop_requested = True
            return
        next_ms = min(world.now_ms + self.check_interval_ms, self.checks.convergence.deadline_ms)
        world.schedule(next_ms, "check convergence", self._convergence_tick)

    def _bootstrap_members(self) -> SharedMembers:
        # Everyone alive at incarnation 1: what each node's first life starts
        # at (the persisted 0, plus one).
        alive = [
            wire.Alive(
                node_id=node.node_id,
                incarnation=1,
                address=node.address,
                labels={"region": node.region},
                cpus=self.cpus[node.index],
            )
            for node in self.world.nodes
        ]
        return SharedMembers.of(alive, 0)

    def _snapshot(self, index: int) -> list[MemberView]:
        return self.world.nodes[index].live_core().members()

    # -- CoreDriver -----------------------------------------------------------

    def create(self, node: SimNode[Membership], rng: random.Random, now_ms: int) -> Membership:
        """A fresh core whose incarnation is the one last persisted."""
        incarnation = node.disk.get("incarnation", 0)
        assert isinstance(incarnation, int)
        shared = self._shared_members if node.starts == 1 else None
        return Membership(
            self.config,
            node_id=node.node_id,
            address=node.address,
            labels={"region": node.region},
            cpus=self.cpus[node.index],
            rng=rng,
            now_ms=now_ms,
            incarnation=incarnation,
            shared_members=shared,
        )

    def persist(self, node: SimNode[Membership], effects: Output) -> None:
        """Persist the new incarnation, if any (never backwards)."""
        if effects.incarnation is None:
            return
        previous = node.disk.get("incarnation", 0)
        if effects.incarnation < previous:
            raise CoreContractError(
                f"{node.node_id}: Output.incarnation {effects.incarnation} is below the persisted {previous}"
            )
        node.disk.put("incarnation", effects.incarnation)

    def audit(self, node: SimNode[Membership], effects: Output) -> None:
        """Nothing sent may announce us at an incarnation the disk does not hold yet."""
        persisted = node.disk.get("incarnation", 0)
        core = node.core
        if core is not None and core.incarnation != persisted:
            raise CoreContractError(
                f"{node.node_id}: incarnation is {core.incarnation} but the last Output.incarnation "
                f"persisted was {persisted}: a change was not reported for persisting"
            )
        for send in effects.messages:
            announced = _self_incarnation_max(send.message, node.node_id)
            if announced > persisted:
                raise CoreContractError(
                    f"{node.node_id}: sends {type(send.message).__name__} announcing incarnation {announced} "
                    f"before persisting it (disk has {persisted})"
                )

    def observe(self, node: SimNode[Membership], effects: Output, global_ms: int) -> None:
        """Feed events to the checkers and the trace."""
        if effects.incarnation is not None:
            self.incarnations[node.index] = effects.incarnation
            self.world.trace(f"{global_ms} incarnation {node.index} {effects.incarnation}")
        events = effects.events
        if events:
            trace = self.world.trace
            for event in events:
                trace(f"{global_ms} event {node.index} {event.kind} {event.node_id} {event.incarnation}")
            self.checks.events(node.index, events, global_ms)

    def started(self, node: SimNode[Membership], global_ms: int) -> None:
        """A core booted."""
        self.incarnations[node.index] = node.live_core().incarnation
        self.checks.started(node.index, based=self._shared_members is not None and node.starts == 1)

    def crashed(self, node: SimNode[Membership], global_ms: int) -> None:
        """A core stopped."""
        self.checks.stopped(
            node.index,
            global_ms,
            self.incarnations[node.index],
            crashed=not self._leaving,
            network=self.world.network,
        )

    # -- FaultTarget ----------------------------------------------------------

    def crash(self, node: int) -> None:
        """Stop ``node`` without a word."""
        self.world.crash(node)

    def leave(self, node: int) -> None:
        """Leave gracefully, then stop."""
        self.world.call(node, lambda core, now_ms: core.leave(now_ms))
        self._leaving = True
        try:
            self.world.crash(node)
        finally:
            self._leaving = False

    def restart(self, node: int) -> None:
        """Boot from disk and rejoin through up to three up members."""
        up = [other for other, other_node in enumerate(self.world.nodes) if other_node.up and other != node]
        self._boot(node, self.rng.sample(up, min(3, len(up))))

    def is_up(self, node: int) -> bool:
        """Whether ``node`` runs."""
        return self.world.nodes[node].up

    def fault_applied(self, fault: Fault) -> None:
        """Tell the checkers what changed."""
        if isinstance(fault, ClockStep):
            self.checks.clock_stepped()
        elif isinstance(fault, fault_plan.Partition | fault_plan.OneWayPartition | fault_plan.Heal
                        | fault_plan.SetLoss | fault_plan.SetDuplication):
            self.checks.network_changed(self.world.network)

    # -- reporting -----------------------------------------------------------

    def _log_options(self, clocks: fault_plan.ClockPlan) -> None:
        options = self.options
        seed = options.seed
        log = self.log
        log.append(f"options: {options.command()}")
        log.append(
            "derived seeds: "
            + " ".join(f"{purpose}={derive_seed(seed, purpose)}" for purpose in ("network", "clock", "scenario", "faults"))
            + " core/<node_id>/<epoch>=derive_seed(seed, that)"
        )
        config = self.config
        log.append(
            f"membership config: profile={options.profile} lifeguard={config.lifeguard} "
            f"probe_interval_ms={config.probe_interval_ms} probe_timeout_ms={config.probe_timeout_ms} "
            f"suspicion_mult={config.suspicion_mult} gossip_interval_ms={config.gossip_interval_ms} "
            f"push_pull_interval_ms={config.push_pull_interval_ms}"
        )
        log.append(
            f"bounds: detection_ms={self.detection_bound_ms} join_ms={self.join_bound_ms} "
            f"liveness_ms={self.liveness_bound_ms} join_window_ms={self.join_window_ms}"
        )
        log.append(
            f"network: latency_ms={LATENCY_MS} jitter_ms={JITTER_MS} loss={options.loss} wire={options.wire}"
        )
        counts = {region: 0 for region in REGIONS}
        for node in self.world.nodes:
            counts[node.region] += 1
        log.append("regions: " + " ".join(f"{region}={count}" for region, count in counts.items()))
        if options.nodes <= 32:
            for node in self.world.nodes:
                log.append(f"  {node.node_id} {node.region} cpus={self.cpus[node.index]} {node.clock.describe()}")
        else:
            drifts = clocks.drifts_ppm
            log.append(f"clocks: drift_ppm in [{min(drifts)}, {max(drifts)}]")

    def _result(self) -> ScenarioResult:
        world = self.world
        checks = self.checks
        detection = checks.detection.stats
        clean = checks.false_positives.clean
        busiest = max(world.nodes, key=lambda node: (world.network.stats[node.address].messages_sent, -node.index))
        convergence = checks.convergence.converged_ms
        names = [
            f"(a) detection within {self.detection_bound_ms} ms: {detection.crashes_checked} crashes checked, "
            f"{len(detection.time_to_all_know_ms)} seen dead by all, {detection.crashes_voided} excused "
            f"(restart, loss), {detection.observers_voided} observers excused (down, partition)",
            "(b) no false positives: the run stayed clean" if clean else "",
            f"(c) convergence: join in {convergence.get('join')} ms (bound {self.join_bound_ms}), after healing "
            f"in {convergence.get('liveness')} ms (bound {self.liveness_bound_ms})"
            + ("" if self.options.nodes <= SNAPSHOT_NODES_MAX else " (alive sets only, from events)"),
            "events agree with members()" if self.options.nodes <= SNAPSHOT_NODES_MAX else "",
            "persist-before-send audit" if world.audit else "",
        ]
        return ScenarioResult(
            options=self.options,
            trace_hash=world.trace_hash,
            end_ms=world.now_ms,
            log=self.log,
            messages_total=world.network.messages_total,
            bytes_total=world.network.bytes_total,
            deliveries=world.stats.deliveries,
            wakes=world.stats.wakes,
            lost_to_down_nodes=world.stats.lost_to_down_nodes,
            join_converged_ms=checks.convergence.converged_ms.get("join"),
            liveness_converged_ms=checks.convergence.converged_ms.get("liveness"),
            time_to_all_know_ms=list(detection.time_to_all_know_ms),
            crashes_checked=detection.crashes_checked,
            crashes_voided=detection.crashes_voided,
            detection_undetermined=detection.undetermined,
            false_positives=len(checks.false_positives.false_positives),
            false_positives_in_clean_run=clean,
            busiest_member=busiest.node_id,
            busiest_member_messages_sent=world.network.stats[busiest.address].messages_sent,
            checks=[name for name in names if name],
        )


def _self_incarnation_max(message: Any, node_id: str) -> int:
    """The highest incarnation ``message`` announces for ``node_id`` itself (-1: none)."""
    highest = -1
    if isinstance(message, wire.PushPull):
        for state in message.states:
            if state.node_id == node_id and state.incarnation > highest:
                highest = state.incarnation
        return highest
    gossip = getattr(message, "gossip", ())
    for item in gossip:
        if isinstance(item, wire.Alive) and item.node_id == node_id and item.incarnation > highest:
            highest = item.incarnation
    return highest


def run_scenario(options: ScenarioOptions, **kwargs: Any) -> ScenarioResult:
    """Build and run one membership scenario (see ``MembershipScenario``)."""
    return MembershipScenario(options, **kwargs).run()


__all__ = ["CheckFailure", "MembershipScenario", "ScenarioOptions", "ScenarioResult", "run_scenario"]
