"""``moot demo``: the main job, end to end.

A local federation of five node processes (regions lahore, karachi,
singapore; mutual TLS on 127.0.0.1) word-counts a real corpus that exists on
every machine — the source files of the running Python's standard library —
with MapReduce. A quarter into the map phase the demo SIGKILLs the leader;
later it kills one more node. It shows the phases' progress and a timeline
(kills, the survivors declaring the dead, the new leader, tasks run again),
prints the 20 most frequent words, counts the same files in this one process
with ``collections.Counter`` and says whether the answers match.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import signal
import sysconfig
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from moot.client.errors import MootError
from moot.client.local import LocalError, LocalFederation
from moot.client.mapreduce import RunStats

REGIONS = ("lahore", "karachi", "singapore")
WORD = re.compile(r"[A-Za-z]+")
PARTITIONS = 8
SPLIT_BYTES = 2 * 1024 * 1024
FIRST_KILL_AT = 0.25  # of the map phase: the leader
SECOND_KILL_AT = 0.6  # of the map phase: one more node (with five or more)
WATCH_TIMEOUT_S = 30.0
POLL_S = 0.1


def words(line: str) -> Iterator[tuple[str, int]]:
    """The mapper: each word of a line, lower-cased, once."""
    for word in WORD.findall(line):
        yield word.lower(), 1


def total(word: str, counts: list[int]) -> int:
    """The reducer (and combiner): how many times."""
    return sum(counts)


def corpus() -> list[str]:
    """The standard library's Python files (not site-packages)."""
    stdlib = sysconfig.get_paths()["stdlib"]
    return sorted(
        path
        for path in glob.glob(os.path.join(stdlib, "**", "*.py"), recursive=True)
        if "site-packages" not in path and os.path.isfile(path)
    )


def count_here(paths: list[str]) -> collections.Counter[str]:
    """The single-process answer, reading the files as the map tasks do."""
    counter: collections.Counter[str] = collections.Counter()
    for path in paths:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8", errors="replace")
        counter.update(word.lower() for word in WORD.findall(text))
    return counter


@dataclass(slots=True)
class Timeline:
    """What happened, in seconds since the job started."""

    started: float
    events: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, text: str) -> None:
        with self.lock:
            self.events.append((time.monotonic() - self.started, text))


class Chaos:
    """Kills nodes as the map phase progresses and watches what follows."""

    def __init__(self, federation: LocalFederation, timeline: Timeline, nodes: int) -> None:
        self.federation = federation
        self.timeline = timeline
        self.nodes = nodes
        self.map_fraction = 0.0
        self.killed: list[int] = []
        self.progress_changed = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="moot-demo-chaos", daemon=True)
        self.watchers: list[threading.Thread] = []

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """No more kills; wait (bounded) for the watchers to see what followed the kills."""
        self.stopped.set()
        self.progress_changed.set()
        self.thread.join(timeout=WATCH_TIMEOUT_S)
        for watcher in list(self.watchers):
            watcher.join(timeout=WATCH_TIMEOUT_S)

    def on_progress(self, phase: str, done: int, total: int) -> None:
        if phase == "map" and total:
            self.map_fraction = done / total
            self.progress_changed.set()

    def _run(self) -> None:
        try:
            self._wait_for(FIRST_KILL_AT)
            if self.stopped.is_set():
                return
            leader = self.federation.leader()
            self._kill(leader, "the leader")
            # Watched on the side: the next kill must not wait for this one's
            # detection (found: a faster job ended first, and the demo killed
            # one node only).
            self._watch_in_background(leader, new_leader=True)
            if self.nodes >= 5:
                self._wait_for(SECOND_KILL_AT)
                if self.stopped.is_set():
                    return
                current = self.federation.leader()
                victim = next(
                    index
                    for index in range(self.nodes - 1, -1, -1)
                    if index != current and index not in self.killed
                )
                self._kill(victim, "a follower")
                self._watch_in_background(victim, new_leader=False)
        except (LocalError, MootError) as error:
            self.timeline.note(f"[red]chaos stopped: {error}[/]")

    def _watch_in_background(self, victim: int, *, new_leader: bool) -> None:
        def watch() -> None:
            try:
                self._watch(victim, new_leader=new_leader)
            except (LocalError, MootError) as error:
                self.timeline.note(f"[red]watching node {victim} stopped: {error}[/]")

        watcher = threading.Thread(target=watch, name=f"moot-demo-watch-{victim}", daemon=True)
        self.watchers.append(watcher)
        watcher.start()

    def _wait_for(self, fraction: float) -> None:
        while self.map_fraction < fraction and not self.stopped.is_set():
            self.progress_changed.wait(POLL_S)
            self.progress_changed.clear()

    def _kill(self, index: int, what: str) -> None:
        node = self.federation.nodes[index]
        self.federation.kill(index)
        self.killed.append(index)
        self.timeline.note(
            f"[bold red]kill -9[/] node {index} ({what}, {node.address}) at {self.map_fraction:.0%} of the map phase"
        )

    def _watch(self, victim: int, *, new_leader: bool) -> None:
        """Note when every survivor declares the victim dead, and the new leader."""
        address = self.federation.nodes[victim].address
        deadline = time.monotonic() + WATCH_TIMEOUT_S
        declared = False
        led = not new_leader
        while time.monotonic() < deadline and not (declared and led):
            if not declared:
                views = self.federation.views()
                states = [
                    info.state
                    for index, infos in views.items()
                    if index not in self.killed
                    for info in infos
                    if info.address == address
                ]
                if states and all(state == "dead" for state in states):
                    declared = True
                    self.timeline.note(f"every survivor declares node {victim} dead (no coordinator)")
            if not led:
                try:
                    leader = self.federation.leader(timeout_s=POLL_S * 5)
                except LocalError:
                    leader = None
                if leader is not None and leader != victim:
                    led = True
                    self.timeline.note(f"node {leader} leads the database (Raft elected it)")
            time.sleep(POLL_S)  # polling the nodes' views with a deadline


def run_demo(*, nodes: int, keep: bool, console: Console) -> int:
    """Run the demo; returns the process exit status (0: the counts match)."""
    paths = corpus()
    size = sum(os.path.getsize(path) for path in paths)
    console.print(
        f"[bold]moot demo[/]: word-count {len(paths):,} files ({size / 1e6:.1f} MB) of this Python's "
        f"standard library with MapReduce on {nodes} local nodes, killing nodes mid-job"
    )
    labels = [{"region": REGIONS[i % len(REGIONS)]} for i in range(nodes)]
    federation = LocalFederation(nodes, labels=labels, keep_directory=keep)
    if threading.current_thread() is threading.main_thread():
        # A SIGTERM (a CI timeout, `kill`) stops the nodes too: they run in
        # sessions of their own and would outlive the demo.
        signal.signal(signal.SIGTERM, _exit_on_signal)
    began = time.monotonic()
    try:
        with console.status(f"starting {nodes} node processes (mutual TLS on 127.0.0.1)..."):
            federation.start()
        regions = ", ".join(f"{index}:{label['region']}" for index, label in enumerate(labels))
        console.print(f"[green]✓[/] {nodes} nodes joined in {time.monotonic() - began:.1f}s ({regions})")
        client = federation.client()
        timeline = Timeline(time.monotonic())
        chaos = Chaos(federation, timeline, nodes)
        stats = RunStats()
        bars: dict[str, object] = {}
        with Progress(
            TextColumn("{task.description:>14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:

            def on_progress(phase: str, done: int, count: int) -> None:
                if phase not in bars:
                    bars[phase] = progress.add_task(phase, total=count)
                    timeline.note(f"{phase} phase: {count} tasks")
                progress.update(bars[phase], completed=done, total=count)  # type: ignore[arg-type]
                chaos.on_progress(phase, done, count)

            chaos.start()
            try:
                result = client.map_reduce(
                    paths,
                    words,
                    total,
                    combiner=total,
                    partitions=PARTITIONS,
                    split_bytes=SPLIT_BYTES,
                    progress=on_progress,
                    stats=stats,
                )
                seconds = time.monotonic() - timeline.started
                timeline.note(f"job done: {len(result):,} distinct words")
            finally:
                chaos.stop()  # waits for the survivors to declare the killed dead
        timeline.events.sort(key=lambda event: event[0])
        reruns = sum(job.reruns for job in client.jobs() if job.name.startswith(("run_map", "run_reduce")))
        _print_timeline(console, timeline, stats, reruns)
        console.print(_top_words(result))
        checked = time.monotonic()
        expected = count_here(paths)
        here_s = time.monotonic() - checked
        if result == dict(expected):
            console.print(
                f"[green]✓ match[/]: MapReduce on {nodes} nodes ({seconds:.1f}s, {len(chaos.killed)} killed) "
                f"= collections.Counter in one process ({here_s:.1f}s): {sum(expected.values()):,} words, "
                f"{len(expected):,} distinct"
            )
            code = 0
        else:
            differ = [word for word in set(expected) | set(result) if expected.get(word) != result.get(word)]
            console.print(f"[red]✗ mismatch[/] on {len(differ)} words, e.g. {sorted(differ)[:5]}")
            code = 1
        if keep:
            # A survivor's address: the demo killed two of the nodes.
            survivor = federation.nodes[next(i for i in range(nodes) if i not in chaos.killed)]
            console.print(f"\nfederation left running; cluster dir {federation.cluster_dir}")
            console.print(f"  moot status --cluster {federation.cluster_dir} --node {survivor.address}")
            console.print(f"  moot events --cluster {federation.cluster_dir} --node {survivor.address}")
            console.print(
                f"  dashboard: {survivor.http_url}/ (any live node's; the token is in {federation.cluster_dir / 'token'})"
            )
            console.print(f"  moot local down --dir {federation.directory}")
        console.print(f"demo took {time.monotonic() - began:.1f}s")
        return code
    except (LocalError, MootError) as error:
        console.print(f"[red]error:[/] {type(error).__name__}: {error}")
        return 1
    finally:
        if not keep:
            federation.stop()


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _print_timeline(console: Console, timeline: Timeline, stats: RunStats, reruns: int) -> None:
    console.print("\n[bold]timeline[/]")
    for seconds, text in timeline.events:
        console.print(f"  +{seconds:6.2f}s  {text}")
    console.print(
        f"  tasks run again by the federation after the kills: {reruns}; backup copies: {stats.backups} "
        f"({stats.backups_won} won); maps re-run for lost outputs: {stats.maps_re_executed}"
    )


def _top_words(result: dict[str, int]) -> Table:
    table = Table("#", "word", "count", title="top 20 words")
    ranked = sorted(result.items(), key=lambda item: (-item[1], item[0]))[:20]
    for rank, (word, count) in enumerate(ranked, start=1):
        table.add_row(str(rank), word, f"{count:,}")
    return table
