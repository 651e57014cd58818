"""A tiny in-memory network and disk for driving several Raft cores.

Every node's ``Output`` is carried out in contract order: persist to its
``Disk``, queue messages, apply committed entries to its state machine (a list
of applied entries), collect read states, then ``advance``. Faults: message
loss, partitions (sets of cut links), crashes (the node object is dropped and
rebuilt from its disk on restart). One seed drives everything.

``SafetyChecker`` is separate from the fault injection and checks, after
every output: election safety, state-machine safety, leader completeness, and
on demand log matching.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from moot.core.raft import Accepted, Output, RaftNode, ReadFailure, ReadState, Rejected
from moot.core.raft_config import RaftConfig
from moot.core.raft_messages import Entry, HardState, RaftMessage, Snapshot


@dataclass
class Disk:
    """What survives a crash."""

    hard_state: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None


@dataclass
class SimNode:
    node_id: str
    raft: RaftNode
    disk: Disk
    applied: list[Entry] = field(default_factory=list)  # state machine: every applied entry
    reads: list[ReadState] = field(default_factory=list)
    read_failures: list[ReadFailure] = field(default_factory=list)
    results: list[Accepted | Rejected] = field(default_factory=list)

    def applied_index(self) -> int:
        return self.applied[-1].index if self.applied else 0


def encode_state(applied: list[Entry]) -> bytes:
    return msgspec.msgpack.encode(applied)


def decode_state(data: bytes) -> list[Entry]:
    return msgspec.msgpack.decode(data, type=list[Entry])


class SafetyChecker:
    """Raft's safety properties (Figure 3 of the paper), checked as we go."""

    def __init__(self) -> None:
        self.leaders: dict[int, str] = {}  # term -> leader
        self.committed: dict[int, Entry] = {}  # index -> entry some node applied
        self.commit_term: dict[int, int] = {}  # index -> an upper bound on its commit term

    def observe(self, node: SimNode, out: Output) -> None:
        raft = node.raft
        if raft.role == "leader":
            known = self.leaders.setdefault(raft.term, node.node_id)
            assert known == node.node_id, f"election safety: {known} and {node.node_id} lead term {raft.term}"
            self.check_leader_completeness(raft)
        for entry in out.committed_entries:
            seen = self.committed.setdefault(entry.index, entry)
            assert seen == entry, f"state machine safety at {entry.index}: {seen} vs {entry} on {node.node_id}"
            self.commit_term[entry.index] = min(self.commit_term.get(entry.index, raft.term), raft.term)

    def check_leader_completeness(self, raft: RaftNode) -> None:
        for index, entry in self.committed.items():
            if self.commit_term[index] < raft.term and index >= raft.first_index:
                assert raft.last_index >= index, f"leader {raft.node_id} of term {raft.term} lacks committed {index}"
                assert raft.log_term(index) == entry.term, f"leader {raft.node_id} has a different entry at {index}"

    def check_log_matching(self, nodes: list[SimNode]) -> None:
        """If two logs hold an entry of the same index and term, they are
        identical up to it (checked from the top common matching entry)."""
        for i, a in enumerate(nodes):
            for b in nodes[i + 1 :]:
                low = max(a.raft.first_index, b.raft.first_index)
                high = min(a.raft.last_index, b.raft.last_index)
                top = 0
                for index in range(high, low - 1, -1):
                    if a.raft.log_term(index) == b.raft.log_term(index):
                        top = index
                        break
                for index in range(low, top + 1):
                    assert a.raft.log_entry(index) == b.raft.log_entry(index), (
                        f"log matching: {a.node_id} and {b.node_id} differ at {index} below {top}"
                    )


class Net:
    """Nodes exchanging messages with a random delay on one clock."""

    def __init__(
        self,
        count: int,
        *,
        seed: int = 1,
        config: RaftConfig | None = None,
        delay_ms: tuple[int, int] = (1, 5),
        learners: int = 0,
    ) -> None:
        self.config = config or RaftConfig.sim()
        self.rng = random.Random(seed)
        self.now = 0
        # Each node's clock: (network ms, local ms) at the last rate change,
        # and its rate relative to the network's clock. Drift tests leases.
        self.clocks: dict[str, tuple[int, int, float]] = {}
        self.delay_ms = delay_ms
        self.loss = 0.0
        self.queue: list[tuple[int, int, RaftMessage]] = []
        self.counter = 0
        self.cut: set[frozenset[str]] = set()
        self.down: set[str] = set()
        self.checker = SafetyChecker()
        self.voter_ids = tuple(f"n{index}" for index in range(1, count + 1))
        self.learner_ids = tuple(f"l{index}" for index in range(1, learners + 1))
        self.nodes: dict[str, SimNode] = {}
        for node_id in self.voter_ids + self.learner_ids:
            self.nodes[node_id] = self._build(node_id, Disk())
        self.filter: Callable[[RaftMessage], bool] | None = None  # False drops a message
        self.read_floor: dict[tuple[str, int], int] = {}  # (node, request) -> committed max when asked

    # -- nodes ---------------------------------------------------------------------

    def _build(self, node_id: str, disk: Disk) -> SimNode:
        raft = RaftNode(
            self.config,
            node_id=node_id,
            voters=self.voter_ids,
            learners=self.learner_ids,
            rng=random.Random(self.rng.randrange(2**32)),
            now_ms=self.local(node_id),
            hard_state=disk.hard_state,
            log_entries=list(disk.entries),
            snapshot=disk.snapshot,
        )
        applied = decode_state(disk.snapshot.data) if disk.snapshot else []
        return SimNode(node_id, raft, disk, applied=applied)

    def add_node(self, node_id: str) -> SimNode:
        """A brand-new empty node (to be added as a learner)."""
        node = self._build(node_id, Disk())
        self.nodes[node_id] = node
        return node

    def crash(self, node_id: str) -> None:
        self.down.add(node_id)

    def restart(self, node_id: str) -> None:
        self.down.discard(node_id)
        self.nodes[node_id] = self._build(node_id, self.nodes[node_id].disk)

    def isolate(self, node_id: str) -> None:
        for other in self.nodes:
            if other != node_id:
                self.cut.add(frozenset((node_id, other)))

    def partition(self, *groups: tuple[str, ...]) -> None:
        for i, group in enumerate(groups):
            for other_group in groups[i + 1 :]:
                for a in group:
                    for b in other_group:
                        self.cut.add(frozenset((a, b)))

    def heal(self) -> None:
        self.cut.clear()
        self.loss = 0.0

    # -- carrying out outputs ----------------------------------------------------

    def handle(self, node_id: str, out: Output) -> Output:
        node = self.nodes[node_id]
        disk = node.disk
        # 1. persist
        if out.snapshot is not None:
            disk.snapshot = out.snapshot
            disk.entries = [entry for entry in disk.entries if entry.index > out.snapshot.meta.index]
        if out.entries:
            first = out.entries[0].index
            disk.entries = [entry for entry in disk.entries if entry.index < first] + list(out.entries)
        if disk.snapshot is not None:
            disk.entries = [entry for entry in disk.entries if entry.index > disk.snapshot.meta.index]
        for offset, entry in enumerate(disk.entries):
            base = disk.snapshot.meta.index if disk.snapshot else 0
            assert entry.index == base + 1 + offset, f"{node_id}: gap in the stored log"
        if out.hard_state is not None:
            disk.hard_state = out.hard_state
        # 2. send
        for message in out.messages:
            self.send(message)
        # 3. apply
        if out.restore_snapshot:
            assert out.snapshot is not None
            node.applied = decode_state(out.snapshot.data)
        for entry in out.committed_entries:
            assert entry.index == node.applied_index() + 1, f"{node_id} applies {entry.index} out of order"
            node.applied.append(entry)
        # 4. reads and results
        for read in out.read_states:
            assert read.index <= node.applied_index()
            floor = self.read_floor.pop((node_id, read.request_id), 0)
            assert read.index >= floor, f"stale read on {node_id}: index {read.index} < committed {floor}"
        node.reads.extend(out.read_states)
        node.read_failures.extend(out.read_failures)
        if out.result is not None:
            node.results.append(out.result)
        self.checker.observe(node, out)
        node.raft.advance(out)
        return out

    def send(self, message: RaftMessage) -> None:
        if frozenset((message.source, message.target)) in self.cut:
            return
        if self.loss and self.rng.random() < self.loss:
            return
        self.counter += 1
        at = self.now + self.rng.randint(*self.delay_ms)
        heapq.heappush(self.queue, (at, self.counter, message))

    # -- driving -----------------------------------------------------------------

    def run_until(self, end_ms: int, *, stop: Callable[[], bool] | None = None) -> None:
        while stop is None or not stop():
            live = [
                (self.global_ms(i, n.raft.next_deadline_ms()), i)
                for i, n in self.nodes.items()
                if i not in self.down
            ]
            next_tick = min(live)[0] if live else end_ms + 1
            next_message = self.queue[0][0] if self.queue else end_ms + 1
            when = min(next_tick, next_message)
            if when > end_ms:
                self.now = max(self.now, end_ms)
                return
            self.now = max(self.now, when)
            if next_message <= next_tick:
                _, _, message = heapq.heappop(self.queue)
                self.deliver(message)
            else:
                node_id = min(live)[1]
                self.handle(node_id, self.nodes[node_id].raft.tick(self.local(node_id)))

    def run_for(self, duration_ms: int) -> None:
        self.run_until(self.now + duration_ms)

    def deliver(self, message: RaftMessage) -> None:
        target = message.target
        if target not in self.nodes or target in self.down:
            return
        if frozenset((message.source, target)) in self.cut:
            return
        if self.filter is not None and not self.filter(message):
            return
        self.handle(target, self.nodes[target].raft.step(self.local(target), message))

    def stabilize(self, *, messages_max: int = 10_000) -> None:
        """Deliver every queued message (and those they cause) without
        advancing the clock, as etcd's ``stabilize``: no timer fires."""
        for _ in range(messages_max):
            if not self.queue:
                return
            _, _, message = heapq.heappop(self.queue)
            self.deliver(message)
        raise AssertionError(f"not stable after {messages_max} messages")

    # -- clocks --------------------------------------------------------------------

    def set_clock_rate(self, node_id: str, rate: float) -> None:
        """From now on ``node_id``'s clock runs at ``rate`` times network time."""
        assert rate > 0
        self.clocks[node_id] = (self.now, self.local(node_id), rate)

    def local(self, node_id: str) -> int:
        """``node_id``'s local clock now."""
        anchor_ms, local_anchor_ms, rate = self.clocks.get(node_id, (0, 0, 1.0))
        return local_anchor_ms + math.floor((self.now - anchor_ms) * rate)

    def global_ms(self, node_id: str, local_ms: int) -> int:
        """The earliest network time at which ``node_id``'s clock reads ``local_ms``."""
        anchor_ms, local_anchor_ms, rate = self.clocks.get(node_id, (0, 0, 1.0))
        return anchor_ms + max(0, math.ceil((local_ms - local_anchor_ms) / rate))

    # -- convenience -------------------------------------------------------------

    def leader(self) -> SimNode | None:
        """The live leader of the highest term, if any."""
        leaders = [n for i, n in self.nodes.items() if i not in self.down and n.raft.role == "leader"]
        return max(leaders, key=lambda n: n.raft.term) if leaders else None

    def wait_for_leader(self, within_ms: int = 2_000, *, among: tuple[str, ...] | None = None) -> SimNode:
        def found() -> bool:
            node = self.leader()
            return node is not None and (among is None or node.node_id in among)

        self.run_until(self.now + within_ms, stop=found)
        node = self.leader()
        assert node is not None, f"no leader within {within_ms} ms"
        return node

    def read_index(self, node_id: str, request_id: int, *, lease: bool = False) -> Output:
        """Linearizability check: the read point must cover every entry
        committed anywhere before the request."""
        self.read_floor[(node_id, request_id)] = max(self.checker.committed, default=0)
        return self.handle(node_id, self.nodes[node_id].raft.read_index(self.local(node_id), request_id, lease=lease))

    def propose(self, node_id: str, data: bytes) -> Accepted | Rejected:
        out = self.handle(node_id, self.nodes[node_id].raft.propose(self.local(node_id), data))
        assert out.result is not None
        return out.result

    def wait_applied(self, node_ids: tuple[str, ...], index: int, within_ms: int = 2_000) -> None:
        def done() -> bool:
            return all(self.nodes[i].applied_index() >= index for i in node_ids)

        self.run_until(self.now + within_ms, stop=done)
        assert done(), {i: self.nodes[i].applied_index() for i in node_ids}

    def live(self) -> list[SimNode]:
        return [n for i, n in self.nodes.items() if i not in self.down]


# -- data-driven scripts (etcd's interaction tests, in miniature) -----------------


def run_script(script: str) -> str:
    """Run a script of commands, one a line, and return what ``status`` and
    ``log`` printed. Timers never fire on their own (timeouts are huge); time
    moves only by ``tick NODE`` (fire that node's next deadline).

    Commands: ``nodes N [learners=K]``, ``campaign NODE``, ``propose NODE DATA``,
    ``read NODE ID``, ``transfer NODE TARGET``, ``conf NODE KIND TARGET``,
    ``compact NODE INDEX``, ``isolate NODE``, ``crash NODE``, ``restart NODE``,
    ``heal``, ``tick NODE``, ``stabilize``, ``status``, ``log NODE``.
    """
    from moot.core.raft_messages import ConfChange

    config = RaftConfig(heartbeat_interval_ms=1_000_000, election_timeout_ms=10_000_000)
    net: Net | None = None
    lines: list[str] = []
    for raw in script.strip().splitlines():
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        command, args = words[0], words[1:]
        if command == "nodes":
            learners = int(args[1].split("=")[1]) if len(args) > 1 else 0
            net = Net(int(args[0]), seed=1, config=config, delay_ms=(1, 1), learners=learners)
            continue
        assert net is not None, "script must start with `nodes`"
        if command == "campaign":
            net.handle(args[0], net.nodes[args[0]].raft.campaign(net.now))
        elif command == "propose":
            result = net.propose(args[0], args[1].encode())
            lines.append(f"> propose {args[0]}: {_describe(result)}")
        elif command == "read":
            net.read_index(args[0], int(args[1]))
        elif command == "transfer":
            out = net.handle(args[0], net.nodes[args[0]].raft.transfer_leadership(net.now, args[1]))
            lines.append(f"> transfer {args[0]}: {_describe(out.result)}")
        elif command == "conf":
            change = ConfChange(args[1], args[2])  # type: ignore[arg-type]
            out = net.handle(args[0], net.nodes[args[0]].raft.propose_conf_change(net.now, change))
            lines.append(f"> conf {args[0]}: {_describe(out.result)}")
        elif command == "compact":
            node = net.nodes[args[0]]
            index = int(args[1])
            net.handle(args[0], node.raft.compact(net.now, index, encode_state(node.applied[:index])))
        elif command == "isolate":
            net.isolate(args[0])
        elif command == "crash":
            net.crash(args[0])
        elif command == "restart":
            net.restart(args[0])
        elif command == "heal":
            net.heal()
        elif command == "tick":
            node = net.nodes[args[0]]
            net.now = max(net.now, node.raft.next_deadline_ms())
            net.handle(args[0], node.raft.tick(net.now))
        elif command == "add-node":
            net.add_node(args[0])
        elif command == "stabilize":
            net.stabilize()
        elif command == "status":
            for node_id, node in net.nodes.items():
                raft = node.raft
                state = "down" if node_id in net.down else raft.role
                extra = f" reads={[(r.request_id, r.index) for r in node.reads]}" if node.reads else ""
                failed = [(f.request_id, f.reason) for f in node.read_failures]
                extra += f" read_failures={failed}" if failed else ""
                lines.append(
                    f"{node_id}: {state} term={raft.term} leader={raft.leader_id} "
                    f"last={raft.last_index} commit={raft.commit_index} applied={node.applied_index()}"
                    f"{extra}"
                )
        elif command == "log":
            node = net.nodes[args[0]]
            entries = [
                f"{i}/{node.raft.log_term(i)}:{node.raft.log_entry(i).data.decode() or '-'}"
                for i in range(node.raft.first_index, node.raft.last_index + 1)
            ]
            lines.append(f"{args[0]} log: {' '.join(entries)}")
        else:
            raise AssertionError(f"unknown script command {command!r}")
    return "\n".join(lines)


def _describe(result: Accepted | Rejected | None) -> str:
    if isinstance(result, Accepted):
        return f"accepted index={result.index} term={result.term}"
    if isinstance(result, Rejected):
        return f"rejected {result.reason} leader={result.leader_id}"
    return "none"
