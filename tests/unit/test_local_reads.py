"""Same-host reads (moot/runtime/local_reads.py): a real chunk store, a real
abstract Unix socket, real descriptors passed with SCM_RIGHTS."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from moot.core import wire
from moot.runtime.chunk_store import ChunkStore
from moot.runtime.local_reads import (
    LocalChunkClient,
    LocalChunkServer,
    LocalReadError,
    map_verified,
)
from moot.runtime.logs import get_logger


def chunk(tag: int, size: int = 1000) -> tuple[str, bytes]:
    data = (f"local-{tag}-".encode() * size)[:size]
    return hashlib.sha256(data).hexdigest(), data


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[ChunkStore]:
    with ChunkStore.open(tmp_path / "chunks") as opened:
        yield opened


@pytest.fixture()
def server(store: ChunkStore) -> Iterator[LocalChunkServer]:
    served = LocalChunkServer(store, "n-test", get_logger("n-test"))
    assert served.start(), "abstract Unix sockets exist on Linux"
    yield served
    served.close()


def test_a_client_gets_descriptors_of_held_chunks_and_none_for_the_rest(
    store: ChunkStore, server: LocalChunkServer
) -> None:
    held_id, held = chunk(1)
    other_id, other = chunk(2, 5000)
    store.put(held_id, held)
    store.put(other_id, other)
    absent_id, _ = chunk(3)
    client = LocalChunkClient(server.grant(7))
    try:
        descriptors = client.open([held_id, absent_id, other_id])
        assert descriptors[1] is None
        first, third = descriptors[0], descriptors[2]
        assert first is not None and third is not None
        first_map = map_verified(held_id, first, len(held))
        third_map = map_verified(other_id, third, len(other))
        assert first_map is not None and bytes(first_map) == held
        assert third_map is not None and bytes(third_map) == other
        assert server.opened == 2
        # The connection is reused for the next request.
        [again] = client.open([held_id])
        assert again is not None
        os.close(again)
    finally:
        client.close()


def test_a_chunk_file_that_does_not_match_its_id_is_not_mapped(
    store: ChunkStore, server: LocalChunkServer
) -> None:
    chunk_id, data = chunk(4)
    store.put(chunk_id, data)
    path = next((store.root).rglob(chunk_id))
    flipped = bytearray(path.read_bytes())
    flipped[10] ^= 0xFF
    path.write_bytes(bytes(flipped))
    client = LocalChunkClient(server.grant(1))
    try:
        [descriptor] = client.open([chunk_id])
        assert descriptor is not None
        assert map_verified(chunk_id, descriptor, len(data)) is None, (
            "bad bytes must never be returned"
        )
        [descriptor] = client.open([chunk_id])
        assert descriptor is not None
        assert map_verified(chunk_id, descriptor, len(data) + 1) is None, (
            "a size that differs is refused too"
        )
    finally:
        client.close()


def test_a_wrong_token_is_refused_and_the_connection_closed(
    server: LocalChunkServer, store: ChunkStore
) -> None:
    chunk_id, data = chunk(5)
    store.put(chunk_id, data)
    grant = server.grant(1)
    forged = wire.LocalAccessGrant(request_id=1, socket=grant.socket, token="0" * 64)
    client = LocalChunkClient(forged)
    with pytest.raises(LocalReadError, match="wrong token"):
        client.open([chunk_id])
    assert client.closed
    assert server.opened == 0


def test_a_client_elsewhere_or_after_close_gets_a_clear_error(server: LocalChunkServer) -> None:
    with pytest.raises(LocalReadError, match="offers no same-host socket"):
        LocalChunkClient(wire.LocalAccessGrant(request_id=1))
    missing = wire.LocalAccessGrant(
        request_id=1, socket=(b"\0moot-chunks-nowhere").hex(), token="x"
    )
    with pytest.raises(LocalReadError, match="not on the node's machine"):
        LocalChunkClient(missing)
    client = LocalChunkClient(server.grant(1))
    server.close()
    with pytest.raises(LocalReadError):
        client.open([chunk(6)[0]])


def test_garbage_on_the_socket_closes_that_connection_only(
    server: LocalChunkServer, store: ChunkStore
) -> None:
    chunk_id, data = chunk(7)
    store.put(chunk_id, data)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(bytes.fromhex(server.grant(1).socket))
    raw.sendall(b"\x00\x00\x00\x05" + bytes(8) + b"hello")  # a frame header (length, no clock), then no message
    raw.settimeout(10)
    assert raw.recv(100) == b"", "the server closes a connection that sends garbage"
    raw.close()
    client = LocalChunkClient(server.grant(2))
    try:
        [descriptor] = client.open([chunk_id])
        assert descriptor is not None
        assert map_verified(chunk_id, descriptor, len(data)) is not None
    finally:
        client.close()
