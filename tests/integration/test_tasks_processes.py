"""Durable tasks on real node processes: submit/map/gather, errors, retries,
crashes, timeouts, large values, placement, cancel, reattach, the CLI."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest

import moot
from moot.client.local import LocalFederation

pytestmark = pytest.mark.integration

# The workers cannot import this test module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# -- tasks (run in worker processes) ------------------------------------------------------


def square(x: int) -> int:
    return x * x


def add(a: int, b: int, *, c: int = 0) -> int:
    return a + b + c


def fail(text: str) -> None:
    raise ValueError(f"bad input: {text}")  # the raising line


def where() -> str:
    return os.environ.get("MOOT_NODE_ID", "")


def size_of(data: bytes) -> int:
    return len(data)


def make_bytes(count: int) -> bytes:
    return bytes(range(256)) * (count // 256)


def crash() -> None:
    os._exit(7)


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def fail_until_marked(marker: str, attempts_before_success: int) -> int:
    """Raise (or crash) until this has run ``attempts_before_success`` times."""
    path = Path(marker)
    with path.open("a") as handle:
        handle.write("x")
    runs = len(path.read_text())
    if runs <= attempts_before_success:
        raise RuntimeError(f"run {runs} fails on purpose")
    return runs


def crash_until_marked(marker: str) -> int:
    path = Path(marker)
    with path.open("a") as handle:
        handle.write("x")
    runs = len(path.read_text())
    if runs == 1:
        os._exit(3)
    return runs


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with LocalFederation(3, directory=tmp_path_factory.mktemp("tasks") / "fed") as fed:
        yield fed


@pytest.fixture()
def client(federation: LocalFederation) -> Iterator[moot.Client]:
    with moot.connect(federation.addresses, cluster=federation.cluster_dir) as connected:
        yield connected


# -- tests -----------------------------------------------------------------------------------


def test_submit_map_and_gather_return_the_right_values(client: moot.Client) -> None:
    future = client.submit(add, 2, 3, c=10)
    assert isinstance(future, concurrent.futures.Future) and isinstance(future, moot.Future)
    assert future.result(timeout=60) == 15
    assert len(future.job_id) == 32 and future.index == 0
    futures = client.map(square, range(300))
    assert client.gather(futures) == [i * i for i in range(300)]
    assert len({f.job_id for f in futures}) == 1, "one map is one job"
    assert client.map(add, [1, 2, 3], [10, 20]) and client.gather(client.map(add, [1, 2, 3], [10, 20])) == [11, 22]
    done, not_done = concurrent.futures.wait(client.map(square, range(20)), timeout=60)
    assert len(done) == 20 and not not_done
    assert sorted(f.result() for f in moot.as_completed(client.map(square, range(10)), timeout=60)) == sorted(
        i * i for i in range(10)
    )
    summary = client.job(futures[0].job_id).status()
    assert (summary.state, summary.total, summary.done, summary.commits) == ("finished", 300, 300, 300)


def test_a_future_is_awaitable(client: moot.Client) -> None:
    async def main() -> list[int]:
        return list(await asyncio.gather(*(client.submit(square, n) for n in range(5))))

    assert asyncio.run(main()) == [0, 1, 4, 9, 16]


def test_a_task_exception_is_raised_at_the_caller_with_the_remote_traceback(client: moot.Client) -> None:
    future = client.submit(fail, "x")
    with pytest.raises(ValueError, match="bad input: x") as raised:
        future.result(timeout=60)
    cause = raised.value.__cause__
    assert isinstance(cause, moot.client.errors.RemoteTraceback)
    # Functions sent by value have no source file on the worker: the frame is named, not quoted.
    assert "in fail" in str(cause) and "ValueError: bad input: x" in str(cause)
    assert isinstance(future.exception(), ValueError)
    assert client.gather([future, client.submit(square, 3)], errors="skip") == [9]
    summary = client.job(future.job_id).status()
    assert (summary.failed, summary.done) == (1, 0), "a user exception is not retried by default"


def test_retries_rerun_a_failing_task_and_max_retries_a_crashing_one(client: moot.Client, tmp_path: Path) -> None:
    marker = tmp_path / "failing"
    assert client.submit(fail_until_marked, str(marker), 2, retries=2).result(timeout=60) == 3
    never = client.submit(fail_until_marked, str(tmp_path / "never"), 5, retries=1)
    with pytest.raises(RuntimeError, match="run 2 fails on purpose"):
        never.result(timeout=60)
    # A worker that dies once: retried (elsewhere if it can be), then fine.
    assert client.submit(crash_until_marked, str(tmp_path / "crash-once")).result(timeout=60) == 2
    # A worker that dies every time: WorkerCrashed after max_retries + 1 runs.
    with pytest.raises(moot.WorkerCrashed, match="worker died each time") as raised:
        client.submit(crash, max_retries=1).result(timeout=60)
    assert raised.value.job_id and raised.value.index == 0


def test_timeout_kills_a_task_that_never_ends(client: moot.Client) -> None:
    started = time.monotonic()
    future = client.submit(sleep_for, 600, timeout=1.0)
    with pytest.raises(moot.TaskTimedOut, match="ran over its timeout"):
        future.result(timeout=60)
    assert time.monotonic() - started < 30
    assert client.submit(square, 4).result(timeout=60) == 16, "the killed worker was replaced"


def test_large_arguments_and_results_travel_through_the_object_store(client: moot.Client) -> None:
    big = os.urandom(3 * 1024 * 1024)
    assert client.submit(size_of, big).result(timeout=60) == len(big)
    result = client.submit(make_bytes, 2 * 1024 * 1024).result(timeout=60)
    assert result == bytes(range(256)) * (2 * 1024 * 1024 // 256)


def test_bad_input_is_refused_before_anything_is_stored(client: moot.Client) -> None:
    before = len(client.jobs())
    lock = threading.Lock()
    with pytest.raises(moot.BadRequest, match="cannot be pickled"):
        client.submit(lambda: lock.locked())
    with pytest.raises(moot.BadRequest, match="positional argument 0"):
        client.submit(square, threading.Lock())
    with pytest.raises(moot.BadRequest, match="retries"):
        client.submit(square, 1, retries=-1)
    with pytest.raises(moot.BadRequest, match="timeout"):
        client.submit(square, 1, timeout=0)
    with pytest.raises(moot.BadRequest, match="not a job id"):
        client.job("nope")
    with pytest.raises(moot.NotFound, match="no job"):
        client.job("0" * 32)
    assert len(client.jobs()) == before, "nothing was stored"


def test_placement_labels_and_resources_choose_the_node(tmp_path: Path) -> None:
    labels = [{"region": "oslo"}, {"region": "lahore"}, {"region": "oslo"}]
    with LocalFederation(3, directory=tmp_path / "fed", labels=labels) as fed:
        client = fed.client()
        lahore = fed.statuses()[1].node_id
        runs = client.gather([client.submit(where, placement={"region": "lahore"}) for _ in range(6)])
        assert set(runs) == {lahore}
        waiting = client.submit(where, resources={"gpu": 1})
        summary = client.job(waiting.job_id).status()
        assert "gpu=1" in summary.blocked, summary
        assert not waiting.done()
        waiting.cancel()


def test_cancel_stops_a_job_and_reattach_gets_results_from_any_client(federation: LocalFederation) -> None:
    with moot.connect(federation.addresses, cluster=federation.cluster_dir) as first:
        slow = first.map(sleep_for, [30.0] * 6)
        job = first.job(slow[0].job_id)
        assert job.cancel()
        for future in slow:
            with pytest.raises(concurrent.futures.CancelledError):
                future.result(timeout=60)
        assert first.job(slow[0].job_id).status().state == "cancelled"
        # The running ones were killed: their workers take new tasks at once
        # (else these would wait out the 30 s sleeps).
        started = time.monotonic()
        quick = first.map(square, range(50))
        assert first.gather(quick) == [i * i for i in range(50)]
        assert time.monotonic() - started < 15, "cancelled tasks kept their workers"
        job_id = quick[0].job_id
    # A client that never saw the job reattaches to it by id.
    with moot.connect(list(reversed(federation.addresses)), cluster=federation.cluster_dir) as second:
        assert second.job(job_id).result(timeout=60) == [i * i for i in range(50)]


def test_the_job_cli_lists_shows_fetches_and_cancels(federation: LocalFederation, client: moot.Client) -> None:
    job_id = client.map(square, range(7))[0].job_id
    client.job(job_id).result(timeout=60)
    where_ = ["--cluster", str(federation.cluster_dir), "--node", federation.addresses[0]]

    def moot_cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "moot", *args, *where_]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    listed = moot_cli("job", "ls")
    assert listed.returncode == 0 and job_id in listed.stdout, listed.stderr
    status = moot_cli("job", "status", job_id)
    assert status.returncode == 0 and "finished" in status.stdout and "7/7" in status.stdout
    result = moot_cli("job", "result", job_id, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [i * i for i in range(7)]
    missing = moot_cli("job", "status", "0" * 32)
    assert missing.returncode != 0 and "no job" in missing.stderr
    slow = client.submit(sleep_for, 60)
    cancelled = moot_cli("job", "cancel", slow.job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    with pytest.raises(concurrent.futures.CancelledError):
        slow.result(timeout=60)


def slow_square(x: int) -> int:
    time.sleep(0.05)
    return x * x


def test_a_job_finishes_exactly_once_while_the_leader_the_clients_node_and_a_worker_die(tmp_path: Path) -> None:
    count = 1000  # 50 s of work: ~10 s on 5 workers, longer once 3 are dead
    with LocalFederation(5, directory=tmp_path / "fed", voter_grace_ms=1000) as fed:
        leader = fed.leader()
        clients_node = next(i for i in range(5) if i != leader)
        addresses = [fed.addresses[clients_node], *(a for i, a in enumerate(fed.addresses) if i != clients_node)]
        with moot.connect(addresses, cluster=fed.cluster_dir) as client:
            futures = client.map(slow_square, range(count))
            job_id = futures[0].job_id

            def done() -> int:
                return sum(f.done() for f in futures)

            def wait_done(at_least: int) -> None:
                deadline = time.monotonic() + 120
                while done() < at_least:
                    assert time.monotonic() < deadline, f"stuck at {done()} done: {client.job(job_id).status()}"
                    time.sleep(0.02)  # polling the futures with a deadline

            wait_done(100)
            fed.kill(leader)  # the leader: the next one adopts the job from the table
            wait_done(250)
            fed.kill(clients_node)  # the node the client submitted through and watches through
            assert done() < count, "the job must still run when the client's node dies"
            fed.wait_for_voters(3, timeout_s=60)  # 3 voters, all running: one more may die
            wait_done(500)
            worker = next(i for i in range(5) if fed.nodes[i].alive and i != fed.leader())
            fed.kill(worker)  # one more worker, with tasks in hand
            assert done() < count, "the job must still run when the last node dies"
            deadline = time.monotonic() + 180
            results = []
            for future in futures:  # the client never sees an error
                results.append(future.result(timeout=max(1.0, deadline - time.monotonic())))
            assert results == [i * i for i in range(count)]
            assert client.tasks.watch_failovers >= 1, "the client's node died: its watch moved"
            summary = client.job(job_id).status()
    assert (summary.state, summary.done, summary.failed) == ("finished", count, 0)
    assert summary.commits == count, "each task's result committed exactly once"


def test_a_client_can_ask_other_things_while_its_jobs_are_watched(client: moot.Client) -> None:
    # Regression: the KV, task and object parts of a client numbered their
    # requests from 1 each, on shared connections; members() while a job
    # was watched failed with "request_id 1 is already waiting for a reply".
    future = client.submit(sleep_for, 1.0)
    for index in range(5):
        assert client.members()
        client.kv.put(f"busy/{index}", "x")
    assert future.result(timeout=60) == 1.0
