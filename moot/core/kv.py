"""The replicated key-value state machine that sits on the Raft log (etcd-like).

Sans-IO and deterministic: no I/O, no clock, no randomness, no iteration over
sets. Two replicas that apply the same entries end byte-identical, down to
``snapshot()``. Rules:

- A committed normal entry carries ``encode_batch(Batch)``; ``b""`` is a
  leader no-op or an entry for another state machine (the caller maps those
  to ``b""``), and only advances ``applied_index``.
- Revisions follow etcd: the store ``revision`` starts at 0 and grows by one
  per change (a put, a delete of a key that exists, a cas that swaps). Each
  key keeps ``create_revision``, ``mod_revision`` and ``version`` (writes
  since it was created; a delete ends the key's life, a later put starts a
  new one at version 1).
- Every change appends one ``Event`` to the watch history, so the history
  holds exactly the revisions ``compacted_revision + 1 .. revision``. It is
  bounded by count and bytes; dropping the oldest event raises
  ``compacted_revision`` to that event's revision.
- Exactly-once writes through client sessions (Raft dissertation, 6.3):
  see ``KvState.apply``. Sessions are evicted least recently used first;
  the order is by the last index that used them, ties by client id.
- The limits (``sessions_max``, ``history_max``, ``history_bytes_max``) are
  part of the state machine's definition: every replica must use the same.

Client-facing limits are checked twice: by the server with ``validate_key``
and ``validate_value`` before anything is proposed (``BadCommand`` says what
to change), and by the msgpack decoder's caps when an entry is applied.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from typing import Annotated, Final, Literal

import msgspec

from moot.core import tasks
from moot.core.raft_messages import ENTRY_BYTES_MAX

# Size caps. etcd caps a request at 1.5 MiB and allows keys up to that size;
# 4 KiB keys are ample for paths and ids and keep the sorted key index cheap.
# Values stay at 1 MiB, under one Raft entry with room for a batch.
KEY_BYTES_MAX: Final = 4 * 1024
VALUE_BYTES_MAX: Final = 1024 * 1024
# One range or events call answers at most this many items (etcd leaves the
# limit unbounded; a bound keeps one reply well under a wire frame for small
# values, and the client pages on with the ``more`` flag).
RANGE_LIMIT_MAX: Final = 10_000
CLIENT_ID_CHARS_MAX: Final = 64  # same as a node id
# One batch is one Raft entry; same cap as the entries of one AppendEntries.
PROPOSALS_PER_BATCH_MAX: Final = 4_096
# Stored answers per client session: a client with more unacknowledged writes
# in flight than this loses the oldest answers (they then read as "expired").
RESULTS_PER_SESSION_MAX: Final = 1_024
# Bookkeeping charged per history event on top of key and value bytes, so that
# empty keys/values still count against history_bytes_max. A fixed number, not
# sys.getsizeof, so that every replica computes the same.
EVENT_OVERHEAD_BYTES: Final = 64
SNAPSHOT_FORMAT_VERSION: Final = 1

Key = Annotated[bytes, msgspec.Meta(min_length=1, max_length=KEY_BYTES_MAX)]
Value = Annotated[bytes, msgspec.Meta(max_length=VALUE_BYTES_MAX)]
ClientId = Annotated[str, msgspec.Meta(min_length=1, max_length=CLIENT_ID_CHARS_MAX)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class Compacted(Exception):
    """The watch history no longer holds events from the requested revision."""

    def __init__(self, compacted_revision: int, revision: int) -> None:
        """``compacted_revision``: events at or below it are gone; ``revision``: the current one."""
        self.compacted_revision = compacted_revision
        self.revision = revision
        super().__init__(
            f"events up to revision {compacted_revision} were compacted away; re-read the keys with "
            f"range() and watch from the current revision {revision} + 1"
        )


class BadCommand(ValueError):
    """A client asked for something the KV store does not accept (the client's fault)."""


# -- commands, as proposed through the Raft log ---------------------------------


class Put(msgspec.Struct, frozen=True, tag="put", forbid_unknown_fields=True):
    """Set ``key`` to ``value``, creating it if needed."""

    key: Key
    value: Value


class Delete(msgspec.Struct, frozen=True, tag="delete", forbid_unknown_fields=True):
    """Remove ``key``; succeeds only if it existed."""

    key: Key


class Cas(msgspec.Struct, frozen=True, tag="cas", forbid_unknown_fields=True):
    """Set ``key`` to ``value`` if its value is ``expected``; ``expected=None``
    means the key must not exist (create only)."""

    key: Key
    expected: Value | None
    value: Value


# Task commands (``moot.core.tasks``) ride in the same entries: one group
# commit for key-value writes, job submissions and task results alike.
Command = (
    Put
    | Delete
    | Cas
    | tasks.SubmitJob
    | tasks.SubmitJobs
    | tasks.AddTasks
    | tasks.AssignTasks
    | tasks.FinishTasks
    | tasks.CancelJob
    | tasks.ForgetJob
)


class Proposal(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One client write.

    ``seq`` numbers the client's writes from 1. ``ack``: the client has the
    answers of every seq below it, so the store may forget them. A new client
    sends ``ack`` 0 or 1 until it has its first answer (both say "nothing
    below seq 1"): a proposal from an unknown client with ``ack > 1`` means
    its session was evicted.
    """

    client_id: ClientId
    seq: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
    ack: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    command: Command


class Batch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The proposals carried by one Raft entry, applied in order."""

    proposals: Annotated[tuple[Proposal, ...], msgspec.Meta(max_length=PROPOSALS_PER_BATCH_MAX)]


_batch_encoder: Final = msgspec.msgpack.Encoder()
_batch_decoder: Final[msgspec.msgpack.Decoder[Batch]] = msgspec.msgpack.Decoder(Batch)


def encode_batch(batch: Batch) -> bytes:
    """Encode a batch for the Raft log (``encode_checked_batch``'s bytes)."""
    return encode_checked_batch(batch)[0]


def encode_checked_batch(batch: Batch) -> tuple[bytes, Batch]:
    """Encode a batch for the Raft log, and the batch decoded from those bytes.

    The bytes are decoded once more before they are returned: Struct
    construction does not check the caps, and an entry that every replica
    fails to decode must never be committed. The decoded batch is what
    ``KvState.apply`` would decode from the entry: the leader hands it over
    instead of decoding its own entry again. Raises ``BadCommand``.
    """
    data = _batch_encoder.encode(batch)
    if len(data) > ENTRY_BYTES_MAX:
        raise BadCommand(
            f"batch of {len(batch.proposals)} proposals encodes to {len(data)} bytes, over one Raft "
            f"entry (ENTRY_BYTES_MAX={ENTRY_BYTES_MAX}); propose it in smaller batches"
        )
    try:
        decoded = decode_batch(data)
    except msgspec.DecodeError as error:  # ValidationError is a subclass
        raise BadCommand(f"batch breaks a limit, check each proposal first: {error}") from error
    return data, decoded


def decode_batch(data: bytes) -> Batch:
    """Decode a batch; raises ``msgspec.ValidationError`` or ``msgspec.DecodeError``."""
    try:
        return _batch_decoder.decode(data)
    except UnicodeDecodeError as error:  # msgspec raises it for a map key that is not UTF-8
        raise msgspec.DecodeError(f"malformed batch: {error}") from error


def validate_key(key: object) -> bytes:
    """Check a client's key before it is proposed; raises ``BadCommand``."""
    if not isinstance(key, bytes):
        raise BadCommand(f"a key must be bytes, not {type(key).__name__}; encode it first")
    if not key:
        raise BadCommand("a key must not be empty")
    if len(key) > KEY_BYTES_MAX:
        raise BadCommand(
            f"key of {len(key)} bytes is over KEY_BYTES_MAX={KEY_BYTES_MAX}; use a shorter key "
            f"(a hash of it, for instance)"
        )
    return key


def validate_value(value: object) -> bytes:
    """Check a client's value before it is proposed; raises ``BadCommand``."""
    if not isinstance(value, bytes):
        raise BadCommand(f"a value must be bytes, not {type(value).__name__}; encode it first")
    if len(value) > VALUE_BYTES_MAX:
        raise BadCommand(
            f"value of {len(value)} bytes is over VALUE_BYTES_MAX={VALUE_BYTES_MAX}; store large "
            f"data elsewhere and put a reference to it here"
        )
    return value


def _validate_limit(limit: int) -> None:
    if not 1 <= limit <= RANGE_LIMIT_MAX:
        raise BadCommand(
            f"limit {limit} is outside 1..RANGE_LIMIT_MAX={RANGE_LIMIT_MAX}; page with a smaller one"
        )


# -- what reads and writes return --------------------------------------------------


class KeyValue(msgspec.Struct, frozen=True):
    """A key as stored, with etcd's revision bookkeeping."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int


class Event(msgspec.Struct, frozen=True):
    """One change, as a watcher sees it; ``value`` is ``b""`` for a delete."""

    kind: Literal["put", "delete"]
    key: bytes
    value: bytes
    revision: int


class WriteResult(msgspec.Struct, frozen=True):
    """The answer to one proposal.

    ``status="expired"``: the client's session was forgotten and the write was
    NOT applied; the client must read the key to learn the state. ``succeeded``:
    put always; delete if the key existed; cas if it swapped. ``revision``: the
    store revision after this write (the current one if it changed nothing).
    """

    status: Literal["ok", "expired"]
    succeeded: bool
    revision: int


# -- snapshot image: private records, compact (array-like), capped -----------------


class _StoredKeyValue(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    key: Key
    value: Value
    create_revision: _Count
    mod_revision: _Count
    version: _Count


class _StoredEvent(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    kind: Literal["put", "delete"]
    key: Key
    value: Value
    revision: _Count


class _StoredResult(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    seq: _Count
    succeeded: bool
    revision: _Count


class _StoredSession(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    client_id: ClientId
    last_index: _Count
    floor: _Count
    results: Annotated[tuple[_StoredResult, ...], msgspec.Meta(max_length=RESULTS_PER_SESSION_MAX)]


class _SnapshotImage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format_version: int
    revision: _Count
    applied_index: _Count
    compacted_revision: _Count
    data: tuple[_StoredKeyValue, ...]  # sorted by key
    sessions: tuple[_StoredSession, ...]  # least recently used first
    history: tuple[_StoredEvent, ...]  # revision order
    tasks: bytes = b""  # TaskTable.snapshot()


_snapshot_encoder: Final = msgspec.msgpack.Encoder()
_snapshot_decoder: Final[msgspec.msgpack.Decoder[_SnapshotImage]] = msgspec.msgpack.Decoder(
    _SnapshotImage
)


class _Session:
    """One client's exactly-once bookkeeping.

    ``floor``: seqs below it have no stored answer and read as expired (it is
    the highest ack seen, raised further when the oldest answers are dropped
    for lack of room). ``results``: answers of seqs >= floor, by seq.
    """

    __slots__ = ("floor", "last_index", "results")

    def __init__(self, last_index: int, floor: int) -> None:
        self.last_index = last_index
        self.floor = floor
        self.results: dict[int, WriteResult] = {}

    def acknowledge(self, ack: int) -> None:
        """The client has the answers below ``ack``: forget them."""
        if ack <= self.floor:
            return
        self.floor = ack
        for seq in [seq for seq in self.results if seq < ack]:
            del self.results[seq]

    def remember(self, seq: int, result: WriteResult) -> None:
        """Store an answer; past the cap, drop the oldest and raise the floor over it."""
        assert seq >= self.floor
        assert seq not in self.results
        self.results[seq] = result
        if len(self.results) > RESULTS_PER_SESSION_MAX:
            oldest = min(self.results)
            del self.results[oldest]
            self.floor = max(self.floor, oldest + 1)
        assert len(self.results) <= RESULTS_PER_SESSION_MAX


def _event_bytes(event: Event) -> int:
    return len(event.key) + len(event.value) + EVENT_OVERHEAD_BYTES


class KvState:
    """The KV store of one replica: data, revisions, sessions, watch history."""

    def __init__(
        self,
        *,
        sessions_max: int = 10_000,
        history_max: int = 100_000,
        history_bytes_max: int = 64 * 1024 * 1024,
    ) -> None:
        """An empty store.

        ``sessions_max``: client sessions kept (etcd's and the Raft
        dissertation's session tables are bounded the same way; 10k clients
        writing at once is far beyond one group). ``history_max`` and
        ``history_bytes_max``: watch history kept, by events and by bytes
        (key + value + EVENT_OVERHEAD_BYTES each); a watcher further behind
        gets ``Compacted`` and re-reads, as with etcd's compaction.
        """
        if sessions_max < 1 or history_max < 1 or history_bytes_max < 1:
            raise ValueError(
                f"KvState limits must be >= 1: sessions_max={sessions_max}, "
                f"history_max={history_max}, history_bytes_max={history_bytes_max}"
            )
        self._sessions_max = sessions_max
        self._history_max = history_max
        self._history_bytes_max = history_bytes_max
        self._revision = 0
        self._applied_index = 0
        self._compacted_revision = 0
        self._data: dict[bytes, KeyValue] = {}
        self._keys_sorted: list[bytes] = []
        self._sessions: dict[str, _Session] = {}  # least recently used first
        self._history: deque[Event] = deque()
        self._history_bytes = 0
        self.tasks = tasks.TaskTable()
        """Jobs and tasks (read only: change them through task commands)."""
        self._task_events: list[tasks.TaskEvent] = []

    @property
    def revision(self) -> int:
        """Store revision: 0 at start, +1 per change."""
        return self._revision

    @property
    def applied_index(self) -> int:
        """The last Raft index applied (0 at start)."""
        return self._applied_index

    @property
    def compacted_revision(self) -> int:
        """Events at or below this revision were dropped from the watch history."""
        return self._compacted_revision

    # -- writes -----------------------------------------------------------------------

    def apply(
        self, index: int, data: bytes, decoded: Batch | None = None
    ) -> list[tuple[str, int, WriteResult]]:
        """Apply the committed entry at ``index``; answer each proposal in order.

        Per proposal, after its ``ack`` has let the session forget older
        answers: a seq below the session's floor, or an unknown client with
        ``ack > 1``, answers "expired" and changes nothing; a seq with a stored
        answer returns that answer again and changes nothing (a retry applies
        once, even if the retried command differs); otherwise the command is
        applied and its answer stored.

        Raises ``ValueError`` if ``data`` is not a batch (a corrupt log or a
        caller that passed another state machine's entry); nothing changes then.
        """
        assert index > self._applied_index, (
            f"apply index {index} not after applied {self._applied_index}"
        )
        if not data:
            self._applied_index = index
            return []
        try:
            batch = decoded if decoded is not None else decode_batch(data)
        except msgspec.DecodeError as error:
            raise ValueError(f"entry {index} is not a KV batch: {error}") from error
        answers: list[tuple[str, int, WriteResult]] = []
        touched: dict[str, None] = {}
        for proposal in batch.proposals:
            result = self._apply_proposal(index, proposal)
            if proposal.client_id in self._sessions:
                touched[proposal.client_id] = None
            answers.append((proposal.client_id, proposal.seq, result))
        self._touch_sessions(index, sorted(touched))
        self._applied_index = index
        assert len(answers) == len(batch.proposals)
        assert len(self._sessions) <= self._sessions_max
        return answers

    def _apply_proposal(self, index: int, proposal: Proposal) -> WriteResult:
        session = self._sessions.get(proposal.client_id)
        if session is None:
            if proposal.ack > 1:
                return WriteResult(status="expired", succeeded=False, revision=self._revision)
            session = _Session(last_index=index, floor=0)
            self._sessions[proposal.client_id] = session
        session.acknowledge(proposal.ack)
        if proposal.seq < session.floor:
            return WriteResult(status="expired", succeeded=False, revision=self._revision)
        stored = session.results.get(proposal.seq)
        if stored is not None:
            return stored
        result = self._execute(proposal.command)
        session.remember(proposal.seq, result)
        return result

    def _touch_sessions(self, index: int, client_ids: list[str]) -> None:
        """Move the sessions used at ``index`` to the most recent end, in
        client id order; then evict from the least recent end."""
        for client_id in client_ids:
            session = self._sessions.pop(client_id)
            session.last_index = index
            self._sessions[client_id] = session
        while len(self._sessions) > self._sessions_max:
            del self._sessions[next(iter(self._sessions))]

    def take_task_events(self) -> list[tasks.TaskEvent]:
        """What task commands applied since the last call changed, in order."""
        events, self._task_events = self._task_events, []
        return events

    def _execute(self, command: Command) -> WriteResult:
        if isinstance(command, tasks.TASK_COMMAND_TYPES):
            applied = self.tasks.apply(command)
            for key, value in applied.puts:
                self._put(key, value)
            for key in applied.deletes:
                self._delete(key)
            self._task_events.extend(applied.events)
            return WriteResult(status="ok", succeeded=applied.succeeded, revision=self._revision)
        if isinstance(command, Put):
            self._put(command.key, command.value)
            return WriteResult(status="ok", succeeded=True, revision=self._revision)
        if isinstance(command, Delete):
            existed = self._delete(command.key)
            return WriteResult(status="ok", succeeded=existed, revision=self._revision)
        assert isinstance(command, Cas)
        current = self._data.get(command.key)
        matches = (
            current is None
            if command.expected is None
            else (current is not None and current.value == command.expected)
        )
        if matches:
            self._put(command.key, command.value)
        return WriteResult(status="ok", succeeded=matches, revision=self._revision)

    def _put(self, key: bytes, value: bytes) -> None:
        self._revision += 1
        previous = self._data.get(key)
        if previous is None:
            bisect.insort(self._keys_sorted, key)
            record = KeyValue(key, value, self._revision, self._revision, 1)
        else:
            record = KeyValue(
                key, value, previous.create_revision, self._revision, previous.version + 1
            )
        self._data[key] = record
        self._record_event(Event("put", key, value, self._revision))

    def _delete(self, key: bytes) -> bool:
        if key not in self._data:
            return False
        self._revision += 1
        del self._data[key]
        position = bisect.bisect_left(self._keys_sorted, key)
        assert self._keys_sorted[position] == key
        del self._keys_sorted[position]
        self._record_event(Event("delete", key, b"", self._revision))
        return True

    def _record_event(self, event: Event) -> None:
        assert event.revision == self._revision
        self._history.append(event)
        self._history_bytes += _event_bytes(event)
        self._trim_history()
        assert len(self._history) == self._revision - self._compacted_revision

    def _trim_history(self) -> None:
        while self._history and (
            len(self._history) > self._history_max or self._history_bytes > self._history_bytes_max
        ):
            dropped = self._history.popleft()
            self._history_bytes -= _event_bytes(dropped)
            self._compacted_revision = dropped.revision

    # -- reads --------------------------------------------------------------------------

    def get(self, key: bytes) -> KeyValue | None:
        """The key's current record, or None if it does not exist."""
        return self._data.get(key)

    def range(self, prefix: bytes, limit: int, *, after: bytes = b"") -> tuple[list[KeyValue], bool]:
        """Up to ``limit`` keys starting with ``prefix`` (``b""``: all), sorted by
        key, and whether more remain; with ``after``, only keys greater than it
        (the next page after a page that ended at ``after``). Raises
        ``BadCommand`` for a limit outside 1..RANGE_LIMIT_MAX."""
        _validate_limit(limit)
        start = bisect.bisect_left(self._keys_sorted, prefix)
        if after:
            start = max(start, bisect.bisect_right(self._keys_sorted, after))
        found: list[KeyValue] = []
        for position in range(start, len(self._keys_sorted)):  # not islice: it would walk from 0
            key = self._keys_sorted[position]
            if not key.startswith(prefix):
                return found, False
            if len(found) == limit:
                return found, True
            found.append(self._data[key])
        return found, False

    def events(self, start_revision: int, prefix: bytes, limit: int) -> list[Event]:
        """Up to ``limit`` events with revision >= ``start_revision`` and a key
        starting with ``prefix``, in revision order.

        Raises ``Compacted`` if events the answer needs were dropped
        (``start_revision <= compacted_revision`` once anything was dropped),
        and ``BadCommand`` for a limit outside 1..RANGE_LIMIT_MAX.
        """
        _validate_limit(limit)
        if self._compacted_revision > 0 and start_revision <= self._compacted_revision:
            raise Compacted(self._compacted_revision, self._revision)
        skip = max(0, start_revision - self._compacted_revision - 1)
        found: list[Event] = []
        for event in itertools.islice(self._history, skip, None):
            if event.key.startswith(prefix):
                found.append(event)
                if len(found) == limit:
                    break
        if found:
            assert found[0].revision >= start_revision
        return found

    # -- snapshots ------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Everything a replica needs to continue as this one, deterministically encoded."""
        image = _SnapshotImage(
            format_version=SNAPSHOT_FORMAT_VERSION,
            revision=self._revision,
            applied_index=self._applied_index,
            compacted_revision=self._compacted_revision,
            data=tuple(
                _StoredKeyValue(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version)
                for kv in (self._data[key] for key in self._keys_sorted)
            ),
            sessions=tuple(
                _StoredSession(
                    client_id,
                    session.last_index,
                    session.floor,
                    tuple(
                        _StoredResult(
                            seq, session.results[seq].succeeded, session.results[seq].revision
                        )
                        for seq in sorted(session.results)
                    ),
                )
                for client_id, session in self._sessions.items()
            ),
            history=tuple(_StoredEvent(e.kind, e.key, e.value, e.revision) for e in self._history),
            tasks=self.tasks.snapshot(),
        )
        return _snapshot_encoder.encode(image)

    @classmethod
    def restore(
        cls,
        data: bytes,
        *,
        sessions_max: int = 10_000,
        history_max: int = 100_000,
        history_bytes_max: int = 64 * 1024 * 1024,
    ) -> KvState:
        """Rebuild a store from ``snapshot()`` bytes; ``ValueError`` if they are corrupt.

        With smaller limits than the snapshot's writer, the oldest sessions
        and events are dropped at once (as the writer would have).
        """
        try:
            image = _snapshot_decoder.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"corrupt KV snapshot: {error}") from error
        _check_image(image)
        state = cls(
            sessions_max=sessions_max, history_max=history_max, history_bytes_max=history_bytes_max
        )
        state._revision = image.revision
        state._applied_index = image.applied_index
        state._compacted_revision = image.compacted_revision
        for stored in image.data:
            state._data[stored.key] = KeyValue(
                stored.key,
                stored.value,
                stored.create_revision,
                stored.mod_revision,
                stored.version,
            )
            state._keys_sorted.append(stored.key)
        for stored_session in image.sessions:
            session = _Session(last_index=stored_session.last_index, floor=stored_session.floor)
            for result in stored_session.results:
                session.results[result.seq] = WriteResult("ok", result.succeeded, result.revision)
            state._sessions[stored_session.client_id] = session
        for stored_event in image.history:
            event = Event(
                stored_event.kind, stored_event.key, stored_event.value, stored_event.revision
            )
            state._history.append(event)
            state._history_bytes += _event_bytes(event)
        if image.tasks:
            state.tasks = tasks.TaskTable.restore(image.tasks)
        state._touch_sessions(state._applied_index, [])  # evict down to sessions_max
        state._trim_history()
        return state


def _check_image(image: _SnapshotImage) -> None:
    """Raise ValueError unless the decoded snapshot keeps every invariant."""

    def corrupt(why: str) -> ValueError:
        return ValueError(f"corrupt KV snapshot: {why}")

    if image.format_version != SNAPSHOT_FORMAT_VERSION:
        raise corrupt(
            f"format version {image.format_version}, this build reads {SNAPSHOT_FORMAT_VERSION}"
        )
    if image.compacted_revision > image.revision:
        raise corrupt(
            f"compacted revision {image.compacted_revision} above revision {image.revision}"
        )
    previous_key: bytes | None = None
    for kv in image.data:
        if previous_key is not None and kv.key <= previous_key:
            raise corrupt(f"keys not strictly sorted at {kv.key!r}")
        previous_key = kv.key
        if not 1 <= kv.create_revision <= kv.mod_revision <= image.revision or kv.version < 1:
            raise corrupt(f"key {kv.key!r} has impossible revisions or version")
    if len(image.history) != image.revision - image.compacted_revision:
        raise corrupt(
            f"history holds {len(image.history)} events, expected revisions "
            f"{image.compacted_revision + 1}..{image.revision}"
        )
    for offset, event in enumerate(image.history):
        if event.revision != image.compacted_revision + 1 + offset:
            raise corrupt(f"history revision {event.revision} out of sequence")
        if event.kind == "delete" and event.value:
            raise corrupt(f"delete event at revision {event.revision} carries a value")
    previous: tuple[int, str] | None = None
    for session in image.sessions:
        position = (session.last_index, session.client_id)
        if previous is not None and position <= previous:
            raise corrupt(f"sessions not in least-recently-used order at {session.client_id!r}")
        previous = position
        if session.last_index > image.applied_index:
            raise corrupt(f"session {session.client_id!r} used after the applied index")
        seqs = [result.seq for result in session.results]
        if seqs != sorted(set(seqs)) or (seqs and seqs[0] < session.floor):
            raise corrupt(
                f"session {session.client_id!r} has answers out of order or below its floor"
            )
        if any(result.revision > image.revision for result in session.results):
            raise corrupt(f"session {session.client_id!r} has an answer from a future revision")
