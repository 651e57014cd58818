"""The TLS transport on real sockets (127.0.0.1): delivery, refusals, reconnects, bounds, faults.

No test sleeps to synchronize: each waits for an event, or polls a condition
with a deadline (``eventually``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from moot.core import wire
from moot.runtime import identity
from moot.runtime.faults import (
    ENVIRONMENT_VARIABLE,
    FaultConfig,
    FaultRule,
    Faults,
    parse_fault_config,
    write_faults_file,
)
from moot.runtime.logs import StructuredLogger, configure_logging
from moot.runtime.transport import (
    AddressInUseError,
    ConnectError,
    ConnectionLostError,
    Peer,
    RequestTimeoutError,
    Transport,
    TransportConfig,
    open_client_connection,
    parse_address,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

DEADLINE_S = 10.0
CONFIG = TransportConfig.local()


async def eventually(
    predicate: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S
) -> None:
    """Poll ``predicate`` until it holds; fail with ``what`` after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.005)  # polling interval, not synchronization


class Inbox:
    """Collects what a transport delivers; lets a test wait for a condition on it."""

    def __init__(self) -> None:
        self.messages: list[tuple[Peer, wire.Message]] = []
        self.arrival_times: list[float] = []
        self._changed = asyncio.Event()
        self.reply: Callable[[Peer, wire.Message], None] | None = None

    def __call__(self, peer: Peer, message: wire.Message) -> None:
        self.messages.append((peer, message))
        self.arrival_times.append(asyncio.get_running_loop().time())
        self._changed.set()
        if self.reply is not None:
            self.reply(peer, message)

    def payloads(self) -> list[wire.Message]:
        return [message for _, message in self.messages]

    async def wait_for(self, predicate: Callable[[Inbox], bool], what: str) -> None:
        async with asyncio.timeout(DEADLINE_S):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()


@dataclasses.dataclass
class Node:
    transport: Transport
    inbox: Inbox
    node: identity.NodeIdentity

    @property
    def address(self) -> str:
        return self.transport.address


class Network:
    """Makes transports for one test and closes them all at the end."""

    def __init__(self, cluster: identity.Cluster, tmp_path: Path) -> None:
        self.cluster = cluster
        self.tmp_path = tmp_path
        self.transports: list[Transport] = []

    def identity_of(
        self, node_id: str, cluster: identity.Cluster | None = None
    ) -> identity.NodeIdentity:
        cluster = cluster or self.cluster
        return identity.issue_node_certificate(
            cluster, node_id, ["127.0.0.1"], self.tmp_path / cluster.cluster_id / node_id
        )

    async def node(
        self,
        node_id: str,
        *,
        config: TransportConfig = CONFIG,
        faults: Faults | None = None,
        listen: str = "127.0.0.1:0",
        cluster: identity.Cluster | None = None,
    ) -> Node:
        cluster = cluster or self.cluster
        inbox = Inbox()
        node = self.identity_of(node_id, cluster)
        transport = Transport(
            node_id,
            listen,
            cluster,
            on_message=inbox,
            node_certificate=node,
            config=config,
            faults=faults or Faults(),
            logger=StructuredLogger(node_id),
        )
        await transport.start()
        self.transports.append(transport)
        return Node(transport, inbox, node)

    async def close(self) -> None:
        await asyncio.gather(*(transport.close() for transport in self.transports))


@pytest.fixture
async def network(
    cluster: identity.Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Network]:
    caplog.set_level(logging.DEBUG)
    net = Network(cluster, tmp_path)
    try:
        yield net
    finally:
        await net.close()
    # Bad input is a warning; an error line (ours or asyncio's) is a bug.
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == []


def events(
    caplog: pytest.LogCaptureFixture, event: str, node: str | None = None
) -> list[dict[str, Any]]:
    found = []
    for record in caplog.records:
        fields = getattr(record, "moot_fields", None)
        if fields and fields.get("event") == event and (node is None or fields.get("node") == node):
            found.append(fields)
    return found


def nack(seq: int, source: str = "a") -> wire.Nack:
    return wire.Nack(seq=seq, source_id=source)


def frame(message: wire.Message) -> bytes:
    return wire.encode_frame(message)


def node_hello(node_id: str, **changes: Any) -> wire.Hello:
    fields: dict[str, Any] = {
        "protocol_min": wire.PROTOCOL_VERSION_MIN,
        "protocol_max": wire.PROTOCOL_VERSION_MAX,
        "role": "node",
        "node_id": node_id,
        "address": "127.0.0.1:1",
    }
    fields.update(changes)
    return wire.Hello(**fields)


async def read_frame(reader: asyncio.StreamReader) -> wire.Message | None:
    """The next message, or None at end of stream (a closed connection)."""
    try:
        header = await reader.readexactly(wire.FRAME_HEADER_BYTES)
        return wire.decode(await reader.readexactly(wire.frame_header(header)[0]))
    except (asyncio.IncompleteReadError, ConnectionResetError, ssl.SSLError):
        return None


async def raw_tls(
    address: str, context: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = parse_address(address)
    return await asyncio.open_connection(host, port, ssl=context)


async def read_until_closed(reader: asyncio.StreamReader) -> list[wire.Message]:
    """Every message until the server closes the connection."""
    messages = []
    async with asyncio.timeout(DEADLINE_S):
        while (message := await read_frame(reader)) is not None:
            messages.append(message)
    return messages


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- delivery --------------------------------------------------------------------------


async def test_two_nodes_exchange_messages_in_order(network: Network) -> None:
    a, b = await network.node("a"), await network.node("b")
    for seq in range(200):
        assert a.transport.send(b.address, nack(seq, "a"))
        assert b.transport.send(a.address, nack(seq, "b"))
    await b.inbox.wait_for(lambda inbox: len(inbox.messages) == 200, "200 messages at b")
    await a.inbox.wait_for(lambda inbox: len(inbox.messages) == 200, "200 messages at a")
    assert b.inbox.payloads() == [nack(seq, "a") for seq in range(200)]
    assert a.inbox.payloads() == [nack(seq, "b") for seq in range(200)]
    peer = b.inbox.messages[0][0]
    assert (peer.role, peer.node_id, peer.address, peer.version) == (
        "node",
        "a",
        a.address,
        wire.PROTOCOL_VERSION_MAX,
    )
    assert a.transport.peer_counters(b.address).messages_sent == 200
    assert b.transport.inbound_counters.messages_received_by_node == {"a": 200}
    with pytest.raises(wire.LocalProtocolError, match="reply"):
        peer.reply(nack(0))


async def test_client_request_and_reply(network: Network, cluster: identity.Cluster) -> None:
    b = await network.node("b")

    def answer(peer: Peer, message: wire.Message) -> None:
        if isinstance(message, wire.MembersRequest):
            assert peer.role == "client"
            peer.reply(wire.MembersReply(request_id=message.request_id, node_id="b", members=()))

    b.inbox.reply = answer
    async with await open_client_connection(b.address, cluster, config=CONFIG) as connection:
        assert connection.node_id == "b"
        replies = await asyncio.gather(
            *(
                connection.request(wire.MembersRequest(request_id=connection.next_request_id()))
                for _ in range(20)
            )
        )
        assert sorted(
            reply.request_id for reply in replies if isinstance(reply, wire.MembersReply)
        ) == list(range(1, 21))
    assert b.transport.inbound_counters.messages_received_from_clients == 20
    assert b.transport.inbound_counters.replies_sent == 20


async def test_client_request_timeout_and_lost_connection(
    network: Network, cluster: identity.Cluster
) -> None:
    b = await network.node("b")  # never answers
    connection = await open_client_connection(b.address, cluster, config=CONFIG)
    with pytest.raises(RequestTimeoutError):
        await connection.request(wire.MembersRequest(request_id=1), timeout_ms=100)
    pending = asyncio.create_task(connection.request(wire.MembersRequest(request_id=2)))
    await b.inbox.wait_for(lambda inbox: len(inbox.messages) == 2, "the second request at b")
    await b.transport.close()
    with pytest.raises(ConnectionLostError, match="goodbye"):
        await pending
    assert connection.closed
    await connection.close()


async def test_wrong_token_is_refused(
    network: Network, cluster: identity.Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    b = await network.node("b")
    with pytest.raises(ConnectError, match="token"):
        await open_client_connection(b.address, cluster, token="guess", config=CONFIG)
    refused = events(caplog, "peer_refused", node="b")
    assert [entry["kind"] for entry in refused] == ["token"]
    assert b.inbox.messages == []


async def test_address_in_use_names_the_address(network: Network) -> None:
    a = await network.node("a")
    with pytest.raises(AddressInUseError, match=a.address.replace(".", r"\.")):
        await network.node("b", listen=a.address)


# -- refusals ------------------------------------------------------------------------


async def test_foreign_ca_node_is_refused_logged_once_and_never_delivers(
    network: Network, foreign_cluster: identity.Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    a = await network.node("a")
    intruder = await network.node("intruder", cluster=foreign_cluster)
    assert intruder.transport.send(a.address, nack(1, "intruder"))
    counters = intruder.transport.peer_counters(a.address)
    await eventually(lambda: counters.connect_failures >= 3, "the intruder to fail three times")
    refused = events(caplog, "peer_refused", node="a")
    assert len(refused) == 1, refused  # one line, however often it retries
    assert refused[0]["kind"] == "tls"
    assert refused[0]["peer"].startswith("127.0.0.1:")
    assert a.inbox.messages == []
    assert a.transport.inbound_counters.connections_refused["tls"] >= 1


async def test_foreign_certificate_trusting_our_ca_is_refused(
    network: Network, foreign_cluster: identity.Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    a = await network.node("a")
    foreign = network.identity_of("intruder", foreign_cluster)
    context = identity.client_ssl_context(network.cluster, foreign.certificate, foreign.key)
    reader, writer = await raw_tls(a.address, context)  # TLS 1.3: the client finishes first
    writer.write(frame(node_hello("intruder")))
    assert await read_until_closed(reader) == []
    writer.close()
    await eventually(lambda: events(caplog, "peer_refused", node="a") != [], "a refusal at a")
    assert "certificate" in events(caplog, "peer_refused")[0]["reason"]
    assert a.inbox.messages == []


async def test_plain_tcp_garbage_is_refused(
    network: Network, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await network.node("a"), await network.node("b")
    host, port = parse_address(a.address)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(DEADLINE_S):
        assert await reader.read() == b""
    writer.close()
    await eventually(lambda: events(caplog, "peer_refused", node="a") != [], "a refusal at a")
    (refused,) = events(caplog, "peer_refused", node="a")
    assert refused["kind"] == "tls"
    # Nothing else changed: a real node still gets through.
    b.transport.send(a.address, nack(7, "b"))
    await a.inbox.wait_for(lambda inbox: inbox.payloads() == [nack(7, "b")], "b's message")


NO_CLOCK = bytes(8)  # a frame header's hybrid timestamp: none
OVERSIZED_HEADER = (wire.FRAME_BYTES_MAX + 1).to_bytes(wire.FRAME_LENGTH_BYTES, "big") + NO_CLOCK
UNKNOWN_TAG = wire.encode_frame(wire.Goodbye(reason="x")).replace(b"\xa4type\x02", b"\xa4type\x63")


@pytest.mark.parametrize(
    ("after_hello", "payload", "reason"),
    [
        (False, OVERSIZED_HEADER, "over FRAME_BYTES_MAX"),
        (False, (100_000).to_bytes(wire.FRAME_LENGTH_BYTES, "big") + NO_CLOCK, "bytes is over"),
        (True, OVERSIZED_HEADER, "over FRAME_BYTES_MAX"),
        (True, UNKNOWN_TAG, "malformed"),
        (True, b"\x00\x00\x00\x03" + NO_CLOCK + b"\xc1\xc1\xc1", "malformed"),
        (False, frame(nack(1)), "expected Hello"),
        (True, frame(node_hello("n9")), "second Hello"),
    ],
    ids=[
        "oversized-first",
        "big-hello",
        "oversized",
        "unknown-tag",
        "garbage",
        "no-hello",
        "second-hello",
    ],
)
async def test_bad_frames_close_the_connection(
    network: Network,
    caplog: pytest.LogCaptureFixture,
    after_hello: bool,
    payload: bytes,
    reason: str,
) -> None:
    a = await network.node("a")
    n9 = network.identity_of("n9")
    reader, writer = await raw_tls(
        a.address, identity.node_tls_contexts(network.cluster, n9).client
    )
    if after_hello:
        writer.write(frame(node_hello("n9")))
        reply = await read_frame(reader)
        assert isinstance(reply, wire.Hello)
        assert reply.node_id == "a"
        writer.write(frame(nack(1, "n9")))
    writer.write(payload)
    await read_until_closed(reader)
    writer.close()
    event = "peer_protocol_error" if after_hello else "peer_refused"
    await eventually(lambda: events(caplog, event, node="a") != [], f"{event} at a")
    (logged,) = events(caplog, event, node="a")
    assert reason in logged["reason"]
    assert a.inbox.payloads() == ([nack(1, "n9")] if after_hello else [])


async def test_wrong_protocol_version_gets_goodbye(
    network: Network, caplog: pytest.LogCaptureFixture
) -> None:
    a = await network.node("a")
    n9 = network.identity_of("n9")
    reader, writer = await raw_tls(
        a.address, identity.node_tls_contexts(network.cluster, n9).client
    )
    writer.write(frame(node_hello("n9", protocol_min=90, protocol_max=99)))
    replies = await read_until_closed(reader)
    writer.close()
    assert len(replies) == 1
    assert isinstance(replies[0], wire.Goodbye)
    assert "no common protocol version" in replies[0].reason
    assert [entry["kind"] for entry in events(caplog, "peer_refused", node="a")] == ["version"]


@pytest.mark.parametrize("role", ["node", "client"])
async def test_hello_must_match_the_certificate(
    network: Network, caplog: pytest.LogCaptureFixture, role: str
) -> None:
    a = await network.node("a")
    if role == "node":  # a node certificate claiming another node's id
        context = identity.node_tls_contexts(network.cluster, network.identity_of("n9")).client
        hello = node_hello("a-impostor")
    else:  # a client certificate claiming to be a node
        context = identity.client_ssl_context(network.cluster)
        hello = node_hello("client")
    reader, writer = await raw_tls(a.address, context)
    writer.write(frame(hello))
    replies = await read_until_closed(reader)
    writer.close()
    assert len(replies) == 1
    assert isinstance(replies[0], wire.Goodbye)
    assert "certificate" in replies[0].reason
    assert [entry["kind"] for entry in events(caplog, "peer_refused", node="a")] == ["identity"]


async def test_silent_peer_times_out(network: Network, caplog: pytest.LogCaptureFixture) -> None:
    a = await network.node("a", config=dataclasses.replace(CONFIG, handshake_timeout_ms=200))
    host, port = parse_address(a.address)
    reader, writer = await asyncio.open_connection(host, port)
    async with asyncio.timeout(DEADLINE_S):
        assert await reader.read() == b""  # closed by a, not by us
    writer.close()
    await eventually(lambda: events(caplog, "peer_refused", node="a") != [], "a refusal at a")
    assert events(caplog, "peer_refused", node="a")[0]["kind"] == "timeout"


async def test_inbound_connections_are_capped(
    network: Network, caplog: pytest.LogCaptureFixture
) -> None:
    a = await network.node("a", config=dataclasses.replace(CONFIG, inbound_connections_max=1))
    host, port = parse_address(a.address)
    _, first = await asyncio.open_connection(host, port)  # holds the only slot, silently
    await eventually(
        lambda: a.transport.counters()["inbound_connections_open"] == 1, "a's slot taken"
    )
    reader, second = await asyncio.open_connection(host, port)
    async with asyncio.timeout(DEADLINE_S):
        assert await reader.read() == b""
    first.close()
    second.close()
    assert [entry["kind"] for entry in events(caplog, "peer_refused", node="a")] == ["capacity"]


# -- reconnects and bounds ---------------------------------------------------------------


async def test_reconnects_after_the_remote_restarts(
    network: Network, cluster: identity.Cluster
) -> None:
    a, b = await network.node("a"), await network.node("b")
    assert a.transport.send(b.address, nack(1))
    await b.inbox.wait_for(lambda inbox: len(inbox.messages) == 1, "the first message")
    address = b.address
    await b.transport.close()
    await eventually(lambda: not a.transport.connected(address), "a to notice b is gone")
    for seq in range(2, 12):  # queued while b is down
        assert a.transport.send(address, nack(seq))
    await eventually(
        lambda: a.transport.peer_counters(address).connect_failures >= 1, "a failed redial"
    )
    b2 = await network.node("b", listen=address)
    await b2.inbox.wait_for(
        lambda inbox: len(inbox.messages) == 10, "the queued messages at the new b"
    )
    assert b2.inbox.payloads() == [nack(seq) for seq in range(2, 12)]
    assert a.transport.peer_counters(address).connects == 2


async def test_queue_bound_drops_then_backpressure(network: Network) -> None:
    config = dataclasses.replace(CONFIG, send_queue_messages_max=8)
    a = await network.node("a", config=config)
    address = f"127.0.0.1:{free_port()}"  # nobody listens there yet
    results = [a.transport.send(address, nack(seq)) for seq in range(20)]
    assert results == [True] * 8 + [False] * 12
    counters = a.transport.peer_counters(address)
    assert counters.messages_dropped_queue_full == 12
    assert a.transport.queued(address) == 8
    waiting = asyncio.create_task(a.transport.send_wait(address, nack(100)))
    for _ in range(10):
        await asyncio.sleep(0)  # let the task run: it must stay blocked on the full queue
    assert not waiting.done()
    b = await network.node("b", listen=address)
    await waiting
    await b.inbox.wait_for(
        lambda inbox: len(inbox.messages) == 9, "the 8 kept messages and the waiter's"
    )
    assert b.inbox.payloads() == [nack(seq) for seq in range(8)] + [nack(100)]
    assert await a.transport.flush(timeout_ms=5_000)
    assert a.transport.pending_messages() == 0


async def test_forget_drops_the_queue(network: Network) -> None:
    a = await network.node("a")
    address = f"127.0.0.1:{free_port()}"
    assert a.transport.send(address, nack(1))
    a.transport.forget(address)
    assert a.transport.queued(address) == 0
    assert not a.transport.connected(address)


# -- faults ----------------------------------------------------------------------------


def rule(a: Node, b: Node, **fields: Any) -> FaultConfig:
    return FaultConfig(
        seed=42, rules=(FaultRule(source=a.address, destination=b.address, **fields),)
    )


async def test_fault_drop_is_deterministic(network: Network) -> None:
    faults = Faults()
    a, b = await network.node("a", faults=faults), await network.node("b")
    config = rule(a, b, drop_probability=0.5)
    faults.set_config(config)
    oracle = Faults(config)
    expected = [seq for seq in range(200) if oracle.decide(a.address, b.address).copies == 1]
    assert 50 < len(expected) < 150
    for seq in range(200):
        a.transport.send(b.address, nack(seq))
    counters = a.transport.peer_counters(b.address)
    await eventually(
        lambda: counters.messages_sent + counters.messages_dropped_fault == 200, "200 fates decided"
    )
    await b.inbox.wait_for(lambda inbox: len(inbox.messages) == len(expected), "the survivors")
    assert b.inbox.payloads() == [nack(seq) for seq in expected]


async def test_fault_duplicate(network: Network) -> None:
    faults = Faults()
    a, b = await network.node("a", faults=faults), await network.node("b")
    faults.set_config(rule(a, b, duplicate_probability=1.0))
    for seq in range(5):
        a.transport.send(b.address, nack(seq))
    await b.inbox.wait_for(lambda inbox: len(inbox.messages) == 10, "every message twice")
    assert b.inbox.payloads() == [nack(seq) for seq in range(5) for _ in range(2)]
    assert a.transport.peer_counters(b.address).messages_duplicated_fault == 5


async def test_fault_delay(network: Network) -> None:
    faults = Faults()
    a, b = await network.node("a", faults=faults), await network.node("b")
    # Connect first, so the measured time is the fault's, not the handshake's.
    a.transport.send(b.address, nack(0))
    await b.inbox.wait_for(lambda inbox: len(inbox.messages) == 1, "the first message")
    faults.set_config(rule(a, b, delay_ms=150, jitter_ms=50))
    sent_at = asyncio.get_running_loop().time()
    for seq in range(1, 4):
        a.transport.send(b.address, nack(seq))
    await b.inbox.wait_for(lambda inbox: len(inbox.messages) == 4, "the delayed messages")
    for arrival in b.inbox.arrival_times[1:]:
        assert arrival - sent_at >= 0.150
    assert a.transport.peer_counters(b.address).messages_delayed_fault == 3


async def test_fault_cut_and_heal(network: Network) -> None:
    faults = Faults()
    a, b = await network.node("a", faults=faults), await network.node("b")
    faults.set_config(rule(a, b, cut=True))
    for seq in range(10):
        a.transport.send(b.address, nack(seq))
    counters = a.transport.peer_counters(b.address)
    await eventually(lambda: counters.messages_cut_fault == 10, "all ten cut")
    # The reverse direction is not cut.
    b.transport.send(a.address, nack(1, "b"))
    await a.inbox.wait_for(lambda inbox: len(inbox.messages) == 1, "b's message at a")
    faults.set_config(FaultConfig())
    a.transport.send(b.address, nack(99))
    await b.inbox.wait_for(lambda inbox: len(inbox.messages) == 1, "the message after healing")
    assert b.inbox.payloads() == [nack(99)]


async def test_fault_file_is_reloaded_when_it_changes(network: Network, tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    faults = Faults.from_environment({ENVIRONMENT_VARIABLE: str(path)})
    assert faults is not None
    a, b = await network.node("a", faults=faults), await network.node("b")
    write_faults_file(path, rule(a, b, cut=True))
    a.transport.send(b.address, nack(1))
    counters = a.transport.peer_counters(b.address)
    await eventually(lambda: counters.messages_cut_fault == 1, "the cut from the file")
    path.write_text("{not json")  # a broken edit keeps the rules in force
    a.transport.send(b.address, nack(2))
    await eventually(lambda: counters.messages_cut_fault == 2, "the cut kept")
    write_faults_file(path, FaultConfig())
    a.transport.send(b.address, nack(3))
    await b.inbox.wait_for(lambda inbox: inbox.payloads() == [nack(3)], "the message after healing")


def test_faults_are_off_unless_configured() -> None:
    assert Faults.from_environment({}) is None
    assert Faults.from_environment({ENVIRONMENT_VARIABLE: ""}) is None


def test_fault_rule_precedence() -> None:
    faults = Faults(
        FaultConfig(
            rules=(
                FaultRule(source="*", destination="*", cut=True),
                FaultRule(source="x:1", destination="y:1", drop_probability=0.0),
                FaultRule(source="*", destination="z:1", duplicate_probability=1.0),
            )
        )
    )
    assert faults.decide("x:1", "y:1").copies == 1
    assert faults.decide("x:1", "z:1").copies == 2
    assert faults.decide("x:1", "w:1").cut


def test_fault_file_is_validated() -> None:
    with pytest.raises(ValueError, match="drop_probability"):
        parse_fault_config(json.dumps({"rules": [{"drop_probability": 1.5}]}))
    with pytest.raises(ValueError, match="unknown field"):
        parse_fault_config(json.dumps({"rules": [{"dorp": 1}]}))
    with pytest.raises(ValueError, match="same"):
        parse_fault_config(json.dumps({"rules": [{"cut": True}, {"cut": False}]}))


# -- logs ------------------------------------------------------------------------------


def test_structured_log_lines_and_once_guard() -> None:
    stream = io.StringIO()
    handler = configure_logging(logging.INFO, stream)
    try:
        now = [0.0]
        logger = StructuredLogger("n1", clock=lambda: now[0], once_interval_s=60)
        logger.info("node_started", listen="127.0.0.1:7000")
        for _ in range(5):
            logger.warning_once(
                ("refused", "10.0.0.1"), "peer_refused", peer="10.0.0.1:5555", reason="tls"
            )
        now[0] = 61.0
        logger.warning_once(
            ("refused", "10.0.0.1"), "peer_refused", peer="10.0.0.1:5556", reason="tls"
        )
    finally:
        logging.getLogger("moot").removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["node_started", "peer_refused", "peer_refused"]
    assert lines[0]["node"] == "n1"
    assert lines[0]["level"] == "info"
    assert lines[0]["ts"].endswith("Z")
    assert lines[1]["peer"] == "10.0.0.1:5555"
    assert "suppressed" not in lines[1]
    assert lines[2]["suppressed"] == 4


# -- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "profile", [TransportConfig.lan, TransportConfig.wan, TransportConfig.local]
)
def test_profiles_are_valid(profile: Callable[[], TransportConfig]) -> None:
    profile().validate()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"send_queue_messages_max": 0}, "send_queue_messages_max"),
        ({"send_queue_bytes_max": 1024}, "maximum frame"),
        ({"reconnect_backoff_ms_min": 10, "reconnect_backoff_ms_max": 5}, "backoff"),
    ],
)
def test_invalid_config_is_refused(changes: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TransportConfig(), **changes).validate()


def test_wildcard_listen_needs_an_advertised_address(
    cluster: identity.Cluster, tmp_path: Path
) -> None:
    node = identity.issue_node_certificate(cluster, "a", [], tmp_path / "a")
    with pytest.raises(ValueError, match="advertise_address"):
        Transport("a", "0.0.0.0:0", cluster, on_message=Inbox(), node_certificate=node)
