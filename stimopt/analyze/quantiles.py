"""Where found images fall among random natural images (seed paper, Fig. 2b and A.1.1).

For each neuron, its preferred and anti-preferred sets are measured again (``repeats``
presentations averaged when the target is noisy) together with ``n_random`` random bank images,
and the median response of each set is placed among the random responses:

    q = fraction of random images whose response is below the set's median response

(the paper's q_pref = 0.985 and q_anti = 0.055 for validated V4 images: preferred near 1,
anti-preferred near 0). The sets come from

- ``quantiles.run=DIR`` (or a list of run directories): a run's best K by stored score are its
  found set (preferred for ``direction=max``, anti-preferred for ``direction=min``); its worst K
  stand in for the other set unless another run found it. Images are regenerated from the stored
  codes; the target, its noise and the read-out (objective) are the run's own.
- ``quantiles.screen=FILE``: a screen file's top / bottom K bank images per neuron; the target
  is this app's ``target=`` (it must be the screened one).

JSON keys: ``units`` (one entry per neuron: ``unit``, ``q_pref``, ``q_anti``, ``median_pref``,
``median_anti``, ``random_p5``, ``random_p95``, ``responses_pref``, ``responses_anti``),
``median_q_pref``, ``median_q_anti``, ``n_random``, ``repeats``, ``sets`` (where each set came from).
"""
from __future__ import annotations

import numpy as np
import torch

from stimopt.analyze.common import UnitReader, check_finite, Outputs, sample_indices, score_images
from stimopt.errors import StimoptError


def quantile_of(value: float, random: np.ndarray) -> float:
    """The fraction of ``random`` strictly below ``value`` (the paper's q)."""
    return float(np.mean(np.asarray(random) < value))


def _repeat(fn, images, repeats: int) -> np.ndarray:
    with torch.inference_mode():
        return np.mean([fn(images) for _ in range(max(1, repeats))], axis=0)


def _run_sets(ctx, runs, k: int) -> dict:
    """The sets, the scalar response function and a description from one or more run directories."""
    from omegaconf import OmegaConf

    from stimopt import noise, plugins, run_reader
    from stimopt.experiment import build, seed_everything
    from stimopt.objective import Objective

    plugins.load_plugins()
    sets, found, target_cfg, fn = {}, {}, None, None
    for run in ([runs] if isinstance(runs, str) else list(runs)):
        snap = run_reader.snapshot(run, k=k, worst=True)
        cfg = OmegaConf.create(snap["meta"].get("config") or {})
        if "target" not in cfg or len(snap["best"]) < k or len(snap["worst"]) < k:
            raise StimoptError(f"{run} has fewer than {k} scored images (quantiles.k={k}) or no config")
        this = OmegaConf.to_container(cfg.target, resolve=True)
        if target_cfg is None:
            target_cfg = this
            seed_everything(int(cfg.seed))
            target = noise.wrap(build("target", cfg.target, device="cpu"), cfg.get("noise"), seed=int(cfg.seed))
            objective = Objective(cfg.direction, **OmegaConf.to_container(cfg.get("objective") or {}, resolve=True))
            fn = _combined(target, objective)
            what = target.describe()
        elif this != target_cfg:
            raise StimoptError(f"quantiles.run: {run} measured another target than the first run; give runs of one target")
        generator = build("generator", cfg.generator, device="cpu")
        direction = str(cfg.direction)
        for which, rows in (("best", snap["best"]), ("worst", snap["worst"])):
            label = "pref" if (which == "best") == (direction == "max") else "anti"
            if which == "worst" and label in found:
                continue
            codes = [r["code"] for r in rows]
            codes = np.asarray(codes) if np.ndim(codes[0]) else np.asarray(codes, dtype=np.int64)
            with torch.inference_mode():
                sets[label] = generator.generate(codes).float()
            found[label] = f"{which} {k} by stored score of {run} (direction={direction})"
    return {"sets": [sets], "found": found, "fn": fn, "names": ["0"], "target": what}


def _combined(target, objective):
    def fn(images):
        r = target.evaluate(images)
        r = r.detach().double().cpu().numpy() if isinstance(r, torch.Tensor) else np.asarray(r, np.float64)
        return objective.combine(r).reshape(-1, 1)

    return fn


def _screen_sets(ctx, file, k: int) -> dict:
    from stimopt.analyze.screen import load_screen

    data = load_screen(file)
    if k > data["top"].shape[1]:
        raise StimoptError(f"quantiles.k={k} but the screen kept only {data['top'].shape[1]} images per neuron")
    target = ctx.build_target()
    screened, clean = data["meta"].get("target"), getattr(target, "inner", target).describe()
    if screened is not None and screened not in (clean, target.describe()):
        raise StimoptError(f"the screen scored {screened}, but target= builds {clean}; compose the screened target")
    units = data["units"]
    reader = UnitReader(target, data["meta"].get("units_option", ctx.units))
    if reader.names != units:
        raise StimoptError(f"the screen's neurons {units[:5]} are not this target's {reader.names[:5]}; pass the screen's units=")
    sets = [{"pref": ctx.source.images(data["top"][j, :k]), "anti": ctx.source.images(data["bottom"][j, :k])}
            for j in range(len(units))]
    found = {"pref": f"top {k} of {data['path']}", "anti": f"bottom {k} of {data['path']}"}
    return {"sets": sets, "found": found, "fn": reader, "names": units, "target": target.describe(),
            "exclude": np.concatenate([data["top"][:, :k].ravel(), data["bottom"][:, :k].ravel()])}


def run(ctx) -> Outputs:
    opt = ctx.options
    k, n_random = int(opt.get("k", 10)), int(opt.get("n_random", 500))
    repeats = max(1, int(ctx.repeats))
    if opt.get("run"):
        src = _run_sets(ctx, opt["run"], k)
    elif opt.get("screen"):
        src = _screen_sets(ctx, opt["screen"], k)
    else:
        raise StimoptError("quantiles needs the sets: quantiles.run=RUN_DIR (or [DIR_MAX, DIR_MIN]) or quantiles.screen=FILE")
    idx = sample_indices(ctx.source.size, n_random, ctx.seed + 1, "random images (quantiles.n_random)")
    if "exclude" in src and len(np.setdiff1d(idx, src["exclude"])):  # random images outside the screened sets
        idx = np.setdiff1d(idx, src["exclude"])

    class _Reader:  # score_images wants names and a call
        names = src["names"]

        def __call__(self, imgs):
            return src["fn"](imgs)

    random = score_images(_Reader(), ctx.source, idx, ctx.batch_size, desc="random images", repeats=repeats)
    units, rows = [], []
    for j, name in enumerate(src["names"]):
        s = src["sets"][j] if len(src["sets"]) > 1 else src["sets"][0]
        entry = {"unit": name}
        for label in ("pref", "anti"):
            if label not in s:
                continue
            r = _repeat(src["fn"], s[label], repeats)[:, j]
            check_finite(r, f"the responses to the {label} set")
            entry[f"responses_{label}"] = r
            entry[f"median_{label}"] = float(np.median(r))
            entry[f"q_{label}"] = quantile_of(float(np.median(r)), random[:, j])
        entry["random_p5"], entry["random_p95"] = (float(v) for v in np.percentile(random[:, j], [5, 95]))
        units.append(entry)
        rows.append({k2: v for k2, v in entry.items() if not k2.startswith("responses_")})
    med = {f"median_q_{lb}": float(np.median([u[f"q_{lb}"] for u in units])) if all(f"q_{lb}" in u for u in units) else None
           for lb in ("pref", "anti")}
    payload = {"target": src["target"], "bank": ctx.source.describe(), "k": k, "n_random": len(idx), "repeats": repeats,
               "sets": src["found"], "units": units, **med}
    qp, qa = med["median_q_pref"], med["median_q_anti"]
    line = (f"{src['target']}, {len(units)} neuron(s): median q_pref {qp if qp is None else round(qp, 3)}, "
            f"q_anti {qa if qa is None else round(qa, 3)} among {len(idx)} random images ({repeats} repeat(s))")
    return Outputs(payload, rows, lambda p: _figure(p, units, random), line)


def _figure(path, units, random) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(units) + 2), 3.6))
    for j, u in enumerate(units):
        ax.plot([j, j], [u["random_p5"], u["random_p95"]], color="grey", lw=6, alpha=0.5, solid_capstyle="butt")
        for label, color in (("pref", "tab:purple"), ("anti", "tab:pink")):
            if f"responses_{label}" in u:
                r = u[f"responses_{label}"]
                ax.scatter(np.full(len(r), j) + np.random.default_rng(j).uniform(-0.15, 0.15, len(r)), r, s=10, color=color,
                           label=("preferred" if label == "pref" else "anti-preferred") if j == 0 else None)
    ax.set_xticks(range(len(units)))
    ax.set_xticklabels([u["unit"] for u in units], fontsize=7)
    ax.set_xlabel("neuron (grey: 5-95% of responses to random bank images)")
    ax.set_ylabel("response")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
