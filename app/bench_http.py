"""`annserve bench-http`: the service measured over real HTTP, end to end.

Starts `annserve serve` on a free loopback port with its own data directory, loads a 50K x 384
collection, and measures what a client sees:

- ingest: vectors/s through batch upsert (1000 items per request; JSON lists, then base64)
- recall@10 of the bench queries at the search params used (the smallest `ef` that reaches
  `--target-recall` on those queries, against exact ground truth computed here)
- single-client search latency p50/p99 (httpx, one keep-alive connection)
- throughput at `--connections` concurrent connections (wrk, a different query body per request)
- p99 latency of single searches while a rebuild runs, against before, and the failures

Data: Fashion-MNIST (Debian package `dataset-fashion-mnist`) projected by PCA to 384 dims, a real
384-d set (the train images are the base, test images the queries), cosine. Without the package,
or with `--data synthetic`, clustered synthetic unit vectors (stated in the output).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import httpx
import numpy as np
import orjson
import typer

JSON = {"content-type": "application/json"}
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


def fashion_pca(n: int, nq: int, dim: int) -> tuple[np.ndarray, np.ndarray, str]:
    from .datasets import load_dataset

    data = load_dataset("fashion", metric="cosine", n_queries=nq, limit=n)
    base, queries = data.base, data.queries
    mean = base.mean(axis=0)
    rng = np.random.default_rng(0)
    sample = base[rng.choice(len(base), size=min(len(base), 10_000), replace=False)] - mean
    _, _, vt = np.linalg.svd(sample, full_matrices=False)
    components = vt[:dim].T.astype(np.float32)  # (784, dim)
    project = lambda x: np.ascontiguousarray((x - mean) @ components, dtype=np.float32)  # noqa: E731
    return project(base), project(queries), f"Fashion-MNIST {len(base)} train images, PCA 784->{dim}"


def synthetic(n: int, nq: int, dim: int) -> tuple[np.ndarray, np.ndarray, str]:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((256, dim)).astype(np.float32)
    labels = rng.integers(0, len(centers), n + nq)
    x = centers[labels] + 0.6 * rng.standard_normal((n + nq, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[:n], x[n:], f"synthetic: {n} unit vectors in 256 Gaussian clusters (no real 384-d set used)"


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row positions of the k best by cosine, (nq, k)."""
    b = base / np.linalg.norm(base, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    out = []
    for lo in range(0, len(q), 256):
        scores = q[lo : lo + 256] @ b.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.take_along_axis(scores, top, 1).argsort(axis=1)[:, ::-1]
        out.append(np.take_along_axis(top, order, 1))
    return np.vstack(out)


# ---- the server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        annserve = shutil.which("annserve")
        command = [annserve] if annserve else [sys.executable, "-c", "from app.cli import main; main()"]
        command += ["serve", "--port", str(self.port), "--data-dir", str(data_dir)]
        self.log = open(data_dir.parent / "server.log", "wb")
        self.proc = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )

    def wait_ready(self, client: httpx.Client, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise SystemExit("server not ready in time")

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server process, all threads (Linux /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


# ---- measurements -------------------------------------------------------------------------


def ingest(url: str, name: str, ids: list[str], x: np.ndarray, b64: bool, batch: int, clients: int) -> float:
    """Vectors/s of batch upserts from `clients` concurrent connections; bodies are serialised
    before the clock starts (as a client with its data ready would send them)."""
    import base64
    from concurrent.futures import ThreadPoolExecutor

    bodies = []
    for lo in range(0, len(ids), batch):
        rows = x[lo : lo + batch]
        if b64:
            items = [
                {"id": i, "vector_b64": base64.b64encode(r.astype("<f4").tobytes()).decode()}
                for i, r in zip(ids[lo : lo + batch], rows)
            ]
        else:
            items = [{"id": i, "vector": r} for i, r in zip(ids[lo : lo + batch], rows)]
        bodies.append(orjson.dumps({"items": items}, option=orjson.OPT_SERIALIZE_NUMPY))

    def send(part: list[bytes]) -> None:
        with httpx.Client(base_url=url, timeout=600) as client:
            for body in part:
                r = client.post(f"/collections/{name}/vectors", content=body, headers=JSON)
                r.raise_for_status()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, [bodies[i::clients] for i in range(clients)]))
    return len(ids) / (time.perf_counter() - start)


def search_bodies(queries: np.ndarray, k: int, params: dict) -> list[bytes]:
    return [
        orjson.dumps({"vector": q, "k": k, "params": params}, option=orjson.OPT_SERIALIZE_NUMPY)
        for q in queries
    ]


def recall_at(
    client: httpx.Client, name: str, queries: np.ndarray, truth: np.ndarray, k: int, params: dict
) -> float:
    found = []
    for lo in range(0, len(queries), 500):
        body = orjson.dumps(
            {"vectors": queries[lo : lo + 500], "k": k, "params": params}, option=orjson.OPT_SERIALIZE_NUMPY
        )
        r = client.post(f"/collections/{name}/search/batch", content=body)
        r.raise_for_status()
        found += [[int(h["id"]) for h in row] for row in r.json()["results"]]
    return float(np.mean([len(set(f) & set(t[:k])) / k for f, t in zip(found, truth)]))


def latencies(client: httpx.Client, name: str, bodies: list[bytes], seconds: float | None = None,
              stop: threading.Event | None = None) -> tuple[np.ndarray, int]:
    """Sequential searches on one keep-alive connection: (latencies in s, failures)."""
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
            r = client.post(f"/collections/{name}/search", content=body, headers=JSON)
            ok = r.status_code == 200
        except httpx.HTTPError:
            ok = False
        out.append(time.perf_counter() - t0)
        failures += not ok
    return np.array(out), failures


def wrk(url: str, bodies: list[bytes], workdir: Path, connections: int, seconds: int) -> dict[str, float]:
    exe = shutil.which("wrk")
    if exe is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    script, data = workdir / "search.lua", workdir / "bodies.jsonl"
    script.write_text(WRK_SCRIPT)
    data.write_bytes(b"\n".join(bodies) + b"\n")
    command = [exe, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    command += ["--", str(data)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
        result[f"p{pct}_ms"] = float(m.group(1)) * scale
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["failures"] = (int(m.group(1)) if m else 0) + (sum(map(int, errors.groups())) if errors else 0)
    result["requests"] = int(re.search(r"(\d+) requests in", out).group(1))
    return result


def pct_ms(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q) * 1e3)


# ---- the command --------------------------------------------------------------------------


def bench_http(
    n: int = typer.Option(50_000, help="items in the collection"),
    dim: int = typer.Option(384, help="vector dimension"),
    queries: int = typer.Option(1000, help="distinct query vectors"),
    data: str = typer.Option("fashion", help="fashion (real, PCA to dim) or synthetic"),
    kind: str = typer.Option("hnswlib", help="index kind of the collection"),
    connections: int = typer.Option(16, help="concurrent connections for the throughput run"),
    ingest_clients: int = typer.Option(2, help="concurrent connections sending upsert batches"),
    seconds: int = typer.Option(10, help="length of the throughput run"),
    target_recall: float = typer.Option(0.95, help="pick the smallest ef reaching this recall@10"),
    keep: Optional[Path] = typer.Option(None, help="keep the server's data and log in this directory"),
) -> None:
    """Measure the service over HTTP: ingest, recall, latency, throughput, search during a rebuild."""
    k = 10
    load_before = f"{os.getloadavg()[0]:.1f}"
    t0 = time.perf_counter()
    try:
        base, qs, source = (synthetic if data == "synthetic" else fashion_pca)(n, queries, dim)
    except ValueError as exc:
        print(f"fashion data unavailable ({exc}); using synthetic data")
        base, qs, source = synthetic(n, queries, dim)
    truth = exact_top_k(base, qs, k)
    print(f"data: {source}; {len(qs)} queries; ground truth in {time.perf_counter() - t0:.1f}s")

    workdir = Path(keep or tempfile.mkdtemp(prefix="annserve-bench-http-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # No automatic rebuild during ingest: the rebuild is measured on its own below.
    server = ServerProcess(workdir / "data", {"ANNSERVE_FRESH_LIMIT": str(10 * n)})
    client = httpx.Client(base_url=server.url, timeout=600)
    rows: list[tuple[str, str, str]] = []
    try:
        server.wait_ready(client)
        name = "bench"
        body = {"name": name, "dim": base.shape[1], "metric": "cosine", "index": {"kind": kind}}
        client.post("/collections", json=body).raise_for_status()
        ids = [str(i) for i in range(n)]
        half = n // 2
        cpu = server.cpu_seconds()
        rate_json = ingest(server.url, name, ids[:half], base[:half], False, 1000, ingest_clients)
        cpu_json, cpu = (server.cpu_seconds() - cpu) / half, server.cpu_seconds()
        rate_b64 = ingest(server.url, name, ids[half:], base[half:], True, 1000, ingest_clients)
        cpu_b64 = (server.cpu_seconds() - cpu) / (n - half)
        rows += [
            (f"ingest, JSON lists, {ingest_clients} conns (vec/s)", f"{rate_json:,.0f}", ">= 20,000"),
            ("  server CPU per vector (us)", f"{cpu_json * 1e6:.0f}", ""),
            (f"ingest, base64, {ingest_clients} conns (vec/s)", f"{rate_b64:,.0f}", ">= 20,000"),
            ("  server CPU per vector (us)", f"{cpu_b64 * 1e6:.0f}", ""),
        ]
        print(f"ingest: {rate_json:,.0f} vec/s (JSON), {rate_b64:,.0f} vec/s (base64)")

        t = time.perf_counter()
        job = rebuild_and_wait(client, name)
        build_s = time.perf_counter() - t
        info = client.get(f"/collections/{name}").json()
        print(f"rebuild: {job['state']} in {build_s:.1f}s; index {info['index']}")

        # The smallest ef reaching the target recall on these queries.
        ef, recall = None, 0.0
        for ef in (10, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512):
            recall = recall_at(client, name, qs, truth, k, {"ef": ef} if kind in ("hnswlib", "hnsw") else {})
            print(f"  ef={ef}: recall@10 {recall:.3f}")
            if recall >= target_recall or kind not in ("hnswlib", "hnsw"):
                break
        params = {"ef": ef} if kind in ("hnswlib", "hnsw") else {}
        bodies = search_bodies(qs, k, params)
        rows.append((f"recall@10 at {params or 'defaults'}", f"{recall:.3f}", f">= {target_recall}"))

        latencies(client, name, bodies[:200])  # warm up
        lat, failures = latencies(client, name, bodies)
        rows += [
            ("single client p50 (ms)", f"{pct_ms(lat, 50):.2f}", "< 2"),
            ("single client p99 (ms)", f"{pct_ms(lat, 99):.2f}", ""),
        ]
        print(f"single client: p50 {pct_ms(lat, 50):.2f} ms, p99 {pct_ms(lat, 99):.2f} ms, "
              f"failures {failures}")

        cpu = server.cpu_seconds()
        result = wrk(f"{server.url}/collections/{name}/search", bodies, workdir, connections, seconds)
        cpu_search = (server.cpu_seconds() - cpu) / result["requests"]
        rows += [
            (f"throughput, {connections} conns (searches/s)", f"{result['rps']:,.0f}", ">= 2,000"),
            ("  server CPU per search (us)", f"{cpu_search * 1e6:.0f}", ""),
            (f"  wrk p50 / p99 (ms)", f"{result['p50_ms']:.2f} / {result['p99_ms']:.2f}", ""),
            ("  wrk failures", f"{result['failures']} of {result['requests']}", "0"),
        ]
        print(f"wrk: {result}")

        # Searches during a rebuild: the same single-client loop, before and while it runs.
        before, fail_before = latencies(client, name, bodies, seconds=8)
        # One more item, so that the rebuild has something new to index.
        extra = orjson.dumps({"items": [{"id": "extra", "vector": qs[0]}]}, option=orjson.OPT_SERIALIZE_NUMPY)
        client.post(f"/collections/{name}/vectors", content=extra).raise_for_status()
        job_id = client.post(f"/collections/{name}/rebuild", json={}).json()["job_id"]
        stop = threading.Event()

        def watch() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                while c.get(f"/jobs/{job_id}").json()["state"] in ("queued", "running"):
                    time.sleep(0.2)
            stop.set()

        watcher = threading.Thread(target=watch)
        watcher.start()
        during, fail_during = latencies(client, name, bodies, stop=stop)
        watcher.join()
        ratio = pct_ms(during, 99) / pct_ms(before, 99)
        rows += [
            ("p99 before rebuild (ms)", f"{pct_ms(before, 99):.2f}", ""),
            ("p99 during rebuild (ms)", f"{pct_ms(during, 99):.2f} ({ratio:.1f}x)", "<= 3x"),
            ("failures before / during", f"{fail_before} / {fail_during} of {len(during)}", "0"),
        ]
    finally:
        client.close()
        server.stop()
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)

    width = max(len(r[0]) for r in rows)
    print(f"\nannserve bench-http: {n} x {dim}, {kind}, cosine; data: {source}")
    load_after = f"{os.getloadavg()[0]:.1f}"
    print(f"machine: {os.cpu_count()} CPUs, load average {load_before} before, {load_after} after")
    print(f"{'measure'.ljust(width)}  {'value':>22}  target")
    for label, value, target in rows:
        print(f"{label.ljust(width)}  {value:>22}  {target}")


def rebuild_and_wait(client: httpx.Client, name: str) -> dict:
    job_id = client.post(f"/collections/{name}/rebuild", json={}).json()["job_id"]
    while (job := client.get(f"/jobs/{job_id}").json())["state"] in ("queued", "running"):
        time.sleep(0.5)
    if job["state"] != "succeeded":
        raise SystemExit(f"rebuild failed: {job}")
    return job
