"""Repair and rebalancing of one node's chunks: who asks whom, who pushes, what is dropped (sans-IO).

One ``RepairPlanner`` per node. It knows the node's local chunk inventory
(``add_local``/``remove_local``), the live members (``set_members``: from
membership, alive and suspect members, this node always included) and what
peers answered (``on_has_reply``, ``on_push_result``). ``tick(now_ms)``
returns ``Effects``: queries to send, pushes to make, local copies to
delete. It does no I/O and reads no clock.

Rules (R = ``replicas_for(live count, config.replicas)``):

1. **Desired holders** of chunk c are ``holders(c, live, R)``
   (``moot.core.placement``: rendezvous hashing, region-spread).
2. **Ask.** For each chunk it holds, a node asks every desired holder other
   than itself whose answer it does not know. Answers expire after
   ``knowledge_ttl_ms`` (then it asks again: this is the anti-entropy
   that notices lost or corrupt copies); an unanswered question is asked
   again after ``query_timeout_ms``. Only holders ask, so a question is
   never about a chunk the asker lacks.
3. **Repair owner.** Of the nodes known to hold c (this node included),
   the one ranked highest in ``rank(c, live)`` is its repair owner. Only
   the owner pushes c, and only to desired holders that answered
   "absent". Every holder asks the same desired holders, so when any
   desired holder holds c all holders agree on the owner: one node repairs
   each chunk, and if it dies the next in rank takes over (membership
   removes it from ``live``). When no desired holder holds c yet (a
   large membership change), each holder owns it in its own view and may
   push once; the first copy to land makes a desired holder the owner.
4. **No double push.** A push in flight to a target is not repeated before
   ``push_timeout_ms`` (a failed push backs off the same way).
5. **Drop.** A copy on a node that is not a desired holder is dropped only
   when every desired holder confirmed "present" within
   ``knowledge_ttl_ms``. A desired holder never drops, so the last copies
   are never dropped: with one ranking order, the highest-ranked holder
   would need R higher-ranked holders to confirm, which it cannot have.
6. **Corruption.** A chunk found corrupt is deleted by the runtime, which
   then calls ``remove_local``; its owner's next question finds it absent
   and pushes it back.
7. **Bounded work.** Each tick examines at most
   ``scan_chunks_per_tick_max`` chunks: first those needing attention
   (their holders changed because a member left, or a peer answered
   "absent"), then the next ones of a cursor cycling through the
   inventory, so every chunk is examined at least once per pass and no
   tick rescans everything (a pass starts at most every
   ``sweep_pass_ms_min``). Queries, pushes and drops per tick have their
   own ``*_max``. A member joining is rebalancing, not repair: the cursor
   finds the chunks it should hold.

Effects contract: ``drops`` are already forgotten by the planner; the
runtime deletes those files (order with the sends does not matter: a
dropped chunk had R confirmed copies elsewhere). Queries and pushes may go
out in any order; their outcomes come back through ``on_has_reply`` and
``on_push_result``. A query or push that gets no answer needs no call:
the timeouts above cover it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from moot.core.placement import Candidate, rank, replicas_for


@dataclass(frozen=True, slots=True)
class RepairConfig:
    """Tuning of repair; times are the node's local monotonic milliseconds."""

    replicas: int = 3
    """Copies of each chunk (R). Three, as GFS, HDFS and Ceph default to:
    survives two concurrent disk losses."""

    tick_interval_ms: int = 1_000
    """Period of ``tick`` when nothing is urgent."""

    attention_delay_ms: int = 50
    """How soon after news (a member left, a copy is absent) ``tick`` runs:
    short, but long enough to batch a burst of replies into one tick."""

    knowledge_ttl_ms: int = 60_000
    """How long an answer ("present"/"absent") is trusted. Also the period of
    the anti-entropy questions, so it bounds how long a lost copy goes
    unnoticed; a minute costs each chunk R - 1 questions per minute."""

    query_timeout_ms: int = 5_000
    """An unanswered question is asked again after this: many round trips."""

    push_timeout_ms: int = 30_000
    """A push is not repeated to the same target before this (a 64 MiB chunk
    over a slow WAN link takes seconds)."""

    scan_chunks_per_tick_max: int = 1_000
    """Chunks examined per tick: R SHA-256s each per live member. 100,000
    chunks are all examined within 100 ticks."""

    sweep_pass_ms_min: int = 1_000
    """A new pass of the cursor over the inventory starts at most this often
    (one tick: a small inventory is examined once per tick, not several
    times). Examining a chunk is cheap while membership is unchanged (its
    ranking is cached). Keep it below ``knowledge_ttl_ms``: the pass is
    what re-asks expired answers and retries lost pushes."""

    query_chunks_per_tick_max: int = 4_096
    """Chunk ids asked about per tick, over all peers."""

    pushes_per_tick_max: int = 16
    """Pushes started per tick: repair traffic must not starve clients."""

    drops_per_tick_max: int = 256
    """Local copies dropped per tick."""

    def validate(self) -> None:
        """Raise ValueError naming the first field out of range."""
        if self.replicas < 1:
            raise ValueError("RepairConfig.replicas must be >= 1")
        for name in ("tick_interval_ms", "attention_delay_ms", "knowledge_ttl_ms", "query_timeout_ms",
                     "push_timeout_ms"):
            if getattr(self, name) < 1:
                raise ValueError(f"RepairConfig.{name} must be >= 1")
        if not 0 <= self.sweep_pass_ms_min < self.knowledge_ttl_ms:
            raise ValueError("RepairConfig.sweep_pass_ms_min must be within [0, knowledge_ttl_ms)")
        if self.attention_delay_ms > self.tick_interval_ms:
            raise ValueError("RepairConfig.attention_delay_ms must be <= tick_interval_ms")
        if self.scan_chunks_per_tick_max < 1 or self.drops_per_tick_max < 1:
            raise ValueError("RepairConfig.scan_chunks_per_tick_max and drops_per_tick_max must be >= 1")
        # One examined chunk adds up to R queries and R pushes.
        if self.query_chunks_per_tick_max < self.replicas or self.pushes_per_tick_max < self.replicas:
            raise ValueError("RepairConfig.query_chunks_per_tick_max and pushes_per_tick_max must be >= replicas")

    @classmethod
    def lan(cls) -> RepairConfig:
        """One datacenter: the defaults."""
        return cls()

    @classmethod
    def wan(cls) -> RepairConfig:
        """Regions over the internet: slower pushes, longer patience."""
        return cls(query_timeout_ms=10_000, push_timeout_ms=120_000, knowledge_ttl_ms=120_000)

    @classmethod
    def sim(cls) -> RepairConfig:
        """The simulator: small inventories, short timers, so repair fits a short run."""
        return cls(
            tick_interval_ms=500,
            knowledge_ttl_ms=5_000,
            query_timeout_ms=1_000,
            push_timeout_ms=2_000,
            scan_chunks_per_tick_max=256,
        )


@dataclass(frozen=True, slots=True)
class Effects:
    """What a tick decided (see the module doc for the contract)."""

    queries: dict[str, list[str]]
    """Per peer node id, the chunk ids to ask it about ("do you hold these?")."""

    pushes: list[tuple[str, str]]
    """``(chunk_id, target_node_id)``: send a copy of our chunk to the target."""

    drops: list[str]
    """Local chunk ids to delete: extra copies, already forgotten here."""

    next_deadline_ms: int
    """When to call ``tick`` next (local ms)."""


class _Chunk:
    """What this node knows about one local chunk (dicts created on first use: 100k of these)."""

    __slots__ = ("asked", "desired", "known", "pushed", "ranking", "version")

    def __init__(self) -> None:
        self.desired: tuple[str, ...] = ()
        # The ranking's head, down to the desired holders and this node,
        # computed for membership ``version`` (-1: never): rank() costs a
        # SHA-256 per member, so it runs again only when membership changed.
        self.ranking: tuple[str, ...] = ()
        self.version = -1
        self.known: dict[str, tuple[bool, int]] | None = None  # node -> (present, answered at)
        self.asked: dict[str, int] | None = None  # node -> asked at
        self.pushed: dict[str, int] | None = None  # target -> pushed at


class RepairPlanner:
    """One node's repair decisions (module doc)."""

    def __init__(self, config: RepairConfig, *, node_id: str, region: str = "", now_ms: int = 0) -> None:
        config.validate()
        self.config = config
        self.node_id = node_id
        self.region = region
        self._chunks: dict[str, _Chunk] = {}
        # The inventory as a list (the cursor's order) plus each id's position.
        self._order: list[str] = []
        self._position: dict[str, int] = {}
        self._cursor = 0
        self._pass_started_ms = now_ms
        self._attention: dict[str, None] = {}  # an ordered set
        # Reverse index: node -> local chunks it was a desired holder of when last examined.
        self._desired_of: dict[str, dict[str, None]] = {}
        self._live: dict[str, str] = {node_id: region}
        self._members_changed_ms = now_ms  # confirmations older than this do not allow a drop
        self._candidates: tuple[Candidate, ...] = (Candidate(node_id, region),)
        self._version = 0  # bumped whenever the live set changes
        self._next_tick_ms = now_ms + config.tick_interval_ms

    # -- inputs ---------------------------------------------------------------------

    def add_local(self, chunk_id: str) -> None:
        """A chunk is now durably stored here (written, pushed to us, or found at boot)."""
        if chunk_id in self._chunks:
            return
        self._chunks[chunk_id] = _Chunk()
        self._position[chunk_id] = len(self._order)
        self._order.append(chunk_id)
        assert len(self._order) == len(self._chunks)

    def remove_local(self, chunk_id: str) -> None:
        """A chunk is gone from here (deleted, or found corrupt and deleted)."""
        state = self._chunks.pop(chunk_id, None)
        if state is None:
            return
        self._forget(chunk_id, state)

    def set_members(self, now_ms: int, candidates: Sequence[Candidate]) -> None:
        """The live members changed (alive and suspect ones; this node is always included)."""
        live = {candidate.node_id: candidate.region for candidate in candidates}
        assert len(live) == len(candidates), "duplicate node ids"
        live[self.node_id] = self.region
        if live == self._live:
            return
        # A member that left (or moved region) changes the holders of every
        # chunk it was a desired holder of: those need repair now.
        for node_id in sorted(self._live):
            if live.get(node_id) != self._live[node_id]:
                chunk_ids = self._desired_of.get(node_id)
                if chunk_ids:
                    self._attention.update(chunk_ids)
        self._live = live
        self._members_changed_ms = now_ms
        self._version += 1
        self._candidates = tuple(Candidate(node_id, live[node_id]) for node_id in sorted(live))
        if self._attention:
            self._hurry(now_ms)

    def on_has_reply(
        self, now_ms: int, node_id: str, chunk_ids_present: Iterable[str], chunk_ids_absent: Iterable[str]
    ) -> None:
        """``node_id`` answered which of the asked chunks it holds."""
        hurry = False
        for chunk_id in chunk_ids_present:
            state = self._chunks.get(chunk_id)
            if state is None:
                continue  # dropped since we asked
            self._learn(state, node_id, True, now_ms)
            if self.node_id not in state.desired:
                self._attention[chunk_id] = None  # maybe droppable now
                hurry = True
        for chunk_id in chunk_ids_absent:
            state = self._chunks.get(chunk_id)
            if state is None:
                continue
            self._learn(state, node_id, False, now_ms)
            if node_id in state.desired:
                self._attention[chunk_id] = None  # maybe ours to push
                hurry = True
        if hurry:
            self._hurry(now_ms)

    def on_push_result(self, now_ms: int, chunk_id: str, target_node_id: str, stored: bool) -> None:
        """A push we made finished: the target stored the chunk durably, or refused/failed."""
        state = self._chunks.get(chunk_id)
        if state is None:
            return
        if stored:
            if state.pushed is not None:
                state.pushed.pop(target_node_id, None)
            self._learn(state, target_node_id, True, now_ms)
            if self.node_id not in state.desired:
                self._attention[chunk_id] = None
                self._hurry(now_ms)
        else:
            # Keep the in-flight mark: the retry waits push_timeout_ms (backoff).
            self._learn(state, target_node_id, False, now_ms)

    def answer_has_query(self, chunk_ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """The reply to a peer's question: ``(present, absent)`` among ``chunk_ids``."""
        present: list[str] = []
        absent: list[str] = []
        for chunk_id in chunk_ids:
            (present if chunk_id in self._chunks else absent).append(chunk_id)
        return present, absent

    def tick(self, now_ms: int) -> Effects:
        """Examine a bounded batch of chunks and say what to do (module doc)."""
        config = self.config
        replicas = self.replicas_effective
        batch = _Batch()
        examined = 0
        while self._attention and examined < config.scan_chunks_per_tick_max and batch.has_room(config, replicas):
            chunk_id = next(iter(self._attention))
            del self._attention[chunk_id]
            if chunk_id in self._chunks:
                self._examine(chunk_id, now_ms, replicas, batch)
                examined += 1
        swept = 0
        inventory = len(self._order)
        while (
            swept < inventory
            and self._order
            and examined < config.scan_chunks_per_tick_max
            and batch.has_room(config, replicas)
        ):
            if self._cursor >= len(self._order):
                if now_ms - self._pass_started_ms < config.sweep_pass_ms_min:
                    break  # this pass is done; the next starts later
                self._cursor = 0
                self._pass_started_ms = now_ms
            chunk_id = self._order[self._cursor]
            self._cursor += 1
            swept += 1
            examined += 1
            self._examine(chunk_id, now_ms, replicas, batch)
        assert len(batch.drops) <= config.drops_per_tick_max
        assert len(batch.pushes) <= config.pushes_per_tick_max
        self._next_tick_ms = now_ms + config.tick_interval_ms
        return Effects(batch.queries, batch.pushes, batch.drops, self._next_tick_ms)

    # -- queries --------------------------------------------------------------------

    def next_deadline_ms(self) -> int:
        """When ``tick`` must next be called (local ms)."""
        return self._next_tick_ms

    @property
    def replicas_effective(self) -> int:
        """R now: ``config.replicas``, or fewer if fewer members live (the runtime warns)."""
        return replicas_for(len(self._live), self.config.replicas)

    @property
    def local_count(self) -> int:
        """Chunks in the local inventory."""
        return len(self._chunks)

    def holds(self, chunk_id: str) -> bool:
        """Whether ``chunk_id`` is in the local inventory."""
        return chunk_id in self._chunks

    def local_chunk_ids(self) -> list[str]:
        """The local inventory (cursor order: deterministic)."""
        return list(self._order)

    def live_candidates(self) -> tuple[Candidate, ...]:
        """The live members as last set, this node included, sorted by node id."""
        return self._candidates

    # -- examining one chunk --------------------------------------------------------

    def _examine(self, chunk_id: str, now_ms: int, replicas: int, batch: _Batch) -> None:
        state = self._chunks[chunk_id]
        if state.version != self._version:
            full = rank(chunk_id, self._candidates)
            head = max(replicas, full.index(self.node_id) + 1)
            state.ranking = tuple(full[:head])
            state.version = self._version
            desired = state.ranking[:replicas]
            if desired != state.desired:
                self._reindex(chunk_id, state.desired, desired)
                state.desired = desired
        ranking = state.ranking
        desired = state.desired
        self._expire(state, now_ms)
        known = state.known or {}
        self._ask(chunk_id, state, desired, known, now_ms, batch)
        if self._owner(ranking, known) == self.node_id:
            self._push(chunk_id, state, desired, known, now_ms, batch)
        if self._drop_allowed(desired, known) and len(batch.drops) < self.config.drops_per_tick_max:
            batch.drops.append(chunk_id)
            del self._chunks[chunk_id]
            self._forget(chunk_id, state)

    def _ask(
        self,
        chunk_id: str,
        state: _Chunk,
        desired: tuple[str, ...],
        known: dict[str, tuple[bool, int]],
        now_ms: int,
        batch: _Batch,
    ) -> None:
        for node_id in desired:
            if node_id == self.node_id or node_id in known:
                continue
            if state.asked is not None and node_id in state.asked:
                continue  # asked, no answer yet, not timed out
            batch.queries.setdefault(node_id, []).append(chunk_id)
            batch.query_count += 1
            if state.asked is None:
                state.asked = {}
            state.asked[node_id] = now_ms

    def _owner(self, ranking: tuple[str, ...], known: dict[str, tuple[bool, int]]) -> str:
        """The highest-ranked node known to hold the chunk (this node holds it)."""
        for node_id in ranking:
            if node_id == self.node_id:
                return node_id
            answer = known.get(node_id)
            if answer is not None and answer[0]:
                return node_id
        raise AssertionError(f"{self.node_id} is not among the live candidates")

    def _push(
        self,
        chunk_id: str,
        state: _Chunk,
        desired: tuple[str, ...],
        known: dict[str, tuple[bool, int]],
        now_ms: int,
        batch: _Batch,
    ) -> None:
        for node_id in desired:
            answer = known.get(node_id)
            if answer is None or answer[0]:
                continue
            if state.pushed is not None and node_id in state.pushed:
                continue  # in flight (or backing off after a failure)
            batch.pushes.append((chunk_id, node_id))
            if state.pushed is None:
                state.pushed = {}
            state.pushed[node_id] = now_ms

    def _drop_allowed(self, desired: tuple[str, ...], known: dict[str, tuple[bool, int]]) -> bool:
        """An extra copy goes only once every desired holder confirmed its own (never the last copies)."""
        if self.node_id in desired:
            return False
        for node_id in desired:
            answer = known.get(node_id)
            # Only confirmations given since our view of the members last
            # changed: two holders with different views must not each count
            # the other's copy as the one that lets them drop their own.
            if answer is None or not answer[0] or answer[1] < self._members_changed_ms:
                return False
        return True

    def _expire(self, state: _Chunk, now_ms: int) -> None:
        config = self.config
        if state.known:
            for node_id in [n for n, (_, at_ms) in state.known.items() if now_ms - at_ms >= config.knowledge_ttl_ms]:
                del state.known[node_id]
        if state.asked:
            for node_id in [n for n, at_ms in state.asked.items() if now_ms - at_ms >= config.query_timeout_ms]:
                del state.asked[node_id]
        if state.pushed:
            for node_id in [n for n, at_ms in state.pushed.items() if now_ms - at_ms >= config.push_timeout_ms]:
                del state.pushed[node_id]

    # -- bookkeeping -----------------------------------------------------------------

    def _learn(self, state: _Chunk, node_id: str, present: bool, now_ms: int) -> None:
        if state.known is None:
            state.known = {}
        state.known[node_id] = (present, now_ms)
        if state.asked is not None:
            state.asked.pop(node_id, None)

    def _hurry(self, now_ms: int) -> None:
        self._next_tick_ms = min(self._next_tick_ms, now_ms + self.config.attention_delay_ms)

    def _reindex(self, chunk_id: str, old: tuple[str, ...], new: tuple[str, ...]) -> None:
        for node_id in old:
            if node_id not in new:
                chunk_ids = self._desired_of.get(node_id)
                if chunk_ids is not None:
                    chunk_ids.pop(chunk_id, None)
                    if not chunk_ids:
                        del self._desired_of[node_id]
        for node_id in new:
            if node_id not in old:
                self._desired_of.setdefault(node_id, {})[chunk_id] = None

    def _forget(self, chunk_id: str, state: _Chunk) -> None:
        """Remove every trace of a chunk that left the inventory (``_chunks`` already updated)."""
        self._reindex(chunk_id, state.desired, ())
        self._attention.pop(chunk_id, None)
        position = self._position.pop(chunk_id)
        order = self._order
        last_index = len(order) - 1
        # Keep [0, cursor) the chunks already visited in this pass.
        if position < self._cursor:
            # Fill the hole with the last visited chunk; the hole moves to the cursor.
            self._cursor -= 1
            if position != self._cursor:
                moved = order[self._cursor]
                order[position] = moved
                self._position[moved] = position
            position = self._cursor
        if position != last_index:
            moved = order[last_index]
            order[position] = moved
            self._position[moved] = position
        order.pop()
        assert len(order) == len(self._chunks) == len(self._position)


class _Batch:
    """What one tick has decided so far."""

    __slots__ = ("drops", "pushes", "queries", "query_count")

    def __init__(self) -> None:
        self.queries: dict[str, list[str]] = {}
        self.query_count = 0
        self.pushes: list[tuple[str, str]] = []
        self.drops: list[str] = []

    def has_room(self, config: RepairConfig, replicas: int) -> bool:
        """Whether one more chunk's worth (up to R queries and R pushes) fits the per-tick caps."""
        return (
            self.query_count + replicas <= config.query_chunks_per_tick_max
            and len(self.pushes) + replicas <= config.pushes_per_tick_max
            and len(self.drops) < config.drops_per_tick_max
        )


__all__ = ["Effects", "RepairConfig", "RepairPlanner"]
