"""stimopt.ridge: the one ridge implementation (RidgeCV per-target leave-one-out for read-outs; the
surrogate's SVD fit with Bayesian posterior draws), each checked against brute-force refits."""
from __future__ import annotations

import numpy as np
import pytest

from stimopt.errors import StimoptError
from stimopt.ridge import fit_ridge, posterior_draws, ridge_cv


def _loo_press(x, y, a, w=None):
    n, p = x.shape
    w = np.ones(n) if w is None else w
    press = 0.0
    for i in range(n):
        k = np.arange(n) != i
        xm, ym = w[k] @ x[k] / w[k].sum(), w[k] @ y[k] / w[k].sum()
        xc = x[k] - xm
        beta = np.linalg.solve(xc.T @ (w[k, None] * xc) + a * np.eye(p), xc.T @ (w[k] * (y[k] - ym)))
        press += w[i] * (y[i] - ym - (x[i] - xm) @ beta) ** 2
    return press


def test_ridge_cv_picks_each_outputs_leave_one_out_alpha():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 8))
    y = np.stack([x @ rng.standard_normal(8) + 0.1 * rng.standard_normal(40),  # clean: small alpha
                  0.05 * x[:, 0] + 2.0 * rng.standard_normal(40)], 1)  # mostly noise: large alpha
    alphas = [0.01, 1.0, 100.0, 1e4]
    w, b, chosen = ridge_cv(x, y, alphas)
    assert w.shape == (8, 2) and b.shape == (2,)
    for k in range(2):
        want = alphas[int(np.argmin([_loo_press(x, y[:, k], a) for a in alphas]))]
        assert chosen[k] == want
        xc = x - x.mean(0)
        beta = np.linalg.solve(xc.T @ xc + want * np.eye(8), xc.T @ (y[:, k] - y[:, k].mean()))
        np.testing.assert_allclose(w[:, k], beta, rtol=1e-6, atol=1e-9)
    assert chosen[0] < chosen[1]
    with pytest.raises(StimoptError, match="finite"):
        ridge_cv(x, np.where(y > 1, np.nan, y), alphas)
    with pytest.raises(StimoptError, match="positive"):
        ridge_cv(x, y, [0.0, 1.0])


def test_sklearn_and_project_fits_agree_with_sample_weights():
    """The surrogate's own fit chooses the penalty RidgeCV chooses, with the same coefficients."""
    from sklearn.linear_model import RidgeCV

    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((60, 5)), rng.standard_normal(60)
    w = rng.uniform(0.2, 3.0, 60)
    grid = np.array([0.1, 1.0, 10.0, 100.0])
    ours = fit_ridge(x, y, w, grid)
    ref = RidgeCV(alphas=grid).fit(x, y, sample_weight=w)
    want = grid[int(np.argmin([_loo_press(x, y, a, w) for a in grid]))]
    assert ours["alpha"] == want == ref.alpha_
    np.testing.assert_allclose(ours["beta"], ref.coef_, rtol=1e-6)


def test_posterior_draws_have_the_bayesian_ridge_covariance():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((30, 4)), rng.standard_normal(30)
    fit = fit_ridge(x, y, alphas=np.array([2.0]))
    draws = posterior_draws(fit, np.random.default_rng(0), np.ones(40000))
    xc = x - x.mean(0)
    cov = fit["sigma"] ** 2 * np.linalg.inv(xc.T @ xc + 2.0 * np.eye(4))
    np.testing.assert_allclose(draws.mean(1), fit["beta"], atol=4 * np.sqrt(np.diag(cov).max() / 40000))
    np.testing.assert_allclose(np.cov(draws), cov, rtol=0.05, atol=0.02 * np.abs(cov).max())
    half = posterior_draws(fit, np.random.default_rng(0), np.full(40000, 0.5))
    np.testing.assert_allclose(half - fit["beta"][:, None], 0.5 * (draws - fit["beta"][:, None]), atol=1e-12)
