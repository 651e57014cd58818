"""The replicated database of one node: drives ``KvServer`` over the node's transport and disk.

The node hands this service every Raft message and every client KV request
it receives; the service feeds them to the ``KvServer`` core and carries
out the core's effects in contract order:

1. persist (``RaftStorage``: snapshot, entries, hard state in one SQLite
   transaction, fsync'd) — synchronously, in the loop: nothing else of
   this node runs until the disk has it;
2. send Raft messages (to the address membership knows for the target);
3. reply to clients, push watch events;
4. ``advance``.

Client requests that arrive in the same loop iteration are handed to the
core as one round (one Raft entry, one fsync: group commit). While a round
is persisted the loop cannot read sockets, so the next round collects
everything that arrived meanwhile — the batch grows with the load.

The leader also keeps the voter set healthy (``moot.core.voters``): every
``VOTER_PLAN_INTERVAL_MS`` it asks ``plan`` for the next change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from moot.core import kv, tasks, voters, wire
from moot.core.kv_server import (
    ClientReply,
    ClientRequest,
    KvServer,
    KvServerOptions,
    ServerOutput,
    WriteReply,
    WriteRequest,
)
from moot.core.raft import Accepted
from moot.core.raft_config import RaftConfig
from moot.core.raft_messages import ConfChange, ConfState, Entry, HardState, encode_conf_change
from moot.runtime.logs import StructuredLogger, log_event
from moot.runtime.storage import RaftStorage
from moot.runtime.transport import Peer, Transport

VOTER_PLAN_INTERVAL_MS = 250  # how often the leader looks at the voter set
TRANSFER_WAIT_MS_MAX = 2_000  # a leaving leader waits this long for its successor
STORAGE_FILE = "raft.db"


def monotonic_ms() -> int:
    """The clock the cores see, in whole milliseconds."""
    return int(time.monotonic() * 1000)


@dataclass(slots=True)
class _Watch:
    peer: Peer
    watch_id: int
    prefix: bytes
    next_revision: int


class KvService:
    """Raft + KV on one node (see module doc)."""

    def __init__(
        self,
        *,
        node_id: str,
        data_dir: Path,
        transport: Transport,
        address_of: Callable[[str], str | None],
        member_statuses: Callable[[int], Sequence[voters.MemberStatus]],
        logger: StructuredLogger,
        bootstrap: bool,
        raft_config: RaftConfig,
        policy: voters.VoterPolicy,
        options: KvServerOptions | None = None,
    ) -> None:
        self.node_id = node_id
        self.transport = transport
        self.log = logger
        self.policy = policy
        self._address_of = address_of
        self._member_statuses = member_statuses
        self.storage = RaftStorage.open(data_dir / STORAGE_FILE)
        hard_state, snapshot, entries = self.storage.load()
        if hard_state is None and snapshot is None and not entries and bootstrap:
            entries = _bootstrap(self.storage, node_id)
            hard_state, snapshot, entries = self.storage.load()
            log_event(self.log, logging.INFO, "raft_bootstrapped", voters=[node_id])
        self.server = KvServer(
            raft_config,
            node_id=node_id,
            voters=(),
            rng=random.Random(),
            now_ms=monotonic_ms(),
            hard_state=hard_state,
            log_entries=entries,
            snapshot=snapshot,
            options=options,
        )
        self._incoming: list[tuple[int, ClientRequest]] = []
        self._callers: dict[int, tuple[Peer, int]] = {}  # server request id -> (client, its request id)
        self._internal: dict[int, asyncio.Future[ClientReply]] = {}  # this node's own requests
        self._internal_client_id = f"node-{node_id}-{random.getrandbits(48):012x}"
        self._internal_seq = 0
        self._next_request_id = 1
        self._flush_scheduled = False
        self._watches: dict[tuple[str, int], _Watch] = {}
        self._pushed_revision = self.server.state.revision  # watches have been sent everything up to here
        self._wake = asyncio.Event()
        self._next_plan_ms = 0
        self._missing_since: dict[str, int] = {}  # members of the group membership does not know
        self._last_role = self.server.raft.role
        self._last_leader: str | None = None
        self.on_applied: Callable[[list[tasks.TaskEvent], bool], None] | None = None
        """Called after every round with what task commands changed (and
        True if a snapshot replaced the state: start over from the table)."""
        log_event(
            self.log,
            logging.INFO,
            "raft_started",
            term=self.server.raft.term,
            voters=list(self.server.raft.voters),
            learners=list(self.server.raft.learners),
            commit=self.server.raft.commit_index,
            last_index=self.server.raft.last_index,
        )

    # -- inputs from the node ----------------------------------------------------------

    def on_raft_message(self, message: wire.Message) -> None:
        """A Raft message from a peer node."""
        assert isinstance(message, wire.RAFT_MESSAGE_TYPES)
        if message.target != self.node_id:
            return  # meant for an earlier owner of this address
        now = monotonic_ms()
        self._carry_out(self.server.step(now, message))

    def on_peer_lost(self, node_id: str) -> None:
        """A node's connection closed: if it led us, elect sooner (a hint)."""
        raft = self.server.raft
        if raft.role == "follower" and raft.leader_id == node_id:
            self._carry_out(self.server.leader_unreachable(monotonic_ms(), node_id))

    def on_kv_call(self, peer: Peer, message: wire.KvCall) -> None:
        """A client's request; answered in the next round."""
        request_id = self._enqueue(message.request)
        self._callers[request_id] = (peer, message.request_id)

    def _enqueue(self, request: ClientRequest) -> int:
        """Queue a request for the next round (one Raft entry); its server id."""
        request_id = self._next_request_id
        self._next_request_id += 1
        self._incoming.append((request_id, request))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return request_id

    async def write_internal(self, command: kv.Command, *, timeout_s: float = 10.0) -> kv.WriteResult | None:
        """A write of this node's own (e.g. the object collector deleting a
        record), through Raft like any client's. Only on the leader; None if
        this node is not the leader or the write's outcome is not known."""
        if self.server.raft.role != "leader":
            return None
        self._internal_seq += 1
        proposal = kv.Proposal(
            client_id=self._internal_client_id, seq=self._internal_seq, ack=self._internal_seq, command=command
        )
        future: asyncio.Future[ClientReply] = asyncio.get_running_loop().create_future()
        request_id = self._enqueue(WriteRequest(proposal))
        self._internal[request_id] = future
        try:
            async with asyncio.timeout(timeout_s):
                reply = await future
        except TimeoutError:
            return None
        finally:
            self._internal.pop(request_id, None)
        return reply.result if isinstance(reply, WriteReply) else None

    def on_watch(self, peer: Peer, message: wire.WatchRequest) -> None:
        """Start streaming events to a client."""
        state = self.server.state
        start = message.start_revision or state.revision + 1
        key = (peer.remote_address, message.watch_id)
        watch = _Watch(peer, message.watch_id, message.prefix, start)
        peer.reply(wire.WatchAccepted(request_id=message.request_id, watch_id=message.watch_id, revision=state.revision))
        self._watches[key] = watch
        self._push_watch(key, watch)

    def on_watch_cancel(self, peer: Peer, message: wire.WatchCancel) -> None:
        """The client stopped a watch."""
        self._watches.pop((peer.remote_address, message.watch_id), None)

    def leader_ready(self) -> bool:
        """This node leads and its state is the group's (``KvServer.leader_ready``)."""
        return self.server.leader_ready()

    def status(self, request_id: int, address: str) -> wire.StatusReply:
        """This node's view of the group, for ``moot status``."""
        raft = self.server.raft
        return wire.StatusReply(
            request_id=request_id,
            node_id=self.node_id,
            address=address,
            role=raft.role,
            term=raft.term,
            leader_id=raft.leader_id,
            voters=raft.voters,
            learners=raft.learners,
            commit_index=raft.commit_index,
            applied_index=raft.applied_index,
            last_index=raft.last_index,
            snapshot_index=raft.first_index - 1,
            revision=self.server.state.revision,
            keys=len(self.server.state.range(b"", kv.RANGE_LIMIT_MAX)[0]),
        )

    # -- the timer loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Fire the core's timers and the voter plan until cancelled."""
        while True:
            delay_ms = min(self.server.next_deadline_ms(), self._next_plan_ms_if_leader()) - monotonic_ms()
            if delay_ms > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay_ms / 1000):
                        await self._wake.wait()
            now = monotonic_ms()
            if now >= self.server.next_deadline_ms():
                self._carry_out(self.server.tick(now))
            if self.server.raft.role == "leader" and now >= self._next_plan_ms:
                self._next_plan_ms = now + VOTER_PLAN_INTERVAL_MS
                self._plan_voters(now)

    def _next_plan_ms_if_leader(self) -> int:
        return self._next_plan_ms if self.server.raft.role == "leader" else 2**62

    async def hand_over(self) -> None:
        """Before leaving: if we lead, hand leadership to the best other voter."""
        raft = self.server.raft
        if raft.role != "leader" or len(raft.voters) < 2:
            return
        others = [v for v in raft.voters if v != self.node_id]
        target = max(others, key=lambda v: ((p.match if (p := raft.progress(v)) else 0), v))
        self._carry_out(self.server.transfer_leadership(monotonic_ms(), target))
        deadline = time.monotonic() + TRANSFER_WAIT_MS_MAX / 1000
        while self.server.raft.role == "leader" and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # polling our own role with a deadline
        log_event(self.log, logging.INFO, "raft_handed_over", target=target, role=self.server.raft.role)

    def close(self) -> None:
        """Close the storage."""
        self.storage.close()

    # -- effects -------------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_scheduled = False
        requests, self._incoming = self._incoming, []
        if requests:
            self._carry_out(self.server.handle(monotonic_ms(), requests))

    def _carry_out(self, out: ServerOutput) -> None:
        raft_out = out.raft
        self.storage.persist(hard_state=raft_out.hard_state, entries=raft_out.entries, snapshot=raft_out.snapshot)
        # A new role is noted (and stamped on the timeline) before the
        # messages it causes go out: a follower's "leader is X" then sorts
        # after X's "I lead" in hybrid-clock order.
        self._note_role()
        for message in raft_out.messages:
            address = self._address_of(message.target)
            if address is not None:
                self.transport.send(address, message)
        for request_id, reply in out.replies:
            internal = self._internal.pop(request_id, None)
            if internal is not None:
                if not internal.done():
                    internal.set_result(reply)
                continue
            caller = self._callers.pop(request_id, None)
            if caller is None:
                continue
            peer, client_request_id = caller
            leader = self.server.raft.leader_id
            peer.reply(
                wire.KvAnswer(
                    request_id=client_request_id,
                    reply=reply,
                    leader_address=self._address_of(leader) if leader else None,
                )
            )
        self.server.advance(out)
        task_events = self.server.state.take_task_events()
        if self.on_applied is not None and (task_events or raft_out.restore_snapshot or raft_out.committed_entries):
            self.on_applied(task_events, raft_out.restore_snapshot)
        if any(entry.kind == "conf_change" for entry in raft_out.committed_entries):
            self._next_plan_ms = 0  # one change done: plan the next at once
        revision = self.server.state.revision
        if self._watches and (revision != self._pushed_revision or raft_out.restore_snapshot):
            self._push_watches()
        self._pushed_revision = revision
        if self.server.compact_due():
            compact = self.server.compact(monotonic_ms())
            self._carry_out(compact)
        self._wake.set()

    def _note_role(self) -> None:
        raft = self.server.raft
        if raft.role != self._last_role or raft.leader_id != self._last_leader:
            self._last_role = raft.role
            self._last_leader = raft.leader_id
            log_event(self.log, logging.INFO, "raft_role", role=raft.role, term=raft.term, leader=raft.leader_id)
            if raft.role == "leader":
                # A new leader hears from every live member within a
                # heartbeat or two: plan only once it has.
                self._next_plan_ms = monotonic_ms() + raft.config.election_timeout_ms

    # -- watches ---------------------------------------------------------------------------

    def _push_watches(self) -> None:
        for key, watch in list(self._watches.items()):
            self._push_watch(key, watch)

    def _push_watch(self, key: tuple[str, int], watch: _Watch) -> None:
        state = self.server.state
        while watch.next_revision <= state.revision:
            try:
                events = state.events(watch.next_revision, watch.prefix, wire.WATCH_EVENTS_PER_MESSAGE_MAX)
            except kv.Compacted as error:
                watch.peer.reply(
                    wire.WatchEvents(
                        watch_id=watch.watch_id, error=str(error), compacted_revision=error.compacted_revision
                    )
                )
                self._watches.pop(key, None)
                return
            if not events:
                watch.next_revision = state.revision + 1
                return
            if not watch.peer.reply(wire.WatchEvents(watch_id=watch.watch_id, events=tuple(events))):
                # The client is gone or not reading: it resumes from its last revision elsewhere.
                self._watches.pop(key, None)
                return
            watch.next_revision = events[-1].revision + 1

    # -- voters ----------------------------------------------------------------------------

    def _plan_voters(self, now: int) -> None:
        raft = self.server.raft
        conf = raft_conf(raft.voters, raft.learners)
        caught_up = {learner: raft.caught_up(learner) for learner in raft.learners}
        responsive = {}
        for member in (*raft.voters, *raft.learners):
            progress = raft.progress(member)
            responsive[member] = progress is not None and now - progress.last_heard_ms <= raft.config.election_timeout_ms
        statuses = list(self._member_statuses(now))
        known = {status.node_id for status in statuses}
        for node_id in (*raft.voters, *raft.learners):
            if node_id not in known:
                since = self._missing_since.setdefault(node_id, now)
                statuses.append(voters.MemberStatus(node_id, "missing", since, {}))
        for node_id in [n for n in self._missing_since if n in known]:
            del self._missing_since[node_id]
        change = voters.plan(
            conf,
            leader_id=self.node_id,
            members=statuses,
            caught_up=caught_up,
            now_ms=now,
            policy=self.policy,
            responsive=responsive,
        )
        if change is None:
            return
        out = self.server.propose_conf_change(now, change)
        accepted = isinstance(out.raft.result, Accepted)
        self._carry_out(out)
        if accepted:
            log_event(self.log, logging.INFO, "raft_conf_change", kind=change.kind, member=change.node_id)


def raft_conf(voter_ids: tuple[str, ...], learner_ids: tuple[str, ...]) -> ConfState:
    """The group's configuration as the planner takes it."""
    return ConfState(voters=voter_ids, learners=learner_ids)


def _bootstrap(storage: RaftStorage, node_id: str) -> list[Entry]:
    """Found a new group with this node as its only voter. The configuration
    is written as the first two log entries (committed), so every node that
    later receives the log from index 1 rebuilds the same configuration."""
    entries = [
        Entry(term=1, index=1, kind="conf_change", data=encode_conf_change(ConfChange("add_learner", node_id))),
        Entry(term=1, index=2, kind="conf_change", data=encode_conf_change(ConfChange("promote", node_id))),
    ]
    storage.persist(hard_state=HardState(term=1, vote="", commit=2), entries=entries, snapshot=None)
    return entries
