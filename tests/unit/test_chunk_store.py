"""Chunk store (moot/runtime/chunk_store.py): content addressing, atomic and
durable puts, crash leftovers, quarantine of corrupt chunks, disk-full and
capacity errors, id validation, and the rate-bounded scrubber."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from moot.runtime.chunk_store import (
    QUARANTINE_DIRECTORY,
    TEMP_PREFIX,
    ChunkMismatchError,
    ChunkStore,
    ChunkStoreFullError,
    ChunkStoreInUseError,
    Scrubber,
    check_chunk_id,
)


def chunk(tag: int, size_bytes: int = 100) -> tuple[str, bytes]:
    """A distinct chunk of exactly ``size_bytes`` bytes, and its id."""
    data = (f"chunk-{tag:06d}-".encode() * size_bytes)[:size_bytes]
    return hashlib.sha256(data).hexdigest(), data


def chunk_sharing_fan_out(chunk_id: str) -> tuple[str, bytes]:
    """Another chunk that lands in the same fan-out directory as ``chunk_id``."""
    return next(chunk(tag) for tag in range(1000, 10**6) if chunk(tag)[0][:2] == chunk_id[:2])


def files_under(root: Path) -> list[str]:
    """Every file below ``root``, relative, sorted (the LOCK file excluded)."""
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and path.name != "LOCK"
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Where the store lives (not created yet)."""
    return tmp_path / "node" / "chunks"


@pytest.fixture
def store(root: Path) -> Iterator[ChunkStore]:
    """An open, empty store."""
    with ChunkStore.open(root) as opened:
        yield opened


# -- contract ------------------------------------------------------------------------


def test_put_get_has_size_delete_roundtrip(store: ChunkStore, root: Path) -> None:
    chunk_id, data = chunk(1)
    assert not store.has(chunk_id)
    assert store.get(chunk_id) is None
    assert store.size(chunk_id) is None
    assert store.mtime_ms(chunk_id) is None

    assert store.put(chunk_id, data) is True
    assert store.has(chunk_id)
    assert store.get(chunk_id) == data
    assert store.get(chunk_id, verify=True) == data
    assert store.verify(chunk_id) is True
    assert store.size(chunk_id) == len(data)
    assert store.count == 1
    assert store.used_bytes == len(data)
    assert files_under(root) == [f"{chunk_id[:2]}/{chunk_id}"]
    reader = store.open_reader(chunk_id)
    assert reader is not None
    with reader:
        assert reader.read() == data

    assert store.delete(chunk_id) is True
    assert store.delete(chunk_id) is False
    assert not store.has(chunk_id)
    assert store.get(chunk_id) is None
    assert store.open_reader(chunk_id) is None
    assert store.verify(chunk_id) is None
    assert store.count == 0
    assert store.used_bytes == 0
    assert files_under(root) == []


def test_empty_chunk_is_a_chunk(store: ChunkStore) -> None:
    chunk_id = hashlib.sha256(b"").hexdigest()
    assert store.put(chunk_id, b"")
    assert store.get(chunk_id, verify=True) == b""
    assert store.size(chunk_id) == 0


def test_ids_are_sorted_and_counted(store: ChunkStore) -> None:
    stored = dict(chunk(tag) for tag in range(20))
    for chunk_id, data in stored.items():
        store.put(chunk_id, data)
    assert store.ids() == sorted(stored)
    assert store.count == 20
    assert store.used_bytes == 20 * 100


def test_put_again_returns_false_and_refreshes_mtime(store: ChunkStore, root: Path) -> None:
    chunk_id, data = chunk(1)
    assert store.put(chunk_id, data)
    path = root / chunk_id[:2] / chunk_id
    os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))  # 2001
    store.close()
    with ChunkStore.open(root) as reopened:
        assert reopened.mtime_ms(chunk_id) == 1_000_000_000_000
        assert reopened.put(chunk_id, data) is False
        mtime_ms = reopened.mtime_ms(chunk_id)
        assert mtime_ms is not None
        assert mtime_ms > 1_000_000_000_000  # re-referenced: survives the GC grace again
        assert reopened.count == 1
        assert reopened.used_bytes == len(data)


def test_put_orders_fsync_file_then_rename_then_fsync_directory(
    store: ChunkStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor: int) -> None:
        calls.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{descriptor}") else "fsync-file")
        real_fsync(descriptor)

    def replace(source: str | Path, target: str | Path) -> None:
        calls.append("replace")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    chunk_id, data = chunk(1)
    store.put(chunk_id, data)
    # The first put into a fan-out directory also makes that directory durable.
    assert calls == ["fsync-dir", "fsync-file", "replace", "fsync-dir"]
    calls.clear()
    store.put(*chunk_sharing_fan_out(chunk_id))
    assert calls == ["fsync-file", "replace", "fsync-dir"]


# -- refusals ------------------------------------------------------------------------


def test_mismatched_bytes_are_refused_and_nothing_written(store: ChunkStore, root: Path) -> None:
    chunk_id, data = chunk(1)
    with pytest.raises(ChunkMismatchError, match="fetch the chunk again") as raised:
        store.put(chunk_id, data + b"!")
    assert raised.value.actual_id == hashlib.sha256(data + b"!").hexdigest()
    assert not store.has(chunk_id)
    assert files_under(root) == []
    assert not (root / chunk_id[:2]).exists()


@pytest.mark.parametrize(
    "bad_id",
    [
        "",
        "../" + "a" * 61,
        "../../etc/passwd",
        "a" * 63,
        "a" * 65,
        "A" * 64,
        "g" * 64,
        "a" * 64 + "\n",
        "/" + "a" * 63,
        "aa/" + "a" * 61,
        " " + "a" * 63,
    ],
)
def test_bad_ids_are_rejected_before_touching_paths(
    store: ChunkStore, root: Path, bad_id: str
) -> None:
    before = sorted(p.name for p in root.parent.rglob("*"))
    for call in (
        lambda: store.put(bad_id, b"x"),
        lambda: store.get(bad_id),
        lambda: store.get(bad_id, verify=True),
        lambda: store.has(bad_id),
        lambda: store.size(bad_id),
        lambda: store.delete(bad_id),
        lambda: store.mtime_ms(bad_id),
        lambda: store.open_reader(bad_id),
        lambda: store.verify(bad_id),
        lambda: store.quarantine(bad_id),
    ):
        with pytest.raises(ValueError, match="64 lowercase hex digits"):
            call()
    assert sorted(p.name for p in root.parent.rglob("*")) == before


def test_non_string_id_is_rejected() -> None:
    with pytest.raises(ValueError, match="invalid chunk id"):
        check_chunk_id(b"a" * 64)  # type: ignore[arg-type]


def test_capacity_is_enforced_and_nothing_left(root: Path) -> None:
    with ChunkStore.open(root, capacity_bytes=250) as store:
        (first_id, first), (second_id, second), (third_id, third) = (chunk(t) for t in (1, 2, 3))
        assert store.put(first_id, first)
        assert store.put(second_id, second)
        with pytest.raises(ChunkStoreFullError) as raised:
            store.put(third_id, third)
        message = str(raised.value)
        assert "200 of its capacity of 250 bytes" in message
        assert "needs 100 more" in message
        assert "garbage collection" in message
        assert raised.value.used_bytes == 200
        assert raised.value.needed_bytes == 100
        assert raised.value.capacity_bytes == 250
        assert not store.has(third_id)
        assert store.used_bytes == 200
        assert not any(name.endswith(third_id) for name in files_under(root))
        assert store.put(first_id, first) is False  # already stored: no new space needed
        store.delete(first_id)
        assert store.put(third_id, third)
        assert store.used_bytes == 200


def test_capacity_is_checked_against_chunks_found_at_open(root: Path) -> None:
    with ChunkStore.open(root) as store:
        for tag in range(3):
            store.put(*chunk(tag))
    with ChunkStore.open(root, capacity_bytes=250) as store:
        assert store.used_bytes == 300  # over capacity: reads work, puts do not
        with pytest.raises(ChunkStoreFullError):
            store.put(*chunk(9))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_during_write_raises_and_leaves_nothing(
    store: ChunkStore, root: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    real_write = os.write

    def half_then_full(descriptor: int, data: bytes | memoryview) -> int:
        if len(data) > 10:
            return real_write(descriptor, data[: len(data) // 2])  # a partial write...
        raise OSError(code, os.strerror(code))  # ...then the disk is full

    monkeypatch.setattr(os, "write", half_then_full)
    chunk_id, data = chunk(1)
    with pytest.raises(ChunkStoreFullError, match="free space on that disk") as raised:
        store.put(chunk_id, data)
    assert isinstance(raised.value.__cause__, OSError)
    assert raised.value.__cause__.errno == code
    assert errno.errorcode[code] in str(raised.value)
    assert files_under(root) == []
    assert not store.has(chunk_id)
    assert store.used_bytes == 0
    monkeypatch.undo()
    assert store.put(chunk_id, data)  # space freed: the same put now works
    assert store.get(chunk_id, verify=True) == data


@pytest.mark.parametrize("failing_fsync", ["file", "directory"])
def test_disk_full_at_fsync_leaves_nothing(
    store: ChunkStore, root: Path, monkeypatch: pytest.MonkeyPatch, failing_fsync: str
) -> None:
    chunk_id, data = chunk(1)
    # Its fan-out directory exists already, so the only fsyncs are the put's own.
    store.put(*chunk_sharing_fan_out(chunk_id))
    real_fsync = os.fsync

    def fsync(descriptor: int) -> None:
        is_directory = os.path.isdir(f"/proc/self/fd/{descriptor}")
        if is_directory == (failing_fsync == "directory"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(ChunkStoreFullError):
        store.put(chunk_id, data)
    assert not any(chunk_id in name for name in files_under(root))
    assert not store.has(chunk_id)
    assert store.count == 1


def test_other_os_errors_propagate_and_leave_nothing(
    store: ChunkStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(descriptor: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    chunk_id, data = chunk(1)
    with pytest.raises(OSError, match="Input/output error"):
        store.put(chunk_id, data)
    assert files_under(root) == []
    assert store.count == 0


def test_second_open_of_the_same_directory_is_refused(root: Path) -> None:
    with ChunkStore.open(root), pytest.raises(ChunkStoreInUseError, match="its own data dir"):
        ChunkStore.open(root)
    with ChunkStore.open(root) as again:
        assert again.count == 0


def test_negative_capacity_is_refused(root: Path) -> None:
    with pytest.raises(ValueError, match="capacity_bytes"):
        ChunkStore.open(root, capacity_bytes=-1)


# -- restart and crash ---------------------------------------------------------------


def test_reopen_keeps_chunks_and_removes_temp_leftovers(root: Path) -> None:
    stored = dict(chunk(tag) for tag in range(5))
    with ChunkStore.open(root) as store:
        for chunk_id, data in stored.items():
            store.put(chunk_id, data)
        mtimes = {chunk_id: store.mtime_ms(chunk_id) for chunk_id in stored}
    # What a crash mid-put leaves: a half-written temporary file.
    lost_id, lost = chunk(99)
    (root / lost_id[:2]).mkdir(exist_ok=True)
    leftover = root / lost_id[:2] / f"{TEMP_PREFIX}{lost_id}.4242.0"
    leftover.write_bytes(lost[:37])
    foreign = root / "README"
    foreign.write_text("not a chunk")

    with ChunkStore.open(root) as store:
        assert store.temp_files_removed == 1
        assert not leftover.exists()
        assert foreign.exists()  # not ours to remove
        assert store.ids() == sorted(stored)
        assert not store.has(lost_id)
        assert store.used_bytes == 500
        for chunk_id, data in stored.items():
            assert store.get(chunk_id, verify=True) == data
            assert store.mtime_ms(chunk_id) == mtimes[chunk_id]


def test_crash_between_write_and_rename_leaves_the_chunk_absent(root: Path) -> None:
    chunk_id, data = chunk(1)
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from moot.runtime.chunk_store import ChunkStore
        store = ChunkStore.open(Path({str(root)!r}))
        store.put({chunk(2)[0]!r}, {chunk(2)[1]!r})
        os.replace = lambda source, target: os._exit(9)  # power cut before the rename
        store.put({chunk_id!r}, {data!r})
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert result.returncode == 9, result.stderr.decode()
    assert any(TEMP_PREFIX in name for name in files_under(root))
    with ChunkStore.open(root) as store:
        assert store.temp_files_removed == 1
        assert store.ids() == [chunk(2)[0]]
        assert not store.has(chunk_id)
        assert store.put(chunk_id, data)
    assert not any(TEMP_PREFIX in name for name in files_under(root))


# -- corruption ----------------------------------------------------------------------


def flip_a_byte(root: Path, chunk_id: str, offset: int = 10) -> None:
    """Corrupt the stored file of ``chunk_id`` in place (same size)."""
    path = root / chunk_id[:2] / chunk_id
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_chunk_is_never_returned_with_verify_and_is_quarantined(
    store: ChunkStore, root: Path
) -> None:
    chunk_id, data = chunk(1)
    store.put(chunk_id, data)
    flip_a_byte(root, chunk_id)
    assert store.get(chunk_id) != data  # without verify only the size is checked
    assert store.get(chunk_id, verify=True) is None
    assert not store.has(chunk_id)
    assert store.used_bytes == 0
    assert store.corrupt_count == 1
    assert store.take_corrupt() == [chunk_id]
    assert store.take_corrupt() == []
    assert files_under(root) == [f"{QUARANTINE_DIRECTORY}/{chunk_id}"]
    assert store.get(chunk_id, verify=True) is None
    assert store.put(chunk_id, data)  # repaired from a peer
    assert store.get(chunk_id, verify=True) == data
    store.close()
    with ChunkStore.open(root) as reopened:  # the quarantine is not indexed
        assert reopened.ids() == [chunk_id]


def test_truncated_chunk_is_caught_even_without_verify(store: ChunkStore, root: Path) -> None:
    chunk_id, data = chunk(1)
    store.put(chunk_id, data)
    (root / chunk_id[:2] / chunk_id).write_bytes(data[:50])
    assert store.get(chunk_id) is None
    assert store.take_corrupt() == [chunk_id]
    assert (root / QUARANTINE_DIRECTORY / chunk_id).exists()


def test_verify_streams_and_quarantines(store: ChunkStore, root: Path) -> None:
    chunk_id, data = chunk(1)
    store.put(chunk_id, data)
    flip_a_byte(root, chunk_id, offset=99)
    assert store.verify(chunk_id) is False
    assert store.verify(chunk_id) is None
    assert store.take_corrupt() == [chunk_id]


def test_chunk_removed_behind_our_back_reads_as_absent(store: ChunkStore, root: Path) -> None:
    chunk_id, data = chunk(1)
    store.put(chunk_id, data)
    (root / chunk_id[:2] / chunk_id).unlink()
    assert store.get(chunk_id) is None
    assert not store.has(chunk_id)
    assert store.used_bytes == 0
    assert store.take_corrupt() == []
    assert store.put(chunk_id, data)
    (root / chunk_id[:2] / chunk_id).unlink()
    assert store.put(chunk_id, data) is True  # re-put of a vanished file writes it again
    assert store.get(chunk_id, verify=True) == data


# -- scrubber ------------------------------------------------------------------------


def scrubbed_store(store: ChunkStore, count: int) -> list[str]:
    """Fill ``store`` with ``count`` chunks of 100 bytes; their ids, sorted."""
    for tag in range(count):
        store.put(*chunk(tag))
    return store.ids()


def test_scrubber_hashes_at_the_configured_rate(store: ChunkStore, root: Path) -> None:
    ids = scrubbed_store(store, 4)
    flip_a_byte(root, ids[2])
    scrubber = Scrubber(store, bytes_per_second=100)

    first = scrubber.step(now_s=10.0)  # starts the clock: no time has passed
    assert (first.checked, first.corrupt, first.cycle_completed) == ([], [], False)

    assert scrubber.step(now_s=11.0).checked == [ids[0]]  # 100 bytes earned, 100 spent
    assert scrubber.allowance_bytes == 0
    assert scrubber.step(now_s=11.5).checked == [ids[1]]  # 50 earned: a whole chunk, in debt
    assert scrubber.allowance_bytes == -50
    assert scrubber.step(now_s=12.0).checked == []  # the debt is paid first
    assert scrubber.allowance_bytes == 0

    found = scrubber.step(now_s=13.0)
    assert found.checked == [ids[2]]
    assert found.corrupt == [ids[2]]
    assert not found.cycle_completed
    assert not store.has(ids[2])
    assert (root / QUARANTINE_DIRECTORY / ids[2]).exists()
    assert store.take_corrupt() == [ids[2]]

    last = scrubber.step(now_s=14.0)
    assert last.checked == [ids[3]]
    assert last.cycle_completed
    assert scrubber.cycles_completed == 1
    assert scrubber.chunks_checked == 4
    assert scrubber.bytes_scrubbed == 400
    assert scrubber.corrupt_found == 1

    # The next pass sees the store as it is now (the quarantined chunk is gone).
    assert scrubber.step(now_s=15.0).checked == [ids[0]]
    # Over 4 pass-steps the long-run rate held: 500 bytes hashed in 5 s.
    assert scrubber.bytes_scrubbed == 500


def test_scrubber_allowance_is_capped_after_a_stall(store: ChunkStore) -> None:
    ids = scrubbed_store(store, 10)
    scrubber = Scrubber(store, bytes_per_second=100, allowance_bytes_max=300)
    scrubber.step(now_s=0.0)
    stalled = scrubber.step(now_s=1_000.0)  # the timer stalled for 1000 s: no 100 kB burst
    assert stalled.checked == ids[:3]
    assert scrubber.allowance_bytes == 0


def test_scrubber_respects_a_per_step_budget_and_chunk_count(store: ChunkStore) -> None:
    ids = scrubbed_store(store, 10)
    scrubber = Scrubber(store, bytes_per_second=10_000, chunks_per_step_max=3)
    scrubber.step(now_s=0.0)
    assert scrubber.step(now_s=1.0, budget_bytes=150).checked == ids[0:2]  # 100 < 150: one more
    assert scrubber.step(now_s=1.0, budget_bytes=0).checked == []
    assert scrubber.step(now_s=1.0).checked == ids[2:5]  # chunks_per_step_max
    assert scrubber.allowance_bytes == 10_000 - 500


def test_scrubber_skips_chunks_deleted_during_a_pass(store: ChunkStore) -> None:
    ids = scrubbed_store(store, 3)
    scrubber = Scrubber(store, bytes_per_second=100)
    scrubber.step(now_s=0.0)
    assert scrubber.step(now_s=1.0).checked == [ids[0]]
    store.delete(ids[1])
    store.put(*chunk(50))  # added mid-pass: waits for the next pass
    step = scrubber.step(now_s=2.0)
    assert step.checked == [ids[2]]  # the deleted one cost nothing
    assert step.cycle_completed
    assert scrubber.step(now_s=3.0).checked == [store.ids()[0]]


def test_scrubber_on_an_empty_store_completes_no_cycles(store: ChunkStore) -> None:
    scrubber = Scrubber(store, bytes_per_second=100)
    for now_s in range(5):
        step = scrubber.step(now_s=float(now_s))
        assert (step.checked, step.cycle_completed) == ([], False)
    assert scrubber.cycles_completed == 0


def test_scrubber_refuses_bad_configuration(store: ChunkStore) -> None:
    with pytest.raises(ValueError, match="bytes_per_second"):
        Scrubber(store, bytes_per_second=0)
    with pytest.raises(ValueError, match="allowance_bytes_max"):
        Scrubber(store, bytes_per_second=1, allowance_bytes_max=0)
    with pytest.raises(ValueError, match="chunks_per_step_max"):
        Scrubber(store, bytes_per_second=1, chunks_per_step_max=0)
