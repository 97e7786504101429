"""Building a new main index off the request path: read a snapshot of the store, train, add,
measure the build's recall, and stage the index file for installing.

A build never touches the shard's directory: it writes into a staging directory of its own
(`<collections>/.build-*`, removed at start-up if a crash left one), so that a collection
deleted (or deleted and created again) during its rebuild never receives a stale file. Only
installing, under the collection's file lock and after a last look at the stop signal, moves
the staged files into the shards (`NewMain.move_into`). A stop request is seen between chunks
of the snapshot and of the adds, and right after `train` (which no library can interrupt).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..indexes import Index, create_index

from .errors import NotFound
from .files import move_durably, write_durably
from .merge import brute_force

MAIN_FILE = re.compile(r"^main-(\d{20})\.idx$")
TRAIN_SAMPLE = 100_000  # rows a kind trains on; more rarely changes a codebook or a quantizer
ADD_CHUNK = 20_000  # rows per add call, so progress moves and a stop request is seen
SNAPSHOT_CHUNK = 50_000  # rows per read from the store
RECALL_QUERIES = 200  # own items used as queries to measure a new main's recall@10
RECALL_K = 10


class Cancelled(RuntimeError):
    """A rebuild stopped because the service is shutting down or the collection was deleted."""


def check_stop(stop: threading.Event) -> None:
    if stop.is_set():
        raise Cancelled("rebuild stopped: the service is shutting down or the collection was deleted")


def main_file_name(max_label: int) -> str:
    """The index file of a main built from a snapshot whose largest label was `max_label`."""
    return f"main-{max_label:020d}.idx"


def notes_path(index_path: Path) -> Path:
    """The build notes beside an index file: when it was built and the recall it measured."""
    return index_path.with_suffix(".json")


def read_build_notes(index_path: Path) -> tuple[datetime, float | None]:
    try:
        notes = json.loads(notes_path(index_path).read_text())
        return datetime.fromisoformat(notes["built_at"]), notes.get("recall_at_10")
    except (OSError, ValueError, KeyError, TypeError):  # notes are a nicety; the index decides
        return datetime.fromtimestamp(index_path.stat().st_mtime, timezone.utc), None


@dataclass
class NewMain:
    """A main index built off the request path, staged on disk and waiting to be installed."""

    index: Index | None  # None when the snapshot had no live items
    max_label: int
    staged: Path | None  # the index file in the staging directory (its notes beside it)
    recall: float | None = None  # recall@10 measured right after the build (build_recall)
    built_at: datetime | None = None

    @property
    def kind(self) -> str | None:
        return self.index.kind if self.index is not None else None

    def move_into(self, directory: Path) -> Path | None:
        """Move the staged files into `directory` (notes first: the index file's arrival is
        what makes the build count at the next start); the index file's new path."""
        if self.staged is None:
            return None
        final = directory / self.staged.name
        move_durably(notes_path(self.staged), notes_path(final))
        move_durably(self.staged, final)
        return final


def read_snapshot(
    snap: Any, dim: int, report: Callable[[float], None], stop: threading.Event
) -> tuple[np.ndarray, np.ndarray]:
    """Every live item of an open store snapshot: labels (n,) int64, vectors (n, dim) float32.
    Progress 0-0.15. Cancelled when `stop` is set (or the store closed under a stop)."""
    n = snap.count()
    vectors = np.empty((n, dim), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    done = 0
    try:
        for chunk_labels, _, chunk in snap.chunks(rows=SNAPSHOT_CHUNK, ids=False):
            m = len(chunk_labels)
            labels[done : done + m], vectors[done : done + m] = chunk_labels, chunk
            done += m
            report(0.15 * done / max(n, 1))
            check_stop(stop)
    except NotFound:
        check_stop(stop)  # the collection was deleted: its store closed under the snapshot
        raise
    return labels, vectors


def build_index(
    kind: str, dim: int, metric: str, params: dict[str, Any], labels: np.ndarray, vectors: np.ndarray,
    seed: int, report: Callable[[float], None], stop: threading.Event,
) -> Index:
    """A trained index of `kind` holding (n, dim) `vectors` under (n,) `labels`.
    Progress 0.15-0.9. ValueError when the kind cannot be built from this data."""
    n = len(labels)
    index = create_index(kind, dim, metric, **params)
    sample = vectors
    if n > TRAIN_SAMPLE:
        sample = vectors[np.sort(np.random.default_rng(seed).choice(n, TRAIN_SAMPLE, replace=False))]
    index.train(sample)
    check_stop(stop)
    report(0.3)
    for start in range(0, n, ADD_CHUNK):
        check_stop(stop)
        index.add(vectors[start : start + ADD_CHUNK], labels[start : start + ADD_CHUNK])
        report(0.3 + 0.6 * min(start + ADD_CHUNK, n) / n)
    return index


def build_recall(
    index: Index, vectors: np.ndarray, labels: np.ndarray, seed: int,
    queries: np.ndarray | None = None, search_params: dict[str, Any] | None = None,
) -> float:
    """recall@10 of a freshly built `index` over (n, dim) `vectors` with (n,) `labels`: up to
    200 of its own items as queries, each one's own item left out of both answers, against
    exact search over the same vectors. An exact kind is 1.0 by construction.
    `queries` ((m, dim), the collection's recent real queries) are measured instead when
    given; `search_params` are the collection's defaults (those the kind knows are used)."""
    n = len(labels)
    real = queries is not None and len(queries) > 0
    k = min(RECALL_K, n if real else n - 1)
    if k < 1 or index.kind == "flat":
        return 1.0
    given = {name: v for name, v in (search_params or {}).items() if name in index.search_defaults}
    if real:
        own_labels, fetch = [None] * len(queries), k
        queries = index.prepare(queries)
    else:
        pick = np.random.default_rng(seed).choice(n, min(RECALL_QUERIES, n), replace=False)
        own_labels, fetch = labels[pick].tolist(), k + 1
        queries = index.prepare(vectors[pick])
    chunks = ((labels[s : s + SNAPSHOT_CHUNK], vectors[s : s + SNAPSHOT_CHUNK]) for s in range(0, n, SNAPSHOT_CHUNK))
    truth, _ = brute_force(queries, chunks, fetch, index.dim, index.metric)
    found, _ = index.search_prepared(queries, fetch, index.resolve_search_params(given))
    hits = 0
    for qi, own in enumerate(own_labels):
        want = [label for label in truth[qi].tolist() if label != own and label >= 0][:k]
        got = [label for label in found[qi].tolist() if label != own and label >= 0][:k]
        hits += len(set(want) & set(got))
    return hits / (len(own_labels) * k)


def stage(index: Index, max_label: int, recall: float, items: int, staging: Path) -> NewMain:
    """Save a built index (and its notes) durably into the `staging` directory. Progress ends at 1."""
    staging.mkdir(parents=True, exist_ok=True)
    path = staging / main_file_name(max_label)
    new = NewMain(index, max_label, path, recall, datetime.now(timezone.utc))
    write_durably(notes_path(path), lambda tmp: tmp.write_text(json.dumps(
        {"built_at": new.built_at.isoformat(), "recall_at_10": recall, "items": items}
    )))
    write_durably(path, index.save)
    return new
