"""``client.kv``: the replicated, linearizable key-value store, from Python.

etcd's API in a few calls: ``put``, ``get``, ``delete``, ``cas``, ``range``,
``watch``. Keys and values are bytes (a ``str`` is encoded as UTF-8).

What a call guarantees:

- **Writes** are linearizable and applied exactly once: each carries this
  client's id and a sequence number, and a retry after a lost answer reuses
  them, so the state machine answers it from its session instead of
  applying it again (Raft dissertation 6.3). A write returns once a
  majority of voters has it on disk.
- **Reads** name their consistency: ``linearizable`` (default: the leader
  confirms it still leads, then answers), ``lease`` (the leader answers from
  its lease, no round trip to the others; relies on bounded clock drift),
  ``stale`` (any node answers at once from what it has applied; works in a
  minority partition, may be behind).
- **Failover.** A call goes to the leader it last used, follows the
  ``not_leader`` hints nodes give, and moves on to other nodes when one
  does not answer — until its deadline (``timeout_s``).
- **Errors**: ``NoQuorum`` when the nodes it reaches have had no leader for
  ``no_quorum_after_s`` (a minority partition: the operation did not
  happen, unless it is a write whose earlier attempt's outcome was unknown
  — the message says so); ``Timeout`` when the deadline passes with the
  outcome unknown; ``Unavailable`` when no node can be reached;
  ``BadRequest`` for keys or values over the limits or of the wrong type
  (nothing is sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from moot.client.errors import BadRequest, NoQuorum, Timeout, Unavailable
from moot.core import kv, wire
from moot.core.kv_server import (
    CONSISTENCIES,
    ClientReply,
    ClientRequest,
    Consistency,
    ErrorReply,
    GetReply,
    GetRequest,
    RangeReply,
    RangeRequest,
    WriteReply,
    WriteRequest,
)
from moot.runtime.transport import ClientConnection, open_client_connection

if TYPE_CHECKING:
    from moot.client.client import Client

KV_TIMEOUT_S = 10.0  # a call's deadline across retries and failover
NO_QUORUM_AFTER_S = 1.0  # no leader anywhere reachable for this long: NoQuorum
RETRY_DELAY_S_MIN = 0.005
RETRY_DELAY_S_MAX = 0.05
ATTEMPT_TIMEOUT_S = 1.0  # one node silent this long (connecting included): try another
FAILED_NODE_AVOID_S = 1.0  # a node that just failed is tried last for this long
WATCH_QUEUE_EVENTS_MAX = 100_000
WATCH_KEEPALIVE_S = 2.0  # a watch with no events checks its node is alive this often

RESERVED_PREFIX: Final = b"\x00"  # moot's own records (object references, pins)

KeyValue = kv.KeyValue
Event = kv.Event


def _as_bytes(what: str, value: object, *, allow_empty: bool) -> bytes:
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes | bytearray | memoryview):
        raise BadRequest(f"{what} must be bytes or str, not {type(value).__name__}")
    data = bytes(value)
    try:
        if what == "value":
            return kv.validate_value(data)
        if what == "prefix":
            if len(data) > kv.KEY_BYTES_MAX:
                raise kv.BadCommand(f"prefix is {len(data)} bytes; keys are at most {kv.KEY_BYTES_MAX}")
            return data
        if allow_empty and not data:
            return data
        if data.startswith(RESERVED_PREFIX):
            raise kv.BadCommand(f"keys starting with {RESERVED_PREFIX!r} are reserved for moot itself; choose another key")
        return kv.validate_key(data)
    except kv.BadCommand as error:
        raise BadRequest(str(error)) from None


def _consistency(value: str) -> Consistency:
    if value not in CONSISTENCIES:
        raise BadRequest(f"consistency must be one of {', '.join(CONSISTENCIES)}, not {value!r}")
    return value  # type: ignore[return-value]


class Kv:
    """The key-value API of one ``Client`` (see module doc)."""

    def __init__(self, client: Client, *, timeout_s: float = KV_TIMEOUT_S) -> None:
        self._client = client
        self.timeout_s = timeout_s
        self.no_quorum_after_s = NO_QUORUM_AFTER_S
        self.client_id = uuid.uuid4().hex
        self._seq = itertools.count(1)
        self._inflight: set[int] = set()
        self._lock = threading.Lock()
        self._leader: str | None = None
        # The client's own counter: requests of the KV, task and object parts
        # share connections, and two with one id collide on a connection
        # (found: members() during a map_reduce failed with "request_id 1 is
        # already waiting for a reply").
        self._request_ids = client._request_ids

    # -- writes ------------------------------------------------------------------------

    def put(self, key: str | bytes, value: str | bytes) -> int:
        """Set ``key`` to ``value``; returns the store revision of the write."""
        command = kv.Put(_as_bytes("key", key, allow_empty=False), _as_bytes("value", value, allow_empty=True))
        return self._write(command).revision

    def delete(self, key: str | bytes) -> bool:
        """Delete ``key``; True if it existed."""
        return self._write(kv.Delete(_as_bytes("key", key, allow_empty=False))).succeeded

    def cas(self, key: str | bytes, expected: str | bytes | None, new: str | bytes) -> bool:
        """Set ``key`` to ``new`` if its value is ``expected`` (None: if it does
        not exist); True if it was set."""
        command = kv.Cas(
            _as_bytes("key", key, allow_empty=False),
            None if expected is None else _as_bytes("value", expected, allow_empty=True),
            _as_bytes("value", new, allow_empty=True),
        )
        return self._write(command).succeeded

    # -- reads -------------------------------------------------------------------------

    def get(self, key: str | bytes, *, consistency: str = "linearizable") -> bytes | None:
        """The value of ``key``, or None."""
        item = self.get_item(key, consistency=consistency)
        return None if item is None else item.value

    def get_item(self, key: str | bytes, *, consistency: str = "linearizable") -> KeyValue | None:
        """``key`` with its revisions (create, mod, version), or None."""
        request = GetRequest(_as_bytes("key", key, allow_empty=False), _consistency(consistency))
        reply = self._call(request, write=False)
        assert isinstance(reply, GetReply)
        return reply.kv

    def range(
        self, prefix: str | bytes = b"", *, limit: int = 1_000, consistency: str = "linearizable"
    ) -> list[KeyValue]:
        """Keys starting with ``prefix`` (all for ""), sorted, at most ``limit``."""
        if not isinstance(limit, int) or not 1 <= limit <= kv.RANGE_LIMIT_MAX:
            raise BadRequest(f"limit must be an int in 1..{kv.RANGE_LIMIT_MAX}, not {limit!r}")
        request = RangeRequest(_as_bytes("prefix", prefix, allow_empty=True), limit, _consistency(consistency))
        reply = self._call(request, write=False)
        assert isinstance(reply, RangeReply)
        return list(reply.kvs)

    def watch(self, prefix: str | bytes = b"", *, start_revision: int = 0) -> Watch:
        """Events (puts and deletes) of keys under ``prefix`` from
        ``start_revision`` (0: from now on), in revision order, surviving the
        loss of the node serving them. Iterate it; ``close()`` it when done."""
        if not isinstance(start_revision, int) or start_revision < 0:
            raise BadRequest(f"start_revision must be an int >= 0, not {start_revision!r}")
        watch = Watch(self._client, _as_bytes("prefix", prefix, allow_empty=True), start_revision)
        watch.start()
        return watch

    # -- plumbing ------------------------------------------------------------------------

    async def _call_async_reserved(self, key: bytes, value: bytes | None) -> bool:
        """Put (or, with None, delete) one of moot's own records; for the
        object store. True if the write changed something / the key existed.
        Such bookkeeping follows the leader even from a pinned client (found
        by the benchmark: a put through a pinned follower failed its
        reference write with NoQuorum on a healthy federation)."""
        assert key.startswith(RESERVED_PREFIX)
        command: kv.Command = kv.Delete(key) if value is None else kv.Put(key, value)
        return (await self._write_async(command, follow_leader=True)).succeeded

    def _write(self, command: kv.Command) -> kv.WriteResult:
        return self._client._run(self._write_async(command), timeout_s=self.timeout_s + 5)

    async def _write_async(self, command: kv.Command, *, follow_leader: bool = False) -> kv.WriteResult:
        """One write under this client's session (seq, ack), retried as one."""
        with self._lock:
            seq = next(self._seq)
            self._inflight.add(seq)
            ack = min(self._inflight)
        try:
            proposal = kv.Proposal(client_id=self.client_id, seq=seq, ack=ack, command=command)
            reply = await self._call_async(WriteRequest(proposal), write=True, follow_leader=follow_leader)
        finally:
            with self._lock:
                self._inflight.discard(seq)
        assert isinstance(reply, WriteReply)
        if reply.result.status == "expired":
            raise Timeout(
                "the node no longer remembers this client's session, so whether the write "
                "happened is unknown; read the key to find out"
            )
        return reply.result

    def _call(self, request: ClientRequest, *, write: bool) -> ClientReply:
        return self._client._run(self._call_async(request, write=write), timeout_s=self.timeout_s + 5)

    async def _call_async(self, request: ClientRequest, *, write: bool, follow_leader: bool = False) -> ClientReply:
        started = time.monotonic()
        deadline = started + self.timeout_s
        addresses = list(self._client.addresses)
        target = self._leader or addresses[0]
        failed_at: dict[str, float] = {}

        def after(address: str) -> str:
            """The next address to try after ``address``: the following one in
            the list that has not failed within the last second, if any."""
            position = addresses.index(address) if address in addresses else -1
            now = time.monotonic()
            for step in range(1, len(addresses) + 1):
                candidate = addresses[(position + step) % len(addresses)]
                if candidate != address and now - failed_at.get(candidate, -1e9) > FAILED_NODE_AVOID_S:
                    return candidate
            return addresses[(position + 1) % len(addresses)]

        delay = RETRY_DELAY_S_MIN
        no_leader_since: float | None = None
        outcome_unknown = False
        unreachable: dict[str, str] = {}
        while True:
            now = time.monotonic()
            if now >= deadline:
                what = "the write may or may not have happened" if write and outcome_unknown else "nothing happened"
                raise Timeout(f"no answer within {self.timeout_s:.1f}s ({what}); the federation may be overloaded")
            attempt_s = min(ATTEMPT_TIMEOUT_S, deadline - now)
            try:
                # The whole attempt, connecting included: a paused node
                # accepts TCP connections and then never answers the TLS
                # handshake (found by the chaos test: a put took 6.7 s
                # against a 5 s deadline).
                async with asyncio.timeout(attempt_s):
                    answer = await self._client._request_on(
                        target,
                        wire.KvCall(request_id=next(self._request_ids), request=request),
                        timeout_s=attempt_s,
                    )
            except (OSError, ConnectionError, asyncio.IncompleteReadError, wire.RemoteProtocolError) as error:
                if isinstance(error, TimeoutError):
                    outcome_unknown = True
                failed_at[target] = time.monotonic()
                unreachable[target] = str(error) or type(error).__name__
                await self._client._drop(target)
                if self._leader == target:
                    self._leader = None
                if (
                    len(unreachable) >= len(addresses)
                    and no_leader_since is None
                    and time.monotonic() - started > self.no_quorum_after_s
                ):
                    raise Unavailable(
                        "no node could be reached: "
                        + "; ".join(f"{a}: {e}" for a, e in unreachable.items())
                        + ". Check that the nodes run."
                    ) from None
                target = after(target)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_DELAY_S_MAX)
                continue
            unreachable.pop(target, None)
            if isinstance(answer, wire.ErrorReply):
                raise BadRequest(answer.message)
            assert isinstance(answer, wire.KvAnswer)
            reply = answer.reply
            if not isinstance(reply, ErrorReply):
                if write or request_consistency(request) != "stale":
                    self._leader = target
                return reply
            if reply.code in ("too_large", "invalid"):
                raise BadRequest(reply.detail)
            if reply.code in ("leader_lost", "timeout"):
                outcome_unknown = True
            if (
                reply.code == "not_leader"
                and answer.leader_address
                and answer.leader_address != target
                and (follow_leader or not self._client.pinned or answer.leader_address in addresses)
            ):
                target = answer.leader_address
                self._leader = target
                continue
            if reply.code in ("no_leader", "leader_lost", "not_leader"):
                no_leader_since = no_leader_since or time.monotonic()
                if time.monotonic() - no_leader_since >= self.no_quorum_after_s:
                    doubt = " An earlier attempt's outcome is unknown." if write and outcome_unknown else ""
                    raise NoQuorum(
                        f"no leader reachable for {self.no_quorum_after_s:.1f}s: a majority of voters "
                        f"is down or cut off from the nodes this client reaches.{doubt} "
                        "Retry later, or read with consistency='stale'."
                    )
            self._leader = None
            target = after(target)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_DELAY_S_MAX)


def request_consistency(request: ClientRequest) -> str:
    """The consistency a read asks for ("" for writes)."""
    return "" if isinstance(request, WriteRequest) else request.consistency


_WATCH_END = object()


class Watch:
    """A stream of ``Event``; iterate it (see ``Kv.watch``)."""

    def __init__(self, client: Client, prefix: bytes, start_revision: int) -> None:
        self._client = client
        self.prefix = prefix
        self.next_revision = start_revision
        self._events: queue.Queue[Any] = queue.Queue(WATCH_QUEUE_EVENTS_MAX)
        self._task: asyncio.Future[None] | None = None
        self._closed = False
        self._asyncio_task: asyncio.Task[Any] | None = None
        self.error: str | None = None

    def start(self) -> None:
        """Begin streaming (``Kv.watch`` calls this)."""
        self._task = asyncio.run_coroutine_threadsafe(self._run(), self._client._loop)  # type: ignore[assignment]

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        item = self._events.get()
        if item is _WATCH_END:
            self._events.put(_WATCH_END)
            if self.error:
                raise Unavailable(self.error)
            raise StopIteration
        assert isinstance(item, kv.Event)
        return item

    def get(self, timeout_s: float | None = None) -> Event | None:
        """The next event, or None if none arrives within ``timeout_s``."""
        try:
            item = self._events.get(timeout=timeout_s)
        except queue.Empty:
            return None
        if item is _WATCH_END:
            self._events.put(_WATCH_END)
            raise Unavailable(self.error or "the watch was closed")
        assert isinstance(item, kv.Event)
        return item

    def close(self) -> None:
        """Stop the watch (and close its connection) before returning."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None and not self._client._closed:
            future = asyncio.run_coroutine_threadsafe(self._stop(), self._client._loop)
            with contextlib.suppress(Exception):
                future.result(timeout=5)
        with contextlib.suppress(queue.Full):
            self._events.put_nowait(_WATCH_END)

    async def _stop(self) -> None:
        task = self._asyncio_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=5)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _run(self) -> None:
        self._asyncio_task = asyncio.current_task()
        addresses = list(self._client.addresses)
        watch_id = 1
        for attempt in itertools.count():
            address = addresses[attempt % len(addresses)]
            try:
                await self._serve_from(address, watch_id)
            except asyncio.CancelledError:
                raise
            except _WatchEnded as ended:
                self.error = str(ended)
                self._events.put(_WATCH_END)
                return
            except (OSError, ConnectionError, asyncio.IncompleteReadError, wire.RemoteProtocolError):
                pass
            watch_id += 1
            await asyncio.sleep(min(RETRY_DELAY_S_MAX, RETRY_DELAY_S_MIN * (attempt + 1)))

    async def _serve_from(self, address: str, watch_id: int) -> None:
        def on_message(message: wire.Message) -> None:
            if not isinstance(message, wire.WatchEvents) or message.watch_id != watch_id:
                return
            if message.error:
                failure.append(message.error)
                failed.set()
                return
            for event in message.events:
                if event.revision >= self.next_revision:
                    self._events.put(event)
                    self.next_revision = event.revision + 1

        failure: list[str] = []
        failed = asyncio.Event()
        async with asyncio.timeout(ATTEMPT_TIMEOUT_S * 2):
            connection: ClientConnection = await open_client_connection(
                address, self._client.cluster, on_unsolicited=on_message
            )
        waiters: list[asyncio.Future[Any]] = []
        try:
            reply = await connection.request(
                wire.WatchRequest(
                    request_id=1, watch_id=watch_id, prefix=self.prefix, start_revision=self.next_revision
                ),
                int(ATTEMPT_TIMEOUT_S * 2000),
            )
            if isinstance(reply, wire.ErrorReply):
                raise _WatchEnded(reply.message)
            if self.next_revision == 0 and isinstance(reply, wire.WatchAccepted):
                self.next_revision = reply.revision + 1
            waiters = [asyncio.ensure_future(connection.wait_closed()), asyncio.ensure_future(failed.wait())]
            request_ids = itertools.count(2)
            while True:
                done, _ = await asyncio.wait(
                    waiters, timeout=WATCH_KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED
                )
                if done:
                    break
                # Quiet: make sure the node is still there (a paused or cut
                # off node keeps the connection open and sends nothing).
                await connection.request(
                    wire.StatusRequest(request_id=next(request_ids)), int(ATTEMPT_TIMEOUT_S * 2000)
                )
            if failure:
                raise _WatchEnded(failure[0])
        finally:
            for waiter in waiters:
                waiter.cancel()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):  # bounded: a silent node must not hold us
                    await connection.close()


class _WatchEnded(Exception):
    """The node ended the watch for good (its start revision was compacted)."""
