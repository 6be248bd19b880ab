"""What happens to an MEI between its parametrization and the target, each step.

- :func:`constrain`: norm and contrast constraints (differentiable projections onto the allowed set);
- :func:`robust`: transformation robustness, one random jitter + scale + rotation per image and
  step, as one affine resampling (grey where the image moved away);
- :func:`blur_gradient`: gradient preconditioning, a Gaussian blur of the gradient arriving at the
  image (torchvision's ``gaussian_blur``);
- :func:`similarity`: the batch's mean pairwise cosine similarity, the diversity term's measure.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def constrain(images: torch.Tensor, norm: float | None, contrast: float | None) -> torch.Tensor:
    """Images [B,3,H,W] in [0,1] with ``||x - 0.5||_2 <= norm`` (over all pixels and channels) and
    RMS contrast (the std of the pixel values about the image's mean) ``<= contrast``; an image
    outside is scaled toward grey / its mean, one that fits is unchanged."""
    x = images
    if contrast is not None:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        d = x - mean
        rms = d.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
        x = mean + d * torch.clamp(float(contrast) / (rms + 1e-8), max=1.0)
    if norm is not None:
        d = x - 0.5
        n = d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        x = 0.5 + d * torch.clamp(float(norm) / (n + 1e-8), max=1.0)
    return x


def robust(images: torch.Tensor, generator: torch.Generator, jitter: float, scale: float, rotate: float) -> torch.Tensor:
    """Each image shifted by up to ``jitter`` px, zoomed by a factor in [1 - scale, 1 + scale] and
    rotated by up to ``rotate`` degrees (uniform, independently per image); same size, grey fill."""
    b, _, h, w = images.shape
    if jitter <= 0 and scale <= 0 and rotate <= 0:
        return images

    def uniform(half: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator) * 2 - 1) * half

    angle = uniform(rotate) * math.pi / 180
    zoom = 1 + uniform(scale)
    tx, ty = uniform(jitter) * 2 / w, uniform(jitter) * 2 / h  # affine_grid works in [-1, 1] units
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 0.5


def blur_gradient(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """``images`` unchanged forward; in the backward pass their gradient is Gaussian-blurred (``sigma`` px)."""
    if sigma <= 0 or not images.requires_grad:
        return images
    from torchvision.transforms.functional import gaussian_blur

    k = 2 * math.ceil(3 * sigma) + 1
    k = min(k, 2 * ((min(images.shape[-2:]) - 1) // 2) + 1)
    images.register_hook(lambda g: gaussian_blur(g, [k, k], [sigma, sigma]))
    return images


def similarity(images: torch.Tensor, pool: int = 4) -> torch.Tensor:
    """Mean pairwise cosine similarity of the batch's images (mean-subtracted, average-pooled by
    ``pool`` so that it compares structure, not pixel noise) or codes ([B, dim]); 0 for a batch of one."""
    b = len(images)
    if b < 2:
        return images.sum() * 0
    x = images - images.flatten(1).mean(dim=1).view(-1, *[1] * (images.ndim - 1))
    if images.ndim == 4 and pool > 1 and min(x.shape[-2:]) >= 2 * pool:
        x = F.avg_pool2d(x, pool)
    x = F.normalize(x.flatten(1), dim=1)
    sim = x @ x.T
    return (sim.sum() - sim.diagonal().sum()) / (b * (b - 1))
