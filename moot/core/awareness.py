"""Lifeguard's local health multiplier (LHM).

A node that misses acks may be the slow one, not its targets. Lifeguard has
each node keep a score in ``[0, max)``: failed probes with missing nacks and
having to refute a suspicion about itself raise it; successful probes lower
it. Probe interval and timeout are stretched by ``score + 1``, so a node in
trouble probes (and accuses) more slowly. (Dadgar et al., "Lifeguard", 2018;
memberlist's awareness.go.)
"""

from __future__ import annotations


class Awareness:
    """The local health score and the timeouts it stretches."""

    def __init__(self, multiplier_max: int) -> None:
        assert multiplier_max >= 1
        self.multiplier_max = multiplier_max
        self.score = 0

    def apply_delta(self, delta: int) -> None:
        """Raise (positive) or lower (negative) the score, clamped to its range."""
        self.score = min(self.multiplier_max - 1, max(0, self.score + delta))
        assert 0 <= self.score < self.multiplier_max

    def scale_ms(self, timeout_ms: int) -> int:
        """``timeout_ms`` stretched by the current health score."""
        return timeout_ms * (self.score + 1)
