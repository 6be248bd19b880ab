"""Walk vs random search on the demo bank: evaluations needed to reach the bank's best image (top-1),
its top 0.1% and its top 1% (99th percentile), for units of the default CNN, both directions.

Responses of every bank image are computed once (cached), then both optimizers run through their
ask/tell API against that lookup table, each until it has found the bank's best image.

    python benchmarks/walk_efficiency.py                      # 20 units, graph-layer read-out (fast)
    python benchmarks/walk_efficiency.py --targets cnn        # the default cnn_unit at 128 px (one CNN pass over the bank)
    python benchmarks/walk_efficiency.py --L 40 --K 20 --M 2  # other walk hyperparameters

``--targets features``: unit c of the default CNN's layer (EfficientNet-Lite0 blocks.3) read as the
centre 2x2 average at 96 px, i.e. a coordinate of the very features the graph was built on (the
best case for a walk). ``--targets cnn``: the default ``cnn_unit`` (centre unit of blocks.3 at
128 px): a different read-out of the same layer.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from stimopt.bank import demo_bank_path, load_bank
from stimopt.cache import cache_dir
from stimopt_plugins.imagebeagle import Walk
from stimopt_plugins.random_search import RandomSearch


def cnn_responses(bank, units, batch=250) -> np.ndarray:
    import torch

    from stimopt_plugins.cnn import CNNUnit

    path = cache_dir() / f"walk_bench_cnn_{bank.path.name}.npy"
    if path.exists():
        return np.load(path)[:, units]
    target = CNNUnit(unit=0, device="cpu")
    out = np.empty((bank.size, target.feature_shape[0]), np.float32)
    y, x = target.position
    with torch.inference_mode():
        for s in range(0, bank.size, batch):
            idx = np.arange(s, min(s + batch, bank.size))
            out[idx] = target._features(bank.images(idx))[:, :, y, x].numpy()
            print(f"  responses {idx[-1] + 1}/{bank.size}", flush=True)
    np.save(path, out)
    return out[:, units]


def first_hit(asked: np.ndarray, ok: np.ndarray, cap: int) -> int:
    hit = np.flatnonzero(ok[asked])
    return int(hit[0]) + 1 if len(hit) else cap + 1


def run(opt, space, scores, cap, seed, batch=20):
    """Evaluations (1-based) at which each image was asked, until the bank's best is found or cap."""
    opt.setup(space, seed=seed, budget=cap, batch_size=batch)
    best = scores.max()
    asked: list[int] = []
    t = time.perf_counter()
    while len(asked) < cap:
        codes = opt.ask(min(batch, cap - len(asked)))
        asked += codes.tolist()
        s = scores[codes]
        opt.tell(codes, s)
        if s.max() >= best:
            break
    return np.array(asked), time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bank", default=None, help="bank folder (default: the demo bank)")
    p.add_argument("--targets", choices=["features", "cnn"], default="features")
    p.add_argument("--units", type=int, default=20)
    p.add_argument("--L", type=int, default=Walk().L)
    p.add_argument("--K", type=int, default=Walk().K)
    p.add_argument("--M", type=int, default=Walk().M)
    p.add_argument("--random-seeds", type=int, default=3)
    args = p.parse_args()
    bank = load_bank(args.bank or demo_bank_path(build=True))
    space = bank.space
    n = bank.size
    if args.targets == "features":
        channels = bank.features.shape[1] // 9
        units = np.linspace(0, channels - 1, args.units).round().astype(int)
        resp = np.asarray(bank.features[:, units * 9 + 4])
    else:
        units = np.linspace(0, 79, args.units).round().astype(int)
        resp = cnn_responses(bank, units)
    print(f"bank {bank.path.name}: {n:,} images, k={space.graph.shape[1]}, {len(space.coresets)} coresets of {len(space.coresets[0])}; "
          f"targets: {args.targets}, units {units.tolist()}; walk L={args.L} K={args.K} M={args.M}; cap {n:,} evaluations")
    levels = {"top-1": None, "top 0.1%": 0.999, "top 1% (99th pct)": 0.99}
    rows = {(m, lv): [] for m in ("walk", "random") for lv in levels}
    opt_time, n_evals = 0.0, 0
    for u in range(len(units)):
        for sign in (1.0, -1.0):  # direction=max, direction=min
            scores = sign * resp[:, u].astype(np.float64)
            thresholds = {lv: (scores.max() if q is None else np.quantile(scores, q)) for lv, q in levels.items()}
            asked, dt = run(Walk(args.L, args.K, args.M), space, scores, n, seed=u)
            opt_time, n_evals = opt_time + dt, n_evals + len(asked)
            for lv, th in thresholds.items():
                rows[("walk", lv)].append(first_hit(asked, scores >= th, n))
            for seed in range(args.random_seeds):
                asked, _ = run(RandomSearch(), space, scores, n, seed=1000 + seed)
                for lv, th in thresholds.items():
                    rows[("random", lv)].append(first_hit(asked, scores >= th, n))
    print(f"\n{len(units)} units x 2 directions; random: {args.random_seeds} seeds each. Evaluations to reach:")
    print(f"{'level':<20}{'walk median':>13}{'random median':>15}{'walk/random':>13}{'walk wins':>11}")
    for lv in levels:
        w, r = np.median(rows[("walk", lv)]), np.median(rows[("random", lv)])
        per_task_r = np.median(np.array(rows[("random", lv)]).reshape(-1, args.random_seeds), axis=1)
        wins = np.mean(np.array(rows[("walk", lv)]) < per_task_r)
        print(f"{lv:<20}{w:>13.0f}{r:>15.0f}{w / r:>13.2f}{wins:>10.0%}")
    print(f"\nwalk optimizer time: {1e6 * opt_time / max(n_evals, 1):.1f} us per evaluation (ask+tell, {n_evals:,} evaluations)")


if __name__ == "__main__":
    main()
