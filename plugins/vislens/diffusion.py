"""Stable Diffusion 1.5 img2img with an IP-Adapter that injects a given CLIP image embedding.

Paper defaults: DDIM, 50 steps, SDEdit strength gamma = 1.0 (the output depends only on the
embedding), fixed seed 42, safety checker off. Weights load from local folders with diffusers'
own ``from_pretrained`` / ``load_ip_adapter`` (``local_files_only``); a missing folder or file
is a one-line StimoptError naming it. diffusers/transformers are imported only in here.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from stimopt.errors import StimoptError

SD_HINT = "the diffusers folder of Stable Diffusion 1.5 (stable-diffusion-v1-5, with model_index.json)"
IP_HINT = "the IP-Adapter folder (h94/IP-Adapter layout: models/ip-adapter_sd15.bin, for CLIP ViT-H-14)"


def load_pipeline(sd_model: str, ip_adapter: str, ip_adapter_weight: str = "models/ip-adapter_sd15.bin",
                  device="cpu", dtype: str = "auto"):
    """The img2img pipeline with DDIM and the IP-Adapter loaded (no image encoder: we pass embeddings)."""
    if not os.path.isfile(os.path.join(str(sd_model), "model_index.json")):
        raise StimoptError(f"Stable Diffusion weights not found at {sd_model}: put {SD_HINT} there or set generator.sd_model=PATH")
    weight_path = os.path.join(str(ip_adapter), ip_adapter_weight)
    if not os.path.isfile(weight_path):
        raise StimoptError(f"IP-Adapter weights not found at {weight_path}: put {IP_HINT} at {ip_adapter} or set generator.ip_adapter=PATH")
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    device = torch.device(device)
    torch_dtype = (torch.float16 if device.type == "cuda" else torch.float32) if dtype == "auto" else getattr(torch, dtype)
    try:
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
            str(sd_model), safety_checker=None, requires_safety_checker=False, dtype=torch_dtype, local_files_only=True,
        )
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        sub, name = os.path.split(ip_adapter_weight)
        pipe.load_ip_adapter(str(ip_adapter), subfolder=sub, weight_name=name, image_encoder_folder=None, local_files_only=True)
    except StimoptError:
        raise
    except Exception as exc:
        raise StimoptError(f"Stable Diffusion / IP-Adapter weights at {sd_model} / {weight_path} do not load: {str(exc).splitlines()[0]}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def ip_embed_dim(pipe) -> int:
    """The CLIP embedding size the IP-Adapter's image projection takes."""
    proj = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    return int(proj.image_embeds.in_features)


@torch.no_grad()
def synthesize(pipe, embeddings: torch.Tensor, references: torch.Tensor, *, strength: float = 1.0, steps: int = 50,
               seed: int = 42, guidance_scale: float = 7.5, ip_scale: float = 1.0, size: int = 512) -> torch.Tensor:
    """CLIP embeddings [B, D] + reference images [B,3,h,w] in [0,1] -> images [B,3,size,size] in [0,1].

    One batched pipeline call; the unconditional branch of classifier-free guidance gets a zero
    image embedding and the empty prompt. The seed is fixed per call, so a code maps to one image.
    """
    dim = ip_embed_dim(pipe)
    if embeddings.shape[-1] != dim:
        raise StimoptError(f"the IP-Adapter takes {dim}-d CLIP embeddings, the VAE decodes {embeddings.shape[-1]}-d ones; use the CLIP model the adapter was trained with")
    dev, dtype = pipe.unet.device, pipe.unet.dtype
    refs = F.interpolate(references.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    emb = embeddings.to(dev, dtype)[:, None, :]
    if guidance_scale > 1:
        emb = torch.cat([torch.zeros_like(emb), emb])
    pipe.set_ip_adapter_scale(ip_scale)
    out = pipe(
        prompt=[""] * len(refs), image=refs.to(dev, dtype), ip_adapter_image_embeds=[emb], strength=float(strength),
        num_inference_steps=int(steps), guidance_scale=float(guidance_scale),
        generator=torch.Generator(device="cpu").manual_seed(int(seed)), output_type="pt",
    ).images
    return out.float().clamp(0, 1).cpu()


DDPM_HINT = "a diffusers DDPM folder (model_index.json, unet/, scheduler/; e.g. google/ddpm-cifar10-32 saved with save_pretrained)"


def load_ddpm(path: str, device="cpu"):
    """An unconditional DDPM (diffusers DDPMPipeline: UNet2DModel + DDPMScheduler) from a local folder:
    Algorithm 3's post-processing of the optimized image. A missing folder is one line."""
    if not os.path.isfile(os.path.join(str(path), "model_index.json")):
        raise StimoptError(f"DDPM weights not found at {path}: put {DDPM_HINT} there or set generator.refine=null")
    from diffusers import DDPMPipeline
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    try:
        pipe = DDPMPipeline.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise StimoptError(f"DDPM weights at {path} do not load: {str(exc).splitlines()[0]}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch.device(device))


@torch.no_grad()
def refine_ddpm(pipe, images: torch.Tensor, *, strength: float = 0.3, steps: int = 50, seed: int = 0) -> torch.Tensor:
    """Algorithm 3's DDPM refinement, SDEdit-style: images [B,3,h,w] in [0,1] are noised to the
    timestep ``strength`` x T of the DDPM's schedule and denoised back with its reverse process
    (``steps`` of the schedule in all, those below the start). strength 0 returns the images; the
    seed is fixed per call, so an image maps to one refined image. Output at the input's size."""
    if not 0.0 <= float(strength) <= 1.0:
        raise StimoptError(f"generator.refine_strength must be in [0, 1], got {strength}")
    if float(strength) == 0.0:
        return images
    unet, sched = pipe.unet, pipe.scheduler
    dev, dtype = unet.device, unet.dtype
    size = unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    h, w = images.shape[-2:]
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False) if (h, w) != (size, size) else images.float()
    x0 = (x.clamp(0, 1) * 2 - 1).to(dev, dtype)
    sched.set_timesteps(int(steps))
    t_start = int(round(float(strength) * (sched.config.num_train_timesteps - 1)))
    timesteps = [t for t in sched.timesteps.tolist() if t <= t_start]
    if not timesteps:
        return images
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.randn(x0.shape, generator=gen).to(dev, dtype)
    xt = sched.add_noise(x0, noise, torch.full((len(x0),), timesteps[0], dtype=torch.long, device=dev))
    for t in timesteps:
        eps = unet(xt, t).sample
        xt = sched.step(eps, t, xt, generator=gen).prev_sample
    out = ((xt.float().cpu() + 1) / 2).clamp(0, 1)
    return F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False) if (h, w) != (size, size) else out
