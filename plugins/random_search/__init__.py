"""Random search: the baseline every optimizer must beat. Works on continuous and bank spaces.

Continuous: uniform in a bounded box, else normal(init_mean, init_std). Bank: indices drawn
without replacement (nothing is evaluated twice), so memory grows with the budget, not the bank.
"""
from __future__ import annotations

from pathlib import Path
import numpy as np

import stimopt
from stimopt.errors import StimoptError


class RandomSearch(stimopt.Optimizer):
    accepts = (stimopt.ContinuousSpace, stimopt.BankSpace)
    asks_ahead = True  # its ask never reads what it was told: lookahead=1 runs exactly the same search

    def setup(self, space, *, seed, budget, batch_size):
        super().setup(space, seed=seed, budget=budget, batch_size=batch_size)
        self.rng = np.random.default_rng(seed)
        self.seen: set[int] = set()
        if isinstance(space, stimopt.BankSpace) and budget > space.size:
            raise StimoptError(f"budget {budget} exceeds the bank's {space.size} images; random search never repeats one")

    def ask(self, n):
        s = self.space
        if isinstance(s, stimopt.BankSpace):
            out: list[int] = []
            while len(out) < n:
                for i in self.rng.integers(0, s.size, size=2 * (n - len(out)) + 8).tolist():
                    if i not in self.seen and len(out) < n:
                        self.seen.add(i)
                        out.append(i)
            return np.array(out, dtype=np.int64)
        if s.low is not None and s.high is not None:
            return self.rng.uniform(s.low, s.high, size=(n, s.dim)).astype(np.float32)
        return s.clip(self.rng.normal(s.init_mean, s.init_std, size=(n, s.dim))).astype(np.float32)

    def tell(self, codes, scores):
        pass

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state, "seen": np.fromiter(self.seen, dtype=np.int64)}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.seen = set(state["seen"].tolist())


@stimopt.hookimpl
def register_optimizers(register):
    register("random", RandomSearch)


@stimopt.hookimpl
def register_config_dirs(register):
    register(str(Path(__file__).parent / "conf"))
