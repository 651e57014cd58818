"""Durable Raft storage: one node's hard state, snapshot and log, in SQLite.

Rules:

- ``persist`` carries out step 1 of the effects contract of ``Output``
  (``moot/core/raft.py``) in ONE SQLite transaction, durable before it
  returns (WAL journal, ``synchronous=FULL``: the WAL is fsync'd at every
  commit): the snapshot first, then the entries (stored entries from
  ``entries[0].index`` on are replaced), then the hard state. A crash at any
  point leaves all of one call or none of it.
- A persisted snapshot drops the stored entries at or below its index. If the
  stored entry at the snapshot's index has another term (or is missing), the
  stored suffix beyond it belongs to a dead history and is dropped too: this
  mirrors ``RaftLog.restore``, which keeps the suffix only when it matches.
- Every record carries a CRC-32 (``zlib.crc32``; entries over index, term,
  kind and data), verified by ``load``, which also checks that the indexes
  follow the snapshot without a gap and terms never go backwards. Any
  failure raises ``StorageCorruptError`` naming the file and the index: a
  node must not start from wrong data.
- The file is created under a temporary name and renamed into place, so an
  existing file without our schema (say, truncated to zero) is corruption,
  not a fresh start that forgets the node's vote.
- One process owns the file (``locking_mode=EXCLUSIVE``); a second opener
  gets ``StorageInUseError``.
- Entry data is stored as raw bytes; hard state and snapshot as msgpack.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

import msgspec

from moot.core.raft_messages import Entry, EntryKind, HardState, Snapshot

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

FORMAT_VERSION: Final = 1  # PRAGMA user_version of a file this module wrote
# Entry kinds as stored: append only, never renumber.
KIND_CODES: Final[dict[EntryKind, int]] = {"normal": 0, "conf_change": 1}
KIND_BY_CODE: Final[dict[int, EntryKind]] = {code: kind for kind, code in KIND_CODES.items()}
RECORD_HARD_STATE: Final = "hard_state"
RECORD_SNAPSHOT: Final = "snapshot"
_ENTRY_HEADER: Final = struct.Struct(">QQB")  # index, term, kind code
_REMEDY: Final = (
    "the node will not start — restore this node's data dir or remove it to rejoin as a new member"
)
_SQLITE_BUSY: Final = 5
_SQLITE_LOCKED: Final = 6
_SQLITE_CORRUPT: Final = 11
_SQLITE_NOTADB: Final = 26

_SCHEMA: Final = (
    "CREATE TABLE entries (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL,"
    " kind INTEGER NOT NULL, data BLOB NOT NULL, crc INTEGER NOT NULL)",
    "CREATE TABLE records (name TEXT PRIMARY KEY, body BLOB NOT NULL, crc INTEGER NOT NULL)",
    f"PRAGMA user_version = {FORMAT_VERSION}",
)

_Record = TypeVar("_Record", HardState, Snapshot)


class StorageError(Exception):
    """The Raft storage cannot be used (an operating error, not a bug)."""


class StorageInUseError(StorageError):
    """Another process holds the storage file open."""


class StorageCorruptError(StorageError):
    """What is on disk is not what was persisted; the node must not start."""

    def __init__(self, path: Path, where: str, reason: str) -> None:
        """``where``: "at index N", "in its hard state", ..."""
        super().__init__(f"raft log {path} is corrupt {where}: {reason}; {_REMEDY}")
        self.path = path
        self.where = where
        self.reason = reason


def entry_crc(index: int, term: int, kind_code: int, data: bytes) -> int:
    """CRC-32 of one entry: its header (index, term, kind) then its data."""
    return zlib.crc32(data, zlib.crc32(_ENTRY_HEADER.pack(index, term, kind_code)))


def record_crc(name: str, body: bytes) -> int:
    """CRC-32 of one named record (hard state or snapshot)."""
    return zlib.crc32(body, zlib.crc32(name.encode()))


class RaftStorage:
    """One node's durable Raft state in one SQLite file (see module doc)."""

    def __init__(self, path: Path, connection: sqlite3.Connection, snapshot_index: int) -> None:
        """Use ``open``."""
        self.path = path
        self._db: sqlite3.Connection | None = connection
        self._snapshot_index = snapshot_index

    # -- lifecycle ------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path) -> RaftStorage:
        """Open the storage file at ``path``, creating it (and its directory)
        if missing. Raises ``StorageCorruptError`` if it is not readable."""
        path = Path(path)
        if not path.exists():
            _create(path)
        connection = _connect(path)
        try:
            snapshot = _read_record(connection, path, RECORD_SNAPSHOT, Snapshot)
        except sqlite3.DatabaseError as exc:
            connection.close()
            raise _translate(path, exc) from exc
        except BaseException:
            connection.close()
            raise
        return cls(path, connection, snapshot.meta.index if snapshot else 0)

    def close(self) -> None:
        """Close the file (idempotent). Everything persisted is already durable."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> RaftStorage:
        """Context manager: ``close`` on exit."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the storage."""
        self.close()

    # -- reading --------------------------------------------------------------------

    def load(self) -> tuple[HardState | None, Snapshot | None, list[Entry]]:
        """Everything a restarting ``RaftNode`` needs, verified: (hard state,
        snapshot, entries after the snapshot). Raises ``StorageCorruptError``."""
        db = self._connection()
        try:
            hard_state = _read_record(db, self.path, RECORD_HARD_STATE, HardState)
            snapshot = _read_record(db, self.path, RECORD_SNAPSHOT, Snapshot)
            entries = _read_entries(db, self.path, snapshot)
        except sqlite3.DatabaseError as exc:
            raise _translate(self.path, exc) from exc
        last_index = entries[-1].index if entries else (snapshot.meta.index if snapshot else 0)
        if hard_state is not None and hard_state.commit > last_index:
            reason = (
                f"commit index {hard_state.commit} is beyond the last stored index {last_index}"
            )
            raise StorageCorruptError(self.path, "in its hard state", reason)
        return hard_state, snapshot, entries

    # -- writing --------------------------------------------------------------------

    def persist(
        self,
        *,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
    ) -> None:
        """Step 1 of the ``Output`` contract: snapshot, then entries (replacing
        stored entries from ``entries[0].index`` on), then hard state, in one
        transaction that is fsync'd before this returns."""
        if hard_state is None and not entries and snapshot is None:
            return
        _assert_contiguous(entries)
        if snapshot is not None and entries:
            assert entries[0].index > snapshot.meta.index, "entries must follow the snapshot"
        snapshot_index = snapshot.meta.index if snapshot else self._snapshot_index
        with self._transaction() as db:
            if snapshot is not None:
                _write_snapshot(db, snapshot, self._snapshot_index)
            if entries:
                _write_entries(db, entries, snapshot_index)
            if hard_state is not None:
                _write_hard_state(db, hard_state, snapshot_index)
        self._snapshot_index = snapshot_index

    def compact(self, upto_index: int) -> None:
        """Drop stored entries through ``upto_index``, which the stored
        snapshot must cover (``persist`` already does this for the snapshot
        it writes; this is for entries kept past one)."""
        assert upto_index <= self._snapshot_index, "compact only what the stored snapshot covers"
        with self._transaction() as db:
            db.execute("DELETE FROM entries WHERE idx <= ?", (upto_index,))

    # -- internals ------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        assert self._db is not None, "storage is closed"
        return self._db

    def _transaction(self) -> _Transaction:
        return _Transaction(self.path, self._connection())


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""

    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self._path = path
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise _translate(self._path, exc) from exc
        return self._db

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is not None:
            self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.DatabaseError):
                raise _translate(self._path, exc) from exc
            return
        try:
            self._db.execute("COMMIT")  # synchronous=FULL: the WAL is fsync'd here
        except sqlite3.DatabaseError as commit_error:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise _translate(self._path, commit_error) from commit_error


# -- file setup (leaves) -------------------------------------------------------------


def _create(path: Path) -> None:
    """Make an empty storage file under a temporary name, then rename it into
    place and fsync the directory, so a file at ``path`` always has a schema."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".creating")
    for leftover in (temporary, Path(f"{temporary}-wal"), Path(f"{temporary}-shm")):
        leftover.unlink(missing_ok=True)
    db = sqlite3.connect(temporary, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA:
            db.execute(statement)
        db.execute("COMMIT")
    finally:
        db.close()  # the last close checkpoints the WAL into the main file
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _connect(path: Path) -> sqlite3.Connection:
    """Open, lock and check an existing storage file."""
    db = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        # Take the exclusive lock now, so a second opener fails at open.
        db.execute("BEGIN IMMEDIATE")
        db.execute("COMMIT")
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version != FORMAT_VERSION:
            reason = (
                f"format version {version}, expected {FORMAT_VERSION} (not a raft storage file?)"
            )
            raise StorageCorruptError(path, "in its header", reason)
        (check,) = db.execute("PRAGMA quick_check(1)").fetchone()
        if check != "ok":
            raise StorageCorruptError(path, "in its structure", f"SQLite quick_check: {check}")
    except sqlite3.DatabaseError as exc:
        db.close()
        raise _translate(path, exc) from exc
    except BaseException:
        db.close()
        raise
    return db


def _translate(path: Path, exc: sqlite3.DatabaseError) -> StorageError:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return StorageInUseError(f"raft log {path} is in use by another process: {exc}")
    if (
        isinstance(exc, sqlite3.OperationalError)
        and code is not None
        and code & 0xFF not in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    ):
        return StorageError(f"raft log {path}: {exc}")  # I/O error, disk full, ...
    return StorageCorruptError(path, "and unreadable", str(exc))


# -- reading (leaves) ----------------------------------------------------------------


def _read_record(
    db: sqlite3.Connection, path: Path, name: str, record_type: type[_Record]
) -> _Record | None:
    row = db.execute("SELECT body, crc FROM records WHERE name = ?", (name,)).fetchone()
    if row is None:
        return None
    body, crc = row
    where = f"in its {name.replace('_', ' ')}"
    if not isinstance(body, bytes) or record_crc(name, body) != crc:
        raise StorageCorruptError(path, where, "CRC mismatch")
    try:
        return msgspec.msgpack.decode(body, type=record_type)
    except msgspec.DecodeError as exc:
        raise StorageCorruptError(path, where, f"undecodable ({exc})") from exc


def _read_entries(db: sqlite3.Connection, path: Path, snapshot: Snapshot | None) -> list[Entry]:
    """All stored entries, each checked: CRC, no gap after the snapshot,
    terms never going backwards."""
    expected_index = snapshot.meta.index + 1 if snapshot else 1
    previous_term = snapshot.meta.term if snapshot else 0
    entries: list[Entry] = []
    rows = db.execute("SELECT idx, term, kind, data, crc FROM entries ORDER BY idx")
    for index, term, kind_code, data, crc in rows:
        if index != expected_index:
            reason = f"gap: expected index {expected_index}, found {index}"
            raise StorageCorruptError(path, f"at index {expected_index}", reason)
        if not isinstance(data, bytes) or entry_crc(index, term, kind_code, data) != crc:
            raise StorageCorruptError(path, f"at index {index}", "CRC mismatch")
        kind = KIND_BY_CODE.get(kind_code)
        if kind is None:
            raise StorageCorruptError(path, f"at index {index}", f"unknown entry kind {kind_code}")
        if term < previous_term:
            reason = f"term {term} is below the previous term {previous_term}"
            raise StorageCorruptError(path, f"at index {index}", reason)
        entries.append(Entry(term=term, index=index, kind=kind, data=data))
        expected_index += 1
        previous_term = term
    return entries


# -- writing (leaves) ----------------------------------------------------------------


def _assert_contiguous(entries: Sequence[Entry]) -> None:
    for previous, entry in itertools.pairwise(entries):
        assert entry.index == previous.index + 1, "entries to persist have a gap"
        assert entry.term >= previous.term, "entries to persist go back in term"


def _last_index(db: sqlite3.Connection, snapshot_index: int) -> int:
    (last,) = db.execute("SELECT MAX(idx) FROM entries").fetchone()
    return snapshot_index if last is None else int(last)


def _write_record(db: sqlite3.Connection, name: str, record: HardState | Snapshot) -> None:
    body = msgspec.msgpack.encode(record)
    db.execute(
        "INSERT OR REPLACE INTO records (name, body, crc) VALUES (?, ?, ?)",
        (name, body, record_crc(name, body)),
    )


def _write_snapshot(db: sqlite3.Connection, snapshot: Snapshot, stored_snapshot_index: int) -> None:
    meta = snapshot.meta
    assert meta.index > stored_snapshot_index, "a snapshot must move forward"
    row = db.execute("SELECT term FROM entries WHERE idx = ?", (meta.index,)).fetchone()
    if row is not None and row[0] == meta.term:
        db.execute("DELETE FROM entries WHERE idx <= ?", (meta.index,))
    else:
        db.execute("DELETE FROM entries")  # our log diverged from (or is behind) the snapshot
    _write_record(db, RECORD_SNAPSHOT, snapshot)


def _write_entries(db: sqlite3.Connection, entries: Sequence[Entry], snapshot_index: int) -> None:
    first = entries[0]
    assert first.index > snapshot_index, "entries at or below the snapshot"
    assert first.index <= _last_index(db, snapshot_index) + 1, "entries would leave a gap"
    row = db.execute("SELECT term FROM entries WHERE idx = ?", (first.index - 1,)).fetchone()
    if row is not None:
        assert first.term >= row[0], "entries go back in term"
    db.execute("DELETE FROM entries WHERE idx >= ?", (first.index,))
    db.executemany(
        "INSERT INTO entries (idx, term, kind, data, crc) VALUES (?, ?, ?, ?, ?)",
        [
            (
                entry.index,
                entry.term,
                KIND_CODES[entry.kind],
                entry.data,
                entry_crc(entry.index, entry.term, KIND_CODES[entry.kind], entry.data),
            )
            for entry in entries
        ],
    )


def _write_hard_state(db: sqlite3.Connection, hard_state: HardState, snapshot_index: int) -> None:
    assert hard_state.commit <= _last_index(db, snapshot_index), "commit beyond the stored log"
    _write_record(db, RECORD_HARD_STATE, hard_state)
