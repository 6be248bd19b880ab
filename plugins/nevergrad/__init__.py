"""Nevergrad optimizers over continuous code spaces, through nevergrad's own ask/tell.

``name`` is any optimizer in ``nevergrad.optimizers.registry`` (``CMA``, ``DiagonalCMA``,
``TwoPointsDE``, ``NGOpt``, ...) or a configurable family in ``nevergrad.families`` with
``options`` (``ParametrizedCMA`` with ``popsize``/``diagonal``...). ``num_workers`` is the batch
size, so one batch is one generation. nevergrad minimizes: it is told ``-score``. Candidates with
a missing (NaN) score are not told, as if that trial never happened.

Resume without pickle: nevergrad's own serialization is a pickle of the optimizer, which a
crafted file could turn into code execution. The checkpoint instead holds what was told (the
scores of each generation, and a CRC of the codes asked); resuming rebuilds the optimizer from
the seed and replays the same ask/tell sequence, which is deterministic (nevergrad draws from
the parametrization's seeded random state), and refuses to go on if a replayed generation
asks different codes than were recorded.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

import stimopt
from stimopt.errors import StimoptError

ARCHIVE_KEEP = 20  # nevergrad's archive only serves recommend(); keep it small so checkpoints stay small


class NevergradOptimizer(stimopt.Optimizer):
    accepts = (stimopt.ContinuousSpace,)

    def __init__(self, name: str = "ParametrizedCMA", options: dict | None = None):
        self.name = name
        self.options = dict(options or {})

    def _factory(self):
        import nevergrad as ng

        if self.name in ng.optimizers.registry:
            if self.options:
                raise StimoptError(f"nevergrad optimizer '{self.name}' takes no options; use a family such as ParametrizedCMA")
            return ng.optimizers.registry[self.name]
        family = getattr(ng.families, self.name, None)
        if family is None or not isinstance(family, type):
            examples = ", ".join(["CMA", "DiagonalCMA", "TwoPointsDE", "NGOpt", "PSO", "ParametrizedCMA"])
            raise StimoptError(f"unknown nevergrad optimizer '{self.name}'; any name in nevergrad's registry ({len(ng.optimizers.registry)} of them, e.g. {examples})")
        try:
            return family(**self.options)
        except TypeError as exc:
            raise StimoptError(f"nevergrad family {self.name}: {exc}") from None

    def setup(self, space, *, seed, budget, batch_size):
        super().setup(space, seed=seed, budget=budget, batch_size=batch_size)
        self._args = (space, int(seed), int(budget), int(batch_size))
        self._build()

    def _build(self):
        import nevergrad as ng
        from nevergrad.optimization.utils import Pruning

        space, seed, budget, batch_size = self._args
        param = ng.p.Array(init=np.full(space.dim, space.init_mean, dtype=np.float64))
        if space.low is not None or space.high is not None:
            param.set_bounds(space.low, space.high, method="clipping")
        param.set_mutation(sigma=space.init_std)
        param.random_state = np.random.RandomState(seed)
        self.ng = self._factory()(parametrization=param, budget=budget, num_workers=batch_size)
        self.ng.pruning = Pruning(min_len=1, max_len=ARCHIVE_KEEP)
        self._pending: list = []
        self._told: list[np.ndarray] = []   # scores told, one array per generation (NaN: missing)
        self._crcs: list[int] = []          # CRC32 of each generation's asked codes
        self._crc = 0

    def ask(self, n):
        self._pending = [self.ng.ask() for _ in range(n)]
        codes = np.stack([c.value for c in self._pending]).astype(np.float32)
        self._crc = zlib.crc32(np.ascontiguousarray(codes).tobytes())
        return codes

    def tell(self, codes, scores):
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        for cand, s in zip(self._pending, scores):
            if np.isfinite(s):
                self.ng.tell(cand, -float(s))
        self._pending = []
        self._told.append(scores.copy())
        self._crcs.append(self._crc)

    def state_dict(self):
        sizes = np.array([len(t) for t in self._told], dtype=np.int64)
        scores = np.concatenate(self._told) if self._told else np.zeros(0)
        return {"sizes": sizes, "scores": scores, "crcs": np.array(self._crcs, dtype=np.int64), "budget": self._args[2]}

    def load_state_dict(self, state):
        if "sizes" not in state:
            raise StimoptError("this checkpoint holds a pickled nevergrad optimizer (an older stimopt); "
                               "it is not loaded; start a new run")
        space, seed, _, batch_size = self._args
        self._args = (space, seed, int(state["budget"]), batch_size)  # as first built: a resume may change the budget
        self._build()
        sizes, crcs = np.asarray(state["sizes"]).tolist(), np.asarray(state["crcs"]).tolist()
        scores = np.asarray(state["scores"], dtype=np.float64)
        for g, (start, n) in enumerate(zip(np.cumsum([0, *sizes[:-1]]).tolist(), sizes)):
            self.ask(n)
            if self._crc != crcs[g]:
                raise StimoptError(f"replaying nevergrad:{self.name} did not reproduce generation {g} "
                                   "(the optimizer is not deterministic from its seed); this run cannot be resumed exactly")
            self.tell(None, scores[start:start + n])

    def describe(self):
        return f"nevergrad:{self.name}"


@stimopt.hookimpl
def register_optimizers(register):
    register("nevergrad", NevergradOptimizer)


@stimopt.hookimpl
def register_config_dirs(register):
    register(str(Path(__file__).parent / "conf"))
