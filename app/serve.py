"""`annserve serve`: settings from flags over ANNSERVE_* env, logging, uvicorn; with
`--workers N` (default 0: one per core available for a data node, one for a router), N
processes on one port; `--workers 1` (or ANNSERVE_WORKERS=1) serves in this process alone.

Several workers: uvicorn's own supervisor binds the port once and starts N worker processes
that accept on it; it restarts a worker that dies (kill -9 included). Each worker is a whole
service over the same data directory (the engine's multi-process mode: app/engine/shard.py,
coordination.py, job_board.py): writes commit to the shared SQLite stores with the same
durability, every worker catches up with what the others committed before it searches, one
rebuilds at a time and the others load its new main. The workers' Prometheus metrics go to
`<data_dir>/workers/metrics` (prometheus-client's multiprocess mode) and the engine's counters
and recall windows to `<data_dir>/workers/stats` (engine/worker_stats.py), both emptied at start.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import uvicorn

from .engine.threads import available_cores  # light: no index library imported
from .settings import Settings

METRICS_DIR = Path("workers") / "metrics"  # under the data directory
STATS_DIR = Path("workers") / "stats"  # the engine's counters per worker (engine/worker_stats.py)


def default_workers(settings: Settings) -> int:
    """One worker per core this process may run on; a router (which holds no data) one."""
    if settings.shard_urls:
        return 1
    return available_cores()


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    return dict(
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


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
    )


def build_app(settings: Settings) -> Any:
    """The app of one serving process, its collector settled for serving."""
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
    return app


def worker_app() -> Any:
    """uvicorn's factory in each worker process: the settings come from the environment that
    `run` prepared (ANNSERVE_*, ANNSERVE_WORKERS and PROMETHEUS_MULTIPROC_DIR among them)."""
    settings = Settings()
    _logging(settings)
    return build_app(settings)


def run(overrides: dict[str, Any]) -> None:
    """Serve until interrupted. `overrides` (the CLI flags given) win over the environment."""
    settings = Settings(**overrides)  # validated here, before anything starts
    _logging(settings)
    workers = settings.workers or default_workers(settings)
    if workers == 1:
        app = build_app(settings.model_copy(update={"workers": 1}))
        uvicorn.run(app, **_uvicorn_options(settings))
        return
    # The workers are new processes (spawned): they read everything from the environment.
    for name, value in overrides.items():
        os.environ[f"ANNSERVE_{name.upper()}"] = str(value)
    os.environ["ANNSERVE_WORKERS"] = str(workers)
    metrics_dir = Path(settings.data_dir) / METRICS_DIR
    shutil.rmtree(metrics_dir, ignore_errors=True)  # counters start at 0 with the service
    shutil.rmtree(Path(settings.data_dir) / STATS_DIR, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
    logging.getLogger("annserve").info("serving %s with %d worker processes", settings.data_dir, workers)
    uvicorn.run("annserve.serve:worker_app", factory=True, workers=workers, **_uvicorn_options(settings))
