"""The world: nodes running real cores on virtual time over a simulated network.

Rules:

- **One event queue**, a calendar queue: one bucket (a list) per
  millisecond that has events, and a heap of those milliseconds. An event is
  a ``(kind, node_index, aux, payload)`` tuple: a node wake-up, a message
  delivery or a scheduled action (fault, join, check). Events at the same
  millisecond run in the order they were scheduled (appending to a bucket
  keeps it), so the run is a pure function of the root seed. With thousands
  of nodes many events share a millisecond, so most pushes are a list
  append instead of a heap push.
- **Generic over cores.** Any class with ``step(now_ms, message)``,
  ``tick(now_ms)`` and ``next_deadline_ms()`` returning effects with a
  ``messages`` list of ``(address, message)`` sends can be driven (``Core``).
  What is specific to one kind of core (how to build it from its disk, what
  to persist, what to tell the checkers) lives in a ``CoreDriver``.
- **Effects contract.** Every effects object is carried out in the order the
  cores document: the driver persists to the node's ``Disk`` first (the disk
  refuses writes at any other moment), then the driver may audit that
  nothing about to be sent is ahead of the disk, then messages go out, then
  the driver observes the events.
- **Crash** stops a node at once: its core is dropped, its pending wake-ups
  are discarded (their ``aux`` carries the node's epoch), messages reaching
  it while it is down are lost. Messages it sent before are already on the
  wire and still arrive. Its ``Disk`` survives. **Start** (first boot or
  restart) builds a fresh core from the disk.
- **One seed.** ``derive_seed(root_seed, purpose)`` gives every random
  stream: ``network``, ``faults``, ``clock``, ``scenario`` and
  ``core/<node_id>/<epoch>`` for each life of each node.
- **Trace.** Every delivery, wake-up, crash, start, action and whatever the
  driver notes is appended to a running SHA-256; ``trace_hash`` is the run's
  fingerprint. Same seed, same hash, in any process.

Determinism rules for everything here: no real clock, no global ``random``,
no ``hash()`` of strings, never iterate a set of strings.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Final, Generic, Protocol, TypeVar

from moot.sim.clock import LocalClock
from moot.sim.network import Network

NO_WAKE_MS: Final = 2**62  # a wake-up time later than any run

# Event kinds, in the tuple's third slot.
DELIVER: Final = 0
WAKE: Final = 1
ACTION: Final = 2

# Trace lines are hashed in batches: one sha256.update per batch is much
# cheaper than one per event.
TRACE_BATCH_LINES: Final = 4_096

# Cap on events one run_until may process: a core that keeps waking itself
# without advancing time must fail, not hang.
EVENTS_PER_RUN_MAX: Final = 500_000_000


def derive_seed(root_seed: int, purpose: str) -> int:
    """The sub-seed for ``purpose``: the first 8 bytes of SHA-256("moot-sim/<root>/<purpose>").

    Deterministic across processes and platforms (unlike ``hash()``), and
    independent streams for different purposes.
    """
    digest = hashlib.sha256(f"moot-sim/{root_seed}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


class SimulationFailure(AssertionError):
    """A simulated run broke an invariant; the message says which."""


ResultT = TypeVar("ResultT")


def run_with_replay(run: Callable[[], ResultT], command: Callable[[], str]) -> ResultT:
    """``run()``, with the command that replays the run added to any
    ``SimulationFailure`` that does not already carry one."""
    try:
        return run()
    except SimulationFailure as failure:
        if "replay:" in str(failure):
            raise
        raise type(failure)(f"{failure}\nreplay: {command()}") from failure


class CoreContractError(SimulationFailure):
    """A core broke its documented driver contract (a bug in the core)."""


class CoreCrashed(SimulationFailure):
    """A core raised while handling an event (a bug in the core); chained to the original."""


class SimulationLimitError(SimulationFailure):
    """A run hit a hard limit (events processed): something loops."""


class Outgoing(Protocol):
    """One message a core wants sent (``moot.core.membership.Send`` fits)."""

    @property
    def address(self) -> str:
        """Where to."""
        ...

    @property
    def message(self) -> Any:
        """What (a wire message)."""
        ...


class Effects(Protocol):
    """What a core call returns; the world needs only the sends."""

    @property
    def messages(self) -> Sequence[Outgoing]:
        """Messages to send, after whatever must be persisted is."""
        ...


EffectsT = TypeVar("EffectsT", bound=Effects)
EffectsT_co = TypeVar("EffectsT_co", bound=Effects, covariant=True)
EffectsT_contra = TypeVar("EffectsT_contra", bound=Effects, contravariant=True)


class Core(Protocol[EffectsT_co]):
    """A sans-IO state machine the world can drive."""

    def step(self, now_ms: int, message: Any) -> EffectsT_co:
        """Handle one message at local time ``now_ms``."""
        ...

    def tick(self, now_ms: int) -> EffectsT_co:
        """Run every timer due at or before ``now_ms``."""
        ...

    def next_deadline_ms(self) -> int:
        """Local time at which ``tick`` must next be called."""
        ...


CoreT = TypeVar("CoreT", bound=Core[Any])


class Disk:
    """A node's persistent store: survives crashes, written only while persisting.

    Writes outside ``World``'s persist step raise, which is how the world
    asserts that persistence happens where the contract says (before sends).
    """

    __slots__ = ("_data", "writable", "writes")

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self.writable = False
        self.writes = 0

    def get(self, key: str, default: Any = None) -> Any:
        """The value last put under ``key``, or ``default``."""
        return self._data.get(key, default)

    def put(self, key: str, value: Any) -> None:
        """Durably store ``value`` under ``key`` (only inside a persist step)."""
        if not self.writable:
            raise CoreContractError(f"disk write of {key!r} outside the persist step")
        self._data[key] = value
        self.writes += 1


class SimNode(Generic[CoreT]):
    """One simulated machine: identity, clock, disk and (while up) a core."""

    __slots__ = (
        "address",
        "clock",
        "core",
        "disk",
        "epoch",
        "index",
        "messages_received",
        "node_id",
        "region",
        "starts",
        "up",
        "wake_at_ms",
    )

    def __init__(self, index: int, node_id: str, address: str, region: str, clock: LocalClock) -> None:
        self.index = index
        self.node_id = node_id
        self.address = address
        self.region = region
        self.clock = clock
        self.disk = Disk()
        self.core: CoreT | None = None
        self.up = False
        # Bumped on every start and crash: wake-ups carry it, so those of a
        # previous life are recognised and dropped.
        self.epoch = 0
        self.starts = 0
        self.wake_at_ms = NO_WAKE_MS
        self.messages_received = 0

    def live_core(self) -> CoreT:
        """The running core; the node must be up."""
        core = self.core
        assert core is not None, f"{self.node_id} is down"
        return core


class CoreDriver(Protocol[CoreT, EffectsT_contra]):
    """What the world needs to know about one kind of core."""

    def create(self, node: SimNode[CoreT], rng: random.Random, now_ms: int) -> CoreT:
        """Build a fresh core for ``node`` from ``node.disk`` (empty on first boot)."""
        ...

    def persist(self, node: SimNode[CoreT], effects: EffectsT_contra) -> None:
        """Write to ``node.disk`` what ``effects`` says must be durable before sending."""
        ...

    def audit(self, node: SimNode[CoreT], effects: EffectsT_contra) -> None:
        """After persisting, before sending: raise if a send is ahead of the disk."""
        ...

    def observe(self, node: SimNode[CoreT], effects: EffectsT_contra, global_ms: int) -> None:
        """After sending: hand ``effects``' events to checkers."""
        ...

    def started(self, node: SimNode[CoreT], global_ms: int) -> None:
        """``node`` booted a fresh core."""
        ...

    def crashed(self, node: SimNode[CoreT], global_ms: int) -> None:
        """``node`` crashed (its core is gone, its disk kept)."""
        ...


class WorldStats:
    """Counters of one run."""

    __slots__ = ("actions", "deliveries", "lost_to_down_nodes", "unroutable", "wakes")

    def __init__(self) -> None:
        self.deliveries = 0
        self.wakes = 0
        self.actions = 0
        self.lost_to_down_nodes = 0
        self.unroutable = 0


class World(Generic[CoreT, EffectsT]):
    """Drives cores on virtual time over a simulated network (see module doc)."""

    def __init__(
        self,
        driver: CoreDriver[CoreT, EffectsT],
        network: Network,
        *,
        root_seed: int,
        audit: bool = True,
        trace_messages: bool = False,
        trace_sink: Callable[[str], None] | None = None,
    ) -> None:
        assert root_seed >= 0
        self.driver = driver
        self.network = network
        self.root_seed = root_seed
        self.audit = audit
        self.trace_messages = trace_messages
        self.trace_sink = trace_sink
        self.nodes: list[SimNode[CoreT]] = []
        self.index_of: dict[str, int] = {}
        self.now_ms = 0
        self.stats = WorldStats()
        self.stop_requested = False
        self._buckets: dict[int, list[tuple[int, int, int, Any]]] = {}
        self._bucket_times: list[int] = []  # heap of the keys of _buckets
        self._wire = network.config.wire_roundtrip
        self._trace_lines: list[str] = []
        self._trace = hashlib.sha256()

    # -- building ------------------------------------------------------------

    def add_node(self, node_id: str, address: str, region: str, clock: LocalClock) -> SimNode[CoreT]:
        """Add a machine (down until ``start``)."""
        assert address not in self.index_of, address
        node: SimNode[CoreT] = SimNode(len(self.nodes), node_id, address, region, clock)
        self.nodes.append(node)
        self.index_of[address] = node.index
        self.network.add_endpoint(address, region)
        return node

    # -- node lifecycle --------------------------------------------------------

    def start(self, index: int) -> CoreT:
        """Boot a fresh core on node ``index`` from its disk; returns the core."""
        node = self.nodes[index]
        assert not node.up, f"{node.node_id} is already up"
        node.up = True
        node.epoch += 1
        node.starts += 1
        rng = random.Random(derive_seed(self.root_seed, f"core/{node.node_id}/{node.epoch}"))
        core = self.driver.create(node, rng, node.clock.local_ms(self.now_ms))
        node.core = core
        self.trace(f"{self.now_ms} start {index} {node.epoch}")
        self.driver.started(node, self.now_ms)
        self._reschedule(node)
        return core

    def crash(self, index: int) -> None:
        """Stop node ``index`` at once (no goodbye; its disk survives)."""
        node = self.nodes[index]
        assert node.up, f"{node.node_id} is already down"
        node.up = False
        node.epoch += 1
        node.core = None
        node.wake_at_ms = NO_WAKE_MS
        self.trace(f"{self.now_ms} crash {index}")
        self.driver.crashed(node, self.now_ms)

    def call(self, index: int, request: Callable[[CoreT, int], EffectsT]) -> EffectsT:
        """Run a local request (join, leave, ...) on node ``index`` now and carry out its effects."""
        node = self.nodes[index]
        core = node.live_core()
        effects = request(core, node.clock.local_ms(self.now_ms))
        self.trace(f"{self.now_ms} call {index}")
        self._carry_out(node, effects)
        self._reschedule(node)
        return effects

    def schedule(self, at_ms: int, label: str, action: Callable[[], None]) -> None:
        """Run ``action`` at global time ``at_ms`` (after events already queued for then)."""
        assert at_ms >= self.now_ms, f"cannot schedule {label} in the past ({at_ms} < {self.now_ms})"
        self._push(at_ms, (ACTION, -1, 0, (label, action)))

    def _push(self, at_ms: int, event: tuple[int, int, int, Any]) -> None:
        bucket = self._buckets.get(at_ms)
        if bucket is None:
            self._buckets[at_ms] = [event]
            heapq.heappush(self._bucket_times, at_ms)
        else:
            bucket.append(event)

    # -- running ------------------------------------------------------------------

    def run_until(self, end_ms: int) -> None:
        """Process every event at or before ``end_ms`` (or until ``stop_requested``)."""
        assert end_ms >= self.now_ms
        buckets = self._buckets
        bucket_times = self._bucket_times
        push = self._push
        nodes = self.nodes
        network = self.network
        stats = self.stats
        trace = self._trace_lines.append
        trace_messages = self.trace_messages
        processed = 0
        self.stop_requested = False
        kind = ACTION
        index = -1
        try:
            while bucket_times and bucket_times[0] <= end_ms:
                at_ms = bucket_times[0]
                self.now_ms = at_ms
                bucket = buckets[at_ms]
                position = 0
                # Events scheduled for at_ms while it runs are appended to
                # this same bucket and run in this loop, in order.
                while position < len(bucket):
                    kind, index, aux, payload = bucket[position]
                    position += 1
                    processed += 1
                    if processed > EVENTS_PER_RUN_MAX:
                        raise SimulationLimitError(f"over {EVENTS_PER_RUN_MAX} events before {end_ms} ms")
                    if kind == DELIVER:
                        node = nodes[index]
                        if not node.up:
                            stats.lost_to_down_nodes += 1
                            trace(f"{at_ms} lost {aux} {index}")
                            continue
                        stats.deliveries += 1
                        message = network.decode(node.address, payload) if self._wire else payload
                        node.messages_received += 1
                        trace(f"{at_ms} deliver {aux} {index} {type(message).__name__}")
                        if trace_messages:
                            self._detail(f"    {message!r}")
                        core = node.core
                        assert core is not None
                        effects = core.step(node.clock.local_ms(at_ms), message)
                        self._carry_out(node, effects)
                        if node.up:
                            wake_ms = node.clock.global_ms_for(core.next_deadline_ms(), at_ms)
                            if wake_ms < node.wake_at_ms:
                                node.wake_at_ms = wake_ms
                                push(wake_ms, (WAKE, index, node.epoch, None))
                    elif kind == WAKE:
                        node = nodes[index]
                        if aux != node.epoch or at_ms != node.wake_at_ms:
                            continue  # a previous life's, or superseded by an earlier wake-up
                        node.wake_at_ms = NO_WAKE_MS
                        stats.wakes += 1
                        trace(f"{at_ms} wake {index}")
                        core = node.core
                        assert core is not None
                        local_ms = node.clock.local_ms(at_ms)
                        effects = core.tick(local_ms)
                        self._carry_out(node, effects)
                        if node.up:
                            deadline_ms = core.next_deadline_ms()
                            if deadline_ms <= local_ms:
                                raise CoreContractError(
                                    f"{node.node_id}: after tick({local_ms}) next_deadline_ms() is "
                                    f"{deadline_ms}, not in the future"
                                )
                            wake_ms = node.clock.global_ms_for(deadline_ms, at_ms)
                            if wake_ms < node.wake_at_ms:
                                node.wake_at_ms = wake_ms
                                push(wake_ms, (WAKE, index, node.epoch, None))
                    else:
                        stats.actions += 1
                        label, action = payload
                        trace(f"{at_ms} action {label}")
                        action()
                    if len(self._trace_lines) >= TRACE_BATCH_LINES:
                        self._flush_trace()
                    if self.stop_requested:
                        del bucket[:position]  # the rest runs in the next run_until
                        if not bucket:
                            self._drop_bucket(at_ms)
                        return
                self._drop_bucket(at_ms)
        except SimulationFailure:
            raise
        except Exception as error:
            what = ("delivering to", "waking", "running")[kind]
            where = f"node {self.nodes[index].node_id}" if kind != ACTION else "an action"
            frame = traceback.extract_tb(error.__traceback__)[-1]
            raise CoreCrashed(
                f"{type(error).__name__}({error}) at {self.now_ms} ms while {what} {where}, "
                f"raised at {frame.filename}:{frame.lineno}: {frame.line}"
            ) from error
        self.now_ms = end_ms

    def _drop_bucket(self, at_ms: int) -> None:
        assert self._bucket_times[0] == at_ms
        del self._buckets[at_ms]
        heapq.heappop(self._bucket_times)

    # -- carrying out effects -----------------------------------------------------

    def _carry_out(self, node: SimNode[CoreT], effects: EffectsT) -> None:
        driver = self.driver
        disk = node.disk
        disk.writable = True
        try:
            driver.persist(node, effects)
        finally:
            disk.writable = False
        if self.audit:
            driver.audit(node, effects)
        messages = effects.messages
        if messages:
            self._send_all(node, messages)
        driver.observe(node, effects, self.now_ms)

    def _send_all(self, node: SimNode[CoreT], messages: Sequence[Outgoing]) -> None:
        network = self.network
        index_of = self.index_of
        push = self._push
        source = node.address
        source_index = node.index
        now_ms = self.now_ms
        for send in messages:
            address = send.address
            destination = index_of.get(address)
            if destination is None:
                self.stats.unroutable += 1
                continue
            payload = network.encode(source, send.message) if self._wire else send.message
            for at_ms in network.route(now_ms, source, address):
                push(at_ms, (DELIVER, destination, source_index, payload))

    def reschedule(self, index: int) -> None:
        """Recompute node ``index``'s wake-up (after its clock changed)."""
        self._reschedule(self.nodes[index])

    def _reschedule(self, node: SimNode[CoreT]) -> None:
        if not node.up:
            return  # the request or message made the driver stop it
        core = node.core
        assert core is not None
        self._wake_at(node, core.next_deadline_ms())

    def _wake_at(self, node: SimNode[CoreT], deadline_ms: int) -> None:
        wake_ms = node.clock.global_ms_for(deadline_ms, self.now_ms)
        if wake_ms < node.wake_at_ms:
            node.wake_at_ms = wake_ms
            self._push(wake_ms, (WAKE, node.index, node.epoch, None))

    # -- trace ------------------------------------------------------------------------

    def trace(self, line: str) -> None:
        """Append ``line`` to the run's trace (and its hash)."""
        self._trace_lines.append(line)
        if len(self._trace_lines) >= TRACE_BATCH_LINES:
            self._flush_trace()

    def _detail(self, line: str) -> None:
        # Details (message contents) go to the sink only, never into the
        # hash, so --verbose does not change the trace hash.
        self._flush_trace()
        if self.trace_sink is not None:
            self.trace_sink(line + "\n")

    def _flush_trace(self) -> None:
        lines = self._trace_lines
        if not lines:
            return
        text = "\n".join(lines) + "\n"
        if self.trace_sink is not None:
            self.trace_sink(text)
        self._trace.update(text.encode())
        lines.clear()

    @property
    def trace_hash(self) -> str:
        """SHA-256 (hex) of the trace so far."""
        self._flush_trace()
        return self._trace.hexdigest()

    @property
    def pending_events(self) -> int:
        """Events still queued (stale wake-ups included)."""
        return sum(len(bucket) for bucket in self._buckets.values())
