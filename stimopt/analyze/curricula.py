"""Data-pruning curricula (seed paper, Fig. 3 and A.1.3): how much do preferred and anti-preferred
images tell a student about a neuron's tuning?

A teacher neuron (``target=``: cnn_unit, v4_ensemble, a planted twin, ...) is screened on a pool
of bank images (``curricula.screen=FILE``, a screen file, or scored here: ``curricula.n`` random
bank images); a held-out test set (``n_test``) and validation set (``n_val``), disjoint from the
pool, are scored the same way. For each training-set size K in ``sizes`` and each curriculum a
student (:mod:`stimopt.analyze.student`, the paper's 5-layer CNN, 100 filters, Adam 1e-4, early
stopping on validation) is trained from scratch and its R^2 on the test responses is reported:

    pref        the K highest-responding pool images
    anti        the K lowest
    pref_anti   the K/2 highest and the K/2 lowest
    random      K random pool images
    median      the K images with responses closest to the pool's median ("non-preferred")
    synthesized K/2 images of a direction=max run and K/2 of a direction=min run
                (``curricula.runs=[MAX_RUN, MIN_RUN]``: the best stored images of each, regenerated
                from their codes), skipped when ``runs`` is null

``random_fraction`` (0.1) of every non-random set is replaced by random pool images (for pref
its lowest responses, for anti its highest, for pref_anti the innermost of each half, for median
the farthest from the median). Training and validation responses get Gaussian noise of
``noise`` (0.2) x the pool's response SD (the student predicts the noisy value); the test R^2 is
on the clean responses. Every teacher response is read with the same batched reader as the
other analyses (:func:`stimopt.analyze.common.score_images`). Seeded and deterministic.

JSON keys: ``target``, ``bank``, ``units`` (the neurons), ``sizes``, ``curricula`` (names run),
``n_pool``, ``n_test``, ``n_val``, ``noise``, ``random_fraction``, ``student`` (its options),
``r2`` ({curriculum: [mean R^2 over neurons, per size]}), ``r2_sem`` (same shape, s.e.m. over
neurons; 0 with one neuron), ``r2_units`` ({curriculum: [[R^2 per neuron] per size]}),
``epochs`` ({curriculum: [[epochs run per neuron] per size]}), ``claim`` (per size:
``pref_anti_minus_pref``, ``pref_anti_minus_random``, ``beats_pref``, ``beats_random``),
``reproduces`` (pref_anti beats both pref and random at every size; null when one of them was
not run), ``screen`` (the screen file used, or null).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from stimopt.analyze.common import ArraySource, Outputs, UnitReader, check_finite, score_images
from stimopt.analyze.screen import load_screen, top_bottom
from stimopt.errors import StimoptError

CURRICULA = ("pref", "anti", "pref_anti", "random", "median", "synthesized")
LABELS = {"pref": "pref. only", "anti": "anti-pref. only", "pref_anti": "pref.+anti-pref.", "random": "random",
          "median": "non-pref. (median)", "synthesized": "synthesized"}


def _replace(chosen: np.ndarray, drop: np.ndarray, pool_n: int, rng) -> np.ndarray:
    """``chosen`` (pool positions) with the positions ``drop`` replaced by random others of the pool."""
    keep = np.setdiff1d(chosen, drop, assume_unique=False)
    free = np.setdiff1d(np.arange(pool_n), chosen)
    extra = rng.choice(free, size=min(len(drop), len(free)), replace=False)
    return np.concatenate([keep, extra])


def select(curriculum: str, resp: np.ndarray, k: int, random_fraction: float, rng) -> np.ndarray:
    """Pool positions of the training set ``curriculum`` of size ``k`` from pool responses [N]."""
    n = len(resp)
    m = int(round(random_fraction * k))
    if curriculum == "random":
        return rng.choice(n, size=k, replace=False)
    pos = np.arange(n)
    if curriculum in ("pref", "anti"):
        top, _, bottom, _ = top_bottom(resp[:, None], pos, k)
        chosen = (top if curriculum == "pref" else bottom)[0]  # best (lowest) first
        return _replace(chosen, chosen[k - m:] if m else chosen[:0], n, rng)
    if curriculum == "pref_anti":
        half = k // 2
        top, _, bottom, _ = top_bottom(resp[:, None], pos, k - half)
        top, bottom = top[0][:k - half], bottom[0][:half]
        mt = m - m // 2
        drop = np.concatenate([top[len(top) - mt:] if mt else top[:0], bottom[len(bottom) - m // 2:] if m // 2 else bottom[:0]])
        return _replace(np.concatenate([top, bottom]), drop, n, rng)
    if curriculum == "median":
        order = np.argsort(np.abs(resp - np.median(resp)), kind="stable")[:k]  # nearest first
        return _replace(order, order[k - m:] if m else order[:0], n, rng)
    raise StimoptError(f"unknown curriculum '{curriculum}'; choose from {', '.join(CURRICULA)}")


def _synthesized_images(runs, k: int) -> torch.Tensor:
    """The best ceil(k/2) stored images of the max run and floor(k/2) of the min run, regenerated."""
    from omegaconf import OmegaConf

    from stimopt import plugins, run_reader
    from stimopt.experiment import build

    runs = [runs] if isinstance(runs, str) else list(runs)
    if len(runs) != 2:
        raise StimoptError("curricula.runs must be two run directories: [a direction=max run, a direction=min run]")
    plugins.load_plugins()
    out = []
    for run, n, want in zip(runs, (k - k // 2, k // 2), ("max", "min")):
        snap = run_reader.snapshot(run, k=n)
        cfg = OmegaConf.create(snap["meta"].get("config") or {})
        if "generator" not in cfg or len(snap["best"]) < n:
            raise StimoptError(f"curricula.runs: {run} has fewer than {n} scored images or no config; "
                               "run longer or use smaller curricula.sizes")
        if str(cfg.get("direction", "max")) != want:
            raise StimoptError(f"curricula.runs: {run} ran direction={cfg.get('direction')}; give [a max run, a min run]")
        codes = [r["code"] for r in snap["best"][:n]]
        codes = np.asarray(codes) if np.ndim(codes[0]) else np.asarray(codes, dtype=np.int64)
        with torch.inference_mode():
            out.append(build("generator", cfg.generator, device="cpu").generate(codes).float().cpu())
    return torch.cat(out)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size:
        return x
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def run(ctx) -> Outputs:
    from tqdm import tqdm

    from stimopt.analyze.student import r2, train_student

    opt = ctx.options
    sizes = sorted(int(s) for s in (opt.get("sizes") or [100, 300]))
    names = [str(c) for c in (opt.get("curricula") or ["pref", "anti", "pref_anti", "random", "median"])]
    bad = [c for c in names if c not in CURRICULA]
    if bad:
        raise StimoptError(f"unknown curricula {bad}; choose from {', '.join(CURRICULA)}")
    if "synthesized" in names and not opt.get("runs"):
        names.remove("synthesized")
    elif opt.get("runs") and "synthesized" not in names:
        names.append("synthesized")
    if min(sizes) < 4:
        raise StimoptError(f"curricula.sizes must be at least 4 images each, got {sizes}")
    n_test, n_val = int(opt.get("n_test", 500)), int(opt.get("n_val", 200))
    noise, frac = float(opt.get("noise", 0.2)), float(opt.get("random_fraction", 0.1))
    if not 0 <= frac < 1 or noise < 0 or n_test < 10 or n_val < 10:
        raise StimoptError("curricula: random_fraction must be in [0, 1), noise >= 0, n_test and n_val >= 10")
    st = {"layers": int(opt.get("layers", 5)), "filters": int(opt.get("filters", 100)), "lr": float(opt.get("lr", 1e-4)),
          "batch_size": int(opt.get("train_batch_size", 64)), "epochs": int(opt.get("epochs", 30)),
          "patience": int(opt.get("patience", 5))}
    image_size = int(opt.get("image_size", 32))
    seed = int(ctx.seed)
    rng = np.random.default_rng(seed)
    source = ctx.source
    target = ctx.build_target()
    reader = UnitReader(target, ctx.units)

    # the pool: a screen file's images and responses, or screened here
    screen_file = opt.get("screen")
    if screen_file:
        scr = load_screen(screen_file)
        want = [str(u) for u in reader.names]
        missing = [u for u in want if u not in scr["units"]]
        if missing:
            raise StimoptError(f"the screen file {scr['path']} has no neuron(s) {missing} (it has {scr['units'][:10]}); "
                               "screen them, or choose units= / target.unit= among its neurons")
        pool_idx = np.asarray(scr["indices"], np.int64)
        pool_resp = np.asarray(scr["responses"], np.float64)[:, [scr["units"].index(u) for u in want]]
        check_finite(pool_resp, f"the screen file {scr['path']}")
    else:
        n_pool = opt.get("n")
        n_pool = int(n_pool) if n_pool is not None else source.size - n_test - n_val
        if n_pool + n_test + n_val > source.size:
            raise StimoptError(f"{source.describe()} is too small: curricula.n={n_pool} pool + n_test={n_test} + n_val={n_val} "
                               f"images are needed; lower them or use a larger bank")
        pool_idx = None
    held_n = n_test + n_val
    if screen_file:
        free = np.setdiff1d(np.arange(source.size), pool_idx)
        if len(free) < held_n:
            raise StimoptError(f"the bank has {len(free):,} images outside the screen's pool, fewer than n_test + n_val = "
                               f"{held_n}; screen a subset (screen.n) or lower curricula.n_test / n_val")
        held = rng.choice(free, size=held_n, replace=False)
    else:
        perm = rng.permutation(source.size)[:n_pool + held_n]
        pool_idx, held = np.sort(perm[:n_pool]), perm[n_pool:]
    if sizes[-1] > len(pool_idx) // 2:
        raise StimoptError(f"curricula.sizes up to {sizes[-1]} need a pool of at least {2 * sizes[-1]} images (top and "
                           f"bottom {sizes[-1]} disjoint); the pool has {len(pool_idx)}: raise curricula.n, use a larger "
                           f"bank (or screen), or lower curricula.sizes")
    test_idx, val_idx = np.sort(held[:n_test]), np.sort(held[n_test:])
    if not screen_file:
        pool_resp = score_images(reader, source, pool_idx, ctx.batch_size, desc="curricula: pool", repeats=ctx.repeats)
    test_resp = score_images(reader, source, test_idx, ctx.batch_size, desc="curricula: test", repeats=ctx.repeats)
    val_resp = score_images(reader, source, val_idx, ctx.batch_size, desc="curricula: validation", repeats=ctx.repeats)
    synth_x = synth_resp = None
    if "synthesized" in names:
        synth = _synthesized_images(opt["runs"], sizes[-1])
        synth_resp = score_images(reader, ArraySource(synth.numpy(), what="synthesized images"), np.arange(len(synth)),
                                  ctx.batch_size, desc="curricula: synthesized", repeats=ctx.repeats)
        synth_x = _resize(synth, image_size)

    # student inputs, rendered once at the student's size
    def render(idx):
        return torch.cat([source.images(idx[s:s + 512], image_size) for s in range(0, len(idx), 512)]).float()

    pool_x, test_x, val_x = render(pool_idx), render(test_idx), render(val_idx)
    n_units = pool_resp.shape[1]
    r2s = {c: np.full((len(sizes), n_units), np.nan) for c in names}
    epochs = {c: np.zeros((len(sizes), n_units), np.int64) for c in names}
    total = len(names) * len(sizes) * n_units
    t0 = time.time()
    with tqdm(total=total, desc="curricula: training students", unit="student", dynamic_ncols=True, mininterval=1.0) as bar:
        for j in range(n_units):
            resp = pool_resp[:, j]
            sigma = float(resp.std()) or 1.0
            noise_rng = np.random.default_rng([seed, j, 1])
            pool_noisy = resp + noise * sigma * noise_rng.standard_normal(len(resp))
            val_noisy = val_resp[:, j] + noise * sigma * noise_rng.standard_normal(len(val_idx))
            synth_noisy = (synth_resp[:, j] + noise * sigma * noise_rng.standard_normal(len(synth_resp))
                           if synth_resp is not None else None)
            for si, k in enumerate(sizes):
                for ci, c in enumerate(names):
                    pick_rng = np.random.default_rng([seed, j, si, ci])
                    if c == "synthesized":
                        half = k - k // 2
                        pick = np.r_[np.arange(half), len(synth_x) - (sizes[-1] // 2) + np.arange(k // 2)]
                        m = int(round(frac * k))
                        x, y = synth_x[pick], synth_noisy[pick]
                        if m:  # the innermost of each half replaced by random pool images
                            drop = np.r_[np.arange(half - (m - m // 2), half), np.arange(k - m // 2, k)]
                            keep = np.setdiff1d(np.arange(k), drop)
                            extra = pick_rng.choice(len(pool_idx), size=m, replace=False)
                            x = torch.cat([x[keep], pool_x[extra]])
                            y = np.r_[y[keep], pool_noisy[extra]]
                    else:
                        pos = select(c, resp, k, frac, pick_rng)
                        x, y = pool_x[pos], pool_noisy[pos]
                    predict, info = train_student(x, y, val_x, val_noisy, seed=seed * 1000 + si * 10 + ci, **st)
                    r2s[c][si, j] = r2(predict(test_x), test_resp[:, j])
                    epochs[c][si, j] = info["epochs"]
                    bar.set_postfix_str(f"{c} K={k}: R2 {r2s[c][si, j]:.2f}")
                    bar.update(1)
    seconds = time.time() - t0
    mean = {c: np.nanmean(r2s[c], axis=1) for c in names}
    sem = {c: (np.nanstd(r2s[c], axis=1, ddof=1) / np.sqrt(n_units)) if n_units > 1 else np.zeros(len(sizes)) for c in names}
    claim, reproduces = [], None
    if {"pref_anti", "pref", "random"} <= set(names):
        for si, k in enumerate(sizes):
            dp, dr = mean["pref_anti"][si] - mean["pref"][si], mean["pref_anti"][si] - mean["random"][si]
            claim.append({"size": k, "pref_anti_minus_pref": dp, "pref_anti_minus_random": dr,
                          "beats_pref": bool(dp > 0), "beats_random": bool(dr > 0)})
        reproduces = all(c["beats_pref"] and c["beats_random"] for c in claim)
    payload = {"target": target.describe(), "bank": source.describe(), "units": list(reader.names), "sizes": sizes,
               "curricula": names, "n_pool": len(pool_idx), "n_test": n_test, "n_val": n_val, "noise": noise,
               "random_fraction": frac, "student": {**st, "image_size": image_size},
               "r2": {c: mean[c] for c in names}, "r2_sem": {c: sem[c] for c in names},
               "r2_units": {c: r2s[c] for c in names}, "epochs": {c: epochs[c] for c in names},
               "claim": claim, "reproduces": reproduces, "screen": str(screen_file) if screen_file else None,
               "train_seconds": seconds, "seed": seed}
    rows = [{"curriculum": c, "size": k, "r2_mean": mean[c][si], "r2_sem": sem[c][si], "n_units": n_units}
            for c in names for si, k in enumerate(sizes)]
    best = max(names, key=lambda c: mean[c][-1])
    verdict = ("" if reproduces is None else
               f"; pref+anti beats pref-only and random at every size: {'yes' if reproduces else 'no'}")
    line = (f"{target.describe()}: {n_units} neuron(s), student R^2 at K={sizes[-1]}: "
            + ", ".join(f"{c} {mean[c][-1]:.2f}" for c in names) + f" (best {best}){verdict}")
    return Outputs(payload, rows, lambda p: _figure(p, sizes, names, mean, sem), line)


def _figure(path, sizes, names, mean, sem) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for c in names:
        m, s = np.asarray(mean[c]), np.asarray(sem[c])
        ax.plot(sizes, m, marker="o", label=LABELS.get(c, c))
        ax.fill_between(sizes, m - s, m + s, alpha=0.2)
    ax.set_xlabel("number of training images")
    ax.set_ylabel("held-out R$^2$")
    ax.set_title("data-pruning curricula", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
