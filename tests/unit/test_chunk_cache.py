"""Edge chunk cache (moot/runtime/chunk_cache.py): LRU order, eviction by
bytes, oversize items, counters."""

from __future__ import annotations

import hashlib

import pytest

from moot.runtime.chunk_cache import ChunkCache


def chunk(tag: int, size_bytes: int = 100) -> tuple[str, bytes]:
    """A distinct chunk of exactly ``size_bytes`` bytes, and its id."""
    data = (f"chunk-{tag:06d}-".encode() * size_bytes)[:size_bytes]
    return hashlib.sha256(data).hexdigest(), data


def test_get_put_and_counters() -> None:
    cache = ChunkCache(bytes_max=1_000)
    chunk_id, data = chunk(1)
    assert cache.get(chunk_id) is None
    assert chunk_id not in cache
    assert cache.put(chunk_id, data)
    assert chunk_id in cache
    assert len(cache) == 1
    assert cache.used_bytes == 100
    assert cache.get(chunk_id) == data
    assert cache.get(chunk_id) == data
    assert (cache.hits, cache.misses, cache.evictions) == (2, 1, 0)
    assert cache.put(chunk_id, data)  # again: no double counting
    assert cache.used_bytes == 100
    assert len(cache) == 1


def test_evicts_least_recently_used_until_it_fits() -> None:
    cache = ChunkCache(bytes_max=300)
    (a_id, a), (b_id, b), (c_id, c), (d_id, d) = (chunk(tag) for tag in range(4))
    for chunk_id, data in ((a_id, a), (b_id, b), (c_id, c)):
        cache.put(chunk_id, data)
    assert cache.get(a_id) == a  # a is now the most recent: b is the least
    cache.put(d_id, d)
    assert b_id not in cache
    assert [chunk_id in cache for chunk_id in (a_id, c_id, d_id)] == [True, True, True]
    assert cache.evictions == 1
    assert cache.used_bytes == 300

    cache.put(c_id, c)  # a re-put is a use: a becomes the least recent
    big_id, big = chunk(9, size_bytes=250)
    cache.put(big_id, big)  # needs 250: evicts a, d, c... only as many as needed
    assert a_id not in cache
    assert d_id not in cache
    assert c_id not in cache
    assert big_id in cache
    assert cache.evictions == 4
    assert cache.used_bytes == 250
    assert len(cache) == 1


def test_item_larger_than_the_cache_is_not_cached_and_evicts_nothing() -> None:
    cache = ChunkCache(bytes_max=300)
    small_id, small = chunk(1)
    cache.put(small_id, small)
    huge_id, huge = chunk(2, size_bytes=301)
    assert cache.put(huge_id, huge) is False
    assert huge_id not in cache
    assert small_id in cache
    assert cache.evictions == 0
    assert cache.oversize_rejections == 1
    exact_id, exact = chunk(3, size_bytes=300)
    assert cache.put(exact_id, exact)  # exactly bytes_max fits
    assert small_id not in cache
    assert cache.used_bytes == 300


def test_discard_and_clear() -> None:
    cache = ChunkCache(bytes_max=1_000)
    (a_id, a), (b_id, b) = chunk(1), chunk(2)
    cache.put(a_id, a)
    cache.put(b_id, b)
    assert cache.discard(a_id)
    assert not cache.discard(a_id)
    assert cache.used_bytes == 100
    assert cache.evictions == 0
    cache.clear()
    assert len(cache) == 0
    assert cache.used_bytes == 0


def test_zero_capacity_caches_nothing_but_the_empty_chunk() -> None:
    cache = ChunkCache(bytes_max=0)
    chunk_id, data = chunk(1)
    assert not cache.put(chunk_id, data)
    empty_id = hashlib.sha256(b"").hexdigest()
    assert cache.put(empty_id, b"")
    assert cache.get(empty_id) == b""


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="bytes_max"):
        ChunkCache(bytes_max=-1)
    with pytest.raises(ValueError, match="64 lowercase hex digits"):
        ChunkCache(bytes_max=10).put("../" + "a" * 61, b"x")
