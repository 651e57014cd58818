"""Virtual time: one global simulated clock and each node's local clock.

Rules:

- **Global time** is an integer number of milliseconds since the start of the
  run. Only the world advances it; nothing reads a real clock.
- **Local time** is what a node's core sees as ``now_ms``. It is an exact
  integer function of global time::

      local_ms(g) = offset_ms + floor(g * (1_000_000 + drift_ppm) / 1_000_000)
                    + sum(step.delta_ms for step in steps if step.at_ms <= g)

  ``drift_ppm`` models a crystal that runs fast or slow (real oscillators are
  within about +-100 ppm; we test up to +-200 ppm), ``offset_ms`` that nodes
  booted at different times, and forward ``steps`` a VM pause or a suspend
  seen by a monotonic clock. Steps are never negative: cores read a
  *monotonic* clock, which never goes back.
- A core's timer deadline is in local time; ``global_ms_for`` converts it to
  the earliest global time at which the node's local clock has reached it,
  which is when the world must wake the node.

Integer arithmetic only, so every run is exact and reproducible.
"""

from __future__ import annotations

import bisect
from typing import Final

PPM: Final = 1_000_000
# Drift beyond +-10% is not a clock, it is a bug in the test; the bound keeps
# the local rate strictly positive so local time is strictly increasing.
DRIFT_PPM_LIMIT: Final = 100_000


class LocalClock:
    """One node's local monotonic clock as a function of global time."""

    __slots__ = ("_rate", "_step_times_ms", "_step_totals_ms", "drift_ppm", "offset_ms")

    def __init__(self, *, offset_ms: int = 0, drift_ppm: int = 0) -> None:
        assert offset_ms >= 0, "local clocks start at or after zero"
        assert -DRIFT_PPM_LIMIT <= drift_ppm <= DRIFT_PPM_LIMIT, drift_ppm
        self.offset_ms = offset_ms
        self.drift_ppm = drift_ppm
        self._rate = PPM + drift_ppm
        # Steps as parallel sorted lists: the global time of each step and the
        # running total of all deltas up to and including it.
        self._step_times_ms: list[int] = []
        self._step_totals_ms: list[int] = []

    def add_step(self, at_ms: int, delta_ms: int) -> None:
        """Jump the clock forward by ``delta_ms`` at global time ``at_ms``.

        Steps are added in global-time order (the world adds them as they
        happen), so the past of the clock never changes.
        """
        assert delta_ms > 0, "a monotonic clock only jumps forward"
        assert not self._step_times_ms or at_ms >= self._step_times_ms[-1]
        total = (self._step_totals_ms[-1] if self._step_totals_ms else 0) + delta_ms
        self._step_times_ms.append(at_ms)
        self._step_totals_ms.append(total)

    def local_ms(self, global_ms: int) -> int:
        """The node's ``now_ms`` at global time ``global_ms``."""
        local = self.offset_ms + (global_ms * self._rate) // PPM
        if self._step_times_ms:
            index = bisect.bisect_right(self._step_times_ms, global_ms)
            if index:
                local += self._step_totals_ms[index - 1]
        return local

    def global_ms_for(self, local_ms: int, not_before_ms: int) -> int:
        """The earliest global time ``>= not_before_ms`` whose local time is ``>= local_ms``."""
        if not self._step_times_ms:
            # The common case, on every event: no steps, one division (the
            # arithmetic of _steady_global_ms_for, inlined).
            needed = local_ms - self.offset_ms
            global_ms = -((-needed * PPM) // self._rate) if needed > 0 else 0
            return global_ms if global_ms > not_before_ms else not_before_ms
        assert not_before_ms >= 0
        if self.local_ms(not_before_ms) >= local_ms:
            return not_before_ms
        # Walk the (few) steps after not_before: a step may reach the
        # deadline earlier than the steady rate would.
        index = bisect.bisect_right(self._step_times_ms, not_before_ms)
        start_ms = not_before_ms
        while True:
            stepped_ms = self._step_totals_ms[index - 1] if index else 0
            candidate_ms = max(start_ms, self._steady_global_ms_for(local_ms - stepped_ms))
            if index >= len(self._step_times_ms) or candidate_ms < self._step_times_ms[index]:
                break
            start_ms = self._step_times_ms[index]
            index += 1
            if self.local_ms(start_ms) >= local_ms:
                candidate_ms = start_ms
                break
        assert self.local_ms(candidate_ms) >= local_ms
        assert candidate_ms == not_before_ms or self.local_ms(candidate_ms - 1) < local_ms
        return candidate_ms

    def _steady_global_ms_for(self, local_ms: int) -> int:
        # Smallest g with offset + floor(g * rate / PPM) >= local, i.e.
        # g * rate >= (local - offset) * PPM, i.e. g >= ceil(that / rate).
        needed = local_ms - self.offset_ms
        if needed <= 0:
            return 0
        return -((-needed * PPM) // self._rate)

    def describe(self) -> str:
        """A one-line summary for the run log."""
        steps = ",".join(
            f"{at}:+{total - (self._step_totals_ms[i - 1] if i else 0)}"
            for i, (at, total) in enumerate(zip(self._step_times_ms, self._step_totals_ms, strict=True))
        )
        return f"offset_ms={self.offset_ms} drift_ppm={self.drift_ppm} steps=[{steps}]"
