"""The simulated network: delay, loss, duplication, reordering, partitions.

Rules:

- Endpoints are address strings (``"n3:7000"``), each placed in a region.
  The one-way delay of a message is ``latency_ms[region(src)][region(dst)]``
  plus a jitter drawn uniformly from ``[0, jitter_ms]``. Jitter is what
  reorders messages: two messages on one link may overtake each other.
- Each copy of a message is lost with ``loss_probability``; a sent message
  is duplicated (a second copy with its own delay) with
  ``duplicate_probability``.
- Partitions drop messages before they enter the wire. Three kinds, all
  active together until ``heal``:
  symmetric groups (``partition``: members of different groups cannot talk;
  addresses not named form one more group), directed pairs (``block``) and
  one-way group cuts (``block_one_way``: sources cannot reach destinations,
  the reverse direction still works).
- A *slow* endpoint (``set_slow``) models a member under CPU pressure: it
  reads its socket late and its replies leave late, so every copy sent by
  or to it takes a further delay drawn uniformly from its
  ``[delay_ms_min, delay_ms_max]``, once per slow end. Its timers still
  fire on time. (Used by ``bench/membership_sim.py``.)
- Every random draw comes from the one ``rng`` given at construction, in
  send order, so the same sends give the same fates. Slow endpoints draw
  only for their own messages: with none, the draws are what they were.
- With ``wire_roundtrip`` every message is encoded and decoded through
  ``moot.core.wire`` (proving it survives the wire) and its bytes counted.
  It is off by default: a 10,000-node run cannot afford it.

The network decides fates; the world owns the event queue and delivers.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from moot.core import wire

NO_DELIVERY: Final[tuple[int, ...]] = ()


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """Static properties of the simulated network."""

    regions: tuple[str, ...] = ("local",)
    """Region names; ``latency_ms`` is indexed in this order."""

    latency_ms: tuple[tuple[int, ...], ...] = ((1,),)
    """One-way base delay between regions, ``latency_ms[src][dst]``."""

    jitter_ms: int = 0
    """Extra delay drawn uniformly from ``[0, jitter_ms]`` per copy."""

    wire_roundtrip: bool = False
    """Encode and decode every message through ``moot.core.wire`` and count
    bytes. Off by default: it costs more than the rest of a send."""

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        if len(self.latency_ms) != len(self.regions):
            raise ValueError("NetworkConfig.latency_ms needs one row per region")
        for row in self.latency_ms:
            if len(row) != len(self.regions):
                raise ValueError("NetworkConfig.latency_ms needs one column per region")
            if any(delay < 0 for delay in row):
                raise ValueError("NetworkConfig.latency_ms entries must be >= 0")
        if self.jitter_ms < 0:
            raise ValueError("NetworkConfig.jitter_ms must be >= 0")


class EndpointStats:
    """Traffic counters of one address (bytes only with ``wire_roundtrip``; the
    world counts deliveries per node)."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "messages_dropped",
        "messages_sent",
    )

    def __init__(self) -> None:
        self.messages_sent = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.messages_dropped = 0


class Network:
    """Fates of messages between addresses (see module doc)."""

    def __init__(self, config: NetworkConfig, rng: random.Random) -> None:
        config.validate()
        self.config = config
        self._rng = rng
        self._region_index = {name: index for index, name in enumerate(config.regions)}
        self._region_of: dict[str, int] = {}
        self.stats: dict[str, EndpointStats] = {}
        self.loss_probability = 0.0
        self.duplicate_probability = 0.0
        self._jitter_ms = config.jitter_ms
        # Partition state; ``_partitioned`` is the fast path's one check.
        self._partitioned = False
        self._group_of: dict[str, int] = {}
        self._blocked_pairs: set[tuple[str, str]] = set()
        self._one_way: list[tuple[frozenset[str], frozenset[str]]] = []
        # Extra one-way delay range of each slow endpoint (``set_slow``).
        self._slow_ms: dict[str, tuple[int, int]] = {}
        self.messages_total = 0
        self.bytes_total = 0

    # -- endpoints -----------------------------------------------------------

    def add_endpoint(self, address: str, region: str) -> None:
        """Place ``address`` in ``region``; each address is added once."""
        assert address not in self._region_of, address
        if region not in self._region_index:
            raise ValueError(f"unknown region {region!r}: choose one of {', '.join(self.config.regions)}")
        self._region_of[address] = self._region_index[region]
        self.stats[address] = EndpointStats()

    def region_of(self, address: str) -> str:
        """The region ``address`` was placed in."""
        return self.config.regions[self._region_of[address]]

    # -- faults ----------------------------------------------------------------

    def set_loss(self, probability: float) -> None:
        """Drop each copy of each message with ``probability``."""
        assert 0.0 <= probability <= 1.0, probability
        self.loss_probability = probability

    def set_duplication(self, probability: float) -> None:
        """Send a second copy of each message with ``probability``."""
        assert 0.0 <= probability <= 1.0, probability
        self.duplicate_probability = probability

    def set_slow(self, address: str, delay_ms_min: int, delay_ms_max: int) -> None:
        """Delay every copy sent by or to ``address`` by a further ``[min, max]`` ms; ``0, 0`` clears it."""
        assert address in self._region_of, address
        assert 0 <= delay_ms_min <= delay_ms_max, (delay_ms_min, delay_ms_max)
        if delay_ms_max == 0:
            self._slow_ms.pop(address, None)
        else:
            self._slow_ms[address] = (delay_ms_min, delay_ms_max)

    def partition(self, groups: Sequence[Sequence[str]]) -> None:
        """Cut the network into ``groups`` (symmetric); unnamed addresses form one more group."""
        group_of: dict[str, int] = {}
        for index, group in enumerate(groups):
            for address in group:
                assert address not in group_of, f"{address} is in two groups"
                group_of[address] = index
        self._group_of = group_of
        self._update_partitioned()

    def block(self, source: str, destination: str) -> None:
        """Drop every message from ``source`` to ``destination`` (one direction)."""
        self._blocked_pairs.add((source, destination))
        self._update_partitioned()

    def block_one_way(self, sources: Sequence[str], destinations: Sequence[str]) -> None:
        """Drop every message from any of ``sources`` to any of ``destinations``."""
        self._one_way.append((frozenset(sources), frozenset(destinations)))
        self._update_partitioned()

    def heal(self) -> None:
        """Remove every partition and block (loss and duplication stay as set)."""
        self._group_of = {}
        self._blocked_pairs = set()
        self._one_way = []
        self._update_partitioned()

    @property
    def partitioned(self) -> bool:
        """True while any partition or block is in force."""
        return self._partitioned

    def _update_partitioned(self) -> None:
        self._partitioned = bool(self._group_of or self._blocked_pairs or self._one_way)

    def is_blocked(self, source: str, destination: str) -> bool:
        """True if a partition or block drops messages from ``source`` to ``destination``."""
        if not self._partitioned or source == destination:
            return False
        if self._group_of and self._group_of.get(source, -1) != self._group_of.get(destination, -1):
            return True
        if (source, destination) in self._blocked_pairs:
            return True
        return any(source in sources and destination in destinations for sources, destinations in self._one_way)

    # -- sending -----------------------------------------------------------------

    def route(self, now_ms: int, source: str, destination: str) -> tuple[int, ...]:
        """Global delivery times of the copies of one message (empty: all lost).

        The caller (the world) has already checked that ``destination`` is a
        known address.
        """
        stats = self.stats[source]
        stats.messages_sent += 1
        self.messages_total += 1
        if self._partitioned and self.is_blocked(source, destination):
            stats.messages_dropped += 1
            return NO_DELIVERY
        rng = self._rng
        copies = 2 if self.duplicate_probability and rng.random() < self.duplicate_probability else 1
        base_ms = now_ms + self.config.latency_ms[self._region_of[source]][self._region_of[destination]]
        times: tuple[int, ...] = NO_DELIVERY
        for _ in range(copies):
            if self.loss_probability and rng.random() < self.loss_probability:
                stats.messages_dropped += 1
                continue
            delay_ms = int(rng.random() * (self._jitter_ms + 1)) if self._jitter_ms else 0
            if self._slow_ms:
                delay_ms += self._slow_delay_ms(source) + self._slow_delay_ms(destination)
            times = (*times, base_ms + delay_ms)
        return times

    def _slow_delay_ms(self, address: str) -> int:
        delay_range = self._slow_ms.get(address)
        if delay_range is None:
            return 0
        low_ms, high_ms = delay_range
        return low_ms + int(self._rng.random() * (high_ms - low_ms + 1))

    def encode(self, source: str, message: Any) -> bytes:
        """Encode ``message`` for the wire and count its bytes as sent by ``source``.

        Raises ``wire.LocalProtocolError`` if it cannot be encoded: a bug in
        the core that built it.
        """
        body = wire.encode(cast(wire.Message, message))
        size = len(body) + wire.FRAME_HEADER_BYTES
        self.stats[source].bytes_sent += size
        self.bytes_total += size
        return body

    def decode(self, destination: str, body: bytes) -> Any:
        """Decode what arrived at ``destination``; ``wire.RemoteProtocolError`` if it is malformed."""
        self.stats[destination].bytes_received += len(body) + wire.FRAME_HEADER_BYTES
        return wire.decode(body)

    def describe(self) -> str:
        """A one-line summary of the current fault settings for the run log."""
        return (
            f"loss={self.loss_probability:.3f} duplication={self.duplicate_probability:.3f} "
            f"jitter_ms={self._jitter_ms} partitioned={self._partitioned}"
        )
