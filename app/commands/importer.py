"""`annserve import FILE --collection NAME`: stream a vector file into a collection over HTTP, with a
progress bar, resumable after an interruption.

Resuming: after each batch the service acknowledged (durable, by the API's contract) the number of rows
done is written to a small progress file beside the input (`FILE.NAME.import-progress.json`, or
`--progress-file`). A re-run of the same command with the same input, collection and service starts
from there; a batch that was acknowledged but not yet recorded is sent again, which is harmless since
upserts are idempotent by id. The progress file is removed once the import has completed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from ..client import AnnserveError, Client, NotFoundError
from .options import DEFAULT_URL, ApiKey, Url, connect, err_console, fail, reported_errors
from .sources import Fields, Input

PROGRESS_VERSION = 1
IDS_HELP = (
    "ids, one per row: .npy, or text with one per line (default: the file's id field, else the row number)"
)
PAYLOADS_HELP = "payloads, one per row: .jsonl with one JSON object (or null) per line"
PROGRESS_HELP = "where the progress is kept (default: FILE.COLLECTION.import-progress.json beside FILE)"


class ImportProgress:
    """Rows done so far of one (input, collection, service), kept in a JSON file."""

    def __init__(self, path: Path, identity: dict[str, Any]) -> None:
        self.path, self.identity = path, identity

    def load(self) -> tuple[int, str | None]:
        """(rows done, None), or (0, why the file was not used)."""
        try:
            state = json.loads(self.path.read_text())
        except FileNotFoundError:
            return 0, None
        except (OSError, ValueError) as exc:
            return 0, f"{self.path} is unreadable ({exc})"
        if not isinstance(state, dict) or state.get("identity") != self.identity:
            return 0, f"{self.path} is for another input, collection or service"
        return int(state.get("rows_done", 0)), None

    def save(self, rows_done: int) -> None:
        # Write then rename: a crash leaves the old count or the new one, never half a file.
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(
            json.dumps({"version": PROGRESS_VERSION, "identity": self.identity, "rows_done": rows_done})
        )
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f} vectors/s" if task.speed else "", style="progress.data.speed")


def import_vectors(
    file: Annotated[Path, typer.Argument(help="vectors: .npy (n, dim), .fvecs, .parquet or .jsonl")],
    collection: Annotated[str, typer.Option("--collection", "-c", help="the collection to upsert into")],
    ids: Annotated[Optional[Path], typer.Option(help=IDS_HELP, show_default=False)] = None,
    payloads: Annotated[Optional[Path], typer.Option(help=PAYLOADS_HELP, show_default=False)] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    batch_size: Annotated[int, typer.Option(min=1, help="items per request (and rows in memory)")] = 1000,
    create: Annotated[bool, typer.Option("--create", help="create the collection if missing")] = False,
    metric: Annotated[str, typer.Option(help="metric of a created collection: cosine, ip, l2")] = "cosine",
    index: Annotated[str, typer.Option(help="index kind of a created collection")] = "auto",
    id_field: Annotated[str, typer.Option(help=".parquet column / .jsonl key of the id")] = "id",
    vector_field: Annotated[str, typer.Option(help=".parquet column / .jsonl key of the vector")] = "vector",
    payload_field: Annotated[
        str, typer.Option(help=".parquet column / .jsonl key of the payload")
    ] = "payload",
    progress_file: Annotated[Optional[Path], typer.Option(help=PROGRESS_HELP, show_default=False)] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="ignore earlier progress, send every row")
    ] = False,
) -> None:
    """Stream a vector file into a collection over HTTP, a batch at a time; re-run to resume."""
    with reported_errors():
        source = Input(file, ids, payloads, Fields(id_field, vector_field, payload_field))
        if source.rows == 0:
            typer.echo(f"nothing to import: {file} has no rows")
            return
        identity = {
            "url": url.rstrip("/"),
            "collection": collection,
            "inputs": source.fingerprint(),
            "fields": [id_field, vector_field, payload_field],
        }
        default_path = file.with_name(f"{file.name}.{collection}.import-progress.json")
        progress = ImportProgress(progress_file or default_path, identity)
        with connect(url, api_key) as client:
            _check_collection(client, collection, source.dim, create, metric, index)
            start, why_not = (0, None) if restart else progress.load()
            if why_not:
                err_console.print(f"note: {why_not}; starting from row 0", highlight=False)
            if start:
                start = _confirm_resume(client, collection, source, start)
            progress.save(start)  # also shows, before anything is sent, that the progress file can be written
            _send(client, collection, source, start, batch_size, progress)


def _check_collection(client: Client, name: str, dim: int, create: bool, metric: str, index: str) -> None:
    try:
        info = client.get_collection(name)
    except NotFoundError:
        if not create:
            fail(f"collection {name!r} not found; pass --create to create it (dim {dim}, from the file)")
        client.create_collection(name, dim=dim, metric=metric, index=index)
        err_console.print(f"created collection {name!r}: dim {dim}, {metric}, index {index}", highlight=False)
        return
    if info["dim"] != dim:
        fail(f"dimension mismatch: collection {name!r} has dim {info['dim']}, the file has dim {dim}")


def _confirm_resume(client: Client, collection: str, source: Input, start: int) -> int:
    """`start`, if the last row recorded as done is on the service; else 0 (e.g. the collection was
    deleted and created again since)."""
    last = next(source.batches(start - 1, 1)).ids[0]
    try:
        client.get(collection, last)
    except NotFoundError:
        note = f"note: row {start - 1} (id {last!r}) is not in {collection!r}; starting from row 0"
        err_console.print(note, highlight=False)
        return 0
    err_console.print(f"resuming at row {start:,} of {source.rows:,}", highlight=False)
    return start


def _send(
    client: Client, collection: str, source: Input, start: int, batch_size: int, progress: ImportProgress
) -> None:
    began, done = time.perf_counter(), start
    bar = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )
    try:
        with bar:
            task = bar.add_task(f"import {collection}", total=source.rows, completed=start)
            for batch in source.batches(start, batch_size):
                client.upsert(collection, batch.ids, batch.vectors, batch.payloads, batch_size=batch_size)
                done = batch.start + len(batch.ids)
                progress.save(done)
                bar.update(task, completed=done)
    except KeyboardInterrupt:
        fail(f"interrupted at row {done:,} of {source.rows:,}; {_resume_hint(progress)}", code=130)
    except (AnnserveError, ValueError, OSError) as exc:
        fail(f"{exc}\n{done:,} of {source.rows:,} rows are in; {_resume_hint(progress)}")
    progress.remove()
    seconds = time.perf_counter() - began
    sent = done - start
    resumed = f" (resumed at row {start:,})" if start else ""
    rate = sent / max(seconds, 1e-9)
    typer.echo(
        f"imported {sent:,} vectors into {collection!r} in {seconds:.1f} s: {rate:,.0f} vectors/s{resumed}"
    )


def _resume_hint(progress: ImportProgress) -> str:
    return f"run the same command again to resume (progress in {progress.path})"
