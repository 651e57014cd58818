"""The ``moot`` command.

Every failure a user can cause (a missing cluster dir, a taken port, a bad
address) ends with one line saying what to fix and a non-zero exit status,
never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="moot: a federation of equal nodes where no computer is essential.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
node_app = typer.Typer(help="Run a node.", no_args_is_help=True)
local_app = typer.Typer(
    help="A local federation of real node processes on 127.0.0.1.", no_args_is_help=True
)
app.add_typer(node_app, name="node")
kv_app = typer.Typer(
    help="The replicated key-value store (linearizable, on Raft).", no_args_is_help=True
)
app.add_typer(local_app, name="local")
app.add_typer(kv_app, name="kv")
job_app = typer.Typer(help="Durable jobs: list, inspect, fetch results, cancel.", no_args_is_help=True)
app.add_typer(job_app, name="job")

# Wide when piped (CI logs, `make demo | tee`): tables of addresses must not be cut.
console = Console(width=None if sys.stdout.isatty() else 160)
error_console = Console(stderr=True, width=None if sys.stderr.isatty() else 400)

DEFAULT_LOCAL_DIR = Path.home() / ".moot" / "local"


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one clear line on stderr; the caller raises the returned Exit."""
    error_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def parse_resources(resources: list[str]) -> dict[str, float]:
    """``name=amount`` options as a dict; a clear error for anything else."""
    parsed: dict[str, float] = {}
    for item in resources:
        name, separator, amount = item.partition("=")
        try:
            value = float(amount)
        except ValueError:
            value = -1.0
        if not separator or not name or name == "cpus" or not 0 <= value <= 1e9:
            raise typer.BadParameter(
                f"resource {item!r} is not name=amount (for example gpu=1; use --cpus for CPUs)"
            )
        parsed[name] = value
    return parsed


def parse_labels(labels: list[str]) -> dict[str, str]:
    """``k=v`` strings as a dict; BadParameter on anything else."""
    result = {}
    for label in labels:
        key, separator, value = label.partition("=")
        if not separator or not key:
            raise typer.BadParameter(f"label {label!r} is not k=v (for example region=lahore)")
        result[key] = value
    return result


@app.command()
def init(
    directory: Annotated[
        Path, typer.Option("--dir", help="Directory for the new cluster's CA, token and keys.")
    ],
) -> None:
    """Create a cluster: its CA, client certificate, client token and gossip key."""
    from moot.runtime import identity

    try:
        paths = identity.init_cluster(directory)
    except identity.ClusterError as error:
        raise fail(str(error)) from None
    console.print(f"cluster created in [bold]{directory}[/]")
    console.print(f"  CA certificate  {paths.ca_certificate}")
    console.print(f"  client token    {paths.token}  (mode 0600; keep it secret)")
    console.print(
        "start a node:  moot node start --cluster DIR --data-dir DATA --listen 127.0.0.1:7000"
    )


@node_app.command("start")
def node_start(
    cluster: Annotated[Path, typer.Option(help="The cluster directory made by `moot init`.")],
    data_dir: Annotated[Path, typer.Option("--data-dir", help="This node's own data directory.")],
    listen: Annotated[
        str, typer.Option(help="HOST:PORT for node-to-node and client traffic (TLS).")
    ],
    join: Annotated[
        list[str] | None, typer.Option(help="HOST:PORT of a member to join; repeatable.")
    ] = None,
    http: Annotated[str | None, typer.Option(help="HOST:PORT for the HTTP API.")] = None,
    label: Annotated[
        list[str] | None, typer.Option(help="k=v label, e.g. region=lahore; repeatable.")
    ] = None,
    cpus: Annotated[
        int, typer.Option(min=0, help="Worker processes this node runs tasks in (0: runs no tasks).")
    ] = 1,
    resource: Annotated[
        list[str] | None,
        typer.Option(help="name=amount of a custom resource tasks can ask for, e.g. gpu=1; repeatable."),
    ] = None,
    task_memory_bytes: Annotated[
        int | None,
        typer.Option(min=32 * 1024 * 1024, help="Address-space limit of each worker process (default: none)."),
    ] = None,
    profile: Annotated[str, typer.Option(help="Membership profile: lan, wan or local.")] = "lan",
    advertise: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT other nodes reach this one at (needed when --listen is 0.0.0.0)."
        ),
    ] = None,
    bootstrap: Annotated[
        bool | None,
        typer.Option(
            "--bootstrap/--no-bootstrap",
            help="Found the federation's database with this node as first voter (default: when started without --join).",
        ),
    ] = None,
    voter_grace_ms: Annotated[
        int,
        typer.Option(
            min=0, help="How long a dead voter keeps its seat before the leader replaces it."
        ),
    ] = 5_000,
    voters_max: Annotated[
        int,
        typer.Option(
            min=1,
            max=9,
            help="Voters kept once that many members are alive (3 below that, as long as 3 are alive).",
        ),
    ] = 5,
    object_grace_s: Annotated[
        float,
        typer.Option(
            min=0.0, help="Seconds an unreferenced (unpinned) object is kept before collection."
        ),
    ] = 3_600.0,
    object_capacity_bytes: Annotated[
        int | None,
        typer.Option(
            min=1, help="Most bytes of chunks this node stores (default: until the disk is full)."
        ),
    ] = None,
    object_replicas: Annotated[int, typer.Option(min=1, max=16, help="Copies of every chunk this node places.")] = 3,
    object_write_quorum: Annotated[
        int | None, typer.Option(min=1, max=16, help="Copies on disk before a write is acknowledged (default: all).")
    ] = None,
    object_cache_bytes: Annotated[
        int, typer.Option(min=0, help="Memory for chunks this node served, so the next reader nearby gets them locally.")
    ] = 256 * 1024 * 1024,
) -> None:
    """Start a node and serve until SIGTERM (which leaves gracefully)."""
    from moot.runtime.logs import configure_logging
    from moot.runtime.node import NodeOptions, NodeStartError, run_node
    from moot.runtime.node_state import DataDirError

    configure_logging()
    options = NodeOptions(
        cluster_dir=cluster,
        data_dir=data_dir,
        listen=listen,
        join=tuple(join or ()),
        http=http,
        labels=parse_labels(label or []),
        cpus=cpus,
        resources=parse_resources(resource or []),
        task_memory_bytes=task_memory_bytes,
        profile=profile,
        advertise=advertise,
        bootstrap=bootstrap,
        voter_grace_ms=voter_grace_ms,
        voters_max=voters_max,
        object_grace_s=object_grace_s,
        object_capacity_bytes=object_capacity_bytes,
        object_replicas=object_replicas,
        object_write_quorum=object_write_quorum,
        object_cache_bytes=object_cache_bytes,
    )
    try:
        run_node(options)
    except (NodeStartError, DataDirError) as error:
        raise fail(str(error)) from None
    except KeyboardInterrupt:
        pass


@app.command()
def members(
    cluster: Annotated[Path, typer.Option(help="The cluster directory.")],
    node: Annotated[str, typer.Option(help="HOST:PORT of any node.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show the membership as one node sees it."""
    import msgspec

    from moot.client.client import connect
    from moot.client.errors import MootError

    try:
        with connect([node], cluster=cluster) as client:
            infos = client.members(node=node)
    except MootError as error:
        raise fail(str(error)) from None
    if as_json:
        rows = [msgspec.to_builtins(info) for info in infos]
        for row in rows:
            row["id"] = row.pop("node_id")
            row.pop("coordinate", None)
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    console.print(members_table(infos, title=f"members seen by {node}"))


def members_table(infos: list[Any], *, title: str) -> Table:
    """A rich table of MemberInfo rows."""
    table = Table(title=title)
    for column in ("id", "address", "state", "incarnation", "labels", "cpus", "rtt (ms)"):
        table.add_column(column)
    colours = {"alive": "green", "suspect": "yellow", "dead": "red", "left": "dim"}
    for info in infos:
        labels = ",".join(f"{k}={v}" for k, v in sorted(info.labels.items()))
        rtt = "-" if info.rtt_ms is None else f"{info.rtt_ms:.1f}"
        table.add_row(
            info.node_id,
            info.address,
            f"[{colours[info.state]}]{info.state}[/]",
            str(info.incarnation),
            labels,
            str(info.cpus),
            rtt,
        )
    return table


ClusterOption = Annotated[Path, typer.Option(help="The cluster directory.", envvar="MOOT_CLUSTER")]
NodesOption = Annotated[
    list[str],
    typer.Option(
        "--node", help="HOST:PORT of a node; repeatable (any node will do).", envvar="MOOT_NODES"
    ),
]
ConsistencyOption = Annotated[
    str, typer.Option(help="linearizable (default), lease, or stale (any node, may be behind).")
]


def _kv_client(cluster: Path, nodes: list[str]) -> Any:
    from moot.client.client import connect

    return connect(nodes, cluster=cluster)


def _kv_run(cluster: Path, nodes: list[str], action: Any) -> Any:
    from moot.client.errors import MootError

    try:
        with _kv_client(cluster, nodes) as client:
            return action(client.kv)
    except MootError as error:
        raise fail(f"{type(error).__name__}: {error}") from None


def _show(data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return "0x" + data.hex()


@kv_app.command("put")
def kv_put(key: str, value: str, cluster: ClusterOption, node: NodesOption) -> None:
    """Set KEY to VALUE; prints the revision."""
    revision = _kv_run(cluster, node, lambda kv: kv.put(key, value))
    console.print(f"OK revision {revision}")


@kv_app.command("get")
def kv_get(
    key: str,
    cluster: ClusterOption,
    node: NodesOption,
    consistency: ConsistencyOption = "linearizable",
) -> None:
    """Print the value of KEY (exit status 1 if it does not exist)."""
    item = _kv_run(cluster, node, lambda kv: kv.get_item(key, consistency=consistency))
    if item is None:
        error_console.print(f"{key}: not found")
        raise typer.Exit(1)
    sys.stdout.write(_show(item.value) + "\n")


@kv_app.command("del")
def kv_delete(key: str, cluster: ClusterOption, node: NodesOption) -> None:
    """Delete KEY (exit status 1 if it did not exist)."""
    existed = _kv_run(cluster, node, lambda kv: kv.delete(key))
    console.print("deleted" if existed else f"{key}: not found")
    if not existed:
        raise typer.Exit(1)


@kv_app.command("cas")
def kv_cas(
    key: str,
    new: str,
    cluster: ClusterOption,
    node: NodesOption,
    expected: Annotated[
        str | None, typer.Option(help="The value KEY must have now; omit: KEY must not exist.")
    ] = None,
) -> None:
    """Set KEY to NEW only if it holds --expected (exit status 1 if not)."""
    swapped = _kv_run(cluster, node, lambda kv: kv.cas(key, expected, new))
    console.print("swapped" if swapped else "not swapped: the value was different")
    if not swapped:
        raise typer.Exit(1)


@kv_app.command("range")
def kv_range(
    cluster: ClusterOption,
    node: NodesOption,
    prefix: Annotated[str, typer.Argument(help="Key prefix; empty for all keys.")] = "",
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 1_000,
    consistency: ConsistencyOption = "linearizable",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List keys starting with PREFIX, with values and revisions."""
    items = _kv_run(
        cluster, node, lambda kv: kv.range(prefix, limit=limit, consistency=consistency)
    )
    if as_json:
        for item in items:
            row = {
                "key": _show(item.key),
                "value": _show(item.value),
                "mod_revision": item.mod_revision,
            }
            sys.stdout.write(json.dumps(row) + "\n")
        return
    table = Table(title=f"{len(items)} keys under {prefix!r}")
    for column in ("key", "value", "create rev", "mod rev", "version"):
        table.add_column(column)
    for item in items:
        table.add_row(
            _show(item.key),
            _show(item.value)[:80],
            str(item.create_revision),
            str(item.mod_revision),
            str(item.version),
        )
    console.print(table)


@kv_app.command("watch")
def kv_watch(
    cluster: ClusterOption,
    node: NodesOption,
    prefix: Annotated[str, typer.Argument(help="Key prefix; empty for all keys.")] = "",
    start_revision: Annotated[
        int, typer.Option(min=0, help="Replay from this revision (0: from now).")
    ] = 0,
    count: Annotated[int, typer.Option(min=0, help="Stop after this many events (0: never).")] = 0,
) -> None:
    """Print puts and deletes under PREFIX as they happen (Ctrl-C stops)."""
    from moot.client.errors import MootError

    try:
        with (
            _kv_client(cluster, node) as client,
            client.kv.watch(prefix, start_revision=start_revision) as watch,
        ):
            for seen, event in enumerate(watch, start=1):
                value = "" if event.kind == "delete" else " " + _show(event.value)
                sys.stdout.write(f"{event.revision} {event.kind} {_show(event.key)}{value}\n")
                sys.stdout.flush()
                if count and seen >= count:
                    break
    except MootError as error:
        raise fail(f"{type(error).__name__}: {error}") from None
    except KeyboardInterrupt:
        pass


@app.command("put")
def object_put(
    path: Annotated[Path, typer.Argument(help="The file to store.")],
    cluster: ClusterOption,
    node: NodesOption,
    pin: Annotated[
        str, typer.Option(help="Pin name that keeps the object (unpin to let it be collected).")
    ] = "user",
) -> None:
    """Store FILE in the object store; prints its id (the hash of its manifest)."""
    from moot.client.errors import MootError

    if not path.is_file():
        raise fail(f"{path} is not a readable file")
    try:
        with _kv_client(cluster, node) as client:
            ref = client.objects.put(path, pin=pin)
            warning = client.objects.last_warning
    except MootError as error:
        raise fail(f"{type(error).__name__}: {error}") from None
    if warning:
        error_console.print(f"[yellow]warning:[/] {warning}")
    sys.stdout.write(f"{ref.id}\n")
    error_console.print(f"stored {ref.size} bytes on {ref.replicas} replicas")


@app.command("get")
def object_get(
    object_id: Annotated[str, typer.Argument(help="The object id `moot put` printed.")],
    cluster: ClusterOption,
    node: NodesOption,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the object.")],
) -> None:
    """Fetch an object into a file (written whole or not at all; every chunk verified)."""
    from moot.client.errors import MootError

    try:
        with _kv_client(cluster, node) as client:
            client.objects.get_to(object_id, output)
    except MootError as error:
        raise fail(f"{type(error).__name__}: {error}") from None
    error_console.print(f"wrote {output.stat().st_size} bytes to {output}")


EVENTS_POLL_S = 1.0


@app.command()
def events(
    cluster: ClusterOption,
    node: NodesOption,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events as they happen.")] = False,
    limit: Annotated[int, typer.Option(help="At most this many (the newest); with --follow, per poll.")] = 2_000,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """The federation's timeline: every live node's events (members suspected,
    declared dead, joined; leaders elected; voters replaced; tasks run again;
    chunks repaired ...) merged in hybrid-logical-clock order, cause before
    effect."""
    import time

    from moot.client.client import connect
    from moot.client.errors import MootError
    from moot.runtime.events import iter_new, resume_after

    seen: set[tuple[int, str]] = set()
    after = 0
    try:
        with connect(node, cluster=cluster) as client:
            while True:
                records = client.events(after=after, limit=limit)
                for record in iter_new(records, seen):
                    _print_event(record, as_json)
                if not follow:
                    return
                after = resume_after(records, after)
                seen = {key for key in seen if key[0] > after}
                sys.stdout.flush()
                time.sleep(EVENTS_POLL_S)
    except MootError as error:
        raise fail(str(error)) from None
    except KeyboardInterrupt:
        return


def _print_event(record: dict[str, Any], as_json: bool) -> None:
    from rich.markup import escape

    if as_json:
        sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
        return
    fields = " ".join(
        f"{name}={value}" for name, value in record.items() if name not in ("hlc", "hlc_text", "time", "node", "event")
    )
    console.print(
        f"{escape(str(record['time']))}  [bold]{escape(str(record['node']))}[/]  {escape(str(record['event']))}  {escape(fields)}",
        highlight=False,
    )


@app.command()
def status(
    cluster: ClusterOption,
    node: NodesOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The database's Raft group as each node sees it: leader, term, voters, learners, indexes."""
    import msgspec

    from moot.client.client import connect
    from moot.client.errors import MootError

    try:
        with connect(node, cluster=cluster) as client:
            replies = client.status()
            dashboards = sorted(
                f"http://{member.labels['http']}/"
                for member in client.members()
                if member.state == "alive" and member.labels.get("http")
            )
    except MootError as error:
        raise fail(str(error)) from None
    if as_json:
        sys.stdout.write(json.dumps([msgspec.to_builtins(r) for r in replies], indent=2) + "\n")
        return
    if dashboards:
        console.print(f"dashboard: {'  '.join(dashboards)}  (any of them; log in with the cluster's token)")
    leaders = {r.leader_id for r in replies if r.leader_id}
    names = {r.node_id: r.address for r in replies}
    leader_text = (
        ", ".join(f"{leader} ({names.get(leader, '?')})" for leader in sorted(leaders)) or "none"
    )
    console.print(f"leader: {leader_text}")
    if replies:
        first = max(replies, key=lambda r: r.term)
        console.print(f"voters: {', '.join(first.voters)}")
        console.print(f"learners: {', '.join(first.learners) or '-'}")
    table = Table(title="raft status per node")
    for column in (
        "node",
        "address",
        "role",
        "term",
        "leader",
        "commit",
        "applied",
        "last",
        "snapshot",
        "revision",
        "keys",
    ):
        table.add_column(column)
    for r in sorted(replies, key=lambda r: r.node_id):
        table.add_row(
            r.node_id,
            r.address,
            r.role,
            str(r.term),
            r.leader_id or "-",
            str(r.commit_index),
            str(r.applied_index),
            str(r.last_index),
            str(r.snapshot_index),
            str(r.revision),
            str(r.keys),
        )
    console.print(table)
    objects_table = Table(title="object store per node")
    for column in (
        "node",
        "chunks",
        "MiB",
        "repairs",
        "scrubbed MiB",
        "corrupt found",
        "cache hits",
        "collected",
    ):
        objects_table.add_column(column)
    for r in sorted(replies, key=lambda r: r.node_id):
        objects_table.add_row(
            r.node_id,
            str(r.chunks),
            f"{r.chunk_bytes / 2**20:.1f}",
            str(r.repairs),
            f"{r.scrubbed_bytes / 2**20:.1f}",
            str(r.corrupt_found),
            str(r.cache_hits),
            str(r.objects_collected),
        )
    console.print(objects_table)


@local_app.command("up")
def local_up(
    nodes: Annotated[int, typer.Option(min=1, max=64, help="How many node processes.")] = 3,
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the federation keeps its files.")
    ] = DEFAULT_LOCAL_DIR,
) -> None:
    """Start N node processes on 127.0.0.1 that keep running after this command."""
    from moot.client.local import STATE_FILE, LocalError, LocalFederation

    if (directory / STATE_FILE).exists():
        raise fail(
            f"a local federation already runs from {directory}: stop it with `moot local down --dir {directory}`"
        )
    if directory.exists() and any(directory.iterdir()):
        raise fail(f"{directory} is not empty: choose an empty --dir or remove it")
    federation = LocalFederation(nodes, directory=directory, keep_directory=True)
    try:
        federation.start()
    except LocalError as error:
        federation.stop()
        raise fail(str(error)) from None
    console.print(f"{nodes} nodes up; cluster dir [bold]{federation.cluster_dir}[/]")
    for node in federation.nodes:
        console.print(f"  node {node.index}  {node.address}  http {node.http_url}")
    console.print(
        f"try:  moot members --cluster {federation.cluster_dir} --node {federation.addresses[0]}"
    )
    console.print(f"stop: moot local down --dir {directory}")
    if federation._client is not None:  # the processes stay; only our client goes
        federation._client.close()


@local_app.command("down")
def local_down(
    directory: Annotated[
        Path, typer.Option("--dir", help="The directory given to `moot local up`.")
    ] = DEFAULT_LOCAL_DIR,
) -> None:
    """Stop the federation that `moot local up` started."""
    from moot.client.local import LocalError, down

    try:
        stopped = down(directory)
    except LocalError as error:
        raise fail(str(error)) from None
    console.print(f"stopped {stopped} nodes")


@app.command()
def demo(
    keep: Annotated[
        bool, typer.Option(help="Leave the federation running and print how to reach it.")
    ] = False,
    nodes: Annotated[int, typer.Option(min=3, max=16, help="How many node processes.")] = 5,
) -> None:
    """The main job: a local federation losing a node and carrying on."""
    from moot.demo import run_demo

    code = run_demo(nodes=nodes, keep=keep, console=console)
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()


# -- jobs ----------------------------------------------------------------------------------


def _job_run(cluster: Path, nodes: list[str], action: Any) -> Any:
    from moot.client.client import connect
    from moot.client.errors import MootError

    try:
        with connect(nodes, cluster=cluster) as client:
            return action(client)
    except MootError as error:
        raise fail(f"{type(error).__name__}: {error}") from None


def _age(milliseconds: int) -> str:
    import time

    if not milliseconds:
        return "-"
    seconds = max(0.0, time.time() - milliseconds / 1000)
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.0f}h"


@job_app.command("ls")
def job_ls(cluster: ClusterOption, node: NodesOption) -> None:
    """Every job the federation keeps: state and progress."""
    jobs = _job_run(cluster, node, lambda client: client.jobs())
    table = Table("id", "function", "state", "done", "failed", "running", "pending", "submitted")
    for job in jobs:
        table.add_row(
            job.job_id,
            job.name,
            job.state,
            f"{job.done + job.failed + job.cancelled}/{job.total}",
            str(job.failed),
            str(job.running),
            str(job.pending),
            _age(job.submitted_ms) + " ago",
        )
    console.print(table)


@job_app.command("status")
def job_status(job_id: str, cluster: ClusterOption, node: NodesOption) -> None:
    """One job: state, progress, results committed, duplicates discarded, why it waits."""
    job = _job_run(cluster, node, lambda client: client.tasks.job_summary(job_id))
    finished = job.done + job.failed + job.cancelled
    console.print(f"job {job.job_id} ({job.name}): {job.state}, {finished}/{job.total} finished")
    console.print(
        f"  done {job.done}, failed {job.failed}, cancelled {job.cancelled}, running {job.running}, "
        f"pending {job.pending}; results committed {job.commits}, duplicates discarded {job.duplicates}"
    )
    if job.blocked:
        console.print(f"  waiting: {job.blocked}")


@job_app.command("result")
def job_result(
    job_id: str,
    cluster: ClusterOption,
    node: NodesOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as one JSON list.")] = False,
) -> None:
    """Wait for the job and print its results in order (one per line, or --json)."""
    import json

    def collect(client: Any) -> list[Any]:
        job = client.job(job_id)
        if not as_json and sys.stderr.isatty():
            from moot.client.tasks import progress

            progress(job.futures, description=f"job {job_id[:12]}")
        return list(job.result())

    try:
        values = _job_run(cluster, node, collect)
    except typer.Exit:
        raise
    except Exception as error:  # a task's own exception
        raise fail(f"a task of job {job_id} failed: {type(error).__name__}: {error}") from None
    if as_json:
        try:
            console.file.write(json.dumps(values) + "\n")
        except TypeError as error:
            raise fail(f"the results are not JSON ({error}); run without --json") from None
        return
    for value in values:
        console.print(repr(value), highlight=False)


@job_app.command("cancel")
def job_cancel(job_id: str, cluster: ClusterOption, node: NodesOption) -> None:
    """Cancel a job: pending tasks never run, running ones are killed."""
    cancelled = _job_run(cluster, node, lambda client: client.tasks.job_summary(job_id) and client.tasks.cancel_job(job_id))
    if not cancelled:
        raise fail(f"job {job_id} is finished or cancelled already")
    console.print(f"cancelled {job_id}")


# -- mapreduce -------------------------------------------------------------------------------


def load_job(path: Path) -> tuple[Any, Any, Any]:
    """``mapper``, ``reducer`` and (optional) ``combiner`` from a job file; the
    file's functions travel by value (the workers cannot import it)."""
    import importlib.util

    import cloudpickle

    if not path.is_file():
        raise fail(f"{path} is not a file: give the Python file that defines mapper and reducer")
    name = f"moot_job_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise fail(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        raise fail(f"{path} raised {type(error).__name__}: {error}") from None
    cloudpickle.register_pickle_by_value(module)
    missing = [function for function in ("mapper", "reducer") if not callable(getattr(module, function, None))]
    if missing:
        raise fail(f"{path} must define {' and '.join(missing)} (functions): mapper(record) -> (key, value) pairs, reducer(key, values) -> value")
    return module.mapper, module.reducer, getattr(module, "combiner", None)


@app.command("mapreduce")
def mapreduce_command(
    job: Annotated[Path, typer.Argument(help="A Python file defining mapper(record), reducer(key, values) and optionally combiner(key, values).")],
    inputs: Annotated[list[str], typer.Argument(help="Text files, globs (quoted) or fsspec URLs; a record is one line.")],
    cluster: ClusterOption,
    node: NodesOption,
    partitions: Annotated[int, typer.Option(min=1, help="Reduce tasks (and output files).")] = 8,
    split_mb: Annotated[float, typer.Option(min=0.001, help="About this many MiB of input per map task.")] = 64.0,
    output: Annotated[Path | None, typer.Option(help="Write DIR/part-NNNNN files (key<TAB>value) instead of printing.")] = None,
    top: Annotated[int, typer.Option(min=0, help="Print only the N keys with the largest values.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
    retries: Annotated[int, typer.Option(min=0, help="Runs again of a task whose mapper or reducer raised.")] = 0,
    whole_split: Annotated[bool, typer.Option(help="mapper(lines) takes a split's lines at once and returns pairs or a dict.")] = False,
) -> None:
    """Run a MapReduce job on the federation: word counts and the like."""
    from moot.client.client import connect
    from moot.client.errors import MootError

    mapper, reducer, combiner = load_job(job)
    try:
        with connect(node, cluster=cluster) as client, phase_progress(error_console) as progress:
            result = client.map_reduce(
                inputs,
                mapper,
                reducer,
                combiner=combiner,
                partitions=partitions,
                split_bytes=max(1024, int(split_mb * 1024 * 1024)),
                output=output,
                retries=retries,
                progress=progress,
                whole_split=whole_split,
            )
    except MootError as error:
        raise fail(f"{type(error).__name__}: {error}") from None
    except Exception as error:  # the mapper's or reducer's own exception
        notes = "; ".join(getattr(error, "__notes__", []))
        raise fail(f"the job failed: {type(error).__name__}: {error}" + (f" ({notes})" if notes else "")) from None
    if output is not None:
        error_console.print(f"wrote {sum(result.values())} keys to {len(result)} files in {output}")
        return
    items = list(result.items())
    if top:
        items = sorted(items, key=lambda item: (-item[1], str(item[0])))[:top]
    else:
        items.sort(key=lambda item: str(item[0]))
    if as_json:
        try:
            console.file.write(json.dumps(dict(items)) + "\n")
        except TypeError as error:
            raise fail(f"the result is not JSON ({error}); run without --json") from None
        return
    for key, value in items:
        console.file.write(f"{key}\t{value}\n")


@contextlib.contextmanager
def phase_progress(target: Console) -> Iterator[Any]:
    """A ``progress(phase, done, total)`` hook drawing a bar per phase (nothing
    when ``target`` is not a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not target.is_terminal:
        yield None
        return
    bars: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description:>14}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=target, transient=False,
    ) as progress:

        def update(phase: str, done: int, total: int) -> None:
            if phase not in bars:
                bars[phase] = progress.add_task(phase, total=total)
            progress.update(bars[phase], completed=done, total=total)

        yield update
