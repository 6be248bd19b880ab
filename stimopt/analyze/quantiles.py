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

A noisy target (``noise=poisson|gaussian``, ``noise.repeats``) is presented ``repeats`` times
(each image, set or random, gets its own draws); q is taken on the repeat averages, and its spread
is reported: per repeat (a one-presentation session) ``q_pref_single`` with its SD ``q_pref_sd``,
a 90% interval of the repeat-averaged q by resampling the repeats (``q_pref_ci90``, 1,000
bootstrap draws), and the trial-to-trial SD of the responses (``trial_sd_pref``, median over the
set's images; ``trial_sd_random``). ``units=[...]`` channels of a noisy single-unit target
(cnn_unit) are read from one clean pass, each channel with its own noise draws and, for
``noise=poisson``, its own calibration (the expected best of the noise's calibration crops).

JSON keys: ``units`` (one entry per neuron: ``unit``, ``q_pref``, ``q_anti``, ``median_pref``,
``median_anti``, ``random_p5``, ``random_p95``, ``responses_pref``, ``responses_anti``; with
repeats > 1 also ``q_pref_single``, ``q_pref_sd``, ``q_pref_ci90``, ``trial_sd_pref`` (and the
same for anti), ``trial_sd_random``), ``median_q_pref``, ``median_q_anti``, ``median_q_pref_sd``,
``median_q_anti_sd`` (null with one repeat), ``n_random``, ``repeats``, ``noise`` (the target's
noise model or null), ``sets`` (where each set came from).
"""
from __future__ import annotations

import numpy as np
import torch

from stimopt.analyze.common import UnitReader, check_finite, Outputs, sample_indices, score_images
from stimopt.errors import StimoptError


def quantile_of(value: float, random: np.ndarray) -> float:
    """The fraction of ``random`` strictly below ``value`` (the paper's q)."""
    return float(np.mean(np.asarray(random) < value))


class _Presentations:
    """``repeats`` presentations of each image side by side, [B, R * U] (so :func:`score_images` batches
    and checks them); :meth:`split` turns them into [R, B, U]."""

    def __init__(self, fn, names, repeats: int):
        self.fn, self.names, self.repeats = fn, list(names), max(1, int(repeats))

    def __call__(self, imgs) -> np.ndarray:
        with torch.inference_mode():
            return np.concatenate([np.asarray(self.fn(imgs), np.float64).reshape(len(imgs), -1)
                                   for _ in range(self.repeats)], axis=1)

    def split(self, r: np.ndarray) -> np.ndarray:
        return r.reshape(len(r), self.repeats, -1).transpose(1, 0, 2)


class NoisyChannels:
    """Channels ``units`` of a noisy single-unit target (a :class:`stimopt.noise.NoisyTarget` around a
    cnn_unit): one clean pass reads every channel; each channel then gets its own NoisyTarget (own
    draws; for Poisson its own calibration on the noise's calibration crops) around that column."""

    def __init__(self, noisy, units, seed: int = 0):
        import stimopt
        from stimopt.noise import GOOD_STIMULUS_OF, NoisyTarget, expected_max, natural_responses

        clean = UnitReader(noisy.inner, units)
        self.names, cache = clean.names, {}

        def columns(images):
            if cache.get("key") is not images:
                cache.update(key=images, r=clean(images))
            return cache["r"]

        class Column(stimopt.Target):
            def __init__(self, j):
                self.j = j

            def evaluate(self, images):
                return columns(images)[:, self.j]

            def describe(self):
                return f"{noisy.inner.describe()} channel {clean.names[self.j]}"

        class All(stimopt.Target):
            n_outputs = len(clean.names)

            def evaluate(self, images):
                return clean(images)

        good = [None] * len(self.names)
        if noisy.noise == "poisson":  # each channel's expected best natural response sets its spike scale
            r = natural_responses(All(), noisy.n_calibration, noisy.calibration_size, seed=12345)
            good = [expected_max(r[:, j], GOOD_STIMULUS_OF) for j in range(r.shape[1])]
            bad = [n for n, g in zip(self.names, good) if not g > 0]
            if bad:
                raise StimoptError(f"Poisson noise needs a positive best natural response, but unit(s) {bad[:5]} of "
                                   f"{noisy.inner.describe()} have none; use target.relu=true, other units or noise=gaussian")
        self.columns = [NoisyTarget(Column(j), noisy.noise, expected_max_spikes=noisy.expected_max_spikes,
                                    repeats=noisy.repeats, noise_sd=noisy.noise_sd, seed=seed * 1000 + 7 + j,
                                    good_response=good[j], cache=False) for j in range(len(self.names))]

    def __call__(self, images) -> np.ndarray:
        with torch.inference_mode():
            return np.stack([np.asarray(c.evaluate(images), np.float64).reshape(-1) for c in self.columns], axis=1)


def _reader(target, units, seed: int):
    if units is not None and hasattr(target, "inner") and int(getattr(target, "n_outputs", 1) or 1) == 1:
        return NoisyChannels(target, units, seed)
    return UnitReader(target, units)


def spread(sets: np.ndarray, random: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict:
    """The spread of q over presentations: ``sets`` [R, k], ``random`` [R, n] (R repeats)."""
    single = [quantile_of(float(np.median(sets[r])), random[r]) for r in range(len(sets))]
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(int(n_boot)):
        pick = rng.integers(0, len(sets), len(sets))
        boot.append(quantile_of(float(np.median(sets[pick].mean(0))), random[pick].mean(0)))
    return {"single": single, "sd": float(np.std(single, ddof=1)), "ci90": [float(v) for v in np.percentile(boot, [5, 95])],
            "trial_sd": float(np.median(sets.std(0, ddof=1)))}


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
            what, noise_kind = target.describe(), getattr(target, "noise", None)
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
    return {"sets": [sets], "found": found, "fn": fn, "names": ["0"], "target": what, "noise": noise_kind}


def _combined(target, objective):
    def fn(images):
        r = target.evaluate(images)
        r = r.detach().double().cpu().numpy() if isinstance(r, torch.Tensor) else np.asarray(r, np.float64)
        return objective.combine(r).reshape(-1, 1)

    return fn


def _screen_sets(ctx, file, k: int) -> dict:
    from stimopt.analyze.screen import load_screen

    data = load_screen(file, k, "quantiles.k")
    target = ctx.build_target()
    screened, clean = data["meta"].get("target"), getattr(target, "inner", target).describe()
    if screened is not None and screened not in (clean, target.describe()):
        raise StimoptError(f"the screen scored {screened}, but target= builds {clean}; compose the screened target")
    units = data["units"]
    reader = _reader(target, data["meta"].get("units_option", ctx.units), ctx.seed)
    if reader.names != units:
        raise StimoptError(f"the screen's neurons {units[:5]} are not this target's {reader.names[:5]}; pass the screen's units=")
    sets = [{"pref": ctx.source.images(data["top"][j, :k]), "anti": ctx.source.images(data["bottom"][j, :k])}
            for j in range(len(units))]
    found = {"pref": f"top {k} of {data['path']}", "anti": f"bottom {k} of {data['path']}"}
    return {"sets": sets, "found": found, "fn": reader, "names": units, "target": target.describe(),
            "noise": getattr(target, "noise", None),
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

    reader = _Presentations(src["fn"], src["names"], repeats)
    random_r = reader.split(score_images(reader, ctx.source, idx, ctx.batch_size, desc="random images"))  # [R, n, U]
    random = random_r.mean(0)
    units, rows = [], []
    for j, name in enumerate(src["names"]):
        s = src["sets"][j] if len(src["sets"]) > 1 else src["sets"][0]
        entry = {"unit": name}
        for label in ("pref", "anti"):
            if label not in s:
                continue
            rr = reader.split(reader(s[label]))[:, :, j]  # [R, k]
            check_finite(rr, f"the responses to the {label} set")
            r = rr.mean(0)
            entry[f"responses_{label}"] = r
            entry[f"median_{label}"] = float(np.median(r))
            entry[f"q_{label}"] = quantile_of(float(np.median(r)), random[:, j])
            if repeats > 1:
                sp = spread(rr, random_r[:, :, j], seed=ctx.seed + j)
                entry.update({f"q_{label}_single": sp["single"], f"q_{label}_sd": sp["sd"], f"q_{label}_ci90": sp["ci90"],
                              f"trial_sd_{label}": sp["trial_sd"]})
        if repeats > 1:
            entry["trial_sd_random"] = float(np.median(random_r[:, :, j].std(0, ddof=1)))
        entry["random_p5"], entry["random_p95"] = (float(v) for v in np.percentile(random[:, j], [5, 95]))
        units.append(entry)
        rows.append({k2: (v if not isinstance(v, list) else " ".join(f"{x:.4g}" for x in v)) for k2, v in entry.items()
                     if not k2.startswith("responses_")})
    med = {f"median_q_{lb}": float(np.median([u[f"q_{lb}"] for u in units])) if all(f"q_{lb}" in u for u in units) else None
           for lb in ("pref", "anti")}
    for lb in ("pref", "anti"):
        sds = [u[f"q_{lb}_sd"] for u in units if f"q_{lb}_sd" in u]
        med[f"median_q_{lb}_sd"] = float(np.median(sds)) if sds else None
    payload = {"target": src["target"], "bank": ctx.source.describe(), "k": k, "n_random": len(idx), "repeats": repeats,
               "noise": src.get("noise"), "sets": src["found"], "units": units, **med}
    qp, qa = med["median_q_pref"], med["median_q_anti"]

    def fmt(v, sd):
        return "None" if v is None else f"{v:.3f}" + (f" (sd {sd:.3f} per presentation)" if sd is not None else "")

    line = (f"{src['target']}, {len(units)} neuron(s): median q_pref {fmt(qp, med['median_q_pref_sd'])}, "
            f"q_anti {fmt(qa, med['median_q_anti_sd'])} among {len(idx)} random images ({repeats} repeat(s))")
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
