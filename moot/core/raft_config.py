"""Raft configuration, with named profiles.

Defaults follow etcd (``--heartbeat-interval 100``, ``--election-timeout
1000``, etcd-io/raft's ``MaxSizePerMsg``/``MaxInflightMsgs`` as etcd server
sets them) and the Raft paper's timing rule: broadcast time << election
timeout << mean time between failures (Ongaro and Ousterhout 2014, 5.6).
Times are milliseconds of the node's local clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from moot.core.raft_messages import SNAPSHOT_CHUNK_BYTES_MAX


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Tuning of elections, replication and reads, per deployment profile."""

    heartbeat_interval_ms: int = 100
    """Leader heartbeat period. etcd: 100 ms, about the round trip between
    members times a small factor; also bounds how fast commit indexes reach
    idle followers and how fast a ReadIndex round completes."""

    election_timeout_ms: int = 1_000
    """Base election timeout T; each wait is drawn from [T, 2T) (Raft paper
    5.2, etcd's randomizedElectionTimeout). etcd: 1000 ms, 10 heartbeats, so
    a few lost heartbeats do not start an election. Also CheckQuorum's
    period and the followers' leader lease."""

    pre_vote: bool = True
    """PreVote (dissertation 9.6): a node first asks whether it could win
    before raising its term, so a partitioned node rejoining does not depose
    a healthy leader. etcd server enables it by default since 3.4."""

    check_quorum: bool = True
    """A leader that has not heard from a quorum within an election timeout
    steps down, and followers that heard from their leader within it ignore
    vote requests (the leader lease). etcd server: on."""

    lease_reads: bool = False
    """Allow ReadIndex requests that ask for it (``read_index(lease=True)``,
    the ``lease`` consistency) to be served from the leader lease without a
    heartbeat round (etcd's ReadOnlyLeaseBased), and make restarted nodes
    honour the lease of a leader they may have forgotten. Off by default, as
    in etcd: it trusts clocks to drift less than ``clock_drift_max_ms`` per
    lease. Plain ``read_index`` calls always run a heartbeat round."""

    clock_drift_max_ms: int = 100
    """How much shorter than an election timeout the leader's lease is, to
    cover clock rate differences between nodes (dissertation 6.4.1)."""

    entries_per_message_max: int = 256
    """Soft cap on entries per AppendEntries (batching). Together with the
    byte cap bounds one message's decode cost."""

    bytes_per_message_max: int = 1024 * 1024
    """Soft cap on entry bytes per AppendEntries. etcd server's MaxSizePerMsg:
    1 MiB. At least one entry is always sent so progress never stalls."""

    inflight_messages_max: int = 256
    """AppendEntries in flight to one follower while pipelining (etcd server's
    MaxInflightMsgs: 256). Bounds the memory a slow follower costs us."""

    proposal_bytes_max: int = 2 * 1024 * 1024
    """Largest single proposal (one batch of client writes). etcd:
    --max-request-bytes 1.5 MiB; ours must hold a 1 MiB value plus its key
    (``kv.VALUE_BYTES_MAX``, ``kv.KEY_BYTES_MAX``) with room to spare."""

    uncommitted_bytes_max: int = 64 * 1024 * 1024
    """Proposals are refused while this many bytes are appended but not yet
    committed (etcd's MaxUncommittedEntriesSize): back-pressure instead of an
    unbounded log when a quorum is away."""

    committed_entries_per_output_max: int = 1_024
    """Committed entries handed out in one Output (etcd's
    MaxCommittedSizePerReady, by count); the rest follow on the next tick."""

    snapshot_chunk_bytes: int = 1024 * 1024
    """Bytes per InstallSnapshot message. etcd streams snapshots over HTTP;
    chunks of 1 MiB keep each frame small and let acks pace the sender."""

    snapshot_chunks_inflight_max: int = 8
    """Chunks sent ahead of the follower's acknowledgement: bounds the bytes
    one catching-up follower puts in the leader's send queue."""

    pending_reads_max: int = 4_096
    """ReadIndex requests waiting for a heartbeat round or the apply loop."""

    def validate(self) -> None:
        """Raise ValueError naming the first field that makes no sense."""
        positive = (
            "heartbeat_interval_ms",
            "election_timeout_ms",
            "entries_per_message_max",
            "bytes_per_message_max",
            "inflight_messages_max",
            "proposal_bytes_max",
            "uncommitted_bytes_max",
            "committed_entries_per_output_max",
            "pending_reads_max",
            "snapshot_chunk_bytes",
            "snapshot_chunks_inflight_max",
        )
        if self.snapshot_chunk_bytes > SNAPSHOT_CHUNK_BYTES_MAX:
            raise ValueError(
                f"RaftConfig.snapshot_chunk_bytes must be at most {SNAPSHOT_CHUNK_BYTES_MAX} (one frame)"
            )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"RaftConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.election_timeout_ms <= 2 * self.heartbeat_interval_ms:
            raise ValueError(
                f"RaftConfig.election_timeout_ms ({self.election_timeout_ms}) must exceed twice "
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms}), or one lost heartbeat "
                "starts an election"
            )
        if self.clock_drift_max_ms < 0 or self.clock_drift_max_ms >= self.election_timeout_ms:
            raise ValueError("RaftConfig.clock_drift_max_ms must be in [0, election_timeout_ms)")
        if self.lease_reads and not self.check_quorum:
            raise ValueError(
                "RaftConfig.lease_reads needs check_quorum: without it followers do not "
                "honour the lease and a new leader may commit writes a lease read misses"
            )

    # -- profiles ---------------------------------------------------------------

    @classmethod
    def etcd(cls) -> RaftConfig:
        """etcd's defaults exactly (heartbeat 100 ms, election 1 s)."""
        return cls()

    @classmethod
    def lan(cls) -> RaftConfig:
        """One data centre, round trips well under 10 ms: inside the Raft
        paper's 150-300 ms election range (it measured a 287 ms median
        failover there), not etcd's conservative 1 s. With the runtime's
        connection-loss hint a killed leader is replaced about one election
        timeout after its last heartbeat (measured: p50 274 ms, max 483 ms
        from SIGKILL to the next acknowledged write). Lease reads allowed."""
        return cls(heartbeat_interval_ms=40, election_timeout_ms=200, clock_drift_max_ms=40, lease_reads=True)

    @classmethod
    def local(cls) -> RaftConfig:
        """Every node on one machine: as ``lan``."""
        return cls.lan()

    @classmethod
    def named(cls, profile: str) -> RaftConfig:
        """The profile called ``profile`` (lan, wan, local, sim, etcd), as membership names them."""
        profiles = {"lan": cls.lan, "wan": cls.wan, "local": cls.local, "sim": cls.sim, "etcd": cls.etcd}
        if profile not in profiles:
            raise ValueError(f"unknown Raft profile {profile!r}: choose one of {', '.join(profiles)}")
        return profiles[profile]()

    @classmethod
    def wan(cls) -> RaftConfig:
        """Voters across regions: etcd's tuning guide suggests a heartbeat near
        the RTT (100-300 ms) and an election timeout of about 10 times it."""
        return cls(heartbeat_interval_ms=300, election_timeout_ms=3_000, clock_drift_max_ms=300, lease_reads=True)

    @classmethod
    def sim(cls) -> RaftConfig:
        """Simulator and unit tests: short timers so runs cover many elections,
        small batches so batching and pipelining limits are exercised."""
        return cls(
            heartbeat_interval_ms=10,
            election_timeout_ms=100,
            clock_drift_max_ms=10,
            entries_per_message_max=4,
            bytes_per_message_max=4 * 1024,
            inflight_messages_max=4,
            committed_entries_per_output_max=64,
            snapshot_chunk_bytes=256,
            snapshot_chunks_inflight_max=3,
        )
