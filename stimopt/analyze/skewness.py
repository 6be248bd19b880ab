"""Skewness of response distributions (seed paper, Fig. 1 and Supp. Fig. 6).

The responses of one or many units to a bank (or a random sample of it), their histogram, the
skewness kappa of each unit's distribution (``scipy.stats.skew``, the biased moment estimator)
and a one- vs two-tailed classification per unit:

    tails = "two"  if |kappa| < threshold   (default 1.0: midway between a symmetric
                                             distribution, kappa = 0, and a rectified one, kappa ~ 2)
            "one"  otherwise; ``side`` says where the single tail points (up: kappa > 0, down: < 0)

For a unit with a ``relu`` option (cnn_unit) and ``skewness.relu=both`` the units are read
pre-activation (``relu=false``) and post-ReLU (``max(0, r)``, exactly what ``relu=true`` reads) from the
same forward pass. JSON keys: ``units`` (one entry per unit: ``unit``, ``kappa``, ``tails``, ``side``,
``mean``, ``sd``, ``frac_zero``), ``median_kappa``, ``n_two_tailed``, ``n_one_tailed``, ``threshold``,
``n_images``, ``read`` (pre_relu | post_relu | as_is) and, with ``relu=both``, ``post_relu`` (the same
keys for the rectified units).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import skew

from stimopt.analyze.common import Outputs, UnitReader, sample_indices, score_images
from stimopt.errors import StimoptError


def classify(kappa: float, threshold: float = 1.0) -> tuple[str, str]:
    """(tails, side) of a distribution with skewness ``kappa``."""
    if not np.isfinite(kappa):
        return "none", "flat"
    if abs(kappa) < threshold:
        return "two", "both"
    return "one", "up" if kappa > 0 else "down"


def summarize(resp: np.ndarray, names: list[str], threshold: float = 1.0) -> dict:
    """Per-unit kappa and tails of responses [N, U]; a constant unit has kappa NaN and tails 'none'."""
    resp = np.asarray(resp, np.float64)
    units = []
    for j, name in enumerate(names):
        r = resp[:, j]
        sd = float(r.std())
        kappa = float(skew(r)) if sd > 1e-12 * max(1.0, abs(float(r.mean()))) else float("nan")
        tails, side = classify(kappa, threshold)
        units.append({"unit": name, "kappa": kappa, "tails": tails, "side": side, "mean": float(r.mean()), "sd": sd,
                      "frac_zero": float(np.mean(r == 0))})
    kappas = np.array([u["kappa"] for u in units])
    finite = kappas[np.isfinite(kappas)]
    return {"units": units, "median_kappa": float(np.median(finite)) if finite.size else float("nan"),
            "n_two_tailed": sum(u["tails"] == "two" for u in units), "n_one_tailed": sum(u["tails"] == "one" for u in units),
            "threshold": float(threshold)}


def run(ctx) -> Outputs:
    opt = ctx.options
    mode = str(opt.get("relu", "both"))
    if mode not in ("both", "as_is"):
        raise StimoptError(f"skewness.relu must be 'both' or 'as_is', got '{mode}'")
    both = mode == "both" and ctx.target_has("relu")
    target = ctx.build_target(relu=False) if both else ctx.build_target()
    reader = UnitReader(target, ctx.units)
    idx = sample_indices(ctx.source.size, opt.get("n"), ctx.seed, "images for the response distribution")
    if len(idx) < 3:
        raise StimoptError(f"skewness needs at least 3 images, got {len(idx)}")
    resp = score_images(reader, ctx.source, idx, ctx.batch_size, desc="skewness", repeats=ctx.repeats)
    threshold = float(opt.get("threshold", 1.0))
    result = summarize(resp, reader.names, threshold)
    read = "pre_relu" if both else ("post_relu" if ctx.target_option("relu") else "as_is")
    payload = {"target": target.describe(), "bank": ctx.source.describe(), "n_images": len(idx), "read": read, **result}
    post = None
    if both:
        post = np.maximum(resp, 0.0)
        payload["post_relu"] = summarize(post, reader.names, threshold)
    rows = []
    for j, u in enumerate(result["units"]):
        row = {"unit": u["unit"], "kappa": u["kappa"], "tails": u["tails"], "side": u["side"], "mean": u["mean"], "sd": u["sd"]}
        if post is not None:
            p = payload["post_relu"]["units"][j]
            row.update(kappa_post_relu=p["kappa"], tails_post_relu=p["tails"], frac_zero_post_relu=p["frac_zero"])
        rows.append(row)
    line = (f"{target.describe()}, {len(reader.names)} unit(s) x {len(idx)} images: median kappa {result['median_kappa']:.2f} "
            f"({read}; {result['n_two_tailed']} two-tailed, {result['n_one_tailed']} one-tailed)")
    if post is not None:
        pr = payload["post_relu"]
        line += f"; post-ReLU median kappa {pr['median_kappa']:.2f} ({pr['n_two_tailed']} two-, {pr['n_one_tailed']} one-tailed)"
    bins = int(opt.get("bins", 40))
    return Outputs(payload, rows, lambda path: _figure(path, resp, post, result, payload.get("post_relu"), bins, target.describe(), read),
                   line)


def _figure(path, resp, post, pre_sum, post_sum, bins: int, title: str, read: str) -> None:
    import matplotlib.pyplot as plt

    label = read.replace("_", "-").replace("as-is", "as read")
    kappas = np.array([u["kappa"] for u in pre_sum["units"]])
    order = np.argsort(np.abs(np.nan_to_num(kappas, nan=np.inf) - pre_sum["median_kappa"]))
    ex = int(order[0])  # the unit nearest the median kappa
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ax = axes[0]
    ax.hist(resp[:, ex], bins=bins, color="tab:blue", alpha=0.6, label=f"{label} (kappa {kappas[ex]:.2f})")
    if post is not None:
        ax.hist(post[:, ex], bins=bins, color="tab:red", alpha=0.5,
                label=f"post-ReLU (kappa {post_sum['units'][ex]['kappa']:.2f})")
    ax.set_xlabel(f"response of unit {pre_sum['units'][ex]['unit']} (nearest the median kappa)")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    ax = axes[1]
    finite = kappas[np.isfinite(kappas)]
    allk = finite if post is None else np.concatenate([finite, [u["kappa"] for u in post_sum["units"] if np.isfinite(u["kappa"])]])
    edges = np.linspace(min(-1.0, allk.min() if allk.size else -1), max(3.0, allk.max() if allk.size else 3), 30)
    ax.hist(finite, bins=edges, color="tab:blue", alpha=0.6, label=f"{label} (median {pre_sum['median_kappa']:.2f})")
    ax.axvline(pre_sum["median_kappa"], color="tab:blue")
    if post is not None:
        pk = [u["kappa"] for u in post_sum["units"] if np.isfinite(u["kappa"])]
        ax.hist(pk, bins=edges, color="tab:red", alpha=0.5, label=f"post-ReLU (median {post_sum['median_kappa']:.2f})")
        ax.axvline(post_sum["median_kappa"], color="tab:red")
    for t in (-pre_sum["threshold"], pre_sum["threshold"]):
        ax.axvline(t, color="grey", ls=":", lw=1)
    ax.set_xlabel("skewness kappa (dotted: one/two-tailed threshold)")
    ax.set_ylabel("units")
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
