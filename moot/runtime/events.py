"""A node's timeline: the events that tell a federation's story (a member
suspected, declared dead or joined; a leader elected; a voter replaced;
tasks run again; a chunk repaired ...), each stamped with the process's
hybrid logical clock (``moot.runtime.hlc_clock``) so that events from every
node merge into one order that respects cause and effect.

The ring hooks into the node's structured logger (``StructuredLogger.add_sink``):
whatever the services already log under a name in ``TIMELINE_EVENTS`` is
kept — no second set of calls to keep in step with the logs. The newest
``EVENTS_KEPT_MAX`` are kept. Live readers (the dashboard's stream, ``moot
events --follow``) subscribe with a bounded queue; a reader that falls
``SUBSCRIBER_QUEUE_MAX`` events behind is dropped (with a log line) rather
than letting it hold the node's memory or its loop.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from moot.core import hlc, wire
from moot.runtime import hlc_clock
from moot.runtime.logs import StructuredLogger

if TYPE_CHECKING:
    from moot.runtime.transport import Peer, Transport

EVENTS_KEPT_MAX: Final = 2_000
SUBSCRIBER_QUEUE_MAX: Final = 1_000
FIELD_CHARS_MAX: Final = 500
RESUME_MARGIN_MS: Final = 5_000  # a follower re-asks this far back: other nodes' events may arrive late

TIMELINE_EVENTS: Final = frozenset(
    {
        "node_started",
        "node_leaving",
        "member_joined",
        "member_alive",
        "member_suspect",
        "member_dead",
        "member_left",
        "raft_bootstrapped",
        "raft_role",
        "raft_conf_change",
        "raft_handed_over",
        "scheduler_started",
        "tasks_lost",
        "chunk_repaired",
        "chunk_healed",
        "chunk_scrub_corrupt",
        "chunk_bad_replica",
        "chunk_corrupt_dropped",
        "object_under_replicated",
    }
)


class EventRing:
    """This node's newest timeline events, in the order they happened here
    (hybrid timestamps increase along it)."""

    def __init__(self, node_id: str, log: StructuredLogger, *, kept_max: int = EVENTS_KEPT_MAX) -> None:
        self.node_id = node_id
        self._log = log
        self._events: deque[dict[str, Any]] = deque(maxlen=kept_max)
        self._subscribers: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._subscriber_ids = itertools.count(1)
        self.subscribers_dropped = 0

    def __call__(self, event: str, fields: dict[str, Any]) -> int | None:
        """The logger's sink: keep ``event`` if it belongs on the timeline."""
        if event not in TIMELINE_EVENTS:
            return None
        stamp = hlc_clock.stamp()
        record: dict[str, Any] = {
            "hlc": stamp,
            # The same, as 19 digits: exact where JSON numbers are doubles
            # (JavaScript), and sorts as text.
            "hlc_text": f"{stamp:019d}",
            "time": hlc.format_timestamp(stamp),
            "node": self.node_id,
            "event": event,
        }
        for name, value in fields.items():
            record[name] = value if isinstance(value, int | float | bool | None) else str(value)[:FIELD_CHARS_MAX]
        self._events.append(record)
        for key, queue in list(self._subscribers.items()):
            try:
                queue.put_nowait(record)
            except asyncio.QueueFull:
                del self._subscribers[key]
                self.subscribers_dropped += 1
                self._log.log(logging.WARNING, "events_reader_dropped", behind=queue.qsize())
        return stamp

    def __len__(self) -> int:
        return len(self._events)

    def since(self, after: int = 0, limit: int = EVENTS_KEPT_MAX) -> list[dict[str, Any]]:
        """The newest ``limit`` events stamped after ``after``, oldest first."""
        found = [record for record in self._events if record["hlc"] > after]
        return found[-limit:] if limit < len(found) else found

    def subscribe(self) -> tuple[int, asyncio.Queue[dict[str, Any]]]:
        """A live feed of new events (``unsubscribe`` it when done)."""
        key = next(self._subscriber_ids)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(SUBSCRIBER_QUEUE_MAX)
        self._subscribers[key] = queue
        return key, queue

    def unsubscribe(self, key: int) -> None:
        self._subscribers.pop(key, None)

    def subscribed(self, key: int) -> bool:
        """False once a reader was dropped for falling behind."""
        return key in self._subscribers


def merge(*timelines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events of several nodes in one hybrid-clock order (ties: by node)."""
    return sorted(itertools.chain(*timelines), key=_order)


def _order(record: dict[str, Any]) -> tuple[int, str]:
    return record["hlc"], record["node"]


def resume_after(records: list[dict[str, Any]], after: int) -> int:
    """Where a follower of the timeline asks from next, having got
    ``records`` (oldest first): ``RESUME_MARGIN_MS`` before the newest, as
    other nodes' events stamped a little earlier may still arrive (callers
    drop the repeats)."""
    if not records:
        return after
    newest: int = records[-1]["hlc"]
    return max(0, newest - (RESUME_MARGIN_MS << hlc.LOGICAL_BITS))


def iter_new(records: list[dict[str, Any]], seen: set[tuple[int, str]]) -> Iterator[dict[str, Any]]:
    """Records not in ``seen`` (by their (hlc, node)), noting them there."""
    for record in records:
        key = _order(record)
        if key not in seen:
            seen.add(key)
            yield record


PEER_TIMEOUT_S: Final = 1.5  # a member that does not answer by then is listed as missing


class EventsExchange:
    """Answers ``EventsQuery`` from clients and peers, and gathers the
    federation's timeline: this node's events and every live member's,
    merged in hybrid-clock order."""

    def __init__(
        self,
        ring: EventRing,
        transport: Transport,
        members: Callable[[], dict[str, str]],
    ) -> None:
        self.ring = ring
        self.transport = transport
        self.members = members
        """Live members other than this node: node id -> address."""
        self._request_ids = itertools.count(1)
        self._pending: dict[int, tuple[str, asyncio.Future[wire.EventsReply]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def on_message(self, peer: Peer, message: wire.EventsQuery | wire.EventsReply) -> None:
        if isinstance(message, wire.EventsReply):
            pending = self._pending.get(message.request_id)
            if pending is not None and peer.role == "node" and peer.node_id == pending[0] and not pending[1].done():
                pending[1].set_result(message)
            return
        if not message.federation or peer.role == "node":  # a peer asks for ours alone
            reply = self._reply(message.request_id, self.ring.since(message.after, message.limit))
            if peer.role == "node":
                # A peer's connection to us is one-way: answer on ours to it.
                self.transport.send(peer.address, reply)
            else:
                peer.reply(reply)
            return
        task = asyncio.ensure_future(self._answer_federation(peer, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_federation(self, peer: Peer, message: wire.EventsQuery) -> None:
        records, missing = await self.federation(message.after, message.limit)
        peer.reply(self._reply(message.request_id, records, missing))

    def _reply(
        self, request_id: int, records: list[dict[str, Any]], missing: Sequence[str] = ()
    ) -> wire.EventsReply:
        data = json.dumps(records, separators=(",", ":")).encode()
        while len(data) > wire.EVENTS_BYTES_MAX and records:
            records = records[len(records) // 2 :]  # the newest half
            data = json.dumps(records, separators=(",", ":")).encode()
        return wire.EventsReply(request_id=request_id, node_id=self.ring.node_id, events=data, missing=tuple(missing))

    async def federation(self, after: int = 0, limit: int = EVENTS_KEPT_MAX) -> tuple[list[dict[str, Any]], list[str]]:
        """Every live member's events after ``after``, merged, the newest
        ``limit``; and the members that did not answer in time."""
        members = sorted(self.members().items())
        replies = await asyncio.gather(*(self._ask(node_id, address, after, limit) for node_id, address in members))
        timelines = [self.ring.since(after, limit)]
        missing: list[str] = []
        for (node_id, _), reply in zip(members, replies, strict=True):
            if reply is None:
                missing.append(node_id)
                continue
            try:
                records = json.loads(reply.events)
            except ValueError:
                missing.append(node_id)
                continue
            timelines.append([record for record in records if _well_formed(record)])
        merged = merge(*timelines)
        return merged[-limit:], missing

    async def _ask(self, node_id: str, address: str, after: int, limit: int) -> wire.EventsReply | None:
        request_id = next(self._request_ids)
        future: asyncio.Future[wire.EventsReply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (node_id, future)
        try:
            if not self.transport.send(address, wire.EventsQuery(request_id=request_id, after=after, limit=limit)):
                return None
            async with asyncio.timeout(PEER_TIMEOUT_S):
                return await future
        except TimeoutError:
            return None
        finally:
            self._pending.pop(request_id, None)


def _well_formed(record: Any) -> bool:
    return (
        isinstance(record, dict)
        and isinstance(record.get("hlc"), int)
        and isinstance(record.get("node"), str)
        and isinstance(record.get("event"), str)
    )
