"""MapReduce's input splits and partitioning (moot/client/mapreduce.py), without a federation."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moot.client.errors import BadRequest
from moot.client.mapreduce import (
    RecordSplit,
    TextSplit,
    _dumps_partition,
    _key_bytes,
    _merge,
    _pairs,
    _partition,
    _Records,
    plan_splits,
    stable_hash,
    stable_hashes,
)


def lines_of(splits: list[TextSplit | RecordSplit]) -> list[str]:
    return [record for split in splits for record in _Records(split)]


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(st.text(alphabet="ab é\r", max_size=30), max_size=60),
    split_bytes=st.integers(min_value=1024, max_value=1500),
    trailing_newline=st.booleans(),
)
def test_every_line_is_read_once_in_order_whatever_the_split_size(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str], split_bytes: int, trailing_newline: bool
) -> None:
    # Lines long enough that splits cut through them; \r\n endings too.
    directory = tmp_path_factory.mktemp("text")
    rng = random.Random(len(lines))
    body = [line * rng.randint(1, 80) for line in lines]
    text = "\n".join(body) + ("\n" if trailing_newline and body else "")
    path = directory / "input.txt"
    path.write_bytes(text.encode())
    splits, placement = plan_splits([str(path)], split_bytes)
    assert placement and "host" in placement, "local files are read on this machine's nodes"
    expected = [line.removesuffix("\r") for line in text.split("\n")]
    if text.endswith("\n") or not text:
        expected = expected[:-1]
    assert lines_of(splits) == expected


def test_small_files_are_packed_into_one_split_and_large_ones_cut(tmp_path: Path) -> None:
    for index in range(20):
        (tmp_path / f"small-{index:02d}.txt").write_text(f"file {index}\n" * 10)
    (tmp_path / "large.txt").write_text("x" * 99 + "\n" * 1 + ("y" * 99 + "\n") * 200)
    splits, _ = plan_splits(str(tmp_path / "*.txt"), 4096)
    assert len(splits) < 15
    assert lines_of(splits).count("file 3") == 10
    assert lines_of(splits).count("y" * 99) == 200


def split_bytes_of(split: TextSplit | RecordSplit) -> int:
    assert isinstance(split, TextSplit)
    return sum(piece.end - piece.start for piece in split.ranges)


@pytest.mark.parametrize(
    ("files", "file_bytes", "split_bytes", "slots", "count"),
    [
        (64, 50_000, 400_000, 0, 8),  # no slots known: the split size rules
        (64, 50_000, 400_000, 3, 9),  # 8 rounded up to full waves of 3
        (64, 50_000, 10_000_000, 3, 3),  # one split's worth, a wave of 3 (over a MiB each)
        (10, 3_000_000, 64 << 20, 3, 6),  # 30 MB with large splits: 2 waves of 3
        (3, 2_000, 64 << 20, 3, 1),  # tiny input: one split, not 12 tiny ones
    ],
)
def test_splits_are_equal_and_fill_whole_waves_of_workers(
    tmp_path: Path, files: int, file_bytes: int, split_bytes: int, slots: int, count: int
) -> None:
    line = b"0123456789 abcdefghi\n"
    for index in range(files):
        (tmp_path / f"f{index:03d}.txt").write_bytes(line * (file_bytes // len(line)))
    splits, _ = plan_splits(str(tmp_path / "*.txt"), split_bytes, slots)
    assert len(splits) == count
    sizes = [split_bytes_of(split) for split in splits]
    assert max(sizes) - min(sizes) < len(splits)  # equal, to rounding
    assert len(lines_of(splits)) == files * (file_bytes // len(line))


def test_errors_name_what_to_fix_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="matches no file"):
        plan_splits(str(tmp_path / "*.nothing"), 4096)
    with pytest.raises(BadRequest, match="cannot read"):
        plan_splits([str(tmp_path / "missing.txt")], 4096)
    with pytest.raises(BadRequest, match="cannot read"):
        plan_splits([str(tmp_path)], 4096)  # a directory
    with pytest.raises(BadRequest, match="no input records"):
        plan_splits(iter([]), 4096)


def test_records_are_cut_into_pickled_chunks_that_keep_their_numbers() -> None:
    records = [("k", index, "v" * 50) for index in range(1000)]
    splits, placement = plan_splits(records, 4096)
    assert placement == {}
    assert len(splits) > 5
    assert lines_of(splits) == records
    numbers = []
    for split in splits:
        records = _Records(split)
        numbers += [records.where() for _ in records]
    assert numbers[0] == "input record 0" and numbers[-1] == "input record 999"
    assert len(set(numbers)) == 1000


def test_a_text_record_is_named_by_its_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"one\r\ntwo\n")
    (tmp_path / "b.txt").write_bytes(b"three\nfour\nfive")
    splits, _ = plan_splits(str(tmp_path / "*.txt"), 4096)
    assert len(splits) == 1
    records = _Records(splits[0])
    seen = [(line, records.where()) for line in records]
    assert [line for line, _ in seen] == ["one", "two", "three", "four", "five"]
    assert seen[0][1].endswith("a.txt, line 1 of the text from byte 0")
    assert seen[1][1].endswith("a.txt, line 2 of the text from byte 0")
    assert seen[3][1].endswith("b.txt, line 2 of the text from byte 0")
    assert records.where().endswith("b.txt, line 3 of the text from byte 0")  # exhausted: the last one


def test_equal_keys_hash_alike_and_unpicklable_keys_are_named() -> None:
    assert stable_hash(1) == stable_hash(True) == stable_hash(1.0)
    assert stable_hash(("a", 2)) == stable_hash(("a", 2))
    assert stable_hash("a") != stable_hash(b"a")
    with pytest.raises(TypeError, match="key of type generator"):
        _key_bytes(x for x in ())


def test_the_str_fast_path_hashes_as_stable_hash_does() -> None:
    keys = ["word", "é", "\udc80", "", ("a", 1), 1, True, 1.0, b"word", None, "word"]
    assert stable_hashes(keys) == [stable_hash(key) for key in keys]


@pytest.mark.parametrize("partitions", [1, 3, 8])
@pytest.mark.parametrize("combined", [True, False])
def test_partitions_carry_every_pair_to_the_partition_of_its_key(partitions: int, combined: bool) -> None:
    rng = random.Random(partitions)
    values_of: dict[object, list[int]] = {}
    for _ in range(2000):
        key = rng.choice([f"w{rng.randrange(300)}", rng.randrange(50), ("t", rng.randrange(20))])
        values_of.setdefault(key, []).append(rng.randrange(10))
    expected = {key: sorted(values) for key, values in values_of.items()}
    keys, values = _pairs({key: list(values) for key, values in values_of.items()}, (lambda key, vs: sum(vs)) if combined else None)
    # Two maps' outputs, merged as a reduce does.
    groups: defaultdict[object, list[int]] = defaultdict(list)
    for index, (part_keys, part_values) in enumerate(_partition(keys, values, partitions)):
        assert all(stable_hash(key) % partitions == index for key in part_keys)
        for _ in range(2):
            if part_keys:
                _merge(groups, _dumps_partition(part_keys, part_values))
    assert set(groups) == set(expected)
    for key, got in groups.items():
        if combined:
            assert got == [sum(expected[key])] * 2
        else:
            assert sorted(got) == sorted(expected[key] * 2)


def test_the_hash_is_the_same_in_another_process() -> None:
    keys = ["word", ("tuple", 3), 17, None, b"bytes", 2.5, frozenset({"a"})]
    here = [stable_hash(key) for key in keys]
    code = "from moot.client.mapreduce import stable_hash; print([stable_hash(k) for k in " + repr(keys) + "])"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
        check=True,
    ).stdout
    assert out.strip() == str(here)


def test_fsspec_urls_are_listed_and_read_through_fsspec() -> None:
    import fsspec

    memory = fsspec.filesystem("memory")
    memory.pipe("/moot-mr/a.txt", b"one\ntwo\n")
    memory.pipe("/moot-mr/b.txt", b"three")
    try:
        splits, placement = plan_splits("memory://moot-mr/*.txt", 1024)
        assert placement == {}, "no local files: maps may run anywhere"
        assert lines_of(splits) == ["one", "two", "three"]
        with pytest.raises(BadRequest, match="matches no file"):
            plan_splits("memory://moot-mr/*.none", 1024)
    finally:
        memory.rm("/moot-mr", recursive=True)
