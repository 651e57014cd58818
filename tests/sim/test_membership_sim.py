"""Membership (SWIM + Lifeguard) under the simulator: many seeds, checks (a)-(d).

``MOOT_SIM_SEEDS`` (default 300) sets how many seeds the sweep runs; each
seed's options are a function of the seed, so a failure's printed command
replays it exactly.
"""

from __future__ import annotations

import os
import shlex

import pytest
from regression_seeds import OPEN, REGRESSION, PinnedRun
from sim_cli import trace_hashes

from moot.sim.__main__ import build_parser, options_from_arguments
from moot.sim.membership_scenario import ScenarioOptions, ScenarioResult, run_scenario

pytestmark = pytest.mark.sim

SEED_COUNT = int(os.environ.get("MOOT_SIM_SEEDS", "300"))


def options_for(seed: int) -> ScenarioOptions:
    """Vary size, length, loss, Lifeguard, faults and the wire check with the seed."""
    return ScenarioOptions(
        seed=seed,
        nodes=5 + seed % 4,
        duration_ms=10_000 + (seed * 7_919 % 31) * 1_000,
        loss=(0.0, 0.0, 0.02, 0.05, 0.1)[seed % 5],
        lifeguard=seed % 6 != 5,
        faults=seed % 8 != 7,
        wire=seed % 10 == 3,
    )


@pytest.mark.parametrize("seed", range(SEED_COUNT))
def test_membership_seed(seed: int) -> None:
    # Every check runs inside; a failure raises with the replay command.
    run_scenario(options_for(seed))


@pytest.mark.parametrize("pinned", REGRESSION, ids=lambda pinned: pinned.options.command())
def test_regression_seed(pinned: PinnedRun) -> None:
    run_scenario(pinned.options)


if OPEN:  # no test at all (rather than an empty, skipped one) when no bug is open

    @pytest.mark.parametrize(
        "pinned",
        [pytest.param(pinned, marks=pytest.mark.xfail(strict=True, reason=pinned.bug)) for pinned in OPEN],
        ids=lambda pinned: pinned.options.command(),
    )
    def test_open_bug_seed(pinned: PinnedRun) -> None:
        run_scenario(pinned.options)


def test_the_sweep_exercises_every_check() -> None:
    # A sweep that never crashed a node or never ran clean would pass
    # vacuously; these options are the sweep's own.
    results: list[ScenarioResult] = []
    for seed in range(48):
        try:
            results.append(run_scenario(options_for(seed)))
        except AssertionError:
            continue  # reported by test_membership_seed
    assert len(results) >= 24
    assert sum(result.crashes_checked for result in results) >= 10
    assert sum(len(result.time_to_all_know_ms) for result in results) >= 5
    assert sum(result.false_positives_in_clean_run for result in results) >= 5
    assert all(result.liveness_converged_ms is not None for result in results)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_same_seed_same_trace(seed: int) -> None:
    options = options_for(seed)
    first = run_scenario(options).trace_hash
    assert run_scenario(options).trace_hash == first
    assert run_scenario(options_for(seed + 100)).trace_hash != first


@pytest.mark.parametrize("seed", range(6))
def test_bootstrapped_membership_passes_the_same_checks(seed: int) -> None:
    # How large runs start (every node on one shared view); small here so
    # the members() snapshot checks still run.
    result = run_scenario(ScenarioOptions(seed=seed, nodes=12, duration_ms=15_000, loss=0.02, bootstrap=True))
    assert result.join_converged_ms == 0


def test_fault_free_run_has_no_false_positives() -> None:
    result = run_scenario(ScenarioOptions(seed=3, nodes=8, duration_ms=20_000, faults=False))
    assert result.false_positives_in_clean_run
    assert result.false_positives == 0


@pytest.mark.parametrize("seed", [0, 3, 5, 7, 23])
def test_replay_command_parses_back_to_the_same_options(seed: int) -> None:
    options = options_for(seed)
    words = shlex.split(options.command())
    assert words[:3] == ["python", "-m", "moot.sim"]
    assert options_from_arguments(build_parser().parse_args(words[3:])) == options


def test_cli_prints_the_same_trace_hash_in_two_processes() -> None:
    first, second = trace_hashes("membership", "--seed", "7", "--nodes", "6")
    assert first == second
