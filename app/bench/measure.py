"""Measuring one contender: build it per build setting, then recall@k, single-query QPS (one
thread) and batch QPS for each search setting, as `Result` points."""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
from rich.progress import Progress

from ..indexes import recall_at_k

from .datasets import Dataset
from .contenders import PEERS, KindContender
from .sweeps import clamp_to_build, compact, expand

TIMING_PASSES = 3


@dataclass
class Result:
    """One (contender, build, search knob) point of the benchmark."""

    dataset: str
    kind: str
    build_params: dict[str, Any]
    search_params: dict[str, Any]
    recall: float
    qps_single: float
    qps_batch: float | None  # None where the library has no batch call (Annoy)
    build_s: float
    memory_bytes: int

    @property
    def is_peer(self) -> bool:
        return self.kind in PEERS


@contextmanager
def single_thread(contender: Any) -> Iterator[None]:
    """Pin FAISS (OpenMP), numba and the contender's own threads (hnswlib's, per index) to one,
    then restore the counts each had before."""
    import faiss
    import numba

    faiss_threads, numba_threads = faiss.omp_get_max_threads(), numba.get_num_threads()
    faiss.omp_set_num_threads(1)
    numba.set_num_threads(1)
    own_threads = contender.set_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(faiss_threads)
        numba.set_num_threads(numba_threads)
        if own_threads is not None:
            contender.set_threads(own_threads)


def median_seconds(run: Any, passes: int = TIMING_PASSES) -> float:
    """Median wall time of `passes` calls of `run()`; the median shrugs off a noisy neighbour."""
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_point(contender: Any, data: Dataset, truth: np.ndarray, k: int, params: dict[str, Any]) -> dict:
    """Recall, single-query QPS and batch QPS of one knob setting."""
    queries, nq = data.queries, data.queries.shape[0]
    found = contender.search(queries, k, params)  # also warms caches before timing
    recall = recall_at_k(found, truth)

    def one_at_a_time() -> None:
        for i in range(nq):
            contender.search(queries[i : i + 1], k, params)

    with single_thread(contender):
        qps_single = nq / median_seconds(one_at_a_time)
    qps_batch = None
    if contender.has_batch:
        qps_batch = nq / median_seconds(lambda: contender.search(queries, k, params))
    return {"recall": recall, "qps_single": qps_single, "qps_batch": qps_batch}


def reason(exc: BaseException) -> str:
    """One line for a skip: the exception type and the first line of its message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_contender(
    kind: str, grid: dict[str, list[Any]], build_overrides: dict[str, Any], data: Dataset,
    truth: np.ndarray, k: int, progress: Progress, task: Any,
) -> tuple[list[Result], list[str]]:  # fmt: skip
    """Build `kind` for each build setting of its grid and measure each search setting.

    Returns the results and the reasons for what was skipped; never raises for a kind's fault.
    """
    contender = PEERS[kind]() if kind in PEERS else KindContender(kind)
    # A build knob given in --build-params is fixed: the default sweep of it (faiss_lsh's
    # nbits_per_dim) would otherwise override it.
    build_grid = {n: v for n, v in grid.items() if n in contender.build_knobs and n not in build_overrides}
    search_grid = {n: v for n, v in grid.items() if n not in contender.build_knobs}
    results, skipped = [], []
    for build_setting in expand(build_grid):
        settings = expand(search_grid)
        progress.update(task, description=f"{kind}: building")
        try:
            params = {**build_overrides, **build_setting}
            build_s = median_seconds(lambda: contender.build(data, params), passes=1)
            build = contender.resolved_build_params()
            memory = contender.memory_bytes()
        except Exception as exc:  # a kind still being written, or a bad parameter: report, go on
            skipped.append(f"{kind} build {compact(build_setting)} failed, skipped: {reason(exc)}")
            progress.advance(task, len(settings))
            continue
        clamped = clamp_to_build(settings, build)
        progress.advance(task, len(settings) - len(clamped))
        for setting in clamped:
            progress.update(task, description=f"{kind} {compact(setting)}")
            try:
                point = measure_point(contender, data, truth, k, setting)
                resolved = contender.resolved_search_params(setting)
            except Exception as exc:
                skipped.append(f"{kind} {compact(setting)} search failed, skipped: {reason(exc)}")
            else:
                results.append(Result(data.name, kind, build, resolved, build_s=build_s, memory_bytes=memory,
                                      **point))
                if not progress.console.is_terminal:  # a log file gets no live bar: one line per step
                    progress.console.print(
                        f"{kind} {compact(setting)}: recall {point['recall']:.3f}, "
                        f"{point['qps_single']:,.0f} QPS single", highlight=False,
                    )  # fmt: skip
            progress.advance(task)
    return results, skipped
