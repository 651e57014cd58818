"""Automatic voters: which single-server change the Raft leader should make next (sans-IO).

Nobody configures the voter set of a federation: the leader keeps it healthy
from what membership says (Consul's autopilot and etcd's learners do parts
of this). ``plan`` is a pure function the leader calls now and then; it
returns at most one ``ConfChange`` (Raft allows one at a time).

Rules, first match wins:

1. **Gone learners** (member left, or dead/missing for ``dead_grace_ms``)
   are removed.
2. **Replace before remove.** While fewer live voters than wanted exist, a
   healthy learner that has caught up is promoted; otherwise a healthy
   non-member is added as a learner (it receives the log and does not vote
   until promoted: etcd server's learners). The dissertation's advice:
   add the new server before removing the old, so the group never runs a
   step below its fault tolerance.
3. **Gone voters** are removed (left at once; dead after the grace period,
   so a restart within it costs no reconfiguration). A member that answers
   the leader's Raft messages is never gone: membership is one node's view
   and may be stale; Raft traffic is first-hand.
4. **Trim.** With more live voters than wanted (the federation shrank) and
   every voter healthy, one voter other than the leader is removed. Never
   while a voter is dead within its grace or suspect: removing a live voter
   then could leave the dead ones a majority.
5. **Every member a replica.** Any other healthy member is added as a
   learner (a trimmed voter comes back as one): every node applies the log,
   so it serves stale reads, job watches and its own task table.

How many voters: ``voters_large`` (5) once ``large_from`` (5) members are
alive, else ``voters_small`` (3), never more than the members alive.

Where: a new voter comes from the region (label ``region``, then ``zone``)
with the fewest voters, so losing one region loses as few voters as
possible; a trimmed voter from the region with the most. Ties break by node
id, so every leader makes the same choice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from moot.core.raft_messages import ConfChange, ConfState

MemberState = Literal["alive", "suspect", "dead", "left", "missing"]


DEAD_GRACE_MS_DEFAULT = 5_000


@dataclass(frozen=True, slots=True)
class VoterPolicy:
    """How many voters to keep and how long a dead one keeps its seat."""

    voters_small: int = 3
    voters_large: int = 5
    large_from: int = 5
    """Alive members from which ``voters_large`` voters are kept."""
    dead_grace_ms: int = DEAD_GRACE_MS_DEFAULT
    """How long a voter may be dead (or missing from membership) before it
    is replaced: longer than a restart, shorter than an operator's pager."""

    def validate(self) -> None:
        """Raise ValueError naming the first field out of range."""
        if self.voters_small < 1 or self.voters_large < self.voters_small:
            raise ValueError("VoterPolicy needs 1 <= voters_small <= voters_large")
        if self.dead_grace_ms < 0:
            raise ValueError("VoterPolicy.dead_grace_ms must be >= 0")

    def wanted(self, alive: int) -> int:
        """Voters to keep with ``alive`` members alive."""
        target = self.voters_large if alive >= self.large_from else self.voters_small
        return max(1, min(target, alive))


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """What the leader knows of one member: its state since when, and where it is."""

    node_id: str
    state: MemberState
    since_ms: int
    labels: Mapping[str, str]


def plan(
    conf: ConfState,
    *,
    leader_id: str,
    members: Sequence[MemberStatus],
    caught_up: Mapping[str, bool],
    now_ms: int,
    policy: VoterPolicy,
    responsive: Mapping[str, bool] | None = None,
) -> ConfChange | None:
    """The next change to make, or None (module doc). ``caught_up`` says, per
    learner, whether the leader would accept its promotion now.
    ``responsive`` says which members answered the leader's Raft messages
    lately: such a member is never gone, whatever membership's (one node's,
    possibly stale) view says."""
    status = {member.node_id: member for member in members}
    responsive = responsive or {}
    assert leader_id in conf.voters, "only a voter leads"

    def gone(node_id: str) -> bool:
        if responsive.get(node_id, False):
            # Found by the chaos test: a node kept a stale "dead" view of a
            # member for 10 s while that member voted for it; as leader it
            # removed a live voter, and the next fault cost the quorum.
            return False
        member = status.get(node_id)
        if member is None or member.state == "missing":
            since = member.since_ms if member else now_ms
            return now_ms - since >= policy.dead_grace_ms
        if member.state == "left":
            return True
        return member.state == "dead" and now_ms - member.since_ms >= policy.dead_grace_ms

    def healthy(node_id: str) -> bool:
        member = status.get(node_id)
        return member is not None and member.state == "alive"

    alive_members = [m for m in members if m.state in ("alive", "suspect")]
    wanted = policy.wanted(len(alive_members))
    live_voters = [v for v in conf.voters if not gone(v)]

    for learner in conf.learners:
        if gone(learner):
            return ConfChange("remove", learner)

    if len(live_voters) < wanted:
        ready = [node for node in conf.learners if healthy(node) and caught_up.get(node, False)]
        if ready:
            return ConfChange("promote", _fewest_voters(ready, live_voters, status))
        if any(healthy(node) for node in conf.learners):
            return None  # a learner is catching up: promote it first, then remove
        members_ids = set(conf.voters) | set(conf.learners)
        outsiders = [m.node_id for m in members if m.state == "alive" and m.node_id not in members_ids]
        if outsiders:
            return ConfChange("add_learner", _fewest_voters(outsiders, live_voters, status))

    for voter in conf.voters:
        if voter != leader_id and gone(voter):
            return ConfChange("remove", voter)

    # Trim only a healthy group: while a voter is dead (not yet past its
    # grace) or suspect, removing a live one could leave a majority dead.
    if len(live_voters) > wanted and all(healthy(v) for v in conf.voters):
        removable = [v for v in live_voters if v != leader_id]
        if removable:
            return ConfChange("remove", _most_voters(removable, live_voters, status))
    # Every other healthy member follows the log as a learner: a node out of
    # the group applies nothing more, so its stale reads, its job watches and
    # its task worker's table froze (found: moot demo hung on a client watch
    # at a voter trimmed as the federation shrank from five to four).
    members_ids = set(conf.voters) | set(conf.learners)
    outsiders = sorted(m.node_id for m in members if m.state == "alive" and m.node_id not in members_ids)
    if outsiders:
        return ConfChange("add_learner", outsiders[0])
    return None


def _place(node_id: str, status: Mapping[str, MemberStatus]) -> tuple[str, str]:
    member = status.get(node_id)
    labels = member.labels if member else {}
    return labels.get("region", ""), labels.get("zone", "")


def _fewest_voters(candidates: Sequence[str], voters: Sequence[str], status: Mapping[str, MemberStatus]) -> str:
    regions = Counter(_place(v, status)[0] for v in voters)
    zones = Counter(_place(v, status) for v in voters)
    return min(
        candidates, key=lambda node: (regions[_place(node, status)[0]], zones[_place(node, status)], node)
    )


def _most_voters(candidates: Sequence[str], voters: Sequence[str], status: Mapping[str, MemberStatus]) -> str:
    regions = Counter(_place(v, status)[0] for v in voters)
    zones = Counter(_place(v, status) for v in voters)
    return max(
        candidates, key=lambda node: (regions[_place(node, status)[0]], zones[_place(node, status)], node)
    )
