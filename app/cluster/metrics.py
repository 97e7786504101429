"""Prometheus metrics of a router (prefix `annserve_router_`): its own requests, and per shard the
fan-out latency, failed node calls, failovers, hedges and partial answers.

Labels stay few: the shard index (a handful), the operation (search, get, write, admin), the
route template, the reason of a failure (timeout, connect, status_5xx, other). Never an id, a
URL path with a name in it, or a key.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics

# A shard call on loopback takes about a millisecond; keep resolution there and up to the timeout.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0)


class RouterMetrics:
    """One registry per router app. `observe()` is what api/transport/metrics.MetricsMiddleware
    calls per request, so the router reuses that middleware unchanged."""

    def __init__(self) -> None:
        disable_created_metrics()
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            "annserve_router_requests_total", "HTTP requests answered by the router, by route template, "
            "method and status", ["route", "method", "status"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "annserve_router_request_duration_seconds", "HTTP request duration at the router, by route "
            "template and method", ["route", "method"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.shard_duration = Histogram(
            "annserve_router_shard_duration_seconds", "Fan-out latency of one shard call (failovers and "
            "hedges included), by shard and operation", ["shard", "operation"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.shard_failures = Counter(
            "annserve_router_shard_failures_total", "Node calls that failed (no answer in time, refused, "
            "5xx), by shard and reason", ["shard", "reason"], registry=r,
        )  # fmt: skip
        self.failovers = Counter(
            "annserve_router_failovers_total", "Reads moved to another replica after a failure or a slow "
            "first replica, by shard", ["shard"], registry=r,
        )  # fmt: skip
        self.hedges = Counter(
            "annserve_router_hedges_total", "Reads sent to a second replica because the first had not "
            "answered within ANNSERVE_HEDGE_AFTER_MS, by shard", ["shard"], registry=r,
        )  # fmt: skip
        self.shard_unavailable = Counter(
            "annserve_router_shard_unavailable_total", "Shard calls that no replica answered, by shard "
            "and operation", ["shard", "operation"], registry=r,
        )  # fmt: skip
        self.partial_answers = Counter(
            "annserve_router_partial_answers_total", "Searches answered without one or more shards "
            "(allow_partial)", registry=r,
        )  # fmt: skip
        self.replica_up = Gauge(
            "annserve_router_replica_up", "1 while the router counts a replica as healthy (its last call "
            "or probe succeeded), else 0", ["shard", "replica"], registry=r,
        )  # fmt: skip
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route, method, str(status)),
                self.duration.labels(route, method),
            )
        children[0].inc()
        children[1].observe(seconds)
