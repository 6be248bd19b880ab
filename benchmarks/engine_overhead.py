"""Engine speed: recorded evaluations/s with a no-op target and generator, and the engine's
throughput on the default experiment against the bare target's batched forward throughput.

    .venv/bin/python benchmarks/engine_overhead.py [--evals 20000] [--default-evals 1000]

Prints measured figures and ratios (targets: >= 10,000 evals/s no-op; >= 90% of the bare target's
throughput; time outside target+generator < 5% of the loop on the default experiment) and writes
them to benchmarks/results/engine_overhead.json (``--out``), with the machine's load.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import stimopt
from stimopt.config import compose
from stimopt.engine import Run
from stimopt.experiment import build_run
from stimopt.objective import Objective
from stimopt.store import RunStore
from stimopt_plugins.random_search import RandomSearch


class NoopGenerator(stimopt.Generator):
    def __init__(self, dim=64):
        self._space = stimopt.ContinuousSpace(dim=dim)
        self.image = torch.zeros(1, 3, 1, 1)

    @property
    def space(self):
        return self._space

    def generate(self, codes):
        return self.image.expand(len(codes), 3, 1, 1)


class NoopTarget(stimopt.Target):
    def evaluate(self, images):
        return torch.zeros(images.shape[0])


def noop_rate(n_evals: int, batch: int, dim: int, synchronous: str) -> float:
    with tempfile.TemporaryDirectory() as d:
        gen, opt = NoopGenerator(dim), RandomSearch()
        opt.setup(gen.space, seed=0, budget=n_evals, batch_size=batch)
        run = Run(NoopTarget(), gen, opt, Objective("max"), RunStore(Path(d) / "e.sqlite", synchronous=synchronous),
                  budget=n_evals, batch_size=batch, run_dir=Path(d))
        t = time.perf_counter()
        run.run()
        return n_evals / (time.perf_counter() - t)


def default_experiment(n_evals: int, optimizer: str) -> dict:
    with tempfile.TemporaryDirectory() as d:
        cfg = compose([f"budget={n_evals}", "logger=none", f"optimizer={optimizer}", "device=cpu"])
        run = build_run(cfg, Path(d))
        images = [run.generator.generate(run.optimizer.ask(cfg.batch_size)) for _ in range(5)]
        run.target.evaluate(images[0])  # warm-up
        t = time.perf_counter()
        reps = 0
        while time.perf_counter() - t < 10:
            with torch.inference_mode():
                run.target.evaluate(images[reps % 5])
            reps += 1
        bare = reps * cfg.batch_size / (time.perf_counter() - t)
        run = build_run(cfg, Path(d) / "r")
        t = time.perf_counter()
        p = run.run()
        wall = time.perf_counter() - t
        outside = p.time_total - p.time_generate - p.time_evaluate
        return {"bare": bare, "engine": n_evals / wall, "outside_fraction": outside / p.time_total,
                "optimizer_s": outside, "loop_s": p.time_total}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--evals", type=int, default=20000)
    ap.add_argument("--default-evals", type=int, default=1000)
    ap.add_argument("--out", default="benchmarks/results/engine_overhead.json")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch threads: {torch.get_num_threads()}")
    out = {"script": "benchmarks/engine_overhead.py", "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "load_avg_at_start": os.getloadavg(), "noop": [], "default_experiment": []}
    for sync in ("FULL", "NORMAL"):
        for batch, dim in ((20, 432), (100, 432)):
            rate = noop_rate(args.evals, batch, dim, sync)
            out["noop"].append({"synchronous": sync, "batch": batch, "dim": dim, "evals": args.evals, "evals_per_s": rate})
            print(f"no-op target/generator, random optimizer, batch {batch}, {dim}-d codes, synchronous={sync}: "
                  f"{rate:,.0f} recorded evaluations/s ({rate / 10000:.2f}x the 10,000/s target)")
    for opt in ("random", "cmaes"):
        r = default_experiment(args.default_evals, opt)
        out["default_experiment"].append({"optimizer": opt, "evals": args.default_evals, **r, "engine_over_bare": r["engine"] / r["bare"]})
        print(f"default experiment (Lite0 blocks.3, fourier 128 px, batch 20), optimizer={opt}: bare target "
              f"{r['bare']:.0f} img/s, engine {r['engine']:.0f} evals/s -> {r['engine'] / r['bare']:.0%} of bare; "
              f"time outside target+generator {r['outside_fraction']:.1%} of the loop ({r['optimizer_s']:.2f} s of {r['loop_s']:.1f} s)")
    out["load_avg_at_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
