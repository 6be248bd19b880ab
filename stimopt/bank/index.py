"""The faiss indexes of the graph stage, and exact search that streams the bank in blocks.

Kinds (``--method``):

- ``ivf``: IVF-Flat, every vector stored in full (4 d bytes per image: 1 GB at 1M x 256).
- ``ivfpq``: IVF-PQ, each vector's residual to its list centre product-quantized to ``pq_m``
  bytes (default d/8 subquantizers of 8 bits: 32 bytes per image at d=256, 32x smaller than the
  vectors; faiss trains 4-dimensional subquantizers ~25x slower than 8-dimensional ones), plus
  8 bytes of id. What a 30M bank needs: 30M x (32 + 8) bytes = 1.2 GB.
- ``ivfsq``: IVF with 8-bit scalar quantization (d bytes per image, 4x smaller than the vectors),
  closer to exact than PQ.
- ``hnsw``: HNSW-Flat (M=32), vectors in full plus the HNSW links.

All IVF kinds use nlist ~ 4 sqrt(N) lists, trained on a sample of the vectors; PCA before the
index is the bank's ``--pca-dim`` (the graph is built on the reduced vectors). Graph jobs read the
written index, not the vectors of the whole bank: only their own query rows.
"""
from __future__ import annotations

import math

import numpy as np

from stimopt.errors import StimoptError

INDEX_METHODS = ("ivf", "ivfpq", "ivfsq", "hnsw")


def _faiss():
    import faiss

    return faiss


def n_lists(n: int) -> int:
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def pq_subquantizers(d: int, pq_m: int | None = None) -> int:
    """Bytes per PQ code: ``pq_m`` if given, else the largest divisor of d that is <= d/8."""
    if pq_m:
        if d % pq_m:
            raise StimoptError(f"pq_m={pq_m} must divide the vector dimension {d}")
        return int(pq_m)
    return max(m for m in range(1, max(1, d // 8) + 1) if d % m == 0)


def pq_bits(n_train: int) -> int:
    """8 bits per subquantizer (256 centroids) when the sample allows; fewer on tiny banks."""
    return int(max(1, min(8, math.floor(math.log2(max(2, n_train // 39))))))


def make_index(x: np.ndarray, method: str, seed: int = 0, pq_m: int | None = None, block: int = 65536, progress=None):
    """Train (on a sample) and fill the index of ``method`` with all rows of ``x``, block by block."""
    faiss = _faiss()
    n, d = x.shape
    if method not in INDEX_METHODS:
        raise StimoptError(f"index method must be one of {', '.join(INDEX_METHODS)}, got '{method}'")
    if method == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32)
        index.hnsw.efConstruction = 80
    else:
        nlist = n_lists(n)
        quantizer = faiss.IndexFlatL2(d)
        # IVF-Flat keeps its 64 rows per list; the compressed kinds (for banks of 10M+) train the
        # lists on 40 rows per list with 10 k-means iterations, which bounds their training cost.
        n_train = min(n, max((64 if method == "ivf" else 40) * nlist, 256 * 39 if method == "ivfpq" else 0))
        if method == "ivf":
            index = faiss.IndexIVFFlat(quantizer, d, nlist)
        elif method == "ivfsq":
            index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit)
        else:
            index = faiss.IndexIVFPQ(quantizer, d, nlist, pq_subquantizers(d, pq_m), pq_bits(n_train))
        if method != "ivf":
            index.cp.niter = 10
        sample = np.sort(np.random.default_rng(seed).choice(n, size=n_train, replace=False))
        index.train(np.ascontiguousarray(x[sample], dtype=np.float32))
    for s in range(0, n, block):
        index.add(np.ascontiguousarray(x[s:s + block], dtype=np.float32))
        if progress is not None:
            progress.update(min(block, n - s))
    return index


def describe(index) -> str:
    """A faiss factory-like name of the index: 'IVF4000,PQ64x8', 'IVF4000,SQ8', 'IVF4000,Flat', 'HNSW32'."""
    faiss = _faiss()
    if isinstance(index, faiss.IndexHNSW):
        return "HNSW32,Flat"
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    if isinstance(ivf, faiss.IndexIVFPQ):
        return f"IVF{ivf.nlist},PQ{ivf.pq.M}x{ivf.pq.nbits}"
    if isinstance(ivf, faiss.IndexIVFScalarQuantizer):
        return f"IVF{ivf.nlist},SQ8"
    return f"IVF{ivf.nlist},Flat"


def set_search(index, method: str, k: int, nprobe: int = 16, ef_search: int = 0) -> None:
    if method == "hnsw":
        index.hnsw.efSearch = max(ef_search, k + 1)
    else:
        index.nprobe = nprobe


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
