"""Transmit-limited gossip queue (memberlist's queue.go).

Each gossip item is sent at most ``limit`` times, fewest-sent first so fresh
news spreads before old news is repeated. A newer item about the same
subject replaces the older one, which is never sent again: one node's alive,
suspect and dead items share the subject ``node_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")


@dataclass(slots=True)
class _Entry(Generic[Item]):
    item: Item
    transmits: int
    order: int


class BroadcastQueue(Generic[Item]):
    """Items keyed by subject, handed out fewest-transmits first."""

    def __init__(self, items_max: int) -> None:
        assert items_max > 0
        self.items_max = items_max
        self._entries: dict[str, _Entry[Item]] = {}
        self._order = 0

    def __len__(self) -> int:
        return len(self._entries)

    def push(self, subject: str, item: Item) -> None:
        """Queue ``item``; it replaces any queued item about the same subject."""
        self._order += 1
        self._entries.pop(subject, None)
        self._entries[subject] = _Entry(item, 0, self._order)
        if len(self._entries) > self.items_max:
            # Bounded: drop the most-transmitted (oldest on ties) entry.
            victim = max(self._entries, key=lambda key: (self._entries[key].transmits, -self._entries[key].order))
            del self._entries[victim]
        assert len(self._entries) <= self.items_max

    def take(self, count_max: int, transmit_limit: int) -> list[Item]:
        """Up to ``count_max`` items to piggyback now, counting the transmission."""
        assert transmit_limit > 0
        if count_max <= 0 or not self._entries:
            return []
        # Fewest transmits first, then newest first.
        chosen = sorted(self._entries.items(), key=lambda kv: (kv[1].transmits, -kv[1].order))[:count_max]
        items: list[Item] = []
        for subject, entry in chosen:
            items.append(entry.item)
            entry.transmits += 1
            if entry.transmits >= transmit_limit:
                del self._entries[subject]
        return items

    def discard(self, subject: str) -> None:
        """Forget any queued item about ``subject``."""
        self._entries.pop(subject, None)
