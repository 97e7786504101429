"""Placeholder: being written (a helper replaces this file)."""
from .base import Index


class FlatIndex(Index):
    kind = "flat"


class IVFFlatIndex(Index):
    kind = "ivf_flat"


class IVFPQIndex(Index):
    kind = "ivf_pq"


class PQIndex(Index):
    kind = "pq"


class HNSWIndex(Index):
    kind = "hnsw"
