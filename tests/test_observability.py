"""Observability end to end: the committed Grafana dashboard is what its generator writes, the
alert rules pass `promtool check rules` and their unit tests, and a real Prometheus scraping a
real `annserve serve` gets data for every dashboard query, with the exported online recall
agreeing with recall computed here from exact search."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import wait_job
from prometheus_tools import DEPLOY, PrometheusProcess, promtool

from annserve.bench.server_process import ServeProcess

AGREEMENT = 0.02
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "annserve.json"
# What Grafana would put in for the variables: two collections picked, a rate window (Grafana's
# is at least 4 scrape intervals; wider here, so that a scrape that timed out on a busy machine
# does not empty it), the dashboard's range.
WINDOW = "60s"
VARIABLES = {"$collection": "glove|small", "$__rate_interval": WINDOW, "$__range": "5m", "${datasource}": ""}


def load_builder():
    spec = importlib.util.spec_from_file_location("build_dashboard", DEPLOY / "grafana" / "build_dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel of the committed dashboard."""
    board = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]


def test_the_committed_dashboard_is_current():
    assert DASHBOARD.read_text() == load_builder().render(), "run python deploy/grafana/build_dashboard.py"


def test_the_dashboard_has_the_variables_and_panels_an_operator_needs():
    board = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["collection"]["multi"] and variables["collection"]["includeAll"]
    titles = {p["title"] for p in board["panels"]}
    assert titles >= {
        "Request rate", "Search latency p50 / p95 / p99", "Error rate", "Recall vs target per collection",
        "Recall distribution", "Fresh index size", "Tombstones", "Rebuild duration", "Time since last rebuild",
        "Rebuild refusals and failures", "Items per shard", "Index memory",
    }
    for title, expr in dashboard_queries():
        if "rate(" in expr or "increase(" in expr:
            assert "$__rate_interval" in expr, (title, expr)


def test_alert_rules_check_and_pass_their_unit_tests():
    rules = DEPLOY / "prometheus" / "alerts.yml"
    checked = promtool("check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    config = promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    alerts = {r["alert"] for g in __import__("yaml").safe_load(rules.read_text())["groups"] for r in g["rules"]}
    tests_text = (DEPLOY / "prometheus" / "alerts_test.yml").read_text()
    for alert in alerts:  # every alert has a unit test
        assert f"alertname: {alert}" in tests_text, alert


# ---- a real server and a real Prometheus --------------------------------------------------


@pytest.fixture()
def stack(tmp_path):
    """`annserve serve` sampling every query, and Prometheus scraping it every second; both
    stopped whatever happens."""
    server = ServeProcess(tmp_path / "data", tmp_path / "server.log", env={"ANNSERVE_RECALL_SAMPLE_RATE": "1.0"})
    prometheus = None
    try:
        client = server.start()
        prometheus = PrometheusProcess(tmp_path / "prometheus", server.url.removeprefix("http://"))
        prom = prometheus.start()
        yield client, prom, server
        client.close()
        prom.close()
    finally:
        if prometheus is not None:
            prometheus.stop()
        server.stop()


def instant(prom: httpx.Client, expr: str, at: float | None = None) -> list[dict]:
    params = {"query": expr} | ({"time": f"{at:.3f}"} if at is not None else {})
    answer = prom.get("/api/v1/query", params=params).json()
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def prometheus_tail(prom: httpx.Client) -> str:
    targets = prom.get("/api/v1/targets").json()["data"]["activeTargets"]
    return f"targets: {[(t['health'], t['lastError'], t['lastScrapeDuration']) for t in targets]}"


def upsert(client: httpx.Client, name: str, vectors: np.ndarray) -> None:
    for lo in range(0, len(vectors), 1000):
        items = [{"id": str(lo + i), "vector": v.tolist()} for i, v in enumerate(vectors[lo : lo + 1000])]
        response = client.post(f"/collections/{name}/vectors", json={"items": items})
        assert response.status_code == 200, response.text


@pytest.mark.integration
def test_prometheus_gets_every_dashboard_query_and_the_true_recall(stack, glove):
    client, prom, server = stack
    weak = {"name": "glove", "dim": glove.dim, "metric": "cosine", "shards": 2,
            "index": {"kind": "hnswlib", "params": {"M": 4, "ef_construction": 20}}, "search_params": {"ef": 10}}
    assert client.post("/collections", json=weak).status_code == 201
    small = {"name": "small", "dim": glove.dim, "metric": "cosine", "index": {"kind": "flat"}}
    assert client.post("/collections", json=small).status_code == 201
    upsert(client, "glove", glove.base)
    upsert(client, "small", glove.base[:500])
    for name in ("glove", "small"):
        job = client.post(f"/collections/{name}/rebuild", json={}).json()["job_id"]
        assert wait_job(client, job)["state"] == "succeeded"
    assert client.post("/collections/small/vectors/delete", json={"ids": ["1", "2"]}).status_code == 200

    # Traffic: single and batch searches (every one sampled), and some 404s for the error panel.
    queries = glove.queries[:400]
    found: list[list[str]] = []
    for q in queries[:200]:
        response = client.post("/collections/glove/search", json={"vector": q.tolist(), "k": 10})
        found.append([h["id"] for h in response.json()["results"]])
    for lo in range(200, 400, 50):
        body = {"vectors": queries[lo : lo + 50].tolist(), "k": 10}
        found += [[h["id"] for h in row] for row in client.post("/collections/glove/search/batch", json=body).json()["results"]]
    for q in queries[:50]:
        assert client.post("/collections/small/search", json={"vector": q.tolist()}).status_code == 200
    for _ in range(5):
        assert client.post("/collections/missing/search", json={"vector": [0.0] * glove.dim}).status_code == 404
    mine = float(np.mean([len(set(f) & {str(t) for t in row}) / 10 for f, row in zip(found, glove.truth[:400])]))
    assert mine < 0.97, mine  # weak enough for the agreement to mean something

    deadline = time.monotonic() + 60
    while client.get("/collections/glove/recall").json()["samples"] < len(queries):
        assert time.monotonic() < deadline, client.get("/collections/glove/recall").json()
        time.sleep(0.1)
    served = client.get("/collections/glove/recall").json()
    assert abs(served["recall_at_k"] - mine) <= AGREEMENT, (served, mine)

    # Prometheus: wait for a scrape that has every sample, then ask while the rates still see the traffic.
    deadline = time.monotonic() + 30
    while True:
        samples = instant(prom, 'annserve_recall_samples_total{collection="glove"}')
        if samples and float(samples[0]["value"][1]) >= len(queries):
            break
        assert time.monotonic() < deadline, (samples, server.log_tail())
        time.sleep(0.5)
    exported = float(instant(prom, 'annserve_recall_ratio{collection="glove"}')[0]["value"][1])
    assert abs(exported - mine) <= AGREEMENT, (exported, mine)
    # A rate needs two scrapes in its window: a busy machine may delay some.
    deadline = time.monotonic() + 60
    while not any(float(r["value"][1]) >= 3 for r in instant(prom, f"count_over_time(up[{WINDOW}])")):
        assert time.monotonic() < deadline, prometheus_tail(prom)
        time.sleep(0.5)
    at = time.time()
    empty = []
    for title, expr in dashboard_queries():
        for name, value in VARIABLES.items():
            expr = expr.replace(name, value)
        if not instant(prom, expr, at):
            empty.append((title, expr))
    up = instant(prom, "up", at)
    assert not empty, f"dashboard queries without data: {empty}; up: {up}; {prometheus_tail(prom)}"
    # The alert rules are loaded and evaluated.
    groups = prom.get("/api/v1/rules").json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == 7 and all(rule["health"] == "ok" for rule in rules), rules


def test_the_dashboard_generator_checks_staleness(tmp_path, monkeypatch):
    builder = load_builder()
    stale = tmp_path / "annserve.json"
    stale.write_text("{}")
    monkeypatch.setattr(builder, "OUT", stale)
    monkeypatch.setattr("sys.argv", ["build_dashboard.py", "--check"])
    assert builder.main() == 1
    monkeypatch.setattr("sys.argv", ["build_dashboard.py"])
    assert builder.main() == 0 and Path(stale).read_text() == builder.render()
