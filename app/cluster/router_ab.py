"""Router overhead before/after in one run: the same 3 shard nodes (this installation) behind two
routers, one started from another installation's `annserve` executable (the code before) and
one from this one; one node holding all the data and shard node 0 asked directly as yardsticks;
all asked in turn, query by query. Then each router's CPU per search, alone, with its nodes'.

    python -m annserve.cluster.router_ab /path/to/before/bin/annserve [--n 20000] [--repeat 3]

The nodes, the routers and the client share the machine's cores; run `annserve` from this
installation's environment (its `bin` first on PATH), as `LocalCluster` starts `annserve` from PATH.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import httpx
import numpy as np

from ..bench.datasets import synthetic_clusters
from ..bench.http import latencies, search_bodies
from ..bench.server_process import ServeProcess
from .bench import K, NAME, interleaved, prepare
from .local import LocalCluster


def start_from(process: ServeProcess, executable: Path) -> httpx.Client:
    """Start `process` with `executable`'s directory first on PATH (ServeProcess runs `annserve`)."""
    saved = os.environ["PATH"]
    os.environ["PATH"] = str(executable.parent) + os.pathsep + saved
    try:
        return process.start(timeout=180)
    finally:
        os.environ["PATH"] = saved


def cpu_per_search(client: httpx.Client, processes: list[ServeProcess], bodies: list[bytes]) -> list[float]:
    """Microseconds of CPU each of `processes` spent per search while `client` made `bodies`."""
    before = [p.cpu_seconds() for p in processes]
    done = len(latencies(client, NAME, bodies)[0])
    return [(p.cpu_seconds() - b) / done * 1e6 for p, b in zip(processes, before)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="the `annserve` executable of the code before")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    data = synthetic_clusters(args.n, 200, 50)
    bodies = search_bodies(data.queries, K, {})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        single = ServeProcess(root / "single", root / "single.log")
        before = ServeProcess(root / "before", root / "before.log")
        try:
            with LocalCluster(root / "three", (1, 1, 1), routers={"after": {}}) as cluster:
                cluster.start()
                after = cluster.client("after")
                one = single.start(timeout=180)
                prepare(one, single.url, data, "hnswlib", 900)
                prepare(after, cluster.routers["after"].url, data, "hnswlib", 900)
                before.env["ANNSERVE_SHARD_URLS"] = cluster.shard_urls()
                via_before = start_from(before, args.before)  # already used (its readiness polls): closed below
                node0 = httpx.Client(base_url=cluster.nodes[0][0].url, timeout=30)
                try:
                    clients = {"one node, all data": one, "shard node 0 directly": node0,
                               "router before": via_before, "router after": after}  # fmt: skip
                    runs = interleaved(clients, bodies, args.repeat)
                    load = os.getloadavg()[0]
                    cpu = {
                        "one node, all data": cpu_per_search(one, [single], bodies * 5),
                        "router before": cpu_per_search(via_before, [before, *cluster.all_nodes], bodies * 5),
                        "router after": cpu_per_search(after, [cluster.routers["after"], *cluster.all_nodes], bodies * 5),
                    }  # fmt: skip
                finally:
                    via_before.close()
                    node0.close()
                one.close()
        finally:
            before.stop()
            single.stop()
    print(f"{args.n:,} x 50 synthetic, hnswlib, {args.repeat} x 200 searches each, interleaved; "
          f"{os.cpu_count()} cores, load avg {load:.1f}")  # fmt: skip
    print("| configuration | p50 ms | p99 ms | CPU per search: own us | + nodes us |")
    print("|---|---:|---:|---:|---:|")
    for name, times in runs.items():
        c = cpu.get(name)
        own = f"{c[0]:.0f}" if c else ""
        nodes = f"{sum(c[1:]):.0f}" if c and len(c) > 1 else ""
        print(f"| {name} | {np.percentile(times, 50) * 1e3:.2f} | {np.percentile(times, 99) * 1e3:.2f} | {own} | {nodes} |")
    p50 = {name: np.percentile(times, 50) * 1e3 for name, times in runs.items()}
    for name in ("router before", "router after"):
        print(f"{name}: p50 {p50[name] - p50['one node, all data']:+.2f} ms over one node, "
              f"{p50[name] - p50['shard node 0 directly']:+.2f} ms over shard node 0")  # fmt: skip


if __name__ == "__main__":
    main()
