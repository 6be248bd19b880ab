"""Vis-Lens prior shift vs the BrainACTIV baseline on a fitted encoder target (paper Table 1 / Fig. 3).

    .venv/bin/python benchmarks/vislens_brainactiv.py     # -> benchmarks/results/vislens_brainactiv.json

The paper compares the two on NSD ROIs predicted by a DINO-ViT encoder, editing CLIP embeddings
rendered by SD1.5 (TE2p decrease: BrainACTIV +0.149, Vis-Lens -0.136). Offline (no CLIP ViT-H-14,
no SD1.5 weights) the same comparison runs in an image VAE's code space, every step through
stimopt's own paths:

1. an encoder target: ``stimopt-fit model=encoder`` (EfficientNet-Lite0 blocks.5 features, ridge)
   fit on a digital twin (a known teacher's noisy responses to natural crops), ROI = twin neuron k;
2. two landscapes fit by ``stimopt-fit model=vislens_vae model.kind=image`` on natural crops scored
   by that encoder (through the engine): the activation prior (Vis-Lens) and the standard prior
   (BrainACTIV has no landscape; its ridge direction is over the standard VAE's latent means);
3. ``optimizer=prior_shift`` (alpha 0 and 1) on the first, ``optimizer=brainactiv`` (step 0 and 1) on
   the second, both directions, through the engine; delta r = response(edited) - response(alpha/step 0),
   in SD of the encoder's responses to the training crops.
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
import torch

ROOT = Path(__file__).resolve().parent.parent
PAPER = {"TE2p decrease": {"brainactiv": 0.149, "vislens": -0.136}}


def engine_run(gen, opt, target, direction, budget, batch):
    from stimopt.engine import Run
    from stimopt.objective import Objective
    from stimopt.store import RunStore

    opt.setup(gen.space, seed=0, budget=budget, batch_size=batch)
    with tempfile.TemporaryDirectory() as d:
        store = RunStore(Path(d) / "e.sqlite", synchronous="NORMAL")
        Run(target=target, generator=gen, optimizer=opt, objective=Objective(direction), store=store, budget=budget,
            batch_size=batch, run_dir=Path(d)).run()
        resp = np.asarray(store.responses(), dtype=np.float64)
        store.close()
    return resp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rois", default="0,1")
    ap.add_argument("--n-images", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--latent-dim", type=int, default=32)
    ap.add_argument("--prior-dims", type=float, default=0.25)
    ap.add_argument("--step", type=float, default=1.0, help="alpha of prior_shift and step of brainactiv")
    ap.add_argument("--decoded-rounds", type=int, default=1, help="model.decoded_rounds of the landscape fits (the committed results used 1)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vislens_brainactiv.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from omegaconf import OmegaConf

    from stimopt.fit import compose_fit, run_fit
    from stimopt_plugins.neural import EncoderTarget
    from stimopt_plugins.vislens import BrainActiv, ImageVAEGenerator, PriorShift

    t0 = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    rois = [int(k) for k in args.rois.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        enc = run_fit(compose_fit(["model=encoder", "model.input_size=64", "data.size=64", "data.twin.n_images=800",
                                   f"data.twin.n_neurons={max(rois) + 1}", "model.permutations=10", "device=cpu"]), tmp / "enc")
        log(f"encoder fit: held-out R^2 median {enc.get('r2_test_median')}")
        for k in rois:
            fits = {}
            for prior in ("activation", "standard"):
                cfg = compose_fit(["model=vislens_vae", "model.kind=image", "model.image_size=32", "model.target_size=64",
                                   f"model.latent_dim={args.latent_dim}", f"model.prior_dims={args.prior_dims}",
                                   f"model.n_images={args.n_images}", f"model.epochs={args.epochs}", "model.lr=1e-3",
                                   "model.batch_size=64", f"model.prior={prior}", f"model.decoded_rounds={args.decoded_rounds}", "device=cpu", "seed=2"])
                OmegaConf.set_struct(cfg, False)
                cfg.model.target = OmegaConf.create({"_target_": "stimopt_plugins.neural.EncoderTarget",
                                                     "checkpoint": str(tmp / "enc" / "model.pt"), "roi": k, "device": "cpu"})
                fits[prior] = run_fit(cfg, tmp / f"{prior}{k}")
            target = EncoderTarget(tmp / "enc" / "model.pt", roi=k, device="cpu")
            # the SD of the training crops' responses, from the fit's own recorded scoring
            from stimopt.store import RunStore

            st = RunStore(tmp / f"activation{k}" / "scoring" / "evaluations.sqlite")
            sd = float(np.std(st.responses()))
            st.close()
            row = {"roi": f"twin{k}", "response_sd": sd, "separation_auc_val": fits["activation"]["val"]["separation_auc"],
                   "brainactiv_ridge_r2_train": fits["standard"]["brainactiv_r2_train"]}
            for direction, sign in (("max", 1), ("min", -1)):
                for name, prior, opt in (("vislens prior shift", "activation", PriorShift(alphas=[0.0, args.step])),
                                         ("brainactiv", "standard", BrainActiv(steps=[0.0, args.step]))):
                    gen = ImageVAEGenerator(fits[prior]["checkpoint"], size=64, device="cpu")
                    n = len(gen.space.landscape.reference_codes)
                    resp = engine_run(gen, opt, target, direction, 2 * n, n)
                    d = resp[n:] - resp[:n]
                    row[f"{direction}/{name}"] = {"delta_r_sd": float(d.mean() / sd), "right_way": float((sign * d > 0).mean()), "n": n}
            target.close()
            rows.append(row)
            log(f"twin{k}: " + ", ".join(f"{key} {v['delta_r_sd']:+.3f}" for key, v in row.items() if "/" in key))
    summary = {}
    for key in [key for key in rows[0] if "/" in key]:
        d = key.split("/")[0]
        sign = 1 if d == "max" else -1
        summary[key] = {"mean_delta_r_sd": float(np.mean([r[key]["delta_r_sd"] for r in rows])),
                        "right_way_every_roi": bool(all(sign * r[key]["delta_r_sd"] > 0 for r in rows))}
    doc = {"config": vars(args) | {"out": "benchmarks/results/vislens_brainactiv.json"}, "encoder_r2_test_median": enc.get("r2_test_median"),
           "rois": rows, "summary": summary,
           "paper": PAPER, "load_avg": os.getloadavg(), "wall_s": time.perf_counter() - t0}
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
