"""Durable tasks on one node: the leader's scheduler, the worker, and clients' job watches.

Every node plays up to three parts, all driven by the task table that the
Raft log replicates (``moot.core.tasks``):

- **Leader** (while this node leads and has applied its predecessors'
  entries): a ``moot.core.task_leader.TaskLeader`` (the sans-IO logic,
  around the scheduler) rebuilt from the table, fed by the table's events. Its dispatches go out as ``RunTasks`` at once
  and are recorded (``AssignTasks``) in the same group commit as whatever
  else is pending; workers' results (``TasksDone``) free capacity at once
  and are proposed as ``FinishTasks`` batches. Losses — a worker node that
  left, a run its node's report does not mention — are proposed as
  ``lost`` finishes, which the table retries.
- **Worker** (``--cpus`` > 0): runs what the leader sends in its
  ``WorkerPool``, isolated processes; keeps each outcome in an outbox and
  sends it to whoever leads until its own copy of the table shows the task
  finished (so a leader change loses nothing); reports its runs every
  ``REPORT_INTERVAL_S``. Results over ``tasks.PAYLOAD_INLINE_BYTES_MAX``
  go to the object store (R replicas) before they are reported.
- **Watches** (any node): a client's ``JobWatch`` gets the job's finished
  tasks from this node's table — what it has, then each as it applies —
  so a client whose node dies re-watches elsewhere from its last seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from moot.core import scheduler as scheduling
from moot.core import tasks, wire
from moot.core.scheduler import WorkerNode
from moot.core.task_leader import Sends, TaskLeader
from moot.core.task_worker import TaskWorker, WorkerEffects
from moot.runtime.kv_service import KvService
from moot.runtime.logs import StructuredLogger, log_event
from moot.runtime.object_service import ObjectError, ObjectService
from moot.runtime.transport import Peer, Transport
from moot.runtime.worker_pool import Outcome, PoolClosed, WorkerPool

REPORT_INTERVAL_S: Final = 1.0  # a worker's report of its runs to the leader
HOUSEKEEPING_S: Final = 0.25  # the leader's look at membership and report deadlines
FUNCTION_WAIT_S: Final = 10.0  # a run whose function this node cannot find yet waits this long
EVENTS_BYTES_PER_MESSAGE: Final = (
    4 * 1024 * 1024
)  # one JobEvents frame stays well under the wire cap
FINISHES_BYTES_PER_MESSAGE: Final = 1024 * 1024  # one TasksDone stays well under a frame
JOBS_LISTED_MAX: Final = 10_000  # `moot job ls` shows at most this many (the newest)
# Results are coalesced for this long before they go out (worker to leader)
# and before they are proposed (leader to Raft): a few ms of latency buys a
# message and a log entry per batch instead of per task (group commit).
COALESCE_S: Final = 0.005


def monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class _Run:
    attempt: int
    task: asyncio.Task[None]


@dataclass(slots=True)
class _Watch:
    peer: Peer
    request_id: int
    seq: int


class TaskService:
    """Tasks on one node (see module doc)."""

    def __init__(
        self,
        *,
        node_id: str,
        transport: Transport,
        kv: KvService,
        objects: ObjectService,
        address_of: Callable[[str], str | None],
        workers_now: Callable[[], list[WorkerNode]],
        logger: StructuredLogger,
        cpus: int,
        memory_limit_bytes: int | None = None,
        worker_environment: Mapping[str, str] | None = None,
    ) -> None:
        self.node_id = node_id
        self.transport = transport
        self.kv = kv
        self.objects = objects
        self.log = logger
        self.cpus = cpus
        self._address_of = address_of
        self._workers_now = workers_now
        self.pool = WorkerPool(cpus, memory_limit_bytes=memory_limit_bytes) if cpus > 0 else None
        self._worker_environment = {"MOOT_NODE_ID": node_id, **(worker_environment or {})}
        # leader
        self.leader: TaskLeader | None = None
        self._schedule_pending = False
        self._propose_pending = False
        # worker
        self.worker = TaskWorker(node_id, runs_tasks=cpus > 0)
        self._runs: dict[tuple[str, int], _Run] = {}  # the asyncio tasks of the runs here
        self._flush_pending = False
        self._last_flush_at = 0.0
        self._last_propose_at = 0.0
        self._applied = (
            asyncio.Event()
        )  # set on every apply: runs waiting for their function look again
        # watches
        self._watches: dict[
            str, dict[tuple[str, int], _Watch]
        ] = {}  # job -> (client address, request id) -> watch
        self._background: set[asyncio.Task[Any]] = set()
        kv.on_applied = self._on_applied

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        if self.pool is not None:
            # Tasks can ask where they run and reach the federation through
            # this node (``moot.get_client()``): workers inherit the environment.
            os.environ.update(self._worker_environment)
            await self.pool.start()

    async def run(self) -> None:
        """Reports, resends and the leader's housekeeping, until cancelled."""
        next_report = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_report:
                next_report = now + REPORT_INTERVAL_S
                self._report()
                self._resend()
            self._check_leadership()
            if self.leader is not None:
                self._housekeeping()
            await asyncio.sleep(HOUSEKEEPING_S)  # a period, not a synchronisation

    async def close(self) -> None:
        for run in list(self._runs.values()):
            run.task.cancel()
        for task in list(self._background):
            task.cancel()
        if self.pool is not None:
            await self.pool.close()

    # -- inputs ---------------------------------------------------------------------

    def on_peer_message(self, peer: Peer, message: wire.Message) -> None:
        if isinstance(message, wire.RunTasks):
            self._accept_runs(message)
        elif isinstance(message, wire.TasksDone):
            self._results_arrived(peer.node_id, message.finishes)
        elif isinstance(message, wire.WorkerReport):
            self._worker_report(peer.node_id, message)
        elif isinstance(message, wire.StopTasks):
            self._stop_runs(message.runs)

    def on_client_request(self, peer: Peer, message: wire.Message) -> None:
        if isinstance(message, wire.JobWatch):
            self._watch(peer, message)
        elif isinstance(message, wire.JobUnwatch):
            for key in [
                k for k in self._watches.get(message.job_id, {}) if k[0] == peer.remote_address
            ]:
                del self._watches[message.job_id][key]
        elif isinstance(message, wire.JobQuery):
            peer.reply(self.job_info(message))

    def members_changed(self) -> None:
        if self.leader is not None:
            self._after_losses(self.leader.set_workers(self._workers_now(), monotonic_ms()))
            self._schedule_soon()

    def peer_lost(self, node_id: str) -> None:
        """A node's connection closed: the leader reschedules its runs now."""
        if self.leader is not None and node_id != self.node_id:
            self._after_losses(self.leader.unreachable(node_id, monotonic_ms()))
            self._schedule_soon()

    def _on_applied(self, events: list[tasks.TaskEvent], restored: bool) -> None:
        self._applied.set()
        self._applied = asyncio.Event()
        table = self.kv.server.state.tasks
        self._carry_out(self.worker.applied(events, table, restored=restored))
        if restored:
            self.leader = None  # rebuilt from the new table below, if we lead
            for job_id in list(self._watches):
                self._push_watches(job_id)
        self._check_leadership()
        leader = self.leader
        if leader is not None and events:
            self._send_all(leader.applied(events, table))
            self._schedule_soon()
        for event in events:
            if event.kind in ("finished", "job"):
                self._push_watches(event.job_id)

    # -- leader ---------------------------------------------------------------------

    def _check_leadership(self) -> None:
        raft = self.kv.server.raft
        if not self.kv.leader_ready():
            if self.leader is not None and raft.role != "leader":
                log_event(self.log, logging.INFO, "scheduler_stopped", term=self.leader.term)
                self.leader = None
            return
        if self.leader is not None and self.leader.term == raft.term:
            return
        leader = TaskLeader(
            term=raft.term, workers=self._workers_now(), table=self.kv.server.state.tasks, now_ms=monotonic_ms()
        )
        self.leader = leader
        log_event(
            self.log,
            logging.INFO,
            "scheduler_started",
            term=raft.term,
            pending=leader.scheduler.pending_count,
            running=leader.scheduler.running_count,
        )
        self._propose_soon()
        self._schedule_soon()

    def _housekeeping(self) -> None:
        assert self.leader is not None
        self._after_losses(self.leader.set_workers(self._workers_now(), monotonic_ms()))
        self._schedule_soon()

    def _schedule_soon(self) -> None:
        if not self._schedule_pending:
            self._schedule_pending = True
            asyncio.get_running_loop().call_soon(self._schedule)

    def _schedule(self) -> None:
        self._schedule_pending = False
        if self.leader is None:
            return
        sends = self.leader.dispatch(monotonic_ms(), self.kv.server.state.tasks)
        self._send_all(sends)
        self._propose_soon()

    def _send_all(self, sends: Sends) -> None:
        for node_id, message in sends.messages:
            self._send_to(node_id, message)

    def _send_to(self, node_id: str, message: wire.Message) -> None:
        if node_id == self.node_id:
            if isinstance(message, wire.RunTasks):
                self._accept_runs(message)
            elif isinstance(message, wire.StopTasks):
                self._stop_runs(message.runs)
            return
        address = self._address_of(node_id)
        if address is not None:
            self.transport.send(address, message)

    def _results_arrived(self, node_id: str, finishes: Sequence[tasks.Finish]) -> None:
        if self.leader is None:
            return  # not the leader (any more): the worker sends them again to the next one
        self.leader.results(node_id, finishes, self.kv.server.state.tasks)
        self._propose_soon()
        self._schedule_soon()

    def _worker_report(self, node_id: str, report: wire.WorkerReport) -> None:
        if self.leader is not None:
            self._after_losses(self.leader.report(node_id, report.runs, monotonic_ms()))

    def _after_losses(self, count: int) -> None:
        if not count:
            return
        log_event(self.log, logging.WARNING, "tasks_lost", count=count)
        self._propose_soon()
        self._schedule_soon()

    def _propose_soon(self) -> None:
        if not self._propose_pending and self.leader is not None and self.leader.has_proposals():
            self._propose_pending = True
            self._last_propose_at = _call_paced(self._propose, self._last_propose_at)

    def _propose(self) -> None:
        """Hand the queued records to Raft: they ride in the next group commit."""
        self._propose_pending = False
        if self.leader is None:
            return
        for command in self.leader.take_proposals(wall_ms()):
            self._spawn(self.kv.write_internal(command))

    # -- worker -----------------------------------------------------------------------

    def _accept_runs(self, message: wire.RunTasks) -> None:
        self._carry_out(self.worker.accept(message))
        self._flush_soon()  # a node that runs no tasks answered at once

    def _carry_out(self, effects: WorkerEffects) -> None:
        for job_id, index, attempt in effects.stop:
            run = self._runs.get((job_id, index))
            if run is not None and run.attempt == attempt:
                del self._runs[(job_id, index)]
                run.task.cancel()  # the pool kills the worker process running it
            self.worker.stopped(job_id, index, attempt)
        for run_task in effects.start:
            self._runs[(run_task.job_id, run_task.index)] = _Run(
                run_task.attempt, asyncio.ensure_future(self._execute(run_task))
            )

    async def _execute(self, run: wire.RunTask) -> None:
        finish = await self._run_one(run)
        current = self._runs.get((run.job_id, run.index))
        if current is not None and current.attempt == run.attempt:
            del self._runs[(run.job_id, run.index)]
        self.worker.finished(run.job_id, run.index, run.attempt, finish)
        self._flush_soon()

    async def _run_one(self, run: wire.RunTask) -> tasks.Finish:
        assert self.pool is not None

        def failed(kind: tasks.FinishKind, error_type: str, message: str) -> tasks.Finish:
            return tasks.Finish(
                run.job_id,
                run.index,
                run.attempt,
                self.node_id,
                kind,
                error_type=error_type,
                error_message=message[: tasks.ERROR_TEXT_CHARS_MAX],
            )

        try:
            function = await self._function_bytes(run.function_hash)
            arguments = await self._payload_bytes(run.args)
        except ObjectError as error:
            return failed(
                "lost",
                "WorkerLost",
                f"node {self.node_id} could not fetch the task's inputs: {error}",
            )
        if function is None:
            return failed(
                "lost", "WorkerLost", f"node {self.node_id} does not have the job's function yet"
            )
        timeout_s = run.timeout_ms / 1000 if run.timeout_ms else None
        try:
            outcome = await self.pool.run(
                f"{run.job_id}/{run.index}",
                arguments,
                timeout_s=timeout_s,
                function=(run.function_hash, function),
            )
        except PoolClosed:
            raise asyncio.CancelledError from None
        except Exception as error:  # queue full, task too large: the run fails; the table decides
            return failed("error", type(error).__name__, str(error))
        return await self._finish_of(run, outcome)

    async def _finish_of(self, run: wire.RunTask, outcome: Outcome) -> tasks.Finish:
        kind: tasks.FinishKind = outcome.kind
        data = outcome.result if outcome.kind == "ok" else outcome.exception
        value = tasks.Payload(inline=data)
        if len(data) > tasks.PAYLOAD_INLINE_BYTES_MAX:
            if outcome.kind != "ok":
                value = tasks.Payload()  # an exception too large to keep: its text still travels
            else:
                try:
                    object_id = await self.objects.put_object(data)
                except ObjectError as error:
                    return tasks.Finish(
                        run.job_id,
                        run.index,
                        run.attempt,
                        self.node_id,
                        "lost",
                        error_type="WorkerLost",
                        error_message=f"could not store the result: {error}",
                    )
                value = tasks.Payload(object_id=object_id, size=len(data))
        error_type = outcome.error_type
        if outcome.kind == "crashed" and outcome.exit_code is not None:
            error_type = "WorkerCrashed"
        return tasks.Finish(
            job_id=run.job_id,
            index=run.index,
            attempt=run.attempt,
            node=self.node_id,
            kind=kind,
            value=value,
            error_type=error_type[: tasks.NAME_CHARS_MAX],
            error_message=outcome.error_message[: tasks.ERROR_TEXT_CHARS_MAX],
            traceback=outcome.traceback[-tasks.ERROR_TEXT_CHARS_MAX :],
            duration_ms=int(outcome.duration_s * 1000),
        )

    async def _function_bytes(self, function_hash: str) -> bytes | None:
        deadline = time.monotonic() + FUNCTION_WAIT_S
        while True:
            payload = self.worker.function(function_hash, self.kv.server.state.tasks)
            if payload is not None:
                return await self._payload_bytes(payload)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._applied.wait()  # our table may bring it

    async def _payload_bytes(self, payload: tasks.Payload) -> bytes:
        if payload.object_id:
            return await self.objects.read_object(payload.object_id)
        return payload.inline

    def _flush_soon(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            self._last_flush_at = _call_paced(self._flush_outbox, self._last_flush_at)

    def _flush_outbox(self) -> None:
        """Send the outcomes not sent yet to the leader (a batch per round)."""
        self._flush_pending = False
        self._send_finishes(self.worker.to_send(monotonic_ms(), self.kv.server.state.tasks, resend=False))

    def _resend(self) -> None:
        self._send_finishes(self.worker.to_send(monotonic_ms(), self.kv.server.state.tasks, resend=True))

    def _send_finishes(self, finishes: list[tasks.Finish]) -> None:
        if not finishes:
            return
        leader = self.kv.server.raft.leader_id
        if leader is None:
            return  # no leader now: the resend timer tries again
        for batch in tasks.batches(
            finishes, tasks.outcome_bytes, FINISHES_BYTES_PER_MESSAGE, wire.TASKS_PER_MESSAGE_MAX
        ):
            self._deliver_finishes(leader, batch)

    def _deliver_finishes(self, leader: str, finishes: list[tasks.Finish]) -> None:
        if leader == self.node_id:
            self._results_arrived(self.node_id, finishes)
        else:
            address = self._address_of(leader)
            if address is not None:
                self.transport.send(address, wire.TasksDone(finishes=tuple(finishes)))

    def _report(self) -> None:
        leader = self.kv.server.raft.leader_id
        if leader is None or self.pool is None:
            return
        report = self.worker.report()
        if leader == self.node_id:
            self._worker_report(self.node_id, report)
        else:
            address = self._address_of(leader)
            if address is not None:
                self.transport.send(address, report)

    def _stop_runs(self, refs: Sequence[wire.RunRef]) -> None:
        self._carry_out(self.worker.stop(refs))

    # -- watches ---------------------------------------------------------------------

    def _watch(self, peer: Peer, message: wire.JobWatch) -> None:
        watch = _Watch(peer, message.request_id, message.since_seq)
        self._watches.setdefault(message.job_id, {})[(peer.remote_address, message.request_id)] = (
            watch
        )
        self._push_watch(message.job_id, watch, always=True)

    def _push_watches(self, job_id: str) -> None:
        watches = self._watches.get(job_id)
        if not watches:
            return
        for key, watch in list(watches.items()):
            if not self._push_watch(job_id, watch, always=False):
                del watches[key]
        if not watches:
            del self._watches[job_id]

    def _push_watch(self, job_id: str, watch: _Watch, *, always: bool) -> bool:
        """Send what the watcher has not seen; False if it is gone or done."""
        table = self.kv.server.state.tasks
        job = table.job(job_id)
        if job is None:
            return watch.peer.reply(
                wire.JobEvents(request_id=watch.request_id, job_id=job_id, state="unknown")
            )
        results = [_result(index, task) for index, task in table.finished_since(job_id, watch.seq)]
        if not results and not always:
            return job.state not in ("finished", "cancelled")
        groups = list(tasks.batches(results, tasks.outcome_bytes, EVENTS_BYTES_PER_MESSAGE, wire.TASKS_PER_MESSAGE_MAX))
        for batch in groups or [[]]:  # an empty answer still says the job's state
            events = wire.JobEvents(watch.request_id, job_id, job.state, job.total, tuple(batch))
            if not watch.peer.reply(events):
                return False
        if results:
            watch.seq = results[-1].seq
        return job.state not in ("finished", "cancelled") or watch.seq < job.seq

    def job_info(self, query: wire.JobQuery, *, newest: int = JOBS_LISTED_MAX) -> wire.JobInfo:
        """Summaries of the asked job, or of the ``newest`` jobs (oldest first)."""
        table = self.kv.server.state.tasks
        if query.job_id:
            job = table.job(query.job_id)
            jobs = [job] if job is not None else []
        else:
            jobs = list(table.jobs())[-newest:]  # the newest: one reply stays one frame
        workers = self._workers_now()
        summaries = []
        for job in jobs:
            counts: dict[str, int] = {}
            reruns = 0
            for task in job.tasks:
                counts[task.state] = counts.get(task.state, 0) + 1
                reruns += max(0, task.runs - 1)
            blocked = ""
            if job.state in ("submitting", "running") and counts.get("pending"):
                blocked = scheduling.blocked_reason(job.spec, workers)
            summaries.append(
                wire.JobSummary(
                    job_id=job.job_id,
                    name=job.spec.name,
                    state=job.state,
                    total=job.total,
                    done=counts.get("done", 0),
                    failed=counts.get("failed", 0),
                    cancelled=counts.get("cancelled", 0),
                    running=counts.get("running", 0),
                    pending=counts.get("pending", 0) + job.total - len(job.tasks),
                    commits=job.commits,
                    duplicates=job.duplicates,
                    submitted_ms=job.submitted_ms,
                    finished_ms=job.finished_ms,
                    owner=job.spec.owner,
                    blocked=wire.reason(blocked),
                    reruns=reruns,
                )
            )
        return wire.JobInfo(request_id=query.request_id, jobs=tuple(summaries))

    # -- plumbing ---------------------------------------------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _call_paced(callback: Callable[[], None], last_at: float) -> float:
    """Run ``callback`` now if the last run was ``COALESCE_S`` ago or more,
    else when that much has passed (what arrives meanwhile joins it): a lone
    result goes at once, a stream of them goes in batches. When it will run."""
    loop = asyncio.get_running_loop()
    at = max(loop.time(), last_at + COALESCE_S)
    loop.call_at(at, callback)
    return at


def _result(index: int, task: tasks.TaskRecord) -> wire.TaskResult:
    return wire.TaskResult(
        index=index,
        seq=task.seq,
        state=task.state,
        kind=task.kind,
        value=task.value,
        error_type=task.error_type,
        error_message=task.error_message,
        traceback=task.traceback,
        node=task.node,
    )
