"""`annserve bench-cluster`: what the router costs and how the fan-out scales, on loopback.

1. Overhead: the same single searches (one client, one keep-alive connection each, JSON vectors)
   against one node holding all the data, through a router over 3 nodes holding a third each, and
   against one of those nodes directly; all three run at once and are asked in turn, query by
   query, so that a busy machine weighs on each alike. Target: the router's p50 at most 1 ms
   above the single node's. Also the CPU each process spends per search (/proc), which a busy
   machine distorts much less than latency.
2. Fan-out: p50/p99 through a router over 1, 2, 4 and 8 shards of 2 replicas each, with hedging
   off and on (`--hedge-ms`; two routers over the same nodes, asked in turn), the same data split
   over more shards.

Every process is a real `annserve serve` (app/cluster/local.py). On a machine with few cores the
nodes, the router and the client share them: the figures are an upper bound of what separate
machines would see, and the 8-shard case mostly measures contention. The machine's load average
is printed with the results. Benchmarks are not tests: this prints tables and writes
`bench_cluster.png`, `bench_cluster.csv` and `bench_cluster.md` to `--out`.
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

import httpx
import numpy as np
import typer

from ..bench.datasets import Dataset, DatasetMissing, load_dataset, synthetic_clusters
from ..bench.http import ingest, latencies, pct_ms, rebuild_and_wait, search_bodies, search_recall
from ..bench.server_process import ServeProcess
from ..indexes import brute_force_knn
from .local import LocalCluster

NAME = "bench"
K = 10
OUT = Path(__file__).parent / "results"


def load(n: int, queries: int) -> tuple[Dataset, str]:
    try:
        data = load_dataset("glove", n_queries=queries, limit=n)
        return data, f"GloVe 6B 50d, {data.base.shape[0]:,} rows, {queries} held-out queries, cosine"
    except DatasetMissing as exc:
        print(f"note: {exc}; using synthetic data")
        data = synthetic_clusters(n, queries, 50)
        return data, f"synthetic: {n:,} unit vectors (50-d, 256 clusters), cosine"


def prepare(client: httpx.Client, url: str, data: Dataset, kind: str, timeout: float) -> None:
    """Create the collection, load it (base64 upserts), build its main index."""
    body = {"name": NAME, "dim": data.dim, "metric": data.metric, "index": {"kind": kind}}
    client.post("/collections", json=body).raise_for_status()
    ingest(url, NAME, [str(i) for i in range(len(data.base))], data.base, b64=True, clients=2)
    rebuild_and_wait(client, NAME, timeout)


def interleaved(clients: dict[str, httpx.Client], bodies: list[bytes], repeat: int) -> dict[str, np.ndarray]:
    """Latencies (s) of the same searches on each of `clients`, taken in turn query by query (the
    order rotating), so that every configuration sees the same moments of a busy machine."""
    names = list(clients)
    for name in names:  # warm: connections, caches
        latencies(clients[name], NAME, bodies[: max(len(bodies) // 10, 1)])
    out: dict[str, list[float]] = {name: [] for name in names}
    for i, body in enumerate(bodies * repeat):
        for name in names[i % len(names):] + names[: i % len(names)]:
            runs, failures = latencies(clients[name], NAME, [body])
            if failures:
                raise RuntimeError(f"{name}: a search failed")
            out[name].append(float(runs[0]))
    return {name: np.array(values) for name, values in out.items()}


def cpu_per_search(processes: list[ServeProcess], run) -> tuple[float, ...]:
    """CPU seconds each of `processes` spent per search while `run()` made `n` searches."""
    before = [p.cpu_seconds() for p in processes]
    n = run()
    return tuple((p.cpu_seconds() - b) / n for p, b in zip(processes, before))


def overhead(root: Path, data: Dataset, bodies: list[bytes], truth: np.ndarray, kind: str, repeat: int,
             timeout: float) -> list[dict]:  # fmt: skip
    """One node with all the data, asked directly and through a router over it alone; a router
    over 3 nodes with a third each, and one of those nodes asked directly. All run at once and
    are measured in turn."""
    single = ServeProcess(root / "single", root / "single.log")
    alone = ServeProcess(root / "router-1", root / "router-1.log")
    try:
        with LocalCluster(root / "three", (1, 1, 1)) as cluster:
            cluster.start()
            router = cluster.client()
            one = single.start(timeout=180)
            alone.env["ANNSERVE_SHARD_URLS"] = single.url
            over_one = alone.start(timeout=180)
            prepare(one, single.url, data, kind, timeout)
            prepare(router, cluster.routers["router"].url, data, kind, timeout)
            node0 = cluster.nodes[0][0]
            with httpx.Client(base_url=node0.url, timeout=30) as direct:
                clients = {
                    "one node, all data": one, "router over that one node": over_one,
                    "router over 3 nodes": router, "shard node 0 directly (a third)": direct,
                }  # fmt: skip
                runs = interleaved(clients, bodies, repeat)
                recalls = {name: search_recall(clients[name], NAME, data.queries, truth, {})
                           for name in ("one node, all data", "router over 3 nodes")}  # fmt: skip
                # CPU per search, each configuration alone: the routers' own and their nodes'. /proc
                # counts in 10 ms ticks: enough searches that a tick is a few microseconds per search.
                timed = bodies * max(repeat, 1000 // len(bodies) + 1)
                cpu = {
                    "one node, all data": cpu_per_search([single], lambda: len(latencies(one, NAME, timed)[0])),
                    "router over that one node": cpu_per_search(
                        [alone, single], lambda: len(latencies(over_one, NAME, timed)[0])
                    ),
                    "router over 3 nodes": cpu_per_search(
                        [cluster.routers["router"], *cluster.all_nodes], lambda: len(latencies(router, NAME, timed)[0])
                    ),
                }  # fmt: skip
            one.close()
            over_one.close()
    finally:
        alone.stop()
        single.stop()
    rows = []
    for name, times in runs.items():
        r = row(name, times, recalls.get(name))
        if name in cpu:
            r["cpu_us"] = cpu[name][0] * 1e6
            r["node_cpu_us"] = sum(cpu[name][1:]) * 1e6
            print(f"    CPU per search: {r['cpu_us']:.0f} us" + (
                f" + {r['node_cpu_us']:.0f} us in its node(s)" if len(cpu[name]) > 1 else ""))  # fmt: skip
        rows.append(r)
    return rows


def fanout(root: Path, data: Dataset, bodies: list[bytes], truth: np.ndarray, kind: str, repeat: int,
           shard_counts: list[int], hedge_ms: float, timeout: float) -> list[dict]:  # fmt: skip
    """Per shard count: 2 replicas per shard, a plain and a hedging router over them, measured in turn."""
    rows = []
    for shards in shard_counts:
        routers = {"plain": {}, "hedged": {"ANNSERVE_HEDGE_AFTER_MS": str(hedge_ms)}}
        with LocalCluster(root / f"fan-{shards}", (2,) * shards, routers=routers) as cluster:
            cluster.start()
            prepare(cluster.client("plain"), cluster.routers["plain"].url, data, kind, timeout)
            clients = {name: cluster.client(name) for name in routers}
            runs = interleaved(clients, bodies, repeat)
            for name, label in (("plain", "no hedging"), ("hedged", f"hedge after {hedge_ms:g} ms")):
                client = clients[name]
                hedges = sum(
                    float(line.rsplit(" ", 1)[1]) for line in client.get("/metrics").text.splitlines()
                    if line.startswith("annserve_router_hedges_total{")
                )  # fmt: skip
                recall = search_recall(client, NAME, data.queries, truth, {})
                r = row(f"{shards} shards x 2 replicas, {label}", runs[name], recall)
                rows.append({**r, "shards": shards, "hedging": name == "hedged", "hedges": int(hedges)})
    return rows


def row(what: str, runs: np.ndarray, recall: float | None) -> dict:
    out = {"what": what, "p50_ms": pct_ms(runs, 50), "p99_ms": pct_ms(runs, 99), "searches": len(runs),
           "recall_at_10": recall}  # fmt: skip
    print(f"  {what}: p50 {out['p50_ms']:.2f} ms, p99 {out['p99_ms']:.2f} ms")
    return out


def plot(rows: list[dict], over: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [r["what"].replace(" (its third)", "") for r in over]
    left.barh(labels, [r["p50_ms"] for r in over], label="p50")
    left.barh(labels, [r["p99_ms"] - r["p50_ms"] for r in over], left=[r["p50_ms"] for r in over], alpha=0.4,
              label="p99")  # fmt: skip
    left.invert_yaxis()
    left.set_xlabel("latency of one search (ms)")
    left.set_title("router overhead")
    left.legend()
    for hedging, style in ((False, "-o"), (True, "--s")):
        part = [r for r in rows if r["hedging"] == hedging]
        name = "hedged" if hedging else "no hedging"
        right.plot([r["shards"] for r in part], [r["p50_ms"] for r in part], style, label=f"p50, {name}")
        right.plot([r["shards"] for r in part], [r["p99_ms"] for r in part], style, alpha=0.5, label=f"p99, {name}")
    right.set_xscale("log", base=2)
    right.set_xlabel("shards (2 replicas each)")
    right.set_ylabel("latency (ms)")
    right.set_title("fan-out through the router")
    right.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bench_cluster(
    n: int = typer.Option(20_000, help="base rows (GloVe 50d when installed, else synthetic)"),
    queries: int = typer.Option(200, help="distinct queries; each timed --repeat times"),
    repeat: int = typer.Option(3, help="passes over the queries per configuration"),
    shards: str = typer.Option("1,2,4,8", help="shard counts of the fan-out sweep"),
    hedge_ms: float = typer.Option(2.0, help="ANNSERVE_HEDGE_AFTER_MS of the hedging routers"),
    kind: str = typer.Option("hnswlib", help="index kind of the collection"),
    out: Path = typer.Option(OUT, help="directory for bench_cluster.{png,csv,md}"),
    rebuild_timeout: float = typer.Option(900.0, help="seconds a rebuild may take"),
    workdir: Optional[Path] = typer.Option(None, help="data directories (default: a temporary one)"),
) -> None:
    """Router overhead over 3 nodes, and p50/p99 through 1..8 shards with and without hedging."""
    counts = [int(s) for s in shards.split(",") if s.strip()]
    data, described = load(n, queries)
    truth, _ = brute_force_knn(data.base, data.queries, K, data.metric)
    bodies = search_bodies(data.queries, K, {})
    load_avg = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        print(f"{described}; {kind}; {repeat} x {queries} single searches per configuration")
        print("router overhead:")
        over = overhead(root, data, bodies, truth, kind, repeat, rebuild_timeout)
        print("fan-out:")
        rows = fanout(root, data, bodies, truth, kind, repeat, counts, hedge_ms, rebuild_timeout)
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count()
    title = f"{described}; {kind}; {cores} cores, load avg {load_avg:.1f} at start, {os.getloadavg()[0]:.1f} at end"
    plot(rows, over, out / "bench_cluster.png", title)
    with open(out / "bench_cluster.csv", "w", newline="") as f:
        fields = ["what", "shards", "hedging", "hedges", "p50_ms", "p99_ms", "cpu_us", "node_cpu_us", "searches",
                  "recall_at_10"]
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for r in [*over, *rows]:
            writer.writerow({key: r.get(key) for key in writer.fieldnames})
    by = {r["what"]: r for r in over}
    one, via_one = by["one node, all data"], by["router over that one node"]
    via_three, node0 = by["router over 3 nodes"], by["shard node 0 directly (a third)"]
    lines = [
        f"# annserve bench-cluster ({time.strftime('%Y-%m-%d')})", "", title, "",
        "| configuration | p50 ms | p99 ms | recall@10 |", "|---|---:|---:|---:|",
        *[f"| {r['what']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
          f"{'' if r['recall_at_10'] is None else format(r['recall_at_10'], '.3f')} |" for r in [*over, *rows]],
        "", f"Router overhead (router over one node vs that node): p50 {via_one['p50_ms'] - one['p50_ms']:+.2f} ms; "
        f"router over 3 nodes vs one node holding all the data: {via_three['p50_ms'] - one['p50_ms']:+.2f} ms, vs "
        f"a shard node asked directly: {via_three['p50_ms'] - node0['p50_ms']:+.2f} ms (target: at most +1 ms).",
        f"CPU per search: one node {one['cpu_us']:.0f} us; router over it {via_one['cpu_us']:.0f} us (+ "
        f"{via_one['node_cpu_us']:.0f} us in the node); router over 3 nodes {via_three['cpu_us']:.0f} us (+ "
        f"{via_three['node_cpu_us']:.0f} us in its nodes together).",
        "Configurations were measured in turn, query by query, on the same machine at the same time.",
    ]  # fmt: skip
    (out / "bench_cluster.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'bench_cluster.png'}, .csv, .md")
