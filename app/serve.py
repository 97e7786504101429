"""`annserve serve`: settings from flags over ANNSERVE_* env, logging, uvicorn."""

from __future__ import annotations

import gc
import importlib.util
import logging
import sys
from typing import Any

import uvicorn

from .settings import Settings


def run(overrides: dict[str, Any]) -> None:
    """Serve until interrupted. `overrides` (the CLI flags given) win over the environment."""
    settings = Settings(**overrides)  # validated here, before anything starts
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from .api.app import create_app
    if settings.shard_urls:  # a router over shard nodes (app/cluster/): it holds no data
        from .cluster.app import create_router_app as create_app
    from .api.auth import warn_if_open

    warn_if_open(settings)

    app = create_app(settings)
    sys.setswitchinterval(settings.gil_switch_interval_seconds)  # the loop gets the GIL back soon
    # What is loaded by now (modules, classes, the app: ~170K objects) lives as long as the
    # process: out of the collector's sight, a full collection takes ~0 ms instead of ~120 ms
    # with the GIL held, a stall of every connection each time one runs.
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        # The C event loop and HTTP parser (uvicorn[standard]) roughly halve the per-request cost.
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        log_level=settings.log_level.lower(),
        # An access-log line per search costs more than the search; Prometheus counts requests.
        access_log=False,
        timeout_graceful_shutdown=10,
    )
