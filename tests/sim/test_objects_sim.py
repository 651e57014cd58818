"""Object placement and repair under the simulator: many seeds, checks (a) no loss, (b) repair, (c) determinism.

``MOOT_SIM_SEEDS`` (default 200) sets how many seeds the sweep runs; each
seed's options are ``ObjectsOptions.for_seed(seed)``, so a failure's
printed command replays it exactly.
"""

from __future__ import annotations

import os
import re
import shlex

import pytest
from sim_cli import run_sim, trace_hashes

from moot.core.repair import RepairPlanner
from moot.sim.__main__ import build_parser, objects_options_from_arguments
from moot.sim.objects_scenario import (
    LossFailure,
    ObjectsOptions,
    ObjectsResult,
    RepairFailure,
    run_objects,
)
from moot.sim.world import SimulationFailure

pytestmark = pytest.mark.sim

SEED_COUNT = int(os.environ.get("MOOT_SIM_SEEDS", "200"))

# Runs that once failed and were fixed (seed, what it caught). Each must
# pass forever. A seed names a run only for the scenario and fault
# generator of the commit that pinned it.
REGRESSION: tuple[tuple[ObjectsOptions, str], ...] = ()

# Varied runs kept as fixed points of the sweep: a long partition-heavy run,
# a run with permanent crashes, the largest federation with loss.
PINNED: tuple[ObjectsOptions, ...] = (
    ObjectsOptions(seed=20, nodes=9, duration_ms=30_000, loss=0.05, writes=40),
    ObjectsOptions(seed=41, nodes=5, duration_ms=30_000, writes=40),
    ObjectsOptions(seed=12, nodes=7, duration_ms=20_000, loss=0.01, writes=25),
)


@pytest.mark.parametrize("seed", range(SEED_COUNT))
def test_objects_seed(seed: int) -> None:
    # Every check runs inside; a failure raises with the replay command.
    run_objects(ObjectsOptions.for_seed(seed))


@pytest.mark.parametrize("options", [options for options, _ in REGRESSION] + list(PINNED), ids=lambda o: o.command())
def test_pinned_run(options: ObjectsOptions) -> None:
    run_objects(options)


def test_the_sweep_exercises_every_check() -> None:
    # A sweep that never crashed, never repaired or never dropped would pass vacuously.
    results: list[ObjectsResult] = []
    for seed in range(30):
        try:
            results.append(run_objects(ObjectsOptions.for_seed(seed)))
        except SimulationFailure:
            continue  # reported by test_objects_seed
    assert len(results) >= 27
    assert sum(result.permanent_deaths for result in results) >= 3
    assert sum(result.crashes for result in results) >= 15
    assert sum(result.corruptions for result in results) >= 10
    assert sum(result.pushes for result in results) >= 500
    assert sum(result.drops for result in results) >= 200
    assert sum(result.acknowledged_chunks for result in results) >= 1_000
    assert sum(result.placed_ms > 0 for result in results) >= 8  # repair had work to do after the heal


class NeverPushes(RepairPlanner):
    """Broken on purpose: finds what is missing and never repairs it."""

    def _push(self, *arguments: object, **keywords: object) -> None:
        return None


class DropsWithoutConfirmations(RepairPlanner):
    """Broken on purpose: drops a copy as soon as this node is not a desired holder."""

    def _drop_allowed(self, desired: tuple[str, ...], known: dict[str, tuple[bool, int]]) -> bool:
        return self.node_id not in desired


def failures_of(planner_class: type[RepairPlanner], seeds: range) -> dict[str, list[int]]:
    caught: dict[str, list[int]] = {}
    for seed in seeds:
        try:
            run_objects(ObjectsOptions.for_seed(seed), planner_class=planner_class)
        except SimulationFailure as failure:
            assert "replay: python -m moot.sim objects --seed" in str(failure)
            caught.setdefault(type(failure).__name__, []).append(seed)
    return caught


def test_a_planner_that_never_pushes_is_caught() -> None:
    caught = failures_of(NeverPushes, range(10))
    assert len(caught.get(RepairFailure.__name__, [])) >= 5


def test_a_planner_that_drops_without_confirmations_is_caught() -> None:
    # Seeds 12 and 20 lose an acknowledged chunk with this planner (found by a sweep).
    caught = failures_of(DropsWithoutConfirmations, range(12, 21))
    assert caught.get(LossFailure.__name__, []) != []


@pytest.mark.parametrize("seed", [3, 11, 20])
def test_same_seed_same_trace(seed: int) -> None:
    options = ObjectsOptions.for_seed(seed)
    first = run_objects(options).trace_hash
    assert run_objects(options).trace_hash == first
    assert run_objects(ObjectsOptions.for_seed(seed + 100)).trace_hash != first


@pytest.mark.parametrize("seed", [0, 5, 12, 33])
def test_replay_command_parses_back_to_the_same_options(seed: int) -> None:
    options = ObjectsOptions.for_seed(seed)
    words = shlex.split(options.command())
    assert words[:4] == ["python", "-m", "moot.sim", "objects"]
    assert objects_options_from_arguments(build_parser().parse_args(words[3:])) == options


def test_a_failure_prints_its_replay_command() -> None:
    with pytest.raises(RepairFailure, match=re.escape(ObjectsOptions.for_seed(0).command())):
        run_objects(ObjectsOptions.for_seed(0), planner_class=NeverPushes)


def test_cli_prints_the_same_trace_hash_in_two_processes() -> None:
    first, second = trace_hashes("objects", "--seed", "20")
    assert first == second


def test_cli_rejects_bad_options() -> None:
    completed = run_sim("objects", "--seed", "1", "--nodes", "2")
    assert completed.returncode == 2
    assert "--nodes" in completed.stderr
