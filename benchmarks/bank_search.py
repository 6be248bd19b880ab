"""Random vs ImageBeagle's walk vs the surrogate on a bank, side by side: how fast does each find
a unit's best bank images?

    python benchmarks/bank_search.py                      # the demo bank, 20 + 20 units, all settings
    python benchmarks/bank_search.py --units 5 --noise none --methods random,surrogate   # smaller
    python benchmarks/bank_search.py --seed 1 --out outputs/benchmarks/bank_search_s1     # another seed
    python benchmarks/bank_search.py --summarize outputs/benchmarks/bank_search*/rows.jsonl  # seeds pooled

Units: ``--units`` channels of EfficientNet-Lite0 ``blocks.3`` (the layer the demo bank's features
come from: "aligned") and as many of ``blocks.5`` (deeper), read at the centre of the map, on the
bank's images at the bank's own size (96 px). Both directions (max, min); noiseless and Poisson-20.

Simulation by look-up: every unit's response to every bank image is computed once (one forward pass
over the bank, cached next to the results), so a search step only looks responses up; the
optimizers are the real ``optimizer=random|walk|surrogate`` classes, built from their configs as
``stimopt optimizer=NAME`` builds them (so the walk and the surrogate run with their current
defaults; ``--walk-options`` / ``--surrogate-options`` override), driven through ask/tell with
batches of 20, exactly as the engine drives them. Poisson-20: spikes ~ Poisson(rate), rate =
20 x (a - a_min) / (E[best of 2,500 bank images] - a_min) with a_min the bank's lowest response
(a neuron with spontaneous firing, so the anti-preferred direction is measurable too; XDream's
calibration of "a good stimulus"); scores are spike counts in the run's direction.

Metrics (on the unit's noiseless responses): evaluations until an image of the bank's top 1% /
top 0.1% / the single best is shown (first time); "best@B" = normalized true response of the image
the search would report after B evaluations (highest observed score, mean over presentations):
(s - median) / (max - median) in the direction's score, 1.0 = the bank's best.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from stimopt.objective import Objective

LAYERS = {"aligned": "blocks.3", "deeper": "blocks.5"}
CHECKPOINTS = (250, 500, 1000)


def bank_responses(bank, layers: dict, n_units: int, cache: Path, batch: int = 250) -> dict:
    """{group: [N, n_units]} responses of randomly chosen centre units; computed once, cached."""
    if cache.exists():
        data = np.load(cache)
        if all(f"{g}_resp" in data for g in layers) and data[f"{next(iter(layers))}_resp"].shape[1] >= n_units:
            return {g: data[f"{g}_resp"][:, :n_units] for g in layers} | {f"{g}_units": data[f"{g}_units"][:n_units] for g in layers}
    from stimopt.models import IMAGENET_MEAN, IMAGENET_STD, load_model

    net, _, _ = load_model("efficientnet_lite0")
    modules = dict(net.named_modules())
    grabbed: dict[str, torch.Tensor] = {}
    for g, name in layers.items():
        modules[name].register_forward_hook(lambda m, i, o, g=g: grabbed.__setitem__(g, o))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out: dict[str, list] = {g: [] for g in layers}
    t = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, bank.size, batch):
            x = bank.images(np.arange(s, min(s + batch, bank.size)))
            net((x - mean) / std)
            for g in layers:
                f = grabbed[g]
                out[g].append(f[:, :, f.shape[2] // 2, f.shape[3] // 2].numpy().copy())
            print(f"  responses {min(s + batch, bank.size)}/{bank.size} ({time.perf_counter() - t:.0f} s)", flush=True)
    res = {}
    rng = np.random.default_rng(0)
    for g in layers:
        full = np.concatenate(out[g]).astype(np.float64)
        live = np.flatnonzero(full.std(0) > 1e-6)
        units = np.sort(rng.choice(live, min(len(live), 20 if n_units <= 20 else n_units), replace=False))
        res[f"{g}_resp"], res[f"{g}_units"] = full[:, units], units
    np.savez(cache, **res)
    return {g: res[f"{g}_resp"][:, :n_units] for g in layers} | {f"{g}_units": res[f"{g}_units"][:n_units] for g in layers}


def poisson_rate(a: np.ndarray, peak: float) -> np.ndarray:
    from stimopt.noise import expected_max

    low = float(a.min())
    good = expected_max(a, 2500)
    return peak * (a - low) / max(good - low, 1e-12)


def optimizer_config(method: str, options: str = ""):
    """The optimizer's config exactly as ``stimopt optimizer=METHOD`` composes it (conf/optimizer/METHOD.yaml,
    so the walk and the surrogate run with their current defaults), with the JSON ``options`` merged in."""
    from omegaconf import OmegaConf

    from stimopt.config import compose

    node = OmegaConf.to_container(compose([f"optimizer={method}"]).optimizer, resolve=True)
    return OmegaConf.create({**node, **(json.loads(options) if options else {})})


def make_optimizer(method: str, args):
    from stimopt.experiment import build

    return build("optimizer", args.configs[method])


def simulate(method, space, truth_score, observe, budget, batch, seed, args):
    """Drive one optimizer through ask/tell; returns the shown indices and observed scores in order."""
    opt = make_optimizer(method, args)
    opt.setup(space, seed=seed, budget=budget, batch_size=batch)
    shown, scores, done = [], [], 0
    while done < budget:
        codes = np.asarray(opt.ask(min(batch, budget - done)), dtype=np.int64)
        done += len(codes)
        s = observe(codes)
        opt.tell(codes, s)
        shown.append(codes)
        scores.append(s)
    return np.concatenate(shown), np.concatenate(scores)


def metrics(shown, observed, true_score) -> dict:
    """Evaluations to the bank's top 1% / 0.1% / best; normalized best reported after 250/500/1000."""
    order = np.sort(true_score)
    n = len(order)
    q1, q01, top = order[int(np.ceil(0.99 * n)) - 1], order[int(np.ceil(0.999 * n)) - 1], order[-1]
    med = float(np.median(true_score))
    s = true_score[shown]
    out = {}
    for name, th in (("top1pct", q1), ("top01pct", q01), ("top1", top)):
        hit = np.flatnonzero(s >= th)
        out[name] = int(hit[0]) + 1 if hit.size else None
    for b in CHECKPOINTS:
        if b > len(shown):
            out[f"best@{b}"] = None
            continue
        idx, obs = shown[:b], observed[:b]
        ok = np.isfinite(obs)
        uniq, inv = np.unique(idx[ok], return_inverse=True)
        mean = np.bincount(inv, weights=obs[ok]) / np.bincount(inv)
        chosen = uniq[np.argmax(mean)]
        out[f"best@{b}"] = (float(true_score[chosen]) - med) / (float(top) - med)
    return out


def median_of(values) -> float:
    """Median evaluations, a run that never got there (None) counting as infinitely many."""
    return float(np.median(np.array([np.inf if x is None else x for x in values], dtype=np.float64)))


def median_evals(values, budget) -> str:
    m = median_of(values)
    return f">{budget}" if not np.isfinite(m) else f"{m:.0f}"


def table(rows: list[dict], budgets: dict) -> str:
    noises = ["none", "poisson5", "poisson20", "poisson250"]
    rows = rows + [{**r, "group": "all"} for r in rows]  # both groups pooled
    keys = sorted({(r["noise"], r["group"], r["method"]) for r in rows},
                  key=lambda k: (noises.index(k[0]) if k[0] in noises else len(noises), k[0], k[1],
                                 ["random", "walk", "surrogate"].index(k[2])))
    head = ("| noise | units | search | n | evals to top 1% | to top 0.1% | to bank best | bank best found in 1,000 "
            "| best@250 | best@500 | best@1000 |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for noise, group, method in keys:
        sel = [r for r in rows if (r["noise"], r["group"], r["method"]) == (noise, group, method)]
        b = budgets[method]
        found = np.mean([r["top1"] is not None and r["top1"] <= 1000 for r in sel])
        cells = [noise, group, method, str(len(sel)), median_evals([r["top1pct"] for r in sel], b),
                 median_evals([r["top01pct"] for r in sel], b), median_evals([r["top1"] for r in sel], b), f"{found:.0%}"]
        for c in CHECKPOINTS:
            v = [r[f"best@{c}"] for r in sel if r[f"best@{c}"] is not None]
            cells.append(f"{np.median(v):.2f}" if v else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + ratios(rows)


def ratios(rows: list[dict]) -> str:
    """Median evaluations to the bank's top 0.1%: surrogate / random and surrogate / walk, per noise and group."""
    out = []
    for noise in sorted({r["noise"] for r in rows}):
        for group in sorted({r["group"] for r in rows}):
            med = {}
            for method in ("random", "walk", "surrogate"):
                v = [r["top01pct"] for r in rows if (r["noise"], r["group"], r["method"]) == (noise, group, method)]
                if v:
                    med[method] = median_of(v)
            if "surrogate" in med and len(med) > 1:
                parts = [f"surrogate / {m} = {med['surrogate']:.1f} / {med[m]:.1f} = {med['surrogate'] / med[m]:.2f}"
                         for m in ("random", "walk") if m in med]
                out.append(f"{noise} {group}: median evaluations to top 0.1%: " + "; ".join(parts))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bank", default=None, help="bank folder (default: the embedded demo bank)")
    ap.add_argument("--units", type=int, default=20, help="units per layer group")
    ap.add_argument("--groups", default="aligned,deeper")
    ap.add_argument("--directions", default="max,min")
    ap.add_argument("--noise", default="none,poisson20", help="none,poisson5,poisson20,poisson250")
    ap.add_argument("--methods", default="random,walk,surrogate")
    ap.add_argument("--budget", type=int, default=1000, help="evaluations for the surrogate")
    ap.add_argument("--baseline-budget", type=int, default=3000, help="evaluations for random and walk (cheap)")
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--walk-options", default="", help='JSON over conf/optimizer/walk.yaml, e.g. {"L": 20, "K": 20, "M": 5}')
    ap.add_argument("--surrogate-options", default="", help='JSON, e.g. {"n_init": 40, "represent": 2}')
    ap.add_argument("--noisy-surrogate-options", default=None, help="JSON options for the noisy runs (default: the same)")
    ap.add_argument("--out", default="outputs/benchmarks/bank_search")
    ap.add_argument("--summarize", nargs="+", default=None, help="only print the table of these rows.jsonl files")
    args = ap.parse_args()
    if args.summarize:
        rows = [json.loads(line) for f in args.summarize for line in Path(f).read_text().splitlines() if line.strip()]
        print(table(rows, {r["method"]: r["budget"] for r in rows}))
        return

    from stimopt.bank import demo_bank_path, load_bank

    bank = load_bank(args.bank or demo_bank_path(build=True, log=print))
    space = bank.space
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    groups = {g: LAYERS[g] for g in args.groups.split(",")}
    print(f"bank {bank.path.name}: {bank.size} images, features {tuple(space.features.shape)}", flush=True)
    resp = bank_responses(bank, groups, args.units, out / f"responses_{bank.path.name}.npz")
    budgets = {m: (args.budget if m == "surrogate" else args.baseline_budget) for m in args.methods.split(",")}
    if "walk" in budgets or "random" in budgets:
        for m in ("walk", "random"):
            if m in budgets:
                budgets[m] = min(budgets[m], bank.size)
    rows_path = out / "rows.jsonl"
    rows_path.unlink(missing_ok=True)
    rows = []
    base_opts = args.surrogate_options
    args.configs = {m: optimizer_config(m, args.walk_options if m == "walk" else "") for m in budgets}
    noisy_opts = base_opts if args.noisy_surrogate_options is None else args.noisy_surrogate_options
    surrogate_configs = {False: optimizer_config("surrogate", base_opts), True: optimizer_config("surrogate", noisy_opts)}
    t0 = time.perf_counter()
    for noise in args.noise.split(","):
        peak = float(noise.replace("poisson", "")) if noise.startswith("poisson") else 0.0
        args.configs["surrogate"] = surrogate_configs[bool(peak)]
        for g in groups:
            for u in range(resp[g].shape[1]):
                a = resp[g][:, u]
                rate = poisson_rate(a, peak) if peak else None
                for direction in args.directions.split(","):
                    objective = Objective(direction)  # the direction, applied where the engine applies it
                    true_score = objective.score(rate if peak else a)
                    for method in budgets:
                        rng = np.random.default_rng([args.seed, u, list(LAYERS).index(g), int(peak), int(direction == "max")])

                        def observe(codes, rate=rate, a=a, objective=objective, rng=rng):
                            return objective.score(rng.poisson(rate[codes]).astype(np.float64) if peak else a[codes])

                        t = time.perf_counter()
                        shown, observed = simulate(method, space, true_score, observe, budgets[method], args.batch, args.seed, args)
                        row = {"seed": args.seed, "noise": noise, "group": g, "layer": groups[g], "unit": int(resp[f"{g}_units"][u]),
                               "direction": direction, "method": method, "budget": budgets[method],
                               "repeats": int(len(shown) - len(np.unique(shown))), "seconds": round(time.perf_counter() - t, 2),
                               **metrics(shown, observed, true_score)}
                        rows.append(row)
                        with rows_path.open("a") as fh:
                            fh.write(json.dumps(row) + "\n")
                print(f"  {noise} {g} unit {u + 1}/{resp[g].shape[1]} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    text = table(rows, budgets)
    def shown_cfg(c):
        return {k: v for k, v in c.items() if k != "name"}

    setup = (f"bank {bank.path.name} ({bank.size} images, features {space.features.shape[1]}-d), {args.units} units per group, "
             f"directions {args.directions}, batch {args.batch}, budgets {budgets}, "
             f"walk {shown_cfg(optimizer_config('walk', args.walk_options))}, surrogate {shown_cfg(surrogate_configs[False])}"
             + (f" (noisy runs: {shown_cfg(surrogate_configs[True])})" if noisy_opts != base_opts else ""))
    print(setup)
    print(text)
    (out / "table.md").write_text(setup + "\n\n" + text + "\n")
    print(f"rows: {rows_path}; table: {out / 'table.md'}; total {time.perf_counter() - t0:.0f} s on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
