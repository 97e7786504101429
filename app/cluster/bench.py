"""`annserve bench-cluster`: what the router costs and how the fan-out scales, on loopback.

1. Overhead: the same single searches (one client, one keep-alive connection, JSON vectors)
   against one node holding all the data, against each of 3 shard nodes directly, and through a
   router over those 3 nodes. Target: the router's p50 at most 1 ms above the single node's.
2. Fan-out: p50/p99 through a router over 1, 2, 4 and 8 shards of 2 replicas each, with hedging
   off and on (`--hedge-ms`), the same data split over more shards.

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


def timed(client: httpx.Client, bodies: list[bytes], repeat: int) -> np.ndarray:
    latencies(client, NAME, bodies[: max(len(bodies) // 10, 1)])  # warm: connections, caches
    runs, failures = latencies(client, NAME, bodies * repeat)
    if failures:
        raise RuntimeError(f"{failures} of {len(runs)} searches failed")
    return runs


def overhead(root: Path, data: Dataset, bodies: list[bytes], truth: np.ndarray, kind: str, repeat: int,
             timeout: float) -> list[dict]:  # fmt: skip
    rows = []
    single = ServeProcess(root / "single", root / "single.log")
    try:
        client = single.start(timeout=180)
        prepare(client, single.url, data, kind, timeout)
        rows.append(row("one node, all data", timed(client, bodies, repeat), search_recall(client, NAME, data.queries, truth, {})))
        client.close()
    finally:
        single.stop()
    with LocalCluster(root / "three", (1, 1, 1)) as cluster:
        cluster.start()
        router = cluster.client()
        prepare(router, cluster.routers["router"].url, data, kind, timeout)
        rows.append(row("router over 3 nodes", timed(router, bodies, repeat), search_recall(router, NAME, data.queries, truth, {})))
        for i, node in enumerate(cluster.all_nodes):
            with httpx.Client(base_url=node.url, timeout=30) as direct:
                rows.append(row(f"shard node {i} directly (its third)", timed(direct, bodies, repeat), None))
    return rows


def fanout(root: Path, data: Dataset, bodies: list[bytes], truth: np.ndarray, kind: str, repeat: int,
           shard_counts: list[int], hedge_ms: float, timeout: float) -> list[dict]:  # fmt: skip
    rows = []
    for shards in shard_counts:
        routers = {"plain": {}, "hedged": {"ANNSERVE_HEDGE_AFTER_MS": str(hedge_ms)}}
        with LocalCluster(root / f"fan-{shards}", (2,) * shards, routers=routers) as cluster:
            cluster.start()
            prepare(cluster.client("plain"), cluster.routers["plain"].url, data, kind, timeout)
            for name, label in (("plain", "no hedging"), ("hedged", f"hedge after {hedge_ms:g} ms")):
                client = cluster.client(name)
                runs = timed(client, bodies, repeat)
                hedges = sum(
                    float(line.rsplit(" ", 1)[1]) for line in client.get("/metrics").text.splitlines()
                    if line.startswith("annserve_router_hedges_total{")
                )  # fmt: skip
                r = row(f"{shards} shards x 2 replicas, {label}", runs, search_recall(client, NAME, data.queries, truth, {}))
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
        writer = csv.DictWriter(f, ["what", "shards", "hedging", "hedges", "p50_ms", "p99_ms", "searches", "recall_at_10"])
        writer.writeheader()
        for r in [*over, *rows]:
            writer.writerow({key: r.get(key) for key in writer.fieldnames})
    added = over[1]["p50_ms"] - over[0]["p50_ms"]
    lines = [
        f"# annserve bench-cluster ({time.strftime('%Y-%m-%d')})", "", title, "",
        "| configuration | p50 ms | p99 ms | recall@10 |", "|---|---:|---:|---:|",
        *[f"| {r['what']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
          f"{'' if r['recall_at_10'] is None else format(r['recall_at_10'], '.3f')} |" for r in [*over, *rows]],
        "", f"Router over 3 nodes vs one node holding all the data: p50 {added:+.2f} ms (target: at most +1 ms).",
    ]  # fmt: skip
    (out / "bench_cluster.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'bench_cluster.png'}, .csv, .md")
