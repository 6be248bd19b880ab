"""Vis-Lens landscapes: VAEs whose prior is shaped by a unit's (or a brain region's) activation.

The activation prior (paper eq. 2) for a training item with response ``r``::

    mu_prior    = mu_pos if r_n > 0 else mu_neg
    sigma_prior = lam / (|r_n| + eps), clipped to [sigma_min, sigma_max]

``r_n`` is the normalized response ``(r - center) / scale``: ``center`` is ``zero`` (the paper's
raw sign, right for z-scored fMRI betas) or ``median`` (default: half the items get each prior,
right for a CNN unit whose raw responses are mostly of one sign); ``scale`` is the responses'
standard deviation, so ``lam`` is in units of "one SD of response". Responses at or below the
centre (``r_n <= 0``) take the negative prior and are held by ``|r_n|`` exactly as positive ones
are: strongly negative responses sit tightly on ``mu_neg``, responses near the centre are barely
constrained (sigma -> ``sigma_max``). ``mu_pos = +mu``, ``mu_neg = -mu`` on the ``prior_dims``
first latent dimensions (a count, a fraction of ``latent_dim``, or null = all); the other
dimensions keep a standard N(0, I) prior and carry what the response does not explain (issue 19:
with the prior on every dim, the latent modification at alpha 1 sends every reference to one
prototype code, whose decoded response is unrelated to the asked direction).

The standard VAE (``prior='standard'``) is the baseline: N(0, I) everywhere.
Loss = ``w_recon * ||x - x_recon||^2 + w_kld * KLD(posterior || prior)`` (squared error summed
over features, KLD over latent dims, both averaged over items; CLIP embeddings are standardized
first, images are in [0, 1]). Defaults follow the paper: Adam lr 1e-4, StepLR(10, 0.9), grad clip 1.0, batch 128.
An image VAE may add ``w_perceptual * ||phi(x_recon) - phi(x)||^2`` (:class:`FeatureLoss`, a frozen
network's features of one layer) to the reconstruction term, so that its reconstructions keep
what a CNN unit reads (stimopt's addition, not the paper's; issue 19).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from stimopt.errors import StimoptError

PRIORS = ("activation", "standard")
CENTERS = ("median", "zero", "mean")


@dataclass
class PriorSpec:
    """Everything that defines the landscape's prior (saved in the checkpoint)."""

    prior: str = "activation"
    latent_dim: int = 1024
    mu: float = 1.0
    lam: float = 1.0
    eps: float = 1e-3
    sigma_min: float = 1e-2
    sigma_max: float = 1.0
    prior_dims: int | float | None = None
    center: str = "median"
    r_center: float = 0.0
    r_scale: float = 1.0

    def __post_init__(self):
        if self.prior not in PRIORS:
            raise StimoptError(f"prior must be one of {PRIORS}, got '{self.prior}'")
        if self.center not in CENTERS:
            raise StimoptError(f"center must be one of {CENTERS}, got '{self.center}'")
        pd = self.prior_dims
        if pd is not None and not isinstance(pd, bool) and isinstance(pd, float) and 0 < pd < 1:
            self.prior_dims = max(1, int(round(pd * self.latent_dim)))  # a fraction of the latent dims
        elif pd is not None and (isinstance(pd, bool) or float(pd) != int(pd) or not 0 < int(pd) <= self.latent_dim):
            raise StimoptError(f"prior_dims must be a fraction in (0, 1), a count in 1..latent_dim ({self.latent_dim}) or null (all), got {pd}")
        elif pd is not None:
            self.prior_dims = int(pd)

    @property
    def mask(self) -> torch.Tensor:
        """[latent_dim] 1.0 on the dimensions that carry the activation prior."""
        m = torch.zeros(self.latent_dim)
        m[: (self.prior_dims or self.latent_dim)] = 1.0
        return m if self.prior == "activation" else torch.zeros(self.latent_dim)

    @property
    def mu_pos(self) -> torch.Tensor:
        return self.mu * self.mask

    @property
    def mu_neg(self) -> torch.Tensor:
        return -self.mu * self.mask

    def fit_normalization(self, r: np.ndarray) -> None:
        r = np.asarray(r, dtype=np.float64)
        self.r_center = {"zero": 0.0, "median": float(np.median(r)), "mean": float(r.mean())}[self.center]
        self.r_scale = float(r.std()) or 1.0

    def normalize(self, r) -> torch.Tensor:
        return (torch.as_tensor(r, dtype=torch.float32) - self.r_center) / self.r_scale

    def params(self, r) -> tuple[torch.Tensor, torch.Tensor]:
        """Prior mean and sigma, each [B, latent_dim], for responses r [B]."""
        rn = self.normalize(r)
        mask = self.mask.to(rn.device)
        pos = (rn > 0).float()[:, None]
        mean = (pos - (1 - pos)) * self.mu * mask
        sigma = (self.lam / (rn.abs() + self.eps)).clamp(self.sigma_min, self.sigma_max)[:, None]
        sigma = sigma * mask + (1 - mask)  # unconstrained dims: N(0, 1)
        return mean, sigma

    def to_dict(self) -> dict:
        return asdict(self)


def kld_gaussian(mu, logvar, prior_mu, prior_sigma) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(prior_mu, prior_sigma^2)) summed over the last dim -> [B]."""
    var = logvar.exp()
    psig2 = prior_sigma**2
    return (torch.log(prior_sigma) - 0.5 * logvar + (var + (mu - prior_mu) ** 2) / (2 * psig2) - 0.5).sum(-1)


class LinearVAE(nn.Module):
    """The paper's CLIP-to-CLIP VAE: one linear layer to (mu, log sigma^2), one linear layer back."""

    kind = "clip"

    def __init__(self, in_dim: int, latent_dim: int = 1024):
        super().__init__()
        self.in_dim, self.latent_dim = int(in_dim), int(latent_dim)
        self.enc = nn.Linear(self.in_dim, 2 * self.latent_dim)
        self.dec = nn.Linear(self.latent_dim, self.in_dim)
        self.register_buffer("x_mean", torch.zeros(self.in_dim))
        self.register_buffer("x_std", torch.ones(()))

    def encode(self, x):
        h = self.enc((x - self.x_mean) / self.x_std)
        return h[..., : self.latent_dim], h[..., self.latent_dim:].clamp(-12, 8)

    def decode(self, z):
        return self.dec(z) * self.x_std + self.x_mean

    def arch(self) -> dict:
        return {"kind": self.kind, "in_dim": self.in_dim, "latent_dim": self.latent_dim}


class ConvVAE(nn.Module):
    """The paper's light bottleneck conv VAE (image -> 192-d latent -> image), any size divisible by 4."""

    kind = "image"

    def __init__(self, image_size: int = 32, latent_dim: int = 192):
        super().__init__()
        if image_size % 4:
            raise StimoptError(f"the image VAE needs image_size divisible by 4, got {image_size}")
        self.image_size, self.latent_dim = int(image_size), int(latent_dim)
        s = self.image_size // 4
        self.enc = nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.Flatten(),
        )
        self.fc_mu, self.fc_logvar = nn.Linear(64 * s * s, latent_dim), nn.Linear(64 * s * s, latent_dim)
        self.bn_mu, self.bn_logvar = nn.Linear(latent_dim, latent_dim), nn.Linear(latent_dim, latent_dim)
        self.fc_dec = nn.Linear(latent_dim, 64 * s * s)
        self.dec = nn.Sequential(
            nn.ReLU(), nn.Unflatten(1, (64, s, s)),
            nn.ConvTranspose2d(64, 32, 3, 2, 1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, 16, 3, 2, 1, output_padding=1), nn.ReLU(),
            nn.Conv2d(16, 3, 3, 1, 1), nn.Sigmoid(),
        )

    def encode(self, x):
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
        h = self.enc(x)
        return self.bn_mu(self.fc_mu(h)), self.bn_logvar(self.fc_logvar(h)).clamp(-12, 8)

    def decode(self, z):
        return self.dec(self.fc_dec(z))

    def arch(self) -> dict:
        return {"kind": self.kind, "image_size": self.image_size, "latent_dim": self.latent_dim}


def build_vae(arch: dict) -> nn.Module:
    if arch["kind"] == "clip":
        return LinearVAE(arch["in_dim"], arch["latent_dim"])
    if arch["kind"] == "image":
        return ConvVAE(arch["image_size"], arch["latent_dim"])
    raise StimoptError(f"unknown VAE kind '{arch['kind']}' (clip | image)")


class FeatureLoss(nn.Module):
    """A perceptual reconstruction term: squared distance between a frozen network's features of
    the reconstruction and of the input, summed over the features of ``layer`` (read with
    stimopt.models.LayerReader, images resized to ``input_size`` and normalized as the network
    expects), per item. ``model``: a torchvision/timm name (offline weights, stimopt.models) or
    an ``nn.Module``.

    Why (issue 19): the latent modification is read on *decoded* images, and with pixel MSE alone
    a small VAE's reconstructions lose the texture a CNN unit responds to (the response to a
    reconstruction correlated -0.47..+0.10 with the response to its input on Lite0 units), so no
    move in its latent can change that response in a chosen way. Matching early features keeps
    what the later layers read.
    """

    def __init__(self, model="efficientnet_lite0", layer: str = "blocks.2", input_size: int = 64, weights: str = "pretrained"):
        super().__init__()
        from stimopt.models import IMAGENET_MEAN, IMAGENET_STD, LayerReader, load_model

        if isinstance(model, nn.Module):
            net, mean, std, name = model.eval(), IMAGENET_MEAN, IMAGENET_STD, type(model).__name__
        else:
            (net, mean, std), name = load_model(str(model), str(weights)), str(model)
        for p in net.parameters():
            p.requires_grad_(False)
        self.net, self.input_size, self.name, self.layer = net, int(input_size), name, str(layer)
        self.reader = LayerReader(net, self.layer, name)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", align_corners=False)
        return self.reader((x - self.mean.to(x)) / self.std.to(x)).flatten(1)

    def forward(self, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            fx = self.features(x)
        return ((self.features(recon) - fx) ** 2).sum(1)

    def describe(self) -> str:
        return f"{self.name}:{self.layer}@{self.input_size}px"


def vae_loss(model, x, r, spec: PriorSpec, w_recon: float, w_kld: float, sample: bool = True,
             perceptual: FeatureLoss | None = None, w_perceptual: float = 0.0):
    """(total, mse, kld) for a batch; the KLD is to the activation prior (or N(0, I)). With
    ``perceptual`` (image VAEs), ``w_perceptual`` x its feature distance joins the reconstruction term."""
    mu, logvar = model.encode(x)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
    recon = model.decode(z)
    target = x if model.kind == "clip" else F.interpolate(x, size=recon.shape[-2:], mode="bilinear", antialias=True, align_corners=False) if x.shape[-1] != recon.shape[-1] else x
    mse = F.mse_loss(recon, target, reduction="none").flatten(1).sum(1)  # ||x - x_recon||^2 per item (paper)
    feat = torch.zeros_like(mse)
    if perceptual is not None and w_perceptual:
        if model.kind == "clip":
            raise StimoptError("a perceptual reconstruction loss needs an image VAE (model.kind=image); the CLIP VAE reconstructs embeddings")
        feat = perceptual(recon, target)
    if spec.prior == "standard":
        pm, ps = torch.zeros_like(mu), torch.ones_like(mu)
    else:
        pm, ps = spec.params(r.to(mu.device))
    kld = kld_gaussian(mu, logvar, pm.to(mu), ps.to(mu))
    return (w_recon * mse + float(w_perceptual) * feat + w_kld * kld).mean(), mse.mean(), kld.mean()


@torch.no_grad()
def encode_means(model, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([model.encode(x[i:i + batch_size])[0] for i in range(0, len(x), batch_size)])


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count half."""
    from scipy.stats import rankdata

    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@torch.no_grad()
def landscape_report(model, x: torch.Tensor, r: np.ndarray, spec: PriorSpec) -> dict:
    """Reconstruction error and how well latent means separate high from low responses.

    ``separation_auc``: AUC of the projection of the latent mean on the prior axis (mu_pos - mu_neg)
    between items above and at-or-below the response centre (0.5 = no separation; for a standard
    VAE, which has no prior axis, the same axis is read); ``probe_auc``: the same along the best
    in-sample linear read-out of r from the latent means (ridge), which a standard VAE can also
    have; ``spearman``: rank correlation of the prior-axis projection with r.
    """
    mu = encode_means(model, x)
    recon = torch.cat([model.decode(mu[i:i + 256]) for i in range(0, len(mu), 256)])
    target = x if model.kind == "clip" else F.interpolate(x, size=recon.shape[-2:], mode="bilinear", antialias=True, align_corners=False)
    mse = float(F.mse_loss(recon, target))
    var = float(target.var(dim=0).mean()) or 1.0
    rn = spec.normalize(r).numpy()
    axis = torch.zeros(spec.latent_dim)
    axis[: (spec.prior_dims or spec.latent_dim)] = 1.0
    proj = (mu @ axis).numpy()
    hi = rn > 0
    m = mu.double().numpy()
    m = m - m.mean(0)
    w = np.linalg.solve(m.T @ m + 1e-3 * len(m) * np.eye(m.shape[1]), m.T @ (rn - rn.mean()))
    probe = m @ w
    rank = lambda v: np.argsort(np.argsort(v)).astype(np.float64)  # noqa: E731
    spear = float(np.corrcoef(rank(proj), rank(rn))[0, 1]) if len(r) > 2 else float("nan")
    return {
        "recon_mse": mse,
        "recon_r2": 1.0 - mse / var,
        "separation_auc": auc(proj[hi], proj[~hi]),
        "probe_auc": auc(probe[hi], probe[~hi]),
        "spearman": spear,
        "latent_mean_high": float(proj[hi].mean() / axis.sum()) if hi.any() else None,
        "latent_mean_low": float(proj[~hi].mean() / axis.sum()) if (~hi).any() else None,
        "n": int(len(r)),
        "n_high": int(hi.sum()),
    }


def train_vae(
    model, x: torch.Tensor, r: np.ndarray, spec: PriorSpec, *, epochs: int = 150, batch_size: int = 128,
    lr: float = 1e-4, step_size: int = 10, gamma: float = 0.9, grad_clip: float = 1.0,
    w_recon: float = 1.0, w_kld: float = 1.0, seed: int = 0, device="cpu", log=None,
    perceptual: FeatureLoss | None = None, w_perceptual: float = 0.0,
) -> list[dict]:
    """Algorithm 1: Adam + StepLR + grad clipping on (MSE, KLD to the activation prior). Returns per-epoch losses."""
    torch.manual_seed(seed)
    if isinstance(model, LinearVAE):
        model.x_mean.copy_(x.mean(0))
        model.x_std.copy_(x.std(0).mean().clamp_min(1e-8))
    model.to(device).train()
    if perceptual is not None:
        perceptual.to(device)
    r_t = torch.as_tensor(np.asarray(r), dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(int(epochs)):
        perm = torch.randperm(len(x), generator=gen)
        tot = mse_s = kld_s = 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            loss, mse, kld = vae_loss(model, x[idx].to(device), r_t[idx], spec, w_recon, w_kld,
                                      perceptual=perceptual, w_perceptual=w_perceptual)
            if not torch.isfinite(loss):
                raise StimoptError(f"VAE training diverged (loss {loss.item()}) in epoch {epoch}; lower model.lr or model.w_kld")
            opt.zero_grad()
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            k = len(idx)
            tot, mse_s, kld_s = tot + loss.item() * k, mse_s + mse.item() * k, kld_s + kld.item() * k
        sched.step()
        rec = {"epoch": epoch, "loss": tot / len(x), "mse": mse_s / len(x), "kld": kld_s / len(x)}
        history.append(rec)
        if log:
            log(rec)
    model.eval()
    return history


def train_landscape(model, x: torch.Tensor, r: np.ndarray, spec: PriorSpec, *, decoded_rounds: int = 0,
                    score_decoded=None, on_round=None, **train_kw) -> tuple[list[dict], np.ndarray]:
    """Algorithm 1, then ``decoded_rounds`` rounds in which the prior follows the responses to the
    VAE's own *decoded* reconstructions: ``score_decoded(images) -> [N]`` scores decode(encode(x))
    (through the engine, in a fit), the normalization is refit to those responses and training goes
    on for half the epochs. Returns (per-epoch history, the responses the final prior used).

    Why (issue 19): the latent modification is read on decoded images, but a small VAE does not
    render what drives a unit (the response to a reconstruction correlated 0.06-0.23 with the
    response to its input on Lite0 units), so a prior laid out by the inputs' responses orders the
    latent by something the decoder never shows. Laying it out by the decoded images' responses
    makes "toward mu_pos" mean "toward codes whose decoded images respond more".

    ``on_round(k, model, used)``, if given, is called after Algorithm 1 (k 0) and after each
    decoded round k with the responses that round's prior used (benchmarks read the landscape
    round by round with it).
    """
    history = train_vae(model, x, r, spec, **train_kw)
    used = np.asarray(r, dtype=np.float64)
    if on_round is not None:
        on_round(0, model, used)
    for k in range(int(decoded_rounds)):
        if score_decoded is None:
            raise StimoptError("decoded_rounds > 0 needs a target to score the decoded images (a recorded response table has none: set model.decoded_rounds=0)")
        with torch.no_grad():
            mu = encode_means(model.eval(), x)
            recon = torch.cat([model.decode(mu[i:i + 256]) for i in range(0, len(mu), 256)])
        used = np.asarray(score_decoded(recon), dtype=np.float64)
        spec.fit_normalization(used)
        kw = dict(train_kw, epochs=max(1, int(train_kw.get("epochs", 150)) // 2), seed=int(train_kw.get("seed", 0)) + 1 + k)
        history += [dict(h, epoch=len(history) + i, decoded_round=k + 1) for i, h in enumerate(train_vae(model, x, used, spec, **kw))]
        if on_round is not None:
            on_round(k + 1, model, used)
    return history, used


def save_landscape(path, model, spec: PriorSpec, **extra) -> None:
    from stimopt.state import torch_plain

    torch.save(torch_plain({"arch": model.arch(), "state": model.state_dict(), "prior": spec.to_dict(), **extra}), path)


def load_landscape(path) -> dict:
    """The checkpoint dict with ``model`` (eval mode) and ``spec`` (PriorSpec) filled in."""
    import os

    if not os.path.isfile(str(path)):
        raise StimoptError(f"Vis-Lens VAE checkpoint {path} does not exist; fit one with `stimopt-fit model=vislens_vae` (its out dir holds vislens_vae.pt)")
    from stimopt.state import load_torch

    ck = load_torch(path, "Vis-Lens VAE checkpoint", "fit one with `stimopt-fit model=vislens_vae`")
    if not isinstance(ck, dict) or "arch" not in ck:
        raise StimoptError(f"{path} is not a Vis-Lens VAE checkpoint (no 'arch'); fit one with `stimopt-fit model=vislens_vae`")
    model = build_vae(ck["arch"])
    model.load_state_dict(ck["state"])
    ck["model"] = model.eval()
    ck["spec"] = PriorSpec(**ck["prior"])
    return ck


def point_kld(z: torch.Tensor, prior_mu: torch.Tensor, prior_sigma: float | torch.Tensor) -> torch.Tensor:
    """Algorithm 3's KLD of a point code z to N(prior_mu, prior_sigma^2) with the code's own
    sigma fixed equal to the prior's: only the mean term sum((z - mu)^2) / (2 sigma^2) remains."""
    return ((z - prior_mu) ** 2 / (2 * torch.as_tensor(prior_sigma, dtype=z.dtype) ** 2)).sum(-1)


__all__ = [
    "PriorSpec", "FeatureLoss", "kld_gaussian", "LinearVAE", "ConvVAE", "build_vae", "vae_loss", "train_vae", "train_landscape",
    "landscape_report", "save_landscape", "load_landscape", "point_kld", "encode_means", "auc",
]
