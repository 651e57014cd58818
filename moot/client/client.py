"""The Python client: ``moot.connect(addresses, cluster=DIR)``.

A client talks to any node over TLS (the cluster's client certificate plus
the client token). It runs its own asyncio loop on a background thread, as
the Dask and Ray clients do, so its API is plain blocking calls usable from
scripts, notebooks and threads. When the node it talks to stops answering
it fails over to the next address it knows.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from moot.client import mapreduce
from moot.client.errors import BadRequest, MootError, Timeout, Unavailable, error_from_reply
from moot.client.kv import Kv
from moot.client.objects import Objects
from moot.client.tasks import Executor, Future, Job, TaskClient
from moot.core import wire
from moot.runtime import identity
from moot.runtime.transport import ClientConnection, open_client_connection

T = TypeVar("T")

REQUEST_TIMEOUT_S = 10.0  # a node answers membership requests from memory; 10 s means it is gone


class Client:
    """A connection to a moot federation (see module doc)."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        cluster: str | Path,
        timeout_s: float = REQUEST_TIMEOUT_S,
        pinned: bool = False,
        local_reads: bool = True,
    ) -> None:
        if isinstance(addresses, str):
            addresses = [addresses]
        if not addresses:
            raise BadRequest("connect() needs at least one node address HOST:PORT")
        try:
            self.cluster = identity.load_cluster(Path(cluster))
        except identity.ClusterError as error:
            raise BadRequest(str(error)) from error
        self.addresses = list(dict.fromkeys(addresses))
        self.pinned = pinned
        """Talk only to ``addresses``: never follow a leader hint to another node."""
        self.local_reads = local_reads
        """Read chunks of a node on this machine from its files (verified), not through TLS."""
        self.timeout_s = timeout_s
        self._request_ids = itertools.count(1)
        self._connections: dict[str, ClientConnection] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="moot-client", daemon=True)
        self._thread.start()
        self._closed = False
        self._closing: set[asyncio.Future[None]] = set()
        self._connecting: dict[str, asyncio.Future[ClientConnection]] = {}
        self.kv = Kv(self)
        """The replicated key-value store (``moot.client.kv``)."""
        self.objects = Objects(self)
        """The content-addressed object store (``moot.client.objects``)."""
        self.tasks = TaskClient(self)
        """Durable tasks (``moot.client.tasks``); ``submit``, ``map``, ``gather``,
        ``job`` and ``executor`` below are its shortcuts."""

    # -- public API ------------------------------------------------------------

    def members(self, *, node: str | None = None) -> list[wire.MemberInfo]:
        """The membership as ``node`` (or any reachable node) sees it."""
        reply = self._request(lambda request_id: wire.MembersRequest(request_id=request_id), node=node)
        assert isinstance(reply, wire.MembersReply)
        return list(reply.members)

    def events(
        self, *, after: int = 0, limit: int = 1_000, federation: bool = True, node: str | None = None
    ) -> list[dict[str, Any]]:
        """The federation's timeline (``moot events``): every live member's
        events stamped after the hybrid timestamp ``after``, merged in
        hybrid-clock order (cause before effect), oldest first, the newest
        ``limit``. Each is a dict with ``hlc``, ``time``, ``node`` (where it
        was seen), ``event`` and the event's own fields. ``federation=False``:
        one node's alone."""
        if not 1 <= limit <= wire.EVENTS_PER_QUERY_MAX:
            raise BadRequest(f"events(): limit must be within 1..{wire.EVENTS_PER_QUERY_MAX}, not {limit}")
        if not 0 <= after < 2**63:
            raise BadRequest(f"events(): after is a hybrid timestamp (0 to 2**63 - 1), not {after}")
        reply = self._request(
            lambda request_id: wire.EventsQuery(request_id=request_id, after=after, limit=limit, federation=federation),
            node=node,
        )
        assert isinstance(reply, wire.EventsReply)
        records: list[dict[str, Any]] = json.loads(reply.events)
        return records

    def node_status(self, address: str) -> wire.StatusReply:
        """One node's view of the Raft group."""
        reply = self._request(lambda request_id: wire.StatusRequest(request_id=request_id), node=address)
        assert isinstance(reply, wire.StatusReply)
        return reply

    def status(self) -> list[wire.StatusReply]:
        """Every reachable member's view of the Raft group (``moot status``):
        role, term, leader, voters, learners, commit and applied index."""
        members = self.members()
        replies: list[wire.StatusReply] = []
        for member in members:
            if member.state not in ("alive", "suspect"):
                continue
            try:
                replies.append(self.node_status(member.address))
            except MootError:
                continue
        return replies

    # -- tasks ---------------------------------------------------------------------

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` on the federation; a ``moot.Future``.

        Options (keywords): ``retries`` (re-runs after the task raised,
        default 0), ``max_retries`` (re-runs after its worker died, default
        3), ``timeout`` (seconds, the task is killed after), ``resources``
        (e.g. ``{"cpus": 1, "gpu": 1}``), ``placement`` (labels a node must
        have, e.g. ``{"region": "lahore"}``). Every other keyword goes to ``fn``.
        Returns at once; the job is written to the replicated database within
        milliseconds (``client.tasks.wait_submitted()`` waits for it; from
        then on it survives any node, this client included). ``fut.job_id``
        names it for ``client.job``."""
        return self.tasks.submit(fn, *args, **kwargs)

    def map(self, fn: Any, *iterables: Any, **options: Any) -> list[Future]:
        """``fn`` over the iterables (zipped, shortest wins), as one job; a future per call."""
        return self.tasks.map(fn, *iterables, **options)

    def gather(self, futures: Any, errors: str = "raise") -> list[Any]:
        """The futures' results in order (``errors="skip"`` leaves failures out)."""
        return self.tasks.gather(futures, errors=errors)

    def job(self, job_id: str) -> Job:
        """Reattach to a job by id (its futures complete from the federation's records)."""
        return self.tasks.job(job_id)

    def jobs(self) -> list[wire.JobSummary]:
        """Every job the federation keeps, with its counts (``moot job ls``)."""
        return self.tasks.jobs()

    def map_reduce(
        self,
        inputs: Any,
        mapper: Callable[[Any], Iterable[tuple[Any, Any]]],
        reducer: Callable[[Any, list[Any]], Any],
        *,
        combiner: Callable[[Any, list[Any]], Any] | None = None,
        partitions: int = 8,
        split_bytes: int = mapreduce.SPLIT_BYTES_DEFAULT,
        output: str | os.PathLike[str] | None = None,
        retries: int = 0,
        backups: bool = True,
        progress: mapreduce.ProgressHook | None = None,
        stats: mapreduce.RunStats | None = None,
        whole_split: bool = False,
    ) -> dict[Any, Any]:
        """MapReduce over ``inputs`` on the federation; ``{key: reducer(key, values)}``.

        ``inputs``: paths, globs or fsspec URLs of text files (a record is one
        line without its newline), or any iterable of Python records.
        ``mapper(record)`` yields ``(key, value)`` pairs; ``combiner(key,
        values)`` folds values on the map side (it must return what the
        reducer can take as one more value); ``reducer(key, values)`` makes
        the key's result. With ``output=DIR`` the result goes to partition
        files ``DIR/part-NNNNN`` (``key<TAB>value`` lines) and the return
        value maps each file to its number of keys. ``progress(phase, done,
        total)`` is called as tasks finish; ``stats`` (a ``RunStats``) is
        filled in. With ``whole_split`` the mapper gets an iterator over a
        split's records at once and returns pairs or a mapping ``{key:
        value}`` (Spark's ``mapPartitions``): the fast path for a mapper
        that counts with ``collections.Counter``. See
        ``moot.client.mapreduce`` for how it runs."""
        return mapreduce.map_reduce(
            self,
            inputs,
            mapper,
            reducer,
            combiner=combiner,
            partitions=partitions,
            split_bytes=split_bytes,
            output=output,
            retries=retries,
            backups=backups,
            progress=progress,
            stats=stats,
            whole_split=whole_split,
        )

    def executor(self, **options: Any) -> Executor:
        """A ``concurrent.futures.Executor`` running on the federation (options as for ``submit``)."""
        return Executor(self.tasks, **options)

    def close(self) -> None:
        """Close connections and stop the client's loop thread."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._run(self.tasks.close(), timeout_s=15)
        self.objects._close_locals()
        with contextlib.suppress(Exception):
            self._run(self._close_all(), timeout_s=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------

    def _request(self, build: Any, *, node: str | None = None) -> wire.Message:
        if self._closed:
            raise Unavailable("this client is closed; call moot.connect() again")
        candidates = [node] if node is not None else self.addresses
        errors = []
        for address in candidates:
            message = build(next(self._request_ids))
            try:
                reply = self._run(self._request_on(address, message), timeout_s=self.timeout_s)
            except (OSError, ConnectionError, wire.RemoteProtocolError, asyncio.IncompleteReadError, Unavailable) as error:
                errors.append(f"{address}: {error}")
                self._run(self._drop(address), timeout_s=5)
                continue
            except TimeoutError:
                self._run(self._drop(address), timeout_s=5)
                if node is not None:
                    raise Timeout(f"node {address} did not answer within {self.timeout_s:.0f}s") from None
                errors.append(f"{address}: no answer within {self.timeout_s:.0f}s")
                continue
            if isinstance(reply, wire.ErrorReply):
                raise error_from_reply(reply.kind, reply.message)
            return reply
        raise Unavailable("no node answered: " + "; ".join(errors) + ". Check the addresses and that the nodes run.")

    async def _request_on(self, address: str, message: wire.Message, timeout_s: float | None = None) -> wire.Message:
        connection = self._connections.get(address)
        if connection is None or connection.closed:
            # One connection per address even when concurrent requests (a
            # window of chunk uploads) all find none: the others wait for the
            # first one's (found: orphaned extra connections were never closed).
            pending = self._connecting.get(address)
            if pending is None:
                pending = asyncio.ensure_future(self._connect(address))
                self._connecting[address] = pending
            connection = await asyncio.shield(pending)
        timeout_ms = None if timeout_s is None else max(1, int(timeout_s * 1000))
        return await connection.request(message, timeout_ms)

    async def _connect(self, address: str) -> ClientConnection:
        """Open the connection to ``address`` and keep it, whether or not the
        request that asked for it is still waiting."""
        try:
            connection = await open_client_connection(address, self.cluster)
            self._connections[address] = connection
            return connection
        finally:
            self._connecting.pop(address, None)

    async def _drop(self, address: str) -> None:
        """Forget the connection to ``address`` now; close it in the
        background (a silent node would make a polite close wait)."""
        connection = self._connections.pop(address, None)
        if connection is not None:
            task = asyncio.ensure_future(_close_quietly(connection))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close_all(self) -> None:
        # Connections still being opened too: a pending one would outlive the
        # loop (found: "Exception ignored in Client._connect" after a close).
        connecting = list(self._connecting.values())
        for pending in connecting:
            pending.cancel()
        if connecting:
            await asyncio.gather(*connecting, return_exceptions=True)
        for address in list(self._connections):
            await self._drop(address)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        # Whatever else still runs on the loop (a request that began while
        # the client closed, opening a connection of its own) ends here, as
        # asyncio.run ends its tasks: a task left pending when the loop
        # closes dies in the garbage collector (found: "Exception ignored in
        # Client._connect ... Event loop is closed" after a close).
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        if others:
            await asyncio.gather(*others, return_exceptions=True)

    def _run(self, coroutine: Coroutine[Any, Any, T], *, timeout_s: float | None) -> T:
        future = asyncio.run_coroutine_threadsafe(_with_timeout(coroutine, timeout_s), self._loop)
        try:
            return future.result()
        except MootError:
            raise


async def _close_quietly(connection: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        await connection.close()


async def _with_timeout(coroutine: Coroutine[Any, Any, T], timeout_s: float | None) -> T:
    async with asyncio.timeout(timeout_s):
        return await coroutine


def connect(
    addresses: Sequence[str] | str, *, cluster: str | Path, pinned: bool = False, local_reads: bool = True
) -> Client:
    """Connect to a federation through any of ``addresses`` (HOST:PORT).

    The client follows the leader wherever nodes say it is; with ``pinned``
    it talks only to ``addresses`` (an edge client that must stay local, or
    a test that plays a client stuck in a partition). With ``local_reads``
    (the default) a client on the same machine as its node reads object
    chunks from that node's files (handed over a local socket, every chunk
    verified) instead of through TLS."""
    return Client(
        addresses if not isinstance(addresses, str) else [addresses],
        cluster=cluster,
        pinned=pinned,
        local_reads=local_reads,
    )


_task_client: Client | None = None
_task_client_lock = threading.Lock()


def get_client() -> Client:
    """Inside a task: a client of the federation through the node that runs
    the task (one per worker process, made on first use), for the object
    store, the database and more tasks — Dask's ``get_client``, Ray's
    ``ray.get`` inside a task. Outside a task it raises ``BadRequest``."""
    global _task_client
    address = os.environ.get("MOOT_NODE_ADDRESS")
    cluster = os.environ.get("MOOT_CLUSTER_DIR")
    if not address or not cluster:
        raise BadRequest("moot.get_client() works inside a task; elsewhere connect with moot.connect(ADDRESSES, cluster=DIR)")
    with _task_client_lock:
        if _task_client is None:
            _task_client = connect(address, cluster=cluster)
        return _task_client
