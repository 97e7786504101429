"""The event loop is never held by a request (defect 6): `/healthz` answers within 100 ms while a
search waits in the engine and while a 32 MiB JSON upsert is parsed and written.

Before the fix a lone query was searched on the event loop (and the engine then waited there
for its search threads, or behind a writer holding a shard's lock), and upsert bodies were
parsed on the loop: a third of a second at the 32 MiB cap, during which no connection moved.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
from fastapi.testclient import TestClient
from conftest import wait_job
from test_api import wait_ready

from annserve.api.app import create_app
from annserve.bench.http import big_json_upsert
from annserve.bench.server_process import ServeProcess
from annserve.settings import Settings

HEALTHZ_WITHIN = 0.1  # seconds
HOLD = 3.0  # seconds a held search waits in the engine (the loop would be held as long)
BODY_CAP = 32 * 1024 * 1024  # the default ANNSERVE_MAX_BODY_BYTES
DIM = 384
ATTEMPTS = 3


def fastest_healthz(client, waiting) -> tuple:
    """The fastest of ATTEMPTS /healthz calls (answer, seconds) among those that ended while the
    search still waited (`waiting()`); (None, inf) when none did. A loop held by the search would
    hold every call until the search ends; one slow call alone is a pause of the test process
    (a garbage collection late in the suite took 148 ms once)."""
    best = (None, float("inf"))
    for _ in range(ATTEMPTS):
        start = time.perf_counter()
        health = client.get("/healthz")
        took = time.perf_counter() - start
        if waiting() and took < best[1]:
            best = (health, took)
    return best


def healthz_while_a_search_waits(client, hold, search_body: dict) -> tuple:
    """`hold(held, release)` runs on a thread of its own: it takes what a search will wait for,
    sets `held`, and keeps it until `release` is set (or HOLD s). Meanwhile a search of
    collection c with `search_body` is sent and /healthz timed (`fastest_healthz`). Returns
    (the /healthz answer, its seconds, the search's answer)."""
    held, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=hold, args=(held, release))
    holder.start()
    answer: dict = {}
    searcher = threading.Thread(target=lambda: answer.update(r=client.post("/collections/c/search", json=search_body)))
    try:
        assert held.wait(10)
        searcher.start()
        time.sleep(0.3)  # the search has reached the engine and waits
        health, took = fastest_healthz(client, lambda: "r" not in answer)
    finally:
        release.set()
        holder.join(30)
        searcher.join(30)
    return health, took, answer["r"]


def test_healthz_answers_while_a_search_waits_behind_a_writer(tmp_path):
    """A writer holds the shard's state lock: the search must not wait for it on the event
    loop (it could run there when nothing is in its way: batching.py), so /healthz answers."""
    with TestClient(create_app(Settings(data_dir=tmp_path / "data")), raise_server_exceptions=False) as client:
        wait_ready(client)
        body = {"name": "c", "dim": 4, "metric": "l2", "index": {"kind": "flat"}}
        assert client.post("/collections", json=body).status_code == 201
        items = [{"id": "a", "vector": [1, 0, 0, 0]}, {"id": "b", "vector": [0, 1, 0, 0]}]
        assert client.post("/collections/c/vectors", json={"items": items}).status_code == 200
        shard = client.app.state.manager.get("c")._shards[0]

        def writer(held, release) -> None:
            with shard._state.write():
                held.set()
                release.wait(HOLD)

        health, took, answer = healthz_while_a_search_waits(client, writer, {"vector": [1, 0, 0, 0]})
        assert took < HEALTHZ_WITHIN, f"/healthz took {took * 1e3:.0f} ms while a search waited for a writer"
        assert health.status_code == 200
        assert answer.status_code == 200 and answer.json()["results"][0]["id"] == "a"


def test_healthz_answers_while_a_search_waits_in_the_engine(tmp_path):
    """An engine call that waits (here: made to) on a search thread leaves the loop free; with
    ANNSERVE_SEARCH_ON_LOOP off every engine call goes to one."""
    settings = Settings(data_dir=tmp_path / "data", search_on_loop=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client)
        body = {"name": "c", "dim": 4, "metric": "l2", "index": {"kind": "flat"}}
        assert client.post("/collections", json=body).status_code == 201
        items = [{"id": "a", "vector": [1, 0, 0, 0]}, {"id": "b", "vector": [0, 1, 0, 0]}]
        assert client.post("/collections/c/vectors", json={"items": items}).status_code == 200

        # The engine's search of this collection waits, as it would behind a writer holding a
        # shard's write lock, until the test lets it go.
        collection = client.app.state.manager.get("c")
        entered, release = threading.Event(), threading.Event()
        search = collection.search

        def held_search(*args, **kwargs):
            entered.set()
            release.wait(HOLD)
            return search(*args, **kwargs)

        collection.search = held_search
        answer: dict = {}
        searcher = threading.Thread(
            target=lambda: answer.update(r=client.post("/collections/c/search", json={"vector": [1, 0, 0, 0]}))
        )
        searcher.start()
        try:
            assert entered.wait(10), "the search never reached the engine"
            health, took = fastest_healthz(client, lambda: "r" not in answer)
        finally:
            release.set()
            searcher.join(30)
        assert took < HEALTHZ_WITHIN, f"/healthz took {took * 1e3:.0f} ms while a search waited in the engine"
        assert health.status_code == 200
        assert answer["r"].status_code == 200 and answer["r"].json()["results"][0]["id"] == "a"


def test_healthz_answers_during_a_32_mib_json_upsert(tmp_path):
    """A real server (uvloop, httptools, serve's GIL switch interval), JSON upserts as large as
    the body cap allows, /healthz polled throughout. The best of ATTEMPTS upserts counts: on a
    busy machine the OS may not run the server for a while, which no code can help, but a loop
    held by a parse is held in every attempt."""
    rows = np.random.default_rng(7).standard_normal((1000, DIM)).astype(np.float32)
    body, n = big_json_upsert(rows, BODY_CAP)  # bench-http's body for its loop-lag run
    assert len(body) > BODY_CAP * 0.9
    body_file = tmp_path / "upsert.json"
    body_file.write_bytes(body)
    server = ServeProcess(tmp_path / "data", tmp_path / "server.log")
    client = server.start()
    try:
        spec = {"name": "big", "dim": DIM, "metric": "l2", "index": {"kind": "flat"}}
        client.post("/collections", json=spec).raise_for_status()
        attempts = []
        for _ in range(ATTEMPTS):
            slowest, polls = healthz_during(server.url, client, body_file, n)
            attempts.append(f"{slowest * 1e3:.0f} ms at worst of {polls} polls")
            if slowest < HEALTHZ_WITHIN:
                break
        else:
            raise AssertionError(
                f"/healthz was slow during every {len(body) / 2**20:.1f} MiB upsert: {attempts}\n{server.log_tail()}"
            )
    finally:
        client.close()
        server.stop()


def healthz_during(url: str, client: httpx.Client, body_file: Path, n: int) -> tuple[float, int]:
    """(slowest /healthz answer in seconds, polls) while one upsert of the body in `body_file`
    runs. The upsert is sent by another process: a client thread here, sending 32 MiB, would
    hold this process's GIL and slow the polls by itself."""
    sender = subprocess.Popen(
        [sys.executable, "-c", SEND, url + "/collections/big/vectors", str(body_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    slowest, polls = 0.0, 0
    try:
        while sender.poll() is None:
            start = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            slowest, polls = max(slowest, time.perf_counter() - start), polls + 1
            time.sleep(0.005)
        out, err = sender.communicate(timeout=120)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait(10)
    assert sender.returncode == 0, err.decode()[-2000:]
    assert orjson.loads(out) == {"upserted": n}
    assert polls >= 5, f"the upsert took too little time to tell ({polls} polls)"
    return slowest, polls


# Posts a file's bytes to a URL, prints the answer (status 200 or exit code 1).
SEND = """
import sys, httpx
r = httpx.post(sys.argv[1], content=open(sys.argv[2], "rb").read(), timeout=120)
print(r.text)
sys.exit(r.status_code != 200)
"""


def test_healthz_answers_while_a_search_waits_for_another_ef_at_the_hnswlib_gate(tmp_path, glove):
    """A search of another ef holds hnswlib's gate (a tune, or a request's own `params`): a
    search of the default ef must wait for it on a search thread, not on the event loop."""
    with TestClient(create_app(Settings(data_dir=tmp_path / "data")), raise_server_exceptions=False) as client:
        wait_ready(client)
        body = {"name": "c", "dim": glove.dim, "metric": "cosine", "index": {"kind": "hnswlib"}}
        assert client.post("/collections", json=body).status_code == 201
        items = [{"id": f"g{i}", "vector": glove.base[i].tolist()} for i in range(500)]
        assert client.post("/collections/c/vectors", json={"items": items}).status_code == 200
        job = client.post("/collections/c/rebuild").json()
        assert wait_job(client, job["job_id"])["state"] == "succeeded"
        main = client.app.state.manager.get("c")._shards[0].main

        def other_ef(held, release) -> None:
            with main._gate.searching(main.search_params["ef"] + 100):
                held.set()
                release.wait(HOLD)

        query = {"vector": glove.base[7].tolist(), "k": 1}
        health, took, answer = healthz_while_a_search_waits(client, other_ef, query)
        assert took < HEALTHZ_WITHIN, f"/healthz took {took * 1e3:.0f} ms while a search waited at the ef gate"
        assert health.status_code == 200
        assert answer.status_code == 200 and answer.json()["results"][0]["id"] == "g7"
