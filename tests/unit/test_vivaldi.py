"""Unit tests of moot.core.vivaldi: properties, bad input, filter, convergence."""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from moot.core.vivaldi import (
    COORDINATE_FIELD_ABS_MAX,
    Vivaldi,
    VivaldiConfig,
    estimate_rtt_ms,
    is_compatible,
    is_valid,
    zero_coordinate,
)
from moot.core.wire import COORDINATE_DIMENSIONS_MAX, Coordinate

DIMENSIONALITY = VivaldiConfig().dimensionality


def coordinate_at(*vec: float, height: float = 0.01, error: float = 0.1) -> Coordinate:
    """A peer coordinate padded with zeros to the default dimensionality."""
    padded = tuple(vec) + (0.0,) * (DIMENSIONALITY - len(vec))
    return Coordinate(vec=padded, error=error, adjustment=0.0, height=height)


def new_client(seed: int = 0, **overrides: Any) -> Vivaldi:
    return Vivaldi(dataclasses.replace(VivaldiConfig(), **overrides), random.Random(seed))


# -- config ----------------------------------------------------------------


def test_default_config_and_profiles_validate() -> None:
    for config in (VivaldiConfig(), VivaldiConfig.lan(), VivaldiConfig.wan(), VivaldiConfig.sim()):
        config.validate()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dimensionality", 0),
        ("dimensionality", COORDINATE_DIMENSIONS_MAX + 1),
        ("error_max", 0.0),
        ("error_max", math.inf),
        ("ce", 0.0),
        ("ce", 1.5),
        ("cc", -0.1),
        ("adjustment_window_size", -1),
        ("height_min_ms", 0.0),
        ("height_min_ms", math.nan),
        ("latency_filter_size", 0),
        ("gravity_rho_ms", -1.0),
        ("rtt_ms_max", math.nan),
        ("latency_filter_peers_max", 0),
    ],
)
def test_invalid_config_raises_value_error_naming_the_field(field: str, value: Any) -> None:
    config = dataclasses.replace(VivaldiConfig(), **{field: value})
    with pytest.raises(ValueError, match=field):
        config.validate()
    with pytest.raises(ValueError, match=field):
        Vivaldi(config, random.Random(0))


# -- coordinates and distance ------------------------------------------------


def test_new_client_starts_at_the_origin_with_maximum_error() -> None:
    config = VivaldiConfig()
    client = Vivaldi(config, random.Random(0))
    assert client.coordinate.vec == (0.0,) * config.dimensionality
    assert client.coordinate.error == config.error_max
    assert client.coordinate.height == config.height_min_ms
    assert client.coordinate == zero_coordinate(config.dimensionality)
    assert is_valid(client.coordinate)


@pytest.mark.parametrize(
    "coordinate",
    [
        Coordinate(vec=(), error=1.0, adjustment=0.0, height=0.01),
        Coordinate(
            vec=(0.0,) * (COORDINATE_DIMENSIONS_MAX + 1), error=1.0, adjustment=0.0, height=0.01
        ),
        coordinate_at(math.nan),
        coordinate_at(math.inf),
        coordinate_at(COORDINATE_FIELD_ABS_MAX * 2),
        coordinate_at(1.0, height=-1.0),
        coordinate_at(1.0, height=math.nan),
        coordinate_at(1.0, error=-0.5),
        coordinate_at(1.0, error=math.inf),
        Coordinate(vec=(0.0,) * DIMENSIONALITY, error=1.0, adjustment=math.nan, height=0.01),
    ],
)
def test_is_valid_rejects_broken_coordinates(coordinate: Coordinate) -> None:
    assert not is_valid(coordinate)


def test_is_valid_agrees_with_the_wire_range() -> None:
    # What is_valid accepts must encode and decode; what the wire rejects it rejects.
    at_bound = coordinate_at(COORDINATE_FIELD_ABS_MAX)
    past_bound = coordinate_at(COORDINATE_FIELD_ABS_MAX * 1.001)
    assert is_valid(at_bound)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(at_bound), type=Coordinate) == at_bound
    assert not is_valid(past_bound)
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(msgspec.msgpack.encode(past_bound), type=Coordinate)


finite_ms = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
coordinates = st.builds(
    Coordinate,
    vec=st.tuples(*[finite_ms] * 4),
    error=st.floats(min_value=0.0, max_value=1.5),
    adjustment=st.floats(min_value=-1e3, max_value=1e3),
    height=st.floats(min_value=0.0, max_value=1e3),
)


@given(coordinates, coordinates)
def test_distance_is_symmetric_and_non_negative(a: Coordinate, b: Coordinate) -> None:
    assert estimate_rtt_ms(a, b) == pytest.approx(estimate_rtt_ms(b, a))
    assert estimate_rtt_ms(a, b) >= 0.0


@given(coordinates)
def test_distance_to_self_is_only_heights_and_adjustments(a: Coordinate) -> None:
    with_adjustment = 2.0 * a.height + 2.0 * a.adjustment
    expected = with_adjustment if with_adjustment > 0.0 else 2.0 * a.height
    assert estimate_rtt_ms(a, a) == pytest.approx(expected)
    flat = Coordinate(vec=a.vec, error=a.error, adjustment=0.0, height=0.0)
    assert estimate_rtt_ms(flat, flat) == 0.0


def test_distance_adds_heights_and_adjustments_unless_non_positive() -> None:
    a = Coordinate(vec=(3.0, 0.0), error=1.0, adjustment=1.0, height=2.0)
    b = Coordinate(vec=(0.0, 4.0), error=1.0, adjustment=0.5, height=1.0)
    assert estimate_rtt_ms(a, b) == pytest.approx(5.0 + 3.0 + 1.5)
    # Adjustments that would make the estimate non-positive are dropped.
    c = Coordinate(vec=(3.0, 0.0), error=1.0, adjustment=-100.0, height=2.0)
    assert estimate_rtt_ms(c, b) == pytest.approx(5.0 + 3.0)


def test_is_compatible_requires_validity_and_same_dimensionality() -> None:
    assert is_compatible(zero_coordinate(3), zero_coordinate(3))
    assert not is_compatible(zero_coordinate(3), zero_coordinate(4))
    assert not is_compatible(
        zero_coordinate(3), Coordinate(vec=(math.nan,) * 3, error=1.0, adjustment=0.0, height=0.0)
    )


# -- observe: bad input is ignored -----------------------------------------


@pytest.mark.parametrize("rtt_ms", [0.0, -1.0, math.nan, math.inf, -math.inf, 10_000.001, 1e9])
def test_out_of_range_rtt_is_ignored(rtt_ms: float) -> None:
    client = new_client()
    before = client.coordinate
    assert client.observe("peer", coordinate_at(10.0), rtt_ms) is before
    assert client.coordinate is before
    assert client.samples_rejected_count == 1
    assert client.peers_count == 0


@pytest.mark.parametrize(
    "other",
    [
        coordinate_at(math.nan),
        coordinate_at(1.0, height=-5.0),
        zero_coordinate(DIMENSIONALITY - 1),
        zero_coordinate(DIMENSIONALITY + 1),
    ],
)
def test_invalid_or_mismatched_peer_coordinate_is_ignored(other: Coordinate) -> None:
    client = new_client()
    client.observe("good", coordinate_at(10.0), 12.0)
    before = client.coordinate
    assert client.observe("bad", other, 12.0) is before
    assert client.samples_rejected_count == 1
    assert client.peers_count == 1


def test_hostile_peer_cannot_make_the_coordinate_invalid() -> None:
    # Valid but extreme: far away, huge height, full confidence. Chasing it
    # overshoots the wire's range; the client resets instead of gossiping junk.
    hostile = coordinate_at(9e11, height=9e11, error=0.0)
    client = new_client()
    for _ in range(20):
        coordinate = client.observe("hostile", hostile, 5.0)
        assert is_valid(coordinate)
        assert coordinate.error <= client.config.error_max
    assert client.resets_count > 0


any_float = st.floats(allow_nan=True, allow_infinity=True)
any_coordinates = st.builds(
    Coordinate,
    # Mostly our dimensionality, so many samples get past the first check.
    vec=st.one_of(
        st.tuples(*[any_float] * DIMENSIONALITY),
        st.tuples(*[st.floats(min_value=-1e13, max_value=1e13)] * DIMENSIONALITY),
        st.lists(any_float, max_size=COORDINATE_DIMENSIONS_MAX + 1).map(tuple),
    ),
    error=any_float,
    adjustment=any_float,
    height=any_float,
)


@given(st.lists(st.tuples(st.sampled_from("abc"), any_coordinates, any_float), max_size=20))
def test_observe_never_raises_and_stays_valid_on_any_peer_input(
    samples: list[tuple[str, Coordinate, float]],
) -> None:
    client = new_client()
    for node_id, other, rtt_ms in samples:
        coordinate = client.observe(node_id, other, rtt_ms)
        assert coordinate is client.coordinate
        assert is_valid(coordinate)
        assert len(coordinate.vec) == DIMENSIONALITY


# -- observe: behaviour --------------------------------------------------------


def test_observe_moves_toward_the_measured_distance() -> None:
    client = new_client()
    peer = coordinate_at(0.0, height=0.01, error=0.2)
    for _ in range(200):
        client.observe("peer", peer, 40.0)
    assert estimate_rtt_ms(client.coordinate, peer) == pytest.approx(40.0, rel=0.05)
    assert client.coordinate.error < client.config.error_max


def test_same_seed_same_inputs_same_coordinates() -> None:
    def run(seed: int) -> Coordinate:
        client = new_client(seed)
        sample_rng = random.Random(99)
        # A peer on top of us: the push direction has to come from the rng.
        client.observe("twin", zero_coordinate(DIMENSIONALITY), 10.0)
        for step in range(100):
            peer = coordinate_at(sample_rng.uniform(-50, 50), sample_rng.uniform(-50, 50))
            client.observe(f"peer-{step % 7}", peer, sample_rng.uniform(5.0, 80.0))
        return client.coordinate

    assert run(1) == run(1)
    # The rng is used (and only it): another seed pushes away from the twin
    # in another direction and lands elsewhere.
    assert run(1) != run(2)


def test_reset_returns_to_the_origin() -> None:
    client = new_client()
    for _ in range(10):
        client.observe("peer", coordinate_at(30.0), 25.0)
    assert client.coordinate != zero_coordinate(DIMENSIONALITY)
    client.reset()
    assert client.coordinate == zero_coordinate(DIMENSIONALITY)
    assert client.peers_count == 0


# -- latency filter ----------------------------------------------------------


def settle(client: Vivaldi, node_id: str, peer: Coordinate, rtt_ms: float, rounds: int) -> None:
    for _ in range(rounds):
        client.observe(node_id, peer, rtt_ms)


def move_ms(before: Coordinate, after: Coordinate) -> float:
    return math.dist(before.vec, after.vec) + abs(before.height - after.height)


PEER = coordinate_at(0.0, error=0.05)


def test_latency_filter_rejects_a_single_spike() -> None:
    filtered = new_client()
    unfiltered = new_client(latency_filter_size=1)
    for client in (filtered, unfiltered):
        settle(client, "peer", PEER, 20.0, rounds=300)
        assert estimate_rtt_ms(client.coordinate, PEER) == pytest.approx(20.0, rel=0.05)

    for client in (filtered, unfiltered):
        client.observe("peer", PEER, 2_000.0)

    # The median of (20, 20, 2000) is 20: the spike does not move the node.
    assert estimate_rtt_ms(filtered.coordinate, PEER) == pytest.approx(20.0, rel=0.05)
    # Without the filter the same spike throws it far out.
    assert estimate_rtt_ms(unfiltered.coordinate, PEER) > 3 * 20.0


def test_forget_drops_the_peers_filter_state() -> None:
    client = new_client()
    settle(client, "peer", PEER, 20.0, rounds=300)
    client.forget("peer")
    assert client.peers_count == 0
    # With no history, the spike is the median and is taken at face value.
    client.observe("peer", PEER, 2_000.0)
    assert estimate_rtt_ms(client.coordinate, PEER) > 3 * 20.0


def test_filter_state_is_bounded_and_evicts_the_least_recently_observed() -> None:
    client = new_client(latency_filter_peers_max=2)
    settle(client, "a", PEER, 20.0, rounds=300)
    settle(client, "b", PEER, 20.0, rounds=3)
    client.observe("a", PEER, 20.0)  # a is now more recent than b
    client.observe("c", PEER, 20.0)  # evicts b
    assert client.peers_count == 2

    before = client.coordinate
    client.observe("a", PEER, 2_000.0)  # a kept its history: spike filtered
    assert move_ms(before, client.coordinate) < 1.0
    before = client.coordinate
    client.observe("b", PEER, 2_000.0)  # b's history is gone: spike taken
    assert move_ms(before, client.coordinate) > 10.0
    assert client.peers_count == 2


# -- convergence on a three-region world --------------------------------------

# Round-trip times between regions (lahore, karachi, singapore), milliseconds.
REGION_RTT_MS = ((0.0, 20.0, 90.0), (20.0, 0.0, 80.0), (90.0, 80.0, 0.0))


def three_region_world(nodes: int, rng: random.Random) -> list[list[float]]:
    """True RTTs: region RTT (or 1-5 ms inside a region) plus both access links."""
    regions = [i % 3 for i in range(nodes)]
    positions = [(rng.uniform(-1.4, 1.4), rng.uniform(-1.4, 1.4)) for _ in range(nodes)]
    access_ms = [rng.uniform(0.5, 3.0) for _ in range(nodes)]
    rtt_ms = [[0.0] * nodes for _ in range(nodes)]
    for i in range(nodes):
        for j in range(nodes):
            if i == j:
                continue
            if regions[i] == regions[j]:
                core_ms = 1.0 + math.dist(positions[i], positions[j])
            else:
                core_ms = REGION_RTT_MS[regions[i]][regions[j]]
            rtt_ms[i][j] = core_ms + access_ms[i] + access_ms[j]
    return rtt_ms


def relative_errors(clients: list[Vivaldi], rtt_ms: list[list[float]]) -> list[float]:
    errors = []
    for i in range(len(clients)):
        for j in range(i + 1, len(clients)):
            estimate = estimate_rtt_ms(clients[i].coordinate, clients[j].coordinate)
            errors.append(abs(estimate - rtt_ms[i][j]) / rtt_ms[i][j])
    return errors


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_converges_on_a_three_region_world(seed: int) -> None:
    nodes, rounds = 24, 300
    root = random.Random(seed)
    rtt_ms = three_region_world(nodes, random.Random(root.getrandbits(64)))
    network = random.Random(root.getrandbits(64))
    clients = [
        Vivaldi(VivaldiConfig.sim(), random.Random(root.getrandbits(64))) for _ in range(nodes)
    ]
    median_at_start = statistics.median(relative_errors(clients, rtt_ms))

    for _ in range(rounds):
        for i, client in enumerate(clients):
            j = network.randrange(nodes - 1)
            j += j >= i
            jitter = network.lognormvariate(0.0, 0.1)
            client.observe(f"node-{j}", clients[j].coordinate, rtt_ms[i][j] * jitter)

    errors = relative_errors(clients, rtt_ms)
    replay = f"seed={seed} nodes={nodes} rounds={rounds}"
    assert median_at_start > 0.9, replay
    # The Vivaldi paper reports an 11% median on the King data set; this
    # near-Euclidean world must do better (measured 3.1-3.5%, p90 20-24%).
    assert statistics.median(errors) < 0.10, replay
    assert sorted(errors)[int(0.9 * len(errors))] < 0.5, replay
    assert all(client.resets_count == 0 for client in clients), replay
