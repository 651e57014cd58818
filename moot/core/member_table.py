"""The member table: one node's records of every member, copy-on-write.

A node's view is a map from node id to a mutable record. In a real
federation each node has its own. In the simulator, ten thousand nodes in one
process would need 10^8 records, so every node can start from one shared,
never-mutated *base* (the bootstrapped membership) and copy a record into its
own overlay only when it changes it. The core therefore reads with ``get``
and must call ``writable`` before changing a record.

Iteration order is deterministic: base order (with own copies substituted),
then members added by this node in insertion order.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    import random


class _Record(Protocol):
    node_id: str


Record = TypeVar("Record", bound=_Record)


class MemberTable(Generic[Record]):
    """Records keyed by node id, over an optional shared read-only base."""

    def __init__(
        self, base: dict[str, Record] | None = None, base_ids: list[str] | None = None
    ) -> None:
        self._base: dict[str, Record] = base if base is not None else {}
        self._base_ids: list[str] = base_ids if base_ids is not None else list(self._base)
        assert len(self._base_ids) == len(self._base)
        self._own: dict[str, Record] = {}
        self._own_ids: list[str] = []  # added by this node, not in base
        self._removed: dict[str, None] = {}

    def __len__(self) -> int:
        return len(self._base) - len(self._removed) + len(self._own_ids)

    def __contains__(self, node_id: str) -> bool:
        return self.get(node_id) is not None

    def get(self, node_id: str) -> Record | None:
        """The record for ``node_id`` (read only: call ``writable`` to change it)."""
        record = self._own.get(node_id)
        if record is not None:
            return record
        if node_id in self._removed:
            return None
        return self._base.get(node_id)

    def writable(self, node_id: str) -> Record:
        """The record for ``node_id``, copied into this node's overlay if shared."""
        record = self._own.get(node_id)
        if record is not None:
            return record
        assert node_id not in self._removed
        shared = self._base[node_id]
        own = copy.deepcopy(shared)
        self._own[node_id] = own
        return own

    def add(self, record: Record) -> None:
        """Add a member this node had not heard of."""
        assert self.get(record.node_id) is None
        if record.node_id in self._removed:
            del self._removed[record.node_id]
            self._own[record.node_id] = record
            return
        self._own[record.node_id] = record
        self._own_ids.append(record.node_id)

    def remove(self, node_id: str) -> None:
        """Forget ``node_id``."""
        assert self.get(node_id) is not None
        self._own.pop(node_id, None)
        if node_id in self._base:
            self._removed[node_id] = None
        else:
            self._own_ids.remove(node_id)

    def values(self) -> Iterator[Record]:
        """Every record, in deterministic order."""
        for node_id in self._base_ids:
            record = self.get(node_id)
            if record is not None:
                yield record
        for node_id in self._own_ids:
            yield self._own[node_id]

    def slot_count(self) -> int:
        """Slots ever used (removed members leave empty slots): indexes for ``at_slot``."""
        return len(self._base_ids) + len(self._own_ids)

    def at_slot(self, index: int) -> Record | None:
        """The record in slot ``index``; None if that member was removed."""
        assert 0 <= index < self.slot_count()
        if index < len(self._base_ids):
            return self.get(self._base_ids[index])
        return self._own[self._own_ids[index - len(self._base_ids)]]

    def random(self, rng: random.Random) -> Record | None:
        """A uniformly random slot's record; None if that slot was removed."""
        slots = self.slot_count()
        if slots == 0:
            return None
        return self.at_slot(rng.randrange(slots))
