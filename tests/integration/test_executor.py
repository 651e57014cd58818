"""``client.executor()`` against the ``concurrent.futures.Executor`` contract,
method by method, on real node processes."""

from __future__ import annotations

import concurrent.futures
import sys
import threading
import time
from collections.abc import Iterator

import cloudpickle
import pytest

import moot
from moot.client.local import LocalFederation

pytestmark = pytest.mark.integration

cloudpickle.register_pickle_by_value(sys.modules[__name__])

WAIT_S = 60.0


def square(x: int) -> int:
    return x * x


def power(base: int, exponent: int) -> int:
    return int(base**exponent)


def sleep_then(seconds: float, value: int) -> int:
    time.sleep(seconds)
    return value


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise KeyError(f"no {x}")
    return x


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with LocalFederation(3, directory=tmp_path_factory.mktemp("executor") / "fed") as fed:
        yield fed


@pytest.fixture()
def client(federation: LocalFederation) -> Iterator[moot.Client]:
    with moot.connect(federation.addresses, cluster=federation.cluster_dir) as connected:
        yield connected


def test_it_is_an_executor_and_submit_returns_a_future(client: moot.Client) -> None:
    with client.executor() as executor:
        assert isinstance(executor, concurrent.futures.Executor)
        future = executor.submit(power, 2, exponent=10)
        assert isinstance(future, concurrent.futures.Future)
        assert future.result(timeout=WAIT_S) == 1024
        assert future.done() and not future.cancelled() and not future.running()
        assert future.exception() is None


def test_map_keeps_the_order_of_its_inputs_and_stops_at_the_shortest(client: moot.Client) -> None:
    with client.executor() as executor:
        # Later inputs finish first; the results still come in input order.
        delays = [0.3, 0.2, 0.1, 0.0]
        assert list(executor.map(sleep_then, delays, range(4), timeout=WAIT_S)) == [0, 1, 2, 3]
        assert list(executor.map(power, [2, 3, 4], [2, 2])) == [4, 9]
        assert list(executor.map(square, [])) == []


def test_map_with_chunksize_gives_the_same_results(client: moot.Client) -> None:
    with client.executor() as executor:
        assert list(executor.map(square, range(23), chunksize=5)) == [i * i for i in range(23)]
        with pytest.raises(ValueError, match="chunksize"):
            executor.map(square, range(3), chunksize=0)


def test_map_raises_timeout_from_the_iterator_when_a_result_is_late(client: moot.Client) -> None:
    with client.executor() as executor:
        results = executor.map(sleep_then, [0.0, 30.0], [1, 2], timeout=3.0)
        assert next(results) == 1
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            next(results)
        assert time.monotonic() - started < 10
        executor.shutdown(wait=False, cancel_futures=True)


def test_map_reraises_a_task_exception_when_the_iterator_reaches_it(client: moot.Client) -> None:
    with client.executor() as executor:
        results = executor.map(fail_on, range(5), [3] * 5)
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(KeyError, match="no 3"):
            next(results)


def test_a_done_callback_runs_once_with_the_future_even_if_added_after_it_finished(client: moot.Client) -> None:
    with client.executor() as executor:
        seen: list[concurrent.futures.Future[int]] = []
        called = threading.Event()

        def callback(done: concurrent.futures.Future[int]) -> None:
            seen.append(done)
            called.set()

        future = executor.submit(square, 6)
        future.add_done_callback(callback)
        assert called.wait(WAIT_S) and seen == [future] and future.result() == 36
        late: list[int] = []
        future.add_done_callback(lambda done: late.append(done.result()))
        assert late == [36], "a callback added to a finished future runs at once"


def test_exceptions_come_back_from_result_and_exception(client: moot.Client) -> None:
    with client.executor() as executor:
        future = executor.submit(fail_on, 1, 1)
        with pytest.raises(KeyError):
            future.result(timeout=WAIT_S)
        assert isinstance(future.exception(), KeyError)


def test_cancel_a_pending_future_and_callbacks_see_it(client: moot.Client) -> None:
    with client.executor() as executor:
        future = executor.submit(sleep_then, 30.0, 1)
        cancelled = threading.Event()
        future.add_done_callback(lambda done: cancelled.set() if done.cancelled() else None)
        assert future.cancel()
        assert future.cancelled() and future.done() and cancelled.is_set()
        with pytest.raises(concurrent.futures.CancelledError):
            future.result()
        finished = executor.submit(square, 2)
        assert finished.result(timeout=WAIT_S) == 4
        assert not finished.cancel(), "a finished future cannot be cancelled"
        assert client.job(future.job_id).status().state == "cancelled", "the federation stops its task too"


def test_shutdown_waits_and_then_refuses_new_work(client: moot.Client) -> None:
    executor = client.executor()
    futures = [executor.submit(sleep_then, 0.3, n) for n in range(4)]
    executor.shutdown(wait=True)
    assert all(f.done() for f in futures) and [f.result() for f in futures] == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(square, 1)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.map(square, [1])


def test_shutdown_with_cancel_futures_cancels_what_has_no_result(client: moot.Client) -> None:
    executor = client.executor()
    quick = executor.submit(square, 3)
    assert quick.result(timeout=WAIT_S) == 9
    slow = [executor.submit(sleep_then, 30.0, n) for n in range(3)]
    started = time.monotonic()
    executor.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - started < 10
    assert all(f.cancelled() for f in slow) and not quick.cancelled()


def test_wait_and_as_completed_work_with_its_futures(client: moot.Client) -> None:
    with client.executor() as executor:
        futures = [executor.submit(sleep_then, delay, value) for value, delay in enumerate([0.4, 0.0, 0.2])]
        done, not_done = concurrent.futures.wait(futures, timeout=WAIT_S, return_when=concurrent.futures.FIRST_COMPLETED)
        assert done and len(done) + len(not_done) == 3
        assert sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=WAIT_S)) == [0, 1, 2]


def test_options_given_to_the_executor_apply_to_its_tasks(client: moot.Client) -> None:
    with client.executor(timeout=1.0) as executor, pytest.raises(moot.TaskTimedOut):
        executor.submit(sleep_then, 30.0, 1).result(timeout=WAIT_S)
