"""Durable Raft storage: SQLite (moot/runtime/storage.py) against LMDB
(bench/raft_storage_lmdb.py, needs ``pip install lmdb``).

    .venv/bin/python bench/raft_storage.py [--dir DIR] [--single 2000] [--batches 200]
                                           [--load-entries 100000]

Every persist is one transaction made durable (fsync) before it returns, as
the Raft ``Output`` contract needs. Three workloads, each on a fresh store, the backends interleaved for
``--rounds`` rounds (the disk of a shared VM is noisy); the table shows
medians over rounds, and the range of the batched rate:

- single: ``--single`` sequential persist calls of one 256-byte entry plus
  a hard state (a leader under light load); latency p50/p99 per call.
- batched: ``--batches`` calls of 64 entries x 1 KiB plus a hard state (a
  busy leader or catching-up follower); entries/s and MiB/s.
- load: write ``--load-entries`` entries of 1 KiB in 64-entry batches,
  close, then time open + ``load()`` (all CRCs verified; SQLite also runs
  ``PRAGMA quick_check``), as a restarting node does.

Put ``--dir`` on the disk the data dir will use: fsync cost is the disk's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Protocol

from moot.core.raft_messages import Entry, HardState, Snapshot
from moot.runtime.storage import RaftStorage

BATCH_ENTRIES = 64
BATCH_ENTRY_BYTES = 1024
SINGLE_ENTRY_BYTES = 256


class Store(Protocol):
    """What both backends offer."""

    def persist(
        self, *, hard_state: HardState | None, entries: list[Entry], snapshot: Snapshot | None
    ) -> None: ...

    def load(self) -> tuple[HardState | None, Snapshot | None, list[Entry]]: ...

    def close(self) -> None: ...


class Backend(Protocol):
    """Opens a store at a path."""

    def __call__(self, path: Path) -> Store: ...


def backends() -> dict[str, Backend]:
    """SQLite always; LMDB if the ``lmdb`` package is installed."""
    found: dict[str, Backend] = {"sqlite": RaftStorage.open}
    try:
        from raft_storage_lmdb import LmdbRaftStorage
    except ImportError:
        print("lmdb not installed: SQLite only", file=sys.stderr)
    else:
        found["lmdb"] = LmdbRaftStorage.open
    return found


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def bench_single(open_store: Backend, path: Path, calls: int) -> tuple[float, float]:
    """p50, p99 latency in ms of one-entry persist calls."""
    store = open_store(path)
    payload = b"s" * SINGLE_ENTRY_BYTES
    latencies_ms: list[float] = []
    for index in range(1, calls + 1):
        entry = Entry(term=1, index=index, data=payload)
        hard = HardState(term=1, vote="a", commit=index)
        started = time.perf_counter()
        store.persist(hard_state=hard, entries=[entry], snapshot=None)
        latencies_ms.append((time.perf_counter() - started) * 1000)
    store.close()
    return percentile(latencies_ms, 0.50), percentile(latencies_ms, 0.99)


def write_batches(store: Store, batches: int) -> None:
    payload = b"b" * BATCH_ENTRY_BYTES
    for batch in range(batches):
        first = batch * BATCH_ENTRIES + 1
        entries = [
            Entry(term=1, index=i, data=payload) for i in range(first, first + BATCH_ENTRIES)
        ]
        hard = HardState(term=1, vote="a", commit=entries[-1].index)
        store.persist(hard_state=hard, entries=entries, snapshot=None)


def bench_batched(open_store: Backend, path: Path, batches: int) -> tuple[float, float]:
    """Entries/s and MiB/s of 64 x 1 KiB persist calls."""
    store = open_store(path)
    started = time.perf_counter()
    write_batches(store, batches)
    elapsed_s = time.perf_counter() - started
    store.close()
    count = batches * BATCH_ENTRIES
    return count / elapsed_s, count * BATCH_ENTRY_BYTES / 2**20 / elapsed_s


def bench_load(open_store: Backend, path: Path, entries: int) -> float:
    """Seconds to open and load ``entries`` entries of 1 KiB."""
    store = open_store(path)
    write_batches(store, entries // BATCH_ENTRIES)
    store.close()
    started = time.perf_counter()
    store = open_store(path)
    _, _, loaded = store.load()
    elapsed_s = time.perf_counter() - started
    store.close()
    assert len(loaded) == entries // BATCH_ENTRIES * BATCH_ENTRIES
    return elapsed_s


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to put the stores (default: a temp dir)"
    )
    parser.add_argument("--single", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--load-entries", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5, help="backends interleaved; medians shown")
    options = parser.parse_args()
    print(f"options: {vars(options)}")
    stores = backends()
    results: dict[str, list[tuple[float, ...]]] = {name: [] for name in stores}
    with tempfile.TemporaryDirectory(dir=options.dir) as scratch:
        root = Path(scratch)
        for round_number in range(options.rounds):
            for name, open_store in stores.items():
                prefix = root / f"{name}-{round_number}"
                p50_ms, p99_ms = bench_single(open_store, Path(f"{prefix}-single"), options.single)
                rate, mib_s = bench_batched(open_store, Path(f"{prefix}-batched"), options.batches)
                load_s = bench_load(open_store, Path(f"{prefix}-load"), options.load_entries)
                results[name].append((p50_ms, p99_ms, rate, mib_s, load_s))
                print(f"round {round_number} {name}: {results[name][-1]}", file=sys.stderr)
    print(
        "| backend | single persist p50 | single persist p99 | batched 64 x 1 KiB |"
        f" batched MiB/s | open + load {options.load_entries:,} x 1 KiB |"
    )
    print("|---|--:|--:|--:|--:|--:|")
    for name, rows in results.items():
        p50_ms, p99_ms, rate, mib_s, load_s = (
            statistics.median(column) for column in zip(*rows, strict=True)
        )
        rate_low, rate_high = min(row[2] for row in rows), max(row[2] for row in rows)
        print(
            f"| {name} | {p50_ms:.2f} ms | {p99_ms:.2f} ms | {rate:,.0f} entries/s"
            f" ({rate_low:,.0f}-{rate_high:,.0f}) | {mib_s:.1f} | {load_s:.2f} s |"
        )


if __name__ == "__main__":
    main()
