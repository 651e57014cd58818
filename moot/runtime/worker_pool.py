"""The pool of worker processes one node runs tasks in, isolated from the node.

Rules:

- Each worker is its own OS process, started from a clean parent (see
  ``start_method``), talking to the node over a Unix socketpair with
  length-prefixed frames (4-byte big-endian length, then a msgspec
  MessagePack body). The node side is an ``asyncio.Protocol``: it never
  blocks the event loop on a worker, whatever the worker does.
- A worker runs one task at a time and is reused across tasks. ``run`` calls
  beyond ``processes`` wait in a FIFO queue of at most ``queue_max`` callers;
  one more gets ``PoolQueueFull`` at once.
- ``run`` returns an ``Outcome`` and raises only for misuse of the pool
  (closed, queue full, payload too large). It reports what happened and
  decides nothing: retrying elsewhere is the scheduler's policy. The kinds:

  ``ok``       the task returned; ``result`` is its cloudpickled value.
  ``error``    the task raised; type name, message, the remote formatted
               traceback, and the cloudpickled exception if it pickles. The
               worker lives on.
  ``memory``   the task raised ``MemoryError`` (with ``memory_limit_bytes``,
               ``RLIMIT_AS`` makes allocations over the limit fail). The
               worker is replaced: its heap may be left fragmented.
  ``crashed``  the worker died mid-task (segfault, ``os._exit``, a signal
               from outside, the kernel's OOM killer); ``exit_code`` is the
               exit status, or minus the signal number. Replaced.
  ``timeout``  ``timeout_s`` passed: the worker got SIGTERM, then SIGKILL
               after ``terminate_grace_s``. Replaced.

  A kernel OOM kill is a SIGKILL like any other (``crashed``, -9): telling
  them apart would take the kernel log or a cgroup's event counters.
- A dead or retired worker is replaced in the background, so the slot comes
  back without anyone waiting on the start.
- Task stdout and stderr pass through to the node's (the workers inherit its
  file descriptors); the worker flushes them after every task so nothing is
  lost when it is killed later. Stdin is /dev/null.
- Workers are daemonic ``multiprocessing`` processes (as in
  ``multiprocessing.Pool``): the interpreter kills them at exit even if
  ``close`` was never awaited. The price: a task cannot start
  ``multiprocessing`` children (``subprocess`` works).
- A worker whose node vanished (SIGKILL of the node) exits: a watchdog
  thread waits for the node's end of the socket to close (``POLLRDHUP``).
- ``close`` kills and reaps every worker and fails every waiting ``run``
  with ``PoolClosed``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.process
import os
import pickle
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import cloudpickle
import msgspec

_log = logging.getLogger(__name__)

OutcomeKind = Literal["ok", "error", "crashed", "timeout", "memory"]
StartMethod = Literal["forkserver", "spawn"]

# -- limits ----------------------------------------------------------------------------

# Frame header: a 4-byte big-endian body length, as multiprocessing.Connection
# and moot's own wire frames do.
_FRAME_HEADER = struct.Struct("!I")
_FRAME_HEADER_BYTES: Final = _FRAME_HEADER.size
# Default cap on one frame (a task's payload or its reply). Ray inlines
# results under 100 KiB and sends bigger ones through its object store; moot's
# scheduler will do the same with its object store, so this cap only bounds
# what one task can make the node buffer. 256 MiB is 16 x wire.FRAME_BYTES_MAX.
FRAME_BYTES_MAX_DEFAULT: Final = 256 * 1024 * 1024
# Default bound on ``run`` calls waiting for a worker. The scheduler admits
# tasks to a node by its free slots, so the queue holds only bursts;
# bounded like every queue here (TigerBeetle: a limit on everything).
QUEUE_MAX_DEFAULT: Final = 10_000
# SIGTERM to SIGKILL on a timeout: long enough for a task's SIGTERM handler
# to flush a file, short enough that a hung task frees its slot quickly
# (Kubernetes gives 30 s, but it stops whole services; this is one task).
TERMINATE_GRACE_S_DEFAULT: Final = 1.0
# A worker must say it is ready within this long after its process starts.
# Spawn takes ~0.1-0.3 s on a loaded 2-core box; 30 s tolerates a swapping host.
START_TIMEOUT_S_DEFAULT: Final = 30.0
# After a worker's socket closes without a reply, how long we let it finish
# dying by itself before SIGKILL, so ``os._exit(3)`` reports 3, not -9.
_DYING_GRACE_S: Final = 1.0
# Frames up to this size are sent with their header in one write (copying
# the body is cheaper than a second syscall and wakeup); Linux's pipe buffer size.
_COALESCE_BYTES_MAX: Final = 64 * 1024
# After a worker exits, how long to wait for its socket's EOF before giving
# up on a reply: the EOF only lags if a grandchild process inherited the socket.
_ORPHANED_SOCKET_GRACE_S: Final = 0.1
# Error text sent back (message, traceback) is cut to this many characters:
# a RecursionError's traceback is already collapsed by ``traceback``, but a
# message can be anything (Celery truncates its result repr similarly).
_TEXT_CHARS_MAX: Final = 64 * 1024
# After the sentinel says a spawned worker exited, waitpid may need a moment
# for the zombie to appear; poll this often, at most this many times.
_REAP_POLL_S: Final = 0.001
_REAP_POLLS_MAX: Final = 1000
# Replacement starts that fail back off up to this long between attempts.
_RESTART_BACKOFF_S_MAX: Final = 5.0
# The worker's watchdog thread needs almost no stack; a small one keeps it
# from eating into a tight RLIMIT_AS (the default reserves 8 MiB).
_WATCHDOG_STACK_BYTES: Final = 256 * 1024
# Functions a worker keeps unpickled (and the node remembers it has), least
# recently used out first.
_WORKER_FUNCTIONS_MAX: Final = 256


# -- errors --------------------------------------------------------------------------


class WorkerPoolError(Exception):
    """Base of the pool's operating errors."""


class PoolClosed(WorkerPoolError):
    """The pool is closed (or not started): no task can run on it."""


class PoolQueueFull(WorkerPoolError):
    """``queue_max`` tasks already wait for a worker."""


class TaskTooLarge(WorkerPoolError):
    """The packed task is over the pool's ``frame_bytes_max``."""


class WorkerStartError(WorkerPoolError):
    """A worker process could not be started or died before it was ready."""


class UnpicklableTask(pickle.PicklingError):
    """``pack_call`` could not pickle the function or one of its arguments."""


class TaskFailed(Exception):
    """Base of what ``unpack_result`` raises for outcomes other than ok and error."""

    def __init__(self, message: str, outcome: Outcome) -> None:
        super().__init__(message)
        self.outcome = outcome


class WorkerCrashed(TaskFailed):
    """The worker running the task died (segfault, ``os._exit``, a signal)."""


class TaskTimedOut(TaskFailed):
    """The task ran past its ``timeout_s`` and its worker was killed."""


class TaskOutOfMemory(TaskFailed):
    """The task hit the worker's memory limit (``MemoryError``)."""


class RemoteError(Exception):
    """A task's exception that could not be unpickled at the caller.

    ``error_type`` names the remote exception's class; the remote traceback
    is in ``traceback`` and in the ``__cause__``.
    """

    def __init__(self, error_type: str, message: str, remote_traceback: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.traceback = remote_traceback


class RemoteTraceback(Exception):
    """The ``__cause__`` of a re-raised task exception: prints the worker's traceback."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


# -- outcomes and messages -------------------------------------------------------------


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What happened to one task on one worker. See the module docstring for ``kind``.

    ``duration_s`` is the task's run time measured by the worker for ok, error
    and memory, and the node's time from sending the task to the worker's
    death for crashed and timeout. ``exit_code`` is None while the worker
    lives (ok, error, memory), else its exit status or minus the signal.
    """

    task_id: str
    kind: OutcomeKind
    worker_pid: int
    duration_s: float
    result: bytes = b""
    error_type: str = ""
    error_message: str = ""
    traceback: str = ""
    exception: bytes = b""
    exit_code: int | None = None

    def __post_init__(self) -> None:
        # An inconsistent outcome is a bug in this module, not bad input.
        if self.kind == "ok":
            assert self.error_type == "", "an ok outcome carries no error"
        else:
            assert self.result == b"", "only an ok outcome carries a result"
            assert self.error_type != "", "a failed outcome names its error"
        if self.kind in ("crashed", "timeout"):
            assert self.exit_code is not None, "a dead worker has an exit code"
        assert self.duration_s >= 0.0, "durations are not negative"


class _Request(msgspec.Struct, frozen=True, tag="request"):
    """Node to worker: run this packed call. With ``function_hash`` the
    payload packs only ``(args, kwargs)`` and the function is the one with
    that hash: in ``function`` (cloudpickled) the first time this worker
    gets it, from the worker's cache after that."""

    task_id: str
    payload: bytes
    function_hash: str = ""
    function: bytes = b""


class _Ready(msgspec.Struct, frozen=True, tag="ready"):
    """Worker to node, once: started, limits applied, waiting for requests."""

    pid: int


class _Reply(msgspec.Struct, frozen=True, tag="reply"):
    """Worker to node: the task's outcome (the worker is alive when sending it)."""

    task_id: str
    kind: Literal["ok", "error", "memory"]
    duration_s: float
    result: bytes = b""
    error_type: str = ""
    error_message: str = ""
    traceback: str = ""
    exception: bytes = b""


_WorkerMessage = _Ready | _Reply
_request_encoder = msgspec.msgpack.Encoder()
_reply_decoder = msgspec.msgpack.Decoder(_WorkerMessage)


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolStats:
    """Counters of one pool; ``started`` to ``memory_errors`` are monotonic."""

    processes: int
    running: int  # tasks sent to a worker, not yet finished
    idle: int  # started workers with no task
    queued: int  # run() calls waiting for a worker
    started: int  # worker processes ever started (replacements included)
    completed: int  # ok or error outcomes
    crashed: int
    timeouts: int
    memory_errors: int
    start_failures: int


# -- packing calls ---------------------------------------------------------------------


def pack_call(
    fn: Callable[..., Any], args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
) -> bytes:
    """Cloudpickle ``(fn, args, kwargs)`` for ``WorkerPool.run``.

    Raises ``UnpicklableTask`` naming the part that does not pickle (the
    function, which includes what it closes over, or an argument).
    """
    call = (fn, tuple(args), dict(kwargs or {}))
    try:
        return bytes(cloudpickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception as error:
        raise UnpicklableTask(_describe_unpicklable(call, error)) from error


def pack_arguments(args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> bytes:
    """Cloudpickle ``(args, kwargs)`` for ``WorkerPool.run(..., function=...)``;
    ``UnpicklableTask`` names the argument that does not pickle."""
    call = (tuple(args), dict(kwargs or {}))
    try:
        return bytes(cloudpickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception as error:
        raise UnpicklableTask(_describe_unpicklable((_arguments, *call), error)) from error


def _arguments() -> None:
    """Stands for the function when only arguments are packed."""


def _describe_unpicklable(
    call: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]], error: Exception
) -> str:
    """Which part of a call does not pickle, and what to do about it."""
    fn, args, kwargs = call
    parts: list[tuple[str, Any]] = [(f"the function {_name_of(fn)}", fn)]
    parts += [(f"positional argument {index}", value) for index, value in enumerate(args)]
    parts += [(f"keyword argument {key!r}", value) for key, value in kwargs.items()]
    culprit = "the call"
    for label, value in parts:
        try:
            cloudpickle.dumps(value)
        except Exception as part_error:
            culprit, error = label, part_error
            break
    return (
        f"cannot run {_name_of(fn)} in a worker process: {culprit} cannot be pickled "
        f"({type(error).__name__}: {error}). Tasks run in other processes, so everything "
        "they use must pickle: create locks, sockets, files and clients inside the task, "
        "or pass what they are made from."
    )


def _name_of(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or type(fn).__name__)


def unpack_result(outcome: Outcome) -> Any:
    """The task's return value; else raise what the task raised, or a ``TaskFailed``.

    An ``error`` re-raises the task's own exception (its remote traceback as
    ``__cause__``), or ``RemoteError`` when the exception does not unpickle.
    """
    if outcome.kind == "ok":
        return cloudpickle.loads(outcome.result)
    if outcome.kind == "error":
        raise _remote_exception(outcome) from RemoteTraceback(outcome.traceback)
    failure: dict[str, type[TaskFailed]] = {
        "crashed": WorkerCrashed,
        "timeout": TaskTimedOut,
        "memory": TaskOutOfMemory,
    }
    raise failure[outcome.kind](
        f"task {outcome.task_id} {outcome.kind} on worker {outcome.worker_pid} "
        f"(exit code {outcome.exit_code}): {outcome.error_type}: {outcome.error_message}",
        outcome,
    )


def _remote_exception(outcome: Outcome) -> BaseException:
    if outcome.exception:
        try:
            exception = cloudpickle.loads(outcome.exception)
        except Exception:
            exception = None
        if isinstance(exception, BaseException):
            return exception
    return RemoteError(outcome.error_type, outcome.error_message, outcome.traceback)


# -- frames ----------------------------------------------------------------------------


def _frame(body: bytes) -> bytes:
    return _FRAME_HEADER.pack(len(body)) + body


class FrameTooLarge(WorkerPoolError):
    """A frame header announced more than ``frame_bytes_max`` bytes."""


class _FrameDecoder:
    """Splits a byte stream into frames; buffers only, no I/O (h11 style)."""

    def __init__(self, frame_bytes_max: int) -> None:
        assert frame_bytes_max > 0
        self._frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next whole frame's body, or None until more data arrives."""
        if len(self._buffer) < _FRAME_HEADER_BYTES:
            return None
        (length,) = _FRAME_HEADER.unpack_from(self._buffer)
        if length > self._frame_bytes_max:
            raise FrameTooLarge(f"frame of {length} bytes, over frame_bytes_max")
        end = _FRAME_HEADER_BYTES + length
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[_FRAME_HEADER_BYTES:end])
        del self._buffer[:end]
        return body


# -- the worker process ----------------------------------------------------------------


def _worker_main(sock: socket.socket, memory_limit_bytes: int | None, frame_bytes_max: int) -> None:
    """Entry point of a worker process: serve requests until the node closes the socket."""
    # Ctrl-C in the node's terminal reaches the whole process group; the node
    # decides when workers stop, so they ignore it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock.setblocking(True)
    _start_orphan_watchdog(sock)
    if memory_limit_bytes is not None:
        import resource

        # Soft and hard: the task cannot raise it back.
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    _send_frame(sock, msgspec.msgpack.encode(_Ready(pid=os.getpid())))
    request_decoder = msgspec.msgpack.Decoder(_Request)
    while True:
        body = _receive_frame(sock, frame_bytes_max)
        if body is None:
            return  # the node closed the pool, or retired this worker
        request = request_decoder.decode(body)
        reply = _execute(request, frame_bytes_max)
        _flush_standard_streams()
        _send_frame(sock, msgspec.msgpack.encode(reply))
        if reply.kind == "memory":
            return  # a fresh process beats a fragmented heap; the node replaces us


def _start_orphan_watchdog(sock: socket.socket) -> None:
    """Exit the worker when the node's end of the socket closes, even mid-task."""
    if not hasattr(select, "POLLRDHUP"):
        return  # not Linux: an orphan lives until its task ends and it reads EOF

    def watch() -> None:
        poller = select.poll()
        # POLLRDHUP alone: data arriving (POLLIN) must not wake us.
        poller.register(sock.fileno(), select.POLLRDHUP)
        while True:
            for _, events in poller.poll():
                if events & (select.POLLRDHUP | select.POLLHUP | select.POLLERR):
                    os._exit(0)

    previous = threading.stack_size(_WATCHDOG_STACK_BYTES)
    try:
        threading.Thread(target=watch, name="moot-orphan-watchdog", daemon=True).start()
    finally:
        threading.stack_size(previous)


def _receive_frame(sock: socket.socket, frame_bytes_max: int) -> bytes | None:
    header = _receive_exactly(sock, _FRAME_HEADER_BYTES)
    if header is None:
        return None
    (length,) = _FRAME_HEADER.unpack(header)
    assert length <= frame_bytes_max, "the node checks request sizes before sending"
    return _receive_exactly(sock, length)


def _receive_exactly(sock: socket.socket, length: int) -> bytes | None:
    buffer = bytearray(length)
    view = memoryview(buffer)
    received = 0
    while received < length:
        count = sock.recv_into(view[received:])
        if count == 0:
            return None
        received += count
    return bytes(buffer)


def _send_frame(sock: socket.socket, body: bytes) -> None:
    header = _FRAME_HEADER.pack(len(body))
    if len(body) <= _COALESCE_BYTES_MAX:
        sock.sendall(header + body)  # one syscall, and one wakeup of the node
    else:
        sock.sendall(header)
        sock.sendall(body)  # no copy of a large body


_functions: dict[str, Callable[..., Any]] = {}  # a worker's cache, by hash; least recent first


def _function(request: _Request) -> Callable[..., Any]:
    fn = _functions.pop(request.function_hash, None)
    if fn is None:
        if not request.function:
            raise RuntimeError(f"the node sent no function for hash {request.function_hash} (a moot bug)")
        fn = cloudpickle.loads(request.function)
    _functions[request.function_hash] = fn  # the most recent at the end
    if len(_functions) > _WORKER_FUNCTIONS_MAX:
        del _functions[next(iter(_functions))]
    return fn


def _execute(request: _Request, frame_bytes_max: int) -> _Reply:
    """Run one packed call; every exception becomes a reply."""
    started = time.perf_counter()
    try:
        if request.function_hash:
            fn = _function(request)
            args, kwargs = cloudpickle.loads(request.payload)
        else:
            fn, args, kwargs = cloudpickle.loads(request.payload)
        value = fn(*args, **kwargs)
    except MemoryError as error:
        return _error_reply(request, "memory", error, time.perf_counter() - started)
    except BaseException as error:  # SystemExit too: a task's sys.exit() is its error
        return _error_reply(request, "error", error, time.perf_counter() - started)
    duration_s = time.perf_counter() - started
    try:
        result = bytes(cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except MemoryError as error:
        return _error_reply(request, "memory", error, duration_s)
    except Exception as error:
        return _error_reply(
            request,
            "error",
            error,
            duration_s,
            prefix=f"the task returned a {type(value).__name__} that cannot be pickled: ",
        )
    # Leave room for the reply's other fields within the frame cap.
    if len(result) > frame_bytes_max - 4096:
        return _Reply(
            task_id=request.task_id,
            kind="error",
            duration_s=duration_s,
            error_type="ResultTooLarge",
            error_message=(
                f"the task's result pickles to {len(result)} bytes, over the worker pool's "
                f"frame_bytes_max={frame_bytes_max}; put large results in the object store "
                "and return its id"
            ),
        )
    return _Reply(task_id=request.task_id, kind="ok", duration_s=duration_s, result=result)


def _error_reply(
    request: _Request,
    kind: Literal["error", "memory"],
    error: BaseException,
    duration_s: float,
    *,
    prefix: str = "",
) -> _Reply:
    text = "".join(traceback.format_exception(error))
    try:
        pickled = bytes(cloudpickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:
        pickled = b""  # the caller gets a RemoteError with the text instead
    return _Reply(
        task_id=request.task_id,
        kind=kind,
        duration_s=duration_s,
        error_type=type(error).__qualname__,
        error_message=(prefix + str(error))[:_TEXT_CHARS_MAX],
        traceback=text[-_TEXT_CHARS_MAX:],  # the end holds the raising line
        exception=pickled,
    )


def _flush_standard_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


# -- the node side ---------------------------------------------------------------------


class _WorkerConnection(asyncio.Protocol):
    """The node's end of one worker's socket: frames in, one pending reply at a time."""

    def __init__(self, frame_bytes_max: int) -> None:
        self._decoder = _FrameDecoder(frame_bytes_max)
        self._messages: collections.deque[_WorkerMessage] = collections.deque()
        self._waiter: asyncio.Future[_WorkerMessage] | None = None
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.broken_reason = ""  # set when the worker broke the protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._decoder.receive_data(data)
        try:
            while (body := self._decoder.next_frame()) is not None:
                self._messages.append(_reply_decoder.decode(body))
        except (FrameTooLarge, msgspec.DecodeError) as error:
            # Only a task writing into the socket's descriptor gets here.
            self._break(f"the worker broke the frame protocol: {error}")
            return
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake()

    def _break(self, reason: str) -> None:
        self.broken_reason = reason
        self.lost = True
        assert self.transport is not None
        self.transport.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._messages:
            waiter.set_result(self._messages.popleft())
        elif self.lost:
            waiter.set_exception(ConnectionResetError("worker connection lost"))

    def fail_waiter(self) -> None:
        """The worker process exited but its socket stays open: no reply will come."""
        self.lost = True
        self._wake()

    def next_message(self) -> asyncio.Future[_WorkerMessage]:
        """A future for the next message (an exception if the connection is lost)."""
        assert self._waiter is None or self._waiter.done(), "one reader at a time"
        self._waiter = asyncio.get_running_loop().create_future()
        self._wake()
        return self._waiter

    def send(self, body: bytes) -> None:
        assert self.transport is not None
        if not self.lost:
            self.transport.write(_frame(body))


class _Worker:
    """One worker process as the node sees it."""

    def __init__(
        self, process: multiprocessing.process.BaseProcess, connection: _WorkerConnection
    ) -> None:
        assert process.pid is not None
        self.process = process
        self.pid: int = process.pid
        self.connection = connection
        self.exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.tasks_run = 0
        self.functions: dict[str, None] = {}  # hashes of the functions this worker has cached
        self.retired = False  # out of service: dying, or reaped
        self.exit_code: int | None = None  # once reaped


class WorkerPool:
    """``processes`` worker processes running packed calls; see the module docstring."""

    def __init__(
        self,
        processes: int,
        *,
        memory_limit_bytes: int | None = None,
        start_method: StartMethod = "forkserver",
        tasks_per_worker_max: int | None = None,
        queue_max: int = QUEUE_MAX_DEFAULT,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        terminate_grace_s: float = TERMINATE_GRACE_S_DEFAULT,
        start_timeout_s: float = START_TIMEOUT_S_DEFAULT,
    ) -> None:
        """Configure; nothing starts until ``start``.

        ``start_method``: "forkserver" (default) forks each worker from a
        small single-threaded server process that has already imported this
        module and cloudpickle, so a replacement is ready in milliseconds and
        inherits nothing from the node (threads, sockets, TLS state); forking
        the node itself would not be safe. "spawn" starts a fresh interpreter
        per worker (slower, ~0.1-0.3 s, and runs the node's main module again)
        for platforms without forkserver. ``tasks_per_worker_max`` retires a
        worker after that many tasks (leaky tasks; ``maxtasksperchild``).
        ``memory_limit_bytes`` is each worker's ``RLIMIT_AS`` (address space:
        set it well above the ~50 MiB an idle worker maps).
        """
        if processes < 1:
            raise ValueError(f"processes must be >= 1, not {processes}")
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(f"start_method must be 'forkserver' or 'spawn', not {start_method!r}")
        if memory_limit_bytes is not None and memory_limit_bytes < 32 * 1024 * 1024:
            raise ValueError(
                f"memory_limit_bytes={memory_limit_bytes} is below 32 MiB: a Python worker "
                "needs about that much address space just to start"
            )
        if tasks_per_worker_max is not None and tasks_per_worker_max < 1:
            raise ValueError(
                f"tasks_per_worker_max must be >= 1 or None, not {tasks_per_worker_max}"
            )
        if queue_max < 0:
            raise ValueError(f"queue_max must be >= 0, not {queue_max}")
        if not 4096 < frame_bytes_max < 2**32:
            raise ValueError(f"frame_bytes_max must be in (4096, 2**32), not {frame_bytes_max}")
        if terminate_grace_s < 0 or start_timeout_s <= 0:
            raise ValueError("terminate_grace_s must be >= 0 and start_timeout_s > 0")
        self.processes = processes
        self.memory_limit_bytes = memory_limit_bytes
        self.start_method = start_method
        self.tasks_per_worker_max = tasks_per_worker_max
        self.queue_max = queue_max
        self.frame_bytes_max = frame_bytes_max
        self.terminate_grace_s = terminate_grace_s
        self.start_timeout_s = start_timeout_s
        self._context: multiprocessing.context.BaseContext = multiprocessing.get_context(
            start_method
        )
        self._workers: dict[int, _Worker] = {}  # by pid: every live or dying worker
        self._idle: collections.deque[_Worker] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[_Worker]] = collections.deque()
        self._background: set[asyncio.Task[None]] = set()
        self._start_lock = asyncio.Lock()  # one multiprocessing start at a time
        self._started = False
        self._closed = False
        self._worker_numbers = itertools.count(1)
        self._running = 0
        self._counts = collections.Counter[str]()

    # -- lifecycle --

    async def start(self) -> None:
        """Start all ``processes`` workers; ``WorkerStartError`` if one cannot start."""
        assert not self._started, "start() once"
        self._started = True
        if self.start_method == "forkserver":
            # Global to this process's forkserver and read only when it starts:
            # preloading makes every fork start with these already imported.
            self._context.set_forkserver_preload(["__main__", __name__])
        try:
            for _ in range(self.processes):
                self._release(await self._start_worker())
        except BaseException:
            await self.close()
            raise
        assert len(self._workers) == self.processes

    async def close(self) -> None:
        """Kill and reap every worker; waiting and running ``run`` calls get ``PoolClosed``."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(PoolClosed("the worker pool was closed"))
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        workers = list(self._workers.values())
        for worker in workers:
            self._kill(worker, signal.SIGKILL)
        await asyncio.gather(*(self._reap(worker) for worker in workers))
        self._idle.clear()
        assert not self._workers, "every worker reaped"

    async def __aenter__(self) -> WorkerPool:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- running tasks --

    async def run(
        self,
        task_id: str,
        payload: bytes,
        *,
        timeout_s: float | None = None,
        function: tuple[str, bytes] | None = None,
    ) -> Outcome:
        """Run a ``pack_call`` payload on a worker, waiting FIFO for one if all are busy.

        With ``function`` (its hash and its cloudpickled bytes) ``payload``
        is ``pack_arguments(args, kwargs)``: a worker unpickles each
        function once and keeps it (the function's bytes go to each worker
        once, however many tasks use it).

        ``timeout_s`` counts from when a worker takes the task (not the wait
        in the queue). Cancelling ``run`` while the task runs kills its
        worker (a running call cannot be interrupted otherwise).
        Raises ``PoolClosed``, ``PoolQueueFull`` or ``TaskTooLarge``; every
        outcome of the task itself is an ``Outcome``.
        """
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 or None, not {timeout_s}")
        body = _request_encoder.encode(_Request(task_id=task_id, payload=payload))
        if function is not None and len(body) + len(function[1]) > self.frame_bytes_max:
            body += function[1]  # only for the size check below
        if len(body) > self.frame_bytes_max:
            raise TaskTooLarge(
                f"task {task_id} packs to {len(body)} bytes, over the worker pool's "
                f"frame_bytes_max={self.frame_bytes_max}; put large arguments in the object "
                "store and pass their ids"
            )
        worker = await self._acquire()
        if function is not None:
            # The same least-recently-used order as the worker's cache, so
            # that this knows exactly what the worker still has.
            known = worker.functions.pop(function[0], "absent") is None
            request = _Request(task_id, payload, function[0], b"" if known else function[1])
            body = _request_encoder.encode(request)
            worker.functions[function[0]] = None
            if len(worker.functions) > _WORKER_FUNCTIONS_MAX:
                del worker.functions[next(iter(worker.functions))]
        self._running += 1
        try:
            outcome = await self._run_on(worker, task_id, body, timeout_s)
        except BaseException:
            # Cancelled (or closing) mid-task: the worker's state is unknown.
            self._retire(worker, kill=True)
            raise
        finally:
            self._running -= 1
        self._after_task(worker, outcome)
        return outcome

    async def _run_on(
        self, worker: _Worker, task_id: str, body: bytes, timeout_s: float | None
    ) -> Outcome:
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        reply = worker.connection.next_message()
        worker.connection.send(body)
        worker.tasks_run += 1
        try:
            async with asyncio.timeout(timeout_s):
                message = await reply
        except TimeoutError:
            if self._closed:
                raise PoolClosed("the worker pool was closed while the task ran") from None
            return await self._timed_out(worker, task_id, sent_at, timeout_s)
        except ConnectionResetError:
            if self._closed:
                raise PoolClosed("the worker pool was closed while the task ran") from None
            return await self._crashed(worker, task_id, sent_at, worker.connection.broken_reason)
        if not isinstance(message, _Reply) or message.task_id != task_id:
            return await self._crashed(worker, task_id, sent_at, "the worker replied out of turn")
        return Outcome(
            task_id=task_id,
            kind=message.kind,
            worker_pid=worker.pid,
            duration_s=message.duration_s,
            result=message.result,
            error_type=message.error_type,
            error_message=message.error_message,
            traceback=message.traceback,
            exception=message.exception,
        )

    async def _timed_out(
        self, worker: _Worker, task_id: str, sent_at: float, timeout_s: float | None
    ) -> Outcome:
        """The task ran over its time: kill its worker and say so."""
        assert timeout_s is not None, "only a timeout_s can time out"
        loop = asyncio.get_running_loop()
        self._counts["timeouts"] += 1
        exit_code = await self._terminate(worker)
        return Outcome(
            task_id=task_id,
            kind="timeout",
            worker_pid=worker.pid,
            duration_s=loop.time() - sent_at,
            exit_code=exit_code,
            error_type="TaskTimedOut",
            error_message=(
                f"task {task_id} ran over its timeout of {timeout_s} s; its worker "
                f"(pid {worker.pid}) was killed"
            ),
        )

    async def _crashed(self, worker: _Worker, task_id: str, sent_at: float, reason: str) -> Outcome:
        """The worker died (or broke the protocol) mid-task: reap it and say how."""
        self._counts["crashed"] += 1
        if not reason:
            # Let a worker that is exiting by itself finish, for its real exit code.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(worker.exited), _DYING_GRACE_S)
        self._kill(worker, signal.SIGKILL)
        exit_code = await self._reap(worker)
        return Outcome(
            task_id=task_id,
            kind="crashed",
            worker_pid=worker.pid,
            duration_s=asyncio.get_running_loop().time() - sent_at,
            exit_code=exit_code,
            error_type="WorkerCrashed",
            error_message=reason or _describe_exit(worker.pid, exit_code),
        )

    def _after_task(self, worker: _Worker, outcome: Outcome) -> None:
        """Decide the worker's fate after a task: back to work, or replaced."""
        if outcome.kind in ("ok", "error"):
            self._counts["completed"] += 1
        elif outcome.kind == "memory":
            self._counts["memory_errors"] += 1
        if outcome.kind in ("crashed", "timeout"):
            assert worker.pid not in self._workers, "a dead worker was reaped"
            self._replace()
        elif outcome.kind == "memory" or (
            self.tasks_per_worker_max is not None and worker.tasks_run >= self.tasks_per_worker_max
        ):
            self._retire(worker, kill=False)
        else:
            self._release(worker)

    # -- assigning workers (no awaits: decide, then the caller waits) --

    async def _acquire(self) -> _Worker:
        if self._closed or not self._started:
            raise PoolClosed("the worker pool is not running: start() it first, or it was closed")
        if self._idle and not self._waiters:
            return self._idle.popleft()
        if len(self._waiters) >= self.queue_max:
            raise PoolQueueFull(
                f"{len(self._waiters)} tasks already wait for one of {self.processes} workers "
                f"(queue_max={self.queue_max}); retry later, or raise queue_max"
            )
        waiter: asyncio.Future[_Worker] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result())  # handed a worker just as we were cancelled
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def _release(self, worker: _Worker) -> None:
        """A ready worker: to the first live waiter, else idle."""
        assert not worker.retired
        if worker.exited.done():
            self._retire(worker, kill=True)  # died while nobody watched
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        self._idle.append(worker)

    def _retire(self, worker: _Worker, *, kill: bool) -> None:
        """Take a worker out of service and start its replacement, both in the background."""
        if worker.retired or worker.pid not in self._workers:
            return
        worker.retired = True
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)
        if self._closed:
            self._kill(worker, signal.SIGKILL)
            return  # close() reaps it
        if kill:
            self._kill(worker, signal.SIGKILL)
        else:
            # EOF: the worker finishes its loop and exits 0.
            assert worker.connection.transport is not None
            worker.connection.transport.close()
        self._background_task(self._reap_retired(worker))
        self._replace()

    async def _reap_retired(self, worker: _Worker) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(worker.exited), self.terminate_grace_s)
        self._kill(worker, signal.SIGKILL)
        await self._reap(worker)

    def _replace(self) -> None:
        if not self._closed:
            self._background_task(self._start_replacement())

    async def _start_replacement(self) -> None:
        backoff_s = 0.05
        while not self._closed:
            try:
                worker = await self._start_worker()
            except WorkerStartError as error:
                self._counts["start_failures"] += 1
                _log.warning("worker replacement failed, retrying in %.2f s: %s", backoff_s, error)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, _RESTART_BACKOFF_S_MAX)
                continue
            self._release(worker)
            return

    def _background_task(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _on_worker_exit(self, worker: _Worker) -> None:
        """The worker's sentinel fired: it exited (a busy worker's run() notices itself)."""
        asyncio.get_running_loop().remove_reader(worker.process.sentinel)
        if not worker.exited.done():
            worker.exited.set_result(None)
        if not worker.connection.lost:
            # Normally the socket's EOF follows at once, after any reply the
            # worker sent before exiting (which must win). If a grandchild
            # inherited the socket, no EOF comes: stop waiting shortly after.
            loop = asyncio.get_running_loop()
            loop.call_later(_ORPHANED_SOCKET_GRACE_S, worker.connection.fail_waiter)
        if worker in self._idle and not self._closed:
            self._counts["crashed"] += 1
            self._retire(worker, kill=True)

    # -- processes --

    async def _start_worker(self) -> _Worker:
        loop = asyncio.get_running_loop()
        node_socket, worker_socket = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _, connection = await loop.create_unix_connection(
                lambda: _WorkerConnection(self.frame_bytes_max), sock=node_socket
            )
        except BaseException:
            node_socket.close()
            worker_socket.close()
            raise
        process = self._context.Process(  # type: ignore[attr-defined]
            target=_worker_main,
            args=(worker_socket, self.memory_limit_bytes, self.frame_bytes_max),
            name=f"moot-worker-{next(self._worker_numbers)}",
            daemon=True,
        )
        try:
            async with self._start_lock:
                await self._start_process(process)
        finally:
            worker_socket.close()
            if process.pid is None:
                assert connection.transport is not None
                connection.transport.abort()
        self._counts["started"] += 1
        worker = _Worker(process, connection)
        self._workers[worker.pid] = worker
        loop.add_reader(process.sentinel, self._on_worker_exit, worker)
        try:
            await self._wait_ready(worker)
        except BaseException:
            self._kill(worker, signal.SIGKILL)
            await self._reap(worker)
            raise
        return worker

    async def _start_process(self, process: multiprocessing.process.BaseProcess) -> None:
        """``process.start()`` in a thread, which finishes even if we are cancelled."""
        if self._closed:
            raise PoolClosed("the worker pool was closed")
        # A thread: the first forkserver start waits for the server to import
        # its preload modules (~0.1 s), and a spawn start forks the node.
        starting = asyncio.ensure_future(asyncio.to_thread(process.start))
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            # Closing mid-start: let the start finish, then kill what it started,
            # so no process escapes the pool.
            with contextlib.suppress(Exception):
                await starting
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                await asyncio.to_thread(process.join)
                process.close()
            raise
        except Exception as error:
            raise WorkerStartError(f"could not start a worker process: {error}") from error

    async def _wait_ready(self, worker: _Worker) -> None:
        ready = worker.connection.next_message()
        try:
            async with asyncio.timeout(self.start_timeout_s):
                message = await ready
        except TimeoutError:
            raise WorkerStartError(
                f"worker {worker.pid} was not ready within start_timeout_s="
                f"{self.start_timeout_s}; is the machine overloaded?"
            ) from None
        except ConnectionResetError:
            exit_code = await self._reap(worker)
            hint = ""
            if self.memory_limit_bytes is not None:
                hint = f"; is memory_limit_bytes={self.memory_limit_bytes} too low?"
            raise WorkerStartError(
                f"worker {worker.pid} exited before it was ready "
                f"({_describe_exit(worker.pid, exit_code)}){hint}"
            ) from None
        assert isinstance(message, _Ready), "a worker's first message is Ready"
        assert message.pid == worker.pid, "the Ready comes from the process we started"

    async def _terminate(self, worker: _Worker) -> int:
        """SIGTERM, SIGKILL after the grace, reap: the exit code."""
        self._kill(worker, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(worker.exited), self.terminate_grace_s)
        self._kill(worker, signal.SIGKILL)
        return await self._reap(worker)

    def _kill(self, worker: _Worker, signal_number: int) -> None:
        if worker.exited.done():
            return  # its pid may already belong to someone else
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal_number)

    async def _reap(self, worker: _Worker) -> int:
        """Wait for the worker to exit, collect its status, free its resources.

        Safe to call more than once (close() and a failing run() may both reap).
        """
        await asyncio.shield(worker.exited)
        polls = 0
        while worker.exit_code is None:
            exit_code = worker.process.exitcode
            if exit_code is not None:
                worker.exit_code = exit_code
                break
            # spawn: the sentinel pipe closes a moment before the zombie appears.
            polls += 1
            assert polls <= _REAP_POLLS_MAX, f"worker {worker.pid} exited but cannot be reaped"
            await asyncio.sleep(_REAP_POLL_S)
        worker.retired = True
        if self._workers.pop(worker.pid, None) is not None:
            assert worker.connection.transport is not None
            worker.connection.transport.abort()
            worker.process.close()
        return worker.exit_code

    # -- observing --

    def stats(self) -> PoolStats:
        """Current and cumulative counters."""
        return PoolStats(
            processes=self.processes,
            running=self._running,
            idle=len(self._idle),
            queued=sum(1 for waiter in self._waiters if not waiter.done()),
            started=self._counts["started"],
            completed=self._counts["completed"],
            crashed=self._counts["crashed"],
            timeouts=self._counts["timeouts"],
            memory_errors=self._counts["memory_errors"],
            start_failures=self._counts["start_failures"],
        )

    def worker_pids(self) -> list[int]:
        """Pids of the workers in service or starting (not those being retired), sorted."""
        return sorted(pid for pid, worker in self._workers.items() if not worker.retired)


def _describe_exit(pid: int, exit_code: int) -> str:
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return f"worker {pid} was killed by {name}"
    return f"worker {pid} exited with code {exit_code}"
