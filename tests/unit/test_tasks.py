"""The task table (moot/core/tasks.py) and its place in the KV state machine."""

from __future__ import annotations

import msgspec
import pytest

from moot.core import kv, objects, tasks
from moot.core.tasks import (
    AddTasks,
    Assignment,
    AssignTasks,
    CancelJob,
    Finish,
    FinishTasks,
    ForgetJob,
    JobSpec,
    Payload,
    SubmitJob,
    TaskTable,
)

FUNCTION = b"cloudpickled function bytes"
FUNCTION_HASH = tasks.function_hash(FUNCTION)
OBJECT_A = "a" * 64
OBJECT_B = "b" * 64


def job_id(number: int) -> str:
    return f"{number:032x}"


def spec(**overrides: object) -> JobSpec:
    fields: dict[str, object] = {"name": "square", "function_hash": FUNCTION_HASH}
    fields.update(overrides)
    return JobSpec(**fields)  # type: ignore[arg-type]


def submit(
    number: int,
    count: int = 3,
    *,
    total: int | None = None,
    with_function: bool = True,
    **spec_fields: object,
) -> SubmitJob:
    return SubmitJob(
        job_id=job_id(number),
        spec=spec(**spec_fields),
        total=total if total is not None else count,
        now_ms=1000,
        tasks=tuple(Payload(inline=f"args {i}".encode()) for i in range(count)),
        function=Payload(inline=FUNCTION) if with_function else None,
    )


def finish(
    number: int,
    index: int,
    kind: str = "ok",
    attempt: int = 1,
    node: str = "n1",
    value: bytes = b"r",
) -> Finish:
    return Finish(
        job_id=job_id(number),
        index=index,
        attempt=attempt,
        node=node,
        kind=kind,  # type: ignore[arg-type]
        value=Payload(inline=value),
    )


def assign(
    number: int, indexes: range | list[int], attempt: int = 1, node: str = "n1"
) -> AssignTasks:
    return AssignTasks(
        node=node, assignments=tuple(Assignment(job_id(number), i, attempt) for i in indexes)
    )


def test_a_submitted_job_has_pending_tasks_and_its_function_is_stored_once() -> None:
    table = TaskTable()
    applied = table.apply(submit(1))
    assert applied.succeeded
    assert [(e.kind, e.indexes) for e in applied.events] == [("pending", (0, 1, 2))]
    job = table.job(job_id(1))
    assert job is not None and job.state == "running" and job.total == 3
    assert [t.state for t in job.tasks] == ["pending"] * 3
    # A second job with the same function need not send it again.
    assert table.apply(submit(2, with_function=False)).succeeded
    assert table.function(FUNCTION_HASH) == Payload(inline=FUNCTION)
    # An unknown function must come with the job, and match its hash.
    unknown = submit(3, with_function=False, function_hash="c" * 64)
    refused = table.apply(unknown)
    assert not refused.succeeded and "function unknown" in refused.detail
    assert table.job(job_id(3)) is None
    liar = msgspec.structs.replace(unknown, function=Payload(inline=b"other bytes"))
    assert not table.apply(liar).succeeded
    assert not table.apply(submit(1)).succeeded, "a job id is used once"


def test_the_first_result_wins_and_later_ones_are_counted_and_discarded() -> None:
    table = TaskTable()
    table.apply(submit(1))
    table.apply(assign(1, range(3)))
    first = table.apply(FinishTasks(now_ms=2000, finishes=(finish(1, 1, value=b"first"),)))
    assert [(e.kind, e.indexes) for e in first.events] == [("finished", (1,))]
    again = table.apply(
        FinishTasks(now_ms=2001, finishes=(finish(1, 1, value=b"second", attempt=7),))
    )
    assert again.events == []
    job = table.job(job_id(1))
    assert job is not None
    assert job.tasks[1].value.inline == b"first" and job.tasks[1].seq == 1
    assert (job.commits, job.duplicates) == (1, 1)
    done = table.apply(FinishTasks(now_ms=2002, finishes=(finish(1, 2), finish(1, 0))))
    assert [(e.kind, e.indexes, e.state) for e in done.events] == [
        ("finished", (2, 0), ""),
        ("job", (), "finished"),
    ]
    assert job.state == "finished" and job.finished_ms == 2002
    assert [index for index, _ in table.finished_since(job_id(1), 0)] == [1, 2, 0]
    assert [index for index, _ in table.finished_since(job_id(1), 2)] == [0]


def test_a_result_for_a_task_that_was_never_assigned_here_still_counts() -> None:
    # A new leader may never have seen the assignment (it was not committed).
    table = TaskTable()
    table.apply(submit(1, 1))
    applied = table.apply(FinishTasks(now_ms=5, finishes=(finish(1, 0, attempt=99),)))
    assert [e.kind for e in applied.events] == ["finished", "job"]


def test_worker_crashes_are_retried_up_to_max_retries_then_fail() -> None:
    table = TaskTable()
    table.apply(submit(1, 1, max_retries=2))
    for attempt in (1, 2):
        table.apply(assign(1, [0], attempt=attempt))
        retry = table.apply(
            FinishTasks(now_ms=1, finishes=(finish(1, 0, "crashed", attempt=attempt),))
        )
        assert [(e.kind, e.indexes) for e in retry.events] == [("pending", (0,))]
    table.apply(assign(1, [0], attempt=3))
    final = table.apply(FinishTasks(now_ms=1, finishes=(finish(1, 0, "lost", attempt=3),)))
    assert [e.kind for e in final.events] == ["finished", "job"]
    task = table.task(job_id(1), 0)
    assert task is not None and task.state == "failed" and task.kind == "lost" and task.crashes == 3


def test_user_errors_are_final_unless_retries_says_so() -> None:
    table = TaskTable()
    table.apply(submit(1, 1))
    table.apply(assign(1, [0]))
    failed = table.apply(FinishTasks(now_ms=1, finishes=(finish(1, 0, "error"),)))
    assert [e.kind for e in failed.events] == ["finished", "job"]
    table.apply(submit(2, 1, retries=1))
    table.apply(assign(2, [0]))
    retried = table.apply(FinishTasks(now_ms=1, finishes=(finish(2, 0, "timeout"),)))
    assert [e.kind for e in retried.events] == ["pending"]
    table.apply(assign(2, [0], attempt=2))
    table.apply(FinishTasks(now_ms=1, finishes=(finish(2, 0, "memory", attempt=2),)))
    task = table.task(job_id(2), 0)
    assert task is not None and task.state == "failed" and task.errors == 2


def test_a_failure_from_an_older_attempt_is_ignored() -> None:
    table = TaskTable()
    table.apply(submit(1, 1, max_retries=0))
    table.apply(assign(1, [0], attempt=1))
    table.apply(assign(1, [0], attempt=5, node="n2"))
    table.apply(assign(1, [0], attempt=3, node="n3"))  # older than the current one: ignored
    task = table.task(job_id(1), 0)
    assert task is not None and (task.attempt, task.node, task.runs) == (5, "n2", 2)
    stale = table.apply(FinishTasks(now_ms=1, finishes=(finish(1, 0, "crashed", attempt=1),)))
    assert stale.events == [] and task.state == "running"


def test_tasks_added_in_order_complete_the_job() -> None:
    table = TaskTable()
    table.apply(submit(1, 2, total=5))
    job = table.job(job_id(1))
    assert job is not None and job.state == "submitting"
    assert not table.apply(AddTasks(job_id(1), 3, (Payload(),))).succeeded, "out of order"
    added = table.apply(AddTasks(job_id(1), 2, (Payload(), Payload(), Payload())))
    assert added.succeeded and [(e.kind, e.indexes) for e in added.events] == [
        ("pending", (2, 3, 4))
    ]
    assert job.state == "running"
    assert not table.apply(AddTasks(job_id(1), 5, (Payload(),))).succeeded, "over the total"
    table.apply(FinishTasks(now_ms=1, finishes=tuple(finish(1, i) for i in range(5))))
    assert job.state == "finished"


def test_cancel_finishes_what_is_left_and_later_results_are_discarded() -> None:
    table = TaskTable()
    table.apply(submit(1, 3))
    table.apply(FinishTasks(now_ms=1, finishes=(finish(1, 0),)))
    cancelled = table.apply(CancelJob(job_id(1)))
    assert [(e.kind, e.indexes, e.state) for e in cancelled.events] == [
        ("finished", (1, 2), ""),
        ("job", (), "cancelled"),
    ]
    table.apply(FinishTasks(now_ms=2, finishes=(finish(1, 1),)))
    job = table.job(job_id(1))
    assert job is not None and job.tasks[1].state == "cancelled" and job.duplicates == 1
    assert not table.apply(CancelJob(job_id(1))).succeeded
    assert not table.apply(CancelJob(job_id(9))).succeeded
    assert list(table.unfinished()) == []


def test_forgetting_a_job_drops_its_references_and_unused_functions() -> None:
    table = TaskTable()
    command = msgspec.structs.replace(submit(1, 1), tasks=(Payload(object_id=OBJECT_A),))
    applied = table.apply(command)
    assert applied.puts == [(tasks.ref_key(OBJECT_A, job_id(1)), b"")]
    result = Finish(job_id(1), 0, 1, "n1", "ok", Payload(object_id=OBJECT_B, size=123))
    record = objects.ObjectRecord(size=123, touched_ms=7)
    assert table.apply(FinishTasks(now_ms=7, finishes=(result,))).puts == [
        (objects.OBJECT_KEY_PREFIX + OBJECT_B.encode(), objects.encode_record(record)),
        (tasks.ref_key(OBJECT_B, job_id(1)), b""),
    ], "a result object is recorded and referenced"
    forgotten = table.apply(ForgetJob(job_id(1)))
    assert sorted(forgotten.deletes) == sorted(
        [tasks.ref_key(OBJECT_A, job_id(1)), tasks.ref_key(OBJECT_B, job_id(1))]
    )
    assert table.job(job_id(1)) is None and table.function(FUNCTION_HASH) is None
    assert not table.apply(ForgetJob(job_id(1))).succeeded


def test_the_oldest_finished_jobs_are_forgotten_beyond_the_cap() -> None:
    table = TaskTable(jobs_finished_max=2)
    for number in range(1, 5):
        table.apply(submit(number, 1))
    for number in (2, 1, 4):
        applied = table.apply(FinishTasks(now_ms=number, finishes=(finish(number, 0),)))
    assert [event.state for event in applied.events if event.kind == "job"] == [
        "finished",
        "forgotten",
    ]
    assert [job.job_id for job in table.jobs()] == [job_id(1), job_id(3), job_id(4)]
    assert table.function(FUNCTION_HASH) is not None, "jobs still use the function"


def test_the_table_lives_in_the_kv_state_with_its_references_and_snapshots() -> None:
    state = kv.KvState()
    command = msgspec.structs.replace(
        submit(1, 2), tasks=(Payload(object_id=OBJECT_A), Payload(inline=b"x"))
    )
    proposals = (
        kv.Proposal("client-1", 1, 0, command),
        kv.Proposal("scheduler", 1, 0, assign(1, [0, 1])),
        kv.Proposal("scheduler", 2, 1, FinishTasks(now_ms=3, finishes=(finish(1, 0),))),
    )
    answers = state.apply(1, kv.encode_batch(kv.Batch(proposals)))
    assert [result.succeeded for _, _, result in answers] == [True, True, True]
    assert state.get(tasks.ref_key(OBJECT_A, job_id(1))) is not None
    assert [(e.kind, e.indexes) for e in state.take_task_events()] == [
        ("pending", (0, 1)),
        ("finished", (0,)),
    ]
    assert state.take_task_events() == []
    image = state.snapshot()
    restored = kv.KvState.restore(image)
    assert restored.snapshot() == image
    job = restored.tasks.job(job_id(1))
    assert job is not None and job.tasks[0].state == "done" and job.tasks[1].state == "running"
    # Replicas applying the same entries end identical.
    twin = kv.KvState()
    twin.apply(1, kv.encode_batch(kv.Batch(proposals)))
    assert twin.snapshot() == image


def test_malformed_task_commands_never_reach_the_log() -> None:
    bad = SubmitJob(job_id="not-hex", spec=spec(), total=1, now_ms=0, tasks=())
    with pytest.raises(kv.BadCommand):
        kv.encode_batch(kv.Batch((kv.Proposal("c", 1, 0, bad),)))
    too_many_retries = submit(1, 1, retries=tasks.RETRIES_MAX + 1)
    with pytest.raises(kv.BadCommand):
        kv.encode_batch(kv.Batch((kv.Proposal("c", 1, 0, too_many_retries),)))


def test_a_corrupt_table_snapshot_is_refused() -> None:
    with pytest.raises(ValueError, match="corrupt task table"):
        TaskTable.restore(b"\x93garbage")
    table = TaskTable()
    table.apply(submit(1, 1))
    image = msgspec.msgpack.decode(table.snapshot())
    image["functions"] = []
    with pytest.raises(ValueError, match="unknown function"):
        TaskTable.restore(msgspec.msgpack.encode(image))


def test_many_small_jobs_in_one_command_all_or_nothing() -> None:
    table = TaskTable()
    batch = tasks.SubmitJobs(jobs=(submit(1, 1), submit(2, 1, with_function=False), submit(3, 2, with_function=False)))
    applied = table.apply(batch)
    assert applied.succeeded
    assert [(e.job_id, e.indexes) for e in applied.events] == [(job_id(1), (0,)), (job_id(2), (0,)), (job_id(3), (0, 1))]
    # One bad job refuses the whole batch: nothing of it is stored.
    unknown = submit(5, 1, with_function=False, function_hash="d" * 64)
    refused = table.apply(tasks.SubmitJobs(jobs=(submit(4, 1, with_function=False), unknown)))
    assert not refused.succeeded and table.job(job_id(4)) is None
    clash = table.apply(tasks.SubmitJobs(jobs=(submit(6, 1), submit(6, 1))))
    assert not clash.succeeded and table.job(job_id(6)) is None
