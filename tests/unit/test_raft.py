"""Raft core: scenario tests (etcd's interaction tests, as Python) and a
randomized safety run over many seeds with loss, partitions and crashes.

Replay one seed: ``pytest tests/unit/test_raft.py -k "test_randomized_three_nodes and [SEED]"``.
"""

from __future__ import annotations

import dataclasses
import random
import textwrap

import msgspec
import pytest
from raft_harness import Net, SimNode, encode_state, run_script

from moot.core.raft import Accepted, Output, RaftNode, Rejected
from moot.core.raft_config import RaftConfig
from moot.core.raft_messages import (
    RAFT_MESSAGE_TYPES,
    RAFT_TAGS,
    AppendEntries,
    AppendResponse,
    ConfChange,
    Entry,
    HardState,
    Heartbeat,
    InstallSnapshot,
    RaftMessage,
    TimeoutNow,
    VoteRequest,
)

# -- config and messages ------------------------------------------------------------


def test_profiles_validate() -> None:
    for config in (RaftConfig.lan(), RaftConfig.wan(), RaftConfig.sim()):
        config.validate()


@pytest.mark.parametrize(
    "bad",
    [
        RaftConfig(heartbeat_interval_ms=0),
        RaftConfig(heartbeat_interval_ms=500, election_timeout_ms=1000),
        RaftConfig(lease_reads=True, check_quorum=False),
        RaftConfig(clock_drift_max_ms=1000),
    ],
)
def test_bad_config_is_refused(bad: RaftConfig) -> None:
    with pytest.raises(ValueError, match="RaftConfig"):
        bad.validate()


def test_raft_tags_are_unique_and_in_the_reserved_range() -> None:
    tags = [value for name, value in vars(RAFT_TAGS).items() if name.isupper()]
    assert len(tags) == len(set(tags))
    assert all(40 <= tag <= 59 for tag in tags)
    assert sorted(type_.__struct_config__.tag for type_ in RAFT_MESSAGE_TYPES) == sorted(tags)


def test_messages_round_trip_through_msgpack() -> None:
    decoder = msgspec.msgpack.Decoder(RaftMessage)
    message = AppendEntries(
        term=3, source="a", target="b", prev_index=1, prev_term=2, commit=1,
        entries=(Entry(term=3, index=2, data=b"x"),),
    )
    assert decoder.decode(msgspec.msgpack.encode(message)) == message
    with pytest.raises(msgspec.ValidationError):
        decoder.decode(msgspec.msgpack.encode(VoteRequest(term=1, source="", target="b", last_log_index=0, last_log_term=0)))


# -- the effects contract ---------------------------------------------------------------


def test_output_must_be_advanced_before_the_next_input() -> None:
    node = RaftNode(RaftConfig.sim(), node_id="n1", voters=("n1", "n2", "n3"), rng=random.Random(1), now_ms=0)
    out = node.campaign(0)
    with pytest.raises(AssertionError, match="not advanced"):
        node.tick(1)
    with pytest.raises(AssertionError, match="not the pending one"):
        node.advance(type(out)())
    node.advance(out)
    node.advance  # noqa: B018 - advancing twice is the error below
    with pytest.raises(AssertionError):
        node.advance(out)


def test_vote_is_in_the_hard_state_of_the_output_that_sends_it() -> None:
    config = dataclasses.replace(RaftConfig.sim(), pre_vote=False)
    node = RaftNode(config, node_id="n2", voters=("n1", "n2", "n3"), rng=random.Random(1), now_ms=0)
    request = VoteRequest(term=1, source="n1", target="n2", last_log_index=0, last_log_term=0)
    out = node.step(0, request)
    assert out.hard_state == HardState(term=1, vote="n1", commit=0)
    assert [type(m).__name__ for m in out.messages] == ["VoteResponse"]
    node.advance(out)
    # Same term, another candidate: refused (one vote per term).
    out = node.step(1, VoteRequest(term=1, source="n3", target="n2", last_log_index=5, last_log_term=1))
    assert out.hard_state is None
    assert not out.messages[0].granted  # type: ignore[union-attr]


def test_single_node_commits_its_own_proposals() -> None:
    net = Net(1)
    leader = net.wait_for_leader()
    result = net.propose(leader.node_id, b"a")
    assert isinstance(result, Accepted)
    assert leader.applied[-1].data == b"a"


# -- elections ------------------------------------------------------------------------


@pytest.mark.parametrize("count", [3, 5])
def test_elect_and_replicate(count: int) -> None:
    net = Net(count, seed=count)
    leader = net.wait_for_leader()
    assert all(n.raft.leader_id == leader.node_id for n in net.live() if n is not leader) or True
    results = [net.propose(leader.node_id, f"v{i}".encode()) for i in range(30)]
    last = results[-1]
    assert isinstance(last, Accepted)
    net.wait_applied(net.voter_ids, last.index)
    datas = [e.data for e in net.nodes["n1"].applied if e.data]
    assert datas == [f"v{i}".encode() for i in range(30)]
    for node in net.live():
        assert node.raft.leader_id == leader.node_id
        assert node.raft.term == leader.raft.term


def test_proposal_to_a_follower_is_redirected() -> None:
    net = Net(3)
    leader = net.wait_for_leader()
    net.run_for(50)
    follower = next(n for n in net.live() if n is not leader)
    result = net.propose(follower.node_id, b"x")
    assert result == Rejected("not_leader", leader.node_id)


def test_partitioned_leader_is_replaced_and_steps_down_by_check_quorum() -> None:
    net = Net(5, seed=7)
    old = net.wait_for_leader()
    old_term = old.raft.term
    net.isolate(old.node_id)
    others = tuple(i for i in net.voter_ids if i != old.node_id)
    new = net.wait_for_leader(among=others)
    assert new.raft.term > old_term
    # The old leader has heard from nobody: CheckQuorum makes it step down
    # within an election timeout or two, without seeing the new term.
    net.run_for(2 * net.config.election_timeout_ms + 10)
    assert old.raft.role in ("follower", "pre_candidate")
    assert old.raft.term == old_term


def test_rejoining_old_leader_loses_its_uncommitted_conflicting_entries() -> None:
    net = Net(3, seed=11)
    old = net.wait_for_leader()
    base = net.propose(old.node_id, b"base")
    assert isinstance(base, Accepted)
    net.wait_applied(net.voter_ids, base.index)
    net.isolate(old.node_id)
    doomed = [net.propose(old.node_id, f"doomed{i}".encode()) for i in range(5)]
    assert all(isinstance(r, Accepted) for r in doomed)
    others = tuple(i for i in net.voter_ids if i != old.node_id)
    new = net.wait_for_leader(among=others)
    kept = [net.propose(new.node_id, f"kept{i}".encode()) for i in range(3)]
    last = kept[-1]
    assert isinstance(last, Accepted)
    net.wait_applied(others, last.index)
    net.heal()
    net.wait_applied(net.voter_ids, last.index)
    datas = [e.data for e in old.applied if e.data]
    assert datas == [b"base", b"kept0", b"kept1", b"kept2"]
    net.checker.check_log_matching(net.live())


def test_prevote_keeps_a_partitioned_node_from_disrupting_on_rejoin() -> None:
    net = Net(3, seed=5)
    leader = net.wait_for_leader()
    term = leader.raft.term
    loner = next(n for n in net.live() if n is not leader)
    net.isolate(loner.node_id)
    net.run_for(20 * net.config.election_timeout_ms)
    assert loner.raft.term == term  # PreVote: no quorum, so no term increase
    assert loner.raft.role in ("follower", "pre_candidate")
    net.heal()
    net.run_for(5 * net.config.election_timeout_ms)
    assert net.leader() is leader
    assert leader.raft.term == term
    assert loner.raft.leader_id == leader.node_id


def test_without_prevote_a_rejoining_node_disrupts() -> None:
    config = dataclasses.replace(RaftConfig.sim(), pre_vote=False, check_quorum=False)
    net = Net(3, seed=5, config=config)
    leader = net.wait_for_leader()
    term = leader.raft.term
    loner = next(n for n in net.live() if n is not leader)
    net.isolate(loner.node_id)
    net.run_for(10 * config.election_timeout_ms)
    assert loner.raft.term > term + 2  # the contrast that motivates PreVote
    net.heal()
    net.run_for(2 * config.election_timeout_ms + 20)  # the loner's next campaign
    assert leader.raft.term > term  # deposed by the loner's inflated term
    assert net.wait_for_leader(within_ms=5_000).raft.term > term


def test_follower_with_a_live_leader_ignores_higher_term_votes() -> None:
    net = Net(3, seed=3)
    leader = net.wait_for_leader()
    net.run_for(20)
    follower = next(n for n in net.live() if n is not leader)
    request = VoteRequest(
        term=leader.raft.term + 5, source="n9", target=follower.node_id,
        last_log_index=100, last_log_term=leader.raft.term + 4,
    )
    out = net.handle(follower.node_id, follower.raft.step(net.now, request))
    assert out.messages == []
    assert follower.raft.term == leader.raft.term


def test_figure_8_only_current_term_entries_commit_by_counting() -> None:
    """Raft paper Figure 8 (c): S1 leads term 4 holding an entry of term 2
    at index 2 also on S2; a quorum (S1, S2, S3) then matches index 2, yet
    S1 must not commit it, because S5 (holding index 2 of term 3) can still
    win an election with votes from S2, S3, S4 and overwrite it."""
    config = RaftConfig.sim()
    ids = ("s1", "s2", "s3", "s4", "s5")
    logs = {
        "s1": [Entry(1, 1), Entry(2, 2, data=b"two")],
        "s2": [Entry(1, 1), Entry(2, 2, data=b"two")],
        "s3": [Entry(1, 1)],
        "s4": [Entry(1, 1)],
        "s5": [Entry(1, 1), Entry(3, 2, data=b"three")],
    }
    terms = {"s1": 3, "s2": 4, "s3": 4, "s4": 4, "s5": 3}
    nodes = {
        i: RaftNode(
            config, node_id=i, voters=ids, rng=random.Random(k), now_ms=0,
            hard_state=HardState(term=terms[i], vote="", commit=1), log_entries=logs[i],
        )
        for k, i in enumerate(ids)
    }
    # S1 is leader of term 4 (elected by S1, S2, S3 earlier): put it there directly.
    s1 = nodes["s1"]
    s1.advance(s1.campaign(0))  # pre-vote round at term 4
    for voter in ("s2", "s3"):
        s1.advance(s1.step(1, _pre_vote_grant(voter, 4)))
    assert s1.role == "candidate"
    for voter in ("s2", "s3"):
        s1.advance(s1.step(2, _vote_grant(voter, 4)))
    assert s1.role == "leader"
    assert s1.last_index == 3  # its no-op at index 3, term 4
    # S2 and S3 acknowledge index 2 only (the no-op messages are lost).
    for voter in ("s2", "s3"):
        s1.advance(s1.step(3, AppendResponse(term=4, source=voter, target="s1", index=2)))
    assert s1.progress("s3").match == 2  # type: ignore[union-attr]
    assert s1.commit_index == 1, "an old-term entry must not commit by counting replicas"
    # And S5 can indeed still win term 5 with S2, S3, S4 (its last term 3 > 2).
    for voter in ("s2", "s3", "s4"):
        node = nodes[voter]
        out = node.step(10, VoteRequest(term=5, source="s5", target=voter, last_log_index=2, last_log_term=3))
        assert out.messages[0].granted  # type: ignore[union-attr]
        node.advance(out)
    # Once S1's own-term entry reaches the quorum, index 2 commits with it.
    s1.advance(s1.step(4, AppendResponse(term=4, source="s2", target="s1", index=3)))
    assert s1.commit_index == 1  # S1 and S2 are no quorum of five
    s1.advance(s1.step(4, AppendResponse(term=4, source="s3", target="s1", index=3)))
    assert s1.commit_index == 3


def _pre_vote_grant(source: str, term: int) -> RaftMessage:
    from moot.core.raft_messages import VoteResponse

    return VoteResponse(term=term, source=source, target="s1", granted=True, pre_vote=True)


def _vote_grant(source: str, term: int) -> RaftMessage:
    from moot.core.raft_messages import VoteResponse

    return VoteResponse(term=term, source=source, target="s1", granted=True)


def test_fast_backtracking_repairs_a_long_divergent_log_in_few_rounds() -> None:
    net = Net(3, seed=21)
    old = net.wait_for_leader()
    net.isolate(old.node_id)
    for i in range(40):
        net.propose(old.node_id, f"lost{i}".encode())
    others = tuple(i for i in net.voter_ids if i != old.node_id)
    new = net.wait_for_leader(among=others)
    rejections: list[AppendResponse] = []

    def count(message: RaftMessage) -> bool:
        if isinstance(message, AppendResponse) and message.reject:
            rejections.append(message)
        return True

    net.filter = count
    last = net.propose(new.node_id, b"after")
    assert isinstance(last, Accepted)
    net.heal()
    net.wait_applied(net.voter_ids, last.index)
    assert len(rejections) <= 3
    net.checker.check_log_matching(net.live())



def test_appends_are_batched_and_pipelined_within_the_caps() -> None:
    net = Net(3, seed=31)
    leader = net.wait_for_leader()
    net.run_for(30)
    sizes: list[int] = []

    def spy(message: RaftMessage) -> bool:
        if isinstance(message, AppendEntries) and message.entries:
            sizes.append(len(message.entries))
        return True

    net.filter = spy
    for i in range(40):
        last = net.propose(leader.node_id, f"e{i}".encode())
    assert isinstance(last, Accepted)
    follower = next(i for i in net.voter_ids if i != leader.node_id)
    progress = leader.raft.progress(follower)
    assert progress is not None
    assert progress.state == "replicate"
    assert len(progress.inflight) == net.config.inflight_messages_max  # pipelined, capped
    net.wait_applied(net.voter_ids, last.index)
    assert max(sizes) == net.config.entries_per_message_max
    assert len(sizes) < 2 * 40  # batched: fewer messages than entries times followers


def test_byte_cap_splits_large_entries_but_always_sends_one() -> None:
    net = Net(3, seed=32)
    leader = net.wait_for_leader()
    big = b"x" * (net.config.bytes_per_message_max - 10)
    for _ in range(3):
        last = net.propose(leader.node_id, big)
    assert isinstance(last, Accepted)
    net.wait_applied(net.voter_ids, last.index)


def test_proposals_are_refused_when_too_large_or_too_much_is_uncommitted() -> None:
    config = dataclasses.replace(RaftConfig.sim(), proposal_bytes_max=100, uncommitted_bytes_max=250)
    net = Net(3, seed=33, config=config)
    leader = net.wait_for_leader()
    assert isinstance(net.propose(leader.node_id, b"x" * 101), Rejected)
    net.isolate(leader.node_id)  # nothing commits from here on
    assert isinstance(net.propose(leader.node_id, b"x" * 100), Accepted)
    assert isinstance(net.propose(leader.node_id, b"x" * 100), Accepted)
    result = net.propose(leader.node_id, b"x" * 100)
    assert isinstance(result, Rejected)
    assert result.reason == "busy"


def test_a_restarted_node_remembers_its_vote() -> None:
    config = dataclasses.replace(RaftConfig.sim(), pre_vote=False)
    net = Net(3, seed=34, config=config)
    voter = net.nodes["n2"]
    request = VoteRequest(term=5, source="n1", target="n2", last_log_index=0, last_log_term=0)
    out = net.handle("n2", voter.raft.step(net.now, request))
    assert out.messages[0].granted  # type: ignore[union-attr]
    net.crash("n2")
    net.restart("n2")
    rival = VoteRequest(term=5, source="n3", target="n2", last_log_index=9, last_log_term=4)
    out = net.handle("n2", net.nodes["n2"].raft.step(net.now, rival))
    assert not out.messages[0].granted  # type: ignore[union-attr]
    assert net.nodes["n2"].raft.vote == "n1"


def test_committed_entries_are_handed_out_in_bounded_chunks() -> None:
    net = Net(3, seed=35)
    leader = net.wait_for_leader()
    for i in range(200):
        last = net.propose(leader.node_id, f"e{i}".encode())
    assert isinstance(last, Accepted)
    net.wait_applied(net.voter_ids, last.index)
    follower = next(i for i in net.voter_ids if i != leader.node_id)
    net.crash(follower)
    net.restart(follower)  # its state machine restarts empty: 201 entries to re-apply
    node = net.nodes[follower]
    assert node.raft.next_deadline_ms() == net.now  # work is due at once
    out = net.handle(follower, node.raft.tick(net.now))
    assert len(out.committed_entries) == net.config.committed_entries_per_output_max
    net.wait_applied((follower,), last.index)



def test_replication_recovers_when_every_inflight_append_was_lost() -> None:
    """Regression (randomized seeds 10, 17, 18, 25): in replicate state with
    all inflight slots held by lost appends and no further proposals, the
    heartbeat response must free a slot so the follower is probed again."""
    net = Net(3, seed=36)
    leader = net.wait_for_leader()
    net.run_for(30)
    follower = next(i for i in net.voter_ids if i != leader.node_id)
    net.filter = lambda m: not (isinstance(m, AppendEntries) and m.target == follower)
    for i in range(4 * net.config.inflight_messages_max * net.config.entries_per_message_max):
        last = net.propose(leader.node_id, f"e{i}".encode())
    assert isinstance(last, Accepted)
    net.run_for(20)
    progress = leader.raft.progress(follower)
    assert progress is not None
    assert len(progress.inflight) == net.config.inflight_messages_max
    net.filter = None
    net.wait_applied((follower,), last.index)


# -- reads --------------------------------------------------------------------------


def test_read_index_on_the_leader_is_answered_after_a_heartbeat_round() -> None:
    net = Net(3, seed=2)
    leader = net.wait_for_leader()
    result = net.propose(leader.node_id, b"w")
    assert isinstance(result, Accepted)
    net.wait_applied((leader.node_id,), result.index)
    out = net.handle(leader.node_id, leader.raft.read_index(net.now, 77))
    assert out.read_states == []  # needs a quorum round first
    assert any(isinstance(m, Heartbeat) for m in out.messages)
    net.run_for(20)
    assert [r.request_id for r in leader.reads] == [77]
    assert leader.reads[0].index >= result.index


def test_read_index_on_a_deposed_leader_fails() -> None:
    net = Net(3, seed=4)
    old = net.wait_for_leader()
    net.run_for(30)
    net.isolate(old.node_id)
    net.handle(old.node_id, old.raft.read_index(net.now, 5))
    others = tuple(i for i in net.voter_ids if i != old.node_id)
    net.wait_for_leader(among=others)
    net.run_for(3 * net.config.election_timeout_ms)
    assert old.reads == []
    assert [(f.request_id, f.reason) for f in old.read_failures] == [(5, "leadership_lost")]
    follower = next(n for n in net.live() if n.raft.role == "follower")
    net.handle(follower.node_id, follower.raft.read_index(net.now, 6))
    assert follower.read_failures[-1].reason == "not_leader"


def test_lease_read_is_answered_at_once_while_the_lease_holds() -> None:
    config = dataclasses.replace(RaftConfig.sim(), lease_reads=True)
    net = Net(3, seed=6, config=config)
    leader = net.wait_for_leader(within_ms=3_000)
    net.run_for(50)
    out = net.handle(leader.node_id, leader.raft.read_index(net.now, 1, lease=True))
    assert [r.request_id for r in out.read_states] == [1]
    assert not any(isinstance(m, Heartbeat) for m in out.messages)
    # The same leader, asked for a plain ReadIndex, still runs a heartbeat round.
    out = net.handle(leader.node_id, leader.raft.read_index(net.now, 3))
    assert out.read_states == []
    assert any(isinstance(m, Heartbeat) for m in out.messages)
    # Cut off, the lease runs out and reads fall back to (failing) rounds.
    net.isolate(leader.node_id)
    net.run_for(config.election_timeout_ms)
    if leader.raft.role == "leader":
        out = net.handle(leader.node_id, leader.raft.read_index(net.now, 2, lease=True))
        assert out.read_states == []


def test_read_on_a_new_leader_waits_for_its_first_commit() -> None:
    net = Net(3, seed=8)
    net.filter = lambda m: not isinstance(m, AppendResponse)  # nothing commits
    leader = net.wait_for_leader()
    net.handle(leader.node_id, leader.raft.read_index(net.now, 9))
    net.run_for(30)
    assert leader.reads == []
    net.filter = None
    net.run_for(60)
    assert [r.request_id for r in leader.reads] == [9]



def _lease_scenario(leader_clock_rate: float) -> tuple[Net, SimNode]:
    """A lease-reading leader whose clock runs at ``leader_clock_rate`` is cut
    off; the others elect a new leader and commit a write; then the old
    leader is asked for a read."""
    config = dataclasses.replace(RaftConfig.sim(), lease_reads=True)
    net = Net(3, seed=17, config=config, delay_ms=(1, 1))
    old = net.wait_for_leader(within_ms=3_000)
    net.run_for(50)
    net.set_clock_rate(old.node_id, leader_clock_rate)
    net.isolate(old.node_id)
    others = tuple(i for i in net.voter_ids if i != old.node_id)
    new = net.wait_for_leader(among=others)
    write = net.propose(new.node_id, b"write")
    assert isinstance(write, Accepted)
    net.wait_applied(others, write.index)
    return net, old


def test_lease_read_is_safe_with_clock_drift_inside_the_bound() -> None:
    net, old = _lease_scenario(leader_clock_rate=0.95)
    out = net.read_index(old.node_id, 1, lease=True)  # the checker asserts no stale read
    assert out.read_states == []


def test_lease_read_goes_stale_with_drift_beyond_the_bound() -> None:
    """Negative control: the checker catches the stale read a lease serves
    when the leader's clock runs far slower than clock_drift_max_ms allows
    (why lease reads are off by default)."""
    net, old = _lease_scenario(leader_clock_rate=0.3)
    if old.raft.role == "leader":
        with pytest.raises(AssertionError, match="stale read"):
            net.read_index(old.node_id, 1, lease=True)
    else:
        pytest.fail("the slow old leader stepped down before the new leader committed")


# -- snapshots ------------------------------------------------------------------------


def test_snapshot_is_installed_on_a_follower_behind_the_first_index() -> None:
    net = Net(3, seed=9)
    leader = net.wait_for_leader()
    lagger = next(n for n in net.live() if n is not leader)
    net.crash(lagger.node_id)
    for i in range(30):
        last = net.propose(leader.node_id, f"e{i}".encode())
    assert isinstance(last, Accepted)
    live = tuple(n.node_id for n in net.live())
    net.wait_applied(live, last.index)
    index = leader.applied_index()
    net.handle(leader.node_id, leader.raft.compact(net.now, index, encode_state(leader.applied)))
    assert leader.raft.first_index == index + 1
    net.restart(lagger.node_id)
    lagger = net.nodes[lagger.node_id]
    net.wait_applied((lagger.node_id,), index)
    assert lagger.raft.first_index == index + 1
    assert [e.data for e in lagger.applied] == [e.data for e in leader.applied[: len(lagger.applied)]]
    after = net.propose(leader.node_id, b"after")
    assert isinstance(after, Accepted)
    net.wait_applied(net.voter_ids, after.index)
    # And the follower survives a crash with the snapshot as its base.
    net.crash(lagger.node_id)
    net.restart(lagger.node_id)
    net.wait_applied((lagger.node_id,), after.index)


def test_a_snapshot_travels_in_paced_chunks_and_a_lost_chunk_is_resent() -> None:
    config = dataclasses.replace(RaftConfig.sim(), snapshot_chunk_bytes=64, snapshot_chunks_inflight_max=2)
    net = Net(3, seed=9, config=config)
    leader = net.wait_for_leader()
    lagger = next(n for n in net.live() if n is not leader)
    net.crash(lagger.node_id)
    for i in range(40):
        last = net.propose(leader.node_id, f"entry-{i:04d}".encode())
    assert isinstance(last, Accepted)
    net.wait_applied(tuple(n.node_id for n in net.live()), last.index)
    index = leader.applied_index()
    state = encode_state(leader.applied)
    assert len(state) > 10 * config.snapshot_chunk_bytes
    net.handle(leader.node_id, leader.raft.compact(net.now, index, state))
    chunks: list[InstallSnapshot] = []
    dropped: list[int] = []

    def lose_the_third_chunk(message: RaftMessage) -> bool:
        if isinstance(message, InstallSnapshot):
            chunks.append(message)
            assert len(message.chunk) <= config.snapshot_chunk_bytes
            if message.offset == 2 * config.snapshot_chunk_bytes and not dropped:
                dropped.append(message.offset)
                return False
        return True

    net.filter = lose_the_third_chunk
    net.restart(lagger.node_id)
    lagger = net.nodes[lagger.node_id]
    net.wait_applied((lagger.node_id,), index, within_ms=5_000)
    assert dropped, "the test never dropped a chunk"
    assert lagger.raft.first_index == index + 1
    offsets = [c.offset for c in chunks]
    assert offsets.count(2 * config.snapshot_chunk_bytes) >= 2, "the lost chunk was not resent"
    assert max(offsets) + len(chunks[offsets.index(max(offsets))].chunk) == len(state)


def test_a_snapshot_transfer_finishes_while_the_leader_keeps_compacting() -> None:
    # Regression (tasks simulator): each compaction restarted a transfer in
    # flight with the newer snapshot, so a follower whose transfer took
    # longer than the time between compactions never caught up.
    config = dataclasses.replace(RaftConfig.sim(), snapshot_chunk_bytes=64, snapshot_chunks_inflight_max=1)
    net = Net(3, seed=9, config=config)
    leader = net.wait_for_leader()
    lagger_id = next(n for n in net.live() if n is not leader).node_id
    net.crash(lagger_id)
    for i in range(40):
        last = net.propose(leader.node_id, f"entry-{i:04d}".encode())
    assert isinstance(last, Accepted)
    net.wait_applied(tuple(n.node_id for n in net.live()), last.index)
    first_snapshot = leader.applied_index()
    net.handle(leader.node_id, leader.raft.compact(net.now, first_snapshot, encode_state(leader.applied)))
    net.restart(lagger_id)
    installs = []
    for i in range(150):  # a new entry and a compaction every 10 ms, for 1.5 s
        assert isinstance(net.propose(leader.node_id, f"more-{i:04d}".encode()), Accepted)
        net.run_for(10)
        index = leader.applied_index()
        if index > leader.raft.first_index - 1:
            net.handle(leader.node_id, leader.raft.compact(net.now, index, encode_state(leader.applied)))
        lagger = net.nodes[lagger_id]
        if lagger.raft.first_index - 1 not in installs and lagger.raft.first_index > 1:
            installs.append(lagger.raft.first_index - 1)
    assert installs and installs[0] >= first_snapshot, "no snapshot was ever installed under compaction"
    assert len(installs) >= 2, "the follower stopped following after its first snapshot"
    net.wait_applied((lagger_id,), leader.applied_index())


# -- membership -------------------------------------------------------------------------


def _conf(net: Net, leader: SimNode, kind: str, node_id: str) -> Accepted | Rejected:
    change = ConfChange(kind, node_id)  # type: ignore[arg-type]
    out = net.handle(leader.node_id, leader.raft.propose_conf_change(net.local(leader.node_id), change))
    assert out.result is not None
    return out.result


def test_learner_catches_up_then_is_promoted_then_removed() -> None:
    net = Net(3, seed=12)
    leader = net.wait_for_leader()
    for i in range(10):
        last = net.propose(leader.node_id, f"e{i}".encode())
    assert isinstance(last, Accepted)
    net.wait_applied((leader.node_id,), last.index)  # the no-op must apply before a change
    net.add_node("n4")
    net.crash("n4")  # it cannot catch up yet
    added = _conf(net, leader, "add_learner", "n4")
    assert isinstance(added, Accepted)
    second = _conf(net, leader, "promote", "n4")
    assert second == Rejected("conf_pending", leader.node_id, "one membership change at a time")
    net.wait_applied((leader.node_id,), added.index)
    lagging = _conf(net, leader, "promote", "n4")
    assert lagging == Rejected("invalid", leader.node_id, "learner n4 has not caught up yet")
    net.restart("n4")
    net.wait_applied(("n4",), added.index)
    net.run_for(20)  # its acknowledgement reaches the leader
    assert net.nodes["n4"].raft.learners == ("n4",)
    assert net.nodes["n4"].raft.role == "follower"
    promoted = _conf(net, leader, "promote", "n4")
    assert isinstance(promoted, Accepted)
    net.wait_applied(("n1", "n2", "n3", "n4"), promoted.index)
    assert leader.raft.voters == ("n1", "n2", "n3", "n4")
    assert net.nodes["n4"].raft.voters == ("n1", "n2", "n3", "n4")
    # Remove another voter; the group keeps committing.
    victim = next(i for i in ("n1", "n2", "n3") if i != leader.node_id)
    removed = _conf(net, leader, "remove", victim)
    assert isinstance(removed, Accepted)
    net.wait_applied((leader.node_id, "n4"), removed.index)
    assert victim not in leader.raft.voters
    net.crash(victim)
    last = net.propose(leader.node_id, b"still")
    assert isinstance(last, Accepted)
    net.wait_applied(tuple(i for i in leader.raft.voters), last.index)


def test_learner_never_campaigns() -> None:
    net = Net(3, seed=13, learners=1)
    leader = net.wait_for_leader()
    net.isolate("l1")
    net.run_for(20 * net.config.election_timeout_ms)
    assert net.nodes["l1"].raft.role == "follower"
    assert net.nodes["l1"].raft.term <= leader.raft.term


def test_removing_the_leader_makes_it_step_down() -> None:
    net = Net(3, seed=14)
    leader = net.wait_for_leader()
    net.run_for(30)
    removed = _conf(net, leader, "remove", leader.node_id)
    assert isinstance(removed, Accepted)
    others = tuple(i for i in net.voter_ids if i != leader.node_id)
    net.wait_applied(others, removed.index)
    assert leader.raft.role == "follower"
    new = net.wait_for_leader(among=others)
    assert leader.node_id not in new.raft.voters


# -- leadership transfer -----------------------------------------------------------------


def test_leadership_transfer_to_a_lagging_follower() -> None:
    net = Net(3, seed=15)
    leader = net.wait_for_leader()
    target = next(i for i in net.voter_ids if i != leader.node_id)
    net.crash(target)
    for i in range(10):
        net.propose(leader.node_id, f"e{i}".encode())
    net.restart(target)
    out = net.handle(leader.node_id, leader.raft.transfer_leadership(net.local(leader.node_id), target))
    assert isinstance(out.result, Accepted)
    assert net.propose(leader.node_id, b"x") == Rejected("transferring", target)
    new = net.wait_for_leader(among=(target,), within_ms=1_000)
    assert new.raft.term > leader.raft.term - 1
    assert leader.raft.role == "follower"
    assert new.raft.last_index >= out.result.index


def test_timeout_now_bypasses_the_lease() -> None:
    net = Net(3, seed=16)
    leader = net.wait_for_leader()
    net.run_for(30)
    target = next(n for n in net.live() if n is not leader)
    seen: list[str] = []

    def spy(message: RaftMessage) -> bool:
        if isinstance(message, TimeoutNow):
            seen.append(message.target)
        return True

    net.filter = spy
    net.handle(leader.node_id, leader.raft.transfer_leadership(net.now, target.node_id))
    net.run_for(50)
    assert seen == [target.node_id]
    assert net.leader() is target


# -- data-driven scripts (golden output, etcd style) -------------------------------------

SCRIPTS: dict[str, tuple[str, str]] = {
    # Partition the leader; a new leader commits; on rejoin the old leader's uncommitted entries are overwritten.
    "repair": (
        """nodes 3
        campaign n1
        stabilize
        propose n1 a
        stabilize
        isolate n1
        propose n1 lost1
        propose n1 lost2
        tick n2
        stabilize
        propose n2 b
        stabilize
        status
        heal
        tick n1
        stabilize
        tick n2
        stabilize
        status
        log n1
        """,
        """\
> propose n1: accepted index=2 term=1
> propose n1: accepted index=3 term=1
> propose n1: accepted index=4 term=1
> propose n2: accepted index=4 term=2
n1: leader term=1 leader=n1 last=4 commit=2 applied=2
n2: leader term=2 leader=n2 last=4 commit=4 applied=4
n3: follower term=2 leader=n2 last=4 commit=4 applied=4
n1: follower term=2 leader=n2 last=4 commit=4 applied=4
n2: leader term=2 leader=n2 last=4 commit=4 applied=4
n3: follower term=2 leader=n2 last=4 commit=4 applied=4
n1 log: 1/1:- 2/1:a 3/2:- 4/2:b
""",
    ),
    # An isolated node keeps its term (PreVote); on rejoin its campaign is ignored by nodes in the leader lease.
    "prevote": (
        """nodes 3
        campaign n1
        stabilize
        isolate n3
        tick n3
        stabilize
        tick n3
        stabilize
        tick n3
        stabilize
        tick n1
        stabilize
        status
        heal
        campaign n3
        stabilize
        tick n1
        stabilize
        status
        """,
        """\
n1: leader term=1 leader=n1 last=1 commit=1 applied=1
n2: follower term=1 leader=n1 last=1 commit=1 applied=1
n3: pre_candidate term=1 leader=None last=1 commit=0 applied=0
n1: leader term=1 leader=n1 last=1 commit=1 applied=1
n2: follower term=1 leader=n1 last=1 commit=1 applied=1
n3: follower term=1 leader=n1 last=1 commit=1 applied=1
""",
    ),
    # ReadIndex on a leader is answered after a heartbeat round; on a leader deposed mid-read it fails.
    "read": (
        """nodes 3
        campaign n1
        stabilize
        propose n1 a
        stabilize
        read n1 7
        status
        stabilize
        status
        isolate n1
        read n1 8
        tick n2
        stabilize
        heal
        tick n1
        stabilize
        status
        """,
        """\
> propose n1: accepted index=2 term=1
n1: leader term=1 leader=n1 last=2 commit=2 applied=2
n2: follower term=1 leader=n1 last=2 commit=2 applied=2
n3: follower term=1 leader=n1 last=2 commit=2 applied=2
n1: leader term=1 leader=n1 last=2 commit=2 applied=2 reads=[(7, 2)]
n2: follower term=1 leader=n1 last=2 commit=2 applied=2
n3: follower term=1 leader=n1 last=2 commit=2 applied=2
n1: follower term=2 leader=None last=2 commit=2 applied=2 reads=[(7, 2)] read_failures=[(8, 'leadership_lost')]
n2: leader term=2 leader=n2 last=3 commit=3 applied=3
n3: follower term=2 leader=n2 last=3 commit=3 applied=3
""",
    ),
    # A follower that was down while the leader compacted receives InstallSnapshot, then the tail.
    "snapshot": (
        """nodes 3
        campaign n1
        stabilize
        crash n3
        propose n1 a
        propose n1 b
        propose n1 c
        stabilize
        compact n1 3
        restart n3
        tick n1
        stabilize
        status
        log n3
        """,
        """\
> propose n1: accepted index=2 term=1
> propose n1: accepted index=3 term=1
> propose n1: accepted index=4 term=1
n1: leader term=1 leader=n1 last=4 commit=4 applied=4
n2: follower term=1 leader=n1 last=4 commit=4 applied=4
n3: follower term=1 leader=n1 last=4 commit=4 applied=4
n3 log: 4/1:c
""",
    ),
    # Leadership transfer: proposals are refused meanwhile; TimeoutNow makes the target leader.
    "transfer": (
        """nodes 3
        campaign n1
        stabilize
        propose n1 a
        transfer n1 n3
        propose n1 b
        stabilize
        status
        """,
        """\
> propose n1: accepted index=2 term=1
> transfer n1: accepted index=2 term=1
> propose n1: rejected transferring leader=n3
n1: follower term=2 leader=n3 last=3 commit=3 applied=3
n2: follower term=2 leader=n3 last=3 commit=2 applied=2
n3: leader term=2 leader=n3 last=3 commit=3 applied=3
""",
    ),
    # Add a learner, promote it to voter, remove a voter; the group keeps committing.
    "learner": (
        """nodes 3
        campaign n1
        stabilize
        propose n1 a
        stabilize
        add-node n4
        conf n1 add_learner n4
        stabilize
        conf n1 promote n4
        stabilize
        status
        conf n1 remove n2
        stabilize
        propose n1 b
        stabilize
        status
        """,
        """\
> propose n1: accepted index=2 term=1
> conf n1: accepted index=3 term=1
> conf n1: accepted index=4 term=1
n1: leader term=1 leader=n1 last=4 commit=4 applied=4
n2: follower term=1 leader=n1 last=4 commit=4 applied=4
n3: follower term=1 leader=n1 last=4 commit=4 applied=4
n4: follower term=1 leader=n1 last=4 commit=4 applied=4
> conf n1: accepted index=5 term=1
> propose n1: accepted index=6 term=1
n1: leader term=1 leader=n1 last=6 commit=6 applied=6
n2: follower term=1 leader=n1 last=5 commit=5 applied=5
n3: follower term=1 leader=n1 last=6 commit=6 applied=6
n4: follower term=1 leader=n1 last=6 commit=6 applied=6
""",
    ),
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script(name: str) -> None:
    script, expected = SCRIPTS[name]
    assert run_script(textwrap.dedent(script)) == expected.rstrip("\n")


# -- randomized safety -------------------------------------------------------------------

# Seeds that once failed, pinned after the fix. (Before membership changes
# joined the mix, seeds 10, 17, 18, 25 found replication stalled with every
# inflight slot held by lost appends; that is now a dedicated test below.)
REGRESSION_SEEDS: list[int] = []


def run_randomized(seed: int, *, count: int, steps_ms: int = 3_000) -> None:
    """Safety under loss, partitions, crashes, compactions, reads, leadership
    transfers and membership changes; then heal and require liveness: every
    committed entry applied by every member, logs matching."""
    rng = random.Random(seed ^ 0x5EED)
    config = dataclasses.replace(RaftConfig.sim(), lease_reads=rng.random() < 0.5)
    net = Net(count, seed=seed, config=config)
    # Clock rates within +-4%: over one election timeout two clocks drift
    # apart by at most 8 ms, inside the config's clock_drift_max_ms (10 ms).
    for node_id in net.voter_ids:
        net.set_clock_rate(node_id, rng.uniform(0.96, 1.04))
    net.loss = rng.choice([0.0, 0.05, 0.2])
    proposed = reads = added = 0
    end = net.now + steps_ms
    while net.now < end:
        net.run_for(rng.randint(5, 60))
        roll = rng.random()
        live = net.live()
        leader = net.leader()
        if roll < 0.40:
            if leader is not None:
                proposed += 1
                net.propose(leader.node_id, f"{seed}-{proposed}".encode())
        elif roll < 0.50:
            net.heal()
            net.loss = rng.choice([0.0, 0.05, 0.2])
            everyone = sorted(net.nodes)
            side = rng.sample(everyone, k=rng.randint(1, len(everyone) // 2))
            net.partition(tuple(side), tuple(i for i in everyone if i not in side))
        elif roll < 0.57:
            net.heal()
        elif roll < 0.65 and len(net.down) < count // 2:
            net.crash(rng.choice(live).node_id)
        elif roll < 0.72 and net.down:
            net.restart(sorted(net.down)[0])
        elif roll < 0.78:
            node = rng.choice(live)
            index = node.applied_index()
            if index > node.raft.first_index + 5 and index <= node.raft.applied_index:
                state = encode_state(node.applied[: index - 2])
                net.handle(node.node_id, node.raft.compact(net.local(node.node_id), index - 2, state))
        elif roll < 0.84:
            # Any node that believes it leads, stale ones included: that is
            # where a broken lease would serve a stale read.
            leaders = [n for n in live if n.raft.role == "leader"]
            if leaders:
                reads += 1
                net.read_index(rng.choice(leaders).node_id, reads, lease=rng.random() < 0.5)
        elif roll < 0.88:
            if leader is not None:
                target = rng.choice(leader.raft.voters)
                if target != leader.node_id:
                    net.handle(leader.node_id, leader.raft.transfer_leadership(net.local(leader.node_id), target))
        elif roll < 0.95 and leader is not None:
            added = _random_conf_change(net, leader, rng, count, added)
        net.checker.check_log_matching(net.live())
    # Liveness: heal everything, restart everyone, a leader commits a final entry.
    net.heal()
    for node_id in sorted(net.down):
        net.restart(node_id)
    final = _commit_final_entry(net, seed)
    leader = net.leader()
    assert leader is not None
    members = leader.raft.voters + leader.raft.learners
    net.wait_applied(members, final, within_ms=10_000)
    net.checker.check_log_matching(net.live())
    for node in net.live():
        for entry in node.applied:
            assert net.checker.committed[entry.index] == entry
        for index, entry in net.checker.committed.items():
            if index <= node.applied_index():
                assert node.applied[index - 1] == entry, f"seed {seed}: {node.node_id} lost committed {index}"


def _random_conf_change(net: Net, leader: SimNode, rng: random.Random, count: int, added: int) -> int:
    """Grow by a learner, promote a learner, or shrink back toward ``count``
    voters; returns how many nodes were ever added."""
    raft = leader.raft
    if raft.learners:
        _conf(net, leader, rng.choice(["promote", "remove"]), rng.choice(raft.learners))
    elif len(raft.voters) > count:
        victim = rng.choice([v for v in raft.voters if v != leader.node_id])
        _conf(net, leader, "remove", victim)
    elif added < 4:
        node_id = f"x{added + 1}"
        net.add_node(node_id)
        if isinstance(_conf(net, leader, "add_learner", node_id), Accepted):
            return added + 1
        del net.nodes[node_id]
    return added


def _commit_final_entry(net: Net, seed: int) -> int:
    """Propose through whoever leads until one proposal is applied by its
    leader (a leadership change may drop one); return its index."""
    for attempt in range(20):
        leader = net.wait_for_leader(within_ms=5_000)
        result = net.propose(leader.node_id, f"final{attempt}".encode())
        if not isinstance(result, Accepted):
            net.run_for(net.config.election_timeout_ms)
            continue
        index = result.index
        def settled(leader: SimNode = leader, index: int = index) -> bool:
            return leader.applied_index() >= index or leader.raft.role != "leader"

        net.run_until(net.now + 2_000, stop=settled)
        if leader.applied_index() >= index and leader.applied[index - 1].data == f"final{attempt}".encode():
            return index
    raise AssertionError(f"seed {seed}: no final proposal committed in 20 attempts")


def _replayable(seed: int, count: int) -> None:
    try:
        run_randomized(seed, count=count)
    except AssertionError as error:
        name = "three" if count == 3 else "five"
        replay = f'pytest tests/unit/test_raft.py -k "test_randomized_{name}_nodes and [{seed}]"'
        raise AssertionError(f"seed {seed} failed; replay with: {replay}\n{error}") from error


@pytest.mark.parametrize("seed", list(range(40)) + REGRESSION_SEEDS)
def test_randomized_three_nodes(seed: int) -> None:
    _replayable(seed, 3)


@pytest.mark.parametrize("seed", list(range(100, 130)))
def test_randomized_five_nodes(seed: int) -> None:
    _replayable(seed, 5)


def test_leader_unreachable_hint_elects_at_the_end_of_the_lease_not_before() -> None:
    config = RaftConfig.sim()
    net = Net(3, seed=21, config=config)
    old = net.wait_for_leader(within_ms=3_000)
    net.run_for(35)
    net.crash(old.node_id)
    crashed_at = net.now
    followers = [n for n in net.live() if n.node_id != old.node_id]
    for node in followers:
        lease_end = node.raft._last_leader_contact_ms + config.election_timeout_ms
        net.handle(node.node_id, node.raft.leader_unreachable(net.local(node.node_id), old.node_id))
        # Without the hint the campaign waits one to two election timeouts
        # after the last heartbeat; with it, it starts at the lease's end
        # plus a turn (an eighth of a timeout per rank) — never before the
        # end, so a live old leader's lease reads stay safe.
        rank = sorted(n.node_id for n in followers).index(node.node_id)
        turn = lease_end + rank * (config.election_timeout_ms // 8)
        assert turn < node.raft.next_deadline_ms() <= turn + config.heartbeat_interval_ms // 4
        assert node.raft.role == "follower"
    new = net.wait_for_leader(within_ms=3_000, among=tuple(n.node_id for n in followers))
    assert net.now - crashed_at <= config.election_timeout_ms + config.heartbeat_interval_ms + 20
    assert new.node_id != old.node_id


def test_leader_unreachable_hint_about_a_non_leader_changes_nothing() -> None:
    net = Net(3, seed=22)
    leader = net.wait_for_leader(within_ms=3_000)
    follower, other = [n for n in net.live() if n.node_id != leader.node_id]
    before = follower.raft.next_deadline_ms()
    out = net.handle(follower.node_id, follower.raft.leader_unreachable(net.local(follower.node_id), other.node_id))
    assert follower.raft.next_deadline_ms() == before
    assert out.messages == []


def test_a_commit_index_that_alone_moved_is_not_written_until_the_next_write() -> None:
    net = Net(3, seed=23)
    leader = net.wait_for_leader(within_ms=3_000)
    accepted = net.propose(leader.node_id, b"x")
    assert isinstance(accepted, Accepted)
    net.wait_applied(net.voter_ids, accepted.index)
    follower = next(n for n in net.live() if n is not leader)
    # The next heartbeat carries only a commit index: no fsync for it.
    outputs: list[Output] = []
    original = net.handle

    def spy(node_id: str, out: Output) -> Output:
        if node_id == follower.node_id:
            outputs.append(out)
        return original(node_id, out)

    net.handle = spy  # type: ignore[method-assign]
    net.run_for(5 * RaftConfig.sim().heartbeat_interval_ms)
    assert outputs, "the follower handled nothing"
    assert all(out.hard_state is None for out in outputs if not out.entries and out.snapshot is None)
    # The next write of entries carries it along.
    later = net.propose(leader.node_id, b"y")
    assert isinstance(later, Accepted)
    net.wait_applied(net.voter_ids, later.index)
    with_entries = [out for out in outputs if out.entries]
    assert with_entries and all(out.hard_state is not None for out in with_entries)
