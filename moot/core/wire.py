"""The wire format: every message two moot processes exchange.

Rules (memberlist's and h11's, made explicit):

- A message is a frozen ``msgspec.Struct`` with an integer ``tag``. Tag values
  are part of the protocol: **append only, never renumber, never reuse**. The
  table ``TAGS`` below is the single place they are assigned.
- A frame on a stream is a 4-byte big-endian length followed by that many
  bytes of MessagePack. ``FRAME_BYTES_MAX`` is a hard cap checked *before*
  the body is read, so a peer cannot make us buffer more.
- Every string, list and map has a size cap (``msgspec.Meta``) so that a
  decoded message is bounded no matter what the peer sent; a message that
  breaks a cap fails to decode and the connection is closed.
- The first frame on every stream, each way, is ``Hello``. Versions are
  negotiated as memberlist does: each side sends ``[protocol_min,
  protocol_max]`` and the highest version both speak is used; no overlap
  closes the stream with ``Goodbye``.

This module has no I/O: ``encode`` and ``decode`` turn messages into bytes
and back, and ``decode`` raises ``RemoteProtocolError`` for anything a peer
could have sent wrong.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from moot.core import raft_messages, tasks
from moot.core.kv import KEY_BYTES_MAX, Event
from moot.core.kv_server import ClientReply, ClientRequest
from moot.core.objects import CHUNK_BYTES_MAX, ChunkId
from moot.core.raft_messages import (
    MEMBERS_MAX,
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    SnapshotAck,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)

# Protocol versions this build speaks. Raise max when a message changes
# meaning; raise min only when support for an old version is dropped.
PROTOCOL_VERSION_MIN: Final = 2  # 2: frames carry the sender's hybrid logical clock
PROTOCOL_VERSION_MAX: Final = 2

# Hard cap on one frame. Large data (object chunks) is sent as a sequence of
# frames below this; 16 MiB matches etcd's default request cap order
# (--max-request-bytes 1.5 MiB is etcd's; we carry 4 MiB chunks, so 4x that).
FRAME_BYTES_MAX: Final = 16 * 1024 * 1024
# A frame: the body's length (4 bytes), the sender's hybrid logical clock
# when it sent it (8 bytes, ``moot.core.hlc``; 0 from a sender without one),
# both big-endian, then the body.
FRAME_LENGTH_BYTES: Final = 4
FRAME_HEADER_BYTES: Final = FRAME_LENGTH_BYTES + 8

# Field caps. Node ids are short random hex strings; addresses are
# HOST:PORT; labels are small operator-chosen strings (k8s caps label values
# at 63 characters, we allow a little more).
NODE_ID_CHARS_MAX: Final = 64
ADDRESS_CHARS_MAX: Final = 261  # 255 host + ':' + 5 port digits
LABEL_CHARS_MAX: Final = 128
LABELS_COUNT_MAX: Final = 32
GOSSIP_COUNT_MAX: Final = 256
MEMBERS_COUNT_MAX: Final = 100_000
TOKEN_CHARS_MAX: Final = 256
REASON_CHARS_MAX: Final = 1024
COORDINATE_DIMENSIONS_MAX: Final = 16
WATCH_EVENTS_PER_MESSAGE_MAX: Final = 1_024
CHUNK_IDS_PER_MESSAGE_MAX: Final = 65_536
LOCAL_FDS_PER_REPLY_MAX: Final = 64  # file descriptors in one same-host reply (Linux allows 253)
LOCAL_SOCKET_BYTES_MAX: Final = 107  # sun_path
MANIFEST_BYTES_MAX: Final = 15 * 1024 * 1024  # a manifest travels in one frame

NodeId = Annotated[str, msgspec.Meta(min_length=1, max_length=NODE_ID_CHARS_MAX)]
Address = Annotated[str, msgspec.Meta(min_length=3, max_length=ADDRESS_CHARS_MAX)]
LabelText = Annotated[str, msgspec.Meta(max_length=LABEL_CHARS_MAX)]
Labels = Annotated[dict[LabelText, LabelText], msgspec.Meta(max_length=LABELS_COUNT_MAX)]
Incarnation = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Sequence = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
FiniteFloat = Annotated[float, msgspec.Meta(ge=-1e12, le=1e12)]


class TAGS:
    """Tag values, append only. A gap is a retired tag: never reuse it."""

    HELLO: Final = 1
    GOODBYE: Final = 2
    PING: Final = 10
    INDIRECT_PING: Final = 11
    ACK: Final = 12
    NACK: Final = 13
    PUSH_PULL: Final = 14
    GOSSIP: Final = 15
    ALIVE: Final = 20
    SUSPECT: Final = 21
    DEAD: Final = 22
    COORDINATE_UPDATE: Final = 23
    MEMBERS_REQUEST: Final = 30
    MEMBERS_REPLY: Final = 31
    ERROR_REPLY: Final = 32
    # 40..59: Raft messages, assigned in raft_messages.RAFT_TAGS.
    KV_CALL: Final = 60
    KV_ANSWER: Final = 61
    WATCH_REQUEST: Final = 62
    WATCH_ACCEPTED: Final = 63
    WATCH_EVENTS: Final = 64
    WATCH_CANCEL: Final = 65
    STATUS_REQUEST: Final = 66
    STATUS_REPLY: Final = 67
    CHUNK_UPLOAD: Final = 70
    CHUNK_UPLOADED: Final = 71
    OBJECT_COMMIT: Final = 72
    OBJECT_COMMITTED: Final = 73
    OBJECT_STAT: Final = 74
    OBJECT_INFO: Final = 75
    CHUNK_FETCH: Final = 76
    CHUNK_DATA: Final = 77
    CHUNK_STORE: Final = 78
    CHUNK_STORE_REPLY: Final = 79
    CHUNK_GET: Final = 80
    CHUNK_HAS: Final = 81
    CHUNK_HAS_REPLY: Final = 82
    CHUNK_BAD: Final = 83
    LOCAL_ACCESS: Final = 84
    LOCAL_ACCESS_GRANT: Final = 85
    LOCAL_OPEN: Final = 86
    LOCAL_OPENED: Final = 87
    RUN_TASKS: Final = 90
    TASKS_DONE: Final = 91
    WORKER_REPORT: Final = 92
    STOP_TASKS: Final = 93
    JOB_WATCH: Final = 94
    JOB_EVENTS: Final = 95
    JOB_UNWATCH: Final = 96
    JOB_QUERY: Final = 97
    JOB_INFO: Final = 98
    EVENTS_QUERY: Final = 100
    EVENTS_REPLY: Final = 101


class LocalProtocolError(Exception):
    """We tried to send something the protocol does not allow (our bug)."""


class RemoteProtocolError(Exception):
    """The peer sent something the protocol does not allow (its fault)."""


class Coordinate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A Vivaldi network coordinate (Dabek et al. 2004, with Serf's height).

    ``vec`` is the Euclidean part in milliseconds, ``height`` models the
    access-link latency every path from this node pays, ``adjustment`` is
    Serf's per-node offset, ``error`` the node's confidence (lower is better).
    """

    vec: Annotated[tuple[FiniteFloat, ...], msgspec.Meta(max_length=COORDINATE_DIMENSIONS_MAX)]
    error: FiniteFloat
    adjustment: FiniteFloat
    height: FiniteFloat


# -- stream handshake -------------------------------------------------------


class Hello(msgspec.Struct, frozen=True, tag=TAGS.HELLO, forbid_unknown_fields=True):
    """First frame each way on every stream.

    ``role`` is ``node`` for a federation member (its TLS certificate must
    name ``node_id``) or ``client`` for an API client (it must also carry the
    cluster's client ``token``).
    """

    protocol_min: Annotated[int, msgspec.Meta(ge=0, le=65535)]
    protocol_max: Annotated[int, msgspec.Meta(ge=0, le=65535)]
    role: Literal["node", "client"]
    node_id: NodeId
    address: Annotated[str, msgspec.Meta(max_length=ADDRESS_CHARS_MAX)] = ""
    token: Annotated[str, msgspec.Meta(max_length=TOKEN_CHARS_MAX)] = ""


class Goodbye(msgspec.Struct, frozen=True, tag=TAGS.GOODBYE, forbid_unknown_fields=True):
    """Sent before closing a stream on purpose, with the reason."""

    reason: Annotated[str, msgspec.Meta(max_length=REASON_CHARS_MAX)]


# -- membership: gossip items (piggybacked on probes) -------------------------


class Alive(msgspec.Struct, frozen=True, tag=TAGS.ALIVE, forbid_unknown_fields=True):
    """``node_id`` is alive at ``incarnation``, reachable at ``address``."""

    node_id: NodeId
    incarnation: Incarnation
    address: Address
    labels: Labels = {}
    cpus: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0


class Suspect(msgspec.Struct, frozen=True, tag=TAGS.SUSPECT, forbid_unknown_fields=True):
    """``from_id`` suspects ``node_id`` at ``incarnation``."""

    node_id: NodeId
    incarnation: Incarnation
    from_id: NodeId


class Dead(msgspec.Struct, frozen=True, tag=TAGS.DEAD, forbid_unknown_fields=True):
    """``node_id`` is dead at ``incarnation``; ``from_id == node_id`` means it left."""

    node_id: NodeId
    incarnation: Incarnation
    from_id: NodeId


class CoordinateUpdate(
    msgspec.Struct, frozen=True, tag=TAGS.COORDINATE_UPDATE, forbid_unknown_fields=True
):
    """``node_id``'s current Vivaldi coordinate, spread by gossip."""

    node_id: NodeId
    coordinate: Coordinate


GossipItem = Alive | Suspect | Dead | CoordinateUpdate
GossipItems = Annotated[tuple[GossipItem, ...], msgspec.Meta(max_length=GOSSIP_COUNT_MAX)]


# -- membership: probes and state exchange -------------------------------------


class Ping(msgspec.Struct, frozen=True, tag=TAGS.PING, forbid_unknown_fields=True):
    """SWIM direct probe. The target answers ``Ack`` with the same ``seq``."""

    seq: Sequence
    target_id: NodeId
    source_id: NodeId
    source_address: Address
    coordinate: Coordinate | None = None
    gossip: GossipItems = ()


class IndirectPing(msgspec.Struct, frozen=True, tag=TAGS.INDIRECT_PING, forbid_unknown_fields=True):
    """Ask the receiver to probe ``target`` for ``source`` (SWIM ping-req).

    With ``want_nack`` the helper answers ``Nack`` if the target stays silent,
    so the source can tell its own slowness from the target's (Lifeguard).
    """

    seq: Sequence
    target_id: NodeId
    target_address: Address
    source_id: NodeId
    source_address: Address
    want_nack: bool = True
    gossip: GossipItems = ()


class Ack(msgspec.Struct, frozen=True, tag=TAGS.ACK, forbid_unknown_fields=True):
    """Answer to ``Ping`` (or forwarded answer to ``IndirectPing``)."""

    seq: Sequence
    source_id: NodeId
    coordinate: Coordinate | None = None
    gossip: GossipItems = ()


class Nack(msgspec.Struct, frozen=True, tag=TAGS.NACK, forbid_unknown_fields=True):
    """An indirect-probe helper heard nothing from the target in time."""

    seq: Sequence
    source_id: NodeId


class MemberState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One member as carried by push-pull: the full gossip state of a node."""

    node_id: NodeId
    address: Address
    incarnation: Incarnation
    state: Literal["alive", "suspect", "dead", "left"]
    labels: Labels = {}
    cpus: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    coordinate: Coordinate | None = None


class PushPull(msgspec.Struct, frozen=True, tag=TAGS.PUSH_PULL, forbid_unknown_fields=True):
    """Full state exchange (anti-entropy): on join and periodically."""

    source_id: NodeId
    source_address: Address
    join: bool
    reply_wanted: bool
    states: Annotated[tuple[MemberState, ...], msgspec.Meta(max_length=MEMBERS_COUNT_MAX)]


class Gossip(msgspec.Struct, frozen=True, tag=TAGS.GOSSIP, forbid_unknown_fields=True):
    """Gossip items sent on their own, on the gossip interval."""

    source_id: NodeId
    gossip: GossipItems


# -- client requests -------------------------------------------------------------


class MembersRequest(msgspec.Struct, frozen=True, tag=TAGS.MEMBERS_REQUEST, forbid_unknown_fields=True):
    """A client asks a node for its view of the membership."""

    request_id: Sequence


class MemberInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One member as a client sees it."""

    node_id: NodeId
    address: Address
    state: Literal["alive", "suspect", "dead", "left"]
    incarnation: Incarnation
    labels: Labels
    cpus: int
    rtt_ms: float | None
    coordinate: Coordinate | None


class MembersReply(msgspec.Struct, frozen=True, tag=TAGS.MEMBERS_REPLY, forbid_unknown_fields=True):
    """The answering node's view of the membership."""

    request_id: Sequence
    node_id: NodeId
    members: Annotated[tuple[MemberInfo, ...], msgspec.Meta(max_length=MEMBERS_COUNT_MAX)]


def reason(text: str) -> str:
    """``text`` cut to fit a reason field (a longer one would be refused by
    the receiver's decoder and cost the connection)."""
    if len(text) <= REASON_CHARS_MAX:
        return text
    return text[: REASON_CHARS_MAX - 1] + "…"


class ErrorReply(msgspec.Struct, frozen=True, tag=TAGS.ERROR_REPLY, forbid_unknown_fields=True):
    """A request failed; ``kind`` names the typed client error to raise."""

    request_id: Sequence
    kind: Annotated[str, msgspec.Meta(max_length=64)]
    message: Annotated[str, msgspec.Meta(max_length=REASON_CHARS_MAX)]


class KvCall(msgspec.Struct, frozen=True, tag=TAGS.KV_CALL, forbid_unknown_fields=True):
    """A client's key-value request to a node."""

    request_id: Sequence
    request: ClientRequest


class KvAnswer(msgspec.Struct, frozen=True, tag=TAGS.KV_ANSWER, forbid_unknown_fields=True):
    """The node's answer; on ``not_leader`` errors ``leader_address`` says where to go."""

    request_id: Sequence
    reply: ClientReply
    leader_address: Annotated[str, msgspec.Meta(max_length=ADDRESS_CHARS_MAX)] | None = None


class WatchRequest(msgspec.Struct, frozen=True, tag=TAGS.WATCH_REQUEST, forbid_unknown_fields=True):
    """Stream the events of keys under ``prefix`` from ``start_revision`` on
    (0: from the next change). Events arrive as ``WatchEvents`` with ``watch_id``."""

    request_id: Sequence
    watch_id: Sequence
    prefix: Annotated[bytes, msgspec.Meta(max_length=KEY_BYTES_MAX)] = b""
    start_revision: Sequence = 0


class WatchAccepted(msgspec.Struct, frozen=True, tag=TAGS.WATCH_ACCEPTED, forbid_unknown_fields=True):
    """The watch runs; ``revision`` is the node's store revision at that moment."""

    request_id: Sequence
    watch_id: Sequence
    revision: Sequence


class WatchEvents(msgspec.Struct, frozen=True, tag=TAGS.WATCH_EVENTS, forbid_unknown_fields=True):
    """Events of one watch, in revision order. ``error`` ends the watch (e.g.
    the start revision was compacted away)."""

    watch_id: Sequence
    events: Annotated[tuple[Event, ...], msgspec.Meta(max_length=WATCH_EVENTS_PER_MESSAGE_MAX)] = ()
    error: Annotated[str, msgspec.Meta(max_length=REASON_CHARS_MAX)] = ""
    compacted_revision: Sequence = 0


class WatchCancel(msgspec.Struct, frozen=True, tag=TAGS.WATCH_CANCEL, forbid_unknown_fields=True):
    """Stop a watch (no reply)."""

    watch_id: Sequence


class StatusRequest(msgspec.Struct, frozen=True, tag=TAGS.STATUS_REQUEST, forbid_unknown_fields=True):
    """Ask a node for its Raft and store status."""

    request_id: Sequence


class StatusReply(msgspec.Struct, frozen=True, tag=TAGS.STATUS_REPLY, forbid_unknown_fields=True):
    """One node's view of the Raft group (``moot status``)."""

    request_id: Sequence
    node_id: NodeId
    address: Address
    role: Annotated[str, msgspec.Meta(max_length=32)]
    term: Sequence
    leader_id: Annotated[str, msgspec.Meta(max_length=NODE_ID_CHARS_MAX)] | None
    voters: Annotated[tuple[NodeId, ...], msgspec.Meta(max_length=MEMBERS_MAX)]
    learners: Annotated[tuple[NodeId, ...], msgspec.Meta(max_length=MEMBERS_MAX)]
    commit_index: Sequence
    applied_index: Sequence
    last_index: Sequence
    snapshot_index: Sequence
    revision: Sequence
    keys: Sequence
    chunks: Sequence = 0
    chunk_bytes: Sequence = 0
    repairs: Sequence = 0
    scrubbed_bytes: Sequence = 0
    corrupt_found: Sequence = 0
    cache_hits: Sequence = 0
    objects_collected: Sequence = 0


ChunkBytes = Annotated[bytes, msgspec.Meta(max_length=CHUNK_BYTES_MAX)]
ChunkIds = Annotated[tuple[ChunkId, ...], msgspec.Meta(max_length=CHUNK_IDS_PER_MESSAGE_MAX)]
NodeIds = Annotated[tuple[NodeId, ...], msgspec.Meta(max_length=MEMBERS_MAX)]


class ChunkUpload(msgspec.Struct, frozen=True, tag=TAGS.CHUNK_UPLOAD, forbid_unknown_fields=True):
    """Client to node: store this chunk on its replicas."""

    request_id: Sequence
    chunk_id: ChunkId
    data: ChunkBytes


class ChunkUploaded(msgspec.Struct, frozen=True, tag=TAGS.CHUNK_UPLOADED, forbid_unknown_fields=True):
    """The chunk is durable on ``holders``."""

    request_id: Sequence
    chunk_id: ChunkId
    holders: NodeIds


class ObjectCommit(msgspec.Struct, frozen=True, tag=TAGS.OBJECT_COMMIT, forbid_unknown_fields=True):
    """Client to node: every chunk is uploaded; store the manifest."""

    request_id: Sequence
    manifest: Annotated[bytes, msgspec.Meta(max_length=MANIFEST_BYTES_MAX)]


class ObjectCommitted(msgspec.Struct, frozen=True, tag=TAGS.OBJECT_COMMITTED, forbid_unknown_fields=True):
    """The object is readable: its manifest and chunks are on their replicas."""

    request_id: Sequence
    object_id: ChunkId
    size: Sequence
    replicas: Sequence
    warning: Annotated[str, msgspec.Meta(max_length=REASON_CHARS_MAX)] = ""


class ObjectStat(msgspec.Struct, frozen=True, tag=TAGS.OBJECT_STAT, forbid_unknown_fields=True):
    """Client to node: the manifest of an object, and where it lives."""

    request_id: Sequence
    object_id: ChunkId
    locate: bool = False


class ObjectInfo(msgspec.Struct, frozen=True, tag=TAGS.OBJECT_INFO, forbid_unknown_fields=True):
    """``manifest`` (verified by the node; verify it again); ``holders``: the
    nodes that hold the manifest (all of them if ``locate`` was asked)."""

    request_id: Sequence
    object_id: ChunkId
    manifest: Annotated[bytes, msgspec.Meta(max_length=MANIFEST_BYTES_MAX)]
    holders: NodeIds = ()


class ChunkFetch(msgspec.Struct, frozen=True, tag=TAGS.CHUNK_FETCH, forbid_unknown_fields=True):
    """Client to node: send me this chunk (from you, your cache, or the nearest replica)."""

    request_id: Sequence
    chunk_id: ChunkId


class ChunkData(msgspec.Struct, frozen=True, tag=TAGS.CHUNK_DATA, forbid_unknown_fields=True):
    """A chunk's bytes (``found`` False: not here)."""

    request_id: Sequence
    chunk_id: ChunkId
    data: ChunkBytes = b""
    found: bool = True


class ChunkStore(msgspec.Struct, frozen=True, tag=TAGS.CHUNK_STORE, forbid_unknown_fields=True):
    """Node to node: keep this chunk durably."""

    request_id: Sequence
    chunk_id: ChunkId
    data: ChunkBytes


class ChunkStoreReply(msgspec.Struct, frozen=True, tag=TAGS.CHUNK_STORE_REPLY, forbid_unknown_fields=True):
    """Whether the chunk is durable here (``error`` says why not, e.g. disk full)."""

    request_id: Sequence
    chunk_id: ChunkId
    ok: bool
    error: Annotated[str, msgspec.Meta(max_length=REASON_CHARS_MAX)] = ""


class ChunkGet(msgspec.Struct, frozen=True, tag=TAGS.CHUNK_GET, forbid_unknown_fields=True):
    """Node to node: send me this chunk if you hold it (answered by ChunkData)."""

    request_id: Sequence
    chunk_id: ChunkId


class ChunkHas(msgspec.Struct, frozen=True, tag=TAGS.CHUNK_HAS, forbid_unknown_fields=True):
    """Node to node: which of these chunks do you hold?"""

    request_id: Sequence
    chunk_ids: ChunkIds


class ChunkHasReply(msgspec.Struct, frozen=True, tag=TAGS.CHUNK_HAS_REPLY, forbid_unknown_fields=True):
    """The asked chunks split into held and not held."""

    request_id: Sequence
    present: ChunkIds = ()
    absent: ChunkIds = ()


class ChunkBad(msgspec.Struct, frozen=True, tag=TAGS.CHUNK_BAD, forbid_unknown_fields=True):
    """Node to node: the bytes you served for this chunk did not match its id."""

    chunk_id: ChunkId


class LocalAccess(msgspec.Struct, frozen=True, tag=TAGS.LOCAL_ACCESS, forbid_unknown_fields=True):
    """Client to node (over TLS): how can a client on your machine open your chunks?"""

    request_id: Sequence


class LocalAccessGrant(msgspec.Struct, frozen=True, tag=TAGS.LOCAL_ACCESS_GRANT, forbid_unknown_fields=True):
    """The node's same-host chunk socket (a Linux abstract Unix socket name,
    hex-encoded) and the token that opens it; ``socket`` empty: none."""

    request_id: Sequence
    socket: Annotated[str, msgspec.Meta(max_length=2 * LOCAL_SOCKET_BYTES_MAX)] = ""
    token: Annotated[str, msgspec.Meta(max_length=TOKEN_CHARS_MAX)] = ""


class LocalOpen(msgspec.Struct, frozen=True, tag=TAGS.LOCAL_OPEN, forbid_unknown_fields=True):
    """Client to node (over the same-host socket): open these chunk files for me."""

    token: Annotated[str, msgspec.Meta(max_length=TOKEN_CHARS_MAX)]
    chunk_ids: Annotated[tuple[ChunkId, ...], msgspec.Meta(max_length=LOCAL_FDS_PER_REPLY_MAX)]


class LocalOpened(msgspec.Struct, frozen=True, tag=TAGS.LOCAL_OPENED, forbid_unknown_fields=True):
    """Which of the asked chunks are here; the open file descriptors of those
    travel with this message (SCM_RIGHTS), in the same order. ``error``: refused."""

    present: Annotated[tuple[bool, ...], msgspec.Meta(max_length=LOCAL_FDS_PER_REPLY_MAX)] = ()
    error: Annotated[str, msgspec.Meta(max_length=REASON_CHARS_MAX)] = ""


# -- durable tasks -----------------------------------------------------------------------

TASKS_PER_MESSAGE_MAX: Final = tasks.TASKS_PER_COMMAND_MAX
JobIdText = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{32}$")]
TaskIndex = Annotated[int, msgspec.Meta(ge=0, lt=tasks.TASKS_PER_JOB_MAX)]


class RunTask(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """One run the leader's scheduler placed: the job's function (by hash),
    the task's arguments, its time limit (0: none)."""

    job_id: JobIdText
    index: TaskIndex
    attempt: Sequence
    function_hash: ChunkId
    args: tasks.Payload
    timeout_ms: Sequence = 0


class FunctionBlob(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    function_hash: ChunkId
    function: tasks.Payload


class RunTasks(msgspec.Struct, frozen=True, tag=TAGS.RUN_TASKS, forbid_unknown_fields=True):
    """Leader to worker node: run these. ``functions``: the ones this node
    may not have yet (it keeps what it got; else it reads its own table)."""

    term: Sequence
    runs: Annotated[tuple[RunTask, ...], msgspec.Meta(max_length=TASKS_PER_MESSAGE_MAX)]
    functions: Annotated[tuple[FunctionBlob, ...], msgspec.Meta(max_length=TASKS_PER_MESSAGE_MAX)] = ()


class TasksDone(msgspec.Struct, frozen=True, tag=TAGS.TASKS_DONE, forbid_unknown_fields=True):
    """Worker node to leader: outcomes of runs (sent again until committed)."""

    finishes: Annotated[tuple[tasks.Finish, ...], msgspec.Meta(max_length=TASKS_PER_MESSAGE_MAX)]


class RunRef(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    job_id: JobIdText
    index: TaskIndex
    attempt: Sequence


class WorkerReport(msgspec.Struct, frozen=True, tag=TAGS.WORKER_REPORT, forbid_unknown_fields=True):
    """Worker node to leader, periodically: every run it has (running,
    queued, or finished and not yet committed)."""

    runs: Annotated[tuple[RunRef, ...], msgspec.Meta(max_length=TASKS_PER_MESSAGE_MAX * 10)]


class StopTasks(msgspec.Struct, frozen=True, tag=TAGS.STOP_TASKS, forbid_unknown_fields=True):
    """Leader to worker node: these runs' job was cancelled: kill them."""

    runs: Annotated[tuple[RunRef, ...], msgspec.Meta(max_length=TASKS_PER_MESSAGE_MAX * 10)]


class JobWatch(msgspec.Struct, frozen=True, tag=TAGS.JOB_WATCH, forbid_unknown_fields=True):
    """Client to any node: send me the job's finished tasks after ``since_seq``,
    now and as they commit (answered by ``JobEvents`` with this request id)."""

    request_id: Sequence
    job_id: JobIdText
    since_seq: Sequence = 0


class JobUnwatch(msgspec.Struct, frozen=True, tag=TAGS.JOB_UNWATCH, forbid_unknown_fields=True):
    job_id: JobIdText


class TaskResult(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """A finished task as clients see it (``state``: done, failed or cancelled)."""

    index: TaskIndex
    seq: Sequence
    state: Annotated[str, msgspec.Meta(max_length=16)]
    kind: Annotated[str, msgspec.Meta(max_length=16)] = ""
    value: tasks.Payload = tasks.Payload()
    error_type: Annotated[str, msgspec.Meta(max_length=tasks.NAME_CHARS_MAX)] = ""
    error_message: Annotated[str, msgspec.Meta(max_length=tasks.ERROR_TEXT_CHARS_MAX)] = ""
    traceback: Annotated[str, msgspec.Meta(max_length=tasks.ERROR_TEXT_CHARS_MAX)] = ""
    node: Annotated[str, msgspec.Meta(max_length=NODE_ID_CHARS_MAX)] = ""


class JobEvents(msgspec.Struct, frozen=True, tag=TAGS.JOB_EVENTS, forbid_unknown_fields=True):
    """Node to client: finished tasks of a watched job, in seq order.
    ``state``: the job's (``unknown`` if this node has no such job, e.g.
    forgotten, or submitted and not yet applied here)."""

    request_id: Sequence
    job_id: JobIdText
    state: Annotated[str, msgspec.Meta(max_length=16)]
    total: Sequence = 0
    results: Annotated[tuple[TaskResult, ...], msgspec.Meta(max_length=TASKS_PER_MESSAGE_MAX)] = ()


class JobQuery(msgspec.Struct, frozen=True, tag=TAGS.JOB_QUERY, forbid_unknown_fields=True):
    """Client to any node: the job's summary, or every kept job's (``job_id`` empty)."""

    request_id: Sequence
    job_id: Annotated[str, msgspec.Meta(pattern="^([0-9a-f]{32})?$")] = ""


class JobSummary(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    job_id: JobIdText
    name: Annotated[str, msgspec.Meta(max_length=tasks.NAME_CHARS_MAX)]
    state: Annotated[str, msgspec.Meta(max_length=16)]
    total: Sequence
    done: Sequence
    failed: Sequence
    cancelled: Sequence
    running: Sequence
    pending: Sequence
    commits: Sequence
    duplicates: Sequence
    submitted_ms: Sequence
    finished_ms: Sequence
    owner: Annotated[str, msgspec.Meta(max_length=tasks.NAME_CHARS_MAX)] = ""
    blocked: Annotated[str, msgspec.Meta(max_length=REASON_CHARS_MAX)] = ""
    reruns: Sequence = 0  # runs beyond each task's first (a node died, a retry, a worker crash)


class JobInfo(msgspec.Struct, frozen=True, tag=TAGS.JOB_INFO, forbid_unknown_fields=True):
    request_id: Sequence
    jobs: Annotated[tuple[JobSummary, ...], msgspec.Meta(max_length=tasks.JOBS_FINISHED_MAX_DEFAULT * 10)] = ()


EVENTS_PER_QUERY_MAX: Final = 10_000
EVENTS_BYTES_MAX: Final = 8 * 1024 * 1024


class EventsQuery(msgspec.Struct, frozen=True, tag=TAGS.EVENTS_QUERY, forbid_unknown_fields=True):
    """The timeline events (``moot.runtime.events``) stamped after ``after``
    (a hybrid timestamp): this node's, or with ``federation`` every live
    member's, merged in hybrid-clock order; the newest ``limit``."""

    request_id: Sequence
    after: Sequence = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=EVENTS_PER_QUERY_MAX)] = 1_000
    federation: bool = False


class EventsReply(msgspec.Struct, frozen=True, tag=TAGS.EVENTS_REPLY, forbid_unknown_fields=True):
    """Events as a JSON array of objects (their fields differ by event);
    ``missing``: members that did not answer in time."""

    request_id: Sequence
    node_id: NodeId
    events: Annotated[bytes, msgspec.Meta(max_length=EVENTS_BYTES_MAX)] = b"[]"
    missing: NodeIds = ()


ObjectRequestTypes: Final = (ChunkUpload, ObjectCommit, ObjectStat, ChunkFetch, LocalAccess)
ObjectPeerTypes: Final = (ChunkStore, ChunkGet, ChunkHas, ChunkBad)
ObjectReplyTypes: Final = (ChunkStoreReply, ChunkData, ChunkHasReply)

MembershipMessage = Ping | IndirectPing | Ack | Nack | PushPull | Gossip
Message = (
    Hello
    | Goodbye
    | Ping
    | IndirectPing
    | Ack
    | Nack
    | PushPull
    | Gossip
    | MembersRequest
    | MembersReply
    | ErrorReply
    | VoteRequest
    | VoteResponse
    | AppendEntries
    | AppendResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | TimeoutNow
    | SnapshotAck
    | KvCall
    | KvAnswer
    | WatchRequest
    | WatchAccepted
    | WatchEvents
    | WatchCancel
    | StatusRequest
    | StatusReply
    | ChunkUpload
    | ChunkUploaded
    | ObjectCommit
    | ObjectCommitted
    | ObjectStat
    | ObjectInfo
    | ChunkFetch
    | ChunkData
    | ChunkStore
    | ChunkStoreReply
    | ChunkGet
    | ChunkHas
    | ChunkHasReply
    | ChunkBad
    | LocalAccess
    | LocalAccessGrant
    | LocalOpen
    | LocalOpened
    | RunTasks
    | TasksDone
    | WorkerReport
    | StopTasks
    | JobWatch
    | JobEvents
    | JobUnwatch
    | JobQuery
    | JobInfo
    | EventsQuery
    | EventsReply
)
TASK_PEER_TYPES: Final = (RunTasks, TasksDone, WorkerReport, StopTasks)
TASK_CLIENT_TYPES: Final = (JobWatch, JobUnwatch, JobQuery)
MEMBERSHIP_MESSAGE_TYPES: Final = (Ping, IndirectPing, Ack, Nack, PushPull, Gossip)
RAFT_MESSAGE_TYPES: Final = raft_messages.RAFT_MESSAGE_TYPES

_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final[msgspec.msgpack.Decoder[Message]] = msgspec.msgpack.Decoder(Message)


def encode(message: Message) -> bytes:
    """Encode one message body (no frame header)."""
    body = _encoder.encode(message)
    if len(body) > FRAME_BYTES_MAX:
        raise LocalProtocolError(
            f"{type(message).__name__} encodes to {len(body)} bytes, over FRAME_BYTES_MAX={FRAME_BYTES_MAX}"
        )
    return body


def encode_frame(message: Message, timestamp: int = 0) -> bytes:
    """Encode one message with its header: length and the sender's hybrid
    timestamp (``moot.core.hlc``) when it sent it."""
    body = encode(message)
    return len(body).to_bytes(FRAME_LENGTH_BYTES, "big") + timestamp.to_bytes(8, "big") + body


def decode(body: bytes) -> Message:
    """Decode one message body; anything malformed raises RemoteProtocolError."""
    if len(body) > FRAME_BYTES_MAX:
        raise RemoteProtocolError(f"frame of {len(body)} bytes is over FRAME_BYTES_MAX={FRAME_BYTES_MAX}")
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError as error:  # ValidationError is a subclass
        raise RemoteProtocolError(f"malformed message: {error}") from error
    except UnicodeDecodeError as error:  # msgspec raises it for a map key that is not UTF-8
        raise RemoteProtocolError(f"malformed message: {error}") from error


def frame_header(header: bytes) -> tuple[int, int]:
    """Read a frame header: ``(body length, sender's hybrid timestamp)``; a
    length over the cap or a timestamp that is not one raises
    RemoteProtocolError."""
    assert len(header) == FRAME_HEADER_BYTES
    length = int.from_bytes(header[:FRAME_LENGTH_BYTES], "big")
    if length > FRAME_BYTES_MAX:
        raise RemoteProtocolError(f"frame header announces {length} bytes, over FRAME_BYTES_MAX={FRAME_BYTES_MAX}")
    timestamp = int.from_bytes(header[FRAME_LENGTH_BYTES:], "big")
    if timestamp >= 1 << 63:
        raise RemoteProtocolError(f"frame header carries {timestamp:#x}, not a hybrid timestamp")
    return length, timestamp


def negotiate_version(peer_min: int, peer_max: int) -> int:
    """The highest protocol version both sides speak; RemoteProtocolError if none."""
    version = min(PROTOCOL_VERSION_MAX, peer_max)
    if version < max(PROTOCOL_VERSION_MIN, peer_min):
        raise RemoteProtocolError(
            f"no common protocol version: we speak {PROTOCOL_VERSION_MIN}..{PROTOCOL_VERSION_MAX}, "
            f"peer speaks {peer_min}..{peer_max}"
        )
    return version
