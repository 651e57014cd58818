"""Real node processes on 127.0.0.1 over mutual TLS: join, detect, rejoin, refuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from moot.client.local import LocalFederation, free_ports
from moot.core.wire import MemberInfo
from moot.runtime import identity

pytestmark = pytest.mark.integration


def states_of(view: list[MemberInfo], node_id: str) -> str | None:
    for info in view:
        if info.node_id == node_id:
            return str(info.state)
    return None


def node_id_at(federation: LocalFederation, index: int) -> str:
    address = federation.nodes[index].address
    view = federation.client().members(node=federation.nodes[0 if index else 1].address)
    return next(info.node_id for info in view if info.address == address)


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[LocalFederation]:
    fed = LocalFederation(
        5,
        directory=tmp_path / "fed",
        labels=[{"region": r} for r in ("lahore", "karachi", "singapore", "lahore", "karachi")],
        profile="lan",
    )
    with fed:
        yield fed


def test_five_nodes_detect_kill_and_rejoin(federation: LocalFederation) -> None:
    views = federation.views()
    assert len(views) == 5
    for infos in views.values():
        assert sorted(info.state for info in infos) == ["alive"] * 5
        assert {info.labels["region"] for info in infos} == {"lahore", "karachi", "singapore"}

    victim = node_id_at(federation, 3)
    before = {info.node_id: info for info in views[0]}[victim].incarnation
    federation.kill(3)
    federation.wait_until(
        lambda vs: len(vs) == 4 and all(states_of(infos, victim) == "dead" for infos in vs.values()),
        what=f"every survivor to declare {victim} dead",
        timeout_s=60,
    )

    federation.restart(3)

    def rejoined(vs: dict[int, list[MemberInfo]]) -> bool:
        if len(vs) != 5:
            return False
        for infos in vs.values():
            info = next((i for i in infos if i.node_id == victim), None)
            if info is None or info.state != "alive" or info.incarnation <= before:
                return False
        return True

    federation.wait_until(rejoined, what=f"{victim} to rejoin alive with a higher incarnation", timeout_s=60)


def test_rtt_estimates_and_json_cli(federation: LocalFederation) -> None:
    def estimated(vs: dict[int, list[MemberInfo]]) -> bool:
        # Loopback round trips are well under a millisecond; the estimates
        # must settle near that (under 20 ms even on a loaded 2-core CI box).
        return all(info.rtt_ms is not None and info.rtt_ms < 20 for infos in vs.values() for info in infos)

    federation.wait_until(estimated, what="RTT estimates under 20 ms to every member", timeout_s=90)
    result = subprocess.run(
        [sys.executable, "-m", "moot", "members", "--cluster", str(federation.cluster_dir), "--node", federation.addresses[0], "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = json.loads(result.stdout)
    assert len(rows) == 5
    assert set(rows[0]) >= {"id", "address", "state", "incarnation", "labels", "rtt_ms"}
    assert {row["address"] for row in rows} == set(federation.addresses)
    assert all(row["rtt_ms"] is not None and 0 <= row["rtt_ms"] < 50 for row in rows)
    assert [row["rtt_ms"] for row in rows].count(0.0) == 1  # the answering node itself


def test_graceful_leave_is_seen_as_left(federation: LocalFederation) -> None:
    victim = node_id_at(federation, 4)
    federation.terminate(4)
    assert federation.nodes[4].process is not None
    assert federation.nodes[4].process.returncode == 0
    federation.wait_until(
        lambda vs: len(vs) == 4 and all(states_of(infos, victim) == "left" for infos in vs.values()),
        what=f"every member to see {victim} left",
        timeout_s=30,
    )


def test_foreign_ca_node_never_appears(federation: LocalFederation, tmp_path: Path) -> None:
    foreign_cluster = tmp_path / "foreign"
    identity.init_cluster(foreign_cluster)
    port = free_ports(1)[0]
    log_path = tmp_path / "foreign.log"
    with open(log_path, "wb") as log:
        intruder = subprocess.Popen(
            [
                sys.executable, "-m", "moot", "node", "start",
                "--cluster", str(foreign_cluster),
                "--data-dir", str(tmp_path / "foreign-data"),
                "--listen", f"127.0.0.1:{port}",
                "--join", federation.addresses[0],
                "--profile", "local",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        # Wait until the members refused the intruder's handshakes (logged).
        deadline = time.monotonic() + 30
        refused = False
        while time.monotonic() < deadline and not refused:
            refused = "refused" in federation.nodes[0].log_path.read_text(errors="replace")
            time.sleep(0.1)  # polling a log file with a deadline
        assert refused, "node 0 never logged refusing the foreign-CA peer"
        for infos in federation.views().values():
            assert len(infos) == 5
            assert all(info.address != f"127.0.0.1:{port}" for info in infos)
    finally:
        intruder.terminate()
        intruder.wait(timeout=30)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing-cluster", "run `moot init"),
        ("address-in-use", "choose a free --listen"),
        ("data-dir-is-file", "--data-dir"),
        ("bad-address", "HOST:PORT"),
        ("wildcard-without-advertise", "--advertise"),
        ("corrupt-node-state", "node.json"),
    ],
)
def test_node_start_bad_input_exits_with_one_clear_line(tmp_path: Path, case: str, expected: str) -> None:
    cluster = tmp_path / "cluster"
    identity.init_cluster(cluster)
    port = free_ports(1)[0]
    data_dir = tmp_path / "data"
    listen = f"127.0.0.1:{port}"
    blocker = None
    if case == "missing-cluster":
        cluster = tmp_path / "nowhere"
    elif case == "address-in-use":
        import socket

        blocker = socket.socket()
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
    elif case == "data-dir-is-file":
        data_dir.write_text("not a directory")
    elif case == "bad-address":
        listen = "localhost"
    elif case == "corrupt-node-state":
        data_dir.mkdir()
        (data_dir / "node.json").write_text("{not json")
    elif case == "wildcard-without-advertise":
        listen = f"0.0.0.0:{port}"  # refused before anything binds
    try:
        result = subprocess.run(
            [sys.executable, "-m", "moot", "node", "start", "--cluster", str(cluster), "--data-dir", str(data_dir), "--listen", listen],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "400"},
        )
    finally:
        if blocker is not None:
            blocker.close()
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    assert expected in lines[0]


def test_http_api_needs_the_token(federation: LocalFederation) -> None:
    import urllib.error
    import urllib.request

    base = federation.http_urls[0]
    with urllib.request.urlopen(f"{base}/healthz", timeout=10) as response:
        assert json.loads(response.read())["ok"] is True
    for header in (None, "Bearer wrong-token"):
        request = urllib.request.Request(f"{base}/api/members")
        if header:
            request.add_header("Authorization", header)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
        body = json.loads(refused.value.read())
        assert "members" not in body
        assert "Bearer" in body["message"]
    request = urllib.request.Request(f"{base}/api/members", headers={"Authorization": f"Bearer {federation.token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        members = json.loads(response.read())["members"]
    assert sorted(member["address"] for member in members) == sorted(federation.addresses)
