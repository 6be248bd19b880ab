"""``stimopt-fit model=vislens_vae``: images -> target responses (+ CLIP embeddings) -> a VAE with
the activation (or standard) prior, plus the BrainACTIV ridge direction for CLIP-space fits."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import stimopt
from stimopt.device import resolve_device
from stimopt.errors import StimoptError
from stimopt_plugins.vislens.landscape import CHECKPOINT_NAME
from stimopt_plugins.vislens.vae import ConvVAE, LinearVAE, PriorSpec, encode_means, landscape_report, save_landscape, train_landscape


def load_images(source: str, n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, Path | None]:
    """(images [n,3,size,size] in [0,1], folder to cache beside or None).

    ``natural``: offline photo crops; a built bank (a folder with manifest.json, from
    ``stimopt-bank``): n images drawn without replacement (seeded), cached beside the bank;
    otherwise a bank source (image folder, zip/tar shards, ``demo``) read with stimopt.bank.sources.
    """
    if source == "natural":
        from stimopt.natural import natural_crops

        return natural_crops(n, size, seed), None
    path = Path(str(source))
    if (path / "manifest.json").is_file():
        from stimopt.bank.bank import load_bank

        bank = load_bank(path)
        idx = np.sort(np.random.default_rng(seed).choice(bank.size, size=min(n, bank.size), replace=False))
        return bank.images(idx, size), path
    from stimopt.bank import sources

    out, left = [], n
    for shard in sources.plan_shards(str(source)):
        imgs = sources.read_items(shard, sources.shard_items(shard)[:left], size)[0]
        out.append(imgs)
        left -= len(imgs)
        if left <= 0:
            break
    if not out or sum(len(o) for o in out) == 0:
        raise StimoptError(f"no images could be read from {source}")
    return torch.cat(out)[:n], (path if path.is_dir() else path.parent if path.is_file() else None)


@torch.no_grad()
def target_responses(target, images: torch.Tensor, batch_size: int = 64, output: int | None = None) -> np.ndarray:
    """Responses of ``target`` to ``images`` read directly (benchmarks and tests: measuring, not a
    fit; a fit scores its images through the engine with :func:`score_through_engine`)."""
    r = torch.cat([torch.as_tensor(target.evaluate(images[i:i + batch_size])).float().cpu() for i in range(0, len(images), batch_size)])
    return _one_output(r.numpy(), output)


def _one_output(r: np.ndarray, output) -> np.ndarray:
    r = np.asarray(r, dtype=np.float64)
    if r.ndim == 2:
        r = r.mean(1) if output is None else r[:, int(output)]
    return r


class _ListedImages(stimopt.Generator):
    """The fit's images as a code space: code [i] is image i (so scoring them is a run)."""

    def __init__(self, images: torch.Tensor):
        self.images = images
        self._space = stimopt.ContinuousSpace(dim=1, low=0.0, high=float(len(images) - 1))

    @property
    def space(self):
        return self._space

    def generate(self, codes):
        return self.images[torch.as_tensor(np.asarray(codes)[:, 0].round().astype(np.int64))]

    def describe(self) -> str:
        return f"vislens fit images ({len(self.images)})"


class _InOrder(stimopt.Optimizer):
    """Asks image 0, 1, ..., N-1 once each."""

    def setup(self, space, *, seed, budget, batch_size):
        super().setup(space, seed=seed, budget=budget, batch_size=batch_size)
        self.pos = 0

    def ask(self, n):
        idx = np.arange(self.pos, self.pos + n, dtype=np.float32)[:, None]
        self.pos += n
        return idx

    def tell(self, codes, scores):
        pass

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]


def score_through_engine(target, images: torch.Tensor, run_dir: Path, batch_size: int = 64, output=None) -> np.ndarray:
    """Responses [N] of ``target`` to the fit's images, presented through the engine: one run
    (generator = the image list, code = index, in order) recorded in ``run_dir/evaluations.sqlite``
    like any other run, so every stimulus that reached the target is on record."""
    from stimopt.engine import Run
    from stimopt.objective import Objective
    from stimopt.store import RunStore

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    gen, opt, n = _ListedImages(images), _InOrder(), len(images)
    opt.setup(gen.space, seed=0, budget=n, batch_size=batch_size)
    store = RunStore(run_dir / "evaluations.sqlite")
    try:
        Run(target=target, generator=gen, optimizer=opt, objective=Objective("max"), store=store, budget=n,
            batch_size=batch_size, run_dir=run_dir).run()
        codes, resp = store.codes(), store.responses()
    finally:
        store.close()
    order = np.argsort(np.asarray(codes)[:, 0], kind="stable")
    if len(order) != n:
        raise StimoptError(f"scoring the fit's images stopped after {len(order)} of {n}; see {run_dir / 'evaluations.sqlite'}")
    return _one_output(np.asarray(resp)[order], output)


def ridge_direction(emb: torch.Tensor, r: np.ndarray, alpha=1.0) -> dict:
    """BrainACTIV: ridge (stimopt.ridge, scikit-learn's RidgeCV; unpenalized intercept) from
    L2-normalized CLIP embeddings to responses; w/||w|| is the direction. ``alpha``: a penalty, or
    a list of them to choose from by leave-one-out."""
    from stimopt.ridge import ridge_cv

    u = F.normalize(emb.double(), dim=1).numpy()
    r = np.asarray(r, dtype=np.float64)
    grid = [float(a) for a in alpha] if hasattr(alpha, "__iter__") and not isinstance(alpha, str) else [float(alpha)]
    w, b, chosen = ridge_cv(u, r, grid)
    w, b = w[:, 0], float(b[0])
    r2 = 1 - ((r - u @ w - b) ** 2).sum() / max(((r - r.mean()) ** 2).sum(), 1e-12)
    return {"w": torch.from_numpy(w / np.linalg.norm(w)).float(), "w_raw": torch.from_numpy(w).float(),
            "b": b, "alpha": float(chosen[0]), "r2_train": float(r2)}


def recorded_responses(m, source: str, size: int) -> tuple[torch.Tensor, np.ndarray, str]:
    """(images, responses [N], description) from a recorded response table (``model.responses``)
    and the images it belongs to (``model.images``: folder, .zip or .npy/.npz, in table order),
    read with stimopt.responses' loaders as stimopt-fit's data config reads them. ``model.output``
    picks a column (index or name; null = the mean of the columns); images never recorded there
    (NaN) are left out."""
    from stimopt import responses as R

    table, names = R.load_responses(m, "model")
    if source == "natural":
        raise StimoptError("model.responses needs model.images: the folder/.zip/.npz of the images the responses were recorded to")
    images = R.load_images(source, size)
    if len(images) != len(table):
        raise StimoptError(f"{len(images)} images but the response table {m.responses} has {len(table)} rows; they must match")
    out = m.get("output")
    if out is None:
        r, col = np.nanmean(table, axis=1), "mean of " + ", ".join(names)
    else:
        k = names.index(str(out)) if str(out) in names else int(out) if str(out).lstrip("-").isdigit() else None
        if k is None or not -len(names) <= k < len(names):
            raise StimoptError(f"model.output={out} is not a column of {m.responses} (columns: {', '.join(names)})")
        r, col = table[:, k], names[k]
    ok = np.isfinite(r)
    if ok.sum() < 4:
        raise StimoptError(f"{m.responses}: only {int(ok.sum())} images have a response in column '{col}'; a landscape needs more")
    idx = np.flatnonzero(ok)
    return images[idx], r[idx].astype(np.float64), f"recorded {m.responses} ({m.get('format', 'table')}: {col}; {len(idx)} images)"


def perceptual_loss(p, kind: str, device):
    """``model.perceptual`` -> a FeatureLoss (or None when ``model.perceptual.model`` is null)."""
    if not p or not p.get("model"):
        return None
    if kind != "image":
        raise StimoptError("model.perceptual is a reconstruction loss on pixels: it needs model.kind=image (set model.perceptual.model=null for a CLIP fit)")
    from stimopt_plugins.vislens.vae import FeatureLoss

    return FeatureLoss(str(p.model), str(p.get("layer", "blocks.2")), int(p.get("input_size", 64)),
                       str(p.get("weights", "pretrained"))).to(device)


def fit_vislens_vae(cfg, out_dir: Path) -> dict:
    """Fit a Vis-Lens landscape: images -> target responses (+ CLIP embeddings) -> VAE with the
    activation (or standard) prior. Writes ``vislens_vae.pt`` (model, prior, references,
    BrainACTIV direction) and returns the training report."""
    from omegaconf import OmegaConf

    from stimopt.experiment import build, seed_everything

    m = cfg.model
    out_dir = Path(out_dir)
    seed = int(cfg.get("seed", 0))
    seed_everything(seed)
    device = resolve_device(cfg.get("device", "auto"))
    kind = str(m.kind)
    if kind not in ("clip", "image"):
        raise StimoptError(f"model.kind must be clip (CLIP-space linear VAE) or image (conv VAE on pixels), got '{kind}'")
    source = m.get("images") or (cfg.get("data") or {}).get("images") or "natural"
    n = int(m.n_images)
    size = int(m.image_size) if kind == "clip" else max(int(m.image_size), int(m.get("target_size", 128)))
    target = None
    if m.get("responses"):
        images, r, described = recorded_responses(m, str(source), size)
        cache_dir = None  # CLIP embeddings are cached in the fit's out dir, not beside the recorded data
    else:
        images, cache_dir = load_images(str(source), n, size, seed)
        target = build("target", m.target, device=str(cfg.get("device", "auto")))
        r = score_through_engine(target, images, out_dir / "scoring", output=m.get("output"))
        described = target.describe()
        if not np.isfinite(r).all():
            raise StimoptError(f"the target returned NaN/inf for {int((~np.isfinite(r)).sum())} images; check the target config")
    if kind == "clip":
        from stimopt_plugins.vislens.clip import ClipEmbedder, cached_embeddings

        emb = ClipEmbedder(str(m.clip.model), str(m.clip.pretrained), device=device, batch_size=int(m.clip.batch_size))
        x = cached_embeddings(emb, images, cache_dir or out_dir, f"{source}".replace("/", "_")[-40:])
        model = LinearVAE(x.shape[1], int(m.latent_dim))
    else:
        x = F.interpolate(images, size=(int(m.image_size),) * 2, mode="bilinear", antialias=True, align_corners=False)
        model = ConvVAE(int(m.image_size), int(m.latent_dim))
    if m.get("init"):  # start from a fitted VAE (e.g. a long standard-prior fit shared by every unit)
        from stimopt_plugins.vislens.vae import load_landscape

        init = load_landscape(str(m.init))
        if init["arch"] != model.arch():
            raise StimoptError(f"model.init={m.init} is a {init['arch']} VAE but this fit builds {model.arch()}; match model.kind, latent_dim and image_size")
        model.load_state_dict(init["model"].state_dict())
    perceptual = perceptual_loss(m.get("perceptual"), kind, device)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(float(m.val_fraction) * len(x))))
    val, train = perm[:n_val], perm[n_val:]
    spec = PriorSpec(prior=str(m.prior), latent_dim=int(m.latent_dim), mu=float(m.mu), lam=float(m.lam), eps=float(m.eps),
                     sigma_min=float(m.sigma_min), sigma_max=float(m.sigma_max), prior_dims=m.get("prior_dims"), center=str(m.center))
    spec.fit_normalization(r[train.numpy()])
    rounds = int(m.get("decoded_rounds", 0) or 0) if kind == "image" and target is not None else 0

    def score_decoded(recon, _k=[0]):  # noqa: B006 (a round counter)
        _k[0] += 1
        up = F.interpolate(recon.cpu(), size=(size, size), mode="bilinear", align_corners=False) if recon.shape[-1] != size else recon.cpu()
        return score_through_engine(target, up.clamp(0, 1), out_dir / f"scoring_decoded{_k[0]}", output=m.get("output"))

    history, r_prior = train_landscape(
        model, x[train], r[train.numpy()], spec, decoded_rounds=rounds, score_decoded=score_decoded,
        epochs=int(m.epochs), batch_size=int(m.batch_size), lr=float(m.lr),
        step_size=int(m.step_size), gamma=float(m.gamma), grad_clip=float(m.grad_clip), w_recon=float(m.w_recon),
        w_kld=float(m.w_kld), seed=seed, device=device, perceptual=perceptual,
        w_perceptual=float(m.perceptual.weight) if perceptual is not None else 0.0,
    )
    contrast = m.get("contrast") or {}
    if float(contrast.get("weight", 0) or 0) > 0:  # stimopt's decoder-side term (not the paper's; off by default)
        if kind != "image" or target is None:
            raise StimoptError("model.contrast needs model.kind=image and a target to score decoded images (a recorded response table has none): set model.contrast.weight=0")
        from stimopt_plugins.vislens.contrast import train_contrast

        history += [dict(h, epoch=len(history) + i, contrast_phase=True) for i, h in enumerate(train_contrast(
            model, x[train].to(device), r_prior, spec, target, out_dir / "contrast", weight=float(contrast.weight),
            epochs=int(contrast.get("epochs", 3)), items_per_epoch=contrast.get("items"), size=size, batch_size=int(m.batch_size),
            lr=float(m.lr), w_recon=float(m.w_recon), w_kld=float(m.w_kld), grad_clip=float(m.grad_clip), seed=seed,
            perceptual=perceptual, w_perceptual=float(m.perceptual.weight) if perceptual is not None else 0.0))]
    model.cpu()
    report = {
        "kind": kind, "prior": spec.prior, "latent_dim": spec.latent_dim, "n_train": int(len(train)), "n_val": int(n_val),
        "images": str(source), "target": described,
        "loss_first_epoch": history[0]["loss"] if history else None, "loss_last_epoch": history[-1]["loss"] if history else None,
        "decoded_rounds": rounds, "init": str(m.init) if m.get("init") else None,
        "contrast": (f"{float(contrast.weight):g} x {int(contrast.get('epochs', 3))} epochs" if float(contrast.get("weight", 0) or 0) > 0 else None),
        "perceptual": None if perceptual is None else f"{perceptual.describe()} x {float(m.perceptual.weight):g}",
        "train": landscape_report(model, x[train], r[train.numpy()], spec),
        "val": landscape_report(model, x[val], r[val.numpy()], spec),
    }
    if rounds:  # the prior followed the decoded images' responses: how well they track the inputs'
        report["train_prior_responses"] = landscape_report(model, x[train], r_prior, spec)
        report["decoded_response_corr_train"] = float(np.corrcoef(r_prior, r[train.numpy()])[0, 1])
    n_ref = min(int(m.n_references), n_val)
    ref = val[:n_ref]
    ref_size = min(size, int(m.get("reference_size", 256)))
    ref_images = F.interpolate(images[ref], size=(ref_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
    references = {"images": (ref_images.clamp(0, 1) * 255).round().to(torch.uint8), "codes": encode_means(model, x[ref]),
                  "responses": torch.from_numpy(r[ref.numpy()]).float(), "embeddings": x[ref] if kind == "clip" else None}
    if kind == "clip":
        brainactiv = ridge_direction(x[train], r[train.numpy()], m.ridge_alpha) | {"space": "clip"}
        report["clip"] = f"{m.clip.model}/{m.clip.pretrained}"
    else:  # BrainACTIV's rule in the image VAE's own code space (a standard-prior fit is the baseline)
        brainactiv = ridge_direction(encode_means(model, x[train]), r[train.numpy()], m.ridge_alpha) | {"space": "latent"}
    report["brainactiv_r2_train"] = brainactiv["r2_train"]
    path = out_dir / CHECKPOINT_NAME
    save_landscape(path, model, spec, references=references, brainactiv=brainactiv, history=history,
                   config=OmegaConf.to_container(m, resolve=True), report=report)
    report["checkpoint"] = str(path)
    v = report["val"]
    report["summary"] = (f"vislens_vae ({kind}, {spec.prior} prior): val recon R^2 {v['recon_r2']:.3f}, "
                         f"separation AUC {v['separation_auc']:.3f}, probe AUC {v['probe_auc']:.3f}")
    if target is not None:
        target.close()
    return report
