"""The moot command end to end: init, local up/down, members, bad input."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def moot(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moot", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_init_creates_a_cluster_and_refuses_to_overwrite(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster"
    result = moot("init", "--dir", str(cluster))
    assert "cluster created" in result.stdout
    for name in ("ca.crt", "ca.key", "client.crt", "client.key", "token", "gossip.key"):
        assert (cluster / name).exists(), name
    assert stat.S_IMODE((cluster / "token").stat().st_mode) == 0o600
    token_before = (cluster / "token").read_text()
    again = moot("init", "--dir", str(cluster), check=False)
    assert again.returncode != 0
    assert again.stderr.strip().startswith("error:")
    assert (cluster / "token").read_text() == token_before  # nothing changed


def test_local_up_members_and_down(tmp_path: Path) -> None:
    directory = tmp_path / "local"
    up = moot("local", "up", "--nodes", "3", "--dir", str(directory))
    try:
        assert "3 nodes up" in up.stdout
        state = json.loads((directory / "local.json").read_text())
        assert len(state["addresses"]) == 3
        members = moot("members", "--cluster", state["cluster_dir"], "--node", state["addresses"][1], "--json")
        rows = json.loads(members.stdout)
        assert sorted(row["state"] for row in rows) == ["alive"] * 3
        table = moot("members", "--cluster", state["cluster_dir"], "--node", state["addresses"][2])
        for address in state["addresses"]:
            assert address in table.stdout
        twice = moot("local", "up", "--nodes", "3", "--dir", str(directory), check=False)
        assert twice.returncode != 0
        assert "already runs" in twice.stderr
    finally:
        down = moot("local", "down", "--dir", str(directory))
    assert "stopped 3 nodes" in down.stdout
    for pid in state["pids"]:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    again = moot("local", "down", "--dir", str(directory), check=False)
    assert again.returncode != 0
    assert "no local federation" in again.stderr


def test_members_of_an_unreachable_node_is_one_clear_error(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster"
    moot("init", "--dir", str(cluster))
    from moot.client.local import free_ports

    port = free_ports(1)[0]
    result = moot("members", "--cluster", str(cluster), "--node", f"127.0.0.1:{port}", check=False)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "no node answered" in lines[0]


def test_members_with_a_missing_cluster_dir(tmp_path: Path) -> None:
    result = moot("members", "--cluster", str(tmp_path / "none"), "--node", "127.0.0.1:1", check=False)
    assert result.returncode != 0
    assert "moot init" in result.stderr


def test_bad_label_is_rejected_before_anything_starts(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster"
    moot("init", "--dir", str(cluster))
    result = moot(
        "node", "start", "--cluster", str(cluster), "--data-dir", str(tmp_path / "d"),
        "--listen", "127.0.0.1:1", "--label", "nolabel",
        check=False,
    )
    assert result.returncode != 0
    assert "k=v" in result.stderr
    assert not (tmp_path / "d").exists()
