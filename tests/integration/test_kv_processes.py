"""The replicated KV store on real node processes: API, CLI, bad input, partitions, voter replacement."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import moot
from moot.client.local import LocalFederation
from moot.core import kv
from moot.runtime.faults import FaultConfig, FaultRule, write_faults_file

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with LocalFederation(3, directory=tmp_path_factory.mktemp("kv") / "fed") as fed:
        fed.leader()
        yield fed


def test_put_get_delete_cas_range_with_etcd_revisions(federation: LocalFederation) -> None:
    kv_api = federation.client().kv
    first = kv_api.put("app/a", "1")
    assert kv_api.put("app/a", b"2") == first + 1
    assert kv_api.get("app/a") == b"2"
    item = kv_api.get_item("app/a")
    assert item is not None
    assert (item.create_revision, item.mod_revision, item.version) == (first, first + 1, 2)
    assert kv_api.cas("app/a", "1", "x") is False
    assert kv_api.cas("app/a", "2", "3") is True
    assert kv_api.cas("app/b", None, "new") is True
    assert kv_api.cas("app/b", None, "again") is False
    assert [(i.key, i.value) for i in kv_api.range("app/")] == [(b"app/a", b"3"), (b"app/b", b"new")]
    assert kv_api.delete("app/b") is True
    assert kv_api.delete("app/b") is False
    assert kv_api.get("app/b") is None
    for consistency in ("linearizable", "lease"):
        assert kv_api.get("app/a", consistency=consistency) == b"3"


def test_every_node_serves_stale_reads_that_catch_up(federation: LocalFederation) -> None:
    client = federation.client()
    revision = client.kv.put("stale/key", "v")
    for address in federation.addresses:
        with moot.connect([address], cluster=federation.cluster_dir) as one:
            deadline = time.monotonic() + 10
            while one.kv.get_item("stale/key", consistency="stale") is None:
                assert time.monotonic() < deadline, f"{address} never applied revision {revision}"
                time.sleep(0.02)  # polling a follower's apply with a deadline


def test_watch_streams_events_in_revision_order_and_replays_history(federation: LocalFederation) -> None:
    kv_api = federation.client().kv
    start = kv_api.put("watch/a", "1")
    kv_api.put("other/x", "ignored")
    kv_api.delete("watch/a")
    kv_api.put("watch/b", "2")
    with kv_api.watch("watch/", start_revision=start) as watch:
        events = [watch.get(timeout_s=10) for _ in range(3)]
        assert [(e.kind, e.key, e.value) for e in events if e] == [
            ("put", b"watch/a", b"1"),
            ("delete", b"watch/a", b""),
            ("put", b"watch/b", b"2"),
        ]
        live = kv_api.put("watch/c", "3")
        event = watch.get(timeout_s=10)
        assert event is not None
        assert (event.key, event.revision) == (b"watch/c", live)


def test_bad_input_is_refused_with_a_clear_error_and_changes_nothing(federation: LocalFederation) -> None:
    kv_api = federation.client().kv
    before = kv_api.put("bad/probe", "x")
    with pytest.raises(moot.BadRequest, match="value"):
        kv_api.put("bad/big", b"v" * (kv.VALUE_BYTES_MAX + 1))
    with pytest.raises(moot.BadRequest, match="key"):
        kv_api.put("k" * (kv.KEY_BYTES_MAX + 1), "v")
    with pytest.raises(moot.BadRequest, match="key"):
        kv_api.put("", "v")
    with pytest.raises(moot.BadRequest, match="bytes or str"):
        kv_api.put(42, "v")  # type: ignore[arg-type]
    with pytest.raises(moot.BadRequest, match="consistency"):
        kv_api.get("bad/probe", consistency="eventual")
    with pytest.raises(moot.BadRequest, match="limit"):
        kv_api.range("bad/", limit=0)
    assert kv_api.put("bad/probe", "y") == before + 1, "a refused request changed the store"
    # The largest value allowed does go through.
    kv_api.put("bad/max", b"m" * kv.VALUE_BYTES_MAX)
    assert kv_api.get("bad/max") == b"m" * kv.VALUE_BYTES_MAX


def _moot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moot", *args], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )


def test_cli_kv_commands_and_status(federation: LocalFederation) -> None:
    common = ["--cluster", str(federation.cluster_dir), "--node", federation.addresses[1]]
    put = _moot("kv", "put", "cli/greeting", "hello", *common)
    assert put.returncode == 0, put.stderr
    assert "revision" in put.stdout
    got = _moot("kv", "get", "cli/greeting", *common)
    assert (got.returncode, got.stdout.strip()) == (0, "hello")
    missing = _moot("kv", "get", "cli/nothing", *common)
    assert missing.returncode == 1
    assert "not found" in missing.stderr
    assert _moot("kv", "cas", "cli/greeting", "bye", "--expected", "nope", *common).returncode == 1
    assert _moot("kv", "cas", "cli/greeting", "bye", "--expected", "hello", *common).returncode == 0
    listed = _moot("kv", "range", "cli/", "--json", *common)
    assert listed.returncode == 0, listed.stderr
    assert '"value": "bye"' in listed.stdout
    watched = _moot("kv", "watch", "cli/", "--start-revision", "1", "--count", "2", *common)
    assert watched.returncode == 0, watched.stderr
    assert "put cli/greeting hello" in watched.stdout
    assert _moot("kv", "del", "cli/greeting", *common).returncode == 0
    status = _moot("status", *common)
    assert status.returncode == 0, status.stderr
    assert "leader:" in status.stdout
    assert status.stdout.count("follower") == 2
    assert "object store per node" in status.stdout
    bad = _moot("kv", "get", "cli/x", "--consistency", "sometimes", *common)
    assert bad.returncode == 1
    assert "consistency must be one of" in bad.stderr


def test_a_minority_node_fails_linearizable_operations_with_no_quorum_and_still_serves_stale_reads(
    tmp_path: Path,
) -> None:
    faults_file = tmp_path / "faults.json"
    write_faults_file(faults_file, FaultConfig())
    fed = LocalFederation(3, directory=tmp_path / "fed", extra_env={"MOOT_FAULTS_FILE": str(faults_file)})
    with fed:
        leader = fed.leader()
        fed.client().kv.put("part/key", "before")
        for cut in (leader, (leader + 1) % 3):  # the old leader, then a follower
            victim = fed.addresses[cut]
            # Wait until the victim has applied the write, so its stale read can show it.
            with moot.connect([victim], cluster=fed.cluster_dir, pinned=True) as alone:
                deadline = time.monotonic() + 10
                while alone.kv.get("part/key", consistency="stale") != b"before":
                    assert time.monotonic() < deadline
                    time.sleep(0.02)  # polling a follower's apply with a deadline
                write_faults_file(
                    faults_file,
                    FaultConfig(rules=(FaultRule(source=victim, cut=True), FaultRule(destination=victim, cut=True))),
                )
                started = time.monotonic()
                with pytest.raises(moot.NoQuorum, match="no leader"):
                    alone.kv.get("part/key")
                # About one election timeout (300 ms) for the node to lose its
                # leader, then the client's no-quorum window (1 s).
                assert time.monotonic() - started < 5.0
                with pytest.raises(moot.NoQuorum):
                    alone.kv.put("part/key", "during")
                assert alone.kv.get("part/key", consistency="stale") == b"before"
            # The majority carries on.
            majority = [a for i, a in enumerate(fed.addresses) if i != cut]
            with moot.connect(majority, cluster=fed.cluster_dir) as rest:
                rest.kv.put("part/key", "majority")
                assert rest.kv.get("part/key") == b"majority"
            write_faults_file(faults_file, FaultConfig())  # heal
            with moot.connect([victim], cluster=fed.cluster_dir) as healed:
                assert healed.kv.get("part/key") == b"majority"
                healed.kv.put("part/key", "before")


def test_dead_voters_are_replaced_one_by_one_and_writes_continue(tmp_path: Path) -> None:
    fed = LocalFederation(5, directory=tmp_path / "fed", voter_grace_ms=500)
    with fed:
        client = fed.client()

        def voters_are(alive: set[int], count: int) -> set[str]:
            ids = {}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                statuses = fed.statuses()
                ids = {index: status.node_id for index, status in statuses.items()}
                leader = next((s for s in statuses.values() if s.role == "leader"), None)
                if leader is not None:
                    voter_set = set(leader.voters)
                    live_ids = {ids[i] for i in alive if i in ids}
                    if len(voter_set) == count and voter_set <= live_ids and set(leader.learners) <= live_ids:
                        return voter_set
                time.sleep(0.1)  # polling the voter set with a deadline
            raise AssertionError(f"voter set did not heal to {count} live voters; logs in {fed.directory}")

        alive = set(range(5))
        voter_ids = voters_are(alive, 5)
        client.kv.put("voters/round", "0")
        by_id = {status.node_id: index for index, status in fed.statuses().items()}
        # Kill three voters, one at a time: 5 -> 3 voters (4 alive), 3 (3 alive), 2 (2 alive).
        for round_number, wanted in enumerate((3, 3, 2), start=1):
            victim = by_id[sorted(voter_ids)[0]]
            fed.kill(victim)
            alive.discard(victim)
            voter_ids = voters_are(alive, wanted)
            survivors = [fed.addresses[i] for i in sorted(alive)]
            with moot.connect(survivors, cluster=fed.cluster_dir) as rest:
                rest.kv.put("voters/round", str(round_number))
                assert rest.kv.get("voters/round") == str(round_number).encode()


def test_a_node_with_a_corrupt_log_refuses_to_start_and_names_file_and_index(tmp_path: Path) -> None:
    import sqlite3

    fed = LocalFederation(3, directory=tmp_path / "fed")
    with fed:
        leader = fed.leader()
        for i in range(20):
            fed.client().kv.put(f"corrupt/{i}", "v")
        victim = (leader + 1) % 3
        node = fed.nodes[victim]
        database = node.data_dir / "raft.db"
        with moot.connect([node.address], cluster=fed.cluster_dir) as alone:
            deadline = time.monotonic() + 10
            while alone.kv.get("corrupt/19", consistency="stale") is None:
                assert time.monotonic() < deadline
                time.sleep(0.02)  # polling the follower's apply with a deadline
        fed.kill(victim)
        db = sqlite3.connect(database)
        try:
            index, data = db.execute(
                "SELECT idx, data FROM entries WHERE length(data) > 0 ORDER BY idx DESC LIMIT 1"
            ).fetchone()
            flipped = bytes([data[0] ^ 0xFF]) + data[1:]
            db.execute("UPDATE entries SET data = ? WHERE idx = ?", (flipped, index))
            db.commit()
        finally:
            db.close()
        result = subprocess.run(
            [
                sys.executable, "-m", "moot", "node", "start",
                "--cluster", str(fed.cluster_dir),
                "--data-dir", str(node.data_dir),
                "--listen", node.address,
                "--join", fed.addresses[leader],
            ],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode != 0
        assert str(database) in result.stderr
        assert f"index {index}" in result.stderr
        # The rest of the federation serves every write, unharmed.
        survivors = [a for i, a in enumerate(fed.addresses) if i != victim]
        with moot.connect(survivors, cluster=fed.cluster_dir) as rest:
            assert rest.kv.get("corrupt/19") == b"v"


def test_a_watch_survives_the_loss_of_the_node_serving_it(tmp_path: Path) -> None:
    fed = LocalFederation(3, directory=tmp_path / "fed")
    with fed:
        leader = fed.leader()
        serving = (leader + 1) % 3  # a follower serves the watch; killing it keeps the quorum
        order = [fed.addresses[serving]] + [a for i, a in enumerate(fed.addresses) if i != serving]
        with moot.connect(order, cluster=fed.cluster_dir) as watcher, moot.connect(
            fed.addresses, cluster=fed.cluster_dir
        ) as writer:
            start = writer.kv.put("failover/0", "0")
            with watcher.kv.watch("failover/", start_revision=start) as watch:
                first = watch.get(timeout_s=10)
                assert first is not None and first.key == b"failover/0"
                fed.kill(serving)
                revisions = [writer.kv.put(f"failover/{i}", str(i)) for i in range(1, 21)]
                seen = []
                for _ in revisions:
                    event = watch.get(timeout_s=20)
                    assert event is not None, f"the watch stalled after {len(seen)} events"
                    seen.append(event.revision)
                assert seen == revisions, "events were lost, duplicated or reordered across the failover"
