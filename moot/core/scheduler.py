"""The leader's task scheduler: which node runs which pending task (sans-IO).

The scheduler keeps no durable state: everything it needs is in the task
table (``moot.core.tasks``), which every node applies. A leader builds one
from the table when it takes office (``adopt``), follows the table's events
(``add_pending``, ``settled``), and learns what runs where from its own
dispatches and from each worker node's periodic report.

Rules:

- **Capacity.** A node offers ``slots`` (its worker processes, ``--cpus``)
  and custom resources. A task needs ``resources`` (default one ``cpus``).
  CPU is oversubscribed so that a node's workers never wait for their next
  task to cross the network: a node has up to ``slots * depth`` tasks of a
  job in hand, where ``depth`` keeps about ``window_ms`` of that job's work
  queued per slot (from the run times its results report), between
  ``depth_min`` and ``depth_max``: deep for tasks of a millisecond, shallow
  for tasks of seconds (which would otherwise queue behind each other on
  one node while another idles). Custom resources are never oversubscribed.
- **Constraints.** A job's ``placement`` labels must all match the node's.
  A job no live node could ever run (labels, or a resource nobody has)
  waits, and ``blocked`` says why; it runs when such a node joins.
- **Choice.** Jobs take turns (round robin by submission), so one big job
  does not starve a small one, and a job that cannot place a task now does
  not block the others. Within a job, tasks go in index order; each goes to
  the least loaded eligible node, preferring the holders of its argument
  object (locality) when one of them has room.
- **Attempts.** Every dispatch gets a fresh attempt id,
  ``term * 2**32 + n``: unique across leaders, so a failure report is
  charged only to the run it came from.
- **Losses.** Tasks on a node whose connection closed (at once: a killed
  process's sockets close with it), on a node that left the live set, and tasks a node's
  report does not mention ``report_grace_ms`` after they were dispatched
  (the message was lost, or the node restarted), are returned as lost:
  the caller proposes them as ``lost`` finishes, and the table retries them.
- **Completion.** ``completed`` frees a task's capacity as soon as a
  worker's result arrives (before it is committed): the next task starts
  without waiting for Raft.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from moot.core import placement, tasks

DEPTH_MIN_DEFAULT: Final = 2
DEPTH_MAX_DEFAULT: Final = 64
WINDOW_MS_DEFAULT: Final = 50.0
RUN_MS_WEIGHT: Final = 0.2  # the weight of the newest run time in a job's moving average
RUN_TIMES_KEPT: Final = 10_000  # jobs whose run times are remembered (least recent out)
REPORT_GRACE_MS_DEFAULT: Final = 3_000
UNREACHABLE_MS_DEFAULT: Final = 5_000  # a node whose connection closed gets no tasks this long
CPUS: Final = "cpus"
LOCALITY_REPLICAS: Final = 3  # holders of an argument object considered local

TaskKey = tuple[str, int]  # (job id, index)
Shape = tuple[tuple[tuple[str, float], ...], tuple[tuple[str, str], ...]]  # (needs, placement labels)


@dataclass(frozen=True, slots=True)
class WorkerNode:
    """A live member that runs tasks."""

    node_id: str
    slots: int
    resources: Mapping[str, float] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Run these tasks on ``node_id`` (``(job id, index, attempt)`` each)."""

    node_id: str
    tasks: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True, slots=True)
class Lost:
    """A run that will not report: propose it as a ``lost`` finish."""

    job_id: str
    index: int
    attempt: int
    node_id: str


@dataclass(slots=True)
class _Running:
    node_id: str
    attempt: int
    dispatched_ms: int
    needs: dict[str, float]
    function: str = ""  # its job's function hash: run times are learned per function


@dataclass(slots=True)
class _Job:
    job_id: str
    needs: dict[str, float]
    placement: dict[str, str]
    function: str = ""
    pending: deque[tuple[int, str]] = field(default_factory=deque)  # (index, argument object id)
    queued: set[int] = field(default_factory=set)  # the indexes in ``pending``


def needs_of(spec: tasks.JobSpec) -> dict[str, float]:
    """What one task of the job uses: its resources, one cpu unless it says otherwise."""
    needs = dict(spec.resources)
    needs.setdefault(CPUS, 1.0)
    return needs


class Scheduler:
    """One leader's scheduler (see module doc)."""

    def __init__(
        self,
        *,
        term: int,
        depth_min: int = DEPTH_MIN_DEFAULT,
        depth_max: int = DEPTH_MAX_DEFAULT,
        window_ms: float = WINDOW_MS_DEFAULT,
        report_grace_ms: int = REPORT_GRACE_MS_DEFAULT,
        unreachable_ms: int = UNREACHABLE_MS_DEFAULT,
    ) -> None:
        if not 1 <= depth_min <= depth_max:
            raise ValueError(f"need 1 <= depth_min <= depth_max, not {depth_min}, {depth_max}")
        self._attempts = itertools.count(term * 2**32 + 1)
        self._depth_min = depth_min
        self._depth_max = depth_max
        self._window_ms = window_ms
        # Function hash -> moving average of its runs' time in a worker: per
        # function, not per job, so that a loop of submits (a job each) is
        # paced by what earlier jobs of the same function took (found: each
        # new job started at depth_min, 600 tasks/s instead of thousands).
        self._run_ms: dict[str, float] = {}
        self._report_grace_ms = report_grace_ms
        self._unreachable_ms = unreachable_ms
        self._skip_until: dict[str, int] = {}
        self._nodes: dict[str, WorkerNode] = {}
        self._used: dict[str, dict[str, float]] = {}
        self._jobs: dict[str, _Job] = {}  # jobs with pending tasks
        self._shapes: dict[Shape, deque[str]] = {}  # jobs with pending tasks by shape, in turn order
        self._running: dict[TaskKey, _Running] = {}

    # -- views ----------------------------------------------------------------------------

    @property
    def pending_count(self) -> int:
        return sum(len(job.pending) for job in self._jobs.values())

    @property
    def running_count(self) -> int:
        return len(self._running)

    def running_on(self, node_id: str) -> list[tuple[str, int, int]]:
        return [
            (job, index, run.attempt)
            for (job, index), run in self._running.items()
            if run.node_id == node_id
        ]

    def load(self, node_id: str) -> float:
        """Tasks in hand per slot."""
        node = self._nodes.get(node_id)
        if node is None or node.slots <= 0:
            return 0.0
        return self._used[node_id].get(CPUS, 0.0) / node.slots

    def blocked(self, spec: tasks.JobSpec) -> str:
        """Why no live node could ever run this job's tasks ("" if one could)."""
        return blocked_reason(spec, list(self._nodes.values()))

    # -- inputs ---------------------------------------------------------------------------

    def node_unreachable(self, node_id: str, now_ms: int) -> list[Lost]:
        """A worker node's connection closed: its runs are lost now (they
        run again elsewhere; if the node was alive after all, first result
        wins), and it gets nothing for ``unreachable_ms`` — membership takes
        seconds to say whether it died."""
        self._skip_until[node_id] = now_ms + self._unreachable_ms
        if node_id not in self._nodes:
            return []
        return self.set_nodes([node for node in self._nodes.values() if node.node_id != node_id], now_ms)

    def set_nodes(self, nodes: Iterable[WorkerNode], now_ms: int | None = None) -> list[Lost]:
        """The live worker nodes now; the runs on nodes that are gone are lost.
        (A node unreachable in the last ``unreachable_ms`` stays out.)"""
        if now_ms is not None:
            for skipped in [n for n, until in self._skip_until.items() if until <= now_ms]:
                del self._skip_until[skipped]
        fresh = {node.node_id: node for node in nodes if node.node_id not in self._skip_until}
        lost = []
        for key, run in list(self._running.items()):
            if run.node_id not in fresh:
                del self._running[key]
                lost.append(Lost(key[0], key[1], run.attempt, run.node_id))
        self._nodes = fresh
        self._used = {node_id: {} for node_id in fresh}
        for run in self._running.values():
            _charge(self._used[run.node_id], run.needs, +1)
        return lost

    def adopt(self, table: tasks.TaskTable, now_ms: int) -> None:
        """A new leader takes over: pending tasks queue; tasks the table
        says run somewhere are trusted until ``report_grace_ms`` passes
        without that node's report confirming them."""
        for job, index, task in table.unfinished():
            if task.state == "pending" or task.node not in self._nodes:
                self._queue(job, [index])
                continue
            needs = needs_of(job.spec)
            self._running[(job.job_id, index)] = _Running(
                task.node, task.attempt, now_ms, needs, job.spec.function_hash
            )
            _charge(self._used[task.node], needs, +1)

    def add_pending(self, job: tasks.JobRecord, indexes: Sequence[int]) -> None:
        """Tasks that need a worker (new, or back after a failure)."""
        for index in indexes:
            key = (job.job_id, index)
            self._release(key)
        self._queue(job, indexes)

    def settled(self, job_id: str, indexes: Sequence[int]) -> None:
        """These tasks reached a final state (committed)."""
        for index in indexes:
            key = (job_id, index)
            self._release(key)
        job = self._jobs.get(job_id)
        if job is not None and not job.queued.isdisjoint(indexes):
            gone = set(indexes)
            job.pending = deque(item for item in job.pending if item[0] not in gone)
            job.queued -= gone
            if not job.pending:
                del self._jobs[job_id]

    def job_gone(self, job_id: str) -> list[tuple[str, int, int, str]]:
        """The job was cancelled or forgotten: drop its pending tasks; the runs
        still out there are returned (``(job, index, attempt, node)``) so
        the caller can tell their nodes to stop them."""
        self._jobs.pop(job_id, None)
        stopped = []
        for key, run in list(self._running.items()):
            if key[0] == job_id:
                self._release(key)
                stopped.append((key[0], key[1], run.attempt, run.node_id))
        return stopped

    def completed(self, node_id: str, job_id: str, index: int, attempt: int, run_ms: float = 0.0) -> None:
        """A worker's result arrived (not yet committed): free its capacity,
        and learn how long the job's tasks take."""
        key = (job_id, index)
        run = self._running.get(key)
        if run is not None and run.attempt == attempt and run.node_id == node_id:
            self._release(key)
            average = self._run_ms.pop(run.function, None)
            self._run_ms[run.function] = run_ms if average is None else average + RUN_MS_WEIGHT * (run_ms - average)
            if len(self._run_ms) > RUN_TIMES_KEPT:
                del self._run_ms[next(iter(self._run_ms))]

    def depth(self, job_id: str) -> int:
        """Tasks of this job a node may hold per slot (module doc)."""
        job = self._jobs.get(job_id)
        average = self._run_ms.get(job.function) if job is not None else None
        if average is None:
            return self._depth_min
        wanted = self._window_ms / max(average, 0.1)
        return int(min(self._depth_max, max(self._depth_min, wanted)))

    def report(self, node_id: str, runs: Iterable[tuple[str, int, int]], now_ms: int) -> list[Lost]:
        """A worker node's list of the runs it has (running, queued, or done
        and not yet acknowledged). Runs we placed there that it does not
        have, dispatched more than ``report_grace_ms`` ago, are lost."""
        have = {(job, index): attempt for job, index, attempt in runs}
        lost = []
        for key, run in list(self._running.items()):
            if run.node_id != node_id:
                continue
            if have.get(key) != run.attempt and now_ms - run.dispatched_ms >= self._report_grace_ms:
                self._release(key)
                lost.append(Lost(key[0], key[1], run.attempt, node_id))
        return lost

    # -- decisions --------------------------------------------------------------------------

    def schedule(
        self, now_ms: int, holders: Mapping[str, Sequence[str]] | None = None
    ) -> list[Dispatch]:
        """Place as many pending tasks as there is room for. ``holders``:
        the nodes holding an argument object, by object id, if known (else
        ranked by rendezvous hashing over the live nodes)."""
        if not self._jobs or not self._nodes:
            return []
        planned: dict[str, list[tuple[str, int, int]]] = {}
        candidates = [
            placement.Candidate(node_id, node.labels.get("region", ""))
            for node_id, node in self._nodes.items()
        ]
        # Jobs that need the same (resources, labels) share eligibility and
        # room: a shape that has no room now is passed over whole, so a call
        # costs O(tasks placed + shapes), however many jobs wait (found: a
        # loop of 10,000 submits made every call walk every job).
        for shape, turns in list(self._shapes.items()):
            eligible: list[str] | None = None
            while turns:
                job = self._jobs.get(turns[0])
                if job is None or not job.pending:
                    turns.popleft()  # finished or gone since it queued
                    continue
                if eligible is None:
                    eligible = self._eligible(job)
                index, argument = job.pending[0]
                node_id = self._choose(job, eligible, argument, holders, candidates)
                if node_id is None:
                    break  # no room for this shape now
                job.pending.popleft()
                job.queued.discard(index)
                attempt = next(self._attempts)
                self._running[(job.job_id, index)] = _Running(node_id, attempt, now_ms, job.needs, job.function)
                _charge(self._used[node_id], job.needs, +1)
                planned.setdefault(node_id, []).append((job.job_id, index, attempt))
                if job.pending:
                    turns.rotate(-1)  # the next job of this shape takes its turn
                else:
                    turns.popleft()
                    del self._jobs[job.job_id]
            if not turns:
                del self._shapes[shape]
        return [Dispatch(node_id, tuple(runs)) for node_id, runs in sorted(planned.items())]

    # -- helpers ------------------------------------------------------------------------------

    def _queue(self, job: tasks.JobRecord, indexes: Sequence[int]) -> None:
        if not indexes:
            return
        entry = self._jobs.get(job.job_id)
        if entry is None:
            entry = _Job(job.job_id, needs_of(job.spec), dict(job.spec.placement), job.spec.function_hash)
            self._jobs[job.job_id] = entry
            shape = (tuple(sorted(entry.needs.items())), tuple(sorted(entry.placement.items())))
            self._shapes.setdefault(shape, deque()).append(job.job_id)
        for index in indexes:
            if index in entry.queued or (job.job_id, index) in self._running:
                continue
            entry.queued.add(index)
            entry.pending.append((index, job.tasks[index].args.object_id))

    def _eligible(self, job: _Job) -> list[str]:
        return [
            node_id
            for node_id, node in self._nodes.items()
            if _labels_match(node, job.placement)
            and all(_capacity(node, name) >= amount for name, amount in job.needs.items())
        ]

    def _choose(
        self,
        job: _Job,
        eligible: list[str],
        argument: str,
        holders: Mapping[str, Sequence[str]] | None,
        candidates: list[placement.Candidate],
    ) -> str | None:
        depth = self.depth(job.job_id)
        with_room = [node_id for node_id in eligible if self._fits(node_id, job.needs, depth)]
        if not with_room:
            return None
        if argument:
            near = holders.get(argument) if holders is not None else None
            if near is None:
                near = placement.rank(argument, candidates)[:LOCALITY_REPLICAS]
            local = [node_id for node_id in with_room if node_id in near]
            if local:
                with_room = local
        return min(with_room, key=lambda node_id: (self.load(node_id), node_id))

    def _fits(self, node_id: str, needs: Mapping[str, float], depth: int) -> bool:
        node = self._nodes[node_id]
        used = self._used[node_id]
        for name, amount in needs.items():
            limit = _capacity(node, name) * (depth if name == CPUS else 1)
            if used.get(name, 0.0) + amount > limit + 1e-9:
                return False
        return True

    def _release(self, key: TaskKey) -> None:
        run = self._running.pop(key, None)
        if run is not None and run.node_id in self._used:
            _charge(self._used[run.node_id], run.needs, -1)


def blocked_reason(spec: tasks.JobSpec, nodes: Sequence[WorkerNode]) -> str:
    """Why none of ``nodes`` could ever run the job's tasks ("" if one could)."""
    needs = needs_of(spec)
    if not nodes:
        return "no live node runs tasks"
    labelled = [node for node in nodes if _labels_match(node, spec.placement)]
    if not labelled:
        wanted = ", ".join(f"{k}={v}" for k, v in sorted(spec.placement.items()))
        return f"no live node has the labels {wanted}"
    for node in labelled:
        if all(_capacity(node, name) >= amount for name, amount in needs.items()):
            return ""
    wanted = ", ".join(f"{k}={v:g}" for k, v in sorted(needs.items()))
    return f"no live node with the placement labels offers {wanted}"


def _capacity(node: WorkerNode, name: str) -> float:
    if name == CPUS:
        return float(node.slots)
    return float(node.resources.get(name, 0.0))


def _labels_match(node: WorkerNode, wanted: Mapping[str, str]) -> bool:
    return all(node.labels.get(key) == value for key, value in wanted.items())


def _charge(used: dict[str, float], needs: Mapping[str, float], sign: int) -> None:
    for name, amount in needs.items():
        used[name] = used.get(name, 0.0) + sign * amount
