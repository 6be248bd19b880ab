"""The surrogate's model inputs and row weights: standardized bank features (or random Fourier
features of them) and the focus weights of the ridge fit. The ridge itself (leave-one-out penalty,
Bayesian posterior draws) is :mod:`stimopt.ridge`."""
from __future__ import annotations

import contextlib
import math

import numpy as np

from .compact import read_rows

ACQUISITIONS = ("thompson", "ucb", "greedy")
INITS = ("random", "coreset")
KERNELS = ("linear", "rff")


def blas_threads(n: int):
    """Cap BLAS threads (n > 0) around the model's linear algebra. On shared machines a contended
    OpenBLAS pool makes small SVDs and the bank scan several times slower than one thread."""
    if n <= 0:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it the library default holds
        return contextlib.nullcontext()
    return threadpool_limits(n)


def standardizer(arrays: list[np.ndarray], n_sample: int, seed: int = 12345) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean/std of the concatenated features, from a fixed random sample of rows."""
    size = arrays[0].shape[0]
    rows = np.arange(size) if size <= n_sample else np.sort(np.random.default_rng(seed).choice(size, n_sample, replace=False))
    x = read_rows(arrays, rows).astype(np.float64)  # a temporary mapping: the sample's pages do not stay resident
    mu, sd = x.mean(0), x.std(0)
    sd[~(sd > 1e-8 * max(float(sd.max()), 1e-30))] = 1.0
    return mu, sd


class FeatureMap:
    """Raw bank feature rows (one block per layer) -> model inputs: standardized with statistics of
    a fixed sample of the bank, or (``kernel='rff'``) random Fourier features of those."""

    def __init__(self, arrays: list[np.ndarray], kernel: str, n_random_features: int, n_standardize: int):
        self.arrays, self.kernel, self.n_random_features = arrays, kernel, int(n_random_features)
        self.mu, self.sd = standardizer(arrays, n_standardize)
        p = self.mu.size
        if kernel == "rff":
            r = np.random.default_rng(54321)
            self.omega = r.normal(0.0, 1.0 / math.sqrt(p), size=(p, self.n_random_features))
            self.phase = r.uniform(0, 2 * math.pi, size=self.n_random_features)

    def phi(self, rows: list[np.ndarray]) -> np.ndarray:
        x = (np.concatenate([np.asarray(r, dtype=np.float64) for r in rows], axis=1) - self.mu) / self.sd
        if self.kernel == "rff":
            x = math.sqrt(2.0 / self.n_random_features) * np.cos(x @ self.omega + self.phase)
        return x

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Model inputs of bank items ``idx`` (read in sorted order, returned in the given order)."""
        order = np.argsort(idx)
        x = self.phi([a[idx[order]] for a in self.arrays])
        out = np.empty_like(x)
        out[order] = x
        return out


def focus_weights(y: np.ndarray, counts: np.ndarray, focus: float) -> np.ndarray:
    """Row weights of the fit: presentations x exp(focus x z), z = the image's standardized mean score
    (clipped to +-3), the focus factors scaled to mean 1. The search spends its budget where scores
    are high, so that is where the model must be right; a linear model of a nonlinear neuron is
    otherwise fit to the bulk of mediocre images."""
    if not focus or y.size < 2 or not y.std() > 0:
        return counts
    f = np.exp(focus * np.clip((y - y.mean()) / y.std(), -3.0, 3.0))
    return counts * f / f.mean()
