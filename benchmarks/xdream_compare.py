"""stimopt's XDream optimizers against XDream's own figures (issue 14), through the real CLI configs.

Each run is exactly ``stimopt target.layer=L target.unit=U generator=G optimizer=O [noise]
budget=2000 seed=0`` (composed with stimopt's Hydra configs and run by the engine), scored on
EfficientNet-Lite0 centre units at 128 px. Every setting that gives a cell its meaning is pinned in
the overrides (the GA/NES/FDGD/CMA hyper-parameters, the Fourier code's size/spectrum/gain, the
pixel space), so a later change of a default cannot change what a cell measures; each run also
records the commit (``git rev-parse HEAD``) and whether the code it ran was modified from it.

Recorded per run:

- ``best_response``: the best recorded response (noiseless runs: the figure in the table);
- ``last_gen_best_clean``: the best-scored stimulus of the *last* generation, read without noise
  (XDream's scoring under noise: the figure in the Poisson tables);
- ``best_evolved``: the whole run's best-scored stimulus, read without noise.

Resumable: a (layer, unit, cell, noise, budget, seed) already in ``--out`` is skipped, and the file
is rewritten after every run, so a run cut short by the clock keeps what it measured. Jobs run in
priority order (``--plan``, most important first).

    .venv/bin/python benchmarks/xdream_compare.py --plan grid                 # the whole table, resumable
    .venv/bin/python benchmarks/xdream_compare.py --table                     # per-unit tables, medians, missing cells
    .venv/bin/python benchmarks/xdream_compare.py --plan p3 --units blocks.3:0,5

The older 4-unit files (``xdream_compare.json``, ``_normalize``, ``_poisson``, ``_seed1``) were written
by the first version of this script (unpinned overrides, the former gain-4 Fourier default); this
version writes ``xdream_compare_grid.json`` by default.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: XDream's GA on raw pixels (128 px, its defaults, seed 0, 2,000 evaluations) on Lite0 blocks.3 (issue 14).
XDREAM_GA_PIXELS = {0: 44.6, 5: 36.1, 17: 28.6, 33: 40.5}
#: XDream's GA on raw pixels under Poisson-20, median of the same 4 units (best of the last generation, read clean).
XDREAM_GA_PIXELS_POISSON20_MEDIAN = 20.4
#: XDream's published median relative activations (Xiao & Kreiman 2020: DeePSiM-fc6, CaffeNet units,
#: 10,000 evaluations, best of 1.4M ImageNet images as the reference); Poisson-20 = 20 spikes for a good stimulus.
XDREAM_PUBLISHED = {"none": {"ga": 1.41, "nes": 1.53, "fdgd": 1.52}, "poisson20": {"ga": 1.00, "nes": 0.72, "fdgd": 0.58}}
#: The team's unit set (issue 14 part 1).
UNITS = "blocks.1:3,12;blocks.3:0,5,17,33,50,70;blocks.5:7,40"
#: The order the units are run in: XDream's 4 comparison units first, then one per layer, then the rest.
UNIT_ORDER = [("blocks.3", 0), ("blocks.3", 5), ("blocks.3", 17), ("blocks.3", 33), ("blocks.1", 3), ("blocks.5", 7),
              ("blocks.1", 12), ("blocks.5", 40), ("blocks.3", 50), ("blocks.3", 70)]

COMMON = ["batch_size=20", "target=cnn_unit", "target.model=efficientnet_lite0", "target.input_size=128",
          "target.spatial=center", "target.position=null", "target.weights=pretrained"]
GENERATORS = {
    "pixels": ["generator=pixels", "generator.size=128", "generator.resolution=128", "generator.bounded=false"],
    "pixels-bounded": ["generator=pixels", "generator.size=128", "generator.resolution=128", "generator.bounded=true"],
    "fourier": ["generator=fourier", "generator.size=128", "generator.n_freq=12", "generator.decay=1.0",
                "generator.gain=1.0"],
}
_NES = ["optimizer=nes", "optimizer.search_radius=1.25", "optimizer.learning_rate=1.75",
        "optimizer.min_search_radius=0.01"]
_FDGD = ["optimizer=fdgd", "optimizer.search_radius=1.25", "optimizer.learning_rate=1.25"]
OPTIMIZERS = {  # optimizer label -> overrides (XDream's defaults for ga/nes/fdgd; the cmaes default of this session)
    "ga": ["optimizer=ga", "optimizer.mutation_rate=0.5", "optimizer.mutation_size=0.5", "optimizer.selectivity=2.0",
           "optimizer.heritability=0.5", "optimizer.n_conserve=0"],
    "nes": [*_NES, "optimizer.normalize=true", "optimizer.search_radius_learning_rate=0.0"],
    "fdgd": [*_FDGD, "optimizer.normalize=true"],
    "cmaes": ["optimizer=cmaes", "optimizer.diagonal=true", "optimizer.sigma0=1.0", "optimizer.bounds=clip",
              "optimizer.elitist=false"],
    # ablations: XDream's raw-score update, and NES's search-radius learning
    "nes-raw": [*_NES, "optimizer.normalize=false", "optimizer.search_radius_learning_rate=0.0"],
    "fdgd-raw": [*_FDGD, "optimizer.normalize=false"],
    # the radius gradient is a mean over every dimension: on 49,152 pixel genes z-scored scores move it by
    # ~rlr * 0.006 / radius per generation at most, so 0.1 (measured before on 432-d fourier) would be a no-op here
    "nes-rlr": [*_NES, "optimizer.normalize=true", "optimizer.search_radius_learning_rate=1.0"],
    "nes-raw-rlr": [*_NES, "optimizer.normalize=false", "optimizer.search_radius_learning_rate=0.1"],
}
#: Options other engineers are adding this session (their defaults reproduce today's code); pinned with ``++`` so
#: a later change of default cannot change a cell. Where the class does not take one yet, the run drops it
#: (``~key``): the option absent is the same code.
LATE_PINS = {"fourier": ["++generator.opponent=1.0", "++generator.contrast=null"],
             "cmaes": ["++optimizer.sampler=null", "++optimizer.adapt_sigma=null", "++optimizer.coarse_to_fine=null"]}
NOISES = {"none": [], "poisson20": ["target.relu=true", "noise=poisson", "noise.expected_max_spikes=20",
                                    "noise.repeats=1", "noise.calibration_images=2500"]}
MAIN = ("ga", "nes", "fdgd", "cmaes")
CELLS = [f"{g}/{o}" for g in ("pixels", "fourier") for o in MAIN]
ABLATIONS = ["pixels/nes-raw", "pixels/fdgd-raw", "pixels/nes-rlr"]
XDREAM4 = UNIT_ORDER[:4]


def plan_jobs(plan: str, units: list[tuple[str, int]]) -> list[tuple[str, int, str, str]]:
    """(layer, unit, cell, noise) in priority order; ``units`` restricts every priority to those units."""
    def keep(us):
        return [u for u in us if u in units]

    p = {
        "p1": [(l, u, f"pixels/{o}", "none") for l, u in keep(UNIT_ORDER) for o in MAIN],
        "p2": [(l, u, f"fourier/{o}", "none") for l, u in keep(UNIT_ORDER) for o in MAIN],
        "p3": [(l, u, c, "poisson20") for l, u in keep(XDREAM4) for c in CELLS],
        "p4": [(l, u, c, "none") for l, u in keep(XDREAM4) for c in ABLATIONS],
        "p5": [(l, u, c, "poisson20") for l, u in keep(UNIT_ORDER[4:]) for c in CELLS],
        "bounded": [(l, u, "pixels-bounded/ga", "none") for l, u in keep(XDREAM4)],
        "rlr-raw": [(l, u, "pixels/nes-raw-rlr", "none") for l, u in keep(XDREAM4)],
    }
    p["grid"] = p["p1"] + p["p2"] + p["p3"] + p["p4"] + p["p5"]
    jobs = []
    for name in plan.split(","):
        if name not in p:
            raise SystemExit(f"unknown plan {name!r}: use one of {', '.join(p)}")
        jobs += [j for j in p[name] if j not in jobs]
    return jobs


def overrides_for(layer: str, unit: int, cell: str, noise: str, budget: int, seed: int) -> list[str]:
    gen, opt = cell.split("/")
    return [f"budget={budget}", f"seed={seed}", "logger=none", "device=cpu", "store.synchronous=NORMAL",
            "on_bad_response=skip", *COMMON, f"target.layer={layer}", f"target.unit={unit}", "target.relu=false",
            *GENERATORS[gen], *OPTIMIZERS[opt], *NOISES[noise], *LATE_PINS.get(gen, []), *LATE_PINS.get(opt, [])]


def build(overrides: list[str], folder: Path):
    """``build_run(compose(overrides))``; a ``LATE_PINS`` option the class does not take (yet) is removed."""
    import re

    from stimopt.config import compose
    from stimopt.errors import StimoptError
    from stimopt.experiment import build_run

    for _ in range(3):
        try:
            return build_run(compose(overrides), folder), overrides
        except StimoptError as exc:
            m = re.search(r"does not take option\(s\) ([\w, ]+?);", str(exc))
            names = [n.strip() for n in m.group(1).split(",")] if m else []
            late = [o for o in overrides if o.startswith("++") and o[2:].split("=")[0].split(".")[-1] in names]
            group = re.match(r"(\w+) '", str(exc))
            if not late and names and group and group.group(1) in ("optimizer", "generator"):
                # a config file that names an option the (already imported) class does not take yet: the
                # class's own default is the code that runs, so the key is removed from the config
                extra = [f"~{group.group(1)}.{n}" for n in names]
                if not any(o in overrides for o in extra):
                    overrides = overrides + extra
                    continue
            if not late:
                raise
            overrides = [o for o in overrides if o not in late] + ["~" + o[2:].split("=")[0] for o in late]
            try:
                compose(overrides)
            except Exception:  # the key is not in the config either: just leave it out
                overrides = [o for o in overrides if not o.startswith("~")]
    raise StimoptError(f"could not build a run from {overrides}")


#: The commit (and modified paths) when this process started: the code it imported (``commit`` is HEAD at the run).
STARTED: dict = {}


def code_version() -> dict:
    """The commit the run used and the code paths that differ from it (the cell's meaning is pinned anyway)."""
    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    dirty = git("status", "--porcelain", "--", "stimopt", "plugins/cma", "plugins/image_codes", "plugins/xdream",
                "plugins/cnn", "conf")
    return {"commit": git("rev-parse", "HEAD"), "modified": [line[3:] for line in dirty.splitlines()]}


def run_one(layer: str, unit: int, cell: str, noise: str, budget: int, seed: int) -> dict:
    from stimopt import reference

    overrides = overrides_for(layer, unit, cell, noise, budget, seed)
    version, load0 = {**code_version(), "imported_at": STARTED}, os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        run, overrides = build(overrides, Path(d) / "run")
        p = run.run()
        wall = time.perf_counter() - t
        evolved = reference.best_evolved(run)
        last = reference.last_generation_best(run)
        run.store.close()
    return {"layer": layer, "unit": unit, "cell": cell, "generator": cell.split("/")[0],
            "optimizer": cell.split("/")[1], "noise": noise, "budget": budget, "seed": seed,
            "best_response": float(p.best_response), "best_evolved": evolved,
            "last_gen_best_clean": last["clean"], "last_gen_best_score": last["score"], "last_generation": last["generation"],
            "evaluations": int(p.n_evaluations), "wall_s": round(wall, 1),
            "loadavg_before": [round(x, 2) for x in load0], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            **version, "overrides": overrides}


def key(r) -> tuple:
    return (r["layer"], int(r["unit"]), r["cell"], r["noise"], int(r["budget"]), int(r["seed"]))


def save(out: Path, results: list[dict]) -> None:
    doc = {"script": "benchmarks/xdream_compare.py", "units": UNITS,
           "scoring": {"none": "best_response (best recorded response)",
                       "poisson20": "last_gen_best_clean (the last generation's best-scored stimulus read without "
                                    "noise, XDream's scoring); best_evolved: the run's best-scored stimulus read clean"},
           "runs": results}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plan", default="grid", help="comma-separated: p1 (noiseless pixels), p2 (noiseless fourier), "
                    "p3 (Poisson-20, XDream's 4 units), p4 (normalize / radius ablations), p5 (rest of Poisson-20), "
                    "grid (p1..p5), bounded, rlr-raw")
    ap.add_argument("--units", default=UNITS, help="LAYER:U,U;LAYER:U,... (restricts the plan)")
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stop-at", default=None, help="UTC HH:MM: start no run after it")
    ap.add_argument("--table", action="store_true", help="print the tables (and write them into --out); run nothing")
    ap.add_argument("--natural", type=int, default=0, help="N: read each unit's clean responses to N natural crops "
                    "(stimopt.reference) into <out>_natural.json, for relative activation; run nothing else")
    ap.add_argument("--out", default="benchmarks/results/xdream_compare_grid.json")
    args = ap.parse_args()

    units = [(layer, int(u)) for part in args.units.split(";") for layer, us in [part.split(":")] for u in us.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text())["runs"] if out.exists() else []
    if args.table:  # the tables go to a file of their own: a grid running meanwhile keeps writing --out
        write_table(out, make_table(results, units, args.budget, args.seed, load_natural(out)))
        return 0

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    if args.natural:
        natural_references(out, units, args.natural)
        return 0
    STARTED.update(code_version())
    done = {key(r) for r in results}
    jobs = [j for j in plan_jobs(args.plan, units) if (*j, args.budget, args.seed) not in done]
    print(f"{len(jobs)} runs to do ({len(done)} in {out})", flush=True)
    t0 = time.perf_counter()
    for i, (layer, unit, cell, noise) in enumerate(jobs):
        if args.stop_at and time.strftime("%H:%M", time.gmtime()) >= args.stop_at:
            print(f"stop time {args.stop_at} UTC reached: {len(jobs) - i} runs left", flush=True)
            break
        try:
            row = run_one(layer, unit, cell, noise, args.budget, args.seed)
        except Exception as exc:  # one broken cell (e.g. a renamed config key) does not stop the others
            print(f"{layer}[{unit}] {cell} {noise}: FAILED {type(exc).__name__}: {exc}", flush=True)
            continue
        results.append(row)
        save(out, results)
        print(f"[{time.perf_counter() - t0:6.0f}s {i + 1}/{len(jobs)}] {layer}[{unit}] {cell} {noise}: "
              f"best {row['best_response']:.1f}, last generation's pick read clean {row['last_gen_best_clean']:.1f}, "
              f"run's pick read clean {row['best_evolved']:.1f} ({row['wall_s']:.0f} s, "
              f"load {row['loadavg_before'][0]:.1f})", flush=True)
    write_table(out, make_table(results, units, args.budget, args.seed, load_natural(out)))
    return 0


def load_natural(out: Path) -> dict:
    path = out.with_name(out.stem + "_natural.json")
    return json.loads(path.read_text())["units"] if path.exists() else {}


def natural_references(out: Path, units, n: int) -> None:
    """Each unit's best clean response to ``n`` random crops of the offline photographs (``reference.kind=
    natural_crops``, seed 0) and the expected best of 2,000 random ones, into ``<out>_natural.json``."""
    from stimopt import reference

    path = out.with_name(out.stem + "_natural.json")
    doc = json.loads(path.read_text()) if path.exists() else {"script": "benchmarks/xdream_compare.py --natural",
                                                              "units": {}}
    for layer, unit in units:
        name = f"{layer}[{unit}]"
        if doc["units"].get(name, {}).get("n_natural") == n:
            continue
        with tempfile.TemporaryDirectory() as d:
            run, _ = build(overrides_for(layer, unit, "pixels/ga", "none", 20, 0), Path(d) / "run")
            t = time.perf_counter()
            nat, what = reference.natural_responses(run.target, run.objective, "natural_crops", n, 128, 0)
            rel = reference.relative(float("nan"), nat, 2000, "max")
            run.store.close()
        doc["units"][name] = {"best_natural": rel["best_natural"], "expected_best_of_2000": rel["expected_best_of_random"],
                              "n_natural": n, "natural_set": what, "wall_s": round(time.perf_counter() - t, 1),
                              "loadavg": [round(x, 2) for x in os.getloadavg()], **code_version()}
        path.write_text(json.dumps(doc, indent=1))
        print(f"{name}: best of {n} natural crops {rel['best_natural']:.2f}", flush=True)


def write_table(out: Path, table: dict) -> None:
    """``<out>_table.json``: the per-unit tables, medians, ratios and missing cells of ``--table``."""
    path = out.with_name(out.stem + "_table.json")
    path.write_text(json.dumps({"script": "benchmarks/xdream_compare.py --table", "results": out.name,
                                "loadavg": [round(x, 2) for x in os.getloadavg()], **table}, indent=1))
    print(f"tables written to {path}")


def _fmt(v):
    return "–" if v is None else f"{v:.1f}"


def _fmt2(v):
    return "–" if v is None else f"{v:.2f}"


def _median(vals):
    vals = [v for v in vals if v is not None]
    return float(np.median(vals)) if vals else None


def make_table(results, units, budget, seed, natural=None) -> dict:
    """Per-unit tables (noiseless: best response; Poisson-20: XDream's scoring and the run's pick, both read
    clean), medians per layer and overall, ratios to XDream's GA, and the missing cells. Printed as markdown."""
    runs = {key(r): r for r in results}
    layers = sorted({l for l, _ in units})
    summary, missing = {}, []
    views = [("none", "best_response", CELLS + ABLATIONS, "noiseless, best response"),
             ("poisson20", "last_gen_best_clean", CELLS,
              "Poisson-20, the last generation's best-scored stimulus read without noise (XDream's scoring)"),
             ("poisson20", "best_evolved", CELLS, "Poisson-20, the run's best-scored stimulus read without noise")]
    for noise, field, cells, title in views:
        cells = [c for c in cells if c in CELLS or any(k[2] == c and k[3] == noise for k in runs)]
        grid = {(l, u): {c: (runs[(l, u, c, noise, budget, seed)][field] if (l, u, c, noise, budget, seed) in runs
                             else None) for c in cells} for l, u in units}
        if field != "best_evolved":
            missing += [f"{l}[{u}] {c} {noise}" for (l, u), row in grid.items() for c, v in row.items() if v is None
                        and (c in CELLS or (l, u) in XDREAM4)]
        print(f"\n### {title} ({budget} evaluations, seed {seed})\n")
        head = "| unit | " + " | ".join(cells) + " |"
        print(head + ("  XDream GA, raw pixels |" if noise == "none" else ""))
        print("|---" * (len(cells) + 1 + (noise == "none")) + "|")
        for (l, u), row in grid.items():
            x = XDREAM_GA_PIXELS.get(u) if (l == "blocks.3" and noise == "none") else None
            print(f"| {l}[{u}] | " + " | ".join(_fmt(row[c]) for c in cells) + " |"
                  + (f" {_fmt(x)} |" if noise == "none" else ""))
        med = {}
        for name, sel in [*((l, [k for k in grid if k[0] == l]) for l in layers), ("all", list(grid)),
                          ("blocks.3 0/5/17/33", [k for k in grid if k in XDREAM4])]:
            med[name] = {c: _median([grid[k][c] for k in sel]) for c in cells}
            n = {c: sum(grid[k][c] is not None for k in sel) for c in cells}
            print(f"| median {name} | " + " | ".join(f"{_fmt(med[name][c])} (n={n[c]})" for c in cells) + " |"
                  + (" 38.3 |" if noise == "none" and name.startswith("blocks.3 0") else (" |" if noise == "none" else "")))
        ref = (float(np.median(list(XDREAM_GA_PIXELS.values()))) if noise == "none"
               else XDREAM_GA_PIXELS_POISSON20_MEDIAN)
        ratio = {c: (None if med["blocks.3 0/5/17/33"][c] is None else med["blocks.3 0/5/17/33"][c] / ref)
                 for c in cells}
        if field != "best_evolved":
            print(f"| ratio to XDream's GA on raw pixels ({ref:g}, units 0/5/17/33) | "
                  + " | ".join("–" if ratio[c] is None else f"{ratio[c]:.2f}x" for c in cells) + " |")
        rel = {}
        if natural:
            nat = {k: natural.get(f"{k[0]}[{k[1]}]", {}).get("best_natural") for k in grid}
            rel = {c: _median([grid[k][c] / nat[k] for k in grid if grid[k][c] is not None and nat[k]])
                   for c in cells}
            pub = XDREAM_PUBLISHED.get(noise, {})
            print("| median relative activation (/ best of the natural crops) | "
                  + " | ".join(_fmt2(rel[c]) for c in cells) + " |")
            print("| XDream's published median relative activation (DeePSiM-fc6, 10k evaluations, ImageNet) | "
                  + " | ".join(_fmt2(pub.get(c.split("/")[1])) for c in cells) + " |")
        summary[f"{noise}:{field}"] = {"title": title, "cells": cells, "median_relative_activation": rel,
                                       "per_unit": {f"{l}[{u}]": row for (l, u), row in grid.items()},
                                       "medians": med, "xdream_reference_median": ref, "ratio_to_xdream": ratio}
    commits = sorted({(r.get("commit") or "?")[:10] for r in results})
    print(f"\ncommits used: {', '.join(commits)}; runs: {len(results)}; missing cells ({len(missing)}): "
          + (", ".join(missing) if missing else "none"))
    summary["missing"] = missing
    summary["commits"] = commits
    return summary


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
