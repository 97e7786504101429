"""The real service in a real process: `annserve serve` on a loopback port, GloVe data, a
rebuild, a `kill -9`, a restart; every acknowledged write must still be there."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from conftest import wait_job

from annserve.bench.server_process import ServeProcess

pytestmark = pytest.mark.integration

RECALL_FLOOR = 0.95  # hnswlib at its default ef, on GloVe 10K, cosine
BATCH = 1000


@pytest.fixture()
def server(tmp_path):
    """`annserve serve` as a child process; stopped (and reaped) after the test, whatever happens."""
    server = ServeProcess(tmp_path / "data", tmp_path / "server.log")
    yield server
    server.stop()


def upsert(client: httpx.Client, ids: list[str], vectors: np.ndarray) -> None:
    for lo in range(0, len(ids), BATCH):
        rows = zip(ids[lo : lo + BATCH], vectors[lo : lo + BATCH].tolist())
        items = [{"id": i, "vector": v} for i, v in rows]
        response = client.post("/collections/glove/vectors", json={"items": items})
        assert response.status_code == 200, response.text
        assert response.json() == {"upserted": len(items)}


def search_ids(client: httpx.Client, queries: np.ndarray, k: int = 10, **extra) -> list[list[str]]:
    out = []
    for lo in range(0, len(queries), BATCH):
        body = {"vectors": queries[lo : lo + BATCH].tolist(), "k": k, **extra}
        response = client.post("/collections/glove/search/batch", json=body)
        assert response.status_code == 200, response.text
        out += [[hit["id"] for hit in row] for row in response.json()["results"]]
    return out


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def test_serve_rebuild_crash_restart(server, glove):
    client = server.start()
    assert client.get("/healthz").json() == {"status": "ok"}
    body = {"name": "glove", "dim": glove.dim, "metric": "cosine", "index": {"kind": "hnswlib"}}
    assert client.post("/collections", json=body).status_code == 201

    ids = [str(i) for i in range(len(glove.base))]
    upsert(client, ids, glove.base)
    queries = glove.queries[:200]
    truth = [[str(i) for i in row] for row in glove.truth[:200]]
    # Everything is still in the exact fresh index: exact answers.
    assert recall(search_ids(client, queries), truth) >= 0.999

    job_id = client.post("/collections/glove/rebuild", json={}).json()["job_id"]
    job = wait_job(client, job_id, timeout=300)
    assert job["state"] == "succeeded", job
    info = client.get("/collections/glove").json()
    assert info["main_count"] == len(ids) and info["fresh_count"] == 0, info
    approx = recall(search_ids(client, queries), truth)
    assert approx >= RECALL_FLOOR, f"recall@10 {approx:.3f} after the rebuild, floor {RECALL_FLOOR}"

    # More writes after the rebuild: they live only in the fresh index and the store.
    late_ids = [f"late-{i}" for i in range(len(glove.queries))]
    upsert(client, late_ids, glove.queries)
    client.close()
    server.kill()

    client = server.start()
    all_ids = ids + late_ids
    all_vectors = np.vstack([glove.base, glove.queries])
    info = client.get("/collections/glove").json()
    assert info["count"] == len(all_ids), info
    for item_id in late_ids + ids[::20]:
        response = client.get(f"/collections/glove/vectors/{item_id}")
        assert response.status_code == 200, (item_id, response.text)
    np.testing.assert_allclose(
        client.get("/collections/glove/vectors/late-7").json()["vector"], glove.queries[7], rtol=1e-6
    )
    # Every item is found by a search with its own vector (exact: ties between duplicates aside).
    found = search_ids(client, all_vectors, k=5, exact=True)
    missing = [i for i, row in zip(all_ids, found) if i not in row]
    assert not missing, f"{len(missing)} acknowledged items not found by search, e.g. {missing[:5]}"
    # And the approximate path (main from disk + fresh) still agrees with exact after the restart.
    probes = glove.base[::50] + 0.01
    exact = search_ids(client, probes, exact=True)
    assert recall(search_ids(client, probes), exact) >= RECALL_FLOOR
    client.close()


def test_a_bad_setting_stops_the_start_with_its_name_not_a_traceback(tmp_path):
    """`annserve serve` with an ANNSERVE_* value pydantic cannot read: exit 2, one line naming
    the variable and the value, no traceback."""
    import os
    import subprocess

    from annserve.cli import own_command

    env = {**os.environ, "ANNSERVE_SEARCH_ON_LOOP": "maybe", "ANNSERVE_PORT": "99999"}
    run = subprocess.run(
        [*own_command(), "serve", "--data-dir", str(tmp_path / "data"), "--workers", "1"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert "ANNSERVE_SEARCH_ON_LOOP" in run.stderr and "'maybe'" in run.stderr, run.stderr
    assert "ANNSERVE_PORT" in run.stderr and "99999" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
