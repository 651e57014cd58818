"""``client.map_reduce``: MapReduce (Dean and Ghemawat, OSDI 2004) on the
durable tasks and the object store.

1. **Splits.** Text inputs (paths, globs, fsspec URLs) are cut into byte
   ranges of about ``split_bytes``; a map task owns the lines that *start*
   in its range (it skips a partial first line and reads through the end of
   its last one), so every line is read once. Any other iterable is a
   sequence of Python records, pickled in chunks of about ``split_bytes``
   (task arguments: large ones travel through the object store, and the
   scheduler places a map near its chunk's holders).
2. **Map.** One task per split: ``mapper(record)`` yields ``(key, value)``
   pairs; ``combiner(key, values)`` folds each key's values on the map side
   (every ``COMBINE_EVERY_RECORDS`` records, so memory stays bounded, and at
   the end); the pairs are partitioned
   by a *stable* hash of the key (Python's ``hash`` differs between
   processes) into ``partitions`` shuffle objects, stored in the object
   store and pinned for the run. Local files are read where they lie: those
   maps run on nodes of the machine the driver found them on (the ``host``
   label every node carries).
3. **Reduce.** One task per partition fetches its shuffle objects (from the
   nearest holder; on the same machine, straight from the node's files),
   groups the values by key and calls ``reducer(key, values)``.
4. **Failures.** Tasks are durable: any node may die, the leader included,
   and the run goes on. A reduce that finds a map output lost (no holder
   left) says which maps made it; the driver runs those maps again, then
   the reduce — the paper's re-execution. Near the end of each phase — no
   more tasks left than worker slots, so none should still be waiting — the
   driver starts a backup copy of every task not done twice a task's run
   time later; the first copy to finish wins, the other is cancelled (the
   paper's backup tasks, against stragglers).
5. A mapper or reducer that raises fails the run with the user's own
   exception and remote traceback, with a note naming the record (file and
   byte offset, or record number) or the key — after ``retries``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import glob as globbing
import itertools
import os
import pickle
import socket
import statistics
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import cloudpickle

from moot.client.errors import BadRequest, MootError, NotFound, Timeout, Unavailable

if TYPE_CHECKING:
    from moot.client.client import Client
    from moot.client.tasks import Future

SPLIT_BYTES_DEFAULT: Final = 64 * 1024 * 1024
SPLIT_BYTES_MIN: Final = 1024
MAP_WAVES_MIN: Final = 2  # at least this many maps per worker slot...
WAVE_SPLIT_BYTES_MIN: Final = 1024 * 1024  # ...when splits stay this large
PARTITIONS_MAX: Final = 10_000
COMBINE_EVERY_RECORDS: Final = 16_384  # the combiner folds what the map holds this often (memory)
BACKUP_SLOWDOWN: Final = 2.0  # backups once the phase's tail ran this many times a task's run time
BACKUP_AFTER_S_MIN: Final = 0.5  # never before the phase ran this long
INFRASTRUCTURE_RETRIES: Final = 3  # a task that failed on the store or the network runs again
RE_EXECUTIONS_MAX: Final = 5  # rounds of re-running maps whose outputs were lost
POLL_S: Final = 0.05
PIN_PREFIX: Final = "mapreduce-"
UNPINS_IN_FLIGHT: Final = 8
FETCHES_IN_FLIGHT: Final = 4  # shuffle objects a reduce task reads at once

Mapper = Callable[[Any], Iterable[tuple[Any, Any]]]
Reducer = Callable[[Any, list[Any]], Any]


class MapOutputLost(MootError):
    """A reduce found map outputs that no node holds any more (raised in the
    reduce task; the driver re-runs the maps named in ``maps``)."""

    def __init__(self, maps: Sequence[int], detail: str = "") -> None:
        super().__init__(f"map outputs lost: maps {list(maps)} {detail}".strip())
        self.maps = list(maps)

    def __reduce__(self) -> tuple[Any, ...]:
        return (MapOutputLost, (self.maps,))


# -- splits ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileRange:
    """Lines of ``url`` (a path or an fsspec URL) that start in ``[start, end)``."""

    url: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class TextSplit:
    """One map's text: a range of a large file, or several small files
    whole (Hadoop's combined splits: a task per tiny file would cost more
    than reading it)."""

    ranges: tuple[FileRange, ...]


@dataclass(frozen=True, slots=True)
class RecordSplit:
    """Records ``first .. first + count - 1`` of an iterable input, pickled."""

    data: bytes
    first: int
    count: int


Split = TextSplit | RecordSplit


def plan_splits(inputs: Any, split_bytes: int, slots: int = 0) -> tuple[list[Split], dict[str, str]]:
    """The splits of ``inputs`` and the placement their maps need (local
    files: this machine). Text is cut into equal splits of at most about
    ``split_bytes``; given ``slots`` (the federation's worker processes), at
    least ``MAP_WAVES_MIN`` per slot while splits stay over a MiB, and a
    multiple of ``slots``: the last wave of maps keeps every worker busy
    instead of one running alone while the others idle. Raises
    ``BadRequest`` before anything runs when a glob matches nothing or a
    file cannot be read."""
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    items = list(inputs) if not isinstance(inputs, Iterator) else None
    if items is not None and items and all(isinstance(item, str | os.PathLike) for item in items):
        return _text_splits([os.fspath(item) for item in items], split_bytes, slots)
    return _record_splits(items if items is not None else inputs, split_bytes), {}


def _text_splits(patterns: list[str], split_bytes: int, slots: int) -> tuple[list[Split], dict[str, str]]:
    files: list[tuple[str, int]] = []
    local = False
    for pattern in patterns:
        if "://" in pattern and not pattern.startswith("file://"):
            files.extend(_remote_files(pattern))
            continue
        path = pattern.removeprefix("file://")
        if globbing.has_magic(path):
            matched = sorted(p for p in globbing.glob(path, recursive=True) if os.path.isfile(p))
            if not matched:
                raise BadRequest(f"{pattern!r} matches no file; check the pattern (quote it so the shell leaves it alone)")
        else:
            matched = [path]
        for name in matched:
            try:
                with open(name, "rb"):
                    pass
                size = os.path.getsize(name)
            except OSError as error:
                raise BadRequest(f"cannot read {name}: {error.strerror or error}; nothing was run") from None
            files.append((os.path.abspath(name), size))
            local = True
    if not files:
        raise BadRequest("map_reduce() got no input files")
    total = sum(size for _, size in files)
    count = -(-total // split_bytes) or 1
    if slots > 0:
        # Two waves of maps, not one: a dead worker's lost map is half its
        # share, not all of it, and a wave more rather than a last one half
        # empty. Not more: each map's output costs the map and the reducers
        # work per distinct key it holds, and a Zipf text's keys recur in
        # every split (measured, 200 MB on 3 slots: 6 maps 1.11x Pool(2),
        # 12 maps 1.04x).
        count = max(count, min(MAP_WAVES_MIN * slots, total // WAVE_SPLIT_BYTES_MIN))
        if count > 1:
            count = -(-count // slots) * slots
    count = max(1, min(count, total // SPLIT_BYTES_MIN))
    target = -(-total // count) or 1
    # Files end to end, cut every ``target`` bytes: small files share a
    # split, large ones span several.
    splits: list[Split] = []
    packed: list[FileRange] = []
    room = target
    for url, size in files:
        if size == 0:
            packed.append(FileRange(url, 0, 0))
            continue
        start = 0
        while start < size:
            end = min(size, start + room)
            packed.append(FileRange(url, start, end))
            room -= end - start
            start = end
            if room == 0:
                splits.append(TextSplit(tuple(packed)))
                packed, room = [], target
    if packed:
        splits.append(TextSplit(tuple(packed)))
    return splits, ({"host": socket.gethostname()} if local else {})


def _remote_files(url: str) -> list[tuple[str, int]]:
    try:
        import fsspec
    except ImportError:  # pragma: no cover - a dependency of moot
        raise BadRequest(f"{url}: fsspec URLs need the fsspec package") from None
    try:
        files = fsspec.open_files(url, "rb")
        found = [(f"{f.fs.unstrip_protocol(f.path)}", int(f.fs.size(f.path))) for f in files]
    except Exception as error:
        raise BadRequest(f"cannot list {url}: {type(error).__name__}: {error}") from None
    if not found:
        raise BadRequest(f"{url!r} matches no file")
    return found


def _record_splits(records: Iterable[Any], split_bytes: int) -> list[Split]:
    splits: list[Split] = []
    chunk: list[Any] = []
    size = 0
    first = 0
    for index, record in enumerate(records):
        try:
            size += len(pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))
        except Exception:
            try:
                size += len(cloudpickle.dumps(record))
            except Exception as error:
                raise BadRequest(
                    f"input record {index} ({type(record).__name__}) cannot be pickled: {error}"
                ) from None
        chunk.append(record)
        if size >= split_bytes:
            splits.append(RecordSplit(cloudpickle.dumps(chunk), first, len(chunk)))
            first = index + 1
            chunk, size = [], 0
    if chunk:
        splits.append(RecordSplit(cloudpickle.dumps(chunk), first, len(chunk)))
    if not splits:
        raise BadRequest("map_reduce() got no input records")
    return splits


# -- what runs in the workers ------------------------------------------------------------


def _open(url: str) -> Any:
    if "://" in url:
        import fsspec

        return fsspec.open(url, "rb").open()
    return open(url, "rb")


class _Records:
    """A split's records; ``where()`` names the one yielded last (for errors).

    The iterator is C all the way down (a chain of list iterators): per line
    no Python frame runs, so a whole-split mapper's loop costs what the same
    loop over a file costs. Text is read a range at a time, CRLF turned into
    LF and cut at newlines (no newline in a record); where a record came
    from is read back from the list iterator's position only on an error."""

    def __init__(self, split: Split) -> None:
        self.split = split
        self._range: FileRange | None = None
        self._start = 0
        self._current: Iterator[Any] = iter(())
        self._count = 0

    def __iter__(self) -> Iterator[Any]:
        split = self.split
        if isinstance(split, RecordSplit):
            self._start = split.first
            return self._track(pickle.loads(split.data))
        return itertools.chain.from_iterable(map(self._range_lines, split.ranges))

    def where(self) -> str:
        state = cast("tuple[Any, ...]", self._current.__reduce__())
        # A list iterator reduces to (iter, (list,), position); exhausted, to
        # (iter, ((),)): the last record was the one yielded last.
        index = (int(state[2]) if len(state) > 2 else self._count) - 1
        if self._range is None:
            return f"input record {self._start + max(0, index)}"
        return f"{self._range.url}, line {max(0, index) + 1} of the text from byte {self._start}"

    def _track(self, records: list[Any]) -> Iterator[Any]:
        self._current = iter(records)
        self._count = len(records)
        return self._current

    def _range_lines(self, piece: FileRange) -> Iterator[str]:
        self._range = piece
        return self._track(self._lines(piece))

    def _lines(self, piece: FileRange) -> list[str]:
        with _open(piece.url) as handle:
            position = piece.start
            if position > 0:
                handle.seek(position - 1)
                position += len(handle.readline()) - 1  # the line that began before us is not ours
            if position >= piece.end and piece.end > piece.start:
                return []
            data = handle.read(max(0, piece.end - position))
            if data and not data.endswith(b"\n"):
                data += handle.readline()  # our last line runs past the end
        self._start = position
        if not data:
            return []
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
            if data.endswith(b"\r"):
                data = data[:-1]  # a last line without its LF
        lines: list[str] = data.decode("utf-8", errors="replace").split("\n")
        if data.endswith(b"\n"):
            lines.pop()
        return lines


def stable_hash(key: Any) -> int:
    """A hash of ``key`` that every process agrees on (equal str, bytes,
    int, bool, float, None and tuples of them hash equal); other keys by
    their pickle."""
    return zlib.crc32(_key_bytes(key))


_STR_SEED: Final = zlib.crc32(b"s")  # crc32(b"s" + data) == crc32(data, _STR_SEED)


def stable_hashes(keys: Sequence[Any]) -> list[int]:
    """``stable_hash`` of each key; str keys (the common case) without a
    Python call each."""
    crc32 = zlib.crc32
    seed = _STR_SEED
    return [
        crc32(key.encode("utf-8", "surrogatepass"), seed) if type(key) is str else stable_hash(key)
        for key in keys
    ]


def _key_bytes(key: Any) -> bytes:
    if isinstance(key, str):
        return b"s" + key.encode("utf-8", "surrogatepass")
    if isinstance(key, bytes):
        return b"b" + key
    if isinstance(key, bool | int):
        return b"i" + str(int(key)).encode()
    if isinstance(key, float):
        return b"i" + str(int(key)).encode() if key.is_integer() else b"f" + repr(key).encode()
    if key is None:
        return b"n"
    if isinstance(key, tuple):
        return b"t" + b"\x00".join(_key_bytes(part) for part in key)
    try:
        return b"p" + pickle.dumps(key, protocol=4)
    except Exception as error:
        raise TypeError(
            f"the mapper emitted a key of type {type(key).__name__} that cannot be pickled ({error}); "
            "keys travel to the reducers, so they must pickle (str, int, tuples ... do)"
        ) from None


def run_map(
    split: Split,
    *,
    mapper: Mapper,
    combiner: Reducer | None,
    partitions: int,
    pin: str,
    whole_split: bool = False,
) -> list[tuple[str, int, int] | None]:
    """One map task: its split's pairs, combined and partitioned, stored as
    one shuffle object; returns ``(object id, offset, length)`` per partition
    (None: empty).
    With ``whole_split`` the mapper takes an iterator over the split's
    records and returns pairs or a mapping ``{key: value}``."""
    from moot.client.client import get_client

    records = _Records(split)
    values_of: defaultdict[Any, list[Any]] = defaultdict(list)
    try:
        if whole_split:
            produced = mapper(iter(records))
            if isinstance(produced, Mapping):
                # Keys are distinct already: nothing to group or combine.
                keys, values = list(produced.keys()), list(produced.values())
            else:
                for key, value in produced:
                    values_of[key].append(value)
                keys, values = _pairs(values_of, combiner)
        else:
            for count, record in enumerate(records, 1):
                for key, value in mapper(record):
                    values_of[key].append(value)
                if combiner is not None and count % COMBINE_EVERY_RECORDS == 0:
                    _combine(values_of, combiner)
            keys, values = _pairs(values_of, combiner)
    except Exception as error:
        error.add_note(f"moot map_reduce: the mapper (or combiner) failed on {records.where()}")
        raise
    del values_of
    parts = [_dumps_partition(part_keys, part_values) for part_keys, part_values in _partition(keys, values, partitions)]
    if not any(parts):
        return [None] * partitions
    # One shuffle object per map, its partitions end to end: one put (one
    # upload, one commit, one pin) instead of one per partition (measured:
    # eight puts took most of a map task's time); a reduce reads its range.
    ref = get_client().objects.put(b"".join(parts), pin=pin)
    refs: list[tuple[str, int, int] | None] = []
    offset = 0
    for part in parts:
        refs.append((ref.id, offset, len(part)) if part else None)
        offset += len(part)
    return refs


def _pairs(values_of: dict[Any, list[Any]], combiner: Reducer | None) -> tuple[list[Any], list[Any]]:
    """``values_of`` as parallel lists, a key repeated once per value (once
    in all when combined: the combiner folds each key's values first)."""
    if combiner is not None:
        _combine(values_of, combiner)
        return list(values_of.keys()), [values[0] for values in values_of.values()]
    keys: list[Any] = []
    values: list[Any] = []
    for key, its_values in values_of.items():
        keys.extend([key] * len(its_values))
        values.extend(its_values)
    return keys, values


def _partition(keys: list[Any], values: list[Any], partitions: int) -> list[tuple[list[Any], list[Any]]]:
    """The pairs split by ``stable_hash(key) % partitions``, in order."""
    if partitions == 1:
        return [(keys, values)]
    part_keys: list[list[Any]] = [[] for _ in range(partitions)]
    part_values: list[list[Any]] = [[] for _ in range(partitions)]
    add_key = [part.append for part in part_keys]
    add_value = [part.append for part in part_values]
    for key, value, hashed in zip(keys, values, stable_hashes(keys), strict=True):
        index = hashed % partitions
        add_key[index](key)
        add_value[index](value)
    return list(zip(part_keys, part_values, strict=True))


def _combine(values_of: Mapping[Any, list[Any]], combiner: Reducer) -> None:
    """Fold each key's values into one (the key's list keeps one value)."""
    for key, values in values_of.items():
        if len(values) > 1:
            try:
                values[:] = [combiner(key, values)]
            except Exception as error:
                error.add_note(f"moot map_reduce: the combiner failed on key {key!r:.200}")
                raise


def _dumps_partition(keys: list[Any], values: list[Any]) -> bytes:
    """A partition on the wire: the pickle of two parallel lists (keys,
    values); a key may repeat. Unpickled many times faster than a list of
    ``(key, values)`` pairs: no tuple and no list per key."""
    if not keys:
        return b""
    try:
        return pickle.dumps((keys, values), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        pass
    for key, value in zip(keys, values, strict=True):
        _key_bytes(key)  # names an unpicklable key
        try:
            cloudpickle.dumps(value)
        except Exception as error:
            raise TypeError(
                f"the mapper emitted a value for key {key!r:.200} that cannot be pickled: {error}"
            ) from None
    return bytes(cloudpickle.dumps((keys, values)))


def run_reduce(
    inputs: Sequence[tuple[int, str, int, int]],
    *,
    reducer: Reducer,
) -> dict[Any, Any]:
    """One reduce task: read the partition's range of each map's shuffle
    object (``(map, object id, offset, length)`` each), group by key,
    reduce; returns ``{key: value}``."""
    from moot.client.client import get_client

    client = get_client()

    def fetch(item: tuple[int, str, int, int]) -> bytes | None:
        _, object_id, offset, length = item
        try:
            data = client.objects.get(object_id)
        except (NotFound, Unavailable, Timeout):
            return None
        return data[offset : offset + length]

    groups: defaultdict[Any, list[Any]] = defaultdict(list)
    lost: list[int] = []
    # Fetched FETCHES_IN_FLIGHT at a time (each is a round trip to the node),
    # grouped here in map order; only this partition's range of each is kept.
    with concurrent.futures.ThreadPoolExecutor(FETCHES_IN_FLIGHT) as pool:
        for (map_index, *_), part in zip(inputs, pool.map(fetch, inputs), strict=True):
            if part is None:
                lost.append(map_index)
                continue
            if lost:
                continue  # the run will come back: no need to group what we have
            _merge(groups, part)
    if lost:
        raise MapOutputLost(lost)
    reduced: dict[Any, Any] = {}
    for key, values in groups.items():
        try:
            reduced[key] = reducer(key, values)
        except Exception as error:
            error.add_note(f"moot map_reduce: the reducer failed on key {key!r:.200}")
            raise
    return reduced


def _merge(groups: defaultdict[Any, list[Any]], part: bytes) -> None:
    """Add one map's partition (``_dumps_partition``) to ``groups``."""
    keys, values = pickle.loads(part)
    for key, value in zip(keys, values, strict=True):
        groups[key].append(value)


# -- the driver ----------------------------------------------------------------------------


ProgressHook = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(slots=True)
class RunStats:
    """What a run did (``Client.map_reduce(..., stats=RunStats())`` fills it)."""

    splits: int = 0
    partitions: int = 0
    map_seconds: float = 0.0
    reduce_seconds: float = 0.0
    backups: int = 0
    backups_won: int = 0
    maps_re_executed: int = 0
    retried: int = 0


def map_reduce(
    client: Client,
    inputs: Any,
    mapper: Mapper,
    reducer: Reducer,
    *,
    combiner: Reducer | None = None,
    partitions: int = 8,
    split_bytes: int = SPLIT_BYTES_DEFAULT,
    output: str | os.PathLike[str] | None = None,
    retries: int = 0,
    backups: bool = True,
    progress: ProgressHook | None = None,
    stats: RunStats | None = None,
    whole_split: bool = False,
) -> dict[Any, Any]:
    """See ``Client.map_reduce``."""
    for name, function in (("mapper", mapper), ("reducer", reducer), ("combiner", combiner)):
        if function is not None and not callable(function):
            raise BadRequest(f"map_reduce(): {name} must be a function, not {type(function).__name__}")
    if not 1 <= partitions <= PARTITIONS_MAX:
        raise BadRequest(f"map_reduce(): partitions must be within 1..{PARTITIONS_MAX}, not {partitions}")
    if split_bytes < SPLIT_BYTES_MIN:
        raise BadRequest(f"map_reduce(): split_bytes must be at least {SPLIT_BYTES_MIN}, not {split_bytes}")
    out_dir = Path(output) if output is not None else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise BadRequest(f"map_reduce(): output {out_dir} exists and is not a directory")
    splits, placement = plan_splits(inputs, split_bytes, _worker_slots(client))
    stats = stats if stats is not None else RunStats()
    stats.splits, stats.partitions = len(splits), partitions
    pin = f"{PIN_PREFIX}{uuid.uuid4().hex}"
    map_task = functools.partial(
        run_map, mapper=mapper, combiner=combiner, partitions=partitions, pin=pin, whole_split=whole_split
    )
    reduce_task = functools.partial(run_reduce, reducer=reducer)
    stored: list[str] = []
    try:
        started = time.monotonic()
        map_outputs = _Phase(client, "map", map_task, splits, placement, retries, backups, progress, stats).run()
        stats.map_seconds = time.monotonic() - started
        stored.extend(ref[0] for refs in map_outputs for ref in refs if ref is not None)
        started = time.monotonic()
        reduced = _reduce_phase(
            client, reduce_task, map_task, splits, placement, map_outputs, partitions, retries, backups, progress, stats, stored
        )
        stats.reduce_seconds = time.monotonic() - started
    finally:
        _unpin(client, stored, pin)
    if out_dir is None:
        merged: dict[Any, Any] = {}
        for part in reduced:
            merged.update(part)
        return merged
    return _write_output(out_dir, reduced)


def _reduce_phase(
    client: Client,
    reduce_task: Callable[..., Any],
    map_task: Callable[..., Any],
    splits: list[Split],
    placement: Mapping[str, str],
    map_outputs: list[Any],
    partitions: int,
    retries: int,
    backups: bool,
    progress: ProgressHook | None,
    stats: RunStats,
    stored: list[str],
) -> list[dict[Any, Any]]:
    results: list[dict[Any, Any] | None] = [None] * partitions
    todo = list(range(partitions))
    for _ in range(RE_EXECUTIONS_MAX + 1):
        inputs = [
            [(m, *refs[r]) for m, refs in enumerate(map_outputs) if refs[r] is not None] for r in todo
        ]
        phase = _Phase(client, "reduce", reduce_task, inputs, {}, retries, backups, progress, stats, lost_ok=True)
        outcomes = phase.run()
        lost: set[int] = set()
        again = []
        for r, outcome in zip(todo, outcomes, strict=True):
            if isinstance(outcome, MapOutputLost):
                lost.update(outcome.maps)
                again.append(r)
            else:
                results[r] = outcome
        if not again:
            return [result if result is not None else {} for result in results]
        # The paper's re-execution: the maps whose outputs are gone run again.
        indexes = sorted(lost)
        stats.maps_re_executed += len(indexes)
        redone = _Phase(
            client, "map (re-run)", map_task, [splits[i] for i in indexes], placement, retries, backups, progress, stats
        ).run()
        for index, refs in zip(indexes, redone, strict=True):
            map_outputs[index] = refs
            stored.extend(ref[0] for ref in refs if ref is not None)
        todo = again
    raise Unavailable(f"map outputs kept getting lost after {RE_EXECUTIONS_MAX} re-executions; is the store healthy?")


class _Phase:
    """One phase's tasks, with retries of infrastructure failures and backups."""

    def __init__(
        self,
        client: Client,
        name: str,
        function: Callable[..., Any],
        items: Sequence[Any],
        placement: Mapping[str, str],
        retries: int,
        backups: bool,
        progress: ProgressHook | None,
        stats: RunStats,
        *,
        lost_ok: bool = False,
    ) -> None:
        self.client = client
        self.name = name
        self.function = function
        self.items = items
        self.placement = dict(placement)
        self.retries = retries
        self.backups = backups
        self.progress = progress
        self.stats = stats
        self.lost_ok = lost_ok
        self.copies: dict[int, list[Future]] = {}
        self.index_of: dict[Future, int] = {}
        self.retried: dict[int, int] = {}

    def run(self) -> list[Any]:
        count = len(self.items)
        results: list[Any] = [None] * count
        if not count:
            return results
        futures = self.client.map(
            self.function, self.items, retries=self.retries, placement=self.placement or None
        )
        for index, future in enumerate(futures):
            self._track(index, future)
        pending = set(range(count))
        started = time.monotonic()
        finish_times: list[float] = []
        slots = self._slots() if self.backups else 0
        tail: tuple[float, int] | None = None  # (since when, tasks done then): no task waits for a slot
        self._report(count - len(pending), count)
        try:
            while pending:
                waiting = [future for index in pending for future in self.copies[index]]
                done, _ = concurrent.futures.wait(waiting, timeout=POLL_S, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in cast("set[Future]", done):
                    index = self.index_of[future]
                    if index not in pending or future.cancelled():
                        continue
                    error = future.exception()
                    if error is None:
                        results[index] = future.result()
                    elif self.lost_ok and isinstance(error, MapOutputLost):
                        results[index] = error
                    elif self._other_copy_runs(index, future):
                        self.copies[index].remove(future)
                        continue
                    elif _infrastructure(error) and self.retried.get(index, 0) < INFRASTRUCTURE_RETRIES:
                        self.retried[index] = self.retried.get(index, 0) + 1
                        self.stats.retried += 1
                        self.copies[index].remove(future)
                        self._track(index, self._submit(index))
                        continue
                    else:
                        raise error
                    if len(self.copies[index]) > 1 and future is not self.copies[index][0]:
                        self.stats.backups_won += 1
                    pending.discard(index)
                    finish_times.append(time.monotonic() - started)
                    for other in self.copies[index]:
                        if other is not future:
                            other.cancel()
                    self._report(count - len(pending), count)
                if self.backups and pending and len(pending) <= slots:
                    if tail is None:
                        tail = (time.monotonic() if count > slots else started, count - len(pending))
                    self._start_backups(pending, started, tail, slots, finish_times)
        except BaseException:
            for index in pending:
                for future in self.copies.get(index, []):
                    future.cancel()
            raise
        return results

    def _track(self, index: int, future: Future) -> None:
        self.copies.setdefault(index, []).append(future)
        self.index_of[future] = index

    def _submit(self, index: int) -> Future:
        return self.client.submit(
            self.function, self.items[index], retries=self.retries, placement=self.placement or None
        )

    def _other_copy_runs(self, index: int, failed: Future) -> bool:
        return any(not other.done() for other in self.copies[index] if other is not failed)

    def _slots(self) -> int:
        """More tasks left than worker slots and some are still waiting for
        a worker, not straggling."""
        return _worker_slots(self.client)

    def _start_backups(
        self, pending: set[int], started: float, tail: tuple[float, int], slots: int, finish_times: list[float]
    ) -> None:
        """Back up the tasks still pending once the tail (no task waiting for
        a slot: each remaining one had one by then) has run
        ``BACKUP_SLOWDOWN`` times a task's run time: only tasks that
        straggle, not the last ones of a phase that ends on time. A task's
        run time: with every slot busy until the tail, a slot finished one
        every ``slots * elapsed / done`` seconds; when there never were more
        tasks than slots, they all started at once and finish times are run
        times."""
        tail_started, done = tail
        if done > slots:
            run_time = slots * (tail_started - started) / done
        elif finish_times:
            run_time = statistics.median(finish_times)
        else:
            return
        if time.monotonic() - tail_started < max(BACKUP_AFTER_S_MIN, BACKUP_SLOWDOWN * run_time):
            return
        for index in sorted(pending):
            if len(self.copies[index]) == 1:
                self.stats.backups += 1
                self._track(index, self._submit(index))

    def _report(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(self.name, done, total)


def _worker_slots(client: Client) -> int:
    """Worker processes of the live members (0: unknown)."""
    try:
        members = client.members()
    except MootError:
        return 0
    return sum(member.cpus for member in members if member.state == "alive")


def _infrastructure(error: BaseException) -> bool:
    """A failure of the federation (not the user's code) inside a task."""
    return isinstance(error, Unavailable | Timeout | NotFound)  # moot's errors unpickle as themselves


def _unpin(client: Client, object_ids: list[str], pin: str) -> None:
    """Release the run's shuffle objects (a few writes at a time: each is a
    Raft round trip); the collector takes them after its grace period."""

    def unpin(object_id: str) -> None:
        with contextlib.suppress(MootError):  # collected after the grace period anyway
            client.objects.unpin(object_id, pin)

    with concurrent.futures.ThreadPoolExecutor(UNPINS_IN_FLIGHT) as pool:
        list(pool.map(unpin, dict.fromkeys(object_ids)))


def _write_output(directory: Path, parts: list[dict[Any, Any]]) -> dict[Any, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[Any, Any] = {}
    for index, part in enumerate(parts):
        path = directory / f"part-{index:05d}"
        with path.open("w", encoding="utf-8") as handle:
            for key, value in part.items():
                handle.write(f"{key}\t{value}\n")
        written[str(path)] = len(part)
    return written
