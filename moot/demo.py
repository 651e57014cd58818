"""``moot demo``: a local federation of real processes loses a node and carries on.

Until the MapReduce job lands this shows the foundation: five node processes
on 127.0.0.1 over mutual TLS find each other by gossip, estimate the RTT
between any two, detect a SIGKILLed member with no coordinator, and take it
back when it restarts.
"""

from __future__ import annotations

import time

from rich.console import Console

from moot.client.local import LocalError, LocalFederation

REGIONS = ("lahore", "karachi", "singapore")
DETECTION_TIMEOUT_S = 60.0


def run_demo(*, nodes: int, keep: bool, console: Console) -> int:
    """Run the demo; returns the process exit status."""
    from moot.cli import members_table

    labels = [{"region": REGIONS[i % len(REGIONS)]} for i in range(nodes)]
    federation = LocalFederation(nodes, labels=labels, keep_directory=keep)
    started = time.monotonic()
    try:
        with console.status(f"starting {nodes} node processes (mutual TLS on 127.0.0.1)..."):
            federation.start()
        console.print(f"[green]✓[/] {nodes} nodes joined in {time.monotonic() - started:.1f}s")
        client = federation.client()
        console.print(members_table(client.members(node=federation.addresses[0]), title="membership seen by node 0"))

        victim = nodes - 2
        victim_id = next(info.node_id for info in client.members(node=federation.nodes[victim].address) if info.address == federation.nodes[victim].address)
        console.print(f"\n[bold]kill -9[/] node {victim} ({victim_id}, {federation.nodes[victim].address})")
        killed_at = time.monotonic()
        federation.kill(victim)
        timeline = _watch_detection(federation, victim_id, killed_at)
        for seconds, line in timeline:
            console.print(f"  +{seconds:5.2f}s  {line}")
        if not any("dead" in line for _, line in timeline) or len([1 for _, line in timeline if "dead" in line]) < nodes - 1:
            console.print("[red]✗[/] not every survivor declared the killed node dead in time")
            return 1
        console.print(f"[green]✓[/] every survivor declared {victim_id} dead, with no coordinator")

        console.print(f"\n[bold]restart[/] node {victim} on the same data dir")
        federation.restart(victim)
        federation.wait_until(
            lambda views: all(
                any(info.node_id == victim_id and info.state == "alive" for info in infos) for infos in views.values()
            )
            and len(views) == nodes,
            what=f"{victim_id} to rejoin",
        )
        rejoined = {info.node_id: info for info in client.members(node=federation.addresses[0])}[victim_id]
        console.print(f"[green]✓[/] {victim_id} rejoined alive at incarnation {rejoined.incarnation}")
        console.print(members_table(client.members(node=federation.addresses[0]), title="membership seen by node 0"))
        if keep:
            console.print(f"\nfederation left running; cluster dir {federation.cluster_dir}")
            console.print(f"  moot members --cluster {federation.cluster_dir} --node {federation.addresses[0]}")
            console.print(f"  moot local down --dir {federation.directory}")
            return 0
        return 0
    except LocalError as error:
        console.print(f"[red]error:[/] {error}")
        return 1
    finally:
        if not keep:
            federation.stop()


def _watch_detection(federation: LocalFederation, victim_id: str, killed_at: float) -> list[tuple[float, str]]:
    """Poll survivors' views; note when each first suspects and declares the victim dead."""
    timeline: list[tuple[float, str]] = [(0.0, f"{victim_id} killed")]
    seen: dict[tuple[int, str], float] = {}
    survivors = [node.index for node in federation.nodes if node.alive]
    deadline = killed_at + DETECTION_TIMEOUT_S
    while time.monotonic() < deadline:
        views = federation.views()
        now = time.monotonic() - killed_at
        for index, infos in sorted(views.items()):
            for info in infos:
                if info.node_id != victim_id:
                    continue
                for state in ("suspect", "dead"):
                    reached = info.state == state or (state == "suspect" and info.state == "dead")
                    if reached and (index, state) not in seen:
                        seen[(index, state)] = now
                        timeline.append((now, f"node {index} sees {victim_id} {state}"))
        if all((index, "dead") in seen for index in survivors):
            break
        time.sleep(0.05)  # polling the views with a deadline
    return timeline
