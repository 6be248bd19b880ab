"""Coarse-to-fine CMA-ES (``optimizer.coarse_to_fine``): search the coarse coordinates first.

A (mu/mu_w, lambda)-ES gains per generation a fraction of its distance to the optimum that falls as
1/dimension, so the 1,728-dim Fourier code climbs slowly in 100 generations. This strategy searches
only the coordinates whose level (the code space's ``levels``: for ``generator=fourier`` the
frequency band, max(fy, fx)) is below the first stage's level, then grows the search to the next
stage's coordinates after a fixed fraction of the budget, and to all of them at the last.

At each growth pycma's strategy is rebuilt on the larger set of coordinates: the mean keeps its
values (new coordinates enter at the code space's ``init_mean``), the step size ``sigma`` carries
over, and so do the searched coordinates' own scales (``es.stds / sigma``, through pycma's
``CMA_stds``); a new coordinate starts at the geometric mean of those scales, i.e. with a step
matched to the current one (``step: null``). With ``step`` a number, a new coordinate starts at
``step`` x the initial step (``sigma0 x init_std``) and sigma restarts there, the searched
coordinates keeping their absolute steps. The covariance's learning state and the step-size
rule's paths start afresh. Growth is decided by the number of generations asked, so replaying the
told scores (resume) grows at the same generations and asks the same codes.
"""
from __future__ import annotations

import numpy as np

from stimopt.errors import StimoptError


def stages(levels, coarse_to_fine, at, budget: int, popsize: int) -> list[tuple[int, np.ndarray]]:
    """[(first generation, indices searched from then on)]: one stage per level, then all coordinates."""
    if levels is None:
        raise StimoptError("cmaes.coarse_to_fine needs a code space with levels (e.g. generator=fourier); "
                           "this generator's code space has none: set optimizer.coarse_to_fine=null")
    levels = np.asarray(levels)
    coarse_to_fine, at = [int(x) for x in coarse_to_fine], [float(x) for x in at]
    if len(at) != len(coarse_to_fine):
        raise StimoptError(f"cmaes.coarse_to_fine_at needs one budget fraction per coarse_to_fine level "
                           f"({len(coarse_to_fine)}), got {len(at)}")
    if any(b <= a for a, b in zip(coarse_to_fine, coarse_to_fine[1:])) or coarse_to_fine[0] < 1:
        raise StimoptError(f"cmaes.coarse_to_fine must be increasing levels >= 1, got {coarse_to_fine}")
    if any(b <= a for a, b in zip(at, at[1:])) or not all(0 < a < 1 for a in at):
        raise StimoptError(f"cmaes.coarse_to_fine_at must be increasing fractions of the budget in (0, 1), got {at}")
    out, start = [], 0
    for level, frac in zip(coarse_to_fine, at):
        idx = np.flatnonzero(levels < level)
        if len(idx) == 0:
            raise StimoptError(f"cmaes.coarse_to_fine: no coordinate has a level below {level}")
        out.append((start, idx))
        start = max(start + 1, int(np.ceil(frac * budget / popsize)))
    out.append((start, np.arange(len(levels))))
    return [s for i, s in enumerate(out) if i == len(out) - 1 or len(s[1]) < len(out[i + 1][1])]


class ProgressiveES:
    """A pycma strategy on a growing subset of the coordinates, asked and told like one on all of them."""

    def __init__(self, x0, sigma0: float, opts: dict, plan: list[tuple[int, np.ndarray]], step: float | None = None):
        import cma

        self._cma, self._opts, self._plan = cma, dict(opts), plan
        self.sigma0, self.step = float(sigma0), None if step is None else float(step)
        self.x = np.asarray(x0, dtype=np.float64).copy()  # the full code's values; inactive coordinates stay here
        self.stage, self.asked = 0, 0
        self.idx = plan[0][1]
        self.es = cma.CMAEvolutionStrategy(self.x[self.idx], sigma0, self._opts)
        self._sub = []

    @property
    def sigma(self) -> float:
        return float(self.es.sigma)

    @property
    def dims(self) -> int:
        return len(self.idx)

    def _grow(self):
        self.stage += 1
        new_idx = self._plan[self.stage][1]
        stds = np.asarray(self.es.stds, dtype=np.float64)  # the searched coordinates' own steps (absolute)
        self.x[self.idx] = self.es.mean
        if self.step is None:  # matched: sigma carries over, a new coordinate gets the geometric mean of the old scales
            sigma = float(self.es.sigma)
            rel = np.full(len(new_idx), np.exp(np.mean(np.log(stds / sigma))))
        else:  # a new coordinate starts at step x the initial step; sigma restarts at sigma0, the old steps stay
            sigma = self.sigma0
            rel = np.full(len(new_idx), self.step)
        rel[np.searchsorted(new_idx, self.idx)] = stds / sigma  # both index arrays are sorted; old is a subset of new
        opts = dict(self._opts, CMA_stds=rel.tolist())
        self.idx = new_idx
        self.es = self._cma.CMAEvolutionStrategy(self.x[self.idx], sigma, opts)

    def ask(self):
        while self.stage + 1 < len(self._plan) and self.asked >= self._plan[self.stage + 1][0]:
            self._grow()
        self.asked += 1
        self._sub = self.es.ask()
        full = np.tile(self.x, (len(self._sub), 1))
        full[:, self.idx] = np.asarray(self._sub)
        return list(full)

    def tell(self, solutions, losses, **kwargs):
        if len(solutions) != len(self._sub):
            raise StimoptError(f"coarse-to-fine cmaes was told {len(solutions)} solutions for {len(self._sub)} asked")
        self.es.tell(self._sub, losses, **kwargs)  # pycma's tell options (e.g. check_points) pass through
