"""The replicated KV state machine: etcd semantics, exactly-once sessions,
watch history, and determinism (snapshots, replicas byte-identical)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys
import textwrap

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moot.core import kv
from moot.core.kv import Batch, Cas, Delete, KvState, Proposal, Put, WriteResult


class Client:
    """A well-behaved client: numbers its writes, acks what it has answered."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.next_seq = 1
        self.ack = 0

    def propose(self, command: kv.Command) -> Proposal:
        proposal = Proposal(
            client_id=self.client_id, seq=self.next_seq, ack=self.ack, command=command
        )
        self.next_seq += 1
        return proposal


class Log:
    """Feeds entries to a state at increasing indexes."""

    def __init__(self, state: KvState) -> None:
        self.state = state
        self.index = state.applied_index

    def apply(self, *proposals: Proposal) -> list[WriteResult]:
        self.index += 1
        answers = self.state.apply(self.index, kv.encode_batch(Batch(proposals=proposals)))
        assert [(a[0], a[1]) for a in answers] == [(p.client_id, p.seq) for p in proposals]
        return [a[2] for a in answers]

    def one(self, proposal: Proposal) -> WriteResult:
        (result,) = self.apply(proposal)
        return result


def ok(succeeded: bool, revision: int) -> WriteResult:
    return WriteResult(status="ok", succeeded=succeeded, revision=revision)


def expired(revision: int) -> WriteResult:
    return WriteResult(status="expired", succeeded=False, revision=revision)


# -- etcd semantics -----------------------------------------------------------------


def test_put_get_delete_revisions_like_etcd() -> None:
    state = KvState()
    log, c = Log(state), Client("c")
    assert state.revision == 0 and state.get(b"a") is None
    assert log.one(c.propose(Put(b"a", b"1"))) == ok(True, 1)
    assert state.get(b"a") == kv.KeyValue(b"a", b"1", create_revision=1, mod_revision=1, version=1)
    assert log.one(c.propose(Put(b"a", b"2"))) == ok(True, 2)
    assert state.get(b"a") == kv.KeyValue(b"a", b"2", create_revision=1, mod_revision=2, version=2)
    assert log.one(c.propose(Put(b"b", b""))) == ok(True, 3)
    assert log.one(c.propose(Put(b"a", b"2"))) == ok(True, 4)  # same value: still a change
    assert log.one(c.propose(Delete(b"a"))) == ok(True, 5)
    assert state.get(b"a") is None
    assert log.one(c.propose(Delete(b"a"))) == ok(False, 5)  # no change, no revision
    assert log.one(c.propose(Put(b"a", b"3"))) == ok(True, 6)  # a new life
    assert state.get(b"a") == kv.KeyValue(b"a", b"3", create_revision=6, mod_revision=6, version=1)
    assert state.get(b"b") == kv.KeyValue(b"b", b"", create_revision=3, mod_revision=3, version=1)
    assert state.revision == 6 and state.applied_index == log.index == 7


def test_cas() -> None:
    state = KvState()
    log, c = Log(state), Client("c")
    assert log.one(c.propose(Cas(b"k", b"", b"x"))) == ok(False, 0)  # b"" is not "missing"
    assert log.one(c.propose(Cas(b"k", None, b"v1"))) == ok(True, 1)
    assert log.one(c.propose(Cas(b"k", None, b"v2"))) == ok(False, 1)
    assert log.one(c.propose(Cas(b"k", b"nope", b"v2"))) == ok(False, 1)
    assert log.one(c.propose(Cas(b"k", b"v1", b"v2"))) == ok(True, 2)
    assert state.get(b"k") == kv.KeyValue(b"k", b"v2", create_revision=1, mod_revision=2, version=2)
    assert log.one(c.propose(Put(b"e", b""))) == ok(True, 3)
    assert log.one(c.propose(Cas(b"e", b"", b"full"))) == ok(True, 4)
    assert [e.kind for e in state.events(1, b"", 10)] == ["put", "put", "put", "put"]


def test_empty_entry_only_advances_applied_index() -> None:
    state = KvState()
    assert state.apply(3, b"") == []
    assert (state.applied_index, state.revision) == (3, 0)
    with pytest.raises(AssertionError):
        state.apply(3, b"")


def test_apply_of_garbage_raises_and_changes_nothing() -> None:
    state = KvState()
    before = state.snapshot()
    with pytest.raises(ValueError, match="entry 1 is not a KV batch"):
        state.apply(1, b"\xc1garbage")
    assert state.snapshot() == before


def test_range_by_prefix_with_limit() -> None:
    state = KvState()
    log, c = Log(state), Client("c")
    for key in [b"b/2", b"a", b"b/1", b"b/3", b"c", b"b"]:
        log.one(c.propose(Put(key, key.upper())))
    keys, more = state.range(b"b/", 2)
    assert [kv_.key for kv_ in keys] == [b"b/1", b"b/2"] and more
    keys, more = state.range(b"b/", 3)
    assert [kv_.key for kv_ in keys] == [b"b/1", b"b/2", b"b/3"] and not more
    keys, more = state.range(b"", 100)
    assert [kv_.key for kv_ in keys] == [b"a", b"b", b"b/1", b"b/2", b"b/3", b"c"] and not more
    assert keys[0].value == b"A"
    assert state.range(b"zz", 5) == ([], False)
    assert state.range(b"b", 1) == ([state.get(b"b")], True)
    log.one(c.propose(Delete(b"b/2")))
    assert [kv_.key for kv_ in state.range(b"b/", 10)[0]] == [b"b/1", b"b/3"]
    for limit in (0, kv.RANGE_LIMIT_MAX + 1):
        with pytest.raises(kv.BadCommand, match="RANGE_LIMIT_MAX"):
            state.range(b"", limit)


def test_events_from_revision_with_prefix() -> None:
    state = KvState()
    log, c = Log(state), Client("c")
    log.one(c.propose(Put(b"x/1", b"a")))  # 1
    log.one(c.propose(Put(b"y", b"b")))  # 2
    log.one(c.propose(Delete(b"x/1")))  # 3
    log.one(c.propose(Delete(b"nothing")))  # no revision
    log.one(c.propose(Cas(b"x/2", None, b"c")))  # 4
    assert state.events(1, b"", 10) == [
        kv.Event("put", b"x/1", b"a", 1),
        kv.Event("put", b"y", b"b", 2),
        kv.Event("delete", b"x/1", b"", 3),
        kv.Event("put", b"x/2", b"c", 4),
    ]
    assert [e.revision for e in state.events(2, b"x/", 10)] == [3, 4]
    assert [e.revision for e in state.events(0, b"x/", 1)] == [1]
    assert state.events(5, b"", 10) == []
    with pytest.raises(kv.BadCommand):
        state.events(1, b"", 0)


def test_events_compacted_by_count_and_bytes() -> None:
    state = KvState(history_max=3)
    log, c = Log(state), Client("c")
    for i in range(5):
        log.one(c.propose(Put(b"k", bytes([i]))))
    assert state.compacted_revision == 2
    assert [e.revision for e in state.events(3, b"", 10)] == [3, 4, 5]
    with pytest.raises(kv.Compacted, match="range") as caught:
        state.events(2, b"", 10)
    assert caught.value.compacted_revision == 2 and caught.value.revision == 5

    event_bytes = kv.EVENT_OVERHEAD_BYTES + 1 + 10  # key b"k", 10-byte value
    state = KvState(history_bytes_max=2 * event_bytes + 1)
    log, c = Log(state), Client("c")
    log.one(c.propose(Put(b"k", b"0123456789")))
    log.one(c.propose(Put(b"k", b"0123456789")))
    assert state.compacted_revision == 0
    log.one(c.propose(Put(b"k", b"01234567890")))  # 2 events + 1 byte fit: drop revision 1 only
    assert state.compacted_revision == 1
    log.one(c.propose(Put(b"k", b"x" * 1000)))  # bigger than the whole budget: drop all
    assert state.compacted_revision == 4 and state.events(5, b"", 10) == []


# -- exactly-once sessions ------------------------------------------------------------


def test_duplicate_proposal_applies_once() -> None:
    state = KvState()
    log = Log(state)
    first = Proposal("c", seq=1, ack=0, command=Put(b"k", b"v"))
    assert log.one(first) == ok(True, 1)
    assert log.one(first) == ok(True, 1)  # retried in a later entry
    assert log.apply(first, first) == [ok(True, 1), ok(True, 1)]  # and twice in one entry
    # A retry that (wrongly) carries another command still gets the stored answer.
    assert log.one(Proposal("c", seq=1, ack=0, command=Delete(b"k"))) == ok(True, 1)
    assert state.revision == 1 and state.get(b"k") is not None
    second = Proposal("c", seq=2, ack=1, command=Delete(b"k"))
    assert log.apply(second, second) == [ok(True, 2), ok(True, 2)]
    assert state.revision == 2


def test_acked_seqs_and_evicted_sessions_expire() -> None:
    state = KvState()
    log = Log(state)
    assert log.one(Proposal("c", seq=1, ack=0, command=Put(b"k", b"1"))) == ok(True, 1)
    assert log.one(Proposal("c", seq=2, ack=2, command=Put(b"k", b"2"))) == ok(True, 2)
    # seq 1 was acknowledged: a late copy must not apply again.
    assert log.one(Proposal("c", seq=1, ack=0, command=Put(b"k", b"1"))) == expired(2)
    assert state.get(b"k") == kv.KeyValue(b"k", b"2", 1, 2, 2)
    # An unknown client that has seen answers lost its session.
    before = state.snapshot()
    assert log.one(Proposal("lost", seq=7, ack=5, command=Put(b"k", b"x"))) == expired(2)
    assert state.snapshot() != before  # applied_index moved ...
    assert log.one(Proposal("new", seq=1, ack=0, command=Delete(b"zz"))) == ok(False, 2)
    assert log.one(Proposal("lost", seq=7, ack=5, command=Put(b"k", b"x"))) == expired(2)
    assert state.get(b"k") == kv.KeyValue(b"k", b"2", 1, 2, 2)  # ... but nothing else


def test_results_per_session_are_capped_and_dropped_ones_expire() -> None:
    state = KvState()
    log, c = Log(state), Client("c")
    for _ in range(kv.RESULTS_PER_SESSION_MAX + 1):  # never acks
        log.one(c.propose(Put(b"k", b"v")))
    revision = state.revision
    assert log.one(Proposal("c", seq=1, ack=0, command=Put(b"k", b"v"))) == expired(revision)
    assert log.one(Proposal("c", seq=2, ack=0, command=Put(b"k", b"v"))) == ok(True, 2)
    assert state.revision == revision


def test_lru_eviction_is_deterministic() -> None:
    def run(order: list[str]) -> tuple[list[WriteResult], bytes]:
        state = KvState(sessions_max=2)
        log = Log(state)
        log.one(Proposal("old", seq=1, ack=0, command=Put(b"o", b"")))
        # Three new clients in one entry: "old" goes first (least recent index),
        # then the tie at this index is broken by client id: "a" goes. The
        # deletes change no data, so only the session order could differ.
        log.apply(*(Proposal(cid, seq=1, ack=0, command=Delete(b"absent")) for cid in order))
        results = [
            log.one(Proposal(cid, seq=2, ack=2, command=Put(cid.encode(), b"again")))
            for cid in ["old", "a", "b", "c"]
        ]
        return results, state.snapshot()

    results, snapshot = run(["c", "a", "b"])
    assert [r.status for r in results] == ["expired", "expired", "ok", "ok"]
    assert run(["b", "c", "a"]) == (results, snapshot)
    assert run(["a", "b", "c"]) == (results, snapshot)


def test_recently_used_session_survives_eviction() -> None:
    state = KvState(sessions_max=2)
    log = Log(state)
    log.one(Proposal("a", seq=1, ack=0, command=Put(b"k", b"")))
    log.one(Proposal("b", seq=1, ack=0, command=Put(b"k", b"")))
    log.one(Proposal("a", seq=1, ack=0, command=Put(b"k", b"")))  # a duplicate still counts as use
    log.one(Proposal("c", seq=1, ack=0, command=Put(b"k", b"")))  # evicts b
    assert log.one(Proposal("a", seq=2, ack=2, command=Put(b"k", b""))).status == "ok"
    assert log.one(Proposal("b", seq=2, ack=2, command=Put(b"k", b""))).status == "expired"


# -- snapshots and determinism -----------------------------------------------------------

LIMITS = {"sessions_max": 3, "history_max": 6, "history_bytes_max": 6 * kv.EVENT_OVERHEAD_BYTES}
keys = st.sampled_from([b"a", b"a/1", b"a/2", b"b"])
values = st.binary(max_size=8)
commands = st.one_of(
    st.builds(Put, keys, values),
    st.builds(Delete, keys),
    st.builds(Cas, keys, st.one_of(st.none(), values, st.sampled_from([b"", b"x"])), values),
)
# Small seq/ack ranges on purpose: they produce retries, expiries and new sessions.
proposals = st.builds(
    Proposal,
    client_id=st.sampled_from(["p", "q", "r", "s", "t"]),
    seq=st.integers(1, 8),
    ack=st.integers(0, 4),
    command=commands,
)
entries = st.one_of(
    st.just(b""),
    st.lists(proposals, min_size=1, max_size=4).map(lambda ps: kv.encode_batch(Batch(tuple(ps)))),
)


def observe(state: KvState) -> object:
    """Everything a client can see of a state."""
    history: object
    try:
        history = state.events(0, b"", kv.RANGE_LIMIT_MAX)
    except kv.Compacted:
        history = state.events(state.compacted_revision + 1, b"", kv.RANGE_LIMIT_MAX)
    return (
        state.revision,
        state.applied_index,
        state.compacted_revision,
        state.range(b"", kv.RANGE_LIMIT_MAX),
        history,
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=st.lists(entries, max_size=30), data=st.data())
def test_snapshot_restore_then_continue_matches(log: list[bytes], data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(log)), label="cut")
    original = KvState(**LIMITS)
    for index, entry in enumerate(log[:cut], start=1):
        original.apply(index, entry)
    image = original.snapshot()
    restored = KvState.restore(image, **LIMITS)
    assert restored.snapshot() == image
    assert observe(restored) == observe(original)
    for index, entry in enumerate(log[cut:], start=cut + 1):
        assert restored.apply(index, entry) == original.apply(index, entry)
    assert observe(restored) == observe(original)
    assert restored.snapshot() == original.snapshot()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(keys, st.one_of(st.none(), values)), min_size=1, max_size=3), max_size=20
    )
)
def test_matches_a_dict_model(writes: list[list[tuple[bytes, bytes | None]]]) -> None:
    state = KvState()
    log, c = Log(state), Client("c")
    model: dict[bytes, bytes] = {}
    revision = 0
    for entry in writes:
        batch = []
        for key, value in entry:
            batch.append(c.propose(Delete(key) if value is None else Put(key, value)))
            if value is not None:
                model[key] = value
                revision += 1
            elif model.pop(key, None) is not None:
                revision += 1
        log.apply(*batch)
        c.ack = c.next_seq
    assert {item.key: item.value for item in state.range(b"", 100)[0]} == model
    assert state.revision == revision


REPLICA_SCRIPT = textwrap.dedent(
    """
    import hashlib
    from moot.core import kv
    state = kv.KvState(sessions_max=5, history_max=50)
    for i in range(1, 300):
        proposals = tuple(
            kv.Proposal(f"client-{(i * 7 + j) % 9}", seq=i, ack=max(0, i - 3),
                        command=kv.Put(f"key-{(i * j) % 23}".encode(), str(i).encode())
                        if (i + j) % 4 else kv.Delete(f"key-{i % 23}".encode()))
            for j in range(3)
        )
        state.apply(i, kv.encode_batch(kv.Batch(proposals)))
    print(hashlib.sha256(state.snapshot()).hexdigest())
    """
)


def test_replicas_in_different_processes_are_byte_identical() -> None:
    """Different hash seeds: nothing may depend on set or hash order."""
    digests = {
        subprocess.run(
            [sys.executable, "-c", REPLICA_SCRIPT],
            env={**os.environ, "PYTHONHASHSEED": seed},
            cwd=pathlib.Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(digests) == 1
    local: dict[str, object] = {}
    exec(REPLICA_SCRIPT.replace("print(", "digest = ("), local)
    assert digests == {f"{local['digest']}\n"}


def test_restore_rejects_corrupt_data() -> None:
    state = KvState()
    log, c = Log(state), Client("c")
    log.one(c.propose(Put(b"a", b"1")))
    log.one(c.propose(Put(b"b", b"2")))
    image = state.snapshot()
    for bad in [b"", b"\xc1", image[:-3], b"\xff" * 40]:
        with pytest.raises(ValueError, match="corrupt KV snapshot"):
            KvState.restore(bad)
    decoded = msgspec.msgpack.decode(image)
    tampered = [
        {**decoded, "format_version": 99},
        {**decoded, "data": list(reversed(decoded["data"]))},
        {**decoded, "revision": 1},
        {**decoded, "compacted_revision": 1},
        {**decoded, "applied_index": 0},
        {**decoded, "unknown": 1},
    ]
    for image_fields in tampered:
        with pytest.raises(ValueError, match="corrupt KV snapshot"):
            KvState.restore(msgspec.msgpack.encode(image_fields))


def test_restore_with_smaller_limits_trims() -> None:
    state = KvState()
    log = Log(state)
    for cid in ["a", "b", "c"]:
        log.one(Proposal(cid, seq=1, ack=0, command=Put(cid.encode(), b"")))
    restored = KvState.restore(state.snapshot(), sessions_max=1, history_max=2)
    assert restored.compacted_revision == 1
    assert Log(restored).one(Proposal("b", seq=2, ack=2, command=Delete(b"b"))).status == "expired"


# -- validation at the boundary ------------------------------------------------------------


def test_validate_key_and_value() -> None:
    assert kv.validate_key(b"k") == b"k"
    assert kv.validate_value(b"") == b""
    assert kv.validate_key(b"k" * kv.KEY_BYTES_MAX) == b"k" * kv.KEY_BYTES_MAX
    cases = [
        (kv.validate_key, "k", "must be bytes"),
        (kv.validate_key, bytearray(b"k"), "must be bytes"),
        (kv.validate_key, b"", "must not be empty"),
        (kv.validate_key, b"k" * (kv.KEY_BYTES_MAX + 1), "KEY_BYTES_MAX"),
        (kv.validate_value, None, "must be bytes"),
        (kv.validate_value, b"v" * (kv.VALUE_BYTES_MAX + 1), "VALUE_BYTES_MAX"),
    ]
    for validate, argument, message in cases:
        with pytest.raises(kv.BadCommand, match=message):
            validate(argument)


def test_encode_batch_refuses_what_replicas_could_not_decode() -> None:
    for proposal in [
        Proposal("c", seq=1, ack=0, command=Put(b"", b"v")),
        Proposal("", seq=1, ack=0, command=Put(b"k", b"v")),
        Proposal("c", seq=0, ack=0, command=Put(b"k", b"v")),
    ]:
        with pytest.raises(kv.BadCommand, match="limit"):
            kv.encode_batch(Batch((proposal,)))
    batch = Batch((Proposal("c", seq=1, ack=0, command=Cas(b"k", None, b"v")),))
    assert kv.decode_batch(kv.encode_batch(batch)) == batch


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=64), entries.map(lambda e: e[: len(e) // 2] + e[len(e) // 2 + 1 :])
    )
)
def test_decode_batch_of_garbage_raises_only_msgspec_errors(data: bytes) -> None:
    with contextlib.suppress(msgspec.DecodeError):  # ValidationError is a subclass
        kv.decode_batch(data)


def test_range_pages_with_after() -> None:
    state = KvState()
    log = Log(state)
    for i in range(7):
        log.one(Proposal("c", seq=i + 1, ack=i + 1, command=Put(f"p/{i}".encode(), b"v")))
    log.one(Proposal("c", seq=8, ack=8, command=Put(b"q/0", b"v")))
    first, more = state.range(b"p/", 3)
    assert [kv.key for kv in first] == [b"p/0", b"p/1", b"p/2"] and more
    second, more = state.range(b"p/", 3, after=first[-1].key)
    assert [kv.key for kv in second] == [b"p/3", b"p/4", b"p/5"] and more
    third, more = state.range(b"p/", 3, after=second[-1].key)
    assert [kv.key for kv in third] == [b"p/6"] and not more


def test_a_leader_applies_its_own_entries_without_decoding_them_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # The leader decodes each batch once (the check in encode_checked_batch)
    # and applies that decoded batch; a follower decodes what it receives.
    import random

    from moot.core.kv_server import KvServer, WriteReply, WriteRequest
    from moot.core.raft_config import RaftConfig

    server = KvServer(RaftConfig.sim(), node_id="n1", voters=("n1",), rng=random.Random(1), now_ms=0)
    now = 0
    while server.raft.role != "leader":
        now += 10
        out = server.tick(now)
        server.advance(out)
    decodes: list[bytes] = []
    real = kv.decode_batch
    monkeypatch.setattr(kv, "decode_batch", lambda data: decodes.append(data) or real(data))
    request = WriteRequest(Proposal("c", 1, 0, Put(key=b"k", value=b"v")))
    out = server.handle(now, [(7, request)])
    replies = list(out.replies)
    server.advance(out)
    while not replies:
        now += 10
        out = server.tick(now)
        replies += out.replies
        server.advance(out)
    assert replies == [(7, WriteReply(ok(True, 1)))]
    assert len(decodes) == 1, "decoded once to check it, not again to apply it"
    assert server.state.get(b"k") is not None
