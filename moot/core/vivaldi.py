"""Vivaldi network coordinates: where this node sits in latency space.

The algorithm is Vivaldi (Dabek et al., "Vivaldi: A Decentralized Network
Coordinate System", SIGCOMM 2004) with the refinements hashicorp/serf ships in
its ``coordinate`` package, which Consul uses for ``near=`` queries:

- a *height* on top of the Euclidean vector models the access link every path
  from a node pays (Dabek et al. section 5.5);
- a *latency filter* feeds the update the median of the last few RTT samples
  to each peer, so one queueing spike does not throw the node around
  (Ledlie et al., "Network Coordinates in the Wild", NSDI 2007);
- an *adjustment* term, the mean residual over a window of recent samples,
  absorbs what the embedding cannot (Lee et al., "On Suitability of Euclidean
  Embedding...", ToN 2010);
- *gravity* pulls every coordinate weakly toward the origin so a cluster does
  not drift away over days (Ledlie et al.);
- the confidence *error* is clamped to ``error_max``, and a coordinate that
  became invalid (NaN, infinite, out of the wire's range) is reset to the
  origin instead of being gossiped.

Rules of this module:

- No I/O, no clock. The caller measures RTTs with its probes and passes each
  sample with the peer's coordinate (from the ``Ack``) to ``Vivaldi.observe``.
- Units are **milliseconds** everywhere. Serf works in seconds; its constants
  are converted where they carry a unit (``height_min_ms``, ``gravity_rho_ms``,
  ``rtt_ms_max``).
- Peer input never raises. A sample with an out-of-range RTT or an invalid or
  incompatible coordinate is ignored and counted in ``samples_rejected_count``.
  Asserts guard against programmer errors only.
- Memory is bounded: the adjustment window has ``adjustment_window_size``
  entries, each peer's filter at most ``latency_filter_size`` samples, and at
  most ``latency_filter_peers_max`` peers are remembered (least recently
  observed evicted first).
- Deterministic: the only randomness is the injected ``random.Random``, drawn
  only when two coordinates coincide and a direction must be invented.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from moot.core.wire import COORDINATE_DIMENSIONS_MAX, Coordinate

if TYPE_CHECKING:
    import random

# Largest absolute value of any coordinate field: the bound of
# ``wire.FiniteFloat``. A coordinate past it could not be gossiped (the peer's
# decoder would reject the message), so ``is_valid`` rejects it too.
COORDINATE_FIELD_ABS_MAX: Final = 1e12

# Two vectors closer than this are treated as coincident and pushed apart in a
# random direction. Serf's zeroThreshold is 1e-6 s; the same 1 microsecond.
COINCIDENT_MS: Final = 1.0e-3

# RTTs are floored at this before dividing by them, so a sub-microsecond
# sample cannot turn the relative error into infinity (Serf: same 1e-6 s).
RTT_MS_MIN: Final = 1.0e-3

# Serf's gravity force is (distance / rho)^2 *seconds*: the formula is not
# unit-free. Scaling by 1000 keeps gravity exactly as strong in our
# millisecond space as it is in Serf's second space.
GRAVITY_FORCE_UNIT_MS: Final = 1000.0

# Caps used by ``VivaldiConfig.validate`` on fields that size memory or loops.
ADJUSTMENT_WINDOW_SIZE_MAX: Final = 1024
LATENCY_FILTER_SIZE_MAX: Final = 64
LATENCY_FILTER_PEERS_MAX_MAX: Final = 1_000_000

# Defaults shared by ``VivaldiConfig`` and ``zero_coordinate``.
ERROR_MAX_DEFAULT: Final = 1.5
HEIGHT_MIN_MS_DEFAULT: Final = 0.01


@dataclass(frozen=True, slots=True)
class VivaldiConfig:
    """Tuning of one node's Vivaldi client. Defaults are Serf's ``DefaultConfig``.

    The parameters are scale-free (errors are relative, forces proportional to
    the RTT residual), which is why Consul runs the same values on its LAN
    and WAN pools; the named profiles below are therefore identical today and
    exist so a deployment can diverge without touching callers.
    """

    dimensionality: int = 8
    """Euclidean dimensions. Serf uses 8 (plus height): Ledlie et al. saw
    accuracy improve with dimensions up to a point, and 8 leaves headroom
    over the ~5 they measured on PlanetLab. Capped by the wire at 16."""

    error_max: float = ERROR_MAX_DEFAULT
    """Error of a fresh coordinate, and the clamp on the error afterwards
    (Serf's VivaldiErrorMax 1.5): a new node trusts itself less than any
    peer, so its first samples move it a lot."""

    ce: float = 0.25
    """Vivaldi's c_e, the largest share one sample has on the error estimate
    (Serf's VivaldiCE 0.25; Dabek et al. section 3.4 use 0.25)."""

    cc: float = 0.25
    """Vivaldi's c_c, the largest fraction of the residual one sample moves
    the coordinate by (Serf's VivaldiCC 0.25; Dabek et al. use 0.25)."""

    adjustment_window_size: int = 20
    """Samples averaged into the adjustment term (Serf's
    AdjustmentWindowSize 20, after Lee et al.). 0 disables adjustment."""

    height_min_ms: float = HEIGHT_MIN_MS_DEFAULT
    """Floor of the height. Must be positive for the height update to work,
    and small next to real RTTs: Serf's HeightMin 10e-6 s = 0.01 ms."""

    latency_filter_size: int = 3
    """RTT samples kept per peer; the update uses their median (Serf's
    LatencyFilterSize 3, after Ledlie et al.): rides out one spike while
    adding little delay, since any one peer is probed rarely."""

    gravity_rho_ms: float = 150_000.0
    """Gravity's scale: the pull toward the origin grows as
    (distance / rho)^2 (Serf's GravityRho 150 s, after Ledlie et al.). Large
    on purpose: it only has to cancel slow drift, never distort."""

    rtt_ms_max: float = 10_000.0
    """Samples above this (or <= 0, or not finite) are rejected: Serf rejects
    RTTs over 10 s as measurement errors, not network latency."""

    latency_filter_peers_max: int = 4096
    """Peers whose filter state is kept; the least recently observed is
    evicted beyond it. Bounds memory however many members come and go; 4096
    is well above the cluster sizes moot targets, so eviction is rare."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that is out of range."""
        _require(
            1 <= self.dimensionality <= COORDINATE_DIMENSIONS_MAX,
            f"dimensionality must be in [1, {COORDINATE_DIMENSIONS_MAX}] "
            f"(the wire's cap), got {self.dimensionality}",
        )
        _require(
            _finite_positive(self.error_max),
            f"error_max must be finite and > 0, got {self.error_max}",
        )
        _require(0.0 < self.ce <= 1.0, f"ce must be in (0, 1], got {self.ce}")
        _require(0.0 < self.cc <= 1.0, f"cc must be in (0, 1], got {self.cc}")
        _require(
            0 <= self.adjustment_window_size <= ADJUSTMENT_WINDOW_SIZE_MAX,
            f"adjustment_window_size must be in [0, {ADJUSTMENT_WINDOW_SIZE_MAX}] "
            f"(0 disables adjustment), got {self.adjustment_window_size}",
        )
        _require(
            _finite_positive(self.height_min_ms),
            f"height_min_ms must be finite and > 0, got {self.height_min_ms}",
        )
        _require(
            1 <= self.latency_filter_size <= LATENCY_FILTER_SIZE_MAX,
            f"latency_filter_size must be in [1, {LATENCY_FILTER_SIZE_MAX}] "
            f"(1 disables filtering), got {self.latency_filter_size}",
        )
        _require(
            _finite_positive(self.gravity_rho_ms),
            f"gravity_rho_ms must be finite and > 0, got {self.gravity_rho_ms}",
        )
        _require(
            _finite_positive(self.rtt_ms_max),
            f"rtt_ms_max must be finite and > 0, got {self.rtt_ms_max}",
        )
        _require(
            1 <= self.latency_filter_peers_max <= LATENCY_FILTER_PEERS_MAX_MAX,
            f"latency_filter_peers_max must be in [1, {LATENCY_FILTER_PEERS_MAX_MAX}], "
            f"got {self.latency_filter_peers_max}",
        )

    @classmethod
    def lan(cls) -> VivaldiConfig:
        """Nodes in one datacenter or campus: Serf's defaults, as Consul's LAN pool."""
        return cls()

    @classmethod
    def wan(cls) -> VivaldiConfig:
        """Nodes across regions: Serf's defaults, as Consul's WAN pool."""
        return cls()

    @classmethod
    def sim(cls) -> VivaldiConfig:
        """The deterministic simulator: the production values, so what the
        simulator shows about convergence holds in production."""
        return cls()


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"VivaldiConfig: {message}")


def _finite_positive(value: float) -> bool:
    return math.isfinite(value) and value > 0.0


def zero_coordinate(
    dimensionality: int,
    *,
    error: float = ERROR_MAX_DEFAULT,
    height_ms: float = HEIGHT_MIN_MS_DEFAULT,
) -> Coordinate:
    """The coordinate of a node that has observed nothing: at the origin,
    with the least confidence (``error``) and the smallest ``height_ms``."""
    assert 1 <= dimensionality <= COORDINATE_DIMENSIONS_MAX
    assert math.isfinite(error)
    assert error >= 0.0
    assert math.isfinite(height_ms)
    assert height_ms >= 0.0
    return Coordinate(vec=(0.0,) * dimensionality, error=error, adjustment=0.0, height=height_ms)


def is_valid(coordinate: Coordinate) -> bool:
    """Whether ``coordinate`` is safe to compute with and to gossip.

    Every field finite and within the wire's range, 1 to
    ``COORDINATE_DIMENSIONS_MAX`` dimensions, error and height non-negative
    (a negative one would let a peer make distances negative).
    """
    dimensionality = len(coordinate.vec)
    if not 1 <= dimensionality <= COORDINATE_DIMENSIONS_MAX:
        return False
    if not all(_field_is_valid(component) for component in coordinate.vec):
        return False
    if not _field_is_valid(coordinate.adjustment):
        return False
    if not (_field_is_valid(coordinate.error) and coordinate.error >= 0.0):
        return False
    return _field_is_valid(coordinate.height) and coordinate.height >= 0.0


def _field_is_valid(value: float) -> bool:
    # Rejects NaN too: every comparison with NaN is false.
    return math.isfinite(value) and -COORDINATE_FIELD_ABS_MAX <= value <= COORDINATE_FIELD_ABS_MAX


def is_compatible(a: Coordinate, b: Coordinate) -> bool:
    """Whether ``a`` and ``b`` are both valid and of the same dimensionality,
    that is whether ``estimate_rtt_ms(a, b)`` may be called."""
    return is_valid(a) and is_valid(b) and len(a.vec) == len(b.vec)


def estimate_rtt_ms(a: Coordinate, b: Coordinate) -> float:
    """Estimated round-trip time between the nodes at ``a`` and ``b``.

    Euclidean distance plus both heights, plus both adjustments unless that
    would make the estimate non-positive (as Serf's ``DistanceTo``).
    The caller checks ``is_compatible(a, b)`` first; mismatched
    dimensionalities are a programmer error.
    """
    assert len(a.vec) == len(b.vec)
    raw_ms = _raw_distance_ms(a, b)
    adjusted_ms = raw_ms + a.adjustment + b.adjustment
    return adjusted_ms if adjusted_ms > 0.0 else raw_ms


def _raw_distance_ms(a: Coordinate, b: Coordinate) -> float:
    """Distance without the adjustment terms: Euclidean part plus heights."""
    return _magnitude(_difference(a.vec, b.vec)) + a.height + b.height


def _difference(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(x - y for x, y in zip(a, b, strict=True))


def _magnitude(vector: tuple[float, ...]) -> float:
    return math.sqrt(math.fsum(x * x for x in vector))


def _unit_vector_away(
    own: tuple[float, ...], other: tuple[float, ...], rng: random.Random
) -> tuple[tuple[float, ...], float]:
    """Unit vector pointing from ``other`` to ``own`` (the direction ``own``
    moves when repelled) and the distance between them.

    Coincident points have no direction: a random one is drawn from ``rng``,
    and the distance reported is 0 so the caller leaves the height alone.
    """
    difference = _difference(own, other)
    distance_ms = _magnitude(difference)
    if distance_ms > COINCIDENT_MS:
        return tuple(x / distance_ms for x in difference), distance_ms
    random_vector = tuple(rng.random() - 0.5 for _ in own)
    random_magnitude = _magnitude(random_vector)
    if random_magnitude > COINCIDENT_MS:
        return tuple(x / random_magnitude for x in random_vector), 0.0
    # All draws near zero: vanishingly rare, but the direction must exist.
    return (1.0,) + (0.0,) * (len(own) - 1), 0.0


class Vivaldi:
    """One node's Vivaldi client.

    Feed it RTT samples with ``observe``; read the result from
    ``coordinate``. Not thread-safe: the membership core owns it.
    """

    __slots__ = (
        "_adjustment_index",
        "_adjustment_samples_ms",
        "_config",
        "_coordinate",
        "_latency_samples_ms",
        "_resets_count",
        "_rng",
        "_samples_rejected_count",
    )

    def __init__(self, config: VivaldiConfig, rng: random.Random) -> None:
        """Start at the origin. Raises ``ValueError`` if ``config`` is invalid."""
        config.validate()
        self._config = config
        self._rng = rng
        self._coordinate = self._origin()
        # Ring buffer of (rtt - raw distance) residuals for the adjustment term.
        self._adjustment_samples_ms = [0.0] * config.adjustment_window_size
        self._adjustment_index = 0
        # Per-peer recent RTTs; dict order is recency order (oldest first).
        self._latency_samples_ms: dict[str, deque[float]] = {}
        self._resets_count = 0
        self._samples_rejected_count = 0

    @property
    def coordinate(self) -> Coordinate:
        """This node's current coordinate (immutable; safe to gossip)."""
        return self._coordinate

    @property
    def config(self) -> VivaldiConfig:
        """The configuration this client was built with."""
        return self._config

    @property
    def resets_count(self) -> int:
        """How often the coordinate became invalid and was reset (Serf's Resets)."""
        return self._resets_count

    @property
    def samples_rejected_count(self) -> int:
        """How many samples ``observe`` ignored as bad peer input."""
        return self._samples_rejected_count

    @property
    def peers_count(self) -> int:
        """Peers whose latency-filter state is held (at most the config's cap)."""
        return len(self._latency_samples_ms)

    def observe(self, node_id: str, other: Coordinate, rtt_ms: float) -> Coordinate:
        """Take one RTT sample to ``node_id``, whose coordinate is ``other``.

        Applies, in order: the latency filter, the Vivaldi spring update, the
        adjustment term, gravity; resets to the origin if the result is not
        valid. Returns the new own coordinate. A bad sample (RTT not in
        (0, rtt_ms_max], ``other`` invalid or of another dimensionality) is
        ignored and the current coordinate returned unchanged.
        """
        assert isinstance(node_id, str)
        if not self._accepts(other, rtt_ms):
            self._samples_rejected_count += 1
            return self._coordinate

        rtt_filtered_ms = self._latency_filter(node_id, rtt_ms)
        coordinate = self._update_vivaldi(self._coordinate, other, rtt_filtered_ms)
        coordinate = self._update_adjustment(coordinate, other, rtt_filtered_ms)
        coordinate = self._update_gravity(coordinate)
        if is_valid(coordinate):
            self._coordinate = coordinate
        else:
            self._resets_count += 1
            self._reset_coordinate()

        assert is_valid(self._coordinate)
        assert len(self._coordinate.vec) == self._config.dimensionality
        assert self._coordinate.error <= self._config.error_max
        return self._coordinate

    def forget(self, node_id: str) -> None:
        """Drop ``node_id``'s latency-filter state (it left the cluster)."""
        self._latency_samples_ms.pop(node_id, None)

    def reset(self) -> None:
        """Start over: origin coordinate, empty adjustment window and filters."""
        self._reset_coordinate()
        self._latency_samples_ms.clear()

    # -- steps of observe: each a small function of its inputs ---------------

    def _accepts(self, other: Coordinate, rtt_ms: float) -> bool:
        if not (math.isfinite(rtt_ms) and 0.0 < rtt_ms <= self._config.rtt_ms_max):
            return False
        return is_valid(other) and len(other.vec) == self._config.dimensionality

    def _latency_filter(self, node_id: str, rtt_ms: float) -> float:
        """Record ``rtt_ms`` for ``node_id``; return the median of its recent samples."""
        samples = self._latency_samples_ms.pop(node_id, None)
        if samples is None:
            samples = deque(maxlen=self._config.latency_filter_size)
            if len(self._latency_samples_ms) >= self._config.latency_filter_peers_max:
                # Least recently observed peer: the dict's first key.
                del self._latency_samples_ms[next(iter(self._latency_samples_ms))]
        samples.append(rtt_ms)
        # Re-inserting moves node_id to the end: dict order is recency order.
        self._latency_samples_ms[node_id] = samples
        assert len(self._latency_samples_ms) <= self._config.latency_filter_peers_max
        # Upper median for an even count, as Serf.
        return sorted(samples)[len(samples) // 2]

    def _update_vivaldi(self, own: Coordinate, other: Coordinate, rtt_ms: float) -> Coordinate:
        """Dabek et al.'s adaptive-timestep spring update with Serf's clamps."""
        config = self._config
        rtt_ms = max(rtt_ms, RTT_MS_MIN)
        distance_ms = estimate_rtt_ms(own, other)
        relative_error = abs(distance_ms - rtt_ms) / rtt_ms
        # Trust the sample in proportion to how unsure we are relative to the peer.
        error_total = max(own.error + other.error, COINCIDENT_MS)
        weight = own.error / error_total
        error = config.ce * weight * relative_error + own.error * (1.0 - config.ce * weight)
        error = min(error, config.error_max)
        force_ms = config.cc * weight * (rtt_ms - distance_ms)
        moved = self._apply_force(own, force_ms, other)
        return Coordinate(
            vec=moved.vec, error=error, adjustment=moved.adjustment, height=moved.height
        )

    def _update_adjustment(self, own: Coordinate, other: Coordinate, rtt_ms: float) -> Coordinate:
        """Adjustment = mean residual over the window, halved (each end takes half)."""
        window_size = self._config.adjustment_window_size
        if window_size == 0:
            return own
        # The raw distance: the adjustments themselves must not feed back.
        self._adjustment_samples_ms[self._adjustment_index] = rtt_ms - _raw_distance_ms(own, other)
        self._adjustment_index = (self._adjustment_index + 1) % window_size
        adjustment = math.fsum(self._adjustment_samples_ms) / (2.0 * window_size)
        return Coordinate(vec=own.vec, error=own.error, adjustment=adjustment, height=own.height)

    def _update_gravity(self, own: Coordinate) -> Coordinate:
        """Pull weakly toward the origin, quadratically in the distance from it."""
        origin = self._origin()
        distance_ms = estimate_rtt_ms(origin, own)
        force_ms = -GRAVITY_FORCE_UNIT_MS * (distance_ms / self._config.gravity_rho_ms) ** 2
        return self._apply_force(own, force_ms, origin)

    def _apply_force(self, own: Coordinate, force_ms: float, other: Coordinate) -> Coordinate:
        """Move ``own`` by ``force_ms`` away from ``other`` (toward it if negative).

        The height takes its share of the move in proportion to the heights'
        share of the distance (Dabek et al. section 5.5), never below the floor.
        """
        unit, distance_ms = _unit_vector_away(own.vec, other.vec, self._rng)
        vec = tuple(x + force_ms * u for x, u in zip(own.vec, unit, strict=True))
        height = own.height
        if distance_ms > COINCIDENT_MS:
            height += force_ms * (own.height + other.height) / distance_ms
            height = max(height, self._config.height_min_ms)
        return Coordinate(vec=vec, error=own.error, adjustment=own.adjustment, height=height)

    def _origin(self) -> Coordinate:
        return zero_coordinate(
            self._config.dimensionality,
            error=self._config.error_max,
            height_ms=self._config.height_min_ms,
        )

    def _reset_coordinate(self) -> None:
        self._coordinate = self._origin()
        self._adjustment_samples_ms = [0.0] * self._config.adjustment_window_size
        self._adjustment_index = 0
