"""Durable tasks under the simulator: the task table, the leader's scheduler
and the worker nodes' logic on Raft, under crashes, torn writes, partitions,
loss and clock steps; every seed checks that each submitted task reaches
exactly one committed result and none is lost while its job is live.

``MOOT_SIM_SEEDS`` (default 150 here) sets how many seeds the sweep runs;
each seed's options are ``TaskScenarioOptions.for_seed(seed)``, so a
failure's printed command replays it exactly. The last tests break a core
on purpose and require the checks to notice.
"""

from __future__ import annotations

import os
import shlex

import pytest
from sim_cli import run_sim, trace_hashes

from moot.core import task_leader, tasks
from moot.sim.__main__ import build_parser, tasks_options_from_arguments
from moot.sim.tasks_scenario import (
    TORN_STAGES,
    TaskScenarioOptions,
    TaskScenarioResult,
    run_tasks_scenario,
)
from moot.sim.world import SimulationFailure

pytestmark = pytest.mark.sim

SEED_COUNT = int(os.environ.get("MOOT_SIM_SEEDS", "150"))

# Runs that once failed and were fixed, with what they caught. Each must
# pass forever. A seed names a run only for the scenario and fault
# generator of the commit that pinned it.
REGRESSION: tuple[tuple[TaskScenarioOptions, str], ...] = (
    (
        TaskScenarioOptions.for_seed(0),
        "a second run of a task ended after the first run's result committed: its duplicate made no "
        "event, so the worker's outbox kept it and resent it forever (task_worker.to_send drops it now)",
    ),
    (
        TaskScenarioOptions.for_seed(1),
        "Raft: each compaction restarted a snapshot transfer in flight with the newer snapshot; with "
        "the task table growing, transfers outlasted the time between compactions and two followers "
        "never caught up (raft.py: a transfer finishes with the snapshot it began with)",
    ),
    (TaskScenarioOptions.for_seed(6), "the same Raft snapshot transfer restart (two followers stuck)"),
    (TaskScenarioOptions.for_seed(8), "the same Raft snapshot transfer restart (one follower stuck)"),
)

_SWEEP_RESULTS: dict[int, TaskScenarioResult] = {}


def sweep_result(seed: int) -> TaskScenarioResult:
    """The sweep's run of ``seed`` (run now unless the sweep already did)."""
    result = _SWEEP_RESULTS.get(seed)
    if result is None:
        result = _SWEEP_RESULTS[seed] = run_tasks_scenario(TaskScenarioOptions.for_seed(seed))
    return result


@pytest.mark.parametrize("seed", range(SEED_COUNT))
def test_tasks_seed(seed: int) -> None:
    # Every check runs inside; a failure raises with the replay command.
    sweep_result(seed)


@pytest.mark.parametrize("options", [options for options, _ in REGRESSION], ids=lambda o: o.command())
def test_regression_run(options: TaskScenarioOptions) -> None:
    run_tasks_scenario(options)


def test_the_sweep_exercises_every_fault_and_outcome() -> None:
    # A sweep that never lost a run, never changed leader, never retried or
    # never cancelled would pass vacuously; these options are the sweep's own.
    results = [sweep_result(seed) for seed in range(40)]
    assert sum(result.leaders > 1 for result in results) >= 10, "leader changes"
    assert sum(result.schedulers for result in results) >= 60, "schedulers rebuilt by new leaders"
    assert sum(result.crashes for result in results) >= 20
    for stage in TORN_STAGES:
        assert sum(result.torn_crashes[stage] for result in results) >= 1, stage
    assert sum(result.lost_declared for result in results) >= 200, "runs declared lost and rescheduled"
    assert sum(result.duplicates for result in results) >= 20, "results discarded by the table: first wins"
    assert sum(result.duplicates_at_leaders for result in results) >= 100, "... and by leaders"
    assert sum(result.restores for result in results) >= 50, "task tables restored from snapshots"
    assert sum(result.jobs_cancelled for result in results) >= 20
    assert sum(result.tasks_failed for result in results) >= 50, "retry budgets spent"
    assert sum(result.run_outcomes.get("crashed", 0) for result in results) >= 100
    assert sum(result.run_outcomes.get("error", 0) for result in results) >= 100
    assert sum(result.submissions_ambiguous for result in results) >= 5, "submissions retried in doubt"
    assert sum(result.jobs for result in results) >= 1_000
    assert sum(result.tasks for result in results) >= 6_000
    assert any(result.options.nodes == 5 for result in results)
    assert all(result.liveness_ms is not None for result in results)


def failures_in(seeds: range) -> list[str]:
    caught = []
    for seed in seeds:
        try:
            run_tasks_scenario(TaskScenarioOptions.for_seed(seed))
        except SimulationFailure as failure:
            assert "replay: python -m moot.sim tasks --seed" in str(failure)
            caught.append(str(failure))
    return caught


def test_a_leader_that_never_declares_runs_lost_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # Broken on purpose: runs on a crashed node are never rescheduled.
    monkeypatch.setattr(task_leader.TaskLeader, "_lose", lambda self, lost: 0)
    caught = failures_in(range(10))
    assert len(caught) >= 5
    assert any("liveness" in failure for failure in caught)


def test_a_table_where_a_later_result_overwrites_the_first_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # Broken on purpose: a result for a finished task settles it again
    # (counted as a second commit; a late success turns a failed task done).
    original = tasks.TaskTable._finish

    def last_result_wins(
        self: tasks.TaskTable, job: tasks.JobRecord, finish: tasks.Finish, now_ms: int, applied: tasks.Applied
    ) -> str:
        task = job.tasks[finish.index]
        if finish.kind == "ok" and task.state in ("done", "failed"):
            job.commits += 1
            job.finished -= 1
            task.state = "running"
        return original(self, job, finish, now_ms, applied)

    monkeypatch.setattr(tasks.TaskTable, "_finish", last_result_wins)
    caught = failures_in(range(10))
    assert len(caught) >= 5
    assert any("committed results" in failure or "final outcome changed" in failure for failure in caught)


@pytest.mark.parametrize("seed", [2, 7])
def test_same_seed_same_trace(seed: int) -> None:
    options = TaskScenarioOptions.for_seed(seed)
    first = run_tasks_scenario(options).trace_hash
    assert run_tasks_scenario(options).trace_hash == first
    assert run_tasks_scenario(TaskScenarioOptions.for_seed(seed + 100)).trace_hash != first


@pytest.mark.parametrize("seed", [0, 5, 12, 33])
def test_replay_command_parses_back_to_the_same_options(seed: int) -> None:
    options = TaskScenarioOptions.for_seed(seed)
    words = shlex.split(options.command())
    assert words[:4] == ["python", "-m", "moot.sim", "tasks"]
    assert tasks_options_from_arguments(build_parser().parse_args(words[3:])) == options


def test_cli_prints_the_same_trace_hash_in_two_processes() -> None:
    first, second = trace_hashes("tasks", "--seed", "4")
    assert first == second
    assert "check passed: every submitted job in the table and final" in run_sim("tasks", "--seed", "4").stdout


def test_cli_rejects_bad_options() -> None:
    completed = run_sim("tasks", "--seed", "1", "--submitters", "0")
    assert completed.returncode == 2
    assert "--submitters" in completed.stderr
