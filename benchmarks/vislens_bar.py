"""Issue 19's minimum bar, round by round: does the latent modification (prior_shift, slerp alpha 1)
move each unit the asked way, and is the landscape self-consistent with what the decoder shows?

    .venv/bin/python benchmarks/vislens_bar.py --units blocks.5:5,blocks.4:7,blocks.6:100 --decoded-rounds 3 \
        --out benchmarks/results/vislens_bar_rounds3.json

Same data, VAEs and options as benchmarks/vislens_table3.py (its parser; ``--units`` here lists every
unit, ``--held-out`` is ignored). After Algorithm 1 (round 0) and after each decoded round, per
unit, on the 16 held-out crops (every response scored through the engine):

- the latent modification: ``prior_shift`` alpha 1 toward mu_pos / mu_neg, run through the engine
  (``edited`` of vislens_table3), delta r against the unedited reconstruction in SD of the unit's
  training responses, and the fraction of crops moved the asked way;
- self-consistency: corr(r(decoded reconstruction), prior-axis projection of the code) on the
  held-out crops and on 200 training crops, and corr(r(reconstruction), r(input)) on held-out.

Only the latent modification is run (no gradient descent, no line search): a quick screen of
settings; Table 3 (vislens_table3.py) is the measure reported.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vislens_table3 import ROOT, edited, fit, parser  # noqa: E402

from stimopt.natural import natural_crops  # noqa: E402
from stimopt_plugins.cnn import CNNUnit  # noqa: E402
from stimopt_plugins.vislens import ImageVAEGenerator, PriorShift  # noqa: E402
from stimopt_plugins.vislens.contrast import train_contrast  # noqa: E402
from stimopt_plugins.vislens.fit import score_through_engine  # noqa: E402
from stimopt_plugins.vislens.vae import FeatureLoss, encode_means, save_landscape  # noqa: E402


def corr(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")


def main():
    ap = parser()
    ap.set_defaults(units="blocks.5:5,blocks.4:7,blocks.6:100", held_out="", line_search="",
                    out=str(ROOT / "benchmarks" / "results" / "vislens_bar.json"))
    ap.add_argument("--n-probe", type=int, default=200, help="training crops whose decoded responses are read each round")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    torch.manual_seed(0)
    crops = natural_crops(args.n_train + args.n_test, 128, seed=0)
    small = F.interpolate(crops, size=(args.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
    up = lambda v: F.interpolate(v, size=(args.input_size,) * 2, mode="bilinear", align_corners=False)  # noqa: E731
    x_in = up(small)
    tr, te = slice(0, args.n_train), slice(args.n_train, None)
    probe = slice(0, args.n_probe)
    n = args.n_test
    perceptual = FeatureLoss("efficientnet_lite0", args.perceptual_layer, args.perceptual_size) if args.perceptual_layer else None
    units, doc = [u for u in args.units.split(",") if u], {"config": vars(args) | {"out": os.path.relpath(args.out, ROOT), "strip": None}, "units": []}
    with tempfile.TemporaryDirectory() as tmp:
        scored = lambda target, images, name: score_through_engine(target, images, Path(tmp) / name)  # noqa: E731
        _, std_vae = fit("standard", small[tr], np.zeros(args.n_train), args, Path(tmp) / "std.pt", small[te], perceptual=perceptual)
        log("standard VAE fit")
        for k, u in enumerate(units):
            layer, ch = u.split(":")
            target = CNNUnit("efficientnet_lite0", layer=layer, unit=int(ch), input_size=args.input_size, device="cpu")
            r = scored(target, x_in, f"inputs{k}")
            sd = float(r[tr].std())
            rounds = []

            def on_round(j, model, used, _k=k, _target=target, _r=r, _sd=sd, _rounds=rounds):
                from stimopt_plugins.vislens.vae import PriorSpec

                path = Path(tmp) / f"u{_k}_{j}.pt"
                spec = PriorSpec(prior="activation", latent_dim=args.latent_dim, prior_dims=int(args.prior_dims), lam=args.lam)
                refs = small[te]
                save_landscape(path, model, spec, references={"images": (refs * 255).round().to(torch.uint8), "codes": encode_means(model, refs),
                                                             "responses": torch.zeros(len(refs)), "embeddings": None})
                g = ImageVAEGenerator(str(path), size=args.input_size, device="cpu")
                rec = g.generate(g.space.landscape.reference_codes)
                r_rec = scored(_target, rec, f"rec{_k}_{j}")
                with torch.no_grad():
                    mu_p = encode_means(model, small[probe])
                    r_dec_p = scored(_target, up(model.decode(mu_p)), f"probe{_k}_{j}")
                axis_te = g.space.landscape.reference_codes[:, : int(args.prior_dims)].sum(1)
                row = {"round": j, "corr_recon_input_test": corr(r_rec, _r[te]),
                       "corr_decoded_axis_test": corr(r_rec, axis_te), "corr_decoded_axis_train": corr(r_dec_p, mu_p[:, : int(args.prior_dims)].sum(1).numpy()),
                       "corr_prior_responses_axis_train": corr(used[probe], mu_p[:, : int(args.prior_dims)].sum(1).numpy())}
                for direction, sign in (("max", 1), ("min", -1)):
                    _, r_out, _ = edited(g, PriorShift(alphas=[args.alpha]), _target, direction, n)
                    d = r_out - r_rec
                    row[direction] = {"delta_r_vs_recon_sd": float(d.mean() / _sd), "right_way_vs_recon": float((sign * d > 0).mean()),
                                      "median_delta_sd": float(np.median(d) / _sd)}
                _rounds.append(row)
                log(f"{u} round {j}: " + json.dumps({kk: (round(v, 3) if isinstance(v, float) else {a: round(b, 3) for a, b in v.items()})
                                                     for kk, v in row.items() if kk != "round"}))

            def contrast(model, x, used, spec, _k=k, _t=target):
                hist = train_contrast(model, x, used, spec, _t, Path(tmp) / f"contrast{_k}", weight=args.contrast_weight,
                                      epochs=args.contrast_epochs, items_per_epoch=args.contrast_items, size=args.input_size, lr=args.lr, w_kld=args.w_kld, w_recon=args.w_recon,
                                      perceptual=perceptual, w_perceptual=args.w_perceptual if perceptual is not None else 0.0,
                                      log=lambda rec: log(f"{u} contrast {json.dumps({a: round(b, 3) for a, b in rec.items()})}"))
                contrast_hist.extend(hist)

            contrast_hist = []
            fit("activation", small[tr], r[tr], args, Path(tmp) / "s.pt", small[te], init=std_vae, perceptual=perceptual,
                score_decoded=lambda rec, _k=k, _t=target: scored(_t, up(rec), f"decoded{_k}_{time.perf_counter()}"), on_round=on_round,
                contrast=contrast)
            target.close()
            doc["units"].append({"unit": u, "response_sd": sd, "rounds": rounds, "contrast_epochs": contrast_hist})
            last = [x["rounds"][-1] for x in doc["units"]]
            doc["bar_last_round"] = {"max": sum(x["max"]["delta_r_vs_recon_sd"] > 0 for x in last),
                                     "min": sum(x["min"]["delta_r_vs_recon_sd"] < 0 for x in last), "of": len(last)}
            doc["wall_s"], doc["load_avg"] = time.perf_counter() - t0, os.getloadavg()
            Path(args.out).write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc["bar_last_round"]))


if __name__ == "__main__":
    main()
