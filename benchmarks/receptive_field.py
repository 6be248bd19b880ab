"""Where a CNN unit looks: the effective receptive field of Lite0 centre units at 128 px
(docs/blackbox.md, round 9). The gradient of the unit with respect to the image, its absolute value
summed over colour and averaged over random images of the default Fourier code, gives the mass
centre and the radii holding 50% / 90% of it. A gradient diagnostic: no stimulus search, nothing shown.

    .venv/bin/python benchmarks/receptive_field.py
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from stimopt_plugins.cnn import CNNUnit
from stimopt_plugins.image_codes import FourierGenerator


def receptive_field(layer: str, unit: int, n_images: int, seed: int) -> dict:
    torch.manual_seed(seed)
    g = FourierGenerator(n_freq=24, gain=1.0, device="cpu")
    t = CNNUnit(layer=layer, unit=unit, device="cpu")
    img = g.generate_torch(torch.randn(n_images, g.space.dim)).detach().requires_grad_(True)
    t.evaluate(img).sum().backward()
    mass = img.grad.abs().sum(1).mean(0).numpy().astype(np.float64)
    mass /= mass.sum()
    ys, xs = np.mgrid[: mass.shape[0], : mass.shape[1]]
    cy, cx = float((mass * ys).sum()), float((mass * xs).sum())
    r = np.hypot(ys - cy, xs - cx).ravel()
    order = np.argsort(r)
    cum = np.cumsum(mass.ravel()[order])
    radius = {f"r{int(q * 100)}_px": float(r[order][np.searchsorted(cum, q)]) for q in (0.5, 0.9)}
    return {"layer": layer, "unit": unit, "position": list(t.position), "centre_yx_px": [round(cy, 1), round(cx, 1)], **radius,
            "image_px": int(mass.shape[0])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", default="blocks.1:3;blocks.3:0;blocks.3:5;blocks.5:7", help="LAYER:UNIT;...")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--out", default="benchmarks/results/receptive_field.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for item in args.units.split(";"):
        layer, unit = item.split(":")
        rows.append(receptive_field(layer, int(unit), args.images, seed=0))
        print(f"{layer}[{unit}]: centre {rows[-1]['centre_yx_px']} px, 50% within {rows[-1]['r50_px']:.1f} px, "
              f"90% within {rows[-1]['r90_px']:.1f} px")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"script": "benchmarks/receptive_field.py", "images": args.images, "units": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
