"""The Raft consensus state machine of one node, sans-IO (etcd-io/raft style).

No I/O, no clock, no global randomness: every input takes ``now_ms`` (the
node's local clock in milliseconds) and returns an ``Output`` of effects that
the caller carries out, in order, and then acknowledges with ``advance``.

Rules (Ongaro and Ousterhout 2014, "In Search of an Understandable Consensus
Algorithm"; Ongaro's dissertation 2014; etcd-io/raft):

- **Terms and votes.** A message with a higher term makes us a follower of
  that term; one vote per term, persisted before the vote is sent. A vote is
  granted only to a log at least as up to date as ours (5.4.1).
- **PreVote** (dissertation 9.6). A node whose election timer fires first
  asks for pre-votes at term+1 without raising its own term; only if a
  quorum would vote does it become a candidate. A partitioned node thus
  cannot inflate its term and depose a healthy leader when it returns.
- **CheckQuorum and the leader lease.** A leader that has not heard from a
  quorum of voters within an election timeout steps down. A follower that
  heard from its leader within an election timeout ignores (pre-)vote
  requests of higher terms, unless they come from a leadership transfer.
- **Replication.** Per follower progress (etcd's tracker): *probe* (one
  AppendEntries at a time until the match point is found, with the
  follower's conflict hint for fast backtracking), *replicate* (pipelined:
  optimistic next index, at most ``inflight_messages_max`` in flight, each
  message at most ``entries_per_message_max`` entries / about
  ``bytes_per_message_max`` bytes), *snapshot* (the follower needs entries
  we compacted: InstallSnapshot in ``snapshot_chunk_bytes`` chunks, at most
  ``snapshot_chunks_inflight_max`` ahead of the follower's SnapshotAck,
  go-back-N on a gap; installed when the last byte arrives; then replicate).
- **Commit.** The leader commits the highest index a quorum of voters
  matches, but only if that entry is of its own term (5.4.2, Figure 8);
  a new leader appends an empty entry to commit its predecessors' entries.
- **ReadIndex** (dissertation 6.4). The leader records its commit index and
  confirms it is still leader with a heartbeat round acknowledged by a
  quorum; with ``lease_reads`` it answers at once while its lease (the time
  a quorum acknowledged, plus an election timeout minus clock drift) lasts.
  Reads wait until the leader has committed an entry of its term.
- **Membership** (dissertation 4.1). One server at a time: add a learner
  (receives the log, does not vote), promote it to voter, remove a server.
  A change takes effect when it is handed out as committed; a leader has at
  most one unapplied change, and none before its own no-op is applied.
- **Leadership transfer** (dissertation 3.10). The leader stops accepting
  proposals, brings the target up to date, then sends TimeoutNow; the
  target campaigns at once and its votes bypass the lease.

Effects contract (``Output``), carried out in this order by every driver:

1. persist ``snapshot`` if any (and delete stored entries at or below its
   index; if the stored entry at its index is missing or has another term,
   delete the stored entries after it too, as ``RaftLog.restore`` does in
   memory — they belong to a history the snapshot overrides), then ``entries`` (first deleting stored entries with index >=
   ``entries[0].index``), then ``hard_state`` if not None — all durable
   (fsync) before step 2. (``hard_state`` is emitted when the term or vote
   changed, or with entries or a snapshot; a commit index that alone moved
   waits for the next such write, so the stored commit may lag.) A leader's own append counts toward the commit
   quorum at once; that is safe only because of this order.
2. send ``messages``;
3. if ``restore_snapshot``, replace the state machine with
   ``snapshot.data``; then apply ``committed_entries`` in order;
4. hand ``read_states`` to their readers (each index is at or below what
   step 3 applied), report ``read_failures`` and ``result``;
5. call ``advance(output)``. Any other input before that fails an assert.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from moot.core.raft_log import RaftLog
from moot.core.raft_messages import (
    AppendEntries,
    AppendResponse,
    ConfChange,
    ConfState,
    Entry,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    RaftMessage,
    Snapshot,
    SnapshotAck,
    SnapshotMeta,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    decode_conf_change,
    encode_conf_change,
)

if TYPE_CHECKING:
    import random
    from collections.abc import Sequence

    from moot.core.raft_config import RaftConfig

Role = Literal["follower", "pre_candidate", "candidate", "leader"]
ProgressState = Literal["probe", "replicate", "snapshot"]

HEARTBEAT_ROUNDS_KEPT = 64  # send times of recent heartbeat rounds, for the lease
READS_WAITING_COMMIT_MAX = 4_096  # reads queued until a new leader commits its no-op


@dataclass(frozen=True, slots=True)
class ReadState:
    """ReadIndex answer: serve ``request_id`` once ``index`` is applied."""

    request_id: int
    index: int


@dataclass(frozen=True, slots=True)
class ReadFailure:
    """ReadIndex could not be served here; ``leader_id`` is a hint (or None)."""

    request_id: int
    reason: str
    leader_id: str | None


@dataclass(frozen=True, slots=True)
class Accepted:
    """A proposal, conf change or transfer was accepted (entry at ``index``)."""

    index: int
    term: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """A local request was refused: ``reason``; retry at ``leader_id`` if set."""

    reason: Literal["not_leader", "transferring", "too_large", "busy", "conf_pending", "invalid"]
    leader_id: str | None
    detail: str = ""


@dataclass(slots=True)
class Output:
    """Effects of one input, in contract order (module doc): persist
    (snapshot, entries, hard_state), send, apply, deliver reads; then
    ``advance``."""

    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    restore_snapshot: bool = False
    entries: list[Entry] = field(default_factory=list)
    messages: list[RaftMessage] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    read_failures: list[ReadFailure] = field(default_factory=list)
    result: Accepted | Rejected | None = None


@dataclass(slots=True)
class Progress:
    """The leader's view of one follower (etcd's tracker.Progress)."""

    match: int
    next: int
    is_learner: bool
    state: ProgressState = "probe"
    probe_sent: bool = False
    inflight: deque[int] = field(default_factory=deque)  # last index of each message in flight
    pending_snapshot: int = 0
    snapshot: Snapshot | None = field(default=None, repr=False)  # being sent (kept through compactions)
    snapshot_sent_ms: int = 0  # when the snapshot last made progress (sent or acknowledged)
    snapshot_sent_bytes: int = 0
    snapshot_acked_bytes: int = 0
    recent_active: bool = False
    last_heard_ms: int = -(2**62)  # when the peer last answered us (local clock)
    acked_round: int = 0


@dataclass(slots=True)
class _IncomingSnapshot:
    """A snapshot arriving in chunks, in order."""

    meta: SnapshotMeta
    total_bytes: int
    data: bytearray


@dataclass(frozen=True, slots=True)
class _PendingRead:
    request_id: int
    index: int
    round: int


class RaftNode:
    """One node's Raft state machine (see module doc)."""

    def __init__(
        self,
        config: RaftConfig,
        *,
        node_id: str,
        voters: tuple[str, ...],
        learners: tuple[str, ...] = (),
        rng: random.Random,
        now_ms: int,
        hard_state: HardState | None = None,
        log_entries: Sequence[Entry] = (),
        snapshot: Snapshot | None = None,
    ) -> None:
        """Start, or restart from what storage holds.

        ``voters``/``learners`` are the bootstrap configuration, used when no
        ``snapshot`` is given; committed conf changes in ``log_entries`` are
        replayed on top. The state machine is assumed rebuilt from
        ``snapshot`` only: committed entries after it are handed out again.
        """
        config.validate()
        assert node_id
        assert not set(voters) & set(learners), "a node is a voter or a learner, not both"
        self.config = config
        self.node_id = node_id
        self._rng = rng
        self._now_ms = now_ms
        hard = hard_state or HardState()
        self._persisted = hard
        self.term = hard.term
        self.vote = hard.vote
        self.role: Role = "follower"
        self.leader_id: str | None = None
        self._log = RaftLog(snapshot.meta if snapshot else None, log_entries, hard.commit)
        self._snapshot = snapshot
        conf = snapshot.meta.conf if snapshot else ConfState(tuple(sorted(voters)), tuple(sorted(learners)))
        self._conf_history: list[tuple[int, ConfState]] = [(self._log.snapshot_index, conf)]
        self._conf_index = self._log.snapshot_index
        self._handed_index = self._log.snapshot_index
        self._apply_conf_through(self._log.committed)
        self._progress: dict[str, Progress] = {}
        self._votes: dict[str, bool] = {}
        self._election_deadline_ms = 0
        self._last_leader_contact_ms = now_ms
        self._heartbeat_deadline_ms = 0
        self._check_quorum_deadline_ms = 0
        self._round = 0
        self._round_sent_ms: dict[int, int] = {}
        self._pending_reads: list[_PendingRead] = []
        self._incoming_snapshot: _IncomingSnapshot | None = None
        self._reads_waiting_commit: list[tuple[int, bool]] = []
        self._ready_reads: list[ReadState] = []
        self._pending_conf_index = 0
        self._transferee: str | None = None
        self._transfer_deadline_ms = 0
        self._timeout_now_sent = False
        # A restarted node forgets whether it had a live leader; with lease
        # reads it must not vote for an election timeout, or an old leader's
        # lease could overlap a new leader's term.
        self._restart_lease = config.lease_reads
        self._reset_election_timer(now_ms)
        self._out = Output()
        self._unadvanced: Output | None = None
        assert self.term >= 0

    # -- read-only views ------------------------------------------------------------

    @property
    def voters(self) -> tuple[str, ...]:
        """Current voters, sorted."""
        return self._conf_history[-1][1].voters

    @property
    def learners(self) -> tuple[str, ...]:
        """Current learners, sorted."""
        return self._conf_history[-1][1].learners

    @property
    def commit_index(self) -> int:
        """Highest index known committed."""
        return self._log.committed

    @property
    def applied_index(self) -> int:
        """Highest index applied (acknowledged with ``advance``)."""
        return self._log.applied

    @property
    def last_index(self) -> int:
        """Index of the last log entry."""
        return self._log.last_index()

    @property
    def first_index(self) -> int:
        """Index of the first entry not compacted."""
        return self._log.first_index()

    def log_term(self, index: int) -> int | None:
        """Term of the entry at ``index`` (None if compacted or absent)."""
        return self._log.term(index)

    def log_entry(self, index: int) -> Entry:
        """The entry at ``index`` (must be held)."""
        return self._log.entry(index)

    def progress(self, node_id: str) -> Progress | None:
        """Leader only: replication progress of ``node_id``."""
        return self._progress.get(node_id) if self.role == "leader" else None

    def next_deadline_ms(self) -> int:
        """When ``tick`` next has work to do."""
        if self._handed_index < self._log.committed:
            return self._now_ms  # committed entries beyond the per-output cap
        if self.role == "leader":
            deadlines = [self._heartbeat_deadline_ms, self._check_quorum_deadline_ms]
            if self._transferee is not None:
                deadlines.append(self._transfer_deadline_ms)
            return min(deadlines)
        return self._election_deadline_ms

    # -- inputs -------------------------------------------------------------------

    def tick(self, now_ms: int) -> Output:
        """Fire whatever timers are due at ``now_ms``."""
        self._begin(now_ms)
        if self.role == "leader":
            self._tick_leader(now_ms)
        elif now_ms >= self._election_deadline_ms:
            self._reset_election_timer(now_ms)
            if self._promotable():
                self._campaign(now_ms, transfer=False)
        return self._finish()

    def campaign(self, now_ms: int) -> Output:
        """Start an election now (PreVote first if configured)."""
        self._begin(now_ms)
        if self.role != "leader" and self._promotable():
            self._campaign(now_ms, transfer=False)
        return self._finish()

    def step(self, now_ms: int, message: RaftMessage) -> Output:
        """Handle one message from a peer."""
        self._begin(now_ms)
        assert message.target == self.node_id, "message routed to the wrong node"
        if message.source != self.node_id:
            self._step(now_ms, message)
        return self._finish()

    def leader_unreachable(self, now_ms: int, node_id: str) -> Output:
        """A hint that ``node_id`` is gone (its connection closed, as a
        killed process's does at once). If it is our leader, campaign as
        soon as its lease allows — when an election timeout has passed since
        we last heard from it, plus a turn by rank — instead of the usual
        random wait of one to two timeouts. The lease itself is untouched:
        if the leader is in fact alive, no vote is granted any earlier than
        without the hint, so lease reads stay safe."""
        self._begin(now_ms)
        if self.role == "follower" and self.leader_id == node_id and self._promotable():
            # Followers that all saw the connection close must not campaign
            # in the same millisecond and split the vote (measured: with a
            # random jitter of one heartbeat, 2 of 10 failovers needed a
            # second round). So they take turns by rank among the other
            # voters, an eighth of a timeout apart (far more than a vote's
            # round trip), plus a little jitter.
            others = sorted(v for v in self.voters if v != node_id)
            rank = others.index(self.node_id)
            spacing = max(1, self.config.election_timeout_ms // 8)
            jitter = rank * spacing + self._rng.randrange(1, max(2, self.config.heartbeat_interval_ms // 4))
            hinted = self._last_leader_contact_ms + self.config.election_timeout_ms + jitter
            self._election_deadline_ms = min(self._election_deadline_ms, max(now_ms, hinted))
        return self._finish()

    def propose(self, now_ms: int, data: bytes) -> Output:
        """Append ``data`` as a new entry; ``result`` says where, or why not."""
        self._begin(now_ms)
        rejection = self._check_proposal(len(data))
        if rejection is not None:
            self._out.result = rejection
        else:
            self._out.result = self._append_as_leader(now_ms, "normal", data)
        return self._finish()

    def propose_conf_change(self, now_ms: int, change: ConfChange) -> Output:
        """Propose one single-server membership change."""
        self._begin(now_ms)
        rejection = self._check_proposal(0) or self._check_conf_change(change)
        if rejection is not None:
            self._out.result = rejection
        else:
            accepted = self._append_as_leader(now_ms, "conf_change", encode_conf_change(change))
            self._pending_conf_index = accepted.index
            self._out.result = accepted
        return self._finish()

    def read_index(self, now_ms: int, request_id: int, *, lease: bool = False) -> Output:
        """Ask for a linearizable read point; answered by a ``ReadState``
        (maybe in a later Output) or a ``ReadFailure``. ``lease``: answer
        from the leader lease when it is valid (needs ``config.lease_reads``,
        else the heartbeat round is used anyway)."""
        self._begin(now_ms)
        self._read_index(now_ms, request_id, lease)
        return self._finish()

    def propose_and_read(
        self, now_ms: int, data: bytes | None, read_id: int | None, *, lease: bool = False
    ) -> Output:
        """``propose(data)`` and ``read_index(read_id)`` in one Output (either
        may be None): a server batching a round of client requests pays for
        one persist and one send instead of two."""
        self._begin(now_ms)
        if data is not None:
            rejection = self._check_proposal(len(data))
            self._out.result = rejection or self._append_as_leader(now_ms, "normal", data)
        if read_id is not None:
            self._read_index(now_ms, read_id, lease)
        return self._finish()

    def transfer_leadership(self, now_ms: int, target: str) -> Output:
        """Hand leadership to voter ``target`` (dissertation 3.10)."""
        self._begin(now_ms)
        if self.role != "leader":
            self._out.result = Rejected("not_leader", self.leader_id)
        elif target == self.node_id or target not in self.voters:
            self._out.result = Rejected("invalid", self.node_id, f"{target} is not another voter")
        else:
            self._transferee = target
            self._transfer_deadline_ms = now_ms + self.config.election_timeout_ms
            self._out.result = Accepted(self._log.last_index(), self.term)
            self._maybe_send_timeout_now(target)
        return self._finish()

    def compact(self, now_ms: int, index: int, snapshot_data: bytes) -> Output:
        """The application snapshotted its state through ``index``: drop
        the log up to there and keep ``snapshot_data`` to send to laggards."""
        self._begin(now_ms)
        assert self._log.snapshot_index < index <= self._log.applied, "compact only applied entries"
        term = self._log.term(index)
        assert term is not None
        meta = SnapshotMeta(index=index, term=term, conf=self._conf_at(index))
        self._snapshot = Snapshot(meta=meta, data=snapshot_data)
        self._log.compact(index)
        later = [pair for pair in self._conf_history if pair[0] > index]
        self._conf_history = [(index, meta.conf), *later]
        self._out.snapshot = self._snapshot
        return self._finish()

    def advance(self, output: Output) -> None:
        """Acknowledge that ``output`` was carried out in contract order."""
        assert output is self._unadvanced, "advance() of an output that is not the pending one"
        if output.entries:
            self._log.stable_to(output.entries[-1].index)
        if output.hard_state is not None:
            self._persisted = output.hard_state
        if output.snapshot is not None and output.restore_snapshot:
            assert self._log.applied >= output.snapshot.meta.index
        if output.committed_entries:
            self._log.applied_to(output.committed_entries[-1].index)
        self._unadvanced = None

    # -- input bracketing -----------------------------------------------------------

    def _begin(self, now_ms: int) -> None:
        assert self._unadvanced is None, "previous Output not advanced: persist, send, apply, then advance()"
        assert now_ms >= self._now_ms, "time went backwards"
        self._now_ms = now_ms

    def _finish(self) -> Output:
        out = self._out
        self._hand_out_committed(out)
        self._release_reads(out)
        hard = HardState(term=self.term, vote=self.vote, commit=self._log.committed)
        out.entries = self._log.unstable_entries()
        if hard != self._persisted:
            assert hard.term >= self._persisted.term, "term went backwards"
            if hard.term == self._persisted.term and self._persisted.vote:
                assert hard.vote == self._persisted.vote, "second vote in one term"
            assert hard.commit >= self._persisted.commit, "commit index went backwards"
            # The commit index alone is not worth an fsync: it is volatile
            # state in Raft (the paper's Figure 2), re-learned from the
            # leader after a restart. It rides along with the next write of
            # entries, a term or a vote. (Measured: writing it on its own
            # cost two of the four fsyncs on a put's critical path.)
            if hard.term != self._persisted.term or hard.vote != self._persisted.vote or out.entries or out.snapshot:
                out.hard_state = hard
        assert self._log.committed <= self._log.last_index()
        if self.role == "leader":
            assert self.vote == self.node_id and self.leader_id == self.node_id
        self._out = Output()
        self._unadvanced = out
        return out

    def _hand_out_committed(self, out: Output) -> None:
        cap = self.config.committed_entries_per_output_max
        while self._handed_index < self._log.committed and len(out.committed_entries) < cap:
            index = self._handed_index + 1
            if index > self._conf_index:
                self._apply_conf_through(index)
            out.committed_entries.append(self._log.entry(index))
            self._handed_index = index

    def _release_reads(self, out: Output) -> None:
        if not self._ready_reads:
            return
        waiting: list[ReadState] = []
        for read in self._ready_reads:
            (out.read_states if read.index <= self._handed_index else waiting).append(read)
        self._ready_reads = waiting

    # -- dispatch -----------------------------------------------------------------

    def _step(self, now_ms: int, m: RaftMessage) -> None:
        if m.term > self.term:
            if not self._accept_higher_term(now_ms, m):
                return
        elif m.term < self.term:
            self._answer_stale(m)
            return
        if isinstance(m, VoteRequest):
            self._on_vote_request(now_ms, m)
        elif isinstance(m, VoteResponse):
            self._on_vote_response(now_ms, m)
        elif isinstance(m, AppendEntries | Heartbeat | InstallSnapshot):
            self._on_leader_message(now_ms, m)
        elif isinstance(m, AppendResponse):
            self._on_append_response(now_ms, m)
        elif isinstance(m, SnapshotAck):
            self._on_snapshot_ack(now_ms, m)
        elif isinstance(m, HeartbeatResponse):
            self._on_heartbeat_response(now_ms, m)
        else:
            assert isinstance(m, TimeoutNow)
            if self._promotable() and self.role != "leader":
                self._campaign(now_ms, transfer=True)

    def _accept_higher_term(self, now_ms: int, m: RaftMessage) -> bool:
        """A message of a higher term: adopt it, or ignore it (lease). False: ignore."""
        if isinstance(m, VoteRequest):
            if not m.transfer and self._in_lease(now_ms):
                return False  # a live leader: this candidate is partitioned or stale
            if m.pre_vote:
                return True  # PreVote never changes our term
            self._become_follower(now_ms, m.term, None)
            return True
        if isinstance(m, VoteResponse) and m.pre_vote and m.granted:
            return True  # the echo of the term we would campaign in
        leader = m.source if isinstance(m, AppendEntries | Heartbeat | InstallSnapshot) else None
        self._become_follower(now_ms, m.term, leader)
        return True

    def _answer_stale(self, m: RaftMessage) -> None:
        """A message from an older term: tell stale leaders and pre-candidates."""
        if isinstance(m, AppendEntries | Heartbeat) and (self.config.check_quorum or self.config.pre_vote):
            # Without this a stale leader partitioned and back never learns
            # of the new term when PreVote stops our term from rising.
            self._send(AppendResponse(term=self.term, source=self.node_id, target=m.source, index=0))
        elif isinstance(m, VoteRequest) and m.pre_vote:
            self._send(
                VoteResponse(term=self.term, source=self.node_id, target=m.source, granted=False, pre_vote=True)
            )

    def _in_lease(self, now_ms: int) -> bool:
        if not self.config.check_quorum:
            return False
        if self.role == "leader":
            return True
        if self.leader_id is None and not self._restart_lease:
            return False
        return now_ms - self._last_leader_contact_ms < self.config.election_timeout_ms

    # -- elections ------------------------------------------------------------------

    def _promotable(self) -> bool:
        return self.node_id in self.voters

    def _quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def _reset_election_timer(self, now_ms: int) -> None:
        timeout = self.config.election_timeout_ms
        self._election_deadline_ms = now_ms + self._rng.randrange(timeout, 2 * timeout)

    def _campaign(self, now_ms: int, *, transfer: bool) -> None:
        assert self._promotable()
        pre_vote = self.config.pre_vote and not transfer
        if pre_vote:
            self._leave_leadership()
            self.role = "pre_candidate"
            self.leader_id = None
            term = self.term + 1
        else:
            self._set_term(self.term + 1)
            self.vote = self.node_id
            self._leave_leadership()
            self.role = "candidate"
            self.leader_id = None
            term = self.term
        self._request_votes(now_ms, term, pre_vote=pre_vote, transfer=transfer)

    def _request_votes(self, now_ms: int, term: int, *, pre_vote: bool, transfer: bool) -> None:
        self._reset_election_timer(now_ms)
        self._votes = {self.node_id: True}
        if self._tally(now_ms):
            return  # a group of one
        for voter in self.voters:
            if voter != self.node_id:
                self._send(
                    VoteRequest(
                        term=term,
                        source=self.node_id,
                        target=voter,
                        last_log_index=self._log.last_index(),
                        last_log_term=self._log.last_term(),
                        pre_vote=pre_vote,
                        transfer=transfer,
                    )
                )

    def _tally(self, now_ms: int) -> bool:
        """Act on the votes so far; True if the election is decided."""
        granted = sum(1 for voter in self.voters if self._votes.get(voter) is True)
        rejected = sum(1 for voter in self.voters if self._votes.get(voter) is False)
        if granted >= self._quorum():
            if self.role == "pre_candidate":
                self._campaign_after_pre_vote(now_ms)
            else:
                self._become_leader(now_ms)
            return True
        if rejected > len(self.voters) - self._quorum():
            self._become_follower(now_ms, self.term, None)
            return True
        return False

    def _campaign_after_pre_vote(self, now_ms: int) -> None:
        assert self.role == "pre_candidate"
        self._set_term(self.term + 1)
        self.vote = self.node_id
        self.role = "candidate"
        self._request_votes(now_ms, self.term, pre_vote=False, transfer=False)

    def _on_vote_request(self, now_ms: int, m: VoteRequest) -> None:
        can_vote = (
            self.vote == m.source
            or (self.vote == "" and self.leader_id is None)
            or (m.pre_vote and m.term > self.term)
        )
        grant = can_vote and self._log.is_up_to_date(m.last_log_index, m.last_log_term)
        if grant and not m.pre_vote:
            assert m.term == self.term
            assert self.vote in ("", m.source), "one vote per term"
            self.vote = m.source
            self._reset_election_timer(now_ms)
        self._send(
            VoteResponse(
                term=m.term if grant else self.term,
                source=self.node_id,
                target=m.source,
                granted=grant,
                pre_vote=m.pre_vote,
            )
        )

    def _on_vote_response(self, now_ms: int, m: VoteResponse) -> None:
        wanted: Role = "pre_candidate" if m.pre_vote else "candidate"
        if self.role != wanted or m.source not in self.voters:
            return
        self._votes.setdefault(m.source, m.granted)
        self._tally(now_ms)

    def _set_term(self, term: int) -> None:
        assert term > self.term, "term must only rise"
        self.term = term
        self.vote = ""

    def _become_follower(self, now_ms: int, term: int, leader: str | None) -> None:
        assert term >= self.term
        if term > self.term:
            self._set_term(term)
        self._leave_leadership()
        self.role = "follower"
        self.leader_id = leader
        if leader is not None:
            self._last_leader_contact_ms = now_ms
        self._reset_election_timer(now_ms)

    def _leave_leadership(self) -> None:
        """Drop leader-only state; reads not yet confirmed fail."""
        if self.role != "leader":
            return
        for read in self._pending_reads:
            self._fail_read(read.request_id, "leadership_lost")
        for request_id, _ in self._reads_waiting_commit:
            self._fail_read(request_id, "leadership_lost")
        self._pending_reads = []
        self._reads_waiting_commit = []
        self._progress = {}
        self._round_sent_ms = {}
        self._transferee = None
        self._timeout_now_sent = False

    def _become_leader(self, now_ms: int) -> None:
        assert self.role == "candidate"
        assert self.vote == self.node_id
        self.role = "leader"
        self.leader_id = self.node_id
        last = self._log.last_index()
        self._progress = {
            peer: Progress(match=0, next=last + 1, is_learner=peer in self.learners)
            for peer in self.voters + self.learners
            if peer != self.node_id
        }
        self._heartbeat_deadline_ms = now_ms + self.config.heartbeat_interval_ms
        self._check_quorum_deadline_ms = now_ms + self.config.election_timeout_ms
        self._round = 0
        self._round_sent_ms = {}  # no lease until a quorum acknowledges a heartbeat
        accepted = self._append_as_leader(now_ms, "normal", b"")  # commits predecessors' entries
        self._pending_conf_index = accepted.index  # no conf change before our no-op applies

    # -- leader: proposals ----------------------------------------------------------

    def _check_proposal(self, size: int) -> Rejected | None:
        if self.role != "leader":
            return Rejected("not_leader", self.leader_id)
        if self._transferee is not None:
            return Rejected("transferring", self._transferee)
        if self._removing_self():
            return Rejected("transferring", None, "this leader is removing itself from the group")
        if size > self.config.proposal_bytes_max:
            return Rejected("too_large", self.node_id, f"{size} bytes > {self.config.proposal_bytes_max}")
        if self._log.bytes_after(self._log.committed) + size > self.config.uncommitted_bytes_max:
            return Rejected("busy", self.node_id, "too many uncommitted bytes")
        return None

    def _removing_self(self) -> bool:
        """Our own removal is appended but not applied. Nothing may be
        appended after it, so every voter that commits it has a log as up
        to date as ours and can win the next election (found by the
        simulator, seeds 1843, 2341, 2459: a removed leader with a longer
        log refused its vote to the last voter, and nobody could lead)."""
        index = self._pending_conf_index
        if index <= self._log.applied or index > self._log.last_index() or index <= self._log.snapshot_index:
            return False
        entry = self._log.entry(index)
        return entry.kind == "conf_change" and decode_conf_change(entry.data) == ConfChange("remove", self.node_id)

    def _most_caught_up_voter(self) -> str | None:
        others = [v for v in self.voters if v != self.node_id and v in self._progress]
        if not others:
            return None
        return max(others, key=lambda v: (self._progress[v].match, v))

    def _check_conf_change(self, change: ConfChange) -> Rejected | None:
        if self._pending_conf_index > self._log.applied:
            return Rejected("conf_pending", self.node_id, "one membership change at a time")
        member = change.node_id in self.voters or change.node_id in self.learners
        problem = ""
        if change.kind == "add_learner" and member:
            problem = f"{change.node_id} is already a member"
        elif change.kind == "promote" and change.node_id not in self.learners:
            problem = f"{change.node_id} is not a learner"
        elif change.kind == "promote" and not self.caught_up(change.node_id):
            problem = f"learner {change.node_id} has not caught up yet"
        elif change.kind == "remove" and not member:
            problem = f"{change.node_id} is not a member"
        elif change.kind == "remove" and self.voters == (change.node_id,):
            problem = "cannot remove the last voter"
        return Rejected("invalid", self.node_id, problem) if problem else None

    def caught_up(self, learner: str) -> bool:
        """etcd server's isLearnerReady: a learner may be promoted once it
        matches 90% of the leader's committed log, so the new voter does
        not stall commits while it catches up."""
        progress = self._progress.get(learner)
        return progress is not None and progress.match * 10 >= self._log.committed * 9

    def _append_as_leader(self, now_ms: int, kind: Literal["normal", "conf_change"], data: bytes) -> Accepted:
        assert self.role == "leader"
        entry = Entry(term=self.term, index=self._log.last_index() + 1, kind=kind, data=data)
        self._log.append([entry])
        # Counting our own append now is safe: the Output persists before it sends.
        self._maybe_commit(now_ms)
        for peer in self._progress:
            self._send_append(now_ms, peer, send_empty=False)
        return Accepted(entry.index, entry.term)

    # -- leader: replication --------------------------------------------------------

    def _send_append(self, now_ms: int, peer: str, *, send_empty: bool) -> None:
        progress = self._progress[peer]
        if self._paused(progress):
            return
        if progress.next < self._log.first_index():
            self._send_snapshot(now_ms, peer, progress)
            return
        prev_index = progress.next - 1
        prev_term = self._log.term(prev_index)
        assert prev_term is not None
        entries = self._log.slice(
            progress.next,
            self._log.last_index() + 1,
            count_max=self.config.entries_per_message_max,
            bytes_max=self.config.bytes_per_message_max,
        )
        if not entries and not send_empty:
            return
        self._send(
            AppendEntries(
                term=self.term,
                source=self.node_id,
                target=peer,
                prev_index=prev_index,
                prev_term=prev_term,
                commit=self._log.committed,
                entries=tuple(entries),
            )
        )
        if progress.state == "replicate":
            if entries:
                progress.next = entries[-1].index + 1
                progress.inflight.append(entries[-1].index)
                assert len(progress.inflight) <= self.config.inflight_messages_max
        else:
            progress.probe_sent = True

    def _paused(self, progress: Progress) -> bool:
        if progress.state == "probe":
            return progress.probe_sent
        if progress.state == "snapshot":
            return True
        return len(progress.inflight) >= self.config.inflight_messages_max

    def _send_snapshot(self, now_ms: int, peer: str, progress: Progress) -> None:
        assert self._snapshot is not None, "compacted without a snapshot"
        assert self._snapshot.meta.index == self._log.snapshot_index
        progress.state = "snapshot"
        progress.pending_snapshot = self._snapshot.meta.index
        progress.snapshot = self._snapshot
        progress.snapshot_sent_ms = now_ms
        progress.snapshot_sent_bytes = 0
        progress.snapshot_acked_bytes = 0
        progress.inflight.clear()
        self._send_snapshot_chunks(peer, progress, first=True)

    def _send_snapshot_chunks(self, peer: str, progress: Progress, *, first: bool = False) -> None:
        """Send chunks up to ``snapshot_chunks_inflight_max`` ahead of the
        follower's acknowledgement (at least one if ``first``)."""
        snapshot = progress.snapshot
        assert snapshot is not None
        data = snapshot.data
        chunk_bytes = self.config.snapshot_chunk_bytes
        window_bytes = chunk_bytes * self.config.snapshot_chunks_inflight_max
        while first or (
            progress.snapshot_sent_bytes < len(data)
            and progress.snapshot_sent_bytes - progress.snapshot_acked_bytes < window_bytes
        ):
            first = False
            offset = progress.snapshot_sent_bytes
            chunk = data[offset : offset + chunk_bytes]
            self._send(
                InstallSnapshot(
                    term=self.term,
                    source=self.node_id,
                    target=peer,
                    meta=snapshot.meta,
                    total_bytes=len(data),
                    offset=offset,
                    chunk=chunk,
                )
            )
            progress.snapshot_sent_bytes = offset + len(chunk)

    def _on_snapshot_ack(self, now_ms: int, m: SnapshotAck) -> None:
        if self.role != "leader" or m.source not in self._progress:
            return
        progress = self._progress[m.source]
        progress.recent_active = True
        progress.last_heard_ms = now_ms
        if progress.state != "snapshot" or m.snapshot_index != progress.pending_snapshot:
            return  # an ack of a snapshot we no longer send
        # A compaction since the transfer began does not restart it: it
        # finishes with the snapshot it began with, and the follower then
        # gets the newer one (or the log). Restarting with each new snapshot
        # never finished when compactions came faster than a transfer (found
        # by the tasks simulator: a follower stuck 6 s, the task table growing).
        progress.snapshot_sent_ms = now_ms
        progress.snapshot_acked_bytes = max(progress.snapshot_acked_bytes, m.received_bytes)
        if m.gap:
            # Go back N: resend from what the follower holds.
            progress.snapshot_acked_bytes = m.received_bytes
            progress.snapshot_sent_bytes = m.received_bytes
        self._send_snapshot_chunks(m.source, progress)

    def _become_probe(self, progress: Progress, next_index: int) -> None:
        progress.state = "probe"
        progress.snapshot = None
        progress.probe_sent = False
        progress.inflight.clear()
        progress.next = max(next_index, progress.match + 1)

    def _on_append_response(self, now_ms: int, m: AppendResponse) -> None:
        if self.role != "leader" or m.source not in self._progress:
            return
        progress = self._progress[m.source]
        progress.recent_active = True
        progress.last_heard_ms = now_ms
        if m.reject:
            self._on_append_rejected(now_ms, m.source, progress, m)
            return
        if m.index <= progress.match:
            if progress.state == "probe":
                progress.probe_sent = False
                self._send_append(now_ms, m.source, send_empty=False)
            return
        if m.index > self._log.last_index():
            return  # claims entries we never sent: a confused peer, not our invariant
        progress.match = m.index
        progress.next = max(progress.next, m.index + 1)
        while progress.inflight and progress.inflight[0] <= m.index:
            progress.inflight.popleft()
        if progress.state == "probe" or (
            progress.state == "snapshot" and progress.match >= progress.pending_snapshot
        ):
            progress.state = "replicate"
            progress.snapshot = None
            progress.probe_sent = False
            progress.inflight.clear()
            progress.next = progress.match + 1
        if self._maybe_commit(now_ms):
            for peer in self._progress:
                self._send_append(now_ms, peer, send_empty=True)
        else:
            self._send_append(now_ms, m.source, send_empty=False)
        if m.source == self._transferee:
            self._maybe_send_timeout_now(m.source)

    def _on_append_rejected(self, now_ms: int, peer: str, progress: Progress, m: AppendResponse) -> None:
        stale = m.index <= progress.match if progress.state == "replicate" else m.index != progress.next - 1
        if progress.state == "snapshot" or stale:
            return
        next_index = m.hint_index + 1
        if m.hint_term > 0:
            # Skip every entry of the terms the follower cannot match (etcd).
            index, _ = self._log.hint_for(m.hint_index, m.hint_term)
            next_index = index + 1
        self._become_probe(progress, min(next_index, m.index))
        self._send_append(now_ms, peer, send_empty=True)

    def _maybe_commit(self, now_ms: int) -> bool:
        """Commit what a quorum of voters matches, if of our term (5.4.2)."""
        matches = sorted(
            (self._log.last_index() if voter == self.node_id else self._match_of(voter) for voter in self.voters),
            reverse=True,
        )
        if self.node_id not in self.voters:
            return False  # removed leader: steps down as the removal applies
        candidate = matches[self._quorum() - 1]
        if candidate <= self._log.committed or self._log.term(candidate) != self.term:
            return False
        self._log.commit_to(candidate)
        self._on_commit_in_term(now_ms)
        return True

    def _match_of(self, peer: str) -> int:
        progress = self._progress.get(peer)
        return progress.match if progress else 0

    def _committed_in_term(self) -> bool:
        return self._log.term(self._log.committed) == self.term

    def _on_commit_in_term(self, now_ms: int) -> None:
        waiting, self._reads_waiting_commit = self._reads_waiting_commit, []
        for request_id, lease in waiting:
            self._start_read(now_ms, request_id, lease)

    # -- leader: heartbeats, CheckQuorum, reads -------------------------------------

    def _tick_leader(self, now_ms: int) -> None:
        if now_ms >= self._check_quorum_deadline_ms:
            self._check_quorum_deadline_ms = now_ms + self.config.election_timeout_ms
            if self.config.check_quorum and not self._quorum_active():
                self._become_follower(now_ms, self.term, None)
                return
            for progress in self._progress.values():
                progress.recent_active = False
        if self._transferee is not None and now_ms >= self._transfer_deadline_ms:
            self._transferee = None  # abort: the target did not take over in time
        if now_ms >= self._heartbeat_deadline_ms:
            self._heartbeat_deadline_ms = now_ms + self.config.heartbeat_interval_ms
            self._broadcast_heartbeat(now_ms)

    def _quorum_active(self) -> bool:
        active = sum(
            1
            for voter in self.voters
            if voter == self.node_id or (voter in self._progress and self._progress[voter].recent_active)
        )
        return active >= self._quorum()

    def _broadcast_heartbeat(self, now_ms: int) -> None:
        self._round += 1
        self._round_sent_ms[self._round] = now_ms
        self._round_sent_ms.pop(self._round - HEARTBEAT_ROUNDS_KEPT, None)
        for peer, progress in self._progress.items():
            self._send(
                Heartbeat(
                    term=self.term,
                    source=self.node_id,
                    target=peer,
                    commit=min(progress.match, self._log.committed),
                    context=self._round,
                )
            )

    def _on_heartbeat_response(self, now_ms: int, m: HeartbeatResponse) -> None:
        if self.role != "leader" or m.source not in self._progress:
            return
        progress = self._progress[m.source]
        progress.recent_active = True
        progress.last_heard_ms = now_ms
        progress.acked_round = max(progress.acked_round, m.context)
        if progress.state == "probe":
            progress.probe_sent = False
        if progress.state == "snapshot" and now_ms >= progress.snapshot_sent_ms + self.config.election_timeout_ms:
            self._become_probe(progress, progress.match + 1)  # the snapshot was probably lost
        if progress.match < self._log.last_index():
            if progress.state == "replicate" and len(progress.inflight) >= self.config.inflight_messages_max:
                # Appends may be lost with no rejection to tell us: make room
                # for one more, whose prev mismatch (if any) turns into a probe.
                progress.inflight.popleft()
            self._send_append(now_ms, m.source, send_empty=True)
        self._confirm_reads()

    def _acked_round(self) -> int:
        """The newest heartbeat round a quorum of voters acknowledged."""
        rounds = sorted(
            (self._round if voter == self.node_id else self._acked_of(voter) for voter in self.voters),
            reverse=True,
        )
        return rounds[self._quorum() - 1]

    def _acked_of(self, peer: str) -> int:
        progress = self._progress.get(peer)
        return progress.acked_round if progress else 0

    def _confirm_reads(self) -> None:
        if not self._pending_reads:
            return
        confirmed = self._acked_round()
        still: list[_PendingRead] = []
        for read in self._pending_reads:
            if read.round <= confirmed:
                self._ready_reads.append(ReadState(read.request_id, read.index))
            else:
                still.append(read)
        self._pending_reads = still

    def _lease_valid(self, now_ms: int) -> bool:
        if not self.config.lease_reads or self._timeout_now_sent:
            return False
        sent_ms = self._round_sent_ms.get(self._acked_round())
        if sent_ms is None:
            return False
        return now_ms < sent_ms + self.config.election_timeout_ms - self.config.clock_drift_max_ms

    def _read_index(self, now_ms: int, request_id: int, lease: bool) -> None:
        if self.role != "leader":
            self._fail_read(request_id, "not_leader")
        elif not self._committed_in_term():
            if len(self._reads_waiting_commit) >= READS_WAITING_COMMIT_MAX:
                self._fail_read(request_id, "busy")
            else:
                self._reads_waiting_commit.append((request_id, lease))
        else:
            self._start_read(now_ms, request_id, lease)

    def _start_read(self, now_ms: int, request_id: int, lease: bool) -> None:
        assert self.role == "leader"
        assert self._committed_in_term()
        index = self._log.committed
        if len(self.voters) == 1 or (lease and self._lease_valid(now_ms)):
            self._ready_reads.append(ReadState(request_id, index))
            return
        if len(self._pending_reads) >= self.config.pending_reads_max:
            self._fail_read(request_id, "busy")
            return
        self._broadcast_heartbeat(now_ms)
        self._pending_reads.append(_PendingRead(request_id, index, self._round))

    def _fail_read(self, request_id: int, reason: str) -> None:
        self._out.read_failures.append(ReadFailure(request_id, reason, self.leader_id))

    # -- leader: transfer -------------------------------------------------------------

    def _maybe_send_timeout_now(self, target: str) -> None:
        progress = self._progress.get(target)
        if progress is None:
            return
        if progress.match == self._log.last_index():
            self._send(TimeoutNow(term=self.term, source=self.node_id, target=target))
            self._timeout_now_sent = True
        else:
            self._send_append(self._now_ms, target, send_empty=True)

    # -- follower -------------------------------------------------------------------

    def _on_leader_message(self, now_ms: int, m: AppendEntries | Heartbeat | InstallSnapshot) -> None:
        assert m.term == self.term
        if self.role != "follower":
            assert self.role != "leader", "two leaders in one term"
            self._become_follower(now_ms, self.term, m.source)
        self.leader_id = m.source
        self._last_leader_contact_ms = now_ms
        self._restart_lease = False
        self._reset_election_timer(now_ms)
        if isinstance(m, AppendEntries):
            self._on_append_entries(m)
        elif isinstance(m, Heartbeat):
            self._log.commit_to(m.commit)
            self._send(HeartbeatResponse(term=self.term, source=self.node_id, target=m.source, context=m.context))
        else:
            self._on_install_snapshot(m)

    def _on_append_entries(self, m: AppendEntries) -> None:
        if m.prev_index < self._log.committed:
            reply = AppendResponse(term=self.term, source=self.node_id, target=m.source, index=self._log.committed)
            self._send(reply)
            return
        last_new = self._log.try_append(m.prev_index, m.prev_term, m.entries)
        if last_new is not None:
            self._log.commit_to(min(m.commit, last_new))
            self._send(AppendResponse(term=self.term, source=self.node_id, target=m.source, index=last_new))
            return
        hint_index, hint_term = self._log.hint_for(m.prev_index, m.prev_term)
        self._send(
            AppendResponse(
                term=self.term,
                source=self.node_id,
                target=m.source,
                index=m.prev_index,
                reject=True,
                hint_index=hint_index,
                hint_term=hint_term,
            )
        )

    def _on_install_snapshot(self, m: InstallSnapshot) -> None:
        meta = m.meta
        if meta.index <= self._log.committed or self._log.matches(meta.index, meta.term):
            self._incoming_snapshot = None
            if meta.index > self._log.committed:
                self._log.commit_to(meta.index)  # we hold it all: just commit
            self._send(AppendResponse(term=self.term, source=self.node_id, target=m.source, index=self._log.committed))
            return
        incoming = self._incoming_snapshot
        if m.offset == 0:
            incoming = _IncomingSnapshot(meta, m.total_bytes, bytearray())
            self._incoming_snapshot = incoming
        elif incoming is None or incoming.meta != meta or incoming.total_bytes != m.total_bytes or (
            m.offset != len(incoming.data)
        ):
            held = len(incoming.data) if incoming is not None and incoming.meta == meta else 0
            self._send(
                SnapshotAck(
                    term=self.term,
                    source=self.node_id,
                    target=m.source,
                    snapshot_index=meta.index,
                    received_bytes=held,
                    gap=m.offset > held,
                )
            )
            return
        assert incoming is not None
        if len(incoming.data) + len(m.chunk) > incoming.total_bytes:
            self._incoming_snapshot = None  # a confused sender: start over when it resends
            return
        incoming.data += m.chunk
        if len(incoming.data) < incoming.total_bytes:
            self._send(
                SnapshotAck(
                    term=self.term,
                    source=self.node_id,
                    target=m.source,
                    snapshot_index=meta.index,
                    received_bytes=len(incoming.data),
                )
            )
            return
        self._incoming_snapshot = None
        snapshot = Snapshot(meta=meta, data=bytes(incoming.data))
        self._log.restore(snapshot)
        self._snapshot = snapshot
        self._handed_index = meta.index
        self._conf_index = meta.index
        self._conf_history = [(meta.index, meta.conf)]
        self._out.snapshot = snapshot
        self._out.restore_snapshot = True
        assert self._log.applied == meta.index
        self._send(AppendResponse(term=self.term, source=self.node_id, target=m.source, index=self._log.committed))

    # -- membership -------------------------------------------------------------------

    def _conf_at(self, index: int) -> ConfState:
        conf = self._conf_history[0][1]
        for at, state in self._conf_history:
            if at <= index:
                conf = state
        return conf

    def _apply_conf_through(self, index: int) -> None:
        """Apply conf change entries up to ``index`` (committed) to the config."""
        assert index <= self._log.committed
        for position in range(max(self._conf_index, self._log.snapshot_index) + 1, index + 1):
            entry = self._log.entry(position)
            if entry.kind == "conf_change":
                self._apply_conf_change(position, decode_conf_change(entry.data))
        self._conf_index = max(self._conf_index, index)

    def _apply_conf_change(self, index: int, change: ConfChange) -> None:
        voters = set(self.voters)
        learners = set(self.learners)
        if change.kind == "add_learner":
            learners.add(change.node_id)
        elif change.kind == "promote":
            learners.discard(change.node_id)
            voters.add(change.node_id)
        else:
            voters.discard(change.node_id)
            learners.discard(change.node_id)
        if change.kind == "remove":
            assert voters, "a change removed the last voter"
        conf = ConfState(tuple(sorted(voters)), tuple(sorted(learners)))
        self._conf_history.append((index, conf))
        if self.role != "leader":
            return
        self._on_conf_applied_as_leader(change)

    def _on_conf_applied_as_leader(self, change: ConfChange) -> None:
        peer = change.node_id
        if change.kind == "remove":
            if peer == self.node_id:
                # Tell the others the removal is committed (they still count
                # us and would wait for our vote otherwise), and hand over
                # to the most caught-up voter: no election timeout lost.
                for other in self._progress:
                    self._send_append(self._now_ms, other, send_empty=True)
                successor = self._most_caught_up_voter()
                if successor is not None:
                    self._send(TimeoutNow(term=self.term, source=self.node_id, target=successor))
                self._become_follower(self._now_ms, self.term, None)
                return
            self._progress.pop(peer, None)
            if peer == self._transferee:
                self._transferee = None
        elif peer != self.node_id:
            progress = self._progress.get(peer)
            if progress is None:
                progress = Progress(match=0, next=self._log.last_index() + 1, is_learner=True)
                self._progress[peer] = progress
            progress.is_learner = peer in self.learners
        if self._maybe_commit(self._now_ms):
            for other in self._progress:
                self._send_append(self._now_ms, other, send_empty=True)
        elif peer in self._progress:
            self._send_append(self._now_ms, peer, send_empty=True)

    # -- sending --------------------------------------------------------------------

    def _send(self, message: RaftMessage) -> None:
        assert message.source == self.node_id
        assert message.target != self.node_id
        self._out.messages.append(message)
