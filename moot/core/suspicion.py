"""Lifeguard's dynamic suspicion timeout.

When a member is suspected, a timer starts. Without Lifeguard it is fixed.
With Lifeguard it starts at ``timeout_max`` and shrinks logarithmically
toward ``timeout_min`` as *independent* confirmations (suspect messages from
other members) arrive, up to ``confirmations_expected`` of them:

    timeout = max(min, max - (max - min) * log(c + 1) / log(k + 1))

so a member accused by many is declared dead quickly, and one accused by a
single (perhaps slow) node gets time to refute. (memberlist's suspicion.go.)
"""

from __future__ import annotations

import math


class Suspicion:
    """One member's suspicion timer: start, confirmations, current deadline."""

    def __init__(
        self,
        *,
        started_ms: int,
        first_accuser: str,
        timeout_min_ms: int,
        timeout_max_ms: int,
        confirmations_expected: int,
    ) -> None:
        assert 0 < timeout_min_ms <= timeout_max_ms
        assert confirmations_expected >= 0
        self.started_ms = started_ms
        self.timeout_min_ms = timeout_min_ms
        self.timeout_max_ms = timeout_max_ms
        self.confirmations_expected = confirmations_expected
        # The first accuser starts the timer and does not count as a
        # confirmation; a dict keeps insertion order for determinism.
        self._accusers: dict[str, None] = {first_accuser: None}
        self.deadline_ms = started_ms + self._timeout_ms()

    @property
    def confirmations(self) -> int:
        """Independent confirmations received after the first accusation."""
        return len(self._accusers) - 1

    def confirm(self, accuser: str) -> bool:
        """Count ``accuser``; True if it is new (then the item is re-gossiped)."""
        if accuser in self._accusers:
            return False
        if self.confirmations >= self.confirmations_expected:
            return False
        self._accusers[accuser] = None
        self.deadline_ms = self.started_ms + self._timeout_ms()
        return True

    def _timeout_ms(self) -> int:
        if self.confirmations_expected < 1:
            return self.timeout_min_ms
        fraction = math.log(self.confirmations + 1) / math.log(self.confirmations_expected + 1)
        timeout = self.timeout_max_ms - (self.timeout_max_ms - self.timeout_min_ms) * fraction
        result = max(self.timeout_min_ms, math.floor(timeout))
        assert self.timeout_min_ms <= result <= self.timeout_max_ms
        return result
