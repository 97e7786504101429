"""`annserve bench-http`: the service measured over real HTTP, end to end.

Starts `annserve serve` on a free loopback port with its own data directory (app/serve_process.py),
loads a 50K x 384 collection, and measures what a client sees:

- ingest: vectors/s through batch upsert (1000 items per request; JSON lists, then base64)
- recall@10 of the bench queries at the search params used (the smallest `ef` that reaches
  `--target-recall` on those queries, against exact ground truth, `indexes.brute_force_knn`)
- single-client search latency p50/p99 (httpx, one keep-alive connection)
- throughput at `--connections` concurrent connections (wrk, a different query body per request),
  again with `vector_b64` bodies, and wrk at one connection (p50), each with server CPU per search
- ingest from one connection (JSON lists, base64), into a collection of its own
- a batch search of all the queries in one request (JSON lists, base64) against the same saved
  main index loaded and searched in this process with the same params
- the event loop's lag (`annserve_event_loop_lag_seconds`, probed every millisecond) while search
  clients, JSON upserts of bodies near the 32 MiB cap and searches queued behind their writes run
  together, and the slowest `/healthz` answer meanwhile
- p99 latency of single searches while a rebuild runs, against before, and the failures

Data: Fashion-MNIST (Debian package `dataset-fashion-mnist`) projected by PCA to 384 dims, a real
384-d set (the train images are the base, test images the queries), cosine. Only when that
package is missing, or with `--data synthetic`, clustered synthetic unit vectors (stated in the
output). Every wait has a deadline: a stuck rebuild or server ends the run with an error.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import httpx
import numpy as np
import orjson
import typer
from prometheus_client.parser import text_string_to_metric_families

from ..engine.collection import CORES
from ..indexes import brute_force_knn, recall_at_k

from .datasets import Dataset, DatasetMissing, fashion_pca, synthetic_clusters
from .peers import parse_peers
from .server_process import ServeProcess

K = 10
DATA_SOURCES = ("fashion", "synthetic")
EF_LADDER = (10, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
UPSERT_BATCH = 1000
BATCH_ROUNDS = 7  # interleaved rounds of batch search over HTTP and in-process
ONE_CLIENT_ITEMS = 10_000  # items upserted from one connection, per encoding
REQUEST_TIMEOUT = 600.0  # seconds for one HTTP request (an upsert batch of 1000 x 384 included)
LAG_METRIC = "annserve_event_loop_lag_seconds"
LAG_SEARCH_CLIENTS = 4  # sequential search clients during the loop-lag run
MAX_BODY_BYTES = 32 * 1024 * 1024  # the server's default ANNSERVE_MAX_BODY_BYTES
MAX_UPSERT_BATCH = 10_000  # the server's default ANNSERVE_MAX_UPSERT_BATCH
WRK_SCRIPT = """
local bodies = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
  i = math.random(#bodies)
end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[i])
end
"""


# ---- data ---------------------------------------------------------------------------------


def load_data(source: str, n: int, n_queries: int, dim: int) -> tuple[Dataset, str]:
    """The bench set (cosine) and one line saying what it is. Fashion-MNIST has 60,000 base
    rows: a larger `n` is cut to that, and said. Falls back on synthetic data only when the
    Fashion-MNIST package is missing; any other problem raises ValueError."""
    if source not in DATA_SOURCES:
        raise ValueError(f"--data: expected one of {', '.join(DATA_SOURCES)}, got {source!r}")
    if source == "fashion":
        try:
            data = fashion_pca(dim, n_queries, limit=n)
        except DatasetMissing as exc:
            print(f"note: {exc}; using synthetic data instead")
        else:
            rows = data.base.shape[0]
            if rows < n:
                print(f"note: --n {n:,} is above the {rows:,} train images of Fashion-MNIST; "
                      f"using n = {rows:,}")  # fmt: skip
            return data, (
                f"Fashion-MNIST, {rows:,} train images as base, {n_queries} test images as queries, "
                f"PCA 784->{dim}"
            )
    data = synthetic_clusters(n, n_queries, dim)
    return data, f"synthetic: {n:,} unit vectors in 256 Gaussian clusters (no real {dim}-d set used)"


# ---- measurements -------------------------------------------------------------------------


def ingest(url: str, name: str, ids: list[str], x: np.ndarray, b64: bool, clients: int) -> float:
    """Vectors/s of batch upserts from `clients` concurrent connections; bodies are serialised
    before the clock starts (as a client with its data ready would send them)."""
    bodies = []
    for lo in range(0, len(ids), UPSERT_BATCH):
        part_ids, rows = ids[lo : lo + UPSERT_BATCH], x[lo : lo + UPSERT_BATCH]
        if b64:
            items = [
                {"id": i, "vector_b64": base64.b64encode(r.astype("<f4").tobytes()).decode()}
                for i, r in zip(part_ids, rows)
            ]
        else:
            items = [{"id": i, "vector": r} for i, r in zip(part_ids, rows)]
        bodies.append(orjson.dumps({"items": items}, option=orjson.OPT_SERIALIZE_NUMPY))

    def send(part: list[bytes]) -> None:
        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT) as client:
            for body in part:
                client.post(f"/collections/{name}/vectors", content=body).raise_for_status()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, [bodies[i::clients] for i in range(clients)]))
    return len(ids) / (time.perf_counter() - start)


def search_bodies(queries: np.ndarray, k: int, params: dict) -> list[bytes]:
    return [
        orjson.dumps({"vector": q, "k": k, "params": params}, option=orjson.OPT_SERIALIZE_NUMPY)
        for q in queries
    ]


def search_bodies_b64(queries: np.ndarray, k: int, params: dict) -> list[bytes]:
    """The same searches with `vector_b64` (little-endian float32) in place of number lists."""
    return [orjson.dumps({"vector_b64": b64_floats(q), "k": k, "params": params}) for q in queries]


def b64_floats(x: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(x, dtype="<f4").tobytes()).decode()


def batch_vs_in_process(
    client: httpx.Client, server: ServeProcess, name: str, queries: np.ndarray, params: dict,
    rounds: int = BATCH_ROUNDS,
) -> dict[str, float]:  # fmt: skip
    """One `/search/batch` of all `queries` (JSON lists, then base64) against the same saved
    main index loaded here and searched in this process with the same params, interleaved
    `rounds` times: median seconds of each, and the server's mean CPU seconds per request.
    The collection must have one shard and an empty fresh index (just rebuilt)."""
    from ..indexes import load_index  # the library only, as a user would call it

    files = sorted((server.data_dir / "collections" / name / "shard-0").glob("main-*.idx"))
    if not files:
        raise RuntimeError(f"no main index file for collection {name!r} under {server.data_dir}")
    index = load_index(files[-1])
    k = K
    bodies = {
        "json": orjson.dumps({"vectors": queries, "k": k, "params": params}, option=orjson.OPT_SERIALIZE_NUMPY),
        "b64": orjson.dumps({"vectors_b64": b64_floats(queries), "k": k, "params": params}),
    }

    def over_http(body: bytes) -> None:
        r = client.post(f"/collections/{name}/search/batch", content=body)
        r.raise_for_status()

    # The service splits a big batch by rows over the cores (engine/collection.py); the same
    # split done here, beside the library's one call, shows what the cores alone give.
    bounds = np.linspace(0, len(queries), CORES + 1).astype(int).tolist()
    pool = ThreadPoolExecutor(CORES)

    def on_every_core() -> None:
        parts = [pool.submit(index.search, queries[lo:hi], k, **params) for lo, hi in zip(bounds, bounds[1:])]
        for part in parts:
            part.result()

    runs: dict[str, list[float]] = {"json": [], "b64": [], "in_process": [], "in_process_cores": []}
    cpu: dict[str, list[float]] = {"json": [], "b64": []}
    for round_ in range(rounds + 1):  # the first round warms up and is not counted
        for key in runs:
            before, t0 = server.cpu_seconds(), time.perf_counter()
            if key == "in_process":
                index.search(queries, k, **params)
            elif key == "in_process_cores":
                on_every_core()
            else:
                over_http(bodies[key])
            took = time.perf_counter() - t0
            if round_:
                runs[key].append(took)
                if key in cpu:
                    cpu[key].append(server.cpu_seconds() - before)
    pool.shutdown()
    out = {key: float(np.median(v)) for key, v in runs.items()}
    # CPU from /proc ticks (10 ms) is too coarse for one request: the mean over the rounds.
    out.update({f"{key}_cpu": sum(v) / len(v) for key, v in cpu.items()})
    return out


def search_recall(
    client: httpx.Client, name: str, queries: np.ndarray, truth: np.ndarray, params: dict
) -> float:
    """recall@k of batch searches for `queries` (nq, dim) against `truth` (nq, k) base rows;
    item ids are the base row numbers."""
    found = np.full(truth.shape, -1, dtype=np.int64)  # -1: fewer than k hits, never a true row
    for lo in range(0, len(queries), 500):
        body = orjson.dumps(
            {"vectors": queries[lo : lo + 500], "k": truth.shape[1], "params": params},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        r = client.post(f"/collections/{name}/search/batch", content=body)
        r.raise_for_status()
        for row, hits in enumerate(r.json()["results"], start=lo):
            found[row, : len(hits)] = [int(h["id"]) for h in hits]
    return recall_at_k(found, truth)


def latencies(
    client: httpx.Client, name: str, bodies: list[bytes], seconds: float | None = None,
    stop: threading.Event | None = None,
) -> tuple[np.ndarray, int]:  # fmt: skip
    """Sequential searches on one keep-alive connection: (latencies in s, failures). Runs
    through `bodies` once, or, given `seconds` and/or `stop`, until the first of them ends it."""
    out, failures, i = [], 0, 0
    deadline = time.monotonic() + seconds if seconds else None
    while True:
        if stop is not None and stop.is_set():
            break
        if deadline is not None and time.monotonic() > deadline:
            break
        if stop is None and deadline is None and i >= len(bodies):
            break
        body = bodies[i % len(bodies)]
        i += 1
        t0 = time.perf_counter()
        try:
            ok = client.post(f"/collections/{name}/search", content=body).status_code == 200
        except httpx.HTTPError:
            ok = False
        out.append(time.perf_counter() - t0)
        failures += not ok
    return np.array(out), failures


def big_json_upsert(x: np.ndarray, limit: int = MAX_BODY_BYTES) -> tuple[bytes, int]:
    """One upsert body of JSON number lists (ids `lag-<i>`, rows of `x` in turn) as large as fits
    under `limit` bytes and the item cap: (body, items)."""
    row_bytes = len(orjson.dumps({"id": "lag-00000", "vector": x[0]}, option=orjson.OPT_SERIALIZE_NUMPY)) + 1
    n = min(MAX_UPSERT_BATCH, int(limit * 0.98) // row_bytes)
    while True:
        items = [{"id": f"lag-{i}", "vector": x[i % len(x)]} for i in range(n)]
        body = orjson.dumps({"items": items}, option=orjson.OPT_SERIALIZE_NUMPY)
        if len(body) <= limit:
            return body, n
        n = int(n * limit / len(body) * 0.99)


def lag_buckets(client: httpx.Client) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of the server's loop-lag histogram, from /metrics."""
    r = client.get("/metrics")
    r.raise_for_status()
    for family in text_string_to_metric_families(r.text):
        if family.name == LAG_METRIC:
            return sorted((float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket"))
    raise RuntimeError(f"/metrics has no {LAG_METRIC} (ANNSERVE_LOOP_LAG_INTERVAL_SECONDS=0?)")


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """The q-quantile of a histogram's (bound, cumulative count) pairs, interpolated inside its
    bucket as Prometheus's histogram_quantile does; the largest finite bound if it falls in +Inf."""
    total = buckets[-1][1]
    rank, lower, below = q * total, 0.0, 0.0
    for bound, count in buckets:
        if count >= rank and count > below:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def bucket_max(buckets: list[tuple[float, float]]) -> float:
    """The smallest bucket bound at or under which every observation lies (inf if any is above all)."""
    total = buckets[-1][1]
    return next(bound for bound, count in buckets if count >= total)


# Polls GET <url>/healthz every 10 ms for <seconds>; prints the answer times (s) as JSON.
HEALTHZ_POLLER = """
import sys, time, httpx, orjson
url, seconds, took = sys.argv[1], float(sys.argv[2]), []
with httpx.Client(timeout=60) as c:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        c.get(url).raise_for_status()
        took.append(time.perf_counter() - t0)
        time.sleep(0.01)
print(orjson.dumps(took).decode())
"""


def loop_lag_under_load(
    url: str, client: httpx.Client, name: str, x: np.ndarray, bodies: list[bytes], seconds: float
) -> dict[str, float]:
    """For `seconds`: LAG_SEARCH_CLIENTS sequential search clients, one client sending JSON
    upserts near the body cap (the same ids each time, so fresh does not grow), and one polling
    /healthz from a process of its own (threads here sending 32 MiB would delay its polls by
    themselves). The loop-lag histogram's increase over that time gives p50, p99 and max (a
    bucket bound); also the slowest /healthz answer and the searches' p99."""
    body, n_items = big_json_upsert(x)
    before = lag_buckets(client)
    stop = threading.Event()
    found: dict[str, Any] = {"upserts": 0, "errors": []}
    poller = subprocess.Popen(
        [sys.executable, "-c", HEALTHZ_POLLER, f"{url}/healthz", str(seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def search_client() -> tuple[np.ndarray, int]:
        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT) as c:
            return latencies(c, name, bodies, stop=stop)

    def upsert_client() -> None:
        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT) as c:
            while not stop.is_set():
                r = c.post(f"/collections/{name}/vectors", content=body)
                if r.status_code != 200:
                    found["errors"].append(f"upsert answered {r.status_code}: {r.text[:200]}")
                    return
                found["upserts"] += 1

    with ThreadPoolExecutor(LAG_SEARCH_CLIENTS + 1) as pool:
        searches = [pool.submit(search_client) for _ in range(LAG_SEARCH_CLIENTS)]
        upserts = pool.submit(upsert_client)
        try:
            out, err = poller.communicate(timeout=seconds + 120)
        finally:
            stop.set()
            if poller.poll() is None:
                poller.kill()
                poller.wait(10)
        upserts.result()
        lat = np.concatenate([f.result()[0] for f in searches])
        failures = sum(f.result()[1] for f in searches)
    if found["errors"]:
        raise RuntimeError(found["errors"][0])
    if poller.returncode != 0:
        raise RuntimeError(f"the /healthz poller failed: {err.strip()[-500:]}")
    healthz = orjson.loads(out)
    after = lag_buckets(client)
    delta = [(bound, count - was) for (bound, count), (_, was) in zip(after, before)]
    # The upserted items leave again: the later measurements see the collection as before.
    ids = orjson.dumps({"ids": [f"lag-{i}" for i in range(n_items)]})
    client.post(f"/collections/{name}/vectors/delete", content=ids).raise_for_status()
    return {
        "samples": delta[-1][1],
        "p50": bucket_quantile(0.5, delta),
        "p99": bucket_quantile(0.99, delta),
        "max": bucket_max(delta),
        "healthz_max": max(healthz),
        "search_p99": float(np.percentile(lat, 99)),
        "searches": len(lat),
        "search_failures": failures,
        "upserts": found["upserts"],
        "upsert_items": n_items,
        "upsert_mib": len(body) / 2**20,
    }


def wait_job(client: httpx.Client, job_id: str, timeout: float) -> dict:
    """Poll GET /jobs/{job_id} until the job has succeeded or failed; returns its JSON.
    RuntimeError if it is still queued or running after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/jobs/{job_id}")
        r.raise_for_status()
        job = r.json()
        if job["state"] not in ("queued", "running"):
            return job
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"rebuild job {job_id} still {job['state']} at {job['progress']:.0%} after {timeout:.0f}s "
                "(--rebuild-timeout)"
            )
        time.sleep(0.2)


def start_rebuild(client: httpx.Client, name: str) -> str:
    r = client.post(f"/collections/{name}/rebuild")
    r.raise_for_status()
    return r.json()["job_id"]


def check_succeeded(job: dict) -> dict:
    if job["state"] != "succeeded":
        raise RuntimeError(f"rebuild {job['state']}: {job.get('error')}")
    return job


def rebuild_and_wait(client: httpx.Client, name: str, timeout: float) -> dict:
    return check_succeeded(wait_job(client, start_rebuild(client, name), timeout))


def searches_during_rebuild(
    client: httpx.Client, url: str, name: str, bodies: list[bytes], timeout: float
) -> tuple[np.ndarray, int]:
    """Start a rebuild and run the single-client search loop until it ends: (latencies, failures).
    A second connection watches the job; whatever happens to it, it ends the search loop."""
    job_id = start_rebuild(client, name)
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    def watch() -> None:
        try:
            with httpx.Client(base_url=url, timeout=30) as c:
                outcome["job"] = wait_job(c, job_id, timeout)
        except Exception as exc:  # handed to the main thread, which raises it
            outcome["error"] = exc
        finally:
            stop.set()

    watcher = threading.Thread(target=watch, name="bench-http-watch", daemon=True)
    watcher.start()
    # The loop's own deadline is a backstop: the watcher's deadline ends it first.
    during, failures = latencies(client, name, bodies, seconds=timeout + 60, stop=stop)
    watcher.join()
    if "error" in outcome:
        raise outcome["error"]
    check_succeeded(outcome["job"])
    return during, failures


def wrk(
    exe: str, url: str, bodies: list[bytes], workdir: Path, connections: int, seconds: int
) -> dict[str, float]:
    """`wrk --latency` (at path `exe`) for `seconds` at `connections` connections, POSTing
    `bodies` in turn."""
    script, data = workdir / "search.lua", workdir / "bodies.jsonl"
    script.write_text(WRK_SCRIPT)
    data.write_bytes(b"\n".join(bodies) + b"\n")
    # wrk needs a connection per thread: one connection, one thread.
    command = [exe, f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    command += ["--", str(data)]
    run = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60)
    return parse_wrk(run.stdout)


def parse_wrk(out: str) -> dict[str, float]:
    """rps, p50_ms, p99_ms, failures (non-2xx/3xx answers + socket errors) and requests from
    the text `wrk --latency` prints. RuntimeError naming what is missing."""

    def find(pattern: str, what: str) -> re.Match:
        m = re.search(pattern, out, re.M)
        if m is None:
            raise RuntimeError(f"wrk output has no {what}:\n{out}")
        return m

    result = {"rps": float(find(r"Requests/sec:\s+([\d.]+)", "Requests/sec").group(1))}
    for pct in ("50", "99"):
        m = find(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", f"{pct}% latency (run with --latency)")
        result[f"p{pct}_ms"] = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["failures"] = (int(non_2xx.group(1)) if non_2xx else 0) + (
        sum(map(int, errors.groups())) if errors else 0
    )
    result["requests"] = int(find(r"(\d+) requests in", "request count").group(1))
    return result


def failure(exc: BaseException) -> str:
    """One message for what ended a run: an HTTP error with the server's answer, a failed wrk
    with its stderr, anything else as it says."""
    if isinstance(exc, httpx.HTTPStatusError):
        request, response = exc.request, exc.response
        return f"{request.method} {request.url.path} answered {response.status_code}: {response.text[:500]}"
    if isinstance(exc, subprocess.CalledProcessError):
        return f"{exc}; its stderr:\n{exc.stderr}"
    return str(exc) or type(exc).__name__


def pct_ms(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q) * 1e3)


# ---- the command --------------------------------------------------------------------------


def measure(
    server: ServeProcess, client: httpx.Client, workdir: Path, wrk_exe: str, data: Dataset, kind: str,
    connections: int, ingest_clients: int, seconds: int, target_recall: float, rebuild_timeout: float,
    lag_seconds: int,
) -> list[tuple[str, str, str]]:  # fmt: skip
    """Every measurement against the running server: the report's (label, value, target) rows."""
    base, qs = data.base, data.queries
    n = base.shape[0]
    t0 = time.perf_counter()
    truth, _ = brute_force_knn(base, qs, K, data.metric, batch=256)
    print(f"ground truth in {time.perf_counter() - t0:.1f}s")

    name = "bench"
    body = {"name": name, "dim": data.dim, "metric": data.metric, "index": {"kind": kind}}
    client.post("/collections", json=body).raise_for_status()
    ids = [str(i) for i in range(n)]
    half = n // 2
    cpu = server.cpu_seconds()
    rate_json = ingest(server.url, name, ids[:half], base[:half], False, ingest_clients)
    cpu_json, cpu = (server.cpu_seconds() - cpu) / max(half, 1), server.cpu_seconds()
    rate_b64 = ingest(server.url, name, ids[half:], base[half:], True, ingest_clients)
    cpu_b64 = (server.cpu_seconds() - cpu) / (n - half)
    rows = [
        (f"ingest, JSON lists, {ingest_clients} conns (vec/s)", f"{rate_json:,.0f}", ">= 20,000"),
        ("  server CPU per vector (us)", f"{cpu_json * 1e6:.0f}", ""),
        (f"ingest, base64, {ingest_clients} conns (vec/s)", f"{rate_b64:,.0f}", ">= 20,000"),
        ("  server CPU per vector (us)", f"{cpu_b64 * 1e6:.0f}", ""),
    ]
    print(f"ingest: {rate_json:,.0f} vec/s (JSON), {rate_b64:,.0f} vec/s (base64)")
    rows += ingest_one_client(server, client, base, data.dim, data.metric, kind)

    t = time.perf_counter()
    job = rebuild_and_wait(client, name, rebuild_timeout)
    build_s = time.perf_counter() - t
    info = client.get(f"/collections/{name}").json()
    print(f"rebuild: {job['state']} in {build_s:.1f}s; index {info['index']}")

    # The smallest ef reaching the target recall on these queries (kinds without ef: defaults).
    has_ef = kind in ("hnswlib", "hnsw")
    for ef in EF_LADDER if has_ef else (None,):
        params = {"ef": ef} if has_ef else {}
        recall = search_recall(client, name, qs, truth, params)
        print(f"  {params or 'default params'}: recall@{K} {recall:.3f}")
        if recall >= target_recall:
            break
    bodies = search_bodies(qs, K, params)
    rows.append((f"recall@{K} at {params or 'defaults'}", f"{recall:.3f}", f">= {target_recall}"))

    latencies(client, name, bodies[:200])  # warm up
    lat, failures = latencies(client, name, bodies)
    rows += [
        ("single client p50 (ms)", f"{pct_ms(lat, 50):.2f}", "< 2"),
        ("single client p99 (ms)", f"{pct_ms(lat, 99):.2f}", ""),
    ]
    print(f"single client: p50 {pct_ms(lat, 50):.2f} ms, p99 {pct_ms(lat, 99):.2f} ms, failures {failures}")

    cpu = server.cpu_seconds()
    result = wrk(wrk_exe, f"{server.url}/collections/{name}/search", bodies, workdir, connections, seconds)
    cpu_search = (server.cpu_seconds() - cpu) / max(result["requests"], 1)
    rows += [
        (f"throughput, {connections} conns (searches/s)", f"{result['rps']:,.0f}", ">= 2,000"),
        ("  server CPU per search (us)", f"{cpu_search * 1e6:.0f}", ""),
        ("  wrk p50 / p99 (ms)", f"{result['p50_ms']:.2f} / {result['p99_ms']:.2f}", ""),
        ("  wrk failures", f"{result['failures']} of {result['requests']}", "0"),
    ]
    print(f"wrk: {result}")

    url = f"{server.url}/collections/{name}/search"
    cpu = server.cpu_seconds()
    b64 = wrk(wrk_exe, url, search_bodies_b64(qs, K, params), workdir, connections, seconds)
    cpu_b64 = (server.cpu_seconds() - cpu) / max(b64["requests"], 1)
    rows += [
        ("  the same with vector_b64 (searches/s)", f"{b64['rps']:,.0f}", ""),
        ("  server CPU per search (us)", f"{cpu_b64 * 1e6:.0f}", "<= 200"),
    ]
    print(f"wrk, vector_b64: {b64}")
    cpu = server.cpu_seconds()
    one = wrk(wrk_exe, url, bodies, workdir, 1, seconds)
    cpu_one = (server.cpu_seconds() - cpu) / max(one["requests"], 1)
    rows += [
        ("wrk, 1 conn: p50 / p99 (ms)", f"{one['p50_ms']:.2f} / {one['p99_ms']:.2f}", "p50 <= 0.6"),
        ("  searches/s; server CPU per search (us)", f"{one['rps']:,.0f}; {cpu_one * 1e6:.0f}", ""),
    ]
    print(f"wrk, 1 connection: {one}")

    batch = batch_vs_in_process(client, server, name, qs, params)
    for key, label in (("json", "JSON lists"), ("b64", "base64")):
        rows.append((f"batch of {len(qs)} over HTTP, {label}: ms (x in-process)",
                     f"{batch[key] * 1e3:.1f} ({batch['in_process'] / batch[key]:.2f}x)", ">= 0.8x"))  # fmt: skip
        rows.append(("  server CPU per batch (ms)", f"{batch[key + '_cpu'] * 1e3:.1f}", ""))
    rows.append(("  in-process, the same index and params (ms)", f"{batch['in_process'] * 1e3:.1f}", ""))
    rows.append((f"  in-process, split by rows over {CORES} threads (ms)", f"{batch['in_process_cores'] * 1e3:.1f}", ""))
    print(f"batch search vs in-process: {batch}")

    lag = loop_lag_under_load(server.url, client, name, base, bodies, lag_seconds)
    ms = {key: lag[key] * 1e3 for key in ("p50", "p99", "max", "healthz_max", "search_p99")}
    rows += [
        ("event-loop lag under mixed load, p50 / p99 / max (ms)",
         f"{ms['p50']:.2f} / {ms['p99']:.2f} / <= {ms['max']:g}", "p99 <= 1"),
        (f"  load: {LAG_SEARCH_CLIENTS} search clients + {lag['upsert_mib']:.0f} MiB JSON upserts",
         f"{lag['upserts']} upserts, {lag['searches']:,} searches", ""),
        ("  /healthz slowest answer (ms)", f"{ms['healthz_max']:.1f}", "<= 100"),
        ("  search p99 meanwhile (ms)", f"{ms['search_p99']:.1f}", ""),
    ]  # fmt: skip
    print(f"loop lag: {lag}")

    # Searches during a rebuild: the same single-client loop, before and while it runs.
    before, fail_before = latencies(client, name, bodies, seconds=8)
    # One more item, so that the rebuild has something new to index.
    extra = orjson.dumps({"items": [{"id": "extra", "vector": qs[0]}]}, option=orjson.OPT_SERIALIZE_NUMPY)
    client.post(f"/collections/{name}/vectors", content=extra).raise_for_status()
    during, fail_during = searches_during_rebuild(client, server.url, name, bodies, rebuild_timeout)
    rows.append(("p99 before rebuild (ms)", f"{pct_ms(before, 99):.2f}", ""))
    if len(during):
        ratio = pct_ms(during, 99) / pct_ms(before, 99)
        rows.append(("p99 during rebuild (ms)", f"{pct_ms(during, 99):.2f} ({ratio:.1f}x)", "<= 3x"))
    else:
        print("note: the rebuild finished before the first search; no latency during a rebuild "
              "(a larger --n makes it last longer)")  # fmt: skip
        rows.append(("p99 during rebuild (ms)", "none: rebuild too short", "<= 3x"))
    rows.append(("failures before / during", f"{fail_before} / {fail_during} of {len(during)}", "0"))
    return rows


def ingest_one_client(
    server: ServeProcess, client: httpx.Client, base: np.ndarray, dim: int, metric: str, kind: str
) -> list[tuple[str, str, str]]:  # fmt: skip
    """Vectors/s and server CPU per vector of batch upserts from one connection (JSON lists,
    then base64) into a collection of their own, deleted afterwards: the report's rows."""
    name, rows = "bench-one-client", []
    body = {"name": name, "dim": dim, "metric": metric, "index": {"kind": kind}}
    client.post("/collections", json=body).raise_for_status()
    try:
        n = min(ONE_CLIENT_ITEMS, len(base))
        for b64, label, target in ((False, "JSON lists", ">= 20,000"), (True, "base64", ">= 50,000")):
            ids = [f"{'b' if b64 else 'j'}{i}" for i in range(n)]
            cpu = server.cpu_seconds()
            rate = ingest(server.url, name, ids, base[:n], b64, 1)
            per = (server.cpu_seconds() - cpu) / n
            rows += [(f"ingest, {label}, 1 conn (vec/s)", f"{rate:,.0f}", target),
                     ("  server CPU per vector (us)", f"{per * 1e6:.0f}", "")]  # fmt: skip
            print(f"ingest from one client, {label}: {rate:,.0f} vec/s, {per * 1e6:.0f} us CPU per vector")
    finally:
        client.delete(f"/collections/{name}").raise_for_status()
    return rows


def bench_http(
    n: int = typer.Option(50_000, min=1, help="items in the collection (fashion: at most 60,000)"),
    dim: int = typer.Option(384, min=1, help="vector dimension"),
    queries: int = typer.Option(1000, min=1, help="distinct query vectors"),
    data: str = typer.Option("fashion", help="fashion (real, PCA to dim; synthetic if missing) or synthetic"),
    kind: str = typer.Option("hnswlib", help="index kind of the collection"),
    connections: int = typer.Option(16, min=1, help="concurrent connections for the throughput run"),
    ingest_clients: int = typer.Option(2, min=1, help="concurrent connections sending upsert batches"),
    seconds: int = typer.Option(10, min=1, help="length of the throughput run"),
    target_recall: float = typer.Option(0.95, help="pick the smallest ef reaching this recall@10"),
    rebuild_timeout: float = typer.Option(1800, min=1, help="seconds a rebuild may take, then the run fails"),
    lag_seconds: int = typer.Option(10, min=1, help="length of the event-loop lag run under mixed load"),
    keep: Optional[Path] = typer.Option(None, help="keep the server's data and log in this directory"),
    peers: Optional[str] = typer.Option(None, help="instead, compare with other services: a comma list of "
                                        "redis, chroma, pgvector, or all, or none (annserve alone)"),
    workers: int = typer.Option(1, min=1, help="annserve serve --workers: processes serving the port"),
) -> None:
    """Measure the service over HTTP: ingest, recall, latency, throughput, event-loop lag under
    mixed load, search during a rebuild. With --peers: annserve against other services instead."""
    load_before = f"{os.getloadavg()[0]:.1f}"
    wrk_exe = shutil.which("wrk")  # checked first: the throughput run comes after minutes of ingest
    try:
        if wrk_exe is None:
            raise ValueError("wrk is not installed (apt-get install wrk)")
        chosen_peers = parse_peers(peers) if peers is not None else None
        dataset, source = load_data(data, n, queries, dim)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    n, dim = dataset.base.shape
    print(f"data: {source}; {len(dataset.queries)} queries")
    if chosen_peers is not None:  # the comparison (app/bench/peers): its own runs and table
        from .peers.command import run_from_cli

        run_from_cli(chosen_peers, dataset, source, kind, connections, seconds, target_recall, wrk_exe, keep,
                     workers)
        return

    workdir = Path(keep or tempfile.mkdtemp(prefix="annserve-bench-http-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # No automatic rebuild during ingest: the rebuild is measured on its own.
    # The loop-lag probe every millisecond, as fine as the measurement is meant to be.
    env = {"ANNSERVE_FRESH_LIMIT": str(10 * n), "ANNSERVE_LOOP_LAG_INTERVAL_SECONDS": "0.001"}
    server = ServeProcess(workdir / "data", workdir / "server.log", env, workers)
    finished = False
    try:
        client = server.start(request_timeout=REQUEST_TIMEOUT)
        try:
            rows = measure(server, client, workdir, wrk_exe, dataset, kind, connections, ingest_clients,
                           seconds, target_recall, rebuild_timeout, lag_seconds)  # fmt: skip
        finally:
            client.close()
        finished = True
    except (RuntimeError, httpx.HTTPError, subprocess.SubprocessError) as exc:
        print(f"error: {failure(exc)}", file=sys.stderr)
        raise typer.Exit(1) from None
    finally:
        server.stop()
        if not finished:  # what the server logged is the first thing to read: keep it
            print(f"bench-http failed; the server's data and log are kept in {workdir}", file=sys.stderr)
        elif keep is None:
            shutil.rmtree(workdir, ignore_errors=True)

    width = max(len(r[0]) for r in rows)
    print(f"\nannserve bench-http: {n} x {dim}, {kind}, {dataset.metric}, {workers} worker(s); data: {source}")
    load_after = f"{os.getloadavg()[0]:.1f}"
    print(f"machine: {os.cpu_count()} CPUs, load average {load_before} before, {load_after} after")
    print(f"{'measure'.ljust(width)}  {'value':>22}  target")
    for label, value, target in rows:
        print(f"{label.ljust(width)}  {value:>22}  {target}")
