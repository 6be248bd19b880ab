"""Preferred and anti-preferred images across neurons (seed paper, Fig. 5a-d and Supp. Fig. 8).

From a screen of several neurons (``neurons.screen=FILE``, or screened here over ``neurons.n``
random bank images), with each neuron's top / bottom K images:

- **set overlap**: the fraction of images two neurons' sets share (preferred-preferred,
  anti-anti, preferred-anti), against a null of random K-image sets from the same screen
  (``n_shuffles`` draws): the observed mean off-diagonal overlap, the null mean and a p-value;
- **cross-neuron quantiles**: ``q_pref[i, j]`` = the quantile, among neuron i's responses to all
  screened images, of its median response to neuron j's preferred images (``q_anti`` alike): a
  diagonal near 1 (0) and an off-diagonal near 0.5 mean the sets are private to their neuron;
- **neighbour correspondence** (Fig. 5b): neurons are described by their columns of ``q_pref``
  (how the population responds to their preferred images) and of ``q_anti``; for each n_nb, the fraction
  of a neuron's n_nb nearest neurons in the preferred space that are also among its n_nb nearest in the
  anti-preferred space, against neuron identities shuffled.

JSON keys: ``units``, ``k``, ``n_images``, ``overlap`` (``pref_pref``, ``anti_anti``, ``pref_anti``:
each ``observed``, ``null_mean``, ``p``, ``matrix``), ``q_pref``, ``q_anti`` (matrices [U, U]),
``q_pref_diagonal_median``, ``q_pref_offdiagonal_median``, ``q_anti_diagonal_median``,
``q_anti_offdiagonal_median``, ``neighbours`` (``n_nb``, ``observed``, ``shuffled_mean``, ``shuffled_p95``).
"""
from __future__ import annotations

import numpy as np

from stimopt.analyze.common import Outputs, UnitReader, check_finite, sample_indices, score_images
from stimopt.analyze.screen import load_screen, top_bottom
from stimopt.errors import StimoptError


def overlap_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[U, U] fraction of set a[i] (bank indices, K each) found in set b[j]."""
    return np.array([[len(np.intersect1d(x, y)) / len(x) for y in b] for x in a])


def _offdiag(m: np.ndarray) -> np.ndarray:
    return m[~np.eye(len(m), dtype=bool)]


def cross_quantiles(resp: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """q[i, j]: quantile (fraction of screened images below) of neuron i's median response to set j."""
    q = np.empty((resp.shape[1], len(positions)))
    for j, pos in enumerate(positions):
        med = np.median(resp[pos], axis=0)  # [U]
        q[:, j] = (resp < med[None, :]).mean(0)
    return q


def neighbour_overlap(pa: np.ndarray, pb: np.ndarray, n_nb: int) -> float:
    """Mean fraction of each neuron's n_nb nearest neurons (by its column) shared between spaces a and b."""
    def nearest(m):
        x = m.T
        d = ((x[:, None] - x[None]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        return np.argsort(d, axis=1, kind="stable")[:, :n_nb]

    na, nb = nearest(pa), nearest(pb)
    return float(np.mean([len(np.intersect1d(x, y)) / n_nb for x, y in zip(na, nb)]))


def _screen(ctx, k: int):
    opt = ctx.options
    if opt.get("screen"):
        data = load_screen(opt["screen"], k, "neurons.k")
        return data["units"], data["indices"], data["responses"].astype(np.float64), data["path"]
    idx = sample_indices(ctx.source.size, opt.get("n", 2000), ctx.seed, "images to screen (neurons.n)")
    reader = UnitReader(ctx.build_target(), ctx.units)
    resp = score_images(reader, ctx.source, idx, ctx.batch_size, desc="neurons: screen")
    return reader.names, idx, resp, f"{len(idx)} random images of {ctx.source.describe()}"


def run(ctx) -> Outputs:
    opt = ctx.options
    k, n_shuffles = int(opt.get("k", 20)), int(opt.get("n_shuffles", 200))
    names, idx, resp, what = _screen(ctx, k)
    check_finite(resp, "the screened responses")
    if len(names) < 3:
        raise StimoptError(f"neurons needs at least 3 neurons (units=[...]), got {len(names)}")
    if len(idx) < 2 * k:
        raise StimoptError(f"neurons.k={k} needs at least {2 * k} screened images, got {len(idx)}")
    pos = np.arange(len(idx))
    top, _, bottom, _ = top_bottom(resp, pos, k)  # positions in the screen
    rng = np.random.default_rng(ctx.seed)
    overlap = {}
    for key, (a, b) in {"pref_pref": (top, top), "anti_anti": (bottom, bottom), "pref_anti": (top, bottom)}.items():
        m = overlap_matrix(a, b)
        obs = float(_offdiag(m).mean()) if key != "pref_anti" else float(m.mean())
        null = []
        for _ in range(n_shuffles):
            ra = np.stack([rng.choice(len(idx), k, replace=False) for _ in names])
            rb = np.stack([rng.choice(len(idx), k, replace=False) for _ in names])
            mm = overlap_matrix(ra, rb if key == "pref_anti" else ra)
            null.append(_offdiag(mm).mean() if key != "pref_anti" else mm.mean())
        null = np.array(null)
        overlap[key] = {"observed": obs, "null_mean": float(null.mean()), "p": float((1 + np.sum(null >= obs)) / (1 + len(null))),
                        "matrix": m}
    q_pref, q_anti = cross_quantiles(resp, top), cross_quantiles(resp, bottom)
    nb = {"n_nb": [], "observed": [], "shuffled_mean": [], "shuffled_p95": []}
    for n_nb in range(1, len(names) - 1):
        obs = neighbour_overlap(q_pref, q_anti, n_nb)
        shuf = []
        for _ in range(min(n_shuffles, 100)):
            perm = rng.permutation(len(names))
            shuf.append(neighbour_overlap(q_pref, q_anti[np.ix_(perm, perm)], n_nb))
        nb["n_nb"].append(n_nb)
        nb["observed"].append(obs)
        nb["shuffled_mean"].append(float(np.mean(shuf)))
        nb["shuffled_p95"].append(float(np.percentile(shuf, 95)))
    diag = lambda m: float(np.median(np.diag(m)))  # noqa: E731
    off = lambda m: float(np.median(_offdiag(m)))  # noqa: E731
    payload = {"units": names, "k": k, "n_images": len(idx), "screen": what, "overlap": overlap, "q_pref": q_pref, "q_anti": q_anti,
               "q_pref_diagonal_median": diag(q_pref), "q_pref_offdiagonal_median": off(q_pref),
               "q_anti_diagonal_median": diag(q_anti), "q_anti_offdiagonal_median": off(q_anti), "neighbours": nb}
    rows = [{"unit_i": names[i], "unit_j": names[j], "q_pref": q_pref[i, j], "q_anti": q_anti[i, j],
             "overlap_pref_pref": overlap["pref_pref"]["matrix"][i, j], "overlap_anti_anti": overlap["anti_anti"]["matrix"][i, j],
             "overlap_pref_anti": overlap["pref_anti"]["matrix"][i, j]} for i in range(len(names)) for j in range(len(names))]
    o = overlap
    line = (f"{len(names)} neurons, top/bottom {k} of {len(idx)} images: overlap pref-pref {o['pref_pref']['observed']:.3f} "
            f"(null {o['pref_pref']['null_mean']:.3f}, p {o['pref_pref']['p']:.3f}), anti-anti {o['anti_anti']['observed']:.3f} "
            f"(null {o['anti_anti']['null_mean']:.3f}), pref-anti {o['pref_anti']['observed']:.3f}; cross-neuron q_pref "
            f"diagonal {payload['q_pref_diagonal_median']:.2f} vs off {payload['q_pref_offdiagonal_median']:.2f}")
    return Outputs(payload, rows, lambda p: _figure(p, names, q_pref, q_anti, nb), line)


def _figure(path, names, q_pref, q_anti, nb) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, m, title in ((axes[0], q_pref, "preferred images of neuron j"), (axes[1], q_anti, "anti-preferred images of neuron j")):
        im = ax.imshow(m, cmap="PiYG", vmin=0, vmax=1)
        ax.set_xlabel(title)
        ax.set_ylabel("quantile of neuron i's response")
        if len(names) <= 24:
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, fontsize=6)
            ax.set_yticks(range(len(names)))
            ax.set_yticklabels(names, fontsize=6)
        fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[2]
    ax.plot(nb["n_nb"], nb["observed"], "k-o", ms=3, label="observed")
    ax.plot(nb["n_nb"], nb["shuffled_mean"], "r-", label="neurons shuffled (mean)")
    ax.plot(nb["n_nb"], nb["shuffled_p95"], "r:", label="shuffled 95%")
    ax.set_xlabel("n nearest neurons")
    ax.set_ylabel("pref-space / anti-space neighbour overlap")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
