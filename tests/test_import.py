"""`annserve import` into a real `annserve serve` process: every file format (.npy, .fvecs, .parquet,
.jsonl) with ids and payloads, checked item by item; memory bounded by a batch; resuming after an
interruption (Ctrl-C in-process, and `kill -9` of a real `annserve import` process), each row arriving."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import serving
from typer.testing import CliRunner

from annserve import Client
from annserve.bench.server_process import ServeProcess
from annserve.cli import cli, own_command
from annserve.commands.sources import Input

pytestmark = pytest.mark.integration

ROWS = 3000  # GloVe rows per import
SAMPLE = [0, 1, 2, 999, 1000, 1777, ROWS - 2, ROWS - 1]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServeProcess]:
    with serving(tmp_path_factory.mktemp("import")) as server:
        yield server


@pytest.fixture()
def client(server) -> Iterator[Client]:
    with Client(server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def vectors(glove) -> np.ndarray:
    return glove.base[:ROWS]


def run(server: ServeProcess, *args: str):
    result = CliRunner().invoke(cli, ["import", *args, "--url", server.url])
    return result


def check_arrived(
    client: Client, collection: str, ids: list[str], vectors: np.ndarray, payloads=None
) -> None:
    """Every row is in the collection, once (the count), and a sample reads back exactly."""
    assert client.get_collection(collection)["count"] == len(ids)
    for row in SAMPLE:
        record = client.get(collection, ids[row])
        np.testing.assert_array_equal(record.vector, vectors[row])
        assert record.payload == (payloads[row] if payloads is not None else None)


def write_fvecs(path: Path, x: np.ndarray) -> None:
    rows = np.empty((len(x), x.shape[1] + 1), dtype="<i4")
    rows[:, 0] = x.shape[1]
    rows[:, 1:] = x.astype("<f4").view("<i4")
    rows.tofile(path)


def write_jsonl(path: Path, records) -> None:
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


# ---- each format ----------------------------------------------------------------------------------


def test_npy_with_ids_and_payloads_files(server, client, vectors, tmp_path):
    np.save(tmp_path / "x.npy", vectors.astype(np.float64))  # any numeric dtype, sent as float32
    ids = [f"doc-{i}" for i in range(ROWS)]
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    payloads = [{"row": i} if i % 2 else None for i in range(ROWS)]
    write_jsonl(tmp_path / "payloads.jsonl", payloads)
    result = run(
        server,
        str(tmp_path / "x.npy"),
        "-c",
        "npy",
        "--create",
        "--metric",
        "l2",
        "--ids",
        str(tmp_path / "ids.txt"),
        "--payloads",
        str(tmp_path / "payloads.jsonl"),
        "--batch-size",
        "700",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"imported {ROWS:,} vectors into 'npy'") and "vectors/s" in result.stdout
    assert client.get_collection("npy")["metric"] == "l2"
    check_arrived(client, "npy", ids, vectors, payloads)
    assert not list(tmp_path.glob("*.import-progress.json"))  # removed once complete


def test_fvecs_ids_default_to_row_numbers(server, client, vectors, tmp_path):
    write_fvecs(tmp_path / "x.fvecs", vectors)
    result = run(server, str(tmp_path / "x.fvecs"), "-c", "fvecs", "--create", "--batch-size", "512")
    assert result.exit_code == 0, result.output
    check_arrived(client, "fvecs", [str(i) for i in range(ROWS)], vectors)


def test_parquet_columns_across_row_groups(server, client, vectors, tmp_path):
    ids = [f"p{i}" for i in range(ROWS)]
    payloads = [{"row": i, "tag": "odd" if i % 2 else "even"} for i in range(ROWS)]
    table = pa.table(
        {
            "key": ids,
            "embedding": pa.array(list(vectors), type=pa.list_(pa.float32(), vectors.shape[1])),
            "meta": payloads,
        }
    )
    pq.write_table(table, tmp_path / "x.parquet", row_group_size=800)  # batches of 300 straddle groups
    result = run(
        server,
        str(tmp_path / "x.parquet"),
        "-c",
        "parquet",
        "--create",
        "--batch-size",
        "300",
        "--id-field",
        "key",
        "--vector-field",
        "embedding",
        "--payload-field",
        "meta",
    )
    assert result.exit_code == 0, result.output
    check_arrived(client, "parquet", ids, vectors, payloads)

    # A plain list column, payloads as JSON text, no id column: ids are row numbers.
    plain = pa.table({"vector": [v.tolist() for v in vectors], "payload": [json.dumps(p) for p in payloads]})
    pq.write_table(plain, tmp_path / "plain.parquet", row_group_size=1000)
    result = run(server, str(tmp_path / "plain.parquet"), "-c", "parquet-plain", "--create")
    assert result.exit_code == 0, result.output
    check_arrived(client, "parquet-plain", [str(i) for i in range(ROWS)], vectors, payloads)


def test_jsonl_records(server, client, vectors, tmp_path):
    ids = [f"j{i}" for i in range(ROWS)]
    payloads = [{"row": i} for i in range(ROWS)]
    records = [{"id": i, "vector": v.tolist(), "payload": p} for i, v, p in zip(ids, vectors, payloads)]
    write_jsonl(tmp_path / "x.jsonl", records)
    with open(tmp_path / "x.jsonl", "a") as f:
        f.write("\n\n")  # blank lines are skipped
    result = run(server, str(tmp_path / "x.jsonl"), "-c", "jsonl", "--create", "--batch-size", "256")
    assert result.exit_code == 0, result.output
    check_arrived(client, "jsonl", ids, vectors, payloads)


def test_input_and_collection_errors(server, client, vectors, tmp_path):
    np.save(tmp_path / "x.npy", vectors[:10])
    missing = run(server, str(tmp_path / "x.npy"), "-c", "never-created")
    assert missing.exit_code == 1 and "not found; pass --create" in missing.stderr
    client.create_collection("dim8", dim=8)
    wrong_dim = run(server, str(tmp_path / "x.npy"), "-c", "dim8")
    assert wrong_dim.exit_code == 1
    assert "dimension mismatch: collection 'dim8' has dim 8, the file has dim 50" in wrong_dim.stderr
    (tmp_path / "x.csv").write_text("1,2\n")
    suffix = run(server, str(tmp_path / "x.csv"), "-c", "dim8")
    assert suffix.exit_code == 1 and ".npy, .fvecs, .parquet, .jsonl" in suffix.stderr
    (tmp_path / "short.txt").write_text("a\nb\n")
    short = run(server, str(tmp_path / "x.npy"), "-c", "dim8", "--ids", str(tmp_path / "short.txt"))
    assert short.exit_code == 1 and "2 lines for the 10 rows" in short.stderr
    write_jsonl(tmp_path / "ragged.jsonl", [{"vector": [1.0] * 50}, {"vector": [1.0] * 49}])
    ragged = run(server, str(tmp_path / "ragged.jsonl"), "-c", "ragged", "--create")
    assert ragged.exit_code == 1 and "line 2" in ragged.stderr and "49 numbers" in ragged.stderr


def test_parquet_without_pyarrow_says_how_to_install_it(server, vectors, tmp_path, monkeypatch):
    pq.write_table(pa.table({"vector": [v.tolist() for v in vectors[:5]]}), tmp_path / "x.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    result = run(server, str(tmp_path / "x.parquet"), "-c", "no-arrow", "--create")
    assert result.exit_code == 1 and 'pip install "annserve[parquet]"' in result.stderr


def test_every_reader_starts_at_any_row(fashion, tmp_path):
    # Resuming reads from the row recorded as done: each format must give exactly the rows from there.
    x = fashion.base[:700]
    np.save(tmp_path / "x.npy", x)
    write_fvecs(tmp_path / "x.fvecs", x)
    write_jsonl(tmp_path / "x.jsonl", ({"id": f"j{i}", "vector": v.tolist()} for i, v in enumerate(x)))
    pq.write_table(pa.table({"vector": [v.tolist() for v in x]}), tmp_path / "x.parquet", row_group_size=128)
    for name in ("x.npy", "x.fvecs", "x.jsonl", "x.parquet"):
        source = Input(tmp_path / name)
        for start in (0, 1, 127, 128, 300, 699):
            batches = list(source.batches(start, 50))
            got = np.vstack([b.vectors for b in batches])
            np.testing.assert_array_equal(got, x[start:], err_msg=f"{name} from row {start}")
            assert batches[0].start == start and all(len(b.ids) <= 50 for b in batches)
            ids = [i for b in batches for i in b.ids]
            prefix = "j" if name == "x.jsonl" else ""
            assert ids == [f"{prefix}{i}" for i in range(start, len(x))], f"{name} from row {start}"


# ---- bounded memory -------------------------------------------------------------------------------


def test_memory_is_bounded_by_a_batch(fashion, tmp_path):
    # 6000 x 784 float32 is 18.8 MB (1000 rows of .jsonl: 25 MB once parsed into Python floats); a batch of
    # 100 rows is 0.3 MB. Reading a whole file at once would pass the bound; a batch at a time stays below.
    x, batch, bound = fashion.base, 100, 8 * 1024 * 1024
    np.save(tmp_path / "x.npy", x)
    write_fvecs(tmp_path / "x.fvecs", x)
    write_jsonl(tmp_path / "x.jsonl", ({"vector": v.tolist()} for v in x[:1000]))
    pq.write_table(
        pa.table({"vector": pa.array(list(x), type=pa.list_(pa.float32()))}),
        tmp_path / "x.parquet",
        row_group_size=500,
    )
    for name in ("x.npy", "x.fvecs", "x.jsonl", "x.parquet"):
        pool_peak, rows = 0, 0
        tracemalloc.start()  # numpy's buffers and Python objects; Arrow's pool is counted apart
        try:
            source = Input(tmp_path / name)  # opening must not read the file either
            for b in source.batches(0, batch):
                rows += len(b.ids)
                pool_peak = max(pool_peak, pa.total_allocated_bytes())
                np.testing.assert_array_equal(b.vectors[-1], x[b.start + len(b.ids) - 1])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert rows == source.rows == (1000 if name == "x.jsonl" else len(x)), name
        assert peak < bound, f"{name}: {peak / 1e6:.1f} MB traced while reading it"
        assert pool_peak < bound, f"{name}: Arrow held {pool_peak / 1e6:.1f} MB while reading it"


# ---- resuming -------------------------------------------------------------------------------------


def test_interrupted_import_resumes_where_it_stopped(server, client, vectors, tmp_path, monkeypatch):
    write_fvecs(tmp_path / "x.fvecs", vectors)
    args = [str(tmp_path / "x.fvecs"), "-c", "resumed", "--create", "--batch-size", "400"]
    progress_file = tmp_path / "x.fvecs.resumed.import-progress.json"
    real_upsert, sent = Client.upsert, []

    def upsert_then_interrupt(self, collection, ids, *rest, **options):
        done = real_upsert(self, collection, ids, *rest, **options)
        sent.append(list(ids))
        if len(sent) == 3:  # Ctrl-C after the service acknowledged batch 3, before it was recorded
            raise KeyboardInterrupt
        return done

    monkeypatch.setattr(Client, "upsert", upsert_then_interrupt)
    first = run(server, *args)
    assert first.exit_code == 130 and "interrupted at row 800 of 3,000" in first.stderr, first.output
    assert json.loads(progress_file.read_text())["rows_done"] == 800
    assert client.get_collection("resumed")["count"] == 1200

    sent.clear()
    monkeypatch.setattr(
        Client,
        "upsert",
        lambda self, c, ids, *a, **o: sent.append(list(ids)) or real_upsert(self, c, ids, *a, **o),
    )
    second = run(server, *args)
    assert second.exit_code == 0, second.output
    assert "resuming at row 800 of 3,000" in second.stderr
    assert f"imported {ROWS - 800:,} vectors" in second.stdout and "(resumed at row 800)" in second.stdout
    assert [s[0] for s in sent] == ["800", "1200", "1600", "2000", "2400", "2800"]  # batch 3 again, then on
    check_arrived(client, "resumed", [str(i) for i in range(ROWS)], vectors)
    assert not progress_file.exists()


def test_progress_of_another_input_or_a_recreated_collection_is_not_trusted(
    server, client, vectors, tmp_path
):
    np.save(tmp_path / "x.npy", vectors)
    progress_file = tmp_path / "x.npy.again.import-progress.json"
    args = [str(tmp_path / "x.npy"), "-c", "again", "--create", "--batch-size", "1000"]
    assert run(server, *args).exit_code == 0
    source = Input(tmp_path / "x.npy")
    identity = {
        "url": server.url,
        "collection": "again",
        "inputs": source.fingerprint(),
        "fields": ["id", "vector", "payload"],
    }
    # As if an earlier run had stopped at row 2000, but the collection was deleted and created since.
    client.delete_collection("again")
    progress_file.write_text(json.dumps({"version": 1, "identity": identity, "rows_done": 2000}))
    result = run(server, *args)
    assert result.exit_code == 0 and "is not in 'again'; starting from row 0" in result.stderr, result.output
    check_arrived(client, "again", [str(i) for i in range(ROWS)], vectors)
    # Progress recorded for another file is ignored.
    progress_file.write_text(
        json.dumps({"version": 1, "identity": {**identity, "inputs": {}}, "rows_done": 2000})
    )
    result = run(server, *args)
    assert (
        result.exit_code == 0
        and "for another input" in result.stderr
        and f"imported {ROWS:,}" in result.stdout
    )


def test_kill_9_of_the_import_process_then_rerun(server, client, glove, tmp_path):
    x = glove.base  # 10K rows in batches of 10: a thousand requests, time enough to be killed midway
    np.save(tmp_path / "x.npy", x)
    progress_file = tmp_path / "x.npy.killed.import-progress.json"
    command = own_command() + ["import", str(tmp_path / "x.npy"), "--collection", "killed", "--create", "--batch-size", "10"]
    env = {**os.environ, "ANNSERVE_URL": server.url}  # the URL from the environment
    log = open(tmp_path / "import.log", "wb")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        done = 0
        while done < 2000:
            assert proc.poll() is None, f"the import ended (code {proc.returncode}) before it could be killed"
            assert time.monotonic() < deadline, "the import made no progress"
            try:
                done = json.loads(progress_file.read_text())["rows_done"]
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
        log.close()
    at_kill = json.loads(progress_file.read_text())["rows_done"]
    assert 2000 <= at_kill < len(x)
    assert client.get_collection("killed")["count"] >= at_kill

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"(resumed at row {at_kill:,})" in rerun.stdout
    assert f"imported {len(x) - at_kill:,} vectors" in rerun.stdout
    assert client.get_collection("killed")["count"] == len(x)
    for row in (0, at_kill - 1, at_kill, len(x) - 1):
        np.testing.assert_array_equal(client.get("killed", str(row)).vector, x[row])
