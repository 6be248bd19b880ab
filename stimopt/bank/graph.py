"""The kNN graph with faiss: ``graph[i]`` = the k nearest other images of image i (L2), nearest first.

- ``exact``: blocked brute force (``faiss.knn``), query block by query block straight into a
  memory-mapped int32 array; a progress file makes a killed build continue at the next block.
- ``ivf``: IVF-Flat (nlist ~ 4 sqrt(N), trained on a sample), searched with ``nprobe`` lists.
- ``hnsw``: HNSW-Flat (M=32), ``ef_search`` >= k.
- ``auto``: exact while N^2 d stays under ~3e12 multiply-adds (a few minutes on 2 cores), else ivf.

Approximate graphs are checked against exact search on a sample of queries (recall@10).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from stimopt.errors import StimoptError

EXACT_BUDGET_FLOPS = 3e12


def _faiss():
    import faiss

    return faiss


def choose_method(n: int, d: int, method: str = "auto") -> str:
    if method not in ("auto", "exact", "ivf", "hnsw"):
        raise StimoptError(f"graph method must be auto, exact, ivf or hnsw, got '{method}'")
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


def exact_block(x: np.ndarray, start: int, stop: int, k: int) -> np.ndarray:
    _, ids = _faiss().knn(np.ascontiguousarray(x[start:stop], dtype=np.float32), x, k + 1)
    return drop_self(ids, np.arange(start, stop), k)


def build_exact(x: np.ndarray, k: int, out: Path, block: int = 4096) -> np.ndarray:
    """Blocked exact kNN into ``out`` (memmap); resumes after the last finished block."""
    n = len(x)
    progress = Path(str(out) + ".progress")
    done = int(progress.read_text()) if progress.exists() and out.exists() else 0
    mode = "r+" if done else "w+"
    graph = np.lib.format.open_memmap(out, mode=mode, dtype=np.int32, shape=(n, k))
    xs = np.ascontiguousarray(x, dtype=np.float32)
    for start in range(done, n, block):
        stop = min(start + block, n)
        graph[start:stop] = exact_block(xs, start, stop, k)
        graph.flush()
        _atomic_write(progress, str(stop))
    progress.unlink(missing_ok=True)
    return graph


def build_approximate(x: np.ndarray, k: int, out: Path, method: str, nprobe: int = 16, ef_search: int = 0,
                      seed: int = 0, block: int = 65536) -> np.ndarray:
    faiss = _faiss()
    n, d = x.shape
    if method == "ivf":
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
        quant = faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quant, d, nlist)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))
        index.train(np.ascontiguousarray(x[sample], dtype=np.float32))
        index.nprobe = nprobe
    else:
        index = faiss.IndexHNSWFlat(d, 32)
        index.hnsw.efConstruction = 80
    for s in range(0, n, block):
        index.add(np.ascontiguousarray(x[s:s + block], dtype=np.float32))
    if method == "hnsw":
        index.hnsw.efSearch = max(ef_search, k + 1)
    graph = np.lib.format.open_memmap(out, mode="w+", dtype=np.int32, shape=(n, k))
    for s in range(0, n, block):
        stop = min(s + block, n)
        _, ids = index.search(np.ascontiguousarray(x[s:stop], dtype=np.float32), k + 1)
        graph[s:stop] = drop_self(ids, np.arange(s, stop), k)
    graph.flush()
    return graph


def recall_at(x: np.ndarray, graph: np.ndarray, n_queries: int = 1000, at: int = 10, seed: int = 0) -> float:
    """Fraction of the exact ``at`` nearest neighbours that the graph lists first, on a sample."""
    n = len(x)
    at = min(at, graph.shape[1])
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, n_queries), replace=False))
    xs = np.ascontiguousarray(x, dtype=np.float32)
    _, ids = _faiss().knn(np.ascontiguousarray(xs[rows]), xs, at + 1)
    truth = drop_self(ids, rows, at)
    got = np.asarray(graph[rows, :at])
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(truth, got))
    return hits / truth.size


def build_graph(x: np.ndarray, k: int, out: Path, method: str = "auto", nprobe: int = 16, recall_queries: int = 1000,
                seed: int = 0) -> dict:
    """Build the graph into ``out`` and return its manifest entry (method, k, recall@10)."""
    n, d = x.shape
    if not 1 <= k < n:
        raise StimoptError(f"graph k must be between 1 and the bank size - 1 ({n - 1}), got {k}")
    method = choose_method(n, d, method)
    if method == "exact":
        graph = build_exact(x, k, out)
        recall = 1.0
    else:
        graph = build_approximate(x, k, out, method, nprobe=nprobe, seed=seed)
        recall = recall_at(x, graph, recall_queries, seed=seed)
    return {"k": int(k), "method": method, "recall_at_10": round(float(recall), 4),
            "recall_queries": int(min(n, recall_queries)) if method != "exact" else 0, "nprobe": nprobe if method == "ivf" else None}


def _atomic_write(path: Path, text: str) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
