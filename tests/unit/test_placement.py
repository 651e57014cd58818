"""Placement: rendezvous scores, region-spread ranking, stability under membership change."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moot.core.placement import Candidate, holders, rank, replicas_for, score

REPOSITORY = Path(__file__).resolve().parents[2]
REGIONS = ("lahore", "karachi", "singapore")


def federation(count: int, regions: tuple[str, ...] = REGIONS) -> list[Candidate]:
    return [Candidate(f"n{index}", regions[index % len(regions)]) for index in range(count)]


def test_score_is_sha256_of_key_nul_node_big_endian() -> None:
    digest = hashlib.sha256(b"chunk-1\x00n7").digest()
    assert score("chunk-1", "n7") == int.from_bytes(digest[:8], "big")
    assert score("chunk-1", "n7") != score("chunk-1", "n8")


def test_without_regions_rank_is_plain_highest_random_weight() -> None:
    candidates = [Candidate(f"n{index}") for index in range(8)]
    expected = sorted((c.node_id for c in candidates), key=lambda node: -score("k", node))
    assert rank("k", candidates) == expected


def test_holders_span_every_region_when_replicas_allow() -> None:
    candidates = federation(9)
    region_of = {c.node_id: c.region for c in candidates}
    for index in range(500):
        chosen = holders(f"key{index}", candidates, 3)
        assert len({region_of[node] for node in chosen}) == 3


def test_with_two_regions_three_replicas_use_both_and_then_the_best_other() -> None:
    candidates = federation(6, ("east", "west"))
    region_of = {c.node_id: c.region for c in candidates}
    for index in range(200):
        key = f"key{index}"
        chosen = holders(key, candidates, 3)
        assert {region_of[node] for node in chosen} == {"east", "west"}
        # The third is the best-scoring node not already chosen.
        rest = [c.node_id for c in candidates if c.node_id not in chosen[:2]]
        assert chosen[2] == max(rest, key=lambda node: score(key, node))


def test_a_region_with_one_node_gets_a_replica_of_everything() -> None:
    candidates = [*federation(6, ("big",)), Candidate("lonely", "far")]
    assert all("lonely" in holders(f"key{index}", candidates, 2) for index in range(100))


def test_replicas_for_is_the_smaller() -> None:
    assert replicas_for(10, 3) == 3
    assert replicas_for(2, 3) == 2
    assert replicas_for(0, 3) == 0


def test_holders_of_a_small_federation_are_everyone() -> None:
    candidates = federation(2)
    assert sorted(holders("k", candidates, 3)) == ["n0", "n1"]


def test_duplicate_node_ids_are_a_programming_error() -> None:
    with pytest.raises(AssertionError):
        rank("k", [Candidate("n0", "a"), Candidate("n0", "b")])


def test_empty_node_id_is_refused() -> None:
    with pytest.raises(ValueError, match="node_id"):
        Candidate("")


def test_removing_one_node_of_ten_moves_about_r_over_n_of_the_keys() -> None:
    candidates = federation(10)
    keys = [f"key{index}" for index in range(3_000)]
    before = {key: holders(key, candidates, 3) for key in keys}
    removed = "n4"
    after = {key: holders(key, [c for c in candidates if c.node_id != removed], 3) for key in keys}
    moved = [key for key in keys if before[key] != after[key]]
    # Exactly the keys the removed node held move, and each keeps its other holders.
    assert moved == [key for key in keys if removed in before[key]]
    for key in moved:
        assert set(before[key]) - {removed} <= set(after[key])
    assert 0.15 < len(moved) / len(keys) < 0.45  # R/N = 0.3


def test_adding_one_node_moves_about_r_over_n_of_the_keys() -> None:
    candidates = federation(10)
    keys = [f"key{index}" for index in range(3_000)]
    grown = [*candidates, Candidate("n10", "karachi")]
    moved = [key for key in keys if holders(key, candidates, 3) != holders(key, grown, 3)]
    assert all("n10" in holders(key, grown, 3) for key in moved)
    assert 0.1 < len(moved) / len(keys) < 0.45


def test_same_ranking_in_processes_with_different_hash_seeds() -> None:
    program = (
        "from moot.core.placement import Candidate, rank\n"
        "cs = [Candidate(f'n{i}', ('a', 'b', 'c')[i % 3]) for i in range(12)]\n"
        "print([rank(f'k{i}', cs) for i in range(50)])\n"
    )
    outputs = [
        subprocess.run(
            [sys.executable, "-c", program],
            cwd=REPOSITORY,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        for hash_seed in ("1", "2")
    ]
    assert outputs[0] == outputs[1]
    assert outputs[0]


# -- properties -----------------------------------------------------------------------

node_sets = st.lists(
    st.tuples(st.integers(min_value=0, max_value=40), st.sampled_from(("", "a", "b", "c", "d"))),
    min_size=1,
    max_size=14,
    unique_by=lambda item: item[0],
).map(lambda items: [Candidate(f"n{number}", region) for number, region in items])


@settings(max_examples=300, deadline=None)
@given(candidates=node_sets, key=st.text(max_size=12), replicas=st.integers(min_value=1, max_value=5))
def test_rank_is_a_permutation_and_holders_its_head(candidates: list[Candidate], key: str, replicas: int) -> None:
    ranking = rank(key, candidates)
    assert sorted(ranking) == sorted(c.node_id for c in candidates)
    assert holders(key, candidates, replicas) == ranking[:replicas]
    assert rank(key, list(reversed(candidates))) == ranking  # input order does not matter


@settings(max_examples=300, deadline=None)
@given(candidates=node_sets, key=st.text(max_size=12), replicas=st.integers(min_value=1, max_value=5))
def test_holders_cover_as_many_regions_as_possible(candidates: list[Candidate], key: str, replicas: int) -> None:
    region_of = {c.node_id: c.region for c in candidates}
    chosen = holders(key, candidates, replicas)
    regions = {c.region for c in candidates}
    assert len({region_of[node] for node in chosen}) == min(len(regions), len(chosen))


@settings(max_examples=400, deadline=None)
@given(
    candidates=node_sets,
    key=st.text(max_size=12),
    replicas=st.integers(min_value=1, max_value=5),
    victim=st.integers(min_value=0, max_value=13),
)
def test_removing_a_node_keeps_every_other_holder(
    candidates: list[Candidate], key: str, replicas: int, victim: int
) -> None:
    removed = candidates[victim % len(candidates)].node_id
    before = holders(key, candidates, replicas)
    after = holders(key, [c for c in candidates if c.node_id != removed], replicas)
    if removed not in before:
        assert after == before  # stability: a non-holder leaving changes nothing
    else:
        assert set(before) - {removed} <= set(after)


@settings(max_examples=400, deadline=None)
@given(
    candidates=node_sets,
    key=st.text(max_size=12),
    replicas=st.integers(min_value=1, max_value=5),
    region=st.sampled_from(("", "a", "b", "c", "d", "e")),
)
def test_adding_a_node_changes_holders_only_by_taking_a_place(
    candidates: list[Candidate], key: str, replicas: int, region: str
) -> None:
    newcomer = Candidate("new", region)
    before = holders(key, candidates, replicas)
    after = holders(key, [*candidates, newcomer], replicas)
    if "new" not in after:
        assert after == before
    else:
        assert set(after) - {"new"} <= set(before)
