"""The worker pool on real worker processes: outcomes, crashes, timeouts, limits, cleanup.

Task functions live at module level, so cloudpickle sends them by reference
and the worker's tracebacks show their source lines.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import pickle
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import cloudpickle
import pytest

from moot.runtime.worker_pool import (
    Outcome,
    PoolClosed,
    PoolQueueFull,
    RemoteError,
    RemoteTraceback,
    TaskTimedOut,
    UnpicklableTask,
    WorkerCrashed,
    WorkerPool,
    pack_arguments,
    pack_call,
    unpack_result,
)

# Generous: this suite runs on a loaded 2-core CI box.
WAIT_S_MAX = 10.0


# -- tasks (run in the workers) -----------------------------------------------------


def add(a: int, b: int) -> int:
    return a + b


def fail_with_value_error(text: str) -> None:
    raise ValueError(f"bad input: {text}")  # the raising line


def segfault() -> None:
    ctypes.string_at(0)


def exit_hard(code: int) -> None:
    os._exit(code)


def sleep_then_return(seconds: float) -> tuple[float, float]:
    started = time.time()
    time.sleep(seconds)
    return started, time.time()


def allocate(byte_count: int) -> int:
    return len(bytearray(byte_count))


def getpid() -> int:
    return os.getpid()


class _UnpicklableError(Exception):
    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def fail_with_unpicklable_error() -> None:
    raise _UnpicklableError()


# -- helpers --------------------------------------------------------------------------


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds, failing after ``WAIT_S_MAX``."""
    deadline = time.monotonic() + WAIT_S_MAX
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def process_exists(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"


def grandchildren() -> list[int]:
    """Processes whose parent is one of our children (forkserver workers, say)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    children = {pid for pid, parent in parents.items() if parent == os.getpid()}
    return sorted(pid for pid, parent in parents.items() if parent in children)


@pytest.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    async with WorkerPool(2) as started:
        yield started


async def run(pool: WorkerPool, fn: Callable[..., object], *args: object, **kw: float) -> Outcome:
    timeout_s = kw.pop("timeout_s", None)
    return await pool.run(fn.__name__, pack_call(fn, args), timeout_s=timeout_s)


# -- outcomes ---------------------------------------------------------------------------


async def test_ok_result_round_trips(pool: WorkerPool) -> None:
    outcome = await run(pool, add, 2, 40)
    assert outcome.kind == "ok"
    assert unpack_result(outcome) == 42
    assert outcome.worker_pid in pool.worker_pids()
    assert outcome.exit_code is None
    stats = pool.stats()
    assert (stats.completed, stats.running, stats.idle, stats.started) == (1, 0, 2, 2)


async def test_user_exception_carries_the_remote_traceback(pool: WorkerPool) -> None:
    pid_before = pool.worker_pids()
    outcome = await run(pool, fail_with_value_error, "x")
    assert outcome.kind == "error"
    assert outcome.error_type == "ValueError"
    assert outcome.error_message == "bad input: x"
    assert "in fail_with_value_error" in outcome.traceback
    assert 'raise ValueError(f"bad input: {text}")  # the raising line' in outcome.traceback
    with pytest.raises(ValueError, match="bad input: x") as raised:
        unpack_result(outcome)
    assert isinstance(raised.value.__cause__, RemoteTraceback)
    assert "the raising line" in str(raised.value.__cause__)
    assert pool.worker_pids() == pid_before, "a user exception does not cost the worker"


async def test_unpicklable_exception_becomes_remote_error(pool: WorkerPool) -> None:
    outcome = await run(pool, fail_with_unpicklable_error)
    assert (outcome.kind, outcome.error_type, outcome.exception) == (
        "error",
        "_UnpicklableError",
        b"",
    )
    with pytest.raises(RemoteError, match="_UnpicklableError: holds a lock") as raised:
        unpack_result(outcome)
    assert "fail_with_unpicklable_error" in raised.value.traceback


# -- crashes ---------------------------------------------------------------------------


async def test_segfault_is_a_crash_and_the_worker_is_replaced(pool: WorkerPool) -> None:
    outcome = await run(pool, segfault)
    assert outcome.kind == "crashed"
    assert outcome.exit_code == -signal.SIGSEGV
    assert "SIGSEGV" in outcome.error_message
    with pytest.raises(WorkerCrashed):
        unpack_result(outcome)
    await wait_until(lambda: pool.stats().idle == 2, "a replacement worker")
    assert outcome.worker_pid not in pool.worker_pids()
    assert not process_exists(outcome.worker_pid)
    # Both workers serve: two at once must use the two live pids.
    first, second = await asyncio.gather(run(pool, getpid), run(pool, getpid))
    assert {unpack_result(first), unpack_result(second)} == set(pool.worker_pids())
    stats = pool.stats()
    assert (stats.crashed, stats.started) == (1, 3)


async def test_os_exit_is_a_crash_with_its_exit_code(pool: WorkerPool) -> None:
    outcome = await run(pool, exit_hard, 3)
    assert (outcome.kind, outcome.exit_code) == ("crashed", 3)
    assert unpack_result(await run(pool, add, 1, 1)) == 2


async def test_sigkill_from_outside_is_a_crash() -> None:
    async with WorkerPool(1) as pool:
        [pid] = pool.worker_pids()
        running = asyncio.create_task(run(pool, sleep_then_return, 60))
        await wait_until(lambda: pool.stats().running == 1, "the task to start")
        os.kill(pid, signal.SIGKILL)
        outcome = await asyncio.wait_for(running, WAIT_S_MAX)
        assert (outcome.kind, outcome.exit_code, outcome.worker_pid) == ("crashed", -9, pid)
        assert unpack_result(await run(pool, getpid)) != pid


async def test_idle_worker_killed_from_outside_is_replaced(pool: WorkerPool) -> None:
    victim = pool.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    await wait_until(
        lambda: victim not in pool.worker_pids() and len(pool.worker_pids()) == 2,
        "the idle worker's replacement",
    )
    assert pool.stats().crashed == 1
    assert unpack_result(await run(pool, add, 1, 2)) == 3


# -- timeouts, memory, cancellation ----------------------------------------------------


async def test_timeout_kills_the_task_and_the_next_task_works(pool: WorkerPool) -> None:
    started = time.monotonic()
    outcome = await run(pool, sleep_then_return, 60, timeout_s=0.3)
    elapsed_s = time.monotonic() - started
    assert outcome.kind == "timeout"
    # time.sleep dies of the SIGTERM at once; the SIGKILL is for tasks that catch it.
    assert outcome.exit_code == -signal.SIGTERM
    assert elapsed_s < 0.3 + 2.0
    assert not process_exists(outcome.worker_pid)
    with pytest.raises(TaskTimedOut):
        unpack_result(outcome)
    assert unpack_result(await run(pool, add, 2, 2)) == 4
    assert pool.stats().timeouts == 1


async def test_memory_limit_gives_memory_outcome_and_a_fresh_worker() -> None:
    limit = 512 * 1024 * 1024
    async with WorkerPool(1, memory_limit_bytes=limit) as pool:
        [pid] = pool.worker_pids()
        assert unpack_result(await run(pool, allocate, 64 * 1024 * 1024)) == 64 * 1024 * 1024
        # RLIMIT_AS makes the allocation fail inside the task: a MemoryError.
        outcome = await run(pool, allocate, 4 * limit)
        assert (outcome.kind, outcome.error_type, outcome.exit_code) == (
            "memory",
            "MemoryError",
            None,
        )
        assert "allocate" in outcome.traceback
        assert unpack_result(await run(pool, getpid)) != pid, "replaced after a MemoryError"
        assert pool.stats().memory_errors == 1


async def test_cancelling_run_kills_the_worker_and_frees_the_slot() -> None:
    async with WorkerPool(1) as pool:
        [pid] = pool.worker_pids()
        running = asyncio.create_task(run(pool, sleep_then_return, 60))
        await wait_until(lambda: pool.stats().running == 1, "the task to start")
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        outcome = await asyncio.wait_for(run(pool, getpid), WAIT_S_MAX)
        assert unpack_result(outcome) != pid
        assert not process_exists(pid)


async def test_tasks_per_worker_max_recycles_workers() -> None:
    async with WorkerPool(1, tasks_per_worker_max=2) as pool:
        pids = [unpack_result(await run(pool, getpid)) for _ in range(4)]
        assert pids[0] == pids[1] != pids[2] == pids[3]


# -- concurrency and the queue -----------------------------------------------------------


async def test_two_workers_run_two_tasks_at_once(pool: WorkerPool) -> None:
    first, second = await asyncio.gather(
        run(pool, sleep_then_return, 0.5), run(pool, sleep_then_return, 0.5)
    )
    (start_a, end_a), (start_b, end_b) = unpack_result(first), unpack_result(second)
    assert max(start_a, start_b) < min(end_a, end_b), "the two sleeps overlapped"
    assert first.worker_pid != second.worker_pid


async def test_queue_is_fifo_bounded_and_close_fails_waiters() -> None:
    pool = WorkerPool(1, queue_max=1)
    await pool.start()
    running = asyncio.create_task(run(pool, sleep_then_return, 60))
    await wait_until(lambda: pool.stats().running == 1, "the task to start")
    queued = asyncio.create_task(run(pool, add, 1, 1))
    await wait_until(lambda: pool.stats().queued == 1, "the second task to queue")
    with pytest.raises(PoolQueueFull, match="queue_max=1"):
        await run(pool, add, 1, 1)
    await pool.close()
    for task in (running, queued):
        with pytest.raises(PoolClosed):
            await task
    with pytest.raises(PoolClosed):
        await run(pool, add, 1, 1)


async def test_queued_tasks_run_in_arrival_order() -> None:
    async with WorkerPool(1) as pool:
        order: list[int] = []

        async def submit(index: int) -> None:
            await run(pool, add, index, 0)
            order.append(index)

        async with asyncio.TaskGroup() as group:
            for index in range(20):
                group.create_task(submit(index))
        assert order == list(range(20))


# -- packing ---------------------------------------------------------------------------


def test_unpicklable_function_fails_at_pack_time() -> None:
    lock = threading.Lock()

    def uses_lock() -> None:
        with lock:
            pass

    with pytest.raises(UnpicklableTask) as raised:
        pack_call(uses_lock)
    assert isinstance(raised.value, pickle.PicklingError)
    message = str(raised.value)
    assert "the function" in message and "uses_lock" in message
    assert "_thread.lock" in message


def test_unpicklable_argument_is_named() -> None:
    with pytest.raises(UnpicklableTask, match="keyword argument 'guard'"):
        pack_call(add, (1,), {"guard": threading.Lock()})


def test_lambdas_and_closures_pack() -> None:
    offset = 5
    assert pack_call(lambda x: x + offset, (1,))


# -- lifecycle -------------------------------------------------------------------------


async def test_close_leaves_no_worker_processes() -> None:
    pool = WorkerPool(2)
    await pool.start()
    pids = set(pool.worker_pids())
    crashed = await run(pool, segfault)
    await wait_until(lambda: pool.stats().idle == 2, "a replacement worker")
    pids |= set(pool.worker_pids())
    assert len(pids) == 3
    await pool.close()
    assert [pid for pid in pids if process_exists(pid)] == []
    assert crashed.worker_pid in pids
    assert grandchildren() == [], "forkserver has no workers left"
    assert pool.worker_pids() == []


async def test_spawn_start_method_runs_tasks() -> None:
    async with WorkerPool(1, start_method="spawn") as pool:
        assert unpack_result(await run(pool, add, 20, 22)) == 42
        assert (await run(pool, exit_hard, 7)).exit_code == 7
        assert unpack_result(await run(pool, add, 1, 1)) == 2


async def test_a_function_sent_by_hash_goes_to_each_worker_once(pool: WorkerPool) -> None:
    function = cloudpickle.dumps(add)
    first = await pool.run("t1", pack_arguments((1, 2)), function=("h-add", function))
    assert unpack_result(first) == 3
    # The same worker now has it: a request without the bytes still runs.
    worker_pid = first.worker_pid
    results = await asyncio.gather(
        *(pool.run(f"t{n}", pack_arguments((n, n), {}), function=("h-add", function)) for n in range(20))
    )
    assert [unpack_result(outcome) for outcome in results] == [2 * n for n in range(20)]
    assert worker_pid in {outcome.worker_pid for outcome in results}
    # Another function under another hash, and a keyword argument.
    other = await pool.run("t99", pack_arguments((), {"a": 5, "b": 6}), function=("h-add-2", function))
    assert unpack_result(other) == 11
    with pytest.raises(UnpicklableTask, match="positional argument 0"):
        pack_arguments((threading.Lock(),))
