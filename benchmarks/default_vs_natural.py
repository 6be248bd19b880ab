"""Does the embedded default beat natural images? For several units of the default CNN layer,
run the default experiment (diagonal CMA-ES over the 12x12 Fourier code, 2,000 evaluations) and
compare its best response with the best of the same number of natural-image crops.

    .venv/bin/python benchmarks/default_vs_natural.py [--units 0 10 20 30 40] [--budget 2000]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from stimopt.config import compose
from stimopt.experiment import build_run
from stimopt.natural import natural_crops


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, nargs="+", default=[0, 10, 20, 30, 40])
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    crops = natural_crops(args.budget, size=128, seed=args.seed)
    ratios = []
    print(f"| unit | default best | best of {args.budget} natural crops | ratio | wall s |")
    print("|---|---|---|---|---|")
    for unit in args.units:
        with tempfile.TemporaryDirectory() as d:
            cfg = compose([f"target.unit={unit}", f"budget={args.budget}", "logger=none", f"seed={args.seed}", "device=cpu"])
            run = build_run(cfg, Path(d))
            with torch.inference_mode():
                natural = max(float(run.target.evaluate(crops[i:i + 100]).max()) for i in range(0, len(crops), 100))
            t = time.perf_counter()
            best = run.run().best_response
            wall = time.perf_counter() - t
        ratios.append(best / natural)
        print(f"| {unit} | {best:.3f} | {natural:.3f} | {best / natural:.2f} | {wall:.1f} |")
    print(f"median ratio default/natural: {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")


if __name__ == "__main__":
    main()
