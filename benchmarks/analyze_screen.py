"""Screen -> quantiles -> statistics -> neurons -> scaling on the offline EfficientNet-Lite0
(``blocks.3``, 16 channels at the centre position, pre-activation) over random demo-bank images.

    .venv/bin/python benchmarks/analyze_screen.py                  # 1,500 images, minutes on a shared 2-core CPU
    .venv/bin/python benchmarks/analyze_screen.py --n 20000        # the whole demo bank

Runs each ``stimopt-analyze`` analysis in-process (the same code path as the command line); the
outputs (NAME.json/.csv/.png, report.md, screen.npz) go to benchmarks/results/analyze_screen/ and
the headline numbers to benchmarks/results/analyze_screen.json.
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
    p.add_argument("--n", type=int, default=1500)
    p.add_argument("--layer", default="blocks.3")
    p.add_argument("--units", default="[0,5,10,15,20,25,30,35,40,45,50,55,60,65,70,75]")
    p.add_argument("--only", nargs="+", default=None, help="rerun these analyses on the existing screen (merged into the summary)")
    args = p.parse_args()
    from stimopt.analyze.app import compose_analyze, context_from_config, run_analysis

    out = RESULTS / "analyze_screen"
    screen = out / "screen.npz"
    base = [f"target.layer={args.layer}", f"units={args.units}", "device=cpu", f"out={out}"]
    steps = {
        "screen": [f"screen.n={args.n}", "screen.k=50", "screen.chunk=250"],
        "quantiles": [f"quantiles.screen={screen}", "quantiles.k=10", "quantiles.n_random=300"],
        "statistics": [f"statistics.screen={screen}", "statistics.k=30"],
        "neurons": [f"neurons.screen={screen}", "neurons.k=20"],
        "scaling": [f"scaling.screen={screen}", f"scaling.sizes=[15,50,150,500,{args.n}]", "scaling.n_subsamples=20"],
    }
    summary = {"model": "efficientnet_lite0 (offline ImageNet weights)", "layer": args.layer, "units": args.units,
               "n_images": args.n, "bank": "demo", "analyses": {}}
    if args.only and (RESULTS / "analyze_screen.json").exists():
        summary = json.loads((RESULTS / "analyze_screen.json").read_text())
    for name, extra in steps.items():
        if args.only and name not in args.only:
            continue
        cfg = compose_analyze([f"analysis={name}", *base, *extra])
        t0 = time.time()
        done = run_analysis(name, context_from_config(cfg, out))
        pl = done["payload"]
        keep = {k: pl[k] for k in ("median_q_pref", "median_q_anti", "median_accuracy", "median_accuracy_embeddings",
                                   "q_pref_diagonal_median", "q_pref_offdiagonal_median", "q_anti_diagonal_median",
                                   "q_anti_offdiagonal_median", "median_slope", "n_images") if k in pl}
        if name == "neurons":
            keep["overlap"] = {k: {kk: v[kk] for kk in ("observed", "null_mean", "p")} for k, v in pl["overlap"].items()}
        if name == "statistics":
            import numpy as np

            d = {s: float(np.median([abs(u["stats"][s]["cohens_d"]) for u in pl["units"]])) for s in pl["statistics"]}
            keep["largest_median_abs_d"] = dict(sorted(d.items(), key=lambda kv: -kv[1])[:5])
        summary["analyses"][name] = {**keep, "line": done["line"], "seconds": round(time.time() - t0, 1),
                                     "results": f"benchmarks/results/analyze_screen/{name}.json"}
        print(f"{name}: {done['line']}", flush=True)
        (RESULTS / "analyze_screen.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
