"""`annserve bench-scaling`: its size list, its per-item figures and table, and the command end
to end on GloVe test rows (two small sizes, real servers, real wrk)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from annserve.bench.scaling import SizeResult, marginal_lines, parse_sizes, table, vector_bytes, write_csv

DATA = Path(__file__).parent / "data"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def a_result(**changes) -> SizeResult:
    figures = dict(n=1000, dim=50, build_s=1.0, ef=24, recall=0.96, p50_ms=0.4, rps=5000.0,
                   cpu_per_search_us=150.0, rss_bytes=300_000_000, empty_rss_bytes=250_000_000,
                   restart_rss_bytes=280_000_000, rss_file_bytes=40_000_000, index_bytes=30_000_000,
                   vector_bytes=10_000_000,
                   restart_s=1.5)  # fmt: skip
    return SizeResult(**{**figures, **changes})


def test_sizes_parse_as_ascending_whole_numbers():
    assert parse_sizes("50000,200000,400000") == [50_000, 200_000, 400_000]
    assert parse_sizes(" 50k, 200_000 ,400K,") == [50_000, 200_000, 400_000]
    assert parse_sizes("7") == [7]


@pytest.mark.parametrize("text", ["", ",", "0", "-5", "1e5", "abc", "10,5", "5,5", "2.5k"])
def test_bad_sizes_say_what_was_expected_and_what_came(text):
    with pytest.raises(ValueError, match=r"--sizes: expected"):
        parse_sizes(text)


def test_rss_per_item_counts_only_what_the_data_added():
    r = a_result()
    assert r.rss_per_item == 50_000  # (300M - 250M) / 1000
    assert r.restart_rss_per_item == 30_000
    assert r.expected_per_item == 40_000  # (30M + 10M) / 1000
    assert r.ratio == pytest.approx(1.25)
    assert vector_bytes(400_000, 50) == 80_000_000


def test_table_marks_a_ratio_over_target_and_csv_holds_every_figure(tmp_path):
    good, bad = a_result(), a_result(n=2000, rss_bytes=400_000_000)  # 75,000 vs 20,000 B/item: 3.75x
    lines = table([good, bad])
    assert len(lines) == 3
    assert "1.25x" in lines[1] and "!" not in lines[1]
    assert "3.75x !" in lines[2] and "2,000" in lines[2]
    write_csv([good, bad], tmp_path / "s.csv")
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert [int(r["n"]) for r in rows] == [1000, 2000]
    assert [float(r["ratio"]) for r in rows] == [1.25, 3.75]
    assert float(rows[0]["restart_rss_per_item"]) == 30_000


def test_marginal_cost_per_item_cancels_a_constant_overhead():
    small = a_result()  # 50M above empty for 40M of index + vectors
    big = a_result(n=3000, rss_bytes=390_000_000, restart_rss_bytes=350_000_000, index_bytes=90_000_000,
                   vector_bytes=30_000_000)  # 2000 items more: +90M RSS, +70M after a restart, +80M expected
    (line,) = marginal_lines([small, big])
    assert line == ("1,000 -> 3,000: each added item 45,000 B of RSS (35,000 B after a restart) "
                    "against 40,000 B of index + vector: 1.12x")
    assert marginal_lines([small]) == []


@pytest.mark.integration
def test_bench_scaling_end_to_end_on_glove_rows(tmp_path):
    with np.load(DATA / "glove50_10k.npz") as f:
        np.save(tmp_path / "glove.npy", np.concatenate([f["base"], f["queries"]]))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "annserve.cli", "bench-scaling", "--sizes", "2000,4000",
               "--dataset", str(tmp_path / "glove.npy"), "--metric", "cosine", "--queries", "200",
               "--seconds", "1", "--connections", "4", "--out", str(out)]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = list(csv.DictReader(open(out / "scaling.csv")))
    assert [int(r["n"]) for r in rows] == [2000, 4000]
    for r in rows:
        assert float(r["recall"]) >= 0.95  # against exact ground truth, at the ef it picked
        assert int(r["vector_bytes"]) == int(r["n"]) * 50 * 4
        assert int(r["index_bytes"]) > int(r["vector_bytes"])  # hnswlib holds the vectors and its graph
        assert int(r["rss_bytes"]) > int(r["empty_rss_bytes"]) > 50 * 2**20
        assert float(r["rps"]) > 0 and float(r["p50_ms"]) > 0
        assert 0 < float(r["restart_s"]) < 120
    assert (out / "scaling.png").read_bytes()[:8] == PNG_MAGIC
    assert "annserve bench-scaling" in run.stdout and "load average" in run.stdout
    bad = subprocess.run([*command[:3], "bench-scaling", "--sizes", "4000,2000"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--sizes: expected ascending" in bad.stderr, bad.stderr
