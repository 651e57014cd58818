"""Raft + the KV store under the simulator: many seeds, every safety check after every step.

``MOOT_SIM_SEEDS`` (default 500) sets how many seeds the sweep runs; each
seed's options are ``RaftScenarioOptions.for_seed(seed)``, so a failure's
printed command replays it exactly. Half the seeds change the voter set as
they run (the planner, plus leaders removing themselves). The last tests
break a core or the driver on purpose and require the checks to notice.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator

import pytest
from raft_regression_seeds import OPEN, REGRESSION, PinnedRaftRun
from sim_cli import trace_hashes

from moot.core.kv_server import GetRequest, KvServer
from moot.core.raft import RaftNode
from moot.core.raft_log import RaftLog
from moot.core.raft_messages import ConfChange
from moot.sim import raft_scenario
from moot.sim.__main__ import build_parser, raft_options_from_arguments
from moot.sim.raft_checks import RaftCheckFailure
from moot.sim.raft_scenario import (
    RaftScenario,
    RaftScenarioOptions,
    RaftScenarioResult,
    run_raft_scenario,
)
from moot.sim.world import CoreContractError, SimulationFailure

pytestmark = pytest.mark.sim

SEED_COUNT = int(os.environ.get("MOOT_SIM_SEEDS", "500"))

# How many seeds a deliberately broken core may pass before the checks must
# have caught it (each found its first failure well within this).
BROKEN_SEEDS_MAX = 80


# Results of the sweep's seeds, so the coverage test below need not run them again.
_SWEEP_RESULTS: dict[int, RaftScenarioResult] = {}


def sweep_result(seed: int) -> RaftScenarioResult:
    """The sweep's run of ``seed`` (run now unless the sweep already did)."""
    result = _SWEEP_RESULTS.get(seed)
    if result is None:
        result = _SWEEP_RESULTS[seed] = run_raft_scenario(RaftScenarioOptions.for_seed(seed))
    return result


@pytest.mark.parametrize("seed", range(SEED_COUNT))
def test_raft_seed(seed: int) -> None:
    # Every check runs inside; a failure raises with the replay command.
    sweep_result(seed)


@pytest.mark.parametrize("pinned", REGRESSION, ids=lambda pinned: pinned.options.command())
def test_regression_seed(pinned: PinnedRaftRun) -> None:
    run_raft_scenario(pinned.options)


if OPEN:  # no test at all (rather than an empty, skipped one) when no bug is open

    @pytest.mark.parametrize(
        "pinned",
        [pytest.param(pinned, marks=pytest.mark.xfail(strict=True, reason=pinned.bug)) for pinned in OPEN],
        ids=lambda pinned: pinned.options.command(),
    )
    def test_open_bug_seed(pinned: PinnedRaftRun) -> None:
        run_raft_scenario(pinned.options)


def test_the_sweep_exercises_every_fault() -> None:
    # A sweep that never changed leader, never tore a write or never left an
    # outcome in doubt would pass vacuously; these options are the sweep's own.
    results = [sweep_result(seed) for seed in range(40)]
    assert sum(result.leaders > 1 for result in results) >= 10
    assert sum(result.crashes for result in results) >= 20
    for stage in raft_scenario.TORN_STAGES:
        assert sum(result.torn_crashes[stage] for result in results) >= 1, stage
    assert sum(result.snapshots_sent for result in results) >= 20
    assert sum(result.operations_unknown for result in results) >= 3
    assert sum(result.operations for result in results) >= 40 * 20
    assert any(result.options.nodes == 5 for result in results)
    assert all(result.liveness_ms is not None for result in results)


def test_the_sweep_changes_the_voter_set() -> None:
    # Membership runs must really migrate voters: spares added and promoted
    # beyond the bootstrap, voters removed (leaders themselves included), and
    # the planner's end state reached with more voters than the founders.
    results = [sweep_result(seed) for seed in range(40)]
    membership = [result for result in results if result.options.conf_changes]
    assert 12 <= len(membership) <= 28
    assert {result.options.nodes for result in membership} == {1, 3}
    assert {result.options.node_count for result in membership} == {5, 6}
    bootstrap_promotes = sum(result.options.nodes for result in membership)
    assert sum(result.conf_changes["promote"] for result in membership) >= bootstrap_promotes + 2 * len(membership)
    assert sum(result.conf_changes["remove"] for result in membership) >= 20
    assert sum(result.leader_self_removals for result in membership) >= 10
    assert sum(result.conf_refusals for result in membership) >= 1
    assert sum(len(result.final_voters) == 5 for result in membership) >= len(membership) // 2
    # Voters replaced: some runs end without one of their founders as a voter.
    founders_gone = [
        result
        for result in membership
        if not {f"n{index}" for index in range(result.options.nodes)} <= set(result.final_voters)
    ]
    assert len(founders_gone) >= 3
    assert all(not result.conf_changes.get("remove") for result in results if not result.options.conf_changes)


@pytest.mark.parametrize("seed", [3, 21])
def test_same_seed_same_trace(seed: int) -> None:
    options = RaftScenarioOptions.for_seed(seed)
    first = run_raft_scenario(options).trace_hash
    assert run_raft_scenario(options).trace_hash == first
    assert run_raft_scenario(RaftScenarioOptions.for_seed(seed + 100)).trace_hash != first


@pytest.mark.parametrize("seed", [0, 5, 21])
def test_replay_command_parses_back_to_the_same_options(seed: int) -> None:
    options = RaftScenarioOptions.for_seed(seed)
    words = shlex.split(options.command())
    assert words[:3] == ["python", "-m", "moot.sim"]
    assert raft_options_from_arguments(build_parser().parse_args(words[3:])) == options


@pytest.mark.parametrize("seed", [20, 21])  # with and without conf changes
def test_cli_prints_the_same_trace_hash_in_two_processes(seed: int) -> None:
    first, second = trace_hashes("raft", "--seed", str(seed))
    assert first == second


def test_failure_prints_the_replay_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, last_index, last_term: True)
    failures = list(first_caught())
    assert failures
    assert re.search(r"\nreplay: python -m moot\.sim raft --seed \d+ --nodes ", str(failures[0]))


def test_membership_options_not_drawn_by_the_seed_are_in_the_command() -> None:
    drawn = RaftScenarioOptions.for_seed(0)
    assert drawn.conf_changes
    assert "--spares" not in drawn.command()
    static = RaftScenarioOptions(seed=0)
    assert static.command().endswith("--spares 0 --no-conf-changes")


# -- the checks catch broken cores and drivers ---------------------------------------------


def first_caught(*, membership_only: bool = False) -> Iterator[SimulationFailure]:
    """The failure of the first seed (of BROKEN_SEEDS_MAX) that fails."""
    for seed in range(BROKEN_SEEDS_MAX):
        options = RaftScenarioOptions.for_seed(seed)
        if membership_only and not options.conf_changes:
            continue
        try:
            RaftScenario(options).run()
        except SimulationFailure as failure:
            yield failure
            return


def test_votes_for_stale_logs_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # Raft 5.4.1 switched off: a node grants its vote whatever the candidate's log.
    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, last_index, last_term: True)
    failures = list(first_caught())
    assert failures, f"no seed of {BROKEN_SEEDS_MAX} caught it"
    assert isinstance(failures[0], RaftCheckFailure)
    assert re.search(r"leader completeness|state machine safety|log matching|not linearizable", str(failures[0]))


def test_linearizable_reads_served_locally_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # A server that answers linearizable reads from its local state, as if stale.
    handle = KvServer.handle

    def handle_stale(self: KvServer, now_ms: int, requests: list[tuple[int, object]]) -> object:
        stale = [
            (request_id, GetRequest(request.key, "stale") if isinstance(request, GetRequest) else request)
            for request_id, request in requests
        ]
        return handle(self, now_ms, stale)  # type: ignore[arg-type]

    monkeypatch.setattr(KvServer, "handle", handle_stale)
    failures = list(first_caught())
    assert failures, f"no seed of {BROKEN_SEEDS_MAX} caught it"
    assert "not linearizable" in str(failures[0])


def test_sending_before_the_vote_is_durable_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # A driver that forgets to persist the hard state: its votes leave before they are durable.
    persist = RaftScenario.persist

    def persist_without_hard_state(self: RaftScenario, node: object, effects: raft_scenario.HostEffects) -> None:
        out = effects.output.raft
        hard_state, out.hard_state = out.hard_state, None
        try:
            persist(self, node, effects)  # type: ignore[arg-type]
        finally:
            out.hard_state = hard_state

    monkeypatch.setattr(RaftScenario, "persist", persist_without_hard_state)
    with pytest.raises(CoreContractError, match="hard state"):
        RaftScenario(RaftScenarioOptions.for_seed(0)).run()


def test_a_learner_that_votes_before_its_promotion_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # A core that makes an added learner a voter at once (as if "add_learner"
    # were "promote"): its configuration is not the committed one.
    apply_conf_change = RaftNode._apply_conf_change

    def apply_as_voter(self: RaftNode, index: int, change: ConfChange) -> None:
        if change.kind == "add_learner":
            change = ConfChange("promote", change.node_id)
        apply_conf_change(self, index, change)

    monkeypatch.setattr(RaftNode, "_apply_conf_change", apply_as_voter)
    failures = list(first_caught(membership_only=True))
    assert failures, f"no seed of {BROKEN_SEEDS_MAX} caught it"
    assert "configuration safety" in str(failures[0])


def test_two_conf_changes_at_once_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # The one-change-at-a-time guard switched off: a leader accepts a change
    # while its previous one is not applied (nor its no-op).
    check = RaftNode._check_conf_change

    def without_pending_guard(self: RaftNode, change: ConfChange) -> object:
        pending, self._pending_conf_index = self._pending_conf_index, 0
        try:
            return check(self, change)
        finally:
            self._pending_conf_index = pending

    monkeypatch.setattr(RaftNode, "_check_conf_change", without_pending_guard)
    failures = list(first_caught(membership_only=True))
    assert failures, f"no seed of {BROKEN_SEEDS_MAX} caught it"
    assert "configuration safety" in str(failures[0])


def test_a_leader_that_keeps_leading_after_removing_itself_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    on_applied = RaftNode._on_conf_applied_as_leader

    def never_step_down(self: RaftNode, change: ConfChange) -> None:
        if change.kind == "remove" and change.node_id == self.node_id:
            return
        on_applied(self, change)

    monkeypatch.setattr(RaftNode, "_on_conf_applied_as_leader", never_step_down)
    failures = list(first_caught(membership_only=True))
    assert failures, f"no seed of {BROKEN_SEEDS_MAX} caught it"
    assert re.search(r"configuration", str(failures[0]))
