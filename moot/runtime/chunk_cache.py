"""A bounded in-memory LRU of chunk bytes, for the edge cache.

Rules:

- ``bytes_max`` bounds the sum of the cached chunks' sizes. ``put`` evicts
  the least recently used chunks until the new one fits; a chunk larger than
  ``bytes_max`` is not cached at all (and evicts nothing): caching it would
  flush everything else for one item.
- Chunks are content-addressed, so a chunk id always names the same bytes:
  a ``put`` of a cached id only marks it recently used.
- The cache trusts its callers to put verified bytes (it does not re-hash:
  that would cost as much as the fetch it saves).
- Not thread-safe: one asyncio loop owns it.
"""

from __future__ import annotations

from collections import OrderedDict

from moot.runtime.chunk_store import check_chunk_id


class ChunkCache:
    """Least-recently-used chunk bytes, at most ``bytes_max`` of them."""

    def __init__(self, bytes_max: int) -> None:
        """``bytes_max``: the cap on the sum of cached chunk sizes (0 disables)."""
        if bytes_max < 0:
            raise ValueError(f"bytes_max must be >= 0, not {bytes_max}")
        self.bytes_max = bytes_max
        # Oldest first: move_to_end on use, popitem(last=False) to evict.
        self._chunks: OrderedDict[str, bytes] = OrderedDict()
        self._used_bytes = 0
        # Counters for metrics, monotonic since construction.
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.oversize_rejections = 0  # puts of a chunk larger than bytes_max

    @property
    def used_bytes(self) -> int:
        """Sum of the cached chunks' sizes."""
        return self._used_bytes

    def __len__(self) -> int:
        """Number of cached chunks."""
        return len(self._chunks)

    def __contains__(self, chunk_id: object) -> bool:
        """Whether the chunk is cached; does not count as a use, hit or miss."""
        return chunk_id in self._chunks

    def get(self, chunk_id: str) -> bytes | None:
        """The cached bytes (now the most recently used), or None."""
        data = self._chunks.get(chunk_id)
        if data is None:
            self.misses += 1
            return None
        self.hits += 1
        self._chunks.move_to_end(chunk_id)
        return data

    def put(self, chunk_id: str, data: bytes) -> bool:
        """Cache ``data`` as the most recently used chunk, evicting the least
        recently used ones until it fits. False if it is too large to cache
        (larger than ``bytes_max``); True if cached (or already was)."""
        check_chunk_id(chunk_id)
        if chunk_id in self._chunks:
            assert len(self._chunks[chunk_id]) == len(data), "a chunk id names fixed bytes"
            self._chunks.move_to_end(chunk_id)
            return True
        if len(data) > self.bytes_max:
            self.oversize_rejections += 1
            return False
        while self._used_bytes + len(data) > self.bytes_max:
            _, evicted = self._chunks.popitem(last=False)
            self._used_bytes -= len(evicted)
            self.evictions += 1
        self._chunks[chunk_id] = data
        self._used_bytes += len(data)
        assert self._used_bytes <= self.bytes_max
        return True

    def discard(self, chunk_id: str) -> bool:
        """Drop the chunk (say, found corrupt or deleted); False if not cached.
        Not counted as an eviction."""
        data = self._chunks.pop(chunk_id, None)
        if data is None:
            return False
        self._used_bytes -= len(data)
        return True

    def clear(self) -> None:
        """Drop every chunk; the counters keep counting."""
        self._chunks.clear()
        self._used_bytes = 0
