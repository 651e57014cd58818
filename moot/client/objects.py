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
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final, TypeVar

from moot.client.errors import BadRequest, MootError, NotFound, Unavailable
from moot.core import objects, wire

if TYPE_CHECKING:
    from moot.client.client import Client

T = TypeVar("T")

CHUNKS_IN_FLIGHT: Final = 4  # uploads/downloads pipelined per call: bounds memory to ~16 MiB
OBJECT_TIMEOUT_S: Final = 60.0  # one chunk's round trip, replication included
READ_BLOCK_BYTES: Final = 1024 * 1024
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

    async def _read(self, object_id: str) -> AsyncIterator[bytes]:
        info = await self._stat(object_id, locate=False)
        try:
            manifest = objects.decode_manifest(info.manifest, object_id)
        except objects.CorruptData as error:
            raise Unavailable(f"the node sent a manifest that does not match {object_id[:16]}…: {error}") from None
        if not manifest.chunks:
            yield manifest.inline
            return
        window: list[asyncio.Task[wire.Message]] = []
        position = 0
        try:
            while position < len(manifest.chunks) or window:
                while position < len(manifest.chunks) and len(window) < CHUNKS_IN_FLIGHT:
                    chunk_id = manifest.chunks[position]
                    window.append(
                        asyncio.ensure_future(
                            self._request(lambda rid, c=chunk_id: wire.ChunkFetch(request_id=rid, chunk_id=c))
                        )
                    )
                    position += 1
                reply = _expect(await window.pop(0), wire.ChunkData)
                try:
                    # Hash in a thread (hashlib releases the GIL): the loop
                    # keeps decrypting the next chunks meanwhile.
                    yield await asyncio.to_thread(objects.verify_chunk, reply.chunk_id, reply.data)
                except objects.CorruptData as error:
                    raise Unavailable(f"the node sent bad bytes for a chunk: {error}") from None
        finally:
            for task in window:
                task.cancel()

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
