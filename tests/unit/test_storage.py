"""Durable Raft storage (moot/runtime/storage.py): the Output persist
contract, CRC/gap detection, crash atomicity, and a model-based property."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moot.core.raft_messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from moot.runtime.storage import (
    RaftStorage,
    StorageCorruptError,
    StorageInUseError,
)

CONF = ConfState(voters=("a", "b", "c"))


def entries(first: int, last: int, term: int, tag: str = "") -> list[Entry]:
    """Entries first..last (inclusive) of ``term``, each with distinct data."""
    return [
        Entry(term=term, index=index, data=f"entry-{tag}{index:06d}-".encode() * 8)
        for index in range(first, last + 1)
    ]


def snapshot(index: int, term: int, data: bytes = b"image") -> Snapshot:
    """A snapshot through ``index`` of ``term``."""
    return Snapshot(meta=SnapshotMeta(index=index, term=term, conf=CONF), data=data)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Where the storage file lives (not created yet)."""
    return tmp_path / "node" / "raft.db"


def reopened(path: Path) -> tuple[HardState | None, Snapshot | None, list[Entry]]:
    """Load from a fresh open, as a restarting node does."""
    with RaftStorage.open(path) as storage:
        return storage.load()


# -- contract ------------------------------------------------------------------------


def test_empty_storage_loads_nothing(path: Path) -> None:
    with RaftStorage.open(path) as storage:
        assert storage.load() == (None, None, [])
    assert reopened(path) == (None, None, [])


def test_round_trip_and_restart(path: Path) -> None:
    hard = HardState(term=3, vote="b", commit=4)
    log = [*entries(1, 3, 1), Entry(term=3, index=4, kind="conf_change", data=b"\x00\xff")]
    with RaftStorage.open(path) as storage:
        storage.persist(hard_state=hard, entries=log, snapshot=None)
        assert storage.load() == (hard, None, log)
    assert reopened(path) == (hard, None, log)


def test_entries_replace_the_stored_suffix(path: Path) -> None:
    with RaftStorage.open(path) as storage:
        storage.persist(hard_state=None, entries=entries(1, 10, 1), snapshot=None)
        storage.persist(hard_state=None, entries=entries(6, 7, 2, "new"), snapshot=None)
        _, _, log = storage.load()
    assert log == entries(1, 5, 1) + entries(6, 7, 2, "new")
    assert reopened(path)[2] == log


def test_entries_may_append_at_the_end(path: Path) -> None:
    with RaftStorage.open(path) as storage:
        storage.persist(hard_state=None, entries=entries(1, 3, 1), snapshot=None)
        storage.persist(hard_state=None, entries=entries(4, 5, 1), snapshot=None)
        assert storage.load()[2] == entries(1, 5, 1)


def test_one_call_applies_snapshot_then_entries_then_hard_state(path: Path) -> None:
    with RaftStorage.open(path) as storage:
        storage.persist(
            hard_state=HardState(term=1, commit=5), entries=entries(1, 8, 1), snapshot=None
        )
        # Entries start right after the new snapshot, and the hard state's
        # commit (9) is valid only once the entries are in: order matters.
        storage.persist(
            hard_state=HardState(term=2, vote="c", commit=9),
            entries=entries(7, 9, 2, "x"),
            snapshot=snapshot(6, 1),
        )
        expected = (HardState(term=2, vote="c", commit=9), snapshot(6, 1), entries(7, 9, 2, "x"))
        assert storage.load() == expected
    assert reopened(path) == expected


def test_snapshot_keeps_a_matching_suffix(path: Path) -> None:
    with RaftStorage.open(path) as storage:
        storage.persist(hard_state=None, entries=entries(1, 10, 1), snapshot=None)
        storage.persist(hard_state=HardState(term=1, commit=6), entries=[], snapshot=snapshot(6, 1))
        assert storage.load() == (HardState(term=1, commit=6), snapshot(6, 1), entries(7, 10, 1))


def test_snapshot_drops_a_diverged_suffix(path: Path) -> None:
    # Mirrors RaftLog.restore: our entry at the snapshot index has another
    # term, so what follows it is from a dead history.
    with RaftStorage.open(path) as storage:
        storage.persist(hard_state=None, entries=entries(1, 10, 1), snapshot=None)
        storage.persist(hard_state=HardState(term=4, commit=6), entries=[], snapshot=snapshot(6, 4))
        assert storage.load() == (HardState(term=4, commit=6), snapshot(6, 4), [])


def test_snapshot_beyond_the_log_drops_everything(path: Path) -> None:
    with RaftStorage.open(path) as storage:
        storage.persist(hard_state=None, entries=entries(1, 3, 1), snapshot=None)
        storage.persist(
            hard_state=HardState(term=2, commit=50), entries=[], snapshot=snapshot(50, 2)
        )
        storage.persist(hard_state=None, entries=entries(51, 52, 2), snapshot=None)
    assert reopened(path) == (HardState(term=2, commit=50), snapshot(50, 2), entries(51, 52, 2))


def test_compact_is_bounded_by_the_snapshot(path: Path) -> None:
    with RaftStorage.open(path) as storage:
        storage.persist(hard_state=None, entries=entries(1, 5, 1), snapshot=None)
        storage.persist(hard_state=None, entries=[], snapshot=snapshot(3, 1))
        storage.compact(3)  # already dropped by persist: a no-op
        assert storage.load() == (None, snapshot(3, 1), entries(4, 5, 1))
        with pytest.raises(AssertionError, match="snapshot covers"):
            storage.compact(4)
        assert storage.load()[2] == entries(4, 5, 1)


def test_a_failed_persist_changes_nothing(path: Path) -> None:
    with RaftStorage.open(path) as storage:
        storage.persist(
            hard_state=HardState(term=1, commit=2), entries=entries(1, 3, 1), snapshot=None
        )
        with pytest.raises(AssertionError, match="commit beyond"):
            storage.persist(
                hard_state=HardState(term=2, commit=9), entries=entries(3, 4, 2), snapshot=None
            )
        with pytest.raises(AssertionError, match="gap"):
            storage.persist(hard_state=None, entries=entries(6, 7, 2), snapshot=None)
        assert storage.load() == (HardState(term=1, commit=2), None, entries(1, 3, 1))


def test_second_opener_is_refused(path: Path) -> None:
    with RaftStorage.open(path), pytest.raises(StorageInUseError, match="in use"):
        RaftStorage.open(path)


# -- corruption ----------------------------------------------------------------------


def write_sample(path: Path) -> None:
    with RaftStorage.open(path) as storage:
        storage.persist(hard_state=None, entries=entries(1, 5, 1), snapshot=None)
        storage.persist(
            hard_state=HardState(term=2, vote="a", commit=20),
            entries=entries(6, 20, 2),
            snapshot=snapshot(3, 1),
        )


def tamper(path: Path, statement: str, parameters: tuple[object, ...] = ()) -> None:
    with sqlite3.connect(path) as db:
        db.execute(statement, parameters)
    db.close()


def test_flipped_byte_in_the_file_names_the_index(path: Path) -> None:
    write_sample(path)
    raw = bytearray(path.read_bytes())
    at = raw.find(b"entry-000012-")
    assert at >= 0
    raw[at + 3] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(StorageCorruptError, match=r"raft\.db is corrupt at index 12: CRC mismatch"):
        reopened(path)


def test_changed_entry_data_is_detected(path: Path) -> None:
    write_sample(path)
    tamper(path, "UPDATE entries SET data = ? WHERE idx = 9", (b"other",))
    with pytest.raises(StorageCorruptError, match="at index 9: CRC mismatch") as caught:
        reopened(path)
    assert str(path) in str(caught.value)
    assert "will not start" in str(caught.value)


def test_changed_term_is_detected(path: Path) -> None:
    write_sample(path)
    tamper(path, "UPDATE entries SET term = 7 WHERE idx = 20")
    with pytest.raises(StorageCorruptError, match="at index 20: CRC mismatch"):
        reopened(path)


def test_gap_is_detected(path: Path) -> None:
    write_sample(path)
    tamper(path, "DELETE FROM entries WHERE idx = 10")
    with pytest.raises(StorageCorruptError, match="at index 10: gap"):
        reopened(path)


def test_missing_first_entry_after_snapshot_is_a_gap(path: Path) -> None:
    write_sample(path)
    tamper(path, "DELETE FROM entries WHERE idx = 4")
    with pytest.raises(StorageCorruptError, match="at index 4: gap"):
        reopened(path)


def test_lost_tail_is_caught_by_the_commit_index(path: Path) -> None:
    write_sample(path)
    tamper(path, "DELETE FROM entries WHERE idx > 15")
    with pytest.raises(StorageCorruptError, match="hard state: commit index 20 is beyond"):
        reopened(path)


@pytest.mark.parametrize("name", ["hard_state", "snapshot"])
def test_records_are_checked(path: Path, name: str) -> None:
    write_sample(path)
    tamper(path, "UPDATE records SET crc = crc + 1 WHERE name = ?", (name,))
    with pytest.raises(StorageCorruptError, match=f"in its {name.replace('_', ' ')}: CRC mismatch"):
        reopened(path)


@pytest.mark.parametrize("content", [b"", b"not a database" * 100], ids=["empty", "garbage"])
def test_unreadable_file(path: Path, content: bytes) -> None:
    write_sample(path)
    path.write_bytes(content)
    with pytest.raises(StorageCorruptError, match=r"raft\.db is corrupt"):
        reopened(path)


def test_truncated_file(path: Path) -> None:
    with RaftStorage.open(path) as storage:
        storage.persist(hard_state=None, entries=entries(1, 400, 1), snapshot=None)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(StorageCorruptError, match=r"raft\.db is corrupt"):
        reopened(path)


# -- crash atomicity -----------------------------------------------------------------

BATCH = 64
OVERWRITE_MAX = 3


def torn_call(call: int, last: int) -> tuple[int, list[Entry], HardState]:
    """The ``call``-th persist of the crash test: overwrite a short suffix and
    append a batch, all of term call + 1; commit everything."""
    first = max(1, last + 1 - call % (OVERWRITE_MAX + 1))
    batch = [
        Entry(term=call + 1, index=i, data=bytes([call % 251]) * 1024)
        for i in range(first, first + BATCH)
    ]
    return first, batch, HardState(term=call + 1, vote="a", commit=batch[-1].index)


CHILD = textwrap.dedent(
    """
    import os, random, sys, threading, time
    from pathlib import Path
    from moot.runtime.storage import RaftStorage
    from tests.unit.test_storage import torn_call

    path, seed = Path(sys.argv[1]), int(sys.argv[2])
    storage = RaftStorage.open(path)
    hard, _, log = storage.load()
    last, call = (log[-1].index if log else 0), (hard.term if hard else 0)
    delay_s = random.Random(seed).uniform(0.02, 0.25)
    threading.Timer(delay_s, lambda: os._exit(0)).start()
    while True:
        first, batch, hard = torn_call(call, last)
        storage.persist(hard_state=hard, entries=batch, snapshot=None)
        print(call, flush=True)  # acknowledged: must survive
        call, last = call + 1, batch[-1].index
    """
)


def model_states(calls: int) -> list[tuple[HardState | None, list[Entry]]]:
    """State after 0, 1, ..., ``calls`` persist calls of the crash test."""
    states: list[tuple[HardState | None, list[Entry]]] = [(None, [])]
    log: list[Entry] = []
    for call in range(calls):
        first, batch, hard = torn_call(call, len(log))
        log = log[: first - 1] + batch
        states.append((hard, log))
    return states


def test_a_crash_mid_persist_leaves_all_or_nothing_of_a_call(path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    acknowledged = 0
    for seed in range(6):
        run = subprocess.run(
            [sys.executable, "-c", CHILD, str(path), str(seed)],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        lines = run.stdout.split()
        acknowledged = int(lines[-1]) + 1 if lines else acknowledged
        hard, snap, log = reopened(path)
        assert snap is None
        calls = hard.term if hard else 0
        # Every acknowledged call survived; at most the one in flight more.
        assert calls in (acknowledged, acknowledged + 1), (seed, calls, acknowledged)
        assert (hard, log) == model_states(calls)[calls], f"seed {seed}: state is not a whole call"
        acknowledged = calls


# -- model-based property ------------------------------------------------------------


@dataclass
class Model:
    """The reference: the Output contract on plain lists."""

    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    log: list[Entry] = field(default_factory=list)

    @property
    def snapshot_index(self) -> int:
        return self.snapshot.meta.index if self.snapshot else 0

    def term_at(self, index: int) -> int | None:
        if index == self.snapshot_index:
            return self.snapshot.meta.term if self.snapshot else 0
        offset = index - self.snapshot_index - 1
        return self.log[offset].term if 0 <= offset < len(self.log) else None

    def last_index(self) -> int:
        return self.snapshot_index + len(self.log)

    def commit_index(self) -> int:
        return self.hard_state.commit if self.hard_state else 0

    def persist(
        self, hard_state: HardState | None, new: list[Entry], snap: Snapshot | None
    ) -> None:
        if snap is not None:
            keep = self.term_at(snap.meta.index) == snap.meta.term
            self.log = [e for e in self.log if e.index > snap.meta.index] if keep else []
            self.snapshot = snap
        if new:
            self.log = [e for e in self.log if e.index < new[0].index] + new
        if hard_state is not None:
            self.hard_state = hard_state


@settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_random_persists_match_the_model(tmp_path: Path, data: st.DataObject, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / f"model-{seed}.db"
    path.unlink(missing_ok=True)
    model = Model()
    storage = RaftStorage.open(path)
    term_max = 1
    try:
        for _ in range(data.draw(st.integers(1, 25), label="calls")):
            action = data.draw(
                st.sampled_from(["entries", "entries", "snapshot", "hard", "reopen"])
            )
            new: list[Entry] = []
            snap: Snapshot | None = None
            if action == "reopen":
                storage.close()
                storage = RaftStorage.open(path)
                assert storage.load() == (model.hard_state, model.snapshot, model.log)
                continue
            if action == "snapshot":
                index = data.draw(st.integers(model.snapshot_index + 1, model.last_index() + 3))
                stored_term = model.term_at(index)
                # Raft never drops a committed entry: a snapshot at or below
                # the commit index is a compaction, so it matches our log.
                if stored_term is not None and (
                    index <= model.commit_index() or data.draw(st.booleans(), label="matching")
                ):
                    term = stored_term
                else:
                    term = term_max = term_max + data.draw(st.integers(0, 1))
                snap = snapshot(index, term, data=rng.randbytes(rng.randrange(8)))
            last_after_snapshot = snap.meta.index if snap else model.last_index()
            if action == "entries":
                # Entries replace only uncommitted ones (Raft 5.3).
                first_min = max(model.snapshot_index, model.commit_index()) + 1
                first = data.draw(st.integers(first_min, last_after_snapshot + 1))
                previous_term = model.term_at(first - 1) or 0
                term = max(previous_term, term_max) + data.draw(st.integers(0, 1))
                term_max = max(term_max, term)
                count = data.draw(st.integers(1, 5))
                new = [
                    Entry(
                        term=term,
                        index=i,
                        kind=rng.choice(["normal", "conf_change"]),
                        data=rng.randbytes(rng.randrange(20)),
                    )
                    for i in range(first, first + count)
                ]
            last_after = new[-1].index if new else last_after_snapshot
            hard: HardState | None = None
            if action == "hard" or data.draw(st.booleans(), label="with hard state"):
                snapshot_floor = snap.meta.index if snap else model.snapshot_index
                commit = data.draw(st.integers(snapshot_floor, last_after))
                hard = HardState(term=term_max, vote=rng.choice(["", "a", "b"]), commit=commit)
            storage.persist(hard_state=hard, entries=new, snapshot=snap)
            model.persist(hard, new, snap)
            assert storage.load() == (model.hard_state, model.snapshot, model.log)
    finally:
        storage.close()
    assert reopened(path) == (model.hard_state, model.snapshot, model.log)
