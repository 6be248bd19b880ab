"""pycma's ``randn`` for ``optimizer=cmaes``: the run's seeded stream of standard normals, with the
next generation's drawn in a thread while the target evaluates this one.

A generation's draws (20 x 1,728 normals at the default: ~1 ms of the loop's own time) do not
depend on the scores told before them, so they need not wait for them. The stream is served in
order whatever shapes pycma asks for (``(popsize, dim)`` for the samples, ``(1, dim)`` for TPA's
rescaling), each request taking the next values of the prefetched block, then of the generator:
the codes are bit for bit those of drawing on demand, at any timing.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np


class PrefetchedNormals:
    def __init__(self, rng: np.random.RandomState):
        self.rng = rng
        self._ready = np.empty(0)  # drawn, not yet served: the stream's next values
        self._drawing: Future | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._served_since_prefetch = 0

    def __call__(self, *shape):
        """``RandomState.randn(*shape)``: the next values of the stream."""
        n = int(np.prod(shape, dtype=np.int64))
        self._served_since_prefetch += n
        if self._drawing is not None:
            block, self._drawing = self._drawing.result(), None
            self._ready = np.concatenate([self._ready, block]) if self._ready.size else block
        if self._ready.size < n:
            more = self.rng.standard_normal(n - self._ready.size)
            self._ready = np.concatenate([self._ready, more]) if self._ready.size else more
        out, self._ready = self._ready[:n], self._ready[n:]
        return out.reshape(shape) if shape else float(out[0])

    def prefetch(self) -> None:
        """Start drawing as many values as were served since the last prefetch (one generation's)."""
        n, self._served_since_prefetch = self._served_since_prefetch, 0
        if self._drawing is not None or n == 0:
            return
        if self._pool is None:  # one thread for the run: starting one per generation costs ~0.6 ms
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stimopt-cmaes-normals")
        self._drawing = self._pool.submit(self.rng.standard_normal, n)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
