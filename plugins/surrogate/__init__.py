"""Surrogate-guided bank search: learn the response from the bank's features, show what it predicts best.

``optimizer=surrogate`` searches a :class:`stimopt.BankSpace` (a bank built with features). Each
generation it

1. refits a ridge regression of score on the bank features of every image shown so far (features
   standardized with statistics of a fixed sample of the bank; the ridge penalty is chosen by the
   data: exact leave-one-out error over a grid, from one SVD; row weights = presentations x
   exp(``focus`` x standardized score), so the model is most accurate where the scores are high);
2. draws posterior weight vectors (Bayesian ridge: noise variance from the residuals, prior
   variance noise/alpha) or, with ``ensemble=E``, refits E bootstrap models;
3. scans the whole bank in chunks (memory-mapped features, one matrix product per chunk) and fills
   the batch: slot 0 takes the argmax of the posterior mean (exploitation), the others each the
   argmax of their own posterior draw (Thompson sampling; with ``graded`` the draws' spreads run
   from near 0 to 2 x ``explore`` across the batch; ``anneal`` shrinks ``explore`` as the budget
   is used; ``acquisition=ucb`` ranks by mean + spread instead, ``greedy`` by the mean alone);
   never an image already shown;
4. optionally gives ``coreset_fraction`` of each batch to the best-predicted unshown coreset images
   (diversity), ``neighbours`` of it to the best-predicted unshown kNN-graph neighbours of the best
   images shown, and ``represent`` slots to re-presenting top images whose evidence is weak
   (noisy neurons).

The first ``n_init`` images are drawn uniformly at random (``init=coreset``: the bank's coresets in
order; their farthest-point images are the bank's outliers, a worse first sample for a regression
on the demo bank). Scores are always maximized; the direction lives in the core objective.

Missing responses (NaN): a dropped trial taught nothing, so the image goes back into the pool and
may be shown once more (``retry_missing``, default 1); an all-NaN generation is a dropped block of
trials: nothing is learned from it, it is counted in ``report()['dropped_generations']`` and the
search goes on. The state is compact (the shown indices, their score sums and counts, the RNG):
the model is refit from it, so a resumed run continues exactly.
"""
from __future__ import annotations

from pathlib import Path
import contextlib
import math

import numpy as np

import stimopt
from stimopt.errors import StimoptError

ACQUISITIONS = ("thompson", "ucb", "greedy")
INITS = ("random", "coreset")
KERNELS = ("linear", "rff")


def _blas_threads(n: int):
    """Cap BLAS threads (n > 0) around the model's linear algebra. On shared machines a contended
    OpenBLAS pool makes small SVDs and the bank scan several times slower than one thread."""
    if n <= 0:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it the library default holds
        return contextlib.nullcontext()
    return threadpool_limits(n)


def _standardizer(arrays: list[np.ndarray], n_sample: int, seed: int = 12345) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean/std of the concatenated features, from a fixed random sample of rows."""
    size = arrays[0].shape[0]
    rows = np.arange(size) if size <= n_sample else np.sort(np.random.default_rng(seed).choice(size, n_sample, replace=False))
    x = np.concatenate([np.asarray(a[rows], dtype=np.float64) for a in arrays], axis=1)
    mu, sd = x.mean(0), x.std(0)
    sd[~(sd > 1e-8 * max(float(sd.max()), 1e-30))] = 1.0
    return mu, sd


def _thin_svd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x = U diag(sqrt(s2)) V^T from the eigendecomposition of the smaller Gram matrix.

    Much faster than LAPACK's SVD for the tall or wide matrices met here (and under thread
    contention); components with negligible energy are dropped.
    """
    n, p = x.shape
    if n <= p:
        s2, u = np.linalg.eigh(x @ x.T)
    else:
        s2, v = np.linalg.eigh(x.T @ x)
    keep = s2 > 1e-10 * max(float(s2.max(initial=0.0)), 1e-300)
    s2 = s2[keep]
    s = np.sqrt(s2)
    if n <= p:
        u = u[:, keep]
        v = (x.T @ u) / s
    else:
        v = v[:, keep]
        u = (x @ v) / s
    return u, s2, v


def fit_ridge(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, alphas: np.ndarray | None = None,
              r2_weights: np.ndarray | None = None) -> dict:
    """Weighted ridge with intercept; penalty chosen by exact leave-one-out error (one SVD).

    ``r2_weights`` (default ``w``) weight the rows of the reported leave-one-out R^2, so a fit that
    emphasizes some rows still reports how well it predicts every row.

    Returns beta, intercept, alpha, sigma (residual noise), r2_loo, and the SVD pieces needed to
    draw from the Bayesian-ridge posterior N(beta, sigma^2 (X'X + alpha I)^-1).
    """
    n, p = x.shape
    w = np.ones(n) if w is None else np.asarray(w, dtype=np.float64)
    sw = np.sqrt(w)
    xm, ym = (w @ x) / w.sum(), float(w @ y / w.sum())
    xc, yc = (x - xm) * sw[:, None], (y - ym) * sw
    u, s2, v = _thin_svd(xc)
    uy = u.T @ yc
    lev0 = w / w.sum()  # leverage of the intercept
    if alphas is None:
        top = float(s2.max()) if s2.size and s2.max() > 0 else 1.0
        alphas = top * np.logspace(-5, 2, 36)
    best = None
    u2 = u**2
    for a in alphas:
        d = s2 / (s2 + a)
        fitted = u @ (d * uy)
        h = u2 @ d + lev0
        loo = (yc - fitted) / np.maximum(1.0 - h, 1e-6)
        press = float(loo @ loo)
        if best is None or press < best[0]:
            best = (press, a, d, fitted, loo)
    _, a, d, fitted, loo = best
    loo = loo / sw  # y_i minus its prediction by the fit without row i
    rw = w if r2_weights is None else np.asarray(r2_weights, dtype=np.float64)
    ss_r2 = float(rw @ (y - rw @ y / rw.sum()) ** 2)
    beta = v @ (np.sqrt(s2) / (s2 + a) * uy)
    df = float(d.sum())
    rss = float(((yc - fitted) ** 2).sum())
    sigma = math.sqrt(rss / max(n - df - 1.0, 1.0)) if n > 1 else 1.0
    return {
        "beta": beta, "intercept": ym - float(xm @ beta), "alpha": float(a), "sigma": sigma,
        "r2_loo": 1.0 - float(rw @ loo**2) / ss_r2 if ss_r2 > 0 else float("nan"),
        "v": v, "s2": s2, "n": n,
    }


class SurrogateSearch(stimopt.Optimizer):
    """Online ridge surrogate of score vs bank features + Thompson/UCB acquisition over the bank."""

    accepts = (stimopt.BankSpace,)

    def __init__(
        self,
        n_init: int = 20,
        init: str = "random",
        focus: float = 0.5,
        acquisition: str = "thompson",
        explore: float = 1.0,
        alpha: float | str = "auto",
        ensemble: int = 0,
        kernel: str = "linear",
        n_random_features: int = 1024,
        layers: list[str] | None = None,
        coreset_fraction: float = 0.0,
        neighbours: float = 0.0,
        neighbour_sources: int = 10,
        anneal: float = 0.0,
        graded: bool = True,
        represent: int = 0,
        max_presentations: int = 4,
        evidence: float = 2.0,
        retry_missing: int = 1,
        chunk_size: int = 65536,
        n_report: int = 50,
        n_standardize: int = 20000,
        blas_threads: int = 1,
    ):
        if acquisition not in ACQUISITIONS:
            raise StimoptError(f"optimizer.acquisition must be one of {ACQUISITIONS}, got '{acquisition}'")
        if kernel not in KERNELS:
            raise StimoptError(f"optimizer.kernel must be one of {KERNELS}, got '{kernel}'")
        if alpha != "auto" and not (isinstance(alpha, (int, float)) and alpha > 0):
            raise StimoptError(f"optimizer.alpha must be 'auto' or a positive number, got {alpha!r}")
        if init not in INITS:
            raise StimoptError(f"optimizer.init must be one of {INITS}, got '{init}'")
        if not focus >= 0:
            raise StimoptError(f"optimizer.focus must be >= 0 (0 = every image weighs the same), got {focus}")
        if n_init < 2:
            raise StimoptError(f"optimizer.n_init must be at least 2 (the model needs data to start), got {n_init}")
        if not 0.0 <= coreset_fraction <= 1.0:
            raise StimoptError(f"optimizer.coreset_fraction must be in [0, 1], got {coreset_fraction}")
        if not 0.0 <= neighbours <= 1.0 or neighbour_sources < 1:
            raise StimoptError(f"optimizer.neighbours must be in [0, 1] and neighbour_sources >= 1, got {neighbours}, {neighbour_sources}")
        if not 0.0 <= anneal <= 1.0:
            raise StimoptError(f"optimizer.anneal must be in [0, 1], got {anneal}")
        if represent < 0 or max_presentations < 1 or ensemble < 0 or ensemble == 1:
            raise StimoptError("optimizer.represent >= 0, max_presentations >= 1 and ensemble = 0 or >= 2 are required")
        self.n_init, self.init, self.focus = int(n_init), init, float(focus)
        self.acquisition, self.explore = acquisition, float(explore)
        self.alpha, self.ensemble, self.kernel = alpha, int(ensemble), kernel
        self.n_random_features, self.layers = int(n_random_features), list(layers) if layers else ["features"]
        self.coreset_fraction, self.represent = float(coreset_fraction), int(represent)
        self.neighbours, self.neighbour_sources, self.anneal = float(neighbours), int(neighbour_sources), float(anneal)
        self.graded = bool(graded)
        self.max_presentations, self.evidence = int(max_presentations), float(evidence)
        self.retry_missing, self.chunk_size = int(retry_missing), int(chunk_size)
        self.n_report, self.n_standardize = int(n_report), int(n_standardize)
        self.blas_threads = int(blas_threads)

    # -- setup ----------------------------------------------------------------------------------
    def setup(self, space, *, seed, budget, batch_size):
        super().setup(space, seed=seed, budget=budget, batch_size=batch_size)
        self.arrays = self._feature_arrays(space)
        if self.n_init > space.size:
            raise StimoptError(f"optimizer.n_init={self.n_init} exceeds the bank's {space.size} images; lower optimizer.n_init")
        if self.represent == 0 and budget > space.size:
            raise StimoptError(
                f"budget {budget} exceeds the bank's {space.size} images and surrogate never shows an image twice; "
                "lower the budget or set optimizer.represent > 0"
            )
        if self.neighbours and space.graph is None:
            raise StimoptError("optimizer.neighbours > 0 needs the bank's kNN graph, which this bank does not have; set optimizer.neighbours=0")
        self.mu, self.sd = _standardizer(self.arrays, self.n_standardize)
        p = self.mu.size
        if self.kernel == "rff":
            r = np.random.default_rng(54321)
            self.omega = r.normal(0.0, 1.0 / math.sqrt(p), size=(p, self.n_random_features))
            self.phase = r.uniform(0, 2 * math.pi, size=self.n_random_features)
        core = [np.asarray(c, dtype=np.int64).ravel() for c in space.coresets]
        core = np.concatenate(core) if core else np.zeros(0, np.int64)
        if core.size and (core.min() < 0 or core.max() >= space.size):
            raise StimoptError(f"bank coresets hold indices outside 0..{space.size - 1}; rebuild the bank's coresets")
        _, first = np.unique(core, return_index=True)
        self.coreset = core[np.sort(first)]
        self.rng = np.random.default_rng(seed)
        self.items: list[int] = []  # bank indices with at least one finite response, in order
        self.pos: dict[int, int] = {}
        self.sums: list[float] = []
        self.counts: list[int] = []
        self.missing: dict[int, int] = {}  # index -> NaN responses so far
        self.shown = np.zeros(space.size, dtype=bool)  # shown or being shown (not eligible for new picks)
        self.dropped_generations = 0
        self.generations_told = 0
        self._info: list[dict] | None = None
        self._fit = None

    def _feature_arrays(self, space) -> list[np.ndarray]:
        arrays = []
        for name in self.layers:
            arr = space.features if name == "features" else space.extras.get(name)
            if arr is None:
                have = ["features"] if space.features is not None else []
                have += [k for k, v in space.extras.items() if getattr(v, "ndim", 0) == 2]
                raise StimoptError(
                    f"optimizer=surrogate needs bank features '{name}', which this bank does not have "
                    f"(it has: {', '.join(have) or 'none'}); build the bank with features or set optimizer.layers"
                )
            if getattr(arr, "ndim", 0) != 2 or arr.shape[0] != space.size:
                raise StimoptError(
                    f"bank features '{name}' have shape {tuple(getattr(arr, 'shape', ()))} but the bank holds "
                    f"{space.size} images; expected [{space.size}, d]: rebuild the bank's features"
                )
            arrays.append(arr)
        return arrays

    # -- the model -------------------------------------------------------------------------------
    def _phi(self, rows: list[np.ndarray]) -> np.ndarray:
        """Model inputs for raw feature rows (one block per layer): standardized, or random Fourier features."""
        x = (np.concatenate([np.asarray(r, dtype=np.float64) for r in rows], axis=1) - self.mu) / self.sd
        if self.kernel == "rff":
            x = math.sqrt(2.0 / self.n_random_features) * np.cos(x @ self.omega + self.phase)
        return x

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        order = np.argsort(idx)
        x = self._phi([a[idx[order]] for a in self.arrays])
        out = np.empty_like(x)
        out[order] = x
        return out

    def _fit_weights(self, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Row weights of the fit: presentations x exp(focus x z), z = the image's standardized mean score
        (clipped to +-3), the focus factors scaled to mean 1. The search spends its budget where scores
        are high, so that is where the model must be right; a linear model of a nonlinear neuron is
        otherwise fit to the bulk of mediocre images."""
        if not self.focus or y.size < 2 or not y.std() > 0:
            return counts
        f = np.exp(self.focus * np.clip((y - y.mean()) / y.std(), -3.0, 3.0))
        return counts * f / f.mean()

    def _refit(self):
        idx = np.asarray(self.items, dtype=np.int64)
        counts = np.asarray(self.counts, dtype=np.float64)
        y = np.asarray(self.sums) / counts
        x = self._rows(idx)
        alphas = None if self.alpha == "auto" else np.array([float(self.alpha)])
        w = self._fit_weights(y, counts)
        fit = fit_ridge(x, y, w, alphas, r2_weights=counts)
        fit["weights"] = w
        self._fit = fit
        return fit, x, y, counts

    def _directions(self, fit, x, y, counts, n_draws: int) -> np.ndarray:
        """[p, 1 + n_draws]: the posterior mean, then draws (Bayesian ridge, or bootstrap refits)."""
        beta = fit["beta"]
        if n_draws == 0:
            return beta[:, None]
        if self.ensemble:
            draws = []
            for _ in range(self.ensemble):
                b = self.rng.integers(0, len(y), size=len(y))
                draws.append(fit_ridge(x[b], y[b], fit["weights"][b], np.array([fit["alpha"]]))["beta"])
            d = np.stack(draws, 1)
            d = np.tile(d - d.mean(1, keepdims=True), -(-n_draws // d.shape[1]))[:, :n_draws]
            return np.concatenate([beta[:, None], beta[:, None] + self._draw_scales(n_draws) * d], 1)
        v, s2, a = fit["v"], fit["s2"], fit["alpha"]
        p = beta.size
        z1 = self.rng.standard_normal((v.shape[1], n_draws))
        z2 = self.rng.standard_normal((p, n_draws))
        null = (z2 - v @ (v.T @ z2)) / math.sqrt(a)
        d = beta[:, None] + self._draw_scales(n_draws) * fit["sigma"] * (v @ (z1 / np.sqrt(s2 + a)[:, None]) + null)
        return np.concatenate([beta[:, None], d], 1)

    def _draw_scales(self, n: int) -> np.ndarray:
        """Spread of each posterior draw: all ``explore`` (annealed), or with ``graded`` evenly from near 0
        (almost greedy) to 2 x explore (bold) across the batch, same mean."""
        scale = self._explore_scale()
        if not self.graded:
            return np.full(n, scale)
        return scale * 2.0 * np.arange(1, n + 1) / (n + 1)

    def _scan(self, dirs: np.ndarray, intercept: float, m: int, exclude: np.ndarray, reduce=None):
        """Top-m bank items per column of ``dirs`` (model-space directions), skipping ``exclude``.

        The whole bank is read once, chunk by chunk: one matrix product per chunk gives the
        predictions [S, c]; only items above each column's running m-th best survive to the
        candidate pool. ``reduce`` maps a chunk's predictions [S, c] to the ranked rows [S', c].
        Returns (indices [m, S'], values [m, S']) best first, padded with (-1, -inf).
        """
        size = self.space.size
        m = min(m, size)
        if self.kernel == "linear":
            raw = (dirs / self.sd[:, None]).T.astype(np.float32)  # standardization folded into the product
            const = (intercept - (self.mu / self.sd) @ dirs).astype(np.float32)[:, None]
            widths = np.cumsum([0] + [a.shape[1] for a in self.arrays])
        pool_s = pool_i = pool_v = None
        thr = None
        for start in range(0, size, self.chunk_size):
            stop = min(start + self.chunk_size, size)
            if self.kernel == "linear":
                pred = const + sum(
                    raw[:, widths[k]:widths[k + 1]] @ np.asarray(a[start:stop], dtype=np.float32).T
                    for k, a in enumerate(self.arrays)
                )
            else:
                pred = (dirs.T @ self._phi([a[start:stop] for a in self.arrays]).T + intercept).astype(np.float32)
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

    # -- ask / tell ------------------------------------------------------------------------------
    def _random_unshown(self, n: int) -> np.ndarray:
        free = self.space.size - int(self.shown.sum())
        if free < n:
            raise StimoptError(f"the bank has only {free} images left that were never shown; lower the budget")
        out: list[int] = []
        while len(out) < n:
            for i in self.rng.integers(0, self.space.size, size=2 * (n - len(out)) + 8).tolist():
                if not self.shown[i] and i not in out and len(out) < n:
                    out.append(i)
        return np.array(out, dtype=np.int64)

    def _repeats(self, k: int) -> list[int]:
        """Top observed images whose evidence is weak: standard error > gap to the runner-up set / evidence."""
        if k == 0 or self._fit is None or len(self.items) < 3:
            return []
        means = np.asarray(self.sums) / np.asarray(self.counts)
        counts = np.asarray(self.counts)
        order = np.argsort(-means, kind="stable")
        pool = order[: k + 1]
        ref = means[order[min(k + 1, len(order) - 1)]]  # the best image outside the contenders
        se = self._fit["sigma"] / np.sqrt(counts[pool])
        weak = (counts[pool] < self.max_presentations) & (means[pool] - ref < self.evidence * se)
        return [self.items[j] for j in pool[weak][:k]]

    def _neighbour_picks(self, fit, n: int, exclude: np.ndarray) -> np.ndarray:
        """Up to n unshown kNN-graph neighbours of the best images shown so far, best predicted first."""
        means = np.asarray(self.sums) / np.asarray(self.counts)
        best = np.asarray(self.items)[np.argsort(-means, kind="stable")[: self.neighbour_sources]]
        cand = np.unique(np.asarray(self.space.graph[np.sort(best)]).ravel())
        cand = cand[(cand >= 0) & (cand < self.space.size)]
        cand = cand[~exclude[cand]]
        if cand.size == 0:
            return cand
        pred = self._rows(cand) @ fit["beta"] + fit["intercept"]
        return cand[np.argsort(-pred, kind="stable")[:n]]

    def _explore_scale(self) -> float:
        """``explore``, shrunk linearly by up to ``anneal`` as the budget is used (exploitation late)."""
        used = min(1.0, sum(self.counts) / max(self.budget, 1))
        return self.explore * (1.0 - self.anneal * used)

    def ask(self, n):
        with _blas_threads(self.blas_threads):
            return self._ask(n)

    def _ask(self, n):
        picks: list[int] = []
        info: list[dict] = []
        if len(self.items) < self.n_init:
            # Initial design: uniformly random images, or (init=coreset) the coresets in order, then random.
            left = self.coreset[~self.shown[self.coreset]][:n] if self.init == "coreset" else self.coreset[:0]
            picks += left.tolist()
            info += [{"why": "init-coreset"}] * len(left)
            if len(picks) < n:
                self.shown[picks] = True
                rest = self._random_unshown(n - len(picks))
                picks += rest.tolist()
                info += [{"why": "init-random"}] * len(rest)
        else:
            fit, x, y, counts = self._refit()
            for i in self._repeats(min(self.represent, n)):
                picks.append(i)
                info.append({"why": "repeat", "mean": float(self.sums[self.pos[i]] / self.counts[self.pos[i]]),
                             "presentations": int(self.counts[self.pos[i]])})
            exclude = self.shown.copy()
            exclude[picks] = True
            n_core = min(int(round(self.coreset_fraction * n)), n - len(picks))
            if n_core and self.coreset.size:
                cand = self.coreset[~exclude[self.coreset]]
                if cand.size:
                    pred = self._rows(cand) @ fit["beta"] + fit["intercept"]
                    top = cand[np.argsort(-pred, kind="stable")[:n_core]]
                    picks += top.tolist()
                    info += [{"why": "coreset", "predicted": float(v)} for v in np.sort(pred)[::-1][: len(top)]]
                    exclude[top] = True
            n_nb = min(int(round(self.neighbours * n)), n - len(picks))
            if n_nb:
                top = self._neighbour_picks(fit, n_nb, exclude)
                picks += top.tolist()
                info += [{"why": "neighbour"}] * len(top)
                exclude[top] = True
            slots = n - len(picks)
            if slots:
                picks_new, info_new = self._acquire(fit, x, y, counts, slots, exclude)
                picks += picks_new
                info += info_new
        codes = np.asarray(picks, dtype=np.int64)
        self.shown[codes] = True
        self._info = info
        return codes

    def _acquire(self, fit, x, y, counts, slots: int, exclude: np.ndarray):
        if self.acquisition == "greedy":
            dirs = self._directions(fit, x, y, counts, 0)
            idx, val = self._scan(dirs, fit["intercept"], slots, exclude)
            return idx[:, 0].tolist(), [{"why": "greedy", "predicted": float(v)} for v in val[:, 0]]
        if self.acquisition == "ucb":
            dirs = self._directions(fit, x, y, counts, max(self.ensemble, 16))
            def ucb(pred):
                return pred[:1] + pred[1:].std(0, keepdims=True)  # draws already scaled by explore
            idx, val = self._scan(dirs, fit["intercept"], slots, exclude, reduce=ucb)
            return idx[:, 0].tolist(), [{"why": "ucb", "acquisition": float(v)} for v in val[:, 0]]
        # Thompson: slot 0 exploits the posterior mean; slot j>0 takes the argmax of draw j.
        dirs = self._directions(fit, x, y, counts, slots - 1)
        idx, val = self._scan(dirs, fit["intercept"], slots, exclude)
        picks, info, taken = [], [], set()
        for j in range(idx.shape[1]):
            for r in range(idx.shape[0]):
                i = int(idx[r, j])
                if i not in taken and np.isfinite(val[r, j]):
                    taken.add(i)
                    picks.append(i)
                    info.append({"why": "greedy" if j == 0 else "thompson", "predicted": float(val[r, j])})
                    break
        if len(picks) < slots:  # only when the bank is nearly exhausted
            exclude = exclude.copy()
            exclude[picks] = True
            self.shown, saved = exclude, self.shown
            extra = self._random_unshown(slots - len(picks)).tolist()
            self.shown = saved
            picks += extra
            info += [{"why": "random"}] * len(extra)
        return picks, info

    def ask_info(self):
        return self._info

    def tell(self, codes, scores):
        codes = np.asarray(codes, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float64)
        self.generations_told += 1
        finite = np.isfinite(scores)
        if not finite.any():
            self.dropped_generations += 1
        for i, s, ok in zip(codes.tolist(), scores.tolist(), finite.tolist()):
            if ok:
                if i not in self.pos:
                    self.pos[i] = len(self.items)
                    self.items.append(i)
                    self.sums.append(0.0)
                    self.counts.append(0)
                self.sums[self.pos[i]] += s
                self.counts[self.pos[i]] += 1
            else:
                self.missing[i] = self.missing.get(i, 0) + 1
                if i not in self.pos and self.missing[i] <= self.retry_missing:
                    self.shown[i] = False  # nothing was learned: it may be shown again

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self):
        return {
            "rng": self.rng.bit_generator.state,
            "items": np.asarray(self.items, dtype=np.int64),
            "sums": np.asarray(self.sums, dtype=np.float64),
            "counts": np.asarray(self.counts, dtype=np.int64),
            "missing": np.asarray(list(self.missing.items()), dtype=np.int64).reshape(-1, 2),
            "shown": np.flatnonzero(self.shown).astype(np.int64),
            "dropped_generations": self.dropped_generations,
            "generations_told": self.generations_told,
        }

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.items = state["items"].tolist()
        self.pos = {i: k for k, i in enumerate(self.items)}
        self.sums = state["sums"].tolist()
        self.counts = state["counts"].tolist()
        self.missing = {int(i): int(c) for i, c in state["missing"]}
        self.shown = np.zeros(self.space.size, dtype=bool)
        self.shown[state["shown"]] = True
        self.dropped_generations = int(state["dropped_generations"])
        self.generations_told = int(state["generations_told"])
        self._fit = None

    # -- report ----------------------------------------------------------------------------------
    def report(self) -> dict:
        """What the model learned: held-out R^2, the predicted best not yet shown, best/worst shown."""
        with _blas_threads(self.blas_threads):
            return self._report()

    def _report(self) -> dict:
        out = {
            "scores_note": "score = response for direction=max and -response for direction=min",
            "n_images": len(self.items),
            "n_presentations": int(sum(self.counts)),
            "n_missing": int(sum(self.missing.values())),
            "dropped_generations": self.dropped_generations,
        }
        if len(self.items) < 3:
            return out
        fit, x, y, counts = self._refit()
        out.update({"heldout_r2": round(float(fit["r2_loo"]), 4), "alpha": fit["alpha"], "noise_sigma": fit["sigma"],
                    "model": f"ridge ({self.kernel}, layers {'+'.join(self.layers)})"})
        idx, val = self._scan(fit["beta"][:, None], fit["intercept"], self.n_report, self.shown)
        keep = np.isfinite(val[:, 0])
        out["predicted_top_unshown"] = [{"index": int(i), "predicted_score": float(v)} for i, v in zip(idx[keep, 0], val[keep, 0])]
        items = np.asarray(self.items)
        means = y
        pred = x @ fit["beta"] + fit["intercept"]
        order = np.argsort(-means, kind="stable")
        k = min(self.n_report, len(items))

        def entries(sel):
            return [{"index": int(items[j]), "score": float(means[j]), "presentations": int(counts[j]),
                     "predicted_score": float(pred[j])} for j in sel]

        out["best"] = entries(order[:k])  # highest scores: preferred (max) / anti-preferred (min)
        out["worst"] = entries(order[::-1][:k])
        j = int(np.argmax(pred))
        out["observed_best"] = out["best"][0]
        best_pred = max(float(pred[j]), float(val[0, 0]) if keep.any() else -np.inf)
        out["predicted_best"] = (
            {"index": int(items[j]), "predicted_score": float(pred[j]), "shown": True}
            if float(pred[j]) >= best_pred else {"index": int(idx[0, 0]), "predicted_score": float(val[0, 0]), "shown": False}
        )
        return out


@stimopt.hookimpl
def register_optimizers(register):
    register("surrogate", SurrogateSearch)


@stimopt.hookimpl
def register_config_dirs(register):
    register(str(Path(__file__).parent / "conf"))
