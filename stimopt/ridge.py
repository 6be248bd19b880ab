"""Ridge regression, in one place, for every family that fits a linear read-out.

- :func:`ridge_cv`: multi-output ridge, one penalty per output chosen by efficient leave-one-out
  over a grid: scikit-learn's ``RidgeCV`` (``alpha_per_target=True``, ``sample_weight``). Used by
  the fMRI/EEG encoders (the neural family) and any other fixed read-out.
- :func:`fit_ridge` + :func:`posterior_draws`: the online surrogate's weighted single-output ridge.
  It is refit every generation and needs more than ``RidgeCV`` exposes: the SVD of the weighted,
  centred design (for Bayesian-ridge posterior draws), the residual noise from the effective
  degrees of freedom, a penalty grid scaled to the design's top singular value, and a leave-one-out
  R^2 weighted differently from the fit (by presentations, not by focus weights). One eigendecom-
  position of the smaller Gram matrix gives all of it.

Why the surrogate keeps its own fit, measured (``benchmarks/ridge_refit.py``, results in
``benchmarks/results/ridge_refit.json``; 256 correlated features, 12 penalties, focus-style sample
weights, one BLAS thread, median of 5, 2 shared CPU cores). Milliseconds per refit:

    rows n   fit_ridge   RidgeCV svd (+ SVD for the draws)   RidgeCV eigen (+ SVD)
       200        17          36  (48)                           23  (35)
       500        50         122 (149)                          111 (138)
      1000        50          96 (120)                          163 (190)
      2000        97         298 (342)                          413 (485)
      3000       133         457 (544)                          720 (785)

Both choose the same penalty at every size and agree on the coefficients to 1e-13, so RidgeCV is
the reference (``tests/test_ridge.py`` checks that), but at the surrogate's refit-every-generation
shapes it costs 2-3.4x more, and 2.8-4.1x once the draws' SVD is added. For the encoders' one-off
multi-output fit ``RidgeCV(alpha_per_target=True)`` replaced the former 5-fold CV: n=1080, K=8,
d=768: 1.2 s vs 5.8 s; d=3072: 4.3 s vs 47 s; the same alphas and held-out R^2.
"""
from __future__ import annotations

import math

import numpy as np

from stimopt.errors import StimoptError


def ridge_cv(x: np.ndarray, y: np.ndarray, alphas, sample_weight: np.ndarray | None = None):
    """Ridge with intercept, one alpha per output (column of ``y``) by efficient leave-one-out.

    ``x`` [n, d], ``y`` [n] or [n, K] (finite values only). Returns (W [d, K], b [K], alpha [K]).
    """
    from sklearn.linear_model import RidgeCV

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    y2 = y[:, None] if y.ndim == 1 else y
    if not np.isfinite(y2).all() or not np.isfinite(x).all():
        raise StimoptError("ridge_cv needs finite features and responses; impute or drop the missing ones first")
    grid = np.asarray(list(alphas), np.float64)
    if grid.size == 0 or not (grid > 0).all():
        raise StimoptError(f"ridge alphas must be positive numbers, got {list(alphas)}")
    model = RidgeCV(alphas=grid, fit_intercept=True, alpha_per_target=y2.shape[1] > 1)
    model.fit(x, y2, sample_weight=sample_weight)
    w = np.asarray(model.coef_, np.float64).reshape(y2.shape[1], -1).T
    b = np.asarray(model.intercept_, np.float64).reshape(-1)
    alpha = np.broadcast_to(np.asarray(model.alpha_, np.float64), (y2.shape[1],)).copy()
    return w, b, alpha


def thin_svd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x = U diag(sqrt(s2)) V^T from the eigendecomposition of the smaller Gram matrix.

    Much faster than LAPACK's SVD for the tall or wide matrices met here (and under thread
    contention); components with negligible energy are dropped.
    """
    n, p = x.shape
    if n <= p:
        s2, u = np.linalg.eigh(x @ x.T)
    else:
        s2, v = np.linalg.eigh(x.T @ x)
    keep = s2 > 1e-10 * max(float(s2.max(initial=0.0)), 1e-300)
    s2 = s2[keep]
    s = np.sqrt(s2)
    if n <= p:
        u = u[:, keep]
        v = (x.T @ u) / s
    else:
        v = v[:, keep]
        u = (x @ v) / s
    return u, s2, v


def fit_ridge(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, alphas: np.ndarray | None = None,
              r2_weights: np.ndarray | None = None) -> dict:
    """Weighted ridge with intercept; penalty chosen by exact leave-one-out error (one SVD).

    ``alphas`` default: 36 values from 1e-5 to 1e2 times the top eigenvalue of the weighted design.
    ``r2_weights`` (default ``w``) weight the rows of the reported leave-one-out R^2, so a fit that
    emphasizes some rows still reports how well it predicts every row.

    Returns beta, intercept, alpha, sigma (residual noise), r2_loo, and the SVD pieces (v, s2) that
    :func:`posterior_draws` needs to draw from N(beta, sigma^2 (X'WX + alpha I)^-1).
    """
    n, p = x.shape
    w = np.ones(n) if w is None else np.asarray(w, dtype=np.float64)
    sw = np.sqrt(w)
    xm, ym = (w @ x) / w.sum(), float(w @ y / w.sum())
    xc, yc = (x - xm) * sw[:, None], (y - ym) * sw
    u, s2, v = thin_svd(xc)
    uy = u.T @ yc
    lev0 = w / w.sum()  # leverage of the intercept
    if alphas is None:
        top = float(s2.max()) if s2.size and s2.max() > 0 else 1.0
        alphas = top * np.logspace(-5, 2, 36)
    best = None
    u2 = u**2
    for a in alphas:
        d = s2 / (s2 + a)
        fitted = u @ (d * uy)
        h = u2 @ d + lev0
        loo = (yc - fitted) / np.maximum(1.0 - h, 1e-6)
        press = float(loo @ loo)
        if best is None or press < best[0]:
            best = (press, a, d, fitted, loo)
    _, a, d, fitted, loo = best
    loo = loo / sw  # y_i minus its prediction by the fit without row i
    rw = w if r2_weights is None else np.asarray(r2_weights, dtype=np.float64)
    ss_r2 = float(rw @ (y - rw @ y / rw.sum()) ** 2)
    beta = v @ (np.sqrt(s2) / (s2 + a) * uy)
    df = float(d.sum())
    rss = float(((yc - fitted) ** 2).sum())
    sigma = math.sqrt(rss / max(n - df - 1.0, 1.0)) if n > 1 else 1.0
    return {
        "beta": beta, "intercept": ym - float(xm @ beta), "alpha": float(a), "sigma": sigma,
        "r2_loo": 1.0 - float(rw @ loo**2) / ss_r2 if ss_r2 > 0 else float("nan"),
        "v": v, "s2": s2, "n": n,
    }


def posterior_draws(fit: dict, rng: np.random.Generator, scales: np.ndarray) -> np.ndarray:
    """[p, len(scales)] Bayesian-ridge posterior draws of ``fit``'s weights: beta + scale x sigma x
    (X'WX + alpha I)^(-1/2) z, with the null space of X drawn from the prior N(0, sigma^2 / alpha)."""
    beta, v, s2, a = fit["beta"], fit["v"], fit["s2"], fit["alpha"]
    n_draws = len(scales)
    z1 = rng.standard_normal((v.shape[1], n_draws))
    z2 = rng.standard_normal((beta.size, n_draws))
    null = (z2 - v @ (v.T @ z2)) / math.sqrt(a)
    return beta[:, None] + np.asarray(scales) * fit["sigma"] * (v @ (z1 / np.sqrt(s2 + a)[:, None]) + null)
