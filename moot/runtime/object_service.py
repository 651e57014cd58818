"""The object store of one node: holds chunks, places and fetches them, serves clients.

Every node runs this service; none is special. What it does:

- **Holds** chunks durably in its ``ChunkStore`` (``data_dir/chunks``) and
  answers other nodes' ``ChunkStore`` / ``ChunkGet`` / ``ChunkHas``.
- **Places.** A client uploads each chunk to any node (the *coordinator*,
  normally the one nearest to it); the coordinator stores it on the R
  holders that rendezvous hashing picks among live members
  (``moot.core.placement``), falling back to the next ranked member when a
  holder fails (disk full, down), and answers only when R holders — or
  ``write_quorum`` — have it on disk. The manifest is placed the same way
  (its id is the object id), and only then is the object committed.
- **Fetches** for readers: its edge cache, its own disk, then the ranked
  holders nearest first (Vivaldi RTT), verifying every chunk against its
  id; a holder that served bad bytes is told (``ChunkBad``) and drops them,
  and repair restores a good copy. Chunks it served to a client stay in its
  bounded LRU cache, so the next reader nearby is served locally.

Node-to-node requests ride the node transport (fire-and-forget frames); this
service matches replies to requests by ``request_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final

from moot.core import kv as kv_core
from moot.core import objects, placement, wire
from moot.core.objects import CorruptData
from moot.core.repair import Effects, RepairConfig, RepairPlanner
from moot.runtime.chunk_cache import ChunkCache
from moot.runtime.chunk_store import ChunkMismatchError, ChunkStore, ChunkStoreFullError, Scrubber
from moot.runtime.kv_service import KvService
from moot.runtime.local_reads import LocalChunkServer
from moot.runtime.logs import StructuredLogger, log_event
from moot.runtime.transport import Peer, Transport

REPLICAS_DEFAULT: Final = 3
PEER_TIMEOUT_S: Final = 10.0  # a 4 MiB chunk to a busy peer on a slow link
UNREACHABLE_S: Final = 3.0  # a member whose connection just closed is skipped this long (membership decides after)
FETCH_CANDIDATES_EXTRA: Final = 3  # beyond the R holders, ranked nodes tried when reading
CACHE_BYTES_DEFAULT: Final = 256 * 1024 * 1024
CHUNKS_DIR: Final = "chunks"
SCRUB_BYTES_PER_SECOND_DEFAULT: Final = 16 * 1024 * 1024  # a full re-hash of 1 TB in under a day, ~5% of a core
SCRUB_INTERVAL_S: Final = 1.0
GC_GRACE_S_DEFAULT: Final = 3_600.0  # an unreferenced object lives an hour: long enough for any in-flight job
GC_INTERVAL_S_MAX: Final = 60.0
GC_DELETES_PER_PASS_MAX: Final = 1_000


def _range_all(state: kv_core.KvState, prefix: bytes) -> list[kv_core.KeyValue]:
    """Every key under ``prefix`` in this node's applied state, page by page."""
    found: list[kv_core.KeyValue] = []
    after = b""
    while True:
        page, more = state.range(prefix, kv_core.RANGE_LIMIT_MAX, after=after)
        found.extend(page)
        if not more or not page:
            return found
        after = page[-1].key


def monotonic_ms() -> int:
    """The clock the repair planner sees."""
    return int(time.monotonic() * 1000)


class ObjectError(Exception):
    """An object operation failed; the message says why and what to do."""


class ObjectNotFound(ObjectError):
    """No live node holds the object or chunk."""


class SkipList:
    """Peers to skip for a while (their connection closed, or they did not
    answer). Every question checks the time: a peer is skipped for
    ``period_s`` after its last mark, never longer (found: a peer marked
    once stayed skipped for good when only repair talked to it, because
    only the write path pruned the marks, and its repair stalled)."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._until: dict[str, float] = {}

    def mark(self, node_id: str, now_s: float) -> None:
        self._until[node_id] = now_s + self.period_s

    def skipped(self, node_id: str, now_s: float) -> bool:
        until = self._until.get(node_id)
        if until is None:
            return False
        if until <= now_s:
            del self._until[node_id]
            return False
        return True


class ObjectService:
    """Chunks on this node, and placing/fetching them across the federation."""

    def __init__(
        self,
        *,
        node_id: str,
        data_dir: Path,
        transport: Transport,
        address_of: Callable[[str], str | None],
        live_members: Callable[[], Sequence[placement.Candidate]],
        rtt_ms: Callable[[str], float | None],
        logger: StructuredLogger,
        replicas: int = REPLICAS_DEFAULT,
        write_quorum: int | None = None,
        cache_bytes: int = CACHE_BYTES_DEFAULT,
        capacity_bytes: int | None = None,
        region: str = "",
        repair_config: RepairConfig | None = None,
        scrub_bytes_per_second: int = SCRUB_BYTES_PER_SECOND_DEFAULT,
        gc_grace_s: float = GC_GRACE_S_DEFAULT,
    ) -> None:
        self.node_id = node_id
        self.transport = transport
        self.log = logger
        self.replicas = replicas
        self.write_quorum = write_quorum or replicas
        self._address_of = address_of
        self._live_members = live_members
        self._rtt_ms = rtt_ms
        self.store = ChunkStore.open(data_dir / CHUNKS_DIR, capacity_bytes=capacity_bytes)
        self.cache = ChunkCache(cache_bytes)
        self.local_reads = LocalChunkServer(self.store, node_id, logger)
        self.local_reads.start()
        self._request_ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[wire.Message]] = {}
        self._pending_target: dict[int, str] = {}
        self._unreachable = SkipList(UNREACHABLE_S)
        self._tasks: set[asyncio.Task[None]] = set()
        self.bad_replicas_reported = 0
        self.repairs_pushed = 0
        self.copies_dropped = 0
        self.planner = RepairPlanner(
            repair_config or RepairConfig(replicas=replicas), node_id=node_id, region=region, now_ms=monotonic_ms()
        )
        for chunk in self.store.ids():
            self.planner.add_local(chunk)
        self.scrubber = Scrubber(self.store, scrub_bytes_per_second)
        self._wake = asyncio.Event()
        self.gc_grace_s = gc_grace_s
        self.kv: KvService | None = None  # set by the node: references live in the database
        self._manifests: dict[str, objects.Manifest] = {}  # immutable: cached for the collector
        self.objects_collected = 0
        self.chunks_collected = 0

    # -- placement --------------------------------------------------------------------

    def live(self) -> list[placement.Candidate]:
        """Members alive in membership, minus those whose connection just
        closed (a killed node is seen at once; membership takes seconds)."""
        now = time.monotonic()
        return [c for c in self._live_members() if not self._unreachable.skipped(c.node_id, now)]

    def replicas_now(self) -> tuple[int, list[placement.Candidate]]:
        """How many replicas a write gets now, and the live members."""
        live = self.live()
        return placement.replicas_for(len(live), self.replicas), live

    def ranked(self, key: str) -> list[str]:
        """Every live member in this key's rendezvous order (holders first)."""
        return placement.rank(key, self.live())

    def peer_lost(self, node_id: str) -> None:
        """``node_id``'s connection closed: skip it for a while and fail our
        requests to it now rather than at their timeout."""
        if node_id == self.node_id:
            return
        self._unreachable.mark(node_id, time.monotonic())
        for request_id, target in list(self._pending_target.items()):
            future = self._pending.get(request_id)
            if target == node_id and future is not None and not future.done():
                future.set_exception(ObjectError(f"{node_id} went away"))

    # -- client requests --------------------------------------------------------------

    def on_client_request(self, peer: Peer, message: wire.Message) -> None:
        """A client's object request: answered asynchronously on its connection."""
        self._spawn(self._answer_client(peer, message))

    async def _answer_client(self, peer: Peer, message: wire.Message) -> None:
        request_id = getattr(message, "request_id", 0)
        try:
            reply = await self._client_reply(message)
        except ObjectNotFound as error:
            reply = wire.ErrorReply(request_id=request_id, kind="NotFound", message=wire.reason(str(error)))
        except (ObjectError, CorruptData, objects.BadObjectId) as error:
            reply = wire.ErrorReply(request_id=request_id, kind="Unavailable", message=wire.reason(str(error)))
        peer.reply(reply)

    async def _client_reply(self, message: wire.Message) -> wire.Message:
        if isinstance(message, wire.ChunkUpload):
            await asyncio.to_thread(objects.verify_chunk, message.chunk_id, message.data)
            holders = await self.store_replicated(message.chunk_id, message.data)
            return wire.ChunkUploaded(request_id=message.request_id, chunk_id=message.chunk_id, holders=tuple(holders))
        if isinstance(message, wire.ObjectCommit):
            return await self._commit(message)
        if isinstance(message, wire.ObjectStat):
            manifest_bytes = await self.fetch_chunk(message.object_id)
            objects.decode_manifest(manifest_bytes, message.object_id)
            holders = await self.locate(message.object_id) if message.locate else []
            return wire.ObjectInfo(
                request_id=message.request_id,
                object_id=message.object_id,
                manifest=manifest_bytes,
                holders=tuple(holders),
            )
        if isinstance(message, wire.LocalAccess):
            return self.local_reads.grant(message.request_id)
        if isinstance(message, wire.ChunkFetch):
            data = await self.fetch_chunk(message.chunk_id)
            return wire.ChunkData(request_id=message.request_id, chunk_id=message.chunk_id, data=data)
        raise ObjectError(f"{type(message).__name__} is not an object request")

    async def _commit(self, message: wire.ObjectCommit) -> wire.Message:
        object_id = objects.chunk_id(message.manifest)
        manifest = objects.decode_manifest(message.manifest, object_id)
        replicas, live = self.replicas_now()
        # Every chunk must be on its holders before the object exists.
        missing = await self._missing_chunks(manifest.chunks)
        if missing:
            raise ObjectError(
                f"{len(missing)} of the object's {len(manifest.chunks)} chunks are not stored "
                f"(first: {missing[0][:16]}…); upload them again, then commit"
            )
        await self.store_replicated(object_id, message.manifest)
        warning = ""
        if replicas < self.replicas:
            warning = (
                f"only {len(live)} live members: the object has {replicas} replicas, "
                f"not {self.replicas}; repair adds the rest when members join"
            )
            log_event(self.log, logging.WARNING, "object_under_replicated", object=object_id, replicas=replicas)
        return wire.ObjectCommitted(
            request_id=message.request_id,
            object_id=object_id,
            size=manifest.size,
            replicas=replicas,
            warning=wire.reason(warning),
        )

    async def _missing_chunks(self, chunk_ids: Sequence[str]) -> list[str]:
        """Chunks with no holder among their first ranked live members."""
        by_holder: dict[str, list[str]] = {}
        for chunk in chunk_ids:
            ranked = self.ranked(chunk)
            if ranked:
                by_holder.setdefault(ranked[0], []).append(chunk)
        present: set[str] = set()
        for holder, asked in by_holder.items():
            present.update(await self._held_by(holder, asked))
        # A first-ranked holder that lacks a chunk does not make it missing:
        # ask the rest of its holders, and the fallbacks a failed write used.
        for chunk in [c for c in chunk_ids if c not in present]:
            for holder in self.ranked(chunk)[1 : self.replicas + FETCH_CANDIDATES_EXTRA]:
                if chunk in await self._held_by(holder, [chunk]):
                    present.add(chunk)
                    break
        return [c for c in chunk_ids if c not in present]

    async def _held_by(self, node_id: str, chunk_ids: Sequence[str]) -> set[str]:
        if node_id == self.node_id:
            return {c for c in chunk_ids if self.store.has(c)}
        return {chunk for reply in await self._ask_has(node_id, chunk_ids) for chunk in reply.present}

    async def _ask_has(self, node_id: str, chunk_ids: Sequence[str]) -> list[wire.ChunkHasReply]:
        """Ask ``node_id`` which of ``chunk_ids`` it holds, a message per
        batch; the answers that came (an unanswered batch is left out)."""
        replies = []
        for start in range(0, len(chunk_ids), wire.CHUNK_IDS_PER_MESSAGE_MAX):
            batch = tuple(chunk_ids[start : start + wire.CHUNK_IDS_PER_MESSAGE_MAX])

            def ask(request_id: int, batch: tuple[str, ...] = batch) -> wire.Message:
                return wire.ChunkHas(request_id=request_id, chunk_ids=batch)

            try:
                reply = await self._call(node_id, ask)
            except ObjectError:
                continue
            if isinstance(reply, wire.ChunkHasReply):
                replies.append(reply)
        return replies

    async def locate(self, chunk_id: str) -> list[str]:
        """The live members that hold ``chunk_id`` (asked, not assumed)."""
        candidates = self.ranked(chunk_id)[: self.replicas + FETCH_CANDIDATES_EXTRA]
        answers = await asyncio.gather(*(self._held_by(node, [chunk_id]) for node in candidates))
        return [node for node, held in zip(candidates, answers, strict=True) if chunk_id in held]

    # -- placing and fetching -----------------------------------------------------------

    async def store_replicated(self, chunk_id: str, data: bytes) -> list[str]:
        """Put ``data`` on the R ranked holders (the next ranked when one
        fails); the holders that have it durably, at least ``write_quorum``."""
        replicas, live = self.replicas_now()
        if not live:
            raise ObjectError("no live members to store on; is this node part of a federation?")
        ranked = placement.rank(chunk_id, live)
        wanted = min(replicas, len(ranked))
        quorum = min(self.write_quorum, wanted)
        stored: list[str] = []
        errors: list[str] = []
        position = 0
        while len(stored) < wanted and position < len(ranked):
            batch = ranked[position : position + wanted - len(stored)]
            position += len(batch)
            results = await asyncio.gather(*(self._store_on(node, chunk_id, data) for node in batch))
            for node, error in zip(batch, results, strict=True):
                if error:
                    errors.append(f"{node}: {error}")
                else:
                    stored.append(node)
        if len(stored) < quorum:
            raise ObjectError(
                f"chunk {chunk_id[:16]}… reached {len(stored)} of the {quorum} holders it needs: "
                + "; ".join(errors[:5])
            )
        return stored

    async def _store_on(self, node_id: str, chunk_id: str, data: bytes) -> str:
        """Store on one node; "" on success, else why not."""
        if node_id == self.node_id:
            try:
                await asyncio.to_thread(self.store.put, chunk_id, data)
            except ChunkStoreFullError as error:
                return str(error)
            self.planner.add_local(chunk_id)
            return ""
        try:
            reply = await self._call(
                node_id, lambda rid: wire.ChunkStore(request_id=rid, chunk_id=chunk_id, data=data)
            )
        except ObjectError as error:
            return str(error)
        if not isinstance(reply, wire.ChunkStoreReply) or not reply.ok:
            return getattr(reply, "error", "") or f"unexpected {type(reply).__name__}"
        return ""

    async def read_object(self, object_id: str) -> bytes:
        """A whole object's bytes, every chunk verified (for a task's
        arguments or function: objects a worker needs in memory anyway)."""
        manifest = objects.decode_manifest(await self.fetch_chunk(object_id), object_id)
        if not manifest.chunks:
            return manifest.inline
        parts = await asyncio.gather(*(self.fetch_chunk(chunk) for chunk in manifest.chunks))
        return b"".join(parts)

    async def put_object(self, data: bytes) -> str:
        """Store ``data`` as an object on its holders (a task's result); its id.
        The caller records it in the database (the task table does, with
        the result that names it)."""
        object_id, manifest_bytes, chunks = await asyncio.to_thread(objects.split, data)
        for chunk, chunk_data in chunks:
            await self.store_replicated(chunk, chunk_data)
        await self.store_replicated(object_id, manifest_bytes)
        return object_id

    async def fetch_chunk(self, chunk_id: str) -> bytes:
        """``chunk_id``'s bytes, verified: cache, own disk, then the nearest holders."""
        objects.validate_object_id(chunk_id)
        cached = self.cache.get(chunk_id)
        if cached is not None:
            return cached
        local = await asyncio.to_thread(self.store.get, chunk_id, verify=True)
        if local is not None:
            return local
        ranked = [n for n in self.ranked(chunk_id) if n != self.node_id]
        holders = ranked[: self.replicas]
        others = ranked[self.replicas : self.replicas + FETCH_CANDIDATES_EXTRA]
        holders.sort(key=lambda node: (self._rtt_ms(node) is None, self._rtt_ms(node) or 0.0))
        problems: list[str] = []
        for node in holders + others:
            try:
                reply = await self._call(node, lambda rid: wire.ChunkGet(request_id=rid, chunk_id=chunk_id))
            except ObjectError as error:
                problems.append(f"{node}: {error}")
                continue
            if not isinstance(reply, wire.ChunkData) or not reply.found:
                continue
            try:
                data = await asyncio.to_thread(objects.verify_chunk, chunk_id, reply.data)
            except CorruptData:
                self.bad_replicas_reported += 1
                log_event(self.log, logging.WARNING, "chunk_bad_replica", chunk=chunk_id, holder=node)
                address = self._address_of(node)
                if address is not None:
                    self.transport.send(address, wire.ChunkBad(chunk_id=chunk_id))
                continue
            self.cache.put(chunk_id, data)
            log_event(self.log, logging.INFO, "chunk_fetched", chunk=chunk_id, holder=node, rtt_ms=self._rtt_ms(node))
            return data
        detail = f" ({'; '.join(problems[:3])})" if problems else ""
        raise ObjectNotFound(f"no live member holds {chunk_id[:16]}…{detail}; check the id")

    # -- peer requests ---------------------------------------------------------------------

    def on_peer_message(self, peer: Peer, message: wire.Message) -> None:
        """A request from another node, or a reply to one of ours."""
        if isinstance(message, wire.ObjectReplyTypes):
            future = self._pending.pop(message.request_id, None)
            if future is not None and not future.done():
                future.set_result(message)
            return
        if isinstance(message, wire.ChunkStore | wire.ChunkGet | wire.ChunkBad):
            # Disk and hashing off the event loop: 4 MiB per chunk would stall
            # heartbeats (measured: repair of 1 GB made nodes suspect each
            # other and Raft change leaders twice).
            self._spawn(self._answer_peer(peer, message))
        elif isinstance(message, wire.ChunkHas):
            present = tuple(c for c in message.chunk_ids if self.store.has(c))
            held = set(present)
            absent = tuple(c for c in message.chunk_ids if c not in held)
            self.transport.send(
                peer.address, wire.ChunkHasReply(request_id=message.request_id, present=present, absent=absent)
            )

    async def _answer_peer(self, peer: Peer, message: wire.ChunkStore | wire.ChunkGet | wire.ChunkBad) -> None:
        if isinstance(message, wire.ChunkStore):
            reply: wire.Message
            try:
                await asyncio.to_thread(self._verify_and_put, message.chunk_id, message.data)
                self.planner.add_local(message.chunk_id)
                reply = wire.ChunkStoreReply(request_id=message.request_id, chunk_id=message.chunk_id, ok=True)
            except (CorruptData, ChunkMismatchError, ChunkStoreFullError) as error:
                reply = wire.ChunkStoreReply(
                    request_id=message.request_id, chunk_id=message.chunk_id, ok=False, error=wire.reason(str(error))
                )
            self.transport.send(peer.address, reply)
        elif isinstance(message, wire.ChunkGet):
            data = await asyncio.to_thread(self.store.get, message.chunk_id)
            self.transport.send(
                peer.address,
                wire.ChunkData(
                    request_id=message.request_id,
                    chunk_id=message.chunk_id,
                    data=data or b"",
                    found=data is not None,
                ),
            )
        elif self.store.has(message.chunk_id) and (
            # Check our copy ourselves: a liar cannot make us drop good bytes.
            await asyncio.to_thread(self.store.get, message.chunk_id, verify=True) is None
        ):
            log_event(self.log, logging.WARNING, "chunk_corrupt_dropped", chunk=message.chunk_id, reporter=peer.node_id)

    def _verify_and_put(self, chunk_id: str, data: bytes) -> None:
        objects.verify_chunk(chunk_id, data)
        self.store.put(chunk_id, data)

    async def _call(self, node_id: str, build: Callable[[int], wire.Message]) -> wire.Message:
        address = self._address_of(node_id)
        if address is None:
            raise ObjectError(f"no address known for {node_id}")
        if self._unreachable.skipped(node_id, time.monotonic()):
            raise ObjectError(f"{node_id} is unreachable (its connection closed)")
        request_id = next(self._request_ids)
        future: asyncio.Future[wire.Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._pending_target[request_id] = node_id
        try:
            self.transport.send(address, build(request_id))
            async with asyncio.timeout(PEER_TIMEOUT_S):
                return await future
        except TimeoutError:
            self._unreachable.mark(node_id, time.monotonic())
            raise ObjectError(f"{node_id} did not answer within {PEER_TIMEOUT_S:.0f}s") from None
        finally:
            self._pending.pop(request_id, None)
            self._pending_target.pop(request_id, None)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- repair and scrub ---------------------------------------------------------------

    def members_changed(self) -> None:
        """Membership changed: holders of some chunks moved (repair looks)."""
        self.planner.set_members(monotonic_ms(), list(self._live_members()))  # membership's word, not hints
        self._wake.set()

    async def run(self) -> None:
        """Repair, scrub and collect garbage until cancelled (the node's task group runs this)."""
        self.members_changed()
        self._spawn(self._collect_forever())
        next_scrub = time.monotonic()
        while True:
            delay_s = max(0.0, (self.planner.next_deadline_ms() - monotonic_ms()) / 1000)
            delay_s = min(delay_s, max(0.0, next_scrub - time.monotonic()))
            if delay_s > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay_s):
                        await self._wake.wait()
            if time.monotonic() >= next_scrub:
                next_scrub = time.monotonic() + SCRUB_INTERVAL_S
                step = self.scrubber.step(time.monotonic())
                for chunk in step.corrupt:
                    log_event(self.log, logging.WARNING, "chunk_scrub_corrupt", chunk=chunk)
            for chunk in self.store.take_corrupt():
                # Quarantined. Fetch a good copy back at once rather than
                # wait for the owner's next question (knowledge_ttl_ms).
                self.planner.remove_local(chunk)
                self._spawn(self._heal_local(chunk))
            now = monotonic_ms()
            if now >= self.planner.next_deadline_ms():
                self._carry_out_repair(self.planner.tick(now))

    def _carry_out_repair(self, effects: Effects) -> None:
        for node, chunk_ids in effects.queries.items():
            self._spawn(self._repair_query(node, chunk_ids))
        for chunk, target in effects.pushes:
            self._spawn(self._repair_push(chunk, target))
        for chunk in effects.drops:
            if self.store.delete(chunk):
                self.copies_dropped += 1

    async def _repair_query(self, node_id: str, chunk_ids: list[str]) -> None:
        # Unanswered batches need nothing: the planner asks again after its query timeout.
        for reply in await self._ask_has(node_id, chunk_ids):
            self.planner.on_has_reply(monotonic_ms(), node_id, reply.present, reply.absent)
            self._wake.set()

    async def _heal_local(self, chunk_id: str) -> None:
        """Replace a quarantined local copy with a verified one from its holders."""
        self.cache.discard(chunk_id)
        try:
            data = await self.fetch_chunk(chunk_id)
        except ObjectError as error:
            log_event(self.log, logging.WARNING, "chunk_heal_failed", chunk=chunk_id, reason=str(error))
            return
        try:
            await asyncio.to_thread(self.store.put, chunk_id, data)
        except ChunkStoreFullError as error:
            log_event(self.log, logging.WARNING, "chunk_heal_failed", chunk=chunk_id, reason=str(error))
            return
        self.planner.add_local(chunk_id)
        self.repairs_pushed += 1
        log_event(self.log, logging.INFO, "chunk_healed", chunk=chunk_id)

    async def _repair_push(self, chunk_id: str, target: str) -> None:
        data = await asyncio.to_thread(self.store.get, chunk_id, verify=True)
        if data is None:
            self.planner.remove_local(chunk_id)
            return
        error = await self._store_on(target, chunk_id, data)
        self.planner.on_push_result(monotonic_ms(), chunk_id, target, not error)
        if not error:
            self.repairs_pushed += 1
            log_event(self.log, logging.INFO, "chunk_repaired", chunk=chunk_id, target=target)
        self._wake.set()

    # -- garbage -------------------------------------------------------------------------

    async def _collect_forever(self) -> None:
        interval_s = min(GC_INTERVAL_S_MAX, max(0.5, self.gc_grace_s / 4))
        while True:
            await asyncio.sleep(interval_s)  # a period, not a synchronisation
            try:
                await self.collect_garbage()
            except ObjectError as error:
                log_event(self.log, logging.WARNING, "gc_pass_failed", reason=str(error))

    async def collect_garbage(self) -> None:
        """One pass: the leader drops records of unreferenced objects past
        their grace; every node deletes local chunks that no recorded object
        uses and that are older than the grace period. References are read
        from this node's copy of the database, only while it follows a
        leader and has applied all it knows committed (a node cut off for
        long must not judge what is garbage)."""
        kv = self.kv
        if kv is None:
            return
        raft = kv.server.raft
        if raft.leader_id is None or raft.applied_index < raft.commit_index:
            return
        state = kv.server.state
        now_ms = int(time.time() * 1000)
        grace_ms = int(self.gc_grace_s * 1000)
        records: dict[str, objects.ObjectRecord] = {}
        for item in _range_all(state, objects.OBJECT_KEY_PREFIX):
            record = objects.decode_record(item.value)
            if record is not None:
                records[item.key[len(objects.OBJECT_KEY_PREFIX) :].decode("ascii", "replace")] = record
        references = [item.key for prefix in (objects.PIN_KEY_PREFIX, objects.REF_KEY_PREFIX) for item in _range_all(state, prefix)]
        referenced = objects.referenced_ids(references)
        if raft.role == "leader":
            for object_id in objects.collectable(records, referenced, now_ms, grace_ms)[:GC_DELETES_PER_PASS_MAX]:
                result = await kv.write_internal(kv_core.Delete(objects.OBJECT_KEY_PREFIX + object_id.encode()))
                if result is not None and result.succeeded:
                    self.objects_collected += 1
                    records.pop(object_id, None)
                    log_event(self.log, logging.INFO, "object_collected", object=object_id)
        live: set[str] = set()
        for object_id in records:
            live.add(object_id)
            manifest = self._manifests.get(object_id)
            if manifest is None:
                manifest = objects.decode_manifest(await self.fetch_chunk(object_id), object_id)
                self._manifests[object_id] = manifest
            live.update(manifest.chunks)
        for gone in [m for m in self._manifests if m not in records]:
            del self._manifests[gone]
        deleted = 0
        for chunk in self.store.ids():
            if deleted >= GC_DELETES_PER_PASS_MAX:
                break
            mtime_ms = self.store.mtime_ms(chunk)
            if chunk in live or mtime_ms is None or now_ms - mtime_ms < grace_ms:
                continue
            if self.store.delete(chunk):
                self.planner.remove_local(chunk)
                self.cache.discard(chunk)
                deleted += 1
        self.chunks_collected += deleted

    def stats(self) -> dict[str, int]:
        """Counters for ``moot status`` and metrics."""
        return {
            "chunks": self.store.count,
            "chunk_bytes": self.store.used_bytes,
            "repairs_pushed": self.repairs_pushed,
            "copies_dropped": self.copies_dropped,
            "bad_replicas_reported": self.bad_replicas_reported,
            "scrub_bytes": self.scrubber.bytes_scrubbed,
            "scrub_corrupt": self.scrubber.corrupt_found,
            "corrupt_found": self.store.corrupt_count,  # copies on this disk found bad, by any check
            "cache_bytes": self.cache.used_bytes,
            "cache_hits": self.cache.hits,
            "objects_collected": self.objects_collected,
            "chunks_collected": self.chunks_collected,
            "local_opens": self.local_reads.opened,
        }

    def close(self) -> None:
        """Cancel requests in flight and close the store."""
        for task in list(self._tasks):
            task.cancel()
        for future in self._pending.values():
            if not future.done():
                future.cancel()
        self.local_reads.close()
        self.store.close()
