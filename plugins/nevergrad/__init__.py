"""Nevergrad optimizers over continuous code spaces, through nevergrad's own ask/tell.

``name`` is any optimizer in ``nevergrad.optimizers.registry`` (``CMA``, ``DiagonalCMA``,
``TwoPointsDE``, ``NGOpt``, ...) or a configurable family in ``nevergrad.families`` with
``options`` (``ParametrizedCMA`` with ``popsize``/``diagonal``...). ``num_workers`` is the batch
size, so one batch is one generation. nevergrad minimizes: it is told ``-score``. Candidates with
a missing (NaN) score are not told, as if that trial never happened.
"""
from __future__ import annotations

from pathlib import Path
import pickle

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
        import nevergrad as ng
        from nevergrad.optimization.utils import Pruning

        super().setup(space, seed=seed, budget=budget, batch_size=batch_size)
        param = ng.p.Array(init=np.full(space.dim, space.init_mean, dtype=np.float64))
        if space.low is not None or space.high is not None:
            param.set_bounds(space.low, space.high, method="clipping")
        param.set_mutation(sigma=space.init_std)
        param.random_state = np.random.RandomState(seed)
        self.ng = self._factory()(parametrization=param, budget=budget, num_workers=batch_size)
        self.ng.pruning = Pruning(min_len=1, max_len=ARCHIVE_KEEP)
        self._pending: list = []

    def ask(self, n):
        self._pending = [self.ng.ask() for _ in range(n)]
        return np.stack([c.value for c in self._pending]).astype(np.float32)

    def tell(self, codes, scores):
        for cand, s in zip(self._pending, scores):
            if np.isfinite(s):
                self.ng.tell(cand, -float(s))
        self._pending = []

    def state_dict(self):
        return {"ng": pickle.dumps(self.ng, protocol=pickle.HIGHEST_PROTOCOL)}

    def load_state_dict(self, state):
        self.ng = pickle.loads(state["ng"])
        self._pending = []

    def describe(self):
        return f"nevergrad:{self.name}"


@stimopt.hookimpl
def register_optimizers(register):
    register("nevergrad", NevergradOptimizer)


@stimopt.hookimpl
def register_config_dirs(register):
    register(str(Path(__file__).parent / "conf"))
