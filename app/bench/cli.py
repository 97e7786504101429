"""The `annserve bench` command: its typer options parsed and checked before anything is loaded
or built, then the data, the ground truth, every contender's run and the report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..indexes import INDEX_KINDS

from .datasets import ground_truth, load_dataset
from .contenders import PEERS
from .measure import run_contender
from .overhead import overhead
from .report import console, report
from .sweeps import check_build_params, expand, plan_grid


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
    mode: Optional[str] = typer.Argument(
        None, help="'filtered': recall and latency under payload filters (app/bench/filtered.py); "
        "default: the recall vs QPS sweep of every kind"
    ),
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
    """Recall vs QPS of every index kind (and peers): table, results.csv, recall_vs_qps.png.
    `annserve bench filtered`: filtered search per selectivity (--kinds default hnsw, hnswlib,
    ivf_flat, forest): table, filtered.csv, filtered.png."""
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # a log file has no width; 80 columns would fold every parameter
    if mode is not None:
        _bench_mode(mode, dataset, metric, kinds, limit, queries, k, out, seed)
        return
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


def _bench_mode(
    mode: str, dataset: str, metric: Optional[str], kinds: Optional[str], limit: Optional[int],
    queries: int, k: int, out: Path, seed: int,
) -> None:
    """`annserve bench MODE`: the benchmarks other than the default sweep."""
    try:
        if mode != "filtered":
            raise ValueError(f"bench: expected no argument or 'filtered', got {mode!r}")
        from .filtered import DEFAULT_KINDS, run_filtered

        chosen = select_kinds(kinds) if kinds else list(DEFAULT_KINDS)
        with console.status("loading data"):
            data = load_dataset(dataset, metric, queries, limit, seed)
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    run_filtered(data, chosen, k, out, seed)
