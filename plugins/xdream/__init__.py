"""XDream's optimizers (Xiao & Kreiman 2020): a genetic algorithm, NES and finite-difference
gradient descent, plus the DeePSiM generators (stimopt_plugins.xdream.deepsim) and image encoding.

- ``optimizer=ga``: population = batch; each generation keeps the ``n_conserve`` best codes,
  and breeds the rest: two parents drawn with probability ``exp((s - s_best) / kT)`` where
  ``kT = std(s) / selectivity`` (scores clipped at their 95th percentile), each gene from the
  first parent with probability ``heritability``, then each gene mutated with probability
  ``mutation_rate`` by ``N(0, mutation_size)``. Missing (NaN) scores: the code is presented
  again in the next generation (once; ``retry_missing``), the others breed as usual. Every
  code has an id and its parents' ids, stored per evaluation (``ask_info``): the genealogy.
- ``optimizer=nes``: antithetic natural evolution strategies around a centre:
  ``centre += lr * mean(s_i * eps_i) / radius``.
- ``optimizer=fdgd``: antithetic finite differences along random N(0, radius) steps:
  ``centre += lr * mean((s+ - s-)/2 * step / mean|step|^2)``.

NES/FDGD use the raw scores in XDream; ``normalize=true`` (our default) z-scores each
generation's scores first, so one learning rate fits units whose activations differ in scale.

Initialization from chosen images: ``encode(generator, images)`` optimizes codes so the generator
reproduces the images (XDream's "opt"); ``python -m stimopt_plugins.xdream encode DIR OUT.npy
[overrides]`` writes them, and ``optimizer.init_codes=OUT.npy`` starts any of the three from them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

import stimopt
from stimopt.errors import StimoptError


# -- shared: init codes, state ---------------------------------------------------------------------
def load_codes(path: str, dim: int) -> np.ndarray:
    """[k, dim] float32 codes from a .npy file ([k, dim] or [dim]) or a folder of .npy files."""
    p = Path(str(path)).expanduser()
    if p.is_dir():
        files = sorted(p.glob("*.npy"))
        if not files:
            raise StimoptError(f"init_codes folder {p} holds no .npy files")
        arrays = [np.load(f) for f in files]
    elif p.is_file():
        arrays = [np.load(p)]
    else:
        raise StimoptError(f"init_codes {p} does not exist; write codes with `python -m stimopt_plugins.xdream encode`")
    out = []
    for a in arrays:
        if a.size == 0 or a.size % dim:
            raise StimoptError(f"init_codes in {p} do not fit the generator's {dim}-d codes (got shape {a.shape})")
        out.append(np.asarray(a, np.float32).reshape(-1, dim))
    return np.concatenate(out)


class _XDreamOptimizer(stimopt.Optimizer):
    accepts = (stimopt.ContinuousSpace,)
    _state_keys: tuple[str, ...] = ()

    def __init__(self, init_codes: str | None = None):
        self.init_codes = init_codes

    def setup(self, space, *, seed, budget, batch_size):
        super().setup(space, seed=seed, budget=budget, batch_size=batch_size)
        self.rng = np.random.default_rng(seed)
        self.generation = 0

    def _initial_codes(self) -> np.ndarray | None:
        return None if self.init_codes in (None, "") else load_codes(self.init_codes, self.space.dim)

    def state_dict(self):
        state = {k: getattr(self, k) for k in ("generation", *self._state_keys)}
        state["rng"] = self.rng.bit_generator.state
        return state

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
        for k, v in state.items():
            if k != "rng":
                setattr(self, k, v)


# -- the genetic algorithm -------------------------------------------------------------------------
class Genetic(_XDreamOptimizer):
    _state_keys = ("population", "ids", "parents", "ops", "retried", "next_id", "kT", "n_retried")

    def __init__(self, population_size: int = 20, mutation_rate: float = 0.5, mutation_size: float = 0.5,
                 selectivity: float = 2.0, heritability: float = 0.5, n_conserve: int = 0,
                 retry_missing: bool = True, init_codes: str | None = None):
        super().__init__(init_codes)
        if not 0 <= float(mutation_rate) <= 1:
            raise StimoptError(f"ga.mutation_rate must be in [0, 1], got {mutation_rate}")
        if not float(mutation_size) > 0 or not float(selectivity) > 0:
            raise StimoptError("ga.mutation_size and ga.selectivity must be positive")
        if not 0 <= float(heritability) <= 1:
            raise StimoptError(f"ga.heritability must be in [0, 1], got {heritability}")
        if int(n_conserve) < 0 or int(n_conserve) >= int(population_size):
            raise StimoptError(
                f"ga.n_conserve ({n_conserve}) must be at least 0 and smaller than the population ({population_size})"
            )
        self.population_size, self.n_conserve = int(population_size), int(n_conserve)
        self.mutation_rate, self.mutation_size = float(mutation_rate), float(mutation_size)
        self.selectivity, self.heritability = float(selectivity), max(float(heritability), 1 - float(heritability))
        self.retry_missing = bool(retry_missing)

    def setup(self, space, *, seed, budget, batch_size):
        super().setup(space, seed=seed, budget=budget, batch_size=batch_size)
        if batch_size != self.population_size:
            raise StimoptError(
                f"ga.population_size ({self.population_size}) must equal batch_size ({batch_size}): one batch is one generation"
            )
        pop = self.population_size
        given = self._initial_codes()
        if given is None:
            self.population = self._sample(pop)
            self.ops = ["init"] * pop
            self.parents = [[] for _ in range(pop)]
        else:
            if len(given) > pop:  # XDream draws the population from the given codes at random (seeded)
                given = given[np.sort(self.rng.choice(len(given), size=pop, replace=False))]
            k = len(given)
            self.population, self.parents = given, [[] for _ in range(k)]
            self.ops = ["init_codes"] * k
            if k < pop:  # fill up by breeding the given codes with equal fitness (as XDream does)
                kids, p1, p2 = self._breed(given, np.ones(k), pop - k)
                self.population = np.concatenate([given, kids])
                self.parents += [[f"init{a}", f"init{b}"] for a, b in zip(p1, p2)]
                self.ops += ["init_child"] * (pop - k)
        self.ids = [f"g0_{i}" for i in range(pop)]
        self.next_id, self.retried = pop, [False] * pop
        self.kT, self.n_retried = None, 0

    def _sample(self, n: int) -> np.ndarray:
        s = self.space
        return s.clip(self.rng.normal(s.init_mean, s.init_std, size=(n, s.dim))).astype(np.float32)

    def _breed(self, parents: np.ndarray, fitness: np.ndarray, n: int):
        prob = fitness / fitness.sum()
        p1 = self.rng.choice(len(parents), size=n, p=prob)
        p2 = self.rng.choice(len(parents), size=n, p=prob)
        from_first = self.rng.random((n, parents.shape[1])) < self.heritability
        kids = np.where(from_first, parents[p1], parents[p2])
        mutate = self.rng.random(kids.shape) < self.mutation_rate
        kids = kids + mutate * self.rng.normal(0.0, self.mutation_size, size=kids.shape)
        return self.space.clip(kids).astype(np.float32), p1, p2

    def ask(self, n):
        if n > len(self.population):
            raise StimoptError(f"ga was asked for {n} codes but its population is {len(self.population)}")
        self._asked = n
        return self.population[:n].copy()

    def ask_info(self):
        return [{"id": self.ids[i], "parents": self.parents[i], "op": self.ops[i]} for i in range(self._asked)]

    def tell(self, codes, scores):
        scores = np.asarray(scores, dtype=np.float64)
        pop, codes = self.population_size, np.asarray(codes, np.float32)
        ids = self.ids[: len(codes)]
        missing = ~np.isfinite(scores)
        retry = [i for i in np.flatnonzero(missing) if self.retry_missing and not self.retried[i]][:pop - self.n_conserve]
        self.n_retried += len(retry)
        valid = np.flatnonzero(~missing)
        new_codes, new_ids, new_parents, new_ops, new_retried = [], [], [], [], []

        def add(code, cid, parents, op, retried=False):
            new_codes.append(code)
            new_ids.append(cid)
            new_parents.append(parents)
            new_ops.append(op)
            new_retried.append(retried)

        n_breed = pop - len(retry)
        if valid.size:
            s = scores[valid]
            order = np.argsort(-s, kind="stable")
            ranked, s = codes[valid][order], s[order]
            ranked_ids = [ids[i] for i in valid[order]]
            self.kT = max(float(np.std(s)) / self.selectivity, 1e-8)
            s = np.minimum(s, np.percentile(s, 95))  # an outlier does not take over the population
            fitness = np.exp((s - s[0]) / self.kT)
            n_keep = min(self.n_conserve, valid.size, n_breed)
            for j in range(n_keep):
                add(ranked[j], ranked_ids[j], [ranked_ids[j]], "conserve")
            n_kids = n_breed - n_keep
            if n_kids:
                kids, p1, p2 = self._breed(ranked, fitness, n_kids)
                for kid, a, b in zip(kids, p1, p2):
                    add(kid, self._new_id(), [ranked_ids[a], ranked_ids[b]], "child")
        elif n_breed:  # nothing scored and nothing left to retry: start afresh from random codes
            for code in self._sample(n_breed):
                add(code, self._new_id(), [], "init")
        for i in retry:
            add(codes[i], ids[i], [ids[i]], "retry_missing", True)
        self.population = np.stack(new_codes).astype(np.float32)
        self.ids, self.parents, self.ops, self.retried = new_ids, new_parents, new_ops, new_retried
        self.generation += 1

    def _new_id(self) -> str:
        self.next_id += 1
        return f"g{self.generation + 1}_{self.next_id - 1}"

    def report(self):
        return {"generations": self.generation, "missing_scores_retried": self.n_retried,
                "last_kT": self.kT}

    def describe(self):
        return (f"xdream-GA(pop={self.population_size}, mutation {self.mutation_rate:g}/{self.mutation_size:g}, "
                f"selectivity={self.selectivity:g}, heritability={self.heritability:g}, n_conserve={self.n_conserve})")


# -- NES and FDGD: antithetic sampling around a centre ------------------------------------------------
class _Antithetic(_XDreamOptimizer):
    _state_keys = ("center", "steps")

    def __init__(self, n_samples: int = 20, search_radius: float = 1.25, learning_rate: float = 1.25,
                 normalize: bool = True, init_codes: str | None = None, init_center: str = "random"):
        super().__init__(init_codes)
        if int(n_samples) < 2 or not float(search_radius) > 0 or not float(learning_rate) > 0:
            raise StimoptError(f"{type(self).__name__.lower()}: n_samples >= 2, search_radius > 0 and learning_rate > 0 are needed")
        if init_center not in ("random", "mean"):
            raise StimoptError(f"{type(self).__name__.lower()}.init_center must be random (XDream: one of the "
                               f"init_codes, drawn by the seed) or mean (their mean), got '{init_center}'")
        self.n_samples, self.radius, self.lr = int(n_samples), float(search_radius), float(learning_rate)
        self.normalize, self.init_center = bool(normalize), init_center

    def setup(self, space, *, seed, budget, batch_size):
        super().setup(space, seed=seed, budget=budget, batch_size=batch_size)
        if batch_size != self.n_samples:
            raise StimoptError(f"{type(self).__name__.lower()}.n_samples ({self.n_samples}) must equal batch_size ({batch_size})")
        given = self._initial_codes()
        if given is None:
            self.center = np.full(space.dim, space.init_mean, np.float64)
        elif self.init_center == "mean":
            self.center = given.mean(axis=0).astype(np.float64)
        else:  # XDream: one of the given codes, drawn at random, is the centre
            self.center = given[int(self.rng.integers(len(given)))].astype(np.float64)
        self.steps = None

    def ask(self, n):
        half = (n + 1) // 2
        self.steps = self.rng.standard_normal((half, self.space.dim)) * self.radius
        codes = np.concatenate([self.center + self.steps, self.center - self.steps])
        order = np.stack([np.arange(half), np.arange(half) + half], axis=1).ravel()[:n]  # pairs side by side
        self._order = order
        return self.space.clip(codes[order]).astype(np.float32)

    def ask_info(self):
        return [{"pair": int(i % len(self.steps)), "sign": 1 if i < len(self.steps) else -1} for i in self._order]

    def _paired(self, scores):
        """(s+, s-, steps) for the complete pairs with both scores present."""
        half = len(self.steps)
        full = np.full(2 * half, np.nan)
        full[self._order] = scores
        plus, minus = full[:half], full[half:]
        ok = np.isfinite(plus) & np.isfinite(minus)
        if self.normalize and ok.any():
            both = np.concatenate([plus[ok], minus[ok]])
            sd = both.std()
            mean = both.mean()
            plus, minus = (plus - mean) / (sd if sd > 0 else 1.0), (minus - mean) / (sd if sd > 0 else 1.0)
        return plus[ok], minus[ok], self.steps[ok]

    def tell(self, codes, scores):
        plus, minus, steps = self._paired(np.asarray(scores, np.float64))
        if len(steps):
            self.center = self.center + self.lr * self._gradient(plus, minus, steps)
            if self.space.low is not None or self.space.high is not None:
                self.center = self.space.clip(self.center)
        self.generation += 1

    def report(self):
        return {"generations": self.generation, "center_norm": float(np.linalg.norm(self.center))}


class NES(_Antithetic):
    """``search_radius_learning_rate`` > 0 adapts the radius as XDream does:
    ``radius += rlr * mean(s_i * (eps_i**2 - 1)) / radius``, at least ``min_search_radius``."""

    _state_keys = ("center", "steps", "radius")

    def __init__(self, n_samples: int = 20, search_radius: float = 1.25, learning_rate: float = 1.75,
                 normalize: bool = True, search_radius_learning_rate: float = 0.0, min_search_radius: float = 0.01,
                 init_codes: str | None = None, init_center: str = "random"):
        super().__init__(n_samples, search_radius, learning_rate, normalize, init_codes, init_center)
        if float(search_radius_learning_rate) < 0 or not float(min_search_radius) > 0:
            raise StimoptError("nes: search_radius_learning_rate >= 0 and min_search_radius > 0 are needed")
        self.radius_lr, self.min_radius = float(search_radius_learning_rate), float(min_search_radius)
        self.radius = max(self.radius, self.min_radius)

    def _gradient(self, plus, minus, steps):
        eps = steps / self.radius
        grad = ((plus - minus)[:, None] * eps).sum(axis=0) / (2 * len(eps)) / self.radius
        if self.radius_lr > 0:  # eps and -eps share eps**2: a pair contributes (s+ + s-)
            grad_r = ((plus + minus)[:, None] * (eps**2 - 1)).mean() / 2 / self.radius
            self.radius = max(self.radius + self.radius_lr * float(grad_r), self.min_radius)
        return grad

    def report(self):
        return {**super().report(), "search_radius": self.radius}

    def describe(self):
        rlr = f", radius lr={self.radius_lr:g}" if self.radius_lr > 0 else ""
        return f"xdream-NES(n={self.n_samples}, radius={self.radius:g}, lr={self.lr:g}{rlr}, normalize={self.normalize})"


class FDGD(_Antithetic):
    def _gradient(self, plus, minus, steps):
        norm = np.abs(steps).mean(axis=1)
        return (((plus - minus) / 2 / norm**2)[:, None] * steps).mean(axis=0)

    def describe(self):
        return f"xdream-FDGD(n={self.n_samples}, radius={self.radius:g}, lr={self.lr:g}, normalize={self.normalize})"


from stimopt_plugins.xdream.encoding import encode, main, read_images  # noqa: E402,F401  (public API)


@stimopt.hookimpl
def register_generators(register):
    from stimopt_plugins.xdream.deepsim import DeepSimGenerator

    register("deepsim", DeepSimGenerator)


@stimopt.hookimpl
def register_config_dirs(register):
    register(str(Path(__file__).parent / "conf"))


@stimopt.hookimpl
def register_optimizers(register):
    register("ga", Genetic)
    register("nes", NES)
    register("fdgd", FDGD)

