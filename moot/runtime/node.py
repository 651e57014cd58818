"""The node process: drives the protocol cores over the TLS transport.

One asyncio loop per node. The cores decide (synchronously, no await); this
module carries out their effects in contract order: persist, send, notify.
Timers are one loop task that sleeps until the cores' next deadline or until
a message wakes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import signal
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from moot.core import hlc, objects, placement, voters, wire
from moot.core.membership import Membership, MemberView, Output
from moot.core.membership_config import MembershipConfig
from moot.core.raft_config import RaftConfig
from moot.core.scheduler import WorkerNode
from moot.runtime import hlc_clock, identity
from moot.runtime.dashboard import Dashboard
from moot.runtime.events import EventRing, EventsExchange
from moot.runtime.kv_service import KvService
from moot.runtime.logs import get_logger, log_event
from moot.runtime.node_state import NodeState
from moot.runtime.object_service import ObjectError, ObjectNotFound, ObjectService
from moot.runtime.storage import StorageError
from moot.runtime.task_service import TaskService
from moot.runtime.transport import (
    Peer,
    Transport,
    TransportConfig,
    format_address,
    is_wildcard,
    parse_address,
)
from moot.runtime.worker_pool import WorkerPoolError

LEAVE_DRAIN_MS_MAX = 2_000  # how long a graceful leave waits for its gossip to go out


class NodeStartError(Exception):
    """The node cannot start; the message is one line saying what to fix."""


@dataclass(frozen=True, slots=True)
class NodeOptions:
    """Everything ``moot node start`` takes."""

    cluster_dir: Path
    data_dir: Path
    listen: str
    join: tuple[str, ...] = ()
    http: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    cpus: int = 1
    """Worker processes this node runs tasks in (0: none)."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom resources tasks can ask for (gossiped as ``resource.<name>`` labels)."""
    task_memory_bytes: int | None = None
    """Address-space limit of each worker process."""
    profile: str = "lan"
    advertise: str | None = None
    """HOST:PORT other nodes dial, when --listen is a wildcard such as 0.0.0.0."""
    bootstrap: bool | None = None
    """Found a new database (Raft group) with this node as its first voter if
    the data directory has none. None: only when started without --join."""
    voter_grace_ms: int = voters.DEAD_GRACE_MS_DEFAULT
    """How long a dead voter keeps its seat before the leader replaces it."""
    voters_max: int = 5
    """Voters kept once that many members are alive (the leader's policy)."""
    object_grace_s: float = 3_600.0
    """How long an unreferenced object is kept before it is collected."""
    object_capacity_bytes: int | None = None
    """Most chunk bytes this node stores (None: until the disk is full)."""
    object_replicas: int = 3
    """Copies of every chunk (R); fewer while fewer members are alive."""
    object_write_quorum: int | None = None
    """Copies on disk before a write is acknowledged (None: all R)."""
    object_cache_bytes: int = 256 * 1024 * 1024
    """Bytes of chunks this node keeps in memory after serving them (the edge cache)."""

    @property
    def address(self) -> str:
        """The address this node is known by in the federation."""
        return self.advertise or self.listen


def monotonic_ms() -> int:
    """The node's local clock for the cores, in whole milliseconds."""
    return int(time.monotonic() * 1000)


class Node:
    """A running moot node: membership over the transport, plus its HTTP API."""

    def __init__(self, options: NodeOptions) -> None:
        self.options = options
        try:
            listen_host, _ = parse_address(options.listen)
            if options.advertise:
                parse_address(options.advertise)
            elif listen_host in ("0.0.0.0", "::", ""):
                raise ValueError(
                    f"--listen {options.listen} is a wildcard: add --advertise HOST:PORT, "
                    "the address other nodes reach this one at"
                )
            for address in options.join:
                parse_address(address)
            if options.http:
                parse_address(options.http)
        except ValueError as error:
            raise NodeStartError(str(error)) from error
        try:
            self.config = MembershipConfig.named(options.profile)
        except ValueError as error:
            raise NodeStartError(str(error)) from error
        try:
            self.cluster = identity.load_cluster(options.cluster_dir)
        except identity.ClusterError as error:
            raise NodeStartError(str(error)) from error
        self.state = NodeState.open(options.data_dir)
        self.node_id = self.state.node_id
        self.log = get_logger(self.node_id)
        self.events = EventRing(self.node_id, self.log)
        self.log.add_sink(self.events)  # what the services log on the timeline is kept, stamped
        self.exchange: EventsExchange | None = None
        self.dashboard: Dashboard | None = None
        self.membership: Membership | None = None
        self.transport: Transport | None = None
        self.kv: KvService | None = None
        self.objects: ObjectService | None = None
        self.tasks: TaskService | None = None
        self.addresses: dict[str, str] = {self.node_id: options.address}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._http_runner: web.AppRunner | None = None

    # -- lifecycle ------------------------------------------------------------

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT or ``stop()``, then leave gracefully."""
        await self.start()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, self._stopping.set)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            # Operators (and we) can ask a stuck node what it is waiting on.
            loop.add_signal_handler(signal.SIGUSR1, self._dump_tasks)
        try:
            async with asyncio.TaskGroup() as group:
                timers = group.create_task(self._timer_loop())
                assert self.kv is not None
                raft_timers = group.create_task(self.kv.run())
                assert self.objects is not None
                repair = group.create_task(self.objects.run())
                assert self.tasks is not None
                task_loop = group.create_task(self.tasks.run())
                await self._stopping.wait()
                await self.kv.hand_over()
                await self.leave()
                timers.cancel()
                raft_timers.cancel()
                repair.cancel()
                task_loop.cancel()
        finally:
            await self.close()

    def _dump_tasks(self) -> None:
        for task in asyncio.all_tasks():
            frames = [f"{f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}" for f in task.get_stack()]
            log_event(self.log, logging.WARNING, "task_dump", task=task.get_name(), stack=frames)

    def stop(self) -> None:
        """Ask ``run`` to leave and return."""
        self._stopping.set()

    async def start(self) -> None:
        """Bind the transport and HTTP, then join the federation."""
        hosts = [parse_address(address)[0] for address in {self.options.address: None, self.options.listen: None}]
        paths = identity.issue_node_certificate(self.cluster, self.node_id, hosts, self.options.data_dir)
        self.transport = Transport(
            node_id=self.node_id,
            listen_address=self.options.listen,
            advertise_address=self.options.advertise,
            cluster=self.cluster,
            node_certificate=paths,
            on_message=self._on_message,
            on_peer_lost=self._on_peer_lost,
            config=TransportConfig(),
            logger=self.log,
        )
        try:
            await self.transport.start()
        except OSError as error:
            raise NodeStartError(
                f"cannot listen on {self.options.listen}: {error.strerror or error}; choose a free --listen address"
            ) from error
        self.exchange = EventsExchange(self.events, self.transport, self._live_peers)
        now = monotonic_ms()
        self.membership = Membership(
            self.config,
            node_id=self.node_id,
            address=self.options.address,
            labels=gossiped_labels(self._own_labels(), self.options.resources),
            cpus=self.options.cpus,
            rng=random.Random(),
            now_ms=now,
            incarnation=self.state.incarnation,
        )
        self._apply(self.membership.join(now, list(self.options.join)))
        bootstrap = self.options.bootstrap if self.options.bootstrap is not None else not self.options.join
        try:
            self.kv = KvService(
                node_id=self.node_id,
                data_dir=self.options.data_dir,
                transport=self.transport,
                address_of=self.address_of,
                member_statuses=self.member_statuses,
                logger=self.log,
                bootstrap=bootstrap,
                raft_config=RaftConfig.named(self.options.profile),
                policy=voters.VoterPolicy(
                    voters_small=min(3, self.options.voters_max),
                    voters_large=self.options.voters_max,
                    large_from=self.options.voters_max,
                    dead_grace_ms=self.options.voter_grace_ms,
                ),
            )
        except StorageError as error:
            raise NodeStartError(str(error)) from error
        try:
            self.objects = ObjectService(
                node_id=self.node_id,
                data_dir=self.options.data_dir,
                transport=self.transport,
                address_of=self.address_of,
                live_members=self.live_candidates,
                rtt_ms=self.membership.estimate_rtt_ms,
                logger=self.log,
                region=self.options.labels.get("region", ""),
                gc_grace_s=self.options.object_grace_s,
                capacity_bytes=self.options.object_capacity_bytes,
                replicas=self.options.object_replicas,
                write_quorum=self.options.object_write_quorum,
                cache_bytes=self.options.object_cache_bytes,
            )
            self.objects.kv = self.kv
        except OSError as error:
            raise NodeStartError(f"cannot open the chunk store in {self.options.data_dir}: {error}") from error
        self.tasks = TaskService(
            node_id=self.node_id,
            transport=self.transport,
            kv=self.kv,
            objects=self.objects,
            address_of=self.address_of,
            workers_now=self.worker_nodes,
            logger=self.log,
            cpus=self.options.cpus,
            memory_limit_bytes=self.options.task_memory_bytes,
            worker_environment={
                "MOOT_NODE_ADDRESS": self.options.address,
                "MOOT_CLUSTER_DIR": str(self.options.cluster_dir.resolve()),
            },
        )
        try:
            await self.tasks.start()
        except WorkerPoolError as error:
            raise NodeStartError(f"cannot start the worker processes: {error}") from error
        if self.options.http:
            await self._start_http(self.options.http)
        log_event(
            self.log,
            logging.INFO,
            "node_started",
            listen=self.options.listen,
            http=self.options.http,
            incarnation=self.membership.incarnation,
            labels=self.options.labels,
            cpus=self.options.cpus,
            profile=self.options.profile,
        )

    async def leave(self) -> None:
        """Gossip our leave and give it a bounded time to go out."""
        if self.membership is None or self.transport is None or self.membership.has_left:
            return
        self._apply(self.membership.leave(monotonic_ms()))
        log_event(self.log, logging.INFO, "node_leaving")
        deadline = time.monotonic() + LEAVE_DRAIN_MS_MAX / 1000
        while time.monotonic() < deadline and self.transport.pending_messages() > 0:
            await asyncio.sleep(0.02)  # polling the send queues with a deadline

    async def close(self) -> None:
        """Stop serving; safe to call twice."""
        if self._http_runner is not None:
            log_event(self.log, logging.INFO, "http_closing")
            await self._http_runner.cleanup()
            self._http_runner = None
        if self.tasks is not None:
            await self.tasks.close()
            self.tasks = None
        if self.objects is not None:
            self.objects.close()
            self.objects = None
        if self.kv is not None:
            self.kv.close()
            self.kv = None
        if self.transport is not None:
            log_event(self.log, logging.INFO, "transport_closing")
            await self.transport.close()
            self.transport = None

    # -- the driver ------------------------------------------------------------------

    async def _timer_loop(self) -> None:
        assert self.membership is not None
        while True:
            delay_ms = self.membership.next_deadline_ms() - monotonic_ms()
            if delay_ms > 0:
                self._wake.clear()
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a
                # cancellation that races with the wake-up, and the node then
                # never finished leaving (found: a SIGTERMed node hung).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay_ms / 1000):
                        await self._wake.wait()
            now = monotonic_ms()
            if now >= self.membership.next_deadline_ms():
                self._apply(self.membership.tick(now))

    def _on_message(self, peer: Peer, message: wire.Message) -> None:
        membership = self.membership
        if membership is None:
            return
        if isinstance(message, wire.MEMBERSHIP_MESSAGE_TYPES):
            if peer.role != "node":
                return
            self._apply(membership.step(monotonic_ms(), message))
            self._wake.set()  # deadlines may have moved earlier
        elif isinstance(message, wire.RAFT_MESSAGE_TYPES):
            if peer.role == "node" and self.kv is not None:
                self.kv.on_raft_message(message)
        elif isinstance(message, wire.KvCall) and self.kv is not None:
            self.kv.on_kv_call(peer, message)
        elif isinstance(message, wire.WatchRequest) and self.kv is not None:
            self.kv.on_watch(peer, message)
        elif isinstance(message, wire.WatchCancel) and self.kv is not None:
            self.kv.on_watch_cancel(peer, message)
        elif isinstance(message, wire.TASK_PEER_TYPES) and self.tasks is not None:
            if peer.role == "node":
                self.tasks.on_peer_message(peer, message)
        elif isinstance(message, wire.TASK_CLIENT_TYPES) and self.tasks is not None:
            self.tasks.on_client_request(peer, message)
        elif isinstance(message, wire.ObjectRequestTypes) and self.objects is not None:
            self.objects.on_client_request(peer, message)
        elif isinstance(message, wire.ObjectPeerTypes + wire.ObjectReplyTypes) and self.objects is not None:
            if peer.role == "node":
                self.objects.on_peer_message(peer, message)
        elif isinstance(message, wire.StatusRequest) and self.kv is not None:
            status = self.kv.status(message.request_id, self.options.address)
            if self.objects is not None:
                stats = self.objects.stats()
                status = msgspec.structs.replace(
                    status,
                    chunks=stats["chunks"],
                    chunk_bytes=stats["chunk_bytes"],
                    repairs=stats["repairs_pushed"],
                    scrubbed_bytes=stats["scrub_bytes"],
                    corrupt_found=stats["corrupt_found"],
                    cache_hits=stats["cache_hits"],
                    objects_collected=stats["objects_collected"],
                )
            peer.reply(status)
        elif isinstance(message, wire.EventsQuery | wire.EventsReply) and self.exchange is not None:
            self.exchange.on_message(peer, message)
        elif isinstance(message, wire.MembersRequest):
            peer.reply(
                wire.MembersReply(
                    request_id=message.request_id, node_id=self.node_id, members=self.member_infos()
                )
            )
        else:
            request_id = getattr(message, "request_id", 0)
            peer.reply(
                wire.ErrorReply(
                    request_id=request_id,
                    kind="BadRequest",
                    message=f"a node does not accept {type(message).__name__} here",
                )
            )

    def _on_peer_lost(self, node_id: str, reason: str) -> None:
        if self.kv is not None:
            self.kv.on_peer_lost(node_id)
        if self.objects is not None:
            self.objects.peer_lost(node_id)
        if self.tasks is not None:
            self.tasks.peer_lost(node_id)

    def _apply(self, out: Output) -> None:
        # Contract order: persist, then send, then notify.
        if out.incarnation is not None:
            self.state.save_incarnation(out.incarnation)
        assert self.transport is not None
        for send in out.messages:
            self.transport.send(send.address, send.message)
        if out.events and self.objects is not None:
            self.objects.members_changed()
        if out.events and self.tasks is not None:
            self.tasks.members_changed()
        for event in out.events:
            self.addresses[event.node_id] = event.address
            if event.kind in ("dead", "left"):
                # Drop the queue of messages to a member that is gone; a later
                # send (gossip to the dead, reconnect) opens a fresh one.
                self.transport.forget(event.address)
            log_event(
                self.log,
                logging.WARNING if event.kind in ("suspect", "dead") else logging.INFO,
                f"member_{event.kind}",
                member=event.node_id,
                address=event.address,
                incarnation=event.incarnation,
            )

    # -- views -----------------------------------------------------------------------

    def address_of(self, node_id: str) -> str | None:
        """Where to send to ``node_id``, as membership last heard."""
        address = self.addresses.get(node_id)
        if address is None and self.membership is not None:
            for member in self.membership.members():
                self.addresses[member.node_id] = member.address
            address = self.addresses.get(node_id)
        return address

    def live_candidates(self) -> list[placement.Candidate]:
        """Alive (or merely suspected) members, as placement takes them."""
        assert self.membership is not None
        return [
            placement.Candidate(member.node_id, member.labels.get("region", ""))
            for member in self.membership.members()
            if member.state in ("alive", "suspect")
        ]

    def worker_nodes(self) -> list[WorkerNode]:
        """Alive (or merely suspected) members that run tasks, as the scheduler takes them."""
        assert self.membership is not None
        workers = []
        for member in self.membership.members():
            if member.state not in ("alive", "suspect") or member.cpus <= 0:
                continue
            labels, resources = split_labels(member.labels)
            workers.append(WorkerNode(member.node_id, member.cpus, resources, labels))
        return workers

    def member_statuses(self, now_ms: int) -> list[voters.MemberStatus]:
        """Membership as the voter planner takes it."""
        assert self.membership is not None
        return [
            voters.MemberStatus(member.node_id, member.state, member.state_changed_ms, member.labels)
            for member in self.membership.members()
        ]

    def _own_labels(self) -> dict[str, str]:
        """The labels this node gossips: the operator's, the machine's name
        (maps over local files run where the files are), and the dashboard's
        address (a page whose node died reads another's)."""
        labels = {"host": socket.gethostname()}
        if self.options.http:
            host, port = parse_address(self.options.http)
            if is_wildcard(host):
                host = parse_address(self.options.address)[0]
            labels["http"] = format_address(host, port)
        labels.update(self.options.labels)
        return labels

    def _live_peers(self) -> dict[str, str]:
        """Members alive or suspected, other than us: node id -> address."""
        if self.membership is None:
            return {}
        return {
            member.node_id: member.address
            for member in self.membership.members()
            if member.node_id != self.node_id and member.state in ("alive", "suspect")
        }

    def member_infos(self) -> tuple[wire.MemberInfo, ...]:
        """Our membership view in the client wire form."""
        assert self.membership is not None
        infos = []
        for member in self.membership.members():
            rtt = self.membership.estimate_rtt_ms(member.node_id)
            infos.append(_member_info(member, None if rtt is None else round(rtt, 3)))
        return tuple(infos)

    # -- HTTP ----------------------------------------------------------------------

    async def _start_http(self, address: str) -> None:
        host, port = parse_address(address)
        self.dashboard = Dashboard(self)
        app = web.Application(middlewares=[self.dashboard.middleware])
        self.dashboard.add_routes(app)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/api/members", self._api_members)
        app.router.add_get("/api/events", self._api_events)
        app.router.add_get("/objects/{object_id}", self._get_object)
        app.router.add_get("/metrics", self._metrics)
        # Open dashboard streams never end by themselves: at shutdown they get a second.
        self._http_runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._http_runner.setup()
        site = web.TCPSite(self._http_runner, host, port)
        try:
            await site.start()
        except OSError as error:
            raise NodeStartError(
                f"cannot serve HTTP on {address}: {error.strerror or error}; choose a free --http address"
            ) from error

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "node_id": self.node_id})

    async def _api_members(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "node_id": self.node_id,
                "members": [msgspec.to_builtins(info) for info in self.member_infos()],
            }
        )

    async def _api_events(self, request: web.Request) -> web.Response:
        """``/api/events?after=HLC&limit=N&scope=federation|node``: the
        timeline, every live member's merged in hybrid-clock order (or this
        node's alone), oldest first."""
        try:
            after = int(request.query.get("after", "0"))
            limit = int(request.query.get("limit", "1000"))
            scope = request.query.get("scope", "federation")
            if not 0 <= after <= hlc.TIMESTAMP_MAX or not 1 <= limit <= wire.EVENTS_PER_QUERY_MAX or scope not in ("federation", "node"):
                raise ValueError
        except ValueError:
            return web.json_response(
                {
                    "error": "bad_request",
                    "message": f"after is a hybrid timestamp >= 0, limit 1..{wire.EVENTS_PER_QUERY_MAX}, "
                    "scope federation or node",
                },
                status=400,
            )
        missing: list[str] = []
        if scope == "node" or self.exchange is None:
            records = self.events.since(after, limit)
        else:
            records, missing = await self.exchange.federation(after, limit)
        return web.json_response({"node_id": self.node_id, "events": records, "missing": missing})

    async def _metrics(self, request: web.Request) -> web.Response:
        """Prometheus text exposition of this node's counters (behind the token, like the rest)."""
        registry = CollectorRegistry()
        registry.register(_NodeCollector(self))
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _get_object(self, request: web.Request) -> web.StreamResponse:
        """``GET /objects/<id>``: the object's bytes, verified, with HTTP Range
        support (RFC 9110 single ranges), so curl and browsers can fetch them."""
        assert self.objects is not None
        object_id = request.match_info["object_id"]
        try:
            objects.validate_object_id(object_id)
            manifest = objects.decode_manifest(await self.objects.fetch_chunk(object_id), object_id)
        except objects.BadObjectId as error:
            return web.json_response({"error": "bad_request", "message": str(error)}, status=400)
        except ObjectNotFound as error:
            return web.json_response({"error": "not_found", "message": str(error)}, status=404)
        except (ObjectError, objects.CorruptData) as error:
            return web.json_response({"error": "unavailable", "message": str(error)}, status=503)
        try:
            start, end = _byte_range(request.headers.get("Range"), manifest.size)
        except ValueError as error:
            return web.Response(status=416, text=str(error), headers={"Content-Range": f"bytes */{manifest.size}"})
        partial = "Range" in request.headers
        response = web.StreamResponse(status=206 if partial else 200)
        response.content_type = "application/octet-stream"
        response.content_length = end - start
        response.headers["Accept-Ranges"] = "bytes"
        response.headers["ETag"] = f'"{object_id}"'
        if partial:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{manifest.size}"
        await response.prepare(request)
        if not manifest.chunks:
            await response.write(manifest.inline[start:end])
        else:
            offset = 0
            for position, chunk in enumerate(manifest.chunks):
                size = manifest.chunk_size(position)
                if offset + size > start and offset < end:
                    try:
                        data = await self.objects.fetch_chunk(chunk)
                    except ObjectError:
                        break  # the status line is gone: a short body tells the client
                    await response.write(data[max(0, start - offset) : min(size, end - offset)])
                offset += size
                if offset >= end:
                    break
        await response.write_eof()
        return response


class _NodeCollector(Collector):
    """This node's state as Prometheus metrics, read at scrape time."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        yield from self._membership()
        yield from self._transport()
        yield from self._tasks()
        yield GaugeMetricFamily(
            "moot_hlc_max_ahead_ms",
            "The most a received hybrid timestamp ran ahead of this node's wall clock (clock disagreement seen).",
            value=hlc_clock.max_ahead_ms(),
        )
        yield CounterMetricFamily(
            "moot_hlc_ignored",
            f"Received hybrid timestamps more than {hlc.AHEAD_MS_MAX} ms ahead of this node's clock, not adopted.",
            value=hlc_clock.ignored(),
        )
        yield GaugeMetricFamily("moot_events_kept", "Timeline events this node keeps.", value=len(node.events))
        if node.dashboard is not None:
            yield GaugeMetricFamily("moot_dashboard_streams", "Dashboard pages reading this node's live stream.", value=node.dashboard.streams)
            yield CounterMetricFamily(
                "moot_dashboard_streams_dropped", "Dashboard streams dropped for not reading.", value=node.dashboard.streams_dropped
            )
        if node.kv is not None:
            raft = node.kv.server.raft
            yield GaugeMetricFamily("moot_raft_term", "Current Raft term.", value=raft.term)
            yield GaugeMetricFamily("moot_raft_is_leader", "1 if this node leads the Raft group.", value=int(raft.role == "leader"))
            yield GaugeMetricFamily("moot_raft_commit_index", "Highest log index known committed.", value=raft.commit_index)
            yield GaugeMetricFamily("moot_raft_applied_index", "Highest log index applied.", value=raft.applied_index)
            yield GaugeMetricFamily("moot_raft_voters", "Voters in the Raft configuration.", value=len(raft.voters))
            yield GaugeMetricFamily("moot_kv_revision", "Revision of the key-value store.", value=node.kv.server.state.revision)
        if node.objects is not None:
            stats = node.objects.stats()
            yield GaugeMetricFamily("moot_object_chunks", "Chunks stored on this node.", value=stats["chunks"])
            yield GaugeMetricFamily("moot_object_chunk_bytes", "Bytes of chunks stored on this node.", value=stats["chunk_bytes"])
            yield CounterMetricFamily("moot_object_repairs", "Chunk copies this node restored (pushes and heals).", value=stats["repairs_pushed"])
            yield CounterMetricFamily("moot_object_copies_dropped", "Extra chunk copies dropped after rebalancing.", value=stats["copies_dropped"])
            yield CounterMetricFamily("moot_object_scrubbed_bytes", "Bytes re-hashed by the scrubber.", value=stats["scrub_bytes"])
            yield CounterMetricFamily("moot_object_corrupt_copies", "Chunk copies on this disk found corrupt.", value=stats["corrupt_found"])
            yield CounterMetricFamily("moot_object_bad_replicas_reported", "Holders caught serving bad bytes.", value=stats["bad_replicas_reported"])
            yield GaugeMetricFamily("moot_object_cache_bytes", "Bytes in the edge cache.", value=stats["cache_bytes"])
            yield CounterMetricFamily("moot_object_cache_hits", "Chunk reads served from the edge cache.", value=stats["cache_hits"])
            yield CounterMetricFamily("moot_object_collected", "Unreferenced objects collected (by this node as leader).", value=stats["objects_collected"])
            yield CounterMetricFamily("moot_object_chunks_collected", "Unused chunks deleted from this disk.", value=stats["chunks_collected"])


    def _membership(self) -> Iterator[Metric]:
        node = self.node
        if node.membership is None:
            return
        counts = {"alive": 0, "suspect": 0, "dead": 0, "left": 0}
        for member in node.membership.members():
            counts[member.state] = counts.get(member.state, 0) + 1
        yield _by_state("moot_members", "Members this node knows, by state.", counts)
        yield GaugeMetricFamily("moot_member_incarnation", "This node's incarnation number.", value=node.membership.incarnation)

    def _transport(self) -> Iterator[Metric]:
        transport = self.node.transport
        if transport is None:
            return
        counters = transport.counters()
        outbound = [*counters["outbound"].values(), counters["outbound_forgotten"]]
        for name, counter, text in (
            ("moot_transport_messages_sent", "messages_sent", "Frames written to other nodes."),
            ("moot_transport_messages_dropped", "messages_dropped_queue_full", "Messages to other nodes dropped: queue full."),
            ("moot_transport_connects", "connects", "Connections opened to other nodes."),
            ("moot_transport_connect_failures", "connect_failures", "Failed connection attempts to other nodes."),
        ):
            yield CounterMetricFamily(name, text, value=sum(peer[counter] for peer in outbound))
        inbound = counters["inbound"]
        yield CounterMetricFamily(
            "moot_transport_messages_received",
            "Messages received from other nodes and clients.",
            value=sum(inbound["messages_received_by_node"].values()) + inbound["messages_received_from_clients"],
        )
        refused = CounterMetricFamily("moot_transport_connections_refused", "Refused handshakes, by kind.", labels=["kind"])
        kinds = dict.fromkeys(("capacity", "tls", "timeout", "protocol", "version", "identity", "token"), 0)
        kinds.update(inbound["connections_refused"])
        for kind, count in sorted(kinds.items()):
            refused.add_metric([kind], count)
        yield refused
        yield GaugeMetricFamily("moot_transport_outbound_connected", "Open connections to other nodes.", value=counters["outbound_connected"])
        yield GaugeMetricFamily("moot_transport_inbound_connections", "Open connections from nodes and clients.", value=counters["inbound_connections_open"])

    def _tasks(self) -> Iterator[Metric]:
        node = self.node
        if node.kv is None:
            return
        table = node.kv.server.state.tasks
        job_counts: dict[str, int] = {}
        task_counts: dict[str, int] = {"pending": 0, "running": 0, "done": 0, "failed": 0, "cancelled": 0}
        for job in table.jobs():
            job_counts[job.state] = job_counts.get(job.state, 0) + 1
            for task in job.tasks:
                task_counts[task.state] = task_counts.get(task.state, 0) + 1
            task_counts["pending"] += job.total - len(job.tasks)
        yield _by_state(
            "moot_jobs", "Jobs in the task table (as this node's replica has it), by state.", dict(sorted(job_counts.items()))
        )
        yield _by_state("moot_tasks", "Tasks of the kept jobs, by state.", task_counts)
        if node.tasks is not None:
            yield GaugeMetricFamily("moot_worker_slots", "Worker processes on this node.", value=node.tasks.cpus)


def _by_state(name: str, text: str, counts: Mapping[str, int]) -> GaugeMetricFamily:
    """A gauge with a ``state`` label, one sample per entry of ``counts``."""
    family = GaugeMetricFamily(name, text, labels=["state"])
    for state, count in counts.items():
        family.add_metric([state], count)
    return family


def _byte_range(header: str | None, size: int) -> tuple[int, int]:
    """[start, end) of an HTTP ``Range: bytes=...`` header (the whole object
    without one); ValueError if it is not a satisfiable single range."""
    if header is None:
        return 0, size
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        raise ValueError("only a single 'bytes=START-END' range is supported")
    first, dash, last = spec.strip().partition("-")
    if not dash:
        raise ValueError(f"malformed range {header!r}")
    if first == "":
        suffix = int(last)
        if suffix <= 0:
            raise ValueError(f"empty suffix range {header!r}")
        return max(0, size - suffix), size
    start = int(first)
    end = size if last == "" else min(size, int(last) + 1)
    if start >= size or start >= end:
        raise ValueError(f"range {header!r} is outside the object's {size} bytes")
    return start, end


def _member_info(member: MemberView, rtt_ms: float | None) -> wire.MemberInfo:
    return wire.MemberInfo(
        node_id=member.node_id,
        address=member.address,
        state=member.state,
        incarnation=member.incarnation,
        labels=member.labels,
        cpus=member.cpus,
        rtt_ms=rtt_ms,
        coordinate=member.coordinate,
    )


RESOURCE_LABEL_PREFIX = "resource."


def gossiped_labels(labels: dict[str, str], resources: dict[str, float]) -> dict[str, str]:
    """A node's labels as membership carries them: custom resources ride as
    ``resource.<name>`` labels."""
    merged = dict(labels)
    merged.update({RESOURCE_LABEL_PREFIX + name: f"{amount:g}" for name, amount in resources.items()})
    return merged


def split_labels(labels: dict[str, str]) -> tuple[dict[str, str], dict[str, float]]:
    """Back from gossip: (plain labels, custom resources); a malformed amount counts as none."""
    plain: dict[str, str] = {}
    resources: dict[str, float] = {}
    for key, value in labels.items():
        if key.startswith(RESOURCE_LABEL_PREFIX):
            try:
                resources[key[len(RESOURCE_LABEL_PREFIX) :]] = max(0.0, float(value))
            except ValueError:
                continue
        else:
            plain[key] = value
    return plain, resources


def run_node(options: NodeOptions) -> None:
    """Run a node until it is told to stop (the body of ``moot node start``).

    The stdlib event loop, not uvloop: the transport starts server-side TLS
    itself on an accepted socket (so a failed handshake can be logged with
    the peer's address), and under uvloop 0.23 those handshakes stalled until
    the handshake timeout (measured: a 5-node start took 18 s instead of 3 s).
    """

    async def main() -> None:
        node = Node(options)
        # What exists now (modules, classes, functions: ~70,000 objects)
        # lives as long as the process: out of the collector's sight, a
        # full collection takes ~20 ms instead of ~70 ms, a pause of the
        # event loop that delays heartbeats and every task's round trip
        # (measured under a 10,000-task map: 436 -> 118 ms in six collections).
        gc.freeze()
        await node.run()

    asyncio.run(main())
