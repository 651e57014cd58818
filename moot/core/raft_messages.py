"""Raft RPCs and the records they carry, as msgspec Structs.

Rules (as ``wire.py``): frozen, tagged, every string and list capped. The tag
values live in ``RAFT_TAGS`` below (40..59), append only; the lead adds them
to the wire union in ``wire.py``.

Every message names its ``source`` and ``target`` node ids and the sender's
``term``: a Raft core routes and ages messages by those alone (etcd's
``raftpb.Message`` does the same with From/To/Term).
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

NODE_ID_CHARS_MAX: Final = 64  # same cap as wire.NODE_ID_CHARS_MAX
ENTRIES_PER_MESSAGE_MAX: Final = 4_096  # hard cap; the config's soft cap is far lower
ENTRY_BYTES_MAX: Final = 8 * 1024 * 1024  # one proposal; below wire.FRAME_BYTES_MAX
SNAPSHOT_BYTES_MAX: Final = 2**31 - 1  # a whole snapshot, kept in memory and on disk
SNAPSHOT_CHUNK_BYTES_MAX: Final = 8 * 1024 * 1024  # one InstallSnapshot frame (16 MiB cap) with headroom
MEMBERS_MAX: Final = 1_024  # voters + learners of one Raft group

NodeId = Annotated[str, msgspec.Meta(min_length=1, max_length=NODE_ID_CHARS_MAX)]
Term = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Index = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
EntryKind = Literal["normal", "conf_change"]
ConfChangeKind = Literal["add_learner", "promote", "remove"]


class RAFT_TAGS:
    """Tag values of Raft messages, append only. Never renumber or reuse."""

    VOTE_REQUEST: Final = 40
    VOTE_RESPONSE: Final = 41
    APPEND_ENTRIES: Final = 42
    APPEND_RESPONSE: Final = 43
    HEARTBEAT: Final = 44
    HEARTBEAT_RESPONSE: Final = 45
    INSTALL_SNAPSHOT: Final = 46
    TIMEOUT_NOW: Final = 47
    SNAPSHOT_ACK: Final = 48


class Entry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One log entry. ``conf_change`` entries carry an encoded ``ConfChange``;
    a ``normal`` entry with empty data is a leader's no-op."""

    term: Term
    index: Index
    kind: EntryKind = "normal"
    data: Annotated[bytes, msgspec.Meta(max_length=ENTRY_BYTES_MAX)] = b""


class ConfChange(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One single-server membership change (Raft dissertation, section 4.1)."""

    kind: ConfChangeKind
    node_id: NodeId


class ConfState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The voters and learners of the group, sorted."""

    voters: Annotated[tuple[NodeId, ...], msgspec.Meta(max_length=MEMBERS_MAX)]
    learners: Annotated[tuple[NodeId, ...], msgspec.Meta(max_length=MEMBERS_MAX)] = ()


class SnapshotMeta(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a snapshot covers: everything through ``index`` (of ``term``)."""

    index: Index
    term: Term
    conf: ConfState


class Snapshot(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An application state image plus the log position it stands for."""

    meta: SnapshotMeta
    data: Annotated[bytes, msgspec.Meta(max_length=SNAPSHOT_BYTES_MAX)] = b""


class HardState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What must survive a crash besides the log: term, vote, commit index."""

    term: Term = 0
    vote: Annotated[str, msgspec.Meta(max_length=NODE_ID_CHARS_MAX)] = ""
    commit: Index = 0


class VoteRequest(msgspec.Struct, frozen=True, tag=RAFT_TAGS.VOTE_REQUEST, forbid_unknown_fields=True):
    """RequestVote. ``pre_vote``: a PreVote probe (term is the one the sender
    would campaign in; nobody changes term for it). ``transfer``: sent after
    TimeoutNow, so receivers ignore their leader lease."""

    term: Term
    source: NodeId
    target: NodeId
    last_log_index: Index
    last_log_term: Term
    pre_vote: bool = False
    transfer: bool = False


class VoteResponse(msgspec.Struct, frozen=True, tag=RAFT_TAGS.VOTE_RESPONSE, forbid_unknown_fields=True):
    """Answer to a (pre-)vote request."""

    term: Term
    source: NodeId
    target: NodeId
    granted: bool
    pre_vote: bool = False


class AppendEntries(msgspec.Struct, frozen=True, tag=RAFT_TAGS.APPEND_ENTRIES, forbid_unknown_fields=True):
    """AppendEntries: ``entries`` follow (prev_index, prev_term)."""

    term: Term
    source: NodeId
    target: NodeId
    prev_index: Index
    prev_term: Term
    commit: Index
    entries: Annotated[tuple[Entry, ...], msgspec.Meta(max_length=ENTRIES_PER_MESSAGE_MAX)] = ()


class AppendResponse(msgspec.Struct, frozen=True, tag=RAFT_TAGS.APPEND_RESPONSE, forbid_unknown_fields=True):
    """Answer to AppendEntries or InstallSnapshot.

    Accepted: ``index`` is the follower's last index known to match the
    leader. Rejected: ``index`` is the rejected prev_index, and
    (``hint_index``, ``hint_term``) the follower's best guess at a matching
    position (etcd's fast backtracking, Raft paper section 5.3)."""

    term: Term
    source: NodeId
    target: NodeId
    index: Index
    reject: bool = False
    hint_index: Index = 0
    hint_term: Term = 0


class Heartbeat(msgspec.Struct, frozen=True, tag=RAFT_TAGS.HEARTBEAT, forbid_unknown_fields=True):
    """Leader liveness. ``commit`` is capped at the follower's match index;
    ``context`` numbers the heartbeat round (ReadIndex and the lease)."""

    term: Term
    source: NodeId
    target: NodeId
    commit: Index
    context: Index = 0


class HeartbeatResponse(
    msgspec.Struct, frozen=True, tag=RAFT_TAGS.HEARTBEAT_RESPONSE, forbid_unknown_fields=True
):
    """Echoes the heartbeat's ``context``."""

    term: Term
    source: NodeId
    target: NodeId
    context: Index = 0


class InstallSnapshot(
    msgspec.Struct, frozen=True, tag=RAFT_TAGS.INSTALL_SNAPSHOT, forbid_unknown_fields=True
):
    """The leader no longer has the entries a follower needs: take this
    snapshot, sent in chunks (Raft paper, figure 13): ``chunk`` is
    ``data[offset:offset + len(chunk)]`` of a snapshot ``total_bytes`` long.
    The follower installs it when the last byte arrives."""

    term: Term
    source: NodeId
    target: NodeId
    meta: SnapshotMeta
    total_bytes: Annotated[int, msgspec.Meta(ge=0, le=SNAPSHOT_BYTES_MAX)]
    offset: Annotated[int, msgspec.Meta(ge=0, le=SNAPSHOT_BYTES_MAX)] = 0
    chunk: Annotated[bytes, msgspec.Meta(max_length=SNAPSHOT_CHUNK_BYTES_MAX)] = b""


class SnapshotAck(msgspec.Struct, frozen=True, tag=RAFT_TAGS.SNAPSHOT_ACK, forbid_unknown_fields=True):
    """A follower has the first ``received_bytes`` of the snapshot at
    ``snapshot_index`` (flow control). ``gap``: a chunk arrived out of order;
    resend from ``received_bytes``. The installed snapshot is acknowledged by
    an ``AppendResponse``."""

    term: Term
    source: NodeId
    target: NodeId
    snapshot_index: Index
    received_bytes: Annotated[int, msgspec.Meta(ge=0, le=SNAPSHOT_BYTES_MAX)]
    gap: bool = False


class TimeoutNow(msgspec.Struct, frozen=True, tag=RAFT_TAGS.TIMEOUT_NOW, forbid_unknown_fields=True):
    """Leadership transfer: campaign now, ignoring the leader lease."""

    term: Term
    source: NodeId
    target: NodeId


RaftMessage = (
    VoteRequest
    | VoteResponse
    | AppendEntries
    | AppendResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | TimeoutNow
    | SnapshotAck
)
RAFT_MESSAGE_TYPES: Final = (
    VoteRequest,
    VoteResponse,
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    TimeoutNow,
    SnapshotAck,
)

_conf_encoder: Final = msgspec.msgpack.Encoder()
_conf_decoder: Final[msgspec.msgpack.Decoder[ConfChange]] = msgspec.msgpack.Decoder(ConfChange)


def encode_conf_change(change: ConfChange) -> bytes:
    """The bytes of a ``conf_change`` entry."""
    return _conf_encoder.encode(change)


def decode_conf_change(data: bytes) -> ConfChange:
    """Inverse of ``encode_conf_change`` (entries are ours: a failure is a bug)."""
    return _conf_decoder.decode(data)
