"""The contenders of `annserve bench`: every annserve index kind, through the public `indexes`
API, and the peers it is measured against (Annoy; FAISS `IndexLSH` as FAISS ships it), each built,
sized and searched through the same small interface."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..indexes import create_index

from .datasets import Dataset

FAISS_LSH_MAX_BITS = 4096  # its random rotation costs ~nbits^3 to build: 12,544 bits (784 x 16) hang


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

    def set_threads(self, n: int) -> int | None:
        """Set the index's own thread count; returns the previous one, None if it has none.
        hnswlib takes its thread count per object; FAISS and numba are set process-wide."""
        library = getattr(self.index, "library_index", None)
        if not hasattr(library, "set_num_threads"):
            return None
        previous = library.num_threads
        library.set_num_threads(n)
        return previous


class AnnoyContender:
    """Spotify's Annoy, the model for `forest`: n_trees at build, search_k at search."""

    name = "annoy"
    has_batch = False
    build_defaults: dict[str, Any] = {"n_trees": 50}
    build_knobs: frozenset[str] = frozenset({"n_trees"})
    METRICS = {"cosine": "angular", "l2": "euclidean", "ip": "dot"}

    def build(self, data: Dataset, params: dict[str, Any]) -> None:
        import annoy

        self.params = {**self.build_defaults, **params}
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
        """Annoy searches on the calling thread only: nothing to set."""


class FaissLSHContender:
    """FAISS `IndexLSH` with its defaults: a random rotation to nbits, sign bits, exhaustive
    Hamming scan, no exact re-scoring. The sweep varies nbits (a build knob) as a multiple of dim."""

    name = "faiss_lsh"
    has_batch = True
    build_defaults: dict[str, Any] = {"nbits_per_dim": 4}
    build_knobs: frozenset[str] = frozenset({"nbits_per_dim"})

    def build(self, data: Dataset, params: dict[str, Any]) -> None:
        import faiss

        per_dim = {**self.build_defaults, **params}["nbits_per_dim"]
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
        """FAISS threads are set process-wide by `single_thread`: nothing to set here."""


PEERS = {"annoy": AnnoyContender, "faiss_lsh": FaissLSHContender}
