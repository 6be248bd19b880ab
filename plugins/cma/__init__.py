"""CMA-ES through pycma's batched ask/tell (``optimizer=cmaes``): one batch is one generation.

pycma (``import cma``, the library nevergrad wraps) asks a whole population in one call and is
told it in one call, so the per-evaluation overhead is a fraction of a per-candidate wrapper's.

- Population = ``batch_size``; the search starts at the code space's ``init_mean`` with step
  size ``init_std`` (``sigma0`` multiplies it). ``diagonal: true`` (default) is sep-CMA, the
  variant in-silico benchmarks found strongest under noise; ``false`` learns a full covariance.
- Bounds (a bounded ``ContinuousSpace``): ``bounds: clip`` (default) samples unbounded and clips
  the codes sent to the generator, pycma is told its own unclipped samples (nevergrad's
  "clipping"); ``bounds: transform`` uses pycma's ``BoundTransform``.
- Missing scores (NaN: a dropped trial) get the worst finite score of their generation, so pycma
  never sees NaN and an unscored sample pulls nothing towards itself; a generation with no score
  at all is not told (the next ask draws a fresh population from the same distribution).
- pycma minimizes: it is told ``-score``. Its random draws come from a ``RandomState`` seeded by
  the run seed (never numpy's global state; the next generation's drawn in a thread while the
  target evaluates this one, ``normals.py``), so the same seed asks the same codes, and on an
  unbounded space they are the codes nevergrad's ParametrizedCMA (diagonal, the previous
  ``optimizer=cmaes``) asks for that seed: the same runs, without the per-candidate wrapper.
- Checkpoints hold no pickle: only the scores told per generation and a CRC of the codes asked.
  ``load_state_dict`` rebuilds the strategy from the seed and replays the history (a few ms per
  generation); a replay that asks different codes than recorded is refused.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

import stimopt
from stimopt.errors import StimoptError

from .normals import PrefetchedNormals

BOUNDS = ("clip", "transform")
SAMPLERS = ("vd", "vkd")  # pycma's restricted Gaussian samplers: VD-CMA (diagonal + one direction), VkD-CMA (k directions)
ADAPT_SIGMA = ("tpa", "csa")  # pycma's step-size rules: two-point adaptation (its choice from 300 dimensions on), cumulative


class CMAES(stimopt.Optimizer):
    accepts = (stimopt.ContinuousSpace,)

    def __init__(self, diagonal: bool = True, sigma0: float = 1.0, bounds: str = "clip", elitist: bool = False,
                 options: dict | None = None, sampler: str | None = None, adapt_sigma: str | None = None,
                 coarse_to_fine: list | None = None, coarse_to_fine_at: list | None = None, coarse_to_fine_step: float | None = None):
        # coarse-to-fine (plugins/cma/progressive.py): search the code space's levels below coarse_to_fine[i] until
        # coarse_to_fine_at[i] of the budget, then all coordinates; null: off
        self.coarse_to_fine = list(coarse_to_fine) if coarse_to_fine else None
        self.coarse_to_fine_at, self.coarse_to_fine_step = list(coarse_to_fine_at or []), coarse_to_fine_step
        if adapt_sigma is not None and adapt_sigma not in ADAPT_SIGMA:
            raise StimoptError(f"cmaes.adapt_sigma must be null (pycma's choice) or one of {', '.join(ADAPT_SIGMA)}, got '{adapt_sigma}'")
        self.adapt_sigma = adapt_sigma
        if sampler is not None and sampler not in SAMPLERS:
            raise StimoptError(f"cmaes.sampler must be null or one of {', '.join(SAMPLERS)}, got '{sampler}'")
        self.sampler = sampler
        if bounds not in BOUNDS:
            raise StimoptError(f"cmaes.bounds must be one of {', '.join(BOUNDS)}, got '{bounds}'")
        if not float(sigma0) > 0:
            raise StimoptError(f"cmaes.sigma0 must be positive, got {sigma0}")
        self.diagonal, self.sigma0, self.bounds, self.elitist = bool(diagonal), float(sigma0), bounds, bool(elitist)
        self.options = dict(options or {})

    def setup(self, space, *, seed, budget, batch_size):
        super().setup(space, seed=seed, budget=budget, batch_size=batch_size)
        if int(batch_size) < 2:
            raise StimoptError(f"cmaes needs a population (batch_size) of at least 2, got {batch_size}")
        self._args = (space, int(seed), int(batch_size))
        self._build()

    def _build(self):
        import cma

        space, seed, popsize = self._args
        if getattr(self, "_normals", None) is not None:
            self._normals.close()
        # a RandomState: what nevergrad's ParametrizedCMA draws from, the same runs; the next generation's
        # normals drawn while the target evaluates this one (normals.py: the same stream, bit for bit)
        self._normals = PrefetchedNormals(np.random.RandomState(seed))
        opts = {"popsize": popsize, "CMA_diagonal": self.diagonal, "CMA_elitist": self.elitist,
                "randn": self._normals, "seed": np.nan,
                "verbose": -9, "verb_disp": 0, "verb_log": 0, "tolx": 0, "tolfun": 0, "tolfunhist": 0,
                "tolflatfitness": np.inf, "tolstagnation": np.inf, "tolconditioncov": np.inf, "maxiter": np.inf}
        bounded = space.low is not None or space.high is not None
        if bounded and self.bounds == "transform":
            opts["bounds"] = [space.low, space.high]
        unknown = [k for k in self.options if k not in cma.CMAOptions()]
        if unknown:
            raise StimoptError(f"cmaes.options: pycma has no option(s) {', '.join(unknown)} (see cma.CMAOptions())")
        if self.sampler is not None:  # a linear-time covariance that learns a few directions fast (replaces diagonal)
            from cma import restricted_gaussian_sampler as rgs

            cls = {"vd": rgs.GaussVDSampler, "vkd": rgs.GaussVkDSampler}[self.sampler]
            opts = cls.extend_cma_options(opts)
            opts["CMA_diagonal"] = False
            opts["CMA_sampler_options"] = {"randn": self._normals}  # the run's seeded draws, not numpy's global state
        if self.adapt_sigma is not None:
            from cma import sigma_adaptation

            opts["AdaptSigma"] = {"tpa": sigma_adaptation.CMAAdaptSigmaTPA, "csa": sigma_adaptation.CMAAdaptSigmaCSA}[self.adapt_sigma]
        opts.update(self.options)
        x0 = np.full(space.dim, space.init_mean, dtype=np.float64)
        if bounded:  # pycma's BoundTransform wants x0 inside the box
            x0 = np.clip(x0, space.low if space.low is not None else -np.inf, space.high if space.high is not None else np.inf)
        if self.coarse_to_fine:
            from . import progressive

            plan = progressive.stages(space.levels, self.coarse_to_fine, self.coarse_to_fine_at, self.budget, popsize)
            self.es = progressive.ProgressiveES(x0, self.sigma0 * space.init_std, opts, plan, self.coarse_to_fine_step)
        else:
            self.es = cma.CMAEvolutionStrategy(x0, self.sigma0 * space.init_std, opts)
        self._clip = bounded and self.bounds == "clip"
        # pycma files every asked solution in a dict keyed by a hash of its bytes (~100 hashes of 14 kB a generation
        # at 1,728 dims) only to look its genotype up again in tell. Without a transformation (no BoundTransform, no
        # fixed variables) and without elitism (which reads the archived genotype) the genotype is the solution
        # itself: pycma's empty archive then, and tell skips the repair it applies to unknown solutions (a no-op
        # on its own samples): the same draws and updates, bit for bit.
        self._lean = (type(self.es) is cma.CMAEvolutionStrategy and self.es.gp.isidentity and not self.es.opts["CMA_elitist"]
                      and not self.es.boundary_handler.has_bounds())
        if self._lean:
            self.es.sent_solutions = cma.evolution_strategy.get_CMASolutionDict(False)()
        self._pending: list = []
        self._told: list[np.ndarray] = []  # raw scores of each generation (NaN: missing)
        self._crcs: list[int] = []
        self._crc = 0
        self.generation = self.n_untold = 0

    def ask(self, n):
        if n > self._args[2]:
            raise StimoptError(f"cmaes was asked for {n} codes but its population is {self._args[2]} (= batch_size)")
        self._pending = self.es.ask()  # the whole population; a short last batch uses its first n
        self._normals.prefetch()
        if self._clip:
            codes = self.space.clip(np.asarray(self._pending[:n])).astype(np.float32)
        else:
            codes = np.array(self._pending[:n], dtype=np.float32)  # one copy, straight to float32
        self._crc = zlib.crc32(codes)  # C-contiguous: the CRC reads its buffer (no bytes copy)
        return codes

    def tell(self, codes, scores):
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        full = np.full(len(self._pending), np.nan)
        full[: len(scores)] = scores
        ok = np.isfinite(full)
        if ok.any():
            loss = np.where(ok, -full, np.max(-full[ok]))  # missing: the worst finite score of the generation
            self.es.tell(self._pending, loss.tolist(), check_points=False if self._lean else None)
        else:
            self.n_untold += 1
        self._pending = []
        self._told.append(scores.copy())
        self._crcs.append(self._crc)
        self.generation += 1

    def state_dict(self):
        sizes = np.array([len(t) for t in self._told], dtype=np.int64)
        scores = np.concatenate(self._told) if self._told else np.zeros(0)
        return {"sizes": sizes, "scores": scores, "crcs": np.array(self._crcs, dtype=np.int64)}

    def load_state_dict(self, state):
        self._build()
        sizes, crcs = np.asarray(state["sizes"]).tolist(), np.asarray(state["crcs"]).tolist()
        scores = np.asarray(state["scores"], dtype=np.float64)
        start = 0
        for g, n in enumerate(sizes):
            self.ask(n)
            if self._crc != crcs[g]:
                raise StimoptError(f"replaying cmaes did not reproduce generation {g}; this run cannot be resumed exactly")
            self.tell(None, scores[start:start + n])
            start += n

    def report(self):
        return {"generations": self.generation, "sigma": float(self.es.sigma), "untold_generations": self.n_untold}

    def describe(self):
        kind = self.sampler.upper() + "-CMA" if self.sampler else "diagonal" if self.diagonal else "full"
        return f"pycma CMA-ES ({kind}, popsize {self._args[2] if hasattr(self, '_args') else '?'}, bounds {self.bounds})"


@stimopt.hookimpl
def register_optimizers(register):
    register("cmaes", CMAES)


@stimopt.hookimpl
def register_config_dirs(register):
    register(str(Path(__file__).parent / "conf"))
