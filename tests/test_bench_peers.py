"""`annserve bench-http --peers` (app/bench/peers): the /proc CPU and memory reading of a process
tree, the choice of the matched knob, the table's rows and ratios, the --peers names, and a real
short comparison run of annserve alone on the committed MiniLM subset (real 384-d embeddings),
with a peer that is not installed and one that fails to start, both left out with a line."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from annserve.bench.datasets import Dataset
from annserve.bench.peers import Peer, PeerMissing, parse_peers, peer_classes
from annserve.bench.peers import command as peers_command
from annserve.bench.peers.driver import PeerResult, SweepPoint, matched_point, median_of
from annserve.bench.peers.loadgen import LoadRun
from annserve.bench.peers.proc import process_tree, stat_fields, tree_cpu_seconds, tree_pss_bytes
from annserve.bench.peers.table import markdown, ratios, table_rows

MINILM = Path(__file__).parent / "data" / "minilm384_3k.npz"

# A parent that never uses CPU itself: one child burns ~0.6 s of CPU and exits (reaped by the
# parent: its time moves to the parent's cutime), another burns ~0.6 s and stays alive.
BURN = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\n"
TREE = f"""
import subprocess, sys, time
burn = {BURN!r}
subprocess.run([sys.executable, "-c", burn], check=True)
alive = subprocess.Popen([sys.executable, "-c", burn + "time.sleep(60)"])
print(alive.pid, flush=True)
time.sleep(60)
"""


def own_cpu_seconds(pid: int) -> float:
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_tree_cpu_counts_live_and_reaped_children() -> None:
    parent = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True)
    try:
        alive = int(parent.stdout.readline())
        assert alive in process_tree(parent.pid)
        deadline = time.monotonic() + 30
        while own_cpu_seconds(alive) < 0.55:  # until the live child has burnt its share
            assert time.monotonic() < deadline
            time.sleep(0.05)
        total = tree_cpu_seconds(parent.pid)
        # Both children's ~0.6 s: the reaped one through cutime, the live one as a descendant;
        # the parent's own time (its start-up, both waits) is far below that.
        assert total >= 1.1, total
        assert own_cpu_seconds(parent.pid) < 0.5
        assert total - tree_cpu_seconds(alive) >= 0.55  # the reaped child is in the parent's share
        assert tree_pss_bytes(parent.pid) > tree_pss_bytes(alive) > 0
    finally:
        for pid in process_tree(parent.pid)[::-1]:
            os.kill(pid, 9)
        parent.wait(10)
    with pytest.raises(ProcessLookupError):
        tree_cpu_seconds(parent.pid)


def run(generator: str, rps: float, server_us: float, p50: float, client_us: float = 50.0) -> LoadRun:
    seconds = 10.0
    requests = int(rps * seconds)
    return LoadRun(generator, 16, seconds, requests, 0, p50, server_us * 1e-6 * requests,
                   client_us * 1e-6 * requests)  # fmt: skip


def point(ef: int, recall: float, rps: float = 1000.0, generator: str = "python") -> SweepPoint:
    return SweepPoint(ef, recall, run(generator, rps, 100.0, 1.0))


def test_matched_point_is_the_smallest_ef_reaching_the_target() -> None:
    sweep = [point(10, 0.80), point(24, 0.951), point(16, 0.96), point(32, 0.99)]
    assert matched_point(sweep, 0.95).ef == 16
    assert matched_point(sweep, 0.995).ef == 32  # none reaches it: the best recall
    assert matched_point([point(10, 0.9), point(16, 0.9)], 0.95).ef == 10  # a tie: the cheaper
    with pytest.raises(ValueError, match="at least one sweep point"):
        matched_point([], 0.95)


def test_median_of_rounds_keeps_the_middle_run_and_every_round() -> None:
    made = iter([run("python", 900, 10, 3.0), run("python", 1200, 20, 1.0), run("python", 1000, 30, 2.0)])
    middle = median_of(lambda: next(made), 3, "rps")
    assert middle.rps == pytest.approx(1000) and middle.server_us_per_search == pytest.approx(30)
    assert middle.rounds == pytest.approx((900, 1000, 1200))
    made = iter([run("python", 900, 10, 3.0), run("python", 1200, 20, 1.0)])
    assert median_of(lambda: next(made), 2, "p50_ms").p50_ms == 1.0  # even: the lower middle


def result(name: str, generator: str, rps: float, server_us: float, p50: float, ready_s: float,
           recall: float = 0.96, cross: LoadRun | None = None, memory: int = 100 * 2**20) -> PeerResult:  # fmt: skip
    r = PeerResult(name, f"{name} 1.0", "yes (test)", 50_000, ready_s / 2, ready_s, memory)
    r.sweep = [point(16, recall, rps, generator)]
    r.matched = SweepPoint(16, recall, dataclasses.replace(run(generator, rps, server_us, p50),
                                                           rounds=(rps * 0.9, rps, rps * 1.1)))
    r.single = dataclasses.replace(run(generator, 1000, server_us, p50), rounds=(p50 * 0.9, p50, p50 * 1.2))
    if cross is not None:
        r.cross, r.cross_single = cross, run("python", 900, server_us, p50 * 2)
    return r


def test_table_rows_and_ratios_against_annserve_with_the_same_generator() -> None:
    ours = result("annserve", "wrk", 4000, 250, 0.5, 10.0, cross=run("python", 3000, 300, 1.0))
    redis = result("redis", "python", 6000, 100, 0.25, 20.0, memory=50 * 2**20)
    chroma = result("chroma", "wrk", 800, 1500, 2.0, 5.0, recall=0.9, cross=run("python", 600, 1600, 3.0))
    rows = table_rows([ours, redis, chroma])
    assert [(r.service, r.generator) for r in rows] == [
        ("annserve", "wrk"), ("annserve", "python"), ("redis", "python"), ("chroma", "wrk"), ("chroma", "python"),
    ]  # fmt: skip
    # Each row takes the single-client run of its own generator.
    assert (rows[0].p50_ms, rows[1].p50_ms) == (pytest.approx(0.5), pytest.approx(1.0))
    r = ratios(rows)
    assert set(r) == {("redis", "python"), ("chroma", "wrk"), ("chroma", "python")}
    # Redis through the Python client is set against annserve through the Python client.
    assert r[("redis", "python")]["throughput"] == pytest.approx(3000 / 6000)
    assert r[("redis", "python")]["server_cpu"] == pytest.approx(100 / 300)
    assert r[("redis", "python")]["p50"] == pytest.approx(0.25 / 1.0)
    assert r[("redis", "python")]["ready"] == pytest.approx((50_000 / 10) / (50_000 / 20))
    assert r[("redis", "python")]["memory"] == pytest.approx(0.5)
    assert r[("chroma", "wrk")]["throughput"] == pytest.approx(4000 / 800)
    assert r[("chroma", "wrk")]["server_cpu"] == pytest.approx(1500 / 250)
    text = markdown(rows, "caption here", 16)
    assert "| redis 1.0 | python | 16 (0.960) | 6,000/s (5,400-6,600) | 100 us | 0.60 |" in text
    assert "| 0.25 ms (0.23-0.30) |" in text
    assert "| 5,000 / 2,500 vec/s (20.0 s) | 50 MiB |" in text
    assert "16 (0.900, target not reached)" in text
    assert "| redis | python | 0.50x | 0.33x | 0.25x | 2.00x | 0.50x |" in text
    assert "caption here" in text


def test_no_ratios_without_an_annserve_row_of_that_generator() -> None:
    ours, redis = result("annserve", "wrk", 4000, 250, 0.5, 10.0), result("redis", "python", 6000, 100, 0.2, 20.0)
    rows = table_rows([ours, redis])
    assert ratios(rows) == {}
    with pytest.raises(ValueError, match="matched run"):
        table_rows([PeerResult("x", "x", "no", 1, 1.0, 1.0, 1)])


def test_parse_peers() -> None:
    assert parse_peers("redis, chroma,pgvector") == ["redis", "chroma", "pgvector"]
    assert parse_peers("none") == []
    assert parse_peers("all") == ["redis", "pgvector", "chroma"]
    assert parse_peers("annserve,redis,redis") == ["redis"]
    for bad in ("mysql", "", "redis,none"):
        with pytest.raises(ValueError, match="--peers: expected a comma list"):
            parse_peers(bad)


class NotInstalled(Peer):
    name = "ghost"

    def check_installed(self) -> None:
        raise PeerMissing("ghost: ghost-db is not installed: pip install ghost-db")


class FailsToStart(Peer):
    name = "broken"

    def start(self, workdir: Path) -> None:
        raise RuntimeError("broken exited with code 1")


@pytest.mark.integration
def test_annserve_alone_on_real_embeddings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with np.load(MINILM) as f:
        base, queries = f["base"][:2000], f["queries"][:100]
    data = Dataset("minilm384", "cosine", base, queries, "minilm384-test")
    classes = {**peer_classes(), "ghost": NotInstalled, "broken": FailsToStart}
    monkeypatch.setattr(peers_command, "peer_classes", lambda: classes)
    options = {"k": 10, "connections": 4, "seconds": 1.0, "sweep_seconds": 1.0, "target_recall": 0.95,
               "wrk_exe": "wrk", "ladder": (10, 16, 32, 64, 128), "rounds": 2}  # fmt: skip
    children_before = set(process_tree(os.getpid()))
    results, text = peers_command.compare(["ghost", "broken"], data, "MiniLM test subset", options,
                                          out=tmp_path / "out", workdir=tmp_path / "work")  # fmt: skip
    # Every server started is stopped: no process of ours is left behind.
    assert set(process_tree(os.getpid())) == children_before
    assert [r.name for r in results] == ["annserve"]
    r = results[0]
    assert r.n == 2000 and r.insert_s > 0 and r.ready_s > r.insert_s
    assert [p.ef for p in r.sweep] == [10, 16, 32, 64, 128][: len(r.sweep)]
    assert r.reached and r.matched.recall >= 0.95
    assert r.matched.ef == min(p.ef for p in r.sweep if p.recall >= 0.95)
    for load in (r.matched.load, r.single, r.cross, r.cross_single):
        assert load.requests > 0 and load.failures == 0
        assert 0 < load.server_us_per_search < 100_000 and load.client_cpu_s > 0
    assert (r.matched.load.generator, r.cross.generator) == ("wrk", "python")
    assert len(r.matched.load.rounds) == len(r.cross_single.rounds) == 2
    assert r.memory_bytes > 10 * 2**20
    assert "ghost skipped, not installed: ghost: ghost-db is not installed" in text
    assert "broken failed, left out: RuntimeError: broken exited with code 1" in text
    assert text.count("| annserve 0.1.0 (hnswlib) |") == 2
    out = tmp_path / "out"
    assert (out / "peers.md").read_text() == text
    assert json.loads((out / "peers.json").read_text())["results"][0]["name"] == "annserve"
    assert (out / "peers_recall_vs_qps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
