"""The Raft + KV scenario: N ``KvServer`` cores and their clients, under faults.

A run, all of it a function of ``RaftScenarioOptions`` (the seed above all):

1. **Build.** Voters ``n0..n{N-1}`` (N is 3 or 5) run ``KvServer`` with the
   ``RaftConfig.sim()`` profile (lease reads on for some seeds) and a small
   ``snapshot_entries`` so compaction and InstallSnapshot happen in every
   run. Each node's ``Disk`` holds ``hard_state``, ``snapshot`` and
   ``entries``; a restart rebuilds the server from exactly those.
   **Membership runs** (``conf_changes``, half the sweep): N is 1 or 3 and
   ``spares`` more nodes (5 or 6 in all) run too. Every node is built with
   ``voters=()``, as a real node is: the N founders' disks hold the
   bootstrap log (``add_learner``, ``promote`` of each founder at indexes
   1..2N, term 1, committed; the runtime's ``_bootstrap`` for one founder),
   a spare's disk is empty, so it learns the configuration only from the
   log or a snapshot once it is added.
2. **Effects contract.** Every ``ServerOutput`` is carried out as
   ``kv_server`` documents: persist (snapshot, then entries — replacing the
   stored suffix from the first new index — then hard state), send, deliver
   replies, ``advance``, then ``compact`` when due. The audit checks that
   nothing sent is ahead of the disk (a vote or an acknowledged entry that
   is not durable).
3. **Crashes mid-output (torn writes).** A crash of the fault plan is, with
   probability ``torn_probability``, deferred to the node's next output
   that has something to do, and lands in the middle of carrying it out:
   ``persist`` (a strict prefix of the writes — snapshot, each entry, hard
   state — is durable, nothing is sent), ``send`` (all durable, a prefix of
   the messages leaves) or ``apply`` (sent, but no reply delivered and no
   ``advance``). If the node has nothing to do for ``TORN_WAIT_MS`` it
   crashes cleanly.
4. **Clients.** ``clients`` clients, each one operation at a time, on
   ``KEYS``: put, get (linearizable; lease on lease seeds), cas, delete, plus
   stale gets and ranges (not checked: they may be stale by design). A
   client talks to the node it believes leads, follows ``not_leader``
   hints, retries a write whose outcome is unknown with the *same* seq
   (sessions dedupe), and gives up at the operation's deadline. Requests
   and replies cross a client link with delay and the network's loss.
   Every operation goes in the history: known outcome with its return time,
   unknown outcome (``leader_lost``/``timeout``/no answer, never resolved)
   with ``return_ms=None``; an operation every attempt of which was refused
   (``not_leader``, ``no_leader``, ``busy``) is left out.
5. **Safety phase** (``duration_ms``): the fault plan (``faults.py``, with
   timings scaled to Raft's): crashes and restarts, symmetric and one-way
   partitions, loss, duplication, forward clock steps; clock drift all run.
   ``raft_checks`` runs after every output of every node.
6. **Conf changes** (membership runs): every ``PLAN_INTERVAL_MS``, and at
   once after a conf change applies, each node that is leader asks the real
   planner (``moot.core.voters.plan``) for the next single-server change and
   proposes it with ``KvServer.propose_conf_change``, as the runtime's
   ``_plan_voters`` does. The planner is fed the simulator's ground truth:
   an up node is ``alive`` since it started, a down one ``dead`` since it
   crashed (grace ``DEAD_GRACE_MS``). So the voter set grows from the
   founders to five, replaces voters dead past the grace, shrinks when
   nodes are down. In the safety phase, with ``CHAOS_PROBABILITY`` per
   round, the leader instead proposes what the planner never does: remove
   itself (it must step down as the removal applies), remove a down voter
   within its grace, or promote a learner that may not have caught up (the
   core refuses it until it has).
7. **Liveness phase**: everything heals and down nodes restart (except
   permanent crashes, at most a minority). Each client then runs
   ``LIVENESS_OPS`` more operations, which must all end with a known
   outcome, then a final linearizable get of every key; all of it and the
   convergence of every up node's applied state must happen within
   ``LIVENESS_BOUND_MS``. A permanent crash that would leave a configuration
   some live node holds (or has pending in its log) without a quorum of
   live voters is revoked at the heal: no Raft group survives losing a
   majority of its voters, and the planner cannot replace voters without a
   quorum. Membership runs also wait until every live member holds the
   leader's configuration, every voter is up and the planner has nothing
   left to change (so the final voters are live nodes only).
8. **End checks**: logs pairwise, identical KV images at equal applied
   indexes, the history linearizable (``linearizability.check_kv``; a
   checker that gives up fails the run too), and no acknowledged write lost
   (each acknowledged write is the final value of its key or may have been
   overwritten by a write not ordered before it).

Lease reads are checked only in runs without clock steps: a forward step of
one node's clock is drift beyond any bound, which a lease does not survive
by design (the dissertation, 6.4.1).

Seeds (``world.derive_seed(seed, purpose)``): ``network``, ``clock``,
``scenario`` (sizes, clients, torn writes), ``clients``, ``faults``,
``conf_changes`` (chaos changes), ``core/<node_id>/<epoch>``; the sweep's
options come from ``options`` and (membership) ``membership``.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from moot.core import kv, voters
from moot.core.kv_server import (
    ClientReply,
    ClientRequest,
    ErrorReply,
    GetReply,
    GetRequest,
    KvServer,
    KvServerOptions,
    RangeReply,
    RangeRequest,
    ServerOutput,
    WriteReply,
    WriteRequest,
)
from moot.core.raft import Accepted, Output, RaftNode
from moot.core.raft_config import RaftConfig
from moot.core.raft_messages import (
    AppendEntries,
    AppendResponse,
    ConfChange,
    ConfState,
    Entry,
    HardState,
    InstallSnapshot,
    RaftMessage,
    Snapshot,
    VoteRequest,
    VoteResponse,
    decode_conf_change,
    encode_conf_change,
)
from moot.sim import faults as fault_plan
from moot.sim import linearizability as lz
from moot.sim.faults import ClockStep, Fault, FaultConfig, FaultPlan
from moot.sim.network import Network, NetworkConfig
from moot.sim.raft_checks import RaftCheckFailure, RaftChecks, apply_conf_change
from moot.sim.world import (
    CoreContractError,
    SimNode,
    SimulationFailure,
    World,
    derive_seed,
    run_with_replay,
)

KEYS: Final = (b"k0", b"k1", b"k2")

# One region; one-way delay 2 ms plus up to 6 ms of jitter (which reorders
# messages on a link), against the sim profile's 10 ms heartbeat.
LATENCY_MS: Final = ((2,),)
JITTER_MS: Final = 6
CLIENT_DELAY_MS: Final = (1, 5)

# Faults first hit once a leader had a chance to be elected.
WARMUP_MS: Final = 300

# Fault timings scaled to the sim profile (election timeout 100 ms): a
# partition or a loss burst lasts 0.1-0.6 s, a crashed node stays down
# 0.05-0.8 s, a clock step is up to 3 election timeouts.
RAFT_FAULTS: Final = FaultConfig(
    slot_ms_min=100,
    slot_ms_max=600,
    crashes_max=6,
    downtime_ms_min=50,
    downtime_ms_max=800,
    permanent_crash_probability=0.2,
    leave_probability=0.0,  # Raft has no graceful leave: a leave is a crash
    loss_max=0.3,
    duplicate_max=0.2,
    # +-2 %: the lease's 10 ms margin per 100 ms election timeout covers up
    # to 10 % between two clocks; 2 % each way is a bad crystal times 100.
    drift_ppm_max=20_000,
    clock_steps_max=2,
    clock_step_ms_max=300,
)

TORN_STAGES: Final = ("persist", "send", "apply")
LEADER_CRASH_PROBABILITY: Final = 0.5
# A deferred (torn) crash waits this long for an output, then crashes cleanly.
TORN_WAIT_MS: Final = 50

# Clients: one operation at a time, this long per attempt before trying
# another node, this long per operation before giving up (safety phase).
ATTEMPT_TIMEOUT_MS: Final = 150
OPERATION_DEADLINE_MS: Final = 700
THINK_MS_MAX: Final = 25
RETRY_BACKOFF_MS: Final = (5, 20)
LIVENESS_OPS: Final = 2
WANDER_PROBABILITY: Final = 0.3
# After the heal: an election (PreVote, then the vote: 2-4 election
# timeouts with restarts' lease), catch-up by snapshot, LIVENESS_OPS
# operations per client and the final reads, with retries.
LIVENESS_BOUND_MS: Final = 3_000
CONVERGENCE_POLL_MS: Final = 20

# Membership runs: the leader plans every PLAN_INTERVAL_MS (the runtime's
# VOTER_PLAN_INTERVAL_MS is 250 ms against a 1 s election timeout; the sim
# profile's is 100 ms). A voter down for DEAD_GRACE_MS (3 election timeouts)
# is replaced: some crashes of the plan (50-800 ms) outlast it, some do not.
PLAN_INTERVAL_MS: Final = 50
DEAD_GRACE_MS: Final = 300
VOTER_POLICY: Final = voters.VoterPolicy(dead_grace_ms=DEAD_GRACE_MS)
# Per leader per planning round in the safety phase: a change the planner
# would not make (module doc, step 6).
CHAOS_PROBABILITY: Final = 0.08
ChaosKind = Literal["remove_self", "remove_down_voter", "early_promote"]
CHAOS_WEIGHTS: Final[tuple[tuple[ChaosKind, int], ...]] = (
    ("remove_self", 3),
    ("remove_down_voter", 2),
    ("early_promote", 1),
)
# Zones of the nodes (by index), so the planner's placement rule has a choice.
ZONES: Final = ("z0", "z1", "z2")

# Linearizability check budget: histories are tens of operations on three
# keys, which check in well under a thousand steps unless something is off.
CHECK_STEPS_MAX: Final = 2_000_000

OperationKind = Literal["put", "get", "lease_get", "cas", "delete", "stale_get", "range"]
OPERATION_WEIGHTS: Final[tuple[tuple[OperationKind, int], ...]] = (
    ("put", 30),
    ("get", 22),
    ("cas", 20),
    ("delete", 10),
    ("lease_get", 8),
    ("stale_get", 5),
    ("range", 5),
)


@dataclass(frozen=True, slots=True)
class RaftScenarioOptions:
    """Everything that determines a Raft + KV run; ``command()`` replays it."""

    seed: int
    nodes: int = 3
    duration_ms: int = 1_500
    clients: int = 3
    faults: bool = True
    lease_reads: bool = False
    torn_probability: float = 0.5
    snapshot_entries: int = 8
    spares: int = 0
    """Nodes beyond the ``nodes`` founders, started with an empty configuration."""
    conf_changes: bool = False
    """Bootstrap the founders through the log and let the planner (and chaos)
    change the voter set (module doc, step 6)."""

    def validate(self) -> None:
        """Raise ValueError naming the first option that makes no sense."""
        if self.seed < 0:
            raise ValueError("--seed must be >= 0")
        if self.nodes < 1:
            raise ValueError("--nodes must be >= 1")
        if self.duration_ms < 0:
            raise ValueError("--duration-ms must be >= 0")
        if self.clients < 1:
            raise ValueError("--clients must be >= 1")
        if not 0.0 <= self.torn_probability <= 1.0:
            raise ValueError("--torn must be within [0, 1]")
        if self.snapshot_entries < 1:
            raise ValueError("--snapshot-entries must be >= 1")
        if self.spares < 0:
            raise ValueError("--spares must be >= 0")
        if self.spares and not self.conf_changes:
            raise ValueError("--spares needs --conf-changes: a spare only joins through a conf change")

    def command(self) -> str:
        """The command line that replays this run exactly.

        ``spares`` and ``conf_changes`` appear only when they differ from
        what the seed draws (``for_seed``), which the command line starts
        from: the CLI of this commit has no flags for them yet.
        """
        drawn = RaftScenarioOptions.for_seed(self.seed)
        membership = ""
        if (self.spares, self.conf_changes) != (drawn.spares, drawn.conf_changes):
            membership = f" --spares {self.spares} {'--conf-changes' if self.conf_changes else '--no-conf-changes'}"
        return (
            f"python -m moot.sim raft --seed {self.seed} --nodes {self.nodes} "
            f"--duration-ms {self.duration_ms} --clients {self.clients} "
            f"{'--faults' if self.faults else '--no-faults'} {'--lease' if self.lease_reads else '--no-lease'} "
            f"--torn {self.torn_probability} --snapshot-entries {self.snapshot_entries}{membership}"
        )

    @property
    def node_count(self) -> int:
        """Founders and spares."""
        return self.nodes + self.spares

    @classmethod
    def for_seed(cls, seed: int) -> RaftScenarioOptions:
        """The options the CI sweep runs for ``seed``: size, clients, leases and compaction vary."""
        rng = random.Random(derive_seed(seed, "options"))
        options = cls(
            seed=seed,
            nodes=rng.choice((3, 3, 5)),
            duration_ms=rng.choice((1_000, 1_500, 2_000)),
            clients=rng.randint(2, 4),
            faults=rng.random() < 0.95,
            lease_reads=rng.random() < 0.4,
            torn_probability=0.5,
            snapshot_entries=rng.choice((4, 8, 16)),
        )
        # Its own stream: the draws above (and so the runs of the seeds
        # without conf changes) are what they were before membership runs.
        membership = random.Random(derive_seed(seed, "membership"))
        if membership.random() < 0.5:
            return options
        founders = membership.choice((1, 3, 3))
        total = membership.choice((5, 6))
        return dataclasses.replace(options, nodes=founders, spares=total - founders, conf_changes=True)


@dataclass(slots=True)
class RaftScenarioResult:
    """What a run did."""

    options: RaftScenarioOptions
    trace_hash: str
    end_ms: int
    log: list[str]
    deliveries: int
    wakes: int
    operations: int
    operations_unknown: int
    refused_attempts: int
    leaders: int
    crashes: int
    torn_crashes: dict[str, int]
    snapshots_sent: int
    compactions: int
    applied_max: int
    check_steps: int
    liveness_ms: int | None
    conf_changes: dict[str, int] = field(default_factory=dict)
    leader_self_removals: int = 0
    conf_refusals: int = 0
    final_voters: tuple[str, ...] = ()
    revoked_permanent_crashes: int = 0
    checks: list[str] = field(default_factory=list)

    def report(self) -> list[str]:
        """Human-readable stats lines."""
        torn = " ".join(f"{stage}={count}" for stage, count in self.torn_crashes.items())
        return [
            f"simulated {self.end_ms} ms: {self.deliveries} deliveries, {self.wakes} wake-ups",
            f"history: {self.operations} operations ({self.operations_unknown} of unknown outcome), "
            f"{self.refused_attempts} refused attempts; linearizability check took {self.check_steps} steps",
            f"raft: {self.leaders} terms with a leader, {self.applied_max} entries applied, "
            f"{self.compactions} compactions, {self.snapshots_sent} InstallSnapshot sent",
            f"crashes: {self.crashes} (torn mid-output: {torn})",
            f"liveness: converged {self.liveness_ms} ms after the heal (bound {LIVENESS_BOUND_MS})",
        ] + (
            [
                "conf changes committed: "
                + " ".join(f"{kind}={count}" for kind, count in self.conf_changes.items())
                + f"; {self.leader_self_removals} leader self-removals, {self.conf_refusals} proposals refused, "
                f"{self.revoked_permanent_crashes} permanent crashes revoked; final voters {self.final_voters}"
            ]
            if self.options.conf_changes
            else []
        )


@dataclass(frozen=True, slots=True)
class Send:
    """One message to one node (the world's ``Outgoing``); addresses are node ids."""

    address: str
    message: RaftMessage


class HostEffects:
    """A ``ServerOutput`` as the world carries it out: its sends in the world's shape."""

    __slots__ = ("crash_before_apply", "messages", "output")

    def __init__(self, output: ServerOutput) -> None:
        self.output = output
        self.messages: list[Send] = [Send(message.target, message) for message in output.raft.messages]
        self.crash_before_apply = False


class RaftHost:
    """A node's ``KvServer`` in the world's ``Core`` shape."""

    __slots__ = ("server",)

    def __init__(self, server: KvServer) -> None:
        self.server = server

    def step(self, now_ms: int, message: RaftMessage) -> HostEffects:
        """A Raft message from a peer."""
        return HostEffects(self.server.step(now_ms, message))

    def tick(self, now_ms: int) -> HostEffects:
        """Timers."""
        return HostEffects(self.server.tick(now_ms))

    def handle(self, now_ms: int, requests: list[tuple[int, ClientRequest]]) -> HostEffects:
        """A round of client requests."""
        return HostEffects(self.server.handle(now_ms, requests))

    def compact(self, now_ms: int) -> HostEffects:
        """Snapshot and compact the log."""
        return HostEffects(self.server.compact(now_ms))

    def propose_conf_change(self, now_ms: int, change: ConfChange) -> HostEffects:
        """A single-server membership change (leader only; ``raft.result`` says if accepted)."""
        return HostEffects(self.server.propose_conf_change(now_ms, change))

    def next_deadline_ms(self) -> int:
        """When ``tick`` is next due."""
        return self.server.next_deadline_ms()


# -- the disk ------------------------------------------------------------------------------


def stored_entries(node: SimNode[RaftHost]) -> tuple[Entry, ...]:
    """The entries on ``node``'s disk (after its snapshot), in index order."""
    entries: tuple[Entry, ...] = node.disk.get("entries", ())
    return entries


def stored_snapshot(node: SimNode[RaftHost]) -> Snapshot | None:
    """The snapshot on ``node``'s disk, if any."""
    snapshot: Snapshot | None = node.disk.get("snapshot")
    return snapshot


def stored_hard_state(node: SimNode[RaftHost]) -> HardState:
    """The hard state on ``node``'s disk."""
    hard: HardState = node.disk.get("hard_state", HardState())
    return hard


def durable_last_index(node: SimNode[RaftHost]) -> int:
    """The last index the disk holds (the snapshot's when no entry follows it)."""
    entries = stored_entries(node)
    if entries:
        return entries[-1].index
    snapshot = stored_snapshot(node)
    return snapshot.meta.index if snapshot else 0


def write_snapshot(node: SimNode[RaftHost], snapshot: Snapshot) -> None:
    """Store ``snapshot``; keep the stored entries after it only if the stored
    entry at its index has its term (``moot.core.raft``'s contract)."""
    meta = snapshot.meta
    entries = stored_entries(node)
    at = [entry for entry in entries if entry.index == meta.index]
    kept = tuple(entry for entry in entries if entry.index > meta.index) if at and at[0].term == meta.term else ()
    node.disk.put("snapshot", snapshot)
    node.disk.put("entries", kept)


def write_entries(node: SimNode[RaftHost], entries: list[Entry]) -> None:
    """Replace the stored entries from ``entries[0].index`` on with ``entries``."""
    first = entries[0].index
    kept = tuple(entry for entry in stored_entries(node) if entry.index < first)
    snapshot = stored_snapshot(node)
    previous = kept[-1].index if kept else (snapshot.meta.index if snapshot else 0)
    if previous != first - 1:
        raise CoreContractError(
            f"{node.node_id}: Output.entries start at {first} but the disk ends at {previous}: a gap"
        )
    node.disk.put("entries", kept + tuple(entries))


# -- clients --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Operation:
    """The operation a client is carrying out."""

    kind: OperationKind
    key: bytes
    request: ClientRequest
    checked_input: object | None  # the linearizability model's input; None: not checked
    call_ms: int
    deadline_ms: int
    must_complete: bool
    ambiguous: bool = False  # an attempt may have been applied
    attempt: int = 0


@dataclass(slots=True)
class _Client:
    index: int
    client_id: str
    operations_left: int = 0
    seq: int = 0
    answered: bool = False  # a write of ours was answered: the session exists
    leader_guess: int | None = None
    operation: _Operation | None = None
    last_seen: dict[bytes, bytes | None] = field(default_factory=dict)
    done: bool = False


class RaftScenario:
    """One Raft + KV run: the world's ``CoreDriver`` and the fault plan's ``FaultTarget``."""

    def __init__(
        self,
        options: RaftScenarioOptions,
        *,
        trace_sink: Callable[[str], None] | None = None,
        trace_messages: bool = False,
        audit: bool = True,
    ) -> None:
        options.validate()
        self.options = options
        seed = options.seed
        self.config = dataclasses.replace(RaftConfig.sim(), lease_reads=options.lease_reads)
        self.server_options = KvServerOptions(request_timeout_ms=400, snapshot_entries=options.snapshot_entries)
        self.fault_config = dataclasses.replace(RAFT_FAULTS, safety_ms=options.duration_ms)
        self.log: list[str] = []
        self.rng = random.Random(derive_seed(seed, "scenario"))
        self.client_rng = random.Random(derive_seed(seed, "clients"))
        network = Network(
            NetworkConfig(latency_ms=LATENCY_MS, jitter_ms=JITTER_MS), random.Random(derive_seed(seed, "network"))
        )
        self.world: World[RaftHost, HostEffects] = World(
            self, network, root_seed=seed, audit=audit, trace_messages=trace_messages, trace_sink=trace_sink
        )
        clocks = fault_plan.plan_clocks(
            random.Random(derive_seed(seed, "clock")), options.node_count, self.fault_config
        )
        for index in range(options.node_count):
            self.world.add_node(f"n{index}", f"n{index}", "local", clocks.clock(index))
        self.voters = tuple(node.node_id for node in self.world.nodes[: options.nodes])
        # Membership runs bootstrap through the log (every node is built with
        # voters=()); the others pass the founders to the constructor.
        bootstrap_conf = ConfState(()) if options.conf_changes else ConfState(tuple(sorted(self.voters)))
        self.checks = RaftChecks(self._live_rafts, bootstrap_conf=bootstrap_conf)
        self.conf_rng = random.Random(derive_seed(seed, "conf_changes"))
        self._since_ms = [0] * options.node_count  # when each node last started or crashed (global)
        self.leader_self_removals = 0
        self.conf_refusals = 0
        self.revoked_permanent_crashes = 0
        self.final_voters: tuple[str, ...] = ()
        self._self_removals: dict[tuple[str, int], int] = {}  # (leader, index) of an accepted self-removal -> term
        self.clients = [_Client(index, f"c{index}") for index in range(options.clients)]
        self.history: list[lz.Operation] = []
        self._requests: dict[int, tuple[_Client, _Operation, int]] = {}  # request id -> client, operation, attempt
        self._next_request_id = 1
        self._torn_pending: dict[int, str] = {}  # node index -> stage of its deferred crash
        self.torn_crashes = dict.fromkeys(TORN_STAGES, 0)
        self.crashes = 0
        self.compactions = 0
        self.snapshots_sent = 0
        self.refused_attempts = 0
        self.plan: FaultPlan | None = None
        self.check_lease = options.lease_reads
        self.liveness_start_ms = WARMUP_MS + options.duration_ms
        self.liveness_deadline_ms = self.liveness_start_ms + LIVENESS_BOUND_MS
        self.liveness_ms: int | None = None
        self.check_steps = 0
        self._final_reads_started = False
        self._log_options(clocks)

    # -- the run -------------------------------------------------------------------------

    def run(self) -> RaftScenarioResult:
        """Run all phases; raises ``SimulationFailure`` (with the replay command) on a broken invariant."""
        return run_with_replay(self._run, self.options.command)

    def _run(self) -> RaftScenarioResult:
        world = self.world
        if self.options.conf_changes:
            self._bootstrap_founders()
        plan = self._start_with_faults()
        if any(isinstance(fault, ClockStep) for fault in plan.faults):
            self.check_lease = False  # see the module doc
        self.log.append(f"lease reads {'checked' if self.check_lease else 'not checked'}")
        for client in self.clients:
            start_ms = self.client_rng.randint(0, 50)
            world.schedule(start_ms, f"client {client.client_id} starts", self._next_operation_of(client))
        world.schedule(self.liveness_start_ms, "liveness: clients run their last operations", self._start_liveness)
        if self.options.conf_changes:
            world.schedule(PLAN_INTERVAL_MS, "voter plan", self._plan_round)
        world.run_until(self.liveness_deadline_ms)
        if self.liveness_ms is None:
            self._fail_liveness()
        self._final_checks()
        return self._result()

    def _start_with_faults(self) -> FaultPlan:
        """Boot every node and schedule the seed's fault plan (and the heal)."""
        world = self.world
        for index in range(self.options.node_count):
            world.start(index)
        plan = fault_plan.plan_faults(
            random.Random(derive_seed(self.options.seed, "faults")),
            self.options.node_count,
            self.fault_config,
            safety_start_ms=WARMUP_MS,
            enabled=self.options.faults,
        )
        self.plan = plan
        self.log.extend(plan.describe())
        fault_plan.install(plan, world, self)
        return plan

    def _bootstrap_founders(self) -> None:
        """Write the founders' bootstrap log (module doc, step 1); spares keep an empty disk."""
        entries: list[Entry] = []
        for founder in self.voters:
            for kind in ("add_learner", "promote"):
                change = ConfChange(kind, founder)
                entries.append(
                    Entry(term=1, index=len(entries) + 1, kind="conf_change", data=encode_conf_change(change))
                )
        for node in self.world.nodes[: self.options.nodes]:
            node.disk.writable = True
            try:
                node.disk.put("entries", tuple(entries))
                node.disk.put("hard_state", HardState(term=1, vote="", commit=len(entries)))
            finally:
                node.disk.writable = False

    def _start_liveness(self) -> None:
        # The heal ran first (scheduled first, same millisecond): no crash
        # may still be waiting to land in the liveness phase.
        self._torn_pending.clear()
        self._revoke_fatal_permanent_crashes()
        for client in self.clients:
            client.operations_left = LIVENESS_OPS
            if client.operation is None and client.done:
                client.done = False
                self.world.schedule(self.world.now_ms, f"client {client.client_id} resumes", self._next_operation_of(client))
        self.world.schedule(self.world.now_ms + CONVERGENCE_POLL_MS, "check convergence", self._poll_convergence)

    def _poll_convergence(self) -> None:
        world = self.world
        if all(client.done for client in self.clients) and not self._final_reads_started:
            self._start_final_reads()
        if self._final_reads_started and all(client.done for client in self.clients) and self._converged():
            self.liveness_ms = world.now_ms - self.liveness_start_ms
            world.stop_requested = True
            return
        world.schedule(world.now_ms + CONVERGENCE_POLL_MS, "check convergence", self._poll_convergence)

    def _converged(self) -> bool:
        servers = [node.live_core().server for node in self.world.nodes if node.up]
        leaders = [server for server in servers if server.raft.role == "leader"]
        if len(leaders) != 1:
            return False
        leader = leaders[0].raft
        commit = leader.commit_index
        members = set(leader.voters) | set(leader.learners)
        for server in servers:
            raft = server.raft
            if raft.node_id not in members:
                continue  # nobody sends a non-member anything: it may lag forever
            if raft.applied_index != commit or (raft.voters, raft.learners) != (leader.voters, leader.learners):
                return False
        if not self.options.conf_changes:
            return True
        up = {node.node_id for node in self.world.nodes if node.up}
        return all(voter in up for voter in leader.voters) and self._planned_change(leader) is None

    def _start_final_reads(self) -> None:
        # Each client reads every key once more: the history then ends with
        # what the store holds, so a lost acknowledged write cannot hide.
        self._final_reads_started = True
        for client in self.clients:
            client.done = False
            client.operations_left = len(KEYS)
            self.world.schedule(self.world.now_ms, f"client {client.client_id} final reads", self._next_operation_of(client))

    def _fail_liveness(self) -> None:
        waiting = [
            f"{client.client_id}: {client.operation.kind} {client.operation.key!r} since {client.operation.call_ms} ms"
            for client in self.clients
            if client.operation is not None
        ]
        states = [self._describe_node(node) for node in self.world.nodes]
        plans = [
            f"{node.node_id} would propose {self._planned_change(node.live_core().server.raft)}"
            for node in self.world.nodes
            if self.options.conf_changes and node.up and node.live_core().server.raft.role == "leader"
        ]
        raise SimulationFailure(
            f"liveness: not converged within {LIVENESS_BOUND_MS} ms of the heal at {self.liveness_start_ms} ms; "
            f"waiting operations: {waiting or 'none'}; nodes: {'; '.join(states)}"
            + (f"; planner: {'; '.join(plans)}" if plans else "")
        )

    def _describe_node(self, node: SimNode[RaftHost]) -> str:
        if not node.up:
            return f"{node.node_id}: down since {self._since_ms[node.index]} ms"
        raft = node.live_core().server.raft
        return (
            f"{node.node_id}: {raft.role} term {raft.term} leader {raft.leader_id} commit {raft.commit_index} "
            f"applied {raft.applied_index} last {raft.last_index} voters {raft.voters} learners {raft.learners}"
        )

    # -- clients -------------------------------------------------------------------------

    def _next_operation_of(self, client: _Client) -> Callable[[], None]:
        return lambda: self._next_operation(client)

    def _next_operation(self, client: _Client) -> None:
        world = self.world
        now_ms = world.now_ms
        liveness = now_ms >= self.liveness_start_ms
        if liveness and client.operations_left <= 0:
            client.done = True
            return
        if not liveness and now_ms + OPERATION_DEADLINE_MS > self.liveness_start_ms:
            client.done = True  # the next operations are the liveness phase's
            return
        rng = self.client_rng
        if self._final_reads_started:
            kind: OperationKind = "get"
            key = KEYS[len(KEYS) - client.operations_left]
        else:
            kind = rng.choices([k for k, _ in OPERATION_WEIGHTS], [w for _, w in OPERATION_WEIGHTS])[0]
            key = rng.choice(KEYS)
        if liveness:
            client.operations_left -= 1
        operation = self._build_operation(client, kind, key, now_ms, liveness)
        client.operation = operation
        if rng.random() < WANDER_PROBABILITY:
            # Clients reach the cluster through any node: some operations
            # start at a random one (a follower, a deposed leader).
            client.leader_guess = rng.randrange(len(world.nodes))
        self._attempt(client)

    def _build_operation(
        self, client: _Client, kind: OperationKind, key: bytes, now_ms: int, liveness: bool
    ) -> _Operation:
        text_key = key.decode()
        checked: object | None = None
        request: ClientRequest
        if kind in ("put", "cas", "delete"):
            client.seq += 1
            value = f"{client.client_id}.{client.seq}".encode()
            command: kv.Command
            if kind == "put":
                command = kv.Put(key=key, value=value)
                checked = lz.Put(text_key, value.decode())
            elif kind == "delete":
                command = kv.Delete(key=key)
                checked = lz.Delete(text_key)
            else:
                expected = client.last_seen.get(key) if self.client_rng.random() < 0.8 else b"nope"
                command = kv.Cas(key=key, expected=expected, value=value)
                checked = lz.Cas(text_key, expected.decode() if expected is not None else None, value.decode())
            ack = client.seq if client.answered else 0
            proposal = kv.Proposal(client_id=client.client_id, seq=client.seq, ack=ack, command=command)
            request = WriteRequest(proposal)
        elif kind == "range":
            request = RangeRequest(prefix=b"k", consistency="linearizable")
        elif kind == "stale_get":
            request = GetRequest(key, consistency="stale")
        else:
            lease = kind == "lease_get" and self.options.lease_reads
            request = GetRequest(key, consistency="lease" if lease else "linearizable")
            if not lease or self.check_lease:
                checked = lz.Get(text_key)
        deadline_ms = self.liveness_deadline_ms if liveness else now_ms + OPERATION_DEADLINE_MS
        return _Operation(kind, key, request, checked, now_ms, deadline_ms, must_complete=liveness)

    def _attempt(self, client: _Client) -> None:
        operation = client.operation
        assert operation is not None
        world = self.world
        if world.now_ms >= operation.deadline_ms:
            self._give_up(client)
            return
        operation.attempt += 1
        rng = self.client_rng
        target = client.leader_guess if client.leader_guess is not None else rng.randrange(len(world.nodes))
        request_id = self._next_request_id
        self._next_request_id += 1
        self._requests[request_id] = (client, operation, operation.attempt)
        attempt = operation.attempt
        if rng.random() >= world.network.loss_probability:
            at_ms = world.now_ms + rng.randint(*CLIENT_DELAY_MS)
            world.schedule(at_ms, f"request {request_id} to n{target}", self._deliver_request(target, request_id, operation.request))
        timeout_ms = min(world.now_ms + ATTEMPT_TIMEOUT_MS, operation.deadline_ms)
        world.schedule(
            timeout_ms, f"client {client.client_id} attempt {attempt} times out", self._attempt_timeout(client, operation, attempt)
        )

    def _deliver_request(self, target: int, request_id: int, request: ClientRequest) -> Callable[[], None]:
        def deliver() -> None:
            if not self.world.nodes[target].up:
                return
            self.world.call(target, lambda core, now_ms: core.handle(now_ms, [(request_id, request)]))

        return deliver

    def _attempt_timeout(self, client: _Client, sent_for: _Operation, attempt: int) -> Callable[[], None]:
        def timeout() -> None:
            operation = client.operation
            if operation is not sent_for or operation.attempt != attempt:
                return
            operation.ambiguous = True  # the request may have been applied
            client.leader_guess = None
            self._attempt(client)

        return timeout

    def _send_replies(self, node: SimNode[RaftHost], replies: list[tuple[int, ClientReply]]) -> None:
        world = self.world
        rng = self.client_rng
        for request_id, reply in replies:
            if rng.random() < world.network.loss_probability:
                continue
            at_ms = world.now_ms + rng.randint(*CLIENT_DELAY_MS)
            world.schedule(at_ms, f"reply {request_id} from {node.node_id}", self._receive_of(node.index, request_id, reply))

    def _receive_of(self, source: int, request_id: int, reply: ClientReply) -> Callable[[], None]:
        return lambda: self._receive(source, request_id, reply)

    def _receive(self, source: int, request_id: int, reply: ClientReply) -> None:
        found = self._requests.get(request_id)
        if found is None:
            return
        client, sent_for, attempt = found
        operation = client.operation
        if operation is not sent_for or operation.attempt != attempt:
            return  # a late answer to an attempt given up on (a retry is out)
        del self._requests[request_id]
        if isinstance(reply, ErrorReply):
            self._on_error(client, operation, reply)
        elif isinstance(reply, WriteReply):
            if reply.result.status == "expired":
                # Not applied now; an earlier attempt may have been.
                operation.ambiguous = True
                self._give_up(client)
                return
            client.answered = True
            client.leader_guess = source
            self._finish(client, operation, reply.result.succeeded)
        elif isinstance(reply, GetReply):
            client.leader_guess = source if operation.request.consistency != "stale" else client.leader_guess  # type: ignore[union-attr]
            self._finish(client, operation, reply.kv.value if reply.kv is not None else None)
        else:
            assert isinstance(reply, RangeReply)
            self._finish(client, operation, None)

    def _on_error(self, client: _Client, operation: _Operation, reply: ErrorReply) -> None:
        code = reply.code
        if code in ("too_large", "invalid"):
            raise SimulationFailure(f"{client.client_id}: the server refused a well-formed request: {reply!r}")
        if code in ("leader_lost", "timeout"):
            operation.ambiguous = True
        else:
            self.refused_attempts += 1
        hint = reply.leader_id
        client.leader_guess = int(hint[1:]) if code == "not_leader" and hint else None
        delay_ms = 0 if client.leader_guess is not None else self.client_rng.randint(*RETRY_BACKOFF_MS)
        attempt = operation.attempt
        self.world.schedule(
            self.world.now_ms + delay_ms, f"client {client.client_id} retries", self._retry_of(client, operation, attempt)
        )

    def _retry_of(self, client: _Client, sent_for: _Operation, attempt: int) -> Callable[[], None]:
        def retry() -> None:
            operation = client.operation
            if operation is sent_for and operation.attempt == attempt:
                self._attempt(client)

        return retry

    def _finish(self, client: _Client, operation: _Operation, output: object) -> None:
        now_ms = self.world.now_ms
        if operation.kind in ("get", "lease_get", "stale_get"):
            value = output
            assert value is None or isinstance(value, bytes)
            client.last_seen[operation.key] = value
            output = value.decode() if value is not None else None
        elif operation.kind == "put":
            client.last_seen[operation.key] = operation.request.proposal.command.value  # type: ignore[union-attr]
        if operation.checked_input is not None:
            self.history.append(
                lz.Operation(
                    client_id=client.index,
                    call_ms=operation.call_ms,
                    return_ms=now_ms,
                    input=operation.checked_input,
                    output=output,
                )
            )
        self._end_operation(client)

    def _give_up(self, client: _Client) -> None:
        operation = client.operation
        assert operation is not None
        if operation.must_complete:
            raise SimulationFailure(
                f"liveness: {client.client_id}'s {operation.kind} of {operation.key!r} (called at "
                f"{operation.call_ms} ms, after the heal) did not complete by {operation.deadline_ms} ms"
            )
        is_write = operation.kind in ("put", "cas", "delete")
        if is_write and operation.ambiguous and operation.checked_input is not None:
            self.history.append(
                lz.Operation(
                    client_id=client.index,
                    call_ms=operation.call_ms,
                    return_ms=None,
                    input=operation.checked_input,
                )
            )
        client.leader_guess = None
        self._end_operation(client)

    def _end_operation(self, client: _Client) -> None:
        client.operation = None
        think_ms = self.client_rng.randint(0, THINK_MS_MAX)
        self.world.schedule(self.world.now_ms + think_ms, f"client {client.client_id} next", self._next_operation_of(client))

    # -- conf changes (membership runs) ---------------------------------------------------

    def _plan_round(self) -> None:
        """Every leader asks the planner (or, now and then, chaos) for its next change."""
        world = self.world
        for node in world.nodes:
            if node.up and node.live_core().server.raft.role == "leader":
                self._plan_at(node)
        world.schedule(world.now_ms + PLAN_INTERVAL_MS, "voter plan", self._plan_round)

    def _plan_now_of(self, index: int, epoch: int) -> Callable[[], None]:
        def plan_now() -> None:
            node = self.world.nodes[index]
            if node.up and node.epoch == epoch and node.live_core().server.raft.role == "leader":
                self._plan_at(node)

        return plan_now

    def _plan_at(self, node: SimNode[RaftHost]) -> None:
        world = self.world
        raft = node.live_core().server.raft
        change: ConfChange | None = None
        chaos = ""
        if world.now_ms < self.liveness_start_ms and self.conf_rng.random() < CHAOS_PROBABILITY:
            chaos, change = self._chaos_change(raft)
        if change is None:
            change = self._planned_change(raft)
        if change is None:
            return
        proposed = change
        effects = world.call(node.index, lambda core, now_ms: core.propose_conf_change(now_ms, proposed))
        result = effects.output.raft.result
        if isinstance(result, Accepted):
            outcome = f"accepted at {result.index}"
            if change == ConfChange("remove", node.node_id):
                self._self_removals[(node.node_id, result.index)] = result.term
        else:
            self.conf_refusals += 1
            outcome = f"refused ({result!r})"
        world.trace(f"{world.now_ms} conf {node.index} {chaos or 'plan'} {change.kind} {change.node_id} {outcome}")

    def _member_statuses(self) -> list[voters.MemberStatus]:
        """The simulator's ground truth, as membership would report it (no false suspicions)."""
        return [
            voters.MemberStatus(
                node.node_id,
                "alive" if node.up else "dead",
                self._since_ms[node.index],
                {"zone": ZONES[node.index % len(ZONES)]},
            )
            for node in self.world.nodes
        ]

    def _planned_change(self, raft: RaftNode) -> ConfChange | None:
        """What ``voters.plan`` says ``raft`` (a leader) should change next; the runtime's ``_plan_voters``."""
        if raft.node_id not in raft.voters:
            return None  # the checks fail such a leader; the planner would assert
        caught_up = {learner: raft.caught_up(learner) for learner in raft.learners}
        return voters.plan(
            ConfState(raft.voters, raft.learners),
            leader_id=raft.node_id,
            members=self._member_statuses(),
            caught_up=caught_up,
            now_ms=self.world.now_ms,
            policy=VOTER_POLICY,
        )

    def _chaos_change(self, raft: RaftNode) -> tuple[ChaosKind, ConfChange]:
        """A change the planner would not propose (module doc, step 6)."""
        rng = self.conf_rng
        up = {node.node_id for node in self.world.nodes if node.up}
        choices: list[tuple[ChaosKind, ConfChange]] = [("remove_self", ConfChange("remove", raft.node_id))]
        down_voters = [voter for voter in raft.voters if voter not in up]
        if down_voters:
            choices.append(("remove_down_voter", ConfChange("remove", rng.choice(down_voters))))
        if raft.learners:
            choices.append(("early_promote", ConfChange("promote", rng.choice(raft.learners))))
        weights = dict(CHAOS_WEIGHTS)
        return rng.choices(choices, [weights[kind] for kind, _ in choices])[0]

    def _on_conf_applied(self, node: SimNode[RaftHost], entries: list[Entry], global_ms: int) -> None:
        """A leader that applied its own removal must have stepped down; a leader plans again at once."""
        raft = node.live_core().server.raft
        for entry in entries:
            if entry.kind != "conf_change":
                continue
            term = self._self_removals.pop((node.node_id, entry.index), None)
            if term is None or term != entry.term:
                continue
            self.leader_self_removals += 1
            if raft.role == "leader":
                raise RaftCheckFailure(
                    f"at {global_ms} ms: configuration: {node.node_id} applied its own removal (index "
                    f"{entry.index}) and is still leader of term {raft.term}"
                )
        if raft.role == "leader":
            # The runtime plans again as soon as a change applied.
            self.world.schedule(global_ms, f"voter plan {node.node_id}", self._plan_now_of(node.index, node.epoch))

    def _revoke_fatal_permanent_crashes(self) -> None:
        """Restart permanently down nodes a configuration in play needs for a quorum (module doc, step 7)."""
        world = self.world
        while True:
            up = {node.node_id for node in world.nodes if node.up}
            needed: dict[str, None] = {}  # a dict: ordered, unlike a set of strings
            for node in world.nodes:
                if not node.up:
                    continue
                for conf in _configurations_in_play(node.live_core().server.raft):
                    live = sum(1 for voter in conf.voters if voter in up)
                    if conf.voters and live < len(conf.voters) // 2 + 1:
                        needed.update(dict.fromkeys(voter for voter in conf.voters if voter not in up))
            if not needed:
                return
            for node_id in sorted(needed):
                self.log.append(
                    f"{world.now_ms} ms: permanent crash of {node_id} revoked: a configuration in play "
                    "needs it for a quorum"
                )
                self.revoked_permanent_crashes += 1
                self.restart(world.index_of[node_id])

    # -- CoreDriver ------------------------------------------------------------------------

    def create(self, node: SimNode[RaftHost], rng: random.Random, now_ms: int) -> RaftHost:
        """A fresh server built from exactly what ``node``'s disk holds."""
        hard = node.disk.get("hard_state")
        server = KvServer(
            self.config,
            node_id=node.node_id,
            voters=() if self.options.conf_changes else self.voters,
            rng=rng,
            now_ms=now_ms,
            hard_state=hard,
            log_entries=stored_entries(node),
            snapshot=stored_snapshot(node),
            options=self.server_options,
        )
        return RaftHost(server)

    def persist(self, node: SimNode[RaftHost], effects: HostEffects) -> None:
        """Persist ``effects`` (all of it, or a torn prefix if a crash is due now)."""
        out = effects.output.raft
        stage = self._torn_pending.get(node.index)
        if stage is not None and _tearable(stage, out, effects.messages):
            del self._torn_pending[node.index]
            self._torn_crash(node, effects, stage)
            return
        if out.snapshot is not None:
            write_snapshot(node, out.snapshot)
        if out.entries:
            write_entries(node, out.entries)
        if out.hard_state is not None:
            node.disk.put("hard_state", out.hard_state)

    def _torn_crash(self, node: SimNode[RaftHost], effects: HostEffects, stage: str) -> None:
        out = effects.output.raft
        rng = self.rng
        writes = (1 if out.snapshot else 0) + len(out.entries) + (1 if out.hard_state else 0)
        detail = ""
        if stage == "persist":
            durable = rng.randrange(writes)  # a strict prefix of the writes
            detail = f" {durable}/{writes} writes durable"
            if out.snapshot is not None and durable > 0:
                write_snapshot(node, out.snapshot)
                durable -= 1
            if out.entries and durable > 0:
                write_entries(node, out.entries[:durable])
            effects.messages.clear()
        else:
            if out.snapshot is not None:
                write_snapshot(node, out.snapshot)
            if out.entries:
                write_entries(node, out.entries)
            if out.hard_state is not None:
                node.disk.put("hard_state", out.hard_state)
            if stage == "send":
                sent = rng.randint(0, len(effects.messages))
                detail = f" {sent}/{len(effects.messages)} messages sent"
                del effects.messages[sent:]
            else:
                effects.crash_before_apply = True
                return  # crashes in observe, after the sends
        self.torn_crashes[stage] += 1
        self.world.trace(f"{self.world.now_ms} torn {node.index} {stage}{detail}")
        self.crashes += 1
        self.world.crash(node.index)

    def audit(self, node: SimNode[RaftHost], effects: HostEffects) -> None:
        """Nothing sent may be ahead of the disk; after a full persist the disk matches the core."""
        if not node.up:
            return  # crashed mid-output: what leaves was durable when it was written
        raft = node.live_core().server.raft
        hard = stored_hard_state(node)
        last = durable_last_index(node)
        # The stored commit index may lag the core's (raft.py's effects
        # contract: it is volatile, written along with the next entries,
        # term or vote); term and vote may not.
        if (hard.term, hard.vote) != (raft.term, raft.vote) or hard.commit > raft.commit_index:
            raise CoreContractError(
                f"{node.node_id}: after persisting, the disk's hard state {hard!r} is not the core's "
                f"(term {raft.term}, vote {raft.vote!r}, commit {raft.commit_index}): a change was not reported"
            )
        if last != raft.last_index:
            raise CoreContractError(
                f"{node.node_id}: after persisting, the disk ends at {last}, the core's log at {raft.last_index}"
            )
        for send in effects.messages:
            message = send.message
            if isinstance(message, InstallSnapshot):
                self.snapshots_sent += 1
            problem = _ahead_of_disk(message, hard, last)
            if problem:
                raise CoreContractError(f"{node.node_id}: sends {type(message).__name__} {problem}: {message!r}")

    def observe(self, node: SimNode[RaftHost], effects: HostEffects, global_ms: int) -> None:
        """Check, deliver replies, advance, compact when due."""
        if not node.up:
            return
        if effects.crash_before_apply:
            self.torn_crashes["apply"] += 1
            self.world.trace(f"{global_ms} torn {node.index} apply")
            self.crashes += 1
            self.world.crash(node.index)
            return
        server = node.live_core().server
        self.checks.after_output(server.raft, effects.output.raft, global_ms)
        if self.options.conf_changes and any(
            entry.kind == "conf_change" for entry in effects.output.raft.committed_entries
        ):
            self._on_conf_applied(node, effects.output.raft.committed_entries, global_ms)
        if effects.output.replies:
            self._send_replies(node, effects.output.replies)
        server.advance(effects.output)
        if server.compact_due():
            self.compactions += 1
            self.world.call(node.index, lambda core, now_ms: core.compact(now_ms))

    def started(self, node: SimNode[RaftHost], global_ms: int) -> None:
        """A server booted: what it read from disk must agree with every log seen so far."""
        self._since_ms[node.index] = global_ms
        self.checks.restarted(node.live_core().server.raft, stored_entries(node), global_ms)

    def crashed(self, node: SimNode[RaftHost], global_ms: int) -> None:
        """A server stopped (its disk kept)."""
        self._since_ms[node.index] = global_ms
        self._torn_pending.pop(node.index, None)

    def _live_rafts(self) -> list[RaftNode]:
        return [node.live_core().server.raft for node in self.world.nodes if node.up]

    # -- FaultTarget ---------------------------------------------------------------------

    def crash(self, node: int) -> None:
        """Stop ``node`` now, or (torn) in the middle of its next output.

        Half the crashes hit the leader instead of the node the plan drew
        (if the leader is up): leader crashes are what leave client
        operations in doubt. The plan's restart of the drawn node then finds
        it up and does nothing; the leader restarts at the heal.
        """
        leaders = [
            other.index
            for other in self.world.nodes
            if other.up and other.live_core().server.raft.role == "leader" and other.index not in self._torn_pending
        ]
        if leaders and self.rng.random() < LEADER_CRASH_PROBABILITY:
            node = leaders[0]
        if node in self._torn_pending:
            return
        if self.rng.random() < self.options.torn_probability:
            self._torn_pending[node] = self.rng.choice(TORN_STAGES)
            self.world.schedule(self.world.now_ms + TORN_WAIT_MS, f"n{node} torn crash deadline", self._torn_deadline(node))
            return
        self.crashes += 1
        self.world.crash(node)

    def _torn_deadline(self, node: int) -> Callable[[], None]:
        def deadline() -> None:
            if self._torn_pending.pop(node, None) is not None and self.world.nodes[node].up:
                self.crashes += 1
                self.world.crash(node)

        return deadline

    def leave(self, node: int) -> None:
        """Raft has no graceful leave here: a crash."""
        self.crash(node)

    def restart(self, node: int) -> None:
        """Boot from disk."""
        self._torn_pending.pop(node, None)
        self.world.start(node)

    def is_up(self, node: int) -> bool:
        """Whether ``node`` runs (one due to crash mid-output still does)."""
        return self.world.nodes[node].up

    def fault_applied(self, fault: Fault) -> None:
        """Nothing to tell the checkers: they watch every output."""
        del fault

    # -- end checks ------------------------------------------------------------------------

    def _check_replicas(self) -> list[SimNode[RaftHost]]:
        """Logs pairwise, configurations and state machines of the live nodes agree; returns them."""
        world = self.world
        up = [node for node in world.nodes if node.up]
        rafts = [node.live_core().server.raft for node in up]
        self.checks.check_logs_pairwise(rafts, world.now_ms)
        self.checks.check_members_agree(rafts, world.now_ms)
        self.checks.check_states_agree(
            [
                (node.node_id, node.live_core().server.state.applied_index, node.live_core().server.state.snapshot())
                for node in up
            ],
            world.now_ms,
        )
        return up

    def _final_checks(self) -> None:
        up = self._check_replicas()
        leader = next(node for node in up if node.live_core().server.raft.role == "leader")
        self.final_voters = leader.live_core().server.raft.voters
        result = lz.check_kv(self.history, steps_max=CHECK_STEPS_MAX)
        self.check_steps = result.steps
        if result.ok is not True:
            verdict = "not linearizable" if result.ok is False else "linearizability check gave up"
            raise RaftCheckFailure(f"{verdict}: {result.explanation}")
        self._check_acknowledged_writes(leader.live_core().server.state)

    def _check_acknowledged_writes(self, state: kv.KvState) -> None:
        """Every acknowledged write is its key's final value, or a write not ordered before it may have replaced it."""
        writes: dict[str, list[lz.Operation]] = {}
        for operation in self.history:
            if isinstance(operation.input, lz.Put | lz.Cas | lz.Delete):
                writes.setdefault(operation.input.key, []).append(operation)
        for key, operations in writes.items():
            stored = state.get(key.encode())
            final = stored.value.decode() if stored is not None else None
            for write in operations:
                if write.return_ms is None or _result_of(write) == final or not _changed(write):
                    continue
                replaced = any(
                    other is not write
                    and (other.return_ms is None or other.return_ms >= write.call_ms)
                    and _result_of(other) == final
                    and (other.return_ms is None or _changed(other))
                    for other in operations
                )
                if not replaced:
                    raise RaftCheckFailure(
                        f"acknowledged write lost: {write.input!r} returned at {write.return_ms} ms but {key!r} "
                        f"ends as {final!r}, which no write not ordered before it wrote"
                    )

    # -- reporting -----------------------------------------------------------------------

    def _log_options(self, clocks: fault_plan.ClockPlan) -> None:
        options = self.options
        config = self.config
        self.log.append(f"options: {options.command()}")
        self.log.append(
            "derived seeds: "
            + " ".join(
                f"{purpose}={derive_seed(options.seed, purpose)}"
                for purpose in ("network", "clock", "scenario", "clients", "faults")
            )
            + " core/<node_id>/<epoch>=derive_seed(seed, that)"
        )
        self.log.append(
            f"raft config: heartbeat_interval_ms={config.heartbeat_interval_ms} "
            f"election_timeout_ms={config.election_timeout_ms} pre_vote={config.pre_vote} "
            f"check_quorum={config.check_quorum} lease_reads={config.lease_reads} "
            f"clock_drift_max_ms={config.clock_drift_max_ms}; snapshot_entries={options.snapshot_entries}"
        )
        if options.conf_changes:
            self.log.append(
                f"membership: founders {self.voters} bootstrapped through the log, spares "
                f"{tuple(node.node_id for node in self.world.nodes[options.nodes :])} start with voters=(); "
                f"planner every {PLAN_INTERVAL_MS} ms with {VOTER_POLICY}, chaos {CHAOS_PROBABILITY} per round"
            )
        self.log.append(
            f"phases: warmup {WARMUP_MS} ms, safety until {self.liveness_start_ms} ms, liveness bound "
            f"{LIVENESS_BOUND_MS} ms; network latency_ms={LATENCY_MS} jitter_ms={JITTER_MS}"
        )
        for node in self.world.nodes:
            self.log.append(f"  {node.node_id} {node.clock.describe()}")

    def _result(self) -> RaftScenarioResult:
        world = self.world
        lease = "lease reads in the history" if self.check_lease else ""
        names = [
            f"(a) election safety: {len(self.checks.leaders)} terms had a leader, one each",
            "(b) log matching: incrementally per appended entry, and pairwise at the end",
            "(c) leader completeness: every leader holds every entry committed before its term",
            f"(d) state machine safety: {self.checks.applied_max} indexes applied, one entry each",
            f"linearizable: {len(self.history)} operations {lease}".strip(),
            "no acknowledged write lost",
            "(e) configuration safety: "
            + " ".join(f"{kind}={count}" for kind, count in self.checks.conf_changes.items())
            + " committed, one server at a time, in force only once committed",
            "every live member holds the leader's configuration at the end",
            "final voters all live, the planner at a fixpoint" if self.options.conf_changes else "",
            "persist-before-send audit" if world.audit else "",
        ]
        return RaftScenarioResult(
            options=self.options,
            trace_hash=world.trace_hash,
            end_ms=world.now_ms,
            log=self.log,
            deliveries=world.stats.deliveries,
            wakes=world.stats.wakes,
            operations=len(self.history),
            operations_unknown=sum(1 for operation in self.history if operation.return_ms is None),
            refused_attempts=self.refused_attempts,
            leaders=len(self.checks.leaders),
            crashes=self.crashes,
            torn_crashes=dict(self.torn_crashes),
            snapshots_sent=self.snapshots_sent,
            compactions=self.compactions,
            applied_max=self.checks.applied_max,
            check_steps=self.check_steps,
            liveness_ms=self.liveness_ms,
            conf_changes=dict(self.checks.conf_changes),
            leader_self_removals=self.leader_self_removals,
            conf_refusals=self.conf_refusals,
            final_voters=self.final_voters,
            revoked_permanent_crashes=self.revoked_permanent_crashes,
            checks=[name for name in names if name],
        )


def _tearable(stage: str, out: Output, messages: list[Send]) -> bool:
    """Whether a crash at ``stage`` of this output tears anything."""
    if stage == "persist":
        return bool(out.snapshot or out.entries or out.hard_state)
    if stage == "send":
        return bool(messages)
    return bool(out.committed_entries or out.read_states or messages)


def _configurations_in_play(raft: RaftNode) -> list[ConfState]:
    """``raft``'s configuration and those its unapplied conf changes would lead to
    (re-applying one already in force only adds a configuration: conservative)."""
    conf = ConfState(raft.voters, raft.learners)
    confs = [conf]
    for index in range(raft.applied_index + 1, raft.last_index + 1):
        entry = raft.log_entry(index)
        if entry.kind == "conf_change":
            conf = apply_conf_change(conf, decode_conf_change(entry.data))
            confs.append(conf)
    return confs


def _ahead_of_disk(message: RaftMessage, hard: HardState, durable_last: int) -> str:
    """Why ``message`` may not leave with this disk ("" if it may)."""
    if isinstance(message, VoteRequest):
        if message.pre_vote:
            return ""
        if hard.term != message.term or hard.vote != message.source:
            return f"before its own vote in term {message.term} is durable (disk: {hard!r})"
        return ""
    if isinstance(message, VoteResponse):
        if message.pre_vote:
            return ""
        if message.granted and (hard.term != message.term or hard.vote != message.target):
            return f"granting a vote that is not durable (disk: {hard!r})"
    elif isinstance(message, AppendResponse):
        if not message.reject and message.index > durable_last:
            return f"acknowledging index {message.index} while the disk ends at {durable_last}"
    elif isinstance(message, AppendEntries) and message.commit > durable_last:
        return f"with commit {message.commit} beyond its own durable log ({durable_last})"
    if message.term > hard.term:
        return f"in term {message.term} while the disk holds term {hard.term}"
    return ""


def _result_of(operation: lz.Operation) -> object:
    """The value ``operation`` leaves in its key, if it changes it."""
    command = operation.input
    if isinstance(command, lz.Put):
        return command.value
    if isinstance(command, lz.Cas):
        return command.new
    return None


def _changed(operation: lz.Operation) -> bool:
    """Whether a known-outcome write changed its key (a failed cas or delete did not)."""
    if isinstance(operation.input, lz.Put):
        return True
    return operation.output is True


def run_raft_scenario(options: RaftScenarioOptions, *, audit: bool = True) -> RaftScenarioResult:
    """Build and run one Raft + KV scenario (see ``RaftScenario``)."""
    return RaftScenario(options, audit=audit).run()


__all__ = [
    "RaftCheckFailure",
    "RaftHost",
    "RaftScenario",
    "RaftScenarioOptions",
    "RaftScenarioResult",
    "run_raft_scenario",
]
