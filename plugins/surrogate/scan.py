"""One pass over the whole bank: the top-m items of each model-space direction, chunk by chunk.

The bank's features are read once (memory-mapped, ``chunk_size`` rows at a time); one matrix
product per chunk gives every direction's predictions, and only items above each direction's
running m-th best survive to the candidate pool, so memory stays O(m x directions).

With a compact copy of the features (:mod:`.compact`, linear kernel: what big banks use) the pass
reads the 8-bit PCA codes instead, keeps the best ~``share`` of the bank per ranked row, and re-scores the
union of those on the full features: the returned ranking is the full-precision one, restricted
to the candidates.
"""
from __future__ import annotations

import numpy as np

from .compact import read_rows


def top_per_row(predict, size: int, m: int, exclude: np.ndarray, chunk_size: int, reduce=None):
    """Top-m columns of each row of ``predict(start, stop)`` [S, stop - start] over 0..size-1,
    skipping ``exclude``; ``reduce`` maps a chunk's predictions [S, c] to the ranked rows [S', c].
    Returns (indices [m, S'], values [m, S']) best first, padded with (-1, -inf)."""
    m = min(m, size)
    pool_s = pool_i = pool_v = None
    thr = None
    for start in range(0, size, chunk_size):
        stop = min(start + chunk_size, size)
        pred = predict(start, stop)
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
    if thr is None:
        return np.full((m, 0), -1, dtype=np.int64), np.full((m, 0), -np.inf, dtype=np.float32)
    idx = np.full((m, n_rows), -1, dtype=np.int64)
    val = np.full((m, n_rows), -np.inf, dtype=np.float32)
    if pool_s.size:
        rank = np.arange(pool_s.size) - np.searchsorted(pool_s, pool_s)
        idx[rank, pool_s] = pool_i
        val[rank, pool_s] = pool_v
    return idx, val


def scan_bank(fmap, dirs: np.ndarray, intercept: float, m: int, exclude: np.ndarray, chunk_size: int, reduce=None,
              compact=None, share: float = 1e-3):
    """Top-m bank items per column of ``dirs`` (model-space directions), skipping ``exclude``.

    The whole bank is read once, chunk by chunk: one matrix product per chunk gives the
    predictions [S, c]; only items above each column's running m-th best survive to the
    candidate pool. ``reduce`` maps a chunk's predictions [S, c] to the ranked rows [S', c].
    With ``compact`` (a :class:`.compact.CompactFeatures` of the same bank; linear kernel), the
    pass ranks the codes, keeps ~max(m, share x N) items per row and re-scores their union exactly.
    Returns (indices [m, S'], values [m, S']) best first, padded with (-1, -inf).
    """
    arrays = fmap.arrays
    size = arrays[0].shape[0]
    if fmap.kernel == "linear":
        raw = (dirs / fmap.sd[:, None]).T.astype(np.float32)  # standardization folded into the product
        const = (intercept - (fmap.mu / fmap.sd) @ dirs).astype(np.float32)[:, None]
        widths = np.cumsum([0] + [a.shape[1] for a in arrays])

        def predict(start, stop):
            return const + sum(raw[:, widths[k]:widths[k + 1]] @ np.asarray(a[start:stop], dtype=np.float32).T
                               for k, a in enumerate(arrays))
    else:
        def predict(start, stop):
            return (dirs.T @ fmap.phi([a[start:stop] for a in arrays]).T + intercept).astype(np.float32)

    if compact is None or fmap.kernel != "linear":
        return top_per_row(predict, size, m, exclude, chunk_size, reduce)
    m = min(m, size)
    weights, consts = compact.readout(raw, const[:, 0])
    codes = compact.codes

    wt = np.ascontiguousarray(weights.T)  # [S, dims]
    cc = consts[:, None]

    def approx(start, stop, rows=None):
        block = np.asarray(codes[start:stop] if rows is None else codes[rows]).astype(np.float32)
        pred = wt @ block.T + cc  # [S, c]: each row contiguous, so the reductions below run along rows
        return reduce(pred) if reduce is not None else pred

    # Each ranked row keeps the items above its threshold: the value that ~max(m, share x N) items
    # of the bank exceed, read off a fixed random sample of the codes. One pass, no running merge.
    keep = max(m, int(np.ceil(share * size)))
    n_sample = min(size, max(65536, int(64 * size / keep)))
    sample = np.sort(np.random.default_rng(7).choice(size, n_sample, replace=False)) if n_sample < size else np.arange(size)
    sp = approx(0, 0, sample)
    sp[:, exclude[sample]] = -np.inf
    r = min(n_sample, max(1, int(np.ceil(keep * n_sample / size))))
    thr = -np.partition(-sp, r - 1, axis=1)[:, r - 1]
    ok = bool(np.isfinite(thr).all())  # else too few eligible items in the sample: the exact top per row below
    if ok and reduce is None:
        cc -= thr[:, None]  # compare with 0 after folding the threshold into the constants
    found = [np.zeros(0, np.int64)]
    step = min(chunk_size, 8192)
    for start in range(0, size if ok else 0, step):
        stop = min(start + step, size)
        pred = approx(start, stop)
        if reduce is not None:
            pred -= thr[:, None]
        hit = np.flatnonzero(np.maximum.reduce(pred, axis=0) >= 0) + start
        found.append(hit[~exclude[hit]])
    if ok and reduce is None:
        cc += thr[:, None]
    cand = np.concatenate(found)
    if cand.size:
        per_row = (approx(0, 0, cand) >= thr[:, None]).sum(1)  # consts restored: true code readouts
    else:
        per_row = np.zeros(1)
    if per_row.min() < m:  # a threshold fell too high (a sparse row, or many excluded): exact top per row of the codes
        top, _ = top_per_row(approx, size, keep, exclude, step)
        cand = np.unique(np.concatenate([cand, top[top >= 0]]))
    if cand.size == 0:
        return np.full((m, 1), -1, dtype=np.int64), np.full((m, 1), -np.inf, dtype=np.float32)
    x = read_rows(arrays, cand)
    exact = const + raw @ x.T
    if reduce is not None:
        exact = reduce(exact)
    order = np.argsort(-exact, axis=1, kind="stable")[:, :m]
    idx = np.full((m, exact.shape[0]), -1, dtype=np.int64)
    val = np.full((m, exact.shape[0]), -np.inf, dtype=np.float32)
    idx[: order.shape[1]] = cand[order].T
    val[: order.shape[1]] = np.take_along_axis(exact, order, axis=1).T
    idx[~np.isfinite(val)] = -1
    return idx, val
