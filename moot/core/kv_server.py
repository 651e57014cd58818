"""The key-value server of one node: client requests in, Raft effects and replies out (sans-IO).

``KvServer`` joins a ``RaftNode`` and the replicated ``KvState`` with the
bookkeeping between them: which client waits for which write, which reads
wait for which read point. The runtime (``moot.runtime.kv_service``) and the
simulator (``moot.sim.raft_scenario``) drive this same class, so the code
that answers a client in production is the code the simulator checks for
linearizability.

Rules:

- **Writes** go to the leader only. A round of requests handed to
  ``handle`` becomes *one* Raft entry (a ``kv.Batch``; group commit, as
  etcd batches proposals into one Ready). Writes wait, keyed by
  (client id, seq), until their entry is applied here; the reply carries the
  result the state machine computed, so a retried write (same seq) gets the
  same answer and is applied once (client sessions, ``kv.KvState``).
  Writes beyond one entry's byte budget queue for the next entry.
- **Reads** name their consistency: ``stale`` is answered at once from the
  local state on any node (it still answers in a minority partition, and
  may be behind); ``linearizable`` (ReadIndex: a heartbeat round confirms
  leadership) and ``lease`` (ReadIndex answered from the leader lease) are
  served by the leader once the read point is applied. The reads of one
  round share one ReadIndex request.
- **Errors** (``ErrorReply.code``) say whether the outcome is known:
  ``not_leader``, ``no_leader``, ``busy``, ``too_large`` and ``invalid``
  mean *not applied* (retry elsewhere or later); ``leader_lost`` and
  ``timeout`` mean *unknown* — the write may still commit; retrying it with
  the same seq is safe.
- **Leadership loss** fails every waiting write and read at once with
  ``leader_lost`` (the client retries at the new leader instead of waiting
  for a timeout), and so does a restored snapshot.
- **Compaction**: once ``snapshot_entries`` entries were applied since the
  last snapshot, ``compact_due()`` says so and ``compact()`` hands Raft a
  snapshot of the state; call it after ``advance``.

Effects contract (``ServerOutput``), carried out in order: persist
``raft`` (as ``moot.core.raft`` says: snapshot, entries, hard state — fsync),
send ``raft.messages``, deliver ``replies``, then ``advance(output)``. The
server applies committed entries to its state itself, before it returns
(nothing leaves before the persist, so applying early is invisible).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Final, Literal

import msgspec

from moot.core import kv, tasks
from moot.core.raft import Accepted, Output, RaftNode, Rejected
from moot.core.raft_config import RaftConfig
from moot.core.raft_messages import ConfChange, Entry, HardState, RaftMessage, Snapshot

if TYPE_CHECKING:
    import random  # only the type: the caller injects the generator

Consistency = Literal["linearizable", "lease", "stale"]
CONSISTENCIES: Final = ("linearizable", "lease", "stale")

ErrorCode = Literal["not_leader", "no_leader", "leader_lost", "timeout", "busy", "too_large", "invalid"]
OUTCOME_UNKNOWN_CODES: Final = frozenset({"leader_lost", "timeout"})

# Bytes a proposal costs beyond its key and value once encoded in a batch
# (client id up to 64 chars, seq, ack, tags): generous, so a batch that
# passes this estimate always fits the Raft proposal cap.
PROPOSAL_OVERHEAD_BYTES: Final = 160

# Waiting writes and reads one server holds (TigerBeetle: a limit on
# everything). Beyond it new requests get ``busy``.
WAITING_REQUESTS_MAX: Final = 65_536


class GetRequest(msgspec.Struct, frozen=True, tag="get", forbid_unknown_fields=True):
    """Read one key."""

    key: kv.Key
    consistency: Consistency = "linearizable"


class RangeRequest(msgspec.Struct, frozen=True, tag="range", forbid_unknown_fields=True):
    """Read the keys that start with ``prefix`` (all keys for b""), sorted."""

    prefix: Annotated[bytes, msgspec.Meta(max_length=kv.KEY_BYTES_MAX)] = b""
    limit: Annotated[int, msgspec.Meta(ge=1, le=kv.RANGE_LIMIT_MAX)] = 1_000
    consistency: Consistency = "linearizable"


class WriteRequest(msgspec.Struct, frozen=True, tag="write", forbid_unknown_fields=True):
    """A put, delete or cas with its client session numbers."""

    proposal: kv.Proposal


ClientRequest = GetRequest | RangeRequest | WriteRequest


class GetReply(msgspec.Struct, frozen=True, tag="get_reply", forbid_unknown_fields=True):
    """``kv`` is None if the key does not exist; ``revision`` is the store's."""

    kv: kv.KeyValue | None
    revision: int


class RangeReply(msgspec.Struct, frozen=True, tag="range_reply", forbid_unknown_fields=True):
    """Keys in order; ``more`` if the limit cut the answer short."""

    kvs: tuple[kv.KeyValue, ...]
    more: bool
    revision: int


class WriteReply(msgspec.Struct, frozen=True, tag="write_reply", forbid_unknown_fields=True):
    """The state machine's answer to one write."""

    result: kv.WriteResult


class ErrorReply(msgspec.Struct, frozen=True, tag="error_reply", forbid_unknown_fields=True):
    """Why a request was not answered (see the module doc for each code)."""

    code: ErrorCode
    leader_id: str | None = None
    detail: str = ""


ClientReply = GetReply | RangeReply | WriteReply | ErrorReply


@dataclass(frozen=True, slots=True)
class KvServerOptions:
    """Tuning of the server around Raft."""

    request_timeout_ms: int = 5_000
    """A write or read still waiting after this long is answered ``timeout``
    (outcome unknown). etcd's client default request timeout is 5 s."""

    snapshot_entries: int = 10_000
    """Entries applied since the last snapshot before the log is compacted
    (etcd: --snapshot-count, 10 000 since 3.2... 100 000 in 3.5)."""

    sessions_max: int = 10_000
    """Client sessions the state machine remembers (``kv.KvState``)."""

    history_max: int = 100_000
    """Watch events kept (``kv.KvState``)."""

    def validate(self) -> None:
        """Raise ValueError naming the first field out of range."""
        for name in ("request_timeout_ms", "snapshot_entries", "sessions_max", "history_max"):
            if getattr(self, name) <= 0:
                raise ValueError(f"KvServerOptions.{name} must be positive, got {getattr(self, name)}")


@dataclass(slots=True)
class ServerOutput:
    """Effects of one input (module doc: persist, send, reply, advance)."""

    raft: Output
    replies: list[tuple[int, ClientReply]] = field(default_factory=list)


@dataclass(slots=True)
class _WaitingWrite:
    request_ids: list[int]
    deadline_ms: int


@dataclass(slots=True)
class _WaitingRead:
    request_id: int
    request: GetRequest | RangeRequest
    deadline_ms: int


class KvServer:
    """A node's KV server around its Raft node (see module doc)."""

    def __init__(
        self,
        raft_config: RaftConfig,
        *,
        node_id: str,
        voters: tuple[str, ...],
        learners: tuple[str, ...] = (),
        rng: random.Random,
        now_ms: int,
        hard_state: HardState | None = None,
        log_entries: Sequence[Entry] = (),
        snapshot: Snapshot | None = None,
        options: KvServerOptions | None = None,
    ) -> None:
        self.options = options or KvServerOptions()
        self.options.validate()
        self._raft = RaftNode(
            raft_config,
            node_id=node_id,
            voters=voters,
            learners=learners,
            rng=rng,
            now_ms=now_ms,
            hard_state=hard_state,
            log_entries=log_entries,
            snapshot=snapshot,
        )
        self._state = self._new_state(snapshot.data if snapshot else None)
        self._snapshot_index = snapshot.meta.index if snapshot else 0
        if snapshot is not None:
            assert self._state.applied_index <= snapshot.meta.index
        self._writes: dict[tuple[str, int], _WaitingWrite] = {}
        self._queued: list[tuple[int, kv.Proposal]] = []  # leader: writes for the next entry
        self._reads: dict[int, list[_WaitingRead]] = {}  # ReadIndex request id -> reads
        self._last_batch: list[tuple[str, int]] = []  # (client id, seq) of the last proposed batch
        self._last_decoded: kv.Batch | None = None  # that batch, decoded back from its entry's bytes
        # Index -> (term, batch) of this leader's entries not applied yet: it
        # applies what it proposed without decoding it again (the leader's
        # decode was 8% of its busy time under a task load).
        self._decoded: dict[int, tuple[int, kv.Batch]] = {}
        self._next_read_id = 1
        self._leader_term = 0  # the term in which our waiting requests were accepted
        self._now_ms = now_ms

    # -- views ----------------------------------------------------------------------

    @property
    def raft(self) -> RaftNode:
        """The Raft node (read only: drive it through this server)."""
        return self._raft

    @property
    def state(self) -> kv.KvState:
        """The applied key-value state (read only)."""
        return self._state

    def waiting(self) -> int:
        """Requests waiting for an answer here (writes count once per client request)."""
        return sum(len(w.request_ids) for w in self._writes.values()) + len(self._queued) + sum(
            len(group) for group in self._reads.values()
        )

    def next_deadline_ms(self) -> int:
        """When ``tick`` must next be called."""
        deadline = self._raft.next_deadline_ms()
        if self._queued and self._raft.role == "leader":
            return self._now_ms
        for write in self._writes.values():
            deadline = min(deadline, write.deadline_ms)
        for group in self._reads.values():
            deadline = min(deadline, group[0].deadline_ms)
        return deadline

    # -- inputs -----------------------------------------------------------------------

    def handle(self, now_ms: int, requests: Sequence[tuple[int, ClientRequest]]) -> ServerOutput:
        """A round of client requests (ids are the caller's, unique while waiting)."""
        self._now_ms = now_ms
        replies: list[tuple[int, ClientReply]] = []
        reads: list[_WaitingRead] = []
        lease_only = True
        deadline_ms = now_ms + self.options.request_timeout_ms
        for request_id, request in requests:
            if isinstance(request, WriteRequest):
                refusal = self._refuse_write(request.proposal)
                if refusal is not None:
                    replies.append((request_id, refusal))
                else:
                    self._queue_write(request_id, request.proposal, deadline_ms)
            elif request.consistency == "stale":
                replies.append((request_id, self._answer_read(request)))
            elif self._raft.role != "leader":
                replies.append((request_id, self._not_leader()))
            elif self.waiting() + len(reads) >= WAITING_REQUESTS_MAX:
                replies.append((request_id, ErrorReply("busy", self._raft.node_id, "too many waiting requests")))
            else:
                reads.append(_WaitingRead(request_id, request, deadline_ms))
                lease_only = lease_only and request.consistency == "lease"
        read_id: int | None = None
        if reads:
            read_id = self._next_read_id
            self._next_read_id += 1
            self._reads[read_id] = reads
        data = self._next_batch()
        out = self._raft.propose_and_read(now_ms, data, read_id, lease=lease_only)
        return self._absorb(now_ms, out, replies, proposed=data is not None)

    def step(self, now_ms: int, message: RaftMessage) -> ServerOutput:
        """A Raft message from a peer."""
        self._now_ms = now_ms
        return self._absorb(now_ms, self._raft.step(now_ms, message), [])

    def tick(self, now_ms: int) -> ServerOutput:
        """Timers: Raft's, request deadlines, and queued writes."""
        self._now_ms = now_ms
        replies: list[tuple[int, ClientReply]] = []
        self._expire(now_ms, replies)
        data = self._next_batch() if self._raft.role == "leader" else None
        if data is not None:
            out = self._raft.propose_and_read(now_ms, data, None)
            return self._absorb(now_ms, out, replies, proposed=True)
        return self._absorb(now_ms, self._raft.tick(now_ms), replies)

    def propose_conf_change(self, now_ms: int, change: ConfChange) -> ServerOutput:
        """A membership change of the Raft group (``raft.result`` says if accepted)."""
        self._now_ms = now_ms
        return self._absorb(now_ms, self._raft.propose_conf_change(now_ms, change), [])

    def transfer_leadership(self, now_ms: int, target: str) -> ServerOutput:
        """Hand leadership to voter ``target``."""
        self._now_ms = now_ms
        return self._absorb(now_ms, self._raft.transfer_leadership(now_ms, target), [])

    def leader_unreachable(self, now_ms: int, node_id: str) -> ServerOutput:
        """A hint that ``node_id``'s connection closed (``RaftNode.leader_unreachable``)."""
        self._now_ms = now_ms
        return self._absorb(now_ms, self._raft.leader_unreachable(now_ms, node_id), [])

    def campaign(self, now_ms: int) -> ServerOutput:
        """Start an election now."""
        self._now_ms = now_ms
        return self._absorb(now_ms, self._raft.campaign(now_ms), [])

    def leader_ready(self) -> bool:
        """This node leads and has applied every entry of earlier terms (an
        entry of its own term is committed): its state is the group's, so
        what it decides from the state (the task scheduler) is current."""
        raft = self._raft
        return (
            raft.role == "leader"
            and raft.log_term(raft.commit_index) == raft.term
            and self._state.applied_index >= raft.commit_index
        )

    def compact_due(self) -> bool:
        """True when enough entries were applied since the last snapshot."""
        return self._state.applied_index - self._snapshot_index >= self.options.snapshot_entries

    def compact(self, now_ms: int) -> ServerOutput:
        """Snapshot the state and let Raft drop the log below it."""
        self._now_ms = now_ms
        index = self._state.applied_index
        assert index > self._snapshot_index, "nothing new to snapshot"
        assert index == self._raft.applied_index, "compact() only after advance()"
        out = self._raft.compact(now_ms, index, self._state.snapshot())
        self._snapshot_index = index
        return self._absorb(now_ms, out, [])

    def advance(self, output: ServerOutput) -> None:
        """Acknowledge that ``output`` was carried out in contract order."""
        self._raft.advance(output.raft)

    # -- writes -------------------------------------------------------------------------

    def _refuse_write(self, proposal: kv.Proposal) -> ErrorReply | None:
        if self._raft.role != "leader":
            return self._not_leader()
        size = _proposal_bytes(proposal)
        if size + PROPOSAL_OVERHEAD_BYTES > self._raft.config.proposal_bytes_max:
            return ErrorReply(
                "too_large",
                self._raft.node_id,
                f"the write is about {size} bytes; one write may be at most "
                f"{self._raft.config.proposal_bytes_max - PROPOSAL_OVERHEAD_BYTES} bytes",
            )
        key = (proposal.client_id, proposal.seq)
        if key not in self._writes and self.waiting() >= WAITING_REQUESTS_MAX:
            return ErrorReply("busy", self._raft.node_id, "too many waiting requests; retry later")
        return None

    def _queue_write(self, request_id: int, proposal: kv.Proposal, deadline_ms: int) -> None:
        key = (proposal.client_id, proposal.seq)
        waiting = self._writes.get(key)
        if waiting is not None:
            # A retry of a write already in flight here: answer both when it applies.
            waiting.request_ids.append(request_id)
            return
        self._writes[key] = _WaitingWrite([request_id], deadline_ms)
        self._queued.append((request_id, proposal))

    def _next_batch(self) -> bytes | None:
        """The queued writes that fit one entry, encoded; None if none."""
        if not self._queued or self._raft.role != "leader":
            return None
        budget = self._raft.config.proposal_bytes_max
        taken: list[kv.Proposal] = []
        used = 0
        for _, proposal in self._queued:
            size = _proposal_bytes(proposal) + PROPOSAL_OVERHEAD_BYTES
            if taken and used + size > budget:
                break
            taken.append(proposal)
            used += size
        self._queued = self._queued[len(taken) :]
        self._last_batch = [(p.client_id, p.seq) for p in taken]
        data, self._last_decoded = kv.encode_checked_batch(kv.Batch(tuple(taken)))
        assert len(data) <= budget, "the batch estimate undercounted"
        return data

    # -- reads --------------------------------------------------------------------------

    def _answer_read(self, request: GetRequest | RangeRequest) -> ClientReply:
        if isinstance(request, GetRequest):
            return GetReply(self._state.get(request.key), self._state.revision)
        kvs, more = self._state.range(request.prefix, request.limit)
        return RangeReply(tuple(kvs), more, self._state.revision)

    # -- effects ------------------------------------------------------------------------

    def _absorb(
        self, now_ms: int, out: Output, replies: list[tuple[int, ClientReply]], *, proposed: bool = False
    ) -> ServerOutput:
        """Apply what Raft committed and turn its answers into client replies."""
        if proposed:
            self._on_proposal_result(out.result, replies)
        if out.restore_snapshot:
            assert out.snapshot is not None
            self._state = self._new_state(out.snapshot.data)
            self._snapshot_index = out.snapshot.meta.index
            self._fail_all("leader_lost", "this node installed a snapshot", replies)
        for entry in out.committed_entries:
            if entry.index <= self._state.applied_index:
                continue  # covered by the snapshot the state was restored from
            data = entry.data if entry.kind == "normal" else b""
            cached = self._decoded.pop(entry.index, None)
            decoded = cached[1] if cached is not None and cached[0] == entry.term else None
            for client_id, seq, result in self._state.apply(entry.index, data, decoded):
                waiting = self._writes.pop((client_id, seq), None)
                if waiting is not None:
                    replies.extend((request_id, WriteReply(result)) for request_id in waiting.request_ids)
        for read in out.read_states:
            group = self._reads.pop(read.request_id, None)
            if group is None:
                continue
            assert read.index <= self._state.applied_index, "read point released before it was applied"
            replies.extend((waiting.request_id, self._answer_read(waiting.request)) for waiting in group)
        for failure in out.read_failures:
            group = self._reads.pop(failure.request_id, None)
            if group is None:
                continue
            reply = self._read_failure_reply(failure.reason, failure.leader_id)
            replies.extend((waiting.request_id, reply) for waiting in group)
        self._check_leadership(replies)
        return ServerOutput(out, replies)

    def _on_proposal_result(self, result: Accepted | Rejected | None, replies: list[tuple[int, ClientReply]]) -> None:
        if isinstance(result, Accepted):
            self._leader_term = result.term
            if self._last_decoded is not None:
                self._decoded[result.index] = (result.term, self._last_decoded)
                self._last_decoded = None
            return
        assert isinstance(result, Rejected)
        # The batch was not appended: everything waiting that is no longer
        # queued was in it (or in an earlier accepted batch, which stays).
        code: ErrorCode = {"not_leader": "not_leader", "too_large": "too_large"}.get(  # type: ignore[assignment]
            result.reason, "busy"
        )
        reply = ErrorReply(code, result.leader_id, result.detail or f"proposal refused: {result.reason}")
        for key in self._last_batch:
            waiting = self._writes.pop(key, None)
            if waiting is not None:
                replies.extend((request_id, reply) for request_id in waiting.request_ids)

    def _check_leadership(self, replies: list[tuple[int, ClientReply]]) -> None:
        raft = self._raft
        if raft.role == "leader" and raft.term == self._leader_term:
            return
        if raft.role == "leader":
            self._leader_term = raft.term
            return
        self._decoded.clear()  # entries of a term we no longer lead: decode what commits
        if self._writes or self._reads or self._queued:
            self._fail_all("leader_lost", f"leadership moved (term {raft.term})", replies)

    def _fail_all(self, code: ErrorCode, detail: str, replies: list[tuple[int, ClientReply]]) -> None:
        reply = ErrorReply(code, self._raft.leader_id, detail)
        for waiting in self._writes.values():
            replies.extend((request_id, reply) for request_id in waiting.request_ids)
        for group in self._reads.values():
            replies.extend((read.request_id, reply) for read in group)
        self._writes.clear()
        self._queued.clear()
        self._reads.clear()

    def _expire(self, now_ms: int, replies: list[tuple[int, ClientReply]]) -> None:
        reply = ErrorReply("timeout", self._raft.leader_id, "no answer within the request timeout")
        for key in [key for key, waiting in self._writes.items() if waiting.deadline_ms <= now_ms]:
            waiting = self._writes.pop(key)
            replies.extend((request_id, reply) for request_id in waiting.request_ids)
        self._queued = [(rid, p) for rid, p in self._queued if (p.client_id, p.seq) in self._writes]
        for read_id in [rid for rid, group in self._reads.items() if group[0].deadline_ms <= now_ms]:
            replies.extend((read.request_id, reply) for read in self._reads.pop(read_id))

    def _not_leader(self) -> ErrorReply:
        leader = self._raft.leader_id
        if leader is None or leader == self._raft.node_id:
            return ErrorReply("no_leader", None, "no leader is known here right now; retry shortly")
        return ErrorReply("not_leader", leader, f"{leader} is the leader")

    def _read_failure_reply(self, reason: str, leader_id: str | None) -> ErrorReply:
        if reason == "not_leader":
            return self._not_leader()
        if reason == "busy":
            return ErrorReply("busy", leader_id, "too many reads waiting; retry later")
        return ErrorReply("leader_lost", leader_id, f"read not served: {reason}")

    def _new_state(self, data: bytes | None) -> kv.KvState:
        options = self.options
        if data:
            return kv.KvState.restore(data, sessions_max=options.sessions_max, history_max=options.history_max)
        return kv.KvState(sessions_max=options.sessions_max, history_max=options.history_max)


_command_encoder: Final = msgspec.msgpack.Encoder()


def _proposal_bytes(proposal: kv.Proposal) -> int:
    command = proposal.command
    if isinstance(command, tasks.TASK_COMMAND_TYPES):
        return len(_command_encoder.encode(command)) + len(proposal.client_id)
    size = len(command.key) + len(proposal.client_id)
    if isinstance(command, kv.Put):
        size += len(command.value)
    elif isinstance(command, kv.Cas):
        size += len(command.value) + len(command.expected or b"")
    return size
