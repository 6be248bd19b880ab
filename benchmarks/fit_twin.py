"""Fitting R^2 on synthetic "digital twin" data (paper A.1.3): a known teacher (a thresholded
linear read-out of a frozen backbone layer, Gaussian receptive field per neuron) plus Gaussian
noise of 0.2 x the response SD; the V4 ensemble model and the ridge encoder are fitted with
``stimopt-fit``'s own code and scored on held-out images, against the noisy responses and against
the teacher's noiseless ones.

    .venv/bin/python benchmarks/fit_twin.py                      # EfficientNet-Lite0 (offline weights)
    .venv/bin/python benchmarks/fit_twin.py --members 25 --n-images 5000 --backbone resnet50 --layer layer3

Scaled-down defaults (3 members of width 32, 30 epochs, 1,200 images) keep it to minutes on a
shared 2-core CPU; the paper's scale is ``--members 25 --width 64 --epochs 60`` (a GPU helps).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--layer", default="blocks.4")
    p.add_argument("--weights", default="pretrained")
    p.add_argument("--input-size", type=int, default=96)
    p.add_argument("--n-images", type=int, default=1200)
    p.add_argument("--n-neurons", type=int, default=8)
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from stimopt.fit import compose_fit, run_fit

    common = [f"model.backbone={a.backbone}", f"model.layer={a.layer}", f"model.weights={a.weights}",
              f"model.input_size={a.input_size}", f"data.size={a.input_size}", f"data.twin.n_images={a.n_images}",
              f"data.twin.n_neurons={a.n_neurons}", "device=cpu"]
    runs = {
        "v4_ensemble": ["model=v4_ensemble", f"model.members={a.members}", f"model.epochs={a.epochs}", f"model.width={a.width}", *common],
        "encoder (pool 2)": ["model=encoder", "model.pool=2", *common],
        "encoder (full map)": ["model=encoder", "model.pool=0", *common],
    }
    out = Path(a.out or tempfile.mkdtemp(prefix="fit_twin_"))
    rows = []
    for name, overrides in runs.items():
        t0 = time.perf_counter()
        report = run_fit(compose_fit(overrides), out / name.split()[0] / name.replace(" ", "_"))
        rows.append((name, report["r2_test_median"], min(report["r2_test"]), report["r2_teacher_median"], time.perf_counter() - t0))
    print(f"twin: {a.n_images} natural crops at {a.input_size} px, {a.n_neurons} neurons, noise 0.2 SD; "
          f"backbone {a.backbone}:{a.layer} ({a.weights}); ensemble {a.members} members x 4 residual layers of width {a.width}")
    print(f"{'model':20s} {'R2 held-out (median)':>21s} {'(min)':>7s} {'R2 vs teacher':>14s} {'fit s':>7s}")
    for name, med, lo, teach, secs in rows:
        print(f"{name:20s} {med:21.3f} {lo:7.3f} {teach:14.3f} {secs:7.1f}")
    print("noise ceiling of R2 held-out (noise 0.2 SD): 0.962")
    (out / "fit_twin.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
