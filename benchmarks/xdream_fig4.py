"""XDream Fig. 4 in silico: GA, NES, FDGD and diagonal CMA on CNN units, noiseless and with Poisson noise.

For each unit (random channels, centre position, rectified, of an early, a middle and a late
layer of EfficientNet-Lite0, the offline ImageNet model) and each noise level (noiseless;
Poisson with 5, 20, 250 spikes for the expected best of 2,500 natural images), every optimizer
runs through the real engine loop with the low-frequency Fourier generator (DeePSiM weights
cannot be had offline). The metric is XDream's relative activation: the noiseless response to
the stimulus with the best recorded score / the best response over a natural-image reference set
(random crops of the offline photographs); the baseline is the expected best of as many random
reference images as the optimizers evaluated.

    python benchmarks/xdream_fig4.py --units 3 --budget 1000            # scaled down
    python benchmarks/xdream_fig4.py --units 20 --budget 10000 --size 128  # the issue's full setting

Prints the median relative activation per optimizer x noise x layer, XDream's published targets
next to it, and writes every run to --out (JSON).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

XDREAM_TARGETS = {  # XDream (DeePSiM-fc6, CaffeNet and others, 10k images): median relative activation
    ("ga", "none"): 1.41, ("nes", "none"): 1.53, ("fdgd", "none"): 1.52,
    ("ga", "20"): 1.00, ("nes", "20"): 0.72, ("fdgd", "20"): 0.58, ("random", "none"): 0.72,
}


def make_optimizer(name: str, args):
    from stimopt_plugins.cma import CMAES
    from stimopt_plugins.xdream import FDGD, NES, Genetic

    if name == "ga":
        return Genetic(population_size=args.batch)
    if name == "nes":
        return NES(n_samples=args.batch, search_radius=args.nes_radius, learning_rate=args.nes_lr)
    if name == "fdgd":
        return FDGD(n_samples=args.batch, search_radius=args.fdgd_radius, learning_rate=args.fdgd_lr)
    if name == "cmaes":
        return CMAES()  # optimizer=cmaes: pycma, diagonal, population = batch
    raise SystemExit(f"unknown optimizer {name}")


def run_one(target, generator, optimizer, budget: int, batch: int, seed: int, workdir: Path) -> float:
    """One engine run; returns the noiseless response to the best-scored stimulus."""
    from stimopt import reference
    from stimopt.engine import Run
    from stimopt.experiment import seed_everything
    from stimopt.objective import Objective
    from stimopt.store import RunStore

    seed_everything(seed)
    store = RunStore(workdir / f"run{time.perf_counter_ns()}.sqlite", synchronous="NORMAL")
    optimizer.setup(generator.space, seed=seed, budget=budget, batch_size=batch)
    run = Run(target=target, generator=generator, optimizer=optimizer, objective=Objective("max"), store=store,
              budget=budget, batch_size=batch, on_bad_response="skip", run_dir=workdir)
    run.run()
    best = reference.best_evolved(run)
    store.close()
    return best


def layer_responses(unit_target, params, size: int, batch: int = 200) -> np.ndarray:
    """[N, channels]: every channel of the unit's layer at its position (rectified), for the crops
    described by ``params`` (rendered batch by batch, so a large reference set fits in memory)."""
    import torch

    from stimopt.natural import render_crops

    out = []
    with torch.inference_mode():
        for i in range(0, len(params), batch):
            f = unit_target._features(render_crops(params[i:i + batch], size))
            f = f if f.ndim == 2 else f[:, :, unit_target.position[0], unit_target.position[1]]
            out.append(torch.relu(f).double().numpy())
    return np.concatenate(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--units", type=int, default=3, help="units per layer")
    ap.add_argument("--budget", type=int, default=1000, help="evaluations per run")
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--layers", default="blocks.1,blocks.3,blocks.5", help="early, middle, late")
    ap.add_argument("--optimizers", default="ga,nes,fdgd,cmaes")
    ap.add_argument("--noise", default="none,5,20,250", help="'none' and/or expected max spikes")
    ap.add_argument("--size", type=int, default=64, help="image and network input size (px)")
    ap.add_argument("--n-freq", type=int, default=12)
    ap.add_argument("--n-natural", type=int, default=1000, help="natural reference images (random crops)")
    ap.add_argument("--nes-radius", type=float, default=1.25)
    ap.add_argument("--nes-lr", type=float, default=1.75)
    ap.add_argument("--fdgd-radius", type=float, default=1.25)
    ap.add_argument("--fdgd-lr", type=float, default=1.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/xdream_fig4.json")
    args = ap.parse_args()

    import torch

    from stimopt import plugins
    from stimopt.natural import crop_params
    from stimopt.noise import NoisyTarget, expected_max
    from stimopt_plugins.cnn import CNNUnit
    from stimopt_plugins.image_codes import FourierGenerator

    torch.set_num_threads(args.threads)  # 1 is ~8x faster than 2 on a CPU shared with other jobs
    plugins.load_plugins()
    layers, optimizers = args.layers.split(","), args.optimizers.split(",")
    noises = args.noise.split(",")
    rng = np.random.default_rng(args.seed)
    generator = FourierGenerator(size=args.size, n_freq=args.n_freq, device="cpu")
    results, t0 = [], time.perf_counter()
    crops = crop_params(args.n_natural, seed=1)  # the reference set: random crops of the offline photographs
    with tempfile.TemporaryDirectory() as tmp:
        for layer in layers:
            probe = CNNUnit(args.model, layer=layer, unit=0, relu=True, input_size=args.size, device="cpu")
            units = rng.choice(probe.feature_shape[0], size=args.units, replace=False)
            layer_natural = layer_responses(probe, crops, args.size)  # every channel at the centre, one pass
            for unit in units.tolist():
                clean = CNNUnit(args.model, layer=layer, unit=unit, relu=True, input_size=args.size, device="cpu")
                natural = layer_natural[:, unit]
                best_nat = float(natural.max())
                if not best_nat > 0:
                    print(f"skip {layer}[{unit}]: no natural crop drives it", flush=True)
                    continue
                random_rel = expected_max(natural, args.budget) / best_nat
                row = {"layer": layer, "unit": unit, "best_natural": best_nat, "random": random_rel,
                       "good_response": expected_max(natural, 2500)}
                for noise in noises:
                    target = clean if noise == "none" else NoisyTarget(
                        clean, "poisson", expected_max_spikes=float(noise), good_response=row["good_response"], seed=args.seed)
                    for name in optimizers:
                        evolved = run_one(target, generator, make_optimizer(name, args), args.budget, args.batch,
                                          args.seed + unit, Path(tmp))
                        row[f"{name}/{noise}"] = evolved / best_nat
                    print(f"[{time.perf_counter() - t0:6.0f}s] {layer}[{unit}] noise={noise}: " + ", ".join(
                        f"{n} {row[f'{n}/{noise}']:.2f}" for n in optimizers) + f" (random {random_rel:.2f})", flush=True)
                results.append(row)
    Path(args.out).write_text(json.dumps({"args": vars(args), "runs": results}, indent=1))
    print_table(results, layers, optimizers, noises, args, time.perf_counter() - t0)
    return 0


def print_table(results, layers, optimizers, noises, args, wall):
    print(f"\nMedian relative activation (best evolved / best of {args.n_natural} natural crops), "
          f"{args.model} units ({args.units}/layer, centre, rectified), {args.budget} evaluations, "
          f"Fourier generator at {args.size} px (DeePSiM weights cannot be had offline); wall {wall / 60:.0f} min on a shared CPU\n")
    head = "| layer | noise | " + " | ".join(optimizers) + f" | best of {args.budget} random |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for noise in noises:
        label = "noiseless" if noise == "none" else f"Poisson {noise}"
        for layer in layers + ["all"]:
            rows = [r for r in results if layer == "all" or r["layer"] == layer]
            if not rows:
                continue
            cells = [f"{np.median([r[f'{n}/{noise}'] for r in rows]):.2f}" for n in optimizers]
            print(f"| {layer} | {label} | " + " | ".join(cells) + f" | {np.median([r['random'] for r in rows]):.2f} |")
    print("\nXDream's targets (DeePSiM-fc6, 10k evaluations, its units): noiseless GA 1.41, NES 1.53, FDGD 1.52; "
          "Poisson-20 GA 1.00, NES 0.72, FDGD 0.58; best of 10k random 0.72")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
