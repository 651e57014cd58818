"""A worker node's task logic (moot/core/task_worker.py), driven by hand."""

from __future__ import annotations

from moot.core import tasks, wire
from moot.core.task_worker import TaskWorker
from moot.core.tasks import CancelJob, Finish, FinishTasks, JobSpec, Payload, SubmitJob, TaskTable

FUNCTION = b"fn"
FUNCTION_HASH = tasks.function_hash(FUNCTION)
JOB = "b" * 32


def table_with(count: int) -> TaskTable:
    table = TaskTable()
    table.apply(
        SubmitJob(
            job_id=JOB,
            spec=JobSpec(name="f", function_hash=FUNCTION_HASH),
            total=count,
            now_ms=0,
            tasks=tuple(Payload(inline=b"a") for _ in range(count)),
            function=Payload(inline=FUNCTION),
        )
    )
    return table


def runs(*pairs: tuple[int, int], functions: bool = False) -> wire.RunTasks:
    return wire.RunTasks(
        term=1,
        runs=tuple(wire.RunTask(JOB, index, attempt, FUNCTION_HASH, Payload(inline=b"a")) for index, attempt in pairs),
        functions=(wire.FunctionBlob(FUNCTION_HASH, Payload(inline=FUNCTION)),) if functions else (),
    )


def ok(index: int, attempt: int) -> Finish:
    return Finish(JOB, index, attempt, "w", "ok", Payload(inline=b"r"))


def test_runs_start_once_and_a_newer_attempt_replaces_an_older_one() -> None:
    worker = TaskWorker("w", runs_tasks=True)
    first = worker.accept(runs((0, 5), (1, 5), functions=True))
    assert [(r.index, r.attempt) for r in first.start] == [(0, 5), (1, 5)] and not first.stop
    assert worker.function(FUNCTION_HASH, TaskTable()) == Payload(inline=FUNCTION)
    duplicate = worker.accept(runs((0, 5), (1, 3)))
    assert not duplicate.start and not duplicate.stop, "the same or an older attempt is ignored"
    newer = worker.accept(runs((0, 9)))
    assert [(r.index, r.attempt) for r in newer.start] == [(0, 9)] and newer.stop == [(JOB, 0, 5)]
    assert worker.running == {(JOB, 0): 9, (JOB, 1): 5}


def test_an_outcome_is_sent_and_resent_until_the_table_shows_it_committed() -> None:
    table = table_with(2)
    worker = TaskWorker("w", runs_tasks=True, resend_after_ms=1000)
    worker.accept(runs((0, 1), (1, 1)))
    worker.finished(JOB, 0, 1, ok(0, 1))
    assert [f.index for f in worker.to_send(100, table, resend=False)] == [0]
    assert worker.to_send(200, table, resend=False) == [], "sent once"
    assert worker.to_send(900, table, resend=True) == [], "not due again yet"
    assert [f.index for f in worker.to_send(1100, table, resend=True)] == [0], "no commit seen: again"
    report = worker.report()
    assert {(r.index, r.attempt) for r in report.runs} == {(0, 1), (1, 1)}, "running and unacknowledged"
    committed = table.apply(FinishTasks(now_ms=1, finishes=(ok(0, 1),)))
    worker.applied(committed.events, table)
    assert worker.outbox_size == 0 and worker.to_send(5000, table, resend=True) == []


def test_an_outcome_of_a_task_already_final_is_dropped_not_sent_forever() -> None:
    # Regression (tasks simulator): a second run of a task ended after the
    # first run's result committed. Its duplicate result makes no event, so
    # the outbox kept it and resent it every second, forever.
    table = table_with(1)
    worker = TaskWorker("w", runs_tasks=True, resend_after_ms=1000)
    worker.accept(runs((0, 2)))
    worker.applied(table.apply(FinishTasks(now_ms=1, finishes=(ok(0, 1),))).events, table)
    worker.finished(JOB, 0, 2, ok(0, 2))
    assert worker.to_send(100, table, resend=False) == []
    assert worker.outbox_size == 0 and worker.report().runs == ()


def test_a_cancelled_job_stops_its_runs_here_and_forgets_its_outcomes() -> None:
    table = table_with(3)
    worker = TaskWorker("w", runs_tasks=True)
    worker.accept(runs((0, 1), (1, 1), (2, 1)))
    worker.finished(JOB, 2, 1, ok(2, 1))
    cancelled = table.apply(CancelJob(JOB))
    effects = worker.applied(cancelled.events, table)
    assert sorted(effects.stop) == [(JOB, 0, 1), (JOB, 1, 1)]
    assert worker.outbox_size == 0
    stop = worker.stop([wire.RunRef(JOB, 0, 1), wire.RunRef(JOB, 1, 7)])
    assert stop.stop == [(JOB, 0, 1)], "only the attempt that runs here"


def test_a_node_that_runs_no_tasks_answers_lost_at_once() -> None:
    worker = TaskWorker("w", runs_tasks=False)
    effects = worker.accept(runs((0, 1)))
    assert not effects.start
    [lost] = worker.to_send(0, table_with(1), resend=False)
    assert (lost.kind, lost.error_type, lost.index, lost.attempt) == ("lost", "WorkerLost", 0, 1)
