"""Word count with moot's MapReduce against one process, multiprocessing.Pool(2), a Dask bag and Ray.

    .venv/bin/pip install ray "dask[distributed]"     # once; a missing system is skipped
    .venv/bin/python bench/mapreduce_compare.py [--mb 200] [--corpus DIR] [--only moot ...] [--repeat 3]

The issue's benchmark: a Zipf-distributed corpus (``bench/zipf_text.py``:
64 files, fixed seed, made once and reused) counted by every system the same
way — a word is what ``str.split()`` returns on a line — and every answer
must equal the single process's. moot: a 3-node ``LocalFederation`` (one
worker process per node), ``client.map_reduce`` with a combiner and its
default split size, once undisturbed and once with a node (not the leader,
not the client's) SIGKILLed halfway through the map phase. Every system runs
once a round, ``--repeat`` rounds (this machine's speed drifts by tens of
percent over minutes); reports the median seconds, MB/s and each system's
ratio to ``Pool(2)``. Nothing here asserts on speed: a benchmark informs.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zipf_text import make_corpus

WORKERS = 2
PARTITIONS = 8


def count_file(path: str) -> collections.Counter[str]:
    counter: collections.Counter[str] = collections.Counter()
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            counter.update(line.split())
    return counter


def count_lines(lines: Iterator[str]) -> collections.Counter[str]:
    """moot's whole-split mapper: the same loop as count_file."""
    counter: collections.Counter[str] = collections.Counter()
    for line in lines:
        counter.update(line.split())
    return counter


def words(line: str) -> Iterator[tuple[str, int]]:
    for word in line.split():
        yield word, 1


def total(word: str, counts: list[int]) -> int:
    return sum(counts)


@dataclass(slots=True)
class Result:
    system: str
    seconds: float
    answer: dict[str, int]
    killed_seconds: float | None = None
    notes: list[str] = field(default_factory=list)


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def run_single(paths: list[str]) -> Result:
    def count() -> dict[str, int]:
        counter: collections.Counter[str] = collections.Counter()
        for path in paths:
            counter.update(count_file(path))
        return dict(counter)

    seconds, answer = timed(count)
    return Result("one process", seconds, answer)


def run_pool(paths: list[str]) -> Result:
    def count() -> dict[str, int]:
        with multiprocessing.get_context("forkserver").Pool(WORKERS) as pool:
            counter: collections.Counter[str] = collections.Counter()
            for part in pool.imap_unordered(count_file, paths):
                counter.update(part)
            return dict(counter)

    seconds, answer = timed(count)
    return Result(f"multiprocessing.Pool({WORKERS})", seconds, answer)


def run_dask(paths: list[str]) -> Result | None:
    try:
        import dask.bag as bag
    except ImportError:
        return None

    def count() -> dict[str, int]:
        lines = bag.read_text(paths)  # a partition per file, Dask's default
        return dict(lines.map(str.split).flatten().frequencies().compute(scheduler="processes", num_workers=WORKERS))

    seconds, answer = timed(count)
    return Result(f"Dask bag (processes, {WORKERS} workers)", seconds, answer)


def run_ray(paths: list[str]) -> Result | None:
    try:
        import ray
    except ImportError:
        return None
    ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
    try:
        remote_count = ray.remote(count_file)
        ray.get(remote_count.remote(paths[0]))  # warm the workers

        def count() -> dict[str, int]:
            counter: collections.Counter[str] = collections.Counter()
            for part in ray.get([remote_count.remote(path) for path in paths]):
                counter.update(part)
            return dict(counter)

        seconds, answer = timed(count)
    finally:
        ray.shutdown()
    return Result(f"Ray local (num_cpus={WORKERS})", seconds, answer)


def run_moot(paths: list[str]) -> Result:
    return _run_moot(paths, whole_split=False)


def run_moot_split(paths: list[str]) -> Result:
    return _run_moot(paths, whole_split=True)


def run_moot_split_2(paths: list[str]) -> Result:
    return _run_moot(paths, whole_split=True, workers=WORKERS)


def _run_moot(paths: list[str], *, whole_split: bool, workers: int = 3) -> Result:
    import cloudpickle

    from moot.client.local import LocalFederation
    from moot.client.mapreduce import RunStats

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    mapper: Callable[..., Any] = count_lines if whole_split else words
    options: dict[str, Any] = {"combiner": total, "partitions": PARTITIONS, "whole_split": whole_split}
    # workers=2: node 0 (the founder, the client's) runs no worker, as Ray
    # advises for a head node: 2 worker processes, like the other systems.
    node_args = {0: ("--cpus", "0")} if workers == 2 else {}
    with LocalFederation(3, node_args=node_args) as federation:
        client = federation.client()
        client.map_reduce(paths[:1], mapper, total, **options)  # warm the workers
        stats = RunStats()
        seconds, answer = timed(
            lambda: client.map_reduce(paths, mapper, total, stats=stats, **options)
        )
        name = "moot map_reduce, whole-split mapper" if whole_split else "moot map_reduce, per-line mapper"
        result = Result(f"{name} (3 nodes, {workers} workers)", seconds, answer)
        result.notes.append(
            f"undisturbed: {stats.splits} maps {stats.map_seconds:.1f}s, {stats.partitions} reduces "
            f"{stats.reduce_seconds:.1f}s, {stats.backups} backups"
        )
        leader = federation.leader()
        victim = next(index for index in (2, 1) if index != leader)
        killed: list[float] = []

        def kill_halfway(phase: str, done: int, count: int) -> None:
            if phase == "map" and not killed and done >= count // 2:
                federation.kill(victim)
                killed.append(time.perf_counter())

        stats = RunStats()
        killed_seconds, killed_answer = timed(
            lambda: client.map_reduce(
                paths, mapper, total, progress=kill_halfway, stats=stats, **options
            )
        )
        result.killed_seconds = killed_seconds
        if killed_answer != answer:
            result.notes.append("the run with a node killed gave a DIFFERENT answer")
        rerun = sum(job.reruns for job in client.jobs())
        result.notes.append(
            f"node {victim} killed halfway through the maps: {killed_seconds:.1f}s, tasks run again {rerun}, "
            f"maps re-run for lost outputs {stats.maps_re_executed}, backups {stats.backups}"
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mb", type=float, default=200)
    parser.add_argument("--corpus", type=Path, default=Path(tempfile.gettempdir()) / "moot-zipf-corpus")
    parser.add_argument("--only", action="append", default=[], choices=["single", "pool", "dask", "ray", "moot", "moot-split", "moot-split-2"])
    parser.add_argument("--repeat", type=int, default=3, help="rounds, every system once a round; medians reported")
    options = parser.parse_args(argv)
    print(f"# {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"# {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}")
    started = time.perf_counter()
    paths = [str(path) for path in make_corpus(options.corpus, megabytes=options.mb)]
    megabytes = sum(os.path.getsize(path) for path in paths) / 1e6
    print(f"corpus: {len(paths)} files, {megabytes:.1f} MB ({time.perf_counter() - started:.1f}s to make or find)")
    runners: list[tuple[str, Callable[[list[str]], Result | None]]] = [
        ("single", run_single),
        ("pool", run_pool),
        ("dask", run_dask),
        ("ray", run_ray),
        ("moot", run_moot),
        ("moot-split", run_moot_split),
        ("moot-split-2", run_moot_split_2),
    ]
    # Rounds, each system once a round: this machine's speed drifts by tens
    # of percent over minutes, so every system sees the same drift.
    runs: dict[str, list[Result]] = {}
    for round_number in range(1, options.repeat + 1):
        for name, runner in runners:
            if options.only and name not in options.only and name != "single":
                continue
            print(f"round {round_number}: {name} ...", flush=True)
            outcome = runner(paths)
            if outcome is None:
                print(f"  {name}: not installed, skipped", flush=True)
                continue
            print(f"  {outcome.system}: {outcome.seconds:.2f}s {'; '.join(outcome.notes)}", flush=True)
            runs.setdefault(outcome.system, []).append(outcome)
    reference = next(iter(runs.values()))[0].answer
    seconds = {system: statistics.median(r.seconds for r in results) for system, results in runs.items()}
    pool = next((value for system, value in seconds.items() if system.startswith("multiprocessing")), None)
    print()
    print(f"Medians of {options.repeat} rounds (range in brackets):")
    print()
    # Each round's ratio too: a round's runs are minutes apart, not the
    # rounds' (the median of ratios is steadier than the ratio of medians).
    pool_runs = next((results for system, results in runs.items() if system.startswith("multiprocessing")), None)
    print("| system | seconds | MB/s | / Pool(2) | / Pool(2) a round, median | same answer | one node killed s | killed / clean |")
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for system, results in runs.items():
        median = seconds[system]
        spread = f" ({min(r.seconds for r in results):.2f}-{max(r.seconds for r in results):.2f})" if len(results) > 1 else ""
        ratio = f"{pool / median:.2f}x" if pool is not None else "-"
        killed_runs = [r.killed_seconds for r in results if r.killed_seconds is not None]
        killed = statistics.median(killed_runs) if killed_runs else None
        killed_text = f"{killed:.2f}" if killed is not None else "-"
        slowdown = f"{killed / median:.2f}x" if killed is not None else "-"
        same = "yes" if all(r.answer == reference for r in results) else "**NO**"
        by_round = (
            f"{statistics.median(p.seconds / r.seconds for p, r in zip(pool_runs, results, strict=False)):.2f}x"
            if pool_runs
            else "-"
        )
        print(
            f"| {system} | {median:.2f}{spread} | {megabytes / median:.1f} | {ratio} | {by_round} | {same} "
            f"| {killed_text} | {slowdown} |"
        )
    for system, results in runs.items():
        for result in results:
            for note in result.notes:
                print(f"- {system}: {note}")
    return 0 if all(r.answer == reference for results in runs.values() for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
