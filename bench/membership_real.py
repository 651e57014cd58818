"""Kill-to-everyone-knows time with real node processes on loopback.

Starts N real ``moot node`` processes (mutual TLS on 127.0.0.1) with a
membership profile, then repeatedly SIGKILLs a random node and measures the
time from the kill until the *last* survivor declares it dead. The time each
survivor declared it is read from the survivors' own structured logs
(``member_dead`` lines), so polling adds no error. The victim is restarted
and rejoins before the next trial.

    .venv/bin/python bench/membership_real.py --nodes 20 --trials 15 --profile lan
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import statistics
import sys
import time
from pathlib import Path

from moot.client.local import LocalFederation
from moot.core.membership_config import MembershipConfig


def parse_ts(text: str) -> float:
    """A log line's ``ts`` as seconds since the epoch."""
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC).timestamp()


def dead_times(log_path: Path, victim: str, after: float) -> list[float]:
    """Epoch times at which this log's node declared ``victim`` dead after ``after``."""
    times = []
    for line in log_path.read_text(errors="replace").splitlines():
        if '"member_dead"' not in line or victim not in line:
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("member") == victim:
            when = parse_ts(entry["ts"])
            if when >= after - 0.001:
                times.append(when)
    return times


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--profile", default="lan")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    config = MembershipConfig.named(args.profile)
    print(f"starting {args.nodes} nodes, profile {args.profile} ...", flush=True)
    results = []
    with LocalFederation(args.nodes, profile=args.profile) as federation:
        client = federation.client()
        ids = {}
        for info in client.members(node=federation.addresses[0]):
            ids[info.address] = info.node_id
        for trial in range(args.trials):
            victim_index = rng.randrange(args.nodes)
            victim_node = federation.nodes[victim_index]
            victim = ids[victim_node.address]
            killed_at = time.time()
            federation.kill(victim_index)
            survivors = [node for node in federation.nodes if node.index != victim_index]

            def all_dead(views: dict[int, list], victim: str = victim) -> bool:  # type: ignore[type-arg]
                return len(views) == args.nodes - 1 and all(
                    any(i.node_id == victim and i.state == "dead" for i in infos) for infos in views.values()
                )

            federation.wait_until(all_dead, what="detection", timeout_s=config.detection_bound_ms(args.nodes) / 1000)
            firsts = []
            for node in survivors:
                times = dead_times(node.log_path, victim, killed_at)
                firsts.append(min(times))
            everyone = max(firsts) - killed_at
            first = min(firsts) - killed_at
            results.append((first, everyone))
            print(f"trial {trial + 1:2d}: killed {victim}: first knew {first:6.2f}s, everyone knew {everyone:6.2f}s", flush=True)
            federation.restart(victim_index)

            def rejoined(views: dict[int, list], victim: str = victim) -> bool:  # type: ignore[type-arg]
                return len(views) == args.nodes and all(
                    any(i.node_id == victim and i.state == "alive" for i in infos) for infos in views.values()
                )

            federation.wait_until(rejoined, what="rejoin", timeout_s=60)
    everyone = [r[1] for r in results]
    first = [r[0] for r in results]
    print()
    print("| nodes | profile | trials | first knew p50 | everyone knew p50 | everyone knew p99 | max |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {args.nodes} | {args.profile} | {len(results)} | {statistics.median(first):.2f} s | "
        f"{statistics.median(everyone):.2f} s | {percentile(everyone, 0.99):.2f} s | {max(everyone):.2f} s |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
