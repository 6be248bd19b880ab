"""ImageBeagle: a bank of images as a generator, and the graph walk (Algorithm 1) as an optimizer.

``generator=imagebeagle generator.bank=PATH`` (default: the embedded demo bank): codes are bank
indices, images are decoded lazily. ``optimizer=walk``: Algorithm 1 of the seed paper:

    while fewer than B evaluations:
        global step: evaluate the next L coreset images (cycling through the coresets)
        M times: start at the best evaluated image not yet visited; visit it and evaluate its
                 K nearest neighbours; move to the best neighbour while it beats the current image

Nothing is evaluated twice: "its K nearest neighbours" are the K nearest *not yet evaluated*
ones (scanning the graph row), and already evaluated neighbours count with their stored score.
Batches: one request (L coreset images, or K neighbours) is what the algorithm needs before its
next decision; when a batch has room left after a request, it is filled with the upcoming coreset
images, which are then taken off the next global step (so the set of images the walk evaluates
follows the sequential algorithm; with ``batch_size = K = L`` it is exactly sequential).
The run's seed picks the coreset the global steps begin with (seed mod the number of coresets);
when all coresets are used up, global steps draw unevaluated images at random.
"""
from __future__ import annotations

from pathlib import Path
import heapq
from collections import deque

import numpy as np

import stimopt
from stimopt.errors import StimoptError

GLOBAL, START, STEP = "global", "start", "step"


class ImageBeagleGenerator(stimopt.Generator):
    """Images of a built bank; codes are int64 indices [B]. ``size``: output size (default: the bank's)."""

    space_type = stimopt.BankSpace

    def __init__(self, bank: str | None = None, size: int | None = None, device: str = "auto"):
        from stimopt.bank import demo_bank_path, load_bank

        self.bank = load_bank(bank if bank not in (None, "", "demo") else demo_bank_path(build=True, log=_log))
        self.size = int(size) if size else self.bank.image_size
        self._space = self.bank.space

    @property
    def space(self):
        return self._space

    def generate(self, codes):
        codes = np.asarray(codes)
        if codes.ndim == 2 and codes.shape[1] == 1:
            codes = codes[:, 0]
        if codes.ndim != 1 or not np.issubdtype(codes.dtype, np.number) or np.any(codes != np.round(codes)):
            raise StimoptError(f"imagebeagle codes are bank indices [B] (integers), got an array of shape {list(codes.shape)}")
        return self.bank.images(codes.astype(np.int64), self.size)

    def describe(self) -> str:
        return f"imagebeagle:{self.bank.describe()}"


def _log(message: str) -> None:
    import sys

    print(f"stimopt: {message}", file=sys.stderr, flush=True)


class Walk(stimopt.Optimizer):
    """ImageBeagle's walk over a bank's kNN graph. L: coreset images per global step; K: neighbours
    evaluated per local step; M: local searches per global step (the budget B is the run's)."""

    accepts = (stimopt.BankSpace,)

    def __init__(self, L: int = 40, K: int = 10, M: int = 5):
        if min(L, K, M) <= 0:
            raise StimoptError(f"walk needs positive L, K and M, got L={L}, K={K}, M={M}")
        self.L, self.K, self.M = int(L), int(K), int(M)

    # -- setup and state ---------------------------------------------------------------------
    def setup(self, space, *, seed, budget, batch_size):
        super().setup(space, seed=seed, budget=budget, batch_size=batch_size)
        if space.graph is None:
            raise StimoptError("optimizer=walk needs a bank with a kNN graph; build one with `stimopt-bank build`")
        if budget > space.size:
            raise StimoptError(f"budget {budget} exceeds the bank's {space.size} images; the walk never evaluates an image twice")
        self.graph = space.graph
        cores = tuple(space.coresets) or (np.random.default_rng(seed).permutation(space.size),)
        start = seed % len(cores)  # the run's seed picks the coreset to begin with (then they cycle)
        self.coresets = cores[start:] + cores[:start]
        self.rng = np.random.default_rng(seed)
        self.scores: dict[int, float] = {}      # evaluated (asked) -> score; NaN until told
        self.visited: set[int] = set()
        self.heap: list[tuple[float, int]] = []  # (-score, index) of evaluated images, lazily cleaned
        self.queue: deque[int] = deque()         # requested, not yet asked
        self.phase, self.current, self.searches, self.scanned = GLOBAL, -1, 0, []
        self.core_pos = [0, 0]                    # coreset number, position in it
        self.credit = 0                           # coreset images prefetched into earlier batches
        self.counts = {"global_steps": 0, "local_searches": 0, "local_steps": 0, "extra_neighbours": 0, "prefetched": 0, "random": 0}
        self._info: list[dict] = []
        self._pending: list[int] = []

    def state_dict(self):
        idx = np.fromiter(self.scores.keys(), dtype=np.int64, count=len(self.scores))
        return {
            "idx": idx, "score": np.fromiter(self.scores.values(), dtype=np.float64, count=len(self.scores)),
            "visited": np.fromiter(self.visited, dtype=np.int64, count=len(self.visited)),
            "queue": np.array(self.queue, dtype=np.int64), "phase": self.phase, "current": self.current,
            "searches": self.searches, "scanned": np.array(self.scanned, dtype=np.int64), "core_pos": list(self.core_pos),
            "credit": self.credit, "counts": dict(self.counts), "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state):
        self.scores = dict(zip(state["idx"].tolist(), state["score"].tolist()))
        self.visited = set(state["visited"].tolist())
        self.queue = deque(state["queue"].tolist())
        self.phase, self.current, self.searches = state["phase"], int(state["current"]), int(state["searches"])
        self.scanned = state["scanned"].tolist()
        self.core_pos, self.credit, self.counts = list(state["core_pos"]), int(state["credit"]), dict(state["counts"])
        self.rng.bit_generator.state = state["rng"]
        self.heap = [(-s, i) for i, s in self.scores.items() if i not in self.visited and np.isfinite(s)]
        heapq.heapify(self.heap)

    # -- the algorithm -----------------------------------------------------------------------
    def _next_coreset(self, n: int) -> list[int]:
        """Up to n unevaluated coreset images, in order, cycling to the next coreset when one ends."""
        out: list[int] = []
        while len(out) < n and self.core_pos[0] < len(self.coresets):
            c, p = self.core_pos
            core = self.coresets[c]
            while p < len(core) and len(out) < n:
                i = int(core[p])
                p += 1
                if i not in self.scores and i not in out:
                    out.append(i)
            self.core_pos = [c, p] if p < len(core) else [c + 1, 0]
        if len(out) < n:  # all coresets used up: unevaluated images at random
            out += self._random(n - len(out), exclude=out)
        return out

    def _random(self, n: int, exclude=()) -> list[int]:
        out: list[int] = []
        taken = set(exclude)
        free = self.space.size - len(self.scores) - len(taken)
        while len(out) < min(n, free):
            for i in self.rng.integers(0, self.space.size, size=2 * n + 8).tolist():
                if i not in self.scores and i not in taken and len(out) < n:
                    taken.add(i)
                    out.append(i)
        self.counts["random"] += len(out)
        return out

    def _neighbours(self, x: int) -> list[int]:
        """Scan x's graph row until K unevaluated neighbours are found; remember what was scanned."""
        new, scanned = [], []
        for j in np.asarray(self.graph[x]).tolist():
            if j < 0:
                continue
            scanned.append(j)
            if j not in self.scores:
                new.append(j)
                if len(new) == self.K:
                    break
        self.scanned = scanned
        return new

    def _fill(self, n: int) -> tuple[list[int], str]:
        """Room left in a batch while the algorithm waits for its scores. During a local search:
        the current image's next nearest unevaluated neighbours (beyond K; they join the step's
        neighbour set). Otherwise, or when its graph row is used up: the upcoming coreset images,
        taken off the next global step."""
        if self.phase == STEP and self.current >= 0:
            row = np.asarray(self.graph[self.current]).tolist()
            seen = set(self.scanned)
            extra = []
            for j in row:
                if j >= 0 and j not in seen and j not in self.scores:
                    extra.append(j)
                    if len(extra) == n:
                        break
            if extra:
                self.scanned = self.scanned + extra
                self.counts["extra_neighbours"] += len(extra)
                return extra, "step"
        extra = self._next_coreset(n)
        self.credit += len(extra)
        self.counts["prefetched"] += len(extra)
        return extra, "prefetch"

    def _best_unvisited(self) -> int | None:
        while self.heap:
            _, i = heapq.heappop(self.heap)
            if i not in self.visited:
                return i
        return None

    def _score(self, i: int) -> float:
        s = self.scores.get(i, np.nan)
        return s if np.isfinite(s) else -np.inf

    def _advance(self) -> list[int]:
        """The next request of the sequential algorithm (all earlier evaluations are scored)."""
        for _ in range(100_000):
            if self.phase == GLOBAL:
                want = max(0, self.L - self.credit)
                self.credit = max(0, self.credit - self.L)
                self.phase, self.searches = START, 0
                self.counts["global_steps"] += 1
                request = self._next_coreset(want)
                if request:
                    return request
            elif self.phase == START:
                x = self._best_unvisited() if self.searches < self.M else None
                if x is None:
                    self.phase = GLOBAL
                    continue
                self.searches += 1
                self.counts["local_searches"] += 1
                self.visited.add(x)
                self.current, self.phase = x, STEP
                request = self._neighbours(x)
                self.counts["local_steps"] += 1
                if request:
                    return request
            else:  # STEP: the neighbours of the current image are scored
                best = max(self.scanned, key=self._score, default=None)
                if best is not None and self._score(best) > self._score(self.current):
                    self.visited.add(best)
                    self.current = best
                    request = self._neighbours(best)
                    self.counts["local_steps"] += 1
                    if request:
                        return request
                else:
                    self.phase = START
        raise StimoptError("walk: no unevaluated image is left to propose")

    def ask(self, n):
        out: list[int] = []
        info: list[dict] = []
        while len(out) < n:
            if self.queue:
                i = self.queue.popleft()
                if i in self.scores:
                    continue
                out.append(i)
                self.scores[i] = np.nan
                info.append({"walk": self.phase, "search": self.counts["local_searches"]})
            elif not out:
                self.queue.extend(self._advance())
            else:  # the algorithm waits for this batch's scores: fill the batch (see _fill)
                extra, kind = self._fill(n - len(out))
                for i in extra:
                    self.scores[i] = np.nan
                out += extra
                info += [{"walk": kind}] * len(extra)
                if not extra:
                    raise StimoptError("walk: the bank has no unevaluated image left")
        self._info = info
        return np.array(out, dtype=np.int64)

    def ask_info(self):
        return self._info

    def tell(self, codes, scores):
        for i, s in zip(np.asarray(codes).reshape(-1).tolist(), np.asarray(scores, dtype=np.float64).tolist()):
            self.scores[i] = s
            if np.isfinite(s) and i not in self.visited:
                heapq.heappush(self.heap, (-s, i))

    # -- findings ----------------------------------------------------------------------------
    def report(self):
        from stimopt.bank.tuning import graph_path

        finite = {i: s for i, s in self.scores.items() if np.isfinite(s)}
        if not finite:
            return {"walk": dict(self.counts)}
        best = max(finite, key=finite.get)
        worst = min(finite, key=finite.get)
        path = graph_path(self.graph, worst, best)
        return {
            "walk": dict(self.counts), "L": self.L, "K": self.K, "M": self.M,
            "best_index": int(best), "worst_index": int(worst),
            "tuning_path": [int(i) for i in path] if path is not None else None,
        }

    def describe(self):
        return f"walk(L={self.L}, K={self.K}, M={self.M})"


@stimopt.hookimpl
def register_generators(register):
    register("imagebeagle", ImageBeagleGenerator)


@stimopt.hookimpl
def register_optimizers(register):
    register("walk", Walk)


@stimopt.hookimpl
def register_config_dirs(register):
    register(str(Path(__file__).parent / "conf"))
