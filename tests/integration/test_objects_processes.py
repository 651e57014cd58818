"""The object store on real node processes: put/get, HTTP ranges, CLI, lost holders, bad bytes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import moot
from moot.client.local import LocalFederation
from moot.core import objects
from moot.core.wire import MemberInfo
from moot.runtime.faults import FaultConfig, FaultRule, write_faults_file

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with LocalFederation(3, directory=tmp_path_factory.mktemp("objects") / "fed") as fed:
        yield fed


def test_put_and_get_bytes_files_and_small_inline_objects(federation: LocalFederation, tmp_path: Path) -> None:
    store = federation.client().objects
    data = os.urandom(9 * 1024 * 1024 + 17)  # three chunks, the last one short
    ref = store.put(data)
    assert (ref.size, ref.replicas) == (len(data), 3)
    assert ref.id == objects.split(data)[0], "the id is the hash of the canonical manifest"
    assert store.get(ref) == data
    assert store.get(ref.id) == data
    assert len(store.stat(ref).chunks) == 3
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    assert store.put(source).id == ref.id, "same bytes, same object"
    target = store.get_to(ref, tmp_path / "out" / "copy.bin")
    assert target.read_bytes() == data
    small = store.put(b"hello, moot")
    assert store.stat(small).inline == b"hello, moot"
    assert store.get(small) == b"hello, moot"
    empty = store.put(b"")
    assert store.get(empty) == b""


def test_a_client_on_the_nodes_machine_maps_its_chunk_files_and_still_verifies_them(
    federation: LocalFederation,
) -> None:
    address = federation.addresses[0]
    data = os.urandom(9 * 1024 * 1024 + 17)  # three chunks
    with moot.connect([address], cluster=federation.cluster_dir, pinned=True) as client:
        ref = client.objects.put(data)
        assert client.objects.get(ref) == data
        assert client.objects.local_chunks_read == 3, "a same-host client reads the node's files, not TLS"
        buffer = bytearray(len(data) + 10)
        assert client.objects.get_into(ref, buffer) == len(data)
        assert buffer[: len(data)] == data and buffer[len(data) :] == bytes(10)
        with pytest.raises(moot.BadRequest, match=f"at least {len(data)} bytes"):
            client.objects.get_into(ref, bytearray(100))
        with pytest.raises(moot.BadRequest, match="writable"):
            client.objects.get_into(ref, b"read-only bytes")
    with moot.connect([address], cluster=federation.cluster_dir, pinned=True, local_reads=False) as remote:
        assert remote.objects.get(ref) == data
        assert remote.objects.local_chunks_read == 0
    # A bad file on the client's node: the client's own hash catches it, the
    # chunk comes through TLS instead, and the node (which re-checks its copy
    # there) quarantines it.
    node_status = federation.statuses()[0]
    second = federation.client().objects.stat(ref).chunks[1]
    [copy] = (federation.nodes[0].data_dir / "chunks").rglob(second)
    raw = bytearray(copy.read_bytes())
    raw[5] ^= 0xFF
    copy.write_bytes(bytes(raw))
    with moot.connect([address], cluster=federation.cluster_dir, pinned=True) as client:
        assert client.objects.get(ref) == data
        assert client.objects.local_chunks_read == 2
    assert federation.statuses()[0].corrupt_found > node_status.corrupt_found


def test_unknown_and_malformed_ids_get_clear_errors(federation: LocalFederation, tmp_path: Path) -> None:
    store = federation.client().objects
    with pytest.raises(moot.NotFound, match="check the id"):
        store.get("0" * 64)
    with pytest.raises(moot.BadRequest, match="not an object id"):
        store.get("not-an-id")
    with pytest.raises(moot.NotFound):
        store.get_to("1" * 64, tmp_path / "never.bin")
    assert not (tmp_path / "never.bin").exists(), "a failed download left a file behind"
    with pytest.raises(moot.BadRequest, match="bytes, a path or a binary file"):
        store.put(12345)  # type: ignore[arg-type]


def test_every_node_serves_objects_over_http_with_ranges(federation: LocalFederation) -> None:
    data = os.urandom(5 * 1024 * 1024)
    ref = federation.client().objects.put(data)

    def fetch(url: str, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {federation.token}", **headers})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read(), dict(error.headers)

    for base in federation.http_urls:
        status, body, headers = fetch(f"{base}/objects/{ref.id}", {})
        assert (status, body) == (200, data)
        assert headers["Accept-Ranges"] == "bytes"
    base = federation.http_urls[1]
    status, body, headers = fetch(f"{base}/objects/{ref.id}", {"Range": "bytes=4194300-4194309"})
    assert (status, body) == (206, data[4194300:4194310]), "a range across a chunk boundary"
    assert headers["Content-Range"] == f"bytes 4194300-4194309/{len(data)}"
    assert fetch(f"{base}/objects/{ref.id}", {"Range": "bytes=-5"})[1] == data[-5:]
    assert fetch(f"{base}/objects/{ref.id}", {"Range": f"bytes={len(data)}-"})[0] == 416
    assert fetch(f"{base}/objects/{'0' * 64}", {})[0] == 404
    assert fetch(f"{base}/objects/nope", {})[0] == 400
    status, body, headers = fetch(f"{base}/metrics", {})
    assert status == 200
    text = body.decode()
    for metric in ("moot_object_chunks ", "moot_object_repairs_total ", "moot_object_cache_hits_total ", "moot_raft_term "):
        assert metric in text, f"{metric.strip()} missing from /metrics"
    unauthorized = urllib.request.Request(f"{base}/objects/{ref.id}")
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(unauthorized, timeout=30)
    assert denied.value.code == 401


def test_cli_put_and_get(federation: LocalFederation, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(300_000))
    common = ["--cluster", str(federation.cluster_dir), "--node", federation.addresses[2]]
    put = subprocess.run([sys.executable, "-m", "moot", "put", str(source), *common], capture_output=True, text=True, timeout=60)
    assert put.returncode == 0, put.stderr
    object_id = put.stdout.strip()
    assert len(object_id) == 64
    out = tmp_path / "out.bin"
    got = subprocess.run(
        [sys.executable, "-m", "moot", "get", object_id, "-o", str(out), *common], capture_output=True, text=True, timeout=60
    )
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == source.read_bytes()
    missing = subprocess.run(
        [sys.executable, "-m", "moot", "get", "f" * 64, "-o", str(tmp_path / "x"), *common],
        capture_output=True, text=True, timeout=60,
    )
    assert missing.returncode == 1
    assert "NotFound" in missing.stderr


def test_bad_bytes_on_disk_are_never_returned(tmp_path: Path) -> None:
    with LocalFederation(4, directory=tmp_path / "fed") as fed:
        data = os.urandom(10 * 1024 * 1024)
        ref = fed.client().objects.put(data)
        # Flip a byte in two of the three on-disk copies of the first chunk.
        first_chunk = fed.client().objects.stat(ref).chunks[0]
        copies = [p for node in fed.nodes for p in (node.data_dir / "chunks").rglob(first_chunk)]
        assert len(copies) == 3
        for copy in copies[:2]:
            raw = bytearray(copy.read_bytes())
            raw[1000] ^= 0xFF
            copy.write_bytes(bytes(raw))
        # Every node, asked directly, serves the right bytes: its own bad copy
        # is caught by its hash, a holder's bad copy too (and reported).
        for address in fed.addresses:
            with moot.connect([address], cluster=fed.cluster_dir, pinned=True) as reader:
                assert reader.objects.get(ref) == data
        # And the bad copies are replaced by good ones (read-time checks and
        # the scrubber quarantine them; the holder fetches a verified copy).
        good = objects.chunk_id
        deadline = time.monotonic() + 60
        while not all(copy.exists() and good(copy.read_bytes()) == first_chunk for copy in copies):
            assert time.monotonic() < deadline, "a corrupt copy was not repaired"
            time.sleep(0.2)  # polling the holders' disks with a deadline
        statuses = fed.statuses().values()
        assert sum(s.corrupt_found for s in statuses) >= 2, "moot status does not show the bad copies"
        assert sum(s.repairs for s in statuses) >= 2, "moot status does not show the repairs"


def test_objects_survive_the_loss_of_two_holders(tmp_path: Path) -> None:
    with LocalFederation(5, directory=tmp_path / "fed") as fed:
        data = os.urandom(50 * 1024 * 1024)  # the 50 MB: 13 chunks
        ref = fed.client().objects.put(data)
        holders = fed.client().objects.locate(ref)
        assert len(holders) == 3
        by_id = {status.node_id: index for index, status in fed.statuses().items()}
        for victim in holders[:2]:
            fed.kill(by_id[victim])
        survivors = [fed.addresses[i] for i in range(5) if fed.nodes[i].alive]
        with moot.connect(survivors, cluster=fed.cluster_dir) as reader:
            assert reader.objects.get(ref) == data
            # Repair brings every chunk (and the manifest) back to 3 live copies.
            chunk_ids = [ref.id, *reader.objects.stat(ref).chunks]
            live_dirs = [fed.nodes[i].data_dir / "chunks" for i in range(5) if fed.nodes[i].alive]
            deadline = time.monotonic() + 90
            while True:
                copies = {c: sum(1 for d in live_dirs if any(d.rglob(c))) for c in chunk_ids}
                if all(count >= 3 for count in copies.values()):
                    break
                assert time.monotonic() < deadline, f"not re-replicated to 3 live copies: {copies}"
                time.sleep(0.5)  # polling the survivors' disks with a deadline
            assert reader.objects.get(ref) == data


def test_a_holder_that_lost_its_disk_and_came_back_gets_its_copies_again(tmp_path: Path) -> None:
    # Regression (objects benchmark, 2026-11-27): a peer whose connection
    # closed was marked unreachable and, when only repair talked to it
    # afterwards, skipped for good; the chunks it should hold never came back.
    with LocalFederation(3, directory=tmp_path / "fed") as fed:
        data = os.urandom(9 * 1024 * 1024)
        ref = fed.client().objects.put(data)
        chunk_ids = [ref.id, *fed.client().objects.stat(ref).chunks]
        victim = next(i for i in range(3) if i != fed.leader())
        fed.kill(victim)
        shutil.rmtree(fed.nodes[victim].data_dir / "chunks")  # a new, empty disk
        fed.restart(victim)
        chunks_dir = fed.nodes[victim].data_dir / "chunks"
        deadline = time.monotonic() + 90
        while not all(any(chunks_dir.rglob(chunk)) for chunk in chunk_ids):
            assert time.monotonic() < deadline, "the restarted holder never got its copies back"
            time.sleep(0.2)  # polling its disk with a deadline
        with moot.connect([fed.addresses[victim]], cluster=fed.cluster_dir, pinned=True) as reader:
            assert reader.objects.get(ref) == data


def test_unpinned_objects_are_collected_after_the_grace_period_and_pinned_ones_stay(tmp_path: Path) -> None:
    grace_s = 3.0
    with LocalFederation(3, directory=tmp_path / "fed", node_args=["--object-grace-s", str(grace_s)]) as fed:
        store = fed.client().objects
        kept = store.put(os.urandom(5 * 1024 * 1024))
        dropped = store.put(os.urandom(5 * 1024 * 1024))
        dropped_chunks = [dropped.id, *store.stat(dropped).chunks]
        kept_chunks = [kept.id, *store.stat(kept).chunks]
        assert store.unpin(dropped) is True
        assert store.unpin(dropped) is False, "the pin was already gone"
        chunk_dirs = [node.data_dir / "chunks" for node in fed.nodes]

        def copies(chunk: str) -> int:
            return sum(1 for directory in chunk_dirs if any(directory.rglob(chunk)))

        deadline = time.monotonic() + 60
        while any(copies(c) for c in dropped_chunks):
            assert time.monotonic() < deadline, "an unpinned object was not collected"
            time.sleep(0.5)  # polling the nodes' disks with a deadline
        with pytest.raises(moot.NotFound):
            store.get(dropped)
        assert store.get(kept) is not None
        assert all(copies(c) == 3 for c in kept_chunks), "a pinned object lost copies"


def test_a_full_disk_sends_the_write_to_another_holder_or_fails_clearly(tmp_path: Path) -> None:
    tiny = ["--object-capacity-bytes", "1000000"]
    with LocalFederation(4, directory=tmp_path / "fed", node_args={0: tiny}) as fed:
        store = fed.client().objects
        data = os.urandom(12 * 1024 * 1024)
        ref = store.put(data)
        assert ref.replicas == 3
        full_node_chunks = [p for p in (fed.nodes[0].data_dir / "chunks").rglob("*") if p.is_file() and len(p.name) == 64]
        assert sum(p.stat().st_size for p in full_node_chunks) <= 1_000_000
        assert store.get(ref) == data
    with LocalFederation(3, directory=tmp_path / "full", node_args=tiny) as fed:
        with pytest.raises(moot.Unavailable, match=r"(?i)full|capacity"):
            fed.client().objects.put(os.urandom(3 * 1024 * 1024))
        small = fed.client().objects.put(b"still fits")
        assert fed.client().objects.get(small) == b"still fits"


def test_a_read_goes_to_the_nearest_replica_and_the_next_one_is_served_from_the_edge_cache(tmp_path: Path) -> None:
    faults_file = tmp_path / "faults.json"
    write_faults_file(faults_file, FaultConfig())
    with LocalFederation(4, directory=tmp_path / "fed", extra_env={"MOOT_FAULTS_FILE": str(faults_file)}) as fed:
        data = os.urandom(1024 * 1024)  # one chunk
        ref = fed.client().objects.put(data)
        chunk = fed.client().objects.stat(ref).chunks[0]
        by_index = {index: status.node_id for index, status in fed.statuses().items()}
        holders = [i for i, node in enumerate(fed.nodes) if any((node.data_dir / "chunks").rglob(chunk))]
        assert len(holders) == 3
        reader = next(i for i in range(4) if i not in holders)
        near, *far = holders
        rules = []
        for index in far:  # 30 ms each way between the reader and two of the holders
            rules.append(FaultRule(source=fed.addresses[reader], destination=fed.addresses[index], delay_ms=30.0))
            rules.append(FaultRule(source=fed.addresses[index], destination=fed.addresses[reader], delay_ms=30.0))
        write_faults_file(faults_file, FaultConfig(rules=tuple(rules)))

        def learned(views: dict[int, list[MemberInfo]]) -> bool:
            rtt = {info.node_id: info.rtt_ms for info in views.get(reader, [])}
            near_rtt = rtt.get(by_index[near])
            return near_rtt is not None and all((rtt.get(by_index[i]) or 0) > near_rtt + 20 for i in far)

        fed.wait_until(learned, what="the reader's RTT estimates to learn the injected latency", timeout_s=90)
        log = fed.nodes[reader].log_path
        with moot.connect([fed.addresses[reader]], cluster=fed.cluster_dir, pinned=True) as client:
            assert client.objects.get(ref) == data
            fetched = [json.loads(line) for line in log.read_text().splitlines() if '"chunk_fetched"' in line]
            assert [entry["holder"] for entry in fetched if entry["chunk"] == chunk] == [by_index[near]]
            hits_before = fed.statuses()[reader].cache_hits
            assert client.objects.get(ref) == data
            fetched_again = [line for line in log.read_text().splitlines() if '"chunk_fetched"' in line]
            assert len(fetched_again) == len(fetched), "the second read went to a holder, not the edge cache"
            assert fed.statuses()[reader].cache_hits > hits_before


def test_a_small_federation_stores_fewer_replicas_and_says_so(tmp_path: Path) -> None:
    with LocalFederation(2, directory=tmp_path / "fed") as fed:
        store = fed.client().objects
        ref = store.put(os.urandom(200_000))
        assert ref.replicas == 2
        assert "2 replicas, not 3" in store.last_warning
        assert store.get(ref) is not None
