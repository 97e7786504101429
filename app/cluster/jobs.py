"""Rebuilds at a router: started on every node, followed as one job.

The router's job id lists the nodes' job ids in topology order (`<id>.<id>...`, `-` where a
node has no part in it), so the router keeps no state: any router with the same
`ANNSERVE_SHARD_URLS` answers `GET /jobs/{id}`, and one that restarted still does.

The job's progress is the mean of the nodes'; it is running (or queued) while any node's part is,
then failed if any part failed, else succeeded; `error` names each node whose part failed.
A node that already runs a rebuild of the collection (409) has no part in the new job.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import quote

from starlette.exceptions import HTTPException

from ..engine.errors import NotFound
from .state import RouterState, passed_on

NO_PART = "-"
_NODE_JOB = re.compile(r"^[A-Za-z0-9_]{1,64}$")
ACTIVE = ("queued", "running")


def encode(parts: list[str | None]) -> str:
    return ".".join(part or NO_PART for part in parts)


def decode(job_id: str, n_nodes: int) -> list[str | None]:
    parts = job_id.split(".")
    if len(parts) != n_nodes or not all(p == NO_PART or _NODE_JOB.match(p) for p in parts):
        raise NotFound(f"job {job_id!r} not found (not a job of this router's {n_nodes} nodes)")
    if all(p == NO_PART for p in parts):
        raise NotFound(f"job {job_id!r} not found (no node has a part in it)")
    return [None if p == NO_PART else p for p in parts]


async def start_rebuild(state: RouterState, name: str) -> dict:
    path = f"/collections/{quote(name, safe='')}/rebuild"
    outcomes = await state.nodes.every_node("POST", path, b"{}")
    parts: list[str | None] = []
    failures, busy, missing = [], [], []
    for shard, url, outcome in outcomes:
        part = None
        if isinstance(outcome, str):
            failures.append(f"shard {shard} node {url}: {outcome}")
        elif outcome.status == 202:
            part = outcome.json()["job_id"]
        elif outcome.status == 409:
            busy.append(outcome)
        elif outcome.status == 404:
            missing.append(outcome)
        else:
            raise passed_on(outcome)
        parts.append(part)
    started = sum(part is not None for part in parts)
    if failures:
        raise HTTPException(
            503,
            detail=f"rebuild of {name!r} not started everywhere: {'; '.join(failures)}; started on {started} "
            f"of {len(outcomes)} nodes: retry to start it on the others (nodes already rebuilding are skipped)",
        )
    if not started:
        raise passed_on((missing or busy)[0])
    return {"job_id": encode(parts)}


async def job(state: RouterState, job_id: str) -> dict:
    nodes = state.topology.nodes
    parts = decode(job_id, len(nodes))
    mine = [(shard, url, part) for (shard, url), part in zip(nodes, parts) if part is not None]
    timeout = state.settings.shard_timeout_seconds
    outcomes = await asyncio.gather(
        *(state.nodes.call(shard, url, "GET", f"/jobs/{part}", timeout=timeout)
          for shard, url, part in mine)
    )  # fmt: skip
    details: list[dict[str, Any]] = []
    for (shard, url, part), outcome in zip(mine, outcomes):
        entry: dict[str, Any] = {"shard": shard, "node": url, "job_id": part}
        if isinstance(outcome, str):
            # Unknown, not failed: the node may answer on the next poll.
            entry.update(state="running", progress=0.0, error=f"node unreachable: {outcome}")
        elif outcome.status == 404:
            entry.update(state="failed", progress=0.0, error=f"the node forgot the job (it restarted?): {outcome.detail}")
        elif outcome.status != 200:
            raise passed_on(outcome)
        else:
            node_job = outcome.json()
            entry.update({key: node_job.get(key) for key in ("state", "progress", "error", "collection")})
            entry.update(created_at=node_job.get("created_at"), finished_at=node_job.get("finished_at"))
        details.append(entry)
    states = [d["state"] for d in details]
    if any(s in ACTIVE for s in states):
        overall = "running" if any(s != "queued" for s in states) else "queued"
    else:
        overall = "failed" if "failed" in states else "succeeded"
    errors = [f"shard {d['shard']} node {d['node']}: {d['error']}" for d in details if d.get("error")]
    finished = [d.get("finished_at") for d in details]
    created = [d["created_at"] for d in details if d.get("created_at")]
    return {
        "id": job_id,
        "state": overall,
        "progress": round(sum(float(d["progress"] or 0.0) for d in details) / len(details), 4),
        "error": "; ".join(errors) or None,
        "collection": next((d["collection"] for d in details if d.get("collection")), None),
        "created_at": min(created) if created else None,
        "finished_at": max(finished) if overall not in ACTIVE and all(finished) else None,
        "nodes": details,
    }
