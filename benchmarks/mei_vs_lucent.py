"""optimizer=mei against torch-lucent's render_vis on the same units, at equal gradient steps (issue 14, part 3).

Target: stimopt's ``cnn_unit`` (EfficientNet-Lite0, offline weights, ``blocks.3`` centre unit,
128 px). Both methods take ``--steps`` gradient steps (Adam, one image) and the activation reached
is the clean final image's response (no transforms) read by that same target:

- ``mei``: ``stimopt experiment=mei`` (generator=pixels at 128 px, the MEI's decorrelated 1/f
  Fourier parametrization) with ``batch_size=1``, ``optimizer.steps_per_ask=STEPS`` and
  ``budget=STEPS+1``, run by the engine: every gradient pass and the final clean image are
  recorded in the run's store; the activation is the recorded response of the final image.
- ``lucent``: ``render_vis`` with its defaults (``param.image(128)``: decorrelated FFT image,
  ``standard_transforms``, Adam lr 0.05), ``thresholds=(STEPS,)``, ``preprocess=False`` (the target
  normalizes) and ``fixed_image_size=128`` (so the model sees 128 px, as the target does); its
  objective is minus the same target's response.

lucent is not a dependency of stimopt. Install it (and a current kornia: lucent pins
kornia<=0.4.1) outside the project's environment and point ``--lucent-path`` (or the
``LUCENT_PATH`` environment variable, folders separated by ``os.pathsep``) at them::

    .venv/bin/python -m pip install --no-deps --target LUCENTDIR torch-lucent decorator
    .venv/bin/python -m pip install --no-deps --target KORNIADIR kornia kornia_rs
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mei_vs_lucent.py --lucent-path LUCENTDIR:KORNIADIR --units 0,5

lucent calls ``kornia.get_rotation_matrix2d`` and ``kornia.warp_affine``, which current kornia has
under ``kornia.geometry.transform`` only: this script aliases them at kornia's top level.

Writes ``benchmarks/results/mei_vs_lucent.json`` (after every unit, so a cut run keeps what it
measured): per unit ``{"unit", "mei", "lucent", "mei_wall_s", "lucent_wall_s", "mei_tv", "lucent_tv"}``
(``*_tv``: mean absolute difference of neighbouring pixels, lower is smoother), the medians and
ratios, the machine load; the final images (8-bit) beside it (``.npz``, so ``--append`` can redraw
the grid); and ``docs/mei_vs_lucent.png`` (MEI row above lucent row, one column per unit).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def import_lucent(path: str | None):
    for folder in reversed([p for p in (path or os.environ.get("LUCENT_PATH") or "").split(os.pathsep) if p]):
        sys.path.insert(0, folder)
    try:
        import kornia
        import kornia.geometry.transform as kgt
    except ImportError:
        sys.exit("mei_vs_lucent: kornia is not importable; install it with --no-deps --target DIR and pass --lucent-path")
    for name in ("get_rotation_matrix2d", "warp_affine"):  # what lucent calls at kornia's top level
        if not hasattr(kornia, name):
            setattr(kornia, name, getattr(kgt, name))
    try:  # lucent's notebook display helpers import IPython; nothing here displays, so a stand-in will do
        import IPython.display  # noqa: F401
    except ImportError:
        import types

        ipython = types.ModuleType("IPython")
        ipython.display = types.ModuleType("IPython.display")
        sys.modules.update({"IPython": ipython, "IPython.display": ipython.display})
    try:
        from lucent.optvis import objectives, param, render
    except ImportError as exc:
        sys.exit(f"mei_vs_lucent: lucent is not importable ({exc}); install torch-lucent (and decorator) with "
                 "--no-deps --target DIR and pass --lucent-path")
    finally:  # matplotlib looks for IPython too: let it see none
        for name in ("IPython.display", "IPython"):
            if getattr(sys.modules.get(name), "__file__", None) is None:
                sys.modules.pop(name, None)
    return objectives, param, render, kornia.__version__


def tv(img: np.ndarray) -> float:
    """Mean absolute difference of neighbouring pixels of an [H, W, 3] image in [0, 1]."""
    return float((np.abs(np.diff(img, axis=0)).mean() + np.abs(np.diff(img, axis=1)).mean()) / 2)


def run_mei(layer: str, unit: int, steps: int, size: int, seed: int, extra: list[str]):
    import torch

    from stimopt.config import compose
    from stimopt.experiment import build_run

    overrides = ["logger=none", "device=cpu", "store.synchronous=NORMAL", "experiment=mei", f"generator.size={size}",
                 f"target.layer={layer}", f"target.unit={unit}", f"target.input_size={size}", "batch_size=1",
                 f"budget={steps + 1}", f"optimizer.steps_per_ask={steps}", f"seed={seed}", *extra]
    with tempfile.TemporaryDirectory() as d:
        run = build_run(compose(overrides), Path(d) / "run")
        t0 = time.perf_counter()
        record = None
        while run.progress.n_evaluations < run.budget:
            record = run.step()  # the ask's gradient passes are committed inside; this is the clean image
        wall = time.perf_counter() - t0
        n_stored = run.store.n_evaluations()
        grad_steps = run.optimizer.n_steps
        with torch.no_grad():
            img = run.generator.generate(run.store.codes()[-1:])[0].permute(1, 2, 0).numpy()
        run.store.close()
    return {"activation": float(record["generation_best"]), "wall_s": wall, "image": img, "stored": n_stored,
            "grad_steps": grad_steps, "overrides": overrides}


def run_lucent(lucent, layer: str, unit: int, steps: int, size: int, seed: int):
    import torch

    from stimopt_plugins.cnn import CNNUnit

    objectives, param, render, _ = lucent
    target = CNNUnit(model="efficientnet_lite0", layer=layer, unit=unit, input_size=size, device="cpu")

    class Unit(torch.nn.Module):  # lucent hooks named modules: "unit" outputs the target's [B] responses
        def forward(self, x):
            return target.evaluate(x)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unit = Unit()

        def forward(self, x):
            return self.unit(x)

    torch.manual_seed(seed)
    model = Model().eval()
    t0 = time.perf_counter()
    images = render.render_vis(model, objectives.Objective(lambda m: -m("unit").mean()), param_f=lambda: param.image(size),
                               thresholds=(steps,), preprocess=False, progress=False, show_image=False,
                               fixed_image_size=size)
    wall = time.perf_counter() - t0
    img = np.asarray(images[-1][0], dtype=np.float32)
    with torch.no_grad():
        act = float(target.evaluate(torch.from_numpy(img).permute(2, 0, 1)[None]))
    return {"activation": act, "wall_s": wall, "image": img}


def grid(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows)
    fig, axes = plt.subplots(2, n, figsize=(1.9 * n, 4.5), squeeze=False)
    for j, r in enumerate(rows):
        for i, m in enumerate(("mei", "lucent")):
            ax = axes[i][j]
            ax.imshow(np.clip(r[f"{m}_image"], 0, 1))
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"unit {r['unit']}: {r[m]:.1f}", fontsize=8)
            if j == 0:
                ax.set_ylabel("stimopt mei" if m == "mei" else "lucent render_vis", fontsize=9)
    fig.suptitle("Lite0 blocks.3 centre units, 128 px, equal gradient steps", fontsize=9)
    fig.tight_layout(h_pad=1.2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", default="0,5,17,33")
    ap.add_argument("--layer", default="blocks.3")
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lucent-path", default=None, help="folders holding lucent and a current kornia (os.pathsep-separated)")
    ap.add_argument("--mei", default="", help="extra overrides for the mei runs, comma-separated")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/mei_vs_lucent.json"))
    ap.add_argument("--png", default=str(ROOT / "docs/mei_vs_lucent.png"))
    ap.add_argument("--no-lucent", action="store_true", help="mei only (lucent column left empty)")
    ap.add_argument("--append", action="store_true", help="keep the units already in --out (same settings) and add these")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    lucent = None if args.no_lucent else import_lucent(args.lucent_path)
    extra = [o for o in args.mei.split(",") if o]
    units = [int(u) for u in args.units.split(",")]
    out = {"benchmark": "mei_vs_lucent", "target": f"cnn_unit efficientnet_lite0 {args.layer} centre, {args.size} px",
           "layer": args.layer, "size": args.size, "steps": args.steps, "seed": args.seed,
           "torch": torch.__version__, "kornia": lucent[3] if lucent else None, "threads": torch.get_num_threads(),
           "loadavg_start": os.getloadavg(), "mei_extra_overrides": extra, "units": []}
    rows = []
    if args.append and Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        same = all(old.get(k) == out[k] for k in ("layer", "size", "steps", "seed", "mei_extra_overrides"))
        if not same:
            sys.exit("mei_vs_lucent: --append needs the same layer, size, steps, seed and --mei as the file's")
        out["loadavg_start"] = [old.get("loadavg_start"), out["loadavg_start"]]
        images = np.load(Path(args.out).with_suffix(".npz")) if Path(args.out).with_suffix(".npz").exists() else {}
        for r in old["units"]:
            if r["unit"] not in units:
                rows.append({**r, **{f"{m}_image": images[f"{m}_{r['unit']}"] / 255.0 for m in ("mei", "lucent")
                                     if f"{m}_{r['unit']}" in images}})
    for u in units:
        m = run_mei(args.layer, u, args.steps, args.size, args.seed, extra)
        row = {"unit": u, "layer": args.layer, "mei": m["activation"], "mei_wall_s": round(m["wall_s"], 2),
               "mei_grad_steps": m["grad_steps"], "mei_recorded_evaluations": m["stored"], "mei_tv": tv(m["image"]),
               "mei_image": m["image"]}
        if lucent:
            lu = run_lucent(lucent, args.layer, u, args.steps, args.size, args.seed)
            row.update({"lucent": lu["activation"], "lucent_wall_s": round(lu["wall_s"], 2), "lucent_tv": tv(lu["image"]),
                        "lucent_image": lu["image"], "ratio_mei_lucent": m["activation"] / lu["activation"]})
        rows.append(row)
        print(f"unit {u}: mei {row['mei']:.1f} ({row['mei_wall_s']} s, tv {row['mei_tv']:.4f})"
              + (f"  lucent {row['lucent']:.1f} ({row['lucent_wall_s']} s, tv {row['lucent_tv']:.4f})" if lucent else ""),
              flush=True)
        out["units"] = [{k: v for k, v in r.items() if not k.endswith("_image")} for r in rows]
        summary = {"n_units": len(rows), "median_mei": float(np.median([r["mei"] for r in rows]))}
        if lucent:
            summary.update({
                "median_lucent": float(np.median([r["lucent"] for r in rows])),
                "median_ratio_mei_lucent": float(np.median([r["ratio_mei_lucent"] for r in rows])),
                "mei_wins": int(sum(r["mei"] >= r["lucent"] for r in rows)),
                "median_wall_ratio_mei_lucent": float(np.median([r["mei_wall_s"] / r["lucent_wall_s"] for r in rows])),
                "median_tv_mei": float(np.median([r["mei_tv"] for r in rows])),
                "median_tv_lucent": float(np.median([r["lucent_tv"] for r in rows])),
            })
        out["summary"] = summary
        out["loadavg_end"] = os.getloadavg()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
        np.savez_compressed(Path(args.out).with_suffix(".npz"), **{
            f"{m}_{r['unit']}": (np.clip(r[f"{m}_image"], 0, 1) * 255).round().astype(np.uint8)
            for r in rows for m in ("mei", "lucent") if f"{m}_image" in r})
        if lucent and all("lucent_image" in r for r in rows):
            grid(rows, Path(args.png))
    print(json.dumps(out["summary"], indent=1))


if __name__ == "__main__":
    main()
