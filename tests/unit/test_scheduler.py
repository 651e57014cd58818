"""The leader's task scheduler (moot/core/scheduler.py)."""

from __future__ import annotations

from collections import Counter

from moot.core import tasks
from moot.core.scheduler import Dispatch, Lost, Scheduler, WorkerNode
from moot.core.tasks import Assignment, AssignTasks, JobSpec, Payload, SubmitJob, TaskTable

FUNCTION = b"fn"


def job_id(number: int) -> str:
    return f"{number:032x}"


def make_table(*jobs: tuple[int, int, dict[str, object]]) -> TaskTable:
    table = TaskTable()
    for number, count, spec_fields in jobs:
        function = spec_fields.get("function", FUNCTION)
        assert isinstance(function, bytes)
        fields: dict[str, object] = {"name": "f", "function_hash": tasks.function_hash(function)}
        fields.update(spec_fields)
        fields.pop("function", None)
        arguments = fields.pop("arguments", None)
        payloads = (
            tuple(Payload(object_id=object_id) for object_id in arguments)  # type: ignore[union-attr]
            if arguments is not None
            else tuple(Payload(inline=b"a") for _ in range(count))
        )
        table.apply(
            SubmitJob(
                job_id=job_id(number),
                spec=JobSpec(**fields),  # type: ignore[arg-type]
                total=len(payloads),
                now_ms=0,
                tasks=payloads,
                function=Payload(inline=function),
            )
        )
    return table


def queue_all(scheduler: Scheduler, table: TaskTable) -> None:
    for job in table.jobs():
        scheduler.add_pending(job, range(job.total))


def placed(dispatches: list[Dispatch]) -> Counter[str]:
    return Counter({d.node_id: len(d.tasks) for d in dispatches})


def test_nodes_get_slots_times_depth_tasks_and_a_completion_makes_room() -> None:
    table = make_table((1, 10, {}))
    scheduler = Scheduler(term=1, depth_min=2, depth_max=2)
    scheduler.set_nodes([WorkerNode("a", 1), WorkerNode("b", 2)])
    queue_all(scheduler, table)
    first = scheduler.schedule(0)
    assert placed(first) == {"a": 2, "b": 4}
    assert scheduler.schedule(0) == [], "no room left"
    job, index, attempt = first[0].tasks[0]
    scheduler.completed(first[0].node_id, job, index, attempt)
    again = scheduler.schedule(1)
    assert placed(again) == {first[0].node_id: 1}
    assert scheduler.pending_count == 3 and scheduler.running_count == 6


def test_tasks_go_to_the_least_loaded_node() -> None:
    table = make_table((1, 6, {}))
    scheduler = Scheduler(term=1, depth_min=1, depth_max=1)
    scheduler.set_nodes([WorkerNode("a", 3), WorkerNode("b", 3), WorkerNode("c", 3)])
    queue_all(scheduler, table)
    assert placed(scheduler.schedule(0)) == {"a": 2, "b": 2, "c": 2}


def test_jobs_take_turns_so_a_big_job_does_not_starve_a_small_one() -> None:
    table = make_table((1, 100, {}), (2, 3, {}))
    scheduler = Scheduler(term=1, depth_min=1, depth_max=1)
    scheduler.set_nodes([WorkerNode("a", 4)])
    queue_all(scheduler, table)
    [dispatch] = scheduler.schedule(0)
    assert Counter(job for job, _, _ in dispatch.tasks) == {job_id(1): 2, job_id(2): 2}


def test_labels_and_custom_resources_constrain_placement_and_say_why_a_job_waits() -> None:
    gpu_spec = {"resources": {"gpu": 1.0}}
    lahore_spec = {"placement": {"region": "lahore"}}
    table = make_table(
        (1, 3, gpu_spec), (2, 2, lahore_spec), (3, 1, {"placement": {"region": "mars"}})
    )
    scheduler = Scheduler(term=1, depth_min=4, depth_max=4)
    scheduler.set_nodes(
        [
            WorkerNode("a", 4, resources={"gpu": 1.0}, labels={"region": "oslo"}),
            WorkerNode("b", 4, labels={"region": "lahore"}),
        ]
    )
    queue_all(scheduler, table)
    dispatches = {d.node_id: d.tasks for d in scheduler.schedule(0)}
    assert [job for job, _, _ in dispatches["a"]] == [job_id(1)], (
        "one gpu: one gpu task at a time, never more"
    )
    assert Counter(job for job, _, _ in dispatches["b"]) == {job_id(2): 2}
    job_3 = table.job(job_id(3))
    assert job_3 is not None
    assert scheduler.blocked(job_3.spec) == "no live node has the labels region=mars"
    needs_tpu = JobSpec(name="f", function_hash="0" * 64, resources={"tpu": 1.0})
    assert "offers cpus=1, tpu=1" in scheduler.blocked(needs_tpu)
    assert scheduler.blocked(JobSpec(name="f", function_hash="0" * 64)) == ""
    # A node with the labels joins: the waiting job runs there.
    scheduler.set_nodes(
        [
            WorkerNode("a", 4, {"gpu": 1.0}, {"region": "oslo"}),
            WorkerNode("b", 4, {}, {"region": "lahore"}),
            WorkerNode("m", 1, labels={"region": "mars"}),
        ]
    )
    assert {d.node_id: [t[0] for t in d.tasks] for d in scheduler.schedule(1)} == {"m": [job_id(3)]}


def test_a_task_prefers_a_node_that_holds_its_argument() -> None:
    objects_ = [f"{n:064x}" for n in range(1, 9)]
    table = make_table((1, 8, {"arguments": objects_}))
    scheduler = Scheduler(term=1, depth_min=1, depth_max=1)
    scheduler.set_nodes([WorkerNode(name, 8) for name in "abcd"])
    queue_all(scheduler, table)
    holders = {object_id: ["abcd"[i % 4]] for i, object_id in enumerate(objects_)}
    [*dispatches] = scheduler.schedule(0, holders)
    for dispatch in dispatches:
        for _, index, _ in dispatch.tasks:
            assert holders[objects_[index]] == [dispatch.node_id]


def test_runs_on_a_node_that_left_are_lost() -> None:
    table = make_table((1, 4, {}))
    scheduler = Scheduler(term=1, depth_min=1, depth_max=1)
    scheduler.set_nodes([WorkerNode("a", 2), WorkerNode("b", 2)])
    queue_all(scheduler, table)
    on_b = next(d for d in scheduler.schedule(0) if d.node_id == "b")
    lost = scheduler.set_nodes([WorkerNode("a", 2)])
    assert sorted(lost, key=lambda item: item.index) == sorted(
        (Lost(job, index, attempt, "b") for job, index, attempt in on_b.tasks),
        key=lambda item: item.index,
    )
    assert scheduler.running_count == 2


def test_a_run_its_node_does_not_report_is_lost_after_the_grace() -> None:
    table = make_table((1, 2, {}))
    scheduler = Scheduler(term=1, depth_min=1, depth_max=1, report_grace_ms=1000)
    scheduler.set_nodes([WorkerNode("a", 2)])
    queue_all(scheduler, table)
    [dispatch] = scheduler.schedule(0)
    kept, missing = dispatch.tasks
    assert scheduler.report("a", [kept], 500) == [], "too early to call anything lost"
    lost = scheduler.report("a", [kept], 1000)
    assert lost == [Lost(missing[0], missing[1], missing[2], "a")]
    assert scheduler.report("a", [kept], 5000) == [], "a confirmed run stays"
    assert scheduler.running_count == 1


def test_a_new_leader_adopts_the_table_and_attempt_ids_never_repeat() -> None:
    table = make_table((1, 3, {}))
    old = Scheduler(term=1, depth_min=1, depth_max=1)
    old.set_nodes([WorkerNode("a", 1)])
    queue_all(old, table)
    [dispatch] = old.schedule(0)
    table.apply(
        AssignTasks(
            "a", tuple(Assignment(job, index, attempt) for job, index, attempt in dispatch.tasks)
        )
    )
    new = Scheduler(term=2, depth_min=1, depth_max=1, report_grace_ms=100)
    new.set_nodes([WorkerNode("a", 1), WorkerNode("b", 1)])
    new.adopt(table, 1000)
    assert new.running_count == 1 and new.pending_count == 2
    [placed_new] = new.schedule(1000)
    assert placed_new.node_id == "b", "a is full with the adopted run"
    attempts = {attempt for _, _, attempt in dispatch.tasks} | {
        attempt for _, _, attempt in placed_new.tasks
    }
    assert len(attempts) == 2 and min(a for _, _, a in placed_new.tasks) > 2**32
    # Node a never confirms the adopted run: lost after the grace.
    assert [item.index for item in new.report("a", [], 1100)] == [dispatch.tasks[0][1]]


def test_cancelled_jobs_leave_the_queue_and_return_their_runs() -> None:
    table = make_table((1, 5, {}))
    scheduler = Scheduler(term=1, depth_min=1, depth_max=1)
    scheduler.set_nodes([WorkerNode("a", 2)])
    queue_all(scheduler, table)
    [dispatch] = scheduler.schedule(0)
    stopped = scheduler.job_gone(job_id(1))
    assert sorted(stopped) == sorted(
        (job, index, attempt, "a") for job, index, attempt in dispatch.tasks
    )
    assert scheduler.pending_count == 0 and scheduler.running_count == 0
    assert scheduler.schedule(1) == []


def test_settled_and_retried_tasks_update_the_queue() -> None:
    table = make_table((1, 3, {}))
    scheduler = Scheduler(term=1, depth_min=1, depth_max=1)
    scheduler.set_nodes([WorkerNode("a", 1)])
    queue_all(scheduler, table)
    [dispatch] = scheduler.schedule(0)
    ((_, index, first_attempt),) = dispatch.tasks
    scheduler.settled(job_id(1), [2])  # e.g. cancelled while pending
    record = table.job(job_id(1))
    assert record is not None
    scheduler.add_pending(record, [index])  # its run failed: back in the queue
    assert scheduler.running_count == 0 and scheduler.pending_count == 2
    [next_one] = scheduler.schedule(1)
    assert next_one.tasks[0][1] == 1, "task 1 was waiting longer; task 2 settled"
    scheduler.completed("a", job_id(1), 1, next_one.tasks[0][2])
    [again] = scheduler.schedule(2)
    assert again.tasks[0][1] == index and again.tasks[0][2] > first_attempt


def test_short_tasks_are_queued_deeper_than_long_ones() -> None:
    table = make_table((1, 500, {"function": b"fast"}), (2, 500, {"function": b"slow"}), (3, 5, {"function": b"fast"}))
    scheduler = Scheduler(term=1, depth_min=2, depth_max=64, window_ms=50)
    scheduler.set_nodes([WorkerNode("a", 1)])
    queue_all(scheduler, table)
    assert scheduler.depth(job_id(1)) == 2, "nothing known yet: the minimum"
    [first] = scheduler.schedule(0)
    for job, index, attempt in first.tasks:
        scheduler.completed("a", job, index, attempt, run_ms=1.0 if job == job_id(1) else 5000.0)
    assert scheduler.depth(job_id(1)) == 50, "1 ms tasks: 50 ms of work per slot"
    assert scheduler.depth(job_id(2)) == 2, "5 s tasks: the minimum"
    assert scheduler.depth(job_id(3)) == 50, "a new job of a known function starts at its depth"


def test_a_node_whose_connection_closed_loses_its_runs_at_once_and_waits_out_the_skip() -> None:
    table = make_table((1, 6, {}))
    scheduler = Scheduler(term=1, depth_min=1, depth_max=1, unreachable_ms=5000)
    nodes = [WorkerNode("a", 2), WorkerNode("b", 2)]
    scheduler.set_nodes(nodes, 0)
    queue_all(scheduler, table)
    on_b = next(d for d in scheduler.schedule(0) if d.node_id == "b")
    lost = scheduler.node_unreachable("b", 100)
    assert sorted((item.index, item.attempt) for item in lost) == sorted((i, a) for _, i, a in on_b.tasks)
    assert scheduler.node_unreachable("b", 200) == [], "lost once"
    scheduler.set_nodes(nodes, 1000)  # membership still lists b: it stays out for now
    assert {d.node_id for d in scheduler.schedule(1000)} <= {"a"}
    scheduler.set_nodes(nodes, 5200)
    for item in lost:
        record = table.job(item.job_id)
        assert record is not None
        scheduler.add_pending(record, [item.index])
    assert "b" in {d.node_id for d in scheduler.schedule(5200)}, "after the skip, b gets tasks again"
