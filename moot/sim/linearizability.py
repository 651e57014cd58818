"""A linearizability checker for client histories (Wing & Gong search, Lowe's memo, Porcupine's shape).

It observes; it injects nothing. Given what each client saw — when it called,
when (if ever) it got an answer, and the answer — it decides whether some
total order of the operations both respects real time and is a legal
sequential execution of a ``Model``.

Rules:

- **History.** A list of ``Operation``. ``call_ms``/``return_ms`` are on one
  clock (the simulator's global time, or one host's monotonic clock). An
  operation ``a`` precedes ``b`` in real time iff ``a.return_ms < b.call_ms``;
  equal times count as concurrent (the permissive reading: two clocks that
  read the same millisecond cannot order the events).
- **Unknown outcome.** ``return_ms=None`` means the client never learned the
  outcome (timeout, lost connection). Such an operation may have taken effect
  at any moment after its call, or never: it is given a return time of
  +infinity and the output ``UNKNOWN``, which a model must accept whatever
  its state (for a write it means "the effect happened, result not seen").
  "Never" is the same as "last, after everything else". A model may drop
  unknown-outcome reads in ``partition``: they constrain nothing.
- **Definite failures are not operations.** A request the server refused
  (known not applied) must be left out of the history by the recorder; an
  error that leaves doubt must be recorded with ``return_ms=None``.
- **P-compositionality.** ``Model.partition`` splits the history into
  independent parts (for the KV model: one per key; Herlihy & Wing
  locality). Each part is searched alone, in the order ``partition`` gives.
- **Search.** The entries (call and return events) sit in one doubly linked
  list sorted by time, calls before returns at equal times. The search walks
  it: at a call entry it tries to linearize that operation next (the model
  accepts it and the pair (linearized set, new state) is not dominated by a
  configuration already seen: see ``_Memo``),
  then *lifts* the operation's two entries out of the list and restarts
  from the front; reaching a return entry means the operation that owns it
  had to be linearized already, so it backtracks (pops, *unlifts*, tries the
  next call). Every configuration (bitset of linearized operations, model
  state) is explored at most once while the memo has room.
- **Budgets.** ``steps_max`` (deterministic) and optionally ``timeout_s``
  (wall clock; not deterministic) bound the whole check; ``memo_entries_max``
  bounds the memo — when full, new configurations are no longer remembered
  (the search stays correct, it only prunes less). A check that runs out of
  budget answers ``ok=None`` — never ``True``.
- **Result.** ``CheckResult.ok`` is ``False`` if any part has a violation
  (a found violation is definite even if another part gave up), else
  ``None`` if any part gave up, else ``True``. A violation carries the part,
  the longest linearizable prefix found and the operations that could not
  be placed after it, and ``CheckResult.explanation`` says all of that in
  text a human can read.

The KV model (``KvModel``) supports ``Get``, ``Put``, ``Delete``, ``Cas`` and
``Range``. A range read spans keys, so it breaks per-key partitioning: if a
history holds any known-outcome ``Range``, ``KvModel.partition`` returns the
whole history as one part whose state is the whole map. That is correct but
the search is then over all operations at once; keep such histories small.

Limitations (measured on CPython 3.11, one core): linearizable histories
without unknown outcomes check at roughly 25k-160k operations/s, and a
violation without unknown outcomes is found in tens of milliseconds. Every
unknown-outcome write stays a candidate forever, so the configurations grow
with the subsets of them; the pruning in ``_search`` (dominance against every
configuration seen, no-op and identical unknown operations skipped) keeps
generated linearizable histories of 4-8 clients x 15-40 operations on one or
two keys with 30-50% of outcomes unknown under ~0.7M steps (~1 s); before it,
a few in a thousand such histories of ~120 operations ran out of 5M steps. Proving
a *violation* still means exhausting the search up to the bad operation,
which stays exponential in the unknown writes pending on a contended key.
Histories with known-outcome ``Range`` reads are one part whose state is the
whole map: with 3 keys, 6 clients x 20 operations and 30% unknown outcomes,
about 1 in 2 000 needed 2-4M steps. Keep unknown outcomes rare (or keys many)
in histories meant to catch violations, and range reads in small histories.

Determinism: for a given history, model and ``steps_max`` (no
``timeout_s``) the result is identical in every process: no ``hash()``
order is ever iterated, and the memo is only probed, never iterated.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple, Protocol, TypeVar

# Steps (one visit of one list entry) a check may take across all parts. A
# step costs about a microsecond or two in CPython, so this is a few seconds;
# a well-behaved history needs a small multiple of its size (Porcupine has no
# step cap, only a timeout; a cap keeps the answer deterministic).
STEPS_MAX_DEFAULT: Final = 5_000_000

# Configurations the memo may hold. An entry is a tuple, an int of n bits and
# a state: about 100 + n/8 bytes, so ~200 MB for parts of 10 000 operations.
MEMO_ENTRIES_MAX_DEFAULT: Final = 1_000_000

# How many operations of the longest prefix an explanation prints (the tail
# is what matters: it leads up to the operations that could not be placed).
EXPLANATION_PREFIX_LINES_MAX: Final = 20

# The wall clock is read once every this many steps, when a timeout is set.
CLOCK_READ_STEPS: Final = 1_024


class HistoryError(ValueError):
    """The history itself is malformed (the recorder's fault, not the system under test's)."""


class Outcome(enum.Enum):
    """The output a model receives for an operation whose outcome the client never learned."""

    UNKNOWN = "unknown"


UNKNOWN: Final = Outcome.UNKNOWN


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    """One client operation as the client saw it.

    Keyword-only: five fields of which three are numbers are easy to swap.
    ``return_ms=None`` means the outcome is unknown; ``output`` is then ignored.
    """

    client_id: int
    call_ms: float
    return_ms: float | None
    input: object
    output: object = None

    def __post_init__(self) -> None:
        if self.client_id < 0:
            raise HistoryError(f"client_id must be >= 0, got {self.client_id}")
        if not math.isfinite(self.call_ms):
            raise HistoryError(f"call_ms must be finite, got {self.call_ms}")
        if self.return_ms is not None:
            if not math.isfinite(self.return_ms):
                raise HistoryError(f"return_ms must be finite or None, got {self.return_ms}")
            if self.return_ms < self.call_ms:
                raise HistoryError(f"return_ms {self.return_ms} is before call_ms {self.call_ms}")

    @property
    def outcome_known(self) -> bool:
        """Whether the client saw the answer."""
        return self.return_ms is not None


class Partition(NamedTuple):
    """One independently checkable part of a history: a label and indices into the history."""

    label: str
    operation_indices: tuple[int, ...]


StateT = TypeVar("StateT", bound=Hashable)


class Model(Protocol[StateT]):
    """A sequential specification. States must be hashable and compare by value (they are memoized)."""

    def init(self) -> StateT:
        """The state before any operation."""
        ...

    def step(self, state: StateT, input: object, output: object) -> tuple[bool, StateT]:
        """Apply ``input`` in ``state``: (whether ``output`` is legal there, the state after).

        ``output`` is ``UNKNOWN`` for an operation whose outcome is unknown;
        the model must then accept and apply the effect. Pure: no mutation.
        """
        ...

    def partition(self, history: Sequence[Operation]) -> list[Partition]:
        """Split the history into independent parts; may drop operations that constrain nothing.

        Raises ``HistoryError`` for an input the model does not know.
        """
        ...

    def describe_operation(self, input: object, output: object) -> str:
        """One line for an operation, e.g. ``get('x') -> 1``."""
        ...

    def describe_state(self, state: StateT) -> str:
        """A short rendering of a state."""
        ...


# ---------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True, kw_only=True)
class Violation:
    """Why one part is not linearizable (indices are into the checked history)."""

    partition: str
    prefix: tuple[int, ...]
    """The longest linearizable prefix found, in linearization order."""
    unplaceable: tuple[int, ...]
    """The operations that could come next after ``prefix`` (by real time) yet none of which works."""
    text: str
    """The human-readable account of the above."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionResult:
    """The verdict on one part."""

    partition: str
    operation_count: int
    ok: bool | None
    steps: int
    linearization: tuple[int, ...]
    """If ``ok``: a witness order (history indices). Otherwise empty."""
    violation: Violation | None
    gave_up_reason: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    """The verdict on a history: ``ok`` is True, False (a violation) or None (gave up)."""

    ok: bool | None
    partitions: tuple[PartitionResult, ...]
    steps: int
    explanation: str
    memo_saturated: bool = False

    @property
    def violation(self) -> Violation | None:
        """The first violation found, if any."""
        for part in self.partitions:
            if part.violation is not None:
                return part.violation
        return None


# ---------------------------------------------------------------------------
# The search


class _Entry:
    """A call or return event in the search's doubly linked list."""

    __slots__ = ("match", "next", "operation", "previous")

    def __init__(self, operation: int) -> None:
        self.operation = operation
        self.match: _Entry | None = None  # a call's return entry; None on a return entry
        self.previous: _Entry = self
        self.next: _Entry = self


def _build_list(call_ms: Sequence[float], return_ms: Sequence[float]) -> tuple[_Entry, _Entry]:
    """The sorted list of entries between a head and a tail sentinel: (head, tail)."""
    events: list[tuple[float, int, int]] = []
    for operation, (called, returned) in enumerate(zip(call_ms, return_ms, strict=True)):
        events.append((called, 0, operation))
        events.append((returned, 1, operation))
    # Calls before returns at equal times: such operations are concurrent.
    events.sort()
    head = _Entry(-1)
    tail = _Entry(-1)
    calls: dict[int, _Entry] = {}
    last = head
    for _, kind, operation in events:
        entry = _Entry(operation)
        if kind == 0:
            calls[operation] = entry
        else:
            calls[operation].match = entry
        last.next = entry
        entry.previous = last
        last = entry
    last.next = tail
    tail.previous = last
    return head, tail


def _lift(entry: _Entry) -> None:
    """Take a call entry and its return entry out of the list."""
    match = entry.match
    assert match is not None
    entry.previous.next = entry.next
    entry.next.previous = entry.previous
    match.previous.next = match.next
    match.next.previous = match.previous


def _unlift(entry: _Entry) -> None:
    """Put back what ``_lift(entry)`` took out (exact reverse order)."""
    match = entry.match
    assert match is not None
    match.previous.next = match
    match.next.previous = match
    entry.previous.next = entry
    entry.next.previous = entry


class _Budget:
    """Steps and wall time left for the whole check, shared by its parts."""

    __slots__ = ("clock", "deadline", "memo_entries_max", "memo_saturated", "steps_left")

    def __init__(self, steps_max: int, deadline: float | None, clock: Callable[[], float], memo_entries_max: int) -> None:
        self.steps_left = steps_max
        self.deadline = deadline
        self.clock = clock
        self.memo_entries_max = memo_entries_max
        self.memo_saturated = False


class _SearchOutcome(NamedTuple):
    ok: bool | None
    order: list[int]  # local indices: the full witness if ok, else the longest prefix found
    steps: int
    gave_up_reason: str | None


class _Memo:
    """The configurations seen, as (known set, state) -> an antichain of unknown sets.

    A configuration (K, U, state) is *dominated* by a seen one (K, U', state)
    with U' a subset of U: any completion of the former, with U minus U'
    appended at the end (where unknown outcomes are always accepted), is a
    completion of the latter of the same length. So a dominated configuration
    need not be searched, whether the one dominating it failed or is still on
    the search path. Equality is the special case U' = U (Lowe's memo), and
    without unknown outcomes U is always empty, so this is exactly his memo.
    Only supersets are ever dropped from a list, so it stays an antichain.
    """

    __slots__ = ("entries", "entries_count", "entries_max", "saturated")

    def __init__(self, entries_max: int) -> None:
        self.entries: dict[tuple[int, Hashable], list[int]] = {}
        self.entries_count = 0
        self.entries_max = entries_max
        self.saturated = False

    def visit(self, known: int, unknown: int, state: Hashable) -> bool:
        """Whether (known, unknown, state) is not dominated; if so it is recorded while there is room."""
        key = (known, state)
        stored = self.entries.get(key)
        if stored is not None:
            for seen in stored:
                if seen & unknown == seen:
                    return False
        if self.entries_count >= self.entries_max:
            self.saturated = True
            return True
        if stored is None:
            self.entries[key] = [unknown]
        else:
            kept = [seen for seen in stored if seen & unknown != unknown]
            self.entries_count -= len(stored) - len(kept)
            kept.append(unknown)
            stored[:] = kept
        self.entries_count += 1
        assert self.entries_count <= self.entries_max
        return True


def _twins_before(inputs: Sequence[object], call_ms: Sequence[float], unknown: Sequence[bool]) -> list[int]:
    """For each unknown-outcome operation, the bit of the previous one (by call) with an equal input, else 0."""
    twin_before = [0] * len(inputs)
    last_by_input: dict[object, int] = {}
    for operation in sorted(range(len(inputs)), key=lambda operation: (call_ms[operation], operation)):
        if not unknown[operation]:
            continue
        key = inputs[operation]
        try:
            previous = last_by_input.get(key)
        except TypeError:  # an unhashable input: it is simply never treated as a twin
            continue
        if previous is not None:
            twin_before[operation] = 1 << previous
        last_by_input[key] = operation
    return twin_before


def _search(
    model: Model[StateT],
    inputs: Sequence[object],
    outputs: Sequence[object],
    call_ms: Sequence[float],
    return_ms: Sequence[float],
    unknown: Sequence[bool],
    budget: _Budget,
) -> _SearchOutcome:
    """Wing & Gong's search with Lowe's memo over one part (indices are local to the part).

    A configuration is (K, U, state): K the known-outcome and U the
    unknown-outcome operations linearized. Refinements for unknown outcomes
    (return at +infinity), all sound because such an operation constrains
    nothing and can always be moved to the very end of a linearization, where
    the model must accept it; each only removes moves that some other
    completion of no greater length makes unnecessary, so a search that
    finds nothing has proved there is nothing (see ``_Memo`` for the
    induction's measure):

    - Success as soon as every known-outcome operation is linearized.
    - Dominance (``_Memo``): skip (K, U, state) if (K, U', state) with U' a
      subset of U was already seen. Known operations are tried before unknown
      ones at each point, so small unknown sets are seen first.
    - No-op: an unknown operation that leaves the state as it is is not
      tried there (it might as well go last).
    - Twins: of pending unknown operations with equal inputs only the
      earliest called is tried (swapping two of them changes nothing).

    Without the last three a history with a few dozen unknown writes on one
    key visited every subset of them: a generated linearizable history of
    ~130 operations ran out of a 5M-step budget.
    """
    count = len(inputs)
    head, tail = _build_list(call_ms, return_ms)
    bits = [1 << operation for operation in range(count)]
    known_mask = 0
    for operation in range(count):
        if not unknown[operation]:
            known_mask |= bits[operation]
    known_left = known_mask.bit_count()
    unknown_left = count - known_left
    twin_before = _twins_before(inputs, call_ms, unknown)
    step = model.step
    memo = _Memo(budget.memo_entries_max)
    stack: list[tuple[_Entry, StateT, int]] = []
    order: list[int] = []
    longest: list[int] = []
    state = model.init()
    linearized = 0
    memo.visit(0, 0, state)
    trying_unknown = False  # the phase: known-outcome candidates first, then unknown ones
    steps = 0
    steps_left = budget.steps_left
    deadline = budget.deadline
    entry = head.next
    while known_left > 0:
        if steps >= steps_left:
            return _finish(budget, memo, _SearchOutcome(None, longest, steps, f"step budget exhausted ({steps} steps in this part)"))
        steps += 1
        if deadline is not None and steps % CLOCK_READ_STEPS == 0 and budget.clock() > deadline:
            return _finish(budget, memo, _SearchOutcome(None, longest, steps, "timeout"))
        if entry.match is not None:
            operation = entry.operation
            if unknown[operation] is not trying_unknown or twin_before[operation] & ~linearized:
                entry = entry.next
                continue
            legal, state_next = step(state, inputs[operation], outputs[operation])
            if legal and not (trying_unknown and state_next == state):
                linearized_next = linearized | bits[operation]
                known = linearized_next & known_mask
                if memo.visit(known, linearized_next ^ known, state_next):
                    stack.append((entry, state, linearized))
                    order.append(operation)
                    if len(order) > len(longest):
                        longest = order[:]
                    if trying_unknown:
                        unknown_left -= 1
                    else:
                        known_left -= 1
                    state = state_next
                    linearized = linearized_next
                    trying_unknown = False
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
            continue
        # A return entry: its operation had to be linearized by now.
        if not trying_unknown and unknown_left > 0:
            trying_unknown = True
            entry = head.next
            continue
        # Every candidate failed: this configuration has no completion.
        if not stack:
            return _finish(budget, memo, _SearchOutcome(False, longest, steps, None))
        entry, state, linearized = stack.pop()
        order.pop()
        trying_unknown = unknown[entry.operation]
        if trying_unknown:
            unknown_left += 1
        else:
            known_left += 1
        _unlift(entry)
        entry = entry.next
    # What is left has unknown outcomes: it goes last, where the model accepts anything.
    entry = head.next
    while entry is not tail:
        if entry.match is not None:
            order.append(entry.operation)
        entry = entry.next
    assert len(order) == count
    return _finish(budget, memo, _SearchOutcome(True, order, steps, None))


def _finish(budget: _Budget, memo: _Memo, outcome: _SearchOutcome) -> _SearchOutcome:
    """Charge a part's steps to the shared budget."""
    assert outcome.steps <= budget.steps_left
    budget.steps_left -= outcome.steps
    budget.memo_saturated = budget.memo_saturated or memo.saturated
    return outcome


# ---------------------------------------------------------------------------
# Explanations


def _format_ms(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def _describe_line(model: Model[StateT], history: Sequence[Operation], index: int) -> str:
    operation = history[index]
    output = operation.output if operation.outcome_known else UNKNOWN
    return (
        f"#{index} client {operation.client_id} [{_format_ms(operation.call_ms)}, {_format_ms(operation.return_ms)}] "
        f"{model.describe_operation(operation.input, output)}"
    )


def _output_seen(operation: Operation) -> object:
    return operation.output if operation.outcome_known else UNKNOWN


def _return_key(operation: Operation) -> float:
    return math.inf if operation.return_ms is None else operation.return_ms


def _explain_violation(
    model: Model[StateT], history: Sequence[Operation], partition: Partition, prefix: Sequence[int]
) -> Violation:
    """Replay the longest prefix, then say which operations could come next and why each fails."""
    state = model.init()
    lines = [
        f"not linearizable: {partition.label} ({len(partition.operation_indices)} operations)",
        f"longest linearizable prefix found: {len(prefix)} of {len(partition.operation_indices)} operations",
    ]
    skipped = max(0, len(prefix) - EXPLANATION_PREFIX_LINES_MAX)
    if skipped:
        lines.append(f"  ... {skipped} earlier operations")
    for position, index in enumerate(prefix):
        legal, state = model.step(state, history[index].input, _output_seen(history[index]))
        assert legal, "the search only records prefixes the model accepts"
        if position >= skipped:
            lines.append(f"  {_describe_line(model, history, index)}   => {model.describe_state(state)}")
    placed = set(prefix)
    remaining = [index for index in partition.operation_indices if index not in placed]
    assert remaining, "a violation leaves operations unplaced"
    # The next operation must be one called no later than the earliest return
    # still pending (calls before returns at equal times, as in the search).
    deadline_ms = min(_return_key(history[index]) for index in remaining)
    candidates = sorted(
        (index for index in remaining if history[index].call_ms <= deadline_ms),
        key=lambda index: (history[index].call_ms, index),
    )
    lines.append(f"after it (state {model.describe_state(state)}), none of these can be linearized next:")
    for index in candidates:
        operation = history[index]
        legal, state_next = model.step(state, operation.input, _output_seen(operation))
        reason = (
            f"accepted (=> {model.describe_state(state_next)}) but the rest cannot follow"
            if legal
            else "the model rejects it here"
        )
        lines.append(f"  {_describe_line(model, history, index)}: {reason}")
    return Violation(partition=partition.label, prefix=tuple(prefix), unplaceable=tuple(candidates), text="\n".join(lines))


# ---------------------------------------------------------------------------
# Entry points


def check(
    history: Sequence[Operation],
    model: Model[StateT],
    *,
    steps_max: int = STEPS_MAX_DEFAULT,
    timeout_s: float | None = None,
    memo_entries_max: int = MEMO_ENTRIES_MAX_DEFAULT,
    clock: Callable[[], float] = time.monotonic,
) -> CheckResult:
    """Check ``history`` against ``model``, part by part (see the module docstring for the rules)."""
    if steps_max < 1:
        raise ValueError(f"steps_max must be >= 1, got {steps_max}")
    if memo_entries_max < 0:
        raise ValueError(f"memo_entries_max must be >= 0, got {memo_entries_max}")
    deadline = None if timeout_s is None else clock() + timeout_s
    budget = _Budget(steps_max, deadline, clock, memo_entries_max)
    results: list[PartitionResult] = []
    for partition in model.partition(history):
        results.append(_check_partition(history, model, partition, budget))
    return _combine(results, steps_max - budget.steps_left, budget.memo_saturated)


def _check_partition(
    history: Sequence[Operation], model: Model[StateT], partition: Partition, budget: _Budget
) -> PartitionResult:
    indices = partition.operation_indices
    operations = [history[index] for index in indices]
    outcome = _search(
        model,
        [operation.input for operation in operations],
        [_output_seen(operation) for operation in operations],
        [operation.call_ms for operation in operations],
        [_return_key(operation) for operation in operations],
        [not operation.outcome_known for operation in operations],
        budget,
    )
    order = tuple(indices[local] for local in outcome.order)
    violation = None
    if outcome.ok is False:
        violation = _explain_violation(model, history, partition, order)
    if outcome.ok is True:
        assert sorted(order) == sorted(indices)
    return PartitionResult(
        partition=partition.label,
        operation_count=len(indices),
        ok=outcome.ok,
        steps=outcome.steps,
        linearization=order if outcome.ok else (),
        violation=violation,
        gave_up_reason=outcome.gave_up_reason,
    )


def _combine(results: list[PartitionResult], steps: int, memo_saturated: bool) -> CheckResult:
    violations = [part for part in results if part.ok is False]
    unknown = [part for part in results if part.ok is None]
    operation_count = sum(part.operation_count for part in results)
    ok: bool | None
    if violations:
        ok = False
        explanation = "\n\n".join(part.violation.text for part in violations if part.violation is not None)
    elif unknown:
        ok = None
        explanation = "unknown: gave up on " + "; ".join(f"{part.partition} ({part.gave_up_reason})" for part in unknown)
    else:
        ok = True
        explanation = f"linearizable: {operation_count} operations in {len(results)} parts"
    return CheckResult(ok=ok, partitions=tuple(results), steps=steps, explanation=explanation, memo_saturated=memo_saturated)


# ---------------------------------------------------------------------------
# The key-value model


@dataclass(frozen=True, slots=True)
class Get:
    """``get(key)``; output: the value, or None if absent."""

    key: str


@dataclass(frozen=True, slots=True)
class Put:
    """``put(key, value)``; output ignored (it returned, so it was acknowledged)."""

    key: str
    value: Hashable

    def __post_init__(self) -> None:
        if self.value is None:
            raise HistoryError("put of None: None means 'absent' in this model; use Delete")


@dataclass(frozen=True, slots=True)
class Delete:
    """``delete(key)``; output: whether the key existed."""

    key: str


@dataclass(frozen=True, slots=True)
class Cas:
    """``cas(key, expected, new)``; ``expected=None`` means "must not exist"; output: whether it swapped."""

    key: str
    expected: Hashable
    new: Hashable

    def __post_init__(self) -> None:
        if self.new is None:
            raise HistoryError("cas to None: None means 'absent' in this model")


@dataclass(frozen=True, slots=True)
class Range:
    """``range(prefix)``; output: the (key, value) pairs whose key starts with ``prefix``, any order."""

    prefix: str


KvState = tuple[tuple[str, Hashable], ...]
"""The map as (key, value) pairs sorted by key; absent keys are not listed."""

_KV_INPUTS: Final = (Get, Put, Delete, Cas, Range)


def _lookup(state: KvState, key: str) -> Hashable:
    for item_key, value in state:
        if item_key == key:
            return value
    return None


def _assign(state: KvState, key: str, value: Hashable) -> KvState:
    """``state`` with ``key`` set to ``value`` (None: removed)."""
    items = [item for item in state if item[0] != key]
    if value is not None:
        items.append((key, value))
        items.sort(key=lambda item: item[0])
    return tuple(items)


def _normalize_range_output(output: object) -> KvState:
    if not isinstance(output, list | tuple):
        raise HistoryError(f"range output must be a sequence of (key, value) pairs, got {output!r}")
    pairs: list[tuple[str, Hashable]] = []
    for pair in output:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise HistoryError(f"range output must be (key, value) pairs, got {pair!r}")
        pairs.append((pair[0], pair[1]))
    pairs.sort(key=lambda item: item[0])
    return tuple(pairs)


class KvModel:
    """A linearizable key-value map (etcd-like): get, put, delete, cas, range.

    Partitioned by key unless the history holds a known-outcome ``Range``;
    then one part holds everything (see the module docstring).
    """

    def init(self) -> KvState:
        """The empty map."""
        return ()

    def step(self, state: KvState, input: object, output: object) -> tuple[bool, KvState]:
        """Apply one operation; with ``UNKNOWN`` output any result is accepted."""
        unknown = output is UNKNOWN
        if isinstance(input, Get):
            return unknown or _lookup(state, input.key) == output, state
        if isinstance(input, Put):
            return True, _assign(state, input.key, input.value)
        if isinstance(input, Delete):
            existed = _lookup(state, input.key) is not None
            state_next = _assign(state, input.key, None) if existed else state
            return unknown or existed == output, state_next
        if isinstance(input, Cas):
            swapped = _lookup(state, input.key) == input.expected
            state_next = _assign(state, input.key, input.new) if swapped else state
            return unknown or swapped == output, state_next
        if isinstance(input, Range):
            if unknown:
                return True, state
            selected = tuple(item for item in state if item[0].startswith(input.prefix))
            return selected == output, state
        raise HistoryError(f"not a KV operation: {input!r}")

    def partition(self, history: Sequence[Operation]) -> list[Partition]:
        """One part per key, sorted by key; one part for all if a known-outcome Range is present.

        Unknown-outcome reads (Get, Range) are dropped: they constrain nothing.
        Range outputs are normalized to sorted tuples (the history is not changed;
        the checker sees the normalized output through ``step``'s comparison).
        """
        kept: list[int] = []
        has_range = False
        for index, operation in enumerate(history):
            if not isinstance(operation.input, _KV_INPUTS):
                raise HistoryError(f"operation #{index}: not a KV operation: {operation.input!r}")
            if isinstance(operation.input, Get | Range) and not operation.outcome_known:
                continue
            if isinstance(operation.input, Range):
                has_range = True
                if _normalize_range_output(operation.output) != operation.output:
                    raise HistoryError(
                        f"operation #{index}: range output must be a tuple of (key, value) tuples sorted by key "
                        f"(use normalize_range_output), got {operation.output!r}"
                    )
            kept.append(index)
        if has_range:
            return [Partition("all keys (the history has range reads)", tuple(kept))]
        by_key: dict[str, list[int]] = {}
        for index in kept:
            operation_input = history[index].input
            assert isinstance(operation_input, Get | Put | Delete | Cas)
            by_key.setdefault(operation_input.key, []).append(index)
        return [Partition(f"key {key!r}", tuple(by_key[key])) for key in sorted(by_key)]

    def describe_operation(self, input: object, output: object) -> str:
        """E.g. ``cas('x', None, 2) -> True``; an unknown outcome shows as ``-> ?``."""
        if isinstance(input, Get):
            call = f"get({input.key!r})"
        elif isinstance(input, Put):
            call = f"put({input.key!r}, {input.value!r})"
        elif isinstance(input, Delete):
            call = f"delete({input.key!r})"
        elif isinstance(input, Cas):
            call = f"cas({input.key!r}, {input.expected!r}, {input.new!r})"
        elif isinstance(input, Range):
            call = f"range({input.prefix!r})"
        else:
            call = repr(input)
        if output is UNKNOWN:
            return f"{call} -> ?"
        if isinstance(input, Put):
            return f"{call} -> ok"
        return f"{call} -> {output!r}"

    def describe_state(self, state: KvState) -> str:
        """E.g. ``{'x': 1}``."""
        return "{" + ", ".join(f"{key!r}: {value!r}" for key, value in state) + "}"


def normalize_range_output(pairs: Sequence[tuple[str, Hashable]]) -> KvState:
    """A range result as the KV model compares it: a tuple of (key, value) tuples sorted by key."""
    return _normalize_range_output(pairs)


def check_kv(
    history: Sequence[Operation],
    *,
    steps_max: int = STEPS_MAX_DEFAULT,
    timeout_s: float | None = None,
    memo_entries_max: int = MEMO_ENTRIES_MAX_DEFAULT,
) -> CheckResult:
    """Check a key-value history against ``KvModel`` (per key unless it has range reads)."""
    return check(history, KvModel(), steps_max=steps_max, timeout_s=timeout_s, memo_entries_max=memo_entries_max)


__all__ = [
    "MEMO_ENTRIES_MAX_DEFAULT",
    "STEPS_MAX_DEFAULT",
    "UNKNOWN",
    "Cas",
    "CheckResult",
    "Delete",
    "Get",
    "HistoryError",
    "KvModel",
    "KvState",
    "Model",
    "Operation",
    "Outcome",
    "Partition",
    "PartitionResult",
    "Put",
    "Range",
    "Violation",
    "check",
    "check_kv",
    "normalize_range_output",
]
