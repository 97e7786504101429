"""The shared driver: one peer measured from start to stop, the same way for every service.

1. start it on loopback, create the collection, insert the base in batches of 1000 from one
   client (insert rate), wait until it is index-ready (rate to ready), read its memory;
2. the recall sweep: for each HNSW `ef` of the ladder, recall@10 of the queries against exact
   ground truth, and throughput at `connections` connections for a short run; stops once recall
   is near 1 (further points add cost, not information);
3. at the matched knob (the smallest ef reaching the target recall): throughput, server CPU per
   search and the client's CPU for a full run, then p50 with one connection, each the median of
   `rounds` runs;
4. stop it, whatever happened."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

import numpy as np

from ...indexes import recall_at_k
from ..datasets import Dataset
from .base import Peer
from .loadgen import LoadRun, run_python_clients, run_wrk
from .proc import tree_pss_bytes

EF_LADDER = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
INGEST_BATCH = 1000
STOP_RECALL = 0.995  # the sweep ends at the first ef reaching this
P50_SECONDS = 5.0  # the single-connection run
ROUNDS = 3  # matched and single-connection runs are each the median of this many rounds


@dataclass
class SweepPoint:
    ef: int
    recall: float
    load: LoadRun


@dataclass
class PeerResult:
    """Everything measured of one service."""

    name: str
    version: str
    durability: str
    n: int
    insert_s: float  # the batches, acknowledged
    ready_s: float  # from the first batch to index-ready
    memory_bytes: int  # PSS of the server's processes after ingest and after the runs, the larger
    sweep: list[SweepPoint] = field(default_factory=list)
    target_recall: float = 0.95
    matched: SweepPoint | None = None  # the matched knob's full run
    single: LoadRun | None = None  # one connection at the matched knob
    # The same matched knob through the other load generator (HTTP peers: the Python client).
    cross: LoadRun | None = None
    cross_single: LoadRun | None = None

    @property
    def insert_rate(self) -> float:
        return self.n / self.insert_s

    @property
    def ready_rate(self) -> float:
        return self.n / self.ready_s

    @property
    def reached(self) -> bool:
        return self.matched is not None and self.matched.recall >= self.target_recall


def matched_point(sweep: list[SweepPoint], target: float) -> SweepPoint:
    """The smallest-ef point whose recall reaches `target`; the best-recall point if none does
    (the table marks it as not reaching the target)."""
    if not sweep:
        raise ValueError("matched_point: expected at least one sweep point, got none")
    reaching = [p for p in sweep if p.recall >= target]
    if reaching:
        return min(reaching, key=lambda p: p.ef)
    return max(sweep, key=lambda p: (p.recall, -p.ef))


@dataclass
class Plan:
    """How every peer is run: the data, the ground truth and the load."""

    data: Dataset
    truth: np.ndarray  # (nq, k) base rows
    k: int
    connections: int
    seconds: float
    sweep_seconds: float
    target_recall: float
    wrk_exe: str | None
    ladder: tuple[int, ...] = EF_LADDER
    rounds: int = ROUNDS


def load(peer: Peer, plan: Plan, connections: int, seconds: float, workdir: Path, python: bool) -> LoadRun:
    """One run at the peer's current knob: wrk for an HTTP peer unless `python`, else the
    multi-process Python client."""
    queries = plan.data.queries
    if peer.http and not python:
        url, bodies = peer.http_search(queries, plan.k)
        return run_wrk(plan.wrk_exe, url, bodies, workdir / "wrk", connections, seconds, peer.server_pid())
    return run_python_clients(peer, queries, plan.k, connections, seconds)


def median_of(run: Callable[[], LoadRun], rounds: int, by: str) -> LoadRun:
    """`rounds` calls of `run()`: the one with the median `by` ('rps' or 'p50_ms'; the lower
    middle for an even count), holding every round's value in `rounds`. A noisy neighbour on a
    shared machine moves single runs by tens of percent; the median of a few shrugs it off."""
    runs = sorted((run() for _ in range(rounds)), key=lambda r: getattr(r, by))
    middle = runs[(len(runs) - 1) // 2]
    return dataclasses.replace(middle, rounds=tuple(getattr(r, by) for r in runs))


def say(peer: Peer, text: str) -> None:
    print(f"  {peer.name}: {text}", flush=True)


def describe(run: LoadRun) -> str:
    spread = f" (rounds {', '.join(f'{v:,.2f}' for v in run.rounds)})" if len(run.rounds) > 1 else ""
    return (f"{run.rps:,.0f}/s, server {run.server_us_per_search:,.0f} us/search "
            f"({run.server_cores:.2f} cores), "
            f"client {run.client_us_per_search:,.0f} us/search ({run.client_cores:.2f} cores), "
            f"p50 {run.p50_ms:.2f} ms, failures {run.failures}{spread}")  # fmt: skip


def measure_peer(peer: Peer, plan: Plan, workdir: Path) -> PeerResult:
    """Steps 1-3 of the module docstring against a started peer (the caller starts and stops it)."""
    base = plan.data.base
    n = base.shape[0]
    peer.create(plan.data.dim)
    ids = np.arange(n, dtype=np.int64)
    t0 = time.perf_counter()
    for lo in range(0, n, INGEST_BATCH):
        peer.insert(ids[lo : lo + INGEST_BATCH], base[lo : lo + INGEST_BATCH])
    insert_s = time.perf_counter() - t0
    peer.finish_ingest(n)
    ready_s = time.perf_counter() - t0
    memory = tree_pss_bytes(peer.server_pid())
    result = PeerResult(peer.name, peer.version(), peer.durability(), n, insert_s, ready_s, memory,
                        target_recall=plan.target_recall)  # fmt: skip
    say(peer, f"{result.version}; ingest {result.insert_rate:,.0f} vec/s, index-ready "
              f"{result.ready_rate:,.0f} vec/s; {memory / 2**20:,.0f} MiB")  # fmt: skip

    for ef in plan.ladder:
        peer.set_ef(ef)
        recall = recall_at_k(peer.search_many(plan.data.queries, plan.k), plan.truth)
        run = load(peer, plan, plan.connections, plan.sweep_seconds, workdir, python=False)
        result.sweep.append(SweepPoint(ef, recall, run))
        say(peer, f"ef {ef}: recall@{plan.k} {recall:.3f}, {describe(run)}")
        if recall >= STOP_RECALL:
            break

    knob = matched_point(result.sweep, plan.target_recall)
    peer.set_ef(knob.ef)
    recall = recall_at_k(peer.search_many(plan.data.queries, plan.k), plan.truth)  # also a warm-up
    single_s = min(plan.seconds, P50_SECONDS)

    def median_load(connections: int, seconds: float, python: bool) -> LoadRun:
        by = "rps" if connections > 1 else "p50_ms"
        return median_of(lambda: load(peer, plan, connections, seconds, workdir, python), plan.rounds, by)

    full = median_load(plan.connections, plan.seconds, python=False)
    result.matched = SweepPoint(knob.ef, recall, full)
    say(peer, f"matched ef {knob.ef}: recall@{plan.k} {recall:.3f}, "
              f"{plan.connections} conns: {describe(full)}")  # fmt: skip
    result.single = median_load(1, single_s, python=False)
    say(peer, f"one connection: {describe(result.single)}")
    if peer.http:
        result.cross = median_load(plan.connections, plan.seconds, python=True)
        result.cross_single = median_load(1, single_s, python=True)
        say(peer, f"Python client, {plan.connections} conns: {describe(result.cross)}; "
                  f"one connection: p50 {result.cross_single.p50_ms:.2f} ms")  # fmt: skip
    result.memory_bytes = max(memory, tree_pss_bytes(peer.server_pid()))
    return result
