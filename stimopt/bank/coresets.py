"""Approximate farthest-point coresets by walking the kNN graph (ImageBeagle, appendix A.1.6).

Start at a random image; repeatedly add the farthest of its saved neighbours that is not yet in
the coreset and move there. The graph only holds k neighbours, so the traversal is approximate;
several coresets from different random starts make up for it. When every saved neighbour is
already taken, the walk jumps to a random image not in the coreset.
"""
from __future__ import annotations

import numpy as np

from stimopt.errors import StimoptError


def default_sizes(n: int, n_coresets: int | None = None, size: int | None = None) -> tuple[int, int]:
    """Paper: 10 coresets of 10k images for 30M. Scaled down: at most N/20 images per coreset."""
    n_coresets = 10 if n_coresets is None else int(n_coresets)
    size = min(10_000, max(1, n // 20)) if size is None else int(size)
    if n_coresets <= 0 or not 1 <= size <= n:
        raise StimoptError(f"coresets: need >= 1 coreset of 1..{n} images, got {n_coresets} x {size}")
    return n_coresets, size


def traverse(graph: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """One coreset of ``size`` distinct images (int64), in traversal order."""
    n = len(graph)
    taken = np.zeros(n, dtype=bool)
    out = np.empty(size, dtype=np.int64)
    current = int(rng.integers(n))
    for i in range(size):
        out[i] = current
        taken[current] = True
        if i + 1 == size:
            break
        row = np.asarray(graph[current])
        free = row[~taken[row]]
        if len(free):
            current = int(free[-1])  # the farthest saved neighbour not yet in the coreset
        else:
            rest = np.flatnonzero(~taken)
            current = int(rest[rng.integers(len(rest))])
    return out


def build_coresets(graph: np.ndarray, n_coresets: int | None = None, size: int | None = None, seed: int = 0) -> np.ndarray:
    """[n_coresets, size] int64 image indices."""
    n_coresets, size = default_sizes(len(graph), n_coresets, size)
    rng = np.random.default_rng(seed)
    return np.stack([traverse(graph, size, rng) for _ in range(n_coresets)])
