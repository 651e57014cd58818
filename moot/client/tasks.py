"""Durable tasks from Python: ``submit``/``map``/``gather``, futures, an Executor, jobs.

A job is one ``submit`` or one ``map``: its function (cloudpickled, sent
once per content hash) and its tasks' arguments are written to the
replicated database — from then on the job runs to the end whichever nodes
die, this client included. ``submit`` returns at once and the write
follows within milliseconds (so a loop of submits is not a loop of round
trips); ``Job.status``, ``client.job``, ``wait_submitted`` and ``close``
wait for it, and if it fails the job's futures raise the error. Arguments over
``tasks.PAYLOAD_INLINE_BYTES_MAX`` travel through the object store, as do
large results.

Results come back through a *job watch*: one connection to one node, which
pushes each finished task of the watched jobs as its copy of the table
applies it. When that node dies the client watches again through another,
from the last result it has — so futures complete across the loss of the
node the client talked to.

``moot.Future`` is a ``concurrent.futures.Future``: ``result``,
``exception``, ``add_done_callback``, ``concurrent.futures.wait`` and
``as_completed`` all work, and it is awaitable. A task's own exception is
re-raised as itself, its remote traceback as ``__cause__``; a task whose
worker kept dying raises ``moot.WorkerCrashed``, one over its ``timeout=``
``moot.TaskTimedOut``.

Tasks may run more than once (a worker lost mid-task is retried elsewhere);
one result is kept — write tasks that can be repeated (idempotent).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import hashlib
import itertools
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import cloudpickle
import msgspec

from moot.client.errors import (
    BadRequest,
    MootError,
    NotFound,
    RemoteError,
    RemoteTraceback,
    TaskFailed,
    TaskOutOfMemory,
    TaskTimedOut,
    Timeout,
    Unavailable,
    WorkerCrashed,
)
from moot.core import objects, tasks, wire
from moot.runtime.transport import ClientConnection, open_client_connection
from moot.runtime.worker_pool import UnpicklableTask, pack_arguments

if TYPE_CHECKING:
    from moot.client.client import Client

TASKS_PER_SUBMIT_COMMAND: Final = 2_000  # a map's tasks go to the log in commands of this many
SUBMIT_BYTES_PER_COMMAND: Final = 1024 * 1024  # ...or of this many bytes of arguments
WATCH_KEEPALIVE_S: Final = 2.0  # a silent watch connection is checked this often
WATCH_ATTEMPT_TIMEOUT_S: Final = 3.0
WATCH_RETRY_S: Final = 0.2
MAX_RETRIES_DEFAULT: Final = 3
SUBMITS_IN_FLIGHT: Final = 2  # job writes outstanding per client; the rest batch up behind them
JOBS_PER_SUBMIT_BATCH: Final = 2_000
CLOSE_WAIT_S: Final = 10.0  # close() waits this long for jobs still being written


# -- futures ---------------------------------------------------------------------------


class Future(concurrent.futures.Future[Any]):
    """The result of one task, to come (see module doc). ``job_id`` and
    ``index`` name the task; ``client.job(job_id)`` reattaches to its job."""

    def __init__(self, owner: TaskClient, job_id: str, index: int, name: str) -> None:
        super().__init__()
        self.job_id = job_id
        self.index = index
        self.name = name
        self._owner = owner
        self._cancelled_by_job = False
        self.node = ""
        """The node whose worker produced the outcome (once done)."""

    def __await__(self) -> Any:
        return asyncio.wrap_future(self).__await__()

    def cancel(self) -> bool:
        """Cancel the task if it has no result yet. When every task of its job
        is cancelled, the job is cancelled in the federation (running tasks
        are killed)."""
        cancelled = super().cancel()
        if cancelled:
            # As an executor's worker would: wake ``wait``/``as_completed``
            # (they count a cancelled future as done only once notified).
            self.set_running_or_notify_cancel()
            if not self._cancelled_by_job:
                self._owner._future_cancelled(self)
        return cancelled

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled() else "finished" if self.done() else "pending"
        return f"<moot.Future {self.name} job={self.job_id[:12]} index={self.index} {state}>"


def as_completed(
    futures: Iterable[concurrent.futures.Future[Any]], timeout: float | None = None
) -> Iterator[concurrent.futures.Future[Any]]:
    """The futures as they finish (``concurrent.futures.as_completed``)."""
    return concurrent.futures.as_completed(futures, timeout=timeout)


def progress(
    futures: Sequence[concurrent.futures.Future[Any]], *, description: str = "tasks"
) -> None:
    """Show a progress bar until every future is done (rich)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as bar:
        task = bar.add_task(description, total=len(futures))
        for _ in concurrent.futures.as_completed(futures):
            bar.advance(task)


# -- jobs ------------------------------------------------------------------------------


@dataclass(slots=True)
class _JobState:
    job_id: str
    name: str
    futures: list[Future]
    seq: int = 0  # results up to this seq are in the futures
    unresolved: set[int] = field(default_factory=set)  # indexes whose future is not done
    cancelled: int = 0  # futures cancelled by the user
    request_id: int = 0
    submitted: asyncio.Future[None] | None = None
    done: bool = False
    cancel_asked: bool = False
    fetches: set[asyncio.Task[None]] = field(default_factory=set)


class Job:
    """A submitted job: its futures, its status, cancel, result."""

    def __init__(self, owner: TaskClient, state: _JobState) -> None:
        self._owner = owner
        self._state = state

    @property
    def job_id(self) -> str:
        return self._state.job_id

    @property
    def futures(self) -> list[Future]:
        return list(self._state.futures)

    def status(self) -> wire.JobSummary:
        """The job as the federation has it now: counts of done, failed,
        running and pending tasks, results committed and duplicates."""
        return self._owner.job_summary(self.job_id)

    def result(self, timeout: float | None = None) -> list[Any]:
        """Every task's result in order (raises the first task error)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for future in self._state.futures:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(future.result(remaining))
        return values

    def cancel(self) -> bool:
        """Cancel the job: pending tasks never run, running ones are killed."""
        return self._owner.cancel_job(self.job_id)

    def forget(self) -> bool:
        """Drop the job and its results from the federation (its objects are
        then collected after the grace period)."""
        return self._owner.forget_job(self.job_id)

    def __repr__(self) -> str:
        finished = sum(1 for f in self._state.futures if f.done())
        return f"<moot.Job {self._state.name} {self.job_id} {finished}/{len(self._state.futures)} done>"


# -- the client side -------------------------------------------------------------------


class _Queued:
    """A job waiting for its write."""

    __slots__ = ("function_bytes", "packed", "size", "spec", "state")

    def __init__(self, state: _JobState, spec: tasks.JobSpec, function_bytes: bytes, packed: list[bytes]) -> None:
        self.state = state
        self.spec = spec
        self.function_bytes = function_bytes
        self.packed = packed
        self.size = sum(len(data) + 80 for data in packed) + 300

    @property
    def big(self) -> bool:
        """Written alone: many tasks, or a large argument (object store)."""
        return len(self.packed) > 1 or self.size > SUBMIT_BYTES_PER_COMMAND // 4


@dataclass(frozen=True, slots=True)
class _Options:
    retries: int = 0
    max_retries: int = MAX_RETRIES_DEFAULT
    timeout_ms: int = 0
    resources: Mapping[str, float] = field(default_factory=dict)
    placement: Mapping[str, str] = field(default_factory=dict)


class TaskClient:
    """The task API of one ``Client`` (its ``submit``, ``map``, ``gather``, ``job``)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._jobs: dict[str, _JobState] = {}  # watched jobs (not all done)
        self._functions_sent: set[str] = set()
        self._function_cache: dict[int, tuple[Any, str, bytes]] = {}  # id(fn) -> (fn, hash, bytes)
        self._lock = threading.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self._connection: ClientConnection | None = None
        self._request_ids = client._request_ids  # shared: see Kv.__init__
        self._wake_watcher: asyncio.Event | None = None
        self._submit_queue: collections.deque[_Queued] = collections.deque()
        self._outgoing: list[wire.Message] = []
        self._submits_in_flight = 0
        self.watch_failovers = 0
        """How many times the job watch moved to another node."""

    # -- submitting ------------------------------------------------------------------

    def submit(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        retries: int = 0,
        max_retries: int = MAX_RETRIES_DEFAULT,
        timeout: float | None = None,
        resources: Mapping[str, float] | None = None,
        placement: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Future:
        options = _options(retries, max_retries, timeout, resources, placement)
        [future] = self._submit(fn, [(args, kwargs)], options)
        return future

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        retries: int = 0,
        max_retries: int = MAX_RETRIES_DEFAULT,
        timeout: float | None = None,
        resources: Mapping[str, float] | None = None,
        placement: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> list[Future]:
        options = _options(retries, max_retries, timeout, resources, placement)
        calls = [(tuple(items), kwargs) for items in zip(*iterables, strict=False)]
        if not calls:
            return []
        return self._submit(fn, calls, options)

    def _submit(
        self,
        fn: Callable[..., Any],
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        options: _Options,
    ) -> list[Future]:
        if not callable(fn):
            raise BadRequest(f"submit() needs a function, not {type(fn).__name__}")
        function_hash, function_bytes = self._pickle_function(fn)
        packed = []
        for args, kwargs in calls:
            try:
                packed.append(pack_arguments(args, kwargs))
            except UnpicklableTask as error:
                raise BadRequest(str(error)) from None
        named = fn.func if isinstance(fn, functools.partial) else fn  # a partial goes by its function
        name = str(
            getattr(named, "__qualname__", None) or getattr(named, "__name__", None) or type(named).__name__
        )
        job_id = uuid.uuid4().hex
        state = _JobState(job_id, name[: tasks.NAME_CHARS_MAX], [])
        state.futures = [Future(self, job_id, index, state.name) for index in range(len(packed))]
        state.unresolved = set(range(len(packed)))
        spec = tasks.JobSpec(
            name=state.name,
            function_hash=function_hash,
            retries=options.retries,
            max_retries=options.max_retries,
            timeout_ms=options.timeout_ms,
            resources=dict(options.resources),
            placement=dict(options.placement),
            owner=self._client.kv.client_id,
        )
        self._client._run(self._start(state, spec, function_bytes, packed), timeout_s=None)
        return list(state.futures)

    def _pickle_function(self, fn: Callable[..., Any]) -> tuple[str, bytes]:
        cached = self._function_cache.get(id(fn))
        if cached is not None and cached[0] is fn:
            return cached[1], cached[2]
        try:
            data = bytes(cloudpickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL))
        except Exception as error:
            raise BadRequest(
                f"cannot run {getattr(fn, '__qualname__', fn)!s} on the federation: it cannot be pickled "
                f"({type(error).__name__}: {error}). Tasks run in other processes, so everything they use "
                "must pickle: create locks, sockets, files and clients inside the task."
            ) from None
        if len(data) <= tasks.FUNCTION_INLINE_BYTES_MAX:
            function_hash = hashlib.sha256(data).hexdigest()
        else:
            function_hash = objects.split(data)[0]  # stored as an object: named by its object id
        with self._lock:
            if len(self._function_cache) > 256:
                self._function_cache.clear()
            self._function_cache[id(fn)] = (fn, function_hash, data)
        return function_hash, data

    async def _start(
        self, state: _JobState, spec: tasks.JobSpec, function_bytes: bytes, packed: list[bytes]
    ) -> None:
        """Register the job here and queue its write: ``submit`` returns at
        once; the writes go out in batches (one ``SubmitJobs`` for many
        small jobs), at most ``SUBMITS_IN_FLIGHT`` at a time, so a loop of
        submits costs a few Raft rounds, not one each. The futures fail if
        the job cannot be written."""
        self._jobs[state.job_id] = state
        state.submitted = asyncio.get_running_loop().create_future()
        state.submitted.add_done_callback(lambda done: self._after_write(state, done))
        self._submit_queue.append(_Queued(state, spec, function_bytes, packed))
        self._pump_submits()

    def _pump_submits(self) -> None:
        while self._submits_in_flight < SUBMITS_IN_FLIGHT and self._submit_queue:
            batch = [self._submit_queue.popleft()]
            if batch[0].big:
                write = self._write_one(batch[0])
            else:
                size = batch[0].size
                while (
                    self._submit_queue
                    and not self._submit_queue[0].big
                    and len(batch) < JOBS_PER_SUBMIT_BATCH
                    and size + self._submit_queue[0].size <= SUBMIT_BYTES_PER_COMMAND
                ):
                    size += self._submit_queue[0].size
                    batch.append(self._submit_queue.popleft())
                write = self._write_many(batch) if len(batch) > 1 else self._write_one(batch[0])
            self._submits_in_flight += 1
            task = asyncio.ensure_future(write)
            task.add_done_callback(functools.partial(self._batch_written, batch))

    def _after_write(self, state: _JobState, done: asyncio.Future[None]) -> None:
        error = None if done.cancelled() else done.exception()
        if error is None and not done.cancelled():
            self._ensure_watcher()
            self._send_watch(state)
            return
        failure = (
            error
            if isinstance(error, MootError)
            else Unavailable(f"the job could not be submitted: {error}")
        )
        for future in state.futures:
            if not future.done():
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_exception(failure)
        self._jobs.pop(state.job_id, None)

    def _batch_written(self, batch: list[_Queued], done: asyncio.Future[None]) -> None:
        self._submits_in_flight -= 1
        error = None if done.cancelled() else done.exception()
        for item in batch:
            submitted = item.state.submitted
            if submitted is None or submitted.done():
                continue
            if done.cancelled():
                submitted.cancel()
            elif error is not None:
                submitted.set_exception(error)
            else:
                submitted.set_result(None)
        self._pump_submits()

    async def _write_one(self, item: _Queued) -> None:
        await self._write_job(item.state, item.spec, item.function_bytes, item.packed)

    async def _write_many(self, batch: list[_Queued]) -> None:
        """Several small jobs as one ``SubmitJobs``; their functions ride
        with the first job that runs each (unless the federation has them)."""
        jobs_without = []
        for item in batch:
            payloads = tuple([await self._payload(data) for data in item.packed])
            jobs_without.append(
                tasks.SubmitJob(
                    job_id=item.state.job_id,
                    spec=item.spec,
                    total=len(payloads),
                    now_ms=int(time.time() * 1000),
                    tasks=payloads,
                )
            )
        kv = self._client.kv
        for attempt in range(2):
            if attempt == 1:
                # The federation forgot a function (every job that ran it was
                # forgotten): send them all along this time.
                for item in batch:
                    self._functions_sent.discard(item.spec.function_hash)
            attached: set[str] = set()
            jobs = []
            for item, job in zip(batch, jobs_without, strict=True):
                function = None
                if item.spec.function_hash not in attached:
                    function = await self._function_payload(item.spec.function_hash, item.function_bytes)
                    attached.add(item.spec.function_hash)
                jobs.append(msgspec.structs.replace(job, function=function))
            result = await kv._write_async(tasks.SubmitJobs(jobs=tuple(jobs)), follow_leader=True)
            if result.succeeded:
                self._functions_sent.update(item.spec.function_hash for item in batch)
                return
        raise BadRequest("the federation refused the jobs (a job id clash or a function that does not match its hash)")

    async def _write_job(
        self, state: _JobState, spec: tasks.JobSpec, function_bytes: bytes, packed: list[bytes]
    ) -> None:
        payloads = [await self._payload(data) for data in packed]
        function = await self._function_payload(spec.function_hash, function_bytes)
        commands: list[tasks.SubmitJob | tasks.AddTasks] = []
        start = 0
        for chunk in tasks.batches(
            payloads, lambda payload: len(payload.inline) + 80, SUBMIT_BYTES_PER_COMMAND, TASKS_PER_SUBMIT_COMMAND
        ):
            if start == 0:
                commands.append(
                    tasks.SubmitJob(
                        job_id=state.job_id,
                        spec=spec,
                        total=len(payloads),
                        now_ms=int(time.time() * 1000),
                        tasks=tuple(chunk),
                        function=function,
                    )
                )
            else:
                commands.append(tasks.AddTasks(job_id=state.job_id, start=start, tasks=tuple(chunk)))
            start += len(chunk)
        kv = self._client.kv
        first = commands[0]
        assert isinstance(first, tasks.SubmitJob)
        result = await kv._write_async(first, follow_leader=True)
        if not result.succeeded and first.function is None:
            # The federation forgot the function (every job using it was
            # forgotten): send it along this time.
            self._functions_sent.discard(spec.function_hash)
            first = tasks.SubmitJob(
                job_id=first.job_id,
                spec=first.spec,
                total=first.total,
                now_ms=first.now_ms,
                tasks=first.tasks,
                function=await self._function_payload(spec.function_hash, function_bytes),
            )
            result = await kv._write_async(first, follow_leader=True)
        if not result.succeeded:
            raise BadRequest(
                "the federation refused the job (a job id clash or a function that does not match its hash)"
            )
        self._functions_sent.add(spec.function_hash)
        for command in commands[1:]:
            result = await kv._write_async(command, follow_leader=True)
            if not result.succeeded:
                raise Unavailable(
                    f"the federation refused part of job {state.job_id}; cancel it and submit again"
                )

    async def _payload(self, data: bytes) -> tasks.Payload:
        if len(data) <= tasks.PAYLOAD_INLINE_BYTES_MAX:
            return tasks.Payload(inline=data)
        ref = await self._client.objects._put_stream(iter([data]), "")
        return tasks.Payload(object_id=ref.id, size=ref.size)

    async def _function_payload(self, function_hash: str, data: bytes) -> tasks.Payload | None:
        if function_hash in self._functions_sent:
            return None
        if len(data) <= tasks.FUNCTION_INLINE_BYTES_MAX:
            return tasks.Payload(inline=data)
        ref = await self._client.objects._put_stream(iter([data]), "")
        assert ref.id == function_hash, "a big function is named by its object id"
        return tasks.Payload(object_id=ref.id, size=ref.size)

    # -- gathering --------------------------------------------------------------------

    def gather(
        self, futures: Iterable[concurrent.futures.Future[Any]], errors: str = "raise"
    ) -> list[Any]:
        """The futures' results in order. ``errors="raise"`` re-raises the first
        task error; ``"skip"`` leaves failed tasks out."""
        if errors not in ("raise", "skip"):
            raise BadRequest(f'errors must be "raise" or "skip", not {errors!r}')
        values = []
        for future in futures:
            if errors == "skip":
                try:
                    values.append(future.result())
                except (Exception, concurrent.futures.CancelledError):
                    continue
            else:
                values.append(future.result())
        return values

    # -- jobs ---------------------------------------------------------------------------

    def job(self, job_id: str) -> Job:
        """Reattach to a job (submitted by this client or any other, before or
        after a crash): its futures fill in from the federation's records."""
        state = self._jobs.get(job_id)
        if state is not None:
            return Job(self, state)
        summary = self.job_summary(job_id)
        state = _JobState(job_id, summary.name, [])
        state.futures = [
            Future(self, job_id, index, summary.name) for index in range(summary.total)
        ]
        state.unresolved = set(range(summary.total))
        self._client._run(self._attach(state), timeout_s=None)
        return Job(self, state)

    async def _attach(self, state: _JobState) -> None:
        self._jobs[state.job_id] = state
        self._ensure_watcher()
        self._send_watch(state)

    def wait_submitted(self, timeout: float | None = None) -> None:
        """Wait until every job this client submitted is in the database."""
        self._client._run(self._submitted_all(), timeout_s=timeout)

    async def _submitted_all(self) -> None:
        pending = [state.submitted for state in self._jobs.values() if state.submitted is not None]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def job_summary(self, job_id: str) -> wire.JobSummary:
        state = self._jobs.get(job_id)
        if state is not None and state.submitted is not None and not state.submitted.done():
            submitted = state.submitted
            self._client._run(asyncio.wait([submitted]), timeout_s=None)
        if (
            not isinstance(job_id, str)
            or len(job_id) != 32
            or any(c not in "0123456789abcdef" for c in job_id)
        ):
            raise BadRequest(f"{job_id!r} is not a job id (32 hex digits, as `moot job ls` shows)")
        for summary in self._query(job_id):
            return summary
        raise NotFound(
            f"no job {job_id}: it never existed, or it was forgotten (check `moot job ls`)"
        )

    def jobs(self) -> list[wire.JobSummary]:
        """Every job the federation keeps (``moot job ls``)."""
        return self._query("")

    def _query(self, job_id: str) -> list[wire.JobSummary]:
        # The leader's table is the most recent: ask the node the KV client
        # found leading, else any.
        def build(request_id: int) -> wire.Message:
            return wire.JobQuery(request_id=request_id, job_id=job_id)

        reply: wire.Message | None = None
        leader = self._leader_address()
        if leader is not None:
            with contextlib.suppress(Unavailable, Timeout):
                reply = self._client._request(build, node=leader)
        if reply is None:
            reply = self._client._request(build)
        assert isinstance(reply, wire.JobInfo)
        return list(reply.jobs)

    def _leader_address(self) -> str | None:
        return self._client.kv._leader

    def cancel_job(self, job_id: str) -> bool:
        result = self._client._run(
            self._client.kv._write_async(tasks.CancelJob(job_id), follow_leader=True),
            timeout_s=None,
        )
        return bool(result.succeeded)

    def forget_job(self, job_id: str) -> bool:
        result = self._client._run(
            self._client.kv._write_async(tasks.ForgetJob(job_id), follow_leader=True),
            timeout_s=None,
        )
        return bool(result.succeeded)

    def _future_cancelled(self, future: Future) -> None:
        state = self._jobs.get(future.job_id)
        if state is None or state.cancel_asked:
            return
        state.cancelled += 1
        state.unresolved.discard(future.index)
        if state.cancelled == len(state.futures):
            state.cancel_asked = True
            self._client._loop.call_soon_threadsafe(self._cancel_in_background, state)

    def _cancel_in_background(self, state: _JobState) -> None:
        async def cancel() -> None:
            if state.submitted is not None:
                with contextlib.suppress(Exception):
                    await state.submitted
            with contextlib.suppress(MootError):
                await self._client.kv._write_async(
                    tasks.CancelJob(state.job_id), follow_leader=True
                )

        task = asyncio.ensure_future(cancel())
        state.fetches.add(task)
        task.add_done_callback(state.fetches.discard)

    # -- the job watch --------------------------------------------------------------------

    def _ensure_watcher(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._wake_watcher = asyncio.Event()
            self._watcher = asyncio.ensure_future(self._watch_loop())

    def _send_watch(self, state: _JobState) -> None:
        connection = self._connection
        if connection is None or connection.closed:
            return  # the watch loop sends it when it connects
        state.request_id = next(self._request_ids)
        message = wire.JobWatch(
            request_id=state.request_id, job_id=state.job_id, since_seq=state.seq
        )
        self._outgoing.append(message)
        if len(self._outgoing) == 1:
            # One write for every watch asked in this loop iteration (a loop
            # of submits asks for thousands).
            asyncio.get_running_loop().call_soon(self._flush_outgoing, connection)

    def _flush_outgoing(self, connection: ClientConnection) -> None:
        messages, self._outgoing = self._outgoing, []
        if messages and not connection.closed:
            task = asyncio.ensure_future(connection.send_many(messages))
            task.add_done_callback(lambda done: done.cancelled() or done.exception())

    async def _watch_loop(self) -> None:
        """Keep one watch connection open while any job is unfinished; move to
        the next node when it fails."""
        attempt = 0
        while self._jobs and not self._client._closed:
            addresses = list(self._client.addresses)
            address = addresses[attempt % len(addresses)]
            attempt += 1
            try:
                await self._watch_through(address)
            except (
                OSError,
                ConnectionError,
                TimeoutError,
                wire.RemoteProtocolError,
                MootError,
                asyncio.IncompleteReadError,
            ):
                pass
            finally:
                self._connection = None
            if self._jobs:
                self.watch_failovers += 1
                await asyncio.sleep(WATCH_RETRY_S)  # a pause between nodes, not a synchronisation

    async def _watch_through(self, address: str) -> None:
        async with asyncio.timeout(WATCH_ATTEMPT_TIMEOUT_S):
            connection = await open_client_connection(
                address, self._client.cluster, on_unsolicited=self._on_events
            )
        keepalive_ids = itertools.count(1 << 40)
        try:
            await _check_replica(connection, next(keepalive_ids))
            self._connection = connection
            for state in list(self._jobs.values()):
                if state.submitted is None or state.submitted.done():
                    self._send_watch(state)
            while self._jobs:
                closed = asyncio.ensure_future(connection.wait_closed())
                try:
                    await asyncio.wait([closed], timeout=WATCH_KEEPALIVE_S)
                finally:
                    closed.cancel()
                if connection.closed:
                    return
                # Quiet: is the node still there (a paused node keeps its
                # socket open), and still a replica of the database?
                await _check_replica(connection, next(keepalive_ids))
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await connection.close()

    def _on_events(self, message: wire.Message) -> None:
        if not isinstance(message, wire.JobEvents):
            return
        state = self._jobs.get(message.job_id)
        if state is None:
            return
        for result in message.results:
            if result.seq <= state.seq and state.futures[result.index].done():
                continue
            state.seq = max(state.seq, result.seq)
            self._deliver(state, result)
        if message.state == "cancelled":
            for index in list(state.unresolved):
                future = state.futures[index]
                state.unresolved.discard(index)
                future._cancelled_by_job = True
                future.cancel()
        if not state.unresolved and not state.fetches:
            self._finished(state)

    def _finished(self, state: _JobState) -> None:
        state.done = True
        self._jobs.pop(state.job_id, None)
        connection = self._connection
        if state.cancelled and connection is not None and not connection.closed:
            # Cancelled here, maybe not there: stop the node's pushes. (A job
            # that finished ends its watch on the node by itself.)
            task = asyncio.ensure_future(connection.send(wire.JobUnwatch(job_id=state.job_id)))
            task.add_done_callback(lambda done: done.cancelled() or done.exception())

    def _deliver(self, state: _JobState, result: wire.TaskResult) -> None:
        if not 0 <= result.index < len(state.futures):
            return
        future = state.futures[result.index]
        state.unresolved.discard(result.index)
        if future.done():
            return
        if result.state == "cancelled":
            future._cancelled_by_job = True
            future.cancel()
            return
        if result.value.object_id:
            task = asyncio.ensure_future(self._fetch_and_deliver(state, future, result))
            state.fetches.add(task)
            task.add_done_callback(state.fetches.discard)
            return
        _settle(future, result, result.value.inline, state.job_id)

    async def _fetch_and_deliver(
        self, state: _JobState, future: Future, result: wire.TaskResult
    ) -> None:
        try:
            parts = [part async for part in self._client.objects._read(result.value.object_id)]
            data = b"".join(parts)
        except MootError as error:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(
                    Unavailable(f"the task's result object could not be read: {error}")
                )
        else:
            _settle(future, result, data, state.job_id)
        finally:
            asyncio.get_running_loop().call_soon(self._check_finished, state)

    def _check_finished(self, state: _JobState) -> None:
        if not state.done and not state.unresolved and not state.fetches:
            self._finished(state)

    async def close(self) -> None:
        """Let the jobs being written reach the database (bounded), then stop watching."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT_S):
                await self._submitted_all()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(BaseException):
                await self._watcher


async def _check_replica(connection: ClientConnection, request_id: int) -> None:
    """Raise ``Unavailable`` unless the node at ``connection`` answers and is
    a voter or learner: a node out of the Raft group (trimmed from the voters
    as the federation shrank) applies nothing more, so a job watched there
    never finishes (found: ``moot demo`` hung on such a node)."""
    status = await connection.request(wire.StatusRequest(request_id=request_id), int(WATCH_ATTEMPT_TIMEOUT_S * 1000))
    if not isinstance(status, wire.StatusReply):
        raise Unavailable(f"the node answered a status request with {type(status).__name__}")
    if status.node_id not in status.voters and status.node_id not in status.learners:
        raise Unavailable(f"node {status.node_id} is not a replica of the database now")


def _settle(future: Future, result: wire.TaskResult, data: bytes, job_id: str) -> None:
    """Resolve ``future`` from a finished task's record."""
    index, node = result.index, result.node
    future.node = node
    try:
        if result.state == "done":
            future.set_result(cloudpickle.loads(data))
            return
        error: BaseException
        if result.kind == "error":
            error = _user_exception(data, result, job_id)
        elif result.kind == "timeout":
            message = f"task {index} of job {job_id} ran over its timeout: {result.error_message}"
            error = TaskTimedOut(message, job_id=job_id, index=index, node=node)
        elif result.kind == "memory":
            message = f"task {index} of job {job_id} ran out of memory: {result.error_message}"
            error = TaskOutOfMemory(message, job_id=job_id, index=index, node=node)
        else:
            message = (
                f"task {index} of job {job_id}: its worker died each time it ran "
                f"(last: {result.error_type}: {result.error_message})"
            )
            error = WorkerCrashed(message, job_id=job_id, index=index, node=node)
        future.set_exception(error)
    except concurrent.futures.InvalidStateError:
        return  # cancelled meanwhile
    except Exception as error:  # the result does not unpickle here (a class this process lacks)
        failure = TaskFailed(
            f"the task's result could not be unpickled here: {error}",
            job_id=job_id,
            index=index,
            node=node,
        )
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            future.set_exception(failure)


def _user_exception(data: bytes, result: wire.TaskResult, job_id: str) -> BaseException:
    exception: BaseException | None = None
    if data:
        try:
            loaded = cloudpickle.loads(data)
        except Exception:
            loaded = None
        if isinstance(loaded, BaseException):
            exception = loaded
    if exception is None:
        exception = RemoteError(
            result.error_type,
            result.error_message,
            result.traceback,
            job_id=job_id,
            index=result.index,
            node=result.node,
        )
    exception.__cause__ = RemoteTraceback(result.traceback)
    return exception


def _options(
    retries: int,
    max_retries: int,
    timeout: float | None,
    resources: Mapping[str, float] | None,
    placement: Mapping[str, str] | None,
) -> _Options:
    for name, value in (("retries", retries), ("max_retries", max_retries)):
        if not isinstance(value, int) or not 0 <= value <= tasks.RETRIES_MAX:
            raise BadRequest(f"{name} must be an int in 0..{tasks.RETRIES_MAX}, not {value!r}")
    timeout_ms = 0
    if timeout is not None:
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise BadRequest(f"timeout must be a positive number of seconds, not {timeout!r}")
        timeout_ms = max(1, int(timeout * 1000))
    checked_resources: dict[str, float] = {}
    for key, amount in (resources or {}).items():
        if (
            not isinstance(key, str)
            or not key
            or not isinstance(amount, int | float)
            or not 0 <= amount <= 1e9
        ):
            raise BadRequest(
                f"resources must map names to amounts >= 0, e.g. {{'cpus': 1, 'gpu': 1}}, not {resources!r}"
            )
        checked_resources[key] = float(amount)
    if len(checked_resources) > tasks.RESOURCES_MAX:
        raise BadRequest(f"at most {tasks.RESOURCES_MAX} resources per task")
    checked_placement: dict[str, str] = {}
    for label, wanted in (placement or {}).items():
        if not isinstance(label, str) or not isinstance(wanted, str):
            raise BadRequest(
                f"placement must map label names to values, e.g. {{'region': 'lahore'}}, not {placement!r}"
            )
        checked_placement[label] = wanted
    return _Options(retries, max_retries, timeout_ms, checked_resources, checked_placement)


# -- the Executor ---------------------------------------------------------------------


class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` on the federation: ``submit``,
    ``map`` (with ``timeout`` and ``chunksize``), ``shutdown`` — and a
    context manager. Options given here apply to every task it submits."""

    def __init__(self, tasks_client: TaskClient, **options: Any) -> None:
        self._tasks = tasks_client
        self._options = options
        self._futures: set[Future] = set()
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future = self._tasks.submit(fn, *args, **self._options, **kwargs)
            self._futures.add(future)
        future.add_done_callback(self._forget)
        return future

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """Results in the order of ``iterables``; ``TimeoutError`` from the
        iterator if one is not ready ``timeout`` seconds after this call.
        The calls are submitted at once, as one job (``chunksize`` > 1
        groups that many calls per task)."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            calls = list(zip(*iterables, strict=False))
            if chunksize == 1:
                futures = (
                    self._tasks.map(fn, *zip(*calls, strict=False), **self._options)
                    if calls
                    else []
                )
            else:
                groups = [calls[i : i + chunksize] for i in range(0, len(calls), chunksize)]
                futures = (
                    self._tasks.map(_run_chunk, [fn] * len(groups), groups, **self._options)
                    if groups
                    else []
                )
            self._futures.update(futures)
        for future in futures:
            future.add_done_callback(self._forget)

        def results() -> Iterator[Any]:
            pending = list(reversed(futures))
            try:
                while pending:
                    future = pending.pop()
                    remaining = None if deadline is None else deadline - time.monotonic()
                    value = future.result(remaining)
                    if chunksize == 1:
                        yield value
                    else:
                        yield from value
            finally:
                for future in pending:
                    future.cancel()

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            futures = list(self._futures)
        if cancel_futures:
            for future in futures:
                future.cancel()
        if wait:
            concurrent.futures.wait(futures)

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)


def _run_chunk(fn: Callable[..., Any], calls: list[tuple[Any, ...]]) -> list[Any]:
    return [fn(*call) for call in calls]
