"""Simulated SWIM/Lifeguard membership at N = 10 ... 10,000: dissemination, traffic, false positives.

    .venv/bin/python bench/membership_sim.py [--sizes 10,100,1000,10000] [--seeds 5]
        [--seeds-large 2] [--first-seed 1] [--warmup-ms 10000] [--fp-duration-ms 60000]
        [--slow-ms 300-1000] [--plot-dir docs] [--markdown out.md]

Every run is ``moot.sim``'s membership scenario (three regions, one-way
delays 1-45 ms plus up to 10 ms jitter, per-node clock offsets and drift)
with the real ``Membership`` core, started ``bootstrap``-style: every node
boots at 0 ms on one shared view in which all are alive. The simulator's
own fault plan is off; this script schedules the one fault each run needs.

1. **Crash dissemination.** Run ``--warmup-ms``, crash one node drawn from
   the seed, and run until every live member has declared it dead. Reported:
   crash -> first member declares it dead (detection: probe, suspicion
   timeout), crash -> all do, and the spread first -> all, also in gossip
   rounds (``gossip_interval_ms``) divided by ln N. Messages per member per
   second are counted over the steady state before the crash
   (``STEADY_START_MS`` to the crash).
2. **False positives.** No crash, ``--fp-duration-ms`` of simulated time,
   Lifeguard on and off on the *same seeds*, under two conditions: 10%
   loss of every message copy, and one *slow member* (``Network.set_slow``):
   a node under CPU pressure that reads its socket late and whose replies
   leave late, so every message to or from it takes a further
   ``--slow-ms`` (uniform, drawn per message and per direction). Its own
   timers fire on time, so it probes on schedule but its acks come back
   late. Counted: suspect and dead events some member emits about a member
   that is up, split into "about a healthy member" and "about the slow
   member itself".

Sizes above 1,000 run the crash measurement only, with one seed and
Lifeguard on (pure Python: the simulator processes about 10^4-10^5 events
per wall second). Every run prints its wall time and the command that
replays it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any, Final

from moot.core.membership import Membership, Output
from moot.core.membership_config import MembershipConfig
from moot.sim.membership_scenario import MembershipScenario, ScenarioOptions
from moot.sim.world import SimNode, SimulationFailure, derive_seed

LOSS: Final = 0.10  # the "10% loss"
STEADY_START_MS: Final = 2_000  # traffic before this is the boot transient
STEP_MS: Final = 250  # granularity of the "has everyone declared it?" poll
ACCUSATIONS: Final = ("suspect", "dead", "left")
TARGET_FALSE_POSITIVE_RATIO: Final = 10.0  # the target; the Lifeguard paper reports ~50x
SMALL_NODES_MAX: Final = 100  # up to here: --seeds; up to LARGE_NODES_MAX: --seeds-large
LARGE_NODES_MAX: Final = 1_000  # above: crash only, one seed, Lifeguard on


class BenchScenario(MembershipScenario):
    """The simulator's membership scenario, recording every accusation a core makes."""

    def __init__(self, options: ScenarioOptions, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self.index_of = {node.node_id: node.index for node in self.world.nodes}
        # (global ms, observer index, event kind, subject index, subject incarnation)
        self.accusations: list[tuple[int, int, str, int, int]] = []

    def observe(self, node: SimNode[Membership], effects: Output, global_ms: int) -> None:
        """Let the checkers see the events, then record the accusations among them."""
        super().observe(node, effects, global_ms)
        for event in effects.events:
            if event.kind in ACCUSATIONS:
                subject = self.index_of[event.node_id]
                self.accusations.append((global_ms, node.index, event.kind, subject, event.incarnation))

    def boot_all(self) -> None:
        """Start every node now on the shared bootstrapped view (all alive)."""
        assert self.options.bootstrap
        for index in range(self.options.nodes):
            self.world.start(index)


@dataclass(frozen=True, slots=True)
class CrashRun:
    """One crash-dissemination run."""

    nodes: int
    seed: int
    lifeguard: bool
    victim: int
    first_ms: int | None  # crash -> first member declares it dead
    all_ms: int | None  # crash -> the last live member does (None: not all by the cap)
    declared: int  # live members that declared it dead
    gossip_interval_ms: int
    messages_per_member_second: float
    wall_s: float

    @property
    def spread_ms(self) -> int | None:
        """First member knows -> all know."""
        if self.first_ms is None or self.all_ms is None:
            return None
        return self.all_ms - self.first_ms

    @property
    def spread_rounds(self) -> float | None:
        """The spread in gossip rounds."""
        spread = self.spread_ms
        return None if spread is None else spread / self.gossip_interval_ms


@dataclass(frozen=True, slots=True)
class FalsePositiveRun:
    """One run without crashes under loss or with a slow member."""

    nodes: int
    seed: int
    lifeguard: bool
    condition: str  # "loss" or "slow"
    duration_ms: int
    suspicions_healthy: int  # suspect events (at any member) about an up, healthy member
    deaths_healthy: int  # dead events (at any member) about an up, healthy member
    suspicions_slow: int  # ... about the slow member (up, but slow)
    deaths_slow: int
    suspected_lives: int  # distinct (member, incarnation) suspected by anyone: "suspicion episodes"
    dead_lives: int  # distinct (member, incarnation) declared dead by anyone
    messages_per_member_second: float
    wall_s: float


@dataclass(slots=True)
class Settings:
    """What the command line asked for."""

    sizes: list[int]
    seeds: int
    seeds_large: int
    first_seed: int
    profile: str
    warmup_ms: int
    detect_ms_max: int
    fp_duration_ms: int
    fp_duration_ms_large: int
    slow_ms_min: int
    slow_ms_max: int
    audit: bool
    crash_only: bool
    skip_crash: bool
    plot_dir: Path | None
    markdown: Path | None
    save_json: Path | None
    load_json: list[Path]
    argv: list[str] = field(default_factory=list)

    def seeds_for(self, nodes: int) -> list[int]:
        """The seeds to run at ``nodes`` nodes."""
        if nodes <= SMALL_NODES_MAX:
            count = self.seeds
        elif nodes <= LARGE_NODES_MAX:
            count = self.seeds_large
        else:
            count = 1
        return list(range(self.first_seed, self.first_seed + count))

    def command(self) -> str:
        """The command line that reproduces this whole benchmark."""
        return " ".join([".venv/bin/python bench/membership_sim.py", *self.argv])


def bench_options(settings: Settings, nodes: int, seed: int, *, lifeguard: bool, loss: float = 0.0) -> ScenarioOptions:
    """Scenario options of one run: the simulator's own fault plan off, bootstrapped."""
    return ScenarioOptions(
        seed=seed,
        nodes=nodes,
        duration_ms=0,
        loss=loss,
        faults=False,
        lifeguard=lifeguard,
        profile=settings.profile,
        bootstrap=True,
    )


def replay_hint(settings: Settings, nodes: int, seed: int, what: str) -> str:
    """The command that reruns one measurement alone."""
    extra = " --crash-only" if what == "crash" else ""
    return (
        f".venv/bin/python bench/membership_sim.py --sizes {nodes} --first-seed {seed} --seeds 1 "
        f"--seeds-large 1 --profile {settings.profile} --warmup-ms {settings.warmup_ms} "
        f"--fp-duration-ms {settings.fp_duration_ms} --fp-duration-ms-large {settings.fp_duration_ms_large} "
        f"--slow-ms {settings.slow_ms_min}-{settings.slow_ms_max}{extra} --plot-dir ''"
    )


# -- 1. crash dissemination ------------------------------------------------------------


def run_crash(settings: Settings, nodes: int, seed: int, *, lifeguard: bool) -> CrashRun:
    """Boot, run the warm-up, crash one node, run until every live member declared it dead."""
    assert nodes >= 2
    assert settings.warmup_ms > STEADY_START_MS
    started = time.perf_counter()
    scenario = BenchScenario(bench_options(settings, nodes, seed, lifeguard=lifeguard), audit=settings.audit)
    world = scenario.world
    scenario.boot_all()
    world.run_until(STEADY_START_MS)
    messages_before = world.network.messages_total
    world.run_until(settings.warmup_ms)
    steady_s = (settings.warmup_ms - STEADY_START_MS) / 1000
    per_member = (world.network.messages_total - messages_before) / nodes / steady_s
    victim = Random(derive_seed(seed, "bench/victim")).randrange(nodes)
    scenario.crash(victim)
    crash_ms = world.now_ms
    deadline_ms = crash_ms + settings.detect_ms_max
    declared: dict[int, int] = {}  # observer -> global ms it declared the victim dead
    cursor = len(scenario.accusations)
    while len(declared) < nodes - 1 and world.now_ms < deadline_ms:
        world.run_until(min(deadline_ms, world.now_ms + STEP_MS))
        accusations = scenario.accusations
        for at_ms, observer, kind, subject, _incarnation in accusations[cursor:]:
            if subject == victim and kind != "suspect":
                declared.setdefault(observer, at_ms)
        cursor = len(accusations)
    wall_s = time.perf_counter() - started
    first_ms = min(declared.values()) - crash_ms if declared else None
    all_ms = max(declared.values()) - crash_ms if len(declared) == nodes - 1 else None
    return CrashRun(
        nodes=nodes,
        seed=seed,
        lifeguard=lifeguard,
        victim=victim,
        first_ms=first_ms,
        all_ms=all_ms,
        declared=len(declared),
        gossip_interval_ms=scenario.config.gossip_interval_ms,
        messages_per_member_second=per_member,
        wall_s=wall_s,
    )


# -- 2. false positives ------------------------------------------------------------------------


def run_false_positives(settings: Settings, nodes: int, seed: int, *, lifeguard: bool, condition: str) -> FalsePositiveRun:
    """Run ``--fp-duration-ms`` with no crash under ``condition``; count accusations of up members."""
    assert condition in ("loss", "slow")
    started = time.perf_counter()
    loss = LOSS if condition == "loss" else 0.0
    scenario = BenchScenario(bench_options(settings, nodes, seed, lifeguard=lifeguard, loss=loss), audit=settings.audit)
    world = scenario.world
    slow = -1
    if condition == "slow":
        slow = Random(derive_seed(seed, "bench/slow")).randrange(nodes)
        world.network.set_slow(world.nodes[slow].address, settings.slow_ms_min, settings.slow_ms_max)
        # A slow member is a fault: from here check (b) counts false
        # positives instead of failing the run on the first one.
        scenario.checks.false_positives.dirty()
    scenario.boot_all()
    duration_ms = settings.fp_duration_ms if nodes <= SMALL_NODES_MAX else settings.fp_duration_ms_large
    world.run_until(duration_ms)
    counts = {(kind, about_slow): 0 for kind in ACCUSATIONS for about_slow in (False, True)}
    lives: dict[str, dict[tuple[int, int], None]] = {kind: {} for kind in ACCUSATIONS}
    for _at_ms, _observer, kind, subject, incarnation in scenario.accusations:
        assert world.nodes[subject].up  # nothing crashes in these runs: every accusation is false
        counts[(kind, subject == slow)] += 1
        lives[kind][(subject, incarnation)] = None
    assert counts[("left", False)] + counts[("left", True)] == 0  # nobody leaves either
    wall_s = time.perf_counter() - started
    return FalsePositiveRun(
        nodes=nodes,
        seed=seed,
        lifeguard=lifeguard,
        condition=condition,
        duration_ms=duration_ms,
        suspicions_healthy=counts[("suspect", False)],
        deaths_healthy=counts[("dead", False)],
        suspicions_slow=counts[("suspect", True)],
        deaths_slow=counts[("dead", True)],
        suspected_lives=len(lives["suspect"]),
        dead_lives=len(lives["dead"]),
        messages_per_member_second=world.network.messages_total / nodes / (duration_ms / 1000),
        wall_s=wall_s,
    )


# -- tables --------------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value / 1000:.1f}"


def _ratio(off: int, on: int) -> str:
    if off == 0 and on == 0:
        return "— (0 / 0)"
    if on == 0:
        return f"≥ {off}x ({off} / 0)"
    return f"{off / on:.1f}x"


def crash_table(runs: Sequence[CrashRun]) -> list[str]:
    """Markdown: one row per (N, Lifeguard), medians over seeds."""
    lines = [
        "| N | Lifeguard | seeds | crash → first knows (s) | crash → all know (s) | spread first → all (ms) "
        "| spread (gossip rounds) | ln N | rounds / ln N | messages / member / s | wall per run (s) |",
        "|--:|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    groups = sorted({(run.nodes, not run.lifeguard) for run in runs})
    for nodes, lifeguard_off in groups:
        group = [run for run in runs if run.nodes == nodes and run.lifeguard != lifeguard_off]
        complete = [run for run in group if run.all_ms is not None]
        first = _median([run.first_ms for run in group if run.first_ms is not None])
        all_know = _median([run.all_ms for run in complete if run.all_ms is not None])
        spread = _median([run.spread_ms for run in complete if run.spread_ms is not None])
        rounds = _median([run.spread_rounds for run in complete if run.spread_rounds is not None])
        log_n = math.log(nodes)
        incomplete = len(group) - len(complete)
        lines.append(
            f"| {nodes:,} | {'off' if lifeguard_off else 'on'} | {len(group)}"
            f"{f' ({incomplete} incomplete)' if incomplete else ''} | {_seconds(first)} | {_seconds(all_know)} "
            f"| {'—' if spread is None else f'{spread:.0f}'} | {'—' if rounds is None else f'{rounds:.1f}'} "
            f"| {log_n:.1f} | {'—' if rounds is None else f'{rounds / log_n:.2f}'} "
            f"| {statistics.median(run.messages_per_member_second for run in group):.2f} "
            f"| {statistics.median(run.wall_s for run in group):.1f} |"
        )
    return lines


def false_positive_table(runs: Sequence[FalsePositiveRun]) -> list[str]:
    """Markdown: one row per (N, condition), Lifeguard off vs on summed over the same seeds."""
    lines = [
        "| N | condition | seeds x sim s | false deaths off | false deaths on | deaths off / on "
        "| suspect events off (episodes) | suspect events on (episodes) | suspect events off / on "
        "| about healthy members off / on | about the slow member off / on | messages / member / s off / on "
        "| wall per run (s) |",
        "|--:|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    groups = sorted({(run.nodes, run.condition) for run in runs})
    for nodes, condition in groups:
        off = [run for run in runs if (run.nodes, run.condition, run.lifeguard) == (nodes, condition, False)]
        on = [run for run in runs if (run.nodes, run.condition, run.lifeguard) == (nodes, condition, True)]
        assert sorted(run.seed for run in off) == sorted(run.seed for run in on)  # same seeds

        def total(group: list[FalsePositiveRun], *names: str) -> int:
            return sum(getattr(run, name) for run in group for name in names)

        deaths_off = total(off, "deaths_healthy", "deaths_slow")
        deaths_on = total(on, "deaths_healthy", "deaths_slow")
        suspicions_off = total(off, "suspicions_healthy", "suspicions_slow")
        suspicions_on = total(on, "suspicions_healthy", "suspicions_slow")
        slow = (
            f"{total(off, 'suspicions_slow')} / {total(on, 'suspicions_slow')}" if condition == "slow" else "—"
        )
        healthy_off = total(off, "suspicions_healthy")
        healthy_on = total(on, "suspicions_healthy")
        label = "10% loss" if condition == "loss" else "one slow member"
        duration_s = off[0].duration_ms // 1000 if off else 0
        lines.append(
            f"| {nodes:,} | {label} | {len(off)} x {duration_s} "
            f"| {deaths_off} ({total(off, 'dead_lives')}) | {deaths_on} ({total(on, 'dead_lives')}) "
            f"| {_ratio(deaths_off, deaths_on)} "
            f"| {suspicions_off} ({total(off, 'suspected_lives')}) | {suspicions_on} ({total(on, 'suspected_lives')}) "
            f"| {_ratio(suspicions_off, suspicions_on)} "
            f"| {healthy_off} / {healthy_on} ({_ratio(healthy_off, healthy_on)}) | {slow} "
            f"| {statistics.median(r.messages_per_member_second for r in off):.2f} / "
            f"{statistics.median(r.messages_per_member_second for r in on):.2f} "
            f"| {statistics.median(r.wall_s for r in off + on):.1f} |"
        )
    return lines


# -- plots ----------------------------------------------------------------------------------------


def plot_dissemination(runs: Sequence[CrashRun], path: Path) -> None:
    """Time to all-know (and the first -> all spread) vs N, log x, with a c * ln N reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for lifeguard, marker in ((True, "o"), (False, "s")):
        complete = [run for run in runs if run.lifeguard == lifeguard and run.all_ms is not None]
        sizes = sorted({run.nodes for run in complete})
        if not sizes:
            continue
        name = "Lifeguard " + ("on" if lifeguard else "off")
        all_know = [statistics.median(r.all_ms / 1000 for r in complete if r.nodes == n and r.all_ms) for n in sizes]
        spread = [
            statistics.median((r.spread_ms or 0) / 1000 for r in complete if r.nodes == n) for n in sizes
        ]
        axes.plot(sizes, all_know, marker=marker, label=f"crash → all know ({name})")
        axes.plot(sizes, spread, marker=marker, linestyle="--", label=f"first → all know ({name})")
    on_sizes = sorted({run.nodes for run in runs if run.lifeguard and run.spread_ms is not None})
    if on_sizes:
        smallest = on_sizes[0]
        anchor = statistics.median(
            (r.spread_ms or 0) / 1000 for r in runs if r.lifeguard and r.nodes == smallest and r.spread_ms is not None
        )
        scale = anchor / math.log(smallest)
        grid = [10 ** (k / 10) for k in range(10, 41)]
        axes.plot(grid, [scale * math.log(n) for n in grid], color="grey", linestyle=":",
                  label=f"reference c · ln N (fit to first → all at N={smallest})")
    axes.set_xscale("log")
    axes.set_xlabel("members N")
    axes.set_ylabel("seconds after the crash / after the first declaration")
    axes.set_title("Crash dissemination (simulated, sim profile, median over seeds)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_false_positives(runs: Sequence[FalsePositiveRun], path: Path) -> None:
    """Bars: false deaths and false suspicions, Lifeguard off vs on, per (N, condition)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(run.nodes, run.condition) for run in runs})
    labels = [f"N={nodes}\n{'10% loss' if condition == 'loss' else 'slow member'}" for nodes, condition in groups]
    figure, (deaths_axes, suspicions_axes) = plt.subplots(1, 2, figsize=(11, 4.5))
    width = 0.38
    for axes, names, title in (
        (deaths_axes, ("deaths_healthy", "deaths_slow"), "false deaths (dead events about up members)"),
        (suspicions_axes, ("suspicions_healthy", "suspicions_slow"), "false suspicions (suspect events)"),
    ):
        for offset, lifeguard in ((-width / 2, False), (width / 2, True)):
            values = [
                sum(getattr(run, name) for run in runs
                    if (run.nodes, run.condition, run.lifeguard) == (*group, lifeguard) for name in names)
                for group in groups
            ]
            positions = [index + offset for index in range(len(groups))]
            bars = axes.bar(positions, [max(value, 0.5) for value in values], width,
                            label="Lifeguard " + ("on" if lifeguard else "off"))
            for bar, value in zip(bars, values, strict=True):
                axes.annotate(str(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                              ha="center", va="bottom", fontsize=7)
        axes.set_yscale("log")
        axes.set_xticks(range(len(groups)))
        axes.set_xticklabels(labels, fontsize=8)
        axes.set_title(title, fontsize=10)
        axes.legend(fontsize=8)
    figure.suptitle("False positives, same seeds, summed over seeds (log scale; 0 drawn as 0.5)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# -- main -------------------------------------------------------------------------------------------


def parse_settings(argv: list[str]) -> Settings:
    """Settings from the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,1000,10000", help="comma-separated cluster sizes ('' for none)")
    parser.add_argument("--seeds", type=int, default=5, help=f"seeds per measurement for N <= {SMALL_NODES_MAX}")
    parser.add_argument("--seeds-large", type=int, default=2,
                        help=f"seeds for {SMALL_NODES_MAX} < N <= {LARGE_NODES_MAX} (larger N: 1)")
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--profile", default="sim", help="membership profile (sim = lan with shorter retention)")
    parser.add_argument("--warmup-ms", type=int, default=10_000, help="simulated time before the crash")
    parser.add_argument("--detect-ms-max", type=int, default=180_000, help="give up waiting for all to know after this")
    parser.add_argument("--fp-duration-ms", type=int, default=60_000, help="simulated time of each false-positive run")
    parser.add_argument("--fp-duration-ms-large", type=int, default=20_000,
                        help=f"simulated time of each false-positive run above N={SMALL_NODES_MAX}")
    parser.add_argument("--slow-ms", default="300-1000", help="slow member's extra delay per direction, MIN-MAX ms")
    parser.add_argument("--audit", action="store_true", help="keep the persist-before-send audit on (slower)")
    parser.add_argument("--crash-only", action="store_true", help="skip the false-positive runs")
    parser.add_argument("--skip-crash", action="store_true", help="skip the crash-dissemination runs")
    parser.add_argument("--plot-dir", default="docs", help="where membership_*.png go ('' for none)")
    parser.add_argument("--markdown", default="", help="also write the tables to this file")
    parser.add_argument("--save-json", default="", help="write every run's numbers to this file")
    parser.add_argument("--load-json", nargs="*", default=[],
                        help="add the runs saved in these files (with --sizes '' to only merge and plot)")
    arguments = parser.parse_args(argv)
    low, _, high = arguments.slow_ms.partition("-")
    settings = Settings(
        sizes=[int(size) for size in arguments.sizes.split(",") if size],
        seeds=arguments.seeds,
        seeds_large=arguments.seeds_large,
        first_seed=arguments.first_seed,
        profile=arguments.profile,
        warmup_ms=arguments.warmup_ms,
        detect_ms_max=arguments.detect_ms_max,
        fp_duration_ms=arguments.fp_duration_ms,
        fp_duration_ms_large=arguments.fp_duration_ms_large,
        slow_ms_min=int(low),
        slow_ms_max=int(high or low),
        audit=arguments.audit,
        crash_only=arguments.crash_only,
        skip_crash=arguments.skip_crash,
        plot_dir=Path(arguments.plot_dir) if arguments.plot_dir else None,
        markdown=Path(arguments.markdown) if arguments.markdown else None,
        save_json=Path(arguments.save_json) if arguments.save_json else None,
        load_json=[Path(name) for name in arguments.load_json],
        argv=argv,
    )
    MembershipConfig.named(settings.profile)  # ValueError names the profiles
    if any(size < 2 for size in settings.sizes):
        parser.error("--sizes must all be >= 2")
    if settings.warmup_ms <= STEADY_START_MS:
        parser.error(f"--warmup-ms must be above {STEADY_START_MS}")
    if not 0 <= settings.slow_ms_min <= settings.slow_ms_max:
        parser.error("--slow-ms must be MIN-MAX with 0 <= MIN <= MAX")
    return settings


def log(line: str) -> None:
    """Progress to stderr, flushed (runs take minutes)."""
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run every measurement, print the tables, write the plots."""
    settings = parse_settings(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    config = MembershipConfig.named(settings.profile)
    log(f"profile {settings.profile}: probe_interval_ms={config.probe_interval_ms} "
        f"probe_timeout_ms={config.probe_timeout_ms} gossip_interval_ms={config.gossip_interval_ms} "
        f"gossip_nodes={config.gossip_nodes} suspicion_mult={config.suspicion_mult}")
    crash_runs: list[CrashRun] = []
    fp_runs: list[FalsePositiveRun] = []
    for path in settings.load_json:
        saved = json.loads(path.read_text())
        crash_runs += [CrashRun(**run) for run in saved["crash"]]
        fp_runs += [FalsePositiveRun(**run) for run in saved["false_positives"]]
    failures: list[str] = []
    for nodes in settings.sizes:
        seeds = settings.seeds_for(nodes)
        modes = (True, False) if nodes <= LARGE_NODES_MAX else (True,)
        for seed in [] if settings.skip_crash else seeds:
            for lifeguard in modes:
                try:
                    run = run_crash(settings, nodes, seed, lifeguard=lifeguard)
                except SimulationFailure as failure:
                    failures.append(f"crash N={nodes} seed={seed} lifeguard={lifeguard}: {failure}\n"
                                    f"  bench replay: {replay_hint(settings, nodes, seed, 'crash')}")
                    log(failures[-1])
                    continue
                crash_runs.append(run)
                log(f"crash N={nodes} seed={seed} lifeguard={'on' if lifeguard else 'off'} victim=n{run.victim}: "
                    f"first {run.first_ms} ms, all {run.all_ms} ms ({run.declared}/{nodes - 1} declared), "
                    f"spread {run.spread_rounds} rounds, {run.messages_per_member_second:.2f} msg/member/s, "
                    f"wall {run.wall_s:.1f} s")
        if settings.crash_only or nodes > LARGE_NODES_MAX:
            continue
        for condition in ("loss", "slow"):
            for seed in seeds:
                for lifeguard in (False, True):
                    try:
                        fp = run_false_positives(settings, nodes, seed, lifeguard=lifeguard, condition=condition)
                    except SimulationFailure as failure:
                        failures.append(f"{condition} N={nodes} seed={seed} lifeguard={lifeguard}: {failure}\n"
                                        f"  bench replay: {replay_hint(settings, nodes, seed, condition)}")
                        log(failures[-1])
                        continue
                    fp_runs.append(fp)
                    log(f"{condition} N={nodes} seed={seed} lifeguard={'on' if lifeguard else 'off'}: "
                        f"healthy {fp.suspicions_healthy} suspicions / {fp.deaths_healthy} deaths, "
                        f"episodes {fp.suspected_lives} suspected / {fp.dead_lives} dead, "
                        f"slow member {fp.suspicions_slow} / {fp.deaths_slow}, "
                        f"{fp.messages_per_member_second:.2f} msg/member/s, wall {fp.wall_s:.1f} s")
    if settings.save_json is not None:
        settings.save_json.write_text(json.dumps({
            "command": settings.command(),
            "crash": [dataclasses.asdict(run) for run in crash_runs],
            "false_positives": [dataclasses.asdict(run) for run in fp_runs],
        }, indent=1))
    lines = [f"Command: `{settings.command()}`", ""]
    lines += ["Crash dissemination (medians over seeds):", "", *crash_table(crash_runs), ""]
    if fp_runs:
        lines += ["False positives (sums over seeds):", "", *false_positive_table(fp_runs), ""]
    lines.append(f"Total wall time: {time.perf_counter() - started:.0f} s")
    if failures:
        lines += ["", "FAILURES:", *failures]
    text = "\n".join(lines)
    print(text)
    if settings.markdown is not None:
        settings.markdown.write_text(text + "\n")
    if settings.plot_dir is not None:
        settings.plot_dir.mkdir(parents=True, exist_ok=True)
        if crash_runs:
            plot_dissemination(crash_runs, settings.plot_dir / "membership_dissemination.png")
        if fp_runs:
            plot_false_positives(fp_runs, settings.plot_dir / "membership_false_positives.png")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
