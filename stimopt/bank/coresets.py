"""Coresets: orderings of diverse bank images for the walk's global steps (ImageBeagle, A.1.6).

Two methods:

- ``kcenter`` (default): greedy farthest-point traversal in feature space (Gonzalez' k-center
  greedy, the coreset of Sener & Savarese 2017, which the paper cites): start at a random image,
  repeatedly add the image farthest from every image already chosen; one coreset per random start.
  Exact on a random sample of at most ``sample`` images (the whole bank below that), so its cost
  is size x sample x d multiply-adds per coreset whatever the bank's size.
- ``graph``: the paper's approximation for banks where only the kNN graph is at hand: start at a
  random image; repeatedly add the farthest of its saved neighbours that is not yet in the coreset
  and move there (when every saved neighbour is taken, jump to a random image not yet in it).

On the demo bank the graph traversal makes a chain of mutual neighbours (each step stays inside
the current image's k nearest), so a global step's L images all come from one region; measured
with the walk (``benchmarks/walk_efficiency.py``), the median evaluations to a unit's top 0.1%
are about four times fewer with ``kcenter`` (see docs/imagebeagle.md).
"""
from __future__ import annotations

import numpy as np

from stimopt.errors import StimoptError

METHODS = ("kcenter", "graph")
DEFAULT_SAMPLE = 20_000


def default_sizes(n: int, n_coresets: int | None = None, size: int | None = None) -> tuple[int, int]:
    """Paper: 10 coresets of 10k images for 30M. Scaled down: at most N/20 images per coreset."""
    n_coresets = 10 if n_coresets is None else int(n_coresets)
    size = min(10_000, max(1, n // 20)) if size is None else int(size)
    if n_coresets <= 0 or not 1 <= size <= n:
        raise StimoptError(f"coresets: need >= 1 coreset of 1..{n} images, got {n_coresets} x {size}")
    return n_coresets, size


def farthest_points(x: np.ndarray, size: int, n_coresets: int, rng: np.random.Generator,
                    sample: int = DEFAULT_SAMPLE) -> np.ndarray:
    """[n_coresets, size] k-center-greedy coresets (int64 bank indices, in order), one per random start,
    grown in lockstep: each step is one matrix product of the sample with the newest members."""
    n = len(x)
    sample = max(int(sample), 2 * size, n_coresets)
    rows = np.arange(n) if n <= sample else np.sort(rng.choice(n, size=sample, replace=False))
    xs = np.ascontiguousarray(x[rows], dtype=np.float32)
    sq = np.einsum("ij,ij->i", xs, xs)
    nearest = np.full((n_coresets, len(rows)), np.inf, dtype=np.float32)  # squared distance to each coreset
    out = np.empty((n_coresets, size), dtype=np.int64)
    every = np.arange(n_coresets)
    current = rng.choice(len(rows), size=n_coresets, replace=False)
    for i in range(size):
        out[:, i] = rows[current]
        np.minimum(nearest, sq[None, :] - 2.0 * (xs[current] @ xs.T) + sq[current, None], out=nearest)
        nearest[every, current] = -np.inf  # chosen: never again (rounding could leave it slightly above 0)
        current = nearest.argmax(axis=1)
    return out


def traverse(graph: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """One graph-traversal coreset of ``size`` distinct images (int64), in traversal order."""
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


def build_coresets(graph: np.ndarray | None, n_coresets: int | None = None, size: int | None = None, seed: int = 0, *,
                   features: np.ndarray | None = None, method: str = "kcenter", sample: int = DEFAULT_SAMPLE) -> np.ndarray:
    """[n_coresets, size] int64 image indices; ``kcenter`` needs ``features``, ``graph`` needs the graph."""
    if method not in METHODS:
        raise StimoptError(f"coreset method must be one of {', '.join(METHODS)}, got '{method}'")
    source = features if method == "kcenter" else graph
    if source is None:
        raise StimoptError(f"coreset method '{method}' needs the bank's {'features' if method == 'kcenter' else 'kNN graph'}")
    n_coresets, size = default_sizes(len(source), n_coresets, size)
    rng = np.random.default_rng(seed)
    if method == "kcenter":
        return farthest_points(features, size, n_coresets, rng, sample)
    return np.stack([traverse(graph, size, rng) for _ in range(n_coresets)])
