"""Black-box search against the white-box optimum on the same units (issue 14, part 4).

Every run is ``stimopt target.layer=L target.unit=U <overrides> budget=B`` composed with stimopt's
Hydra configs and run by the engine (EfficientNet-Lite0 centre units, 128 px). Recorded per run:

- ``best_response``: the best recorded response (noiseless runs: the black-box result);
- ``best_evolved``: the clean response to the stimulus with the best recorded score;
- ``last_gen_best``: the clean response to the best-scored stimulus of the last generation
  (XDream's scoring under noise).

White-box references (``wb-*`` labels) are gradient ascent through ``optimizer=latent_gradient``
(every gradient pass is an engine evaluation); ``mei`` rows come from
benchmarks/results/mei_vs_lucent.json when that file exists. The ratio of a black-box run is its
``best_response`` (noiseless) or ``last_gen_best`` (noisy) over the best white-box figure of the
same unit, and every ratio names the reference it uses.

Runs are appended to ``--out`` as they finish, so a run cut short keeps what it measured.

    .venv/bin/python benchmarks/blackbox_vs_whitebox.py --plan default,cma-g1 --units 'blocks.3:0,5'
    .venv/bin/python benchmarks/blackbox_vs_whitebox.py --table
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NOISES = {"none": [], "poisson20": ["target.relu=true", "noise=poisson", "noise.expected_max_spikes=20"],
          "poisson5": ["target.relu=true", "noise=poisson", "noise.expected_max_spikes=5"]}
FOURIER_OLD = ["generator.gain=4.0"]  # the Fourier code before this benchmark (sigmoid saturated: flat blobs)
S1 = "optimizer.sigma0=1.0"  # cmaes's step size before this benchmark
CONFIGS = {  # label -> overrides on top of the embedded default (cmaes on fourier)
    "default": [],  # today's embedded default: cmaes (sigma0 1) on fourier (gain 1), the same as cma-g1
    "cma-g4": ["optimizer=cmaes", *FOURIER_OLD, S1],  # the embedded default before this benchmark
    "cma-g1": ["optimizer=cmaes", "generator.gain=1.0", S1],
    "cma-g2": ["optimizer=cmaes", "generator.gain=2.0", S1],
    "cma-g1-nf24": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", S1],
    "cma-g1-pop40": ["optimizer=cmaes", "generator.gain=1.0", "batch_size=40", S1],
    "cma-g1-s05": ["optimizer=cmaes", "generator.gain=1.0", "optimizer.sigma0=0.5"],
    "cma-g1-s2": ["optimizer=cmaes", "generator.gain=1.0", "optimizer.sigma0=2.0"],
    "cma-g05": ["optimizer=cmaes", "generator.gain=0.5", S1],
    "cma-g1-d05": ["optimizer=cmaes", "generator.gain=1.0", "generator.decay=0.5", S1],
    "cma-g1-d15": ["optimizer=cmaes", "generator.gain=1.0", "generator.decay=1.5", S1],
    "cma-g1-nf8": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=8", S1],
    "cma-g1-nf16": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=16", S1],
    "cma-g1-s025": ["optimizer=cmaes", "generator.gain=1.0", "optimizer.sigma0=0.25"],
    "cma-g1-s05-pop40": ["optimizer=cmaes", "generator.gain=1.0", "optimizer.sigma0=0.5", "batch_size=40"],
    "cma-g1-s05-nf8": ["optimizer=cmaes", "generator.gain=1.0", "optimizer.sigma0=0.5", "generator.n_freq=8"],
    "cma-g1-nf6": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=6", S1],
    "cma-g1-s05-nf6": ["optimizer=cmaes", "generator.gain=1.0", "optimizer.sigma0=0.5", "generator.n_freq=6"],
    "cma-full-nf6": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=6", "optimizer.diagonal=false", S1],
    "cma-full-nf8": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=8", "optimizer.diagonal=false", S1],
    "cma-g1-pop10": ["optimizer=cmaes", "generator.gain=1.0", "batch_size=10", S1],
    "cma-o04": ["optimizer=cmaes", "generator.gain=1.0", "generator.opponent=0.4", S1],
    "cma-o04-s05": ["optimizer=cmaes", "generator.gain=1.0", "generator.opponent=0.4", "optimizer.sigma0=0.5"],
    "cma-s05-nf24": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.5"],
    "cma-s05-d15": ["optimizer=cmaes", "generator.gain=1.0", "generator.decay=1.5", "optimizer.sigma0=0.5"],
    "cma-s05-el": ["optimizer=cmaes", "generator.gain=1.0", "optimizer.sigma0=0.5", "optimizer.elitist=true"],
    "cma-s05-pop10": ["optimizer=cmaes", "generator.gain=1.0", "optimizer.sigma0=0.5", "batch_size=10"],
    "cma-s05-vd": ["optimizer=cmaes", "generator.gain=1.0", "optimizer.sigma0=0.5", "optimizer.sampler=vd"],
    "cma-s05-vkd": ["optimizer=cmaes", "generator.gain=1.0", "optimizer.sigma0=0.5", "optimizer.sampler=vkd"],
    "cma-s05-csa": ["optimizer=cmaes", "generator.gain=1.0", "optimizer.sigma0=0.5", "+optimizer.adapt_sigma=csa"],
    "cma-s1-csa": ["optimizer=cmaes", "generator.gain=1.0", "optimizer.sigma0=1.0", "+optimizer.adapt_sigma=csa"],
    "cma-s05-c2": ["optimizer=cmaes", "generator.gain=1.0", "optimizer.sigma0=0.5", "+generator.contrast=2.0"],
    "cma-s05-c3": ["optimizer=cmaes", "generator.gain=1.0", "optimizer.sigma0=0.5", "+generator.contrast=3.0"],
    "cma-s1-c3": ["optimizer=cmaes", "generator.gain=1.0", "optimizer.sigma0=1.0", "+generator.contrast=3.0"],
    "default-pop40": ["batch_size=40"], "default-pop100": ["batch_size=100"],
    # issue 14 part 4, this round: on top of the default (sigma0 0.5, 24 x 24)
    "nf24-pop10": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.5", "batch_size=10"],
    "nf24-mirror": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.5",
                    "+optimizer.options.CMA_mirrors=0.25"],
    "c2f-6-12-a15-40": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.5",
                        "optimizer.coarse_to_fine=[6,12]", "optimizer.coarse_to_fine_at=[0.15,0.4]"],
    "c2f-6-12-a25-60": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.5",
                        "optimizer.coarse_to_fine=[6,12]", "optimizer.coarse_to_fine_at=[0.25,0.6]"],
    "c2f-6-12-a15-40-s1": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.5",
                           "optimizer.coarse_to_fine=[6,12]", "optimizer.coarse_to_fine_at=[0.15,0.4]",
                           "optimizer.coarse_to_fine_step=1.0"],
    "c2f-12-a30-s1": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.5",
                      "optimizer.coarse_to_fine=[12]", "optimizer.coarse_to_fine_at=[0.3]", "optimizer.coarse_to_fine_step=1.0"],
    "c2f-12-a30-sig1-s05": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=1.0",
                            "optimizer.coarse_to_fine=[12]", "optimizer.coarse_to_fine_at=[0.3]", "optimizer.coarse_to_fine_step=0.5"],
    "c2f-12-a50-s1": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.5",
                      "optimizer.coarse_to_fine=[12]", "optimizer.coarse_to_fine_at=[0.5]", "optimizer.coarse_to_fine_step=1.0"],
    "nf24-cmean2": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.5",
                    "+optimizer.options.CMA_cmean=2.0"],
    "nf24-tpa05": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.5",
                   "+optimizer.options.TPA_dampfac=0.5"],
    "nf24-tpa2": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.5",
                  "+optimizer.options.TPA_dampfac=2.0"],
    "nf24-noactive": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.5",
                      "+optimizer.options.CMA_active=false"],
    # issue 14 part 4, next round: code size between 12 and 24, step size, pycma's learning rates and parents
    "nf16-s05": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=16", "optimizer.sigma0=0.5"],
    "nf20-s05": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=20", "optimizer.sigma0=0.5"],
    "nf24-s07": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.7"],
    "nf24-rankmu2": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.5",
                     "+optimizer.options.CMA_rankmu=2.0"],
    "nf24-rankmu4": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.5",
                     "+optimizer.options.CMA_rankmu=4.0"],
    "nf24-mu5": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.5",
                 "+optimizer.options.CMA_mu=5"],
    "nf32-s05": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=32", "optimizer.sigma0=0.5"],
    "nf24-cf8": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.5", "generator.chroma_freq=8"],
    "nf24-cf12": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.5", "generator.chroma_freq=12"],
    "nf24-cf0": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.5", "generator.chroma_freq=0"],
    "nf32-cf8": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=32", "optimizer.sigma0=0.5", "generator.chroma_freq=8"],
    "wb-nf24-cf8": ["optimizer=latent_gradient", "optimizer.kld=none", "optimizer.init=random", "batch_size=4",
                    "optimizer.steps_per_ask=50", "optimizer.lr=0.05", "generator.n_freq=24", "generator.gain=1.0",
                    "generator.chroma_freq=8"],
    "wb-g1-nf16": ["optimizer=latent_gradient", "optimizer.kld=none", "optimizer.init=random", "batch_size=4",
                   "optimizer.steps_per_ask=50", "optimizer.lr=0.05", "generator.n_freq=16", "generator.gain=1.0"],
    # round 9: codes with fewer dims for the same detail where the unit looks: an aperture (generator.extent, px)
    # or a mirrored tile (generator.tile, px); and the white-box ceiling of each code (Adam, wb-*)
    **{f"e{e}-{f}": ["optimizer=cmaes", "generator.gain=1.0", f"generator.extent={e}", f"generator.n_freq={f}",
                     "optimizer.sigma0=0.5"] for e, f in ((64, 12), (80, 12), (80, 15), (96, 16))},
    # XDream's antithetic optimizers on the 24 x 24 code: their defaults, and FDGD as a zeroth-order gradient (small radius)
    "fdgd-nf24": ["optimizer=fdgd", "generator.gain=1.0", "generator.n_freq=24"],
    "nes-nf24": ["optimizer=nes", "generator.gain=1.0", "generator.n_freq=24"],
    **{f"fd-r{r.replace('.', '')}-lr{lr.replace('.', '')}": ["optimizer=fdgd", "generator.gain=1.0", "generator.n_freq=24",
                                                          f"optimizer.search_radius={r}", f"optimizer.learning_rate={lr}"]
       for r, lr in (("0.1", "0.01"), ("0.1", "0.03"), ("0.1", "0.015"), ("0.03", "0.003"))},
    "t32-12-s05": ["optimizer=cmaes", "generator.gain=1.0", "generator.tile=32", "generator.n_freq=12", "optimizer.sigma0=0.5"],
    "t32-12-s1": ["optimizer=cmaes", "generator.gain=1.0", "generator.tile=32", "generator.n_freq=12", "optimizer.sigma0=1.0"],
    **{f"wb-{k}": ["optimizer=latent_gradient", "optimizer.kld=none", "optimizer.init=random", "batch_size=4",
                   "optimizer.steps_per_ask=50", "optimizer.lr=0.05", "generator.gain=1.0", *v]
       for k, v in {"nf12": ["generator.n_freq=12"], "e80-12": ["generator.extent=80", "generator.n_freq=12"],
                    "e80-15": ["generator.extent=80", "generator.n_freq=15"],
                    "t32-12": ["generator.tile=32", "generator.n_freq=12"]}.items()},
    # the other optimizers on the 12 x 12, gain 1 code (the fourier defaults when they were run), pinned
    "ga": ["optimizer=ga", "generator.n_freq=12", "generator.gain=1.0"],
    "nes": ["optimizer=nes", "generator.n_freq=12", "generator.gain=1.0"],
    "fdgd": ["optimizer=fdgd", "generator.n_freq=12", "generator.gain=1.0"],
    "ga-g4": ["optimizer=ga", *FOURIER_OLD], "nes-g4": ["optimizer=nes", *FOURIER_OLD],
    "fdgd-g4": ["optimizer=fdgd", *FOURIER_OLD],
    # issue 14 part 4, noise: levers on the default (24 x 24, sigma0 0.5) for a noisy neuron
    "noisy-pop40": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.5", "batch_size=40"],
    "noisy-pop100": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.5", "batch_size=100"],
    "noisy-s1": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=1.0"],
    "noisy-csa": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.5", "optimizer.adapt_sigma=csa"],
    "noisy-rep4": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.5", "noise.repeats=4", "budget_counts=presentations"],
    "noisy-nf12": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=12", "optimizer.sigma0=0.5"],
    "noisy-nf8": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=8", "optimizer.sigma0=0.5"],
    "noisy-nf6": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=6", "optimizer.sigma0=0.5"],
    "noisy-nf8-pop40": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=8", "optimizer.sigma0=0.5", "batch_size=40"],
    "noisy-nf8-s1": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=8", "optimizer.sigma0=1.0"],
    "noisy-nf8-s2": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=8", "optimizer.sigma0=2.0"],
    "noisy-rep2": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=24", "optimizer.sigma0=0.5", "noise.repeats=2", "budget_counts=presentations"],
    "noisy-nf8-rep2": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=8", "optimizer.sigma0=0.5", "noise.repeats=2", "budget_counts=presentations"],
    "noisy-nf8-rep4": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=8", "optimizer.sigma0=0.5", "noise.repeats=4", "budget_counts=presentations"],
    "noisy-nf8-pop10": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=8", "optimizer.sigma0=0.5", "batch_size=10"],
    "noisy-nf10": ["optimizer=cmaes", "generator.gain=1.0", "generator.n_freq=10", "optimizer.sigma0=0.5"],
    "fdgd-rep4": ["optimizer=fdgd", "generator.n_freq=12", "generator.gain=1.0", "noise.repeats=4", "budget_counts=presentations"],
    "noisy-preset": ["experiment=noisy"],  # plugins/cma/conf/experiment/noisy.yaml (= noisy-nf8)
    # white-box references: Adam on the codes through the differentiable objective
    "wb-fourier": ["optimizer=latent_gradient", "optimizer.kld=none", "optimizer.init=random", "batch_size=4",
                   "optimizer.steps_per_ask=50", "optimizer.lr=0.05", *FOURIER_OLD],
    "wb-fourier24": ["optimizer=latent_gradient", "optimizer.kld=none", "optimizer.init=random", "batch_size=4",
                     "optimizer.steps_per_ask=50", "optimizer.lr=0.05", "generator.n_freq=24", *FOURIER_OLD],
    "wb-g1-nf24": ["optimizer=latent_gradient", "optimizer.kld=none", "optimizer.init=random", "batch_size=4",
                   "optimizer.steps_per_ask=50", "optimizer.lr=0.05", "generator.n_freq=24", "generator.gain=1.0"],
}
# Every config but the embedded default names its code size: fourier's default n_freq became 24 (with
# cmaes sigma0 0.5) after these runs; the configs that ran on the 12 x 12 code before keep it.
for _label, _ov in CONFIGS.items():
    if _label not in ("default", "default-pop40", "default-pop100") and not any("n_freq" in o for o in _ov):
        _ov.append("generator.n_freq=12")
NEW_DEFAULT = "cma-s05-nf24"  # what `default` composes to since the change (sigma0 0.5 on the 24 x 24, gain 1 code)
MEI_FILE = Path("benchmarks/results/mei_vs_lucent.json")


def run_one(layer: str, unit: int, label: str, noise: str, budget: int, seed: int) -> dict:
    from stimopt import reference
    from stimopt.config import compose
    from stimopt.experiment import build_run

    overrides = [f"budget={budget}", f"seed={seed}", "logger=none", "device=cpu", "store.synchronous=NORMAL",
                 "on_bad_response=skip", f"target.layer={layer}", f"target.unit={unit}",
                 *CONFIGS[label], *NOISES[noise]]
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        run = build_run(compose(overrides), Path(d) / "run")
        p = run.run()
        wall = time.perf_counter() - t
        evolved = reference.best_evolved(run)
        last_best = (reference.last_generation_best(run) or {}).get("clean")
        scores = run.store.scores()
        report = run.optimizer.report() if hasattr(run.optimizer, "report") else {}
        resp = np.asarray(run.store.responses(), dtype=np.float64).reshape(len(scores), -1)[:, 0]
        best_so_far = np.fmax.accumulate(np.where(np.isfinite(resp), resp, -np.inf))
        best_at = {str(n): float(best_so_far[n - 1]) for n in (250, 500, 1000, 2000, 4000, 8000, 16000) if n <= len(resp)}
        run.store.close()
    return {"layer": layer, "unit": unit, "config": label, "noise": noise, "budget": budget, "seed": seed,
            "best_response": float(p.best_response), "best_evolved": evolved, "last_gen_best": last_best,
            "evaluations": int(p.n_evaluations), "wall_s": round(wall, 1), "overrides": overrides,
            "best_at": best_at,  # the best recorded response after that many evaluations (the run's trajectory)
            "optimizer_report": {k: v for k, v in (report or {}).items() if isinstance(v, (int, float, str, bool))},
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def run_mei_reference(layer: str, unit: int, steps: int, seed: int) -> dict:
    """``optimizer=mei`` at ``steps`` Adam steps on one unit, run by the engine exactly as
    benchmarks/mei_vs_lucent.py runs it (its ``run_mei``): the recorded response of the final clean image."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mei_vs_lucent", Path(__file__).with_name("mei_vs_lucent.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    t = time.perf_counter()
    m = mod.run_mei(layer, unit, steps, 128, seed, [])
    return {"layer": layer, "unit": unit, "config": "mei", "noise": "none", "budget": steps + 1, "seed": seed,
            "best_response": m["activation"], "best_evolved": m["activation"], "last_gen_best": m["activation"],
            "evaluations": int(m["stored"]), "grad_steps": int(m["grad_steps"]), "wall_s": round(time.perf_counter() - t, 1),
            "overrides": m["overrides"], "load_avg": [round(x, 2) for x in os.getloadavg()]}


def mei_reference(results: list[dict] | None = None) -> dict:
    """{(layer, unit): mei optimum}: the MEI benchmark's results (benchmarks/results/mei_vs_lucent.json,
    blocks.3) and this benchmark's own ``mei`` runs (the same recipe) for the units that file lacks."""
    out = {(r["layer"], r["unit"]): float(r["best_response"]) for r in results or [] if r["config"] == "mei"}
    if not MEI_FILE.exists():
        return out
    try:
        d = json.loads(MEI_FILE.read_text())
    except ValueError:
        return out
    for u in d.get("units", []):
        if "unit" in u and u.get("mei") is not None:
            out[(u.get("layer", d.get("layer", "blocks.3")), int(u["unit"]))] = float(u["mei"])
    return out


def table(results: list[dict]) -> dict:
    """Ratios of every black-box run to its unit's white-box references; medians per config x noise."""
    wb: dict = {}
    for r in results:
        if r["config"].startswith("wb-") and r["noise"] == "none":
            key = (r["layer"], r["unit"])
            wb[key] = max(wb.get(key, -np.inf), r["best_response"])
    mei = mei_reference(results)
    rows, summary = [], {}
    for r in results:
        if r["config"].startswith("wb-") or r["config"] == "mei":
            continue
        key = (r["layer"], r["unit"])
        val = r["best_response"] if r["noise"] == "none" else r["last_gen_best"]
        row = {"layer": r["layer"], "unit": r["unit"], "config": r["config"], "noise": r["noise"], "value": val}
        if key in wb:
            row["ratio_latent_gradient"] = val / wb[key]
        if key in mei:
            row["ratio_mei"] = val / mei[key]
        rows.append(row)
    for cfg, noise in sorted({(r["config"], r["noise"]) for r in rows}):
        sel = [r for r in rows if (r["config"], r["noise"]) == (cfg, noise)]
        s = {"units": [f"{r['layer']}[{r['unit']}]" for r in sel], "median_value": float(np.median([r["value"] for r in sel]))}
        for k in ("ratio_latent_gradient", "ratio_mei"):
            v = [r[k] for r in sel if k in r]
            if v:
                s[f"median_{k}"], s[f"n_{k}"] = float(np.median(v)), len(v)
        summary[f"{cfg}|{noise}"] = s
    return {"white_box_latent_gradient": {f"{k[0]}[{k[1]}]": v for k, v in wb.items()},
            "white_box_mei": {f"{k[0]}[{k[1]}]": v for k, v in mei.items()}, "rows": rows, "summary": summary}


def print_table(t: dict) -> None:
    print("| config | noise | units | median value | median ratio (latent_gradient) | median ratio (mei) |")
    print("|---|---|---|---|---|---|")
    for k, s in t["summary"].items():
        cfg, noise = k.split("|")
        lg = f"{s['median_ratio_latent_gradient']:.2f} (n={s['n_ratio_latent_gradient']})" if "median_ratio_latent_gradient" in s else "-"
        me = f"{s['median_ratio_mei']:.2f} (n={s['n_ratio_mei']})" if "median_ratio_mei" in s else "-"
        print(f"| {cfg} | {noise} | {len(s['units'])} | {s['median_value']:.1f} | {lg} | {me} |")


#: the former default (gain 4, sigma0 1) on units run before this benchmark, from benchmarks/results/cma_overhead.json
#: (units 0, 5, 10, 17) and issue 14's table (unit 33); the same config as ``cma-g4``.
FORMER_DEFAULT = {("blocks.3", 0): 50.6, ("blocks.3", 5): 61.1, ("blocks.3", 10): 49.9, ("blocks.3", 17): 38.3, ("blocks.3", 33): 59.2}


def per_unit(t: dict, results: list[dict], default: str = "cma-g1") -> None:
    """Noiseless per-unit table: former default, sigma0 0.5, the default (gain 1, sigma0 1), white-box references, ratios."""
    val = {(r["layer"], r["unit"], r["config"]): r["best_response"] for r in results if r["noise"] == "none"}
    units = sorted({(r["layer"], r["unit"]) for r in results if r["config"] in (default, "default") and r["noise"] == "none"})
    print("| unit | former default (gain 4, sigma0 1) | gain 1, sigma0 0.5 | default (gain 1, sigma0 1) | white box latent_gradient | default / latent_gradient | mei | default / mei |")
    print("|---|---|---|---|---|---|---|---|")
    f = lambda x, d=1: "–" if x is None else f"{x:.{d}f}"
    for layer, u in units:
        k = f"{layer}[{u}]"
        old = val.get((layer, u, "cma-g4"), FORMER_DEFAULT.get((layer, u)))
        new = val.get((layer, u, default), val.get((layer, u, "default")))
        wb, mei = t["white_box_latent_gradient"].get(k), t["white_box_mei"].get(k)
        print(f"| {k} | {f(old)} | {f(val.get((layer, u, 'cma-g1-s05')))} | {f(new)} | {f(wb)} | {f(None if wb is None else new / wb, 2)} | "
              f"{f(mei)} | {f(None if mei is None else new / mei, 2)} |")


#: issue 14's unit set for the 10-unit median; the tuning units are blocks.3 channels 0 and 5
UNIT_SET = [("blocks.1", 3), ("blocks.1", 12), ("blocks.3", 0), ("blocks.3", 5), ("blocks.3", 17), ("blocks.3", 33),
            ("blocks.3", 50), ("blocks.3", 70), ("blocks.5", 7), ("blocks.5", 40)]
TUNING = {("blocks.3", 0), ("blocks.3", 5)}
#: configs that ran the same code as another: every ``default`` run in the results file was made while the
#: embedded default was ``cma-g1`` (cmaes sigma0 1 on fourier gain 1, 12 x 12), so the tables read them as ``cma-g1``
SAME = {"default": "cma-g1"}


def ratio_table(t: dict, results: list[dict], configs: list[str]) -> dict:
    """Per unit of UNIT_SET: each config's noiseless best over the unit's mei optimum; medians over
    all units, the held-out ones, and the units every config has."""
    val = {(r["layer"], r["unit"], SAME.get(r["config"], r["config"])): r["best_response"] for r in results
           if r["noise"] == "none" and r["budget"] == 2000 and r["seed"] == 0}
    mei = {tuple(k[:-1].split("[")): v for k, v in t["white_box_mei"].items()}
    mei = {(k[0], int(k[1])): v for k, v in mei.items()}
    head = "| unit | " + " | ".join(configs) + " | mei | " + " | ".join(f"{c} / mei" for c in configs) + " |"
    print(head)
    print("|---" * (2 + 2 * len(configs)) + "|---|")
    out = {"configs": configs, "units": {}, "medians": {}}
    f = lambda x, d=1: "–" if x is None else f"{x:.{d}f}"
    for layer, u in UNIT_SET:
        m = mei.get((layer, u))
        vs = [val.get((layer, u, c)) for c in configs]
        rs = [None if v is None or m is None else v / m for v in vs]
        tag = " (tuning)" if (layer, u) in TUNING else ""
        print(f"| {layer}[{u}]{tag} | " + " | ".join(f(v) for v in vs) + f" | {f(m)} | " + " | ".join(f(r, 2) for r in rs) + " |")
        out["units"][f"{layer}[{u}]"] = {"mei": m, **{c: v for c, v in zip(configs, vs)}}
    for name, sel in (("all", UNIT_SET), ("held_out", [k for k in UNIT_SET if k not in TUNING])):
        for c in configs:
            rs = [val[(l, u, c)] / mei[(l, u)] for l, u in sel if (l, u, c) in val and (l, u) in mei]
            vs = [val[(l, u, c)] for l, u in sel if (l, u, c) in val]
            if rs:
                out["medians"][f"{c}|{name}"] = {"n": len(rs), "median_ratio_mei": float(np.median(rs)),
                                                 "median_value": float(np.median(vs))}
                print(f"| median ratio, {name} ({len(rs)} units) | {c}: {np.median(rs):.2f} (median best {np.median(vs):.1f}) |")
    return out


def noise_table(results: list[dict], noise: str, configs: list[str]) -> dict:
    """Per unit: each config's last generation's best-scored image read clean (XDream's scoring), and medians."""
    val = {(r["layer"], r["unit"], SAME.get(r["config"], r["config"])): r["last_gen_best"] for r in results
           if r["noise"] == noise and r["budget"] == 2000 and r["seed"] == 0}
    units = sorted({(l, u) for l, u, c in val if c in configs})
    print(f"| unit ({noise}) | " + " | ".join(configs) + " |")
    print("|---" * (1 + len(configs)) + "|")
    for l, u in units:
        print(f"| {l}[{u}] | " + " | ".join("–" if (l, u, c) not in val else f"{val[(l, u, c)]:.1f}" for c in configs) + " |")
    common = [k for k in units if all((*k, c) in val for c in configs)]
    med = {c: float(np.median([val[(*k, c)] for k in common])) for c in configs} if common else {}
    if common:
        print(f"| median ({len(common)} units with every config) | " + " | ".join(f"{med[c]:.1f}" for c in configs) + " |")
    return {"units": [f"{l}[{u}]" for l, u in common], "median_last_gen_best": med,
            "per_unit": {f"{l}[{u}]|{c}": v for (l, u, c), v in val.items() if c in configs}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plan", default="default", help=f"comma-separated configs: {', '.join(CONFIGS)}, mei (white-box reference)")
    ap.add_argument("--units", default="blocks.3:0,5", help="LAYER:U,U;LAYER:U,...")
    ap.add_argument("--noise", default="none", help=f"comma-separated: {', '.join(NOISES)}")
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mei-steps", type=int, default=256, help="Adam steps of the plan's 'mei' reference runs (the MEI benchmark's)")
    ap.add_argument("--out", default="benchmarks/results/blackbox_vs_whitebox.json")
    ap.add_argument("--table", action="store_true", help="only print the table of --out")
    ap.add_argument("--compare", default="", help="with --table: comma-separated configs for the per-unit ratio table "
                    "over issue 14's 10 units and the noise tables (stored in the file's 'comparison' block)")
    ap.add_argument("--merge", default="", help="comma-separated results files whose runs are added to --out (e.g. runs made in parallel)")
    args = ap.parse_args()

    out = Path(args.out)
    results = json.loads(out.read_text())["runs"] if out.exists() else []

    def write():
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = json.loads(out.read_text()) if out.exists() else {}  # another process may have appended
        cur = doc.get("runs", [])
        seen = {json.dumps([r[k] for k in ("layer", "unit", "config", "noise", "budget", "seed")]) for r in cur}
        merged = cur + [r for r in results if json.dumps([r[k] for k in ("layer", "unit", "config", "noise", "budget", "seed")]) not in seen]
        # the file's other blocks (a round's `summary`, `comparison`) stay: only the runs and their table are rewritten
        doc.update({"script": "benchmarks/blackbox_vs_whitebox.py", "threads": 1, "cpus": os.cpu_count(),
                    "runs": merged, "table": table(merged)})
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(out)  # a run killed mid-write leaves the previous file whole
        return merged

    for other in filter(None, args.merge.split(",")):
        results += json.loads(Path(other).read_text())["runs"]
    if args.merge or args.table:
        results = write()
    if not args.table:
        import torch

        torch.set_num_threads(1)
        units = [(layer, int(u)) for part in args.units.split(";") for layer, us in [part.split(":")] for u in us.split(",")]
        done = {(r["layer"], r["unit"], r["config"], r["noise"], r["budget"], r["seed"]) for r in results}
        t0 = time.perf_counter()
        for noise in args.noise.split(","):
            for label in args.plan.split(","):
                for layer, unit in units:
                    if out.exists():  # another process writing the same file may have run it meanwhile
                        done |= {(r["layer"], r["unit"], r["config"], r["noise"], r["budget"], r["seed"])
                                 for r in json.loads(out.read_text())["runs"]}
                    if (layer, unit, label, noise, args.budget, args.seed) in done:
                        continue
                    if label == "mei":
                        if noise != "none" or (layer, unit) in mei_reference(results):
                            continue  # the white-box reference: noiseless, and only where the MEI benchmark has none
                        row = run_mei_reference(layer, unit, args.mei_steps, args.seed)
                    else:
                        row = run_one(layer, unit, label, noise, args.budget, args.seed)
                    results.append(row)
                    results = write()
                    print(f"[{time.perf_counter() - t0:6.0f}s] {layer}[{unit}] {label} {noise}: best {row['best_response']:.1f}, "
                          f"last-gen best read clean {row['last_gen_best']:.1f} ({row['wall_s']:.0f} s)", flush=True)
    t = table(results)
    print_table(t)
    print()
    per_unit(t, results)
    if args.compare:
        print()
        cfgs = args.compare.split(",")
        comp = {"ratio_to_mei": ratio_table(t, results, cfgs)}
        for noise in ("poisson20", "poisson5"):
            print()
            comp[noise] = noise_table(results, noise, [c for c in cfgs] + ["fdgd", "ga", "nes"])
        d = json.loads(out.read_text())
        d["comparison"] = comp
        out.write_text(json.dumps(d, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
