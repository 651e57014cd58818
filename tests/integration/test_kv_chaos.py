"""The KV store on 5 real node processes under crashes and pauses (a Jepsen-style run).

Worker threads, one client each, put/get/cas/delete a few hot keys with
values unique to the run while the main thread, in a loop, SIGKILLs and
restarts the leader and followers and SIGSTOPs nodes (the leader too) for a
few seconds, never more than 2 of the 5 nodes down or paused at once. Then
everything heals, the clients must make progress again, and the history is
judged:

- the recorded history (final reads included) is linearizable
  (``moot.sim.linearizability``);
- the store's own change history (a watch from revision 1) holds every
  acknowledged write exactly once, at the revision the put returned, in an
  order that respects real time, and nothing that no client wrote or that a
  cas refused; its last value per key is what the final reads return;
- after every fault, some operation called after it completed within
  ``PROGRESS_WINDOW_S``.

One seed (``MOOT_CHAOS_SEED``, printed) derives every choice: operations,
victims and pause lengths. Timing is the machine's, so a seed replays the
same plan, not the same interleaving.
"""

from __future__ import annotations

import bisect
import datetime
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import moot
from moot.client.local import LocalFederation
from moot.core import wire
from moot.core.kv import Event
from moot.sim.linearizability import Cas, Delete, Get, Operation, Put, check_kv

pytestmark = pytest.mark.integration

NODES = 5
DOWN_OR_PAUSED_MAX = 2  # of 5 voters: 3 stay up, a majority
WORKERS = 5
KEYS = ("chaos/a", "chaos/b", "chaos/c")  # few keys, so clients contend
PREFIX = "chaos/"
END_KEY = "chaos/~end"  # written last: its revision bounds the watch replay
CHAOS_S = 30.0  # faults start only within this window; the last one is healed after it
KV_TIMEOUT_S = 5.0  # an operation during a fault ends (outcome unknown) rather than hangs
STATUS_TIMEOUT_S = 1.0  # a paused node answers nothing; do not wait the client's default 10 s on it
HEALTHY_TIMEOUT_S = 45.0  # a restart (python import, TLS, catch-up) takes ~1-2 s here; generous for slow CI
PROGRESS_WINDOW_S = 10.0  # an election takes ~0.3-1 s and a client's failover ~2 s; 10 s is a wide margin
DOWN_S = (0.5, 2.0)  # a killed node stays dead this long (seconds, uniform): below the 5 s voter grace
PAUSE_S = (1.5, 3.5)  # a SIGSTOP lasts this long: beyond an election timeout, below the voter grace
ACKNOWLEDGED_WRITES_MIN = 200  # ~30 s of five clients write thousands; 200 rules out a vacuous run
LEADER_FAULTS_MIN = 3  # a cycle of FAULT_PLAN holds three leader faults
CHECK_STEPS_MAX = 20_000_000  # histories of a few thousand operations, a few dozen unknown writes
POLL_S = 0.05

# The faults, in cycle order: each kind appears once per ~20 s cycle.
FAULT_PLAN = (
    "kill_leader",
    "pause_follower",
    "kill_follower",
    "pause_leader",
    "kill_leader_pause_follower",
)


def now_ms() -> float:
    """The one clock every thread stamps operations with."""
    return time.monotonic() * 1000


# -- the history ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """One operation as its client saw it, plus the revision an acknowledged put returned."""

    operation: Operation
    revision: int | None = None


class History:
    """Records from every thread, in completion order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[Record] = []

    def add(self, record: Record) -> None:
        """Append one finished (or abandoned) operation."""
        with self._lock:
            self._records.append(record)

    def records(self) -> list[Record]:
        """A copy of everything recorded so far."""
        with self._lock:
            return list(self._records)


def run_operation(history: History, client_id: int, input: Any, call: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
    """Call ``call(*args)`` and record it as ``input``; returns (outcome known, client's result).

    Any error but ``BadRequest`` (which would be this test's bug: let it
    raise) leaves the outcome unknown: a write may have happened."""
    call_ms = now_ms()
    try:
        result = call(*args)
    except moot.BadRequest:
        raise
    except (moot.MootError, TimeoutError):
        history.add(Record(operation=Operation(client_id=client_id, call_ms=call_ms, return_ms=None, input=input)))
        return False, None
    return_ms = now_ms()
    output: Any = result
    revision = None
    if isinstance(input, Get):
        output = None if result is None else result.decode()
    elif isinstance(input, Put):
        output, revision = None, result
    history.add(
        Record(
            operation=Operation(client_id=client_id, call_ms=call_ms, return_ms=return_ms, input=input, output=output),
            revision=revision,
        )
    )
    return True, result


def work(client_id: int, client: moot.Client, rng: random.Random, stop: threading.Event, history: History) -> None:
    """One client's loop: random operations on the hot keys until ``stop``."""
    kv = client.kv
    last_seen: dict[str, str | None] = {key: None for key in KEYS}
    for sequence in range(1_000_000):  # bounded; 30 s of operations is a few thousand
        if stop.is_set():
            return
        key = rng.choice(KEYS)
        value = f"w{client_id}-{sequence}"  # unique in the run: a lost or doubled write shows
        roll = rng.random()
        if roll < 0.35:
            known, result = run_operation(history, client_id, Get(key), kv.get, key)
            if known:
                last_seen[key] = None if result is None else result.decode()
        elif roll < 0.65:
            known, _ = run_operation(history, client_id, Put(key, value), kv.put, key, value)
            if known:
                last_seen[key] = value
        elif roll < 0.95:
            expected = last_seen[key]
            known, swapped = run_operation(history, client_id, Cas(key, expected, value), kv.cas, key, expected, value)
            if known and swapped:
                last_seen[key] = value
        else:
            known, _ = run_operation(history, client_id, Delete(key), kv.delete, key)
            if known:
                last_seen[key] = None
    raise AssertionError("a worker ran a million operations: the stop event was never set")


# -- the faults ------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Fault:
    """One fault the controller injected, and when."""

    kind: str
    victims: tuple[int, ...]
    start_ms: float
    leader_before: int
    started_at: str = ""
    """Wall-clock UTC time, as the node logs' ``ts``, to find the fault in them."""
    new_leader_ms: float | None = None
    healed_ms: float | None = None


def utc_now() -> str:
    """Now as the node logs stamp it (``2026-01-31T12:00:00.123Z``)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def leader_of(statuses: dict[int, wire.StatusReply]) -> int | None:
    """The node a majority of its voters (among those answering) follow, if any."""
    for index, status in sorted(statuses.items()):
        if status.role != "leader":
            continue
        followers = sum(1 for other in statuses.values() if other.leader_id == status.node_id)
        if followers * 2 > len(status.voters):
            return index
    return None


@dataclass(slots=True)
class Chaos:
    """Kills, restarts, pauses and resumes nodes; never lets a majority go."""

    federation: LocalFederation
    status_client: moot.Client
    rng: random.Random
    killed: set[int] = field(default_factory=set)
    paused: set[int] = field(default_factory=set)
    faults: list[Fault] = field(default_factory=list)

    def statuses(self) -> dict[int, wire.StatusReply]:
        """Status of every node that is neither killed nor paused and answers."""
        result = {}
        for index, node in enumerate(self.federation.nodes):
            if index in self.killed or index in self.paused:
                continue
            try:
                result[index] = self.status_client.node_status(node.address)
            except moot.MootError:
                continue
        return result

    def wait_healthy(self) -> int:
        """Wait until all 5 nodes answer, the leader has 5 voters and no
        learners, and every node follows it; returns the leader's index."""
        assert not self.killed
        assert not self.paused
        deadline = time.monotonic() + HEALTHY_TIMEOUT_S
        while time.monotonic() < deadline:
            statuses = self.statuses()
            leader = leader_of(statuses)
            if leader is not None and len(statuses) == NODES:
                status = statuses[leader]
                everyone_follows = all(other.leader_id == status.node_id for other in statuses.values())
                if len(status.voters) == NODES and not status.learners and everyone_follows:
                    return leader
            time.sleep(POLL_S)  # polling the nodes' status with a deadline
        raise AssertionError(
            f"the federation did not heal to {NODES} voters within {HEALTHY_TIMEOUT_S:.0f}s; "
            f"logs in {self.federation.directory}"
        )

    def wait_new_leader(self, fault: Fault) -> None:
        """Wait until the nodes still running elect a leader other than the old one."""
        deadline = time.monotonic() + HEALTHY_TIMEOUT_S
        while time.monotonic() < deadline:
            leader = leader_of(self.statuses())
            if leader is not None and leader != fault.leader_before:
                fault.new_leader_ms = now_ms()
                return
            time.sleep(POLL_S)  # polling for an election with a deadline
        raise AssertionError(
            f"no new leader within {HEALTHY_TIMEOUT_S:.0f}s after {fault.kind} of node {fault.victims}; "
            f"logs in {self.federation.directory}"
        )

    def kill(self, index: int) -> None:
        """SIGKILL node ``index``."""
        self._take_down(index, self.killed)
        self.federation.kill(index)

    def pause(self, index: int) -> None:
        """SIGSTOP node ``index``."""
        self._take_down(index, self.paused)
        process = self.federation.nodes[index].process
        assert process is not None
        os.kill(process.pid, signal.SIGSTOP)

    def heal(self) -> None:
        """Resume every paused node and restart every killed one."""
        for index in sorted(self.paused):
            process = self.federation.nodes[index].process
            assert process is not None
            os.kill(process.pid, signal.SIGCONT)
        self.paused.clear()
        for index in sorted(self.killed):
            self.federation.restart(index)
        self.killed.clear()

    def _take_down(self, index: int, into: set[int]) -> None:
        assert index not in self.killed
        assert index not in self.paused
        into.add(index)
        assert len(self.killed) + len(self.paused) <= DOWN_OR_PAUSED_MAX, "would lose the majority"

    def inject(self, kind: str) -> Fault:
        """Inject one fault of ``kind`` on a healthy federation, then heal it
        and wait until the federation is healthy again."""
        leader = self.wait_healthy()
        followers = [index for index in range(NODES) if index != leader]
        fault = Fault(kind=kind, victims=(), start_ms=now_ms(), leader_before=leader, started_at=utc_now())
        if kind == "kill_leader":
            fault.victims = (leader,)
            self.kill(leader)
        elif kind == "kill_follower":
            fault.victims = (self.rng.choice(followers),)
            self.kill(fault.victims[0])
        elif kind == "pause_leader":
            fault.victims = (leader,)
            self.pause(leader)
        elif kind == "pause_follower":
            fault.victims = (self.rng.choice(followers),)
            self.pause(fault.victims[0])
        else:
            assert kind == "kill_leader_pause_follower"
            follower = self.rng.choice(followers)
            fault.victims = (leader, follower)
            self.pause(follower)
            self.kill(leader)
        self.faults.append(fault)
        if leader in fault.victims:
            self.wait_new_leader(fault)
        low, high = PAUSE_S if kind.startswith("pause") else DOWN_S
        time.sleep(self.rng.uniform(low, high))  # the fault's duration, not synchronization
        self.heal()
        self.wait_healthy()
        fault.healed_ms = now_ms()
        return fault


# -- the checks ------------------------------------------------------------------------------


def replay_changes(client: moot.Client, end_revision: int) -> list[Event]:
    """Every change under ``PREFIX`` from revision 1 to ``end_revision``, from the store's watch history."""
    events: list[Event] = []
    with client.kv.watch(PREFIX, start_revision=1) as watch:
        for _ in range(end_revision):
            event = watch.get(timeout_s=30)
            assert event is not None, f"the watch replay stalled after {len(events)} of {end_revision} events"
            events.append(event)
            if event.revision >= end_revision:
                return events
    raise AssertionError(f"the watch replay passed revision {end_revision}")


def assert_acknowledged_writes_present(records: list[Record], events: list[Event], final: dict[str, str | None]) -> None:
    """The store's change history against what clients were told (see module doc)."""
    revisions = [event.revision for event in events]
    assert revisions == list(range(1, len(events) + 1)), "the change history has gaps or repeats"
    put_events: dict[str, Event] = {}
    for event in events:
        if event.kind == "put":
            value = event.value.decode()
            assert value not in put_events, f"{value!r} was applied twice (revisions {put_events[value].revision}, {event.revision})"
            put_events[value] = event
    issued: dict[Any, Record] = {}
    for record in records:
        operation = record.operation
        if isinstance(operation.input, Put):
            issued[operation.input.value] = record
        elif isinstance(operation.input, Cas):
            issued[operation.input.new] = record
    # Every applied value came from a write that was not refused.
    for value, event in put_events.items():
        if event.key.decode() == END_KEY:
            continue
        assert value in issued, f"revision {event.revision} holds {value!r}, which no client wrote"
        written = issued[value].operation
        assert isinstance(written.input, Put | Cas)
        assert event.key.decode() == written.input.key, f"{value!r} was applied to the wrong key"
        refused = isinstance(written.input, Cas) and written.output is False
        assert not refused, f"{value!r} was applied at revision {event.revision} though its cas answered False"
    # Every acknowledged write is there, at the revision a put returned.
    revision_of_write: list[tuple[Operation, int]] = []
    for value, record in issued.items():
        operation = record.operation
        if not took_effect(operation):
            continue
        assert value in put_events, f"acknowledged write {value!r} ({operation}) is missing from the store"
        revision = put_events[value].revision
        if record.revision is not None:
            assert revision == record.revision, f"put {value!r} returned revision {record.revision}, applied at {revision}"
        revision_of_write.append((operation, revision))
    # Real time: a write acknowledged before another was called has a lower revision.
    by_return = sorted(revision_of_write, key=lambda item: item[0].return_ms or 0.0)
    returns_ms = [item[0].return_ms or 0.0 for item in by_return]
    prefix_max = []
    running = 0
    for _, revision in by_return:
        running = max(running, revision)
        prefix_max.append(running)
    for operation, revision in revision_of_write:
        before = bisect.bisect_left(returns_ms, operation.call_ms)
        if before:
            assert prefix_max[before - 1] < revision, f"{operation} got revision {revision}, below a write acknowledged before it was called"
    # The final reads see the last change of each key.
    for key in KEYS:
        last = next((event for event in reversed(events) if event.key.decode() == key), None)
        expected = None if last is None or last.kind == "delete" else last.value.decode()
        assert final[key] == expected, f"final read of {key!r} is {final[key]!r}, the change history ends with {expected!r}"


def took_effect(operation: Operation) -> bool:
    """An acknowledged put, or a cas that answered True."""
    if not operation.outcome_known:
        return False
    return isinstance(operation.input, Put) or (isinstance(operation.input, Cas) and operation.output is True)


def progress_after_s(records: list[Record], start_ms: float) -> float | None:
    """Seconds from ``start_ms`` to the first completion of an operation called at or after it."""
    returns_ms = [
        record.operation.return_ms
        for record in records
        if record.operation.return_ms is not None and record.operation.call_ms >= start_ms
    ]
    return None if not returns_ms else (min(returns_ms) - start_ms) / 1000


def assert_progress_after_each_fault(records: list[Record], faults: list[Fault]) -> None:
    """Some operation called after each fault began completed within ``PROGRESS_WINDOW_S``."""
    for fault in faults:
        waited_s = progress_after_s(records, fault.start_ms)
        assert waited_s is not None, f"no operation completed after {fault}"
        assert waited_s <= PROGRESS_WINDOW_S, f"no progress for {waited_s:.1f}s after {fault}"


def summarize(records: list[Record], faults: list[Fault]) -> str:
    """Counts for the log: operations, acknowledged and unknown writes, faults."""
    writes = [record for record in records if not isinstance(record.operation.input, Get)]
    acknowledged = sum(1 for record in writes if record.operation.outcome_known)
    applied = sum(1 for record in writes if took_effect(record.operation))
    unknown = sum(1 for record in records if not record.operation.outcome_known)
    progress = [progress_after_s(records, fault.start_ms) for fault in faults]
    kinds: dict[str, int] = {}
    for fault in faults:
        kinds[fault.kind] = kinds.get(fault.kind, 0) + 1
    elections = [
        (fault.new_leader_ms - fault.start_ms) / 1000 for fault in faults if fault.new_leader_ms is not None
    ]
    return (
        f"operations={len(records)} writes={len(writes)} acknowledged_writes={acknowledged} "
        f"took_effect={applied} unknown_outcomes={unknown} faults={kinds} "
        f"new_leader_after_s={[round(seconds, 2) for seconds in elections]} "
        f"progress_after_s={[None if seconds is None else round(seconds, 2) for seconds in progress]}"
    )


# -- the test --------------------------------------------------------------------------------


def test_history_is_linearizable_and_keeps_every_acknowledged_write_under_kills_and_pauses(tmp_path: Path) -> None:
    seed = int(os.environ.get("MOOT_CHAOS_SEED", random.randrange(2**32)))
    print(f"seed {seed}; replay the plan: MOOT_CHAOS_SEED={seed} pytest {__file__}")
    root = random.Random(seed)
    with LocalFederation(NODES, directory=tmp_path / "fed") as federation:
        status_client = moot.connect(federation.addresses, cluster=federation.cluster_dir)
        status_client.timeout_s = STATUS_TIMEOUT_S
        chaos = Chaos(federation=federation, status_client=status_client, rng=random.Random(root.randrange(2**32)))
        history = History()
        stop = threading.Event()
        clients = []
        worker_errors: list[BaseException] = []

        def guarded(client_id: int, client: moot.Client, rng: random.Random) -> None:
            try:
                work(client_id, client, rng, stop, history)
            except BaseException as error:  # reported by the main thread
                worker_errors.append(error)
                raise

        threads = []
        for client_id in range(WORKERS):
            client = moot.connect(federation.addresses, cluster=federation.cluster_dir)
            client.kv.timeout_s = KV_TIMEOUT_S
            clients.append(client)
            rng = random.Random(root.randrange(2**32))
            threads.append(threading.Thread(target=guarded, args=(client_id, client, rng), name=f"kv-worker-{client_id}"))
        try:
            for thread in threads:
                thread.start()
            chaos_end = time.monotonic() + CHAOS_S
            for step in range(10_000):  # bounded; the deadline ends it after a dozen faults
                if time.monotonic() >= chaos_end or worker_errors:
                    break
                chaos.inject(FAULT_PLAN[step % len(FAULT_PLAN)])
            healed_ms = now_ms()
            # Liveness after the faults: every client completes an operation again.
            deadline = time.monotonic() + HEALTHY_TIMEOUT_S
            while not worker_errors:
                done = {r.operation.client_id for r in history.records() if r.operation.call_ms >= healed_ms and r.operation.outcome_known}
                if len(done) == WORKERS:
                    break
                assert time.monotonic() < deadline, f"only clients {sorted(done)} made progress after healing"
                time.sleep(POLL_S)  # polling the history with a deadline
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=KV_TIMEOUT_S * 4)
            chaos.heal()
        assert not worker_errors, f"a worker failed: {worker_errors[0]!r}"
        assert not any(thread.is_alive() for thread in threads), "a worker did not stop"
        for client in clients:
            client.close()

        final_id = WORKERS
        final: dict[str, str | None] = {}
        with moot.connect(federation.addresses, cluster=federation.cluster_dir) as reader:
            for key in KEYS:
                known, value = run_operation(history, final_id, Get(key), reader.kv.get, key)
                assert known, f"the final read of {key!r} failed on a healed federation"
                final[key] = None if value is None else value.decode()
            end_revision = reader.kv.put(END_KEY, "end")
            events = replay_changes(reader, end_revision)
        status_client.close()
        # Every fault was shorter than the voter grace period: nobody may
        # have lost their seat (found: a stale membership rumour once made
        # a new leader remove a live voter, costing the quorum).
        removals = []
        for log_path in sorted(federation.directory.glob("node-*.log")):
            for line in log_path.read_text().splitlines():
                if '"raft_conf_change"' in line and '"remove"' in line:
                    removals.append(line)
        assert not removals, "voters were removed during faults shorter than the grace period:\n" + "\n".join(removals)

    records = history.records()
    print(summarize(records, chaos.faults))
    for fault in chaos.faults:
        print(f"  {fault.started_at} {fault.kind} nodes {fault.victims} (leader was {fault.leader_before})")
    result = check_kv([record.operation for record in records], steps_max=CHECK_STEPS_MAX)
    print(f"{result.explanation} ({result.steps} steps)")
    assert result.ok is True, f"seed {seed}: {result.explanation}"
    assert_acknowledged_writes_present(records, events, final)
    assert_progress_after_each_fault(records, chaos.faults)
    applied = sum(1 for record in records if took_effect(record.operation))
    assert applied >= ACKNOWLEDGED_WRITES_MIN, f"only {applied} acknowledged writes took effect"
    leader_faults = [fault for fault in chaos.faults if fault.leader_before in fault.victims]
    assert len(leader_faults) >= LEADER_FAULTS_MIN, f"only {len(leader_faults)} leader faults in {CHAOS_S:.0f}s"
