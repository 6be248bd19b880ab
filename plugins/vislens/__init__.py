"""Vis-Lens: activation-structured VAE landscapes and what searches them.

Registered here (entry point ``vislens``):

- generators ``vislens`` (latent z -> VAE decoder -> CLIP embedding -> Stable Diffusion 1.5
  img2img + IP-Adapter; ``code=clip`` takes CLIP embeddings directly, for BrainACTIV) and
  ``image_vae`` (z -> conv VAE decoder -> pixels; differentiable).
- optimizers ``prior_shift`` (z' = z + alpha * (mu_dir - z) over a schedule of alphas and
  reference images), ``latent_gradient`` (Algorithm 3: Adam on z, -score + w_kld * KLD; plain
  white-box gradient ascent on any generator with ``generate_torch``), ``brainactiv`` (shift a
  reference CLIP embedding along the ridge direction +/- w/||w||).
- ``fit_vislens_vae(cfg, out_dir)``: the ``stimopt-fit model=vislens_vae`` function.

The VAE generators' code space is a :class:`LatentSpace` (a ContinuousSpace, so cmaes, random,
... search it too) that carries the landscape (prior means, reference codes, BrainACTIV
direction): landscape-aware optimizers read it from the space, as bank-aware ones read a bank.

Direction: prior_shift and brainactiv must know before their first ask whether to move toward
mu_pos or mu_neg. They are ``white_box`` optimizers only in that they receive the run's
objective through ``attach`` and read its sign (``direction=max`` -> mu_pos / +w). Their
``direction`` option (``auto`` by default) can force ``max``/``min`` (e.g. outside the engine).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import stimopt
from stimopt.errors import StimoptError
from stimopt.device import resolve_device
from stimopt_plugins.vislens.vae import (
    ConvVAE, LinearVAE, PriorSpec, encode_means, landscape_report, load_landscape, point_kld, save_landscape, train_vae,
)

CHECKPOINT_NAME = "vislens_vae.pt"


# ---------------------------------------------------------------------------------------------
# The landscape, carried by the code space
# ---------------------------------------------------------------------------------------------
@dataclass
class Landscape:
    """What a landscape-aware optimizer needs, as numpy arrays over the generator's codes.

    ``code``: ``latent`` (VAE latents) or ``clip`` (CLIP embeddings); ``prior``: activation |
    standard; ``mu_pos``/``mu_neg``/``mask`` [dim] (latent codes only); ``reference_codes``
    [R, dim]: the codes of the reference images; ``brainactiv_w`` [D]: unit ridge direction on
    L2-normalized CLIP embeddings (clip codes only).
    """

    code: str
    prior: str
    reference_codes: np.ndarray
    mu_pos: np.ndarray | None = None
    mu_neg: np.ndarray | None = None
    mask: np.ndarray | None = None
    brainactiv_w: np.ndarray | None = None
    reference_responses: np.ndarray | None = None


@dataclass(frozen=True)
class LatentSpace(stimopt.ContinuousSpace):
    """A VAE's latent (or CLIP) space: continuous, plus the landscape it was fit with."""

    landscape: Any = field(default=None, compare=False, repr=False)


def _references(ck: dict) -> dict:
    refs = ck.get("references")
    if not refs or len(refs["images"]) == 0:
        raise StimoptError("the Vis-Lens checkpoint holds no reference images; refit with model.n_references > 0")
    return refs


def _landscape(ck: dict, code: str) -> Landscape:
    spec: PriorSpec = ck["spec"]
    refs = _references(ck)
    if code == "latent":
        return Landscape(
            code="latent", prior=spec.prior, reference_codes=refs["codes"].numpy().astype(np.float32),
            mu_pos=spec.mu_pos.numpy(), mu_neg=spec.mu_neg.numpy(), mask=spec.mask.numpy(),
            reference_responses=refs["responses"].numpy(),
        )
    return Landscape(
        code="clip", prior=spec.prior, reference_codes=refs["embeddings"].numpy().astype(np.float32),
        brainactiv_w=None if ck.get("brainactiv") is None else ck["brainactiv"]["w"].numpy(),
        reference_responses=refs["responses"].numpy(),
    )


# ---------------------------------------------------------------------------------------------
# Generators
# ---------------------------------------------------------------------------------------------
class ImageVAEGenerator(stimopt.Generator):
    """z -> the conv VAE's decoder -> pixels, upsampled to ``size``. Differentiable (``generate_torch``)."""

    space_type = LatentSpace

    def __init__(self, checkpoint: str = "fits/vislens_image/" + CHECKPOINT_NAME, size: int = 128, device: str = "auto"):
        ck = load_landscape(checkpoint)
        if ck["arch"]["kind"] != "image":
            raise StimoptError(f"{checkpoint} is a CLIP-space VAE; generator=image_vae needs one fit with model.kind=image (use generator=vislens for this one)")
        self.device = resolve_device(device)
        self.vae = ck["model"].to(self.device)
        for p in self.vae.parameters():
            p.requires_grad_(False)
        self.size, self.checkpoint = int(size), str(checkpoint)
        self.reference_images = _references(ck)["images"]
        self._space = LatentSpace(dim=self.vae.latent_dim, init_mean=0.0, init_std=1.0, landscape=_landscape(ck, "latent"))

    @property
    def space(self):
        return self._space

    def generate_torch(self, z: torch.Tensor) -> torch.Tensor:
        img = self.vae.decode(z.to(self.device, torch.float32))
        if img.shape[-1] != self.size:
            img = F.interpolate(img, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return img.clamp(0, 1)

    def generate(self, codes):
        z = torch.as_tensor(np.asarray(codes), dtype=torch.float32)
        if z.ndim != 2 or z.shape[1] != self._space.dim:
            raise StimoptError(f"image_vae takes codes of shape [B, {self._space.dim}], got {list(z.shape)}")
        return self.generate_torch(z)

    def describe(self) -> str:
        return f"image_vae({self.checkpoint}, {self._space.landscape.prior} prior, {self._space.dim}-d)"


class VisLensGenerator(stimopt.Generator):
    """z -> VAE decoder -> CLIP embedding -> SD1.5 img2img + IP-Adapter (DDIM), from a reference image.

    Each code is synthesized from the reference image whose code is nearest (L2), so an image is
    a pure function of its code; with the default SDEdit strength 1.0 the reference does not
    matter at all (pure noise start, fixed seed). ``code=clip`` skips the VAE: codes are CLIP
    embeddings (what BrainACTIV edits).
    """

    space_type = LatentSpace

    def __init__(
        self, checkpoint: str = "fits/vislens/" + CHECKPOINT_NAME, code: str = "latent",
        sd_model: str = "models/stable-diffusion-v1-5", ip_adapter: str = "models/IP-Adapter",
        ip_adapter_weight: str = "models/ip-adapter_sd15.bin", strength: float = 1.0, steps: int = 50,
        seed: int = 42, guidance_scale: float = 7.5, ip_scale: float = 1.0, size: int = 512,
        dtype: str = "auto", device: str = "auto",
    ):
        from stimopt_plugins.vislens.diffusion import ip_embed_dim, load_pipeline

        if code not in ("latent", "clip"):
            raise StimoptError(f"generator.code must be 'latent' (VAE latents) or 'clip' (CLIP embeddings), got '{code}'")
        if not 0.0 < float(strength) <= 1.0:
            raise StimoptError(f"generator.strength (SDEdit gamma) must be in (0, 1], got {strength}")
        ck = load_landscape(checkpoint)
        if ck["arch"]["kind"] != "clip":
            raise StimoptError(f"{checkpoint} is an image VAE; generator=vislens needs one fit with model.kind=clip (use generator=image_vae for this one)")
        self.device = resolve_device(device)
        self.vae = ck["model"].to(self.device)
        self.code, self.checkpoint = code, str(checkpoint)
        self.options = dict(strength=float(strength), steps=int(steps), seed=int(seed), guidance_scale=float(guidance_scale),
                            ip_scale=float(ip_scale), size=int(size))
        self.pipe = load_pipeline(sd_model, ip_adapter, ip_adapter_weight, device=self.device, dtype=dtype)
        if ip_embed_dim(self.pipe) != self.vae.in_dim:
            raise StimoptError(f"the IP-Adapter at {ip_adapter} takes {ip_embed_dim(self.pipe)}-d CLIP embeddings but {checkpoint} was fit on {self.vae.in_dim}-d ones; fit the VAE with the CLIP model the adapter was trained with (ViT-H-14 for ip-adapter_sd15)")
        self.landscape = _landscape(ck, code)
        self.reference_images = _references(ck)["images"]
        dim = self.vae.latent_dim if code == "latent" else self.vae.in_dim
        scale = 1.0 if code == "latent" else float(np.linalg.norm(self.landscape.reference_codes, axis=1).mean() / np.sqrt(dim))
        self._space = LatentSpace(dim=dim, init_mean=0.0, init_std=scale, landscape=self.landscape)
        self._ref_codes = torch.from_numpy(self.landscape.reference_codes)

    @property
    def space(self):
        return self._space

    def embeddings(self, codes: torch.Tensor) -> torch.Tensor:
        if self.code == "clip":
            return codes
        with torch.no_grad():
            return self.vae.decode(codes.to(self.device)).float().cpu()

    def generate(self, codes):
        from stimopt_plugins.vislens.diffusion import synthesize

        z = torch.as_tensor(np.asarray(codes), dtype=torch.float32)
        if z.ndim != 2 or z.shape[1] != self._space.dim:
            raise StimoptError(f"vislens takes codes of shape [B, {self._space.dim}], got {list(z.shape)}")
        nearest = torch.cdist(z, self._ref_codes).argmin(1)
        refs = self.reference_images[nearest].float() / 255.0
        return synthesize(self.pipe, self.embeddings(z), refs, **self.options)

    def describe(self) -> str:
        o = self.options
        return f"vislens({self.code}, SD1.5+IP-Adapter, DDIM {o['steps']}, strength {o['strength']}, seed {o['seed']})"


# ---------------------------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------------------------
def _direction_sign(direction: str) -> float | None:
    if direction in ("auto", None):
        return None
    if direction not in ("max", "min"):
        raise StimoptError(f"optimizer.direction must be auto, max or min, got '{direction}'")
    return 1.0 if direction == "max" else -1.0


class _ScheduleOptimizer(stimopt.Optimizer):
    """Shared by prior_shift and brainactiv: a fixed schedule of (step, reference) edits.

    The schedule is step-major: every reference at the first step, then every reference at the
    next, ...; past its end it starts again (a deterministic optimizer: repeats are repeats).
    """

    accepts = (LatentSpace,)
    white_box = True  # only to read the run's direction from the objective (see the module doc)
    step_name = "alpha"

    def __init__(self, direction: str = "auto"):
        self.sign = _direction_sign(direction)
        self._forced = self.sign is not None

    def attach(self, generator, target, objective) -> None:
        if not self._forced:
            self.sign = float(objective.sign)

    def _landscape(self, space) -> Landscape:
        land = getattr(space, "landscape", None)
        if land is None:
            raise StimoptError(f"optimizer {type(self).__name__} needs a Vis-Lens generator (vislens or image_vae): its code space carries the landscape")
        return land

    def setup(self, space, *, seed, budget, batch_size):
        super().setup(space, seed=seed, budget=budget, batch_size=batch_size)
        self.land = self._landscape(space)
        self.n_refs = len(self.land.reference_codes) if self.n_references is None else min(int(self.n_references), len(self.land.reference_codes))
        self.pos = 0
        k = len(self.steps)
        self.sums, self.counts = np.zeros(k), np.zeros(k)
        self.best_score, self.best = -np.inf, None

    def _schedule(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        idx = (self.pos + np.arange(n)) % (len(self.steps) * self.n_refs)
        self.pos += n
        self._last = idx // self.n_refs
        return np.asarray(self.steps, dtype=np.float32)[idx // self.n_refs], idx % self.n_refs

    def ask(self, n):
        if self.sign is None:
            raise StimoptError(f"{type(self).__name__} does not know the direction: run it through the engine (which attaches the objective) or set optimizer.direction=max|min")
        step, ref = self._schedule(n)
        return self._edit(step, self.land.reference_codes[ref]).astype(np.float32)

    def ask_info(self):
        return [{self.step_name: float(self.steps[i])} for i in self._last]

    def tell(self, codes, scores):
        scores = np.asarray(scores, dtype=np.float64)
        ok = np.isfinite(scores)
        np.add.at(self.sums, self._last[ok], scores[ok])
        np.add.at(self.counts, self._last[ok], 1)
        if ok.any() and scores[ok].max() > self.best_score:
            i = int(np.flatnonzero(ok)[np.argmax(scores[ok])])
            self.best_score, self.best = float(scores[i]), {self.step_name: float(self.steps[self._last[i]])}

    def report(self):
        sign = self.sign or 1.0
        mean = {f"{s:g}": (sign * self.sums[i] / self.counts[i] if self.counts[i] else None) for i, s in enumerate(self.steps)}
        return {"direction": "max" if sign > 0 else "min", f"mean_response_by_{self.step_name}": mean, "best": self.best,
                "references": int(self.n_refs)}

    def state_dict(self):
        return {"pos": self.pos, "sums": self.sums.copy(), "counts": self.counts.copy(), "best_score": self.best_score,
                "best": self.best, "sign": self.sign}

    def load_state_dict(self, state):
        self.pos, self.sums, self.counts = state["pos"], state["sums"].copy(), state["counts"].copy()
        self.best_score, self.best, self.sign = state["best_score"], state["best"], state["sign"]


class PriorShift(_ScheduleOptimizer):
    """The paper's latent modification: z' = z + alpha * mask * (mu_dir - z), mu_dir = mu_pos (max) or mu_neg (min).

    Only the dimensions that carry the activation prior move (all, unless the landscape was fit
    with ``prior_dims``); alpha 0 is the reference itself (the baseline of the report).
    """

    def __init__(self, alphas=(0.0, 0.25, 0.5, 0.75, 1.0), n_references: int | None = None, direction: str = "auto"):
        super().__init__(direction)
        self.steps = [float(a) for a in alphas]
        if not self.steps:
            raise StimoptError("optimizer.alphas must list at least one interpolation weight")
        self.n_references = n_references

    def setup(self, space, *, seed, budget, batch_size):
        super().setup(space, seed=seed, budget=budget, batch_size=batch_size)
        if self.land.code != "latent":
            raise StimoptError("prior_shift edits VAE latents: use generator.code=latent (brainactiv is the CLIP-space baseline)")
        if self.land.prior != "activation":
            raise StimoptError("prior_shift needs a landscape fit with the activation prior; this checkpoint was fit with prior=standard (which has no mu_pos/mu_neg)")

    def _edit(self, alpha, z):
        mu = self.land.mu_pos if self.sign > 0 else self.land.mu_neg
        return z + alpha[:, None] * self.land.mask[None] * (mu[None] - z)


class BrainActiv(_ScheduleOptimizer):
    """The BrainACTIV baseline: shift the L2-normalized reference CLIP embedding by step * (+/- w/||w||),
    renormalize, and restore the reference's norm (the IP-Adapter's input scale)."""

    step_name = "step"

    def __init__(self, steps=(0.0, 0.25, 0.5, 0.75, 1.0), n_references: int | None = None, direction: str = "auto"):
        super().__init__(direction)
        self.steps = [float(s) for s in steps]
        if not self.steps:
            raise StimoptError("optimizer.steps must list at least one step size")
        self.n_references = n_references

    def setup(self, space, *, seed, budget, batch_size):
        super().setup(space, seed=seed, budget=budget, batch_size=batch_size)
        if self.land.code != "clip" or self.land.brainactiv_w is None:
            raise StimoptError("brainactiv shifts CLIP embeddings: use generator=vislens generator.code=clip with a checkpoint fit with model.kind=clip")

    def _edit(self, step, e):
        norm = np.linalg.norm(e, axis=1, keepdims=True)
        u = e / norm + step[:, None] * self.sign * self.land.brainactiv_w[None]
        return u / np.linalg.norm(u, axis=1, keepdims=True) * norm


def torch_response(objective, out: torch.Tensor) -> torch.Tensor:
    """The objective's combine() in torch (differentiable): [B] or [B, n] -> [B]."""
    if out.ndim == 1:
        return out if objective.weights is None else out * float(objective.weights[0])
    if objective.weights is None:
        return out.mean(1)
    return out @ torch.as_tensor(objective.weights, dtype=out.dtype, device=out.device)


class LatentGradient(stimopt.Optimizer):
    """Algorithm 3: Adam on codes z with loss = -score(target(generator(z))) + w_kld * KLD(z).

    ``kld``: ``activation`` (N(mu_dir, sigma_prior^2) on the prior dims, mu_dir = mu_pos for max,
    mu_neg for min; N(0, 1) elsewhere), ``standard`` (N(0, I): the standard-VAE baseline), or
    ``none`` (plain white-box gradient ascent, e.g. generator=fourier). The KLD of a point code
    is the mean term only (see ``point_kld``). Each ask takes ``steps_per_ask`` Adam steps on a
    population of ``batch_size`` codes (started from the landscape's reference codes, else from
    the space's init distribution) and returns it; the engine then scores it.
    """

    white_box = True

    def __init__(self, lr: float = 0.1, w_kld: float = 1e-3, sigma_prior: float = 0.1, kld: str = "activation",
                 steps_per_ask: int = 10, init: str = "references"):
        if kld not in ("activation", "standard", "none"):
            raise StimoptError(f"optimizer.kld must be activation, standard or none, got '{kld}'")
        if init not in ("references", "random"):
            raise StimoptError(f"optimizer.init must be references or random, got '{init}'")
        self.lr, self.w_kld, self.sigma_prior, self.kld = float(lr), float(w_kld), float(sigma_prior), kld
        self.steps_per_ask, self.init = int(steps_per_ask), init
        self.generator = None

    def attach(self, generator, target, objective) -> None:
        if not hasattr(generator, "generate_torch"):
            raise StimoptError(f"latent_gradient needs a differentiable generator (with generate_torch): image_vae, fourier, pixels; {generator.describe()} is not")
        self.generator, self.target, self.objective = generator, target, objective
        land = getattr(generator.space, "landscape", None)
        if self.kld == "activation" and (land is None or land.mu_pos is None):
            raise StimoptError("latent_gradient kld=activation needs a Vis-Lens latent landscape (generator=image_vae); use optimizer.kld=standard or none here")
        dim = generator.space.dim
        if self.kld == "activation":
            mu = land.mu_pos if objective.sign > 0 else land.mu_neg
            self.prior_mu = torch.as_tensor(mu, dtype=torch.float32)
            mask = torch.as_tensor(land.mask, dtype=torch.float32)
            self.prior_sigma = self.sigma_prior * mask + (1 - mask)
        else:
            self.prior_mu, self.prior_sigma = torch.zeros(dim), torch.ones(dim)

    def setup(self, space, *, seed, budget, batch_size):
        super().setup(space, seed=seed, budget=budget, batch_size=batch_size)
        self.rng = np.random.default_rng(seed)
        self.z = None
        self.adam_state = None
        self.n_steps = 0
        self.history: list[dict] = []

    def _start(self, n: int) -> np.ndarray:
        land = getattr(self.space, "landscape", None)
        if self.init == "references" and land is not None:
            refs = land.reference_codes
            return refs[np.arange(n) % len(refs)].astype(np.float32)
        return self.space.clip(self.rng.normal(self.space.init_mean, self.space.init_std, (n, self.space.dim))).astype(np.float32)

    def _loss(self, z):
        dev = getattr(self.generator, "device", torch.device("cpu"))
        resp = torch_response(self.objective, self.target.evaluate(self.generator.generate_torch(z.to(dev))).float()).cpu()
        kld = point_kld(z, self.prior_mu, self.prior_sigma) if self.kld != "none" else torch.zeros(len(z))
        return -(self.objective.sign * resp) + self.w_kld * kld, resp, kld

    def ask(self, n):
        if self.generator is None:
            raise StimoptError("latent_gradient is a white-box optimizer: run it through the engine, which attaches the generator and target")
        if self.z is None:
            self.z = torch.from_numpy(self._start(self.batch_size))
        z = self.z.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=self.lr)
        if self.adam_state is not None:
            opt.load_state_dict(self.adam_state)
        with torch.inference_mode(False), torch.enable_grad():
            for _ in range(self.steps_per_ask):
                loss, resp, kld = self._loss(z)
                opt.zero_grad()
                loss.sum().backward()
                opt.step()
                if self.space.low is not None or self.space.high is not None:
                    with torch.no_grad():
                        z.copy_(torch.as_tensor(self.space.clip(z.detach().numpy())))
                self.n_steps += 1
        self.history.append({"step": self.n_steps, "response": float(resp.detach().mean()), "kld": float(kld.detach().mean())})
        self.z, self.adam_state = z.detach().clone(), opt.state_dict()
        return self.z[:n].numpy().copy()

    def tell(self, codes, scores):
        pass

    def report(self):
        h = self.history
        return {"kld": self.kld, "w_kld": self.w_kld, "adam_steps": self.n_steps,
                "first": h[0] if h else None, "last": h[-1] if h else None}

    def state_dict(self):
        return {"z": None if self.z is None else self.z.clone(), "adam": self.adam_state, "n_steps": self.n_steps,
                "rng": self.rng.bit_generator.state, "history": list(self.history)}

    def load_state_dict(self, state):
        self.z, self.adam_state, self.n_steps = state["z"], state["adam"], state["n_steps"]
        self.rng.bit_generator.state = state["rng"]
        self.history = list(state["history"])


# ---------------------------------------------------------------------------------------------
# Fitting: stimopt-fit model=vislens_vae
# ---------------------------------------------------------------------------------------------
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
    r = torch.cat([torch.as_tensor(target.evaluate(images[i:i + batch_size])).float().cpu() for i in range(0, len(images), batch_size)])
    if r.ndim == 2:
        r = r.mean(1) if output is None else r[:, int(output)]
    return r.numpy().astype(np.float64)


def ridge_direction(emb: torch.Tensor, r: np.ndarray, alpha: float = 1.0) -> dict:
    """BrainACTIV: ridge from L2-normalized CLIP embeddings to responses; w/||w|| is the direction."""
    u = F.normalize(emb.double(), dim=1).numpy()
    um, rm = u.mean(0), r.mean()
    uc = u - um
    w = np.linalg.solve(uc.T @ uc + alpha * np.eye(u.shape[1]), uc.T @ (r - rm))
    pred = uc @ w + rm
    r2 = 1 - ((r - pred) ** 2).sum() / max(((r - rm) ** 2).sum(), 1e-12)
    return {"w": torch.from_numpy(w / np.linalg.norm(w)).float(), "w_raw": torch.from_numpy(w).float(),
            "b": float(rm - um @ w), "alpha": float(alpha), "r2_train": float(r2)}


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
    images, cache_dir = load_images(str(source), n, size, seed)
    target = build("target", m.target, device=str(cfg.get("device", "auto")))
    r = target_responses(target, images, output=m.get("output"))
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
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(float(m.val_fraction) * len(x))))
    val, train = perm[:n_val], perm[n_val:]
    spec = PriorSpec(prior=str(m.prior), latent_dim=int(m.latent_dim), mu=float(m.mu), lam=float(m.lam), eps=float(m.eps),
                     sigma_min=float(m.sigma_min), sigma_max=float(m.sigma_max), prior_dims=m.get("prior_dims"), center=str(m.center))
    spec.fit_normalization(r[train.numpy()])
    history = train_vae(
        model, x[train], r[train.numpy()], spec, epochs=int(m.epochs), batch_size=int(m.batch_size), lr=float(m.lr),
        step_size=int(m.step_size), gamma=float(m.gamma), grad_clip=float(m.grad_clip), w_recon=float(m.w_recon),
        w_kld=float(m.w_kld), seed=seed, device=device,
    )
    model.cpu()
    report = {
        "kind": kind, "prior": spec.prior, "latent_dim": spec.latent_dim, "n_train": int(len(train)), "n_val": int(n_val),
        "images": str(source), "target": target.describe(),
        "loss_first_epoch": history[0]["loss"], "loss_last_epoch": history[-1]["loss"],
        "train": landscape_report(model, x[train], r[train.numpy()], spec),
        "val": landscape_report(model, x[val], r[val.numpy()], spec),
    }
    n_ref = min(int(m.n_references), n_val)
    ref = val[:n_ref]
    ref_size = min(size, int(m.get("reference_size", 256)))
    ref_images = F.interpolate(images[ref], size=(ref_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
    references = {"images": (ref_images.clamp(0, 1) * 255).round().to(torch.uint8), "codes": encode_means(model, x[ref]),
                  "responses": torch.from_numpy(r[ref.numpy()]).float(), "embeddings": x[ref] if kind == "clip" else None}
    brainactiv = None
    if kind == "clip":
        brainactiv = ridge_direction(x[train], r[train.numpy()], float(m.ridge_alpha))
        report["brainactiv_r2_train"] = brainactiv["r2_train"]
        report["clip"] = f"{m.clip.model}/{m.clip.pretrained}"
    path = out_dir / CHECKPOINT_NAME
    save_landscape(path, model, spec, references=references, brainactiv=brainactiv, history=history,
                   config=OmegaConf.to_container(m, resolve=True), report=report)
    report["checkpoint"] = str(path)
    v = report["val"]
    report["summary"] = (f"vislens_vae ({kind}, {spec.prior} prior): val recon R^2 {v['recon_r2']:.3f}, "
                         f"separation AUC {v['separation_auc']:.3f}, probe AUC {v['probe_auc']:.3f}")
    target.close()
    return report


@stimopt.hookimpl
def register_generators(register):
    register("vislens", VisLensGenerator)
    register("image_vae", ImageVAEGenerator)


@stimopt.hookimpl
def register_optimizers(register):
    register("prior_shift", PriorShift)
    register("latent_gradient", LatentGradient)
    register("brainactiv", BrainActiv)


@stimopt.hookimpl
def register_config_dirs(register):
    register(str(Path(__file__).parent / "conf"))
