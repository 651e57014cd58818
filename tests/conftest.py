"""Fixtures shared across the suites. Keep this small: one cluster per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from moot.runtime import identity


@pytest.fixture
def cluster(tmp_path: Path) -> identity.Cluster:
    """A freshly made cluster (CA, client certificate, token, gossip key)."""
    directory = tmp_path / "cluster"
    identity.init_cluster(directory)
    return identity.load_cluster(directory)


@pytest.fixture
def foreign_cluster(tmp_path: Path) -> identity.Cluster:
    """Another cluster, with its own CA: nothing it signs may be trusted by ``cluster``."""
    directory = tmp_path / "foreign-cluster"
    identity.init_cluster(directory)
    return identity.load_cluster(directory)
