"""moot's deterministic simulator: real cores on virtual time, a simulated network and faults from one seed.

Modules (one concern each):

- ``clock``: global simulated time and each node's drifting local clock.
- ``network``: delay matrix and jitter, loss, duplication, partitions.
- ``world``: the event loop driving any sans-IO core (``Core`` protocol)
  through a ``CoreDriver``; crash and restart with a persistent ``Disk``;
  the trace hash; ``derive_seed``.
- ``faults``: the fault plan drawn from the seed (injection only).
- ``membership_checks``: invariant checkers for membership (checking only).
- ``membership_scenario``: SWIM/Lifeguard nodes across three regions, run
  through a join, a safety phase with faults and a liveness phase.
- ``__main__``: ``python -m moot.sim membership --seed S --nodes N``.

Same seed, same run, event for event (DESIGN.md property 8).
"""

from moot.sim.clock import LocalClock
from moot.sim.network import Network, NetworkConfig
from moot.sim.world import (
    CoreContractError,
    CoreCrashed,
    Disk,
    SimNode,
    SimulationFailure,
    World,
    derive_seed,
)

__all__ = [
    "CoreContractError",
    "CoreCrashed",
    "Disk",
    "LocalClock",
    "Network",
    "NetworkConfig",
    "SimNode",
    "SimulationFailure",
    "World",
    "derive_seed",
]
