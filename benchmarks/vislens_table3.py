"""Vis-Lens Table 3 on EfficientNet-Lite0 units: edit natural crops to raise / lower a unit with image VAEs.

    .venv/bin/python benchmarks/vislens_table3.py            # -> benchmarks/results/vislens_table3.json (+ docs strip)

Units: ``--units`` (layer:channel, centre position), default 3 units in each of blocks.3 and blocks.5
(the ones issue 19's fix was examined on) plus ``--held-out`` units in blocks.4 and blocks.6, read at
``--input-size`` px. Images: random crops of the offline photographs at 32 px (the paper: CIFAR-10),
upsampled for the target. One standard conv VAE (N(0, I); ``--pretrain-epochs``, with the perceptual
term on Lite0 ``--perceptual-layer`` features) trained once; per unit, one structured VAE started from
it, with the activation prior (``--lam``) on its first ``--prior-dims`` latent dims, ``--epochs`` and
``--decoded-rounds`` rounds in which the prior follows the unit's responses to the decoded
reconstructions, then (``--contrast-weight`` > 0, the default 10; 0 = the third pass, the paper's VAE)
``--contrast-epochs`` of stimopt's decoder-side contrast term (plugins/vislens/contrast.py: the decoded
response at mu_pos above, at mu_neg below the reconstruction's, on training crops; not the paper's).
Every response is scored through the engine. For each held-out crop, unit and direction:

- structured landscape latent modification: ``prior_shift`` (slerp, alpha ``--alpha``);
- structured landscape gradient descent: ``latent_gradient kld=activation`` (Algorithm 3);
- standard-VAE gradient descent: ``latent_gradient kld=standard`` on the standard VAE;
- line search: ``prior_shift`` over ``--line-search`` alphas, per crop the edit the engine's
  objective scored best; its control: the same alphas toward the other prior.

Measures per method: delta r (output - input) in SD of the unit's training responses, against the
input crop and against the unedited VAE reconstruction (which isolates the edit from decoder blur),
the fraction of crops moved the asked way, the cosine of Lite0 pooled features between output and
input, and a feature-space diversity (mean pairwise cosine distance of the outputs' features).
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
import torch.nn.functional as F

from stimopt.models import load_model
from stimopt.natural import natural_crops
from stimopt.objective import Objective
from stimopt_plugins.cnn import CNNUnit
from stimopt_plugins.vislens import ImageVAEGenerator, LatentGradient, PriorShift
from stimopt_plugins.vislens.contrast import train_contrast
from stimopt_plugins.vislens.fit import score_through_engine
from stimopt_plugins.vislens.vae import ConvVAE, FeatureLoss, PriorSpec, encode_means, landscape_report, save_landscape, train_landscape

ROOT = Path(__file__).resolve().parent.parent
PAPER = {  # CIFAR-10, ResNet18 similarity (Table 3)
    "max": {"latent modification": (0.745, 0.046), "structured gradient descent": (0.666, 0.079), "standard gradient descent": (0.520, 0.067)},
    "min": {"latent modification": (0.696, -0.083), "structured gradient descent": (0.661, -0.110), "standard gradient descent": (0.538, -0.068)},
}


def lite0_features(size):
    model, mean, std = load_model("efficientnet_lite0")
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    @torch.no_grad()
    def feats(x):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return model.forward_head(model.forward_features((x - m) / s), pre_logits=True)

    return feats


def fit(prior, x, r, args, path, refs, init=None, perceptual=None, score_decoded=None, on_round=None, contrast=None):
    """A conv VAE on x (responses r): ``init`` (a fitted VAE) starts it, ``perceptual`` adds the
    feature term to the reconstruction loss; the standard VAE trains ``--pretrain-epochs`` from
    scratch, a structured one ``--epochs`` from ``init``."""
    import copy

    pd = None if not args.prior_dims else args.prior_dims if args.prior_dims < 1 else int(args.prior_dims)
    spec = PriorSpec(prior=prior, latent_dim=args.latent_dim, prior_dims=pd, lam=args.lam)
    spec.fit_normalization(r)
    model = ConvVAE(args.image_size, args.latent_dim) if init is None else copy.deepcopy(init)
    rounds = args.decoded_rounds if prior == "activation" else 0
    epochs = args.pretrain_epochs if init is None else args.epochs
    _, used = train_landscape(model, x, r, spec, decoded_rounds=rounds, score_decoded=score_decoded, on_round=on_round, epochs=epochs,
                              lr=args.lr, w_kld=args.w_kld, w_recon=args.w_recon, batch_size=64, seed=0, perceptual=perceptual,
                              w_perceptual=args.w_perceptual if perceptual is not None else 0.0)
    if contrast is not None and prior == "activation" and args.contrast_weight > 0:  # stimopt's decoder-side term (off by default)
        contrast(model, x, used, spec)
        if on_round is not None:
            on_round(rounds + 1, model, used)
    save_landscape(path, model, spec, references={
        "images": (refs * 255).round().to(torch.uint8), "codes": encode_means(model, refs), "responses": torch.zeros(len(refs)),
        "embeddings": None})
    return landscape_report(model, x, r, spec), model


def edited(gen, opt, target, direction, n, asks=1, pick="last"):
    """(codes, responses, chosen step per reference or None) of an optimizer run through the engine: the last ask's n codes
    (gradient passes count as evaluations), or with ``pick="best"`` for each reference the code of
    the run that scored best (a line search over the schedule's alphas, scored by the engine's
    objective, so the direction is applied there once). Responses are the stored ones."""
    from stimopt.engine import Run
    from stimopt.store import RunStore

    budget = asks * (getattr(opt, "steps_per_ask", 0) + 1) * n if pick == "last" else len(opt.steps) * n
    opt.setup(gen.space, seed=0, budget=budget, batch_size=n)
    with tempfile.TemporaryDirectory() as d:
        store = RunStore(Path(d) / "e.sqlite", synchronous="NORMAL")
        Run(target=target, generator=gen, optimizer=opt, objective=Objective(direction), store=store,
            budget=budget, batch_size=n, run_dir=Path(d)).run()
        codes, resp, score = store.codes(), np.asarray(store.responses(), dtype=np.float64), np.asarray(store.scores(), dtype=np.float64)
        store.close()
    if pick == "last":
        return codes[-n:], resp[-n:], None
    best = score.reshape(len(opt.steps), n).argmax(0)  # step-major schedule: row k*n + i is reference i at step k
    rows = best * n + np.arange(n)
    return codes[rows], resp[rows], best


@torch.no_grad()
def measure(gen, codes, r_out, x_in, r_in, r_rec, feats, sd, sign):
    """Table 3's measures of one method's outputs; every response was scored through the engine."""
    out = gen.generate(codes)
    recon = gen.generate(gen.space.landscape.reference_codes)
    f = feats(out)
    fn = F.normalize(f, dim=1)
    pair = 1 - fn @ fn.T
    n = len(f)
    return {"delta_r_sd": float((r_out - r_in).mean() / sd), "delta_r_vs_recon_sd": float((r_out - r_rec).mean() / sd),
            "right_way": float((sign * (r_out - r_in) > 0).mean()), "right_way_vs_recon": float((sign * (r_out - r_rec) > 0).mean()),
            "cosine": float(F.cosine_similarity(f, feats(x_in), dim=1).mean()),
            "cosine_vs_recon": float(F.cosine_similarity(f, feats(recon), dim=1).mean()),
            "diversity": float(pair.sum() / (n * (n - 1)))}, out


def strip(path, rows):
    """A PNG grid: each row reference -> reconstruction -> shifted (min) -> shifted (max)."""
    from PIL import Image

    grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)
    Image.fromarray((grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)


def parser():
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", default="blocks.3:10,blocks.3:20,blocks.3:30,blocks.5:5,blocks.5:15,blocks.5:25")
    ap.add_argument("--held-out", default="blocks.4:7,blocks.6:11",
                    help="units (and layers) never looked at while the fix was chosen")
    ap.add_argument("--n-train", type=int, default=800)
    ap.add_argument("--n-test", type=int, default=16)
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=32, help="px of the VAE's images (the paper: CIFAR-10's 32)")
    ap.add_argument("--pretrain-epochs", type=int, default=20, help="epochs of the standard VAE (shared; it starts every structured one)")
    ap.add_argument("--epochs", type=int, default=10, help="epochs of each unit's structured VAE, from the standard one")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--latent-dim", type=int, default=64)
    ap.add_argument("--prior-dims", type=float, default=8, help="a fraction (< 1) or a count of latent dims; 0 = all")
    ap.add_argument("--decoded-rounds", type=int, default=1, help="rounds in which the prior follows the decoded images' responses (0 = paper's rule only)")
    ap.add_argument("--w-kld", type=float, default=1.0)
    ap.add_argument("--lam", type=float, default=0.2, help="prior sigma = lam / (|r_n| + eps): smaller holds the prior dims tighter")
    ap.add_argument("--w-recon", type=float, default=1.0)
    ap.add_argument("--perceptual-layer", default="blocks.1", help="Lite0 layer of the perceptual reconstruction term ('' = pixel MSE only)")
    ap.add_argument("--perceptual-size", type=int, default=32, help="px the perceptual term's network reads (32: the VAE's own pixels)")
    ap.add_argument("--w-perceptual", type=float, default=2e-3)
    ap.add_argument("--contrast-weight", type=float, default=10.0, help="stimopt's decoder-side contrast term (plugins/vislens/contrast.py; 0 = off: the paper's VAE, the third pass)")
    ap.add_argument("--contrast-epochs", type=int, default=3, help="epochs of the contrast phase after the structured fit")
    ap.add_argument("--contrast-items", type=int, default=256, help="training crops per contrast epoch (a random subset; 3 target passes each)")
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--line-search", default="0.25,0.5,0.75,1", help="alphas of the line-search latent modification ('' = skip); "
                    "the control searches the same alphas toward the other prior")
    ap.add_argument("--steps", type=int, default=10, help="Adam steps of latent_gradient (paper: 10,000)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vislens_table3.json"))
    ap.add_argument("--strip", default=str(ROOT / "docs" / "vislens_strip.png"))
    ap.add_argument("--merge", default="", help="comma-separated results files of this script (same settings, other units) to "
                    "combine into --out (units in the order given, means and orderings recomputed); nothing is run")
    return ap


def merge(args):
    docs = [json.loads(Path(f).read_text()) for f in args.merge.split(",") if f]
    keep = ("units", "held_out", "out", "strip", "merge")
    for d in docs[1:]:
        diff = {k for k in d["config"] if k not in keep and d["config"][k] != docs[0]["config"].get(k)}
        if diff:
            raise SystemExit(f"cannot merge runs of different settings: {sorted(diff)}")
    results = [u for d in docs for u in d["units"]]
    summary = summarize(results)
    doc = {"config": docs[0]["config"] | {"units": ",".join(u["unit"] for u in results if not u["held_out"]),
                                          "held_out": ",".join(u["unit"] for u in results if u["held_out"]),
                                          "out": os.path.relpath(args.out, ROOT), "merged_from_runs": len(docs)},
           "units": results, "mean": summary["mean"], "orderings": summary["orderings"], "right_way": summary["right_way"],
           "paper": PAPER, "load_avg_per_unit": [x for d in docs for x in d["load_avg_per_unit"]],
           "wall_s": sum(d["wall_s"] for d in docs), "wall_s_per_run": [d["wall_s"] for d in docs],
           "complete": all(d["complete"] for d in docs)}
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(json.dumps({"mean": summary["mean"], "orderings": summary["orderings"], "right_way": summary["right_way"]}, indent=1))


def main():
    args = parser().parse_args()
    if args.merge:
        return merge(args)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    rel = lambda f: os.path.relpath(f, ROOT) if str(Path(f).resolve()).startswith(str(ROOT)) else Path(f).name  # noqa: E731
    torch.manual_seed(0)
    feats = lite0_features(args.input_size)
    crops = natural_crops(args.n_train + args.n_test, 128, seed=0)
    small = F.interpolate(crops, size=(args.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
    x_in = F.interpolate(small, size=(args.input_size,) * 2, mode="bilinear", align_corners=False)  # what the VAE can see
    up = lambda v: F.interpolate(v, size=(args.input_size,) * 2, mode="bilinear", align_corners=False)  # noqa: E731
    tr, te = slice(0, args.n_train), slice(args.n_train, None)
    n, asks = args.n_test, max(1, args.steps // 10)
    line = [float(a) for a in args.line_search.split(",") if a.strip()]
    perceptual = FeatureLoss("efficientnet_lite0", args.perceptual_layer, args.perceptual_size) if args.perceptual_layer else None
    results, strips, load = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        scored = lambda target, images, name: score_through_engine(target, images, Path(tmp) / name)  # noqa: E731
        _, std_vae = fit("standard", small[tr], np.zeros(args.n_train), args, Path(tmp) / "std.pt", small[te], perceptual=perceptual)
        g_std = ImageVAEGenerator(str(Path(tmp) / "std.pt"), size=args.input_size, device="cpu")
        log("standard VAE fit")
        units = [(u, False) for u in args.units.split(",") if u] + [(u, True) for u in args.held_out.split(",") if u]
        for k, (u, held_out) in enumerate(units):
            layer, ch = u.split(":")
            target = CNNUnit("efficientnet_lite0", layer=layer, unit=int(ch), input_size=args.input_size, device="cpu")
            r = scored(target, x_in, f"inputs{k}")  # every image a target sees goes through the engine
            sd = float(r[tr].std())
            with torch.no_grad():
                r_std_rec = scored(target, up(std_vae.decode(encode_means(std_vae, small[te]))), f"std_recon{k}")
            contrast = lambda model, xs, used, spec, _k=k: row_contrast.extend(train_contrast(  # noqa: E731
                model, xs, used, spec, target, Path(tmp) / f"contrast{_k}", weight=args.contrast_weight, epochs=args.contrast_epochs,
                items_per_epoch=args.contrast_items, size=args.input_size, lr=args.lr, w_kld=args.w_kld, w_recon=args.w_recon,
                perceptual=perceptual, w_perceptual=args.w_perceptual if perceptual is not None else 0.0))
            row_contrast = []
            rep, vae = fit("activation", small[tr], r[tr], args, Path(tmp) / "s.pt", small[te], init=std_vae, perceptual=perceptual,
                           score_decoded=lambda rec, _k=k: scored(target, up(rec), f"decoded{_k}"), contrast=contrast)
            g = ImageVAEGenerator(str(Path(tmp) / "s.pt"), size=args.input_size, device="cpu")
            r_rec = scored(target, g.generate(g.space.landscape.reference_codes), f"recon{k}")
            r_rec_std = scored(target, g_std.generate(g_std.space.landscape.reference_codes), f"recon_std{k}")
            log(f"{u}: structured VAE fit, separation AUC {rep['separation_auc']:.3f}")
            row = {"unit": u, "held_out": held_out, "response_sd": sd, "separation_auc_train": rep["separation_auc"],
                   "recon_r2_train": rep["recon_r2"], "recon_response_corr_test": float(np.corrcoef(r_rec, r[te])[0, 1]),
                   "standard_recon_response_corr_test": float(np.corrcoef(r_std_rec, r[te])[0, 1]),
                   "decoded_axis_corr_test": float(np.corrcoef(r_rec, g.space.landscape.reference_codes[:, g.space.landscape.mask > 0].sum(1))[0, 1])}
            if row_contrast:
                row["contrast_epochs"] = row_contrast
            outs = {}
            for direction, sign in (("max", 1), ("min", -1)):
                methods = {
                    "latent modification": (g, PriorShift(alphas=[args.alpha]), 1, "last", r_rec),
                    "structured gradient descent": (g, LatentGradient(kld="activation", steps_per_ask=10), asks, "last", r_rec),
                    "standard gradient descent": (g_std, LatentGradient(kld="standard", steps_per_ask=10), asks, "last", r_rec_std),
                }
                if line:  # the best of a few alphas toward mu_dir, scored by the engine; the control: toward the other prior
                    methods["latent modification (line search)"] = (g, PriorShift(alphas=line), 1, "best", r_rec)
                    methods["line search toward the other prior (control)"] = (g, PriorShift(alphas=[-a for a in line]), 1, "best", r_rec)
                for name, (gen, opt, a, pick, rec) in methods.items():
                    codes, r_out, chosen = edited(gen, opt, target, direction, n, a, pick)
                    row[f"{direction}/{name}"], out = measure(gen, codes, r_out, x_in[te], r[te], rec, feats, sd, sign)
                    if pick == "best":  # how far along the landscape axis the line search went
                        row[f"{direction}/{name}"]["alpha_chosen"] = [float(opt.steps[i]) for i in chosen]
                    outs[(direction, name)] = out
            results.append(row)
            load.append(os.getloadavg())
            if len(strips) < 1:
                rec = g.generate(g.space.landscape.reference_codes)
                strips = [(x_in[te][i], rec[i], outs[("min", "latent modification")][i], outs[("max", "latent modification")][i]) for i in range(min(6, n))]
                strip(args.strip, strips)
            target.close()
            summary = summarize(results)
            doc = {"config": vars(args) | {"out": rel(args.out), "strip": rel(args.strip)},
                   "units": results, "mean": summary["mean"], "orderings": summary["orderings"], "right_way": summary["right_way"],
                   "paper": PAPER, "load_avg_per_unit": load, "wall_s": time.perf_counter() - t0, "complete": len(results) == len(units)}
            Path(args.out).write_text(json.dumps(doc, indent=1))  # after each unit
            log(f"{u}: done " + json.dumps({d: round(row[f'{d}/latent modification']['delta_r_vs_recon_sd'], 3) for d in ('max', 'min')}))
    print(json.dumps({"mean": summary["mean"], "orderings": summary["orderings"], "right_way": summary["right_way"]}, indent=1))


def summarize(results):
    keys = [k for k in results[0] if "/" in k]
    mean = {k: {m: float(np.mean([r[k][m] for r in results])) for m in results[0][k]} for k in keys}
    o = {}
    for d in ("max", "min"):
        c = {m: mean[f"{d}/{m}"]["cosine"] for m in PAPER[d]}
        o[f"{d}: cosine latent modification > structured GD > standard GD"] = bool(c["latent modification"] > c["structured gradient descent"] > c["standard gradient descent"])
        a = {m: abs(mean[f"{d}/{m}"]["delta_r_sd"]) for m in PAPER[d]}
        o[f"{d}: |delta r| structured GD largest"] = bool(a["structured gradient descent"] == max(a.values()))
        sign = 1 if d == "max" else -1
        o[f"{d}: latent modification moves every unit the asked way (vs input)"] = bool(all(sign * r[f"{d}/latent modification"]["delta_r_sd"] > 0 for r in results))
        o[f"{d}: latent modification moves every unit the asked way (vs reconstruction)"] = bool(all(sign * r[f"{d}/latent modification"]["delta_r_vs_recon_sd"] > 0 for r in results))
    right = {}  # per unit and direction: did the latent modification move the unit the asked way (vs the reconstruction)?
    for name in ("latent modification", "latent modification (line search)", "line search toward the other prior (control)"):
        if f"max/{name}" in results[0]:
            right[name] = {r["unit"]: {d: bool((1 if d == "max" else -1) * r[f"{d}/{name}"]["delta_r_vs_recon_sd"] > 0) for d in ("max", "min")}
                           for r in results}
            for d in ("max", "min"):
                o[f"{d}: {name} moves every unit the asked way (vs reconstruction)"] = all(v[d] for v in right[name].values())
    ctl = "line search toward the other prior (control)"
    if f"max/{ctl}" in results[0]:
        for d in ("max", "min"):
            sign = 1 if d == "max" else -1
            o[f"{d}: line search toward mu_dir moves the unit further the asked way than toward the other prior (mean over units)"] = bool(
                sign * mean[f"{d}/latent modification (line search)"]["delta_r_vs_recon_sd"] > sign * mean[f"{d}/{ctl}"]["delta_r_vs_recon_sd"])
    held = [r for r in results if r.get("held_out")]
    for d in ("max", "min"):
        sign = 1 if d == "max" else -1
        if held:
            o[f"{d}: latent modification moves every held-out unit the asked way (vs reconstruction)"] = bool(all(sign * r[f"{d}/latent modification"]["delta_r_vs_recon_sd"] > 0 for r in held))
    return {"mean": mean, "orderings": o, "right_way": right}


if __name__ == "__main__":
    main()
