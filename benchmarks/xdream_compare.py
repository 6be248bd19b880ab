"""stimopt's XDream optimizers against XDream's own figures (issue 14), through the real CLI configs.

Each run is exactly ``stimopt target.layer=L target.unit=U generator=G optimizer=O [noise]
budget=2000`` (composed with stimopt's Hydra configs and run by the engine), scored on
EfficientNet-Lite0 centre units at 128 px. Recorded per run: ``best_response`` (the best
recorded response; noiseless runs) and ``best_evolved`` (the noiseless response to the stimulus
with the best recorded score: what an experimenter would pick under noise).

Jobs run in the order given by ``--plan`` (the most important first) and each finished run is
appended to ``--out`` at once, so a run cut short by the clock keeps what it measured.

    .venv/bin/python benchmarks/xdream_compare.py --plan ga-pixels --units blocks.3:0,5,17,33
    .venv/bin/python benchmarks/xdream_compare.py --plan grid-none,normalize,poisson --units 'blocks.3:0,5;blocks.1:0'
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: XDream's GA on raw pixels (128 px, its defaults, seed 0, 2,000 evaluations) on Lite0 blocks.3 (issue 14).
XDREAM_GA_PIXELS = {0: 44.6, 5: 36.1, 17: 28.6, 33: 40.5}
GENERATORS = {"pixels": ["generator=pixels", "generator.resolution=128"],
              "pixels-bounded": ["generator=pixels", "generator.resolution=128", "generator.bounded=true"],
              "fourier": ["generator=fourier"]}
NOISES = {"none": [], "poisson20": ["target.relu=true", "noise=poisson", "noise.expected_max_spikes=20"]}
VARIANTS = {  # optimizer label -> overrides
    "ga": ["optimizer=ga"], "nes": ["optimizer=nes"], "fdgd": ["optimizer=fdgd"], "cmaes": ["optimizer=cmaes"],
    "nes-raw": ["optimizer=nes", "optimizer.normalize=false"],
    "fdgd-raw": ["optimizer=fdgd", "optimizer.normalize=false"],
    "nes-rlr": ["optimizer=nes", "optimizer.search_radius_learning_rate=0.1"],
}
PLANS = {  # (generator, optimizer label, noise), most important first
    "ga-pixels": [("pixels", "ga", "none")],
    "ga-ablation": [("pixels-bounded", "ga", "none")],
    "grid-none": [("pixels", o, "none") for o in ("nes", "fdgd", "cmaes")]
    + [("fourier", o, "none") for o in ("ga", "nes", "fdgd")],
    "cmaes-fourier": [("fourier", "cmaes", "none")],  # also in benchmarks/cma_overhead.py's runs
    "normalize": [("fourier", o, "none") for o in ("nes-raw", "fdgd-raw")],
    "normalize-pixels": [("pixels", o, "none") for o in ("nes-raw", "fdgd-raw")],
    "nes-rlr": [("fourier", "nes-rlr", "none")],
    "poisson": [("fourier", o, "poisson20") for o in ("ga", "nes", "fdgd", "cmaes")] + [("pixels", "ga", "poisson20")],
}


def run_one(layer: str, unit: int, gen: str, opt: str, noise: str, budget: int, seed: int) -> dict:
    from stimopt import reference
    from stimopt.config import compose
    from stimopt.experiment import build_run

    overrides = [f"budget={budget}", f"seed={seed}", "logger=none", "device=cpu", "store.synchronous=NORMAL",
                 "on_bad_response=skip", f"target.layer={layer}", f"target.unit={unit}",
                 *GENERATORS[gen], *VARIANTS[opt], *NOISES[noise]]
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        run = build_run(compose(overrides), Path(d) / "run")
        p = run.run()
        wall = time.perf_counter() - t
        evolved = reference.best_evolved(run)
        run.store.close()
    return {"layer": layer, "unit": unit, "generator": gen, "optimizer": opt, "noise": noise, "budget": budget,
            "seed": seed, "best_response": float(p.best_response), "best_evolved": evolved,
            "evaluations": int(p.n_evaluations), "wall_s": round(wall, 1), "overrides": overrides}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plan", default="ga-pixels", help=f"comma-separated: {', '.join(PLANS)}")
    ap.add_argument("--units", default="blocks.3:0,5,17,33", help="LAYER:U,U;LAYER:U,...")
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/xdream_compare.json")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    units = [(layer, int(u)) for part in args.units.split(";") for layer, us in [part.split(":")] for u in us.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text())["runs"] if out.exists() else []
    done = {(r["layer"], r["unit"], r["generator"], r["optimizer"], r["noise"], r["budget"], r["seed"]) for r in results}
    jobs = [(layer, u, *job) for plan in args.plan.split(",") for job in PLANS[plan] for layer, u in units]
    t0 = time.perf_counter()
    for layer, unit, gen, opt, noise in jobs:
        if (layer, unit, gen, opt, noise, args.budget, args.seed) in done:
            continue
        row = run_one(layer, unit, gen, opt, noise, args.budget, args.seed)
        results.append(row)
        out.write_text(json.dumps({"script": "benchmarks/xdream_compare.py", "runs": results}, indent=1))
        print(f"[{time.perf_counter() - t0:6.0f}s] {layer}[{unit}] {gen} {opt} {noise}: best {row['best_response']:.1f}, "
              f"best-scored read clean {row['best_evolved']:.1f} ({row['wall_s']:.0f} s)", flush=True)
    print_table(results)
    return 0


def print_table(results):
    """Median best response per generator x optimizer x noise (best_evolved under noise)."""
    keys = sorted({(r["noise"], r["generator"], r["optimizer"]) for r in results})
    print("| noise | generator | optimizer | units | median | per unit |")
    print("|---|---|---|---|---|---|")
    for noise, gen, opt in keys:
        rows = [r for r in results if (r["noise"], r["generator"], r["optimizer"]) == (noise, gen, opt)]
        vals = [r["best_response"] if noise == "none" else r["best_evolved"] for r in rows]
        cells = ", ".join(f"{r['layer']}[{r['unit']}] {v:.1f}" for r, v in zip(rows, vals))
        print(f"| {noise} | {gen} | {opt} | {len(rows)} | {np.median(vals):.1f} | {cells} |")
    ga = {r["unit"]: r["best_response"] for r in results
          if (r["layer"], r["generator"], r["optimizer"], r["noise"]) == ("blocks.3", "pixels", "ga", "none")}
    if ga:
        print("\nGA on raw pixels vs XDream's GA (issue 14): " + ", ".join(
            f"unit {u}: {ga[u]:.1f} vs {x}" for u, x in XDREAM_GA_PIXELS.items() if u in ga))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
