"""``moot.local``: a federation of real node processes on 127.0.0.1.

The embedded default, as ``ray.init()`` or ``dask.distributed.LocalCluster``
give: N real ``moot node`` processes with a fresh cluster CA, each on its own
port, that a test, a notebook or the demo can kill and restart.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import msgspec

from moot.core.voters import VoterPolicy
from moot.runtime import identity

if TYPE_CHECKING:
    from moot.client.client import Client

START_TIMEOUT_S = 60.0  # nodes importing moot on a busy 2-core machine take a few seconds
STATE_FILE = "local.json"


class LocalError(Exception):
    """The local federation could not be started or reached."""


@dataclass(slots=True)
class LocalNode:
    """One node process of a local federation."""

    index: int
    address: str
    http_address: str
    data_dir: Path
    log_path: Path
    labels: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        """The node's HTTP base URL."""
        return f"http://{self.http_address}"

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.process is not None and self.process.poll() is None


class _LocalState(msgspec.Struct):
    cluster_dir: str
    addresses: list[str]
    http_addresses: list[str]
    pids: list[int]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free right now on ``host``."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class LocalFederation:
    """N real node processes on 127.0.0.1 (see module doc).

    Use as a context manager, or call ``start()`` and ``stop()``.
    """

    def __init__(
        self,
        nodes: int = 3,
        *,
        directory: str | Path | None = None,
        labels: Sequence[dict[str, str]] | None = None,
        cpus: int = 1,
        profile: str = "local",
        keep_directory: bool = False,
        extra_env: dict[str, str] | None = None,
        voter_grace_ms: int | None = None,
        node_args: Sequence[str] | dict[int, Sequence[str]] = (),
    ) -> None:
        if nodes < 1:
            raise ValueError("a federation needs at least 1 node")
        if labels is not None and len(labels) != nodes:
            raise ValueError(f"labels has {len(labels)} entries for {nodes} nodes")
        self._owns_directory = directory is None and not keep_directory
        self.directory = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="moot-local-"))
        self.cluster_dir = self.directory / "cluster"
        self.cpus = cpus
        self.profile = profile
        self.extra_env = dict(extra_env or {})
        self.voter_grace_ms = voter_grace_ms
        self.node_args = node_args
        """Extra ``moot node start`` options: for every node, or per node index."""
        self.nodes: list[LocalNode] = []
        self._count = nodes
        self._labels = [dict(x) for x in labels] if labels is not None else [{} for _ in range(nodes)]
        self._client: Client | None = None

    # -- properties -------------------------------------------------------------

    @property
    def addresses(self) -> list[str]:
        """Every node's ``--listen`` address."""
        return [node.address for node in self.nodes]

    @property
    def http_urls(self) -> list[str]:
        """Every node's HTTP base URL."""
        return [node.http_url for node in self.nodes]

    @property
    def token(self) -> str:
        """The cluster's client token."""
        return (self.cluster_dir / "token").read_text().strip()

    # -- lifecycle --------------------------------------------------------------------

    def start(self, *, wait: bool = True) -> LocalFederation:
        """Create the cluster, start every node, and wait until all see each
        other and the database has its full voter set and a leader."""
        identity.init_cluster(self.cluster_dir)
        ports = free_ports(2 * self._count)
        for index in range(self._count):
            node_dir = self.directory / f"node-{index}"
            self.nodes.append(
                LocalNode(
                    index=index,
                    address=f"127.0.0.1:{ports[2 * index]}",
                    http_address=f"127.0.0.1:{ports[2 * index + 1]}",
                    data_dir=node_dir,
                    log_path=self.directory / f"node-{index}.log",
                    labels=self._labels[index],
                )
            )
        for node in self.nodes:
            self._spawn(node)
        self._write_state()
        if wait:
            self.wait_until(lambda infos: self._all_alive(infos, len(self.nodes)), what=f"{len(self.nodes)} nodes to see each other alive")
            self.wait_for_voters(VoterPolicy().wanted(len(self.nodes)))
        return self

    def wait_for_voters(self, count: int, *, timeout_s: float = START_TIMEOUT_S) -> int:
        """Wait until the leader's configuration has ``count`` voters, all of
        them running nodes of this federation (its learners too: the other
        members follow the log as learners); returns the
        leader's index. (After a kill, the voter set has healed once this
        returns: one more voter may die without losing the majority.)"""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            index = self.leader(timeout_s=max(0.1, deadline - time.monotonic()))
            statuses = self.statuses()
            status = statuses.get(index)
            running = {s.node_id for i, s in statuses.items() if self.nodes[i].alive}
            if (
                status is not None
                and status.role == "leader"
                and len(status.voters) == count
                and set(status.voters) <= running
                and set(status.learners) <= running
            ):
                return index
            time.sleep(0.05)  # polling the voter set with a deadline
        raise LocalError(f"the database did not reach {count} voters within {timeout_s:.0f}s; logs in {self.directory}")

    def stop(self) -> None:
        """Stop every node gracefully (SIGTERM), then forcefully if it lingers."""
        if self._client is not None:
            self._client.close()
            self._client = None
        for node in self.nodes:
            if node.alive:
                assert node.process is not None
                node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for node in self.nodes:
            if node.process is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            if node.process.poll() is None:
                node.process.kill()
                node.process.wait()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def kill(self, index: int) -> None:
        """SIGKILL node ``index``: no goodbye, as a crash or power loss."""
        node = self.nodes[index]
        if node.process is not None and node.alive:
            node.process.kill()
            node.process.wait()

    def terminate(self, index: int) -> None:
        """SIGTERM node ``index``: it leaves gracefully."""
        node = self.nodes[index]
        if node.process is not None and node.alive:
            node.process.send_signal(signal.SIGTERM)
            node.process.wait(timeout=30)

    def restart(self, index: int, *, wait: bool = True, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start node ``index`` again on the same data dir and address. With
        ``wait``, return once it answers and follows a leader again, so a
        test or tour that next kills another node does not leave the
        database without a majority while this one is still booting."""
        node = self.nodes[index]
        if node.alive:
            self.kill(index)
        self._spawn(node)
        self._write_state()
        if not wait:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if node.process is not None and node.process.poll() is not None:
                raise LocalError(f"node {index} exited with {node.process.returncode}; see {node.log_path}")
            status = self.statuses().get(index)
            if status is not None and status.leader_id is not None:
                return
            time.sleep(0.05)  # polling the restarted node with a deadline
        raise LocalError(f"node {index} did not rejoin within {timeout_s:.0f}s; see {node.log_path}")

    def client(self) -> Client:
        """A client connected to this federation (shared; closed by ``stop``)."""
        if self._client is None:
            from moot.client.client import connect

            self._client = connect(self.addresses, cluster=self.cluster_dir)
        return self._client

    def __enter__(self) -> LocalFederation:
        if not self.nodes:
            try:
                self.start()
            except BaseException:
                self.stop()
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- waiting ---------------------------------------------------------------------

    def views(self) -> dict[int, list[Any]]:
        """Each live node's membership view (node index -> MemberInfo list)."""
        client = self.client()
        result = {}
        for node in self.nodes:
            if node.alive:
                with contextlib.suppress(Exception):
                    result[node.index] = list(client.members(node=node.address))
        return result

    def wait_until(
        self,
        predicate: Callable[[dict[int, list[Any]]], bool],
        *,
        what: str,
        timeout_s: float = START_TIMEOUT_S,
    ) -> dict[int, list[Any]]:
        """Poll every live node's view until ``predicate`` holds, with a deadline."""
        deadline = time.monotonic() + timeout_s
        views: dict[int, list[Any]] = {}
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process is not None and node.process.poll() not in (None, -signal.SIGKILL, -signal.SIGTERM, 0):
                    raise LocalError(f"node {node.index} exited with {node.process.returncode}; see {node.log_path}")
            views = self.views()
            if views and predicate(views):
                return views
            time.sleep(0.1)  # polling a condition with a deadline
        raise LocalError(f"timed out after {timeout_s:.0f}s waiting for {what}; logs in {self.directory}")

    def statuses(self) -> dict[int, Any]:
        """Each live node's Raft status (node index -> ``wire.StatusReply``)."""
        client = self.client()
        result = {}
        for node in self.nodes:
            if node.alive:
                with contextlib.suppress(Exception):
                    result[node.index] = client.node_status(node.address)
        return result

    def leader(self, *, timeout_s: float = START_TIMEOUT_S) -> int:
        """The index of the database's leader, once a majority of the live
        nodes that are voters agree on one (polled with a deadline)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            statuses = self.statuses()
            by_id = {status.node_id: index for index, status in statuses.items()}
            leaders = [index for index, status in statuses.items() if status.role == "leader"]
            for index in leaders:
                status = statuses[index]
                agree = sum(1 for other in statuses.values() if other.leader_id == status.node_id)
                if agree * 2 > len(status.voters) and status.node_id in by_id:
                    return index
            time.sleep(0.05)  # polling a condition with a deadline
        raise LocalError(f"no leader within {timeout_s:.0f}s; logs in {self.directory}")

    @staticmethod
    def _all_alive(views: dict[int, list[Any]], count: int) -> bool:
        return len(views) == count and all(
            sum(1 for info in infos if info.state == "alive") == count for infos in views.values()
        )

    # -- internals -----------------------------------------------------------------------

    def _spawn(self, node: LocalNode) -> None:
        command = [
            sys.executable,
            "-m",
            "moot",
            "node",
            "start",
            "--cluster",
            str(self.cluster_dir),
            "--data-dir",
            str(node.data_dir),
            "--listen",
            node.address,
            "--http",
            node.http_address,
            "--cpus",
            str(self.cpus),
            "--profile",
            self.profile,
        ]
        for key, value in node.labels.items():
            command += ["--label", f"{key}={value}"]
        # Node 0 founds the database (ignored once its data dir has one).
        command.append("--bootstrap" if node.index == 0 else "--no-bootstrap")
        if self.voter_grace_ms is not None:
            command += ["--voter-grace-ms", str(self.voter_grace_ms)]
        if isinstance(self.node_args, dict):
            command += list(self.node_args.get(node.index, ()))
        else:
            command += list(self.node_args)
        for other in self.nodes:
            if other.index != node.index:
                command += ["--join", other.address]
        env = dict(os.environ)
        env.update(self.extra_env)
        log = open(node.log_path, "ab")  # noqa: SIM115 - owned by the child process
        try:
            node.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        finally:
            log.close()

    def _write_state(self) -> None:
        state = _LocalState(
            cluster_dir=str(self.cluster_dir),
            addresses=self.addresses,
            http_addresses=[node.http_address for node in self.nodes],
            pids=[node.process.pid if node.process is not None else 0 for node in self.nodes],
        )
        (self.directory / STATE_FILE).write_bytes(msgspec.json.encode(state))


def local(nodes: int = 3, **options: Any) -> LocalFederation:
    """Start ``nodes`` real node processes on 127.0.0.1 (a context manager).

    >>> with moot.local(nodes=3) as federation:
    ...     print(federation.client().members())
    """
    return LocalFederation(nodes, **options)


def read_state(directory: Path) -> dict[str, Any]:
    """The state file ``moot local up`` wrote in ``directory``."""
    path = directory / STATE_FILE
    if not path.exists():
        raise LocalError(f"no local federation in {directory}: start one with `moot local up`")
    state = msgspec.json.decode(path.read_bytes(), type=_LocalState)
    return msgspec.structs.asdict(state)


def down(directory: Path) -> int:
    """Stop the federation ``moot local up`` started in ``directory``; returns nodes stopped."""
    state = read_state(directory)
    stopped = 0
    for pid in state["pids"]:
        if pid <= 0:
            continue
        try:
            os.kill(pid, signal.SIGTERM)
            stopped += 1
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 10
    for pid in state["pids"]:
        while pid > 0 and time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.05)  # polling the process table with a deadline
        if pid > 0 and _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    (directory / STATE_FILE).unlink(missing_ok=True)
    return stopped


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (our own exited child) still answers kill(0): check its state.
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
        return status != "Z"
    return True
