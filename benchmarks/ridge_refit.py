"""Ridge refits at the shapes stimopt meets: the project's fit vs scikit-learn's RidgeCV.

    python benchmarks/ridge_refit.py            # writes benchmarks/results/ridge_refit.json

1. The surrogate (``optimizer=surrogate``) refits a weighted single-output ridge every generation
   on the images shown so far (n = 200..3000 rows, d = 256 bank features, 12 penalties, focus
   weights) and then draws Bayesian-ridge posterior samples, which need the SVD of the weighted
   design. Timed per refit: ``stimopt.ridge.fit_ridge`` (one eigendecomposition gives the penalty,
   the leave-one-out R^2 and the SVD for the draws) vs ``RidgeCV(gcv_mode='svd'|'eigen')`` with
   ``sample_weight``, alone and plus the SVD the draws would still need. Agreement: the chosen
   penalty and the largest relative coefficient difference.
2. The fMRI/EEG encoder fits once, K outputs with one penalty each: the project's former 5-fold
   CV over an SVD per fold vs ``RidgeCV(alpha_per_target=True)`` (efficient leave-one-out).

One BLAS thread (as the surrogate runs by default); median of ``--repeats`` runs.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from stimopt.ridge import fit_ridge, thin_svd

OUT = Path(__file__).parent / "results" / "ridge_refit.json"


def timed(fn, repeats):
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, 1000 * float(np.median(times))


def surrogate_case(n, d, n_alphas, repeats, rng):
    from sklearn.linear_model import RidgeCV

    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) / np.sqrt(d)  # correlated features
    y = x @ rng.standard_normal(d) / np.sqrt(d) + 0.5 * rng.standard_normal(n)
    w = rng.integers(1, 3, n) * np.exp(0.5 * np.clip((y - y.mean()) / y.std(), -3, 3))
    xc = (x - (w @ x) / w.sum()) * np.sqrt(w)[:, None]
    top = float(np.linalg.eigvalsh(xc.T @ xc).max())
    alphas = top * np.logspace(-5, 2, n_alphas)
    ours, t_ours = timed(lambda: fit_ridge(x, y, w, alphas), repeats)
    row = {"n": n, "d": d, "alphas": n_alphas, "project_fit_ridge_ms": round(t_ours, 2)}
    for mode in ("svd", "eigen"):
        model, t = timed(lambda: RidgeCV(alphas=alphas, gcv_mode=mode).fit(x, y, sample_weight=w), repeats)
        _, t_svd = timed(lambda: thin_svd(xc), repeats)
        row[f"ridgecv_{mode}_ms"] = round(t, 2)
        row[f"ridgecv_{mode}_plus_posterior_svd_ms"] = round(t + t_svd, 2)
        row[f"ridgecv_{mode}_same_alpha"] = bool(np.isclose(model.alpha_, ours["alpha"]))
        row[f"ridgecv_{mode}_max_rel_coef_diff"] = float(np.abs(model.coef_ - ours["beta"]).max() / np.abs(ours["beta"]).max())
    row["ratio_ridgecv_svd_over_project"] = round(row["ridgecv_svd_ms"] / t_ours, 2)
    row["ratio_ridgecv_eigen_over_project"] = round(row["ridgecv_eigen_ms"] / t_ours, 2)
    return row


def kfold_ridge(x, y, alphas, folds, seed):
    """The encoder's former fit: one alpha per output by k-fold CV, an SVD per fold."""
    def solutions(xa, ya):
        xm, ym = xa.mean(0), ya.mean(0)
        u, s, vt = np.linalg.svd(xa - xm, full_matrices=False)
        uty = u.T @ (ya - ym)

        def weights(alpha_k):
            w = vt.T @ (s[:, None] / (s[:, None] ** 2 + alpha_k[None, :]) * uty)
            return w, ym - xm @ w
        return weights

    n, k = y.shape
    fold = np.random.default_rng(seed).permutation(n) % folds
    err = np.zeros((len(alphas), k))
    for f in range(folds):
        tr, va = fold != f, fold == f
        solve = solutions(x[tr], y[tr])
        for a, alpha in enumerate(alphas):
            w, b = solve(np.full(k, alpha))
            err[a] += ((x[va] @ w + b - y[va]) ** 2).sum(0)
    best = alphas[err.argmin(0)]
    w, b = solutions(x, y)(best)
    return w, b, best


def encoder_case(n, d, k, repeats, rng):
    from stimopt.ridge import ridge_cv

    x = rng.standard_normal((n, d))
    wt = rng.standard_normal((d, k)) * (rng.random((d, k)) < 0.1)
    y = x @ wt / np.sqrt(0.1 * d) + rng.standard_normal((n, k)) * np.linspace(0.3, 3.0, k)
    alphas = np.array([0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0])
    xt, yt = rng.standard_normal((500, d)), None
    yt = xt @ wt / np.sqrt(0.1 * d)
    old, t_old = timed(lambda: kfold_ridge(x, y, alphas, 5, 0), repeats)
    new, t_new = timed(lambda: ridge_cv(x, y, alphas), repeats)

    def r2(w, b):
        return float(np.median(1 - ((xt @ w + b - yt) ** 2).sum(0) / ((yt - yt.mean(0)) ** 2).sum(0)))
    return {"n": n, "d": d, "outputs": k, "alphas": len(alphas), "project_5fold_ms": round(t_old, 2),
            "ridgecv_loo_alpha_per_target_ms": round(t_new, 2), "ratio_ridgecv_over_project": round(t_new / t_old, 2),
            "heldout_r2_median_project": round(r2(old[0], old[1]), 4), "heldout_r2_median_ridgecv": round(r2(new[0], new[1]), 4),
            "alphas_project": old[2].tolist(), "alphas_ridgecv": new[2].tolist()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 500, 1000, 2000, 3000])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--alphas", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import sklearn

    rng = np.random.default_rng(0)
    with threadpool_limits(args.threads):
        surrogate = [surrogate_case(n, args.dim, args.alphas, args.repeats, rng) for n in args.sizes]
        encoder = [encoder_case(1080, d, 8, max(1, args.repeats // 2), rng) for d in (768, 3072)]
    result = {"benchmark": "ridge_refit", "blas_threads": args.threads, "repeats": args.repeats,
              "numpy": np.__version__, "sklearn": sklearn.__version__, "machine": platform.machine(),
              "surrogate_refit": surrogate, "encoder_fit": encoder}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'n':>6} {'project':>9} {'RidgeCV svd':>12} {'+svd':>8} {'eigen':>8} {'+svd':>8}  same alpha")
    for r in surrogate:
        print(f"{r['n']:>6} {r['project_fit_ridge_ms']:>7.1f}ms {r['ridgecv_svd_ms']:>10.1f}ms "
              f"{r['ridgecv_svd_plus_posterior_svd_ms']:>6.1f}ms {r['ridgecv_eigen_ms']:>6.1f}ms "
              f"{r['ridgecv_eigen_plus_posterior_svd_ms']:>6.1f}ms  {r['ridgecv_svd_same_alpha']}/{r['ridgecv_eigen_same_alpha']}")
    for r in encoder:
        print(f"encoder n={r['n']} d={r['d']} K={r['outputs']}: 5-fold {r['project_5fold_ms']:.0f} ms, "
              f"RidgeCV LOO {r['ridgecv_loo_alpha_per_target_ms']:.0f} ms; held-out R^2 {r['heldout_r2_median_project']} "
              f"vs {r['heldout_r2_median_ridgecv']}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
