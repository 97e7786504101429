"""`annserve bench-load`: a bounded mixed-traffic load test of the real service over loopback.

`--clients` closed-loop clients (each waits for its answer before sending the next request: the
load is bounded by the client count, never by a queue that grows) send, for `--duration`
seconds, a mix of single searches, batch searches, upserts (replacing base items and adding
churn items), deletes (of the client's own churn items, so the collection's size stays bounded)
and gets; in the middle a rebuild runs. Keys are on (the admin key for writes, the read key for
reads), so the key check is in every request's cost.

It reports, and writes to `--out`:
- errors: every answer that is not the expected 2xx, and every transport failure (the target is 0);
- the server's RSS, sampled every second from /proc, and its slope after the warm-up (MiB/min):
  a leak shows as a slope that does not flatten;
- latency percentiles (p50, p95, p99) per operation over time, as `load_latency.png`
  (matplotlib), with the rebuild marked, and `load_summary.json`.

Synthetic clustered unit vectors (app/bench/datasets.synthetic_clusters), cosine, hnswlib.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import httpx
import numpy as np
import typer

from .datasets import synthetic_clusters
from .server_process import ServeProcess

ADMIN_KEY = "bench-load-admin"
READ_KEY = "bench-load-read"
# Share of each operation in the mix (the rest of a client's choices).
MIX = (("search", 0.55), ("batch", 0.10), ("get", 0.12), ("upsert", 0.15), ("delete", 0.08))
UPSERT_ITEMS = 20  # items per upsert request
BATCH_QUERIES = 16  # queries per batch search
CHURN_CAP = 400  # churn items one client keeps before its writes turn to deletes
WINDOW_SECONDS = 5.0  # latency percentiles are computed per window of this length
# The RSS slope ignores the warm-up: the first 20% of the run, and at least everything up to the
# end of the rebuild midway (caches, thread arenas, and the step of holding two mains while the
# new one is built all come before it; a leak keeps growing after it).
WARMUP_SHARE = 0.2


@dataclass
class Record:
    op: str
    start: float  # seconds since the run began
    seconds: float
    ok: bool


@dataclass
class Result:
    duration: float
    clients: int
    requests: int
    errors: list[str]
    per_op: dict[str, dict[str, float]]
    rss_mib: list[tuple[float, float]]  # (t, MiB)
    rss_slope_mib_per_min: float
    rebuild: tuple[float, float] | None  # (start, end) seconds since the run began
    windows: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "duration_seconds": self.duration,
            "clients": self.clients,
            "requests": self.requests,
            "requests_per_second": round(self.requests / self.duration, 1),
            "errors": len(self.errors),
            "first_errors": self.errors[:10],
            "per_op": self.per_op,
            "rss_mib_first": self.rss_mib[0][1] if self.rss_mib else None,
            "rss_mib_last": self.rss_mib[-1][1] if self.rss_mib else None,
            "rss_mib_max": max(m for _, m in self.rss_mib) if self.rss_mib else None,
            "rss_slope_mib_per_min_after_warmup": round(self.rss_slope_mib_per_min, 3),
            "rebuild_seconds": list(self.rebuild) if self.rebuild else None,
            "windows": self.windows,
        }


def rss_mib(pid: int) -> float:
    """Resident set size of process `pid` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def warmup_share(duration: float, rebuild: tuple[float, float] | None) -> float:
    """The share of the run the RSS slope skips: WARMUP_SHARE, or up to the rebuild's end."""
    if rebuild is None or duration <= 0:
        return WARMUP_SHARE
    return min(max(WARMUP_SHARE, rebuild[1] / duration), 0.8)


def slope_per_minute(samples: list[tuple[float, float]], skip_share: float) -> float:
    """Least-squares slope (units per minute) of (t seconds, value) samples after the first
    `skip_share` of the run; 0.0 with fewer than 3 samples left."""
    if not samples:
        return 0.0
    cut = samples[-1][0] * skip_share
    kept = [(t, v) for t, v in samples if t >= cut]
    if len(kept) < 3:
        return 0.0
    t, v = np.array(kept).T
    return float(np.polyfit(t, v, 1)[0] * 60.0)


def percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    p50, p95, p99 = np.percentile(np.array(seconds) * 1e3, [50, 95, 99])
    return {
        "n": len(seconds),
        "p50_ms": round(float(p50), 3),
        "p95_ms": round(float(p95), 3),
        "p99_ms": round(float(p99), 3),
        "max_ms": round(max(seconds) * 1e3, 3),
    }


class Load:
    """The traffic of one run against the server at `url`."""

    def __init__(self, url: str, n: int, dim: int, clients: int, duration: float, seed: int = 0) -> None:
        self.url, self.n, self.dim, self.clients, self.duration = url, n, dim, clients, duration
        data = synthetic_clusters(n, 1000, dim, seed)
        self.base, self.queries = data.base, data.queries
        self.records: list[Record] = []
        self.errors: list[str] = []
        self.rebuild: tuple[float, float] | None = None
        self.t0 = 0.0

    async def setup(self) -> None:
        """Create collection `load` (hnswlib, cosine) and fill it with the base items, then build."""
        async with self._client(ADMIN_KEY) as c:
            await c.delete("/collections/load")
            body = {"name": "load", "dim": self.dim, "metric": "cosine", "index": {"kind": "hnswlib"}}
            _expect(await c.post("/collections", json=body), 201)
            for lo in range(0, self.n, 1000):
                items = [
                    {"id": f"b{i}", "vector": self.base[i].tolist(), "payload": {"i": i}}
                    for i in range(lo, min(lo + 1000, self.n))
                ]
                _expect(await c.post("/collections/load/vectors", json={"items": items}), 200)
            job = (await c.post("/collections/load/rebuild", json={})).json()["job_id"]
            await _wait_job(c, job, 600)

    def _client(self, key: str) -> httpx.AsyncClient:
        # Idle connections are dropped after 2 s, before the server's keep-alive timeout (uvicorn:
        # 5 s, httpx's default expiry too): reusing one the server is closing at that moment
        # fails the request (a ReadError) without the service being at fault.
        limits = httpx.Limits(
            max_connections=self.clients + 2, max_keepalive_connections=self.clients + 2, keepalive_expiry=2.0
        )
        return httpx.AsyncClient(base_url=self.url, headers={"X-API-Key": key}, timeout=60.0, limits=limits)

    async def run(self) -> None:
        self.t0 = time.monotonic()
        async with self._client(READ_KEY) as reader, self._client(ADMIN_KEY) as writer:
            tasks = [asyncio.create_task(self._worker(w, reader, writer)) for w in range(self.clients)]
            tasks.append(asyncio.create_task(self._rebuild_midway(writer)))
            await asyncio.gather(*tasks)

    def _elapsed(self) -> float:
        return time.monotonic() - self.t0

    async def _worker(self, w: int, reader: httpx.AsyncClient, writer: httpx.AsyncClient) -> None:
        rng = random.Random(w)
        churn: list[str] = []
        serial = 0
        ops, weights = zip(*MIX)
        while self._elapsed() < self.duration:
            op = rng.choices(ops, weights)[0]
            if op == "upsert" and len(churn) >= CHURN_CAP:
                op = "delete"
            if op == "delete" and not churn:
                op = "upsert"
            q = self.queries[rng.randrange(len(self.queries))]
            if op == "search":
                call = reader.post("/collections/load/search", json={"vector": q.tolist(), "k": 10})
                check = _has_results
            elif op == "batch":
                rows = rng.sample(range(len(self.queries)), BATCH_QUERIES)
                call = reader.post(
                    "/collections/load/search/batch", json={"vectors": self.queries[rows].tolist(), "k": 10}
                )
                check = _has_results
            elif op == "get":
                call = reader.get(f"/collections/load/vectors/b{rng.randrange(self.n)}")
                check = None
            elif op == "upsert":
                items = []
                for j in range(UPSERT_ITEMS):
                    if j % 2:  # replace a base item with itself, nudged: its id stays live
                        i = rng.randrange(self.n)
                        vector = self.base[i] + 0.01 * np.float32(rng.random())
                        items.append({"id": f"b{i}", "vector": vector.tolist(), "payload": {"i": i, "w": w}})
                    else:
                        item_id = f"c{w}-{serial}"
                        serial += 1
                        churn.append(item_id)
                        items.append({"id": item_id, "vector": q.tolist(), "payload": {"w": w}})
                call = writer.post("/collections/load/vectors", json={"items": items})
                check = None
            else:
                doomed, churn[:] = churn[:UPSERT_ITEMS], churn[UPSERT_ITEMS:]
                call = writer.post("/collections/load/vectors/delete", json={"ids": doomed})
                check = None
            await self._timed(op, call, check)

    async def _timed(self, op: str, call: Any, check: Any) -> None:
        start = self._elapsed()
        ok = False
        try:
            response = await call
            ok = response.status_code // 100 == 2 and (check is None or check(response))
            if not ok:
                self.errors.append(f"{op} at {start:.1f}s: {response.status_code} {response.text[:200]}")
        except httpx.HTTPError as exc:
            self.errors.append(f"{op} at {start:.1f}s: {type(exc).__name__}: {exc}")
        self.records.append(Record(op, start, self._elapsed() - start, ok))

    async def _rebuild_midway(self, writer: httpx.AsyncClient) -> None:
        await asyncio.sleep(self.duration / 2)
        start = self._elapsed()
        response = await writer.post("/collections/load/rebuild", json={})
        while response.status_code == 409 and self._elapsed() < self.duration:
            await asyncio.sleep(1.0)  # an automatic rebuild runs (fresh outgrew its limit): next
            start = self._elapsed()
            response = await writer.post("/collections/load/rebuild", json={})
        if response.status_code == 409:
            return
        if response.status_code != 202:
            self.errors.append(f"rebuild: {response.status_code} {response.text[:200]}")
            return
        try:
            await _wait_job(writer, response.json()["job_id"], max(self.duration, 60))
        except RuntimeError as exc:
            self.errors.append(f"rebuild: {exc}")
        self.rebuild = (start, self._elapsed())

    def windows(self) -> list[dict[str, Any]]:
        by_window: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in self.records:
            by_window[int(r.start // WINDOW_SECONDS)][r.op].append(r.seconds)
        out = []
        for w in sorted(by_window):
            row: dict[str, Any] = {"t": w * WINDOW_SECONDS}
            for op, secs in by_window[w].items():
                row[op] = percentiles(secs)
            out.append(row)
        return out


def _has_results(response: httpx.Response) -> bool:
    """Every query got hits (the collection is never empty)."""
    results = response.json()["results"]
    return bool(results) and (all(results) if isinstance(results[0], list) else True)


def _expect(response: httpx.Response, status: int) -> None:
    if response.status_code != status:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path}: expected {status}, "
            f"got {response.status_code} {response.text[:300]}"
        )


async def _wait_job(client: httpx.AsyncClient, job_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        job = (await client.get(f"/jobs/{job_id}")).json()
        if job["state"] == "succeeded":
            return
        if job["state"] == "failed":
            raise RuntimeError(f"job {job_id} failed: {job['error']}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} still {job['state']} after {timeout:.0f}s")
        await asyncio.sleep(0.2)


async def _sample_rss(pid: int, t0: float, until: float, out: list[tuple[float, float]]) -> None:
    while time.monotonic() - t0 < until:
        out.append((time.monotonic() - t0, rss_mib(pid)))
        await asyncio.sleep(1.0)


def run_load(
    workdir: Path, duration: float, clients: int = 32, n: int = 20_000, dim: int = 64, seed: int = 0
) -> Result:
    """Start a server in `workdir`, load it for `duration` s, stop it; the figures."""
    env = {"ANNSERVE_ADMIN_API_KEY": ADMIN_KEY, "ANNSERVE_API_KEY": READ_KEY, "ANNSERVE_LOG_LEVEL": "warning"}
    server = ServeProcess(workdir / "data", workdir / "server.log", env)
    client = server.start()
    client.close()
    try:
        load = Load(server.url, n, dim, clients, duration, seed)
        rss: list[tuple[float, float]] = []

        async def main() -> None:
            await load.setup()
            run = asyncio.create_task(load.run())
            await asyncio.sleep(0)
            await _sample_rss(server.proc.pid, time.monotonic(), duration, rss)
            await run

        asyncio.run(main())
    finally:
        server.stop()
    per_op = {op: percentiles([r.seconds for r in load.records if r.op == op]) for op, _ in MIX}
    return Result(
        duration,
        clients,
        len(load.records),
        load.errors,
        per_op,
        rss,
        slope_per_minute(rss, warmup_share(duration, load.rebuild)),
        load.rebuild,
        load.windows(),
    )


def plot(result: Result, path: Path) -> None:
    """Latency percentiles per operation over time, and RSS over time, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, mem) = plt.subplots(2, 1, figsize=(11, 8), sharex=True, height_ratios=(3, 1))
    styles = {"p50_ms": ":", "p95_ms": "--", "p99_ms": "-"}
    for op, colour in zip(("search", "batch", "get", "upsert", "delete"), plt.cm.tab10.colors):
        for stat, style in styles.items():
            points = [(w["t"], w[op][stat]) for w in result.windows if op in w]
            if points:
                t, v = zip(*points)
                lat.plot(
                    t,
                    v,
                    style,
                    color=colour,
                    label=f"{op} {stat[:3]}" if stat == "p99_ms" or op == "search" else None,
                )
    lat.set_yscale("log")
    lat.set_ylabel(f"latency, ms (per {WINDOW_SECONDS:.0f} s window)")
    lat.set_title(
        f"annserve bench-load: {result.clients} clients, {result.duration:.0f} s, "
        f"{result.requests} requests, {len(result.errors)} errors"
    )
    if result.rebuild:
        for ax in (lat, mem):
            ax.axvspan(*result.rebuild, color="grey", alpha=0.2, label="rebuild" if ax is lat else None)
    lat.legend(ncol=3, fontsize=8)
    lat.grid(True, which="both", alpha=0.3)
    if result.rss_mib:
        t, m = zip(*result.rss_mib)
        mem.plot(t, m, color="black")
    mem.set_ylabel("server RSS, MiB")
    mem.set_xlabel("seconds")
    mem.set_title(f"RSS slope after warm-up: {result.rss_slope_mib_per_min:+.2f} MiB/min", fontsize=9)
    mem.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bench_load(
    duration: float = typer.Option(60.0, min=1, help="seconds of mixed traffic"),
    clients: int = typer.Option(32, min=1, help="concurrent closed-loop clients"),
    n: int = typer.Option(20_000, min=1000, help="items in the collection"),
    dim: int = typer.Option(64, min=2, help="vector dimension"),
    out: Path = typer.Option(Path("bench-load"), help="directory for load_latency.png and load_summary.json"),
    keep: Optional[Path] = typer.Option(None, help="keep the server's data and log in this directory"),
) -> None:
    """Mixed traffic (searches, batch searches, gets, upserts, deletes, a rebuild midway) at
    `--clients` concurrent clients for `--duration` s on loopback: errors, RSS slope, latency
    percentiles over time. Exits 1 if any request failed."""
    workdir = Path(keep or tempfile.mkdtemp(prefix="annserve-bench-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result = run_load(workdir, duration, clients, n, dim)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    (out / "load_summary.json").write_text(json.dumps(summary, indent=2))
    plot(result, out / "load_latency.png")
    print(
        f"{result.requests} requests in {duration:.0f} s ({summary['requests_per_second']}/s) from "
        f"{clients} clients; errors: {len(result.errors)}; load average now {os.getloadavg()[0]:.1f}"
    )
    print(f"{'op':8} {'n':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for op, p in result.per_op.items():
        if p:
            print(
                f"{op:8} {p['n']:>7} {p['p50_ms']:>8.2f} {p['p95_ms']:>8.2f} {p['p99_ms']:>8.2f} "
                f"{p['max_ms']:>8.1f}"
            )
    print(
        f"RSS {summary['rss_mib_first']:.0f} -> {summary['rss_mib_last']:.0f} MiB (max "
        f"{summary['rss_mib_max']:.0f}); slope after warm-up {result.rss_slope_mib_per_min:+.2f} MiB/min"
    )
    if result.rebuild:
        print(f"rebuild from {result.rebuild[0]:.1f} s to {result.rebuild[1]:.1f} s")
    print(f"wrote {out / 'load_latency.png'} and {out / 'load_summary.json'}")
    for line in result.errors[:10]:
        print(f"error: {line}")
    if result.errors:
        raise typer.Exit(1)
