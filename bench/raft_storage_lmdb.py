"""An LMDB twin of ``storage.RaftStorage``, kept only to benchmark against it
(``bench/raft_storage.py``); moot uses the SQLite one (see
``docs/benchmarks.md``, "Raft storage", for why).

Same rules as ``storage.py`` (one write transaction per ``persist``, fsync'd
at commit; snapshot, entries, hard state; CRCs on every record), with
entries keyed by their 8-byte big-endian index, so keys sort by index.
It needs ``pip install lmdb``, which is not a dependency of moot.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import lmdb  # type: ignore[import-not-found,import-untyped,unused-ignore]
import msgspec

from moot.core.raft_messages import Entry, HardState, Snapshot
from moot.runtime.storage import (
    KIND_BY_CODE,
    KIND_CODES,
    RECORD_HARD_STATE,
    RECORD_SNAPSHOT,
    StorageCorruptError,
    entry_crc,
    record_crc,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

MAP_BYTES_MAX: Final = 64 * 1024**3  # address space only; the file grows as used
_KEY: Final = struct.Struct(">Q")
_VALUE_HEADER: Final = struct.Struct(">QBI")  # term, kind code, crc
_RECORD_HEADER: Final = struct.Struct(">I")  # crc


class LmdbRaftStorage:
    """One node's durable Raft state in one LMDB environment (a directory)."""

    def __init__(self, path: Path, environment: Any) -> None:
        """Use ``open``."""
        self.path = path
        self._env = environment
        self._entries = environment.open_db(b"entries")
        self._records = environment.open_db(b"records")

    @classmethod
    def open(cls, path: Path) -> LmdbRaftStorage:
        """Open (or create) the environment directory ``path``."""
        Path(path).mkdir(parents=True, exist_ok=True)
        environment = lmdb.open(
            str(path), map_size=MAP_BYTES_MAX, max_dbs=2, sync=True, metasync=True
        )
        return cls(Path(path), environment)

    def close(self) -> None:
        """Close the environment."""
        self._env.close()

    def load(self) -> tuple[HardState | None, Snapshot | None, list[Entry]]:
        """(hard state, snapshot, entries), verified like ``RaftStorage.load``."""
        with self._env.begin() as txn:
            hard_state = self._read_record(txn, RECORD_HARD_STATE, HardState)
            snapshot = self._read_record(txn, RECORD_SNAPSHOT, Snapshot)
            expected = snapshot.meta.index + 1 if snapshot else 1
            previous_term = snapshot.meta.term if snapshot else 0
            entries: list[Entry] = []
            for key, value in txn.cursor(db=self._entries):
                (index,) = _KEY.unpack(key)
                if index != expected:
                    raise StorageCorruptError(
                        self.path, f"at index {expected}", f"gap: found {index}"
                    )
                term, kind_code, crc = _VALUE_HEADER.unpack_from(value)
                data = bytes(value[_VALUE_HEADER.size :])
                if entry_crc(index, term, kind_code, data) != crc:
                    raise StorageCorruptError(self.path, f"at index {index}", "CRC mismatch")
                if term < previous_term or kind_code not in KIND_BY_CODE:
                    raise StorageCorruptError(self.path, f"at index {index}", "bad term or kind")
                entries.append(
                    Entry(term=term, index=index, kind=KIND_BY_CODE[kind_code], data=data)
                )
                expected, previous_term = expected + 1, term
        return hard_state, snapshot, entries

    def persist(
        self,
        *,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
    ) -> None:
        """As ``RaftStorage.persist``: one transaction, fsync'd at commit."""
        with self._env.begin(write=True) as txn:
            if snapshot is not None:
                self._write_snapshot(txn, snapshot)
            if entries:
                self._delete_from(txn, entries[0].index)
                cursor = txn.cursor(db=self._entries)
                items = [(_KEY.pack(entry.index), _encode_entry(entry)) for entry in entries]
                cursor.putmulti(items, append=True)
            if hard_state is not None:
                self._write_record(txn, RECORD_HARD_STATE, msgspec.msgpack.encode(hard_state))

    def _write_snapshot(self, txn: Any, snapshot: Snapshot) -> None:
        meta = snapshot.meta
        stored = txn.get(_KEY.pack(meta.index), db=self._entries)
        keep = stored is not None and _VALUE_HEADER.unpack_from(stored)[0] == meta.term
        cursor = txn.cursor(db=self._entries)
        if cursor.first():
            while cursor.key() and (not keep or _KEY.unpack(cursor.key())[0] <= meta.index):
                if not cursor.delete():
                    break
        self._write_record(txn, RECORD_SNAPSHOT, msgspec.msgpack.encode(snapshot))

    def _delete_from(self, txn: Any, first_index: int) -> None:
        cursor = txn.cursor(db=self._entries)
        if cursor.set_range(_KEY.pack(first_index)):
            while cursor.delete():
                pass

    def _write_record(self, txn: Any, name: str, body: bytes) -> None:
        txn.put(name.encode(), _RECORD_HEADER.pack(record_crc(name, body)) + body, db=self._records)

    def _read_record(self, txn: Any, name: str, record_type: type[Any]) -> Any:
        value = txn.get(name.encode(), db=self._records)
        if value is None:
            return None
        (crc,) = _RECORD_HEADER.unpack_from(value)
        body = bytes(value[_RECORD_HEADER.size :])
        if record_crc(name, body) != crc:
            raise StorageCorruptError(self.path, f"in its {name}", "CRC mismatch")
        return msgspec.msgpack.decode(body, type=record_type)


def _encode_entry(entry: Entry) -> bytes:
    code = KIND_CODES[entry.kind]
    header = _VALUE_HEADER.pack(
        entry.term, code, entry_crc(entry.index, entry.term, code, entry.data)
    )
    return header + entry.data
