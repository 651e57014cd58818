"""Where an object's chunks live: rendezvous hashing spread across regions (pure functions).

Rules:

- **Score.** ``score(key, node_id)`` is the first 8 bytes of
  ``sha256(key + "\\x00" + node_id)``, big-endian: rendezvous (highest
  random weight) hashing, Thaler and Ravishankar 1998. Every node computes
  the same scores from the same inputs, in any process (no ``hash()``).
- **Rank.** ``rank(key, candidates)`` orders every candidate: first the
  best-scoring node of each region, in the order of those nodes' scores,
  then every other node by score. Ties (a 2^-64 event) break by node id.
  Nodes without a ``region`` label share the region ``""``.
- **Holders.** The first ``replicas`` of the ranking hold the key: as many
  regions as there are replicas (or regions), then the best of the rest.
- **Stability.** Removing a node that is not among the first R leaves the
  first R unchanged (its region's next-best node scores lower than it did,
  so cannot overtake a holder); adding a node changes the first R only if
  the new node enters them. With plain HRW that is about R/N of the keys
  per node added or removed: the minimum any placement can move.
- ``replicas_for(live_count, replicas_wanted)``: fewer live nodes than
  wanted replicas means fewer replicas; the caller warns when that happens.

Cost: one SHA-256 per candidate per key. Callers with many keys bound how
many they rank per tick (``moot.core.repair``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

SCORE_BYTES = 8
"""Bytes of the digest a score keeps: 64 bits make ties negligible."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A live node that may hold data, and the region it is in (its ``region`` label)."""

    node_id: str
    region: str = ""

    def __post_init__(self) -> None:
        if not self.node_id:
            raise ValueError("Candidate.node_id must not be empty")


def score(key: str, node_id: str) -> int:
    """The rendezvous weight of ``node_id`` for ``key`` (higher is preferred)."""
    digest = hashlib.sha256(f"{key}\x00{node_id}".encode()).digest()
    return int.from_bytes(digest[:SCORE_BYTES], "big")


def rank(key: str, candidates: Sequence[Candidate]) -> list[str]:
    """Every candidate's node id, best holder first, region-spread (module doc)."""
    scored = sorted(
        ((score(key, candidate.node_id), candidate.node_id, candidate.region) for candidate in candidates),
        key=lambda item: (-item[0], item[1]),
    )
    leaders: list[str] = []
    others: list[str] = []
    regions_seen: dict[str, None] = {}
    for _, node_id, region in scored:
        if region in regions_seen:
            others.append(node_id)
        else:
            regions_seen[region] = None
            leaders.append(node_id)
    ranking = leaders + others
    assert len(set(ranking)) == len(candidates), "candidates must have distinct node ids"
    return ranking


def holders(key: str, candidates: Sequence[Candidate], replicas: int) -> list[str]:
    """The ``replicas`` desired holders of ``key`` (fewer if there are fewer candidates)."""
    assert replicas >= 1, replicas
    return rank(key, candidates)[:replicas]


def replicas_for(live_count: int, replicas_wanted: int) -> int:
    """How many replicas to keep with ``live_count`` live nodes: ``min`` of the two.

    The caller warns when this is below ``replicas_wanted``.
    """
    assert live_count >= 0, live_count
    assert replicas_wanted >= 1, replicas_wanted
    return min(live_count, replicas_wanted)


__all__ = ["Candidate", "holders", "rank", "replicas_for", "score"]
