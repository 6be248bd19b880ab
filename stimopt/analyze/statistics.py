"""Image statistics of preferred vs anti-preferred images (seed paper, Fig. 4d-e).

Per neuron, its preferred (top K) and anti-preferred (bottom K) bank images, from a screen file
(``statistics.screen=``) or screened here (``statistics.n`` random bank images): the
low-level statistics of :mod:`stimopt.analyze.imagestats` per image, their difference between the
sets with effect sizes (Cohen's d with the pooled SD, Welch's t-test p), and a
difference-of-means classifier (features z-scored on the training folds; an image is called
preferred when its projection on mean(pref) - mean(anti) lies past the midpoint of the two
training means) with held-out accuracy over ``folds`` stratified folds; the same classifier on
backbone embeddings of the same images (the paper's Fig. 5a uses DNN features next to the
interpretable ones). ``statistics.embeddings``: ``auto`` (default; ``true`` too) the bank's own
features (``features.npy`` of a built bank) when it has them, else embeddings computed here with
``statistics.backbone`` (a :class:`stimopt.bank.features.FeatureSpec`: any layer of any
torchvision/timm model, average-pooled; default the demo bank's EfficientNet-Lite0 ``blocks.3``,
so a built and an unbuilt demo bank give the same embeddings); ``bank`` only the bank's;
``backbone`` always computed; ``false`` none.

JSON keys: ``statistics`` (name -> description), ``units`` (one entry per neuron: ``unit``,
``accuracy``, ``accuracy_embeddings`` (null without embeddings), ``n_pref``, ``n_anti``,
``stats``: name -> ``mean_pref``, ``mean_anti``, ``difference``, ``cohens_d``, ``p``),
``median_accuracy``, ``median_accuracy_embeddings``, ``embeddings`` (where they came from, or
null), ``embedding_dim``, ``k``, ``folds``.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import ttest_ind

from stimopt.analyze.common import Outputs, UnitReader, check_finite, sample_indices, score_images
from stimopt.analyze.imagestats import STATISTICS, image_statistics
from stimopt.analyze.screen import load_screen, top_bottom
from stimopt.errors import StimoptError


def cohens_d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(mean a - mean b) / pooled SD, per column."""
    na, nb = len(a), len(b)
    pooled = np.sqrt(((na - 1) * a.var(0, ddof=1) + (nb - 1) * b.var(0, ddof=1)) / max(1, na + nb - 2))
    return np.where(pooled > 1e-12, (a.mean(0) - b.mean(0)) / np.maximum(pooled, 1e-12), 0.0)


def dom_accuracy(x_pref: np.ndarray, x_anti: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Held-out accuracy of the difference-of-means classifier (stratified ``folds``-fold)."""
    x = np.concatenate([x_pref, x_anti]).astype(np.float64)
    y = np.r_[np.ones(len(x_pref)), np.zeros(len(x_anti))]
    folds = max(2, min(int(folds), len(x_pref), len(x_anti)))
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), int)
    for cls in (0, 1):
        where = np.flatnonzero(y == cls)
        fold[rng.permutation(where)] = np.arange(len(where)) % folds
    correct = 0
    for f in range(folds):
        tr, te = fold != f, fold == f
        mu, sd = x[tr].mean(0), x[tr].std(0)
        sd = np.where(sd > 1e-12, sd, 1.0)
        z = (x - mu) / sd
        m1, m0 = z[tr & (y == 1)].mean(0), z[tr & (y == 0)].mean(0)
        w = m1 - m0
        threshold = 0.5 * (m1 + m0) @ w
        correct += int(((z[te] @ w > threshold) == (y[te] == 1)).sum())
    return correct / len(y)


EMBEDDINGS = ("auto", "bank", "backbone", "false")
#: statistics.backbone's default (conf/analyze.yaml): the demo bank's own feature spec
DEFAULT_BACKBONE = {"model": "efficientnet_lite0", "layer": "blocks.3", "input_size": 128, "pool_kernel": 2, "pool_stride": 2,
                    "weights": "pretrained"}


def embedding_source(ctx, needed: np.ndarray):
    """(embeddings [len(needed), d] of bank images ``needed`` (sorted), description) or (None, None)."""
    opt = ctx.options
    choice = opt.get("embeddings", "auto")
    choice = {True: "auto", False: "false", None: "false", "none": "false", "true": "auto"}.get(choice, str(choice))
    if choice not in EMBEDDINGS:
        raise StimoptError(f"statistics.embeddings={choice} is not one of {', '.join(EMBEDDINGS)} (or true/false)")
    if choice == "false":
        return None, None
    feats = getattr(ctx.source, "features", None)
    if feats is not None and choice in ("auto", "bank"):
        spec = (getattr(ctx.source, "extras", None) or {}).get("feature") or {}
        what = "the bank's features" + (f" ({spec.get('model')} {spec.get('layer')})" if spec else "")
        return np.asarray(feats[needed], np.float64).reshape(len(needed), -1), what
    if choice == "bank":
        raise StimoptError("statistics.embeddings=bank but this bank has no features (build it with `stimopt-bank build`); "
                           "use statistics.embeddings=backbone to compute them")
    from tqdm import tqdm

    from stimopt.bank.features import FeatureExtractor, FeatureSpec

    given = dict(opt.get("backbone") or DEFAULT_BACKBONE)
    known = set(FeatureSpec.__dataclass_fields__)
    if set(given) - known:
        raise StimoptError(f"statistics.backbone takes {', '.join(sorted(known))}; got {', '.join(sorted(set(given) - known))}")
    spec = FeatureSpec(**given)
    extract = FeatureExtractor(spec, "cpu")
    chunk = max(1, int(spec.batch_size))
    out = [extract(ctx.source.images(needed[s:s + chunk]))
           for s in tqdm(range(0, len(needed), chunk), desc="statistics: embeddings", unit="batch", leave=False)]
    return np.concatenate(out).astype(np.float64), f"{spec.model} {spec.layer} at {spec.input_size} px (computed here)"


def _sets(ctx, k: int):
    opt = ctx.options
    if opt.get("screen"):
        data = load_screen(opt["screen"], k, "statistics.k")
        return data["units"], data["top"][:, :k], data["bottom"][:, :k], f"top/bottom {k} of {data['path']}"
    idx = sample_indices(ctx.source.size, opt.get("n", 2000), ctx.seed, "images to screen (statistics.n)")
    if len(idx) < 2 * k:
        raise StimoptError(f"statistics.k={k} needs at least {2 * k} screened images, got {len(idx)}")
    reader = UnitReader(ctx.build_target(), ctx.units)
    resp = score_images(reader, ctx.source, idx, ctx.batch_size, desc="statistics: screen")
    check_finite(resp, "the screened responses")
    top, _, bottom, _ = top_bottom(resp, idx, k)
    return reader.names, top, bottom, f"top/bottom {k} of {len(idx)} random images of {ctx.source.describe()}"


def run(ctx) -> Outputs:
    opt = ctx.options
    k, folds = int(opt.get("k", 50)), int(opt.get("folds", 5))
    if k < 2:
        raise StimoptError(f"statistics.k must be at least 2, got {k}")
    names, top, bottom, what = _sets(ctx, k)
    needed = np.unique(np.concatenate([top.ravel(), bottom.ravel()]))
    stats = np.concatenate([image_statistics(ctx.source.images(needed[s:s + 256])) for s in range(0, len(needed), 256)])
    row_of = {int(i): r for r, i in enumerate(needed)}
    emb_all, emb_what = embedding_source(ctx, needed)
    stat_names = list(STATISTICS)
    units, rows = [], []
    for j, name in enumerate(names):
        a = stats[[row_of[int(i)] for i in top[j]]]
        b = stats[[row_of[int(i)] for i in bottom[j]]]
        d = cohens_d(a, b)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # constant statistics (e.g. no saturation at all)
            p = ttest_ind(a, b, equal_var=False).pvalue
        per = {s: {"mean_pref": float(a[:, c].mean()), "mean_anti": float(b[:, c].mean()),
                   "difference": float(a[:, c].mean() - b[:, c].mean()), "cohens_d": float(d[c]),
                   "p": float(p[c]) if np.isfinite(p[c]) else None} for c, s in enumerate(stat_names)}
        emb = None
        if emb_all is not None:
            fa = emb_all[[row_of[int(i)] for i in top[j]]]
            fb = emb_all[[row_of[int(i)] for i in bottom[j]]]
            emb = dom_accuracy(fa, fb, folds, ctx.seed)
        units.append({"unit": name, "accuracy": dom_accuracy(a, b, folds, ctx.seed), "accuracy_embeddings": emb,
                      "n_pref": len(a), "n_anti": len(b), "stats": per})
        rows += [{"unit": name, "statistic": s, **v} for s, v in per.items()]
    acc = [u["accuracy"] for u in units]
    embs = [u["accuracy_embeddings"] for u in units if u["accuracy_embeddings"] is not None]
    payload = {"sets": what, "k": k, "folds": folds, "statistics": STATISTICS, "units": units,
               "median_accuracy": float(np.median(acc)), "median_accuracy_embeddings": float(np.median(embs)) if embs else None,
               "embeddings": emb_what, "embedding_dim": None if emb_all is None else int(emb_all.shape[1])}
    strongest = max(stat_names, key=lambda s: abs(np.median([u["stats"][s]["cohens_d"] for u in units])))
    line = (f"{len(units)} neuron(s), {what}: difference-of-means accuracy {payload['median_accuracy']:.2f} on {len(stat_names)} "
            f"statistics" + (f", {payload['median_accuracy_embeddings']:.2f} on embeddings" if embs else "")
            + (f" ({emb_what}, {emb_all.shape[1]} dims)" if embs else "") + f"; largest |d|: {strongest} (median d {np.median([u['stats'][strongest]['cohens_d'] for u in units]):+.2f})")
    return Outputs(payload, rows, lambda path: _figure(path, units, stat_names), line)


def _figure(path, units, stat_names) -> None:
    import matplotlib.pyplot as plt

    d = np.array([[u["stats"][s]["cohens_d"] for s in stat_names] for u in units])
    fig, ax = plt.subplots(figsize=(10, 1.8 + 0.25 * max(1, len(units)) if len(units) > 1 else 3.6))
    if len(units) == 1:
        ax.bar(range(len(stat_names)), d[0], color=np.where(d[0] > 0, "tab:purple", "tab:pink"))
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylabel(f"Cohen's d, preferred - anti-preferred (unit {units[0]['unit']}; accuracy {units[0]['accuracy']:.2f})",
                      fontsize=7)
    else:
        lim = max(1e-6, float(np.abs(d).max()))
        im = ax.imshow(d, cmap="PiYG", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_yticks(range(len(units)))
        ax.set_yticklabels([f"{u['unit']} ({u['accuracy']:.2f})" for u in units], fontsize=6)
        fig.colorbar(im, ax=ax, label="Cohen's d (pref - anti)")
    ax.set_xticks(range(len(stat_names)))
    ax.set_xticklabels(stat_names, rotation=70, ha="right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
