"""moot's durable tasks against ProcessPoolExecutor, Dask and Ray, side by side, on 127.0.0.1.

    .venv/bin/pip install ray "dask[distributed]"     # once; a missing system is skipped
    .venv/bin/python bench/tasks_compare.py [--tasks 10000] [--quick]

The issue's benchmark, one system at a time on the same machine:

1. **Throughput**: ``--tasks`` no-op tasks (default 10,000), submitted all at
   once, then gathered. moot: a 3-node federation (``LocalFederation(3)``,
   one worker process per node), both as one ``client.map`` (one job) and
   as a loop of ``client.submit`` (one job each); every task is in the Raft
   log before it runs and every result is committed there. Against
   ``ProcessPoolExecutor(2)`` (``map``), Dask ``LocalCluster(n_workers=2,
   threads_per_worker=1)`` (``client.map(pure=False)`` + ``gather``) and Ray
   local (``ray.init(num_cpus=2)``, ``f.remote`` per task + ``ray.get``).
2. **Round trip**: the median of ``LATENCY_SAMPLES`` sequential
   submit-then-result calls of a no-op task.
3. **A worker dies**: ``SLEEP_TASKS`` tasks of ``SLEEP_S`` each, once
   undisturbed and once with one worker killed (SIGKILL) when a quarter
   of them are done; the extra time is the cost of the loss. moot kills a
   whole node (not the leader, not the client's node); Dask and Ray kill
   one worker process; ProcessPoolExecutor cannot survive it (reported).

Nothing here asserts on speed: a benchmark informs, it does not gate.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASKS_DEFAULT = 10_000
LATENCY_SAMPLES = 200
SLEEP_TASKS = 200
SLEEP_S = 0.05
KILL_AT_FRACTION = 0.25
WORKERS = 2


def noop(x: int) -> None:
    return None


def sleep_task(x: int) -> int:
    time.sleep(SLEEP_S)
    return x


@dataclass(slots=True)
class Result:
    system: str
    throughput: dict[str, float] = field(default_factory=dict)  # label -> tasks/s
    latency_ms: float | None = None
    sleep_clean_s: float | None = None
    sleep_killed_s: float | None = None
    notes: list[str] = field(default_factory=list)


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def wait_fraction(
    futures: list[Any], fraction: float, done: Callable[[Any], bool], deadline_s: float = 120
) -> None:
    deadline = time.monotonic() + deadline_s
    while sum(1 for f in futures if done(f)) < fraction * len(futures):
        if time.monotonic() > deadline:
            raise RuntimeError("the job did not progress")
        time.sleep(0.005)  # polling the futures with a deadline


# -- moot -------------------------------------------------------------------------------


def run_moot(tasks: int) -> Result:
    import cloudpickle

    import moot
    from moot.client.local import LocalFederation

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    result = Result("moot (3 nodes, durable)")
    with LocalFederation(3) as federation:
        client = federation.client()
        client.gather(client.map(noop, range(100)))  # warm: workers, function caches
        result.throughput["map"] = tasks / timed(
            lambda: client.gather(client.map(noop, range(tasks)))
        )
        try:
            result.throughput["submit loop"] = tasks / timed(
                lambda: client.gather([client.submit(noop, i) for i in range(tasks)])
            )
        except moot.MootError as error:
            result.notes.append(f"submit loop failed: {type(error).__name__}: {error}")
        samples = []
        for i in range(LATENCY_SAMPLES):
            samples.append(timed(lambda i=i: client.submit(noop, i).result()))  # type: ignore[misc]
        result.latency_ms = statistics.median(samples) * 1000
        result.sleep_clean_s = timed(
            lambda: client.gather(client.map(sleep_task, range(SLEEP_TASKS)))
        )
        leader = federation.leader()
        victim = next(
            i
            for i in range(3)
            if i != leader and federation.addresses[i] not in client.addresses[:1]
        )
        with moot.connect(
            [a for i, a in enumerate(federation.addresses) if i != victim],
            cluster=federation.cluster_dir,
        ) as survivor_client:
            started = time.perf_counter()
            futures = survivor_client.map(sleep_task, range(SLEEP_TASKS))
            wait_fraction(futures, KILL_AT_FRACTION, lambda f: f.done())
            federation.kill(victim)
            values = survivor_client.gather(futures)
            result.sleep_killed_s = time.perf_counter() - started
            assert values == list(range(SLEEP_TASKS))
            summary = survivor_client.job(futures[0].job_id).status()
            result.notes.append(
                f"node {victim} killed mid-job: {summary.commits} results committed once each, "
                f"{summary.duplicates} duplicates discarded"
            )
    return result


# -- ProcessPoolExecutor ---------------------------------------------------------------


def run_process_pool(tasks: int) -> Result:
    result = Result(f"ProcessPoolExecutor({WORKERS})")
    with concurrent.futures.ProcessPoolExecutor(WORKERS) as pool:
        list(pool.map(noop, range(100)))
        result.throughput["map"] = tasks / timed(lambda: list(pool.map(noop, range(tasks))))
        result.throughput["submit loop"] = tasks / timed(
            lambda: [f.result() for f in [pool.submit(noop, i) for i in range(tasks)]]
        )
        samples = [timed(lambda i=i: pool.submit(noop, i).result()) for i in range(LATENCY_SAMPLES)]  # type: ignore[misc]
        result.latency_ms = statistics.median(samples) * 1000
        result.sleep_clean_s = timed(lambda: list(pool.map(sleep_task, range(SLEEP_TASKS))))
    pool = concurrent.futures.ProcessPoolExecutor(WORKERS)
    try:
        futures = [pool.submit(sleep_task, i) for i in range(SLEEP_TASKS)]
        wait_fraction(futures, KILL_AT_FRACTION, lambda f: f.done())
        victim = next(iter(pool._processes))
        os.kill(victim, signal.SIGKILL)
        try:
            [f.result() for f in futures]
            result.notes.append("survived a worker kill (unexpected)")
        except concurrent.futures.process.BrokenProcessPool:
            result.notes.append(
                "a killed worker breaks the pool: every pending future fails (BrokenProcessPool)"
            )
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return result


# -- Dask -----------------------------------------------------------------------------


def run_dask(tasks: int) -> Result | None:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        return None
    result = Result(f"Dask LocalCluster({WORKERS} workers x 1 thread)")
    cluster = LocalCluster(
        n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with cluster, Client(cluster) as client:
        client.gather(client.map(noop, range(100), pure=False))
        result.throughput["map"] = tasks / timed(
            lambda: client.gather(client.map(noop, range(tasks), pure=False))
        )
        result.throughput["submit loop"] = tasks / timed(
            lambda: client.gather([client.submit(noop, i, pure=False) for i in range(tasks)])
        )
        samples = [
            timed(lambda i=i: client.submit(noop, i, pure=False).result())
            for i in range(LATENCY_SAMPLES)
        ]  # type: ignore[misc]
        result.latency_ms = statistics.median(samples) * 1000
        result.sleep_clean_s = timed(
            lambda: client.gather(client.map(sleep_task, range(SLEEP_TASKS), pure=False))
        )
        started = time.perf_counter()
        futures = client.map(sleep_task, range(SLEEP_TASKS), pure=False)
        wait_fraction(futures, KILL_AT_FRACTION, lambda f: f.done())
        pids = client.run(os.getpid)
        os.kill(next(iter(pids.values())), signal.SIGKILL)
        values = client.gather(futures)
        result.sleep_killed_s = time.perf_counter() - started
        assert sorted(values) == list(range(SLEEP_TASKS))
    return result


# -- Ray ---------------------------------------------------------------------------------


def run_ray(tasks: int) -> Result | None:
    try:
        import ray
    except ImportError:
        return None
    result = Result(f"Ray local (num_cpus={WORKERS})")
    ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
    try:
        remote_noop = ray.remote(noop)
        remote_sleep = ray.remote(max_retries=3)(sleep_task)
        ray.get([remote_noop.remote(i) for i in range(100)])
        result.throughput["submit loop"] = tasks / timed(
            lambda: ray.get([remote_noop.remote(i) for i in range(tasks)])
        )
        samples = [
            timed(lambda i=i: ray.get(remote_noop.remote(i))) for i in range(LATENCY_SAMPLES)
        ]  # type: ignore[misc]
        result.latency_ms = statistics.median(samples) * 1000
        result.sleep_clean_s = timed(
            lambda: ray.get([remote_sleep.remote(i) for i in range(SLEEP_TASKS)])
        )
        started = time.perf_counter()
        refs = [remote_sleep.remote(i) for i in range(SLEEP_TASKS)]
        ready_needed = int(KILL_AT_FRACTION * SLEEP_TASKS)
        ray.wait(refs, num_returns=ready_needed, timeout=120)
        victim = _a_ray_worker_pid()
        if victim is not None:
            os.kill(victim, signal.SIGKILL)
        values = ray.get(refs)
        result.sleep_killed_s = time.perf_counter() - started
        assert values == list(range(SLEEP_TASKS))
        if victim is None:
            result.notes.append("no Ray worker process found to kill")
    finally:
        ray.shutdown()
    return result


def _a_ray_worker_pid() -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            if b"ray::" in command and b"sleep_task" in command:
                return int(entry.name)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            if command.startswith(b"ray::"):
                return int(entry.name)
    return None


# -- output -----------------------------------------------------------------------------


def table(results: list[Result], tasks: int) -> str:
    moot = next((r for r in results if r.system.startswith("moot")), None)
    best_moot = max(moot.throughput.values()) if moot else None
    lines = [
        f"| system | {tasks:,} no-op tasks/s: map | submit loop | moot best / this | round trip ms | "
        f"{SLEEP_TASKS} x {SLEEP_S * 1000:.0f} ms: clean s | one worker killed s | extra s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        best = max(r.throughput.values()) if r.throughput else None
        ratio = f"{best_moot / best:.2f}x" if best and best_moot and r is not moot else "-"
        extra = (
            f"{r.sleep_killed_s - r.sleep_clean_s:+.2f}"
            if r.sleep_killed_s is not None and r.sleep_clean_s is not None
            else "fails"
        )
        lines.append(
            f"| {r.system} | {r.throughput.get('map', float('nan')):,.0f} | {r.throughput.get('submit loop', float('nan')):,.0f} | "
            f"{ratio} | {r.latency_ms or float('nan'):.2f} | {r.sleep_clean_s or float('nan'):.2f} | "
            f"{'-' if r.sleep_killed_s is None else f'{r.sleep_killed_s:.2f}'} | {extra} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=TASKS_DEFAULT)
    parser.add_argument("--quick", action="store_true", help="1,000 tasks")
    parser.add_argument(
        "--only", action="append", default=[], choices=["moot", "pool", "dask", "ray"]
    )
    options = parser.parse_args(argv)
    tasks = 1000 if options.quick else options.tasks
    print(f"# {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"# {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}, load {os.getloadavg()[0]:.1f}"
    )
    runners: list[tuple[str, Callable[[int], Result | None]]] = [
        ("moot", run_moot),
        ("pool", run_process_pool),
        ("dask", run_dask),
        ("ray", run_ray),
    ]
    results: list[Result] = []
    for name, runner in runners:
        if options.only and name not in options.only:
            continue
        print(f"{name} ...", flush=True)
        with tempfile.TemporaryDirectory():
            outcome = runner(tasks)
        if outcome is None:
            print(f"  {name}: not installed, skipped", flush=True)
            continue
        print(f"  {outcome}", flush=True)
        results.append(outcome)
    print()
    print(table(results, tasks))
    for r in results:
        for note in r.notes:
            print(f"- {r.system}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
