"""Crash safety, repeated: `kill -9` the real server while several clients upsert and delete
concurrently, restart it, and check every acknowledged write (present, with its latest vector
and payload) and every acknowledged delete (absent, and never in a search answer). Several
cycles: during plain traffic, during a rebuild, during a snapshot, and during start-up.

Each client owns its ids and sends one request at a time, so for every id the test knows the
state its last acknowledged request left, and at most one request whose outcome the kill made
unknown: after the restart an id must be in its acknowledged state, or in the state of that one
unacknowledged request (a write that was not acknowledged may or may not have happened)."""

from __future__ import annotations

import random
import threading
import time

import httpx
import numpy as np
import pytest

from annserve.bench.server_process import ServeProcess
from annserve.engine.snapshots import restore_snapshot

pytestmark = pytest.mark.integration

DIM = 32
BASE = 20_000  # items never touched by the clients: enough for a rebuild and a start-up to take a while
CLIENTS = 4
IDS_PER_CLIENT = 150
DELETED = None  # the state of a deleted id
ADMIN = {"X-API-Key": "crash-admin"}


def vector(client: int, seq: int) -> np.ndarray:
    """The vector of a client's `seq`-th write: float32, so the JSON round trip is exact."""
    return np.random.default_rng([client, seq]).standard_normal(DIM).astype(np.float32)


def base_vectors() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((BASE, DIM)).astype(np.float32)


class Writer(threading.Thread):
    """One client: upserts (batches of 5) and deletes (batches of 3, or one by DELETE) of its
    own ids, one request at a time, until stopped or until the server goes away."""

    def __init__(self, n: int, url: str, acked: dict, seq0: int) -> None:
        super().__init__(name=f"writer-{n}", daemon=True)
        self.n, self.url, self.acked = n, url, acked  # acked: id -> seq of the payload, or DELETED
        self.seq = seq0
        self.pending: dict[str, int | None] = {}  # the request in flight when the server died
        self.failures: list[str] = []
        self.done = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        rng = random.Random(self.n * 1000 + self.seq)
        ids = [f"c{self.n}-{i}" for i in range(IDS_PER_CLIENT)]
        with httpx.Client(base_url=self.url, headers=ADMIN, timeout=30) as http:
            while not self.stop_event.is_set():
                roll = rng.random()
                if roll < 0.65:
                    chosen = list(dict.fromkeys(rng.sample(ids, 5)))
                    states = {}
                    items = []
                    for item_id in chosen:
                        self.seq += 1
                        states[item_id] = self.seq
                        items.append(
                            {
                                "id": item_id,
                                "vector": vector(self.n, self.seq).tolist(),
                                "payload": {"client": self.n, "seq": self.seq, "nested": {"id": item_id}},
                            }
                        )
                    request = ("POST", "/collections/crash/vectors", {"items": items})
                    expect = (200,)
                elif roll < 0.9:
                    states = {item_id: DELETED for item_id in rng.sample(ids, 3)}
                    request = ("POST", "/collections/crash/vectors/delete", {"ids": list(states)})
                    expect = (200,)
                else:
                    one = rng.choice(ids)
                    states = {one: DELETED}
                    request = ("DELETE", f"/collections/crash/vectors/{one}", None)
                    expect = (200, 404)  # 404: it was already absent, which is the state wanted
                self.pending = states
                try:
                    method, path, body = request
                    response = http.request(method, path, json=body)
                except httpx.TransportError:
                    return  # killed: `pending` may or may not have happened
                if response.status_code not in expect:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")
                    return
                self.acked.update(states)
                self.pending = {}
                self.done += 1


def check_state(client: httpx.Client, acked: dict, pending: dict, base: np.ndarray) -> dict:
    """Every id in its acknowledged state (or its unacknowledged one); returns the state found."""
    found: dict[str, int | None] = {}
    problems = []

    def look(item_id: str) -> None:
        response = client.get(f"/collections/crash/vectors/{item_id}")
        if response.status_code == 404:
            found[item_id] = DELETED
            return
        assert response.status_code == 200, response.text
        body = response.json()
        seq = body["payload"]["seq"]
        owner = int(item_id[1:].split("-")[0])
        if body["payload"] != {"client": owner, "seq": seq, "nested": {"id": item_id}}:
            problems.append(f"{item_id}: payload {body['payload']}")
        if not np.array_equal(np.asarray(body["vector"], np.float32), vector(owner, seq)):
            problems.append(f"{item_id}: the vector is not the one written with its payload (seq {seq})")
        found[item_id] = seq

    for item_id in acked:
        look(item_id)
    for item_id, state in acked.items():
        allowed = {state} | ({pending[item_id]} if item_id in pending else set())
        if found[item_id] not in allowed:
            problems.append(
                f"{item_id}: acknowledged {state!r}, found {found[item_id]!r} (allowed {allowed})"
            )
    assert not problems, problems[:10]
    present = [i for i, s in found.items() if s is not DELETED]
    info = client.get("/collections/crash").json()
    assert info["count"] == BASE + len(present), (info, len(present))
    # Base items untouched, vectors whole.
    for row in range(0, BASE, 997):
        got = client.get(f"/collections/crash/vectors/b{row}").json()["vector"]
        assert np.array_equal(np.asarray(got, np.float32), base[row]), row
    return found


def check_search(client: httpx.Client, found: dict) -> None:
    """Present ids are found by their own vector (exact: all; the index: nearly all); deleted
    ids never come back in an answer."""
    present = [(i, s) for i, s in found.items() if s is not DELETED]
    deleted = {i for i, s in found.items() if s is DELETED}
    sample = present[:: max(1, len(present) // 60)]
    if not sample:
        return
    queries = [vector(int(i[1:].split("-")[0]), s).tolist() for i, s in sample]
    for exact in (True, False):
        response = client.post(
            "/collections/crash/search/batch", json={"vectors": queries, "k": 10, "exact": exact}
        )
        assert response.status_code == 200, response.text
        rows = response.json()["results"]
        hits = sum(row[0]["id"] == item_id for row, (item_id, _) in zip(rows, sample))
        assert hits >= (len(sample) if exact else 0.95 * len(sample)), (exact, hits, len(sample))
        leaked = {hit["id"] for row in rows for hit in row} & deleted
        assert not leaked, f"deleted ids in search answers: {sorted(leaked)[:5]}"


@pytest.fixture()
def server(tmp_path):
    env = {"ANNSERVE_ADMIN_API_KEY": ADMIN["X-API-Key"], "ANNSERVE_FRESH_LIMIT": "3000"}
    server = ServeProcess(tmp_path / "data", tmp_path / "server.log", env)
    yield server
    server.stop()


def wait_for_job_running(client: httpx.Client, job_id: str, at_least: float, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] == "running" and job["progress"] >= at_least:
            return
        assert job["state"] in ("queued", "running"), job
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} did not reach {at_least:.0%} in {timeout}s")


def test_kill_9_repeatedly_loses_no_acknowledged_write(server, tmp_path):
    base = base_vectors()
    client = server.start()
    client.headers.update(ADMIN)
    body = {"name": "crash", "dim": DIM, "metric": "l2", "index": {"kind": "hnswlib"}, "shards": 2}
    assert client.post("/collections", json=body).status_code == 201
    for lo in range(0, BASE, 2000):
        items = [{"id": f"b{i}", "vector": base[i].tolist()} for i in range(lo, lo + 2000)]
        assert client.post("/collections/crash/vectors", json={"items": items}).status_code == 200
    # Every client id starts absent: an id first written by a request the kill cut off is then
    # checked too (absent, or as that request wrote it).
    acked: dict[str, int | None] = {
        f"c{n}-{i}": DELETED for n in range(CLIENTS) for i in range(IDS_PER_CLIENT)
    }
    seq = 0
    rng = random.Random(3)
    cycles = ["traffic", "rebuild", "snapshot", "traffic", "startup", "rebuild", "snapshot"]
    total_writes = 0
    seen: dict[str, int] = {}
    for cycle_no, cycle in enumerate(cycles):
        writers = [Writer(n, server.url, acked, seq + n * 1_000_000) for n in range(CLIENTS)]
        for w in writers:
            w.start()
        time.sleep(rng.uniform(2.0, 4.0))
        snapshot_thread = None
        if cycle == "rebuild":
            response = client.post("/collections/crash/rebuild", json={})
            if response.status_code == 202:  # 409: an automatic one runs; kill during that one
                wait_for_job_running(client, response.json()["job_id"], rng.uniform(0.2, 0.8))
            else:
                assert response.status_code == 409, response.text
        elif cycle == "snapshot":
            snapshot_thread = threading.Thread(
                target=lambda: _ignore_transport(client.post, "/collections/crash/snapshots", json={})
            )
            snapshot_thread.start()
            time.sleep(rng.uniform(0.0, 0.15))
        server.kill()
        for w in writers:
            w.join(30)
        if snapshot_thread is not None:
            snapshot_thread.join(30)
        assert not any(w.failures for w in writers), [w.failures for w in writers]
        assert sum(w.done for w in writers) > 0, "no write was acknowledged in this cycle"
        total_writes += sum(w.done for w in writers)
        pending = {k: v for w in writers for k, v in w.pending.items()}
        seq = max(w.seq for w in writers) + 1

        if cycle == "startup":  # kill it again while it loads the collections
            killer = threading.Thread(target=_kill_while_loading, args=(server, seen))
            killer.start()
            try:
                server.start(timeout=60).close()
            except RuntimeError:
                pass  # killed before it was ready, as intended
            killer.join()
            if server.proc.poll() is None:
                server.kill()
        client.close()
        client = server.start(timeout=120)
        client.headers.update(ADMIN)
        found = check_state(client, acked, pending, base)
        check_search(client, found)
        acked.update({k: v for k, v in found.items() if k in pending})  # what the unknown ones became
        # Every snapshot listed is whole (a kill mid-snapshot leaves no half file under a real name).
        listed = client.get("/collections/crash/snapshots")
        # (404 while the snapshot routes are not registered: then the snapshot cycles are plain ones)
        for snap in listed.json()["snapshots"] if listed.status_code == 200 else []:
            path = tmp_path / "data" / "snapshots" / "crash" / snap["name"]
            restore_snapshot(path, tmp_path / f"restored-{cycle_no}-{snap['name']}", as_name="check")
    assert total_writes > 50, total_writes
    assert "readyz_at_kill" in seen, "the start-up cycle never killed a starting server"
    client.close()


def _ignore_transport(call, *args, **kwargs) -> None:
    try:
        call(*args, **kwargs)
    except httpx.TransportError:
        pass


def _kill_while_loading(server: ServeProcess, seen: dict) -> None:
    """SIGKILL the server being started as soon as it is alive (/healthz 200): the collections
    are being opened then (/readyz 503 until they are). Notes in `seen` what /readyz said."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        proc = server.proc
        if proc is not None and proc.poll() is None and server.url:
            try:
                if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                    seen["readyz_at_kill"] = httpx.get(f"{server.url}/readyz", timeout=1).status_code
                    proc.kill()
                    return
            except httpx.TransportError:
                pass
        time.sleep(0.002)
