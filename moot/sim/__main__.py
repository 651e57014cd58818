"""``python -m moot.sim membership|raft|tasks|objects|hlc --seed S [...]``: run one simulated scenario.

Prints the derived options, the fault plan, the check results and stats, and
last ``trace_hash=<hex>``. Exits 1 if a check failed (the message carries the
replay command), 2 on bad options.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from typing import Protocol, TypeVar

from moot.sim.hlc_scenario import HlcOptions, HlcScenario
from moot.sim.membership_scenario import BOOTSTRAP_NODES_MIN, MembershipScenario, ScenarioOptions
from moot.sim.objects_scenario import ObjectsOptions, ObjectsScenario
from moot.sim.raft_scenario import RaftScenario, RaftScenarioOptions
from moot.sim.tasks_scenario import TaskScenario, TaskScenarioOptions
from moot.sim.world import SimulationFailure


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(prog="python -m moot.sim", description="moot's deterministic simulator")
    commands = parser.add_subparsers(dest="command", required=True)
    membership = commands.add_parser("membership", help="SWIM/Lifeguard membership under faults")
    membership.add_argument("--seed", type=int, required=True, help="root seed: every fault and sub-seed comes from it")
    membership.add_argument("--nodes", type=int, default=6, help="number of nodes (default 6)")
    membership.add_argument(
        "--duration-ms", type=int, default=30_000, help="length of the safety (faults) phase in simulated ms"
    )
    membership.add_argument("--loss", type=float, default=0.0, help="base message loss probability")
    membership.add_argument(
        "--faults", action=argparse.BooleanOptionalAction, default=True, help="inject faults from the seed"
    )
    membership.add_argument(
        "--lifeguard", action=argparse.BooleanOptionalAction, default=True, help="Lifeguard extensions on/off"
    )
    membership.add_argument("--profile", default="sim", help="membership config profile: sim, lan, wan, local")
    membership.add_argument(
        "--wire", action=argparse.BooleanOptionalAction, default=False,
        help="encode and decode every message through moot.core.wire (slower)",
    )
    membership.add_argument(
        "--bootstrap", action=argparse.BooleanOptionalAction, default=None,
        help=f"start all nodes on a shared bootstrapped membership instead of joining "
        f"(default: on from {BOOTSTRAP_NODES_MIN} nodes)",
    )
    membership.add_argument("--no-audit", action="store_true", help="skip the persist-before-send audit (faster)")
    membership.add_argument("--verbose", action="store_true", help="print the full event trace")
    raft = commands.add_parser("raft", help="Raft + KV store and clients under faults (linearizability)")
    raft.add_argument("--seed", type=int, required=True, help="root seed: every fault and sub-seed comes from it")
    raft.add_argument(
        "--nodes", type=int, default=None, help="voters (default: what the CI sweep uses for this seed, 3 or 5)"
    )
    raft.add_argument("--duration-ms", type=int, default=None, help="length of the safety (faults) phase")
    raft.add_argument("--clients", type=int, default=None, help="number of clients")
    raft.add_argument("--faults", action=argparse.BooleanOptionalAction, default=None, help="inject faults")
    raft.add_argument("--lease", action=argparse.BooleanOptionalAction, default=None, help="lease reads on/off")
    raft.add_argument("--torn", type=float, default=None, help="probability a crash lands mid-output")
    raft.add_argument("--snapshot-entries", type=int, default=None, help="entries applied between snapshots")
    raft.add_argument("--spares", type=int, default=None, help="nodes beyond the founders, started with voters=()")
    raft.add_argument(
        "--conf-changes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bootstrap from the log and let the voter planner (and chaos) change the configuration",
    )
    raft.add_argument("--no-audit", action="store_true", help="skip the persist-before-send audit")
    raft.add_argument("--verbose", action="store_true", help="print the full event trace")
    tasks = commands.add_parser("tasks", help="durable tasks (table, scheduler, workers) on Raft under faults")
    tasks.add_argument("--seed", type=int, required=True, help="root seed: every fault and sub-seed comes from it")
    tasks.add_argument("--nodes", type=int, default=None, help="voters, each also a worker (default: drawn, 3 or 5)")
    tasks.add_argument("--duration-ms", type=int, default=None, help="length of the safety (faults) phase")
    tasks.add_argument("--submitters", type=int, default=None, help="clients submitting and cancelling jobs")
    tasks.add_argument("--faults", action=argparse.BooleanOptionalAction, default=None, help="inject faults")
    tasks.add_argument("--torn", type=float, default=None, help="probability a crash lands mid-output")
    tasks.add_argument("--snapshot-entries", type=int, default=None, help="entries applied between snapshots")
    tasks.add_argument("--no-audit", action="store_true", help="skip the persist-before-send audit")
    tasks.add_argument("--verbose", action="store_true", help="print the full event trace")
    objects = commands.add_parser("objects", help="object placement and repair under faults")
    objects.add_argument("--seed", type=int, required=True, help="root seed: every fault and sub-seed comes from it")
    objects.add_argument("--nodes", type=int, default=None, help="storage nodes, 5-9 (default: drawn from the seed)")
    objects.add_argument("--duration-ms", type=int, default=None, help="length of the safety (faults) phase")
    objects.add_argument("--loss", type=float, default=None, help="base message loss probability")
    objects.add_argument("--faults", action=argparse.BooleanOptionalAction, default=None, help="inject faults")
    objects.add_argument("--writes", type=int, default=None, help="objects the client writes")
    objects.add_argument(
        "--corruption", action=argparse.BooleanOptionalAction, default=None, help="scrub finds corrupt chunks"
    )
    objects.add_argument("--repair-bound-ms", type=int, default=None, help="heal to placement bound")
    objects.add_argument("--drop-bound-ms", type=int, default=None, help="placement to extras dropped bound")
    objects.add_argument("--verbose", action="store_true", help="print the full event trace")
    clocks = commands.add_parser("hlc", help="hybrid logical clocks on drifting, stepped wall clocks")
    clocks.add_argument("--seed", type=int, required=True, help="root seed: every fault and sub-seed comes from it")
    clocks.add_argument("--nodes", type=int, default=5, help="number of nodes (default 5)")
    clocks.add_argument("--duration-ms", type=int, default=20_000, help="simulated ms (default 20000)")
    return parser


def _print_trace(text: str) -> None:
    sys.stdout.write(text)


def options_from_arguments(arguments: argparse.Namespace) -> ScenarioOptions:
    """The scenario options a parsed ``membership`` command line describes."""
    return ScenarioOptions(
        seed=arguments.seed,
        nodes=arguments.nodes,
        duration_ms=arguments.duration_ms,
        loss=arguments.loss,
        faults=arguments.faults,
        lifeguard=arguments.lifeguard,
        profile=arguments.profile,
        wire=arguments.wire,
        bootstrap=arguments.nodes >= BOOTSTRAP_NODES_MIN if arguments.bootstrap is None else arguments.bootstrap,
    )


def run_membership(arguments: argparse.Namespace) -> int:
    """Run the membership scenario the arguments describe; the process exit code."""
    options = options_from_arguments(arguments)
    if not _valid(options):
        return 2
    sink = _print_trace if arguments.verbose else None
    # Wall time is reported, never fed to the run: it cannot change the trace.
    started = time.perf_counter()
    scenario = MembershipScenario(
        options, trace_sink=sink, trace_messages=arguments.verbose, audit=not arguments.no_audit
    )
    built = time.perf_counter()
    try:
        result = scenario.run()
    except SimulationFailure as failure:
        for line in scenario.log:
            print(line)
        message = str(failure)
        if "replay:" not in message:
            message += f"\nreplay: {options.command()}"
        print(f"FAILED at {scenario.world.now_ms} ms: {message}")
        print(f"trace_hash={scenario.world.trace_hash}")
        return 1
    finished = time.perf_counter()
    for line in result.log:
        print(line)
    for name in result.checks:
        print(f"check passed: {name}")
    for line in result.report():
        print(line)
    print(f"wall time: {finished - started:.2f} s (build {built - started:.2f} s, run {finished - built:.2f} s)")
    print(f"trace_hash={result.trace_hash}")
    return 0


def raft_options_from_arguments(arguments: argparse.Namespace) -> RaftScenarioOptions:
    """The options a parsed ``raft`` command line describes: the sweep's for the seed, overridden."""
    options = RaftScenarioOptions.for_seed(arguments.seed)
    overrides = {
        "nodes": arguments.nodes,
        "duration_ms": arguments.duration_ms,
        "clients": arguments.clients,
        "faults": arguments.faults,
        "lease_reads": arguments.lease,
        "torn_probability": arguments.torn,
        "snapshot_entries": arguments.snapshot_entries,
        "spares": arguments.spares,
        "conf_changes": arguments.conf_changes,
    }
    return _overridden(options, overrides)


def run_raft(arguments: argparse.Namespace) -> int:
    """Run the Raft scenario the arguments describe; the process exit code."""
    options = raft_options_from_arguments(arguments)
    if not _valid(options):
        return 2
    sink = _print_trace if arguments.verbose else None
    scenario = RaftScenario(options, trace_sink=sink, trace_messages=arguments.verbose, audit=not arguments.no_audit)
    return _run_and_report(scenario)


def tasks_options_from_arguments(arguments: argparse.Namespace) -> TaskScenarioOptions:
    """The options a parsed ``tasks`` command line describes: the sweep's for the seed, overridden."""
    options = TaskScenarioOptions.for_seed(arguments.seed)
    overrides = {
        "nodes": arguments.nodes,
        "duration_ms": arguments.duration_ms,
        "submitters": arguments.submitters,
        "faults": arguments.faults,
        "torn_probability": arguments.torn,
        "snapshot_entries": arguments.snapshot_entries,
    }
    return _overridden(options, overrides)


def run_tasks(arguments: argparse.Namespace) -> int:
    """Run the tasks scenario the arguments describe; the process exit code."""
    options = tasks_options_from_arguments(arguments)
    if not _valid(options):
        return 2
    sink = _print_trace if arguments.verbose else None
    scenario = TaskScenario(options, trace_sink=sink, trace_messages=arguments.verbose, audit=not arguments.no_audit)
    return _run_and_report(scenario)


def run_hlc(arguments: argparse.Namespace) -> int:
    """Run the hybrid-clock scenario; the process exit code."""
    options = HlcOptions(seed=arguments.seed, nodes=arguments.nodes, duration_ms=arguments.duration_ms)
    if not _valid(options):
        return 2
    scenario = HlcScenario(options)
    try:
        result = scenario.run()
    except SimulationFailure as failure:
        print(f"FAILED at {scenario.world.now_ms} ms: {failure}")
        print(f"trace_hash={scenario.world.trace_hash}")
        return 1
    print("check passed: monotonic per node, receipts after sends, within the wall clocks, happened-before kept")
    for name, value in dataclasses.asdict(result).items():
        print(f"{name}: {value}")
    print(f"trace_hash={scenario.world.trace_hash}")
    return 0


def objects_options_from_arguments(arguments: argparse.Namespace) -> ObjectsOptions:
    """The options a parsed ``objects`` command line describes: the sweep's for the seed, overridden."""
    options = ObjectsOptions.for_seed(arguments.seed)
    overrides = {
        "nodes": arguments.nodes,
        "duration_ms": arguments.duration_ms,
        "loss": arguments.loss,
        "faults": arguments.faults,
        "writes": arguments.writes,
        "corruption": arguments.corruption,
        "repair_bound_ms": arguments.repair_bound_ms,
        "drop_bound_ms": arguments.drop_bound_ms,
    }
    return _overridden(options, overrides)


def run_objects(arguments: argparse.Namespace) -> int:
    """Run the objects scenario the arguments describe; the process exit code."""
    options = objects_options_from_arguments(arguments)
    if not _valid(options):
        return 2
    sink = _print_trace if arguments.verbose else None
    scenario = ObjectsScenario(options, trace_sink=sink)
    return _run_and_report(scenario)


class _Options(Protocol):
    def validate(self) -> None: ...


OptionsT = TypeVar("OptionsT")


def _overridden(options: OptionsT, overrides: dict[str, object]) -> OptionsT:
    """``options`` (a dataclass) with the values given on the command line (not None)."""
    given = {name: value for name, value in overrides.items() if value is not None}
    return dataclasses.replace(options, **given)  # type: ignore[type-var]


def _valid(options: _Options) -> bool:
    """Whether ``options`` make sense; if not, say why on stderr."""
    try:
        options.validate()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return False
    return True


def _run_and_report(scenario: RaftScenario | TaskScenario | ObjectsScenario) -> int:
    """Run a scenario and print its log, checks, report and trace hash (or
    the failure, which carries its replay command); the process exit code."""
    started = time.perf_counter()  # reported only, never fed to the run
    try:
        result = scenario.run()
    except SimulationFailure as failure:
        for line in scenario.log:
            print(line)
        print(f"FAILED at {scenario.world.now_ms} ms: {failure}")
        print(f"trace_hash={scenario.world.trace_hash}")
        return 1
    for line in result.log:
        print(line)
    for name in result.checks:
        print(f"check passed: {name}")
    for line in result.report():
        print(line)
    print(f"wall time: {time.perf_counter() - started:.2f} s")
    print(f"trace_hash={result.trace_hash}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    arguments = build_parser().parse_args(argv)
    if arguments.command == "membership":
        return run_membership(arguments)
    if arguments.command == "raft":
        return run_raft(arguments)
    if arguments.command == "tasks":
        return run_tasks(arguments)
    if arguments.command == "objects":
        return run_objects(arguments)
    if arguments.command == "hlc":
        return run_hlc(arguments)
    raise AssertionError(arguments.command)  # pragma: no cover - argparse rejects others


if __name__ == "__main__":
    sys.exit(main())
