"""Objects as chunks plus a manifest: ids, chunking, inline objects, verification."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moot.core import objects
from moot.core.objects import Chunker, CorruptData, Manifest


def test_a_small_object_lives_inline_in_its_manifest() -> None:
    object_id, manifest_bytes, chunks = objects.split(b"hello")
    assert chunks == []
    manifest = objects.decode_manifest(manifest_bytes, object_id)
    assert (manifest.size, manifest.inline, manifest.chunks) == (5, b"hello", ())
    assert object_id == hashlib.sha256(manifest_bytes).hexdigest()


def test_a_large_object_is_cut_into_chunks_of_the_chunk_size() -> None:
    data = bytes(range(256)) * 1_000  # 256,000 bytes
    object_id, manifest_bytes, chunks = objects.split(data, chunk_bytes=100_000)
    assert [len(c) for _, c in chunks] == [100_000, 100_000, 56_000]
    assert all(cid == hashlib.sha256(c).hexdigest() for cid, c in chunks)
    manifest = objects.decode_manifest(manifest_bytes, object_id)
    assert manifest.chunks == tuple(cid for cid, _ in chunks)
    assert [manifest.chunk_size(i) for i in range(3)] == [100_000, 100_000, 56_000]
    assert b"".join(c for _, c in chunks) == data


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=0, max_size=300_000), cuts=st.lists(st.integers(1, 70_000), max_size=12))
def test_feeding_in_any_pieces_gives_the_same_object(data: bytes, cuts: list[int]) -> None:
    whole = objects.split(data, chunk_bytes=65_536)
    chunker = Chunker(65_536)
    chunks: list[tuple[str, bytes]] = []
    position = 0
    for cut in cuts:
        chunks.extend(chunker.feed(data[position : position + cut]))
        position += cut
    chunks.extend(chunker.feed(data[position:]))
    chunks.extend(chunker.finish())
    assert (chunker.object_id, chunker.manifest_bytes, chunks) == whole


def test_identical_content_has_the_same_id_and_different_content_a_different_one() -> None:
    assert objects.split(b"x" * 200_000)[0] == objects.split(b"x" * 200_000)[0]
    assert objects.split(b"x" * 200_000)[0] != objects.split(b"x" * 199_999 + b"y")[0]


def test_tampered_bytes_are_refused() -> None:
    object_id, manifest_bytes, chunks = objects.split(b"z" * 300_000, chunk_bytes=100_000)
    cid, chunk = chunks[0]
    with pytest.raises(CorruptData):
        objects.verify_chunk(cid, chunk[:-1] + b"!")
    assert objects.verify_chunk(cid, chunk) == chunk
    with pytest.raises(CorruptData):
        objects.decode_manifest(manifest_bytes + b"\x00", object_id)
    # A manifest that hashes right but lies about its size is refused too.
    liar = objects.encode_manifest(Manifest(1, 10, 100_000, tuple(c for c, _ in chunks)))
    with pytest.raises(CorruptData, match="needs 1 chunks"):
        objects.decode_manifest(liar, objects.chunk_id(liar))


def test_object_ids_are_validated_with_a_clear_error() -> None:
    good = "a" * 64
    assert objects.validate_object_id(good) == good
    for bad in ("A" * 64, "a" * 63, "../etc/passwd", 42):
        with pytest.raises(objects.BadObjectId, match="object id"):
            objects.validate_object_id(bad)


def test_only_unreferenced_objects_past_their_grace_are_collectable() -> None:
    old, fresh, pinned, job = "a" * 64, "b" * 64, "c" * 64, "d" * 64
    records = {
        old: objects.ObjectRecord(size=1, touched_ms=0),
        fresh: objects.ObjectRecord(size=1, touched_ms=9_500),
        pinned: objects.ObjectRecord(size=1, touched_ms=0),
        job: objects.ObjectRecord(size=1, touched_ms=0),
    }
    keys = [objects.PIN_KEY_PREFIX + pinned.encode() + b"/user", objects.REF_KEY_PREFIX + job.encode() + b"/job-7"]
    referenced = objects.referenced_ids(keys)
    assert referenced == {pinned, job}
    assert objects.collectable(records, referenced, now_ms=10_000, grace_ms=1_000) == [old]
    assert objects.collectable(records, referenced, now_ms=20_000, grace_ms=1_000) == [old, fresh]


def test_object_records_round_trip_and_garbage_values_are_not_records() -> None:
    record = objects.ObjectRecord(size=123, touched_ms=456)
    assert objects.decode_record(objects.encode_record(record)) == record
    assert objects.decode_record(b"") is None
    assert objects.decode_record(b"\xc1garbage") is None
