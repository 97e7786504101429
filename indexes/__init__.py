"""annserve's index library: every index kind behind one protocol and one registry.

    from indexes import create_index, load_index, INDEX_KINDS
    index = create_index("forest", dim=384, metric="cosine", n_trees=50)
    index.train(x); index.add(x, ids)
    ids, scores = index.search(q, k=10, search_k=2000)

Imports no web framework; the service in `app/` is one user of it among others.
"""

from .base import METRICS, Index, NotReadyError
from .evaluate import brute_force_knn, recall_at_k
from .registry import INDEX_KINDS, create_index, index_class, load_index

__all__ = [
    "INDEX_KINDS",
    "METRICS",
    "Index",
    "NotReadyError",
    "brute_force_knn",
    "create_index",
    "index_class",
    "load_index",
    "recall_at_k",
]
