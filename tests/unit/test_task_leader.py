"""The leader's task logic (moot/core/task_leader.py), driven by hand."""

from __future__ import annotations

from moot.core import tasks, wire
from moot.core.scheduler import WorkerNode
from moot.core.task_leader import TaskLeader
from moot.core.tasks import CancelJob, Finish, FinishTasks, JobSpec, Payload, SubmitJob, TaskTable

FUNCTION = b"fn"
JOB = "a" * 32


def submitted(count: int) -> tuple[TaskTable, list[tasks.TaskEvent]]:
    table = TaskTable()
    applied = table.apply(
        SubmitJob(
            job_id=JOB,
            spec=JobSpec(name="f", function_hash=tasks.function_hash(FUNCTION)),
            total=count,
            now_ms=0,
            tasks=tuple(Payload(inline=bytes([i])) for i in range(count)),
            function=Payload(inline=FUNCTION),
        )
    )
    return table, applied.events


def test_dispatch_sends_each_node_the_function_once_and_records_assignments() -> None:
    table, events = submitted(6)
    leader = TaskLeader(term=3, workers=[WorkerNode("a", 1), WorkerNode("b", 1)], table=table, now_ms=0)
    leader.applied(events, table)
    first = leader.dispatch(0, table).messages
    assert {node for node, _ in first} == {"a", "b"}
    for _, message in first:
        assert isinstance(message, wire.RunTasks) and message.term == 3
        assert [blob.function for blob in message.functions] == [Payload(inline=FUNCTION)]
    proposals = leader.take_proposals(1000)
    assert {type(c).__name__ for c in proposals} == {"AssignTasks"}
    assert sum(len(c.assignments) for c in proposals if isinstance(c, tasks.AssignTasks)) == 4
    # Results free room; the next dispatch does not send the function again.
    node, message = first[0]
    assert isinstance(message, wire.RunTasks)
    run = message.runs[0]
    result = Finish(run.job_id, run.index, run.attempt, node, "ok", Payload(inline=b"r"))
    assert leader.results(node, [result], table) == 0
    again = leader.dispatch(1, table).messages
    assert again and all(isinstance(m, wire.RunTasks) and not m.functions for _, m in again)
    finish_commands = [c for c in leader.take_proposals(2000) if isinstance(c, FinishTasks)]
    assert [f.index for c in finish_commands for f in c.finishes] == [run.index]
    assert finish_commands[0].now_ms == 2000
    # Once committed, the same result sent again is not proposed again.
    leader.applied(table.apply(finish_commands[0]).events, table)
    assert leader.results(node, [result], table) == 1
    assert not leader.has_proposals()


def test_a_lost_node_and_a_cancelled_job_become_proposals_and_stops() -> None:
    table, events = submitted(4)
    leader = TaskLeader(term=1, workers=[WorkerNode("a", 1), WorkerNode("b", 1)], table=table, now_ms=0)
    leader.applied(events, table)
    sent = dict(leader.dispatch(0, table).messages)
    leader.take_proposals(0)
    assert leader.unreachable("b", 10) == 2
    lost = [f for c in leader.take_proposals(0) if isinstance(c, FinishTasks) for f in c.finishes]
    assert {f.kind for f in lost} == {"lost"} and {f.node for f in lost} == {"b"}
    on_a = sent["a"]
    assert isinstance(on_a, wire.RunTasks)
    cancelled = table.apply(CancelJob(JOB))
    stops = leader.applied(cancelled.events, table).messages
    assert [(node, type(m).__name__) for node, m in stops] == [("a", "StopTasks")]
    stop = stops[0][1]
    assert isinstance(stop, wire.StopTasks)
    assert {(r.index, r.attempt) for r in stop.runs} == {(r.index, r.attempt) for r in on_a.runs}
    assert not leader.has_proposals()
