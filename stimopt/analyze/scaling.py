"""Search-size scaling (seed paper, Fig. 6a): the best (and worst) response found vs bank size.

The bank's images (or ``scaling.n`` of them, or a screen file's responses: ``scaling.screen=``)
are scored once; for each size in ``scaling.sizes`` (at most that many images) ``n_subsamples``
random subsets of that size are drawn and their maximum and minimum response per neuron taken.
A log-linear fit ``best = intercept + slope * log10(size)`` summarizes how much a bigger bank
buys (the paper: 10k-100k candidates were not enough, 1M-30M were).

JSON keys: ``sizes``, ``units`` (one entry per neuron: ``unit``, ``best_mean``, ``best_sd``,
``worst_mean``, ``worst_sd`` (per size), ``slope``, ``intercept``, ``r2``, ``worst_slope``), ``median_slope``,
``n_images``, ``n_subsamples``.
"""
from __future__ import annotations

import numpy as np

from stimopt.analyze.common import Outputs, UnitReader, check_finite, sample_indices, score_images
from stimopt.errors import StimoptError


def loglinear(sizes, values) -> tuple[float, float, float]:
    """(slope, intercept, r2) of values ~ intercept + slope * log10(sizes)."""
    x, y = np.log10(np.asarray(sizes, np.float64)), np.asarray(values, np.float64)
    slope, intercept = np.polyfit(x, y, 1)
    pred = intercept + slope * x
    ss = ((y - y.mean()) ** 2).sum()
    return float(slope), float(intercept), float(1 - ((y - pred) ** 2).sum() / ss) if ss > 0 else 1.0


def run(ctx) -> Outputs:
    opt = ctx.options
    if opt.get("screen"):
        from stimopt.analyze.screen import load_screen

        data = load_screen(opt["screen"])
        names, resp, what = data["units"], data["responses"].astype(np.float64), data["path"]
    else:
        idx = sample_indices(ctx.source.size, opt.get("n") or max(opt.get("sizes") or [1]), ctx.seed, "images (scaling.n)")
        reader = UnitReader(ctx.build_target(), ctx.units)
        resp = score_images(reader, ctx.source, idx, ctx.batch_size, desc="scaling")
        names, what = reader.names, f"{len(idx)} images of {ctx.source.describe()}"
    check_finite(resp, "the responses")
    sizes = sorted({int(s) for s in (opt.get("sizes") or [])})
    if not sizes or sizes[0] < 1:
        raise StimoptError("scaling.sizes must be a list of positive bank sizes, e.g. [100,1000,10000]")
    if sizes[-1] > len(resp):
        raise StimoptError(f"scaling.sizes goes up to {sizes[-1]:,} but only {len(resp):,} images were scored; "
                           "lower the sizes or raise scaling.n")
    if len(sizes) < 2:
        raise StimoptError("scaling.sizes needs at least two sizes for the log-linear fit")
    reps = max(1, int(opt.get("n_subsamples", 5)))
    rng = np.random.default_rng(ctx.seed)
    best = np.empty((len(sizes), reps, resp.shape[1]))
    worst = np.empty_like(best)
    for a, s in enumerate(sizes):
        for r in range(reps):
            sub = resp[rng.choice(len(resp), s, replace=False)]
            best[a, r], worst[a, r] = sub.max(0), sub.min(0)
    units, rows = [], []
    for j, name in enumerate(names):
        bm, wm = best[:, :, j].mean(1), worst[:, :, j].mean(1)
        slope, intercept, r2 = loglinear(sizes, bm)
        units.append({"unit": name, "best_mean": bm, "best_sd": best[:, :, j].std(1), "worst_mean": wm,
                      "worst_sd": worst[:, :, j].std(1), "slope": slope, "intercept": intercept, "r2": r2,
                      "worst_slope": loglinear(sizes, wm)[0]})
        rows += [{"unit": name, "size": s, "best_mean": bm[a], "best_sd": best[a, :, j].std(), "worst_mean": wm[a]}
                 for a, s in enumerate(sizes)]
    med = float(np.median([u["slope"] for u in units]))
    payload = {"sizes": sizes, "n_images": len(resp), "n_subsamples": reps, "responses": what, "units": units, "median_slope": med}
    line = (f"{len(units)} neuron(s), sizes {sizes[0]:,}..{sizes[-1]:,} of {what}: best response grows {med:+.3g} per decade "
            f"(median log-linear slope; worst: {np.median([u['worst_slope'] for u in units]):+.3g})")
    return Outputs(payload, rows, lambda p: _figure(p, sizes, units), line)


def _figure(path, sizes, units, max_lines: int = 8) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.log10(sizes)
    for u in units[:max_lines]:
        line = ax.errorbar(sizes, u["best_mean"], yerr=u["best_sd"], fmt="o", ms=3, label=f"unit {u['unit']} (r2 {u['r2']:.2f})")
        ax.plot(sizes, u["intercept"] + u["slope"] * x, "-", color=line[0].get_color(), lw=1)
        ax.errorbar(sizes, u["worst_mean"], yerr=u["worst_sd"], fmt="v", ms=3, color=line[0].get_color(), alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("bank size (random subsamples)")
    ax.set_ylabel("best (o, fit) and worst (v) response found")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
