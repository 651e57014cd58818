"""This process's hybrid logical clock (``moot.core.hlc``) on the wall
clock: every frame it sends carries ``stamp()``, every frame it receives
goes through ``observe()``, and the node's events are stamped with it, so a
federation's events sort in an order that respects cause and effect.

One clock per process (a node, a client, a worker), behind a lock: a client
runs its connections on a thread of its own.
"""

from __future__ import annotations

import threading
import time

from moot.core import hlc

_clock = hlc.Clock()
_lock = threading.Lock()


def wall_ms() -> int:
    """The wall clock, in milliseconds since the epoch (it may step)."""
    return time.time_ns() // 1_000_000


def stamp() -> int:
    """A timestamp for a local event or a message about to be sent."""
    with _lock:
        return _clock.tick(wall_ms())


def observe(timestamp: int) -> None:
    """Take in a received frame's timestamp (0: the sender keeps none)."""
    if timestamp > 0:
        with _lock:
            _clock.observe(wall_ms(), timestamp)


def max_ahead_ms() -> int:
    """The most a received timestamp ran ahead of our wall clock (ms)."""
    return _clock.max_ahead_ms


def ignored() -> int:
    """Received timestamps too far ahead to adopt (``hlc.AHEAD_MS_MAX``)."""
    return _clock.ignored
