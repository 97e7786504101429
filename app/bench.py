"""`annserve bench`: recall vs speed of every index kind, in the manner of ann-benchmarks.

For each kind: build once with its defaults (or `--build-params`), then sweep its search knob over
`SWEEPS`; for each knob value measure recall@k against exact ground truth, single-query QPS (one
query per call, one thread) and batch QPS (all queries in one call, library threads allowed).
Peers run on the same axes: Annoy (the model for `forest`) and FAISS `IndexLSH` exactly as FAISS
ships it (sign random projections, exhaustive Hamming scan, no exact re-scoring), the yardstick for
`lsh`. Writes `results.csv`, `recall_vs_qps.png` and `summary.md` to `--out`.

`--overhead` measures instead what the `indexes` wrappers add on top of the raw FAISS/hnswlib call.

A kind that fails (not written yet, bad parameter) is reported and skipped; the run goes on.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import platform
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from indexes import INDEX_KINDS, create_index, index_class, recall_at_k
from indexes.base import normalize_rows

from .datasets import Dataset, ground_truth, load_dataset

POWERS_OF_2 = [2**i for i in range(9)]  # 1 .. 256
EF_VALUES = [10, 20, 40, 80, 120, 200, 400]
SEARCH_K_VALUES = [500, 1000, 2000, 3000, 4000, 6000, 8000, 12_000, 20_000, 40_000]

# The knob values swept per contender: parameter -> values; several parameters are crossed.
# Edit freely: this table is the one place that decides what a benchmark run explores.
SWEEPS: dict[str, dict[str, list[Any]]] = {
    "flat": {},
    "ivf_flat": {"nprobe": POWERS_OF_2},
    "ivf_pq": {"nprobe": POWERS_OF_2, "rerank": [1, 4, 16]},
    "pq": {"rerank": [1, 2, 4, 8, 16, 32, 64]},
    "hnsw": {"ef": EF_VALUES},
    "hnswlib": {"ef": EF_VALUES},
    # From the lsh and forest authors' GloVe 400K tuning: these bracket recall 0.8 to 0.99.
    "lsh": {"probes": [4, 8, 12, 16, 20, 24, 32, 48, 64]},
    "forest": {"search_k": SEARCH_K_VALUES},
    # Peers.
    "annoy": {"search_k": SEARCH_K_VALUES},
    "faiss_lsh": {"nbits_per_dim": [2, 4, 8, 16]},  # a build knob: one index per value
}
FAISS_LSH_MAX_BITS = 4096  # its random rotation costs ~nbits^3 to build: 12,544 bits (784 x 16) hang
PEER_BUILD_DEFAULTS: dict[str, dict[str, Any]] = {"annoy": {"n_trees": 50}, "faiss_lsh": {}}
RECALL_TARGETS = (0.90, 0.95)
OVERHEAD_KINDS = ("flat", "ivf_flat", "ivf_pq", "pq", "hnsw", "hnswlib")
TIMING_PASSES = 3
CSV_FIELDS = (
    "dataset", "kind", "build_params", "search_params", "recall",
    "qps_single", "qps_batch", "build_s", "memory_bytes",
)  # fmt: skip

console = Console()


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
        return self.kind in PEER_BUILD_DEFAULTS


# ---------------------------------------------------------------- contenders


class KindContender:
    """An annserve index kind, driven through the public `indexes` API only."""

    has_batch = True
    build_knobs: frozenset[str] = frozenset()

    def __init__(self, kind: str) -> None:
        self.name = kind
        self.index: Any = None

    def build(self, data: Dataset, params: dict[str, Any]) -> None:
        index = create_index(self.name, data.dim, data.metric, **params)
        index.train(data.base)
        index.add(data.base, np.arange(data.base.shape[0], dtype=np.int64))
        # A kind may defer work to its first search (forest builds its trees then): one query
        # here charges that to the build time and to memory_bytes, where it belongs.
        index.search(data.queries[:1], 1)
        self.index = index

    def resolved_build_params(self) -> dict[str, Any]:
        return dict(self.index.build_params)

    def resolved_search_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.index.resolve_search_params(params)

    def memory_bytes(self) -> int:
        return int(self.index.memory_bytes())

    def search(self, q: np.ndarray, k: int, params: dict[str, Any]) -> np.ndarray:
        return self.index.search(q, k, **params)[0]

    def set_threads(self, n: int) -> None:
        # hnswlib takes its thread count per object; FAISS and numba are set process-wide.
        library = getattr(self.index, "library_index", None)
        if hasattr(library, "set_num_threads"):
            library.set_num_threads(n)


class AnnoyContender:
    """Spotify's Annoy, the model for `forest`: n_trees at build, search_k at search."""

    name = "annoy"
    has_batch = False
    build_knobs: frozenset[str] = frozenset({"n_trees"})
    METRICS = {"cosine": "angular", "l2": "euclidean", "ip": "dot"}

    def build(self, data: Dataset, params: dict[str, Any]) -> None:
        import annoy

        self.params = {**PEER_BUILD_DEFAULTS["annoy"], **params}
        self.index = annoy.AnnoyIndex(data.dim, self.METRICS[data.metric])
        for i, row in enumerate(data.base):
            self.index.add_item(i, row)
        self.index.build(self.params["n_trees"])

    def resolved_build_params(self) -> dict[str, Any]:
        return dict(self.params)

    def resolved_search_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return dict(params)

    def memory_bytes(self) -> int:
        # Annoy's index is one flat buffer, the bytes it writes to disk. `save` also remaps the
        # index onto the file, which stays valid after the directory is removed (POSIX unlink).
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "annoy.ann"
            self.index.save(str(path))
            return path.stat().st_size

    def search(self, q: np.ndarray, k: int, params: dict[str, Any]) -> np.ndarray:
        search_k = params.get("search_k", -1)
        out = np.full((q.shape[0], k), -1, dtype=np.int64)
        for i, row in enumerate(q):
            found = self.index.get_nns_by_vector(row, k, search_k=search_k)
            out[i, : len(found)] = found
        return out

    def set_threads(self, n: int) -> None:
        """Annoy searches on the calling thread only."""


class FaissLSHContender:
    """FAISS `IndexLSH` with its defaults: a random rotation to nbits, sign bits, exhaustive
    Hamming scan, no exact re-scoring. The sweep varies nbits (a build knob) as a multiple of dim."""

    name = "faiss_lsh"
    has_batch = True
    build_knobs: frozenset[str] = frozenset({"nbits_per_dim"})

    def build(self, data: Dataset, params: dict[str, Any]) -> None:
        import faiss

        per_dim = params.get("nbits_per_dim", 4)
        nbits = per_dim * data.dim
        if nbits > FAISS_LSH_MAX_BITS:
            raise ValueError(
                f"nbits={nbits} is above {FAISS_LSH_MAX_BITS}: FAISS orthonormalises a square "
                f"nbits x nbits rotation, which takes minutes to hours past that"
            )
        self.params = {"nbits_per_dim": per_dim, "nbits": nbits}
        self.index = faiss.IndexLSH(data.dim, self.params["nbits"])
        self.index.train(data.base)
        self.index.add(data.base)

    def resolved_build_params(self) -> dict[str, Any]:
        return dict(self.params)

    def resolved_search_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return dict(params)

    def memory_bytes(self) -> int:
        import faiss

        return int(faiss.serialize_index(self.index).size)

    def search(self, q: np.ndarray, k: int, params: dict[str, Any]) -> np.ndarray:
        return self.index.search(q, k)[1]

    def set_threads(self, n: int) -> None:
        """FAISS threads are set process-wide by `single_thread`."""


PEERS = {"annoy": AnnoyContender, "faiss_lsh": FaissLSHContender}


# ---------------------------------------------------------------- options


def parse_value(text: str) -> Any:
    """'16' -> 16, '0.5' -> 0.5, anything else stays a string."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def _split_kind(spec: str, option: str) -> tuple[str, str]:
    kind, sep, rest = spec.partition(":")
    if not sep or not kind.strip():
        raise ValueError(f"{option}: expected 'kind:name=value', got {spec!r}")
    return kind.strip(), rest


def parse_build_params(specs: list[str]) -> dict[str, dict[str, Any]]:
    """`["hnsw:M=32,ef_construction=200,ivf_flat:nlist=512"]` -> {kind: {name: value}}.

    A token with `kind:` switches kind; the tokens after it belong to that kind.
    """
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        kind = None
        for token in filter(None, (t.strip() for t in spec.split(","))):
            if ":" in token:
                kind, token = _split_kind(token, "--build-params")
            if kind is None:
                raise ValueError(f"--build-params: expected 'kind:name=value,...', got {spec!r}")
            name, sep, value = token.partition("=")
            if not sep or not name:
                raise ValueError(f"--build-params: expected name=value after {kind}:, got {token!r}")
            out.setdefault(kind, {})[name.strip()] = parse_value(value.strip())
    return out


def parse_sweeps(specs: list[str]) -> dict[str, dict[str, list[Any]]]:
    """`["hnsw:ef=10,20,40"]` -> {"hnsw": {"ef": [10, 20, 40]}}; one kind:param per option."""
    out: dict[str, dict[str, list[Any]]] = {}
    for spec in specs:
        kind, rest = _split_kind(spec, "--sweep")
        name, sep, values = rest.partition("=")
        parsed = [parse_value(v.strip()) for v in values.split(",") if v.strip()]
        if not sep or not name.strip() or not parsed:
            raise ValueError(f"--sweep: expected 'kind:param=v1,v2,...', got {spec!r}")
        out.setdefault(kind, {})[name.strip()] = parsed
    return out


def known_knobs(kind: str) -> tuple[set[str], set[str]]:
    """(build, search) parameter names a contender accepts."""
    if kind in PEERS:
        return set(PEER_BUILD_DEFAULTS[kind]), set(SWEEPS[kind]) - PEERS[kind].build_knobs
    cls = index_class(kind)
    return set(cls.build_defaults), set(cls.search_defaults)


def plan_grid(
    kind: str, overrides: dict[str, list[Any]]
) -> tuple[dict[str, list[Any]], list[str]]:
    """The knob grid for `kind`: SWEEPS with user overrides. Default knobs the kind does not know
    (yet) are dropped with a note; an unknown knob the user asked for is an error."""
    _, search_names = known_knobs(kind)
    accepted = search_names | (PEERS[kind].build_knobs if kind in PEERS else set())
    for name in overrides:
        if name not in accepted:
            raise ValueError(f"--sweep: {kind} has no knob {name!r}; expected one of {_listing(accepted)}")
    grid, notes = {}, []
    for name, values in {**SWEEPS.get(kind, {}), **overrides}.items():
        if name in accepted:
            grid[name] = values
        else:
            notes.append(f"{kind}: no search parameter {name!r} (it has {_listing(accepted)}), not swept")
    return grid, notes


def check_build_params(kind: str, params: dict[str, Any]) -> None:
    """Reject `--build-params` names the contender does not take, before anything is built."""
    build_names, _ = known_knobs(kind)
    unknown = sorted(set(params) - build_names)
    if unknown:
        raise ValueError(
            f"--build-params: unknown parameter(s) {unknown} for {kind}; "
            f"expected some of {_listing(build_names)}"
        )


# ---------------------------------------------------------------- measuring


@contextmanager
def single_thread(contender: Any) -> Iterator[None]:
    """Pin FAISS (OpenMP), numba and hnswlib to one thread, then restore what was set."""
    import faiss
    import numba

    faiss_threads, numba_threads = faiss.omp_get_max_threads(), numba.get_num_threads()
    faiss.omp_set_num_threads(1)
    numba.set_num_threads(1)
    contender.set_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(faiss_threads)
        numba.set_num_threads(numba_threads)
        contender.set_threads(os.cpu_count() or 1)


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


def expand(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """All combinations of a knob grid; `{}` gives the single empty setting."""
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def clamp_to_build(settings: list[dict[str, Any]], build: dict[str, Any]) -> list[dict[str, Any]]:
    """Cap nprobe at nlist and drop the duplicates: past nlist every list is already probed."""
    nlist = build.get("nlist")
    out: list[dict[str, Any]] = []
    for setting in settings:
        if isinstance(nlist, int) and setting.get("nprobe", 0) > nlist:
            setting = {**setting, "nprobe": nlist}
        if setting not in out:
            out.append(setting)
    return out


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
    build_grid = {n: v for n, v in grid.items() if n in contender.build_knobs}
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
            skipped.append(f"{kind} build {_compact(build_setting)} failed, skipped: {reason(exc)}")
            progress.advance(task, len(settings))
            continue
        clamped = clamp_to_build(settings, build)
        progress.advance(task, len(settings) - len(clamped))
        for setting in clamped:
            progress.update(task, description=f"{kind} {_compact(setting)}")
            try:
                point = measure_point(contender, data, truth, k, setting)
                resolved = contender.resolved_search_params(setting)
            except Exception as exc:
                skipped.append(f"{kind} {_compact(setting)} search failed, skipped: {reason(exc)}")
            else:
                results.append(Result(data.name, kind, build, resolved, build_s=build_s, memory_bytes=memory,
                                      **point))
                if not progress.console.is_terminal:  # a log file gets no live bar: one line per step
                    progress.console.print(
                        f"{kind} {_compact(setting)}: recall {point['recall']:.3f}, "
                        f"{point['qps_single']:,.0f} QPS single", highlight=False,
                    )  # fmt: skip
            progress.advance(task)
    return results, skipped


def _listing(names: set[str]) -> str:
    return ", ".join(sorted(names)) or "none"


def _compact(params: dict[str, Any]) -> str:
    return ",".join(f"{n}={v}" for n, v in params.items()) or "-"


# ---------------------------------------------------------------- reporting


def best_at(results: list[Result], kind: str, target: float) -> Result | None:
    """The fastest single-query point of `kind` with recall >= target."""
    ok = [r for r in results if r.kind == kind and r.recall >= target]
    return max(ok, key=lambda r: r.qps_single, default=None)


def ratio_line(results: list[Result], kind: str, versus: str, target: float) -> str:
    """`kind`'s best single-query QPS at `target` recall over `versus`'s, in words."""
    mine, theirs = best_at(results, kind, target), best_at(results, versus, target)
    if mine is None or theirs is None:
        missing = " and ".join(n for n, r in ((kind, mine), (versus, theirs)) if r is None)
        return f"{kind} vs {versus} at recall >= {target:.2f}: n/a ({missing} never reached it)"
    return (
        f"{kind} vs {versus} at recall >= {target:.2f}: {mine.qps_single / theirs.qps_single:.2f}x "
        f"({mine.qps_single:,.0f} vs {theirs.qps_single:,.0f} single-query QPS)"
    )


def summary_lines(results: list[Result]) -> list[str]:
    """Best single-query QPS per kind at each recall target, then the ratios the project reports."""
    lines = ["| kind | " + " | ".join(f"best QPS @ recall >= {t:.2f}" for t in RECALL_TARGETS) + " |"]
    lines.append("|---" * (1 + len(RECALL_TARGETS)) + "|")
    for kind in dict.fromkeys(r.kind for r in results):
        cells = []
        for target in RECALL_TARGETS:
            best = best_at(results, kind, target)
            cell = f"{best.qps_single:,.0f} ({_compact(best.search_params)})" if best else "not reached"
            cells.append(cell)
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += ["", "- " + ratio_line(results, "forest", "annoy", 0.90)]
    lines += ["- " + ratio_line(results, "lsh", "flat", 0.90)]
    return lines


def print_table(results: list[Result]) -> None:
    """One row per point; kind, build and its cost are shown once per build, so the knob stands out."""
    table = Table(title="recall vs speed", show_lines=False)
    for column in ("kind", "build", "build s", "MB", "search", "recall", "QPS 1-thr", "QPS batch"):
        if column in ("kind", "build", "search"):
            table.add_column(column, overflow="fold")  # parameters wrap rather than vanish in "…"
        else:
            table.add_column(column, justify="right", no_wrap=True)
    previous = None
    for r in results:
        build = (r.kind, _compact(r.build_params), f"{r.build_s:.2f}", f"{r.memory_bytes / 2**20:.1f}")
        batch = f"{r.qps_batch:,.0f}" if r.qps_batch is not None else "-"
        shown = build if build != previous else ("",) * len(build)
        table.add_row(*shown, _compact(r.search_params), f"{r.recall:.3f}", f"{r.qps_single:,.0f}", batch)
        previous = build
    console.print(table)


def write_csv(results: list[Result], path: Path) -> None:
    """One row per point; parameters as JSON; qps_batch empty where there is no batch call."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in results:
            writer.writerow({
                "dataset": r.dataset, "kind": r.kind,
                "build_params": json.dumps(r.build_params, sort_keys=True),
                "search_params": json.dumps(r.search_params, sort_keys=True),
                "recall": f"{r.recall:.4f}", "qps_single": f"{r.qps_single:.1f}",
                "qps_batch": "" if r.qps_batch is None else f"{r.qps_batch:.1f}",
                "build_s": f"{r.build_s:.3f}", "memory_bytes": r.memory_bytes,
            })  # fmt: skip


def machine() -> str:
    """CPU model and count, for plot titles: platform.processor() is empty on most Linux."""
    name = platform.processor()
    if not name:
        try:
            lines = Path("/proc/cpuinfo").read_text().splitlines()
            name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        except (OSError, StopIteration):
            name = platform.machine()
    return f"{name}, {os.cpu_count()} CPUs"


def pareto(points: list[Result]) -> list[Result]:
    """The points no other point beats on both recall and QPS, by increasing recall."""
    front, best_qps = [], -1.0
    for r in sorted(points, key=lambda r: (-r.recall, -r.qps_single)):
        if r.qps_single > best_qps:
            front.append(r)
            best_qps = r.qps_single
    return front[::-1]


def plot(results: list[Result], path: Path, title: str, k: int) -> None:
    """Log-scale single-query QPS vs recall, one Pareto line per kind, peers dashed."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed (Agg)

    fig = Figure(figsize=(9, 6))
    ax = fig.add_subplot()
    for kind in dict.fromkeys(r.kind for r in results):
        front = pareto([r for r in results if r.kind == kind])
        style = "--" if front[0].is_peer else "-"
        size = 7 if len(front) == 1 else 3  # a lone point (flat) must still be seen
        recall, qps = [r.recall for r in front], [r.qps_single for r in front]
        ax.plot(recall, qps, style, marker="o", ms=size, label=kind)
    ax.set_yscale("log")
    ax.set_xlabel(f"recall@{k}")
    ax.set_ylabel("queries per second (1 query per call, 1 thread)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")


def report(results: list[Result], skipped: list[str], data: Dataset, k: int, out: Path) -> None:
    """Print the table, skips and summary; write results.csv, recall_vs_qps.png, summary.md."""
    out.mkdir(parents=True, exist_ok=True)
    print_table(results)
    for line in skipped:
        console.print(f"[yellow]skipped[/] {line}", markup=True, highlight=False)
    nq = data.queries.shape[0]
    shape = f"{data.base.shape[0]:,} x {data.dim}, {data.metric}, {nq} queries, k={k}"
    context = f"{data.name} ({shape}) on {machine()}"
    method = (
        f"single-query QPS: one query per call, 1 thread (FAISS OpenMP, numba, hnswlib), median of "
        f"{TIMING_PASSES} passes; batch QPS: all {nq} queries in one call, library threads allowed "
        f"({os.cpu_count()} CPUs; Annoy has no batch call); build s: train + add + first query, "
        "library threads allowed"
    )
    lines = [f"# annserve bench: {context}", "", method, "", *summary_lines(results)]
    skips = ["", "Skipped:", *(f"- {line}" for line in skipped)] if skipped else []
    (out / "summary.md").write_text("\n".join(lines + skips) + "\n")
    console.print("\n".join(lines[2:]), highlight=False, markup=False)
    write_csv(results, out / "results.csv")
    written = ["results.csv", "summary.md"]
    if results:
        try:
            plot(results, out / "recall_vs_qps.png", f"recall@{k} vs QPS: {context}", k)
            written.append("recall_vs_qps.png")
        except ImportError:
            console.print("[yellow]no plot[/]: matplotlib is missing (pip install 'annserve[bench]')")
    console.print(f"wrote {', '.join(written)} to {out}/", highlight=False)


# ---------------------------------------------------------------- wrapper overhead


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
        table.add_row(kind, _compact(params), *times, f"{same:.1%}")
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


# ---------------------------------------------------------------- command


def select_kinds(kinds: Optional[str]) -> list[str]:
    """The kinds named in `--kinds` (all of INDEX_KINDS when empty); unknown names raise."""
    if not kinds:
        return list(INDEX_KINDS)
    chosen = [k.strip() for k in kinds.split(",") if k.strip()]
    unknown = [k for k in chosen if k not in INDEX_KINDS]
    if unknown:
        raise ValueError(f"--kinds: unknown kind(s) {unknown}; expected some of {', '.join(INDEX_KINDS)}")
    return chosen


def bench(
    dataset: str = typer.Option("glove", help="'glove', 'fashion', or a .npy/.fvecs file (then --metric)"),
    metric: Optional[str] = typer.Option(None, help="cosine, ip or l2 (default: the dataset's own)"),
    kinds: Optional[str] = typer.Option(None, help="comma list of index kinds (default: all)"),
    limit: Optional[int] = typer.Option(None, help="use only the first N base rows (quick runs)"),
    queries: int = typer.Option(1000, help="held out of the base, seeded (fashion: first test images)"),
    k: int = typer.Option(10, help="neighbours per query; recall is recall@k"),
    out: Path = typer.Option(Path("bench-results"), help="output directory"),
    peers: bool = typer.Option(True, help="also run Annoy and FAISS IndexLSH"),
    build_params: list[str] = typer.Option([], help="e.g. 'hnsw:M=32,ef_construction=200' (repeatable)"),
    sweep: list[str] = typer.Option([], help="knob values, e.g. 'hnsw:ef=10,40,160' (repeatable)"),
    overhead_mode: bool = typer.Option(False, "--overhead", help="time wrapper vs raw library instead"),
    seed: int = typer.Option(0, help="seed for the held-out queries"),
) -> None:
    """Recall vs QPS of every index kind (and peers): table, results.csv, recall_vs_qps.png."""
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # a log file has no width; 80 columns would fold every parameter
    try:
        chosen = select_kinds(kinds)
        contenders = chosen + (list(PEERS) if peers and not overhead_mode else [])
        builds, sweeps = parse_build_params(build_params), parse_sweeps(sweep)
        for kind in set(builds) | set(sweeps):
            if kind not in contenders:
                raise ValueError(
                    f"{kind!r} is overridden but not benchmarked (contenders: {', '.join(contenders)})"
                )
        for kind, params in builds.items():
            check_build_params(kind, params)
        grids = {kind: plan_grid(kind, sweeps.get(kind, {})) for kind in contenders}
        with console.status("loading data"):
            data = load_dataset(dataset, metric, queries, limit, seed)
        if overhead_mode:
            overhead(data, chosen, k)
            return
        with console.status("exact ground truth"):
            truth = ground_truth(data, k)
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    for _, notes in grids.values():
        for note in notes:
            console.print(f"[yellow]note[/] {note}", highlight=False)
    steps = sum(len(expand(grid)) for grid, _ in grids.values())
    results, skipped = [], []
    columns = (TextColumn("{task.description:<32}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("starting", total=steps)
        for kind in contenders:
            grid, overrides = grids[kind][0], builds.get(kind, {})
            found, failed = run_contender(kind, grid, overrides, data, truth, k, progress, task)
            results += found
            skipped += failed
    report(results, skipped, data, k, out)
