"""``client.objects``: the content-addressed object store, from Python.

``put`` cuts data (bytes or a file, streamed: memory stays bounded) into
chunks, uploads each to the node this client talks to — which stores it on
R replicas before answering — then commits the manifest and records a
reference (a pin) in the replicated database; an object is visible only
once all of that is done. ``get``/``get_to`` fetch the manifest and the
chunks through that node (which serves them from its cache, its disk or the
nearest replica) and verify every chunk against its hash here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, TypeVar

from moot.client.errors import BadRequest, MootError, NotFound, Unavailable
from moot.core import objects, wire
from moot.runtime.local_reads import LocalChunkClient, LocalReadError, map_verified

if TYPE_CHECKING:
    from moot.client.client import Client

T = TypeVar("T")

CHUNKS_IN_FLIGHT: Final = 4  # uploads/downloads pipelined per call: bounds memory to ~16 MiB
OBJECT_TIMEOUT_S: Final = 60.0  # one chunk's round trip, replication included
READ_BLOCK_BYTES: Final = 1024 * 1024
LOCAL_OPEN_BATCH: Final = wire.LOCAL_FDS_PER_REPLY_MAX  # chunk files opened per same-host request
LOCAL_RETRY_S: Final = 30.0  # a node that refused same-host reads is asked again after this
PIN_PREFIX: Final = objects.PIN_KEY_PREFIX
OBJECT_PREFIX: Final = objects.OBJECT_KEY_PREFIX


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """A stored object: its id (the hash of its manifest) and size in bytes."""

    id: str
    size: int
    replicas: int = 0

    def __str__(self) -> str:
        return self.id


def _object_id(ref: ObjectRef | str) -> str:
    identifier = ref.id if isinstance(ref, ObjectRef) else ref
    try:
        return objects.validate_object_id(identifier)
    except objects.BadObjectId as error:
        raise BadRequest(str(error)) from None


class Objects:
    """The object API of one ``Client`` (see module doc)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self.timeout_s = OBJECT_TIMEOUT_S
        self.last_warning = ""
        self.local_chunks_read = 0
        """Chunks this client mapped from a same-host node's files (not through TLS)."""
        self._locals: dict[str, tuple[LocalChunkClient | None, float]] = {}

    # -- writing ---------------------------------------------------------------------

    def put(self, data: bytes | str | os.PathLike[str] | BinaryIO, *, pin: str = "user") -> ObjectRef:
        """Store ``data`` (bytes, a path, or a binary file); returns its ref.
        The object is pinned under ``pin`` until ``unpin``."""
        if isinstance(data, bytes | bytearray | memoryview):
            return self._client._run(self._put_stream(_bytes_blocks(bytes(data)), pin), timeout_s=None)
        if isinstance(data, str | os.PathLike):
            path = Path(data)
            if not path.is_file():
                raise BadRequest(f"{path} is not a readable file")
            with path.open("rb") as handle:
                return self._client._run(self._put_stream(_file_blocks(handle), pin), timeout_s=None)
        if hasattr(data, "read"):
            return self._client._run(self._put_stream(_file_blocks(data), pin), timeout_s=None)
        raise BadRequest(f"put() takes bytes, a path or a binary file, not {type(data).__name__}")

    async def _put_stream(self, blocks: Iterator[bytes], pin: str) -> ObjectRef:
        chunker = objects.Chunker()
        uploads: set[asyncio.Task[wire.Message]] = set()
        try:
            for block in blocks:
                for chunk_id, chunk in chunker.feed(block):
                    await self._upload_window(uploads, chunk_id, chunk)
            for chunk_id, chunk in chunker.finish():
                await self._upload_window(uploads, chunk_id, chunk)
            for reply in await asyncio.gather(*uploads):
                _expect(reply, wire.ChunkUploaded)
            uploads.clear()
            committed = await self._request(lambda rid: wire.ObjectCommit(request_id=rid, manifest=chunker.manifest_bytes))
            committed = _expect(committed, wire.ObjectCommitted)
        finally:
            for task in uploads:
                task.cancel()
        self.last_warning = committed.warning
        await self._reference(committed.object_id, committed.size, pin)
        return ObjectRef(committed.object_id, committed.size, committed.replicas)

    async def _upload_window(self, uploads: set[asyncio.Task[wire.Message]], chunk_id: str, chunk: bytes) -> None:
        if len(uploads) >= CHUNKS_IN_FLIGHT:
            done, _ = await asyncio.wait(uploads, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                uploads.discard(task)
                _expect(task.result(), wire.ChunkUploaded)
        uploads.add(
            asyncio.ensure_future(
                self._request(lambda rid: wire.ChunkUpload(request_id=rid, chunk_id=chunk_id, data=chunk))
            )
        )

    async def _reference(self, object_id: str, size: int, pin: str) -> None:
        # Pin first: a collector that sees the record sees the pin too.
        kv = self._client.kv
        if pin:
            await kv._call_async_reserved(PIN_PREFIX + object_id.encode() + b"/" + pin.encode(), b"")
        record = objects.ObjectRecord(size=size, touched_ms=int(time.time() * 1000))
        await kv._call_async_reserved(OBJECT_PREFIX + object_id.encode(), objects.encode_record(record))

    def pin(self, ref: ObjectRef | str, name: str = "user") -> None:
        """Keep the object (it is never collected while pinned)."""
        object_id = _object_id(ref)
        manifest = self.stat(object_id)  # not found: a clear error, and nothing written
        # Rewrite the record too: a collector that had just dropped it (the
        # object was unpinned past its grace) sees the object live again.
        self._client._run(self._reference(object_id, manifest.size, name), timeout_s=None)

    def unpin(self, ref: ObjectRef | str, name: str = "user") -> bool:
        """Drop a pin; an object with no pins and no job references is
        collected after the grace period. True if the pin existed."""
        object_id = _object_id(ref)
        return self._client._run(
            self._client.kv._call_async_reserved(PIN_PREFIX + object_id.encode() + b"/" + name.encode(), None),
            timeout_s=None,
        )

    # -- reading ---------------------------------------------------------------------

    def stat(self, ref: ObjectRef | str) -> objects.Manifest:
        """The object's manifest (size, chunks), verified."""
        object_id = _object_id(ref)
        info = self._client._run(self._stat(object_id, locate=False), timeout_s=None)
        return objects.decode_manifest(info.manifest, object_id)

    def locate(self, ref: ObjectRef | str) -> list[str]:
        """Node ids that hold the object's manifest now (asked, not assumed)."""
        object_id = _object_id(ref)
        info = self._client._run(self._stat(object_id, locate=True), timeout_s=None)
        return list(info.holders)

    def get(self, ref: ObjectRef | str) -> bytes:
        """The object's bytes, every chunk verified."""
        object_id = _object_id(ref)

        async def collect() -> bytes:
            parts = [part async for part in self._read(object_id)]
            return b"".join(parts)

        return self._client._run(collect(), timeout_s=None)

    def get_into(self, ref: ObjectRef | str, buffer: bytearray | memoryview | Any) -> int:
        """Read the object into ``buffer`` (any writable bytes-like object at
        least as large: a ``bytearray``, a NumPy array, an ``mmap``), every
        chunk verified; returns its size. No new memory: the fastest read."""
        object_id = _object_id(ref)
        try:
            view = memoryview(buffer).cast("B")
        except TypeError as error:
            raise BadRequest(f"get_into needs a writable bytes-like buffer: {error}") from None
        if view.readonly:
            raise BadRequest("get_into needs a writable buffer (a bytearray, not bytes)")

        async def fill() -> int:
            info = await self._stat(object_id, locate=False)
            manifest = _manifest(info, object_id)
            if manifest.size > len(view):
                raise BadRequest(
                    f"the object is {manifest.size} bytes and the buffer only {len(view)}; "
                    f"pass a buffer of at least {manifest.size} bytes"
                )
            async for _ in self._read_manifest(manifest, into=view):
                pass
            return manifest.size

        return self._client._run(fill(), timeout_s=None)

    def get_to(self, ref: ObjectRef | str, path: str | os.PathLike[str]) -> Path:
        """Stream the object into ``path`` (bounded memory); the file appears
        complete or not at all."""
        object_id = _object_id(ref)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)

        async def write() -> None:
            descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            try:
                with os.fdopen(descriptor, "wb") as handle:
                    async for part in self._read(object_id):
                        handle.write(part)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
                raise

        self._client._run(write(), timeout_s=None)
        return target

    async def _stat(self, object_id: str, *, locate: bool) -> wire.ObjectInfo:
        reply = await self._request(lambda rid: wire.ObjectStat(request_id=rid, object_id=object_id, locate=locate))
        return _expect(reply, wire.ObjectInfo)

    async def _read(self, object_id: str) -> AsyncIterator[bytes | mmap.mmap | memoryview]:
        info = await self._stat(object_id, locate=False)
        async for part in self._read_manifest(_manifest(info, object_id)):
            yield part

    async def _read_manifest(
        self, manifest: objects.Manifest, into: memoryview | None = None
    ) -> AsyncIterator[bytes | mmap.mmap | memoryview]:
        """The object's chunks in order, each verified, a few in flight.
        With ``into`` each chunk is copied to its place there (by the thread
        that verified it) and the yielded part is that slice."""
        if not manifest.chunks:
            if into is not None:
                into[: manifest.size] = manifest.inline
                yield into[: manifest.size]
            else:
                yield manifest.inline
            return
        local = await self._local_chunks()
        descriptors: dict[int, int] = {}  # position -> chunk file opened ahead
        window: list[asyncio.Task[bytes | mmap.mmap | memoryview]] = []
        position = 0
        offset = 0
        count = len(manifest.chunks)
        try:
            while position < count or window:
                while position < count and len(window) < CHUNKS_IN_FLIGHT:
                    if local is not None and position % LOCAL_OPEN_BATCH == 0:
                        batch = manifest.chunks[position : position + LOCAL_OPEN_BATCH]
                        opened = await asyncio.to_thread(_open_local, local, batch)
                        descriptors.update((position + i, fd) for i, fd in enumerate(opened) if fd is not None)
                    size = manifest.chunk_size(position)
                    target = into[offset : offset + size] if into is not None else None
                    chunk = self._chunk(descriptors.pop(position, None), manifest.chunks[position], size, target)
                    window.append(asyncio.ensure_future(chunk))
                    position += 1
                    offset += size
                yield await window.pop(0)
        finally:
            for task in window:
                task.cancel()
            for descriptor in descriptors.values():
                os.close(descriptor)

    async def _chunk(
        self, descriptor: int | None, chunk_id: str, size: int, target: memoryview | None
    ) -> bytes | mmap.mmap | memoryview:
        """One chunk, verified (and copied to ``target`` if given): mapped
        from the node's file when it is on this machine and holds it; else
        through TLS (the node re-checks its copy there, so a bad local file
        is quarantined and healed)."""
        if descriptor is not None:
            part = await asyncio.to_thread(_map_and_place, chunk_id, descriptor, size, target)
            if part is not None:
                self.local_chunks_read += 1
                return part
        reply = _expect(
            await self._request(lambda rid: wire.ChunkFetch(request_id=rid, chunk_id=chunk_id)), wire.ChunkData
        )
        try:
            # Hash in a thread (hashlib releases the GIL): the loop keeps
            # decrypting the next chunks meanwhile.
            return await asyncio.to_thread(_verify_and_place, reply.chunk_id, reply.data, target)
        except objects.CorruptData as error:
            raise Unavailable(f"the node sent bad bytes for a chunk: {error}") from None

    async def _local_chunks(self) -> LocalChunkClient | None:
        """The same-host chunk socket of the node this client talks to, if
        that node is on this machine (asked once; a refusal is remembered
        for ``LOCAL_RETRY_S``)."""
        client = self._client
        if not client.local_reads:
            return None
        address = next(
            (a for a in client.addresses if (c := client._connections.get(a)) is not None and not c.closed), None
        )
        if address is None:
            return None
        local, retry_at = self._locals.get(address, (None, 0.0))
        if local is not None and not local.closed:
            return local
        if local is None and time.monotonic() < retry_at:
            return None
        try:
            reply = await client._request_on(
                address, wire.LocalAccess(request_id=next(client._request_ids)), timeout_s=self.timeout_s
            )
            grant = _expect(reply, wire.LocalAccessGrant)
            local = await asyncio.to_thread(LocalChunkClient, grant)
        except (LocalReadError, MootError, OSError, ConnectionError, asyncio.IncompleteReadError, wire.RemoteProtocolError):
            self._locals[address] = (None, time.monotonic() + LOCAL_RETRY_S)
            return None
        self._locals[address] = (local, 0.0)
        return local

    def _close_locals(self) -> None:
        for local, _ in self._locals.values():
            if local is not None:
                local.close()
        self._locals.clear()

    async def _request(self, build: object) -> wire.Message:
        """One request to this client's node (failing over to the others)."""
        client = self._client
        errors: list[str] = []
        for address in client.addresses:
            message = build(next(client._request_ids))  # type: ignore[operator]
            try:
                async with asyncio.timeout(self.timeout_s):
                    return await client._request_on(address, message, timeout_s=self.timeout_s)
            except (OSError, ConnectionError, asyncio.IncompleteReadError, wire.RemoteProtocolError) as error:
                errors.append(f"{address}: {error or type(error).__name__}")
                await client._drop(address)
        raise Unavailable("no node answered: " + "; ".join(errors))


def _expect(reply: wire.Message, kind: type[T]) -> T:
    if isinstance(reply, wire.ErrorReply):
        if reply.kind == "NotFound":
            raise NotFound(reply.message)
        raise Unavailable(reply.message)
    if not isinstance(reply, kind):
        raise MootError(f"unexpected {type(reply).__name__} from the node")
    return reply


def _manifest(info: wire.ObjectInfo, object_id: str) -> objects.Manifest:
    try:
        return objects.decode_manifest(info.manifest, object_id)
    except objects.CorruptData as error:
        raise Unavailable(f"the node sent a manifest that does not match {object_id[:16]}…: {error}") from None


def _open_local(local: LocalChunkClient, chunk_ids: Sequence[str]) -> list[int | None]:
    """Descriptors of the chunk files the same-host node holds (none if its socket failed)."""
    if local.closed:
        return [None] * len(chunk_ids)
    try:
        return local.open(chunk_ids)
    except LocalReadError:
        return [None] * len(chunk_ids)


def _map_and_place(
    chunk_id: str, descriptor: int, size: int, target: memoryview | None
) -> mmap.mmap | memoryview | None:
    mapping = map_verified(chunk_id, descriptor, size)
    if mapping is None or target is None:
        return mapping
    with mapping:
        target[:] = mapping
    return target


def _verify_and_place(chunk_id: str, data: bytes, target: memoryview | None) -> bytes | memoryview:
    objects.verify_chunk(chunk_id, data)
    if target is None:
        return data
    target[:] = data
    return target


def _bytes_blocks(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), READ_BLOCK_BYTES):
        yield bytes(view[start : start + READ_BLOCK_BYTES])


def _file_blocks(handle: BinaryIO) -> Iterator[bytes]:
    while True:
        block = handle.read(READ_BLOCK_BYTES)
        if not block:
            return
        yield block
