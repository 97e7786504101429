"""`annserve bench`: recall vs speed of every index kind, in the manner of ann-benchmarks.

For each kind: build once with its defaults (or `--build-params`), then sweep its search knob over
`SWEEPS`; for each knob value measure recall@k against exact ground truth, single-query QPS (one
query per call, one thread) and batch QPS (all queries in one call, library threads allowed).
Peers run on the same axes: Annoy (the model for `forest`) and FAISS `IndexLSH` exactly as FAISS
ships it (sign random projections, exhaustive Hamming scan, no exact re-scoring), the yardstick for
`lsh`. Writes `results.csv`, `recall_vs_qps.png` and `summary.md` to `--out`.

`--overhead` measures instead what the `indexes` wrappers add on top of the raw FAISS/hnswlib call.

A kind that fails (not written yet, bad parameter) is reported and skipped; the run goes on.

Modules: `contenders` (the index kinds and the peers, built and searched one way), `sweeps` (the
SWEEPS table and the knob grids it gives), `measure` (threads, timing, recall: the run of one
contender), `report` (table, results.csv, recall_vs_qps.png, summary.md), `overhead` (the
`--overhead` mode) and `cli` (the typer options, checked, then the run).
"""

from .cli import bench, parse_build_params, parse_sweeps

__all__ = ["bench", "parse_build_params", "parse_sweeps"]
