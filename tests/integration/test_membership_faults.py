"""Real processes under the transport's fault layer: partitions heal, latency is learned."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from moot.client.local import LocalFederation
from moot.core.wire import MemberInfo
from moot.runtime.faults import FaultConfig, FaultRule, write_faults_file

pytestmark = pytest.mark.integration


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[tuple[LocalFederation, Path]]:
    faults_file = tmp_path / "faults.json"
    write_faults_file(faults_file, FaultConfig())
    federation = LocalFederation(
        4, directory=tmp_path / "fed", profile="local", extra_env={"MOOT_FAULTS_FILE": str(faults_file)}
    )
    with federation:
        yield federation, faults_file


def state_of(infos: list[MemberInfo], address: str) -> str | None:
    return next((str(info.state) for info in infos if info.address == address), None)


def test_partitioned_node_is_declared_dead_and_rejoins_after_heal(faulty: tuple[LocalFederation, Path]) -> None:
    federation, faults_file = faulty
    victim = federation.addresses[3]
    others = federation.addresses[:3]
    write_faults_file(
        faults_file,
        FaultConfig(rules=(FaultRule(source=victim, cut=True), FaultRule(destination=victim, cut=True))),
    )

    def split(views: dict[int, list[MemberInfo]]) -> bool:
        majority = all(state_of(views[i], victim) == "dead" for i in range(3) if i in views)
        minority = 3 in views and all(state_of(views[3], address) == "dead" for address in others)
        return len(views) == 4 and majority and minority

    federation.wait_until(split, what="both sides of the partition to declare the other dead", timeout_s=90)

    write_faults_file(faults_file, FaultConfig())  # heal

    def merged(views: dict[int, list[MemberInfo]]) -> bool:
        return len(views) == 4 and all(
            sorted(info.state for info in infos) == ["alive"] * 4 for infos in views.values()
        )

    # Reconnect (a push-pull to a member held dead, every 30 s) merges the views.
    federation.wait_until(merged, what="the views to merge after the partition healed", timeout_s=120)


def test_injected_latency_shows_in_rtt_estimates(faulty: tuple[LocalFederation, Path]) -> None:
    federation, faults_file = faulty
    near, far = federation.addresses[0], federation.addresses[1]
    # 25 ms each way between nodes 0 and 1 only: a 50 ms round trip.
    write_faults_file(
        faults_file,
        FaultConfig(
            rules=(
                FaultRule(source=near, destination=far, delay_ms=25.0),
                FaultRule(source=far, destination=near, delay_ms=25.0),
            )
        ),
    )
    addresses = federation.addresses

    def learned(views: dict[int, list[MemberInfo]]) -> bool:
        if 0 not in views:
            return False
        rtt = {info.address: info.rtt_ms for info in views[0]}
        far_rtt, other = rtt.get(far), rtt.get(addresses[2])
        return far_rtt is not None and other is not None and 35.0 < far_rtt < 75.0 and other < 15.0

    federation.wait_until(learned, what="node 0 to estimate ~50 ms to node 1 and ~1 ms to node 2", timeout_s=120)
