"""Hybrid logical clocks (Kulkarni, Demirbas, Madappa, Avva and Leone,
"Logical Physical Clocks", OPODIS 2014): timestamps that order a
federation's events by cause, stay close to wall-clock time, and fit in one
integer.

A timestamp is a pair ``(wall_ms, logical)``: ``wall_ms`` is the largest
physical time, in milliseconds, this node has seen on its own clock or in a
message; ``logical`` counts events within that millisecond. Packed as
``wall_ms << LOGICAL_BITS | logical`` — plain ints compare in timestamp order,
travel in 8 bytes, and read as a time (``wall_ms``) for people.

The guarantees (checked by ``tests/sim/test_hlc_sim.py`` over many seeds
with drifting, stepping clocks):

- **monotonic**: every timestamp a clock hands out is larger than the one
  before it, whatever its physical clock does (steps back included);
- **causal**: if event *e* happened before *f* (same node, or *e* sent a
  message *f*'s node received before *f*), then ``hlc(e) < hlc(f)``;
- **close to physical time**: ``wall_ms`` is never behind this node's
  clock and never ahead of the fastest clock in the federation.

The counter has ``LOGICAL_BITS`` bits; should it ever fill within one
millisecond (65,535 events with no clock progress), ``wall_ms`` moves on by
one instead — order is kept, at the cost of a millisecond of drift.

A received timestamp more than ``AHEAD_MS_MAX`` ahead of this node's clock
is not adopted (counted in ``ignored``; CockroachDB refuses such messages):
one machine with a clock set a year ahead — or a forged frame — must not
drag every clock in the federation into the future. Causal order holds
between nodes whose clocks agree within that bound.

Sans-IO: the caller passes its physical time in; nothing here reads a clock.
"""

from __future__ import annotations

import datetime
from typing import Final

LOGICAL_BITS: Final = 16
LOGICAL_MAX: Final = (1 << LOGICAL_BITS) - 1
WALL_MS_MAX: Final = (1 << (63 - LOGICAL_BITS)) - 1  # timestamps fit in a signed 64-bit int
TIMESTAMP_MAX: Final = WALL_MS_MAX << LOGICAL_BITS | LOGICAL_MAX  # 2**63 - 1
AHEAD_MS_MAX: Final = 60_000  # a received stamp further ahead of our clock than this is not adopted


def pack(wall_ms: int, logical: int) -> int:
    """The timestamp ``(wall_ms, logical)`` as one int."""
    if not 0 <= wall_ms <= WALL_MS_MAX or not 0 <= logical <= LOGICAL_MAX:
        raise ValueError(f"not a hybrid timestamp: wall_ms={wall_ms}, logical={logical}")
    return wall_ms << LOGICAL_BITS | logical


def unpack(timestamp: int) -> tuple[int, int]:
    """``(wall_ms, logical)`` of a packed timestamp."""
    if not 0 <= timestamp <= WALL_MS_MAX << LOGICAL_BITS | LOGICAL_MAX:
        raise ValueError(f"not a hybrid timestamp: {timestamp}")
    return timestamp >> LOGICAL_BITS, timestamp & LOGICAL_MAX


def format_timestamp(timestamp: int) -> str:
    """``2026-11-27T17:10:31.482Z+3``: the wall time (UTC, milliseconds) and
    the logical count when it is not 0."""
    wall_ms, logical = unpack(timestamp)
    moment = datetime.datetime.fromtimestamp(wall_ms / 1000, tz=datetime.UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{wall_ms % 1000:03d}Z"
    return f"{text}+{logical}" if logical else text


class Clock:
    """One node's hybrid clock.

    ``tick(physical_ms)`` stamps a local event or a message about to be
    sent; ``observe(physical_ms, remote)`` takes in a received message's
    timestamp and stamps the receipt. Both return the new timestamp."""

    __slots__ = ("_logical", "_wall_ms", "ignored", "max_ahead_ms")

    def __init__(self) -> None:
        self._wall_ms = 0
        self._logical = 0
        self.max_ahead_ms = 0
        """The most a received timestamp ran ahead of this node's physical
        clock (ms): how far the federation's clocks disagree, as seen here."""
        self.ignored = 0
        """Received timestamps too far ahead to adopt (``AHEAD_MS_MAX``)."""

    @property
    def last(self) -> int:
        """The last timestamp handed out (0 before any)."""
        return pack(self._wall_ms, self._logical)

    def tick(self, physical_ms: int) -> int:
        """A local or send event at ``physical_ms`` (this node's clock)."""
        physical_ms = _clamp(physical_ms)
        if physical_ms > self._wall_ms:
            self._wall_ms, self._logical = physical_ms, 0
        else:
            self._bump()
        return self.last

    def observe(self, physical_ms: int, remote: int) -> int:
        """A message stamped ``remote`` received at ``physical_ms``."""
        physical_ms = _clamp(physical_ms)
        remote_wall, remote_logical = unpack(remote)
        self.max_ahead_ms = max(self.max_ahead_ms, remote_wall - physical_ms)
        if remote_wall - physical_ms > AHEAD_MS_MAX:
            self.ignored += 1
            return self.tick(physical_ms)
        wall = max(self._wall_ms, remote_wall, physical_ms)
        if wall == self._wall_ms == remote_wall:
            logical = max(self._logical, remote_logical)
        elif wall == self._wall_ms:
            logical = self._logical
        elif wall == remote_wall:
            logical = remote_logical
        else:
            self._wall_ms, self._logical = wall, 0
            return self.last
        self._wall_ms, self._logical = wall, logical
        self._bump()
        return self.last

    def _bump(self) -> None:
        if self._logical < LOGICAL_MAX:
            self._logical += 1
        elif self._wall_ms < WALL_MS_MAX:
            self._wall_ms, self._logical = self._wall_ms + 1, 0
        # else: the end of representable time; stay there rather than fail


def _clamp(physical_ms: int) -> int:
    return min(max(physical_ms, 0), WALL_MS_MAX)
