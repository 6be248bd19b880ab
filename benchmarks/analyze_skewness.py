"""Skewness per layer of the offline EfficientNet-Lite0 (seed paper, Fig. 1d / Supp. Fig. 6):
every channel of each layer (the centre position) read pre-activation (the blocks' outputs are
linear: projection conv + BN) and post-ReLU, over random demo-bank images; the medians per layer.

    .venv/bin/python benchmarks/analyze_skewness.py                       # 400 images, blocks.1..blocks.6
    .venv/bin/python benchmarks/analyze_skewness.py --n 2000 --layers blocks.3

Runs ``stimopt-analyze skewness`` in-process (the same code path), one output folder per layer
under benchmarks/results/analyze_skewness/, and the summary benchmarks/results/analyze_skewness.json.
Sized to minutes on a shared 2-core CPU (400 images x 6 layers).
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
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--layers", nargs="+", default=["blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5", "blocks.6"])
    p.add_argument("--input-size", type=int, default=128)
    args = p.parse_args()
    from stimopt.analyze.app import compose_analyze, context_from_config, run_analysis

    summary = {"model": "efficientnet_lite0 (offline ImageNet weights)", "bank": "demo", "n_images": args.n,
               "input_size": args.input_size, "threshold": 1.0, "layers": {}}
    for layer in args.layers:
        out = RESULTS / "analyze_skewness" / layer.replace(".", "_")
        cfg = compose_analyze(["analysis=skewness", f"target.layer={layer}", "units=all", f"skewness.n={args.n}",
                               f"target.input_size={args.input_size}", "device=cpu", f"out={out}"])
        t0 = time.time()
        payload = run_analysis("skewness", context_from_config(cfg, out))["payload"]
        pre, post = payload, payload["post_relu"]
        summary["layers"][layer] = {
            "n_units": len(pre["units"]), "median_kappa_pre_relu": pre["median_kappa"],
            "two_tailed_pre_relu": pre["n_two_tailed"], "median_kappa_post_relu": post["median_kappa"],
            "one_tailed_post_relu": post["n_one_tailed"], "seconds": round(time.time() - t0, 1),
            "results": str(out),
        }
        s = summary["layers"][layer]
        print(f"{layer}: {s['n_units']} units, median kappa pre-ReLU {s['median_kappa_pre_relu']:.2f} "
              f"({s['two_tailed_pre_relu']} two-tailed), post-ReLU {s['median_kappa_post_relu']:.2f} "
              f"({s['one_tailed_post_relu']} one-tailed)", flush=True)
        (RESULTS / "analyze_skewness.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
