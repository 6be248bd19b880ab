"""One pass over the whole bank: the top-m items of each model-space direction, chunk by chunk.

The bank's features are read once (memory-mapped, ``chunk_size`` rows at a time); one matrix
product per chunk gives every direction's predictions, and only items above each direction's
running m-th best survive to the candidate pool, so memory stays O(m x directions).
"""
from __future__ import annotations

import numpy as np


def scan_bank(fmap, dirs: np.ndarray, intercept: float, m: int, exclude: np.ndarray, chunk_size: int, reduce=None):
    """Top-m bank items per column of ``dirs`` (model-space directions), skipping ``exclude``.

    The whole bank is read once, chunk by chunk: one matrix product per chunk gives the
    predictions [S, c]; only items above each column's running m-th best survive to the
    candidate pool. ``reduce`` maps a chunk's predictions [S, c] to the ranked rows [S', c].
    Returns (indices [m, S'], values [m, S']) best first, padded with (-1, -inf).
    """
    arrays = fmap.arrays
    size = arrays[0].shape[0]
    m = min(m, size)
    if fmap.kernel == "linear":
        raw = (dirs / fmap.sd[:, None]).T.astype(np.float32)  # standardization folded into the product
        const = (intercept - (fmap.mu / fmap.sd) @ dirs).astype(np.float32)[:, None]
        widths = np.cumsum([0] + [a.shape[1] for a in arrays])
    pool_s = pool_i = pool_v = None
    thr = None
    for start in range(0, size, chunk_size):
        stop = min(start + chunk_size, size)
        if fmap.kernel == "linear":
            pred = const + sum(
                raw[:, widths[k]:widths[k + 1]] @ np.asarray(a[start:stop], dtype=np.float32).T
                for k, a in enumerate(arrays)
            )
        else:
            pred = (dirs.T @ fmap.phi([a[start:stop] for a in arrays]).T + intercept).astype(np.float32)
        if reduce is not None:
            pred = reduce(pred)
        pred[:, exclude[start:stop]] = -np.inf
        n_rows, c = pred.shape
        if thr is None:
            thr = np.full(n_rows, -np.inf, dtype=np.float32)
            pool_s, pool_i, pool_v = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        if c > m and not np.isfinite(thr).all():  # no threshold yet: keep each row's top m
            part = np.argpartition(-pred, m - 1, axis=1)[:, :m]
            rows = np.repeat(np.arange(n_rows), m)
            cols = part.ravel()
            ok = pred[rows, cols] > thr[rows]
            rows, cols = rows[ok], cols[ok]
        else:
            rows, cols = np.nonzero(pred > thr[:, None])
        if rows.size == 0:
            continue
        pool_s = np.concatenate([pool_s, rows])
        pool_i = np.concatenate([pool_i, cols + start])
        pool_v = np.concatenate([pool_v, pred[rows, cols]])
        order = np.lexsort((-pool_v, pool_s))
        pool_s, pool_i, pool_v = pool_s[order], pool_i[order], pool_v[order]
        rank = np.arange(pool_s.size) - np.searchsorted(pool_s, pool_s)
        keep = rank < m
        pool_s, pool_i, pool_v = pool_s[keep], pool_i[keep], pool_v[keep]
        counts = np.bincount(pool_s, minlength=n_rows)
        last = np.searchsorted(pool_s, np.arange(n_rows), side="right") - 1
        thr = np.where(counts >= m, pool_v[np.maximum(last, 0)] if pool_v.size else -np.inf, -np.inf).astype(np.float32)
    idx = np.full((m, n_rows), -1, dtype=np.int64)
    val = np.full((m, n_rows), -np.inf, dtype=np.float32)
    if pool_s.size:
        rank = np.arange(pool_s.size) - np.searchsorted(pool_s, pool_s)
        idx[rank, pool_s] = pool_i
        val[rank, pool_s] = pool_v
    return idx, val
