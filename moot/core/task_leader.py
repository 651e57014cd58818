"""The leader's part of durable tasks, sans-IO: what to send, what to propose.

One ``TaskLeader`` lives on the Raft leader for one term, once the leader
has applied every earlier entry (its table is then the group's). It wraps
the ``Scheduler`` and turns the table's events, the workers' results and
reports, and membership into effects the caller carries out:

- ``sends``: ``RunTasks`` (each node gets a job's function the first time
  this leader sends it one of the job's tasks) and ``StopTasks``;
- ``take_proposals``: the task commands to propose — assignments, results
  and losses — batched to stay well under a Raft entry.

No clock, no I/O, no randomness: times come in as arguments. The runtime
(``moot.runtime.task_service``) and the simulator drive the same code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from moot.core import tasks, wire
from moot.core.scheduler import (
    REPORT_GRACE_MS_DEFAULT,
    UNREACHABLE_MS_DEFAULT,
    Lost,
    Scheduler,
    WorkerNode,
)

RUNS_PER_MESSAGE: Final = 2_000
FINISHES_BYTES_PER_PROPOSAL: Final = 1024 * 1024  # one FinishTasks stays well under a Raft entry


@dataclass(slots=True)
class Sends:
    """Messages for worker nodes, in order (``(node id, message)``)."""

    messages: list[tuple[str, wire.Message]] = field(default_factory=list)
    lost: int = 0  # runs declared lost by this step


class TaskLeader:
    """The leader's task logic for one term (see module doc)."""

    def __init__(
        self,
        *,
        term: int,
        workers: Iterable[WorkerNode],
        table: tasks.TaskTable,
        now_ms: int,
        report_grace_ms: int = REPORT_GRACE_MS_DEFAULT,
        unreachable_ms: int = UNREACHABLE_MS_DEFAULT,
    ) -> None:
        self.term = term
        self.scheduler = Scheduler(term=term, report_grace_ms=report_grace_ms, unreachable_ms=unreachable_ms)
        self._finishes: list[tasks.Finish] = []
        self._assignments: dict[str, list[tasks.Assignment]] = {}
        self._sent_functions: dict[str, set[str]] = {}  # node -> function hashes sent this term
        self._lose(self.scheduler.set_nodes(workers, now_ms))
        self.scheduler.adopt(table, now_ms)

    # -- inputs ----------------------------------------------------------------------

    def applied(self, events: Sequence[tasks.TaskEvent], table: tasks.TaskTable) -> Sends:
        """What the table's latest entries changed."""
        sends = Sends()
        # A cancelled job's tasks are "finished" by the same entry, before the
        # job's own event: stop the runs first, while the scheduler still
        # knows where they run (found by a unit test: they ran on, unstopped).
        for event in events:
            if event.kind == "job" and event.state in ("cancelled", "forgotten"):
                self._stop(self.scheduler.job_gone(event.job_id), sends)
        for event in events:
            if event.kind == "pending":
                job = table.job(event.job_id)
                if job is not None:
                    self.scheduler.add_pending(job, event.indexes)
            elif event.kind == "finished":
                self.scheduler.settled(event.job_id, event.indexes)
        return sends

    def set_workers(self, workers: Iterable[WorkerNode], now_ms: int) -> int:
        """The live worker nodes now; returns how many runs were lost with the others."""
        return self._lose(self.scheduler.set_nodes(workers, now_ms))

    def unreachable(self, node_id: str, now_ms: int) -> int:
        """A worker node's connection closed: its runs are lost now."""
        return self._lose(self.scheduler.node_unreachable(node_id, now_ms))

    def results(self, node_id: str, finishes: Sequence[tasks.Finish], table: tasks.TaskTable) -> int:
        """A worker's outcomes: capacity frees now, the results go to the log
        - except those of tasks the table (the group's: we lead) shows final
        already, which would only be discarded when applied. Returns how many
        were dropped so.

        A worker resends until its own copy of the table shows its result
        final; a follower far behind kept resending, every resend became a
        log entry, the entries brought compactions, and each compaction made
        its catching up longer (found by the tasks simulator)."""
        dropped = 0
        for finish in finishes:
            self.scheduler.completed(
                node_id, finish.job_id, finish.index, finish.attempt, run_ms=finish.duration_ms
            )
            task = table.task(finish.job_id, finish.index)
            if task is None or task.state not in ("pending", "running"):
                dropped += 1
                continue
            self._finishes.append(finish)
        return dropped

    def report(self, node_id: str, runs: Sequence[wire.RunRef], now_ms: int) -> int:
        """A worker node's list of its runs; returns how many were found lost."""
        return self._lose(
            self.scheduler.report(node_id, [(r.job_id, r.index, r.attempt) for r in runs], now_ms)
        )

    # -- decisions ---------------------------------------------------------------------

    def dispatch(self, now_ms: int, table: tasks.TaskTable) -> Sends:
        """Place what there is room for: ``RunTasks`` per node (assignments
        are queued for ``take_proposals``)."""
        sends = Sends()
        for dispatch in self.scheduler.schedule(now_ms):
            runs: list[wire.RunTask] = []
            functions: dict[str, wire.FunctionBlob] = {}
            sent = self._sent_functions.setdefault(dispatch.node_id, set())
            for job_id, index, attempt in dispatch.tasks:
                job = table.job(job_id)
                if job is None:
                    continue
                spec = job.spec
                runs.append(
                    wire.RunTask(
                        job_id,
                        index,
                        attempt,
                        spec.function_hash,
                        job.tasks[index].args,
                        spec.timeout_ms,
                    )
                )
                if spec.function_hash not in sent:
                    function = table.function(spec.function_hash)
                    if function is not None:
                        functions[spec.function_hash] = wire.FunctionBlob(
                            spec.function_hash, function
                        )
                        sent.add(spec.function_hash)
                self._assignments.setdefault(dispatch.node_id, []).append(
                    tasks.Assignment(job_id, index, attempt)
                )
            for start in range(0, len(runs), RUNS_PER_MESSAGE):
                message = wire.RunTasks(
                    term=self.term,
                    runs=tuple(runs[start : start + RUNS_PER_MESSAGE]),
                    functions=tuple(functions.values()) if start == 0 else (),
                )
                sends.messages.append((dispatch.node_id, message))
        return sends

    def has_proposals(self) -> bool:
        return bool(self._finishes or self._assignments)

    def take_proposals(self, wall_ms: int) -> list[tasks.TaskCommand]:
        """The records to propose now, in commands that fit a Raft entry."""
        commands: list[tasks.TaskCommand] = []
        assignments, self._assignments = self._assignments, {}
        for node_id, items in assignments.items():
            for start in range(0, len(items), tasks.TASKS_PER_COMMAND_MAX):
                commands.append(
                    tasks.AssignTasks(
                        node_id, tuple(items[start : start + tasks.TASKS_PER_COMMAND_MAX])
                    )
                )
        finishes, self._finishes = self._finishes, []
        for batch in tasks.batches(
            finishes, tasks.outcome_bytes, FINISHES_BYTES_PER_PROPOSAL, tasks.TASKS_PER_COMMAND_MAX
        ):
            commands.append(tasks.FinishTasks(now_ms=wall_ms, finishes=tuple(batch)))
        return commands

    # -- helpers -------------------------------------------------------------------------

    def _lose(self, lost: Sequence[Lost]) -> int:
        for item in lost:
            self._finishes.append(
                tasks.Finish(
                    job_id=item.job_id,
                    index=item.index,
                    attempt=item.attempt,
                    node=item.node_id,
                    kind="lost",
                    error_type="WorkerLost",
                    error_message=f"node {item.node_id} left or lost the task while it ran",
                )
            )
        return len(lost)

    def _stop(self, runs: Sequence[tuple[str, int, int, str]], sends: Sends) -> None:
        by_node: dict[str, list[wire.RunRef]] = {}
        for job_id, index, attempt, node_id in runs:
            by_node.setdefault(node_id, []).append(wire.RunRef(job_id, index, attempt))
        for node_id, refs in by_node.items():
            sends.messages.append((node_id, wire.StopTasks(runs=tuple(refs))))
