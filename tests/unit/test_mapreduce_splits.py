"""MapReduce's input splits and partitioning (moot/client/mapreduce.py), without a federation."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moot.client.errors import BadRequest
from moot.client.mapreduce import (
    RecordSplit,
    TextSplit,
    _key_bytes,
    _Records,
    plan_splits,
    stable_hash,
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


def test_equal_keys_hash_alike_and_unpicklable_keys_are_named() -> None:
    assert stable_hash(1) == stable_hash(True) == stable_hash(1.0)
    assert stable_hash(("a", 2)) == stable_hash(("a", 2))
    assert stable_hash("a") != stable_hash(b"a")
    with pytest.raises(TypeError, match="key of type generator"):
        _key_bytes(x for x in ())


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
