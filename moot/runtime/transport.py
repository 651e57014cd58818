"""The node transport: framed messages over mutual TLS, node to node and client to node.

Rules:

- One TCP port per node accepts both nodes and clients. Every connection is
  TLS with a certificate from the cluster CA both ways; the first frame each
  way is ``wire.Hello``. A node's ``Hello.node_id`` must be the CN of its
  certificate (OU ``node``); a client must hold a client certificate (OU
  ``client``) and the cluster token. Versions are negotiated with
  ``wire.negotiate_version``; no overlap gets ``Goodbye`` and a close.
- **Node to node, each direction has its own connection**: node A sends to B
  only over the connection A opened to B, and B only reads from it (A's
  outbound connection is B's inbound connection). So delivery order per
  direction is the order of ``send`` calls (faults aside), and neither side
  ever waits on the other to write.
- **Clients** open one connection and send requests; the node answers on
  that same connection through ``Peer.reply``.
- ``send`` never blocks: it is called from the synchronous effect handlers
  that drive the cores. It encodes the message, puts the frame on a bounded
  per-peer queue and returns; ``False`` means the queue was full and the
  message was dropped (counted). A writer task per peer connects lazily,
  writes in batches and reconnects with capped exponential backoff and
  jitter. While a peer is unreachable its queue keeps the *oldest* messages
  up to the bound and refuses new ones: the caller learns of every drop
  synchronously, and the protocols above (SWIM, Raft) retransmit what
  matters. ``send_wait`` waits for room instead (backpressure).
- Delivery is at most once: frames in flight when a connection breaks are
  lost. There are no acknowledgements at this layer.
- Bad input from a peer (TLS failure, plain TCP, garbage, oversized frame
  header, unknown tag, wrong version, wrong identity or token, silence
  during the handshake) closes that one connection and writes one
  structured warning (rate limited per peer host and reason); nothing else
  changes.
- Faults (``moot.runtime.faults``) apply to node-to-node frames on the
  sending side, just before a frame is written; they are off unless given.

Limits: every queue has a message and a byte bound, inbound connections are
capped, handshakes and writes time out; see ``TransportConfig``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import hmac
import ipaddress
import itertools
import logging
import random
import socket
import ssl
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal, NoReturn

from moot.core import wire
from moot.runtime import hlc_clock, identity
from moot.runtime.faults import PASS, Faults
from moot.runtime.logs import StructuredLogger

# TCP keepalive on every connection, so a peer whose machine vanished (no
# FIN, no RST) frees its inbound slot in about idle + interval * count =
# 30 s. Linux's default (2 h idle) is far too long for a cluster.
_KEEPALIVE_IDLE_S: Final = 15
_KEEPALIVE_INTERVAL_S: Final = 5
_KEEPALIVE_COUNT: Final = 3
# StreamReader buffer before it stops reading from the socket (asyncio's
# default): bounds what one peer can make us buffer beyond the frame being read.
_READ_BUFFER_BYTES: Final = 64 * 1024
_OTHER_PEERS: Final = "other"
# Cap on the Hello frame, far below FRAME_BYTES_MAX: its fields are capped
# at a few KiB, and a peer that has not said who it is must not make
# us buffer 16 MiB per connection.
_HELLO_FRAME_BYTES_MAX: Final = 8192


# -- errors --------------------------------------------------------------------------


class TransportError(OSError):
    """Base of the transport's operating errors.

    An ``OSError``, like the socket errors it stands for, so code that
    handles network failures generically handles these too.
    """


class AddressInUseError(TransportError):
    """The listening address is taken (another node on that port?)."""


class TransportClosedError(TransportError):
    """The transport (or the peer's queue) is closed or not started."""


class ConnectError(TransportError, ConnectionError):
    """Connecting to a node failed: refused, unreachable, TLS, identity or Hello."""


class ConnectionLostError(TransportError, ConnectionError):
    """A client connection closed while requests were waiting for replies."""


class RequestTimeoutError(TransportError, TimeoutError):
    """A request got no reply in time."""


class _ConnectionLost(Exception):
    """Internal: ends the tasks serving one connection, with the reason."""


class _Refused(Exception):
    """Internal: a handshake refused; ``kind`` names the cause for counters and logs."""

    def __init__(self, kind: str, reason: str, *, goodbye: bool = True) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.goodbye = goodbye


# -- addresses -----------------------------------------------------------------------


def parse_address(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` or ``"[V6]:PORT"`` to ``(host, port)``; ``ValueError`` if malformed."""
    host, separator, port_text = address.rpartition(":")
    if not separator or not host or not port_text.isdigit():
        raise ValueError(f"invalid address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:7000")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"invalid address {address!r}: write an IPv6 host in brackets, [::1]:7000")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"invalid address {address!r}: port must be 0..65535")
    return host, port


def format_address(host: str, port: int) -> str:
    """``(host, port)`` to ``"HOST:PORT"``, bracketing IPv6 hosts."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_wildcard(host: str) -> bool:
    """Whether ``host`` means every interface (0.0.0.0, ::, empty)."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


# -- configuration -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Limits and timeouts of the transport, with named profiles."""

    send_queue_messages_max: int = 1024
    """Messages queued per destination before ``send`` drops. About ten
    seconds of SWIM and Raft heartbeats to one peer; a peer that is down
    costs at most this many messages of memory."""

    send_queue_bytes_max: int = 64 * 1024 * 1024
    """Bytes queued per destination. Four maximum frames: enough for object
    chunks in flight, a hard bound on memory per dead peer."""

    reply_queue_messages_max: int = 1024
    """Replies queued per client connection before ``Peer.reply`` drops; a
    client that stops reading cannot grow a node's memory past this."""

    reply_queue_bytes_max: int = 64 * 1024 * 1024
    """Bytes queued per client connection (as ``send_queue_bytes_max``)."""

    write_batch_messages_max: int = 256
    """Frames written per ``write`` call: amortizes the TLS record and
    syscall, and bounds the work of one step of a writer task."""

    inbound_connections_max: int = 1024
    """Open inbound connections (nodes and clients). nginx's default
    ``worker_connections`` is 512 to 1024; connections past it are closed
    at once so a flood cannot exhaust file descriptors."""

    outbound_peers_max: int = 4096
    """Distinct destinations with a queue and writer task. Above the largest
    cluster we target; a bug sending to ever new addresses fails loudly."""

    handshake_timeout_ms: int = 5_000
    """TLS handshake plus the Hello exchange. Go's ``http.Transport`` allows
    10 s for TLS alone; within one cluster 5 s is ample even across a WAN
    and frees the slot of a silent peer quickly."""

    connect_timeout_ms: int = 5_000
    """TCP connect plus TLS handshake when dialing a node. memberlist's LAN
    TCP timeout is 10 s; we halve it because a node retries anyway."""

    write_timeout_ms: int = 10_000
    """A write that does not drain in this time means the peer stopped
    reading or vanished; the connection is dropped and redialled."""

    close_timeout_ms: int = 1_000
    """How long a graceful TLS close waits for the peer before aborting."""

    reconnect_backoff_ms_min: int = 50
    """First delay before redialling a failed peer. Doubles per failure, with
    jitter (gRPC connection backoff, with a cluster-sized base)."""

    reconnect_backoff_ms_max: int = 2_000
    """Cap on the redial delay: below SWIM's suspicion timeout, so a peer
    back from a restart is reached before it could be declared dead."""

    request_timeout_ms: int = 30_000
    """Default wait for a reply on a client connection."""

    requests_inflight_max: int = 1024
    """Requests a client connection has waiting for replies at once."""

    counters_peers_max: int = 4096
    """Distinct node ids with their own inbound counters; more are summed
    under ``"other"`` so counters stay bounded as node ids churn."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field out of range."""
        positive = (
            "send_queue_messages_max",
            "reply_queue_messages_max",
            "write_batch_messages_max",
            "inbound_connections_max",
            "outbound_peers_max",
            "handshake_timeout_ms",
            "connect_timeout_ms",
            "write_timeout_ms",
            "close_timeout_ms",
            "reconnect_backoff_ms_min",
            "request_timeout_ms",
            "requests_inflight_max",
            "counters_peers_max",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"TransportConfig.{name} must be positive, got {getattr(self, name)}"
                )
        frame_max = wire.FRAME_BYTES_MAX + wire.FRAME_HEADER_BYTES
        for name in ("send_queue_bytes_max", "reply_queue_bytes_max"):
            if getattr(self, name) < frame_max:
                raise ValueError(
                    f"TransportConfig.{name} must hold one maximum frame ({frame_max} bytes)"
                )
        if self.reconnect_backoff_ms_max < self.reconnect_backoff_ms_min:
            raise ValueError(
                "TransportConfig.reconnect_backoff_ms_max must be >= reconnect_backoff_ms_min"
            )

    @classmethod
    def lan(cls) -> TransportConfig:
        """Machines in one data centre (the defaults)."""
        return cls()

    @classmethod
    def wan(cls) -> TransportConfig:
        """Machines across regions: slower handshakes, longer write stalls."""
        return cls(
            handshake_timeout_ms=10_000,
            connect_timeout_ms=10_000,
            write_timeout_ms=30_000,
            reconnect_backoff_ms_min=200,
            reconnect_backoff_ms_max=10_000,
        )

    @classmethod
    def local(cls) -> TransportConfig:
        """Processes on one machine (tests, demos): failures show fast."""
        return cls(
            handshake_timeout_ms=2_000,
            connect_timeout_ms=2_000,
            write_timeout_ms=5_000,
            close_timeout_ms=500,
            reconnect_backoff_ms_min=20,
            reconnect_backoff_ms_max=500,
            request_timeout_ms=10_000,
        )


# -- counters ------------------------------------------------------------------------


@dataclass(slots=True)
class PeerCounters:
    """What happened to messages sent to one destination address."""

    messages_queued: int = 0
    messages_sent: int = 0
    """Frames written to the socket, duplicates included."""
    messages_dropped_queue_full: int = 0
    messages_dropped_fault: int = 0
    messages_cut_fault: int = 0
    messages_duplicated_fault: int = 0
    messages_delayed_fault: int = 0
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0


@dataclass(slots=True)
class InboundCounters:
    """What arrived, per sending node id (bounded) and from clients in total."""

    messages_received_by_node: dict[str, int] = field(default_factory=dict)
    messages_received_from_clients: int = 0
    replies_sent: int = 0
    replies_dropped_queue_full: int = 0
    connections_accepted: int = 0
    connections_refused: dict[str, int] = field(default_factory=dict)
    """Refused handshakes by kind: capacity, tls, timeout, protocol, version, identity, token."""
    connections_closed_protocol_error: int = 0


# -- frames and streams --------------------------------------------------------------


async def _read_message(
    reader: asyncio.StreamReader, bytes_max: int = wire.FRAME_BYTES_MAX, *, observe: bool = True
) -> wire.Message | None:
    """The next message, or ``None`` if the peer closed cleanly between frames.
    Its sender's hybrid timestamp is observed unless ``observe`` is off (a
    handshake's first frame: not from anyone we know yet)."""
    try:
        header = await reader.readexactly(wire.FRAME_HEADER_BYTES)
    except asyncio.IncompleteReadError as error:
        if not error.partial:
            return None
        raise wire.RemoteProtocolError("connection closed inside a frame header") from error
    length, timestamp = wire.frame_header(header)  # checks the cap before reading the body
    if length > bytes_max:
        raise wire.RemoteProtocolError(f"frame of {length} bytes is over {bytes_max} here")
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as error:
        raise wire.RemoteProtocolError(
            f"connection closed inside a frame ({len(error.partial)} of {length} bytes)"
        ) from error
    message = wire.decode(body)
    if observe:
        hlc_clock.observe(timestamp)
    return message


def _frame(message: wire.Message) -> bytes:
    """``message`` framed, stamped with this process's hybrid clock."""
    return wire.encode_frame(message, hlc_clock.stamp())


def _remote_address(writer: asyncio.StreamWriter) -> str:
    peername = writer.get_extra_info("peername")
    if isinstance(peername, tuple) and len(peername) >= 2:
        return format_address(str(peername[0]), int(peername[1]))
    return "unknown"


def _enable_keepalive(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, _KEEPALIVE_IDLE_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, _KEEPALIVE_INTERVAL_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, _KEEPALIVE_COUNT)


async def _until_connection_lost(*loops: Coroutine[Any, Any, Any]) -> str:
    """Run ``loops`` until one ends by ``_ConnectionLost``; stop the others; say why.

    Not ``asyncio.TaskGroup``: on Python 3.11 a TaskGroup whose child fails
    after the body has finished cancels the parent and never uncancels it, so
    the parent's later ``asyncio.timeout`` blocks raise CancelledError instead
    of TimeoutError and its own cancellation can be lost (found: SIGTERMed
    nodes hung in ``Transport.close``).
    """
    tasks = [asyncio.ensure_future(loop) for loop in loops]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        if task.cancelled():
            continue
        error = task.exception()
        if isinstance(error, _ConnectionLost):
            return str(error)
        if error is not None:
            raise error
    raise AssertionError("connection loops end only by _ConnectionLost")


async def _close_writer(
    writer: asyncio.StreamWriter, timeout_s: float, goodbye: str | None = None
) -> None:
    """Close gracefully (flushing what is buffered, and ``goodbye``), abort after ``timeout_s``."""
    try:
        if goodbye is not None and not writer.is_closing():
            writer.write(_frame(wire.Goodbye(reason=goodbye[: wire.REASON_CHARS_MAX])))
        writer.close()
        async with asyncio.timeout(timeout_s):
            await writer.wait_closed()
    except Exception:  # closing a broken connection: any error means it is gone
        writer.transport.abort()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise


def _tls_reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"tls: certificate verify failed: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        return f"tls: {error.reason or error}"
    return f"tls: {error.__class__.__name__}: {error}"


class _FrameQueue:
    """A bounded FIFO of encoded frames with message and byte accounting.

    A frame keeps its reservation from ``offer`` until ``release``, even after
    ``take`` (while it is delayed by a fault or being written), so the bounds
    cover everything this peer holds in memory.
    """

    def __init__(self, messages_max: int, bytes_max: int) -> None:
        assert messages_max > 0
        assert bytes_max > 0
        self.messages_max = messages_max
        self.bytes_max = bytes_max
        self.frames: deque[bytes] = deque()
        self.reserved_messages = 0
        self.reserved_bytes = 0
        self.closed = False
        self.nonempty = asyncio.Event()
        self.room = asyncio.Event()

    def offer(self, frame: bytes) -> bool:
        """Append ``frame`` if it fits; ``False`` (nothing changes) if not."""
        if self.closed:
            return False
        if self.reserved_messages >= self.messages_max:
            return False
        if self.reserved_bytes + len(frame) > self.bytes_max:
            return False
        self.frames.append(frame)
        self.reserved_messages += 1
        self.reserved_bytes += len(frame)
        self.nonempty.set()
        return True

    def take(self) -> bytes | None:
        """The oldest frame, still reserved; ``None`` if empty."""
        return self.frames.popleft() if self.frames else None

    def release(self, frame_bytes: int) -> None:
        """Free the reservation of one frame that is written or discarded."""
        if self.closed:
            return  # close() already freed everything
        self.reserved_messages -= 1
        self.reserved_bytes -= frame_bytes
        assert self.reserved_messages >= len(self.frames)
        assert self.reserved_bytes >= 0
        self.room.set()

    def close(self) -> None:
        """Refuse further frames and wake every waiter."""
        self.closed = True
        self.frames.clear()
        self.reserved_messages = 0
        self.reserved_bytes = 0
        self.nonempty.set()
        self.room.set()

    async def wait_for_room(self, frame: bytes) -> None:
        """Offer ``frame``, waiting for room; ``TransportClosedError`` if the queue closes."""
        while not self.offer(frame):
            if self.closed:
                raise TransportClosedError("the queue was closed while waiting for room")
            self.room.clear()
            await self.room.wait()


# -- inbound -------------------------------------------------------------------------


class _ReplyChannel:
    """Replies to one client connection: a bounded queue and the task writing it."""

    def __init__(self, config: TransportConfig, counters: InboundCounters) -> None:
        self.queue = _FrameQueue(config.reply_queue_messages_max, config.reply_queue_bytes_max)
        self._counters = counters
        self._batch_max = config.write_batch_messages_max
        self._write_timeout_s = config.write_timeout_ms / 1000

    def offer(self, message: wire.Message) -> bool:
        if self.queue.offer(_frame(message)):
            return True
        self._counters.replies_dropped_queue_full += 1
        return False

    async def run(self, writer: asyncio.StreamWriter) -> NoReturn:
        while True:
            batch: list[bytes] = []
            while len(batch) < self._batch_max and (frame := self.queue.take()) is not None:
                batch.append(frame)
            if not batch:
                self.queue.nonempty.clear()
                await self.queue.nonempty.wait()
                if self.queue.closed:
                    raise _ConnectionLost("reply queue closed")
                continue
            try:
                writer.write(b"".join(batch))
                async with asyncio.timeout(self._write_timeout_s):
                    await writer.drain()
            except TimeoutError as error:
                raise _ConnectionLost("client stopped reading replies (write timed out)") from error
            except OSError as error:
                raise _ConnectionLost(f"write failed: {error}") from error
            finally:
                for frame in batch:
                    self.queue.release(len(frame))
            self._counters.replies_sent += len(batch)


@dataclass(frozen=True, slots=True, eq=False)
class Peer:
    """The sender of an inbound message, as authenticated by the handshake.

    ``address`` is the listening address a node advertised in its Hello
    (send to it with ``Transport.send``); ``remote_address`` is the socket's
    far end. Clients have ``address == ""`` and answer through ``reply``.
    """

    role: Literal["node", "client"]
    node_id: str
    address: str
    remote_address: str
    version: int
    _channel: _ReplyChannel | None = field(default=None, repr=False)

    def reply(self, message: wire.Message) -> bool:
        """Queue ``message`` on this client's connection; ``False`` if its queue is full or closed.

        Never blocks. Nodes are answered with ``Transport.send(peer.address, ...)``.
        """
        if self._channel is None:
            raise wire.LocalProtocolError(
                f"reply() is for clients; answer node {self.node_id} with Transport.send({self.address!r}, ...)"
            )
        return self._channel.offer(message)


class _InboundProtocol(asyncio.StreamReaderProtocol):
    """Stream protocol that reads nothing until the TLS handshake takes over.

    ``asyncio.start_server`` reads as soon as a connection is made, so bytes
    a fast client sends before ``start_tls`` runs would land in the plain
    StreamReader and the handshake would never see them.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.ReadTransport):
            transport.pause_reading()
        super().connection_made(transport)


# -- outbound ------------------------------------------------------------------------


class _OutboundPeer:
    """The queue, counters and writer task of one destination address."""

    def __init__(self, transport: Transport, address: str) -> None:
        config = transport.config
        self.transport = transport
        self.address = address
        self.queue = _FrameQueue(config.send_queue_messages_max, config.send_queue_bytes_max)
        self.counters = PeerCounters()
        # Frames held back by a delay fault: (due loop time, sequence, frame, copies).
        self.delayed: list[tuple[float, int, bytes, int]] = []
        self.delayed_sequence = itertools.count()
        self.connected = False
        self.node_id: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.redial = asyncio.Event()  # set when the address just connected to us: it is up

    def backoff_s(self, failures: int) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random."""
        assert failures >= 1
        config = self.transport.config
        ceiling_ms = float(
            min(
                config.reconnect_backoff_ms_max,
                config.reconnect_backoff_ms_min * 2 ** min(failures - 1, 30),
            )
        )
        delay_ms = ceiling_ms / 2 + self.transport.random.uniform(0, ceiling_ms / 2)
        assert 0 < delay_ms <= config.reconnect_backoff_ms_max
        return delay_ms / 1000

    async def run(self) -> None:
        """Connect when there is something to send, write, redial on failure; until cancelled."""
        transport = self.transport
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            self._stop_if_closing()
            await self._wait_for_work()
            try:
                stream, hello = await _open_stream(
                    self.address,
                    transport.tls.client,
                    transport.hello(),
                    transport.config,
                    expect_node_id=None,
                )
            except ConnectError as error:
                failures += 1
                self.counters.connect_failures += 1
                transport.logger.warning_once(
                    ("connect_failed", self.address),
                    "peer_connect_failed",
                    peer=self.address,
                    reason=str(error),
                    failures=failures,
                )
                transport.peer_unreachable(self.node_id, f"cannot reconnect: {error}")
                await self._back_off(failures)
                continue
            started = loop.time()
            self.connected = True
            self.node_id = hello.node_id
            self.counters.connects += 1
            transport.logger.info("peer_connected", peer=self.address, peer_node=hello.node_id)
            try:
                reason = await self._pump(stream)
            finally:
                self.connected = False
                await _close_writer(
                    stream.writer,
                    transport.config.close_timeout_ms / 1000,
                    goodbye="node shutting down" if transport.closing else None,
                )
            self.counters.disconnects += 1
            transport.logger.info(
                "peer_disconnected", peer=self.address, peer_node=hello.node_id, reason=reason
            )
            self._stop_if_closing()
            # A connection that dies at once (the peer accepts, then drops us)
            # must not turn into a tight redial loop: keep backing off.
            if loop.time() - started < transport.config.reconnect_backoff_ms_max / 1000:
                failures += 1
                await self._back_off(failures)
            else:
                failures = 0

    async def _back_off(self, failures: int) -> None:
        """Sleep the backoff, but wake at once if the peer connects to us
        meanwhile (it restarted: a restarted node must not wait up to
        ``reconnect_backoff_ms_max`` for our votes and heartbeats)."""
        self.redial.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.backoff_s(failures)):
                await self.redial.wait()

    def _stop_if_closing(self) -> None:
        if self.transport.closing:
            raise asyncio.CancelledError

    async def _wait_for_work(self) -> None:
        while not self.queue.frames and not self.delayed:
            self.queue.nonempty.clear()
            await self.queue.nonempty.wait()

    async def _pump(self, stream: _Stream) -> str:
        """Write until the connection breaks; return why it did."""
        return await _until_connection_lost(self._watch(stream), self._write(stream))

    async def _watch(self, stream: _Stream) -> NoReturn:
        """Read the receiving side of our own connection: only Goodbye or EOF may come."""
        try:
            message = await _read_message(stream.reader)
        except wire.RemoteProtocolError as error:
            self.transport.log_protocol_error(self.address, self.node_id, str(error))
            raise _ConnectionLost(f"protocol error: {error}") from error
        except OSError as error:
            raise _ConnectionLost(f"read failed: {error}") from error
        if message is None:
            raise _ConnectionLost("closed by peer")
        if isinstance(message, wire.Goodbye):
            raise _ConnectionLost(f"peer said goodbye: {message.reason}")
        reason = f"unexpected {type(message).__name__} on our outbound connection"
        self.transport.log_protocol_error(self.address, self.node_id, reason)
        raise _ConnectionLost(reason)

    async def _write(self, stream: _Stream) -> NoReturn:
        write_timeout_s = self.transport.config.write_timeout_ms / 1000
        while True:
            batch, released = self._take_batch()
            if not batch:
                await self._wait_for_frames()
                continue
            try:
                if stream.writer.is_closing():
                    raise _ConnectionLost("connection closing")
                stream.writer.write(b"".join(batch))
                async with asyncio.timeout(write_timeout_s):
                    await stream.writer.drain()
            except TimeoutError as error:
                raise _ConnectionLost("peer stopped reading (write timed out)") from error
            except OSError as error:
                raise _ConnectionLost(f"write failed: {error}") from error
            finally:
                for frame_bytes in released:
                    self.queue.release(frame_bytes)
            self.counters.messages_sent += len(batch)

    def _take_batch(self) -> tuple[list[bytes], list[int]]:
        """Frames to write now (due delayed ones first), and the reservations they free.

        Faults are decided here, just before the write, as netem would.
        """
        now = asyncio.get_running_loop().time()
        batch_max = self.transport.config.write_batch_messages_max
        batch: list[bytes] = []
        released: list[int] = []
        while self.delayed and self.delayed[0][0] <= now and len(batch) < batch_max:
            _, _, delayed_frame, copies = heapq.heappop(self.delayed)
            batch.extend([delayed_frame] * copies)
            released.append(len(delayed_frame))
        faults = self.transport.faults
        while len(batch) < batch_max:
            frame = self.queue.take()
            if frame is None:
                break
            decision = (
                PASS if faults is None else faults.decide(self.transport.address, self.address)
            )
            if decision.copies == 0:
                self.queue.release(len(frame))
                if decision.cut:
                    self.counters.messages_cut_fault += 1
                else:
                    self.counters.messages_dropped_fault += 1
                continue
            if decision.copies == 2:
                self.counters.messages_duplicated_fault += 1
            if decision.delay_ms > 0:
                self.counters.messages_delayed_fault += 1
                due = now + decision.delay_ms / 1000
                heapq.heappush(
                    self.delayed, (due, next(self.delayed_sequence), frame, decision.copies)
                )
                continue
            batch.extend([frame] * decision.copies)
            released.append(len(frame))
        return batch, released

    async def _wait_for_frames(self) -> None:
        self.queue.nonempty.clear()
        if self.queue.frames:
            return
        timeout_s = None
        if self.delayed:
            timeout_s = self.delayed[0][0] - asyncio.get_running_loop().time()
            if timeout_s <= 0:
                return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.queue.nonempty.wait()

    def close(self) -> None:
        """Drop queued frames and wake waiters (the task is cancelled by the owner)."""
        self.delayed.clear()
        self.queue.close()


@dataclass(slots=True)
class _Stream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    remote_address: str


async def _open_stream(
    address: str,
    ssl_context: ssl.SSLContext,
    hello: wire.Hello,
    config: TransportConfig,
    expect_node_id: str | None,
) -> tuple[_Stream, wire.Hello]:
    """Dial ``address``: TCP, TLS, Hello both ways, identity and version checked.

    Everything that can go wrong is a ``ConnectError`` saying what did.
    """
    try:
        host, port = parse_address(address)
    except ValueError as error:
        raise ConnectError(str(error)) from error
    try:
        async with asyncio.timeout(config.connect_timeout_ms / 1000):
            reader, writer = await asyncio.open_connection(
                host,
                port,
                ssl=ssl_context,
                ssl_handshake_timeout=config.handshake_timeout_ms / 1000,
                limit=_READ_BUFFER_BYTES,
            )
    except TimeoutError as error:
        raise ConnectError(f"cannot connect to {address}: timed out") from error
    except ssl.SSLError as error:
        raise ConnectError(f"cannot connect to {address}: {_tls_reason(error)}") from error
    except OSError as error:
        raise ConnectError(f"cannot connect to {address}: {error.strerror or error}") from error
    _enable_keepalive(writer)
    try:
        async with asyncio.timeout(config.handshake_timeout_ms / 1000):
            writer.write(_frame(hello))
            await writer.drain()
            reply = await _read_message(reader, _HELLO_FRAME_BYTES_MAX, observe=False)
        if isinstance(reply, wire.Goodbye):
            raise ConnectError(f"{address} refused us: {reply.reason}")
        if not isinstance(reply, wire.Hello):
            got = "end of stream" if reply is None else type(reply).__name__
            raise ConnectError(f"{address} answered Hello with {got}")
        role, name = identity.peer_identity(writer.get_extra_info("ssl_object"))
        if role != "node" or reply.role != "node":
            raise ConnectError(
                f"{address} is not a node (certificate role {role}, Hello role {reply.role})"
            )
        if name != reply.node_id:
            raise ConnectError(
                f"{address} says it is node {reply.node_id} but its certificate names {name}"
            )
        if expect_node_id is not None and name != expect_node_id:
            raise ConnectError(f"{address} is node {name}, expected {expect_node_id}")
        wire.negotiate_version(reply.protocol_min, reply.protocol_max)
    except BaseException as error:
        writer.transport.abort()
        if isinstance(error, ConnectError):
            raise
        if isinstance(error, TimeoutError):
            raise ConnectError(f"{address} did not complete the Hello exchange in time") from error
        if isinstance(error, wire.RemoteProtocolError | identity.PeerIdentityError):
            raise ConnectError(f"{address}: {error}") from error
        if isinstance(error, OSError):
            raise ConnectError(f"connection to {address} failed during Hello: {error}") from error
        raise
    return _Stream(reader, writer, address), reply


# -- the transport -------------------------------------------------------------------

OnMessage = Callable[[Peer, wire.Message], None]


class Transport:
    """Framed, mutually authenticated messaging for one node on one TCP port.

    ``on_message(peer, message)`` is called on the event loop for every
    message from a node or client (never ``Hello``/``Goodbye``); it must not
    block. See the module docstring for the delivery model.

    TLS comes from ``tls`` (both contexts) or is built from
    ``node_certificate``; give exactly one. ``faults=None`` reads
    ``$MOOT_FAULTS_FILE`` if it is set and injects nothing otherwise.
    ``advertise_address`` is what other nodes dial (default: the listening
    address with its bound port; required when listening on 0.0.0.0).
    """

    def __init__(
        self,
        node_id: str,
        listen_address: str,
        cluster: identity.Cluster,
        *,
        on_message: OnMessage,
        tls: identity.TlsContexts | None = None,
        node_certificate: identity.NodeIdentity | None = None,
        config: TransportConfig | None = None,
        faults: Faults | None = None,
        logger: StructuredLogger | None = None,
        advertise_address: str | None = None,
        random_source: random.Random | None = None,
        on_peer_lost: Callable[[str, str], None] | None = None,
    ) -> None:
        identity.validate_node_id(node_id)
        if (tls is None) == (node_certificate is None):
            raise ValueError("give Transport exactly one of tls= and node_certificate=")
        if node_certificate is not None:
            if node_certificate.node_id != node_id:
                raise ValueError(
                    f"certificate is for node {node_certificate.node_id}, not {node_id}"
                )
            tls = identity.node_tls_contexts(cluster, node_certificate)
        assert tls is not None
        self.config = config or TransportConfig()
        self.config.validate()
        self.node_id = node_id
        self.cluster = cluster
        self.tls = tls
        self.logger = logger or StructuredLogger(node_id)
        self.faults = faults if faults is not None else Faults.from_environment(logger=self.logger)
        self.random = random_source or random.Random()
        self._on_message = on_message
        self._on_peer_lost = on_peer_lost
        self._listen_host, self._listen_port = parse_address(listen_address)
        if advertise_address is not None:
            parse_address(advertise_address)
        elif is_wildcard(self._listen_host):
            raise ValueError(
                f"listening on {listen_address} needs an advertise_address other nodes can reach"
            )
        self._advertise_address = advertise_address
        self._token = cluster.token.encode("utf-8")
        self._server: asyncio.Server | None = None
        self._address = ""
        self.closing = False
        self._closed = False
        self._peers: dict[str, _OutboundPeer] = {}
        self._forgotten = PeerCounters()  # the counters of peers forgotten, summed
        self._retiring: set[asyncio.Task[None]] = set()
        self._inbound: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self.inbound_counters = InboundCounters()

    # -- lifecycle --

    @property
    def address(self) -> str:
        """The address other nodes reach us at (the bound port once started)."""
        if not self._address:
            raise TransportClosedError("transport not started")
        return self._address

    async def start(self) -> None:
        """Bind and listen; ``AddressInUseError`` if the port is taken."""
        assert self._server is None, "start() called twice"
        loop = asyncio.get_running_loop()
        listen = format_address(self._listen_host, self._listen_port)

        def make_protocol() -> _InboundProtocol:
            reader = asyncio.StreamReader(limit=_READ_BUFFER_BYTES, loop=loop)
            return _InboundProtocol(reader, self._on_inbound_connection, loop=loop)

        try:
            self._server = await loop.create_server(
                make_protocol, self._listen_host, self._listen_port, reuse_address=True
            )
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise AddressInUseError(
                    f"cannot listen on {listen}: address already in use "
                    f"(another moot node running there?); choose another port"
                ) from error
            raise TransportError(f"cannot listen on {listen}: {error.strerror or error}") from error
        port = self._server.sockets[0].getsockname()[1]
        self._address = self._advertise_address or format_address(self._listen_host, port)
        self.logger.info(
            "transport_listening",
            address=self._address,
            listen=format_address(self._listen_host, port),
        )

    async def close(self) -> None:
        """Stop listening, say Goodbye on open connections, cancel every task and wait for them."""
        if self._closed:
            return
        self._closed = True
        self.closing = True
        if self._server is not None:
            self._server.close()
        tasks: list[asyncio.Task[Any]] = []
        for peer in self._peers.values():
            peer.close()
            if peer.task is not None:
                peer.task.cancel()
                tasks.append(peer.task)
        tasks.extend(self._retiring)
        for task in self._inbound:
            task.cancel()
            tasks.append(task)
        close_timeout_s = self.config.close_timeout_ms / 1000
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=close_timeout_s)
            if pending:
                self.logger.warning(
                    "transport_close_tasks_pending", tasks=sorted(t.get_name() for t in pending)
                )
        if self._server is not None:
            # Python 3.11.7's wait_closed also waits for every accepted
            # connection to detach; bound it so shutdown always finishes.
            try:
                async with asyncio.timeout(close_timeout_s):
                    await self._server.wait_closed()
            except TimeoutError:
                self.logger.warning("transport_close_server_timeout", inbound=len(self._inbound))
        self._peers.clear()
        self.logger.info("transport_closed")

    # -- sending --

    def send(self, address: str, message: wire.Message) -> bool:
        """Queue ``message`` for the node at ``address``; never blocks.

        ``False`` (and a counted drop) if that peer's queue is full or the
        transport is closed. ``LocalProtocolError`` if the message cannot be
        encoded (over the frame cap) and ``ValueError`` if ``address`` is not
        HOST:PORT: bugs in the caller.
        """
        frame = _frame(message)
        if self.closing:
            return False
        peer = self._peer(address)
        if peer is None:
            return False
        if not peer.queue.offer(frame):
            peer.counters.messages_dropped_queue_full += 1
            return False
        peer.counters.messages_queued += 1
        return True

    async def send_wait(self, address: str, message: wire.Message) -> None:
        """Queue ``message``, waiting while the peer's queue is full (backpressure)."""
        frame = _frame(message)
        if self.closing:
            raise TransportClosedError("transport is closed")
        peer = self._peer(address)
        if peer is None:
            raise TransportError(
                f"too many destinations (outbound_peers_max={self.config.outbound_peers_max})"
            )
        await peer.queue.wait_for_room(frame)
        peer.counters.messages_queued += 1

    def forget(self, address: str) -> None:
        """Drop the queue and connection to ``address`` (a member that left or died)."""
        peer = self._peers.pop(address, None)
        if peer is None:
            return
        for name, value in asdict(peer.counters).items():  # totals never go down (metrics)
            setattr(self._forgotten, name, getattr(self._forgotten, name) + value)
        peer.close()
        if peer.task is not None:
            peer.task.cancel()
            self._retiring.add(peer.task)
            peer.task.add_done_callback(self._retiring.discard)

    def connected(self, address: str) -> bool:
        """Whether the outbound connection to ``address`` is up now."""
        peer = self._peers.get(address)
        return peer is not None and peer.connected

    def pending_messages(self) -> int:
        """Messages held for all destinations (queued, delayed or being written)."""
        return sum(peer.queue.reserved_messages for peer in self._peers.values())

    def queued(self, address: str) -> int:
        """Messages held for ``address`` (queued, delayed or being written)."""
        peer = self._peers.get(address)
        return 0 if peer is None else peer.queue.reserved_messages

    def peer_counters(self, address: str) -> PeerCounters:
        """Counters of ``address`` (zeros if never sent to)."""
        peer = self._peers.get(address)
        return PeerCounters() if peer is None else peer.counters

    def counters(self) -> dict[str, Any]:
        """A snapshot for metrics: per-destination counters and inbound totals."""
        return {
            "outbound": {address: asdict(peer.counters) for address, peer in self._peers.items()},
            "outbound_forgotten": asdict(self._forgotten),
            "outbound_connected": sum(peer.connected for peer in self._peers.values()),
            "inbound": asdict(self.inbound_counters),
            "inbound_connections_open": len(self._inbound),
        }

    async def flush(self, timeout_ms: int) -> bool:
        """Wait until every queue is written out; ``False`` if ``timeout_ms`` passed first."""
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                for peer in list(self._peers.values()):
                    while peer.queue.reserved_messages and not peer.queue.closed:
                        peer.queue.room.clear()
                        await peer.queue.room.wait()
        except TimeoutError:
            return False
        return True

    def hello(self) -> wire.Hello:
        """The Hello this node sends on every connection."""
        return wire.Hello(
            protocol_min=wire.PROTOCOL_VERSION_MIN,
            protocol_max=wire.PROTOCOL_VERSION_MAX,
            role="node",
            node_id=self.node_id,
            address=self.address,
        )

    def _peer(self, address: str) -> _OutboundPeer | None:
        if not self._address:
            raise TransportClosedError("send() before start()")
        peer = self._peers.get(address)
        if peer is not None:
            return peer
        if len(self._peers) >= self.config.outbound_peers_max:
            self.logger.warning_once(
                "outbound_peers_max",
                "peer_limit_reached",
                peer=address,
                limit=self.config.outbound_peers_max,
                reason="too many destinations; forget() members that left",
            )
            return None
        parse_address(
            address
        )  # a malformed address is the caller's bug: fail here, not in the task
        peer = _OutboundPeer(self, address)
        self._peers[address] = peer
        peer.task = asyncio.get_running_loop().create_task(peer.run(), name=f"moot-send-{address}")
        peer.task.add_done_callback(self._on_task_done)
        return peer

    def _on_task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.logger.error("transport_task_failed", exc_info=error, task=task.get_name())

    # -- logging helpers --

    def log_protocol_error(self, remote: str, node_id: str | None, reason: str) -> None:
        """One warning per (peer host, reason) per interval for a post-handshake protocol error."""
        self.inbound_counters.connections_closed_protocol_error += 1
        host = remote.rpartition(":")[0]
        self.logger.warning_once(
            ("protocol_error", host, reason[:64]),
            "peer_protocol_error",
            peer=remote,
            peer_node=node_id,
            reason=reason,
        )

    def _log_refused(self, remote: str, kind: str, reason: str) -> None:
        refused = self.inbound_counters.connections_refused
        refused[kind] = refused.get(kind, 0) + 1
        host = remote.rpartition(":")[0]
        self.logger.warning_once(
            ("refused", host, kind), "peer_refused", peer=remote, kind=kind, reason=reason
        )

    # -- inbound --

    async def _on_inbound_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        remote = _remote_address(writer)
        if self.closing:
            writer.transport.abort()
            return
        self._inbound[task] = writer
        peer: Peer | None = None
        try:
            peer = await self._handshake_inbound(reader, writer, remote)
            if peer is not None:
                await self._serve_inbound(peer, reader, writer, remote)
        except asyncio.CancelledError:
            # Our close(). Not re-raised: asyncio would log the cancellation
            # of a client_connected_cb task as an error. Goodbye only on an
            # established stream: before TLS it would go out in plain text.
            if peer is None:
                writer.transport.abort()
            else:
                try:
                    await _close_writer(
                        writer, self.config.close_timeout_ms / 1000, goodbye="node shutting down"
                    )
                except asyncio.CancelledError:  # cancelled again while saying goodbye
                    writer.transport.abort()
        except Exception as error:  # a bug here must not stop the server: log it loudly
            self.logger.error("inbound_connection_failed", exc_info=error, peer=remote)
            writer.transport.abort()
        finally:
            self._inbound.pop(task, None)

    async def _handshake_inbound(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, remote: str
    ) -> Peer | None:
        """TLS, then Hello both ways; ``None`` if refused (logged, connection closed)."""
        close_timeout_s = self.config.close_timeout_ms / 1000
        if len(self._inbound) > self.config.inbound_connections_max:
            self._log_refused(
                remote,
                "capacity",
                f"over inbound_connections_max={self.config.inbound_connections_max}",
            )
            writer.transport.abort()
            return None
        _enable_keepalive(writer)
        handshake_timeout_s = self.config.handshake_timeout_ms / 1000
        try:
            async with asyncio.timeout(handshake_timeout_s):
                await writer.start_tls(self.tls.server, ssl_handshake_timeout=handshake_timeout_s)
                return await self._accept_hello(reader, writer, remote)
        except _Refused as refusal:
            self._log_refused(remote, refusal.kind, refusal.reason)
            await _close_writer(
                writer, close_timeout_s, goodbye=refusal.reason if refusal.goodbye else None
            )
        except TimeoutError:
            self._log_refused(
                remote,
                "timeout",
                f"no TLS handshake and Hello within {self.config.handshake_timeout_ms} ms",
            )
            writer.transport.abort()
        except (ssl.SSLError, OSError) as error:
            self._log_refused(remote, "tls", _tls_reason(error))
            writer.transport.abort()
        return None

    async def _serve_inbound(
        self,
        peer: Peer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        remote: str,
    ) -> None:
        """Deliver the peer's messages (and write a client's replies) until the stream ends."""
        close_timeout_s = self.config.close_timeout_ms / 1000
        self.inbound_counters.connections_accepted += 1
        level = logging.INFO if peer.role == "node" else logging.DEBUG
        self.logger.log(
            level,
            "peer_accepted",
            peer=remote,
            peer_node=peer.node_id,
            role=peer.role,
            version=peer.version,
        )
        if peer.role == "node":
            outbound = self._peers.get(peer.address)
            if outbound is not None and not outbound.connected:
                outbound.redial.set()
        loops = [self._read_loop(peer, reader)]
        if peer._channel is not None:
            loops.append(peer._channel.run(writer))
        try:
            reason = await _until_connection_lost(*loops)
        finally:
            if peer._channel is not None:
                peer._channel.queue.close()
        self.logger.log(level, "peer_closed", peer=remote, peer_node=peer.node_id, reason=reason)
        if peer.role == "node":
            # A hint, not a verdict: a peer process that died closes its
            # sockets at once, long before any timeout notices.
            self.peer_unreachable(peer.node_id, reason)
        await _close_writer(writer, close_timeout_s)

    def peer_unreachable(self, node_id: str | None, reason: str) -> None:
        """Tell the node's services that ``node_id`` is out of reach now: its
        connection closed, or dialing it again failed. The second matters as
        much: a killed peer's address refuses connections until membership
        declares it dead, and requests sent to it meanwhile waited for their
        whole timeout (found: map tasks stalled 10 s on object puts)."""
        if node_id is None or self._on_peer_lost is None or self.closing:
            return
        try:
            self._on_peer_lost(node_id, reason)
        except Exception as error:
            self.logger.error("on_peer_lost_failed", exc_info=error, peer=node_id)

    async def _accept_hello(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, remote: str
    ) -> Peer:
        try:
            message = await _read_message(reader, _HELLO_FRAME_BYTES_MAX, observe=False)
        except wire.RemoteProtocolError as error:
            raise _Refused("protocol", str(error)) from error
        if message is None:
            raise _Refused("protocol", "closed before sending Hello", goodbye=False)
        if not isinstance(message, wire.Hello):
            raise _Refused("protocol", f"first frame is {type(message).__name__}, expected Hello")
        try:
            version = wire.negotiate_version(message.protocol_min, message.protocol_max)
        except wire.RemoteProtocolError as error:
            raise _Refused("version", str(error)) from error
        try:
            certificate_role, certificate_name = identity.peer_identity(
                writer.get_extra_info("ssl_object")
            )
        except identity.PeerIdentityError as error:
            raise _Refused("identity", str(error)) from error
        channel: _ReplyChannel | None = None
        if message.role == "node":
            if certificate_role != "node":
                raise _Refused(
                    "identity",
                    f"Hello says node {message.node_id} but the certificate is a {certificate_role} certificate",
                )
            if certificate_name != message.node_id:
                raise _Refused(
                    "identity",
                    f"Hello says node {message.node_id} but the certificate names {certificate_name}",
                )
            try:
                parse_address(message.address)
            except ValueError as error:
                raise _Refused("protocol", f"Hello address: {error}") from error
        else:
            if certificate_role != "client":
                raise _Refused(
                    "identity",
                    f"Hello says client but the certificate is a {certificate_role} certificate",
                )
            if not hmac.compare_digest(message.token.encode("utf-8"), self._token):
                raise _Refused("token", "client token does not match the cluster's token")
            channel = _ReplyChannel(self.config, self.inbound_counters)
        writer.write(_frame(self.hello()))
        await writer.drain()
        return Peer(
            role=message.role,
            node_id=message.node_id,
            address=message.address if message.role == "node" else "",
            remote_address=remote,
            version=version,
            _channel=channel,
        )

    async def _read_loop(self, peer: Peer, reader: asyncio.StreamReader) -> NoReturn:
        while True:
            try:
                message = await _read_message(reader)
            except wire.RemoteProtocolError as error:
                self.log_protocol_error(peer.remote_address, peer.node_id, str(error))
                raise _ConnectionLost(f"protocol error: {error}") from error
            except OSError as error:
                raise _ConnectionLost(f"read failed: {error}") from error
            if message is None:
                raise _ConnectionLost("closed by peer")
            if isinstance(message, wire.Goodbye):
                raise _ConnectionLost(f"peer said goodbye: {message.reason}")
            if isinstance(message, wire.Hello):
                self.log_protocol_error(
                    peer.remote_address, peer.node_id, "second Hello on one connection"
                )
                raise _ConnectionLost("protocol error: second Hello")
            self._count_received(peer)
            try:
                self._on_message(peer, message)
            except Exception as error:  # a bug in the core must not cut the peer off: log it loudly
                self.logger.error(
                    "on_message_failed",
                    exc_info=error,
                    peer=peer.remote_address,
                    message=type(message).__name__,
                )

    def _count_received(self, peer: Peer) -> None:
        counters = self.inbound_counters
        if peer.role == "client":
            counters.messages_received_from_clients += 1
            return
        by_node = counters.messages_received_by_node
        key = peer.node_id
        if key not in by_node and len(by_node) >= self.config.counters_peers_max:
            key = _OTHER_PEERS
        by_node[key] = by_node.get(key, 0) + 1


# -- client side ---------------------------------------------------------------------


class ClientConnection:
    """A client's connection to one node: requests matched to replies by ``request_id``.

    Open it with ``open_client_connection``; close it with ``close`` or
    ``async with``. Messages from the node that answer no pending request go
    to ``on_unsolicited`` (if given) or are counted and dropped.
    """

    def __init__(
        self,
        stream: _Stream,
        server_hello: wire.Hello,
        config: TransportConfig,
        on_unsolicited: Callable[[wire.Message], None] | None = None,
    ) -> None:
        self.address = stream.remote_address
        self.node_id = server_hello.node_id
        self.version = wire.negotiate_version(server_hello.protocol_min, server_hello.protocol_max)
        self.unsolicited_dropped = 0
        self._stream = stream
        self._config = config
        self._on_unsolicited = on_unsolicited
        self._pending: dict[int, asyncio.Future[wire.Message]] = {}
        self._request_ids = itertools.count(1)
        self._lost_reason: str | None = None
        self._reader_task = asyncio.get_running_loop().create_task(
            self._read_replies(), name=f"moot-client-{self.address}"
        )

    def next_request_id(self) -> int:
        """A request id unique on this connection."""
        return next(self._request_ids)

    @property
    def closed(self) -> bool:
        """Whether the connection is gone (closed by us or lost)."""
        return self._lost_reason is not None

    async def request(self, message: wire.Message, timeout_ms: int | None = None) -> wire.Message:
        """Send ``message`` (which has a ``request_id``) and return the node's reply.

        ``RequestTimeoutError`` after ``timeout_ms`` (default from config),
        ``ConnectionLostError`` if the connection closes first. An
        ``ErrorReply`` is returned like any reply; the caller maps it.
        """
        request_id = getattr(message, "request_id", None)
        if not isinstance(request_id, int):
            raise wire.LocalProtocolError(
                f"{type(message).__name__} has no request_id: it is not a request"
            )
        if self._lost_reason is not None:
            raise ConnectionLostError(
                f"connection to {self.address} is closed: {self._lost_reason}"
            )
        if request_id in self._pending:
            raise wire.LocalProtocolError(f"request_id {request_id} is already waiting for a reply")
        if len(self._pending) >= self._config.requests_inflight_max:
            raise TransportError(f"{len(self._pending)} requests in flight (requests_inflight_max)")
        frame = _frame(message)
        future: asyncio.Future[wire.Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        timeout_s = (
            timeout_ms if timeout_ms is not None else self._config.request_timeout_ms
        ) / 1000
        try:
            async with asyncio.timeout(timeout_s):
                self._stream.writer.write(frame)
                await self._stream.writer.drain()
                return await future
        except TransportError:
            raise
        except TimeoutError as error:
            raise RequestTimeoutError(
                f"no reply from {self.address} to {type(message).__name__} within {timeout_s * 1000:.0f} ms"
            ) from error
        except OSError as error:
            raise ConnectionLostError(f"connection to {self.address} failed: {error}") from error
        finally:
            self._pending.pop(request_id, None)

    async def send(self, message: wire.Message) -> None:
        """Send ``message`` and wait for nothing but the socket: its answers
        (a subscription's pushes) all go to ``on_unsolicited``."""
        if self._lost_reason is not None:
            raise ConnectionLostError(f"connection to {self.address} is closed: {self._lost_reason}")
        try:
            self._stream.writer.write(_frame(message))
            await self._stream.writer.drain()
        except OSError as error:
            raise ConnectionLostError(f"connection to {self.address} failed: {error}") from error

    async def send_many(self, messages: list[wire.Message]) -> None:
        """``send`` for several messages, in one write."""
        if self._lost_reason is not None:
            raise ConnectionLostError(f"connection to {self.address} is closed: {self._lost_reason}")
        try:
            self._stream.writer.write(b"".join(_frame(message) for message in messages))
            await self._stream.writer.drain()
        except OSError as error:
            raise ConnectionLostError(f"connection to {self.address} failed: {error}") from error

    async def close(self) -> None:
        """Say Goodbye and close; pending requests fail with ``ConnectionLostError``."""
        if self._lost_reason is None:
            self._lost_reason = "closed by the client"
        self._reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader_task
        self._fail_pending()
        await _close_writer(
            self._stream.writer, self._config.close_timeout_ms / 1000, goodbye="client closing"
        )

    async def wait_closed(self) -> str:
        """Wait until the connection is gone; returns why."""
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._reader_task)
        return self._lost_reason or "closed"

    async def __aenter__(self) -> ClientConnection:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _read_replies(self) -> None:
        reason = "closed by the node"
        try:
            while True:
                message = await _read_message(self._stream.reader)
                if message is None:
                    break
                if isinstance(message, wire.Goodbye):
                    reason = f"node said goodbye: {message.reason}"
                    break
                self._dispatch(message)
        except wire.RemoteProtocolError as error:
            reason = f"protocol error from the node: {error}"
        except OSError as error:
            reason = f"read failed: {error}"
        finally:
            # Whatever ended the loop (cancel by close(), a bug in
            # on_unsolicited), nobody may wait for a reply that cannot come.
            if self._lost_reason is None:
                self._lost_reason = reason
            self._fail_pending()

    def _dispatch(self, message: wire.Message) -> None:
        request_id = getattr(message, "request_id", None)
        future = self._pending.get(request_id) if isinstance(request_id, int) else None
        if future is not None and not future.done():
            future.set_result(message)
        elif self._on_unsolicited is not None:
            self._on_unsolicited(message)
        else:
            self.unsolicited_dropped += 1

    def _fail_pending(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(
                    ConnectionLostError(f"connection to {self.address} lost: {self._lost_reason}")
                )


async def open_client_connection(
    address: str,
    cluster: identity.Cluster,
    token: str | None = None,
    *,
    client_name: str = "client",
    ssl_context: ssl.SSLContext | None = None,
    config: TransportConfig | None = None,
    on_unsolicited: Callable[[wire.Message], None] | None = None,
    expect_node_id: str | None = None,
) -> ClientConnection:
    """Connect to the node at ``address`` as a client (client certificate + token).

    With ``expect_node_id`` the node's certificate must name that node.
    ``ConnectError`` says why if it fails (unreachable, TLS, wrong token...).
    """
    config = config or TransportConfig()
    config.validate()
    hello = wire.Hello(
        protocol_min=wire.PROTOCOL_VERSION_MIN,
        protocol_max=wire.PROTOCOL_VERSION_MAX,
        role="client",
        node_id=client_name,
        token=cluster.token if token is None else token,
    )
    context = ssl_context or identity.client_ssl_context(cluster)
    stream, server_hello = await _open_stream(address, context, hello, config, expect_node_id)
    return ClientConnection(stream, server_hello, config, on_unsolicited)
