"""/metrics on a real node: Prometheus text that prometheus-client's own
parser reads, carrying every metric docs/observability.md documents, with
values that follow what the federation does."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from moot.client.local import LocalFederation

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "observability.md"


def documented() -> set[str]:
    """The sample names the metrics table documents (labels stripped)."""
    section = DOC.read_text().split("## Metrics", 1)[1]
    names: set[str] = set()
    for row in section.splitlines():
        if row.startswith("| `moot_"):
            names.update(re.sub(r"\{.*\}", "", name) for name in re.findall(r"`(moot_[a-z_{}]+)`", row.split("|")[1]))
    return names


def scrape(url: str, token: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_metrics_parse_and_carry_every_documented_name(tmp_path: Path) -> None:
    names = documented()
    assert len(names) >= 30, names
    with LocalFederation(3, directory=tmp_path / "fed") as federation:
        client = federation.client()
        assert client.gather(client.map(abs, range(-5, 0))) == [5, 4, 3, 2, 1]
        url = federation.nodes[0].http_url + "/metrics"
        samples = scrape(url, federation.token)
        missing = sorted(names - set(samples))
        assert not missing, f"documented but not exported: {missing}"
        assert samples["moot_members"][(("state", "alive"),)] == 3
        assert sum(samples["moot_raft_is_leader"].values()) in (0, 1)
        assert samples["moot_tasks"][(("state", "done"),)] >= 5
        assert samples["moot_transport_messages_sent_total"][()] > 0
        assert samples["moot_events_kept"][()] > 0
        federation.kill(2)
        federation.wait_until(
            lambda views: all(
                any(m.state == "dead" for m in view) for index, view in views.items() if index != 2
            ),
            what="the others declaring node 2 dead",
        )
        after = scrape(url, federation.token)
        assert after["moot_members"][(("state", "dead"),)] == 1
        assert after["moot_members"][(("state", "alive"),)] == 2
