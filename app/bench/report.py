"""The benchmark's output: the console table, results.csv, recall_vs_qps.png (Pareto fronts) and
summary.md (best QPS at each recall target, and the ratios the project reports)."""

from __future__ import annotations

import csv
import json
import os
import platform
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .datasets import Dataset
from .measure import TIMING_PASSES, Result
from .sweeps import compact

RECALL_TARGETS = (0.90, 0.95)
CSV_FIELDS = (
    "dataset", "kind", "build_params", "search_params", "recall",
    "qps_single", "qps_batch", "build_s", "memory_bytes",
)  # fmt: skip

console = Console()


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
            cell = f"{best.qps_single:,.0f} ({compact(best.search_params)})" if best else "not reached"
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
        build = (r.kind, compact(r.build_params), f"{r.build_s:.2f}", f"{r.memory_bytes / 2**20:.1f}")
        batch = f"{r.qps_batch:,.0f}" if r.qps_batch is not None else "-"
        shown = build if build != previous else ("",) * len(build)
        table.add_row(*shown, compact(r.search_params), f"{r.recall:.3f}", f"{r.qps_single:,.0f}", batch)
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
