"""A worker node's part of durable tasks, sans-IO: which runs to start or
stop, and which outcomes to send to the leader until they are committed.

The runtime (``moot.runtime.task_service``) executes runs in its worker
pool and feeds the outcomes back; the simulator "executes" them with a
delay. Both drive this same logic:

- ``accept(RunTasks)``: keeps the functions the leader sent; a run of a
  task already running here with an older attempt replaces it (the older
  one is stopped); a run with an attempt not newer than the one here is
  ignored (a duplicate message). A node that runs no tasks answers each
  run with a ``lost`` outcome at once.
- ``finished(run, finish)``: the outcome goes to the **outbox**; it stays
  there — sent to whoever leads, again every ``resend_after_ms`` — until
  this node's own copy of the table shows the task final (``applied``, or
  checked before each send), so no leader change or lost message loses a
  result.
- ``report()``: every run this node has, running or in the outbox: the
  leader declares lost what it placed here and does not see.
- a job cancelled or forgotten stops its runs here and empties its outbox.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from moot.core import tasks, wire

FUNCTIONS_KEPT: Final = 256
RESEND_AFTER_MS_DEFAULT: Final = 1_000

RunKey = tuple[str, int]  # (job id, index)


@dataclass(slots=True)
class WorkerEffects:
    """Runs to start and to stop (by ``(job, index, attempt)``)."""

    start: list[wire.RunTask] = field(default_factory=list)
    stop: list[tuple[str, int, int]] = field(default_factory=list)


@dataclass(slots=True)
class _Queued:
    finish: tasks.Finish
    sent_at_ms: int | None = None  # None: not sent yet


class TaskWorker:
    """One node's worker logic (see module doc)."""

    def __init__(
        self, node_id: str, *, runs_tasks: bool, resend_after_ms: int = RESEND_AFTER_MS_DEFAULT
    ) -> None:
        self.node_id = node_id
        self.runs_tasks = runs_tasks
        self.resend_after_ms = resend_after_ms
        self.functions: dict[str, tasks.Payload] = {}  # hash -> function, as a leader sent it
        self._running: dict[RunKey, int] = {}  # runs started and not finished: their attempt
        self._outbox: dict[tuple[str, int, int], _Queued] = {}

    # -- views ---------------------------------------------------------------------

    @property
    def running(self) -> dict[RunKey, int]:
        return dict(self._running)

    @property
    def outbox_size(self) -> int:
        return len(self._outbox)

    def function(self, function_hash: str, table: tasks.TaskTable) -> tasks.Payload | None:
        """The function, from what a leader sent or from this node's table."""
        return self.functions.get(function_hash) or table.function(function_hash)

    # -- inputs --------------------------------------------------------------------

    def accept(self, message: wire.RunTasks) -> WorkerEffects:
        effects = WorkerEffects()
        for blob in message.functions:
            self.functions.pop(blob.function_hash, None)
            self.functions[blob.function_hash] = blob.function
            if len(self.functions) > FUNCTIONS_KEPT:
                del self.functions[next(iter(self.functions))]
        for run in message.runs:
            if not self.runs_tasks:
                lost = tasks.Finish(
                    run.job_id,
                    run.index,
                    run.attempt,
                    self.node_id,
                    "lost",
                    error_type="WorkerLost",
                    error_message="this node runs no tasks (--cpus 0)",
                )
                self._outbox[(run.job_id, run.index, run.attempt)] = _Queued(lost)
                continue
            key = (run.job_id, run.index)
            current = self._running.get(key)
            if current is not None:
                if current >= run.attempt:
                    continue  # this run or a newer one is here already
                effects.stop.append((run.job_id, run.index, current))  # the newer one wins
            self._running[key] = run.attempt
            effects.start.append(run)
        return effects

    def finished(self, job_id: str, index: int, attempt: int, finish: tasks.Finish) -> None:
        """A run ended (its outcome, whatever it is, goes to the outbox)."""
        key = (job_id, index)
        if self._running.get(key) == attempt:
            del self._running[key]
        self._outbox[(job_id, index, attempt)] = _Queued(finish)

    def stopped(self, job_id: str, index: int, attempt: int) -> None:
        """A run was stopped before it ended (no outcome)."""
        key = (job_id, index)
        if self._running.get(key) == attempt:
            del self._running[key]

    def stop(self, refs: Sequence[wire.RunRef]) -> WorkerEffects:
        """The leader asks to stop these runs (their job was cancelled)."""
        effects = WorkerEffects()
        for ref in refs:
            if self._running.get((ref.job_id, ref.index)) == ref.attempt:
                effects.stop.append((ref.job_id, ref.index, ref.attempt))
        return effects

    def applied(
        self, events: Sequence[tasks.TaskEvent], table: tasks.TaskTable, *, restored: bool = False
    ) -> WorkerEffects:
        """What this node's table now says: committed outcomes leave the
        outbox; a cancelled or forgotten job's runs stop here."""
        effects = WorkerEffects()
        if restored:
            self._drop_committed(list(self._outbox), table)
        for event in events:
            if event.kind == "finished":
                wanted = set(event.indexes)
                self._drop_committed(
                    [k for k in self._outbox if k[0] == event.job_id and k[1] in wanted], table
                )
            elif event.kind == "job" and event.state in ("cancelled", "forgotten"):
                for (job_id, index), attempt in self._running.items():
                    if job_id == event.job_id:
                        effects.stop.append((job_id, index, attempt))
                for key in [k for k in self._outbox if k[0] == event.job_id]:
                    del self._outbox[key]
        return effects

    # -- outputs -------------------------------------------------------------------

    def to_send(self, now_ms: int, table: tasks.TaskTable, *, resend: bool) -> list[tasks.Finish]:
        """Outcomes to send to the leader now: those never sent, and with
        ``resend`` those sent ``resend_after_ms`` ago or more (not committed yet).

        An outcome of a task this node's table shows final is dropped
        instead: a run that ended after another run's result committed (its
        duplicate is never applied as an event, so it would stay forever;
        found by the simulator)."""
        self._drop_committed(list(self._outbox), table)
        due = []
        for queued in self._outbox.values():
            if queued.sent_at_ms is None or (
                resend and now_ms - queued.sent_at_ms >= self.resend_after_ms
            ):
                queued.sent_at_ms = now_ms
                due.append(queued.finish)
        return due

    def report(self) -> wire.WorkerReport:
        runs = [wire.RunRef(job, index, attempt) for (job, index), attempt in self._running.items()]
        runs += [wire.RunRef(job, index, attempt) for (job, index, attempt) in self._outbox]
        return wire.WorkerReport(runs=tuple(runs))

    # -- helpers -------------------------------------------------------------------

    def _drop_committed(self, keys: list[tuple[str, int, int]], table: tasks.TaskTable) -> None:
        for key in keys:
            task = table.task(key[0], key[1])
            if task is None or task.state not in ("pending", "running"):
                del self._outbox[key]
