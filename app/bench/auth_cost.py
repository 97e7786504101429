"""What the API-key check costs a search: `python -m annserve.bench.auth_cost`.

Two measurements, keys off (no key configured) against keys on (two admin keys and two read
keys configured, a read key sent as X-API-Key), interleaved, medians of several rounds:
- the gate alone: `AuthMiddleware` in front of an ASGI app that answers nothing;
- a whole search through the app's ASGI stack in process (metrics, keys, body limit, the hot
  path, the micro-batcher, a flat index over 2,000 x 50), no network, so that the difference is
  not drowned in socket time.
Prints a table: microseconds per request and the difference.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from ..api.app import create_app
from ..api.auth import AuthMiddleware, KeyRing
from ..settings import Settings

KEYS = {"admin_api_key": "admin-one,admin-two", "api_key": "read-one,read-two"}
SEARCH_PATH = "/collections/bench/search"


def _scope(key: bytes | None) -> dict:
    headers = [(b"host", b"x"), (b"content-type", b"application/json"), (b"user-agent", b"bench")]
    if key is not None:
        headers.append((b"x-api-key", key))
    return {
        "type": "http",
        "method": "POST",
        "path": SEARCH_PATH,
        "raw_path": SEARCH_PATH.encode(),
        "headers": headers,
        "query_string": b"",
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 1),
        "root_path": "",
    }


async def _gate(keys: KeyRing, key: bytes | None, n: int) -> float:
    async def nothing(scope, receive, send) -> None:
        return None

    gate = AuthMiddleware(nothing, keys)
    scope = _scope(key)
    start = time.perf_counter()
    for _ in range(n):
        await gate(scope, None, None)
    return (time.perf_counter() - start) / n


async def _searches(app, body: bytes, key: bytes | None, n: int) -> float:
    statuses = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope = _scope(key)
    start = time.perf_counter()
    for _ in range(n):
        await app(dict(scope), receive, send)
    elapsed = (time.perf_counter() - start) / n
    if set(statuses) != {200}:
        raise RuntimeError(f"searches answered {sorted(set(statuses))}")
    return elapsed


async def _measure(rounds: int, n_gate: int, n_search: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"gate off": [], "gate on": [], "search off": [], "search on": []}
    off, on = KeyRing(None, None, None), KeyRing(KEYS["admin_api_key"], KEYS["api_key"], None)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2000, 50)).astype(np.float32)
    body = orjson.dumps({"vector": vectors[7].tolist(), "k": 10})
    apps = {}
    with tempfile.TemporaryDirectory() as tmp:
        contexts = []
        for mode, extra in (("off", {}), ("on", KEYS)):
            app = create_app(Settings(data_dir=Path(tmp) / mode, **extra))
            context = app.router.lifespan_context(app)
            await context.__aenter__()
            contexts.append(context)
            while app.state.manager is None or not app.state.manager.is_ready:
                await asyncio.sleep(0.01)
            collection = app.state.manager.create("bench", 50, "l2", "flat", {})
            collection.upsert([f"v{i}" for i in range(len(vectors))], vectors, [None] * len(vectors))
            apps[mode] = app
        try:
            for mode in ("off", "on"):  # warm up both
                await _searches(apps[mode], body, b"read-two" if mode == "on" else None, 200)
            for _ in range(rounds):
                out["gate off"].append(await _gate(off, None, n_gate))
                out["gate on"].append(await _gate(on, b"read-two", n_gate))
                out["search off"].append(await _searches(apps["off"], body, None, n_search))
                out["search on"].append(await _searches(apps["on"], body, b"read-two", n_search))
        finally:
            for context in contexts:
                await context.__aexit__(None, None, None)
    return out


def main(rounds: int = 7, n_gate: int = 20_000, n_search: int = 1000) -> None:
    figures = asyncio.run(_measure(rounds, n_gate, n_search))
    med = {name: statistics.median(values) * 1e6 for name, values in figures.items()}
    print(
        f"median of {rounds} rounds (gate: {n_gate} calls each, search: {n_search} in-process searches each)"
    )
    print(f"{'':26}{'keys off us':>12}{'keys on us':>12}{'on - off us':>13}")
    for what in ("gate", "search"):
        off, on = med[f"{what} off"], med[f"{what} on"]
        label = "key check alone" if what == "gate" else "search through the ASGI app"
        print(f"{label:26}{off:>12.2f}{on:>12.2f}{on - off:>13.2f}")


if __name__ == "__main__":
    main()
