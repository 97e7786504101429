"""The `auto` index kind: which real kind a collection's main index gets at each rebuild.

Exact search is cheap enough below about 100K items and answers perfectly; above that a graph
(hnswlib) gives the best recall per millisecond; when the raw float32 vectors alone would not
fit the memory budget, a compressed IVF-PQ index (with exact re-ranking) is the only choice.
The picked kind runs with its own defaults; the collection info reports what was picked.
"""

from __future__ import annotations

from typing import Any

AUTO = "auto"
EXACT_BELOW = 100_000  # live items; below this, brute force is fast and recall is 1.0
EMPTY_KIND = "flat"  # what `auto` means before its first rebuild: everything is exact


def pick_kind(n: int, dim: int, memory_budget_bytes: int) -> tuple[str, dict[str, Any]]:
    """(kind, build params) for a main index over `n` live vectors of `dim` floats."""
    if n < EXACT_BELOW:
        return "flat", {}
    if memory_budget_bytes > 0 and n * dim * 4 > memory_budget_bytes:
        return "ivf_pq", {}
    return "hnswlib", {}
