"""The comparison's outputs: the table (Markdown, as the README carries it), the ratios against
annserve measured with the same load generator, and the recall-vs-throughput plot."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .driver import PeerResult
from .loadgen import LoadRun

BASELINE = "annserve"


@dataclass(frozen=True)
class Row:
    """One line of the table: a service at its matched knob through one load generator."""

    service: str
    version: str
    generator: str
    ef: int
    recall: float
    reached: bool
    run: LoadRun
    p50_ms: float
    p50_rounds: tuple[float, ...]
    insert_rate: float
    ready_rate: float
    ready_s: float
    memory_mib: float
    durability: str


def table_rows(results: list[PeerResult]) -> list[Row]:
    """The main row of each service (wrk for HTTP services, else the Python client), then, for
    the HTTP ones, a row through the Python client too, so that every service has a row measured
    the way the others were."""
    rows = []
    for r in results:
        if r.matched is None or r.single is None:
            raise ValueError(f"{r.name}: expected a matched run and a single-connection run, got none")
        runs = [(r.matched.load, r.single)]
        if r.cross is not None and r.cross_single is not None:
            runs.append((r.cross, r.cross_single))
        for run, single in runs:
            rows.append(Row(r.name, r.version, run.generator, r.matched.ef, r.matched.recall, r.reached, run,
                            single.p50_ms, single.rounds, r.insert_rate, r.ready_rate, r.ready_s,
                            r.memory_bytes / 2**20,
                            r.durability))  # fmt: skip
    return rows


def ratios(rows: list[Row]) -> dict[tuple[str, str], dict[str, float]]:
    """For each (service, generator) but annserve's own: annserve against it, measured with the
    same load generator, each ratio oriented so that above 1 means annserve is better:
    throughput annserve/theirs, server CPU per search theirs/annserve, single-client p50
    theirs/annserve, rate to index-ready annserve/theirs, memory theirs/annserve. A generator
    annserve was not run with has no ratios."""
    base = {row.generator: row for row in rows if row.service == BASELINE}
    out = {}
    for row in rows:
        ours = base.get(row.generator)
        if row.service == BASELINE or ours is None:
            continue
        out[(row.service, row.generator)] = {
            "throughput": ours.run.rps / row.run.rps,
            "server_cpu": row.run.server_us_per_search / ours.run.server_us_per_search,
            "p50": row.p50_ms / ours.p50_ms,
            "ready": ours.ready_rate / row.ready_rate,
            "memory": row.memory_mib / ours.memory_mib,
        }
    return out


def _x(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.2f}x"


def markdown(rows: list[Row], caption: str, connections: int) -> str:
    """The two tables: the figures, then the ratios."""
    lines = [
        f"| service | load generator | ef (recall@10) | throughput, {connections} conns (range) | server CPU per search "
        "| server cores used | client CPU per search (cores) | single-client p50 (range) "
        "| ingest, batches of 1000: insert / to index-ready (time to ready) | memory (PSS) | fsync before ack |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for row in rows:
        run = row.run
        recall = f"{row.recall:.3f}" + ("" if row.reached else ", target not reached")
        rps, p50 = f"{run.rps:,.0f}/s", f"{row.p50_ms:.2f} ms"
        if len(run.rounds) > 1:  # the median of rounds: their range beside it
            rps += f" ({run.rounds[0]:,.0f}-{run.rounds[-1]:,.0f})"
        if len(row.p50_rounds) > 1:
            p50 += f" ({row.p50_rounds[0]:.2f}-{row.p50_rounds[-1]:.2f})"
        lines.append(
            f"| {row.version} | {row.generator} | {row.ef} ({recall}) | {rps} "
            f"| {run.server_us_per_search:,.0f} us | {run.server_cores:.2f} "
            f"| {run.client_us_per_search:,.0f} us ({run.client_cores:.2f}) | {p50} "
            f"| {row.insert_rate:,.0f} / {row.ready_rate:,.0f} vec/s ({row.ready_s:.1f} s) "
            f"| {row.memory_mib:,.0f} MiB "
            f"| {row.durability} |"
        )
    lines += ["", caption, ""]
    table = ratios(rows)
    if table:
        lines += [
            "annserve against each (same load generator; above 1: annserve better):",
            "",
            "| service | load generator | throughput, annserve / theirs | server CPU per search, theirs / annserve "
            "| p50, theirs / annserve | to index-ready, annserve / theirs | memory, theirs / annserve |",
            "|---|---|---|---|---|---|---|",
        ]  # fmt: skip
        for (service, generator), r in table.items():
            lines.append(f"| {service} | {generator} | {_x(r['throughput'])} | {_x(r['server_cpu'])} "
                         f"| {_x(r['p50'])} | {_x(r['ready'])} | {_x(r['memory'])} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(results: list[PeerResult], path: Path, title: str, connections: int, target: float) -> None:
    """Recall@10 against throughput at `connections` connections, one line per service (its
    sweep's main load generator), each point labelled with its ef; the target as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 7))
    for r in results:
        recall = [p.recall for p in r.sweep]
        rps = [p.load.rps for p in r.sweep]
        generator = r.sweep[0].load.generator if r.sweep else ""
        (line,) = ax.plot(recall, rps, "o-", label=f"{r.version} ({generator})")
        for p in r.sweep:
            ax.annotate(str(p.ef), (p.recall, p.load.rps), textcoords="offset points", xytext=(3, 3),
                        fontsize=7, color=line.get_color())  # fmt: skip
    ax.axvline(target, color="grey", linestyle=":", label=f"recall@10 = {target}")
    ax.set_yscale("log")
    ax.set_xlabel("recall@10")
    ax.set_ylabel(f"searches/s at {connections} connections (log)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
