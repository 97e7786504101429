"""Commands that ask a running service: `annserve collections` (a table), `annserve search` (a table of
hits), `annserve rebuild` (optionally waiting, with a progress bar)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import numpy as np
import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .options import DEFAULT_URL, ApiKey, Url, connect, err_console, fail, out_console, reported_errors


def collections(url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """List the collections: dim, metric, index, item counts, last rebuild."""
    with reported_errors(), connect(url, api_key) as client:
        infos = client.list_collections()
    table = Table("name", "dim", "metric", "index", "count", "main", "fresh", "last rebuild")
    for info in infos:
        index = info["index"]
        built = (index.get("built") or {}).get("kind")
        kind = index["kind"] if built in (None, index["kind"]) else f"{index['kind']} ({built})"
        table.add_row(
            info["name"],
            str(info["dim"]),
            info["metric"],
            kind,
            f"{info['count']:,}",
            f"{info['main_count']:,}",
            f"{info['fresh_count']:,}",
            info.get("last_rebuild_at") or "never",
        )
    out_console.print(table)


def search(
    collection: Annotated[str, typer.Argument(help="the collection to search")],
    vector: Annotated[
        Optional[str], typer.Option(help="the query: numbers separated by commas, or a JSON list")
    ] = None,
    id: Annotated[Optional[str], typer.Option("--id", help="search with this stored item's vector")] = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="results")] = 10,
    params: Annotated[
        Optional[str], typer.Option(help="search parameters as JSON, e.g. '{\"ef\": 64}'")
    ] = None,
    exact: Annotated[bool, typer.Option("--exact", help="brute force over the same live data")] = False,
    with_payload: Annotated[bool, typer.Option("--with-payload", help="show each hit's payload")] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """The k nearest items to a vector (--vector) or to a stored item (--id), as a table."""
    if (vector is None) == (id is None):
        fail("expected exactly one of --vector, --id")
    search_params = _json_object(params, "--params") if params is not None else None
    with reported_errors(), connect(url, api_key) as client:
        if vector is not None:
            hits = client.search(
                collection,
                _parse_vector(vector),
                k=k,
                params=search_params,
                with_payload=with_payload,
                exact=exact,
            )
        else:
            hits = client.search_by_id(
                collection, id, k=k, params=search_params, with_payload=with_payload, exact=exact
            )
    table = Table("rank", "id", "score", *(["payload"] if with_payload else []))
    for rank, hit in enumerate(hits, start=1):
        extra = [json.dumps(hit.payload)] if with_payload else []
        table.add_row(str(rank), hit.id, f"{hit.score:.6g}", *extra)
    out_console.print(table)


def rebuild(
    collection: Annotated[str, typer.Argument(help="the collection to rebuild")],
    wait: Annotated[bool, typer.Option("--wait", help="wait for the job, with a progress bar")] = False,
    timeout: Annotated[Optional[float], typer.Option(help="give up waiting after this many seconds")] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Build a new main index in the background (the job's id is printed); --wait follows it to the end."""
    with reported_errors(), connect(url, api_key) as client:
        if not wait:
            job = client.rebuild(collection)
            typer.echo(f"rebuild of {collection!r} started: job {job['id']} ({job['state']})")
            return
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=err_console,
        )
        with bar:
            task = bar.add_task(f"rebuild {collection}", total=1.0)
            job = client.rebuild(
                collection,
                wait=True,
                timeout=timeout,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    info = job.get("finished_at") or ""
    typer.echo(f"rebuild of {collection!r} succeeded: job {job['id']} {info}".rstrip())


def _parse_vector(text: str) -> np.ndarray:
    text = text.strip()
    try:
        values = (
            json.loads(text) if text.startswith("[") else [float(x) for x in text.replace(",", " ").split()]
        )
        vector = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError):
        fail(f"--vector: expected numbers separated by commas or a JSON list, got {text[:60]!r}")
    if vector.ndim != 1 or not len(vector):
        fail(f"--vector: expected a flat list of numbers, got shape {vector.shape}")
    return vector


def _json_object(text: str, what: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        fail(f"{what}: not JSON ({exc})")
    if not isinstance(value, dict):
        fail(f"{what}: expected a JSON object, got {text[:60]!r}")
    return value
