"""Same-host reads: a client on a node's machine gets chunk files as open
file descriptors, not as bytes through TLS.

Every read through TLS copies the bytes through two encryptions, two
decryptions and several buffers; a client on the same machine as the node
can instead map the node's chunk files and hash them in place — the way
Ray's object store hands same-node workers shared memory. The node listens
on a Linux abstract Unix socket with a random name; a client learns the name
and a token from the node over its authenticated TLS connection
(``LocalAccess``), so only an authenticated client (on this machine, in this
network namespace) can use it. Over it the client sends ``LocalOpen`` with
chunk ids and receives ``LocalOpened`` plus, by ``SCM_RIGHTS``, read-only
descriptors of the chunk files it holds.

Trust is unchanged: the client hashes every chunk it maps, and falls back
to a TLS fetch (where the node re-checks its copy, quarantines a bad one and
fetches a good one) for a chunk that is absent or does not match.
Chunk files are immutable (written to a temporary name, then renamed), so a
mapping never changes under the reader; a chunk deleted meanwhile stays
readable through the descriptor.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import mmap
import os
import secrets
import socket
import threading
from collections.abc import Sequence
from typing import Final

from moot.core import objects, wire
from moot.runtime.chunk_store import ChunkStore
from moot.runtime.logs import StructuredLogger, log_event

CONNECTIONS_MAX: Final = 64
RECEIVE_BYTES_MAX: Final = wire.FRAME_HEADER_BYTES + 64 * 1024


class LocalReadError(Exception):
    """The same-host path failed; read through TLS instead."""


class LocalChunkServer:
    """The node's side: answers ``LocalOpen`` with chunk file descriptors.

    Blocking sockets on daemon threads (one per connection, at most
    ``CONNECTIONS_MAX``): ``asyncio`` streams cannot pass descriptors, and
    the work is a few ``open`` calls per request."""

    def __init__(self, store: ChunkStore, node_id: str, logger: StructuredLogger) -> None:
        self.store = store
        self.log = logger
        self.token = secrets.token_hex(32)
        self.name = b"\0moot-chunks-" + node_id.encode()[:40] + b"-" + secrets.token_hex(8).encode()
        self.opened = 0
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> bool:
        """Listen; False where abstract Unix sockets do not exist (not Linux)."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.name)
        except OSError as error:
            listener.close()
            log_event(self.log, logging.INFO, "local_reads_off", reason=str(error))
            return False
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept_loop, name="moot-local-reads", daemon=True).start()
        return True

    def grant(self, request_id: int) -> wire.LocalAccessGrant:
        if self._listener is None:
            return wire.LocalAccessGrant(request_id=request_id)
        return wire.LocalAccessGrant(
            request_id=request_id, socket=self.name.hex(), token=self.token
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets = list(self._connections)
            self._connections.clear()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        for connection in sockets:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._closed or len(self._connections) >= CONNECTIONS_MAX:
                    connection.close()
                    continue
                self._connections.add(connection)
            threading.Thread(
                target=self._serve, args=(connection,), name="moot-local-read", daemon=True
            ).start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            while True:
                request = _receive(connection)
                if request is None:
                    return
                if not isinstance(request, wire.LocalOpen):
                    _send(
                        connection,
                        wire.LocalOpened(error=f"expected LocalOpen, not {type(request).__name__}"),
                    )
                    return
                if not hmac.compare_digest(request.token.encode(), self.token.encode()):
                    _send(
                        connection,
                        wire.LocalOpened(
                            error="wrong token: ask the node again over TLS (LocalAccess)"
                        ),
                    )
                    return
                self._answer(connection, request.chunk_ids)
        except (OSError, LocalReadError):
            return
        finally:
            with self._lock:
                self._connections.discard(connection)
            connection.close()

    def _answer(self, connection: socket.socket, chunk_ids: Sequence[str]) -> None:
        descriptors: list[int] = []
        present: list[bool] = []
        try:
            for chunk_id in chunk_ids:
                try:
                    reader = self.store.open_reader(chunk_id)
                except ValueError:  # not a chunk id
                    reader = None
                if reader is None:
                    present.append(False)
                    continue
                with reader:
                    descriptors.append(os.dup(reader.fileno()))
                present.append(True)
            # Counted before they leave: a client that has them may look at
            # the count at once (found: a test read 0 before this thread ran on).
            self.opened += len(descriptors)
            _send(connection, wire.LocalOpened(present=tuple(present)), descriptors)
        finally:
            for descriptor in descriptors:
                os.close(descriptor)


class LocalChunkClient:
    """The client's side: one connection to a node's chunk socket; thread-safe."""

    def __init__(self, grant: wire.LocalAccessGrant) -> None:
        if not grant.socket:
            raise LocalReadError("the node offers no same-host socket")
        self._token = grant.token
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._socket.connect(bytes.fromhex(grant.socket))
        except (OSError, ValueError) as error:
            self._socket.close()
            raise LocalReadError(f"not on the node's machine: {error}") from error
        self._lock = threading.Lock()
        self.closed = False

    def open(self, chunk_ids: Sequence[str]) -> list[int | None]:
        """A descriptor for each chunk the node holds (None: not there).
        The caller closes them."""
        assert len(chunk_ids) <= wire.LOCAL_FDS_PER_REPLY_MAX
        with self._lock:
            if self.closed:
                raise LocalReadError("closed")
            try:
                _send(self._socket, wire.LocalOpen(token=self._token, chunk_ids=tuple(chunk_ids)))
                reply, descriptors = _receive_with_fds(self._socket)
            except (OSError, LocalReadError) as error:
                self._close_locked()
                raise LocalReadError(f"the node's chunk socket failed: {error}") from error
        if (
            not isinstance(reply, wire.LocalOpened)
            or reply.error
            or sum(reply.present) != len(descriptors)
        ):
            for descriptor in descriptors:
                os.close(descriptor)
            with self._lock:
                self._close_locked()
            detail = reply.error if isinstance(reply, wire.LocalOpened) else type(reply).__name__
            raise LocalReadError(f"the node refused: {detail or 'descriptor count mismatch'}")
        answer: list[int | None] = []
        given = iter(descriptors)
        for present in reply.present:
            answer.append(next(given) if present else None)
        return answer

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if not self.closed:
            self.closed = True
            self._socket.close()


def map_verified(chunk_id: str, descriptor: int, size: int) -> mmap.mmap | None:
    """Map a chunk file read-only and hash it in place (hashlib releases the
    GIL, so two of these run on two cores). The mapping if the bytes match
    ``chunk_id`` and are ``size`` long; None otherwise. Closes ``descriptor``."""
    try:
        if os.fstat(descriptor).st_size != size or size == 0:
            return None
        mapping = mmap.mmap(descriptor, size, prot=mmap.PROT_READ)
    except OSError:
        return None
    finally:
        os.close(descriptor)
    if objects.chunk_id(mapping) != chunk_id:  # type: ignore[arg-type]
        mapping.close()
        return None
    return mapping


def _send(
    connection: socket.socket, message: wire.Message, descriptors: Sequence[int] = ()
) -> None:
    frame = wire.encode_frame(message)
    if descriptors:
        sent = socket.send_fds(connection, [frame], list(descriptors))
        if sent < len(frame):
            connection.sendall(frame[sent:])
    else:
        connection.sendall(frame)


def _receive(connection: socket.socket) -> wire.Message | None:
    header = _receive_exactly(connection, wire.FRAME_HEADER_BYTES, allow_eof=True)
    if header is None:
        return None
    length, _ = wire.frame_header(header)
    if length > RECEIVE_BYTES_MAX:
        raise LocalReadError(f"frame of {length} bytes is too large here")
    body = _receive_exactly(connection, length, allow_eof=False)
    assert body is not None
    try:
        return wire.decode(body)
    except wire.RemoteProtocolError as error:
        raise LocalReadError(str(error)) from error


def _receive_with_fds(connection: socket.socket) -> tuple[wire.Message, list[int]]:
    """One frame whose first bytes carry descriptors (``send_fds`` sends
    them with the first byte)."""
    data, descriptors, _flags, _address = socket.recv_fds(
        connection, RECEIVE_BYTES_MAX, wire.LOCAL_FDS_PER_REPLY_MAX
    )
    try:
        if not data:
            raise LocalReadError("the node closed the chunk socket")
        while len(data) < wire.FRAME_HEADER_BYTES:
            data += (
                _receive_exactly(connection, wire.FRAME_HEADER_BYTES - len(data), allow_eof=False)
                or b""
            )
        length, _ = wire.frame_header(data[: wire.FRAME_HEADER_BYTES])
        missing = wire.FRAME_HEADER_BYTES + length - len(data)
        if missing < 0:
            raise LocalReadError("the node sent more than one frame")
        if missing:
            data += _receive_exactly(connection, missing, allow_eof=False) or b""
        try:
            return wire.decode(data[wire.FRAME_HEADER_BYTES :]), list(descriptors)
        except wire.RemoteProtocolError as error:
            raise LocalReadError(str(error)) from error
    except BaseException:
        for descriptor in descriptors:
            os.close(descriptor)
        raise


def _receive_exactly(connection: socket.socket, count: int, *, allow_eof: bool) -> bytes | None:
    parts: list[bytes] = []
    remaining = count
    while remaining:
        part = connection.recv(remaining)
        if not part:
            if allow_eof and remaining == count:
                return None
            raise LocalReadError("the chunk socket closed mid-frame")
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)
