"""The cluster tier: the router over real shard nodes on loopback, and its pieces.

The integration tests share one cluster (module fixture): a router over three shards, shard 1
with two replicas, plus a router that hedges, and one plain node holding all the data as the
yardstick. GloVe 10K (tests/data) goes in through the router and into the single node; then
each test checks answers against the single node, or breaks the cluster (SIGKILL, SIGSTOP) and
the next test puts it back (`heal`) first. Every process is stopped by the fixture; every wait
has a deadline; a paused process is always resumed before anything is killed.
"""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from conftest import wait_job

from annserve.bench.server_process import ServeProcess
from annserve.cluster.jobs import decode, encode
from annserve.cluster.local import LocalCluster, running
from annserve.cluster.merge import merge_hits
from annserve.cluster.ownership import MISDIRECTED, check_owned, positions_by_shard, shard_of
from annserve.cluster.pod import node_environment, ordinal
from annserve.cluster.topology import Topology
from annserve.engine.errors import NotFound
from annserve.engine.inputs import MAX_ID_CHARS
from annserve.engine.manager import CollectionManager
from annserve.engine.snapshots import restore_snapshot
from annserve.settings import Settings
from starlette.exceptions import HTTPException

integration = pytest.mark.integration

NAME = "glove"
TIMEOUT = 2.0  # ANNSERVE_SHARD_TIMEOUT_SECONDS of the test routers (an exact batch search on a loaded 2-core box took over 1 s)
# A loaded 2-core CI machine: how much later than the timeout an answer may come and still count
# as "within the timeout" (it is the timeout plus scheduling; a hang would be many seconds).
SLACK = 2.5
HEDGE_MS = 50
LAYOUT = (1, 2, 1)  # replicas per shard
RECALL_FLOOR = 0.95  # hnswlib at its default ef on GloVe 10K
# Every process has keys: routers check the client's, and call the nodes with their admin key.
ADMIN, READ = "cluster-admin-key", "cluster-read-key"
KEYS = {"ANNSERVE_ADMIN_API_KEY": ADMIN, "ANNSERVE_API_KEY": READ}
# Half the nodes' searches are re-run exactly, so the online recall test has samples on every node.
NODE_ENV = {**KEYS, "ANNSERVE_RECALL_SAMPLE_RATE": "0.5"}
BATCH = 1000
QUERIES = 200


# ---- pieces (no processes) ----------------------------------------------------------------


def test_topology_parses_shards_and_replicas():
    topology = Topology.parse(" http://a:1 | http://b:2/ ,http://c:3")
    assert [s.replicas for s in topology.shards] == [("http://a:1", "http://b:2"), ("http://c:3",)]
    assert topology.nodes == [(0, "http://a:1"), (0, "http://b:2"), (1, "http://c:3")]
    for bad in ("", "http://a:1,,http://b:2", "a:1", "http://a:1|http://a:1", "http://a:1?x=1"):
        with pytest.raises(ValueError, match="ANNSERVE_SHARD_URLS"):
            Topology.parse(bad)


def test_ownership_is_the_engine_hash_and_nodes_refuse_strays():
    ids = [f"item-{i}" for i in range(3000)]
    groups = positions_by_shard(ids, 3)
    assert sorted(p for ps in groups.values() for p in ps) == list(range(3000))
    assert all(shard_of(ids[p], 3) == s for s, ps in groups.items() for p in ps)
    assert all(900 < len(ps) < 1100 for ps in groups.values())  # about a third each
    check_owned(ids, None, None)  # a node that does not know its place takes everything
    mine = [ids[p] for p in groups[1]]
    check_owned(mine, 1, 3)
    with pytest.raises(HTTPException) as raised:
        check_owned([*mine, ids[groups[2][0]]], 1, 3)
    assert raised.value.status_code == MISDIRECTED
    assert "belongs to shard 2 of 3" in raised.value.detail


def test_merge_orders_like_one_node():
    a = [{"id": "b", "score": 0.9}, {"id": "c", "score": 0.5}]
    b = [{"id": "a", "score": 0.9}, {"id": "d", "score": 0.7, "payload": {"x": 1}}]
    assert [h["id"] for h in merge_hits([a, b], 3, "cosine")] == ["a", "b", "d"]  # tie: by id
    assert [h["id"] for h in merge_hits([a, b], 3, "l2")] == ["c", "d", "a"]
    assert merge_hits([a, b], 4, "ip")[2] == {"id": "d", "score": 0.7, "payload": {"x": 1}}


def test_pod_ordinal_is_the_shard_index():
    assert ordinal("annserve-shard-0") == 0 and ordinal("annserve-shard-12.annserve-shard.ns.svc") == 12
    for bad in ("annserve", "shard-", "-3", "Annserve-1"):
        with pytest.raises(ValueError, match="StatefulSet pod name"):
            ordinal(bad)
    env = node_environment({"ANNSERVE_SHARD_COUNT": "3", "HOSTNAME": "annserve-shard-2"})
    assert env["ANNSERVE_SHARD_INDEX"] == "2"
    assert node_environment({"ANNSERVE_SHARD_COUNT": "3", "ANNSERVE_SHARD_INDEX": "1"}, "x-2")[
        "ANNSERVE_SHARD_INDEX"
    ] == "1"  # fmt: skip
    with pytest.raises(ValueError, match="must be equal"):
        node_environment({"ANNSERVE_SHARD_COUNT": "3"}, hostname="annserve-shard-3")
    with pytest.raises(ValueError, match="ANNSERVE_SHARD_COUNT"):
        node_environment({}, hostname="annserve-shard-0")


def test_job_ids_carry_the_node_jobs():
    assert decode(encode(["a1", None, "b2"]), 3) == ["a1", None, "b2"]
    for bad, n in (("a1.b2", 3), ("-.-", 2), ("a/1.b", 2)):
        with pytest.raises(NotFound):
            decode(bad, n)


# ---- the real cluster ---------------------------------------------------------------------


class Data:
    def __init__(self, glove):
        self.ids = [str(i) for i in range(len(glove.base))]
        self.base, self.queries = glove.base, glove.queries[:QUERIES]
        self.truth = [[str(i) for i in row] for row in glove.truth[:QUERIES]]


def node_call(method: str, url: str, **kwargs) -> httpx.Response:
    """A request straight to a node, with the admin key."""
    return httpx.request(method, url, headers={"X-API-Key": ADMIN}, timeout=30, **kwargs)


def upsert(client: httpx.Client, ids: list[str], vectors: np.ndarray) -> None:
    for lo in range(0, len(ids), BATCH):
        items = [{"id": i, "vector": v} for i, v in zip(ids[lo : lo + BATCH], vectors[lo : lo + BATCH].tolist())]
        r = client.post(f"/collections/{NAME}/vectors", json={"items": items})
        assert r.status_code == 200, r.text
        assert r.json() == {"upserted": len(items)}


def search_ids(client: httpx.Client, queries: np.ndarray, **extra) -> list[list[str]]:
    r = client.post(f"/collections/{NAME}/search/batch", json={"vectors": queries.tolist(), "k": 10, **extra})
    assert r.status_code == 200, r.text
    return [[h["id"] for h in row] for row in r.json()["results"]]


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def metric_value(client: httpx.Client, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when there is none)."""
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def owned_by(shard: int, ids: list[str]) -> list[str]:
    return [i for i in ids if shard_of(i, len(LAYOUT)) == shard]


class Harness:
    """The shared cluster, the single node, the data, and `heal()`."""

    def __init__(self, tmp, glove):
        router_env = {
            "ANNSERVE_SHARD_TIMEOUT_SECONDS": str(TIMEOUT), "ANNSERVE_SHARD_WRITE_TIMEOUT_SECONDS": "3", **KEYS
        }  # fmt: skip
        self.cluster = LocalCluster(
            tmp / "cluster", LAYOUT,
            routers={"router": router_env, "hedged": {**router_env, "ANNSERVE_HEDGE_AFTER_MS": str(HEDGE_MS)}},
            node_env=NODE_ENV, client_headers={"X-API-Key": ADMIN},
        )  # fmt: skip
        self.single = ServeProcess(tmp / "single", tmp / "single.log", env=KEYS)
        self.data = Data(glove)
        self.single_client: httpx.Client | None = None

    @property
    def router(self) -> httpx.Client:
        return self.cluster.client("router")

    def heal(self) -> None:
        """Resume paused nodes; restart dead ones (new ports) and then the routers."""
        for node in self.cluster.all_nodes:
            self.cluster.resume(node)
        if not all(running(n) for n in self.cluster.all_nodes):
            self.cluster.start()
        deadline = time.monotonic() + 60
        while self.router.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, self.router.get("/readyz").text
            time.sleep(0.1)

    def stop(self) -> None:
        if self.single_client is not None:
            self.single_client.close()
        self.single.stop()
        self.cluster.stop()


@pytest.fixture(scope="module")
def harness(tmp_path_factory, glove):
    h = Harness(tmp_path_factory.mktemp("cluster"), glove)
    try:
        h.cluster.start()
        h.single_client = h.single.start(timeout=180)
        h.single_client.headers["X-API-Key"] = ADMIN
        spec = {"name": NAME, "dim": glove.dim, "metric": "cosine", "index": {"kind": "hnswlib"}}
        for client in (h.router, h.single_client):
            r = client.post("/collections", json=spec)
            assert r.status_code == 201, r.text
            upsert(client, h.data.ids, h.data.base)
        started = {}
        for label, client in (("router", h.router), ("single", h.single_client)):
            r = client.post(f"/collections/{NAME}/rebuild", json={})
            assert r.status_code == 202, r.text
            started[label] = (client, r.json()["job_id"])
        h.jobs = {label: wait_job(client, job_id, timeout=300) for label, (client, job_id) in started.items()}
        yield h
    finally:
        h.stop()


@pytest.fixture()
def cluster(harness):
    """The shared cluster, whole again (healed) whatever the test before broke. Healing is done
    here rather than after each test, so that the last tests' broken clusters are simply stopped."""
    harness.heal()
    return harness


@integration
def test_split_recall_and_rebuild_match_one_node(cluster):
    data = cluster.data
    job = cluster.jobs["router"]
    assert job["state"] == "succeeded" and job["progress"] == 1.0, job
    assert len(job["nodes"]) == sum(LAYOUT) and {n["state"] for n in job["nodes"]} == {"succeeded"}
    info = cluster.router.get(f"/collections/{NAME}").json()
    assert info["shards"] == len(LAYOUT) and info["count"] == len(data.ids) and info["fresh_count"] == 0
    counts = [s["count"] for s in info["shard_info"]]
    assert sum(counts) == len(data.ids)
    for shard, count in enumerate(counts):
        assert count == len(owned_by(shard, data.ids))
        assert abs(count - len(data.ids) / 3) < 0.06 * len(data.ids), counts  # about a third each
    # Both replicas of shard 1 hold the same items.
    for node in cluster.cluster.nodes[1]:
        assert node_call("GET", f"{node.url}/collections/{NAME}").json()["count"] == counts[1]
    listed = cluster.router.get("/collections").json()["collections"]
    assert [(c["name"], c["count"]) for c in listed] == [(NAME, len(data.ids))]

    # Exact search: the same answers as one node holding everything.
    exact_router = search_ids(cluster.router, data.queries, exact=True)
    exact_single = search_ids(cluster.single_client, data.queries, exact=True)
    assert recall(exact_router, data.truth) >= 0.999 and recall(exact_single, data.truth) >= 0.999
    # hnswlib: the router's recall is one node's (three smaller graphs, merged, lose nothing).
    r_router = recall(search_ids(cluster.router, data.queries), data.truth)
    r_single = recall(search_ids(cluster.single_client, data.queries), data.truth)
    assert r_single >= RECALL_FLOOR and r_router >= r_single - 0.005, (r_router, r_single)
    # Single searches: vector lists become base64 to the nodes; same answers as the batch.
    one = cluster.router.post(f"/collections/{NAME}/search", json={"vector": data.queries[0].tolist(), "k": 10})
    assert [h["id"] for h in one.json()["results"]] == search_ids(cluster.router, data.queries[:1])[0]


@integration
def test_items_go_to_their_owner(cluster):
    router, single, data = cluster.router, cluster.single_client, cluster.data
    item = owned_by(1, data.ids)[0]
    got = router.get(f"/collections/{NAME}/vectors/{item}")
    assert got.status_code == 200 and got.json() == single.get(f"/collections/{NAME}/vectors/{item}").json()
    # "More like this": the owner excludes the item, the other shards search by its vector.
    by_id = router.post(f"/collections/{NAME}/search", json={"id": item, "k": 10, "exact": True}).json()
    expected = single.post(f"/collections/{NAME}/search", json={"id": item, "k": 10, "exact": True}).json()
    assert [h["id"] for h in by_id["results"]] == [h["id"] for h in expected["results"]]
    assert item not in {h["id"] for h in by_id["results"]}
    assert router.get(f"/collections/{NAME}/vectors/nope").status_code == 404

    # A node refuses a write for an id it does not own, naming the owner.
    stray = owned_by(2, data.ids)[0]
    node0 = cluster.cluster.nodes[0][0]
    r = node_call("POST", f"{node0.url}/collections/{NAME}/vectors",
                   json={"items": [{"id": stray, "vector": data.base[0].tolist()}]})  # fmt: skip
    assert r.status_code == MISDIRECTED and "shard 2 of 3" in r.json()["detail"], r.text

    # New items land on their owner only (on every replica of it); delete reaches them all.
    new = [f"new-{i}" for i in range(30)]
    upsert(router, new, data.queries[:30])
    for shard, replicas in enumerate(cluster.cluster.nodes):
        for node in replicas:
            for item_id in new[:10]:
                status = node_call("GET", f"{node.url}/collections/{NAME}/vectors/{item_id}").status_code
                assert status == (200 if shard_of(item_id, 3) == shard else 404), (shard, node.url, item_id)
    assert router.delete(f"/collections/{NAME}/vectors/{new[0]}").json() == {"deleted": 1}
    assert router.delete(f"/collections/{NAME}/vectors/{new[0]}").status_code == 404
    r = router.post(f"/collections/{NAME}/vectors/delete", json={"ids": [*new, "never-there"]})
    assert r.json() == {"deleted": len(new) - 1}
    for node in cluster.cluster.nodes[shard_of(new[1], 3)]:
        assert node_call("GET", f"{node.url}/collections/{NAME}/vectors/{new[1]}").status_code == 404
    assert router.get(f"/collections/{NAME}").json()["count"] == len(data.ids)

    # A bad row fails the whole request before any node writes (no shard keeps its part).
    good, zero = owned_by(0, [f"z-{i}" for i in range(40)])[0], owned_by(2, [f"z-{i}" for i in range(40)])[0]
    items = [{"id": good, "vector": data.base[0].tolist()}, {"id": zero, "vector": [0.0] * data.base.shape[1]}]
    r = router.post(f"/collections/{NAME}/vectors", json={"items": items})
    assert r.status_code == 422 and "non-zero" in r.json()["detail"], r.text
    assert router.get(f"/collections/{NAME}/vectors/{good}").status_code == 404

    # The node's own checks answer through the router, unchanged.
    bad = router.post(f"/collections/{NAME}/search", json={"vector": [1.0] * 3, "k": 10})
    assert bad.status_code == 422 and "50" in bad.json()["detail"]
    bad = router.post(f"/collections/{NAME}/search", json={"vector": data.queries[0].tolist(), "params": {"nprobe": 3}})
    assert bad.status_code == 422 and "nprobe" in bad.json()["detail"]
    assert router.post("/collections/missing/search", json={"vector": [1.0], "k": 1}).status_code == 404


@integration
def test_router_checks_keys_and_nodes_trust_its_own(cluster):
    router, data = cluster.cluster.routers["router"], cluster.data
    body = {"vector": data.queries[0].tolist(), "k": 3}
    with httpx.Client(base_url=router.url, timeout=30) as anonymous:
        assert anonymous.post(f"/collections/{NAME}/search", json=body).status_code == 401
        assert anonymous.get("/readyz").status_code == 200  # probes stay open
    with httpx.Client(base_url=router.url, timeout=30, headers={"X-API-Key": READ}) as reader:
        # The read key searches through the router (whose node calls carry its admin key) ...
        assert reader.post(f"/collections/{NAME}/search", json=body).status_code == 200
        assert reader.get(f"/collections/{NAME}").status_code == 200
        # ... and may not write, at the router already.
        items = {"items": [{"id": "r-1", "vector": data.base[0].tolist()}]}
        assert reader.post(f"/collections/{NAME}/vectors", json=items).status_code == 403
    # The nodes themselves are keyed too.
    assert httpx.get(f"{cluster.cluster.nodes[0][0].url}/collections/{NAME}").status_code == 401


@integration
def test_create_and_delete_converge_on_retry(cluster):
    router = cluster.router
    node0 = cluster.cluster.nodes[0][0]
    spec = {"name": "half", "dim": 8, "metric": "l2", "index": {"kind": "flat"}}
    # As if an earlier create through the router had reached node 0 only.
    assert node_call("POST", f"{node0.url}/collections", json=spec).status_code == 201
    r = router.post("/collections", json=spec)
    assert r.status_code == 201, r.text
    assert r.json()["shards"] == len(LAYOUT) and len(r.json()["shard_info"]) == len(LAYOUT)
    assert router.post("/collections", json=spec).status_code == 409  # now it exists everywhere
    clash = {**spec, "name": "clash"}
    assert node_call("POST", f"{node0.url}/collections", json={**clash, "dim": 4}).status_code == 201
    r = router.post("/collections", json=clash)
    assert r.status_code == 409 and node0.url in r.json()["detail"], r.text
    assert router.post("/collections", json={**spec, "name": "x", "shards": 5}).status_code == 422
    # A delete that already happened on some nodes.
    assert node_call("DELETE", f"{node0.url}/collections/half").status_code == 200
    assert router.delete("/collections/half").status_code == 200
    assert router.delete("/collections/half").status_code == 404
    assert router.delete("/collections/clash").status_code == 200
    assert router.get("/jobs/not-a-job").status_code == 404


@integration
def test_paused_replica_fails_over_and_hedges(cluster):
    router, hedged, data = cluster.router, cluster.cluster.client("hedged"), cluster.data
    # Exact: the two replicas' hnswlib graphs are built apart and may differ; their data may not.
    before = search_ids(router, data.queries[:20], exact=True)
    paused = cluster.cluster.nodes[1][0]
    cluster.cluster.pause(paused)
    try:
        for client in (router, hedged):
            for _ in range(3):
                t0 = time.monotonic()
                r = client.post(f"/collections/{NAME}/search/batch", json={"vectors": data.queries[:20].tolist(), "exact": True})
                elapsed = time.monotonic() - t0
                assert r.status_code == 200 and "partial" not in r.json(), r.text
                assert [[h["id"] for h in row] for row in r.json()["results"]] == before
                assert elapsed < TIMEOUT + SLACK, elapsed
        assert metric_value(router, "annserve_router_failovers_total", shard="1") >= 1
        assert metric_value(hedged, "annserve_router_hedges_total", shard="1") >= 1
        # Write-all: the shard with a replica down refuses writes, naming the replica; other shards write.
        stray = owned_by(1, [f"w-{i}" for i in range(50)])[0]
        write = {"items": [{"id": stray, "vector": data.base[0].tolist()}]}
        r = router.post(f"/collections/{NAME}/vectors", json=write)
        assert r.status_code == 503 and paused.url in r.json()["detail"], r.text
        assert router.get("/readyz").status_code == 200  # the other replica serves shard 1
    finally:
        cluster.cluster.resume(paused)
    # The refused write reached the other replica only; resent, it is on both (and then deleted).
    assert router.post(f"/collections/{NAME}/vectors", json=write).status_code == 200
    assert router.post(f"/collections/{NAME}/vectors/delete", json={"ids": [stray]}).json() == {"deleted": 1}


@integration
def test_paused_shard_answers_within_the_timeout(cluster):
    router, data = cluster.router, cluster.data
    node = cluster.cluster.nodes[2][0]
    cluster.cluster.pause(node)
    try:
        t0 = time.monotonic()
        r = router.post(f"/collections/{NAME}/search", json={"vector": data.queries[0].tolist()})
        assert time.monotonic() - t0 < TIMEOUT + SLACK
        assert r.status_code == 503 and "shard 2" in r.json()["detail"] and node.url in r.json()["detail"], r.text
        t0 = time.monotonic()
        body = {"vectors": data.queries[:5].tolist(), "allow_partial": True}
        r = router.post(f"/collections/{NAME}/search/batch", json=body)
        assert time.monotonic() - t0 < TIMEOUT + SLACK
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["partial"] is True and answer["failed_shards"] == [2]
        assert all(shard_of(h["id"], 3) != 2 for row in answer["results"] for h in row)
        assert all(len(row) == 10 for row in answer["results"])
    finally:
        cluster.cluster.resume(node)


@integration
def test_killed_replica_keeps_answers_complete_and_blocks_its_writes(cluster):
    router, data = cluster.router, cluster.data
    before = search_ids(router, data.queries, exact=True)
    dead = cluster.cluster.nodes[1][1]
    cluster.cluster.kill(dead)
    assert search_ids(router, data.queries, exact=True) == before  # complete: the other replica answers
    assert router.get("/readyz").status_code == 200
    mine, others = owned_by(1, [f"k-{i}" for i in range(40)]), owned_by(0, [f"k-{i}" for i in range(40)])
    items = [{"id": i, "vector": data.base[n].tolist()} for n, i in enumerate(mine[:3])]
    r = router.post(f"/collections/{NAME}/vectors", json={"items": items})
    assert r.status_code == 503 and dead.url in r.json()["detail"] and "shard 1" in r.json()["detail"], r.text
    ok = router.post(f"/collections/{NAME}/vectors", json={"items": [{"id": others[0], "vector": data.base[0].tolist()}]})
    assert ok.status_code == 200, ok.text
    cluster.heal()  # the replica comes back (new port, routers restarted)
    router = cluster.router
    # The failed write may be on the surviving replica only: resending it converges both.
    assert router.post(f"/collections/{NAME}/vectors", json={"items": items}).status_code == 200
    for node in cluster.cluster.nodes[1]:
        assert node_call("GET", f"{node.url}/collections/{NAME}/vectors/{mine[0]}").status_code == 200
    router.post(f"/collections/{NAME}/vectors/delete", json={"ids": [*mine[:3], others[0]]})


@integration
def test_restart_of_everything_loses_nothing(cluster):
    data = cluster.data
    extra = [f"late-{i}" for i in range(len(data.queries))]
    upsert(cluster.router, extra, data.queries)
    before = search_ids(cluster.router, data.queries, exact=True)
    cluster.cluster.kill_all()
    cluster.cluster.start()
    info = cluster.router.get(f"/collections/{NAME}").json()
    assert info["count"] == len(data.ids) + len(extra), info
    assert search_ids(cluster.router, data.queries, exact=True) == before
    got = cluster.router.get(f"/collections/{NAME}/vectors/{extra[7]}").json()
    assert np.allclose(got["vector"], data.queries[7])
    cluster.router.post(f"/collections/{NAME}/vectors/delete", json={"ids": extra})


@integration
def test_killed_shard_is_reported_never_silently_partial(cluster):
    router, data = cluster.router, cluster.data
    dead = cluster.cluster.nodes[0][0]
    cluster.cluster.kill(dead)
    t0 = time.monotonic()
    r = router.post(f"/collections/{NAME}/search/batch", json={"vectors": data.queries[:3].tolist()})
    assert time.monotonic() - t0 < TIMEOUT + SLACK
    assert r.status_code == 503 and "shard 0" in r.json()["detail"] and dead.url in r.json()["detail"], r.text
    r = router.post(f"/collections/{NAME}/search", json={"vector": data.queries[0].tolist(), "allow_partial": True})
    assert r.status_code == 200 and r.json()["partial"] is True and r.json()["failed_shards"] == [0]
    ready = router.get("/readyz")
    assert ready.status_code == 503 and "shard 0" in ready.json()["detail"]
    assert router.get(f"/collections/{NAME}").status_code == 503
    assert metric_value(router, "annserve_router_shard_unavailable_total", shard="0") >= 1


@integration
def test_bad_ids_get_the_nodes_422(cluster):
    router, single, data = cluster.router, cluster.single_client, cluster.data
    vector = data.base[0].tolist()
    for bad in (5, None, "", "x" * (MAX_ID_CHARS + 1), ["a"], {"a": 1}):
        body = {"items": [{"id": "fine-1", "vector": vector}, {"id": bad, "vector": vector}]}
        at_router = router.post(f"/collections/{NAME}/vectors", json=body)
        at_node = single.post(f"/collections/{NAME}/vectors", json=body)
        assert at_router.status_code == at_node.status_code == 422, (bad, at_router.text, at_node.text)
        assert at_router.json()["detail"] == at_node.json()["detail"], bad
    assert router.get(f"/collections/{NAME}/vectors/fine-1").status_code == 404  # nothing written
    for bad in ([5], ["a", None], "a"):
        at_router = router.post(f"/collections/{NAME}/vectors/delete", json={"ids": bad})
        at_node = single.post(f"/collections/{NAME}/vectors/delete", json={"ids": bad})
        assert at_router.status_code == at_node.status_code == 422, (bad, at_router.text, at_node.text)


def every_node_info(cluster) -> list[dict]:
    return [node_call("GET", f"{n.url}/collections/{NAME}").json() for n in cluster.cluster.all_nodes]


@integration
def test_online_recall_is_the_nodes_samples_weighted(cluster):
    router, data = cluster.router, cluster.data
    # Four searches: the replicas of shard 1 take reads in turn, so each of them serves some.
    found = [row for lo in range(0, len(data.queries), 50) for row in search_ids(router, data.queries[lo : lo + 50])]
    measured = recall(found, data.truth)
    path = f"/collections/{NAME}/recall"
    deadline = time.monotonic() + 60
    while True:  # the nodes sample off the request path: wait until every node has samples and they stop coming
        first = router.get(path).json()
        time.sleep(1.0)
        answer = router.get(path)
        assert answer.status_code == 200, answer.text
        got = answer.json()
        if all(n["samples"] > 0 for n in got["nodes"]) and got["samples"] == first["samples"]:
            break
        assert time.monotonic() < deadline, got["nodes"]
    nodes = [node_call("GET", f"{n.url}{path}").json() for n in cluster.cluster.all_nodes]
    samples = sum(n["samples"] for n in nodes)
    weighted = sum(n["recall_at_k"] * n["samples"] for n in nodes) / samples
    assert got["samples"] == samples and len(got["nodes"]) == sum(LAYOUT)
    assert got["recall_at_k"] == pytest.approx(weighted, abs=1e-6) and got["k"] == 10
    assert [s["shard"] for s in got["shards"]] == [0, 1, 2] and all(s["samples"] > 0 for s in got["shards"])
    # The shards' recall estimates the merged answer's (each shard answers its part of the top 10).
    assert abs(got["recall_at_k"] - measured) < 0.05, (got["recall_at_k"], measured)
    assert router.get("/collections/missing/recall").status_code == 404


@integration
def test_patch_reaches_every_node_and_a_retry_converges(cluster):
    router = cluster.router
    r = router.patch(f"/collections/{NAME}", json={"recall_target": 0.9, "search_params": {"ef": 40}})
    assert r.status_code == 200, r.text
    assert r.json()["recall_target"] == 0.9 and all(s["search_params"]["ef"] == 40 for s in r.json()["shard_info"])
    assert all(i["recall_target"] == 0.9 and i["index"]["search_params"]["ef"] == 40 for i in every_node_info(cluster))
    for bad, words in (({"recall_target": 2}, "recall_target"), ({"search_params": {"nprobe": 2}}, "nprobe"),
                       ({"nope": 1}, "nope")):  # fmt: skip
        r = router.patch(f"/collections/{NAME}", json=bad)
        assert r.status_code == 422 and words in r.json()["detail"], r.text
    assert router.patch("/collections/missing", json={"recall_target": 0.9}).status_code == 404
    paused = cluster.cluster.nodes[1][1]
    cluster.cluster.pause(paused)
    try:
        r = router.patch(f"/collections/{NAME}", json={"recall_target": 0.85, "search_params": {}})
        assert r.status_code == 503 and paused.url in r.json()["detail"] and "resend" in r.json()["detail"], r.text
    finally:
        cluster.cluster.resume(paused)
    r = router.patch(f"/collections/{NAME}", json={"recall_target": 0.85, "search_params": {}})
    assert r.status_code == 200, r.text
    infos = every_node_info(cluster)
    assert all(i["recall_target"] == 0.85 for i in infos) and len({i["index"]["search_params"]["ef"] for i in infos}) == 1


@integration
def test_tune_fans_out_each_node_keeps_its_choice(cluster):
    router, data = cluster.router, cluster.data
    r = router.post(f"/collections/{NAME}/tune", json={"target_recall": 0.9, "k": 10})
    assert r.status_code == 200, r.text
    tuned = r.json()
    assert tuned["knob"] == "ef" and len(tuned["nodes"]) == sum(LAYOUT)
    assert tuned["recall"] == min(n["recall"] for n in tuned["nodes"]) >= 0.9
    assert tuned["chosen"]["ef"] == max(n["chosen"]["ef"] for n in tuned["nodes"])
    by_url = {n["node"]: n for n in tuned["nodes"]}
    for node in cluster.cluster.all_nodes:  # each node searches with what it chose
        info = node_call("GET", f"{node.url}/collections/{NAME}").json()
        assert info["index"]["search_params"]["ef"] == by_url[node.url]["chosen"]["ef"]
    assert recall(search_ids(router, data.queries), data.truth) >= 0.9 - 0.03
    assert router.post(f"/collections/{NAME}/tune", json={"target_recall": 0.9, "k": 100_000}).status_code == 422
    assert router.post("/collections/missing/tune", json={}).status_code == 404
    assert router.patch(f"/collections/{NAME}", json={"search_params": {}}).status_code == 200  # back to the defaults


@integration
def test_snapshot_is_one_file_per_shard_listed_downloaded_and_restorable(cluster, tmp_path):
    router = cluster.router
    r = router.post(f"/collections/{NAME}/snapshots", json={})
    assert r.status_code == 201, r.text
    taken = r.json()
    assert [s["shard"] for s in taken["snapshots"]] == [0, 1, 2]
    assert taken["bytes"] == sum(s["bytes"] for s in taken["snapshots"])
    listed = router.get(f"/collections/{NAME}/snapshots").json()["snapshots"]
    by_name = {s["name"]: s for s in listed}
    for snap in taken["snapshots"]:
        # (created_at: the node's list says when the file was finished, its create answer when it began)
        assert {k: by_name[snap["name"]][k] for k in ("bytes", "shard", "node")} == {
            k: snap[k] for k in ("bytes", "shard", "node")
        }
    counts = [s["count"] for s in router.get(f"/collections/{NAME}").json()["shard_info"]]
    for snap in taken["snapshots"]:
        got = router.get(f"/collections/{NAME}/snapshots/{snap['name']}")
        assert got.status_code == 200 and got.headers["x-annserve-shard"] == str(snap["shard"])
        assert len(got.content) == snap["bytes"]
        assert got.content == node_call("GET", f"{snap['node']}/collections/{NAME}/snapshots/{snap['name']}").content
        # Restored (offline), the file holds its shard's items.
        path = tmp_path / snap["name"]
        path.write_bytes(got.content)
        restore_snapshot(path, tmp_path / f"restored-{snap['shard']}")
        manager = CollectionManager(Settings(data_dir=tmp_path / f"restored-{snap['shard']}"))
        manager.open()
        try:
            assert manager.get(NAME).info()["count"] == counts[snap["shard"]]
        finally:
            manager.close()
    assert router.get(f"/collections/{NAME}/snapshots/{NAME}-never-000000.tar").status_code == 404
    assert router.get(f"/collections/{NAME}/snapshots/..%2Fevil").status_code in (404, 422)
    assert router.post(f"/collections/{NAME}/snapshots", json={"nope": 1}).status_code == 422
    assert router.post("/collections/missing/snapshots", json={}).status_code == 404
    for snap in taken["snapshots"]:
        gone = router.delete(f"/collections/{NAME}/snapshots/{snap['name']}")
        assert gone.status_code == 200 and gone.json()["shard"] == snap["shard"], gone.text
        assert router.delete(f"/collections/{NAME}/snapshots/{snap['name']}").status_code == 404
    assert not router.get(f"/collections/{NAME}/snapshots").json()["snapshots"]
