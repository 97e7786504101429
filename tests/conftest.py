"""Shared fixtures: the committed real-data subsets and their exact ground truth."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from indexes import brute_force_knn

DATA = Path(__file__).parent / "data"
K = 10


@dataclass(frozen=True)
class Dataset:
    name: str
    metric: str
    base: np.ndarray  # (n, dim) float32
    queries: np.ndarray  # (nq, dim) float32
    truth: np.ndarray  # (nq, K) int64 row positions in base, exact

    @property
    def dim(self) -> int:
        return self.base.shape[1]


@cache
def load_dataset(name: str) -> Dataset:
    if name == "glove":
        with np.load(DATA / "glove50_10k.npz") as f:
            base, queries, metric = f["base"], f["queries"], "cosine"
    elif name == "fashion":
        with np.load(DATA / "fashion784_6k.npz") as f:
            base = f["base"].astype(np.float32) / 255.0
            queries = f["queries"].astype(np.float32) / 255.0
            metric = "l2"
    else:
        raise KeyError(name)
    truth, _ = brute_force_knn(base, queries, K, metric)
    return Dataset(name, metric, base, queries, truth)


@pytest.fixture(scope="session")
def glove() -> Dataset:
    """10K x 50 GloVe rows, cosine, 500 queries (see tests/data/README.md)."""
    return load_dataset("glove")


@pytest.fixture(scope="session")
def fashion() -> Dataset:
    """6K x 784 Fashion-MNIST images scaled to [0, 1], l2, 200 queries."""
    return load_dataset("fashion")
