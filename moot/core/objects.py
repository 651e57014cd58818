"""Objects as content-addressed chunks plus a manifest (sans-IO).

Rules:

- **Chunks.** An object's bytes are cut into chunks of ``chunk_bytes``
  (default 4 MiB, the last one shorter). A chunk's id is the lowercase hex
  sha256 of its bytes, so any node — trusted or not — may serve it and the
  reader checks what it got against the id it asked for.
- **Manifest.** An object is described by a ``Manifest``: its size, chunk
  size and chunk ids in order. Objects up to ``INLINE_BYTES_MAX`` keep their
  bytes inside the manifest instead (one round trip, no chunk files). The
  object id is the sha256 of the manifest's canonical encoding, so a
  manifest is verified exactly like a chunk and is itself stored as one.
- **Verification.** ``decode_manifest`` and ``verify_chunk`` raise
  ``CorruptData`` when bytes do not match their id; nothing unverified is
  ever handed on.

No I/O here: the runtime reads files and sockets and feeds ``Chunker``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Annotated, Final

import msgspec

CHUNK_BYTES_DEFAULT: Final = 4 * 1024 * 1024  # as the issue asks; Ceph RADOS objects default to 4 MiB too
CHUNK_BYTES_MAX: Final = 8 * 1024 * 1024  # one frame (16 MiB) must hold a chunk with headroom
INLINE_BYTES_MAX: Final = 64 * 1024  # smaller objects live inside their manifest
OBJECT_ID_CHARS: Final = 64
CHUNKS_PER_OBJECT_MAX: Final = 200_000  # 800 GB at 4 MiB chunks; a manifest stays under ~14 MB
MANIFEST_VERSION: Final = 1

ChunkId = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]


class CorruptData(ValueError):
    """Bytes do not match the id they were asked for (a bad disk or a lying node)."""


class BadObjectId(ValueError):
    """Not an object id: 64 lowercase hex characters."""


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    """What an object is: ``size`` bytes, as ``chunks`` of ``chunk_bytes``,
    or ``inline`` bytes when small. Encoded as a msgpack array so that the
    encoding, and so the object id, is canonical."""

    version: int
    size: Annotated[int, msgspec.Meta(ge=0)]
    chunk_bytes: Annotated[int, msgspec.Meta(ge=1, le=CHUNK_BYTES_MAX)]
    chunks: Annotated[tuple[ChunkId, ...], msgspec.Meta(max_length=CHUNKS_PER_OBJECT_MAX)] = ()
    inline: Annotated[bytes, msgspec.Meta(max_length=INLINE_BYTES_MAX)] = b""

    def chunk_size(self, position: int) -> int:
        """Bytes in chunk number ``position``."""
        assert 0 <= position < len(self.chunks)
        if position < len(self.chunks) - 1:
            return self.chunk_bytes
        return self.size - self.chunk_bytes * (len(self.chunks) - 1)


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final[msgspec.msgpack.Decoder[Manifest]] = msgspec.msgpack.Decoder(Manifest)


def chunk_id(data: bytes | memoryview) -> str:
    """The id of a chunk (or of any bytes): lowercase hex sha256."""
    return hashlib.sha256(data).hexdigest()


def validate_object_id(value: object) -> str:
    """``value`` if it is an object or chunk id; else ``BadObjectId`` saying why."""
    if not isinstance(value, str):
        raise BadObjectId(f"an object id is a string of {OBJECT_ID_CHARS} hex characters, not {type(value).__name__}")
    if len(value) != OBJECT_ID_CHARS or any(c not in "0123456789abcdef" for c in value):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise BadObjectId(f"{shown!r} is not an object id: expected {OBJECT_ID_CHARS} lowercase hex characters")
    return value


def verify_chunk(expected_id: str, data: bytes) -> bytes:
    """``data`` if it hashes to ``expected_id``; else ``CorruptData``."""
    actual = chunk_id(data)
    if actual != expected_id:
        raise CorruptData(f"chunk {expected_id[:16]}… has bytes hashing to {actual[:16]}…")
    return data


def encode_manifest(manifest: Manifest) -> bytes:
    """The canonical bytes of ``manifest`` (its id is their hash)."""
    return _encoder.encode(manifest)


def decode_manifest(data: bytes, expected_id: str) -> Manifest:
    """The manifest stored under ``expected_id``, verified; ``CorruptData`` if
    the bytes are not that manifest or not a valid one."""
    verify_chunk(expected_id, data)
    try:
        manifest = _decoder.decode(data)
    except msgspec.DecodeError as error:
        raise CorruptData(f"object {expected_id[:16]}… is not a manifest: {error}") from error
    problem = manifest_problem(manifest)
    if problem:
        raise CorruptData(f"object {expected_id[:16]}… has an inconsistent manifest: {problem}")
    return manifest


def manifest_problem(manifest: Manifest) -> str:
    """Why ``manifest`` cannot describe an object ("" if it can)."""
    if manifest.version != MANIFEST_VERSION:
        return f"version {manifest.version}, this build reads {MANIFEST_VERSION}"
    if manifest.inline or (manifest.size <= INLINE_BYTES_MAX and not manifest.chunks):
        if manifest.chunks:
            return "both inline bytes and chunks"
        if len(manifest.inline) != manifest.size:
            return f"size {manifest.size} but {len(manifest.inline)} inline bytes"
        return ""
    expected_chunks = -(-manifest.size // manifest.chunk_bytes)
    if len(manifest.chunks) != expected_chunks:
        return f"size {manifest.size} in chunks of {manifest.chunk_bytes} needs {expected_chunks} chunks, not {len(manifest.chunks)}"
    return ""


# References live in the replicated database under keys users cannot write
# (the client refuses keys starting with NUL): an object record per object,
# and one key per pin or job reference.
OBJECT_KEY_PREFIX: Final = b"\x00obj/"
PIN_KEY_PREFIX: Final = b"\x00pin/"
REF_KEY_PREFIX: Final = b"\x00ref/"  # job references (durable tasks)


class ObjectRecord(msgspec.Struct, frozen=True, array_like=True):
    """The database's record of an object: its size and when it was last
    written or pinned (wall clock, ms) — the start of its grace period."""

    size: int
    touched_ms: int


_record_encoder: Final = msgspec.msgpack.Encoder()
_record_decoder: Final[msgspec.msgpack.Decoder[ObjectRecord]] = msgspec.msgpack.Decoder(ObjectRecord)


def encode_record(record: ObjectRecord) -> bytes:
    """The value stored under ``OBJECT_KEY_PREFIX + id``."""
    return _record_encoder.encode(record)


def decode_record(data: bytes) -> ObjectRecord | None:
    """The record in ``data``, or None if it is not one (never trust a value blindly)."""
    try:
        return _record_decoder.decode(data)
    except msgspec.DecodeError:
        return None


def referenced_ids(keys: list[bytes]) -> set[str]:
    """Object ids named by pin and reference keys (``<prefix><id>/<name>``)."""
    found = set()
    for key in keys:
        for prefix in (PIN_KEY_PREFIX, REF_KEY_PREFIX):
            if key.startswith(prefix):
                found.add(key[len(prefix) : len(prefix) + OBJECT_ID_CHARS].decode("ascii", "replace"))
    return found


def collectable(records: dict[str, ObjectRecord], referenced: set[str], now_ms: int, grace_ms: int) -> list[str]:
    """Objects nobody references whose grace period has run out, in id order."""
    return sorted(
        object_id
        for object_id, record in records.items()
        if object_id not in referenced and now_ms - record.touched_ms >= grace_ms
    )


class Chunker:
    """Cuts a stream of bytes into chunks and builds the manifest.

    ``feed`` any amount of bytes and take the complete chunks it yields;
    ``finish`` yields the last chunk (if any) and sets ``manifest``,
    ``manifest_bytes`` and ``object_id``. Memory: at most one chunk buffered.
    """

    def __init__(self, chunk_bytes: int = CHUNK_BYTES_DEFAULT) -> None:
        if not 1 <= chunk_bytes <= CHUNK_BYTES_MAX:
            raise ValueError(f"chunk_bytes must be in 1..{CHUNK_BYTES_MAX}, not {chunk_bytes}")
        self.chunk_bytes = chunk_bytes
        self._buffer = bytearray()
        self._chunk_ids: list[str] = []
        self._size = 0
        self._first_chunk: bytes | None = None  # kept while the object might still be inline
        self.manifest: Manifest | None = None
        self.manifest_bytes = b""
        self.object_id = ""

    def feed(self, data: bytes | memoryview) -> Iterator[tuple[str, bytes]]:
        """Add bytes; yield (id, bytes) of each chunk completed."""
        assert self.manifest is None, "feed after finish"
        self._buffer += data
        self._size += len(data)
        while len(self._buffer) >= self.chunk_bytes and self._size > INLINE_BYTES_MAX:
            chunk = bytes(self._buffer[: self.chunk_bytes])
            del self._buffer[: self.chunk_bytes]
            identifier = chunk_id(chunk)
            self._chunk_ids.append(identifier)
            if len(self._chunk_ids) > CHUNKS_PER_OBJECT_MAX:
                raise ValueError(
                    f"an object may have at most {CHUNKS_PER_OBJECT_MAX} chunks of {self.chunk_bytes} bytes"
                )
            yield identifier, chunk

    def finish(self) -> Iterator[tuple[str, bytes]]:
        """Yield the last chunk (if any) and build the manifest."""
        assert self.manifest is None, "finish twice"
        if not self._chunk_ids and self._size <= INLINE_BYTES_MAX:
            manifest = Manifest(MANIFEST_VERSION, self._size, self.chunk_bytes, (), bytes(self._buffer))
        else:
            if self._buffer:
                chunk = bytes(self._buffer)
                identifier = chunk_id(chunk)
                self._chunk_ids.append(identifier)
                yield identifier, chunk
            manifest = Manifest(MANIFEST_VERSION, self._size, self.chunk_bytes, tuple(self._chunk_ids))
        self._buffer = bytearray()
        assert not manifest_problem(manifest), manifest_problem(manifest)
        self.manifest = manifest
        self.manifest_bytes = encode_manifest(manifest)
        self.object_id = chunk_id(self.manifest_bytes)


def split(data: bytes, chunk_bytes: int = CHUNK_BYTES_DEFAULT) -> tuple[str, bytes, list[tuple[str, bytes]]]:
    """(object id, manifest bytes, chunks) of ``data`` in one call."""
    chunker = Chunker(chunk_bytes)
    chunks = list(chunker.feed(data))
    chunks.extend(chunker.finish())
    return chunker.object_id, chunker.manifest_bytes, chunks
