"""Index kinds by name: create one, or load one from a file written by `Index.save`."""

from __future__ import annotations

import os
from typing import Any

from .base import Index, read_index_file
from .faiss_kinds import FlatIndex, HNSWIndex, IVFFlatIndex, IVFPQIndex, PQIndex
from .forest import ForestIndex
from .hnswlib_kind import HnswlibIndex
from .lsh import LSHIndex

INDEX_KINDS: dict[str, type[Index]] = {
    cls.kind: cls
    for cls in (
        FlatIndex,
        IVFFlatIndex,
        IVFPQIndex,
        PQIndex,
        HNSWIndex,
        HnswlibIndex,
        LSHIndex,
        ForestIndex,
    )
}


def index_class(kind: str) -> type[Index]:
    try:
        return INDEX_KINDS[kind]
    except KeyError:
        raise ValueError(
            f"unknown index kind {kind!r}; expected one of {', '.join(INDEX_KINDS)}"
        ) from None


def create_index(kind: str, dim: int, metric: str = "l2", **build_params: Any) -> Index:
    """A new, empty index of `kind` (see INDEX_KINDS) for `dim`-dimensional vectors."""
    return index_class(kind)(dim, metric, **build_params)


def load_index(path: str | os.PathLike) -> Index:
    """The index saved at `path`; answers exactly as the saved one did."""
    meta, arrays = read_index_file(path)
    try:
        index = index_class(meta["kind"])(meta["dim"], meta["metric"])
        index.build_params = meta["build_params"]
        index.search_params = meta["search_params"]
        index.is_trained = meta["is_trained"]
        if index.is_trained:
            index._restore(arrays)
    except KeyError as exc:  # a truncated or foreign file: same promise as read_index_file
        raise ValueError(f"{path}: not a readable annserve index file (missing {exc})") from None
    return index
