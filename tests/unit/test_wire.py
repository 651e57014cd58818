"""Property tests of the wire decoder: whatever a peer sends, only RemoteProtocolError escapes."""

from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moot.core import wire

node_ids = st.text(min_size=1, max_size=wire.NODE_ID_CHARS_MAX)
addresses = st.text(min_size=3, max_size=40)
incarnations = st.integers(min_value=0, max_value=2**63 - 1)
finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False)
labels = st.dictionaries(
    st.text(max_size=wire.LABEL_CHARS_MAX), st.text(max_size=wire.LABEL_CHARS_MAX), max_size=4
)
coordinates = st.builds(
    wire.Coordinate,
    vec=st.lists(finite, max_size=wire.COORDINATE_DIMENSIONS_MAX).map(tuple),
    error=finite,
    adjustment=finite,
    height=finite,
)
gossip_items = st.one_of(
    st.builds(
        wire.Alive,
        node_id=node_ids,
        incarnation=incarnations,
        address=addresses,
        labels=labels,
        cpus=st.integers(0, 1_000_000),
    ),
    st.builds(wire.Suspect, node_id=node_ids, incarnation=incarnations, from_id=node_ids),
    st.builds(wire.Dead, node_id=node_ids, incarnation=incarnations, from_id=node_ids),
    st.builds(wire.CoordinateUpdate, node_id=node_ids, coordinate=coordinates),
)
gossip = st.lists(gossip_items, max_size=5).map(tuple)
versions = st.integers(min_value=0, max_value=65535)
messages = st.one_of(
    st.builds(
        wire.Hello,
        protocol_min=versions,
        protocol_max=versions,
        role=st.sampled_from(["node", "client"]),
        node_id=node_ids,
        address=addresses,
        token=st.text(max_size=wire.TOKEN_CHARS_MAX),
    ),
    st.builds(wire.Goodbye, reason=st.text(max_size=wire.REASON_CHARS_MAX)),
    st.builds(
        wire.Ping,
        seq=incarnations,
        target_id=node_ids,
        source_id=node_ids,
        source_address=addresses,
        coordinate=st.none() | coordinates,
        gossip=gossip,
    ),
    st.builds(
        wire.IndirectPing,
        seq=incarnations,
        target_id=node_ids,
        target_address=addresses,
        source_id=node_ids,
        source_address=addresses,
        want_nack=st.booleans(),
        gossip=gossip,
    ),
    st.builds(
        wire.Ack,
        seq=incarnations,
        source_id=node_ids,
        coordinate=st.none() | coordinates,
        gossip=gossip,
    ),
    st.builds(wire.Nack, seq=incarnations, source_id=node_ids),
    st.builds(wire.Gossip, source_id=node_ids, gossip=gossip),
    st.builds(wire.MembersRequest, request_id=incarnations),
    st.builds(
        wire.ErrorReply,
        request_id=incarnations,
        kind=st.text(max_size=64),
        message=st.text(max_size=wire.REASON_CHARS_MAX),
    ),
)


@given(messages, st.integers(0, 2**63 - 1))
def test_valid_messages_round_trip_with_the_senders_clock(message: wire.Message, timestamp: int) -> None:
    frame = wire.encode_frame(message, timestamp)
    length, stamped = wire.frame_header(frame[: wire.FRAME_HEADER_BYTES])
    assert length == len(frame) - wire.FRAME_HEADER_BYTES
    assert stamped == timestamp
    assert wire.decode(frame[wire.FRAME_HEADER_BYTES :]) == message


@settings(max_examples=500)
@given(st.binary(max_size=512))
def test_random_bytes_raise_only_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(wire.RemoteProtocolError):
        wire.decode(data)


@settings(max_examples=300)
@given(messages, st.data())
def test_mutated_messages_raise_only_remote_protocol_error(
    message: wire.Message, data: st.DataObject
) -> None:
    body = bytearray(wire.encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(body) - 1))
        body[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    try:
        decoded = wire.decode(bytes(body[:cut]))
    except wire.RemoteProtocolError:
        return
    # Whatever survived mutation decoded into a fully valid message.
    assert wire.decode(wire.encode(decoded)) == decoded


@given(st.binary(min_size=wire.FRAME_HEADER_BYTES, max_size=wire.FRAME_HEADER_BYTES))
def test_frame_header_is_capped(header: bytes) -> None:
    announced = int.from_bytes(header[: wire.FRAME_LENGTH_BYTES], "big")
    timestamp = int.from_bytes(header[wire.FRAME_LENGTH_BYTES :], "big")
    if announced > wire.FRAME_BYTES_MAX:
        with pytest.raises(wire.RemoteProtocolError, match="over FRAME_BYTES_MAX"):
            wire.frame_header(header)
    elif timestamp >= 2**63:
        with pytest.raises(wire.RemoteProtocolError, match="not a hybrid timestamp"):
            wire.frame_header(header)
    else:
        assert wire.frame_header(header) == (announced, timestamp)


def test_oversized_frame_header_rejected() -> None:
    clock = (7).to_bytes(8, "big")
    header = (wire.FRAME_BYTES_MAX + 1).to_bytes(wire.FRAME_LENGTH_BYTES, "big") + clock
    with pytest.raises(wire.RemoteProtocolError):
        wire.frame_header(header)
    assert wire.frame_header(wire.FRAME_BYTES_MAX.to_bytes(4, "big") + clock) == (wire.FRAME_BYTES_MAX, 7)


def test_oversized_body_rejected_before_parsing() -> None:
    with pytest.raises(wire.RemoteProtocolError, match="over FRAME_BYTES_MAX"):
        wire.decode(b"\x00" * (wire.FRAME_BYTES_MAX + 1))


def test_oversized_message_is_a_local_error() -> None:
    huge = wire.Goodbye(reason="x" * (wire.FRAME_BYTES_MAX + 1))
    with pytest.raises(wire.LocalProtocolError):
        wire.encode(huge)


@pytest.mark.parametrize("tag", [0, 3, 9, 9999, -1, "hello"])
def test_unknown_tag_rejected(tag: object) -> None:
    body = msgspec.msgpack.encode({"type": tag, "reason": "x"})
    with pytest.raises(wire.RemoteProtocolError, match="malformed"):
        wire.decode(body)


def test_field_caps_enforced_on_decode() -> None:
    # Struct constructors do not validate; the decoder must.
    too_long = wire.Hello(protocol_min=1, protocol_max=1, role="node", node_id="n" * 65)
    with pytest.raises(wire.RemoteProtocolError):
        wire.decode(wire.encode(too_long))


def test_unknown_field_rejected() -> None:
    body = msgspec.msgpack.encode({"type": wire.TAGS.GOODBYE, "reason": "x", "extra": 1})
    with pytest.raises(wire.RemoteProtocolError):
        wire.decode(body)


@pytest.mark.parametrize(
    ("peer_min", "peer_max", "expected"),
    [
        (wire.PROTOCOL_VERSION_MIN, wire.PROTOCOL_VERSION_MAX, wire.PROTOCOL_VERSION_MAX),
        (0, 65535, wire.PROTOCOL_VERSION_MAX),
        (wire.PROTOCOL_VERSION_MIN, wire.PROTOCOL_VERSION_MIN, wire.PROTOCOL_VERSION_MIN),
    ],
)
def test_version_negotiation_picks_highest_common(
    peer_min: int, peer_max: int, expected: int
) -> None:
    assert wire.negotiate_version(peer_min, peer_max) == expected


@pytest.mark.parametrize(
    ("peer_min", "peer_max"),
    [
        (wire.PROTOCOL_VERSION_MAX + 1, wire.PROTOCOL_VERSION_MAX + 5),
        (0, wire.PROTOCOL_VERSION_MIN - 1),
        (5, 2),
    ],
)
def test_version_negotiation_without_overlap_fails(peer_min: int, peer_max: int) -> None:
    with pytest.raises(wire.RemoteProtocolError, match="no common protocol version"):
        wire.negotiate_version(peer_min, peer_max)


@given(versions, versions)
def test_version_negotiation_is_symmetric(peer_min: int, peer_max: int) -> None:
    """Both ends compute the same version from the two ranges (or both fail)."""
    ours = (wire.PROTOCOL_VERSION_MIN, wire.PROTOCOL_VERSION_MAX)
    overlap_low, overlap_high = max(ours[0], peer_min), min(ours[1], peer_max)
    if overlap_low <= overlap_high:
        assert wire.negotiate_version(peer_min, peer_max) == overlap_high
    else:
        with pytest.raises(wire.RemoteProtocolError):
            wire.negotiate_version(peer_min, peer_max)


def test_non_utf8_map_key_is_a_remote_error() -> None:
    # Found by test_mutated_messages...: msgspec raises UnicodeDecodeError, not
    # DecodeError, for a map key that is not UTF-8.
    with pytest.raises(wire.RemoteProtocolError):
        wire.decode(b"\x81\xa3\xff\xfe\xfd\x01")


def test_reasons_are_cut_to_what_a_receiver_accepts() -> None:
    long = "x" * (wire.REASON_CHARS_MAX + 500)
    reply = wire.ErrorReply(request_id=1, kind="Unavailable", message=wire.reason(long))
    decoded = wire.decode(wire.encode(reply))  # a longer message would fail to decode and cost the connection
    assert isinstance(decoded, wire.ErrorReply)
    assert len(decoded.message) == wire.REASON_CHARS_MAX
    assert wire.reason("short") == "short"
