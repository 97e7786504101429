"""Prometheus metrics of the service, and the ASGI middleware that records the request ones.

Each app owns a `CollectorRegistry` (several apps can live in one test process). Label values
stay few: the route template (`/collections/{name}/search`, never an id), the method and the
status. The per-request cost is one dict lookup for the cached children, one counter increment
and one histogram observation; the item counts are read from the engine at scrape time only.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry, Counter, Histogram, ProcessCollector, disable_created_metrics, generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .engine_metrics import EngineMetrics

# Search latencies sit well under a millisecond; keep resolution there.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
# The loop should never be late by more than about a millisecond: fine buckets up to 10 ms, then
# coarse ones to see how bad a stall was.
_LOOP_LAG_BUCKETS = (
    0.0001, 0.0002, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01,
    0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 2.5,
)  # fmt: skip


class ServiceMetrics:
    def __init__(self, collections: Callable[[], Iterable[Any]], workers: Callable[[], Any] = lambda: None) -> None:
        """`collections()` gives the live collections (empty while the service is starting);
        `workers()` every worker's figures merged (engine/worker_stats.py), None with one process."""
        disable_created_metrics()  # `_created` series double the output and nobody graphs them
        self.registry = CollectorRegistry()
        # Several workers (app/serve.py): prometheus-client's multiprocess mode keeps each
        # worker's counters and histograms in files there, and a scrape of any worker sums
        # them all (a dead worker's counts included: counters never go back). Process metrics
        # are one process's, so they are left out there.
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not self.multiprocess_dir:
            ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "annserve_requests_total",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "annserve_request_duration_seconds",
            "HTTP request duration, by route template and method",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "annserve_event_loop_lag_seconds",
            "How late a timer on the event loop fires (ANNSERVE_LOOP_LAG_INTERVAL_SECONDS apart): "
            "how long any request may wait for the loop",
            buckets=_LOOP_LAG_BUCKETS,
            registry=self.registry,
        )
        self.engine = EngineMetrics(collections, workers)  # the engine's state, read per scrape
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def exposition(self) -> bytes:
        """The whole /metrics text: this registry's families, then the engine's."""
        if self.multiprocess_dir:
            merged = CollectorRegistry()
            MultiProcessCollector(merged, path=self.multiprocess_dir)
            return generate_latest(merged) + self.engine.render()
        return generate_latest(self.registry) + self.engine.render()

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


    async def probe_loop_lag(self, interval: float) -> None:
        """Run on the event loop until cancelled: sleep `interval` seconds, record how late the
        wake-up came. Whatever holds the loop (a parse, an engine call, a lock) delays every
        connection by as much, `/healthz` included; this is the figure that shows it."""
        while True:
            expected = time.perf_counter() + interval
            await asyncio.sleep(interval)
            self.loop_lag.observe(max(time.perf_counter() - expected, 0.0))


class MetricsMiddleware:
    """Counts and times every HTTP request by the template of the route that answered it."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, worker_header: bool = False) -> None:
        """`worker_header`: answers say which worker process served them (`x-annserve-worker`:
        its pid), with several workers on one port."""
        self.app = app
        self.metrics = metrics
        self._worker = (b"x-annserve-worker", str(os.getpid()).encode()) if worker_header else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app dies before answering
        worker = self._worker

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if worker is not None:
                    message = {**message, "headers": [*message.get("headers", ()), worker]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")  # set by the router on a match
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(template, scope["method"], status, time.perf_counter() - start)
