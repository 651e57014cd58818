"""A node's durable store of content-addressed chunks, and its scrubber.

Rules:

- A chunk's id is the lowercase hex SHA-256 of its bytes (64 characters).
  Every id is checked against that shape before any path is built from it,
  so no id can name a file outside the store (``../`` and the like are a
  ``ValueError``).
- Layout: ``<root>/<id[:2]>/<id>`` (256 fan-out directories keep each
  directory small), ``<root>/quarantine/<id>`` for chunks whose bytes no
  longer match their id, ``<root>/LOCK`` held with ``flock`` by the one
  process that owns the store.
- ``put`` hashes before it writes: bytes that do not match their id are
  refused (``ChunkMismatchError``) and nothing touches the disk. The bytes go
  to a temporary file in the chunk's fan-out directory, are fsync'd, renamed
  into place (``os.replace``) and the directory is fsync'd. A chunk is thus
  fully there or absent; a crash mid-write leaves only a temporary file,
  which the next ``open`` removes.
- A full disk (ENOSPC, EDQUOT) or a put past ``capacity_bytes`` raises
  ``ChunkStoreFullError`` and leaves nothing behind.
- ``open`` builds the in-memory index (id -> size, mtime) by listing the
  directories; it hashes nothing, so it is fast. Corruption is found by
  ``get(verify=True)``, ``verify`` and the ``Scrubber``, which re-hash, and
  move a bad file to the quarantine (never returning its bytes). Each
  quarantined id is queued for the caller (``take_corrupt``) to repair from
  a peer.
- The index is guarded by a lock, so the store may be called from worker
  threads (``asyncio.to_thread``); disk I/O happens outside the lock. Two
  calls on the *same* chunk id from two threads at once are not ordered.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final

if TYPE_CHECKING:
    from types import TracebackType

CHUNK_ID_LENGTH: Final = 64  # hex digits of a SHA-256 digest
_CHUNK_ID_PATTERN: Final = re.compile(r"[0-9a-f]{64}")
_FAN_OUT_PATTERN: Final = re.compile(r"[0-9a-f]{2}")
# Temporary files start with a dot, so they can never be mistaken for a chunk
# (whose name is 64 hex digits) nor for a fan-out directory.
TEMP_PREFIX: Final = ".tmp."
QUARANTINE_DIRECTORY: Final = "quarantine"
LOCK_FILE: Final = "LOCK"
# Streaming reads (``verify``) hash this much at a time: large enough that
# syscall overhead is negligible, small enough not to matter for memory.
READ_BLOCK_BYTES: Final = 1024 * 1024
# Quarantined ids waiting for ``take_corrupt``. Past this the oldest are
# dropped (and counted): a caller that never drains must not grow us without
# bound, and repair can still find missing chunks by its replica counts.
CORRUPT_PENDING_MAX: Final = 4096
_FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


class ChunkStoreError(Exception):
    """The chunk store cannot do what was asked (an operating error, not a bug)."""


class ChunkMismatchError(ChunkStoreError):
    """The bytes offered for a chunk do not hash to its id; nothing was written."""

    def __init__(self, chunk_id: str, actual_id: str) -> None:
        """``actual_id``: the SHA-256 of the bytes that were offered."""
        super().__init__(
            f"refused chunk {chunk_id}: its bytes hash to {actual_id}; whoever supplied "
            "them (a peer or the chunker) sent wrong data — fetch the chunk again"
        )
        self.chunk_id = chunk_id
        self.actual_id = actual_id


class ChunkStoreFullError(ChunkStoreError):
    """A chunk did not fit (capacity or disk); nothing was left behind."""

    def __init__(
        self,
        message: str,
        *,
        used_bytes: int,
        needed_bytes: int,
        capacity_bytes: int | None,
    ) -> None:
        """``message`` says what is full and what to do."""
        super().__init__(message)
        self.used_bytes = used_bytes
        self.needed_bytes = needed_bytes
        self.capacity_bytes = capacity_bytes


class ChunkStoreInUseError(ChunkStoreError):
    """Another process (or another open in this one) owns the store directory."""


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """What the index knows of one stored chunk, without reading it."""

    size_bytes: int
    mtime_ns: int


def check_chunk_id(chunk_id: str) -> str:
    """Return ``chunk_id`` if it is 64 lowercase hex digits, else raise ``ValueError``.

    Call this before building any path from an id: it is what keeps ids like
    ``../../etc/passwd`` out of the filesystem."""
    if not isinstance(chunk_id, str) or _CHUNK_ID_PATTERN.fullmatch(chunk_id) is None:
        raise ValueError(
            f"invalid chunk id {chunk_id!r}: a chunk id is the SHA-256 of the chunk's "
            "bytes as 64 lowercase hex digits"
        )
    return chunk_id


def chunk_id_of(data: bytes) -> str:
    """The chunk id of ``data``: its SHA-256 as lowercase hex."""
    return hashlib.sha256(data).hexdigest()


class ChunkStore:
    """One node's chunks on disk, with an in-memory index (see module doc)."""

    def __init__(
        self,
        root: Path,
        lock_descriptor: int,
        index: dict[str, StoredChunk],
        capacity_bytes: int | None,
        temp_files_removed: int,
    ) -> None:
        """Use ``open``."""
        self.root = root
        self.capacity_bytes = capacity_bytes
        self.temp_files_removed = temp_files_removed  # by ``open``: leftovers of a crash
        self._lock_descriptor: int | None = lock_descriptor
        self._index = index
        self._used_bytes = sum(stored.size_bytes for stored in index.values())
        self._reserved_bytes = 0  # by puts in flight, so concurrent puts respect capacity
        self._fan_out_names = {chunk_id[:2] for chunk_id in index}  # known to exist
        self._mutex = threading.Lock()
        self._temp_counter = itertools.count()
        self._corrupt_pending: list[str] = []
        self.corrupt_count = 0  # chunks quarantined since open
        self.corrupt_dropped_count = 0  # quarantined ids dropped past CORRUPT_PENDING_MAX

    # -- lifecycle ------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path, *, capacity_bytes: int | None = None) -> ChunkStore:
        """Open (creating if missing) the store in ``directory``: take its lock,
        remove temporary files left by a crash, and index the chunks by listing.

        ``capacity_bytes`` caps the total size of the chunks (None: only the
        disk limits it). Raises ``ChunkStoreInUseError`` if another opener holds
        the directory."""
        if capacity_bytes is not None and capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0 or None, not {capacity_bytes}")
        root = Path(directory)
        if not root.is_dir():
            root.mkdir(parents=True, exist_ok=True)
            _fsync_directory(root.parent)
        lock_descriptor = _lock(root)
        try:
            index, temp_files_removed = _scan(root)
            (root / QUARANTINE_DIRECTORY).mkdir(exist_ok=True)
        except BaseException:
            os.close(lock_descriptor)
            raise
        return cls(root, lock_descriptor, index, capacity_bytes, temp_files_removed)

    def close(self) -> None:
        """Release the directory lock (idempotent). Every put is already durable."""
        if self._lock_descriptor is not None:
            os.close(self._lock_descriptor)  # closing the descriptor drops the flock
            self._lock_descriptor = None

    def __enter__(self) -> ChunkStore:
        """Context manager: ``close`` on exit."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the store."""
        self.close()

    # -- index queries (no disk access) ---------------------------------------------

    @property
    def used_bytes(self) -> int:
        """Total size of the stored chunks, in bytes."""
        return self._used_bytes

    @property
    def count(self) -> int:
        """Number of stored chunks."""
        return len(self._index)

    def has(self, chunk_id: str) -> bool:
        """Whether the chunk is stored (by the index)."""
        return check_chunk_id(chunk_id) in self._index

    def size(self, chunk_id: str) -> int | None:
        """The chunk's size in bytes, or None if it is not stored."""
        stored = self._index.get(check_chunk_id(chunk_id))
        return None if stored is None else stored.size_bytes

    def mtime_ms(self, chunk_id: str) -> int | None:
        """When the chunk was last written or re-put (ms since the epoch, the
        file's mtime), or None if it is not stored. Garbage collection spares
        chunks younger than its grace period: their object may not be
        committed yet."""
        stored = self._index.get(check_chunk_id(chunk_id))
        return None if stored is None else stored.mtime_ns // 1_000_000

    def ids(self) -> list[str]:
        """The stored chunk ids, sorted (a copy: safe to hold while the store changes)."""
        with self._mutex:
            return sorted(self._index)

    # -- writing --------------------------------------------------------------------

    def put(self, chunk_id: str, data: bytes) -> bool:
        """Store ``data`` as chunk ``chunk_id``, durably; False if already stored.

        Raises ``ChunkMismatchError`` if ``data`` does not hash to ``chunk_id``
        and ``ChunkStoreFullError`` if it does not fit; either way nothing is
        left on disk. A put of a chunk already stored refreshes its mtime, so a
        chunk that is being referenced again outlives the garbage grace period."""
        check_chunk_id(chunk_id)
        actual_id = chunk_id_of(data)
        if actual_id != chunk_id:
            raise ChunkMismatchError(chunk_id, actual_id)
        if self._touch(chunk_id):
            return False
        self._reserve(chunk_id, len(data))
        try:
            stored = self._write(chunk_id, data)
        finally:
            with self._mutex:
                self._reserved_bytes -= len(data)
        with self._mutex:
            if chunk_id in self._index:
                return False  # another thread stored the same (identical) bytes first
            self._index[chunk_id] = stored
            self._used_bytes += stored.size_bytes
        assert stored.size_bytes == len(data)
        return True

    def delete(self, chunk_id: str) -> bool:
        """Remove the chunk; False if it was not stored.

        The directory is not fsync'd: if a crash undoes the delete, the chunk
        comes back intact and garbage collection removes it again."""
        with self._mutex:
            stored = self._index.pop(check_chunk_id(chunk_id), None)
            if stored is None:
                return False
            self._used_bytes -= stored.size_bytes
        _unlink_quietly(self._path(chunk_id))
        return True

    # -- reading --------------------------------------------------------------------

    def get(self, chunk_id: str, *, verify: bool = False) -> bytes | None:
        """The chunk's bytes, or None if it is not stored.

        With ``verify`` the bytes are re-hashed; if they do not match, the file
        is quarantined, the id queued for ``take_corrupt`` and None returned:
        bytes that do not match their id are never returned. Without it, only a
        size that differs from the index is caught (same treatment)."""
        stored = self._index.get(check_chunk_id(chunk_id))
        if stored is None:
            return None
        try:
            data = self._path(chunk_id).read_bytes()
        except FileNotFoundError:
            self._forget(chunk_id)  # removed behind our back: it is simply absent
            return None
        if len(data) != stored.size_bytes or (verify and chunk_id_of(data) != chunk_id):
            self.quarantine(chunk_id)
            return None
        return data

    def open_reader(self, chunk_id: str) -> BinaryIO | None:
        """A binary file open on the chunk, for streaming a large one, or None if
        it is not stored. The bytes are NOT verified: hash them as you stream
        and call ``quarantine`` if they do not match."""
        if check_chunk_id(chunk_id) not in self._index:
            return None
        try:
            return self._path(chunk_id).open("rb")
        except FileNotFoundError:
            self._forget(chunk_id)
            return None

    def verify(self, chunk_id: str) -> bool | None:
        """Re-hash the stored chunk, streaming: True if intact, False if corrupt
        (now quarantined and queued for ``take_corrupt``), None if not stored."""
        if check_chunk_id(chunk_id) not in self._index:
            return None
        digest = hashlib.sha256()
        try:
            with self._path(chunk_id).open("rb") as reader:
                while block := reader.read(READ_BLOCK_BYTES):
                    digest.update(block)
        except FileNotFoundError:
            self._forget(chunk_id)
            return None
        if digest.hexdigest() != chunk_id:
            self.quarantine(chunk_id)
            return False
        return True

    # -- corruption -----------------------------------------------------------------

    def quarantine(self, chunk_id: str) -> bool:
        """Move a chunk whose bytes are bad to ``quarantine/`` (kept for a
        post-mortem, never served), drop it from the index and queue its id for
        ``take_corrupt``. False if it was not stored. A later quarantine of the
        same id replaces the earlier copy."""
        if not self._forget(check_chunk_id(chunk_id)):
            return False
        # Already gone is fine: absent is all the index needs to say.
        with contextlib.suppress(FileNotFoundError):
            os.replace(self._path(chunk_id), self.root / QUARANTINE_DIRECTORY / chunk_id)
        with self._mutex:
            self.corrupt_count += 1
            self._corrupt_pending.append(chunk_id)
            if len(self._corrupt_pending) > CORRUPT_PENDING_MAX:
                del self._corrupt_pending[0]
                self.corrupt_dropped_count += 1
        return True

    def take_corrupt(self) -> list[str]:
        """The ids quarantined since the last call (oldest first), to repair
        from peers. Includes the ones the ``Scrubber`` found."""
        with self._mutex:
            taken, self._corrupt_pending = self._corrupt_pending, []
        return taken

    # -- internals ------------------------------------------------------------------

    def _path(self, chunk_id: str) -> Path:
        assert _CHUNK_ID_PATTERN.fullmatch(chunk_id), "ids are checked before paths are built"
        return self.root / chunk_id[:2] / chunk_id

    def _forget(self, chunk_id: str) -> bool:
        """Drop the chunk from the index only; False if it was not there."""
        with self._mutex:
            stored = self._index.pop(chunk_id, None)
            if stored is None:
                return False
            self._used_bytes -= stored.size_bytes
        assert self._used_bytes >= 0
        return True

    def _touch(self, chunk_id: str) -> bool:
        """Refresh the mtime of a stored chunk; False if it is not stored
        (including when its file has vanished: then the put writes it again)."""
        stored = self._index.get(chunk_id)
        if stored is None:
            return False
        path = self._path(chunk_id)
        try:
            os.utime(path)
            mtime_ns = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            self._forget(chunk_id)
            return False
        with self._mutex:
            if chunk_id in self._index:
                self._index[chunk_id] = StoredChunk(stored.size_bytes, mtime_ns)
        return True

    def _reserve(self, chunk_id: str, size_bytes: int) -> None:
        """Count ``size_bytes`` against capacity before writing, or raise."""
        with self._mutex:
            committed = self._used_bytes + self._reserved_bytes
            if self.capacity_bytes is not None and committed + size_bytes > self.capacity_bytes:
                raise ChunkStoreFullError(
                    f"chunk store {self.root} is full: {committed} of its capacity of "
                    f"{self.capacity_bytes} bytes are used and chunk {chunk_id} needs "
                    f"{size_bytes} more — delete unreferenced chunks (garbage collection) "
                    "or raise capacity_bytes",
                    used_bytes=committed,
                    needed_bytes=size_bytes,
                    capacity_bytes=self.capacity_bytes,
                )
            self._reserved_bytes += size_bytes

    def _write(self, chunk_id: str, data: bytes) -> StoredChunk:
        """Write the chunk file atomically and durably; on any failure remove
        what was written and raise (``ChunkStoreFullError`` for a full disk)."""
        fan_out = self._fan_out_directory(chunk_id)
        final = fan_out / chunk_id
        temporary = fan_out / f"{TEMP_PREFIX}{chunk_id}.{os.getpid()}.{next(self._temp_counter)}"
        placed = False
        try:
            descriptor = os.open(
                temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
            )
            try:
                _write_all(descriptor, data)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            os.replace(temporary, final)
            placed = True
            _fsync_directory(fan_out)  # makes the rename itself durable
            mtime_ns = os.stat(final).st_mtime_ns
        except BaseException as exc:
            # "Nothing left behind": if the rename happened but its fsync failed we
            # cannot tell whether it is durable, so the chunk is not stored.
            _unlink_quietly(final if placed else temporary)
            if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
                raise self._disk_full(chunk_id, len(data), exc) from exc
            raise
        return StoredChunk(len(data), mtime_ns)

    def _fan_out_directory(self, chunk_id: str) -> Path:
        name = chunk_id[:2]
        directory = self.root / name
        if name not in self._fan_out_names:
            try:
                directory.mkdir(exist_ok=True)
                _fsync_directory(self.root)  # the new directory's entry must survive a crash
            except OSError as exc:
                if exc.errno in _FULL_ERRNOS:
                    raise self._disk_full(chunk_id, 0, exc) from exc
                raise
            with self._mutex:
                self._fan_out_names.add(name)
        return directory

    def _disk_full(self, chunk_id: str, size_bytes: int, exc: OSError) -> ChunkStoreFullError:
        return ChunkStoreFullError(
            f"the disk holding chunk store {self.root} is full "
            f"({errno.errorcode.get(exc.errno or 0, exc.errno)}) while writing chunk "
            f"{chunk_id} ({size_bytes} bytes); the store holds {self._used_bytes} bytes — "
            "free space on that disk, lower capacity_bytes below what it can hold, "
            "or move the store to a larger disk",
            used_bytes=self._used_bytes,
            needed_bytes=size_bytes,
            capacity_bytes=self.capacity_bytes,
        )


@dataclass(frozen=True, slots=True)
class ScrubStep:
    """What one ``Scrubber.step`` did."""

    checked: list[str]  # ids re-hashed, in order (corrupt ones included)
    corrupt: list[str]  # of those, the ones that did not match (now quarantined)
    cycle_completed: bool  # this step checked the last chunk of a full pass


class Scrubber:
    """Re-hashes every stored chunk, again and again, at a bounded byte rate.

    The runtime calls ``step(now_s)`` from a timer. Each call may hash the
    bytes allowed by ``bytes_per_second`` since the previous call (a token
    bucket, capped at ``allowance_bytes_max`` so a stalled timer does not
    cause a burst). A chunk is hashed whole, so a step may overshoot by up to
    one chunk; the overshoot is a debt that later steps pay first, so the
    long-run rate holds exactly. A pass walks a sorted snapshot of the ids
    taken when it starts: chunks added meanwhile wait for the next pass,
    chunks deleted meanwhile are skipped (and not charged).
    """

    def __init__(
        self,
        store: ChunkStore,
        bytes_per_second: int,
        *,
        allowance_bytes_max: int | None = None,
        chunks_per_step_max: int = 1024,
    ) -> None:
        """``allowance_bytes_max`` defaults to one second's worth of bytes.
        ``chunks_per_step_max`` bounds one step's work when chunks are tiny (each
        costs an open, which the byte rate does not count)."""
        if bytes_per_second <= 0:
            raise ValueError(f"bytes_per_second must be > 0, not {bytes_per_second}")
        if allowance_bytes_max is not None and allowance_bytes_max <= 0:
            raise ValueError(f"allowance_bytes_max must be > 0, not {allowance_bytes_max}")
        if chunks_per_step_max <= 0:
            raise ValueError(f"chunks_per_step_max must be > 0, not {chunks_per_step_max}")
        self.store = store
        self.bytes_per_second = bytes_per_second
        self.allowance_bytes_max = (
            bytes_per_second if allowance_bytes_max is None else allowance_bytes_max
        )
        self.chunks_per_step_max = chunks_per_step_max
        self._allowance_bytes = 0.0  # may go negative: the debt of a whole-chunk overshoot
        self._last_now_s: float | None = None
        self._pass: list[str] | None = None
        self._cursor = 0
        # Counters for metrics, monotonic since construction.
        self.bytes_scrubbed = 0
        self.chunks_checked = 0
        self.corrupt_found = 0
        self.cycles_completed = 0

    @property
    def allowance_bytes(self) -> float:
        """Bytes the next step may hash before time passes (negative: a debt)."""
        return self._allowance_bytes

    def step(self, now_s: float, budget_bytes: int | None = None) -> ScrubStep:
        """Hash what the rate allows at ``now_s`` (seconds, monotonic, any
        origin), at most ``budget_bytes`` more if given; quarantine corrupt
        chunks through the store. The first call only starts the clock."""
        assert budget_bytes is None or budget_bytes >= 0
        if self._last_now_s is None:
            self._last_now_s = now_s
        assert now_s >= self._last_now_s, "the scrubber's clock must not go backwards"
        earned = (now_s - self._last_now_s) * self.bytes_per_second
        self._last_now_s = now_s
        self._allowance_bytes = min(self._allowance_bytes + earned, self.allowance_bytes_max)
        checked: list[str] = []
        corrupt: list[str] = []
        spent_bytes = 0
        cycle_completed = False
        while (
            self._allowance_bytes > 0
            and (budget_bytes is None or spent_bytes < budget_bytes)
            and len(checked) < self.chunks_per_step_max
        ):
            if self._pass is None:
                ids = self.store.ids()
                if not ids:
                    break  # an empty store has no pass to complete
                self._pass, self._cursor = ids, 0
            chunk_id = self._pass[self._cursor]
            self._cursor += 1
            size_bytes = self.store.size(chunk_id)
            verdict = None if size_bytes is None else self.store.verify(chunk_id)
            if size_bytes is not None and verdict is not None:
                self._allowance_bytes -= size_bytes
                spent_bytes += size_bytes
                checked.append(chunk_id)
                if not verdict:
                    corrupt.append(chunk_id)
            if self._cursor == len(self._pass):
                self._pass = None
                self.cycles_completed += 1
                cycle_completed = True
                break  # report the pass's end; the next pass starts next step
        self.bytes_scrubbed += spent_bytes
        self.chunks_checked += len(checked)
        self.corrupt_found += len(corrupt)
        assert len(checked) <= self.chunks_per_step_max
        return ScrubStep(checked=checked, corrupt=corrupt, cycle_completed=cycle_completed)


# -- filesystem leaves -----------------------------------------------------------------


def _lock(root: Path) -> int:
    """Open and ``flock`` the store's lock file; return its descriptor."""
    descriptor = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(descriptor)
        raise ChunkStoreInUseError(
            f"chunk store {root} is in use by another process (or another open in "
            "this one) — stop that node, or give this one its own data dir"
        ) from exc
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _scan(root: Path) -> tuple[dict[str, StoredChunk], int]:
    """Index the chunk files under ``root`` and remove temporary leftovers.
    Files that are neither (foreign names) are left alone and not indexed."""
    index: dict[str, StoredChunk] = {}
    temp_files_removed = 0
    with os.scandir(root) as fan_outs:
        for fan_out in fan_outs:
            if not (_FAN_OUT_PATTERN.fullmatch(fan_out.name) and fan_out.is_dir()):
                continue
            with os.scandir(fan_out.path) as entries:
                for entry in entries:
                    if entry.name.startswith(TEMP_PREFIX):
                        _unlink_quietly(Path(entry.path))
                        temp_files_removed += 1
                    elif (
                        _CHUNK_ID_PATTERN.fullmatch(entry.name)
                        and entry.name[:2] == fan_out.name
                        and entry.is_file(follow_symlinks=False)
                    ):
                        stat = entry.stat(follow_symlinks=False)
                        index[entry.name] = StoredChunk(stat.st_size, stat.st_mtime_ns)
    return index, temp_files_removed


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        assert written > 0, "a regular file write makes progress or raises"
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _unlink_quietly(path: Path) -> None:
    path.unlink(missing_ok=True)
