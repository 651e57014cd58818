"""Gossip membership and failure detection: SWIM with Lifeguard, sans-IO.

The state machine of one node's view of the federation. No I/O, no clock, no
global randomness: every method takes ``now_ms`` (the node's local clock in
milliseconds) and returns an ``Output`` of effects for the caller to carry out.

Rules (SWIM, Das et al. 2002; Lifeguard, Dadgar et al. 2018; memberlist):

- **Probing.** Every probe period a node pings the next member of a shuffled
  round-robin list. No ack within the probe timeout: it asks
  ``indirect_checks`` other members to ping the target for it (ping-req). No
  ack by the end of the period: it *suspects* the target.
- **Suspicion.** A suspected member has a suspicion timeout to refute; when
  it expires it is declared *dead*. With Lifeguard the timeout shrinks as
  independent members confirm the suspicion (``suspicion.py``).
- **Incarnations.** Only the member itself raises its incarnation, to refute
  a suspicion or death rumour about itself. For one member, a message wins
  over the current state when (alive) its incarnation is strictly higher, or
  (suspect, dead) its incarnation is at least the current one. Dead and left
  are final for an incarnation.
- **Dissemination.** State changes are queued (``broadcast_queue.py``) and
  piggybacked on probes and acks and on gossip rounds to random members, each
  sent about ``retransmit_mult * log10(n + 1)`` times.
- **Anti-entropy.** Push-pull full state exchange on join and periodically.
  A remote "dead" only makes us *suspect* (the member may refute).
- **Lifeguard.** Local health multiplier (``awareness.py``) stretches our
  own probing when we seem slow; indirect helpers answer nack when the target
  stays silent so we can tell our slowness from the target's; a probe to a
  suspected member carries the suspicion (buddy system) so it refutes fast.
- **Vivaldi.** Direct acks carry the responder's coordinate; the RTT sample
  updates ours. Coordinates spread by gossip and push-pull.

Effects contract (``Output``), carried out in this order by every driver:

1. if ``incarnation`` is not None, persist it durably (our incarnation must
   never go backwards across a restart, or a refutation could be lost);
2. send ``messages``;
3. hand ``events`` to observers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from moot.core import wire
from moot.core.awareness import Awareness
from moot.core.broadcast_queue import BroadcastQueue
from moot.core.member_table import MemberTable
from moot.core.membership_config import MembershipConfig
from moot.core.suspicion import Suspicion
from moot.core.vivaldi import Vivaldi, estimate_rtt_ms, is_compatible, is_valid

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Iterable, Sequence

MemberState = Literal["alive", "suspect", "dead", "left"]
EventKind = Literal["joined", "alive", "suspect", "dead", "left", "updated"]

# Bounds on bookkeeping a peer could otherwise grow without limit.
RELAYS_MAX = 1_024  # indirect probes we relay at once for others
BROADCAST_ITEMS_MAX = 4_096  # queued membership gossip items
COORDINATE_ITEMS_MAX = 1_024  # queued coordinate gossip items
SEEDS_MAX = 64  # join addresses we keep retrying
SCAN_MEMBERS_MAX = 64  # below this, random picks scan the whole view
# Above this many members the probe order is a random affine permutation of
# the member table's slots (O(1) memory and setup) instead of a shuffled
# list of ids (O(n) per node): same guarantee, every member once per round.
PROBE_LIST_MEMBERS_MAX = 1_024


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` to the member listening at ``address``."""

    address: str
    message: wire.MembershipMessage


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """A change in our view of one member."""

    kind: EventKind
    node_id: str
    address: str
    incarnation: int
    at_ms: int


@dataclass(slots=True)
class Output:
    """Effects of one call, in contract order: persist, send, notify."""

    incarnation: int | None = None
    messages: list[Send] = field(default_factory=list)
    events: list[MemberEvent] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class MemberView:
    """A read-only snapshot of one member as this node sees it."""

    node_id: str
    address: str
    state: MemberState
    incarnation: int
    labels: dict[str, str]
    cpus: int
    coordinate: wire.Coordinate | None
    state_changed_ms: int


@dataclass(slots=True)
class _Member:
    node_id: str
    address: str
    incarnation: int
    state: MemberState
    labels: dict[str, str]
    cpus: int
    state_changed_ms: int
    coordinate: wire.Coordinate | None = None

    @classmethod
    def from_alive(cls, alive: wire.Alive, now_ms: int) -> _Member:
        """A newly learned member, alive as ``alive`` says."""
        return cls(
            node_id=alive.node_id,
            address=alive.address,
            incarnation=alive.incarnation,
            state="alive",
            labels=dict(alive.labels),
            cpus=alive.cpus,
            state_changed_ms=now_ms,
        )


@dataclass(frozen=True, slots=True)
class SharedMembers:
    """A bootstrapped membership many simulated nodes share copy-on-write."""

    records: dict[str, _Member]
    ids: list[str]

    @classmethod
    def of(cls, members: Sequence[wire.Alive], now_ms: int) -> SharedMembers:
        """All ``members`` alive, as if every node had already joined.

        Every node built on it counts all of them alive, itself included.
        """
        records = {alive.node_id: _Member.from_alive(alive, now_ms) for alive in members}
        return cls(records, list(records))


@dataclass(slots=True)
class _Probe:
    """The probe under way in the current period."""

    target_id: str
    target_incarnation: int
    seq: int
    started_ms: int
    direct_deadline_ms: int
    end_deadline_ms: int
    indirect_sent: bool = False
    nacks_expected: int = 0
    nacks_received: int = 0
    acked: bool = False


@dataclass(slots=True)
class _Relay:
    """An indirect probe we run on behalf of ``source_address``."""

    source_address: str
    source_seq: int
    want_nack: bool
    deadline_ms: int


class Membership:
    """One node's SWIM/Lifeguard membership state machine (see module doc)."""

    def __init__(
        self,
        config: MembershipConfig,
        *,
        node_id: str,
        address: str,
        labels: dict[str, str] | None = None,
        cpus: int = 0,
        rng: random.Random,
        now_ms: int,
        incarnation: int = 0,
        shared_members: SharedMembers | None = None,
    ) -> None:
        """Start a node's view holding only itself.

        ``incarnation`` is the last incarnation this node id persisted (0 if
        never); the node starts at one more, so a restarted node outranks any
        rumour about its previous life. The first ``Output`` asks to persist it.

        ``shared_members`` (simulator only) starts the view from a bootstrapped
        membership shared, copy-on-write, by many simulated nodes.
        """
        config.validate()
        assert node_id
        assert address
        assert incarnation >= 0
        self.config = config
        self.node_id = node_id
        self.address = address
        self._rng = rng
        self._awareness = Awareness(config.awareness_max_multiplier)
        self._vivaldi = Vivaldi(config.vivaldi, rng)
        self._members: MemberTable[_Member] = MemberTable(
            shared_members.records if shared_members else None,
            shared_members.ids if shared_members else None,
        )
        me = _Member(
            node_id=node_id,
            address=address,
            incarnation=incarnation + 1,
            state="alive",
            labels=dict(labels or {}),
            cpus=cpus,
            state_changed_ms=now_ms,
        )
        if self._members.get(node_id) is None:
            self._members.add(me)
        else:
            mine = self._members.writable(node_id)
            mine.incarnation = max(mine.incarnation, me.incarnation)
            mine.state_changed_ms = now_ms
        self._suspicions: dict[str, Suspicion] = {}
        self._dead_since_ms: dict[str, int] = {}  # dead or left members -> since when
        self._rtt_peers: dict[str, None] = {}  # members whose first ack (handshake-inflated) we skipped
        self._broadcasts: BroadcastQueue[wire.GossipItem] = BroadcastQueue(BROADCAST_ITEMS_MAX)
        self._coordinate_broadcasts: BroadcastQueue[wire.GossipItem] = BroadcastQueue(
            COORDINATE_ITEMS_MAX
        )
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._seq = 0
        self._seeds: list[str] = []
        self._join_attempts = 0
        self._left = False
        self._next_probe_ms = now_ms + self._rng.randrange(config.probe_interval_ms)
        self._next_gossip_ms = now_ms + config.gossip_interval_ms
        self._next_push_pull_ms = now_ms + config.push_pull_interval_ms
        self._next_join_ms: int | None = None
        self._next_coordinate_ms = now_ms + config.coordinate_gossip_interval_ms
        self._next_reconnect_ms = now_ms + config.reconnect_interval_ms
        self._next_reap_ms = now_ms + config.gossip_to_the_dead_ms
        self._alive_count = len(self._members) if shared_members is not None else 1
        # Affine probe order over table slots: (slot count, multiplier, offset, step).
        self._probe_permutation: tuple[int, int, int] | None = None
        self._probe_step = 0
        self._out = Output(incarnation=self._self.incarnation)
        self._broadcast_alive(self._self)

    # -- public API ------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        """Our own current incarnation number."""
        return self._self.incarnation

    @property
    def local_health(self) -> int:
        """Lifeguard's local health score (0 is healthy)."""
        return self._awareness.score

    @property
    def coordinate(self) -> wire.Coordinate:
        """Our own Vivaldi coordinate."""
        return self._vivaldi.coordinate

    @property
    def has_left(self) -> bool:
        """True once ``leave`` was called."""
        return self._left

    def members(self) -> list[MemberView]:
        """Every member we know of (ourselves included), sorted by node id."""
        views = []
        for member in sorted(self._members.values(), key=lambda m: m.node_id):
            coordinate = (
                self._vivaldi.coordinate if member.node_id == self.node_id else member.coordinate
            )
            views.append(
                MemberView(
                    node_id=member.node_id,
                    address=member.address,
                    state=member.state,
                    incarnation=member.incarnation,
                    labels=dict(member.labels),
                    cpus=member.cpus,
                    coordinate=coordinate,
                    state_changed_ms=member.state_changed_ms,
                )
            )
        return views

    def alive_count(self) -> int:
        """Members (ourselves included) currently alive or suspect."""
        return self._alive_count

    def estimate_rtt_ms(self, node_id: str) -> float | None:
        """Estimated RTT to ``node_id`` from Vivaldi coordinates (None if unknown)."""
        if node_id == self.node_id:
            return 0.0
        member = self._members.get(node_id)
        if member is None or member.coordinate is None:
            return None
        return estimate_rtt_ms(self._vivaldi.coordinate, member.coordinate)

    def join(self, now_ms: int, seed_addresses: Sequence[str]) -> Output:
        """Contact the seeds with a push-pull.

        Retried, with backoff, until every seed is a live member of our view:
        stopping at the first contact can leave a seed whose join messages
        were lost alone forever (found by the simulator: seed 374).
        """
        assert not self._left
        self._seeds = [address for address in seed_addresses if address != self.address][:SEEDS_MAX]
        self._join_attempts = 0
        if self._seeds:
            self._send_join(now_ms)
        return self._flush()

    def leave(self, now_ms: int) -> Output:
        """Leave gracefully: tell members directly, then stop probing."""
        if self._left:
            return self._flush()
        me = self._self
        self._left = True
        self._set_state(me, "left", now_ms)
        item = wire.Dead(node_id=self.node_id, incarnation=me.incarnation, from_id=self.node_id)
        self._broadcasts.push(self.node_id, item)
        message = wire.Gossip(source_id=self.node_id, gossip=(item,))
        # A leave is rare and should be known at once: tell every live member.
        for member in self._members.values():
            if member.node_id != self.node_id and member.state in ("alive", "suspect"):
                self._send(member.address, message)
        self._probe = None
        return self._flush()

    def update_metadata(self, now_ms: int, labels: dict[str, str], cpus: int) -> Output:
        """Change our labels or cpus and gossip them at a new incarnation."""
        me = self._self
        me.labels = dict(labels)
        me.cpus = cpus
        self._set_incarnation(me.incarnation + 1)
        self._broadcast_alive(me)
        return self._flush()

    def next_deadline_ms(self) -> int:
        """The local time at which ``tick`` must next be called."""
        deadlines = [self._next_gossip_ms, self._next_reap_ms, self._next_coordinate_ms]
        if not self._left:
            # After leaving, tick runs none of these (found: a join still
            # retrying at leave kept its deadline, and tick's postcondition
            # failed in a node that was stopping).
            deadlines.append(self._next_probe_ms)
            deadlines.append(self._next_push_pull_ms)
            deadlines.append(self._next_reconnect_ms)
            if self._probe is not None:
                deadlines.append(
                    self._probe.end_deadline_ms
                    if self._probe.indirect_sent
                    else self._probe.direct_deadline_ms
                )
            if self._next_join_ms is not None:
                deadlines.append(self._next_join_ms)
        deadlines.extend(relay.deadline_ms for relay in self._relays.values())
        deadlines.extend(suspicion.deadline_ms for suspicion in self._suspicions.values())
        return min(deadlines)

    def tick(self, now_ms: int) -> Output:
        """Run every timer due at or before ``now_ms``."""
        self._tick_relays(now_ms)
        if not self._left:
            self._tick_probe(now_ms)
            if now_ms >= self._next_probe_ms:
                self._start_probe(now_ms)
            if now_ms >= self._next_push_pull_ms:
                self._next_push_pull_ms = now_ms + self.config.push_pull_interval_scaled_ms(
                    self.alive_count()
                )
                self._send_push_pull(now_ms)
            if self._next_join_ms is not None and now_ms >= self._next_join_ms:
                self._send_join(now_ms)
            if now_ms >= self._next_reconnect_ms:
                self._next_reconnect_ms = now_ms + self.config.reconnect_interval_ms
                self._reconnect()
        if now_ms >= self._next_gossip_ms:
            self._next_gossip_ms = now_ms + self.config.gossip_interval_ms
            self._gossip_round(now_ms)
        if now_ms >= self._next_coordinate_ms:
            self._next_coordinate_ms = now_ms + self.config.coordinate_gossip_interval_ms
            self._coordinate_broadcasts.push(
                self.node_id,
                wire.CoordinateUpdate(node_id=self.node_id, coordinate=self._vivaldi.coordinate),
            )
        if now_ms >= self._next_reap_ms:
            self._next_reap_ms = now_ms + self.config.gossip_to_the_dead_ms
            self._reap(now_ms)
        # Last: a failed probe above may have confirmed a suspicion and so
        # moved its deadline to now or earlier.
        self._tick_suspicions(now_ms)
        assert self.next_deadline_ms() > now_ms
        return self._flush()

    def step(self, now_ms: int, message: wire.MembershipMessage) -> Output:
        """Handle one message from a peer."""
        if isinstance(message, wire.Ping):
            self._on_ping(now_ms, message)
        elif isinstance(message, wire.Ack):
            self._on_ack(now_ms, message)
        elif isinstance(message, wire.IndirectPing):
            self._on_indirect_ping(now_ms, message)
        elif isinstance(message, wire.Nack):
            self._on_nack(message)
        elif isinstance(message, wire.PushPull):
            self._on_push_pull(now_ms, message)
        elif isinstance(message, wire.Gossip):
            self._merge_gossip(now_ms, message.gossip)
        else:  # pragma: no cover - the wire union is closed
            raise AssertionError(f"not a membership message: {type(message).__name__}")
        return self._flush()

    # -- probing ---------------------------------------------------------------

    def _start_probe(self, now_ms: int) -> None:
        interval_ms = self._awareness.scale_ms(self.config.probe_interval_ms)
        self._next_probe_ms = now_ms + interval_ms
        if self._probe is not None:
            # The previous probe's period is over; it ends now (its failure
            # path ran in _tick_probe if it was due).
            self._finish_probe_failed(now_ms)
        target = self._next_probe_target()
        if target is None:
            return
        self._seq += 1
        timeout_ms = self._awareness.scale_ms(self.config.probe_timeout_ms)
        self._probe = _Probe(
            target_id=target.node_id,
            target_incarnation=target.incarnation,
            seq=self._seq,
            started_ms=now_ms,
            direct_deadline_ms=now_ms + timeout_ms,
            end_deadline_ms=now_ms + interval_ms,
        )
        gossip: list[wire.GossipItem] = []
        if self.config.lifeguard and target.state == "suspect":
            # Buddy system: tell the suspect directly so it refutes at once.
            gossip.append(
                wire.Suspect(
                    node_id=target.node_id, incarnation=target.incarnation, from_id=self.node_id
                )
            )
        ping = wire.Ping(
            seq=self._seq,
            target_id=target.node_id,
            source_id=self.node_id,
            source_address=self.address,
            coordinate=self._vivaldi.coordinate,
            gossip=self._piggyback(gossip),
        )
        self._send(target.address, ping)

    def _next_probe_target(self) -> _Member | None:
        if len(self._members) > PROBE_LIST_MEMBERS_MAX:
            return self._next_probe_target_permuted()
        self._probe_permutation = None
        for _ in range(len(self._probe_order) + 1):
            if self._probe_index >= len(self._probe_order):
                self._reshuffle_probe_order()
                self._probe_index = 0
                if not self._probe_order:
                    return None
            node_id = self._probe_order[self._probe_index]
            self._probe_index += 1
            member = self._members.get(node_id)
            if member is not None and member.state in ("alive", "suspect"):
                return member
        return None

    def _next_probe_target_permuted(self) -> _Member | None:
        for _ in range(2):  # finish this round, then at most one fresh round
            if self._probe_permutation is not None:
                slots, multiplier, offset = self._probe_permutation
                while self._probe_step < slots:
                    slot = (multiplier * self._probe_step + offset) % slots
                    self._probe_step += 1
                    member = self._members.at_slot(slot)
                    if (
                        member is not None
                        and member.node_id != self.node_id
                        and member.state in ("alive", "suspect")
                    ):
                        return member
            slots = self._members.slot_count()
            multiplier = 1
            for _ in range(64):
                candidate = self._rng.randrange(1, slots)
                if math.gcd(candidate, slots) == 1:
                    multiplier = candidate
                    break
            self._probe_permutation = (slots, multiplier, self._rng.randrange(slots))
            self._probe_step = 0
        return None

    def _reshuffle_probe_order(self) -> None:
        candidates = [
            member.node_id
            for member in self._members.values()
            if member.node_id != self.node_id and member.state in ("alive", "suspect")
        ]
        self._rng.shuffle(candidates)
        self._probe_order = candidates
        self._probe_index = 0

    def _tick_probe(self, now_ms: int) -> None:
        probe = self._probe
        if probe is None or probe.acked:
            return
        if not probe.indirect_sent and now_ms >= probe.direct_deadline_ms:
            self._send_indirect_probes(probe)
        if probe.indirect_sent and now_ms >= probe.end_deadline_ms:
            self._finish_probe_failed(now_ms)

    def _send_indirect_probes(self, probe: _Probe) -> None:
        probe.indirect_sent = True
        target = self._members.get(probe.target_id)
        if target is None:
            return
        chosen = self._random_members(
            self.config.indirect_checks,
            lambda m: m.state == "alive" and m.node_id != probe.target_id,
        )
        want_nack = self.config.lifeguard
        probe.nacks_expected = len(chosen) if want_nack else 0
        for helper in chosen:
            request = wire.IndirectPing(
                seq=probe.seq,
                target_id=target.node_id,
                target_address=target.address,
                source_id=self.node_id,
                source_address=self.address,
                want_nack=want_nack,
                gossip=self._piggyback([]),
            )
            self._send(helper.address, request)

    def _finish_probe_failed(self, now_ms: int) -> None:
        probe = self._probe
        self._probe = None
        if probe is None or probe.acked:
            return
        if self.config.lifeguard:
            # Missing nacks mean *we* may be the slow one (Lifeguard).
            if probe.nacks_expected > 0:
                self._awareness.apply_delta(probe.nacks_expected - probe.nacks_received)
            else:
                self._awareness.apply_delta(1)
        target = self._members.get(probe.target_id)
        if target is None or target.state not in ("alive", "suspect"):
            return
        # Suspect the life we probed: if the member restarted (a higher
        # incarnation) while our probe was in flight, this rumour is stale
        # and ignored (found by the simulator: seeds 162, 566).
        self._suspect(
            now_ms,
            wire.Suspect(
                node_id=target.node_id, incarnation=probe.target_incarnation, from_id=self.node_id
            ),
        )

    def _on_ping(self, now_ms: int, ping: wire.Ping) -> None:
        self._merge_gossip(now_ms, ping.gossip)
        if ping.target_id != self.node_id:
            # Meant for a previous owner of our address: stay silent so the
            # sender's probe fails for the node it meant.
            return
        ack = wire.Ack(
            seq=ping.seq,
            source_id=self.node_id,
            coordinate=self._vivaldi.coordinate,
            gossip=self._piggyback([]),
        )
        self._send(ping.source_address, ack)

    def _on_ack(self, now_ms: int, ack: wire.Ack) -> None:
        self._merge_gossip(now_ms, ack.gossip)
        relay = self._relays.pop(ack.seq, None)
        if relay is not None:
            # An ack for a probe we ran for someone else: forward it. The
            # forwarded ack carries no coordinate: its RTT is not ours.
            self._send(
                relay.source_address, wire.Ack(seq=relay.source_seq, source_id=ack.source_id)
            )
            return
        probe = self._probe
        if probe is None or probe.seq != ack.seq or probe.acked or ack.source_id != probe.target_id:
            return
        probe.acked = True
        self._probe = None  # done for this period; later acks for it are ignored
        if self.config.lifeguard:
            self._awareness.apply_delta(-1)
        target = self._members.get(probe.target_id)
        if ack.coordinate is not None and target is not None:
            # A direct ack: the RTT sample is ours to learn from.
            rtt_ms = max(0, now_ms - probe.started_ms)
            if self._acceptable(ack.coordinate):
                target = self._members.writable(probe.target_id)
                target.coordinate = ack.coordinate
                if target.node_id in self._rtt_peers:
                    # Clocks tick in whole milliseconds: a sub-millisecond RTT reads 0.
                    self._vivaldi.observe(target.node_id, ack.coordinate, float(max(rtt_ms, 1)))
                else:
                    # The first probe of a member usually pays for opening the
                    # connection (TCP and TLS handshakes): not a network RTT.
                    self._rtt_peers[target.node_id] = None

    def _on_nack(self, nack: wire.Nack) -> None:
        probe = self._probe
        if probe is not None and probe.seq == nack.seq and not probe.acked:
            probe.nacks_received = min(probe.nacks_expected, probe.nacks_received + 1)

    def _on_indirect_ping(self, now_ms: int, request: wire.IndirectPing) -> None:
        self._merge_gossip(now_ms, request.gossip)
        if len(self._relays) >= RELAYS_MAX:
            return
        self._seq += 1
        self._relays[self._seq] = _Relay(
            source_address=request.source_address,
            source_seq=request.seq,
            want_nack=request.want_nack,
            deadline_ms=now_ms + self._awareness.scale_ms(self.config.probe_timeout_ms),
        )
        ping = wire.Ping(
            seq=self._seq,
            target_id=request.target_id,
            source_id=self.node_id,
            source_address=self.address,
            coordinate=self._vivaldi.coordinate,
        )
        self._send(request.target_address, ping)

    def _tick_relays(self, now_ms: int) -> None:
        expired = [seq for seq, relay in self._relays.items() if now_ms >= relay.deadline_ms]
        for seq in expired:
            relay = self._relays.pop(seq)
            if relay.want_nack:
                self._send(
                    relay.source_address, wire.Nack(seq=relay.source_seq, source_id=self.node_id)
                )

    # -- suspicion and state merging --------------------------------------------

    def _tick_suspicions(self, now_ms: int) -> None:
        expired = [node_id for node_id, s in self._suspicions.items() if now_ms >= s.deadline_ms]
        for node_id in expired:
            del self._suspicions[node_id]
            member = self._members.get(node_id)
            if member is None or member.state != "suspect":
                continue
            self._dead(
                now_ms,
                wire.Dead(node_id=node_id, incarnation=member.incarnation, from_id=self.node_id),
            )

    def _merge_gossip(self, now_ms: int, items: Iterable[wire.GossipItem]) -> None:
        for item in items:
            if isinstance(item, wire.Alive):
                self._alive(now_ms, item)
            elif isinstance(item, wire.Suspect):
                self._suspect(now_ms, item)
            elif isinstance(item, wire.Dead):
                self._dead(now_ms, item)
            else:
                self._coordinate_update(item)

    def _alive(self, now_ms: int, alive: wire.Alive) -> None:
        if self._left and alive.node_id == self.node_id:
            return
        member = self._members.get(alive.node_id)
        if alive.node_id == self.node_id:
            assert member is not None
            if alive.incarnation > member.incarnation or (
                alive.incarnation == member.incarnation
                and (
                    alive.address != member.address
                    or alive.labels != member.labels
                    or alive.cpus != member.cpus
                )
            ):
                # Someone spreads a newer or conflicting "us": override it.
                self._refute(alive.incarnation)
            return
        if member is None:
            member = _Member.from_alive(alive, now_ms)
            self._members.add(member)
            self._alive_count += 1
            self._insert_probe_target(alive.node_id)
            self._broadcast_alive(member)
            self._event(now_ms, "joined", member)
            return
        if alive.incarnation <= member.incarnation:
            return
        member = self._members.writable(alive.node_id)
        was = member.state
        member.incarnation = alive.incarnation
        member.address = alive.address
        member.labels = dict(alive.labels)
        member.cpus = alive.cpus
        self._suspicions.pop(alive.node_id, None)
        if was != "alive":
            self._set_state(member, "alive", now_ms)
            if was in ("dead", "left"):
                self._insert_probe_target(alive.node_id)
        self._broadcast_alive(member)
        # "updated" also when only the incarnation rose (it refuted a rumour
        # we never heard): observers tracking incarnations see every change.
        self._event(now_ms, "alive" if was != "alive" else "updated", member)

    def _suspect(self, now_ms: int, suspect: wire.Suspect) -> None:
        member = self._members.get(suspect.node_id)
        if member is None or suspect.incarnation < member.incarnation:
            return
        if suspect.node_id == self.node_id:
            if not self._left:
                self._refute(suspect.incarnation)
            return
        existing = self._suspicions.get(suspect.node_id)
        if existing is not None and member.state == "suspect":
            if suspect.incarnation == member.incarnation and existing.confirm(suspect.from_id):
                self._broadcasts.push(suspect.node_id, suspect)
            return
        if member.state != "alive":
            return
        member = self._members.writable(suspect.node_id)
        member.incarnation = suspect.incarnation
        self._set_state(member, "suspect", now_ms)
        count = self.alive_count()
        confirmations_expected = self.config.suspicion_mult - 2 if self.config.lifeguard else 0
        if count - 2 < confirmations_expected:
            confirmations_expected = 0
        self._suspicions[suspect.node_id] = Suspicion(
            started_ms=now_ms,
            first_accuser=suspect.from_id,
            timeout_min_ms=self.config.suspicion_timeout_min_ms(count),
            timeout_max_ms=self.config.suspicion_timeout_max_ms(count),
            confirmations_expected=max(0, confirmations_expected),
        )
        self._broadcasts.push(suspect.node_id, suspect)
        self._event(now_ms, "suspect", member)

    def _dead(self, now_ms: int, dead: wire.Dead) -> None:
        member = self._members.get(dead.node_id)
        if member is None or dead.incarnation < member.incarnation:
            return
        if member.state in ("dead", "left"):
            return
        if dead.node_id == self.node_id:
            if not self._left:
                self._refute(dead.incarnation)
            return
        left = dead.from_id == dead.node_id
        member = self._members.writable(dead.node_id)
        member.incarnation = dead.incarnation
        self._set_state(member, "left" if left else "dead", now_ms)
        self._suspicions.pop(dead.node_id, None)
        self._broadcasts.push(dead.node_id, dead)
        self._event(now_ms, "left" if left else "dead", member)

    def _coordinate_update(self, update: wire.CoordinateUpdate) -> None:
        if update.node_id == self.node_id or not self._acceptable(update.coordinate):
            return
        member = self._members.get(update.node_id)
        if member is None or member.coordinate == update.coordinate:
            return
        # Not re-gossiped: only a coordinate's owner spreads it (and push-pull
        # carries every coordinate). Re-gossiping every update kept gossip
        # rounds busy forever: ~11 messages per member per second at n = 100
        # in the simulated benchmark, against ~3 without.
        self._members.writable(update.node_id).coordinate = update.coordinate

    def _refute(self, accused_incarnation: int) -> None:
        me = self._self
        self._set_incarnation(max(me.incarnation, accused_incarnation) + 1)
        if self.config.lifeguard:
            # Being accused suggests we are slow to answer (Lifeguard).
            self._awareness.apply_delta(1)
        self._broadcast_alive(me)

    # -- dissemination -------------------------------------------------------------

    def _gossip_round(self, now_ms: int) -> None:
        # Coordinates ride along on probes and membership news; alone they
        # do not start a gossip round.
        if not self._broadcasts:
            return
        recent_dead_ms = now_ms - self.config.gossip_to_the_dead_ms
        targets = self._random_members(
            self.config.gossip_nodes,
            lambda m: (
                m.state in ("alive", "suspect")
                or (m.state == "dead" and m.state_changed_ms >= recent_dead_ms)
            ),
        )
        for target in targets:
            items = self._piggyback([])
            if not items:
                return
            self._send(target.address, wire.Gossip(source_id=self.node_id, gossip=items))

    def _piggyback(self, first: list[wire.GossipItem]) -> tuple[wire.GossipItem, ...]:
        limit = self.config.retransmit_limit(self.alive_count())
        room = self.config.gossip_items_per_message_max - len(first)
        items = first + self._broadcasts.take(room, limit)
        room = self.config.gossip_items_per_message_max - len(items)
        items += self._coordinate_broadcasts.take(min(room, 4), limit)
        return tuple(items)

    def _broadcast_alive(self, member: _Member) -> None:
        self._broadcasts.push(
            member.node_id,
            wire.Alive(
                node_id=member.node_id,
                incarnation=member.incarnation,
                address=member.address,
                labels=dict(member.labels),
                cpus=member.cpus,
            ),
        )

    # -- push-pull and join ------------------------------------------------------------

    def _send_join(self, now_ms: int) -> None:
        known = {m.address for m in self._members.values() if m.state in ("alive", "suspect")}
        pending = [address for address in self._seeds if address not in known]
        if not pending:
            self._next_join_ms = None
            return
        backoff = self.config.join_retry_interval_ms * 2 ** min(self._join_attempts, 16)
        self._next_join_ms = now_ms + min(backoff, self.config.push_pull_interval_ms)
        self._join_attempts += 1
        message = self._push_pull_message(join=True, reply_wanted=True)
        for address in pending:
            self._send(address, message)

    def _send_push_pull(self, now_ms: int) -> None:
        chosen = self._random_members(1, lambda m: m.state == "alive")
        if chosen:
            self._send(chosen[0].address, self._push_pull_message(join=False, reply_wanted=True))

    def _reconnect(self) -> None:
        """Serf's reconnect: push-pull with one member we hold dead.

        If it is in fact alive (we were partitioned from it), the exchange
        makes each side refute the other's death rumours and the views merge;
        without it two sides that declared each other dead stay split forever
        (found by the simulator: seeds 41, 212).
        """
        chosen = self._random_members(1, lambda m: m.state == "dead")
        if chosen:
            self._send(chosen[0].address, self._push_pull_message(join=False, reply_wanted=True))

    def _push_pull_message(self, *, join: bool, reply_wanted: bool) -> wire.PushPull:
        states = tuple(
            wire.MemberState(
                node_id=view.node_id,
                address=view.address,
                incarnation=view.incarnation,
                state=view.state,
                labels=view.labels,
                cpus=view.cpus,
                coordinate=view.coordinate,
            )
            for view in self.members()
        )
        return wire.PushPull(
            source_id=self.node_id,
            source_address=self.address,
            join=join,
            reply_wanted=reply_wanted,
            states=states,
        )

    def _on_push_pull(self, now_ms: int, message: wire.PushPull) -> None:
        self._merge_states(now_ms, message.source_id, message.states)
        if message.reply_wanted and not self._left:
            self._send(
                message.source_address, self._push_pull_message(join=False, reply_wanted=False)
            )

    def _merge_states(
        self, now_ms: int, source_id: str, states: Iterable[wire.MemberState]
    ) -> None:
        for state in states:
            if state.state == "alive":
                self._alive(
                    now_ms,
                    wire.Alive(
                        node_id=state.node_id,
                        incarnation=state.incarnation,
                        address=state.address,
                        labels=state.labels,
                        cpus=state.cpus,
                    ),
                )
            elif state.state == "left":
                self._dead(
                    now_ms,
                    wire.Dead(
                        node_id=state.node_id, incarnation=state.incarnation, from_id=state.node_id
                    ),
                )
            else:
                # A remote "dead" only makes us suspect: it may be wrong, and
                # the member gets its chance to refute (memberlist mergeState).
                self._suspect(
                    now_ms,
                    wire.Suspect(
                        node_id=state.node_id, incarnation=state.incarnation, from_id=source_id
                    ),
                )
            if state.coordinate is not None and state.node_id != self.node_id:
                member = self._members.get(state.node_id)
                if (
                    member is not None
                    and member.coordinate is None
                    and self._acceptable(state.coordinate)
                ):
                    self._members.writable(state.node_id).coordinate = state.coordinate

    # -- housekeeping --------------------------------------------------------------

    def _reap(self, now_ms: int) -> None:
        cutoff_ms = now_ms - self.config.dead_member_retention_ms
        gone = [
            node_id for node_id, since_ms in self._dead_since_ms.items() if since_ms <= cutoff_ms
        ]
        for node_id in gone:
            del self._dead_since_ms[node_id]
            self._members.remove(node_id)
            self._rtt_peers.pop(node_id, None)
            self._vivaldi.forget(node_id)
            self._broadcasts.discard(node_id)
            self._coordinate_broadcasts.discard(node_id)

    def _insert_probe_target(self, node_id: str) -> None:
        if self._probe_permutation is not None:
            return  # a new slot: the next permutation round covers it
        # memberlist inserts new members at a random place in the probe list
        # so a burst of joins does not all get probed at once.
        position = self._rng.randint(self._probe_index, len(self._probe_order))
        self._probe_order.insert(position, node_id)

    def _sample(self, members: list[_Member], count: int) -> list[_Member]:
        if count <= 0 or not members:
            return []
        if len(members) <= count:
            return list(members)
        return self._rng.sample(members, count)

    def _acceptable(self, coordinate: wire.Coordinate) -> bool:
        """A peer's coordinate we can compute with (valid, our dimensionality)."""
        return is_valid(coordinate) and is_compatible(coordinate, self._vivaldi.coordinate)

    def _set_state(self, member: _Member, state: MemberState, now_ms: int) -> None:
        was_counted = member.state in ("alive", "suspect")
        is_counted = state in ("alive", "suspect")
        self._alive_count += int(is_counted) - int(was_counted)
        member.state = state
        member.state_changed_ms = now_ms
        if member.node_id != self.node_id:
            # The reaper visits only dead and left members, not the whole view.
            if is_counted:
                self._dead_since_ms.pop(member.node_id, None)
            else:
                self._dead_since_ms[member.node_id] = now_ms
        assert self._alive_count >= 0

    def _random_members(self, count: int, accept: Callable[[_Member], bool]) -> list[_Member]:
        """Up to ``count`` distinct random members passing ``accept``.

        Small views are scanned; large ones are sampled by random index with
        a bounded number of tries, so a gossip round costs O(count), not O(n).
        """
        if count <= 0:
            return []
        if len(self._members) <= SCAN_MEMBERS_MAX:
            candidates = [
                m for m in self._members.values() if m.node_id != self.node_id and accept(m)
            ]
            return self._sample(candidates, count)
        chosen: dict[str, _Member] = {}
        for _ in range(count * 8):
            member = self._members.random(self._rng)
            if member is None or member.node_id == self.node_id:
                continue
            if member.node_id not in chosen and accept(member):
                chosen[member.node_id] = member
                if len(chosen) == count:
                    break
        return list(chosen.values())

    @property
    def _self(self) -> _Member:
        return self._members.writable(self.node_id)

    def _set_incarnation(self, incarnation: int) -> None:
        me = self._self
        assert incarnation > me.incarnation
        me.incarnation = incarnation
        self._out.incarnation = incarnation

    def _send(self, address: str, message: wire.MembershipMessage) -> None:
        self._out.messages.append(Send(address, message))

    def _event(self, now_ms: int, kind: EventKind, member: _Member) -> None:
        self._out.events.append(
            MemberEvent(kind, member.node_id, member.address, member.incarnation, now_ms)
        )

    def _flush(self) -> Output:
        out = self._out
        self._out = Output()
        return out
