"""optimizer=cmaes on a bounded code space: clipping the codes vs pycma's BoundTransform.

Planted objectives on the box [0, 1]^432 (the size of the default Fourier code), 2,000
evaluations, batch 20, start N(0.5, 0.2) as ``generator=pixels generator.bounded=true``:
``corner`` (a linear unit: every optimum coordinate on a face), ``interior`` (a quadratic bowl
around a point inside the box) and ``mixed`` (a bowl whose centre lies outside the box in half
of the coordinates). Reported: the best score as a fraction of the way from the first
generation's best to the optimum (1 = reached), median over seeds.

    .venv/bin/python benchmarks/cma_bounds.py --seeds 3
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def problems(dim: int, rng):
    w = rng.normal(size=dim)
    inside = rng.uniform(0.1, 0.9, size=dim)
    mixed = np.where(rng.random(dim) < 0.5, rng.uniform(0.1, 0.9, size=dim), rng.choice([-0.5, 1.5], size=dim))
    return {
        "corner": (lambda c: c @ w, float(np.clip(w, 0, None).sum())),
        "interior": (lambda c: -((c - inside) ** 2).sum(1), 0.0),
        "mixed": (lambda c: -((c - mixed) ** 2).sum(1), float(-((np.clip(mixed, 0, 1) - mixed) ** 2).sum())),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--dim", type=int, default=432)
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--out", default="benchmarks/results/cma_bounds.json")
    args = ap.parse_args()

    import stimopt
    from stimopt_plugins.cma import CMAES

    space = stimopt.ContinuousSpace(dim=args.dim, low=0.0, high=1.0, init_mean=0.5, init_std=0.2)
    runs = []
    for seed in range(args.seeds):
        for name, (f, optimum) in problems(args.dim, np.random.default_rng(100 + seed)).items():
            for bounds in ("clip", "transform"):
                opt = CMAES(bounds=bounds)
                opt.setup(space, seed=seed, budget=args.budget, batch_size=20)
                first = best = -np.inf
                for g in range(args.budget // 20):
                    codes = opt.ask(20).astype(np.float64)
                    assert codes.min() >= 0 and codes.max() <= 1
                    s = f(codes)
                    first = s.max() if g == 0 else first
                    best = max(best, float(s.max()))
                    opt.tell(codes, s)
                runs.append({"problem": name, "bounds": bounds, "seed": seed, "best": best, "first": float(first),
                             "optimum": optimum, "progress": (best - first) / (optimum - first)})
    summary = {f"{p}/{b}": float(np.median([r["progress"] for r in runs if (r["problem"], r["bounds"]) == (p, b)]))
               for p in ("corner", "interior", "mixed") for b in ("clip", "transform")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"script": "benchmarks/cma_bounds.py", "args": vars(args), "median_progress": summary,
                               "runs": runs}, indent=1))
    for k, v in summary.items():
        print(f"{k}: {v:.3f} of the way to the optimum")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
