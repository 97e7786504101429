"""`annserve bench --overhead`: what the `indexes` wrappers add on top of the raw FAISS/hnswlib
call, timed side by side on the same queries and parameters."""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np
from rich.table import Table

from ..indexes.base import normalize_rows

from .datasets import Dataset
from .contenders import KindContender
from .measure import median_seconds, reason
from .report import console
from .sweeps import compact

OVERHEAD_KINDS = ("flat", "ivf_flat", "ivf_pq", "pq", "hnsw", "hnswlib")


def overhead(data: Dataset, kinds: list[str], k: int, reps: int = 7) -> None:
    """Time a 1000-query batch through each FAISS/hnswlib wrapper and through its raw library
    object with the same parameters, interleaved, and print wrapper/raw (target: < 1.05)."""
    queries = np.resize(data.queries, (1000, data.dim)).astype(np.float32)
    raw_queries = normalize_rows(queries) if data.metric == "cosine" else queries  # as the wrapper does
    title = f"wrapper overhead: 1000-query batch, k={k}, median of {reps}, library threads allowed"
    table = Table(title=title)
    for column in ("kind", "search", "wrapper ms", "raw ms", "wrapper/raw", "same ids"):
        table.add_column(column)
    for kind in (k_ for k_ in kinds if k_ in OVERHEAD_KINDS):
        contender = KindContender(kind)
        try:
            contender.build(data, {})
            library = getattr(contender.index, "library_index", None)
            if library is None:
                console.print(f"[yellow]skipped[/] {kind}: the wrapper has no library_index yet")
                continue
            params = contender.resolved_search_params({})
            raw_search = raw_searcher(library, params, k)
            wrapped, raw = contender.search(queries, k, params), raw_search(raw_queries)
        except Exception as exc:  # a kind still being written: report, go on
            console.print(f"[yellow]skipped[/] {kind}: {reason(exc)}", highlight=False)
            continue
        wrapper_t, raw_t = [], []
        for _ in range(reps):  # interleaved, so drift from neighbours hits both sides alike
            wrapper_t.append(median_seconds(lambda: contender.search(queries, k, params), passes=1))
            raw_t.append(median_seconds(lambda: raw_search(raw_queries), passes=1))
        w, r = statistics.median(wrapper_t), statistics.median(raw_t)
        same = float(np.mean(wrapped == raw))
        times = (f"{w * 1e3:.2f}", f"{r * 1e3:.2f}", f"{w / r:.3f}")
        table.add_row(kind, compact(params), *times, f"{same:.1%}")
    console.print(table)
    console.print(
        "target: wrapper/raw < 1.05. 'same ids' below 100%: the wrapper does work the raw call does not.\n"
        "Both sides share the machine: on a loaded host, run to run noise can exceed the target."
    )


def raw_searcher(library: Any, params: dict[str, Any], k: int) -> Any:
    """A function q -> ids calling the raw FAISS or hnswlib object with the wrapper's parameters."""
    if hasattr(library, "knn_query"):  # hnswlib
        library.set_ef(max(params.get("ef", 10), k))
        return lambda q: library.knn_query(q, k)[0]
    import faiss

    # ParameterSpace sees through IndexRefine and IVF but not IndexIDMap: set the knobs on the
    # mapped index, search through the map so that both sides return the same ids.
    inner = faiss.downcast_index(library.index) if isinstance(library, faiss.IndexIDMap) else library
    for name, value in params.items():
        if name == "rerank":  # ParameterSpace has no name for IndexRefine's k_factor
            faiss.downcast_index(inner).k_factor = float(value)
        else:
            names = {"ef": "efSearch"}
            faiss.ParameterSpace().set_index_parameter(inner, names.get(name, name), value)
    return lambda q: library.search(q, k)[1]
