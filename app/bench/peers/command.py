"""The comparison run: the data and its exact ground truth, annserve and then each peer started,
measured (driver.py) and stopped in turn, on the same loopback; then the table, the ratios, the
JSON and the plot under the output folder."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import shutil
import signal
import tempfile
import time
from pathlib import Path

from ...indexes import brute_force_knn
from ..datasets import Dataset
from . import PeerMissing, peer_classes
from .base import HNSW_EF_CONSTRUCTION, HNSW_M
from .driver import Plan, PeerResult, measure_peer
from .table import markdown, plot, table_rows

OUT = Path("bench-results")


def machine() -> str:
    """'<CPU model>, <n> cores, <RAM> GiB' from /proc."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal:"))  # fmt: skip
        ram = f", {mem_kib / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        ram = ""
    return f"{model}, {os.cpu_count()} cores{ram}"


class Terminated(Exception):
    """SIGTERM arrived: raised so that every started peer is stopped on the way out."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated(f"signal {signum}")


def compare(
    peers: list[str], data: Dataset, source: str, plan_options: dict, out: Path = OUT,
    workdir: Path | None = None, kind: str = "hnswlib", workers: int = 1,
) -> tuple[list[PeerResult], str]:  # fmt: skip
    """Run annserve and then each of `peers` (names from peer_classes) on `data`; write
    peers.md, peers.json and peers_recall_vs_qps.png under `out`. `plan_options` are Plan's
    fields after data and truth (k, connections, seconds, sweep_seconds, target_recall, wrk_exe,
    optionally ladder). Returns the results and the Markdown text. A peer that is not installed
    or fails is left out with a line saying why; annserve failing ends the run (RuntimeError)."""
    load_before = os.getloadavg()[0]
    started = datetime.datetime.now(datetime.timezone.utc)
    t = time.perf_counter()
    truth, _ = brute_force_knn(data.base, data.queries, plan_options["k"], data.metric, batch=256)
    print(f"ground truth in {time.perf_counter() - t:.1f}s", flush=True)
    plan = Plan(data, truth, **plan_options)
    classes = peer_classes()
    own_workdir = workdir is None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="annserve-bench-peers-"))
    results, notes = [], []
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        for name in ["annserve", *peers]:
            peer = classes[name](kind, workers) if name == "annserve" else classes[name]()
            try:
                peer.check_installed()
            except PeerMissing as exc:
                notes.append(f"{name} skipped, not installed: {exc}")
                print(notes[-1], flush=True)
                continue
            print(f"{name}: starting", flush=True)
            here = workdir / name
            here.mkdir(parents=True, exist_ok=True)
            try:
                peer.start(here)
                results.append(measure_peer(peer, plan, here))
            except Exception as exc:
                if name == "annserve" or isinstance(exc, Terminated):
                    raise
                notes.append(f"{name} failed, left out: {type(exc).__name__}: {exc}")
                print(notes[-1], flush=True)
            finally:
                peer.stop()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    load_after = os.getloadavg()[0]
    n, dim = data.base.shape
    caption = (
        f"Data: {source}; {n:,} x {dim}, cosine, {len(data.queries):,} queries, recall@{plan.k} against exact "
        f"search. Every service: HNSW M={HNSW_M}, ef_construction={HNSW_EF_CONSTRUCTION}, on loopback; annserve "
        f"with {workers} worker process{'es' if workers > 1 else ''}, its queries as base64 float32 (`vector_b64`, "
        f"as Redis's client sends a binary blob); the "
        f"knob is the smallest ef reaching recall@{plan.k} {plan.target_recall} (sweep runs "
        f"{plan.sweep_seconds:g} s; at the matched knob the median of {plan.rounds} runs of {plan.seconds:g} s, "
        f"and of {plan.rounds} with one connection for p50, their range in brackets). Server CPU from "
        f"/proc of the server's processes and their children; client CPU of the load generator's processes "
        f"(wrk: C, 2 threads; python: one process per connection); memory: PSS summed over the server's "
        f"processes after the runs (shared pages counted once). "
        f"Machine: {machine()}; {started:%Y-%m-%d %H:%M} UTC; load average {load_before:.1f} before, "
        f"{load_after:.1f} after."
    )  # fmt: skip
    if notes:
        caption += " " + " ".join(f"Note: {n.rstrip('.')}." for n in notes)
    text = markdown(table_rows(results), caption, plan.connections)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.md").write_text(text)
    (out / "peers.json").write_text(json.dumps(
        {"caption": caption, "notes": notes, "results": [dataclasses.asdict(r) for r in results]}, indent=1))
    plot(results, out / "peers_recall_vs_qps.png", f"{source}; {n:,} x {dim}, cosine; {started:%Y-%m-%d}",
         plan.connections, plan.target_recall)  # fmt: skip
    return results, text


def run_from_cli(
    peers: list[str], data: Dataset, source: str, kind: str, connections: int, seconds: int,
    target_recall: float, wrk_exe: str, keep: Path | None, workers: int = 1,
) -> None:  # fmt: skip
    """`annserve bench-http --peers ...`: the comparison with bench-http's own options; the sweep's
    runs are a third of `--seconds` (at least 2 s). Exits 1 with the cause if annserve fails."""
    import typer

    options = {"k": 10, "connections": connections, "seconds": float(seconds),
               "sweep_seconds": max(2.0, round(seconds / 3)), "target_recall": target_recall,
               "wrk_exe": wrk_exe}  # fmt: skip
    try:
        _, text = compare(peers, data, source, options, workdir=keep, kind=kind, workers=workers)
    except (RuntimeError, Terminated, OSError) as exc:
        print(f"error: {exc}", flush=True)
        raise typer.Exit(1) from None
    print("\n" + text)
    print(f"wrote {OUT / 'peers.md'}, {OUT / 'peers.json'} and {OUT / 'peers_recall_vs_qps.png'}")
