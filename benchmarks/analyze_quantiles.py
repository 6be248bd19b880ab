"""Where screened preferred / anti-preferred images fall among random images when the target is
noisy (seed paper, Fig. 2b: a validation session measures the model-chosen images again, with
repeats, on a noisy neuron).

The 16 EfficientNet-Lite0 ``blocks.3`` units of benchmarks/analyze_screen.py (its screen file,
benchmarks/results/analyze_screen/screen.npz, top / bottom 10 per unit) are measured again among
random demo-bank images: noiseless, with Gaussian gain noise (``--sd`` and twice that) and with
Poisson spiking, each noisy
target presented ``--repeats`` times (the spread of q per single presentation and the bootstrap
interval of the repeat-averaged q come from the same run).

    .venv/bin/python benchmarks/analyze_quantiles.py                # 200 random images, 4 repeats
    .venv/bin/python benchmarks/analyze_quantiles.py --n-random 500 --repeats 10

Runs ``stimopt-analyze quantiles`` in-process; outputs per condition under
benchmarks/results/analyze_quantiles/<condition>/ and the summary benchmarks/results/analyze_quantiles.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

RESULTS = Path(os.path.relpath(Path(__file__).parent / "results"))  # relative: no machine paths in the results


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--screen", default=str(RESULTS / "analyze_screen" / "screen.npz"))
    p.add_argument("--units", default="[0,5,10,15,20,25,30,35,40,45,50,55,60,65,70,75]")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--n-random", type=int, default=200)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--sd", type=float, default=0.5, help="noise=gaussian gain SD")
    p.add_argument("--calibration", type=int, default=500, help="noise=poisson calibration crops")
    p.add_argument("--only", nargs="+", default=None)
    a = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from stimopt.analyze.app import compose_analyze, context_from_config, run_analysis

    conditions = {
        "noiseless": ["noise=none", "repeats=1"],
        "gaussian": ["noise=gaussian", f"noise.sd={a.sd}", f"repeats={a.repeats}"],
        "poisson": ["noise=poisson", f"noise.calibration_images={a.calibration}", f"repeats={a.repeats}"],
        "gaussian_strong": ["noise=gaussian", f"noise.sd={2 * a.sd}", f"repeats={a.repeats}"],
    }
    summary_path = RESULTS / "analyze_quantiles.json"
    summary = {"model": "efficientnet_lite0 (offline ImageNet weights)", "layer": "blocks.3", "units": a.units,
               "screen": a.screen, "k": a.k, "n_random": a.n_random, "repeats": a.repeats, "gaussian_sd": a.sd,
               "poisson_calibration_images": a.calibration, "conditions": {}}
    if a.only and summary_path.exists():
        summary = json.loads(summary_path.read_text())
    summary["gaussian_strong_sd"] = 2 * a.sd
    for name, extra in conditions.items():
        if a.only and name not in a.only:
            continue
        out = RESULTS / "analyze_quantiles" / name
        cfg = compose_analyze(["analysis=quantiles", "target.layer=blocks.3", f"units={a.units}", "device=cpu",
                               f"quantiles.screen={a.screen}", f"quantiles.k={a.k}", f"quantiles.n_random={a.n_random}",
                               f"out={out}", *extra])
        t0 = time.time()
        pl = run_analysis("quantiles", context_from_config(cfg, out))["payload"]
        u = pl["units"]
        keep = {"median_q_pref": pl["median_q_pref"], "median_q_anti": pl["median_q_anti"],
                "median_q_pref_sd": pl["median_q_pref_sd"], "median_q_anti_sd": pl["median_q_anti_sd"],
                "n_random": pl["n_random"], "repeats": pl["repeats"], "noise": pl["noise"],
                "units_pref_above_random_p95": int(sum(x["median_pref"] > x["random_p95"] for x in u)),
                "units_anti_below_random_p5": int(sum(x["median_anti"] < x["random_p5"] for x in u)), "n_units": len(u)}
        if pl["repeats"] > 1:  # one presentation (the first repeat) vs the repeat average
            keep["median_q_pref_one_presentation"] = float(np.median([x["q_pref_single"][0] for x in u]))
            keep["median_q_anti_one_presentation"] = float(np.median([x["q_anti_single"][0] for x in u]))
            keep["median_q_pref_ci90_width"] = float(np.median([x["q_pref_ci90"][1] - x["q_pref_ci90"][0] for x in u]))
            keep["median_q_anti_ci90_width"] = float(np.median([x["q_anti_ci90"][1] - x["q_anti_ci90"][0] for x in u]))
            keep["median_trial_sd_over_random_sd"] = float(np.median(
                [x["trial_sd_random"] / max(1e-12, (x["random_p95"] - x["random_p5"]) / 3.29) for x in u]))
        keep["seconds"] = round(time.time() - t0, 1)
        keep["results"] = str(out / "quantiles.json")
        summary["conditions"][name] = keep
        summary["loadavg"] = list(os.getloadavg())
        summary_path.write_text(json.dumps(summary, indent=1) + "\n")
        print(name, json.dumps({k: v for k, v in keep.items() if k != "results"}), flush=True)


if __name__ == "__main__":
    main()
