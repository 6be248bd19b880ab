"""The faiss indexes of the graph stage, and exact search that streams the bank in blocks.

Kinds (``--method``), each a faiss ``index_factory`` string (:func:`factory_string`):

- ``ivf``: IVF-Flat, every vector stored in full (4 d bytes per image: 1 GB at 1M x 256).
- ``ivfpq``: IVF-PQ, each vector's residual to its list centre product-quantized to d/8 bytes
  (default d/4 subquantizers of 4 bits, faiss's SIMD "fast-scan" PQ: 32 bytes per image at d=256,
  32x smaller than the vectors; it searches ~3x faster than d/8 subquantizers of 8 bits at the same
  size and recall after re-ranking, and trains ~4x faster), plus 8 bytes of id. What a 30M bank
  needs: 30M x (32 + 8) bytes = 1.2 GB. Banks too small to train 16 centroids per subquantizer on
  39 rows each fall back to plain PQ with fewer bits.
- ``ivfsq``: IVF with 8-bit scalar quantization (d bytes per image, 4x smaller than the vectors),
  closer to exact than PQ.
- ``hnsw``: HNSW-Flat (M=32), vectors in full plus the HNSW links.

The compressed kinds re-rank: the index proposes a shortlist of ``refine`` x (k + 1) candidates
per query, which are re-scored with exact distances on the bank's own (memory-mapped) vectors,
read only for the candidate rows (:func:`refined_search`); the same thing as faiss's
``IndexRefineFlat``, without a second full copy of the vectors inside the index (which every graph
job would then have to read). ``DEFAULT_REFINE`` holds the factors chosen from
``benchmarks/results/bank_index_scale.json``.

All IVF kinds use nlist ~ 4 sqrt(N) lists, trained on a sample of the vectors; PCA before the
index is the bank's ``--pca-dim`` (the graph is built on the reduced vectors). Graph jobs read the
written index and their own query rows (plus, when re-ranking, the candidate rows), never a copy
of the vectors of the whole bank.
"""
from __future__ import annotations

import math

import numpy as np

from stimopt.errors import StimoptError

INDEX_METHODS = ("ivf", "ivfpq", "ivfsq", "hnsw")
# Shortlist factor of the re-ranking per kind (1: the index's own order, no re-ranking).
DEFAULT_REFINE = {"ivf": 1, "ivfpq": 8, "ivfsq": 2, "hnsw": 1}
RERANK_CHUNK = 256  # queries re-scored together


def _faiss():
    import faiss

    return faiss


def n_lists(n: int) -> int:
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def pq_subquantizers(d: int, pq_m: int | None = None, bits: int = 8) -> int:
    """Subquantizers of a PQ code: ``pq_m`` if given, else the largest divisor of d that is <= d /
    bits (d/8 bytes per code: d/8 subquantizers of 8 bits, d/4 of 4 bits)."""
    if pq_m:
        if d % pq_m:
            raise StimoptError(f"pq_m={pq_m} must divide the vector dimension {d}")
        return int(pq_m)
    return max(m for m in range(1, max(1, d // bits) + 1) if d % m == 0)


def pq_bits(n_train: int) -> int:
    """8 bits per subquantizer (256 centroids) when the sample allows; fewer on tiny banks."""
    return int(max(1, min(8, math.floor(math.log2(max(2, n_train // 39))))))


def train_size(n: int, method: str) -> int:
    """IVF-Flat trains its lists on 64 rows per list; the compressed kinds (for banks of 10M+) on
    40 rows per list with 10 k-means iterations, which bounds their training cost."""
    nlist = n_lists(n)
    return min(n, max((64 if method == "ivf" else 40) * nlist, 256 * 39 if method == "ivfpq" else 0))


def factory_string(n: int, d: int, method: str, pq_m: int | None = None) -> str:
    """The faiss ``index_factory`` string of ``method`` for n vectors of d dims: 'IVF4000,PQ32x8'."""
    if method not in INDEX_METHODS:
        raise StimoptError(f"index method must be one of {', '.join(INDEX_METHODS)}, got '{method}'")
    if method == "hnsw":
        return "HNSW32,Flat"
    if method == "ivfpq":
        bits = pq_bits(train_size(n, method))
        code = f"PQ{pq_subquantizers(d, pq_m, 4)}x4fs" if bits >= 4 else f"PQ{pq_subquantizers(d, pq_m)}x{bits}"
    else:
        code = {"ivf": "Flat", "ivfsq": "SQ8"}[method]
    return f"IVF{n_lists(n)},{code}"


def make_index(x: np.ndarray, method: str, seed: int = 0, pq_m: int | None = None, block: int = 65536, progress=None):
    """Train (on a sample) and fill the index of ``method`` with all rows of ``x``, block by block."""
    faiss = _faiss()
    n, d = x.shape
    index = faiss.index_factory(d, factory_string(n, d, method, pq_m))
    if method == "hnsw":
        index.hnsw.efConstruction = 80
    else:
        if method != "ivf":
            faiss.extract_index_ivf(index).cp.niter = 10
        sample = np.sort(np.random.default_rng(seed).choice(n, size=train_size(n, method), replace=False))
        index.train(np.ascontiguousarray(x[sample], dtype=np.float32))
    for s in range(0, n, block):
        index.add(np.ascontiguousarray(x[s:s + block], dtype=np.float32))
        if progress is not None:
            progress.update(min(block, n - s))
    return index


def describe(index) -> str:
    """A faiss factory-like name of the index: 'IVF4000,PQ64x4fs', 'IVF4000,SQ8', 'IVF4000,Flat', 'HNSW32'."""
    faiss = _faiss()
    if isinstance(index, faiss.IndexHNSW):
        return "HNSW32,Flat"
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    if isinstance(ivf, faiss.IndexIVFPQFastScan):
        return f"IVF{ivf.nlist},PQ{ivf.pq.M}x{ivf.pq.nbits}fs"
    if isinstance(ivf, faiss.IndexIVFPQ):
        return f"IVF{ivf.nlist},PQ{ivf.pq.M}x{ivf.pq.nbits}"
    if isinstance(ivf, faiss.IndexIVFScalarQuantizer):
        return f"IVF{ivf.nlist},SQ8"
    return f"IVF{ivf.nlist},Flat"


def set_search(index, method: str, k: int, nprobe: int = 16, ef_search: int = 0) -> None:
    if method == "hnsw":
        index.hnsw.efSearch = max(ef_search, k + 1)
    else:
        _faiss().extract_index_ivf(index).nprobe = nprobe


def rerank(x: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int, chunk: int = RERANK_CHUNK) -> np.ndarray:
    """The k candidates of each query nearest in exact L2: ``candidates`` [B, R] row ids of ``x``
    (-1 = none) are re-scored on ``x``'s rows only (memory-mapped is fine: the other rows are never
    read), ``chunk`` queries at a time. Returns [B, k] int64, -1 where fewer than k."""
    faiss = _faiss()
    q = np.ascontiguousarray(queries, dtype=np.float32)
    cand = np.ascontiguousarray(candidates, dtype=np.int64)
    direct = isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous and x.ndim == 2
    out = np.full((len(q), k), -1, dtype=np.int64)
    for s in range(0, len(q), chunk):
        c = cand[s:s + chunk]
        dist = np.empty(c.shape, dtype=np.float32)
        if direct:  # faiss's indexed distances (what IndexRefineFlat uses), straight on x's memory
            faiss.fvec_L2sqr_by_idx(faiss.swig_ptr(dist), faiss.swig_ptr(q[s:s + chunk]), faiss.swig_ptr(x),
                                    faiss.swig_ptr(c), x.shape[1], len(c), c.shape[1])
        else:
            rows, where = np.unique(np.where(c < 0, 0, c), return_inverse=True)
            diff = np.asarray(x[rows], dtype=np.float32)[where.reshape(c.shape)] - q[s:s + chunk, None, :]
            dist = np.einsum("brd,brd->br", diff, diff)
        dist[c < 0] = np.inf
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        best = np.take_along_axis(c, order, axis=1)
        best[np.take_along_axis(dist, order, axis=1) == np.inf] = -1
        out[s:s + chunk, :best.shape[1]] = best
    return out


def refined_search(index, x: np.ndarray, queries: np.ndarray, k: int, refine: int = 1) -> np.ndarray:
    """``index.search`` for k neighbours; with ``refine`` > 1 the index proposes ``refine`` x k
    candidates and :func:`rerank` keeps the k nearest in exact distance."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if refine <= 1:
        return index.search(q, k)[1]
    shortlist = min(refine * k, index.ntotal)
    return rerank(x, q, index.search(q, shortlist)[1], k)


def exact_knn(queries: np.ndarray, x: np.ndarray, k: int, block: int = 262_144) -> np.ndarray:
    """Exact L2 k nearest rows of ``x`` [N, d] (memory-mapped is fine) for each query: the bank is
    streamed ``block`` rows at a time and the running top-k merged, so it is never copied whole."""
    faiss = _faiss()
    q = np.ascontiguousarray(queries, dtype=np.float32)
    n = len(x)
    if n <= block:
        return faiss.knn(q, np.ascontiguousarray(x, dtype=np.float32), k)[1]
    best_d = np.full((len(q), k), np.inf, dtype=np.float32)
    best_i = np.full((len(q), k), -1, dtype=np.int64)
    for s in range(0, n, block):
        dist, ids = faiss.knn(q, np.ascontiguousarray(x[s:s + block], dtype=np.float32), min(k, min(block, n - s)))
        all_d = np.concatenate([best_d, dist], axis=1)
        all_i = np.concatenate([best_i, ids + s], axis=1)
        order = np.argsort(all_d, axis=1, kind="stable")[:, :k]
        best_d = np.take_along_axis(all_d, order, axis=1)
        best_i = np.take_along_axis(all_i, order, axis=1)
    return best_i
