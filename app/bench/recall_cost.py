"""What online-recall sampling costs the caller: search p50 and throughput over HTTP at several
`ANNSERVE_RECALL_SAMPLE_RATE`s, each on a fresh `annserve serve` with the same data.

    python -m annserve.bench.recall_cost [--rates 0,0.01,1] [--seconds 10] [--rounds 3]

Per rate: a server with the GloVe 10K subset in an hnswlib collection (defaults), rebuilt;
then, round after round over the servers, `wrk` (POST /search, one of 500 real query vectors
per request, rotating) with 1 connection (the lone caller's p50) and with 8 (throughput). The
table gives the medians over the rounds. Prints a markdown table; a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from .server_process import ServeProcess

DATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "glove50_10k.npz"
LUA = """
bodies = {}
local i = 0
for line in io.lines("%s") do bodies[#bodies + 1] = line end
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", "/collections/glove/search", {["Content-Type"] = "application/json"}, bodies[i])
end
"""


def _wrk(url: str, script: Path, connections: int, seconds: float) -> tuple[float, float]:
    """(p50 ms, requests/s) of one wrk run."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout
    p50 = re.search(r"^\s*50%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if not (p50 and rps):
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p50.group(2)]
    return float(p50.group(1)) * scale, float(rps.group(1))


def start(rate: float, work: Path, base: np.ndarray) -> tuple[ServeProcess, object]:
    """A server sampling at `rate`, holding `base` in a rebuilt hnswlib collection."""
    server = ServeProcess(work / f"data-{rate}", work / f"server-{rate}.log",
                          env={"ANNSERVE_RECALL_SAMPLE_RATE": str(rate)})
    client = server.start()
    body = {"name": "glove", "dim": base.shape[1], "metric": "cosine", "index": {"kind": "hnswlib"}}
    client.post("/collections", json=body).raise_for_status()
    for lo in range(0, len(base), 1000):
        items = [{"id": str(lo + i), "vector": v.tolist()} for i, v in enumerate(base[lo : lo + 1000])]
        client.post("/collections/glove/vectors", json={"items": items}).raise_for_status()
    job = client.post("/collections/glove/rebuild", json={}).json()["job_id"]
    while client.get(f"/jobs/{job}").json()["state"] not in ("succeeded", "failed"):
        time.sleep(0.2)
    return server, client


def measure(rates: list[float], seconds: float, rounds: int, work: Path) -> list[dict[str, float]]:
    """One server per rate, all up at once; the rounds go round the servers (A B C A B C ...),
    so that a shared machine's drift falls on every rate alike."""
    with np.load(DATA) as f:
        base, queries = f["base"], f["queries"]
    bodies = work / "bodies.jsonl"
    bodies.write_text("".join('{"vector": [%s], "k": 10}\n' % ",".join(f"{x:.6f}" for x in q) for q in queries))
    script = work / "search.lua"
    script.write_text(LUA % bodies)
    servers = []
    try:
        for rate in rates:
            servers.append(start(rate, work, base))
        for server, _ in servers:
            _wrk(server.url, script, 8, 3)  # warm-up
        lone: dict[float, list[float]] = {rate: [] for rate in rates}
        busy: dict[float, list[float]] = {rate: [] for rate in rates}
        for _ in range(rounds):
            for rate, (server, _) in zip(rates, servers):
                lone[rate].append(_wrk(server.url, script, 1, seconds)[0])
                busy[rate].append(_wrk(server.url, script, 8, seconds)[1])
        rows = []
        for rate, (_, client) in zip(rates, servers):
            recall = client.get("/collections/glove/recall").json()
            rows.append({
                "rate": rate, "p50_ms": statistics.median(lone[rate]), "rps": statistics.median(busy[rate]),
                "samples": recall["samples_total"], "dropped": recall["dropped_total"],
                "recall": recall["recall_at_k"],
            })
        return rows
    finally:
        for server, client in servers:
            client.close()
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="0,0.01,1")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (apt-get install -y wrk)")
    rates = [float(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(rates, args.seconds, args.rounds, Path(tmp))
    print("\n| sample rate | p50, 1 connection (ms) | searches/s, 8 connections | sampled | dropped | recall@10 |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        recall = "-" if row["recall"] is None else f"{row['recall']:.3f}"
        print(f"| {row['rate']:g} | {row['p50_ms']:.3f} | {row['rps']:.0f} | {row['samples']} | "
              f"{row['dropped']} | {recall} |")


if __name__ == "__main__":
    main()
