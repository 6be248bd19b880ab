"""Does the embedded default beat natural images? For several units of the default CNN layer,
run the default experiment (`stimopt target.unit=U`, its defaults otherwise) and compare its best
response with the best of as many natural-image crops as it evaluated: the engine's own
relative-activation measure (``reference.kind=natural_crops reference.n=<budget>``, summary.json's
``reference`` block, stimopt/reference.py).

    .venv/bin/python benchmarks/default_vs_natural.py [--units 0 10 20 30 40] [--budget 2000]

Writes benchmarks/results/default_vs_natural.json (each unit's summary figures, the median ratio,
the commit and the machine's load).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "default_vs_natural.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--units", type=int, nargs="+", default=[0, 10, 20, 30, 40])
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    import torch

    from stimopt.config import compose
    from stimopt.experiment import run_experiment

    torch.set_num_threads(args.threads)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = {"script": "benchmarks/default_vs_natural.py", "budget": args.budget, "seed": args.seed, "commit": commit,
           "threads": args.threads, "load_avg_at_start": os.getloadavg(), "units": []}
    print(f"| unit | default best | best of {args.budget} natural crops | ratio | loop s |")
    print("|---|---|---|---|---|")
    for unit in args.units:
        overrides = [f"target.unit={unit}", f"budget={args.budget}", f"seed={args.seed}", "logger=none", "device=cpu",
                     "reference.kind=natural_crops", f"reference.n={args.budget}"]
        with tempfile.TemporaryDirectory() as d:
            summary = run_experiment(compose(overrides), Path(d) / "run", progress=False)
        ref = summary["reference"]
        row = {"unit": unit, "best_response": summary["best_response"], "best_natural": ref["best_natural"],
               "ratio": ref["relative_activation"], "loop_s": summary["loop_s"], "optimizer": summary["optimizer"],
               "generator": summary["generator"], "overrides": overrides}
        out["units"].append(row)
        print(f"| {unit} | {row['best_response']:.3f} | {row['best_natural']:.3f} | {row['ratio']:.2f} | {row['loop_s']:.1f} |",
              flush=True)
    ratios = [r["ratio"] for r in out["units"]]
    out["median_ratio"], out["min_ratio"], out["max_ratio"] = statistics.median(ratios), min(ratios), max(ratios)
    out["load_avg_at_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"median ratio default/natural: {out['median_ratio']:.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}) "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
