"""The kNN graph with faiss: ``graph[i]`` = the k nearest other images of image i (L2), nearest first.

- ``exact``: brute force (``faiss.knn``) of each block of query rows against the whole bank.
- ``ivf``: IVF-Flat (nlist ~ 4 sqrt(N), trained on a sample), searched with ``nprobe`` lists.
- ``hnsw``: HNSW-Flat (M=32), ``ef_search`` >= k.
- ``ivfpq``: IVF-PQ (d/8 bytes per image, 32x smaller than the vectors) and ``ivfsq``: IVF with
  8-bit scalar quantization (4x smaller): the compressed indexes for banks of tens of millions
  (:mod:`stimopt.bank.index`), whose shortlist of ``refine`` x (k + 1) candidates per query is
  re-ranked with exact distances on the candidate rows. Their graph's recall@10 against exact
  search is always measured.
- ``auto``: exact while N^2 d stays under ~3e12 multiply-adds (a few minutes on 2 cores), else ivf.

The search runs block by block (a bank build uses its feature shards as the blocks): the trained
index is written once to ``OUT.parts/index.faiss``, each block's neighbours to
``OUT.parts/NNNNN.npy`` (atomically), so a killed build continues at the first missing block and
the blocks can run as separate jobs (``run_blocks``: a Hydra multirun in a bank build). The
blocks are then assembled into ``OUT``. Approximate graphs are checked against exact search on a
sample of queries (recall@10).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from stimopt.bank.index import DEFAULT_REFINE, INDEX_METHODS, describe, exact_knn, make_index, refined_search, set_search
from stimopt.errors import StimoptError

EXACT_BUDGET_FLOPS = 3e12


def _faiss():
    import faiss

    return faiss


def choose_method(n: int, d: int, method: str = "auto") -> str:
    if method not in ("auto", "exact", *INDEX_METHODS):
        raise StimoptError(f"graph method must be auto, exact, {', '.join(INDEX_METHODS)}, got '{method}'")
    if method != "auto":
        return method
    return "exact" if float(n) * n * d <= EXACT_BUDGET_FLOPS else "ivf"


def drop_self(ids: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """[B, k+1] neighbour ids of the query rows -> [B, k] without the query itself."""
    is_self = ids == rows[:, None]
    keep = ~is_self
    # Rows where self was not found (duplicates tie with it): drop the last column instead.
    missing = ~is_self.any(axis=1)
    keep[missing, -1] = False
    return ids[keep].reshape(len(ids), k)


DEFAULT_BLOCK = 4096


def parts_dir(out: Path) -> Path:
    return Path(str(out) + ".parts")


def part_path(parts: Path, b: int) -> Path:
    return parts / f"{b:05d}.npy"


def refine_factor(method: str, refine: int | None = None) -> int:
    """The shortlist factor of ``method``'s re-ranking: ``refine`` if given, else its default."""
    if refine is None:
        return DEFAULT_REFINE.get(method, 1)
    if int(refine) < 1:
        raise StimoptError(f"refine must be 1 (no re-ranking) or more (shortlist of refine x k candidates), got {refine}")
    return int(refine)


def stored_refine(parts: Path, method: str) -> int:
    """The refine factor the index in ``parts`` was prepared with (jobs search as the build chose)."""
    path = parts / "search.json"
    return int(json.loads(path.read_text())["refine"]) if path.exists() else refine_factor(method)


def prepare_index(x: np.ndarray, method: str, parts: Path, seed: int = 0, block: int = 65536,
                  refine: int | None = None) -> None:
    """Train and fill the index once; written to ``parts/index.faiss`` (atomically), with the
    re-ranking factor its searches use in ``parts/search.json``."""
    path = parts / "index.faiss"
    if method == "exact" or path.exists():
        return
    (parts / "search.json").write_text(json.dumps({"refine": refine_factor(method, refine)}))
    from tqdm import tqdm

    with tqdm(total=len(x), desc=f"graph index ({method})", unit="img", unit_scale=True, leave=False) as bar:
        index = make_index(x, method, seed=seed, block=block, progress=bar)
    tmp = parts / "index.faiss.tmp"
    _faiss().write_index(index, str(tmp))
    (parts / "index.txt").write_text(describe(index))
    os.replace(tmp, path)


def search_blocks(x: np.ndarray, k: int, method: str, parts: Path, blocks: dict[int, tuple[int, int]], nprobe: int = 16,
                  ef_search: int = 0, refine: int | None = None) -> int:
    """Neighbours of each block's query rows [start, stop) -> ``parts/NNNNN.npy``; done blocks are
    skipped. Reads the index, the block's rows and (re-ranking, ``refine`` > 1; default: as the
    index was prepared) its candidates' rows of ``x``, never all of ``x`` (except ``exact``).
    Returns how many blocks were computed."""
    faiss = _faiss()
    todo = {b: rows for b, rows in blocks.items() if not part_path(parts, b).exists()}
    if not todo:
        return 0
    if method == "exact":
        base = np.ascontiguousarray(x, dtype=np.float32)
        search = lambda q: faiss.knn(q, base, k + 1)[1]  # noqa: E731
    else:
        index = faiss.read_index(str(parts / "index.faiss"))
        set_search(index, method, k, nprobe, ef_search)
        factor = stored_refine(parts, method) if refine is None else refine_factor(method, refine)
        search = lambda q: refined_search(index, x, q, k + 1, factor)  # noqa: E731
    from tqdm import tqdm

    for b, (start, stop) in tqdm(sorted(todo.items()), desc=f"graph search ({method})", unit="block", leave=False,
                                 disable=len(todo) < 2):
        ids = np.zeros((0, k), dtype=np.int32)
        if stop > start:
            ids = drop_self(search(np.ascontiguousarray(x[start:stop], dtype=np.float32)), np.arange(start, stop), k)
        tmp = parts / f"{b:05d}.tmp.npy"
        np.save(tmp, ids.astype(np.int32))
        os.replace(tmp, part_path(parts, b))
    return len(todo)


def recall_at(x: np.ndarray, graph: np.ndarray, n_queries: int = 1000, at: int = 10, seed: int = 0) -> float:
    """Fraction of the exact ``at`` nearest neighbours that the graph lists first, on a sample."""
    n = len(x)
    at = min(at, graph.shape[1])
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, n_queries), replace=False))
    ids = exact_knn(np.asarray(x[rows]), x, at + 1)  # the bank streamed in blocks, never copied whole
    truth = drop_self(ids, rows, at)
    got = np.asarray(graph[rows, :at])
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(truth, got))
    return hits / truth.size


def build_graph(x: np.ndarray, k: int, out: Path, method: str = "auto", nprobe: int = 16, recall_queries: int = 1000,
                seed: int = 0, blocks: list[tuple[int, int]] | None = None, run_blocks=None, refine: int | None = None) -> dict:
    """Build the graph into ``out`` and return its manifest entry (method, k, recall@10, refine).
    ``refine``: shortlist factor of the exact re-ranking (default: the method's ``DEFAULT_REFINE``).
    ``blocks``: the query row ranges (default: 4,096 rows each for exact search, 65,536 otherwise);
    ``run_blocks(todo)`` computes the missing block numbers elsewhere (default: here, with
    :func:`search_blocks`)."""
    out = Path(out)
    n, d = x.shape
    if not 1 <= k < n:
        raise StimoptError(f"graph k must be between 1 and the bank size - 1 ({n - 1}), got {k}")
    method = choose_method(n, d, method)
    parts = parts_dir(out)
    parts.mkdir(parents=True, exist_ok=True)
    prepare_index(x, method, parts, seed=seed, refine=refine)
    factor = 1 if method == "exact" else stored_refine(parts, method)
    step = DEFAULT_BLOCK if method == "exact" else 16 * DEFAULT_BLOCK
    blocks = blocks or [(s, min(s + step, n)) for s in range(0, n, step)]
    todo = [b for b in range(len(blocks)) if not part_path(parts, b).exists()]
    if todo and run_blocks is not None:
        run_blocks(todo)
    else:
        search_blocks(x, k, method, parts, dict(enumerate(blocks)), nprobe, refine=factor)
    missing = [b for b in range(len(blocks)) if not part_path(parts, b).exists()]
    if missing:
        raise StimoptError(f"graph blocks {missing[:10]} did not finish; run the build again to continue")
    tmp = Path(str(out) + ".tmp.npy")
    graph = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int32, shape=(n, k))
    for b, (start, stop) in enumerate(blocks):
        graph[start:stop] = np.load(part_path(parts, b))
    graph.flush()
    del graph
    os.replace(tmp, out)
    graph = np.load(out, mmap_mode="r")
    recall = 1.0 if method == "exact" else recall_at(x, graph, recall_queries, seed=seed)
    info = {"k": int(k), "method": method, "recall_at_10": round(float(recall), 4),
            "recall_queries": int(min(n, recall_queries)) if method != "exact" else 0,
            "nprobe": nprobe if method.startswith("ivf") else None}
    if method != "exact":
        info["refine"] = factor  # shortlist of refine x (k + 1) candidates re-ranked exactly (1: none)
    index_file = parts / "index.faiss"
    if index_file.exists():
        info["index"] = (parts / "index.txt").read_text() if (parts / "index.txt").exists() else method
        info["index_bytes"] = index_file.stat().st_size
    shutil.rmtree(parts, ignore_errors=True)
    return info
