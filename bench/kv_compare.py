"""moot's replicated KV store against etcd and PySyncObj, side by side, on 127.0.0.1.

    .venv/bin/python bench/kv_compare.py [--quick] [--clients 64] [--kills 10]

Needs ``etcd`` on PATH (Debian: ``apt-get install etcd-server``) and
``pip install pysyncobj``; a system that is missing is skipped. Each system
runs as three real processes on this machine, started and stopped by this
script one after the other (never two at once), and is driven by client
threads in this process with the same concurrency:

- **moot**: ``LocalFederation(3)`` (profile ``local``: heartbeat 40 ms,
  election timeout 200 ms), through the Python client ``moot.connect``
  (mutual TLS, msgspec frames). Every write is fsync'd on a majority before
  it returns.
- **etcd**: a 3-member cluster of the Debian ``etcd`` binary with default
  settings (heartbeat 100 ms, election timeout 1000 ms), through the v3 JSON
  gateway (HTTP/1.1 POST ``/v3/kv/put`` and ``/v3/kv/range``, base64 keys),
  one keep-alive ``http.client`` connection per client thread, spread over
  the three members. Every write is fsync'd on a majority.
- **PySyncObj**: three replica processes, each a ``SyncObj`` (defaults:
  in-memory journal, so *no disk and no fsync*; election timeout 0.4-1.4 s)
  holding a dict, with ``@replicated put`` and ``@replicated get``, and a
  small line-protocol TCP front end (one thread per connection, the call
  made with ``sync=True``), since PySyncObj has no network client. Client
  threads spread their connections over the three replicas; a replica that
  is not the leader forwards the command to the leader (PySyncObj does it).

Metrics, each for every system:

1. sequential put: one client, ``--sequential`` puts of a 100-byte value;
   latency p50/p99 per put, as the client sees it.
2. put throughput: ``--clients`` threads, each putting in a closed loop for
   ``--seconds`` (the first second is warm-up and not counted); ops/s and
   per-put latency p50/p99.
3. get throughput, same shape, on 1,000 preloaded keys. Linearizable reads
   are moot ``linearizable`` (ReadIndex: the leader confirms it still leads),
   etcd's default range (``serializable=false``: also ReadIndex), and for
   PySyncObj a ``@replicated`` getter (the read goes through the Raft log, the
   only linearizable read it offers). Also: moot ``lease`` and ``stale``, etcd
   ``serializable=true`` (any member, from its own state), PySyncObj a plain
   local dict read on the replica the client is connected to.
4. failover: SIGKILL the leader; a probe client writes in a tight loop with
   short timeouts, going round all nodes; the time from the kill to the
   *return* of the first successful write. The killed node is restarted and
   the cluster waited on until healthy (all three agree on one leader, and
   for moot all three are voters again and caught up) before the next kill.

Also reported per load phase: CPU seconds used by the three servers and by
this (client) process, per 1,000 operations, to show where time goes on a
2-core machine where clients and servers share the CPUs.

Nothing here asserts on speed: a benchmark informs, it does not gate.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

VALUE_BYTES = 100
PRELOADED_KEYS = 1_000
FAILOVER_ATTEMPT_TIMEOUT_S = 0.2  # a probe write silent this long is abandoned and retried: the timing granularity
FAILOVER_DEADLINE_S = 30.0  # no successful write this long after a kill: the trial failed
HEALTHY_TIMEOUT_S = 60.0  # a restarted node must rejoin within this (a busy 2-core machine)
IDLE_SECONDS = 3.0  # how long the idle servers' CPU use is measured after start
ERRORS_KEPT_MAX = 5  # error messages kept per phase for the report
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"


# -- measurement ----------------------------------------------------------------------------


class Session(Protocol):
    """One client's connection to a system (one per client thread)."""

    def put(self, key: str, value: bytes) -> None: ...

    def get(self, key: str, mode: str) -> None: ...

    def close(self) -> None: ...


class System(Protocol):
    """Three replicas, started, driven, killed and restarted by the benchmark."""

    name: str
    read_modes: tuple[str, ...]  # the first is the linearizable one

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def session(self, index: int) -> Session: ...

    def server_pids(self) -> list[int]: ...

    def leader_index(self) -> int: ...

    def kill(self, index: int) -> None: ...

    def restart(self, index: int) -> None: ...

    def wait_healthy(self, timeout_s: float) -> None: ...

    def probe_write(self, attempt: int) -> bool: ...

    def notes(self) -> list[str]: ...


@dataclass(slots=True)
class Phase:
    """What one load phase measured."""

    ops: int = 0
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    error_messages: list[str] = field(default_factory=list)
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0

    @property
    def ops_per_s(self) -> float:
        """Completed operations per second of measured time."""
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, fraction: float) -> float:
        """The ``fraction`` quantile of the latencies, in ms (nan if none)."""
        return percentile(self.latencies_s, fraction) * 1000

    def cpu_ms_per_op(self, which: str) -> float:
        """CPU milliseconds per operation, servers' or this process's."""
        total = self.server_cpu_s if which == "server" else self.client_cpu_s
        return total * 1000 / self.ops if self.ops else float("nan")


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank quantile; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[rank]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # Fields after the command: state is [0]; utime and stime are fields 14 and 15 of stat(5).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def servers_cpu_s(system: System) -> float:
    """CPU seconds used so far by the system's live server processes."""
    return sum(process_cpu_s(pid) for pid in system.server_pids())


def remember_error(phase: Phase, error: BaseException, lock: threading.Lock) -> None:
    """Count an error and keep its first few messages."""
    with lock:
        phase.errors += 1
        if len(phase.error_messages) < ERRORS_KEPT_MAX:
            phase.error_messages.append(f"{type(error).__name__}: {error}"[:300])


def run_sequential_puts(system: System, count: int, seconds_max: float) -> Phase:
    """``count`` puts one after another from one client, stopping early after
    ``seconds_max`` (PySyncObj's defaults take ~100-200 ms a put)."""
    phase = Phase()
    lock = threading.Lock()
    session = system.session(0)
    value = b"s" * VALUE_BYTES
    try:
        for index in range(min(50, count)):  # warm the connection
            with contextlib.suppress(Exception):
                session.put(f"warm/{index}", value)
        cpu_before, server_before = time.process_time(), servers_cpu_s(system)
        started = time.perf_counter()
        for index in range(count):
            begun = time.perf_counter()
            if begun - started > seconds_max:
                break
            try:
                session.put(f"seq/{index % PRELOADED_KEYS}", value)
            except Exception as error:
                remember_error(phase, error, lock)
                continue
            phase.latencies_s.append(time.perf_counter() - begun)
        phase.seconds = time.perf_counter() - started
        phase.ops = len(phase.latencies_s)
        phase.client_cpu_s = time.process_time() - cpu_before
        phase.server_cpu_s = servers_cpu_s(system) - server_before
    finally:
        session.close()
    return phase


def run_concurrent(
    system: System,
    clients: int,
    seconds: float,
    warmup_s: float,
    operation: Callable[[Session, random.Random, int], None],
) -> Phase:
    """``clients`` threads, each running ``operation`` in a closed loop for
    ``warmup_s + seconds``; only operations begun after the warm-up (and
    ended before the end) count."""
    phase = Phase()
    lock = threading.Lock()
    sessions = [system.session(index) for index in range(clients)]
    barrier = threading.Barrier(clients + 1)
    measured_from = [0.0]
    measured_until = [0.0]

    def worker(index: int) -> None:
        rng = random.Random(index)
        session = sessions[index]
        latencies: list[float] = []
        barrier.wait()
        sequence = 0
        while True:
            begun = time.perf_counter()
            if begun >= measured_until[0]:
                break
            try:
                operation(session, rng, sequence)
            except Exception as error:
                if begun >= measured_from[0]:
                    remember_error(phase, error, lock)
                continue
            finally:
                sequence += 1
            ended = time.perf_counter()
            if begun >= measured_from[0] and ended <= measured_until[0]:
                latencies.append(ended - begun)
        with lock:
            phase.latencies_s.extend(latencies)

    threads = [threading.Thread(target=worker, args=(index,), daemon=True) for index in range(clients)]
    for thread in threads:
        thread.start()
    now = time.perf_counter()
    measured_from[0] = now + warmup_s
    measured_until[0] = now + warmup_s + seconds
    barrier.wait()
    time.sleep(warmup_s)  # the warm-up runs; nothing to poll
    cpu_before, server_before = time.process_time(), servers_cpu_s(system)
    time.sleep(seconds)
    phase.client_cpu_s = time.process_time() - cpu_before
    phase.server_cpu_s = servers_cpu_s(system) - server_before
    for thread in threads:
        thread.join(timeout=60)
    for session in sessions:
        with contextlib.suppress(Exception):
            session.close()
    phase.seconds = seconds
    phase.ops = len(phase.latencies_s)
    return phase


def preload(system: System, clients: int) -> None:
    """Write the keys the read phases read, with ``clients`` threads."""
    value = b"p" * VALUE_BYTES

    def writer(index: int) -> None:
        session = system.session(index)
        try:
            for key in range(index, PRELOADED_KEYS, clients):
                for _ in range(20):  # bounded retries: a preload write may meet a leader change
                    try:
                        session.put(f"key/{key}", value)
                        break
                    except Exception:
                        time.sleep(0.1)  # backing off before a retry
        finally:
            session.close()

    threads = [threading.Thread(target=writer, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@dataclass(slots=True)
class Failover:
    """Kill-to-first-successful-write times, one per kill."""

    times_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def run_failover(system: System, kills: int, log: Callable[[str], None]) -> Failover:
    """``kills`` trials: SIGKILL the leader, time the first successful write, restart, wait."""
    result = Failover()
    for trial in range(kills):
        try:
            system.wait_healthy(HEALTHY_TIMEOUT_S)
            victim = system.leader_index()
        except Exception as error:
            result.failures.append(f"trial {trial}: cluster not healthy before the kill: {error}")
            log(f"  {system.name} failover trial {trial}: not healthy: {error}")
            break
        killed_at = time.monotonic()
        system.kill(victim)
        attempt = 0
        recovered_s: float | None = None
        while time.monotonic() - killed_at < FAILOVER_DEADLINE_S:
            if system.probe_write(attempt):
                recovered_s = time.monotonic() - killed_at
                break
            attempt += 1
        if recovered_s is None:
            result.failures.append(f"trial {trial}: no write succeeded within {FAILOVER_DEADLINE_S:.0f}s")
        else:
            result.times_s.append(recovered_s)
        log(f"  {system.name} failover trial {trial}: killed node {victim}, first write after "
            f"{'-' if recovered_s is None else f'{recovered_s:.3f}s'} ({attempt} failed attempts)")
        system.restart(victim)
    with contextlib.suppress(Exception):
        system.wait_healthy(HEALTHY_TIMEOUT_S)
    return result


# -- moot ---------------------------------------------------------------------------------------


class MootSession:
    """A client thread's handle on moot: a shared ``Client`` or its own."""

    def __init__(self, client: Any, owned: bool) -> None:
        self._client = client
        self._owned = owned

    def put(self, key: str, value: bytes) -> None:
        """One linearizable write."""
        self._client.kv.put(key, value)

    def get(self, key: str, mode: str) -> None:
        """One read at consistency ``mode``."""
        self._client.kv.get(key, consistency=mode)

    def close(self) -> None:
        """Close the client if this session owns it."""
        if self._owned:
            self._client.close()


class Moot:
    """A 3-node ``LocalFederation``."""

    name = "moot"
    read_modes: tuple[str, ...] = ("linearizable", "lease", "stale")

    def __init__(self, clients_per_session: str) -> None:
        self.clients_per_session = clients_per_session  # "shared" or "own"
        self.federation: Any = None
        self._shared: Any = None
        self._probe: Any = None

    def start(self) -> None:
        """Start three node processes and wait for a working, 3-voter group."""
        from moot.client.local import LocalFederation

        self.federation = LocalFederation(3, keep_directory=True)
        self.federation.start()
        self.wait_healthy(HEALTHY_TIMEOUT_S)

    def stop(self) -> None:
        """Stop the nodes; the directory (logs) is kept for inspection."""
        for client in (self._shared, self._probe):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        self._shared = self._probe = None
        if self.federation is not None:
            self.federation.stop()

    def _connect(self) -> Any:
        import moot

        return moot.connect(self.federation.addresses, cluster=self.federation.cluster_dir)

    def session(self, index: int) -> Session:
        """The shared client (what a threaded program would do) or a fresh one."""
        if self.clients_per_session == "own":
            return MootSession(self._connect(), owned=True)
        if self._shared is None:
            self._shared = self._connect()
        return MootSession(self._shared, owned=False)

    def server_pids(self) -> list[int]:
        """The live node processes."""
        return [node.process.pid for node in self.federation.nodes if node.alive]

    def _probe_client(self) -> Any:
        if self._probe is None:
            self._probe = self._connect()
            # Short deadlines: the probe loop retries by itself, quickly.
            self._probe.timeout_s = 1.0
            self._probe.kv.timeout_s = FAILOVER_ATTEMPT_TIMEOUT_S
        return self._probe

    def _statuses(self) -> list[Any]:
        return list(self._probe_client().status())

    def leader_index(self) -> int:
        """The index of the node whose status says it leads."""
        for status in self._statuses():
            if status.role == "leader":
                for node in self.federation.nodes:
                    if node.address == status.address:
                        return int(node.index)
        raise RuntimeError("no node reports itself leader")

    def kill(self, index: int) -> None:
        """SIGKILL node ``index``."""
        self.federation.kill(index)

    def restart(self, index: int) -> None:
        """Start node ``index`` again on its data dir."""
        self.federation.restart(index)

    def wait_healthy(self, timeout_s: float) -> None:
        """Until all three nodes are voters, agree on a leader and have applied its commit index."""
        deadline = time.monotonic() + timeout_s
        last = "no status yet"
        while time.monotonic() < deadline:
            try:
                statuses = self._statuses()
            except Exception as error:
                last = f"status failed: {error}"
                time.sleep(0.1)  # polling a condition with a deadline
                continue
            leaders = [status for status in statuses if status.role == "leader"]
            last = "; ".join(
                f"{s.address} {s.role} term={s.term} voters={len(s.voters)} applied={s.applied_index}" for s in statuses
            )
            if len(statuses) == 3 and len(leaders) == 1:
                leader = leaders[0]
                agreed = all(status.leader_id == leader.node_id for status in statuses)
                voters = all(len(status.voters) == 3 for status in statuses)
                caught_up = all(status.applied_index >= leader.commit_index - 2 for status in statuses)
                if agreed and voters and caught_up and self.probe_write(0):
                    return
            time.sleep(0.1)  # polling a condition with a deadline
        raise RuntimeError(f"moot not healthy after {timeout_s:.0f}s: {last}; logs in {self.federation.directory}")

    def probe_write(self, attempt: int) -> bool:
        """One write with a short deadline (the client itself fails over between nodes)."""
        try:
            self._probe_client().kv.put("probe", str(attempt))
            return True
        except Exception:
            return False

    def notes(self) -> list[str]:
        """Where the node logs are."""
        return [f"moot node logs: {self.federation.directory}/node-*.log"]


# -- etcd --------------------------------------------------------------------------------------


def b64(text: str | bytes) -> str:
    """Base64 as the JSON gateway wants keys and values."""
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


class EtcdSession:
    """One keep-alive HTTP/1.1 connection to one member's JSON gateway."""

    def __init__(self, port: int, timeout_s: float = 10.0) -> None:
        self._port = port
        self._timeout_s = timeout_s
        self._connection: http.client.HTTPConnection | None = None

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``path``; the decoded answer, or an exception."""
        if self._connection is None:
            self._connection = http.client.HTTPConnection(HOST, self._port, timeout=self._timeout_s)
        payload = json.dumps(body)
        try:
            self._connection.request("POST", path, payload, {"Content-Type": "application/json"})
            response = self._connection.getresponse()
            data = response.read()
        except Exception:
            self.close()
            raise
        if response.status != 200:
            raise RuntimeError(f"etcd {path} HTTP {response.status}: {data[:200]!r}")
        answer: dict[str, Any] = json.loads(data)
        return answer

    def put(self, key: str, value: bytes) -> None:
        """One write (linearizable: committed through Raft)."""
        self.call("/v3/kv/put", {"key": b64(key), "value": b64(value)})

    def get(self, key: str, mode: str) -> None:
        """One range on a single key; ``serializable`` reads the member's own state."""
        body: dict[str, Any] = {"key": b64(key)}
        if mode == "serializable":
            body["serializable"] = True
        self.call("/v3/kv/range", body)

    def close(self) -> None:
        """Close the connection."""
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None


class Etcd:
    """Three ``etcd`` processes with default tuning."""

    name = "etcd"
    read_modes: tuple[str, ...] = ("linearizable", "serializable")

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.directory = Path(tempfile.mkdtemp(prefix="kv-compare-etcd-"))
        ports = free_ports(6)
        self.client_ports = ports[:3]
        self.peer_ports = ports[3:]
        self.processes: list[subprocess.Popen[bytes] | None] = [None, None, None]
        self._probes = [EtcdSession(port, FAILOVER_ATTEMPT_TIMEOUT_S) for port in self.client_ports]

    def _command(self, index: int) -> list[str]:
        cluster = ",".join(f"m{i}=http://{HOST}:{port}" for i, port in enumerate(self.peer_ports))
        return [
            self.binary,
            "--name", f"m{index}",
            "--data-dir", str(self.directory / f"m{index}"),
            "--listen-client-urls", f"http://{HOST}:{self.client_ports[index]}",
            "--advertise-client-urls", f"http://{HOST}:{self.client_ports[index]}",
            "--listen-peer-urls", f"http://{HOST}:{self.peer_ports[index]}",
            "--initial-advertise-peer-urls", f"http://{HOST}:{self.peer_ports[index]}",
            "--initial-cluster", cluster,
            "--initial-cluster-token", "kv-compare",
            "--initial-cluster-state", "new",
        ]  # fmt: skip

    def _spawn(self, index: int) -> None:
        with open(self.directory / f"m{index}.log", "ab") as log:
            self.processes[index] = subprocess.Popen(
                self._command(index), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def start(self) -> None:
        """Start the three members and wait for a leader all agree on."""
        for index in range(3):
            self._spawn(index)
        self.wait_healthy(HEALTHY_TIMEOUT_S)

    def stop(self) -> None:
        """Stop the members and remove their data."""
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in self.processes:
            if process is not None:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def session(self, index: int) -> Session:
        """Client thread ``index`` talks to member ``index % 3``."""
        return EtcdSession(self.client_ports[index % 3])

    def server_pids(self) -> list[int]:
        """The live members."""
        return [p.pid for p in self.processes if p is not None and p.poll() is None]

    def _status(self, index: int) -> dict[str, Any]:
        return EtcdSession(self.client_ports[index], 1.0).call("/v3/maintenance/status", {})

    def leader_index(self) -> int:
        """The member that the members' status says leads."""
        for index in range(3):
            with contextlib.suppress(Exception):
                status = self._status(index)
                leader = status["leader"]
                for other in range(3):
                    if self._status(other)["header"]["member_id"] == leader:
                        return other
        raise RuntimeError("no etcd member reports a leader")

    def kill(self, index: int) -> None:
        """SIGKILL member ``index``."""
        process = self.processes[index]
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()

    def restart(self, index: int) -> None:
        """Start member ``index`` again on its data dir (it rejoins from its WAL)."""
        self._spawn(index)

    def wait_healthy(self, timeout_s: float) -> None:
        """Until all three members answer status with the same leader and a write succeeds."""
        deadline = time.monotonic() + timeout_s
        last = "no status yet"
        while time.monotonic() < deadline:
            try:
                leaders = {self._status(index)["leader"] for index in range(3)}
                if len(leaders) == 1 and self.probe_write(0):
                    return
                last = f"leaders {leaders}"
            except Exception as error:
                last = str(error)
            time.sleep(0.1)  # polling a condition with a deadline
        raise RuntimeError(f"etcd not healthy after {timeout_s:.0f}s: {last}; logs in {self.directory}")

    def probe_write(self, attempt: int) -> bool:
        """One write to member ``attempt % 3``, short timeout."""
        try:
            self._probes[attempt % 3].put("probe", str(attempt).encode())
            return True
        except Exception:
            return False

    def notes(self) -> list[str]:
        """Version."""
        version = subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
        return [f"etcd: {version}"]


# -- PySyncObj ---------------------------------------------------------------------------------


def pysyncobj_replica(self_port: int, partner_ports: list[int], front_port: int) -> None:
    """Run one PySyncObj replica with its TCP front end until killed (a subprocess).

    Protocol, one line each way: ``P key value`` -> ``OK``; ``G key`` (through
    the log) or ``L key`` (local dict) -> ``V value`` or ``N``; ``S`` ->
    ``S leader-address-or-none``; errors -> ``E reason``.
    """
    from pysyncobj import SyncObj, SyncObjConf, replicated  # type: ignore[import-untyped]

    class Store(SyncObj):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(
                f"{HOST}:{self_port}",
                [f"{HOST}:{port}" for port in partner_ports],
                SyncObjConf(),  # defaults: in-memory journal, 0.4-1.4 s election timeout
            )
            self.data: dict[str, str] = {}

        @replicated  # type: ignore[untyped-decorator]
        def put(self, key: str, value: str) -> bool:
            self.data[key] = value
            return True

        @replicated  # type: ignore[untyped-decorator]
        def read(self, key: str) -> str | None:
            return self.data.get(key)

    store = Store()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for raw in self.rfile:
                parts = raw.decode().split()
                try:
                    answer = self.answer(parts)
                except Exception as error:
                    answer = f"E {type(error).__name__} {error}"
                self.wfile.write(answer.encode() + b"\n")

        def answer(self, parts: list[str]) -> str:
            if parts[0] == "P":
                store.put(parts[1], parts[2], sync=True, timeout=10)
                return "OK"
            if parts[0] in ("G", "L"):
                value = store.read(parts[1], sync=True, timeout=10) if parts[0] == "G" else store.data.get(parts[1])
                return "N" if value is None else f"V {value}"
            if parts[0] == "S":
                leader = store._getLeader()
                return f"S {leader if leader is not None else 'none'}"
            return "E bad command"

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    with Server((HOST, front_port), Handler) as server:
        server.serve_forever()


class PySyncObjSession:
    """One TCP connection to one replica's front end."""

    def __init__(self, port: int, timeout_s: float = 15.0) -> None:
        self._port = port
        self._timeout_s = timeout_s
        self._socket: socket.socket | None = None
        self._reader: Any = None

    def call(self, line: str) -> str:
        """Send one command line; its answer line (raises on ``E``)."""
        if self._socket is None:
            self._socket = socket.create_connection((HOST, self._port), timeout=self._timeout_s)
            self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._reader = self._socket.makefile("rb")
        try:
            self._socket.sendall(line.encode() + b"\n")
            answer = self._reader.readline().decode().rstrip("\n")
        except Exception:
            self.close()
            raise
        if not answer:
            self.close()
            raise ConnectionError("replica closed the connection")
        if answer.startswith("E "):
            raise RuntimeError(f"pysyncobj: {answer[2:]}")
        return str(answer)

    def put(self, key: str, value: bytes) -> None:
        """One replicated write."""
        self.call(f"P {key} {value.decode()}")

    def get(self, key: str, mode: str) -> None:
        """``log``: a replicated read; ``local``: the replica's own dict."""
        self.call(f"{'G' if mode == 'log' else 'L'} {key}")

    def close(self) -> None:
        """Close the connection."""
        if self._socket is not None:
            with contextlib.suppress(Exception):
                self._reader.close()
                self._socket.close()
        self._socket = None
        self._reader = None


class PySyncObj:
    """Three PySyncObj replica processes with TCP front ends."""

    name = "PySyncObj"
    read_modes: tuple[str, ...] = ("log", "local")

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="kv-compare-pysyncobj-"))
        ports = free_ports(6)
        self.raft_ports = ports[:3]
        self.front_ports = ports[3:]
        self.processes: list[subprocess.Popen[bytes] | None] = [None, None, None]
        self._probes = [PySyncObjSession(port, FAILOVER_ATTEMPT_TIMEOUT_S) for port in self.front_ports]

    def _spawn(self, index: int) -> None:
        partners = [port for i, port in enumerate(self.raft_ports) if i != index]
        command = [
            sys.executable, str(Path(__file__).resolve()), "--pysyncobj-replica",
            str(self.raft_ports[index]), ",".join(map(str, partners)), str(self.front_ports[index]),
        ]  # fmt: skip
        with open(self.directory / f"r{index}.log", "ab") as log:
            self.processes[index] = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def start(self) -> None:
        """Start the replicas and wait until they agree on a leader."""
        for index in range(3):
            self._spawn(index)
        self.wait_healthy(HEALTHY_TIMEOUT_S)

    def stop(self) -> None:
        """Kill the replicas (state is in memory only)."""
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def session(self, index: int) -> Session:
        """Client thread ``index`` talks to replica ``index % 3``."""
        return PySyncObjSession(self.front_ports[index % 3])

    def server_pids(self) -> list[int]:
        """The live replicas."""
        return [p.pid for p in self.processes if p is not None and p.poll() is None]

    def _leaders(self) -> list[str]:
        leaders = []
        for port in self.front_ports:
            session = PySyncObjSession(port, 1.0)
            try:
                leaders.append(session.call("S").split()[1])
            finally:
                session.close()
        return leaders

    def leader_index(self) -> int:
        """The replica whose Raft address the replicas name as leader."""
        for leader in self._leaders():
            if leader != "none":
                return self.raft_ports.index(int(leader.rsplit(":", 1)[1]))
        raise RuntimeError("no PySyncObj replica knows a leader")

    def kill(self, index: int) -> None:
        """SIGKILL replica ``index``."""
        process = self.processes[index]
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()

    def restart(self, index: int) -> None:
        """Start replica ``index`` again (empty: it catches up from the leader)."""
        self._spawn(index)

    def wait_healthy(self, timeout_s: float) -> None:
        """Until all three replicas name the same leader and a write succeeds."""
        deadline = time.monotonic() + timeout_s
        last = "no status yet"
        while time.monotonic() < deadline:
            try:
                leaders = set(self._leaders())
                if len(leaders) == 1 and "none" not in leaders and self.probe_write(0):
                    return
                last = f"leaders {leaders}"
            except Exception as error:
                last = str(error)
            time.sleep(0.1)  # polling a condition with a deadline
        raise RuntimeError(f"PySyncObj not healthy after {timeout_s:.0f}s: {last}; logs in {self.directory}")

    def probe_write(self, attempt: int) -> bool:
        """One write to replica ``attempt % 3``, short timeout."""
        try:
            self._probes[attempt % 3].put("probe", str(attempt).encode())
            return True
        except Exception:
            return False

    def notes(self) -> list[str]:
        """Version."""
        from pysyncobj.version import VERSION  # type: ignore[import-untyped]

        return [f"PySyncObj {VERSION}"]


# -- the run -----------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free right now on 127.0.0.1."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(slots=True)
class Results:
    """Everything measured for one system."""

    sequential: Phase | None = None
    puts: Phase | None = None
    gets: dict[str, Phase] = field(default_factory=dict)
    failover: Failover | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    idle_cpu_percent: float | None = None


def put_operation(session: Session, rng: random.Random, sequence: int) -> None:
    """A put of a 100-byte value to one of 1,000 keys."""
    session.put(f"key/{rng.randrange(PRELOADED_KEYS)}", b"c" * VALUE_BYTES)


def get_operation(mode: str) -> Callable[[Session, random.Random, int], None]:
    """A get at ``mode`` of one of the preloaded keys."""

    def operation(session: Session, rng: random.Random, sequence: int) -> None:
        session.get(f"key/{rng.randrange(PRELOADED_KEYS)}", mode)

    return operation


def measure(system: System, options: argparse.Namespace, log: Callable[[str], None]) -> Results:
    """Every metric for one system; the system is stopped afterwards."""
    results = Results()
    started = time.monotonic()
    log(f"== {system.name}: starting; load average {os.getloadavg()[0]:.1f}")
    try:
        system.start()
        results.notes = system.notes()
        idle_before = servers_cpu_s(system)
        time.sleep(IDLE_SECONDS)  # measuring what the idle servers burn; nothing to poll
        results.idle_cpu_percent = (servers_cpu_s(system) - idle_before) * 100 / IDLE_SECONDS
        log(f"  idle: servers use {results.idle_cpu_percent:.0f}% of a CPU")
        results.sequential = run_sequential_puts(system, options.sequential, options.sequential_seconds_max)
        log(
            f"  sequential put: {results.sequential.ops} puts, p50 {results.sequential.percentile_ms(0.5):.2f} ms, "
            f"errors {results.sequential.errors}"
        )
        results.puts = run_concurrent(system, options.clients, options.seconds, options.warmup, put_operation)
        log(f"  puts x{options.clients}: {results.puts.ops_per_s:.0f}/s, errors {results.puts.errors}")
        preload(system, options.clients)
        for mode in system.read_modes:
            phase = run_concurrent(system, options.clients, options.seconds, options.warmup, get_operation(mode))
            results.gets[mode] = phase
            log(f"  gets ({mode}) x{options.clients}: {phase.ops_per_s:.0f}/s, errors {phase.errors}")
        results.failover = run_failover(system, options.kills, log)
    except Exception as error:
        results.error = f"{type(error).__name__}: {error}"
        log(f"  {system.name} FAILED: {results.error}")
    finally:
        with contextlib.suppress(Exception):
            system.stop()
        load = os.getloadavg()
        results.notes.append(
            f"{system.name}: {time.monotonic() - started:.0f}s; load average after it {load[0]:.1f} (1 min), {load[1]:.1f} (5 min)"
        )
    return results


def fmt_ms(value: float) -> str:
    """Milliseconds with sensible precision."""
    if value != value:  # nan
        return "-"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def ratio(mine: float, theirs: float, *, higher_is_better: bool) -> str:
    """moot / other, marked with which is better."""
    if not (mine == mine and theirs == theirs) or theirs == 0 or mine == 0:
        return "-"
    value = mine / theirs
    better = value > 1 if higher_is_better else value < 1
    return f"{value:.2f}x{' ✓' if better else ''}"


def table_rows(all_results: dict[str, Results]) -> Iterator[tuple[str, dict[str, float], bool, str]]:
    """(metric, value per system, higher is better, unit) rows."""

    def each(getter: Callable[[Results], float | None]) -> dict[str, float]:
        values = {}
        for name, results in all_results.items():
            try:
                value = getter(results)
            except (AttributeError, KeyError, TypeError):
                value = None
            values[name] = float("nan") if value is None else value
        return values

    yield "sequential put p50 (ms)", each(lambda r: r.sequential.percentile_ms(0.5)), False, "ms"  # type: ignore[union-attr]
    yield "sequential put p99 (ms)", each(lambda r: r.sequential.percentile_ms(0.99)), False, "ms"  # type: ignore[union-attr]
    yield "puts/s, concurrent", each(lambda r: r.puts.ops_per_s), True, "ops"  # type: ignore[union-attr]
    yield "put p50 (ms), concurrent", each(lambda r: r.puts.percentile_ms(0.5)), False, "ms"  # type: ignore[union-attr]
    yield "put p99 (ms), concurrent", each(lambda r: r.puts.percentile_ms(0.99)), False, "ms"  # type: ignore[union-attr]
    linearizable = {"moot": "linearizable", "etcd": "linearizable", "PySyncObj": "log"}
    weak = {"moot": "stale", "etcd": "serializable", "PySyncObj": "local"}
    yield "linearizable gets/s", each(lambda r: r.gets[linearizable[name_of(all_results, r)]].ops_per_s), True, "ops"
    yield "linearizable get p50 (ms)", each(lambda r: r.gets[linearizable[name_of(all_results, r)]].percentile_ms(0.5)), False, "ms"
    yield "linearizable get p99 (ms)", each(lambda r: r.gets[linearizable[name_of(all_results, r)]].percentile_ms(0.99)), False, "ms"
    yield "lease gets/s (moot only)", each(lambda r: r.gets["lease"].ops_per_s), True, "ops"
    yield "local/stale gets/s", each(lambda r: r.gets[weak[name_of(all_results, r)]].ops_per_s), True, "ops"
    yield "local/stale get p50 (ms)", each(lambda r: r.gets[weak[name_of(all_results, r)]].percentile_ms(0.5)), False, "ms"
    yield "idle CPU, 3 servers (% of a core)", each(lambda r: r.idle_cpu_percent), False, "pct"
    yield "failover p50 (s)", each(lambda r: statistics.median(r.failover.times_s)), False, "s"  # type: ignore[union-attr]
    yield "failover max (s)", each(lambda r: max(r.failover.times_s)), False, "s"  # type: ignore[union-attr]


def name_of(all_results: dict[str, Results], results: Results) -> str:
    """The system name of ``results``."""
    return next(name for name, value in all_results.items() if value is results)


def render(all_results: dict[str, Results], options: argparse.Namespace) -> str:
    """The markdown report: main table, CPU table, errors."""
    names = list(all_results)
    others = [name for name in names if name != "moot"]
    header = ["metric", *names] + [f"moot/{name}" for name in others if "moot" in names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    for metric, values, higher_is_better, unit in table_rows(all_results):
        cells = [metric]
        for name in names:
            value = values[name]
            if unit == "ops":
                cells.append("-" if value != value else f"{value:,.0f}")
            elif unit == "pct":
                cells.append("-" if value != value else f"{value:.0f}")
            elif unit == "s":
                cells.append("-" if value != value else f"{value:.2f}")
            else:
                cells.append(fmt_ms(value))
        if "moot" in names:
            cells += [ratio(values["moot"], values[name], higher_is_better=higher_is_better) for name in others]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Concurrency {options.clients} clients; ✓ marks a ratio where moot is better.")
    lines.append("")
    lines.append("CPU per 1,000 operations (seconds), servers (3 processes) / this client process:")
    lines.append("")
    lines.append("| phase | " + " | ".join(names) + " |")
    lines.append("|---|" + "---:|" * len(names))
    phase_getters: list[tuple[str, Callable[[Results], Phase | None]]] = [
        ("sequential put", lambda r: r.sequential),
        ("concurrent put", lambda r: r.puts),
        ("linearizable get", lambda r: next(iter(r.gets.values()), None)),
    ]
    for label, getter in phase_getters:
        cells = []
        for name in names:
            phase = getter(all_results[name])
            if phase is None or not phase.ops:
                cells.append("-")
            else:
                cells.append(f"{phase.cpu_ms_per_op('server'):.2f} / {phase.cpu_ms_per_op('client'):.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    problems = []
    for name, results in all_results.items():
        if results.error:
            problems.append(f"- {name}: run aborted: {results.error}")
        if results.sequential is not None:
            problems.append(
                f"- {name} sequential: {results.sequential.ops} puts in {results.sequential.seconds:.1f}s"
            )
        phases: list[tuple[str, Phase | None]] = [("sequential", results.sequential), ("puts", results.puts)]
        phases += [(f"gets {mode}", phase) for mode, phase in results.gets.items()]
        for label, phase in phases:
            if phase is not None and phase.errors:
                problems.append(f"- {name} {label}: {phase.errors} errors, e.g. {phase.error_messages}")
        if results.failover is not None:
            for failure in results.failover.failures:
                problems.append(f"- {name} failover {failure}")
            if results.failover.times_s:
                times = ", ".join(f"{t:.2f}" for t in results.failover.times_s)
                problems.append(f"- {name} failover times (s): {times}")
        problems += [f"- {note}" for note in results.notes]
    lines += ["", "Details:", "", *problems]
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer ops, 3 kills, < 2 minutes")
    parser.add_argument("--clients", type=int, default=64, help="concurrent client threads")
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per throughput phase")
    parser.add_argument("--warmup", type=float, default=None, help="unmeasured seconds before each phase")
    parser.add_argument("--sequential", type=int, default=None, help="sequential puts")
    parser.add_argument("--sequential-seconds-max", type=float, default=None, help="cap on the sequential phase")
    parser.add_argument("--kills", type=int, default=None, help="leader kills per system")
    parser.add_argument("--systems", default="moot,etcd,PySyncObj", help="comma-separated subset")
    parser.add_argument(
        "--moot-clients",
        choices=("shared", "own"),
        default="shared",
        help="moot: one Client shared by all threads (default) or one per thread",
    )
    parser.add_argument("--pysyncobj-replica", nargs=3, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.seconds is None:
        options.seconds = 1.5 if options.quick else 10.0
    if options.warmup is None:
        options.warmup = 0.5 if options.quick else 1.0
    if options.sequential is None:
        options.sequential = 300 if options.quick else 2_000
    if options.sequential_seconds_max is None:
        options.sequential_seconds_max = 5.0 if options.quick else 30.0
    if options.kills is None:
        options.kills = 3 if options.quick else 10
    return options


def main(argv: list[str]) -> int:
    """Run the systems one after the other and print the table."""
    options = parse(argv)
    if options.pysyncobj_replica:
        self_port, partners, front_port = options.pysyncobj_replica
        pysyncobj_replica(int(self_port), [int(p) for p in partners.split(",")], int(front_port))
        return 0

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    wanted = options.systems.split(",")
    log(f"options: {vars(options)}; cpus {os.cpu_count()}")
    all_results: dict[str, Results] = {}
    for name in wanted:
        system: System
        if name == "moot":
            system = Moot(options.moot_clients)
        elif name == "etcd":
            binary = shutil.which("etcd")
            if binary is None:
                log("etcd not on PATH: skipped (apt-get install etcd-server)")
                continue
            system = Etcd(binary)
        elif name == "PySyncObj":
            try:
                import pysyncobj  # noqa: F401
            except ImportError:
                log("pysyncobj not installed: skipped (pip install pysyncobj)")
                continue
            system = PySyncObj()
        else:
            raise SystemExit(f"unknown system {name!r}")
        all_results[name] = measure(system, options, log)
    print(render(all_results, options))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
