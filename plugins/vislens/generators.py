"""The Vis-Lens generators: ``image_vae`` (z -> conv VAE decoder -> pixels, differentiable) and
``vislens`` (z -> VAE decoder -> CLIP embedding -> Stable Diffusion 1.5 img2img + IP-Adapter;
``code=clip`` takes CLIP embeddings directly, for BrainACTIV)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import stimopt
from stimopt.device import resolve_device
from stimopt.errors import StimoptError
from stimopt_plugins.vislens.landscape import CHECKPOINT_NAME, LatentSpace, landscape_of, references
from stimopt_plugins.vislens.vae import load_landscape


class ImageVAEGenerator(stimopt.Generator):
    """z -> the conv VAE's decoder -> pixels, upsampled to ``size``. Differentiable (``generate_torch``).

    ``refine``: a diffusers DDPM folder; the presented images (``generate``) are then refined by it
    (Algorithm 3's post-processing, SDEdit at ``refine_strength``); gradient passes still climb the
    unrefined decoder output, as in the paper (optimize, then refine)."""

    space_type = LatentSpace

    def __init__(self, checkpoint: str = "fits/vislens_image/" + CHECKPOINT_NAME, size: int = 128, device: str = "auto",
                 refine: str | None = None, refine_strength: float = 0.3, refine_steps: int = 50, refine_seed: int = 0):
        ck = load_landscape(checkpoint)
        if ck["arch"]["kind"] != "image":
            raise StimoptError(f"{checkpoint} is a CLIP-space VAE; generator=image_vae needs one fit with model.kind=image (use generator=vislens for this one)")
        self.device = resolve_device(device)
        self.vae = ck["model"].to(self.device)
        for p in self.vae.parameters():
            p.requires_grad_(False)
        self.size, self.checkpoint = int(size), str(checkpoint)
        self.reference_images = references(ck)["images"]
        self._space = LatentSpace(dim=self.vae.latent_dim, init_mean=0.0, init_std=1.0, landscape=landscape_of(ck, "latent"))
        self.refiner = None  # Algorithm 3's DDPM post-processing of what is presented (not of gradient passes)
        if refine:
            from stimopt_plugins.vislens.diffusion import load_ddpm

            self.refiner = load_ddpm(str(refine), device=self.device)
            self.refine_options = dict(strength=float(refine_strength), steps=int(refine_steps), seed=int(refine_seed))

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
        if self.refiner is None:
            return self.generate_torch(z)
        from stimopt_plugins.vislens.diffusion import refine_ddpm

        with torch.no_grad():
            return refine_ddpm(self.refiner, self.generate_torch(z), **self.refine_options)

    def describe(self) -> str:
        ref = "" if self.refiner is None else f", DDPM refine {self.refine_options['strength']:g}"
        return f"image_vae({self.checkpoint}, {self._space.landscape.prior} prior, {self._space.dim}-d{ref})"


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
        self.landscape = landscape_of(ck, code)
        self.reference_images = references(ck)["images"]
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
