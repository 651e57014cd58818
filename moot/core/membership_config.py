"""Membership (SWIM + Lifeguard) configuration, with named profiles.

Defaults follow hashicorp/memberlist, which has run SWIM with Lifeguard in
production (Consul, Nomad, Serf) for years. Each field says where its default
comes from and what it trades. Times are milliseconds of the node's local
clock.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from moot.core.vivaldi import VivaldiConfig


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    """Tuning of the failure detector and the gossip, per deployment profile."""

    probe_interval_ms: int = 1_000
    """How often a node probes one member. memberlist LAN: 1 s. Detection time
    and probe traffic both scale with it."""

    probe_timeout_ms: int = 500
    """How long to wait for a direct ack before asking others to probe
    indirectly. memberlist LAN: 500 ms, about the 99.9th percentile RTT of a
    LAN with margin. Must be below ``probe_interval_ms``."""

    indirect_checks: int = 3
    """Members asked to probe indirectly when a direct probe fails (SWIM's
    k). memberlist LAN: 3."""

    retransmit_mult: int = 4
    """Each gossip item is sent ``retransmit_mult * ceil(log10(n + 1))`` times
    (memberlist's RetransmitMult: 4). Higher spreads more reliably under
    loss at the price of bandwidth."""

    suspicion_mult: int = 4
    """Minimum suspicion timeout is ``suspicion_mult * max(1, log10(n)) *
    probe_interval`` (memberlist's SuspicionMult: 4)."""

    suspicion_max_timeout_mult: int = 6
    """Lifeguard: the suspicion timeout starts at this multiple of the minimum
    and shrinks toward the minimum as independent confirmations arrive
    (memberlist's SuspicionMaxTimeoutMult: 6)."""

    push_pull_interval_ms: int = 30_000
    """Full state exchange with one random member (anti-entropy). memberlist
    LAN: 30 s, scaled up for clusters above 32 nodes (``push_pull_scale``)."""

    gossip_interval_ms: int = 200
    """How often queued gossip is sent to ``gossip_nodes`` random members.
    memberlist LAN: 200 ms."""

    gossip_nodes: int = 3
    """Fan-out of each gossip round. memberlist LAN: 3."""

    gossip_to_the_dead_ms: int = 30_000
    """Keep gossiping to a dead member this long so a falsely accused node
    learns of it and refutes. memberlist LAN: 30 s."""

    awareness_max_multiplier: int = 8
    """Lifeguard local health: probe interval and timeout are multiplied by
    up to this when the node itself seems slow (memberlist: 8)."""

    lifeguard: bool = True
    """Lifeguard on (local health, dynamic suspicion, buddy system, nacks).
    Off gives classic SWIM with a fixed suspicion timeout, for comparison."""

    gossip_items_per_message_max: int = 24
    """Cap on gossip items piggybacked on one message; memberlist fits what a
    1400-byte UDP packet holds, about this many small items."""

    dead_member_retention_ms: int = 3_600_000
    """Dead and left members stay in the view this long (so ``moot members``
    shows them), then are forgotten. memberlist reaps after the gossip-to-
    the-dead time; we keep them longer for operators."""

    join_retry_interval_ms: int = 1_000
    """First retry of a join to a seed not yet in our view; doubles per
    attempt up to ``push_pull_interval_ms``."""

    reconnect_interval_ms: int = 30_000
    """Push-pull with one random member we hold dead this often, so two
    sides of a healed partition that declared each other dead merge again.
    Serf's reconnect_interval: 30 s."""

    coordinate_gossip_interval_ms: int = 5_000
    """How often a node gossips its own Vivaldi coordinate so members that
    never probe it can still estimate the RTT to it."""

    vivaldi: VivaldiConfig = field(default_factory=VivaldiConfig)

    def validate(self) -> None:
        """Raise ValueError naming the first field that makes no sense."""
        positive = (
            "probe_interval_ms",
            "probe_timeout_ms",
            "retransmit_mult",
            "suspicion_mult",
            "suspicion_max_timeout_mult",
            "push_pull_interval_ms",
            "gossip_interval_ms",
            "gossip_nodes",
            "gossip_items_per_message_max",
            "join_retry_interval_ms",
            "reconnect_interval_ms",
            "coordinate_gossip_interval_ms",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"MembershipConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.probe_timeout_ms >= self.probe_interval_ms:
            raise ValueError(
                f"MembershipConfig.probe_timeout_ms ({self.probe_timeout_ms}) must be below "
                f"probe_interval_ms ({self.probe_interval_ms}) so indirect probes fit in the interval"
            )
        if self.indirect_checks < 0:
            raise ValueError("MembershipConfig.indirect_checks must be >= 0")
        if self.awareness_max_multiplier < 1:
            raise ValueError("MembershipConfig.awareness_max_multiplier must be >= 1")
        if self.suspicion_max_timeout_mult < 1:
            raise ValueError("MembershipConfig.suspicion_max_timeout_mult must be >= 1")
        if self.dead_member_retention_ms < self.gossip_to_the_dead_ms:
            raise ValueError("MembershipConfig.dead_member_retention_ms must be >= gossip_to_the_dead_ms")
        self.vivaldi.validate()

    # -- derived quantities (the formulas the field docs cite) ---------------

    def retransmit_limit(self, member_count: int) -> int:
        """Times each gossip item is sent: mult * ceil(log10(n + 1)), at
        least once (n counts ourselves; after we leave it can be 0 — found
        by the chaos test: a last node leaving died on the queue's assert)."""
        return self.retransmit_mult * max(1, math.ceil(math.log10(member_count + 1)))

    def suspicion_timeout_min_ms(self, member_count: int) -> int:
        """Minimum suspicion timeout: mult * max(1, log10(n)) * probe interval."""
        node_scale = max(1.0, math.log10(max(1, member_count)))
        return int(self.suspicion_mult * node_scale * self.probe_interval_ms)

    def suspicion_timeout_max_ms(self, member_count: int) -> int:
        """Suspicion timeout with no confirmations (Lifeguard), or the fixed one."""
        if not self.lifeguard:
            return self.suspicion_timeout_min_ms(member_count)
        return self.suspicion_max_timeout_mult * self.suspicion_timeout_min_ms(member_count)

    def push_pull_interval_scaled_ms(self, member_count: int) -> int:
        """memberlist's pushPullScale: the interval grows with log2(n) above 32."""
        threshold = 32
        if member_count <= threshold:
            return self.push_pull_interval_ms
        multiplier = math.ceil(math.log2(member_count) - math.log2(threshold)) + 1
        return self.push_pull_interval_ms * multiplier

    def detection_bound_ms(self, member_count: int) -> int:
        """Upper bound from a crash to every live member declaring it dead.

        Every live member detects a crashed one *by itself* even if no gossip
        reaches it: its shuffled round-robin probes the crashed member within
        two rounds (``2 * (n - 1)`` probe periods, each stretched by at most
        the local-health multiplier), the probe fails at the end of its period,
        and the suspicion it starts expires within the maximum suspicion
        timeout. Gossip normally makes detection far faster; this is the bound
        that holds without it.
        """
        others = max(1, member_count - 1)
        stretch = self.awareness_max_multiplier if self.lifeguard else 1
        probe_window = (2 * others + 1) * self.probe_interval_ms * stretch
        return probe_window + self.suspicion_timeout_max_ms(member_count) + self.probe_interval_ms

    # -- profiles ---------------------------------------------------------------

    @classmethod
    def lan(cls) -> MembershipConfig:
        """memberlist's DefaultLANConfig: one data centre, sub-millisecond RTTs."""
        return cls(vivaldi=VivaldiConfig.lan())

    @classmethod
    def wan(cls) -> MembershipConfig:
        """memberlist's DefaultWANConfig: members across regions, RTTs of 100+ ms."""
        return cls(
            probe_interval_ms=5_000,
            probe_timeout_ms=3_000,
            suspicion_mult=6,
            push_pull_interval_ms=60_000,
            gossip_interval_ms=500,
            gossip_nodes=4,
            gossip_to_the_dead_ms=60_000,
            vivaldi=VivaldiConfig.wan(),
        )

    @classmethod
    def local(cls) -> MembershipConfig:
        """memberlist's DefaultLocalConfig: processes on one host (loopback)."""
        return cls(
            probe_timeout_ms=200,
            indirect_checks=1,
            retransmit_mult=2,
            suspicion_mult=3,
            push_pull_interval_ms=15_000,
            gossip_interval_ms=100,
            gossip_to_the_dead_ms=15_000,
            vivaldi=VivaldiConfig.lan(),
        )

    @classmethod
    def sim(cls) -> MembershipConfig:
        """The LAN profile, so simulated runs exercise what users run, with a
        shorter dead-member retention so long simulations stay small."""
        return dataclasses.replace(
            cls.lan(), dead_member_retention_ms=120_000, vivaldi=VivaldiConfig.sim()
        )

    @classmethod
    def named(cls, profile: str) -> MembershipConfig:
        """The profile called ``profile`` (lan, wan, local, sim)."""
        profiles = {"lan": cls.lan, "wan": cls.wan, "local": cls.local, "sim": cls.sim}
        if profile not in profiles:
            raise ValueError(f"unknown membership profile {profile!r}: choose one of {', '.join(profiles)}")
        return profiles[profile]()
