"""Can Vis-Lens's FID (the paper: torchmetrics FrechetInceptionDistance, 2048-d pool-3) be measured here?

    .venv/bin/python benchmarks/vislens_fid.py        # -> benchmarks/results/vislens_fid.json

FID needs torchmetrics with torch-fidelity (its Inception-v3 feature extractor) and that network's
weights, which torch-fidelity reads from the torch hub cache and otherwise downloads (nothing is
downloaded here: no hub is reachable). This script records, in one line, which of the three is
missing; when all are present it computes FID between the offline natural crops and their
pixel-shuffled versions as a check that the path works.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's FID Inception


def fid_status() -> tuple[bool, str]:
    """(available, one line saying what is missing or where the weights are)."""
    import importlib.util

    import torch

    path = os.path.join(torch.hub.get_dir(), "checkpoints", WEIGHTS)
    for mod, pip in (("torchmetrics", "torchmetrics"), ("torch_fidelity", "torch-fidelity")):
        if importlib.util.find_spec(mod) is None:
            return False, f"FID not measured: {pip} is not installed (pip install torchmetrics[image]), and the Inception weights go to {path}"
    if not os.path.isfile(path):
        return False, f"FID not measured: the FID Inception weights are not on this machine; put {WEIGHTS} at {path}"
    return True, f"FID Inception weights at {path}"


def main():
    t0 = time.perf_counter()
    ok, line = fid_status()
    doc = {"fid_available": ok, "status": line.replace(str(Path.home()), "~"), "load_avg": os.getloadavg()}
    if ok:
        import torch
        from torchmetrics.image.fid import FrechetInceptionDistance

        from stimopt.natural import natural_crops

        real = (natural_crops(200, 64, seed=0) * 255).round().to(torch.uint8)
        fake = real.flatten(2)[:, :, torch.randperm(64 * 64)].view_as(real)
        fid = FrechetInceptionDistance(feature=2048)
        fid.update(real, real=True)
        fid.update(fake, real=False)
        doc["fid_crops_vs_shuffled"] = float(fid.compute())
    doc["wall_s"] = time.perf_counter() - t0
    (ROOT / "benchmarks" / "results" / "vislens_fid.json").write_text(json.dumps(doc, indent=1))
    print(doc["status"])


if __name__ == "__main__":
    main()
