"""The object-store scenario: placement and repair (``moot.core.repair``) under crashes and partitions.

A run, all of it a function of ``ObjectsOptions`` (the seed above all):

1. **Build.** Storage nodes ``n0..n{N-1}`` (N from 5 to 9, drawn from the
   seed) across lahore, karachi and singapore, each running a real
   ``RepairPlanner`` inside ``StorageNode``, a small simulated runtime whose
   chunk store is a dict on the node's ``Disk`` (it survives crashes). One
   client (never crashed) writes objects.
2. **Membership** is not the SWIM core: a simulated failure detector gives
   every node (and the client) the ground truth with a delay. Every
   ``DETECTOR_INTERVAL_MS`` it compares each observer's view with the
   truth (a node is alive to an observer if it is up and reachable both
   ways); a difference is applied after a delay drawn from
   ``[DETECTION_DELAY_MS_MIN, DETECTION_DELAY_MS_MAX]``, if it still holds
   then. Partitions therefore make each side declare the other dead and
   repair within its side, as a real detector would.
3. **Writes.** During the safety phase the client writes objects of 1 to 4
   chunks. Each chunk goes to its desired holders in the client's view;
   unacknowledged chunks are re-sent every ``WRITE_RETRY_MS`` to the then
   desired holders. A write is acknowledged when every chunk has
   ``replicas_for(view, R)`` distinct durable acks.
4. **Safety phase** (``--duration-ms``): crashes (some permanent: the node
   and its disk never return), restarts, partitions, loss, duplication,
   clock steps (``faults.py``), and with ``corruption`` a scrub that finds
   a chunk corrupt on one node (only where another copy exists: bit rot
   of every copy is not a repair bug).
5. **Liveness phase**: everything heals and down nodes restart, except the
   permanently crashed.

Checks (the checker is ``ObjectChecks``, apart from the injectors):

- (a) **No loss** at every disk change: an acknowledged chunk always has a
  copy on some disk (up or down, permanently dead ones excluded) unless at
  least R of the nodes that acknowledged it died permanently.
- (b) **Repair** within ``repair_bound_ms`` of the heal: every chunk on a
  live disk is on each of its desired holders (``holders(c, live,
  min(R, live))``); then within ``drop_bound_ms`` more, on no other live
  node (extra copies dropped).
- (c) **Determinism**: same seed, same trace hash (tests, two processes).

Seeds (``world.derive_seed(seed, purpose)``): ``options``, ``network``,
``clock``, ``scenario`` (regions, writes, detector delays), ``faults``,
``corruption``, ``core/<node_id>/<epoch>``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from moot.core.placement import Candidate, holders, replicas_for
from moot.core.repair import RepairConfig, RepairPlanner
from moot.sim import faults as fault_plan
from moot.sim.faults import Fault, FaultConfig
from moot.sim.membership_scenario import JITTER_MS, LATENCY_MS, REGIONS
from moot.sim.network import Network, NetworkConfig
from moot.sim.world import SimNode, SimulationFailure, World, derive_seed, run_with_replay

PORT: Final = 7000
CLIENT_ID: Final = "client"

REPLICAS: Final = 3
"""R: the repair config's default."""

DETECTOR_INTERVAL_MS: Final = 200
"""How often the simulated failure detector compares views with the truth."""

DETECTION_DELAY_MS_MIN: Final = 500
DETECTION_DELAY_MS_MAX: Final = 2_000
"""A view learns a change (death, return, partition, heal) this long after it happens."""

WRITE_RETRY_MS: Final = 1_000
"""The client re-sends unacknowledged chunks this often."""

CHECK_INTERVAL_MS: Final = 250
"""How often the liveness phase checks placement."""

NODES_MIN: Final = 5
NODES_MAX: Final = 9


class LossFailure(SimulationFailure):
    """Check (a): an acknowledged chunk lost while fewer than R of its holders died."""


class RepairFailure(SimulationFailure):
    """Check (b): chunks not back on their desired holders (or extras not dropped) in time."""


# -- messages (sim-only; the runtime's wire format is the lead's) ---------------------------


@dataclass(frozen=True, slots=True)
class StoreChunk:
    """Client -> node: store this chunk durably, then ack."""

    chunk_id: str


@dataclass(frozen=True, slots=True)
class StoreAck:
    """Node -> client: the chunk is on my disk."""

    chunk_id: str
    node_id: str


@dataclass(frozen=True, slots=True)
class HasQuery:
    """Node -> node: which of these do you hold?"""

    sender: str
    chunk_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HasReply:
    """The answer to a ``HasQuery``."""

    sender: str
    present: tuple[str, ...]
    absent: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PushChunk:
    """Repair owner -> desired holder: a copy of the chunk."""

    sender: str
    chunk_id: str


@dataclass(frozen=True, slots=True)
class PushAck:
    """Desired holder -> repair owner: stored."""

    sender: str
    chunk_id: str


@dataclass(frozen=True, slots=True)
class Send:
    """One message to one address."""

    address: str
    message: Any


@dataclass(slots=True)
class SimEffects:
    """Effects of a storage node or the client: persist ``stored``/``deleted`` first, then send."""

    messages: list[Send] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    acknowledged: list[tuple[str, int, tuple[str, ...]]] = field(default_factory=list)
    """Client: ``(chunk_id, replicas required, nodes that acked)`` per chunk of each acknowledged write."""


def address_of(node_id: str) -> str:
    """Where ``node_id`` listens."""
    return f"{node_id}:{PORT}"


# -- the simulated runtimes ------------------------------------------------------------------


class StorageNode:
    """One node's object runtime, reduced to what repair needs: a store, a planner, the messages."""

    def __init__(
        self,
        config: RepairConfig,
        *,
        node_id: str,
        region: str,
        chunk_ids: Sequence[str],
        candidates: Sequence[Candidate],
        now_ms: int,
        planner_class: type[RepairPlanner] = RepairPlanner,
    ) -> None:
        self.node_id = node_id
        self.planner = planner_class(config, node_id=node_id, region=region, now_ms=now_ms)
        for chunk_id in chunk_ids:
            self.planner.add_local(chunk_id)
        self.planner.set_members(now_ms, candidates)

    def step(self, now_ms: int, message: Any) -> SimEffects:
        """Handle one message."""
        planner = self.planner
        effects = SimEffects()
        if isinstance(message, StoreChunk):
            self._store(message.chunk_id, effects)
            effects.messages.append(Send(address_of(CLIENT_ID), StoreAck(message.chunk_id, self.node_id)))
        elif isinstance(message, HasQuery):
            present, absent = planner.answer_has_query(message.chunk_ids)
            reply = HasReply(self.node_id, tuple(present), tuple(absent))
            effects.messages.append(Send(address_of(message.sender), reply))
        elif isinstance(message, HasReply):
            planner.on_has_reply(now_ms, message.sender, message.present, message.absent)
        elif isinstance(message, PushChunk):
            self._store(message.chunk_id, effects)
            effects.messages.append(Send(address_of(message.sender), PushAck(self.node_id, message.chunk_id)))
        elif isinstance(message, PushAck):
            planner.on_push_result(now_ms, message.chunk_id, message.sender, stored=True)
        else:
            raise AssertionError(f"unexpected {message!r}")
        return effects

    def tick(self, now_ms: int) -> SimEffects:
        """Run the planner and turn its decisions into messages and deletions."""
        decided = self.planner.tick(now_ms)
        effects = SimEffects(deleted=list(decided.drops))
        for node_id, chunk_ids in decided.queries.items():
            effects.messages.append(Send(address_of(node_id), HasQuery(self.node_id, tuple(chunk_ids))))
        for chunk_id, target in decided.pushes:
            effects.messages.append(Send(address_of(target), PushChunk(self.node_id, chunk_id)))
        return effects

    def next_deadline_ms(self) -> int:
        """The planner's next tick."""
        return self.planner.next_deadline_ms()

    def set_members(self, now_ms: int, candidates: Sequence[Candidate]) -> SimEffects:
        """Membership changed."""
        self.planner.set_members(now_ms, candidates)
        return SimEffects()

    def corrupt(self, now_ms: int, chunk_id: str) -> SimEffects:
        """A scrub found ``chunk_id`` corrupt: delete it (its owner pushes it back)."""
        if not self.planner.holds(chunk_id):
            return SimEffects()
        self.planner.remove_local(chunk_id)
        return SimEffects(deleted=[chunk_id])

    def _store(self, chunk_id: str, effects: SimEffects) -> None:
        if not self.planner.holds(chunk_id):
            self.planner.add_local(chunk_id)
            effects.stored.append(chunk_id)


class _Write:
    __slots__ = ("acks", "chunk_ids", "sent_ms")

    def __init__(self, chunk_ids: tuple[str, ...], now_ms: int) -> None:
        self.chunk_ids = chunk_ids
        self.acks: dict[str, dict[str, None]] = {chunk_id: {} for chunk_id in chunk_ids}
        self.sent_ms = now_ms


class Client:
    """Writes objects: each chunk to its desired holders, acknowledged at R distinct durable acks."""

    def __init__(self, candidates: Sequence[Candidate], now_ms: int) -> None:
        self.candidates = tuple(candidates)
        self.writes: dict[str, _Write] = {}
        self.acknowledged_count = 0
        self._next_ms = now_ms + WRITE_RETRY_MS

    def write(self, now_ms: int, object_id: str, chunk_ids: tuple[str, ...]) -> SimEffects:
        """Start writing an object."""
        assert object_id not in self.writes
        write = _Write(chunk_ids, now_ms)
        self.writes[object_id] = write
        effects = SimEffects()
        self._send(write, effects)
        return effects

    def step(self, now_ms: int, message: Any) -> SimEffects:
        """Count an ack; report writes that have all theirs."""
        assert isinstance(message, StoreAck), message
        effects = SimEffects()
        required = self._replicas()
        for object_id in list(self.writes):
            write = self.writes[object_id]
            acks = write.acks.get(message.chunk_id)
            if acks is None:
                continue
            acks[message.node_id] = None
            if all(len(nodes) >= required for nodes in write.acks.values()):
                del self.writes[object_id]
                self.acknowledged_count += 1
                for chunk_id, nodes in write.acks.items():
                    effects.acknowledged.append((chunk_id, required, tuple(nodes)))
        return effects

    def tick(self, now_ms: int) -> SimEffects:
        """Re-send what is not acknowledged yet to the current desired holders."""
        effects = SimEffects()
        for write in self.writes.values():
            if now_ms - write.sent_ms >= WRITE_RETRY_MS:
                write.sent_ms = now_ms
                self._send(write, effects)
        self._next_ms = now_ms + WRITE_RETRY_MS
        return effects

    def next_deadline_ms(self) -> int:
        """The next retry round."""
        return self._next_ms

    def set_members(self, now_ms: int, candidates: Sequence[Candidate]) -> SimEffects:
        """The client's view of the live nodes changed."""
        self.candidates = tuple(candidates)
        return SimEffects()

    def _replicas(self) -> int:
        return replicas_for(len(self.candidates), REPLICAS)

    def _send(self, write: _Write, effects: SimEffects) -> None:
        if not self.candidates:
            return
        replicas = self._replicas()
        for chunk_id in write.chunk_ids:
            acked = write.acks[chunk_id]
            if len(acked) >= replicas:
                continue
            for node_id in holders(chunk_id, self.candidates, replicas):
                if node_id not in acked:
                    effects.messages.append(Send(address_of(node_id), StoreChunk(chunk_id)))


# -- the checker ---------------------------------------------------------------------------


class ObjectChecks:
    """Check (a), incrementally, and the bookkeeping check (b) reads."""

    def __init__(self, replay_command: str) -> None:
        self.replay_command = replay_command
        self.copies: dict[str, int] = {}  # on disks of nodes not permanently dead
        self.acknowledged: dict[str, tuple[int, tuple[str, ...]]] = {}
        self.permanently_dead: dict[str, None] = {}
        self.lost_excused: dict[str, None] = {}
        self.acknowledged_writes = 0

    def stored(self, chunk_id: str) -> None:
        """A copy landed on a disk."""
        self.copies[chunk_id] = self.copies.get(chunk_id, 0) + 1

    def deleted(self, chunk_id: str, now_ms: int, node_id: str) -> None:
        """A copy left a disk (dropped or corrupt)."""
        count = self.copies[chunk_id] - 1
        assert count >= 0
        self.copies[chunk_id] = count
        if count == 0:
            self._check_lost(chunk_id, now_ms, f"{node_id} deleted the last copy")

    def acknowledge(self, chunk_id: str, replicas: int, nodes: tuple[str, ...], now_ms: int) -> None:
        """The client acknowledged a write including ``chunk_id``."""
        if chunk_id not in self.acknowledged:
            self.acknowledged[chunk_id] = (replicas, tuple(sorted(nodes)))
        if self.copies.get(chunk_id, 0) == 0:
            self._check_lost(chunk_id, now_ms, "acknowledged with no copy on disk")

    def permanent_death(self, node_id: str, chunk_ids: Sequence[str], now_ms: int) -> None:
        """``node_id`` and its disk are gone for good."""
        self.permanently_dead[node_id] = None
        for chunk_id in chunk_ids:
            self.copies[chunk_id] -= 1
            if self.copies[chunk_id] == 0:
                self._check_lost(chunk_id, now_ms, f"{node_id} died permanently with the last copy")

    def _check_lost(self, chunk_id: str, now_ms: int, why: str) -> None:
        acknowledged = self.acknowledged.get(chunk_id)
        if acknowledged is None:
            return  # never acknowledged: nobody was promised anything
        replicas, nodes = acknowledged
        dead = [node for node in nodes if node in self.permanently_dead]
        if len(dead) >= replicas:
            self.lost_excused[chunk_id] = None
            return
        raise LossFailure(
            f"(a) acknowledged chunk {chunk_id} lost at {now_ms} ms ({why}): acknowledged by {list(nodes)} "
            f"with R={replicas}, only {dead} of them died permanently\nreplay: {self.replay_command}"
        )


# -- options and result ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ObjectsOptions:
    """Everything that determines an objects run; ``command()`` replays it."""

    seed: int
    nodes: int = 6
    duration_ms: int = 20_000
    loss: float = 0.0
    faults: bool = True
    writes: int = 30
    corruption: bool = True
    repair_bound_ms: int = 20_000
    drop_bound_ms: int = 10_000

    @classmethod
    def for_seed(cls, seed: int) -> ObjectsOptions:
        """The options the sweep runs for ``seed``: size, length, loss, writes and corruption vary."""
        rng = random.Random(derive_seed(seed, "options"))
        return cls(
            seed=seed,
            nodes=rng.randint(NODES_MIN, NODES_MAX),
            duration_ms=rng.choice((10_000, 15_000, 20_000, 30_000)),
            loss=rng.choice((0.0, 0.0, 0.01, 0.05)),
            faults=rng.random() < 0.95,
            writes=rng.randint(10, 40),
            corruption=rng.random() < 0.5,
        )

    def validate(self) -> None:
        """Raise ValueError naming the first option that makes no sense."""
        if self.seed < 0:
            raise ValueError("--seed must be >= 0")
        if not NODES_MIN <= self.nodes <= NODES_MAX:
            raise ValueError(f"--nodes must be within [{NODES_MIN}, {NODES_MAX}]")
        if self.duration_ms < 1_000:
            raise ValueError("--duration-ms must be >= 1000")
        if not 0.0 <= self.loss < 0.5:
            raise ValueError("--loss must be within [0, 0.5)")
        if self.writes < 0:
            raise ValueError("--writes must be >= 0")
        if self.repair_bound_ms < 1 or self.drop_bound_ms < 1:
            raise ValueError("--repair-bound-ms and --drop-bound-ms must be >= 1")

    def command(self) -> str:
        """The command line that replays this run exactly."""
        return (
            f"python -m moot.sim objects --seed {self.seed} --nodes {self.nodes} "
            f"--duration-ms {self.duration_ms} --loss {self.loss} "
            f"{'--faults' if self.faults else '--no-faults'} --writes {self.writes} "
            f"{'--corruption' if self.corruption else '--no-corruption'} "
            f"--repair-bound-ms {self.repair_bound_ms} --drop-bound-ms {self.drop_bound_ms}"
        )


@dataclass(slots=True)
class ObjectsResult:
    """What a run did and measured."""

    options: ObjectsOptions
    trace_hash: str
    end_ms: int
    log: list[str]
    acknowledged_writes: int
    acknowledged_chunks: int
    lost_excused: int
    permanent_deaths: int
    crashes: int
    corruptions: int
    pushes: int
    drops: int
    placed_ms: int
    """Time from the heal until every chunk was on its desired holders."""
    dropped_ms: int
    """Time from the heal until no extra copy was left."""
    checks: list[str]

    def report(self) -> list[str]:
        """Stats lines."""
        return [
            f"writes acknowledged: {self.acknowledged_writes} ({self.acknowledged_chunks} chunks); "
            f"lost with >= R holders dead (excused): {self.lost_excused}",
            f"faults: {self.crashes} crashes ({self.permanent_deaths} permanent), {self.corruptions} corruptions",
            f"repair: {self.pushes} pushes, {self.drops} drops; placed {self.placed_ms} ms and extras dropped "
            f"{self.dropped_ms} ms after the heal",
        ]


# -- the scenario ------------------------------------------------------------------------------

Core = StorageNode | Client


class ObjectsScenario:
    """Builds and runs one objects scenario (module doc); also the world's ``CoreDriver`` and ``FaultTarget``."""

    def __init__(
        self,
        options: ObjectsOptions,
        *,
        planner_class: type[RepairPlanner] = RepairPlanner,
        trace_sink: Callable[[str], None] | None = None,
    ) -> None:
        options.validate()
        self.options = options
        self.planner_class = planner_class
        self.config = RepairConfig.sim()
        seed = options.seed
        self.rng = random.Random(derive_seed(seed, "scenario"))
        self.corruption_rng = random.Random(derive_seed(seed, "corruption"))
        network = Network(
            NetworkConfig(regions=REGIONS, latency_ms=LATENCY_MS, jitter_ms=JITTER_MS),
            random.Random(derive_seed(seed, "network")),
        )
        self.fault_config = FaultConfig(
            safety_ms=options.duration_ms,
            slot_ms_max=8_000,
            downtime_ms_max=10_000,
            loss_max=0.3,
        )
        clocks = fault_plan.plan_clocks(
            random.Random(derive_seed(seed, "clock")), options.nodes + 1, self.fault_config
        )
        self.world: World[Any, SimEffects] = World(self, network, root_seed=seed, trace_sink=trace_sink)
        for index in range(options.nodes):
            region = self.rng.choice(REGIONS)
            self.world.add_node(f"n{index}", address_of(f"n{index}"), region, clocks.clock(index))
        self.client_index = options.nodes
        self.world.add_node(CLIENT_ID, address_of(CLIENT_ID), self.rng.choice(REGIONS), clocks.clock(options.nodes))
        network.set_loss(options.loss)
        self.checks = ObjectChecks(options.command())
        self.log: list[str] = []
        # The detector: per observer (node index, client included), who it believes alive.
        count = options.nodes + 1
        self.views: list[list[bool]] = [[True] * options.nodes for _ in range(count)]
        self.pending_view_change: dict[tuple[int, int], None] = {}
        self.permanent: dict[int, None] = {}
        self.crashes = 0
        self.corruptions = 0
        self.pushes = 0
        self.drops = 0
        self.placed_ms = -1
        self.dropped_ms = -1
        self.heal_ms = 0
        self._log_options()

    # -- running ----------------------------------------------------------------------

    def run(self) -> ObjectsResult:
        """Run both phases; raises ``SimulationFailure`` (with the replay command) on a broken invariant."""
        return run_with_replay(self._run, self.options.command)

    def _run(self) -> ObjectsResult:
        world = self.world
        options = self.options
        for index in range(options.nodes + 1):
            world.start(index)
        plan = fault_plan.plan_faults(
            random.Random(derive_seed(options.seed, "faults")),
            options.nodes,
            self.fault_config,
            safety_start_ms=1_000,
            enabled=options.faults,
            base_loss=options.loss,
        )
        self.log.extend(plan.describe())
        fault_plan.install(plan, world, self)
        self.heal_ms = plan.liveness_start_ms
        self._schedule_writes(plan.liveness_start_ms)
        if options.corruption and options.faults:
            self._schedule_corruptions(plan.safety_start_ms, plan.liveness_start_ms)
        world.schedule(DETECTOR_INTERVAL_MS, "detector", self._detector_tick)
        world.schedule(plan.liveness_start_ms, "check placement", self._placement_tick)
        deadline_ms = plan.liveness_start_ms + options.repair_bound_ms + options.drop_bound_ms
        world.run_until(deadline_ms)
        if self.dropped_ms < 0:
            self._fail_placement(final=True)
        return self._result()

    def _schedule_writes(self, end_ms: int) -> None:
        times = sorted(self.rng.randrange(0, end_ms) for _ in range(self.options.writes))
        for number, at_ms in enumerate(times):
            chunk_count = self.rng.randint(1, 4)
            object_id = f"o{number}"
            chunk_ids = tuple(
                hashlib.sha256(f"{self.options.seed}/{object_id}/{part}".encode()).hexdigest()[:16]
                for part in range(chunk_count)
            )
            world = self.world
            world.schedule(at_ms, f"write {object_id}", self._writer(object_id, chunk_ids))

    def _writer(self, object_id: str, chunk_ids: tuple[str, ...]) -> Callable[[], None]:
        def write() -> None:
            self.world.call(self.client_index, lambda core, now_ms: core.write(now_ms, object_id, chunk_ids))

        return write

    def _schedule_corruptions(self, start_ms: int, end_ms: int) -> None:
        rng = self.corruption_rng
        for _ in range(rng.randint(1, 6)):
            at_ms = rng.randrange(start_ms, end_ms)
            self.world.schedule(at_ms, "scrub finds a corrupt chunk", self._corrupter())

    def _corrupter(self) -> Callable[[], None]:
        def corrupt() -> None:
            rng = self.corruption_rng
            up = [node for node in self.world.nodes[: self.options.nodes] if node.up and _chunks_of(node)]
            if not up:
                return
            node = rng.choice(up)
            # Only a chunk with another copy somewhere: losing every copy to
            # bit rot is not a repair bug.
            spare = [chunk for chunk in _chunks_of(node) if self.checks.copies.get(chunk, 0) >= 2]
            if not spare:
                return
            chunk_id = rng.choice(spare)
            self.corruptions += 1
            self.world.trace(f"{self.world.now_ms} corrupt {node.index} {chunk_id}")
            self.world.call(node.index, lambda core, now_ms: core.corrupt(now_ms, chunk_id))

        return corrupt

    # -- the failure detector -------------------------------------------------------------

    def _alive_to(self, observer: int, node: int) -> bool:
        world = self.world
        if not world.nodes[node].up:
            return False
        if observer == node:
            return True
        network = world.network
        source = world.nodes[observer].address
        destination = world.nodes[node].address
        return not network.is_blocked(source, destination) and not network.is_blocked(destination, source)

    def _detector_tick(self) -> None:
        world = self.world
        for observer in range(self.options.nodes + 1):
            if not world.nodes[observer].up:
                continue
            view = self.views[observer]
            for node in range(self.options.nodes):
                if view[node] != self._alive_to(observer, node) and (observer, node) not in self.pending_view_change:
                    self.pending_view_change[(observer, node)] = None
                    delay_ms = self.rng.randint(DETECTION_DELAY_MS_MIN, DETECTION_DELAY_MS_MAX)
                    world.schedule(world.now_ms + delay_ms, f"detect {observer} {node}", self._learner(observer, node))
        world.schedule(world.now_ms + DETECTOR_INTERVAL_MS, "detector", self._detector_tick)

    def _learner(self, observer: int, node: int) -> Callable[[], None]:
        def learn() -> None:
            del self.pending_view_change[(observer, node)]
            if not self.world.nodes[observer].up:
                return
            truth = self._alive_to(observer, node)
            if self.views[observer][node] != truth:
                self.views[observer][node] = truth
                self._tell_members(observer)

        return learn

    def _candidates(self, observer: int) -> list[Candidate]:
        view = self.views[observer]
        nodes = self.world.nodes
        return [Candidate(nodes[i].node_id, nodes[i].region) for i in range(self.options.nodes) if view[i]]

    def _tell_members(self, observer: int) -> None:
        candidates = self._candidates(observer)
        self.world.call(observer, lambda core, now_ms: core.set_members(now_ms, candidates))

    # -- check (b) ------------------------------------------------------------------------------

    def _placement(self) -> tuple[list[str], list[str]]:
        """Chunks missing from a desired holder, and extra copies, as text (sorted, deterministic)."""
        live = [node for node in self.world.nodes[: self.options.nodes] if node.up]
        candidates = [Candidate(node.node_id, node.region) for node in live]
        replicas = replicas_for(len(candidates), REPLICAS)
        where: dict[str, list[str]] = {}
        for node in live:
            for chunk_id in _chunks_of(node):
                where.setdefault(chunk_id, []).append(node.node_id)
        missing: list[str] = []
        extra: list[str] = []
        for chunk_id in sorted(where):
            have = where[chunk_id]
            desired = holders(chunk_id, candidates, replicas)
            absent = [node_id for node_id in desired if node_id not in have]
            if absent:
                missing.append(f"{chunk_id} on {sorted(have)} missing from {absent}")
            surplus = [node_id for node_id in have if node_id not in desired]
            if surplus:
                extra.append(f"{chunk_id} on {sorted(have)} extra on {sorted(surplus)}")
        for chunk_id in sorted(self.checks.acknowledged):
            if chunk_id not in where and chunk_id not in self.checks.lost_excused:
                missing.append(f"{chunk_id} acknowledged and on no live disk")
        return missing, extra

    def _placement_tick(self) -> None:
        world = self.world
        missing, extra = self._placement()
        elapsed_ms = world.now_ms - self.heal_ms
        if not missing and self.placed_ms < 0:
            self.placed_ms = elapsed_ms
            self.log.append(f"placement converged {elapsed_ms} ms after the heal")
        if not missing and not extra:
            self.dropped_ms = elapsed_ms
            self.log.append(f"extra copies dropped {elapsed_ms} ms after the heal")
            world.stop_requested = True
            return
        if self.placed_ms < 0 and elapsed_ms >= self.options.repair_bound_ms:
            self._fail_placement(final=False)
        world.schedule(world.now_ms + CHECK_INTERVAL_MS, "check placement", self._placement_tick)

    def _fail_placement(self, *, final: bool) -> None:
        missing, extra = self._placement()
        if final:
            what = f"extra copies not dropped within {self.options.drop_bound_ms} ms after placement's bound"
            lines = (missing + extra)[:10]
        else:
            what = f"chunks not on their desired holders within {self.options.repair_bound_ms} ms of the heal"
            lines = missing[:10]
        raise RepairFailure(
            f"(b) {what}: {len(missing)} missing, {len(extra)} extra:\n  " + "\n  ".join(lines)
            + f"\nreplay: {self.options.command()}"
        )

    # -- CoreDriver -----------------------------------------------------------------------------

    def create(self, node: SimNode[Any], rng: random.Random, now_ms: int) -> Core:
        """A client, or a storage node built from its disk."""
        if self.world.now_ms > 0:  # at 0 every node boots, and all believe all alive
            self.views[node.index] = [self._alive_to(node.index, other) for other in range(self.options.nodes)]
        candidates = self._candidates(node.index)
        if node.index == self.client_index:
            return Client(candidates, now_ms)
        return StorageNode(
            self.config,
            node_id=node.node_id,
            region=node.region,
            chunk_ids=_chunks_of(node),
            candidates=candidates,
            now_ms=now_ms,
            planner_class=self.planner_class,
        )

    def persist(self, node: SimNode[Any], effects: SimEffects) -> None:
        """Store and delete chunk files."""
        if not effects.stored and not effects.deleted:
            return
        chunks: dict[str, None] = node.disk.get("chunks", {})  # mutated only here, in the persist step
        for chunk_id in effects.stored:
            assert chunk_id not in chunks
            chunks[chunk_id] = None
        for chunk_id in effects.deleted:
            assert chunk_id in chunks, f"{node.node_id} deletes {chunk_id} it does not hold"
            del chunks[chunk_id]
        node.disk.put("chunks", chunks)

    def audit(self, node: SimNode[Any], effects: SimEffects) -> None:
        """An ack must follow the chunk onto the disk."""
        chunks = node.disk.get("chunks", {})
        for send in effects.messages:
            message = send.message
            if isinstance(message, StoreAck | PushAck) and message.chunk_id not in chunks:
                raise SimulationFailure(f"{node.node_id} acks {message.chunk_id} it has not persisted")

    def observe(self, node: SimNode[Any], effects: SimEffects, global_ms: int) -> None:
        """Feed the checker and the trace."""
        trace = self.world.trace
        for chunk_id in effects.stored:
            self.checks.stored(chunk_id)
        for chunk_id in effects.deleted:
            trace(f"{global_ms} delete {node.index} {chunk_id}")
            self.checks.deleted(chunk_id, global_ms, node.node_id)
        self.drops += len(effects.deleted)
        for send in effects.messages:
            if isinstance(send.message, PushChunk):
                self.pushes += 1
        for chunk_id, replicas, nodes in effects.acknowledged:
            trace(f"{global_ms} acknowledged {chunk_id} {replicas} {','.join(sorted(nodes))}")
            self.checks.acknowledge(chunk_id, replicas, nodes, global_ms)

    def started(self, node: SimNode[Any], global_ms: int) -> None:
        """A node booted."""

    def crashed(self, node: SimNode[Any], global_ms: int) -> None:
        """A node crashed."""
        self.crashes += 1

    # -- FaultTarget ------------------------------------------------------------------------------

    def crash(self, node: int) -> None:
        """Stop ``node`` without a word."""
        self.world.crash(node)

    def leave(self, node: int) -> None:
        """Object nodes have no goodbye here: a crash."""
        self.world.crash(node)

    def restart(self, node: int) -> None:
        """Boot from disk."""
        self.world.start(node)

    def is_up(self, node: int) -> bool:
        """Whether ``node`` runs."""
        return self.world.nodes[node].up

    def fault_applied(self, fault: Fault) -> None:
        """Permanent deaths take the disk; partitions place the client in a group too."""
        world = self.world
        if isinstance(fault, fault_plan.Crash | fault_plan.Leave) and fault.permanent:
            node = world.nodes[fault.node]
            if fault.node not in self.permanent and not node.up:
                self.permanent[fault.node] = None
                self.checks.permanent_death(node.node_id, _chunks_of(node), world.now_ms)
        elif isinstance(fault, fault_plan.Partition):
            groups = [[world.nodes[i].address for i in group] for group in fault.groups]
            groups[self.rng.randrange(len(groups))].append(world.nodes[self.client_index].address)
            world.network.partition(groups)

    # -- reporting --------------------------------------------------------------------------------

    def _log_options(self) -> None:
        options = self.options
        self.log.append(f"options: {options.command()}")
        self.log.append(
            "derived seeds: "
            + " ".join(
                f"{purpose}={derive_seed(options.seed, purpose)}"
                for purpose in ("options", "network", "clock", "scenario", "faults", "corruption")
            )
        )
        config = self.config
        self.log.append(
            f"repair config: replicas={config.replicas} tick_interval_ms={config.tick_interval_ms} "
            f"knowledge_ttl_ms={config.knowledge_ttl_ms} query_timeout_ms={config.query_timeout_ms} "
            f"push_timeout_ms={config.push_timeout_ms}"
        )
        self.log.append(
            f"detector: every {DETECTOR_INTERVAL_MS} ms, delay [{DETECTION_DELAY_MS_MIN}, "
            f"{DETECTION_DELAY_MS_MAX}] ms; client retry {WRITE_RETRY_MS} ms"
        )
        for node in self.world.nodes:
            self.log.append(f"  {node.node_id} {node.region} {node.clock.describe()}")

    def _result(self) -> ObjectsResult:
        checks = self.checks
        return ObjectsResult(
            options=self.options,
            trace_hash=self.world.trace_hash,
            end_ms=self.world.now_ms,
            log=self.log,
            acknowledged_writes=_client_acknowledged(self.world.nodes[self.client_index]),
            acknowledged_chunks=len(checks.acknowledged),
            lost_excused=len(checks.lost_excused),
            permanent_deaths=len(self.permanent),
            crashes=self.crashes,
            corruptions=self.corruptions,
            pushes=self.pushes,
            drops=self.drops - self.corruptions,  # a corrupt chunk's deletion is no drop
            placed_ms=self.placed_ms,
            dropped_ms=self.dropped_ms,
            checks=[
                f"(a) no acknowledged chunk lost ({len(checks.acknowledged)} checked at every disk change, "
                f"{len(checks.lost_excused)} excused: >= R holders died permanently)",
                f"(b) placement {self.placed_ms} ms after the heal (bound {self.options.repair_bound_ms}), "
                f"extras dropped {self.dropped_ms} ms after (bound "
                f"{self.options.repair_bound_ms + self.options.drop_bound_ms})",
                "acks only after persisting (audit)",
            ],
        )


def _chunks_of(node: SimNode[Any]) -> list[str]:
    """The chunk ids on ``node``'s disk, in the order stored."""
    chunks: dict[str, None] = node.disk.get("chunks", {})
    return list(chunks)


def _client_acknowledged(node: SimNode[Any]) -> int:
    core = node.core
    return core.acknowledged_count if isinstance(core, Client) else 0


def run_objects(options: ObjectsOptions, **kwargs: Any) -> ObjectsResult:
    """Build and run one objects scenario (see ``ObjectsScenario``)."""
    return ObjectsScenario(options, **kwargs).run()


__all__ = [
    "LossFailure",
    "ObjectChecks",
    "ObjectsOptions",
    "ObjectsResult",
    "ObjectsScenario",
    "RepairFailure",
    "run_objects",
]
