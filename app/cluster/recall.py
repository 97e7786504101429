"""Recall settings, online recall and tuning at a router (the node's api/routes/recall.py over
every node).

- `PATCH /collections/{c}` goes to every node (every replica): the settings are each node's own,
  and a search may reach any replica. A node that fails makes the call fail, naming it and the
  nodes that did apply it; a PATCH is idempotent, so resending it converges.
- `POST /collections/{c}/tune` goes to every node at once: each tunes the knob on its own shard
  (its own index, its own sampled queries) and keeps what it chose. The answer has each node's
  choice and the aggregate: `recall` is the lowest any node measured (every shard meets it),
  `recall_mean` the mean, `chosen` the largest value of each knob any node chose, and
  `latency_p50_ms` the slowest node's (a search waits for the slowest shard).
- `GET /collections/{c}/recall` asks every node: each samples the searches it served (a router
  sends each search to one replica per shard), so the cluster's figure is the samples-weighted
  mean over the nodes of their shard's recall@k. It estimates the merged answer's recall: the
  global top k is made of each shard's own top items, and a shard answers them with its recall.
  `shards` has each shard's figure (its replicas' samples together); the lowest shard is the
  one to tune.
"""

from __future__ import annotations

from collections import Counter
from typing import Any
from urllib.parse import quote

import orjson
from starlette.exceptions import HTTPException

from ..api.schemas import CollectionPatch, TuneRequest
from ..api.transport.parsing import load_object
from . import collections
from .fanout import NodeAnswer
from .state import RouterState, passed_on

# A tuning runs hundreds of searches per node, on nodes that share their cores: it may take long.
MIN_TUNE_TIMEOUT_SECONDS = 300.0


def _path(name: str, suffix: str = "") -> str:
    return f"/collections/{quote(name, safe='')}{suffix}"


def _node(shard: int, url: str) -> str:
    return f"shard {shard} node {url}"


async def patch(state: RouterState, name: str, raw: bytes) -> dict:
    """Apply the change on every node; the aggregated info (see the module docstring)."""
    body = load_object(raw, frozenset(CollectionPatch.model_fields))
    CollectionPatch.model_validate(body)  # the node's checks, before any node is asked
    outcomes = await state.nodes.every_node("PATCH", _path(name), orjson.dumps(body))
    applied, failures = [], []
    for shard, url, outcome in outcomes:
        if isinstance(outcome, str):
            failures.append(f"{_node(shard, url)}: {outcome}")
        elif outcome.status == 200:
            applied.append(_node(shard, url))
        else:
            # The client's mistake (the same on every node), or the collection is missing there.
            if not (applied or failures):
                raise passed_on(outcome)
            raise HTTPException(outcome.status, detail=f"{_node(shard, url)}: {outcome.detail}")
    if failures:
        raise HTTPException(
            503,
            detail=f"the change to {name!r} is not applied everywhere: {'; '.join(failures)}; applied on "
            f"{len(applied)} of {len(outcomes)} nodes: resend it to converge (a PATCH is idempotent)",
        )
    state.forget(name)
    return await collections.info(state, name)


async def tune(state: RouterState, name: str, raw: bytes) -> dict:
    """Every node tunes its shard; each one's choice and the aggregate (module docstring)."""
    body = load_object(raw or b"{}", frozenset(TuneRequest.model_fields))
    request = TuneRequest.model_validate(body)
    if request.k > state.settings.max_k:
        raise ValueError(f"k: expected at most {state.settings.max_k} (ANNSERVE_MAX_K), got {request.k}")
    timeout = max(state.settings.shard_write_timeout_seconds, MIN_TUNE_TIMEOUT_SECONDS)
    outcomes = await state.nodes.every_node("POST", _path(name, "/tune"), orjson.dumps(body), timeout=timeout)
    tuned, refused, failures = [], [], []
    for shard, url, outcome in outcomes:
        if isinstance(outcome, str):
            failures.append(f"{_node(shard, url)}: {outcome}")
        elif outcome.status == 200:
            tuned.append((shard, url, outcome.json()))
        else:
            refused.append((shard, url, outcome))
    done = f"tuned on {len(tuned)} of {len(outcomes)} nodes (each keeps what it chose)"
    if failures:
        raise HTTPException(
            503, detail=f"tuning of {name!r} did not reach every node: {'; '.join(failures)}; {done}: retry it"
        )
    if refused:
        # 404 (no such collection), 409 (no main index yet), 422 (no knob value meets the target)...
        said = "; ".join(f"{_node(s, u)}: {a.detail}" for s, u, a in refused)
        raise HTTPException(refused[0][2].status, detail=f"{said}; {done}" if tuned else said)
    return aggregate_tuning(tuned)


def aggregate_tuning(tuned: list[tuple[int, str, dict[str, Any]]]) -> dict[str, Any]:
    answers = [answer for _, _, answer in tuned]
    chosen: dict[str, Any] = {}
    for answer in answers:
        for knob, value in answer.get("chosen", {}).items():
            if knob not in chosen or (_number(value) and _number(chosen[knob]) and value > chosen[knob]):
                chosen[knob] = value
    latencies = [a["latency_p50_ms"] for a in answers if a.get("latency_p50_ms") is not None]
    recalls = [float(a["recall"]) for a in answers]
    return {
        "kind": answers[0]["kind"],
        "knob": answers[0].get("knob"),
        "chosen": chosen,
        "recall": min(recalls),
        "recall_mean": round(sum(recalls) / len(recalls), 6),
        "latency_p50_ms": max(latencies) if latencies else None,
        "nodes": [{"shard": shard, "node": url, **answer} for shard, url, answer in tuned],
    }


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


async def recall(state: RouterState, name: str) -> dict:
    """The cluster's online recall from every node's (module docstring). A replica that does not
    answer is left out and named in `failed_nodes`; a shard with no replica answering is a 503."""
    outcomes = await state.nodes.every_node("GET", _path(name, "/recall"), timeout=state.settings.shard_timeout_seconds)
    parts: list[tuple[int, str, dict[str, Any]]] = []
    failed: dict[int, list[str]] = {}
    missing: list[NodeAnswer] = []
    for shard, url, outcome in outcomes:
        if isinstance(outcome, str):
            failed.setdefault(shard, []).append(f"{url}: {outcome}")
        elif outcome.status == 200:
            parts.append((shard, url, outcome.json()))
        elif outcome.status == 404:
            missing.append(outcome)
        else:
            raise passed_on(outcome)
    if missing and not parts:
        raise passed_on(missing[0])
    if missing:
        raise HTTPException(
            404,
            detail=f"collection {name!r} is missing on shard(s) {sorted({a.shard for a in missing})} but present "
            "on others: a create or delete did not finish on every node; retry it",
        )
    answered = {shard for shard, _, _ in parts}
    dark = [s for s in state.shards if s.index not in answered]
    if dark:
        raise HTTPException(
            503,
            detail="; ".join(f"{s.describe()}: no replica answered ({'; '.join(failed.get(s.index, []))})" for s in dark),
        )
    out = aggregate_recall(parts, len(state.shards))
    if failed:
        out["failed_nodes"] = [entry for entries in failed.values() for entry in entries]
    return out


def aggregate_recall(parts: list[tuple[int, str, dict[str, Any]]], n_shards: int) -> dict[str, Any]:
    """Samples-weighted mean recall over the nodes' (shard, url, recall answer)."""

    def weighted(rows: list[dict[str, Any]]) -> float | None:
        n = sum(r["samples"] for r in rows if r.get("recall_at_k") is not None)
        if not n:
            return None
        return round(sum(r["recall_at_k"] * r["samples"] for r in rows if r.get("recall_at_k") is not None) / n, 6)

    rows = [answer for _, _, answer in parts]
    ks: Counter = Counter()
    for r in rows:
        if r.get("k") is not None:
            ks[r["k"]] += r["samples"]
    sampled = [r["last_sampled_at"] for r in rows if r.get("last_sampled_at")]
    first = rows[0]
    out: dict[str, Any] = {
        "recall_at_k": weighted(rows),
        "k": ks.most_common(1)[0][0] if ks else None,
        "samples": sum(r["samples"] for r in rows),
        "window": sum(r["window"] for r in rows),
        "target": first.get("target"),
        "floor": first.get("floor"),
        "last_sampled_at": max(sampled) if sampled else None,
    }
    for key in ("samples_total", "dropped_total"):
        if all(key in r for r in rows):
            out[key] = sum(r[key] for r in rows)
    if "sample_rate" in first:
        out["sample_rate"] = first["sample_rate"]
    out["shards"] = [
        {
            "shard": shard,
            "recall_at_k": weighted([a for s, _, a in parts if s == shard]),
            "samples": sum(a["samples"] for s, _, a in parts if s == shard),
        }
        for shard in range(n_shards)
    ]
    out["nodes"] = [
        {"shard": shard, "node": url, **{key: a.get(key) for key in ("recall_at_k", "k", "samples", "target",
                                                                     "floor", "last_sampled_at")}}
        for shard, url, a in parts
    ]  # fmt: skip
    return out
