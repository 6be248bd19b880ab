"""Data-pruning curricula (seed paper, Fig. 3 / A.1.3) on the offline EfficientNet-Lite0: a
teacher unit (cnn_unit, blocks.3 channel 10, pre-activation: two-tailed like a V4 neuron; or
--relu for the post-ReLU one-tailed unit), a pool of random demo-bank images scored through the
analysis' reader, and the paper's 5-layer, 100-filter CNN student per curriculum and size.

    .venv/bin/python benchmarks/analyze_curricula.py                 # sizes 50 150, pool 1000, 300 test images
    .venv/bin/python benchmarks/analyze_curricula.py --sizes 1000 3000 --n 20000 --epochs 30 --lr 1e-4

Scaled to a shared 2-core CPU (minutes): the paper trains on 1k..10k images from a 500k pool with
Adam 1e-4 and early stopping; here the pool, the sizes, the epochs (5, patience 2) and the student
input (32 px) are small, and Adam's learning rate is 1e-3 so a few epochs converge. Runs
``stimopt-analyze curricula`` in-process; writes benchmarks/results/analyze_curricula/ (its
outputs) and benchmarks/results/analyze_curricula.json (the summary).
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
    p.add_argument("--sizes", type=int, nargs="+", default=[50, 150])
    p.add_argument("--n", type=int, default=1000, help="pool of random demo-bank images")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--n-test", type=int, default=300)
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--relu", action="store_true", help="the post-ReLU (one-tailed) unit")
    p.add_argument("--from-outputs", action="store_true", help="summarize the outputs already written, without rerunning")
    p.add_argument("--tag", default="", help="suffix of the results name (analyze_curricula_TAG)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    from stimopt.analyze.app import compose_analyze, context_from_config, run_analysis

    name = "analyze_curricula" + ("_relu" if args.relu else "") + (f"_{args.tag}" if args.tag else "")
    out = RESULTS / name
    overrides = ["analysis=curricula", "target=cnn_unit", f"target.relu={str(args.relu).lower()}", "device=cpu",
                 f"curricula.n={args.n}", f"curricula.n_test={args.n_test}", f"curricula.n_val={args.n_val}", f"curricula.sizes=[{','.join(map(str, args.sizes))}]", f"curricula.epochs={args.epochs}",
                 f"curricula.patience={args.patience}", f"curricula.lr={args.lr}", f"curricula.image_size={args.image_size}",
                 f"out={out}"]
    load0, t0 = os.getloadavg(), time.time()
    if not args.from_outputs:
        cfg = compose_analyze(overrides)
        run_analysis("curricula", context_from_config(cfg, out))
    payload = json.loads((out / "curricula.json").read_text())  # what the analysis wrote
    summary = {"teacher": payload["target"], "bank": payload["bank"], "overrides": overrides[:-1],
               "sizes": payload["sizes"], "n_pool": payload["n_pool"], "n_test": payload["n_test"], "n_val": payload["n_val"],
               "student": payload["student"], "r2": payload["r2"], "epochs": payload["epochs"], "claim": payload["claim"],
               "reproduces": payload["reproduces"], "train_seconds": round(payload["train_seconds"], 1),
               "seconds": None if args.from_outputs else round(time.time() - t0, 1),
               "loadavg_start": load0, "loadavg_end": os.getloadavg(), "files": str(out)}
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    for c, v in payload["r2"].items():
        print(f"{c:>10}: " + "  ".join(f"K={k}: {r:.3f}" for k, r in zip(payload["sizes"], v)))
    print(f"pref+anti beats pref-only and random at every size: {payload['reproduces']}; wrote {RESULTS / (name + '.json')}")


if __name__ == "__main__":
    main()
