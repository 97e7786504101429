"""The two load generators of the comparison, each reporting the same figures (`LoadRun`):

- wrk, for the HTTP services (annserve, Chroma): C code, two threads, a different query body per
  request; its CPU is read from the rusage of the reaped wrk process.
- the Python client, for the others (Redis, Postgres) and as a same-client cross-check of the HTTP
  ones: one process per connection (forked, so the peer object and the queries come along), each a
  closed loop of searches through the peer's own client library. Processes, not threads, so that
  the GIL of one client process is not what caps the run; each reports its own CPU.

Both measure the server's CPU over the run from /proc (proc.py), so a client-bound run shows as
client CPU near the cores left over, next to a server that is not busy."""

from __future__ import annotations

import multiprocessing
import queue
import re
import resource
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..http import WRK_SCRIPT, parse_wrk  # wrk: each connection starts at a random body, then cycles
from .base import Peer
from .proc import tree_cpu_seconds

CLIENT_JOIN_SLACK = 120.0  # seconds past the run's end a client process may take to report


@dataclass
class LoadRun:
    """One closed-loop run at `connections` connections for `seconds`."""

    generator: str  # "wrk" or "python"
    connections: int
    seconds: float
    requests: int
    failures: int
    p50_ms: float
    server_cpu_s: float
    client_cpu_s: float
    # When this run is the median of several (driver.median_of): every round's figure it was
    # chosen by (searches/s, or p50 ms for one connection), sorted.
    rounds: tuple[float, ...] = ()

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def server_us_per_search(self) -> float:
        return self.server_cpu_s / max(self.requests, 1) * 1e6

    @property
    def client_us_per_search(self) -> float:
        return self.client_cpu_s / max(self.requests, 1) * 1e6

    @property
    def server_cores(self) -> float:
        return self.server_cpu_s / self.seconds

    @property
    def client_cores(self) -> float:
        return self.client_cpu_s / self.seconds


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(
    exe: str, url: str, bodies: list[bytes], workdir: Path, connections: int, seconds: float, server_pid: int
) -> LoadRun:
    """`wrk --latency` for `seconds` at `connections` connections, POSTing `bodies` in turn.
    Its CPU is the growth of this process's reaped-children rusage, so nothing else may be
    reaped meanwhile (the peers' servers are stopped only between runs)."""
    workdir.mkdir(parents=True, exist_ok=True)
    script, data = workdir / "search.lua", workdir / "bodies.jsonl"
    script.write_text(WRK_SCRIPT)
    data.write_bytes(b"\n".join(bodies) + b"\n")
    whole = max(1, round(seconds))
    command = [exe, f"-t{min(2, connections)}", f"-c{connections}", f"-d{whole}s", "--latency"]
    command += ["-s", str(script), url, "--", str(data)]
    client0, server0 = children_cpu_seconds(), tree_cpu_seconds(server_pid)
    run = subprocess.run(command, capture_output=True, text=True, check=True, timeout=whole + 60)
    server, client = tree_cpu_seconds(server_pid) - server0, children_cpu_seconds() - client0
    found = parse_wrk(run.stdout)
    # wrk's own duration, which its request count is over (a little above -d).
    m = re.search(r"requests in ([\d.]+)(ms|s|m)\b", run.stdout)
    took = float(m.group(1)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(2)] if m else float(whole)
    return LoadRun("wrk", connections, took, int(found["requests"]), int(found["failures"]),
                   found["p50_ms"], server, client)  # fmt: skip


def _client_process(
    peer: Peer, queries: np.ndarray, k: int, seconds: float, offset: int,
    barrier: Any, results: Any,
) -> None:  # fmt: skip
    """One client: connect, wait for all the others, then search in a closed loop for `seconds`;
    puts (requests, failures, latencies in s, own CPU s, error text or '') on `results`."""
    latencies: list[float] = []
    failures, error = 0, ""
    try:
        conn = peer.connect()
    except Exception as exc:  # reported, so the parent fails the run with the cause
        barrier.abort()
        results.put((0, 0, [], 0.0, f"connect: {type(exc).__name__}: {exc}"))
        return
    try:
        barrier.wait()
    except threading.BrokenBarrierError:  # another client could not connect: it says why
        results.put((0, 0, [], 0.0, "another client failed before the start"))
        return
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    deadline = time.monotonic() + seconds
    i = offset
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        try:
            hits = peer.search(conn, queries[i % len(queries)], k)
            if not hits:
                failures += 1
        except Exception as exc:
            failures += 1
            error = error or f"{type(exc).__name__}: {exc}"
        latencies.append(time.perf_counter() - t0)
        i += 1
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime
    close = getattr(conn, "close", None)
    if close is not None:
        close()
    results.put((len(latencies), failures, latencies, cpu, error if failures == len(latencies) else ""))


def run_python_clients(
    peer: Peer, queries: np.ndarray, k: int, connections: int, seconds: float
) -> LoadRun:
    """`connections` client processes (fork), one connection each, searching `queries` (each
    from its own starting row) for `seconds` after all are connected."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(connections + 1)
    results: multiprocessing.Queue = ctx.Queue()
    stride = max(1, len(queries) // connections)
    procs = [
        ctx.Process(target=_client_process, args=(peer, queries, k, seconds, c * stride, barrier, results),
                    daemon=True)
        for c in range(connections)
    ]  # fmt: skip
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=60)
    except Exception:
        pass  # a client that failed to connect aborted it: its report below says why
    server0 = tree_cpu_seconds(peer.server_pid())
    reports = []
    try:
        for _ in procs:
            reports.append(results.get(timeout=seconds + CLIENT_JOIN_SLACK))
    except queue.Empty:
        raise RuntimeError(f"{peer.name}: a client process did not report within "
                           f"{seconds + CLIENT_JOIN_SLACK:.0f}s") from None  # fmt: skip
    finally:
        server = tree_cpu_seconds(peer.server_pid()) - server0
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
    errors = [r[4] for r in reports if r[4]]
    if errors:
        raise RuntimeError(f"{peer.name}: the Python client failed: {errors[0]}")
    latencies = np.concatenate([np.asarray(r[2]) for r in reports])
    requests = sum(r[0] for r in reports)
    # The window is the clients' `seconds`; the server's CPU is read over that plus the last
    # answers in flight (at most one per connection), a bias below 1 / (requests per connection).
    return LoadRun("python", connections, seconds, requests, sum(r[1] for r in reports),
                   float(np.median(latencies) * 1e3) if len(latencies) else float("nan"),
                   server, sum(r[3] for r in reports))  # fmt: skip
