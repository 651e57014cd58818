"""The federation's timeline on real node processes: every node's events,
stamped with hybrid logical clocks and merged across nodes; after the
leader is killed, the survivors' "dead" verdicts and the new leader are on
it, a follower's "the leader is X" sorts after X's own "I lead", and the
HTTP API and ``moot events`` show the same."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from moot.client.local import LocalFederation
from moot.core import hlc

pytestmark = pytest.mark.integration

DEADLINE_S = 30.0


def wait_for(predicate: Any, what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)  # polling a condition with a deadline
    raise AssertionError(f"timed out waiting for {what}")


def test_the_timeline_tells_a_leader_kill_in_causal_order(tmp_path: Any, http: Callable[..., Any]) -> None:
    with LocalFederation(3, directory=tmp_path / "fed") as federation:
        client = federation.client()
        statuses = federation.statuses()
        ids = {index: status.node_id for index, status in statuses.items()}
        old = federation.leader()
        survivors = [index for index in range(3) if index != old]
        nodes = [option for i in survivors for option in ("--node", federation.addresses[i])]
        follow = subprocess.Popen(
            [sys.executable, "-m", "moot", "events", "--follow", "--json", "--cluster", str(federation.cluster_dir), *nodes],
            stdout=subprocess.PIPE, text=True,
        )
        assert follow.stdout is not None
        first = json.loads(follow.stdout.readline())  # the timeline so far, then it follows
        assert first["event"] in {"node_started", "member_joined", "raft_role", "raft_bootstrapped"}
        federation.kill(old)
        new = federation.leader()
        assert new != old

        def told() -> list[dict[str, Any]] | None:
            events = client.events(node=federation.addresses[new])
            dead = {e["node"] for e in events if e["event"] == "member_dead" and e.get("member") == ids[old]}
            leads = [e for e in events if e["event"] == "raft_role" and e["node"] == ids[new] and e["role"] == "leader"]
            follows = [
                e for e in events
                if e["event"] == "raft_role" and e["node"] != ids[new] and e.get("leader") == ids[new]
            ]
            return events if dead == {ids[i] for i in survivors} and leads and follows else None

        events = wait_for(told, "both survivors declaring the old leader dead, and the new leader on the timeline")
        stamps = [event["hlc"] for event in events]
        assert stamps == sorted(stamps), "merged in hybrid-clock order"
        assert {ids[i] for i in survivors} <= {event["node"] for event in events}
        assert all(hlc.format_timestamp(e["hlc"]) == e["time"] for e in events)
        # Cause before effect: the new leader's "I lead" (term t) precedes
        # every follower's "the leader is X" for that term.
        leads = {e["term"]: e["hlc"] for e in events if e["event"] == "raft_role" and e["role"] == "leader"}
        follows = [e for e in events if e["event"] == "raft_role" and e["role"] == "follower" and e.get("leader")]
        checked = 0
        for event in follows:
            if event["term"] in leads and event["leader"] == ids[new]:
                assert leads[event["term"]] < event["hlc"], (leads, event)
                checked += 1
        assert checked >= 1

        # One node's own, and paging by hybrid timestamp.
        own = client.events(federation=False, node=federation.addresses[new])
        assert own and {e["node"] for e in own} == {ids[new]}
        later = client.events(after=stamps[-2], node=federation.addresses[new])
        assert [e["hlc"] for e in later][:1] == stamps[-1:]

        # The HTTP API: the same timeline behind the token.
        url = federation.nodes[new].http_url + "/api/events?limit=50"
        status, body = http(url, token=federation.token)
        assert status == 200 and body["missing"] == []
        assert [e["hlc"] for e in body["events"]] == sorted(e["hlc"] for e in body["events"])
        assert any(e["event"] == "member_dead" for e in body["events"])
        status, body = http(url)
        assert status == 401 and "events" not in body
        status, body = http(federation.nodes[new].http_url + "/api/events?limit=0", token=federation.token)
        assert status == 400 and "limit" in body["message"]

        # The CLI prints it, and a follower saw it happen.
        try:
            followed = []
            while not any(e["event"] == "member_dead" and e.get("member") == ids[old] for e in followed):
                line = follow.stdout.readline()  # the test's timeout bounds the wait
                assert line, f"moot events --follow ended ({follow.poll()})"
                followed.append(json.loads(line))
        finally:
            follow.terminate()
            follow.wait(timeout=30)
        out = subprocess.run(
            [sys.executable, "-m", "moot", "events", "--cluster", str(federation.cluster_dir), *nodes, "--json"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
        printed = [json.loads(line) for line in out.splitlines()]
        assert any(e["event"] == "member_dead" and e.get("member") == ids[old] for e in printed)
        status_out = subprocess.run(
            [sys.executable, "-m", "moot", "status", "--cluster", str(federation.cluster_dir), *nodes],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
        assert "dashboard:" in status_out
        assert all(f"{federation.nodes[i].http_url}/" in status_out for i in survivors)
        assert f"{federation.nodes[old].http_url}/" not in status_out
