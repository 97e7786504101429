"""`annserve bench-scaling`: how the service scales with the data (issue 11).

For each size in `--sizes` (default 50,000, 200,000 and 399,000 rows of GloVe 6B 50d, cosine:
all 400,000 but the 1,000 held-out queries), a fresh `annserve serve` (one worker, its own data
directory):

- ingest over HTTP (base64 batches), then one rebuild of main (hnswlib), timed
- the smallest ef reaching recall@10 >= `--target-recall` against exact ground truth
- wrk at 1 connection (p50) and at `--connections` (searches/s, server CPU per search, /proc)
- the server's RSS (/proc/PID/status VmRSS) above its RSS when just started (the interpreter and
  its libraries, the same at every size), the engine's index memory (/metrics
  `annserve_index_memory_bytes`, main + fresh + payload) and the stored vectors (n x dim x 4):
  RSS per item and its ratio to (index + vectors) per item, the target being <= 1.3x
- then the server is stopped and started again on the same data: the seconds until it answers a
  search with k hits from its loaded main, and its RSS then (main loaded, not built)

Output: a table on stdout, `scaling.csv` and `scaling.png` (RSS per item and p50 against size)
in `--out`. The pure parts (size list, ratios, table) are here, tested in tests/test_scaling.py.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

import httpx
import typer
from prometheus_client.parser import text_string_to_metric_families

from .datasets import Dataset, ground_truth, load_dataset
from .http import (
    EF_LADDER, K, REQUEST_TIMEOUT, failure, ingest, rebuild_and_wait, search_bodies_b64, search_recall, wrk,
)  # fmt: skip
from .server_process import ServeProcess

DEFAULT_SIZES = "50000,200000,399000"  # GloVe 400K less the 1000 held-out queries
RSS_TARGET_RATIO = 1.3
COLLECTION = "scaling"
RESTART_TIMEOUT = 600.0  # seconds a restart may take to answer a search


@dataclass
class SizeResult:
    """One size's figures; bytes are bytes, times seconds, latencies ms."""

    n: int
    dim: int
    build_s: float
    ef: int
    recall: float
    p50_ms: float
    rps: float
    cpu_per_search_us: float
    rss_bytes: int  # after ingest, the rebuild and the searches
    empty_rss_bytes: int  # the same server just started, before any collection
    restart_rss_bytes: int  # after the restart and its first search: main loaded, never built here
    rss_file_bytes: int  # of rss_bytes, pages mapped from files (libraries, SQLite): RssFile
    index_bytes: int
    vector_bytes: int
    restart_s: float

    @property
    def rss_per_item(self) -> float:
        """What the data costs in RSS per item: the server's RSS above its empty self (the
        interpreter, numpy, FAISS, numba: ~235 MiB whatever the size)."""
        return (self.rss_bytes - self.empty_rss_bytes) / self.n

    @property
    def restart_rss_per_item(self) -> float:
        return (self.restart_rss_bytes - self.empty_rss_bytes) / self.n

    @property
    def expected_per_item(self) -> float:
        """What an item must cost: its share of the index plus its stored float32 vector."""
        return (self.index_bytes + self.vector_bytes) / self.n

    @property
    def ratio(self) -> float:
        return self.rss_per_item / self.expected_per_item


def parse_sizes(text: str) -> list[int]:
    """'50000,200000' -> [50000, 200000]: positive whole numbers, ascending, no repeats
    ('50K' and '_' separators are accepted: '50_000', '50k'). ValueError saying what came."""
    sizes = []
    for token in (t.strip().lower().replace("_", "") for t in text.split(",")):
        if not token:
            continue
        scale = 1000 if token.endswith("k") else 1
        digits = token[:-1] if scale > 1 else token
        if not digits.isdigit() or int(digits) * scale < 1:
            raise ValueError(f"--sizes: expected positive whole numbers like 50000 or 50k, got {token!r}")
        sizes.append(int(digits) * scale)
    if not sizes:
        raise ValueError(f"--sizes: expected a comma list of sizes, got {text!r}")
    if sorted(set(sizes)) != sizes:
        raise ValueError(f"--sizes: expected ascending sizes without repeats, got {text!r}")
    return sizes


def vector_bytes(n: int, dim: int) -> int:
    """The stored vectors' size: float32."""
    return n * dim * 4


def table(results: list[SizeResult]) -> list[str]:
    """The report's lines, one row per size."""
    head = (f"{'items':>9} {'build s':>8} {'ef':>4} {'recall':>6} {'p50 ms':>7} {'search/s':>9} "
            f"{'CPU us':>7} {'RSS MiB':>8} {'empty MiB':>9} {'index MiB':>9} {'vec MiB':>8} {'RSS B/item':>10} "
            f"{'(idx+vec) B/item':>16} {'ratio':>7} {'restart s':>9} {'after restart B/item':>20}")  # fmt: skip
    lines = [head]
    for r in results:
        mark = "" if r.ratio <= RSS_TARGET_RATIO else " !"
        lines.append(
            f"{r.n:>9,} {r.build_s:>8.1f} {r.ef:>4} {r.recall:>6.3f} {r.p50_ms:>7.2f} {r.rps:>9,.0f} "
            f"{r.cpu_per_search_us:>7.0f} {r.rss_bytes / 2**20:>8.1f} {r.empty_rss_bytes / 2**20:>9.1f} "
            f"{r.index_bytes / 2**20:>9.1f} {r.vector_bytes / 2**20:>8.1f} {r.rss_per_item:>10.0f} "
            f"{r.expected_per_item:>16.0f} {r.ratio:>5.2f}x{mark:2} {r.restart_s:>9.2f} "
            f"{r.restart_rss_per_item:>20.0f}"
        )
    return lines


def marginal_lines(results: list[SizeResult]) -> list[str]:
    """Between consecutive sizes, what each added item cost in RSS against what its index share
    and vector should (a constant overhead, whatever the size, cancels out here)."""
    lines = []
    for small, big in zip(results, results[1:]):
        items = big.n - small.n
        rss = (big.rss_bytes - small.rss_bytes) / items
        expected = (big.index_bytes + big.vector_bytes - small.index_bytes - small.vector_bytes) / items
        restart = (big.restart_rss_bytes - small.restart_rss_bytes) / items
        lines.append(f"{small.n:,} -> {big.n:,}: each added item {rss:,.0f} B of RSS ({restart:,.0f} B after a "
                     f"restart) against {expected:,.0f} B of index + vector: {rss / expected:.2f}x")  # fmt: skip
    return lines


def write_csv(results: list[SizeResult], path: Path) -> None:
    names = [f.name for f in fields(SizeResult)]
    names += ["rss_per_item", "restart_rss_per_item", "expected_per_item", "ratio"]
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(names)
        for r in results:
            out.writerow([*asdict(r).values(), f"{r.rss_per_item:.1f}", f"{r.restart_rss_per_item:.1f}",
                          f"{r.expected_per_item:.1f}", f"{r.ratio:.3f}"])  # fmt: skip


def plot(results: list[SizeResult], path: Path, title: str) -> None:
    """RSS per item (with index + vectors per item) and p50 against size, side by side."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    n = [r.n for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(n, [r.rss_per_item for r in results], "o-", label="(RSS - empty server's) / item")
    left.plot(n, [r.restart_rss_per_item for r in results], "^-", label="the same after a restart")
    left.plot(n, [r.expected_per_item for r in results], "s--", label="(index + vectors) / item")
    left.plot(n, [RSS_TARGET_RATIO * r.expected_per_item for r in results], ":", label=f"{RSS_TARGET_RATIO}x target")
    left.set(xlabel="items", ylabel="bytes per item", title="memory per item")
    left.set_ylim(bottom=0)
    left.legend()
    right.plot(n, [r.p50_ms for r in results], "o-", label="p50, 1 connection (wrk)")
    right.set(xlabel="items", ylabel="ms", title="search latency at recall@10 target")
    right.set_ylim(bottom=0)
    right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- measurements against a real server -----------------------------------------------------


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """Resident set size of process `pid` (VmRSS in /proc/PID/status; or RssAnon, RssFile)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no {field} line")


def index_memory(client: httpx.Client, name: str) -> int:
    """The engine's index memory of collection `name`: every shard's main, fresh and payload."""
    text = client.get("/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "annserve_index_memory_bytes":
            total += sum(s.value for s in family.samples if s.labels.get("collection") == name)
    return int(total)


def answers_search(client: httpx.Client, body: bytes) -> bool:
    try:
        r = client.post(f"/collections/{COLLECTION}/search", content=body)
    except httpx.TransportError:
        return False
    return r.status_code == 200 and len(r.json()["results"]) == K


def restart_seconds(server: ServeProcess, body: bytes) -> tuple[float, int]:
    """Stop the server, start it on the same data, and time until it answers `body` with k hits
    (its /readyz first, then the search itself, as a client would see it): (seconds, its RSS
    then)."""
    server.stop()
    t0 = time.perf_counter()
    client = server.start(timeout=RESTART_TIMEOUT, request_timeout=REQUEST_TIMEOUT)
    try:
        while not answers_search(client, body):
            if time.perf_counter() - t0 > RESTART_TIMEOUT:
                raise RuntimeError(f"the restarted server answered no search within {RESTART_TIMEOUT:.0f}s")
            time.sleep(0.01)
        return time.perf_counter() - t0, rss_bytes(server.proc.pid)
    finally:
        client.close()


def measure_size(
    data: Dataset, n: int, workdir: Path, wrk_exe: str, connections: int, seconds: int,
    target_recall: float, rebuild_timeout: float,
) -> SizeResult:  # fmt: skip
    """One size end to end on a fresh server of its own; the server is always stopped."""
    base = data.base[:n]
    head = Dataset(data.name, data.metric, base, data.queries, f"{data.key}-head{n}")
    truth = ground_truth(head, K)
    here = workdir / f"n{n}"
    shutil.rmtree(here, ignore_errors=True)
    # No automatic rebuild during ingest: the one rebuild is measured on its own.
    server = ServeProcess(here / "data", here / "server.log", {"ANNSERVE_FRESH_LIMIT": str(10 * n)})
    try:
        client = server.start(request_timeout=REQUEST_TIMEOUT)
        empty_rss = rss_bytes(server.proc.pid)
        try:
            body = {"name": COLLECTION, "dim": data.dim, "metric": data.metric, "index": {"kind": "hnswlib"}}
            client.post("/collections", json=body).raise_for_status()
            rate = ingest(server.url, COLLECTION, [str(i) for i in range(n)], base, True, 2)
            t = time.perf_counter()
            rebuild_and_wait(client, COLLECTION, rebuild_timeout)
            build_s = time.perf_counter() - t
            print(f"  {n:,}: ingest {rate:,.0f} vec/s (base64), rebuild {build_s:.1f}s")
            for ef in EF_LADDER:
                recall = search_recall(client, COLLECTION, data.queries, truth, {"ef": ef})
                if recall >= target_recall:
                    break
            print(f"  {n:,}: ef {ef}, recall@{K} {recall:.3f}")
            bodies = search_bodies_b64(data.queries, K, {"ef": ef})
            url = f"{server.url}/collections/{COLLECTION}/search"
            one = wrk(wrk_exe, url, bodies, here, 1, seconds)
            cpu = server.cpu_seconds()
            many = wrk(wrk_exe, url, bodies, here, connections, seconds)
            cpu_per = (server.cpu_seconds() - cpu) / max(many["requests"], 1)
            if one["failures"] or many["failures"]:
                raise RuntimeError(
                    f"wrk saw failures: {one['failures']} at 1 conn, {many['failures']} at {connections}"
                )
            rss, index = rss_bytes(server.proc.pid), index_memory(client, COLLECTION)
            rss_file = rss_bytes(server.proc.pid, "RssFile")
        finally:
            client.close()
        restart, restart_rss = restart_seconds(server, bodies[0])
    finally:
        server.stop()
    shutil.rmtree(here, ignore_errors=True)
    result = SizeResult(n, data.dim, build_s, ef, recall, one["p50_ms"], many["rps"], cpu_per * 1e6,
                        rss, empty_rss, restart_rss, rss_file, index, vector_bytes(n, data.dim), restart)  # fmt: skip
    print(f"  {n:,}: " + table([result])[1].strip())
    return result


def bench_scaling(
    sizes: str = typer.Option(DEFAULT_SIZES, help="comma list of collection sizes (first rows of the set)"),
    dataset: str = typer.Option("glove", help="'glove', or a .npy file (then --metric)"),
    metric: Optional[str] = typer.Option(None, help="cosine, ip or l2 (default: the dataset's own)"),
    queries: int = typer.Option(1000, min=1, help="queries held out of the set, seeded"),
    connections: int = typer.Option(16, min=1, help="connections of the throughput run"),
    seconds: int = typer.Option(10, min=1, help="length of each wrk run"),
    target_recall: float = typer.Option(0.95, help="pick the smallest ef reaching this recall@10"),
    rebuild_timeout: float = typer.Option(1800, min=1, help="seconds a rebuild may take, then the run fails"),
    out: Path = typer.Option(Path("bench-results"), help="where scaling.csv and scaling.png go"),
) -> None:
    """p50, throughput, RSS per item and restart time at each size, one fresh server per size."""
    load_before = f"{os.getloadavg()[0]:.1f}"
    wrk_exe = shutil.which("wrk")
    try:
        if wrk_exe is None:
            raise ValueError("wrk is not installed (apt-get install wrk)")
        chosen = parse_sizes(sizes)
        data = load_dataset(dataset, metric, queries, limit=chosen[-1])
        if data.base.shape[0] < chosen[-1]:
            raise ValueError(f"--sizes: {dataset} has {data.base.shape[0]:,} base rows after the "
                             f"{queries} held-out queries, fewer than {chosen[-1]:,}")  # fmt: skip
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    workdir = Path(tempfile.mkdtemp(prefix="annserve-bench-scaling-"))
    results = []
    try:
        for n in chosen:
            results.append(measure_size(data, n, workdir, wrk_exe, connections, seconds, target_recall,
                                        rebuild_timeout))  # fmt: skip
    except (RuntimeError, httpx.HTTPError, subprocess.SubprocessError) as exc:
        print(f"error: {failure(exc)}; the server's log is kept under {workdir}", file=sys.stderr)
        raise typer.Exit(1) from None
    shutil.rmtree(workdir, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    title = f"annserve bench-scaling: {data.name} {data.dim}-d {data.metric}, hnswlib, 1 worker"
    print(f"\n{title}; recall@{K} >= {target_recall}; {connections} conns for search/s")
    print(f"machine: {os.cpu_count()} CPUs, load average {load_before} before, {os.getloadavg()[0]:.1f} after")
    for line in table(results) + marginal_lines(results):
        print(line)
    write_csv(results, out / "scaling.csv")
    plot(results, out / "scaling.png", title)
    print(f"wrote {out / 'scaling.csv'} and {out / 'scaling.png'}")
