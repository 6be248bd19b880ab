"""Vis-Lens Table 3, in shape: edit natural crops to raise / lower a CNN unit with image VAEs.

    .venv/bin/python benchmarks/vislens_table3.py [--n-train 1500 --n-test 64 --epochs 30 --steps 100]

Target: the embedded default unit (EfficientNet-Lite0 blocks.3, unit 10, centre, 128 px, offline
ImageNet weights). Images: random crops of the offline photographs (the paper used CIFAR-10).
Two conv image VAEs (the paper's bottleneck CVAE, 32 px, 192-d latent) are fit to the same crops:
one with the activation prior on its first ``--prior-dims`` latent dims (the "structured
landscape"), one standard (N(0, I)). For each held-out crop and direction:

- structured landscape latent modification: ``prior_shift`` with alpha = 1 (z -> mu_pos/mu_neg on the prior dims);
- structured landscape gradient descent: ``latent_gradient`` (Algorithm 3, lr 0.1, w_KLD 1e-3, sigma 0.1);
- standard-VAE gradient descent: ``latent_gradient kld=standard`` on the standard VAE.

Per method: mean response change (output - input, input = the 32 px crop as the VAE sees it) and
mean cosine similarity of Lite0 pooled features between input and output (the paper: ResNet18).

Part 2 compares prior_shift with the BrainACTIV baseline. CLIP ViT-H-14 and SD1.5 weights are not
on this machine, so BrainACTIV runs in the one decodable unstructured embedding space we have: the
standard VAE's latent (ridge from L2-normalized latents to responses, shift along +/- w/||w||, same
``brainactiv`` optimizer code, decoded by the standard VAE). This is an analogue, said so in the table.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stimopt.natural import natural_crops
from stimopt.objective import Objective
from stimopt.models import load_model
from stimopt_plugins.cnn import CNNUnit
from stimopt_plugins.vislens import (
    BrainActiv, ImageVAEGenerator, Landscape, LatentGradient, LatentSpace, PriorShift, ridge_direction, target_responses,
)
from stimopt_plugins.vislens.vae import ConvVAE, PriorSpec, encode_means, landscape_report, save_landscape, train_vae


def lite0_features():
    model, mean, std = load_model("efficientnet_lite0")
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    @torch.no_grad()
    def feats(x):
        x = F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False)
        return model.forward_head(model.forward_features((x - m) / s), pre_logits=True)

    return feats


def fit(prior, x, r, args, tmp, refs):
    spec = PriorSpec(prior=prior, latent_dim=192, prior_dims=args.prior_dims, mu=1.0, lam=1.0)
    spec.fit_normalization(r)
    model = ConvVAE(32, 192)
    hist = train_vae(model, x, r, spec, epochs=args.epochs, lr=args.lr, w_kld=args.w_kld, batch_size=128, seed=0)
    path = Path(tmp) / f"{prior}.pt"
    save_landscape(path, model, spec, references={
        "images": (refs * 255).round().to(torch.uint8), "codes": encode_means(model, refs), "responses": torch.zeros(len(refs)),
        "embeddings": None})
    return path, hist, landscape_report(model, x, r, spec)


def edited(gen, opt, direction, n, asks=1):
    """Codes of the last of ``asks`` asks of an optimizer run through the engine on gen's space for
    ``direction`` (a white-box optimizer's gradient passes are evaluations too: the budget covers them)."""
    from stimopt.engine import Run
    from stimopt.store import RunStore

    budget = asks * (getattr(opt, "steps_per_ask", 0) + 1) * n
    opt.setup(gen.space, seed=0, budget=budget, batch_size=n)
    with tempfile.TemporaryDirectory() as d:
        store = RunStore(Path(d) / "e.sqlite", synchronous="NORMAL")
        Run(target=edited.target, generator=gen, optimizer=opt, objective=Objective(direction), store=store,
            budget=budget, batch_size=n, run_dir=Path(d)).run()
        codes = store.codes()[-n:]
        store.close()
    return codes


def measure(gen, codes, x_in, r_in, target, feats):
    """(mean delta r, cosine to the input, mean sign of delta r, cosine to the unedited VAE reconstruction)."""
    with torch.no_grad():
        out = gen.generate(codes)
        recon = gen.generate(gen.space.landscape.reference_codes)
        r_out = target.evaluate(out).numpy()
        r_rec = target.evaluate(recon).numpy()
        f_out = feats(out)
        cos = F.cosine_similarity(f_out, feats(x_in), dim=1).numpy()
        cos_rec = F.cosine_similarity(f_out, feats(recon), dim=1).numpy()
    measure.last_dr_recon = float((r_out - r_rec).mean())
    return float((r_out - r_in).mean()), float(cos.mean()), float((np.sign(r_out - r_in)).mean()), float(cos_rec.mean())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=1500)
    ap.add_argument("--n-test", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--w-kld", type=float, default=0.1)
    ap.add_argument("--prior-dims", type=int, default=32)
    ap.add_argument("--steps", type=int, default=100, help="Adam steps of latent_gradient (paper: 10,000)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    torch.manual_seed(0)
    target = CNNUnit("efficientnet_lite0", layer="blocks.3", unit=10, input_size=128, device="cpu")
    edited.target = target
    feats = lite0_features()
    crops = natural_crops(args.n_train + args.n_test, 128, seed=0)
    small = F.interpolate(crops, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    x_in = F.interpolate(small, size=(128, 128), mode="bilinear", align_corners=False)  # what the VAE can see
    r_all = target_responses(target, x_in)
    log("responses done")
    sd = float(r_all[: args.n_train].std())
    tr, te = slice(0, args.n_train), slice(args.n_train, None)
    with tempfile.TemporaryDirectory() as tmp:
        p_struct, h_s, rep_s = fit("activation", small[tr], r_all[tr], args, tmp, small[te])
        log("structured VAE fit")
        p_std, h_n, rep_n = fit("standard", small[tr], r_all[tr], args, tmp, small[te])
        log("standard VAE fit")
        g_struct = ImageVAEGenerator(str(p_struct), size=128, device="cpu")
        g_std = ImageVAEGenerator(str(p_std), size=128, device="cpu")
        n, xt, rt = args.n_test, x_in[te], r_all[te]
        asks = max(1, args.steps // 10)
        rows = []
        for direction in ("max", "min"):
            methods = {
                "structured landscape latent modification": (g_struct, PriorShift(alphas=[1.0]), 1),
                "structured landscape gradient descent": (g_struct, LatentGradient(kld="activation", steps_per_ask=10), asks),
                "standard VAE gradient descent": (g_std, LatentGradient(kld="standard", steps_per_ask=10), asks),
            }
            for name, (gen, opt, k) in methods.items():
                dr, cos, frac, cos_rec = measure(gen, edited(gen, opt, direction, n, k), xt, rt, target, feats)
                rows.append((direction, name, cos, cos_rec, dr, dr / sd, frac, measure.last_dr_recon / sd))
                log(f"{direction} {name}")
        # Part 2: prior_shift vs BrainACTIV (analogue in the standard VAE latent).
        mu_std = g_std.space.landscape.reference_codes
        train_codes = encode_means(g_std.vae, small[tr])
        ba = ridge_direction(train_codes, r_all[tr], alpha=1.0)
        land = Landscape(code="clip", prior="standard", reference_codes=mu_std, brainactiv_w=ba["w"].numpy())
        ba_space = LatentSpace(dim=g_std.space.dim, landscape=land)
        rows2 = []
        for direction in ("max", "min"):
            for step in (0.5, 1.0):
                ps = PriorShift(alphas=[step])
                dr_ps, cos_ps, frac_ps, _ = measure(g_struct, edited(g_struct, ps, direction, n), xt, rt, target, feats)
                rec_ps = measure.last_dr_recon
                b = BrainActiv(steps=[step], direction=direction)
                b.setup(ba_space, seed=0, budget=10**6, batch_size=n)
                dr_b, cos_b, frac_b, _ = measure(g_std, b.ask(n), xt, rt, target, feats)
                rows2.append((direction, step, dr_ps / sd, rec_ps / sd, cos_ps, dr_b / sd, measure.last_dr_recon / sd, cos_b))
    print(f"# Vis-Lens Table 3 (shape) on {args.n_train} natural crops, {args.n_test} held-out; target Lite0 blocks.3[10]@centre")
    print(f"# VAEs: conv 32 px, 192-d, {args.epochs} epochs, lr {args.lr}, w_kld {args.w_kld}, prior dims {args.prior_dims}; "
          f"latent_gradient {asks * 10} Adam steps; response SD over crops = {sd:.3f}")
    print(f"# structured VAE: train recon MSE {rep_s['recon_mse']:.4f}, separation AUC {rep_s['separation_auc']:.3f}; "
          f"standard VAE: recon MSE {rep_n['recon_mse']:.4f}, separation AUC {rep_n['separation_auc']:.3f} (probe AUC {rep_n['probe_auc']:.3f})")
    print("| direction | method | cosine to input (Lite0) | cosine to VAE reconstruction | mean delta r | delta r / SD | right-way* | delta r vs reconstruction / SD |")
    print("|---|---|---|---|---|---|---|---|")
    for d, name, cos, cos_rec, dr, drs, frac, drr in rows:
        print(f"| {'positive' if d == 'max' else 'negative'} | {name} | {cos:.3f} | {cos_rec:.3f} | {dr:+.3f} | {drs:+.3f} | {frac if d == 'max' else -frac:+.2f} | {drr:+.3f} |")
    print("*mean sign of the change, signed so that +1 = every image moved in the asked direction")
    print()
    print("| direction | step / alpha | prior_shift delta r / SD (vs input) | prior_shift (vs its VAE reconstruction) | prior_shift cos | BrainACTIV-analogue delta r / SD (vs input) | BrainACTIV-analogue (vs reconstruction) | BrainACTIV cos |")
    print("|---|---|---|---|---|---|---|---|")
    for d, s, a, ar, ca, b, br, cb in rows2:
        print(f"| {'increase' if d == 'max' else 'decrease'} | {s} | {a:+.3f} | {ar:+.3f} | {ca:.3f} | {b:+.3f} | {br:+.3f} | {cb:.3f} |")
    print(f"\n# wall {time.perf_counter() - t0:.0f} s (2 shared CPU cores, under contention). SD1.5 images/s: not measured (no GPU lent).")


if __name__ == "__main__":
    main()
