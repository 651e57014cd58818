"""Durable tasks under faults: the task table, the leader's scheduler and the
worker nodes' logic on the Raft + KV scenario's machinery.

Every node runs what a real node runs for tasks, as sans-IO cores: its
``KvServer`` (whose state holds the ``TaskTable``), a ``TaskWorker`` and,
while it leads with its state current (``KvServer.leader_ready``), a
``TaskLeader``. The host (``TaskHost``) drives them the way
``moot.runtime.task_service`` does, on the simulator's virtual clock, with
its timings scaled as the Raft sim profile scales Raft's (ten times faster:
reports and resends every ``REPORT_MS``, the leader's look at membership
every ``HOUSEKEEPING_MS``, a report's grace ``REPORT_GRACE_MS``). A run
"executes" by finishing after a random delay with a result that is a
function of its arguments (``expected_result``); now and then the worker
process "crashes" (a ``crashed`` outcome) or a flaky task raises (``error``).

A run, all of it a function of ``TaskScenarioOptions`` (the seed above all):

1. **Build**: the Raft scenario's voters (3 or 5), disks, torn writes and
   fault plan (crashes, restarts, partitions, loss, duplication, clock
   steps), every node also a worker with ``SLOTS`` slots. The leader's view
   of the live workers is the simulator's ground truth with a detection
   delay: a crashed node stays "alive" for ``DETECT_MS`` (membership's
   detection time), as a real leader keeps sending to a node until it is
   declared dead.
2. **Submitters** write task commands through Raft as the client does:
   ``SubmitJob`` (one to twelve tasks; some jobs in parts, the rest with
   ``AddTasks``), ``SubmitJobs`` (a batch of small jobs, all or nothing),
   ``CancelJob`` of a job of theirs, with sessions (a retry keeps its seq),
   following ``not_leader`` hints. A submission is retried until its
   outcome is known, so every job a submitter makes ends up submitted;
   jobs use ``max_retries`` 50 (never exhausted by the plan's crashes) or 1
   (exhausted now and then: the task fails as ``crashed``) and flaky jobs
   ``retries`` 0-2.
3. **Checked after every apply on every node**: a finished task never
   finishes differently (first result wins, on every replica, across
   restarts and snapshots), and a task done has the result of its
   arguments, computed by a run that really happened on the node it names.
4. **Liveness**: after the heal, every submission completes and every job
   reaches a final state; every live node's worker is idle with an empty
   outbox; all within ``LIVENESS_BOUND_MS``.
5. **End checks**: the Raft logs pairwise and the state machines (task
   table included) identical; every job the submitters made is in the
   table, finished (all ``total`` tasks) or cancelled (only if a cancel was
   sent, and surely if one was acknowledged); every task done with its
   expected result and counted once in ``commits``; every failed task
   failed for a reason its counters justify (``crashes > max_retries`` or
   ``errors > retries``); no task pending or running.

Seeds: the Raft scenario's streams, plus ``tasks`` (submitters) and
``tasks/<node>/<epoch>`` (each life of each node's runs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from moot.core import kv, tasks, wire
from moot.core.kv_server import (
    ClientReply,
    ClientRequest,
    ErrorReply,
    KvServer,
    ServerOutput,
    WriteReply,
    WriteRequest,
)
from moot.core.raft import Output
from moot.core.raft_messages import RaftMessage
from moot.core.scheduler import WorkerNode
from moot.core.task_leader import Sends, TaskLeader
from moot.core.task_worker import TaskWorker, WorkerEffects
from moot.sim.raft_checks import RaftCheckFailure
from moot.sim.raft_scenario import (
    ATTEMPT_TIMEOUT_MS,
    CLIENT_DELAY_MS,
    CONVERGENCE_POLL_MS,
    RETRY_BACKOFF_MS,
    TORN_STAGES,
    WARMUP_MS,
    HostEffects,
    RaftHost,
    RaftScenario,
    RaftScenarioOptions,
)
from moot.sim.world import SimNode, SimulationFailure, derive_seed, run_with_replay

# The task timings, scaled as RaftConfig.sim() scales Raft's (x10 faster
# than the runtime's: report and resend 1 s, housekeeping 250 ms, grace 3 s).
REPORT_MS: Final = 100
HOUSEKEEPING_MS: Final = 25
REPORT_GRACE_MS: Final = 300
UNREACHABLE_MS: Final = 500
FUNCTION_WAIT_MS: Final = 1_000  # a run whose function the node lacks waits this long for its table
DETECT_MS: Final = 300  # a crashed node looks alive to the leader this long
SLOTS: Final = 2
RUN_MS: Final = (2, 40)
CRASH_PROBABILITY: Final = 0.03  # per run: the worker process dies
ERROR_PROBABILITY: Final = 0.3  # per run of a flaky task: it raises
FINISHES_BYTES_PER_MESSAGE: Final = 1024 * 1024
SNAPSHOT_CHUNK_BYTES: Final = 2048

# Submitters: the next operation after this much thinking; no new jobs this
# close to the end of the safety phase (what is in flight completes in the
# liveness phase).
THINK_MS_MAX: Final = 30
SUBMIT_STOP_BEFORE_MS: Final = 100
TASKS_PER_JOB_MAX: Final = 12
CANCEL_PROBABILITY: Final = 0.1
BATCH_PROBABILITY: Final = 0.2
SPLIT_PROBABILITY: Final = 0.4
FLAKY_PROBABILITY: Final = 0.2
FUNCTION_OMITTED_PROBABILITY: Final = 0.3

# After the heal: an election, lost runs found (reports and their grace),
# retries and the submissions in flight.
LIVENESS_BOUND_MS: Final = 6_000

INTERNAL_REQUEST_IDS: Final = 1 << 48  # the hosts' own proposals; below: the submitters'

TASK_FUNCTION: Final = b"moot-sim/task-function"
FUNCTION_HASH: Final = tasks.function_hash(TASK_FUNCTION)


def expected_result(args: bytes) -> bytes:
    """What a run of the task with ``args`` returns (any run, any node)."""
    return hashlib.sha256(b"moot-sim/result/" + args).digest()[:16]


@dataclass(frozen=True, slots=True)
class TaskScenarioOptions:
    """Everything that determines a tasks run; ``command()`` replays it."""

    seed: int
    nodes: int = 3
    duration_ms: int = 1_500
    submitters: int = 2
    faults: bool = True
    torn_probability: float = 0.5
    snapshot_entries: int = 16

    def validate(self) -> None:
        """Raise ValueError naming the first option that makes no sense
        (those shared with the Raft scenario, flags alike, checked by it)."""
        if self.submitters < 1:
            raise ValueError("--submitters must be >= 1")
        self.raft_options().validate()

    def command(self) -> str:
        """The command line that replays this run exactly."""
        return (
            f"python -m moot.sim tasks --seed {self.seed} --nodes {self.nodes} "
            f"--duration-ms {self.duration_ms} --submitters {self.submitters} "
            f"{'--faults' if self.faults else '--no-faults'} --torn {self.torn_probability} "
            f"--snapshot-entries {self.snapshot_entries}"
        )

    @classmethod
    def for_seed(cls, seed: int) -> TaskScenarioOptions:
        """The options the CI sweep runs for ``seed``."""
        rng = random.Random(derive_seed(seed, "options"))
        return cls(
            seed=seed,
            nodes=rng.choice((3, 3, 5)),
            duration_ms=rng.choice((1_000, 1_500, 2_000)),
            submitters=rng.randint(1, 3),
            faults=rng.random() < 0.95,
            torn_probability=0.5,
            snapshot_entries=rng.choice((8, 16, 32)),
        )

    def raft_options(self) -> RaftScenarioOptions:
        """The Raft scenario's options underneath (its KV clients stay idle)."""
        return RaftScenarioOptions(
            seed=self.seed,
            nodes=self.nodes,
            duration_ms=self.duration_ms,
            clients=1,
            faults=self.faults,
            lease_reads=False,
            torn_probability=self.torn_probability,
            snapshot_entries=self.snapshot_entries,
        )


@dataclass(slots=True)
class TaskScenarioResult:
    """What a run did."""

    options: TaskScenarioOptions
    trace_hash: str
    end_ms: int
    log: list[str]
    deliveries: int
    jobs: int
    tasks: int
    jobs_cancelled: int
    tasks_failed: int
    runs: int
    run_outcomes: dict[str, int]
    duplicates: int
    duplicates_at_leaders: int
    lost_declared: int
    submissions_ambiguous: int
    leaders: int
    schedulers: int
    crashes: int
    torn_crashes: dict[str, int]
    snapshots_sent: int
    restores: int
    liveness_ms: int | None
    checks: list[str] = field(default_factory=list)

    def report(self) -> list[str]:
        """Human-readable stats lines."""
        torn = " ".join(f"{stage}={count}" for stage, count in self.torn_crashes.items())
        outcomes = " ".join(f"{kind}={count}" for kind, count in self.run_outcomes.items())
        return [
            f"simulated {self.end_ms} ms: {self.deliveries} deliveries",
            f"jobs: {self.jobs} ({self.jobs_cancelled} cancelled), {self.tasks} tasks, {self.tasks_failed} failed; "
            f"{self.submissions_ambiguous} submissions retried after an unknown outcome",
            f"runs: {self.runs} ({outcomes}); duplicate results: {self.duplicates} discarded by the table, "
            f"{self.duplicates_at_leaders} by leaders before proposing; "
            f"{self.lost_declared} runs declared lost by leaders",
            f"raft: {self.leaders} terms with a leader, {self.schedulers} schedulers started, "
            f"{self.snapshots_sent} InstallSnapshot sent, {self.restores} states restored from one",
            f"crashes: {self.crashes} (torn mid-output: {torn})",
            f"liveness: done {self.liveness_ms} ms after the heal (bound {LIVENESS_BOUND_MS})",
        ]


# -- the host: one node's KvServer, TaskWorker and TaskLeader ----------------------------------


@dataclass(frozen=True, slots=True)
class TaskMail:
    """A task message between nodes, with its sender (the transport's peer id)."""

    source: str
    message: wire.RunTasks | wire.TasksDone | wire.WorkerReport | wire.StopTasks


@dataclass(frozen=True, slots=True)
class _Send:
    address: str
    message: TaskMail


class TaskEffects(HostEffects):
    """A host's effects; ``tasks_only``: no Raft output (nothing to persist or apply)."""

    __slots__ = ("tasks_only",)

    def __init__(self, output: ServerOutput, *, tasks_only: bool = False) -> None:
        super().__init__(output)
        self.tasks_only = tasks_only

    @classmethod
    def of_mail(cls, sends: list[_Send]) -> TaskEffects:
        effects = cls(ServerOutput(Output()), tasks_only=True)
        effects.messages.extend(sends)  # type: ignore[arg-type]
        return effects


@dataclass(slots=True)
class _Running:
    run: wire.RunTask
    started_ms: int


class TaskEnvironment(Protocol):
    """What a host asks the scenario (its ground truth) and tells it."""

    def workers_view(self) -> list[WorkerNode]:
        """The live worker nodes, as membership would report them now."""
        ...

    def executed(self, node_id: str, run: wire.RunTask, finish: tasks.Finish) -> None:
        """A run ended with ``finish``."""
        ...

    def scheduler_started(self) -> None:
        """A node built a ``TaskLeader``."""
        ...

    def runs_lost(self, count: int) -> None:
        """A leader declared ``count`` runs lost."""
        ...

    def duplicates_dropped(self, count: int) -> None:
        """A leader did not propose ``count`` results: their tasks were final."""
        ...


class TaskHost(RaftHost):
    """A node: ``KvServer`` plus the task cores, driven as ``TaskService`` drives them."""

    __slots__ = (
        "_due",
        "_next_request_id",
        "_seq",
        "environment",
        "leader",
        "next_housekeeping_ms",
        "next_report_ms",
        "node_id",
        "rng",
        "runs",
        "session",
        "worker",
    )

    def __init__(
        self,
        server: KvServer,
        *,
        node_id: str,
        session: str,
        rng: random.Random,
        environment: TaskEnvironment,
        now_ms: int,
    ) -> None:
        super().__init__(server)
        self.node_id = node_id
        self.session = session
        self.rng = rng
        self.environment = environment
        self.worker = TaskWorker(node_id, runs_tasks=True, resend_after_ms=REPORT_MS)
        self.leader: TaskLeader | None = None
        self.runs: dict[tuple[str, int], _Running] = {}
        self._due: list[tuple[int, str, int, int]] = []  # (due, job, index, attempt), lazily pruned
        self.next_report_ms = now_ms + REPORT_MS
        self.next_housekeeping_ms = now_ms + HOUSEKEEPING_MS
        self._seq = 0
        self._next_request_id = INTERNAL_REQUEST_IDS

    # -- the world's Core ----------------------------------------------------------------

    def step(self, now_ms: int, message: RaftMessage | TaskMail) -> TaskEffects:
        if isinstance(message, TaskMail):
            return TaskEffects.of_mail(self._on_mail(now_ms, message))
        return TaskEffects(self.server.step(now_ms, message))

    def tick(self, now_ms: int) -> TaskEffects:
        effects = TaskEffects(self.server.tick(now_ms))
        effects.messages.extend(self._timers(now_ms))  # type: ignore[arg-type]
        return effects

    def next_deadline_ms(self) -> int:
        due = self._due[0][0] if self._due else self.next_report_ms
        return min(
            self.server.next_deadline_ms(), self.next_report_ms, self.next_housekeeping_ms, due
        )

    # -- calls from the driver -------------------------------------------------------------

    def after_apply(
        self, now_ms: int, events: list[tasks.TaskEvent], restored: bool
    ) -> TaskEffects:
        """What the latest applied entries changed (the runtime's ``_on_applied``)."""
        table = self.server.state.tasks
        self._carry_out(now_ms, self.worker.applied(events, table, restored=restored))
        sends: list[_Send] = []
        if restored:
            self.leader = None  # rebuilt from the new table below, if we lead
        sends += self._check_leadership(now_ms)
        if self.leader is not None and events:
            sends += self._leader_sends(now_ms, self.leader.applied(events, table))
            sends += self._dispatch(now_ms)
        return TaskEffects.of_mail(sends)

    def has_proposals(self) -> bool:
        return (
            self.leader is not None
            and self.leader.has_proposals()
            and self.server.raft.role == "leader"
        )

    def propose(self, now_ms: int) -> TaskEffects:
        """The leader's queued records, through Raft like any client's write."""
        assert self.leader is not None
        requests: list[tuple[int, ClientRequest]] = []
        for command in self.leader.take_proposals(max(0, now_ms)):
            self._seq += 1
            proposal = kv.Proposal(
                client_id=self.session, seq=self._seq, ack=self._seq, command=command
            )
            requests.append((self._next_request_id, WriteRequest(proposal)))
            self._next_request_id += 1
        return TaskEffects(self.server.handle(now_ms, requests))

    # -- task messages ---------------------------------------------------------------------

    def _on_mail(self, now_ms: int, mail: TaskMail) -> list[_Send]:
        message = mail.message
        if isinstance(message, wire.RunTasks):
            self._carry_out(now_ms, self.worker.accept(message))
            return []
        if isinstance(message, wire.StopTasks):
            self._carry_out(now_ms, self.worker.stop(message.runs))
            return []
        if self.leader is None:
            return []  # not the leader (any more): workers send again to the next one
        if isinstance(message, wire.TasksDone):
            self.environment.duplicates_dropped(
                self.leader.results(mail.source, message.finishes, self.server.state.tasks)
            )
        else:
            self._lost(self.leader.report(mail.source, message.runs, now_ms))
        return self._dispatch(now_ms)

    def _timers(self, now_ms: int) -> list[_Send]:
        sends: list[_Send] = []
        table = self.server.state.tasks
        finished = False
        while self._due and self._due[0][0] <= now_ms:
            _, job_id, index, attempt = heapq.heappop(self._due)
            running = self.runs.get((job_id, index))
            if running is None or running.run.attempt != attempt:
                continue  # stopped, or replaced by a newer attempt
            run = running.run
            if (
                self.worker.function(run.function_hash, table) is None
                and now_ms < running.started_ms + FUNCTION_WAIT_MS
            ):
                # The runtime waits for its table to bring the function.
                self._push(now_ms + 10, run)
                continue
            del self.runs[(job_id, index)]
            finish = self._outcome(run, now_ms - running.started_ms, table)
            self.environment.executed(self.node_id, run, finish)
            self.worker.finished(job_id, index, attempt, finish)
            finished = True
        if finished:
            sends += self._send_finishes(now_ms, self.worker.to_send(now_ms, table, resend=False))
        if now_ms >= self.next_report_ms:
            self.next_report_ms = now_ms + REPORT_MS
            sends += self._report(now_ms)
            sends += self._send_finishes(now_ms, self.worker.to_send(now_ms, table, resend=True))
        if now_ms >= self.next_housekeeping_ms:
            self.next_housekeeping_ms = now_ms + HOUSEKEEPING_MS
            sends += self._check_leadership(now_ms)
            if self.leader is not None:
                self._lost(self.leader.set_workers(self.environment.workers_view(), now_ms))
                sends += self._dispatch(now_ms)
        return sends

    def _outcome(self, run: wire.RunTask, run_ms: int, table: tasks.TaskTable) -> tasks.Finish:
        def finish(kind: tasks.FinishKind, **fields: object) -> tasks.Finish:
            return tasks.Finish(run.job_id, run.index, run.attempt, self.node_id, kind, **fields)  # type: ignore[arg-type]

        if self.worker.function(run.function_hash, table) is None:
            return finish(
                "lost", error_type="WorkerLost", error_message="the job's function never came"
            )
        draw = self.rng.random()
        if draw < CRASH_PROBABILITY:
            return finish(
                "crashed", error_type="WorkerCrashed", error_message="worker process died"
            )
        if run.args.inline.endswith(b"/flaky") and draw < CRASH_PROBABILITY + ERROR_PROBABILITY:
            return finish("error", error_type="ValueError", error_message="flaky task raised")
        value = tasks.Payload(inline=expected_result(run.args.inline))
        return finish("ok", value=value, duration_ms=max(0, run_ms))

    # -- worker side -------------------------------------------------------------------------

    def _carry_out(self, now_ms: int, effects: WorkerEffects) -> None:
        for job_id, index, attempt in effects.stop:
            running = self.runs.get((job_id, index))
            if running is not None and running.run.attempt == attempt:
                del self.runs[(job_id, index)]
            self.worker.stopped(job_id, index, attempt)
        for run in effects.start:
            self.runs[(run.job_id, run.index)] = _Running(run, now_ms)
            self._push(now_ms + self.rng.randint(*RUN_MS), run)

    def _push(self, due_ms: int, run: wire.RunTask) -> None:
        heapq.heappush(self._due, (due_ms, run.job_id, run.index, run.attempt))

    def _send_finishes(self, now_ms: int, finishes: list[tasks.Finish]) -> list[_Send]:
        if not finishes:
            return []
        leader = self.server.raft.leader_id
        if leader is None:
            return []  # no leader now: the resend timer tries again
        if leader == self.node_id:
            if self.leader is None:
                return []
            self.environment.duplicates_dropped(
                self.leader.results(self.node_id, finishes, self.server.state.tasks)
            )
            return self._dispatch(now_ms)
        return [
            _Send(leader, TaskMail(self.node_id, wire.TasksDone(finishes=tuple(batch))))
            for batch in tasks.batches(
                finishes,
                tasks.outcome_bytes,
                FINISHES_BYTES_PER_MESSAGE,
                wire.TASKS_PER_MESSAGE_MAX,
            )
        ]

    def _report(self, now_ms: int) -> list[_Send]:
        leader = self.server.raft.leader_id
        if leader is None:
            return []
        report = self.worker.report()
        if leader != self.node_id:
            return [_Send(leader, TaskMail(self.node_id, report))]
        if self.leader is not None:
            self._lost(self.leader.report(self.node_id, report.runs, now_ms))
            return self._dispatch(now_ms)
        return []

    # -- leader side --------------------------------------------------------------------------

    def _check_leadership(self, now_ms: int) -> list[_Send]:
        raft = self.server.raft
        if not self.server.leader_ready():
            if self.leader is not None and raft.role != "leader":
                self.leader = None
            return []
        if self.leader is not None and self.leader.term == raft.term:
            return []
        self.leader = TaskLeader(
            term=raft.term,
            workers=self.environment.workers_view(),
            table=self.server.state.tasks,
            now_ms=now_ms,
            report_grace_ms=REPORT_GRACE_MS,
            unreachable_ms=UNREACHABLE_MS,
        )
        self.environment.scheduler_started()
        return self._dispatch(now_ms)

    def _dispatch(self, now_ms: int) -> list[_Send]:
        if self.leader is None:
            return []
        return self._leader_sends(now_ms, self.leader.dispatch(now_ms, self.server.state.tasks))

    def _leader_sends(self, now_ms: int, sends: Sends) -> list[_Send]:
        out: list[_Send] = []
        for node_id, message in sends.messages:
            if node_id == self.node_id:
                if isinstance(message, wire.RunTasks):
                    self._carry_out(now_ms, self.worker.accept(message))
                elif isinstance(message, wire.StopTasks):
                    self._carry_out(now_ms, self.worker.stop(message.runs))
            elif isinstance(message, wire.RunTasks | wire.StopTasks):
                out.append(_Send(node_id, TaskMail(self.node_id, message)))
        return out

    def _lost(self, count: int) -> None:
        if count:
            self.environment.runs_lost(count)


# -- submitters ---------------------------------------------------------------------------------


SubmissionKind = Literal["submit", "add", "cancel"]


@dataclass(slots=True)
class _JobPlan:
    """A job a submitter made, and what became of its submission."""

    submitter: int
    total: int
    args: list[bytes]
    retries: int
    max_retries: int
    submitted: bool = False
    cancel_sent: bool = False
    cancel_acknowledged: bool = False


@dataclass(slots=True)
class _Submission:
    kind: SubmissionKind
    command: tasks.TaskCommand
    job_ids: tuple[str, ...]
    seq: int
    call_ms: int
    ambiguous: bool = False  # an attempt may have been applied
    attempt: int = 0


@dataclass(slots=True)
class _Submitter:
    index: int
    client_id: str
    seq: int = 0
    answered: bool = False
    leader_guess: int | None = None
    operation: _Submission | None = None
    adds: list[tasks.AddTasks] = field(default_factory=list)  # the rest of a job submitted in parts
    jobs: list[str] = field(default_factory=list)  # fully submitted, not cancelled
    made: int = 0
    stopped: bool = False  # no new jobs (the safety phase is ending)


# -- the scenario -------------------------------------------------------------------------------


class TaskScenario(RaftScenario):
    """One durable-tasks run (see module doc)."""

    def __init__(
        self,
        options: TaskScenarioOptions,
        *,
        trace_sink: Callable[[str], None] | None = None,
        trace_messages: bool = False,
        audit: bool = True,
    ) -> None:
        options.validate()
        self.task_options = options
        super().__init__(
            options.raft_options(),
            trace_sink=trace_sink,
            trace_messages=trace_messages,
            audit=audit,
        )
        self.log[0] = f"options: {options.command()}"
        # The task table makes states a hundred times the KV scenario's:
        # chunks scaled to match keep a transfer a few dozen round trips.
        self.config = dataclasses.replace(self.config, snapshot_chunk_bytes=SNAPSHOT_CHUNK_BYTES)
        self.log = [
            f"phases: warmup {WARMUP_MS} ms, safety until {self.liveness_start_ms} ms, liveness bound "
            f"{LIVENESS_BOUND_MS} ms; snapshot chunks of {SNAPSHOT_CHUNK_BYTES} bytes"
            if line.startswith("phases:")
            else line
            for line in self.log
        ]
        self.task_rng = random.Random(derive_seed(options.seed, "tasks"))
        self.submitters = [_Submitter(index, f"s{index}") for index in range(options.submitters)]
        self.plans: dict[str, _JobPlan] = {}
        self._submissions: dict[int, tuple[_Submitter, _Submission, int]] = {}
        self._settled: dict[
            tuple[str, int], tuple[str, str, bytes]
        ] = {}  # first final outcome seen anywhere
        self.executions: dict[
            tuple[str, int], list[tuple[str, int, str]]
        ] = {}  # -> (node, attempt, kind)
        self.run_outcomes: dict[str, int] = {}
        self.lost_declared = 0
        self.duplicates_at_leaders = 0
        self.schedulers = 0
        self.restores = 0
        self.submissions_ambiguous = 0

    # -- TaskEnvironment --------------------------------------------------------------------

    def workers_view(self) -> list[WorkerNode]:
        now_ms = self.world.now_ms
        return [
            WorkerNode(node.node_id, SLOTS)
            for node in self.world.nodes
            if node.up or now_ms - self._since_ms[node.index] < DETECT_MS
        ]

    def executed(self, node_id: str, run: wire.RunTask, finish: tasks.Finish) -> None:
        self.executions.setdefault((run.job_id, run.index), []).append(
            (node_id, run.attempt, finish.kind)
        )
        self.run_outcomes[finish.kind] = self.run_outcomes.get(finish.kind, 0) + 1
        self.world.trace(
            f"{self.world.now_ms} ran {node_id} {run.job_id[:8]}/{run.index}@{run.attempt} {finish.kind}"
        )

    def scheduler_started(self) -> None:
        self.schedulers += 1

    def runs_lost(self, count: int) -> None:
        self.lost_declared += count

    def duplicates_dropped(self, count: int) -> None:
        self.duplicates_at_leaders += count

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> TaskScenarioResult:  # type: ignore[override]
        """Run all phases; raises ``SimulationFailure`` (with the replay command) on a broken invariant."""
        return run_with_replay(self._run_tasks, self.task_options.command)

    def _run_tasks(self) -> TaskScenarioResult:
        world = self.world
        self._start_with_faults()
        for submitter in self.submitters:
            start_ms = self.task_rng.randint(0, 50)
            world.schedule(
                start_ms, f"submitter {submitter.client_id} starts", self._next_of(submitter)
            )
        world.schedule(
            self.liveness_start_ms,
            "liveness: submissions complete, jobs finish",
            self._start_liveness,
        )
        self.liveness_deadline_ms = self.liveness_start_ms + LIVENESS_BOUND_MS
        world.run_until(self.liveness_deadline_ms)
        if self.liveness_ms is None:
            self._fail_liveness()
        self._final_checks()
        return self._task_result()

    def _start_liveness(self) -> None:
        self._torn_pending.clear()
        self._revoke_fatal_permanent_crashes()
        self.world.schedule(
            self.world.now_ms + CONVERGENCE_POLL_MS, "check convergence", self._poll_convergence
        )

    def _poll_convergence(self) -> None:
        world = self.world
        if (
            self._idle()
            and self._converged()
            and not self._unfinished_jobs()
            and not self._busy_workers()
        ):
            self.liveness_ms = world.now_ms - self.liveness_start_ms
            world.stop_requested = True
            return
        world.schedule(
            world.now_ms + CONVERGENCE_POLL_MS, "check convergence", self._poll_convergence
        )

    def _idle(self) -> bool:
        return all(
            submitter.operation is None and not submitter.adds for submitter in self.submitters
        )

    def _leader_table(self) -> tasks.TaskTable | None:
        for node in self.world.nodes:
            if node.up and node.live_core().server.raft.role == "leader":
                return node.live_core().server.state.tasks
        return None

    def _unfinished_jobs(self) -> list[str]:
        table = self._leader_table()
        if table is None:
            return ["(no leader)"]
        unfinished = []
        for job_id, plan in self.plans.items():
            if not plan.submitted:
                continue
            job = table.job(job_id)
            if job is None or job.state not in ("finished", "cancelled"):
                unfinished.append(
                    f"{job_id[:8]} {job.state if job else 'missing'} {job.finished if job else 0}/{plan.total}"
                )
        return unfinished

    def _busy_workers(self) -> list[str]:
        busy = []
        for node in self.world.nodes:
            if not node.up:
                continue
            host = _task_host(node)
            if host.runs or host.worker.running or host.worker.outbox_size:
                busy.append(
                    f"{node.node_id}: {len(host.runs)} runs, {len(host.worker.running)} running, "
                    f"{host.worker.outbox_size} in the outbox"
                )
        return busy

    def _fail_liveness(self) -> None:
        waiting = [
            f"{submitter.client_id}: {submitter.operation.kind} since {submitter.operation.call_ms} ms"
            for submitter in self.submitters
            if submitter.operation is not None
        ]
        states = [self._describe_node(node) for node in self.world.nodes]
        raise SimulationFailure(
            f"liveness: not done within {LIVENESS_BOUND_MS} ms of the heal at {self.liveness_start_ms} ms; "
            f"submissions waiting: {waiting or 'none'}; jobs unfinished: {self._unfinished_jobs()[:10] or 'none'}; "
            f"workers busy: {self._busy_workers() or 'none'}; nodes: {'; '.join(states)}"
        )

    # -- submitters ------------------------------------------------------------------------------

    def _next_of(self, submitter: _Submitter) -> Callable[[], None]:
        return lambda: self._next_submission(submitter)

    def _next_submission(self, submitter: _Submitter) -> None:
        world = self.world
        now_ms = world.now_ms
        rng = self.task_rng
        if submitter.adds:
            add = submitter.adds.pop(0)
            self._begin(submitter, "add", add, (add.job_id,))
            return
        if submitter.stopped or now_ms + SUBMIT_STOP_BEFORE_MS >= self.liveness_start_ms:
            submitter.stopped = True
            return
        draw = rng.random()
        cancellable = [job_id for job_id in submitter.jobs if not self.plans[job_id].cancel_sent]
        if cancellable and draw < CANCEL_PROBABILITY:
            job_id = rng.choice(cancellable)
            self.plans[job_id].cancel_sent = True
            self._begin(submitter, "cancel", tasks.CancelJob(job_id), (job_id,))
        elif draw < CANCEL_PROBABILITY + BATCH_PROBABILITY:
            jobs = [self._new_job(submitter, split=False) for _ in range(rng.randint(2, 3))]
            command = tasks.SubmitJobs(tuple(jobs))
            self._begin(submitter, "submit", command, tuple(job.job_id for job in jobs))
        else:
            job = self._new_job(submitter, split=rng.random() < SPLIT_PROBABILITY)
            self._begin(submitter, "submit", job, (job.job_id,))

    def _new_job(self, submitter: _Submitter, *, split: bool) -> tasks.SubmitJob:
        rng = self.task_rng
        submitter.made += 1
        job_id = hashlib.sha256(
            f"{self.options.seed}/{submitter.client_id}/{submitter.made}".encode()
        ).hexdigest()[:32]
        total = rng.randint(1, TASKS_PER_JOB_MAX)
        flaky = rng.random() < FLAKY_PROBABILITY
        args = [
            f"{job_id}/{index}/{'flaky' if flaky else 'steady'}".encode() for index in range(total)
        ]
        plan = _JobPlan(
            submitter=submitter.index,
            total=total,
            args=args,
            retries=rng.randint(0, 2) if flaky else 0,
            max_retries=rng.choice((1, 50, 50, 50)),
        )
        self.plans[job_id] = plan
        spec = tasks.JobSpec(
            name=f"sim-{job_id[:6]}",
            function_hash=FUNCTION_HASH,
            retries=plan.retries,
            max_retries=plan.max_retries,
        )
        first = total
        if split and total > 1:
            first = rng.randint(1, total - 1)
            start = first
            while start < total:
                end = min(total, start + rng.randint(1, total - start))
                payloads = tuple(tasks.Payload(inline=arg) for arg in args[start:end])
                submitter.adds.append(tasks.AddTasks(job_id, start, payloads))
                start = end
        omit = submitter.jobs and rng.random() < FUNCTION_OMITTED_PROBABILITY
        return tasks.SubmitJob(
            job_id=job_id,
            spec=spec,
            total=total,
            now_ms=self.world.now_ms,
            tasks=tuple(tasks.Payload(inline=arg) for arg in args[:first]),
            function=None if omit else tasks.Payload(inline=TASK_FUNCTION),
        )

    def _begin(
        self,
        submitter: _Submitter,
        kind: SubmissionKind,
        command: tasks.TaskCommand,
        job_ids: tuple[str, ...],
    ) -> None:
        submitter.seq += 1
        operation = _Submission(kind, command, job_ids, submitter.seq, self.world.now_ms)
        submitter.operation = operation
        self.world.trace(
            f"{self.world.now_ms} {submitter.client_id} {kind} {' '.join(j[:8] for j in job_ids)}"
        )
        self._attempt_submission(submitter)

    def _attempt_submission(self, submitter: _Submitter) -> None:
        operation = submitter.operation
        assert operation is not None
        world = self.world
        rng = self.task_rng
        operation.attempt += 1
        target = (
            submitter.leader_guess
            if submitter.leader_guess is not None
            else rng.randrange(len(world.nodes))
        )
        request_id = self._next_request_id
        self._next_request_id += 1
        self._submissions[request_id] = (submitter, operation, operation.attempt)
        ack = operation.seq if submitter.answered else 0
        proposal = kv.Proposal(
            client_id=submitter.client_id, seq=operation.seq, ack=ack, command=operation.command
        )
        if rng.random() >= world.network.loss_probability:
            at_ms = world.now_ms + rng.randint(*CLIENT_DELAY_MS)
            world.schedule(
                at_ms,
                f"submission {request_id} to n{target}",
                self._deliver_request(target, request_id, WriteRequest(proposal)),
            )
        attempt = operation.attempt
        world.schedule(
            world.now_ms + ATTEMPT_TIMEOUT_MS,
            f"submitter {submitter.client_id} attempt {attempt} times out",
            self._submission_timeout(submitter, operation, attempt),
        )

    def _submission_timeout(
        self, submitter: _Submitter, sent_for: _Submission, attempt: int
    ) -> Callable[[], None]:
        def timeout() -> None:
            if submitter.operation is sent_for and sent_for.attempt == attempt:
                sent_for.ambiguous = True
                submitter.leader_guess = None
                self._attempt_submission(submitter)

        return timeout

    def _send_replies(
        self, node: SimNode[RaftHost], replies: list[tuple[int, ClientReply]]
    ) -> None:
        world = self.world
        rng = self.task_rng
        for request_id, reply in replies:
            if request_id >= INTERNAL_REQUEST_IDS:
                continue  # a host's own proposal: the runtime does not wait for these either
            if rng.random() < world.network.loss_probability:
                continue
            at_ms = world.now_ms + rng.randint(*CLIENT_DELAY_MS)
            world.schedule(
                at_ms,
                f"reply {request_id} from {node.node_id}",
                self._reply_of(node.index, request_id, reply),
            )

    def _reply_of(self, source: int, request_id: int, reply: ClientReply) -> Callable[[], None]:
        return lambda: self._on_reply(source, request_id, reply)

    def _on_reply(self, source: int, request_id: int, reply: ClientReply) -> None:
        found = self._submissions.pop(request_id, None)
        if found is None:
            return
        submitter, operation, attempt = found
        if submitter.operation is not operation or operation.attempt != attempt:
            return  # a late answer to an attempt given up on
        if isinstance(reply, ErrorReply):
            self._on_submission_error(submitter, operation, reply)
            return
        if not isinstance(reply, WriteReply):
            raise SimulationFailure(f"{submitter.client_id}: a write was answered with {reply!r}")
        if reply.result.status == "expired":
            # The session forgot us: not applied now (an earlier attempt may
            # have been). A new seq asks again; the table's answer tells.
            operation.ambiguous = True
            self.submissions_ambiguous += 1
            submitter.answered = False
            submitter.seq += 1
            operation.seq = submitter.seq
            self._attempt_submission(submitter)
            return
        submitter.answered = True
        submitter.leader_guess = source
        self._on_answer(submitter, operation, reply.result.succeeded)

    def _on_answer(self, submitter: _Submitter, operation: _Submission, succeeded: bool) -> None:
        world = self.world
        if operation.kind == "cancel":
            job_id = operation.job_ids[0]
            # Refused: the job finished first (or an earlier attempt cancelled it).
            self.plans[job_id].cancel_acknowledged = succeeded
            submitter.jobs.remove(job_id)
        elif not succeeded and not operation.ambiguous:
            # Job ids are fresh and a kept job holds the function of one
            # submitted without it: nothing here may be refused.
            raise SimulationFailure(
                f"at {world.now_ms} ms: {submitter.client_id}'s {operation.kind} of "
                f"{[job_id[:8] for job_id in operation.job_ids]} was refused"
            )
        else:
            # Refused after an unknown outcome: an earlier attempt of this very
            # submission took the ids or the start (the end checks find out).
            for job_id in operation.job_ids:
                self.plans[job_id].submitted = True
                if not any(add.job_id == job_id for add in submitter.adds):
                    submitter.jobs.append(job_id)  # complete: it may be cancelled
        world.trace(f"{world.now_ms} {submitter.client_id} {operation.kind} answered {succeeded}")
        submitter.operation = None
        think_ms = self.task_rng.randint(0, THINK_MS_MAX)
        world.schedule(
            world.now_ms + think_ms,
            f"submitter {submitter.client_id} next",
            self._next_of(submitter),
        )

    def _on_submission_error(
        self, submitter: _Submitter, operation: _Submission, reply: ErrorReply
    ) -> None:
        code = reply.code
        if code in ("too_large", "invalid"):
            raise SimulationFailure(
                f"{submitter.client_id}: the server refused a well-formed submission: {reply!r}"
            )
        if code in ("leader_lost", "timeout"):
            if not operation.ambiguous:
                self.submissions_ambiguous += 1
            operation.ambiguous = True
        hint = reply.leader_id
        submitter.leader_guess = int(hint[1:]) if code == "not_leader" and hint else None
        delay_ms = (
            0 if submitter.leader_guess is not None else self.task_rng.randint(*RETRY_BACKOFF_MS)
        )
        attempt = operation.attempt

        def retry() -> None:
            if submitter.operation is operation and operation.attempt == attempt:
                self._attempt_submission(submitter)

        self.world.schedule(
            self.world.now_ms + delay_ms, f"submitter {submitter.client_id} retries", retry
        )

    # -- CoreDriver ------------------------------------------------------------------------------

    def create(self, node: SimNode[RaftHost], rng: random.Random, now_ms: int) -> RaftHost:
        """A node built from its disk: the server as the Raft scenario builds it, and fresh task cores."""
        server = super().create(node, rng, now_ms).server
        return TaskHost(
            server,
            node_id=node.node_id,
            session=f"sched-{node.node_id}-{node.epoch}",
            rng=random.Random(derive_seed(self.options.seed, f"tasks/{node.node_id}/{node.epoch}")),
            environment=self,
            now_ms=now_ms,
        )

    def audit(self, node: SimNode[RaftHost], effects: HostEffects) -> None:
        """The Raft audit, on the Raft messages (task messages carry nothing durable)."""
        raft_messages = [
            send for send in effects.messages if not isinstance(send.message, TaskMail)
        ]
        if len(raft_messages) == len(effects.messages):
            super().audit(node, effects)
            return
        view = HostEffects(effects.output)
        view.messages = raft_messages
        super().audit(node, view)

    def observe(self, node: SimNode[RaftHost], effects: HostEffects, global_ms: int) -> None:
        """Raft's checks and apply, then the task cores see what was applied; the leader proposes."""
        if not node.up:
            return
        tasks_only = isinstance(effects, TaskEffects) and effects.tasks_only
        if not tasks_only or effects.crash_before_apply:
            super().observe(node, effects, global_ms)
            if not node.up or tasks_only:
                return
            server = node.live_core().server
            events = server.state.take_task_events()
            restored = effects.output.raft.restore_snapshot
            if restored:
                self.restores += 1
            self._check_events(node, events, global_ms)
            if events or restored:
                self.world.call(
                    node.index,
                    lambda core, now_ms: _as_task_host(core).after_apply(now_ms, events, restored),
                )
                if not node.up:
                    return
        host = _task_host(node)
        if host.has_proposals():
            self.world.call(node.index, lambda core, now_ms: _as_task_host(core).propose(now_ms))

    def _check_events(
        self, node: SimNode[RaftHost], events: Sequence[tasks.TaskEvent], global_ms: int
    ) -> None:
        """A final outcome, once seen anywhere, is every replica's; a result is its arguments' and really ran."""
        table = node.live_core().server.state.tasks
        for event in events:
            if event.kind != "finished":
                continue
            for index in event.indexes:
                task = table.task(event.job_id, index)
                if task is None:
                    continue
                outcome = (task.state, task.kind, task.value.inline)
                seen = self._settled.setdefault((event.job_id, index), outcome)
                if seen != outcome:
                    raise RaftCheckFailure(
                        f"at {global_ms} ms: task {event.job_id[:8]}/{index} finished as {outcome[:2]} on "
                        f"{node.node_id} but as {seen[:2]} before: a final outcome changed"
                    )
                if task.state == "done":
                    self._check_done(event.job_id, index, task, global_ms)

    def _check_done(self, job_id: str, index: int, task: tasks.TaskRecord, global_ms: int) -> None:
        if task.value.inline != expected_result(task.args.inline):
            raise RaftCheckFailure(
                f"at {global_ms} ms: task {job_id[:8]}/{index} has a result not of its arguments"
            )
        runs = self.executions.get((job_id, index), [])
        if not any(node_id == task.node and kind == "ok" for node_id, _, kind in runs):
            raise RaftCheckFailure(
                f"at {global_ms} ms: task {job_id[:8]}/{index} is done by {task.node}, which never ran it to the end"
            )

    # -- end checks ---------------------------------------------------------------------------

    def _final_checks(self) -> None:
        self._check_replicas()
        table = self._leader_table()
        assert table is not None  # liveness found one
        ours = set(self.plans)
        for job in table.jobs():
            if job.job_id not in ours:
                raise RaftCheckFailure(f"the table holds job {job.job_id}, which no submitter made")
        for job_id, plan in self.plans.items():
            if not plan.submitted:
                continue
            self._check_job(table, job_id, plan)

    def _check_job(self, table: tasks.TaskTable, job_id: str, plan: _JobPlan) -> None:
        job = table.job(job_id)
        name = job_id[:8]
        if job is None:
            raise RaftCheckFailure(
                f"job {name} was submitted (acknowledged) and is not in the table: lost"
            )
        if job.state == "cancelled":
            if not plan.cancel_sent:
                raise RaftCheckFailure(f"job {name} is cancelled, but nobody cancelled it")
        elif plan.cancel_acknowledged:
            raise RaftCheckFailure(
                f"job {name}'s cancel was acknowledged, but the job is {job.state}"
            )
        elif job.state != "finished" or len(job.tasks) != plan.total or job.finished != plan.total:
            raise RaftCheckFailure(
                f"job {name} is {job.state} with {job.finished}/{len(job.tasks)} of {plan.total} tasks finished"
            )
        done = 0
        for index, task in enumerate(job.tasks):
            if task.args.inline != plan.args[index]:
                raise RaftCheckFailure(
                    f"task {name}/{index} has arguments its submitter did not send"
                )
            if task.state == "done":
                done += 1
                self._check_done(job_id, index, task, self.world.now_ms)
            elif task.state == "failed":
                worker_failure = task.kind in tasks.FAILURE_KINDS_OF_THE_WORKER
                justified = (
                    task.crashes > plan.max_retries
                    if worker_failure
                    else task.errors > plan.retries
                )
                if not justified:
                    raise RaftCheckFailure(
                        f"task {name}/{index} failed ({task.kind}) with {task.crashes} crashes and {task.errors} "
                        f"errors, within max_retries={plan.max_retries} retries={plan.retries}"
                    )
            elif task.state == "cancelled":
                if job.state != "cancelled":
                    raise RaftCheckFailure(f"task {name}/{index} is cancelled in a {job.state} job")
            else:
                raise RaftCheckFailure(
                    f"task {name}/{index} is still {task.state} in a {job.state} job: lost"
                )
        if job.commits != done:
            raise RaftCheckFailure(
                f"job {name} counts {job.commits} committed results for {done} tasks done"
            )

    def _task_result(self) -> TaskScenarioResult:
        world = self.world
        table = self._leader_table()
        assert table is not None
        jobs = [job for job in table.jobs()]
        names = [
            f"Raft safety (election, log matching, leader completeness, state machine): {len(self.checks.leaders)} terms",
            f"after every apply on every node: final outcomes never change ({len(self._settled)} tasks), "
            "results are their arguments' and ran where the table says",
            f"every submitted job in the table and final ({len(jobs)} jobs); no task lost, each result committed once",
            "failed tasks failed within their retry budget only when it was spent",
            "cancelled only when asked, and surely when the cancel was acknowledged",
            "every live worker idle with an empty outbox at the end",
            "replicas identical (logs pairwise, state machines with the task table)",
            "persist-before-send audit" if world.audit else "",
        ]
        return TaskScenarioResult(
            options=self.task_options,
            trace_hash=world.trace_hash,
            end_ms=world.now_ms,
            log=self.log,
            deliveries=world.stats.deliveries,
            jobs=len(jobs),
            tasks=sum(len(job.tasks) for job in jobs),
            jobs_cancelled=sum(job.state == "cancelled" for job in jobs),
            tasks_failed=sum(job.failed for job in jobs),
            runs=sum(len(runs) for runs in self.executions.values()),
            run_outcomes=dict(sorted(self.run_outcomes.items())),
            duplicates=sum(job.duplicates for job in jobs),
            duplicates_at_leaders=self.duplicates_at_leaders,
            lost_declared=self.lost_declared,
            submissions_ambiguous=self.submissions_ambiguous,
            leaders=len(self.checks.leaders),
            schedulers=self.schedulers,
            crashes=self.crashes,
            torn_crashes=dict(self.torn_crashes),
            snapshots_sent=self.snapshots_sent,
            restores=self.restores,
            liveness_ms=self.liveness_ms,
            checks=[name for name in names if name],
        )


def _as_task_host(core: RaftHost) -> TaskHost:
    assert isinstance(core, TaskHost)
    return core


def _task_host(node: SimNode[RaftHost]) -> TaskHost:
    return _as_task_host(node.live_core())


def run_tasks_scenario(options: TaskScenarioOptions, *, audit: bool = True) -> TaskScenarioResult:
    """Build and run one durable-tasks scenario (see ``TaskScenario``)."""
    return TaskScenario(options, audit=audit).run()


__all__ = [
    "TORN_STAGES",
    "TaskHost",
    "TaskScenario",
    "TaskScenarioOptions",
    "TaskScenarioResult",
    "expected_result",
    "run_tasks_scenario",
]
