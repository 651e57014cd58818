"""moot's object store against a raw loopback socket copy, and its repair time, on 127.0.0.1.

    .venv/bin/python bench/objects_compare.py [--quick] [--directory DIR]

The issue's benchmark: 1 GB of objects through a 3-node federation, put and
get MB/s against a raw loopback socket copy on the same machine (the limit);
target get >= 50% of raw, hashes verified; and the time to restore R replicas
of 1 GB after a holder dies. MB here is 10^6 bytes.

References (the same bytes, in this process, one after the other):

- **raw TCP**: a plain socket copy on 127.0.0.1, a receiver thread
  ``recv_into`` a preallocated buffer, the main thread ``sendall`` in 4 MiB
  slices; both calls release the GIL, so the two run on both cores. The
  connection is open before the clock starts (moot's connections are too).
- **raw TLS**: the same through ``ssl``, with moot's own mutual-TLS contexts
  (``moot.runtime.identity``: a throwaway cluster CA, a node certificate).
- **sha256**: one core hashing the bytes: the cost of one verification pass.
- **memory copy**: ``bytes(view[a:b])`` in 4 MiB slices, a fresh buffer each
  time, as Python code that builds a new ``bytes`` per chunk pays.

moot (every object's bytes are compared with their sha256 after each get;
that check is outside the timed region, moot's own per-chunk checks are in):

1. **3-node federation** (``LocalFederation(3)``, R=3: every node holds
   every chunk). Two shapes of the same total: 8 objects of 1/8 each, and
   one object of it all, each with its own bytes (no deduplication). ``put``
   from memory through the client (client → node 0 → itself and the other
   two, fsync on each before the put returns); ``get_to`` a file (streamed,
   fsync'd) and ``get`` into memory, both through node 0, which holds the
   chunks (its own disk; the page cache in practice: RAM is large here).
2. **4-node federation**, one third total shape: 8 objects whose chunks were
   chosen (a counter in each chunk's first bytes, tried until rendezvous
   hashing ranks node 3 last among the four) so that node 3 holds none of
   them, put through node 0 (the shared client: a client pinned to a
   follower cannot write the object's pin). A client pinned to node 3 reads
   the *edge path* (node 3 fetches each chunk from a holder over node TLS,
   verifies and caches it, then serves it); a client pinned to a holder
   reads the local path in the same federation; the last object is read
   again from node 3 (its cache).
3. **repair**, in that 4-node federation: SIGKILL a holder (one that is not
   the Raft leader, so only repair is measured). Every chunk it held has two
   live copies left and node 3 is its new desired holder. Polled every
   ``POLL_INTERVAL_S``: the time until membership (as a live node sees it)
   declares the dead node gone, and until every chunk of every object
   (manifests included) is a file in the chunk dirs of 3 live nodes. The
   restored copies are then re-hashed.

CPU seconds of the node processes and of this process are reported per GB
moved, to show where time goes: clients and 3 or 4 servers share 2 cores.
Nothing here asserts on speed: a benchmark informs, it does not gate.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import moot
from moot.client.client import Client
from moot.client.local import LocalFederation
from moot.client.objects import ObjectRef
from moot.core import placement
from moot.core.objects import CHUNK_BYTES_DEFAULT
from moot.runtime import identity

HOST = "127.0.0.1"
MIB = 1024 * 1024
MB = 1_000_000  # throughputs are in MB/s of 10^6 bytes
CHUNK_BYTES = CHUNK_BYTES_DEFAULT  # moot's chunk size: test data is built chunk by chunk
TOTAL_BYTES_FULL = 1024 * MIB  # the issue's "1 GB"
TOTAL_BYTES_QUICK = 192 * MIB  # ~200 MB: the smoke run stays under 2 minutes
OBJECTS_MANY = 8  # the "many objects" shape: 8 of 1/8 of the total each
SOCKET_SLICE_BYTES = 4 * MIB  # sendall/recv_into size of the raw copies
RAW_REPEATS = 3  # raw references are cheap: the median of 3
COUNTER_BYTES = 8  # the distinct prefix of each generated chunk
EDGE_TRIES_MAX = (
    64  # counters tried per chunk for the edge layout (each try ranks node 3 last with p=1/4)
)
REPAIR_DEADLINE_S = 600.0  # every copy must be back within this, or the run reports what is missing
POLL_INTERVAL_S = 0.1  # the repair timing granularity
LOG_LINES_KEPT_MAX = 5  # warning/error log lines quoted per federation
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


# -- data -----------------------------------------------------------------------------------


def make_chunk(base: bytes, counter: int) -> bytes:
    """``base`` with its first bytes replaced by ``counter``: a distinct chunk per counter."""
    assert len(base) == CHUNK_BYTES
    return counter.to_bytes(COUNTER_BYTES, "big") + base[COUNTER_BYTES:]


def make_objects(base: bytes, total_bytes: int, count: int, counters: Iterator[int]) -> list[bytes]:
    """``count`` objects of ``total_bytes / count`` each, chunk-aligned, from ``counters``."""
    assert total_bytes % (count * CHUNK_BYTES) == 0, "objects must be whole chunks"
    chunks_per_object = total_bytes // count // CHUNK_BYTES
    return [
        b"".join(make_chunk(base, next(counters)) for _ in range(chunks_per_object))
        for _ in range(count)
    ]


def counters_avoiding(
    base: bytes, start: int, node_ids: Sequence[str], avoid: str, count: int
) -> Iterator[int]:
    """``count`` counters whose chunks rendezvous hashing ranks last at ``avoid``
    among ``node_ids`` (so with R = len - 1, ``avoid`` never holds them)."""
    candidates = [placement.Candidate(node_id) for node_id in node_ids]
    counter = start
    for _ in range(count):
        for _ in range(EDGE_TRIES_MAX):
            counter += 1
            chunk_id = hashlib.sha256(make_chunk(base, counter)).hexdigest()
            if placement.rank(chunk_id, candidates)[-1] == avoid:
                break
        else:
            raise RuntimeError(
                f"no chunk avoiding {avoid} in {EDGE_TRIES_MAX} tries: placement is not what we think"
            )
        yield counter


def sha256_file(path: Path) -> bytes:
    """The sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(SOCKET_SLICE_BYTES):
            digest.update(block)
    return digest.digest()


# -- references ------------------------------------------------------------------------------


def raw_copy_s(data: bytes, tls: tuple[ssl.SSLContext, ssl.SSLContext] | None) -> float:
    """Seconds to copy ``data`` over one loopback connection (TLS if given);
    the received bytes are checked against the sent ones afterwards."""
    received = bytearray(len(data))
    ready = threading.Event()
    failures: list[BaseException] = []
    with socket.create_server((HOST, 0)) as listener:
        port = listener.getsockname()[1]

        def receive() -> None:
            try:
                connection, _ = listener.accept()
                if tls is not None:
                    connection = tls[0].wrap_socket(connection, server_side=True)
                with connection:
                    ready.set()
                    view = memoryview(received)
                    got = 0
                    while got < len(data):
                        count = connection.recv_into(
                            view[got:], min(SOCKET_SLICE_BYTES, len(data) - got)
                        )
                        if count == 0:
                            raise ConnectionError(f"sender closed after {got} of {len(data)} bytes")
                        got += count
            except BaseException as error:  # reported by the main thread
                failures.append(error)
                ready.set()

        receiver = threading.Thread(target=receive, name="raw-receiver")
        receiver.start()
        sender = socket.create_connection((HOST, port))
        if tls is not None:
            sender = tls[1].wrap_socket(sender, server_side=False)
        with sender:
            ready.wait()
            view = memoryview(data)
            started = time.perf_counter()
            for start in range(0, len(data), SOCKET_SLICE_BYTES):
                sender.sendall(view[start : start + SOCKET_SLICE_BYTES])
            receiver.join()
            elapsed = time.perf_counter() - started
    if failures:
        raise failures[0]
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest(), (
        "the raw copy corrupted bytes"
    )
    return elapsed


def tls_contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """moot's server and client TLS contexts, from a throwaway cluster in ``directory``."""
    identity.init_cluster(directory / "cluster")
    cluster = identity.load_cluster(directory / "cluster")
    node = identity.issue_node_certificate(
        cluster, "bench-receiver", [HOST], directory / "receiver"
    )
    return identity.server_ssl_context(cluster, node), identity.client_ssl_context(cluster)


def sha256_s(data: bytes) -> float:
    """Seconds for one core to sha256 ``data``."""
    started = time.perf_counter()
    hashlib.sha256(data).digest()
    return time.perf_counter() - started


def copy_s(data: bytes) -> float:
    """Seconds to copy ``data`` into fresh 4 MiB ``bytes`` objects."""
    view = memoryview(data)
    started = time.perf_counter()
    for start in range(0, len(data), CHUNK_BYTES):
        bytes(view[start : start + CHUNK_BYTES])
    return time.perf_counter() - started


# -- measurement ------------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    """One line of the results table."""

    name: str
    size_bytes: int
    seconds: float
    server_cpu_s: float | None = None
    client_cpu_s: float | None = None
    note: str = ""

    @property
    def mb_per_s(self) -> float:
        """Throughput in MB/s (10^6 bytes)."""
        return self.size_bytes / MB / self.seconds if self.seconds > 0 else float("nan")


@dataclass(slots=True)
class CpuMeter:
    """CPU seconds of some processes (by pid) and of this one, between two reads."""

    pids: list[int]
    servers_s: float = 0.0
    client_s: float = 0.0

    def _read(self) -> tuple[float, float]:
        servers = 0.0
        for pid in self.pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue  # killed: its CPU is lost, not counted
            servers += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S  # utime, stime
        times = os.times()
        return servers, times.user + times.system

    def __enter__(self) -> CpuMeter:
        self.servers_s, self.client_s = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        servers, client = self._read()
        self.servers_s, self.client_s = servers - self.servers_s, client - self.client_s


@dataclass(slots=True)
class Report:
    """Everything measured, for the table."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        """Record a row and print it at once (a long run shows progress)."""
        self.rows.append(row)
        cpu = ""
        if row.server_cpu_s is not None and row.client_cpu_s is not None:
            cpu = f"  cpu servers {row.server_cpu_s:.1f}s client {row.client_cpu_s:.1f}s"
        print(
            f"  {row.name}: {row.size_bytes / MB:.0f} MB in {row.seconds:.2f}s = {row.mb_per_s:.1f} MB/s{cpu}",
            flush=True,
        )


def node_pids(federation: LocalFederation) -> list[int]:
    """The pids of the federation's node processes."""
    return [node.process.pid for node in federation.nodes if node.process is not None]


def timed(federation: LocalFederation, action: Callable[[], None]) -> tuple[float, CpuMeter]:
    """Run ``action``; its wall seconds and CPU use."""
    meter = CpuMeter(node_pids(federation))
    with meter:
        started = time.perf_counter()
        action()
        elapsed = time.perf_counter() - started
    return elapsed, meter


def put_all(client: Client, blobs: list[bytes], refs: list[ObjectRef], replicas: int) -> None:
    """Put every blob; every ref must say ``replicas`` copies."""
    for blob in blobs:
        ref = client.objects.put(blob)
        if ref.replicas != replicas or ref.size != len(blob):
            raise RuntimeError(
                f"put returned {ref!r}: expected {replicas} replicas and {len(blob)} bytes"
            )
        refs.append(ref)


def get_all(client: Client, refs: Sequence[ObjectRef], results: list[bytes]) -> None:
    """Get every object into memory (kept for the hash check after the clock stops)."""
    for ref in refs:
        results.append(client.objects.get(ref))


def check_digests(results: Sequence[bytes], digests: Sequence[bytes], what: str) -> None:
    """Every result must hash to its expected digest."""
    assert len(results) == len(digests), (len(results), len(digests))
    for index, (data, digest) in enumerate(zip(results, digests, strict=True)):
        if hashlib.sha256(data).digest() != digest:
            raise RuntimeError(f"{what}: object {index} came back with different bytes")


def measure_put_get(
    report: Report,
    federation: LocalFederation,
    client: Client,
    blobs: list[bytes],
    label: str,
    work: Path,
) -> list[ObjectRef]:
    """Put ``blobs``, then get them to files and into memory, checking every hash."""
    total = sum(len(blob) for blob in blobs)
    digests = [hashlib.sha256(blob).digest() for blob in blobs]
    refs: list[ObjectRef] = []
    seconds, cpu = timed(federation, lambda: put_all(client, blobs, refs, replicas=3))
    report.add(Row(f"moot put, {label}", total, seconds, cpu.servers_s, cpu.client_s))

    address = federation.nodes[0].address  # R=3 of 3: node 0 holds every chunk
    for path_name, local_reads in (("through TLS", False), ("same host", True)):
        with moot.connect(
            [address], cluster=federation.cluster_dir, pinned=True, local_reads=local_reads
        ) as reader:
            measure_gets(report, federation, reader, refs, digests, f"{path_name}, {label}", work)
            chunks = total // CHUNK_BYTES
            mapped = reader.objects.local_chunks_read
            if local_reads and mapped != 3 * chunks:
                report.problems.append(
                    f"{label}: the same-host client mapped {mapped} chunks, not {3 * chunks}"
                )
    return refs


def measure_gets(
    report: Report,
    federation: LocalFederation,
    client: Client,
    refs: list[ObjectRef],
    digests: list[bytes],
    label: str,
    work: Path,
) -> None:
    """get_to files, get into memory, get_into preallocated buffers; every hash checked."""
    total = sum(ref.size for ref in refs)
    out = work / "get_to"
    out.mkdir(exist_ok=True)
    paths = [out / f"object-{index}" for index in range(len(refs))]

    def get_to_all() -> None:
        for ref, path in zip(refs, paths, strict=True):
            client.objects.get_to(ref, path)

    seconds, cpu = timed(federation, get_to_all)
    for index, (path, digest) in enumerate(zip(paths, digests, strict=True)):
        if sha256_file(path) != digest:
            raise RuntimeError(f"get_to, {label}: object {index} came back with different bytes")
    shutil.rmtree(out)
    report.add(Row(f"moot get_to file, {label}", total, seconds, cpu.servers_s, cpu.client_s))

    results: list[bytes] = []
    seconds, cpu = timed(federation, lambda: get_all(client, refs, results))
    check_digests(results, digests, f"get, {label}")
    report.add(Row(f"moot get to memory, {label}", total, seconds, cpu.servers_s, cpu.client_s))
    results.clear()

    # Buffers allocated (and so touched: bytearray zero-fills) before the
    # clock starts, as the raw copies' receive buffer is.
    buffers = [bytearray(ref.size) for ref in refs]

    def get_into_all() -> None:
        for ref, buffer in zip(refs, buffers, strict=True):
            client.objects.get_into(ref, buffer)

    seconds, cpu = timed(federation, get_into_all)
    check_digests(buffers, digests, f"get_into, {label}")  # type: ignore[arg-type]
    report.add(
        Row(f"moot get_into a buffer, {label}", total, seconds, cpu.servers_s, cpu.client_s)
    )


def log_problems(federation: LocalFederation, ready_at: str, victim_address: str = "") -> list[str]:
    """Warning and error lines of the nodes' JSON logs, counted by event, a few
    quoted. Expected ones are counted apart: lines before ``ready_at`` (an ISO
    UTC time, as the logs write it: nodes reach for peers still starting) and
    lines about ``victim_address`` (the node the benchmark killed)."""
    lines: list[str] = []
    counts: dict[str, int] = {}
    for node in federation.nodes:
        if not node.log_path.exists():
            continue
        for text in node.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(text)
            except json.JSONDecodeError:
                entry = {"level": "error", "event": "non-JSON output", "ts": "~"}
            if entry.get("level") not in ("warning", "error", "critical"):
                continue
            expected = ""
            if str(entry.get("ts", "~")) < ready_at:
                expected = " (expected: before the federation was ready)"
            elif victim_address and victim_address in (entry.get("peer"), entry.get("address")):
                expected = " (expected: about the killed node)"
            key = f"node {node.index} {entry.get('level')} {entry.get('event')}{expected}"
            counts[key] = counts.get(key, 0) + 1
            if not expected and counts[key] == 1 and len(lines) < LOG_LINES_KEPT_MAX:
                lines.append(f"unexpected, node {node.index}: {text[:300]}")
    return [f"{key}: {count} lines" for key, count in sorted(counts.items())] + lines


def file_lines(report: Report, federation_name: str, lines: list[str]) -> None:
    """Log summaries go to the notes; quoted unexpected lines to the problems."""
    for line in lines:
        target = report.problems if line.startswith("unexpected") else report.notes
        target.append(f"{federation_name} log: {line}")


def load_note(report: Report, when: str) -> None:
    """Record the load average: other work on this machine skews every number."""
    one, five, _ = os.getloadavg()
    report.notes.append(f"load average {when}: {one:.1f} (1 min), {five:.1f} (5 min)")
    print(f"  load average {when}: {one:.1f} / {five:.1f}", flush=True)


def utc_now_iso() -> str:
    """Now, in the logs' timestamp format (ISO UTC, milliseconds, Z)."""
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


# -- the phases ---------------------------------------------------------------------------------


def phase_references(report: Report, data: bytes, work: Path) -> None:
    """Raw TCP, raw TLS, sha256 and memory copy over ``data``."""
    print("references (median of 3):", flush=True)
    contexts = tls_contexts(work / "tls")
    report.add(
        Row(
            "raw TCP loopback copy",
            len(data),
            statistics.median(raw_copy_s(data, None) for _ in range(RAW_REPEATS)),
        )
    )
    report.add(
        Row(
            "raw TLS loopback copy (moot's contexts)",
            len(data),
            statistics.median(raw_copy_s(data, contexts) for _ in range(RAW_REPEATS)),
        )
    )
    report.add(
        Row(
            "sha256, one core",
            len(data),
            statistics.median(sha256_s(data) for _ in range(RAW_REPEATS)),
        )
    )
    report.add(
        Row(
            "memory copy into 4 MiB bytes",
            len(data),
            statistics.median(copy_s(data) for _ in range(RAW_REPEATS)),
        )
    )


def phase_three_nodes(report: Report, base: bytes, total: int, work: Path) -> None:
    """Put and get both shapes through a 3-node federation."""
    print("3-node federation:", flush=True)
    directory = work / "fed3"
    counters = iter(range(1, 1 << 40))
    with LocalFederation(3, directory=directory, keep_directory=True) as federation:
        ready_at = utc_now_iso()
        client = federation.client()
        try:
            for count in (OBJECTS_MANY, 1):
                blobs = make_objects(base, total, count, counters)
                label = f"{count} x {total // count // MIB} MiB, 3 nodes"
                measure_put_get(report, federation, client, blobs, label, work)
                del blobs
        finally:
            file_lines(report, "3-node", log_problems(federation, ready_at))
    shutil.rmtree(directory, ignore_errors=True)


def chunk_ids_of(client: Client, refs: Sequence[ObjectRef]) -> dict[str, int]:
    """Every chunk id of the objects (manifests included) and its size."""
    sizes: dict[str, int] = {}
    for ref in refs:
        manifest = client.objects.stat(ref)
        for position, chunk in enumerate(manifest.chunks):
            sizes[chunk] = manifest.chunk_size(position)
        sizes[ref.id] = 0  # the manifest: its bytes are negligible, its presence is not
    return sizes


def holders_of(federation: LocalFederation, chunk: str, indexes: Sequence[int]) -> int:
    """How many of the nodes ``indexes`` have ``chunk`` as a file."""
    return sum(
        1
        for index in indexes
        if (federation.nodes[index].data_dir / "chunks" / chunk[:2] / chunk).is_file()
    )


def phase_edge_and_repair(report: Report, base: bytes, total: int, work: Path) -> None:
    """A 4-node federation: edge-path get from a node that holds nothing, then repair."""
    print("4-node federation (edge path, repair):", flush=True)
    directory = work / "fed4"
    with LocalFederation(4, directory=directory, keep_directory=True) as federation:
        ready_at = utc_now_iso()
        try:
            run_edge_and_repair(report, federation, base, total, work)
        finally:
            killed = next((node.address for node in federation.nodes if not node.alive), "")
            report.notes += [
                f"4-node log: {line}" for line in log_problems(federation, ready_at, killed)
            ]
    shutil.rmtree(directory, ignore_errors=True)


def run_edge_and_repair(
    report: Report, federation: LocalFederation, base: bytes, total: int, work: Path
) -> None:
    """The body of ``phase_edge_and_repair`` (see module doc, 2 and 3)."""
    statuses = federation.statuses()
    node_ids = [statuses[index].node_id for index in range(4)]
    edge = 3
    chunks = total // CHUNK_BYTES
    started = time.perf_counter()
    blobs = make_objects(
        base,
        total,
        OBJECTS_MANY,
        counters_avoiding(base, 1 << 41, node_ids, node_ids[edge], chunks),
    )
    report.notes.append(
        f"edge layout: {chunks} chunks chosen in {time.perf_counter() - started:.1f}s"
    )
    digests = [hashlib.sha256(blob).digest() for blob in blobs]
    leader = federation.leader()
    holders = [index for index in range(4) if index != edge]
    victim = next(index for index in holders if index != leader)
    reader = next(index for index in holders if index != victim)
    label = f"{OBJECTS_MANY} x {total // OBJECTS_MANY // MIB} MiB, 4 nodes"

    def pinned(index: int) -> Client:
        # Through TLS: this phase measures the node-to-node (edge) path.
        return moot.connect(
            [federation.nodes[index].address],
            cluster=federation.cluster_dir,
            pinned=True,
            local_reads=False,
        )

    with pinned(reader) as holder_client, pinned(edge) as edge_client:
        refs: list[ObjectRef] = []
        # Put through the federation's shared (unpinned) client: a client pinned
        # to a follower cannot write the object's pin to the database (moot's
        # KV client refuses to follow the leader hint when pinned).
        seconds, cpu = timed(
            federation, lambda: put_all(federation.client(), blobs, refs, replicas=3)
        )
        report.add(Row(f"moot put, {label}", total, seconds, cpu.servers_s, cpu.client_s))
        sizes = chunk_ids_of(holder_client, refs)
        on_edge = sum(
            1 for chunk in sizes if sizes[chunk] and holders_of(federation, chunk, [edge])
        )
        if on_edge:
            report.problems.append(
                f"edge node holds {on_edge} data chunks: the edge get is not a pure edge path"
            )

        for name, client in (
            ("holder node", holder_client),
            ("edge node (holds none)", edge_client),
        ):
            results: list[bytes] = []
            seconds, cpu = timed(federation, lambda c=client, r=results: get_all(c, refs, r))  # type: ignore[misc]
            check_digests(results, digests, f"get from {name}")
            report.add(
                Row(
                    f"moot get to memory through TLS, {name}, {label}",
                    total,
                    seconds,
                    cpu.servers_s,
                    cpu.client_s,
                )
            )
        again: list[bytes] = []
        seconds, cpu = timed(federation, lambda: get_all(edge_client, refs[-1:], again))
        check_digests(again, digests[-1:], "edge get, cached")
        report.add(
            Row(
                f"moot get to memory through TLS, edge node cache hit, 1 x {total // OBJECTS_MANY // MIB} MiB",
                len(again[0]),
                seconds,
                cpu.servers_s,
                cpu.client_s,
            )
        )

        measure_repair(report, federation, holder_client, sizes, victim, node_ids)


def measure_repair(
    report: Report,
    federation: LocalFederation,
    observer: Client,
    sizes: dict[str, int],
    victim: int,
    node_ids: Sequence[str],
) -> None:
    """SIGKILL ``victim``; time until membership drops it and every chunk is on 3 live nodes."""
    live = [index for index in range(len(federation.nodes)) if index != victim]
    lost = [chunk for chunk in sizes if holders_of(federation, chunk, [victim])]
    lost_bytes = sum(sizes[chunk] for chunk in lost)
    under = [chunk for chunk in sizes if holders_of(federation, chunk, live) < 3]
    print(
        f"  killing node {victim}: it holds {len(lost)} of {len(sizes)} chunks ({lost_bytes / MB:.0f} MB)",
        flush=True,
    )
    meter = CpuMeter([pid for index, pid in enumerate(node_pids(federation)) if index != victim])
    with meter:
        killed = time.perf_counter()
        federation.kill(victim)
        declared_s: float | None = None
        first_copy_s: float | None = None
        done_s: float | None = None
        missing = len(under)
        while time.perf_counter() - killed < REPAIR_DEADLINE_S:
            now = time.perf_counter() - killed
            if declared_s is None:
                states = {member.node_id: member.state for member in observer.members()}
                if states.get(node_ids[victim]) not in ("alive", "suspect"):
                    declared_s = now
            missing = sum(1 for chunk in under if holders_of(federation, chunk, live) < 3)
            if first_copy_s is None and missing < len(under):
                first_copy_s = now
            if missing == 0 and declared_s is not None:
                done_s = now
                break
            time.sleep(POLL_INTERVAL_S)  # polling the chunk dirs with a deadline
    if done_s is None:
        report.problems.append(
            f"repair: {missing} of {len(under)} chunks still on fewer than 3 live nodes "
            f"{REPAIR_DEADLINE_S:.0f}s after the kill (membership declared it dead: {declared_s})"
        )
        return
    bad = 0
    for chunk in under:
        for index in live:
            path = federation.nodes[index].data_dir / "chunks" / chunk[:2] / chunk
            if path.is_file() and sha256_file(path).hex() != chunk:
                bad += 1
    if bad:
        report.problems.append(f"repair: {bad} restored chunk files do not hash to their id")
    assert declared_s is not None and first_copy_s is not None
    copy_s_ = done_s - declared_s
    report.add(
        Row(
            "repair: kill → all chunks on 3 live nodes",
            lost_bytes,
            done_s,
            meter.servers_s,
            meter.client_s,
        )
    )
    report.add(
        Row("repair: declared dead → all chunks on 3 live nodes (copy)", lost_bytes, copy_s_)
    )
    report.notes.append(
        f"repair: node {victim} (not the Raft leader) killed holding {len(under)} of the {len(sizes)} "
        f"chunks+manifests ({lost_bytes / MB:.0f} MB); membership declared it dead after {declared_s:.2f}s "
        f"(seen from node {live[0] if live[0] != victim else live[1]}), first restored copy at {first_copy_s:.2f}s, "
        f"all {len(under)} on 3 live nodes at {done_s:.2f}s; restored copies re-hashed: {bad} bad"
    )


# -- output ----------------------------------------------------------------------------------------


def ratio(value: float, reference: float | None) -> str:
    """``value / reference`` as a percentage cell."""
    if reference is None or reference <= 0:
        return "-"
    return f"{100 * value / reference:.0f}%"


def cpu_cell(row: Row) -> str:
    """CPU seconds per GB moved, servers / client."""
    if row.server_cpu_s is None or row.client_cpu_s is None:
        return "-"
    gigabytes = row.size_bytes / 1e9
    return f"{row.server_cpu_s / gigabytes:.1f} / {row.client_cpu_s / gigabytes:.1f}"


def table(report: Report) -> str:
    """The results as a markdown table."""
    by_name = {row.name: row.mb_per_s for row in report.rows}
    raw = by_name.get("raw TCP loopback copy")
    tls = by_name.get("raw TLS loopback copy (moot's contexts)")
    lines = [
        "| measurement | MB | seconds | MB/s | / raw TCP | / raw TLS | CPU s per GB, servers / client |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report.rows:
        lines.append(
            f"| {row.name} | {row.size_bytes / MB:,.0f} | {row.seconds:.2f} | {row.mb_per_s:,.1f} | "
            f"{ratio(row.mb_per_s, raw)} | {ratio(row.mb_per_s, tls)} | {cpu_cell(row)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every phase and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{TOTAL_BYTES_QUICK // MIB} MiB instead of {TOTAL_BYTES_FULL // MIB} MiB",
    )
    parser.add_argument(
        "--directory",
        type=Path,
        default=None,
        help="work directory (default: a fresh temporary one)",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["references", "three", "four"],
        help="skip a phase",
    )
    options = parser.parse_args(argv)
    total = TOTAL_BYTES_QUICK if options.quick else TOTAL_BYTES_FULL
    work = Path(tempfile.mkdtemp(prefix="moot-objects-bench-", dir=options.directory))
    command = " ".join([Path(sys.executable).name, *sys.argv])
    print(
        f"# {command}\n# {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}, work dir {work}",
        flush=True,
    )
    base = os.urandom(CHUNK_BYTES)
    report = Report()
    try:
        load_note(report, "at start")
        if "references" not in options.skip:
            reference = make_objects(base, total, 1, iter(range(1 << 42, 1 << 43)))[0]
            phase_references(report, reference, work)
            del reference
        if "three" not in options.skip:
            phase_three_nodes(report, base, total, work)
            load_note(report, "after the 3-node phase")
        if "four" not in options.skip:
            phase_edge_and_repair(report, base, total, work)
            load_note(report, "after the 4-node phase")
    finally:
        print()
        print(table(report))
        for note in report.notes:
            print(f"- {note}")
        print("problems:" if report.problems else "problems: none")
        for problem in report.problems:
            print(f"- {problem}")
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
