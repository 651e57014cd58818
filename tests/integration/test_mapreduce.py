"""MapReduce on real node processes: word counts equal to collections.Counter
(generated and real text, with and without a combiner, one and many
partitions, records), bad input, lost map outputs re-run, a straggler beaten
by its backup copy, the CLI."""

from __future__ import annotations

import collections
import glob
import json
import os
import random
import re
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import cloudpickle
import pytest

import moot
from moot.client.local import LocalFederation
from moot.client.mapreduce import MapOutputLost, RunStats

pytestmark = pytest.mark.integration

cloudpickle.register_pickle_by_value(sys.modules[__name__])

WORD = re.compile(r"[A-Za-z]+")
STRAGGLER_S = 30.0


def words(line: str) -> Iterator[tuple[str, int]]:
    for word in WORD.findall(line):
        yield word.lower(), 1


def total(key: str, values: list[int]) -> int:
    return sum(values)


def counted(paths: Iterable[str]) -> dict[str, int]:
    """What a single process counts, reading the files the same way."""
    counter: collections.Counter[str] = collections.Counter()
    for path in paths:
        text = Path(path).read_bytes().decode("utf-8", errors="replace")
        counter.update(word.lower() for word in WORD.findall(text))
    return dict(counter)


def generated_text(directory: Path, files: int, lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    vocabulary = [f"w{index}" for index in range(400)] + ["Moot", "MOOT", "federation"]
    paths = []
    for index in range(files):
        body = [
            " ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 12))) for _ in range(lines)
        ]
        newline = "\r\n" if index % 3 == 0 else "\n"
        text = newline.join(body) + ("" if index % 2 else newline)  # some end without a newline
        path = directory / f"text-{index:02d}.txt"
        path.write_bytes(text.encode())
        paths.append(str(path))
    return paths


def count_lines(lines: Iterator[str]) -> collections.Counter[str]:
    counter: collections.Counter[str] = collections.Counter()
    for line in lines:
        counter.update(word.lower() for word in WORD.findall(line))
    return counter


def fail_on_seven(record: int) -> Iterator[tuple[str, int]]:
    if record == 7:
        raise ZeroDivisionError("record seven")
    yield "n", record


def fail_on_the_answer(key: str, values: list[int]) -> int:
    if key == "federation":
        raise KeyError("no reduce for federation")
    return sum(values)


def unpicklable_key(line: str) -> Iterator[tuple[object, int]]:
    yield (x for x in line), 1


def slow_on_one_node(line: str) -> Iterator[tuple[str, int]]:
    # The slow node's address is in the file the test names (written once
    # the federation runs and its addresses are known).
    slow = Path(os.environ["MOOT_TEST_SLOW_FILE"]).read_text()
    if line.startswith("straggle") and os.environ.get("MOOT_NODE_ADDRESS") == slow:
        time.sleep(STRAGGLER_S)
    yield from words(line)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with LocalFederation(3, directory=tmp_path_factory.mktemp("mapreduce") / "fed") as fed:
        yield fed


@pytest.fixture()
def client(federation: LocalFederation) -> Iterator[moot.Client]:
    with moot.connect(federation.addresses, cluster=federation.cluster_dir) as connected:
        yield connected


# -- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("partitions", "combine"), [(1, True), (7, True), (5, False)])
def test_word_count_of_generated_text_equals_a_counter(
    client: moot.Client, tmp_path: Path, partitions: int, combine: bool
) -> None:
    paths = generated_text(tmp_path, files=6, lines=300, seed=partitions)
    stats = RunStats()
    phases: list[tuple[str, int, int]] = []
    result = client.map_reduce(
        str(tmp_path / "*.txt"),
        words,
        total,
        combiner=total if combine else None,
        partitions=partitions,
        split_bytes=4096,  # files are cut and packed: many splits
        stats=stats,
        progress=lambda phase, done, count: phases.append((phase, done, count)),
    )
    assert result == counted(paths)
    assert stats.splits > 6 and stats.partitions == partitions
    assert ("map", stats.splits, stats.splits) in phases and ("reduce", partitions, partitions) in phases


def test_a_whole_split_mapper_counts_what_the_per_line_one_does(client: moot.Client, tmp_path: Path) -> None:
    paths = generated_text(tmp_path, files=4, lines=300, seed=11)
    result = client.map_reduce(
        paths, count_lines, total, combiner=total, partitions=3, split_bytes=4096, whole_split=True
    )
    assert result == counted(paths)


def test_word_count_of_real_files_equals_a_counter(client: moot.Client, tmp_path: Path) -> None:
    stdlib = sysconfig.get_paths()["stdlib"]
    paths = sorted(glob.glob(f"{stdlib}/json/*.py") + glob.glob(f"{stdlib}/email/*.py"))
    output = tmp_path / "out"
    written = client.map_reduce(paths, words, total, combiner=total, partitions=4, split_bytes=64 * 1024, output=output)
    assert sorted(written) == [str(output / f"part-{index:05d}") for index in range(4)]
    merged: dict[str, int] = {}
    for path, keys in written.items():
        rows = [line.split("\t") for line in Path(path).read_text().splitlines()]
        assert len(rows) == keys
        merged.update((key, int(value)) for key, value in rows)
    assert merged == counted(paths)


def test_records_in_and_any_picklable_keys(client: moot.Client) -> None:
    records = [(index % 10, f"r{index}") for index in range(2_000)]

    result = client.map_reduce(
        records,
        lambda record: [((record[0], "bucket"), 1), ("all", len(record[1]))],
        lambda key, values: sum(values),
        partitions=3,
        split_bytes=2048,
    )
    assert result["all"] == sum(len(name) for _, name in records)
    assert all(result[(bucket, "bucket")] == 200 for bucket in range(10))


def test_a_mapper_that_raises_fails_the_run_with_its_exception_and_the_record(client: moot.Client) -> None:
    with pytest.raises(ZeroDivisionError, match="record seven") as caught:
        client.map_reduce(range(20), fail_on_seven, total, split_bytes=1024)
    assert any("input record 7" in note for note in getattr(caught.value, "__notes__", []))
    assert "fail_on_seven" in str(caught.value.__cause__)  # the remote traceback


def test_a_reducer_that_raises_names_the_key_after_its_retries(client: moot.Client, tmp_path: Path) -> None:
    (tmp_path / "text.txt").write_text("moot federation\n" * 50)
    with pytest.raises(KeyError, match="federation") as caught:
        client.map_reduce([str(tmp_path / "text.txt")], words, fail_on_the_answer, partitions=2, retries=1)
    assert any("key 'federation'" in note for note in getattr(caught.value, "__notes__", []))


def test_bad_input_is_refused_before_anything_runs(client: moot.Client, tmp_path: Path) -> None:
    before = len(client.jobs())
    with pytest.raises(moot.BadRequest, match="matches no file"):
        client.map_reduce(str(tmp_path / "*.nothing"), words, total)
    with pytest.raises(moot.BadRequest, match="cannot read"):
        client.map_reduce([str(tmp_path / "missing.txt")], words, total)
    with pytest.raises(moot.BadRequest, match="mapper must be a function"):
        client.map_reduce([], "words", total)  # type: ignore[arg-type]
    with pytest.raises(moot.BadRequest, match="partitions"):
        client.map_reduce(range(3), words, total, partitions=0)
    assert len(client.jobs()) == before, "nothing was submitted"
    (tmp_path / "one.txt").write_text("a line\n")
    with pytest.raises(TypeError, match="key of type generator"):
        client.map_reduce([str(tmp_path / "one.txt")], unpicklable_key, total)


def test_a_straggler_is_beaten_by_its_backup_copy(tmp_path: Path) -> None:
    slow_file = tmp_path / "slow-node"
    environment = {"MOOT_TEST_SLOW_FILE": str(slow_file)}
    with LocalFederation(3, directory=tmp_path / "fed", extra_env=environment) as federation:
        slow_file.write_text(federation.addresses[1])
        client = federation.client()
        paths = []
        for index in range(6):
            path = tmp_path / f"part-{index}.txt"
            path.write_text("straggle here\n" + "plain words\n" * 50)
            paths.append(str(path))
        stats = RunStats()
        started = time.monotonic()
        result = client.map_reduce(paths, slow_on_one_node, total, combiner=total, split_bytes=1024, stats=stats)
        elapsed = time.monotonic() - started
    assert result == {"straggle": 6, "here": 6, "plain": 300, "words": 300}
    assert elapsed < STRAGGLER_S / 2, f"the run waited for the straggler ({elapsed:.1f} s)"
    assert stats.backups >= 1 and stats.backups_won >= 1


def test_lost_map_outputs_are_made_again(tmp_path: Path) -> None:
    # One copy of each object: a node that dies takes its shuffle objects
    # with it, as a mapper's local disk does in the paper.
    with LocalFederation(4, directory=tmp_path / "fed", node_args=("--object-replicas", "1")) as federation:
        client = federation.client()
        paths = generated_text(tmp_path, files=8, lines=200, seed=9)
        leader = federation.leader()
        victim = next(index for index in range(4) if index != leader and index != 0)
        killed: list[int] = []

        def kill_after_the_maps(phase: str, done: int, count: int) -> None:
            if phase == "map" and done == count and not killed:
                federation.kill(victim)
                killed.append(victim)

        stats = RunStats()
        result = client.map_reduce(
            str(tmp_path / "*.txt"), words, total, combiner=total, partitions=8, split_bytes=2048,
            progress=kill_after_the_maps, stats=stats,
        )
    assert killed
    assert result == counted(paths)
    assert stats.maps_re_executed >= 1, "no map output was on the killed node"


def test_map_output_lost_pickles_with_its_maps() -> None:
    error = cloudpickle.loads(cloudpickle.dumps(MapOutputLost([3, 5])))
    assert isinstance(error, MapOutputLost) and error.maps == [3, 5]


def test_the_cli_runs_a_job_file(federation: LocalFederation, tmp_path: Path) -> None:
    paths = generated_text(tmp_path, files=2, lines=100, seed=4)
    job = tmp_path / "job.py"
    job.write_text(
        "import re\n"
        "WORD = re.compile(r'[A-Za-z]+')\n"
        "def mapper(line):\n"
        "    return [(w.lower(), 1) for w in WORD.findall(line)]\n"
        "def reducer(key, values):\n"
        "    return sum(values)\n"
        "combiner = reducer\n"
    )
    command = [
        sys.executable, "-m", "moot", "mapreduce", str(job), *paths,
        "--cluster", str(federation.cluster_dir), "--node", federation.addresses[1], "--json",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert json.loads(completed.stdout) == counted(paths)
    top = subprocess.run([*command[:-1], "--top", "3"], capture_output=True, text=True, timeout=120)
    assert top.returncode == 0, top.stderr
    expected = sorted(counted(paths).items(), key=lambda item: (-item[1], item[0]))[:3]
    assert [line.split("\t") for line in top.stdout.splitlines()] == [[k, str(v)] for k, v in expected]
    missing = subprocess.run(
        [*command[:5], str(tmp_path / "*.none"), *command[7:11]],
        capture_output=True, text=True, timeout=60,
    )
    assert missing.returncode != 0 and "matches no file" in missing.stderr
