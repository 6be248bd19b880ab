"""``optimizer=surrogate``: the online ridge surrogate's ask/tell loop over a bank (see the package doc)."""
from __future__ import annotations

import numpy as np

import stimopt
from stimopt.errors import StimoptError
from stimopt.ridge import fit_ridge, posterior_draws

from .model import ACQUISITIONS, INITS, KERNELS, FeatureMap, blas_threads, focus_weights
from .report import surrogate_report
from .compact import compact_features
from .scan import scan_bank


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
        scan_dims: int = 64,
        scan_above: int = 1_000_000,
        scan_share: float = 1e-3,
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
        if scan_dims < 0 or not 0 < scan_share <= 1:
            raise StimoptError(f"optimizer.scan_dims must be >= 0 (0 = scan the full features) and optimizer.scan_share in (0, 1], "
                               f"got {scan_dims}, {scan_share}")
        self.scan_dims, self.scan_above, self.scan_share = int(scan_dims), int(scan_above), float(scan_share)

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
        self.features = FeatureMap(self.arrays, self.kernel, self.n_random_features, self.n_standardize)
        self.compact = None
        if self.kernel == "linear" and self.scan_dims and space.size >= self.scan_above:
            with blas_threads(self.blas_threads):
                self.compact = compact_features(self.arrays, min(self.scan_dims, self.features.mu.size), space.path)
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
    def _rows(self, idx: np.ndarray) -> np.ndarray:
        return self.features.rows(idx)

    def _fit_weights(self, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return focus_weights(y, counts, self.focus)

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
        return np.concatenate([beta[:, None], posterior_draws(fit, self.rng, self._draw_scales(n_draws))], 1)

    def _draw_scales(self, n: int) -> np.ndarray:
        """Spread of each posterior draw: all ``explore`` (annealed), or with ``graded`` evenly from near 0
        (almost greedy) to 2 x explore (bold) across the batch, same mean."""
        scale = self._explore_scale()
        if not self.graded:
            return np.full(n, scale)
        return scale * 2.0 * np.arange(1, n + 1) / (n + 1)

    def _scan(self, dirs: np.ndarray, intercept: float, m: int, exclude: np.ndarray, reduce=None):
        """Top-m bank items per column of ``dirs`` (see :func:`.scan.scan_bank`)."""
        return scan_bank(self.features, dirs, intercept, m, exclude, self.chunk_size, reduce, self.compact, self.scan_share)

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
        with blas_threads(self.blas_threads):
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
        with blas_threads(self.blas_threads):
            return surrogate_report(self)
