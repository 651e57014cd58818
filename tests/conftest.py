"""Fixtures shared across the suites. Keep this small: one cluster per test."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


HttpCall = Callable[..., tuple[int, Any]]


def _http(url: str, *, token: str | None = None, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """(status, decoded JSON body) of one request to a node's HTTP API."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def http() -> HttpCall:
    """``http(url, token=..., method=..., headers=...) -> (status, JSON)``."""
    return _http
