"""The demo twin's response distributions, two-tailed (the default) vs one-tailed
(``target.checkpoint=demo:one``): ``stimopt-analyze skewness`` on every neuron of the demo
v4_ensemble twin over random demo-bank images (seed paper, Fig. 1).

    .venv/bin/python benchmarks/analyze_demo_twin.py            # 1000 images, both variants

Fits each demo twin on first use (cached, minutes on one thread). Writes one output folder per
variant under benchmarks/results/analyze_demo_twin/ and the summary
benchmarks/results/analyze_demo_twin.json.
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
    p.add_argument("--n", type=int, default=1000)
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    from stimopt.analyze.app import compose_analyze, context_from_config, run_analysis

    summary = {"target": "v4_ensemble demo twin (8 neurons)", "bank": "demo", "n_images": args.n, "threshold": 1.0,
               "variants": {}}
    for name, spelling in (("two_tailed", "demo"), ("one_tailed", "demo:one")):
        out = RESULTS / "analyze_demo_twin" / name
        cfg = compose_analyze(["analysis=skewness", "target=v4_ensemble", f"target.checkpoint={spelling}", "target.neuron=null",
                               "skewness.relu=as_is", f"skewness.n={args.n}", "device=cpu", f"out={out}"])
        t0 = time.time()
        payload = run_analysis("skewness", context_from_config(cfg, out))["payload"]
        summary["variants"][name] = {
            "checkpoint": spelling, "median_kappa": payload["median_kappa"], "n_two_tailed": payload["n_two_tailed"],
            "n_one_tailed": payload["n_one_tailed"], "kappa": [u["kappa"] for u in payload["units"]],
            "tails": [u["tails"] for u in payload["units"]], "frac_zero": [u["frac_zero"] for u in payload["units"]],
            "seconds": round(time.time() - t0, 1), "files": str(out)}
        v = summary["variants"][name]
        print(f"{name}: median kappa {v['median_kappa']:.2f}, {v['n_two_tailed']} two-tailed / {v['n_one_tailed']} one-tailed")
    summary["loadavg"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "analyze_demo_twin.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {RESULTS / 'analyze_demo_twin.json'}")


if __name__ == "__main__":
    main()
