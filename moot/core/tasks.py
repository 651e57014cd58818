"""Durable jobs and tasks: the records the replicated state machine keeps.

Sans-IO and deterministic, like ``moot.core.kv`` whose state holds a
``TaskTable`` (task commands travel in the same Raft entries as key-value
writes, batched by the same group commit). Two replicas that apply the same
commands end byte-identical, down to ``snapshot()``.

A **job** is one ``submit`` or one ``map``: a function (cloudpickled, stored
once per content hash however many jobs use it) and ``total`` tasks, each
with its own arguments. Arguments, results and functions are ``Payload``s:
inline bytes when small, else the id of an object in the object store
(which the table references under ``objects.REF_KEY_PREFIX`` while the job
is kept, so the collector leaves it alone).

Rules:

- Task states: ``pending`` (waiting for a worker) -> ``running`` (assigned:
  ``AssignTasks`` names the node and a fresh ``attempt`` id) -> ``done``
  (a result), ``failed`` (an error that is final) or ``cancelled``.
- **First result wins.** ``FinishTasks`` with kind ``ok`` finishes a task
  that is pending or running, whichever attempt reported it (tasks may run
  more than once; the result of any run is a valid one). A result for a
  task already finished is discarded and counted (``duplicates``); each
  finished task gets the job's next ``seq``, the order clients see.
- A failure counts only for the attempt the task is running now (a stale
  report from an older attempt is discarded). ``crashed``/``lost`` (the
  worker process or its node died) are retried up to ``max_retries``, then
  the task fails as ``crashed``; ``error``/``timeout``/``memory`` (the task
  itself failed) are retried up to ``retries``, then the task fails.
- A job is finished when all its ``total`` tasks are present and finished.
  Finished jobs are kept for ``moot job result`` until forgotten
  (``ForgetJob``) or until more than ``jobs_finished_max`` finished jobs (or
  ``tasks_kept_max`` tasks) are kept: the oldest finished go first.
- ``apply`` returns what changed as ``TaskEvent``s (the scheduler and the
  clients' subscriptions follow them) and the reference keys to put or
  delete (the caller, ``KvState``, owns the keys).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

from moot.core import objects

PAYLOAD_INLINE_BYTES_MAX: Final = 64 * 1024  # args/results larger than this go to the object store
FUNCTION_INLINE_BYTES_MAX: Final = 1024 * 1024  # a larger function goes to the object store
TASKS_PER_COMMAND_MAX: Final = 10_000
TASKS_PER_JOB_MAX: Final = 10_000_000
RETRIES_MAX: Final = 1_000
RESOURCES_MAX: Final = 16
ERROR_TEXT_CHARS_MAX: Final = 16 * 1024
NAME_CHARS_MAX: Final = 200
JOBS_FINISHED_MAX_DEFAULT: Final = 10_000
TASKS_KEPT_MAX_DEFAULT: Final = 2_000_000
SNAPSHOT_FORMAT_VERSION: Final = 1

T = TypeVar("T")

JobId = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{32}$")]
Hash = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
NodeId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Text = Annotated[str, msgspec.Meta(max_length=ERROR_TEXT_CHARS_MAX)]
Name = Annotated[str, msgspec.Meta(max_length=NAME_CHARS_MAX)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Index = Annotated[int, msgspec.Meta(ge=0, lt=TASKS_PER_JOB_MAX)]
Retries = Annotated[int, msgspec.Meta(ge=0, le=RETRIES_MAX)]
ResourceName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
ResourceAmount = Annotated[float, msgspec.Meta(ge=0, le=1e9)]
LabelText = Annotated[str, msgspec.Meta(max_length=128)]

TaskState = Literal["pending", "running", "done", "failed", "cancelled"]
FinishKind = Literal["ok", "error", "timeout", "memory", "crashed", "lost"]
JobState = Literal["submitting", "running", "finished", "cancelled"]
FAILURE_KINDS_OF_THE_TASK: Final = ("error", "timeout", "memory")  # retried under ``retries``
FAILURE_KINDS_OF_THE_WORKER: Final = ("crashed", "lost")  # retried under ``max_retries``


class BadTaskCommand(ValueError):
    """A task command that breaks a rule (checked before it is proposed)."""


# -- what travels in the log ----------------------------------------------------------


class Payload(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """Bytes inline, or the id of an object holding them (exactly one is set,
    except for the empty payload)."""

    inline: Annotated[bytes, msgspec.Meta(max_length=FUNCTION_INLINE_BYTES_MAX)] = b""
    object_id: Annotated[str, msgspec.Meta(pattern="^([0-9a-f]{64})?$")] = ""
    size: Count = 0  # the object's size (for its database record)


class JobSpec(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """How a job's tasks run. ``function_hash``: sha256 of the cloudpickled
    function (for an object-stored function, its object id)."""

    name: Name
    function_hash: Hash
    retries: Retries = 0
    max_retries: Retries = 3
    timeout_ms: Count = 0  # 0: none
    resources: Annotated[
        dict[ResourceName, ResourceAmount], msgspec.Meta(max_length=RESOURCES_MAX)
    ] = {}
    placement: Annotated[dict[LabelText, LabelText], msgspec.Meta(max_length=RESOURCES_MAX)] = {}
    owner: Name = ""


class SubmitJob(msgspec.Struct, frozen=True, tag="job_submit", forbid_unknown_fields=True):
    """A new job with its first tasks (indexes 0..len-1); the rest come in
    ``AddTasks``. ``function`` may be left empty if a kept job uses the same
    ``function_hash`` (the answer says ``succeeded=False`` if none does:
    send it again with the function)."""

    job_id: JobId
    spec: JobSpec
    total: Annotated[int, msgspec.Meta(ge=1, le=TASKS_PER_JOB_MAX)]
    now_ms: Count
    tasks: Annotated[tuple[Payload, ...], msgspec.Meta(max_length=TASKS_PER_COMMAND_MAX)]
    function: Payload | None = None


class SubmitJobs(msgspec.Struct, frozen=True, tag="job_submit_many", forbid_unknown_fields=True):
    """Several small jobs in one command (a client's loop of ``submit``s,
    group-committed). All or nothing: if any job would be refused (an id
    in use, a function neither kept nor sent in this batch) none is
    submitted, and the answer is ``succeeded=False``."""

    jobs: Annotated[tuple[SubmitJob, ...], msgspec.Meta(min_length=1, max_length=TASKS_PER_COMMAND_MAX)]


class AddTasks(msgspec.Struct, frozen=True, tag="job_add", forbid_unknown_fields=True):
    """More tasks of a job, from index ``start`` (must be the next one)."""

    job_id: JobId
    start: Index
    tasks: Annotated[
        tuple[Payload, ...], msgspec.Meta(min_length=1, max_length=TASKS_PER_COMMAND_MAX)
    ]


class Assignment(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    job_id: JobId
    index: Index
    attempt: Count


class AssignTasks(msgspec.Struct, frozen=True, tag="task_assign", forbid_unknown_fields=True):
    """The leader's scheduler sent these tasks to ``node``."""

    node: NodeId
    assignments: Annotated[tuple[Assignment, ...], msgspec.Meta(max_length=TASKS_PER_COMMAND_MAX)]


class Finish(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """One run's outcome. ``value``: the cloudpickled result (``ok``) or
    exception (else, if it pickled)."""

    job_id: JobId
    index: Index
    attempt: Count
    node: NodeId
    kind: FinishKind
    value: Payload = Payload()
    error_type: Name = ""
    error_message: Text = ""
    traceback: Text = ""
    duration_ms: Count = 0  # the run's time in its worker


class FinishTasks(msgspec.Struct, frozen=True, tag="task_finish", forbid_unknown_fields=True):
    now_ms: Count
    finishes: Annotated[tuple[Finish, ...], msgspec.Meta(max_length=TASKS_PER_COMMAND_MAX)]


class CancelJob(msgspec.Struct, frozen=True, tag="job_cancel", forbid_unknown_fields=True):
    job_id: JobId


class ForgetJob(msgspec.Struct, frozen=True, tag="job_forget", forbid_unknown_fields=True):
    job_id: JobId


TaskCommand = SubmitJob | SubmitJobs | AddTasks | AssignTasks | FinishTasks | CancelJob | ForgetJob
TASK_COMMAND_TYPES: Final = (SubmitJob, SubmitJobs, AddTasks, AssignTasks, FinishTasks, CancelJob, ForgetJob)


# -- what the table keeps -------------------------------------------------------------


class TaskRecord(msgspec.Struct, array_like=True, gc=False):
    """One task (mutable; private to the table, copied out to readers)."""

    args: Payload
    state: TaskState = "pending"
    attempt: int = 0  # the attempt running now (0: never assigned)
    node: str = ""
    runs: int = 0  # assignments so far
    crashes: int = 0
    errors: int = 0
    seq: int = 0  # position among the job's finished tasks (1-based; 0: not finished)
    kind: str = ""  # the finishing kind
    value: Payload = Payload()
    error_type: str = ""
    error_message: str = ""
    traceback: str = ""


class JobRecord(msgspec.Struct, array_like=True, gc=False):
    """One job (mutable; private to the table)."""

    job_id: str
    spec: JobSpec
    total: int
    submitted_ms: int
    state: JobState = "submitting"
    finished: int = 0  # tasks done or failed or cancelled
    failed: int = 0
    seq: int = 0
    commits: int = 0  # results committed (first wins)
    duplicates: int = 0  # results discarded: their task had finished already
    finished_ms: int = 0
    tasks: list[TaskRecord] = []
    finished_order: list[int] = []  # task indexes in seq order: the one with seq k is at k - 1


class TaskEvent(msgspec.Struct, frozen=True, array_like=True):
    """What an applied command changed, for the scheduler and subscribers.

    ``pending``: tasks that need a worker (new or retried); ``finished``:
    tasks that reached a final state (with their seq); ``job``: the job's
    state changed (finished, cancelled, forgotten)."""

    kind: Literal["pending", "finished", "job"]
    job_id: str
    indexes: tuple[int, ...] = ()
    state: str = ""


@dataclass(slots=True)
class Applied:
    """The answer to one task command, what changed, and the database keys
    the caller must put (``puts``: references, and records of result
    objects) or delete (``deletes``: references)."""

    succeeded: bool
    events: list[TaskEvent] = field(default_factory=list)
    puts: list[tuple[bytes, bytes]] = field(default_factory=list)
    deletes: list[bytes] = field(default_factory=list)
    detail: str = ""


class _Image(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format_version: int
    functions: tuple[tuple[str, Payload, int], ...]
    jobs: tuple[JobRecord, ...]
    finished_order: tuple[str, ...]


_image_encoder: Final = msgspec.msgpack.Encoder()
_image_decoder: Final[msgspec.msgpack.Decoder[_Image]] = msgspec.msgpack.Decoder(_Image)


def batches(items: Sequence[T], cost: Callable[[T], int], bytes_max: int, count_max: int) -> Iterator[list[T]]:
    """``items`` in order, cut into lists of at most ``count_max`` items
    whose ``cost`` sums to at most ``bytes_max`` (an item costlier than
    that goes alone): how results are packed into messages and commands."""
    batch: list[T] = []
    size = 0
    for item in items:
        weight = cost(item)
        if batch and (size + weight > bytes_max or len(batch) >= count_max):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += weight
    if batch:
        yield batch


def outcome_bytes(item: Any) -> int:
    """About what a finish (or a client's view of one) weighs on the wire."""
    return len(item.value.inline) + len(item.traceback) + len(item.error_message) + 200


def ref_key(object_id: str, job_id: str) -> bytes:
    """The database key that keeps ``object_id`` while ``job_id`` is kept."""
    return objects.REF_KEY_PREFIX + f"{object_id}/{job_id}".encode()


def function_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the table --------------------------------------------------------------------------


class TaskTable:
    """Jobs, their tasks and the functions they run (see module doc)."""

    def __init__(
        self,
        *,
        jobs_finished_max: int = JOBS_FINISHED_MAX_DEFAULT,
        tasks_kept_max: int = TASKS_KEPT_MAX_DEFAULT,
    ) -> None:
        if jobs_finished_max < 1 or tasks_kept_max < 1:
            raise ValueError("jobs_finished_max and tasks_kept_max must be >= 1")
        self._jobs_finished_max = jobs_finished_max
        self._tasks_kept_max = tasks_kept_max
        self._jobs: dict[str, JobRecord] = {}  # submission order
        self._functions: dict[str, tuple[Payload, int]] = {}  # hash -> (function, jobs using it)
        self._finished_order: dict[str, None] = {}  # finished jobs, oldest first
        self._tasks_kept = 0

    # -- reads ------------------------------------------------------------------------

    def job(self, job_id: str) -> JobRecord | None:
        """The job's record (do not change it), or None if unknown or forgotten."""
        return self._jobs.get(job_id)

    def jobs(self) -> Iterator[JobRecord]:
        """Every kept job, in submission order."""
        return iter(self._jobs.values())

    def function(self, function_hash: str) -> Payload | None:
        entry = self._functions.get(function_hash)
        return entry[0] if entry is not None else None

    def task(self, job_id: str, index: int) -> TaskRecord | None:
        job = self._jobs.get(job_id)
        if job is None or not 0 <= index < len(job.tasks):
            return None
        return job.tasks[index]

    def finished_since(self, job_id: str, seq: int) -> list[tuple[int, TaskRecord]]:
        """The job's finished tasks with a seq above ``seq``, in seq order."""
        job = self._jobs.get(job_id)
        if job is None:
            return []
        return [(index, job.tasks[index]) for index in job.finished_order[max(0, seq) :]]

    def unfinished(self) -> Iterator[tuple[JobRecord, int, TaskRecord]]:
        """Every pending or running task of a live job (a new leader's scheduler starts from these)."""
        for job in self._jobs.values():
            if job.state in ("finished", "cancelled"):
                continue
            for index, task in enumerate(job.tasks):
                if task.state in ("pending", "running"):
                    yield job, index, task

    @property
    def tasks_kept(self) -> int:
        return self._tasks_kept

    # -- writes -------------------------------------------------------------------------

    def apply(self, command: TaskCommand) -> Applied:
        """Apply one committed command (see module doc)."""
        if isinstance(command, SubmitJob):
            return self._submit(command)
        if isinstance(command, SubmitJobs):
            return self._submit_many(command.jobs)
        if isinstance(command, AddTasks):
            return self._add(command)
        if isinstance(command, AssignTasks):
            return self._assign(command)
        if isinstance(command, FinishTasks):
            return self._finish_all(command)
        if isinstance(command, CancelJob):
            return self._cancel(command.job_id)
        assert isinstance(command, ForgetJob)
        return self._forget(command.job_id)

    def _submit(self, command: SubmitJob) -> Applied:
        if command.job_id in self._jobs:
            return Applied(False, detail="a job with this id exists")
        if len(command.tasks) > command.total:
            return Applied(False, detail="more tasks than the job's total")
        function = command.function
        applied = Applied(True)
        known = self._functions.get(command.spec.function_hash)
        if known is None:
            if function is None or not _function_matches(function, command.spec.function_hash):
                return Applied(False, detail="function unknown: send it with the job")
            self._functions[command.spec.function_hash] = (function, 1)
        else:
            self._functions[command.spec.function_hash] = (known[0], known[1] + 1)
            function = known[0]
        job = JobRecord(
            job_id=command.job_id,
            spec=command.spec,
            total=command.total,
            submitted_ms=command.now_ms,
        )
        job.tasks = []
        self._jobs[command.job_id] = job
        if function.object_id:
            applied.puts.append((ref_key(function.object_id, command.job_id), b""))
        self._append_tasks(job, command.tasks, applied)
        return applied

    def _submit_many(self, jobs: tuple[SubmitJob, ...]) -> Applied:
        ids: set[str] = set()
        functions: set[str] = set()
        for job in jobs:
            if job.job_id in self._jobs or job.job_id in ids or len(job.tasks) > job.total:
                return Applied(False, detail=f"job {job.job_id} cannot be submitted (id in use, or too many tasks)")
            ids.add(job.job_id)
            known = job.spec.function_hash in self._functions or job.spec.function_hash in functions
            if not known:
                if job.function is None or not _function_matches(job.function, job.spec.function_hash):
                    return Applied(False, detail="function unknown: send it with the first job that runs it")
                functions.add(job.spec.function_hash)
        merged = Applied(True)
        for job in jobs:
            applied = self._submit(job)
            assert applied.succeeded, "checked above"
            merged.events.extend(applied.events)
            merged.puts.extend(applied.puts)
            merged.deletes.extend(applied.deletes)
        return merged

    def _add(self, command: AddTasks) -> Applied:
        job = self._jobs.get(command.job_id)
        if job is None:
            return Applied(False, detail="unknown job")
        if command.start != len(job.tasks):
            return Applied(
                False, detail=f"tasks must come in order: expected start {len(job.tasks)}"
            )
        if len(job.tasks) + len(command.tasks) > job.total:
            return Applied(False, detail="more tasks than the job's total")
        applied = Applied(True)
        self._append_tasks(job, command.tasks, applied)
        return applied

    def _append_tasks(
        self, job: JobRecord, payloads: tuple[Payload, ...], applied: Applied
    ) -> None:
        start = len(job.tasks)
        cancelled = job.state == "cancelled"
        for payload in payloads:
            task = TaskRecord(args=payload)
            if cancelled:  # the rest of a job cancelled while it was being submitted
                job.seq += 1
                job.finished += 1
                job.finished_order.append(len(job.tasks))
                task.state = "cancelled"
                task.seq = job.seq
            job.tasks.append(task)
            if payload.object_id:
                applied.puts.append((ref_key(payload.object_id, job.job_id), b""))
        self._tasks_kept += len(payloads)
        if cancelled:
            if payloads:
                applied.events.append(TaskEvent("finished", job.job_id, tuple(range(start, len(job.tasks)))))
            return
        if len(job.tasks) == job.total:
            job.state = "running"
        if payloads:
            applied.events.append(
                TaskEvent("pending", job.job_id, tuple(range(start, len(job.tasks))))
            )
        self._evict(applied)

    def _assign(self, command: AssignTasks) -> Applied:
        for assignment in command.assignments:
            task = self.task(assignment.job_id, assignment.index)
            if (
                task is None
                or task.state not in ("pending", "running")
                or assignment.attempt <= task.attempt
            ):
                continue
            task.state = "running"
            task.attempt = assignment.attempt
            task.node = command.node
            task.runs += 1
        return Applied(True)

    def _finish_all(self, command: FinishTasks) -> Applied:
        applied = Applied(True)
        finished: dict[str, list[int]] = {}
        retried: dict[str, list[int]] = {}
        for finish in command.finishes:
            job = self._jobs.get(finish.job_id)
            if job is None or not 0 <= finish.index < len(job.tasks):
                continue
            outcome = self._finish(job, finish, command.now_ms, applied)
            if outcome == "finished":
                finished.setdefault(job.job_id, []).append(finish.index)
                if job.finished == job.total:
                    self._job_finished(job, command.now_ms, applied)
            elif outcome == "retry":
                retried.setdefault(job.job_id, []).append(finish.index)
        for job_id, indexes in finished.items():
            applied.events.append(TaskEvent("finished", job_id, tuple(indexes)))
        for job_id, indexes in retried.items():
            applied.events.append(TaskEvent("pending", job_id, tuple(indexes)))
        # Job-finished events go after the task events of the same command.
        applied.events.sort(key=lambda event: event.kind == "job")
        self._evict(applied)
        return applied

    def _finish(self, job: JobRecord, finish: Finish, now_ms: int, applied: Applied) -> str:
        task = job.tasks[finish.index]
        if finish.kind == "ok":
            if task.state not in ("pending", "running"):
                job.duplicates += 1
                return ""
            job.commits += 1
            self._settle(job, finish.index, "done", finish, now_ms, applied)
            return "finished"
        if task.state != "running" or finish.attempt != task.attempt:
            return ""  # stale: the task was finished or reassigned since
        if finish.kind in FAILURE_KINDS_OF_THE_WORKER:
            task.crashes += 1
            if task.crashes <= job.spec.max_retries:
                task.state = "pending"
                return "retry"
        else:
            task.errors += 1
            if task.errors <= job.spec.retries:
                task.state = "pending"
                return "retry"
        job.failed += 1
        self._settle(job, finish.index, "failed", finish, now_ms, applied)
        return "finished"

    def _settle(
        self,
        job: JobRecord,
        index: int,
        state: TaskState,
        finish: Finish,
        now_ms: int,
        applied: Applied,
    ) -> None:
        task = job.tasks[index]
        job.seq += 1
        job.finished += 1
        job.finished_order.append(index)
        task.state = state
        task.seq = job.seq
        task.kind = finish.kind
        task.node = finish.node
        task.value = finish.value
        task.error_type = finish.error_type
        task.error_message = finish.error_message
        task.traceback = finish.traceback
        if finish.value.object_id:
            # The worker stored the result on its holders; the database
            # records it (the collector keeps what is recorded and referenced).
            record = objects.ObjectRecord(size=finish.value.size, touched_ms=now_ms)
            applied.puts.append(
                (
                    objects.OBJECT_KEY_PREFIX + finish.value.object_id.encode(),
                    objects.encode_record(record),
                )
            )
            applied.puts.append((ref_key(finish.value.object_id, job.job_id), b""))

    def _job_finished(self, job: JobRecord, now_ms: int, applied: Applied) -> None:
        job.state = "finished"
        job.finished_ms = now_ms
        self._finished_order[job.job_id] = None
        applied.events.append(TaskEvent("job", job.job_id, state="finished"))

    def _cancel(self, job_id: str) -> Applied:
        job = self._jobs.get(job_id)
        if job is None:
            return Applied(False, detail="unknown job")
        if job.state in ("finished", "cancelled"):
            return Applied(False, detail=f"the job is {job.state} already")
        applied = Applied(True)
        cancelled = []
        for index, task in enumerate(job.tasks):
            if task.state in ("pending", "running"):
                job.seq += 1
                job.finished += 1
                job.finished_order.append(index)
                task.state = "cancelled"
                task.seq = job.seq
                cancelled.append(index)
        job.state = "cancelled"
        self._finished_order[job.job_id] = None
        if cancelled:
            applied.events.append(TaskEvent("finished", job_id, tuple(cancelled)))
        applied.events.append(TaskEvent("job", job_id, state="cancelled"))
        self._evict(applied)
        return applied

    def _forget(self, job_id: str) -> Applied:
        job = self._jobs.get(job_id)
        if job is None:
            return Applied(False, detail="unknown job")
        applied = Applied(True)
        self._drop(job, applied)
        return applied

    def _drop(self, job: JobRecord, applied: Applied) -> None:
        del self._jobs[job.job_id]
        self._finished_order.pop(job.job_id, None)
        self._tasks_kept -= len(job.tasks)
        refs: dict[bytes, None] = {}
        function, users = self._functions[job.spec.function_hash]
        if users == 1:
            del self._functions[job.spec.function_hash]
        else:
            self._functions[job.spec.function_hash] = (function, users - 1)
        if function.object_id:
            refs[ref_key(function.object_id, job.job_id)] = None
        for task in job.tasks:
            for payload in (task.args, task.value):
                if payload.object_id:
                    refs[ref_key(payload.object_id, job.job_id)] = None
        applied.deletes.extend(refs)
        if job.state not in ("finished", "cancelled"):
            indexes = tuple(
                i for i, task in enumerate(job.tasks) if task.state in ("pending", "running")
            )
            if indexes:
                applied.events.append(TaskEvent("finished", job.job_id, indexes))
        applied.events.append(TaskEvent("job", job.job_id, state="forgotten"))

    def _evict(self, applied: Applied) -> None:
        """Forget the oldest finished jobs beyond the caps."""
        while self._finished_order and (
            len(self._finished_order) > self._jobs_finished_max
            or self._tasks_kept > self._tasks_kept_max
        ):
            oldest = next(iter(self._finished_order))
            self._drop(self._jobs[oldest], applied)

    # -- snapshots -------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        image = _Image(
            format_version=SNAPSHOT_FORMAT_VERSION,
            functions=tuple((h, payload, users) for h, (payload, users) in self._functions.items()),
            jobs=tuple(self._jobs.values()),
            finished_order=tuple(self._finished_order),
        )
        return _image_encoder.encode(image)

    @classmethod
    def restore(
        cls,
        data: bytes,
        *,
        jobs_finished_max: int = JOBS_FINISHED_MAX_DEFAULT,
        tasks_kept_max: int = TASKS_KEPT_MAX_DEFAULT,
    ) -> TaskTable:
        """Rebuild a table from ``snapshot()`` bytes; ``ValueError`` if corrupt."""
        try:
            image = _image_decoder.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"corrupt task table snapshot: {error}") from error
        if image.format_version != SNAPSHOT_FORMAT_VERSION:
            raise ValueError(
                f"task table snapshot format {image.format_version}, this build reads {SNAPSHOT_FORMAT_VERSION}"
            )
        table = cls(jobs_finished_max=jobs_finished_max, tasks_kept_max=tasks_kept_max)
        for function_hash_, payload, users in image.functions:
            table._functions[function_hash_] = (payload, users)
        for job in image.jobs:
            if job.spec.function_hash not in table._functions:
                raise ValueError(
                    f"corrupt task table snapshot: job {job.job_id} runs an unknown function"
                )
            table._jobs[job.job_id] = job
            table._tasks_kept += len(job.tasks)
        for job in image.jobs:
            if len(job.finished_order) != job.seq or len(job.tasks) > job.total:
                raise ValueError(f"corrupt task table snapshot: job {job.job_id} has inconsistent counts")
        for job_id in image.finished_order:
            if job_id not in table._jobs:
                raise ValueError(f"corrupt task table snapshot: finished job {job_id} is not kept")
            table._finished_order[job_id] = None
        return table


def _function_matches(function: Payload, expected_hash: str) -> bool:
    if function.object_id:
        return function.object_id == expected_hash and not function.inline
    return bool(function.inline) and function_hash(function.inline) == expected_hash
