"""Image statistics of the best stimulus a run finds on the Fourier code (docs/blackbox.md, round 8):
code rms, pre-sigmoid std and the fraction of saturated pixels, for a black-box and a white-box config
of benchmarks/blackbox_vs_whitebox.py on the same unit. Is the sigmoid what stops the black-box search?

    .venv/bin/python benchmarks/optimum_image_stats.py --unit 0
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import blackbox_vs_whitebox as bench  # noqa: E402


def stats(label: str, layer: str, unit: int, budget: int) -> dict:
    from stimopt.config import compose
    from stimopt.experiment import build_run

    overrides = [f"budget={budget}", "seed=0", "logger=none", "device=cpu", "store.synchronous=NORMAL",
                 f"target.layer={layer}", f"target.unit={unit}", *bench.CONFIGS[label]]
    with tempfile.TemporaryDirectory() as d:
        run = build_run(compose(overrides), Path(d) / "run")
        run.run()
        codes, resp = run.store.codes(), np.asarray(run.store.responses()).reshape(len(run.store.codes()), -1)[:, 0]
        run.store.close()
    best = int(np.nanargmax(resp))
    g = run.generator
    with torch.no_grad():
        img = g.generate(codes[best][None])
    pre = torch.logit(img.clamp(1e-6, 1 - 1e-6))  # the map before the sigmoid
    return {"config": label, "layer": layer, "unit": unit, "budget": budget, "best_response": float(resp[best]),
            "code_rms": float(np.sqrt(np.mean(codes[best].astype(np.float64) ** 2))), "pre_sigmoid_std": float(pre.std()),
            "saturated_fraction": float(((img < 0.05) | (img > 0.95)).float().mean())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", default="blocks.3")
    ap.add_argument("--unit", type=int, default=0)
    ap.add_argument("--blackbox", default="cma-s05-nf24", help="config label, 2,000 evaluations")
    ap.add_argument("--whitebox", default="wb-g1-nf24", help="config label, 1,000 evaluations (gradient passes)")
    ap.add_argument("--out", default="benchmarks/results/optimum_image_stats.json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = [stats(a.blackbox, a.layer, a.unit, 2000), stats(a.whitebox, a.layer, a.unit, 1000)]
    for r in rows:
        print(f"{r['config']:>14}: best {r['best_response']:.1f}, code rms {r['code_rms']:.2f}, "
              f"pre-sigmoid std {r['pre_sigmoid_std']:.2f}, saturated {100 * r['saturated_fraction']:.0f}%")
    Path(a.out).write_text(json.dumps({"script": "benchmarks/optimum_image_stats.py", "threads": 1, "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
