"""Continuous image generators: raw pixels and a low-frequency Fourier (cosine) parametrization.

Both are fully batched and differentiable (``generate_torch`` keeps gradients).
"""
from __future__ import annotations

from pathlib import Path
import math

import numpy as np
import torch
import torch.nn.functional as F

import stimopt
from stimopt.errors import StimoptError
from stimopt.device import resolve_device

# Decorrelated colour: codes drive luminance and two opponent channels (rows: R, G, B).
COLOR_MIX = torch.tensor([[0.58, 0.71, 0.41], [0.58, 0.00, -0.82], [0.58, -0.71, 0.41]])


class _TorchGenerator(stimopt.Generator):
    device: torch.device

    def _codes(self, codes) -> torch.Tensor:
        c = torch.as_tensor(np.asarray(codes) if not isinstance(codes, torch.Tensor) else codes)
        c = c.to(self.device, torch.float32)
        if c.ndim != 2 or c.shape[1] != self.space.dim:
            raise StimoptError(
                f"{type(self).__name__} takes codes of shape [B, {self.space.dim}], got {list(c.shape)}"
            )
        return c

    def generate(self, codes):
        return self.generate_torch(self._codes(codes))


class PixelGenerator(_TorchGenerator):
    """Codes are RGB pixels at ``resolution`` x ``resolution``, upsampled to ``size``.

    XDream's raw-pixel semantics by default (``bounded=False``): codes are unbounded, start as
    N(0, 1) white noise, and only the *image* is clipped to [0, 1], so a gene pushed past the
    range keeps its value (and its bright or dark pixel) until mutations bring it back.
    ``bounded=True``: codes live in the box [0, 1] (optimizers clip them), start N(0.5, 0.2).
    """

    def __init__(self, size: int = 128, resolution: int = 32, bounded: bool = False, device: str = "auto"):
        if resolution <= 0 or size <= 0:
            raise StimoptError("generator.size and generator.resolution must be positive")
        self.size, self.resolution, self.bounded = int(size), int(resolution), bool(bounded)
        self.device = resolve_device(device)
        box = dict(low=0.0, high=1.0, init_mean=0.5, init_std=0.2) if self.bounded else dict(init_mean=0.0, init_std=1.0)
        self._space = stimopt.ContinuousSpace(dim=3 * self.resolution**2, **box)

    @property
    def space(self):
        return self._space

    def generate_torch(self, codes: torch.Tensor) -> torch.Tensor:
        img = codes.clamp(0, 1).view(-1, 3, self.resolution, self.resolution)
        if self.resolution != self.size:
            img = F.interpolate(img, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return img.clamp(0, 1)

    def codes_from_images(self, images) -> torch.Tensor:
        """The codes of ``images`` ([B,3,H,W] in [0,1]): the images themselves at ``resolution``."""
        img = torch.as_tensor(images, dtype=torch.float32).to(self.device).clamp(0, 1)
        if img.shape[-1] != self.resolution or img.shape[-2] != self.resolution:
            img = F.interpolate(img, size=(self.resolution, self.resolution), mode="bilinear", antialias=True,
                                align_corners=False)
        return img.reshape(len(img), -1)


def cosine_basis(size: int, n: int) -> torch.Tensor:
    """[size, n] orthonormal DCT-II basis of the n lowest frequencies."""
    x = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    k = torch.arange(n, dtype=torch.float64)
    basis = torch.cos(math.pi * x[:, None] * k[None, :]) * math.sqrt(2.0 / size)
    basis[:, 0] /= math.sqrt(2.0)
    return basis.float()


def mirror_tile(img: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, C, t, t]`` tiles -> ``[B, C, size, size]``: the tile and its mirror images side by side, centred."""
    t = img.shape[-1]
    reps = -(-size // t) + 1  # one spare tile so that the crop can be centred on a tile
    rows = torch.cat([img if i % 2 == 0 else img.flip(-1) for i in range(reps)], dim=-1)
    full = torch.cat([rows if i % 2 == 0 else rows.flip(-2) for i in range(reps)], dim=-2)
    off = (reps * t - size) // 2
    return full[..., off:off + size, off:off + size]


def aperture(img: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, C, e, e]`` pre-sigmoid maps -> ``[B, C, size, size]``: centred, faded to 0 (grey after the
    sigmoid) over the outer eighth of the square by a raised cosine, 0 outside."""
    e = img.shape[-1]
    ramp = max(1, e // 8)
    edge = torch.ones(e, dtype=img.dtype, device=img.device)
    fade = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(ramp, dtype=img.dtype, device=img.device) + 0.5) / ramp)
    edge[:ramp], edge[e - ramp:] = fade, fade.flip(0)
    img = img * edge[:, None] * edge[None, :]
    before = (size - e) // 2
    return F.pad(img, (before, size - e - before, before, size - e - before))


class FourierGenerator(_TorchGenerator):
    """Codes are ``3 x n_freq x n_freq`` cosine coefficients (decorrelated colour), scaled by
    ``1 / (1 + |f|)^decay`` so low frequencies dominate; a sigmoid maps the sum to [0, 1].

    ``opponent`` scales the two colour-opponent channels against luminance (1: all three alike;
    the MEI's parametrization uses 0.4, natural images varying less in colour than in luminance).
    ``contrast`` (null: off) rescales each image's pre-sigmoid map to that standard deviation
    (over its pixels and channels): the code then sets only the pattern, never how strong it is,
    so a search need not spend generations growing the code's norm to reach a high-contrast image.
    The code space's ``levels`` give each coefficient's frequency band (max of its two frequencies).
    ``chroma_freq`` (null: ``n_freq``) gives the two colour-opponent channels fewer frequencies than
    luminance (natural images' colour varies more slowly: JPEG's chroma subsampling); the code is
    then ``n_freq^2`` luminance coefficients followed by ``2 x chroma_freq^2`` opponent ones.
    ``tile`` (px; null: off) makes the code one ``tile`` x ``tile`` image that fills the canvas with
    its mirror images (the cosine basis is even at the tile's edges: no seams), a periodic texture.
    ``extent`` (px; null: off) spends the code on a centred square of that size, an aperture on the
    receptive field: faded to grey at its edge, grey outside. Both put the same ``n_freq`` on fewer
    pixels: finer detail where the unit looks for the same dimension (docs/blackbox.md, round 9).
    """

    def __init__(self, size: int = 128, n_freq: int = 12, decay: float = 1.0, gain: float = 4.0, device: str = "auto",
                 opponent: float = 1.0, contrast: float | None = None, chroma_freq: int | None = None,
                 tile: int | None = None, extent: int | None = None):
        if extent is not None and not 1 <= int(extent) <= int(size):
            raise StimoptError(f"generator.extent must be null or a size in px in 1..size ({size}), got {extent}")
        if extent is not None and tile is not None:
            raise StimoptError("generator.extent and generator.tile exclude each other: set one of them to null")
        self.extent = None if extent is None or int(extent) == int(size) else int(extent)
        if tile is not None and not 1 <= int(tile) <= int(size):
            raise StimoptError(f"generator.tile must be null or a size in px in 1..size ({size}), got {tile}")
        self.tile = None if tile is None or int(tile) == int(size) else int(tile)
        span = self.tile or self.extent or int(size)
        if n_freq <= 0 or size <= 0 or n_freq > span:
            raise StimoptError(f"generator.n_freq must be in 1..{'tile' if self.tile else 'extent' if self.extent else 'size'} ({span}), got {n_freq}")
        if chroma_freq is not None and not 0 <= int(chroma_freq) <= n_freq:
            raise StimoptError(f"generator.chroma_freq must be null or in 0..n_freq ({n_freq}), got {chroma_freq}")
        self.chroma_freq = int(n_freq if chroma_freq is None else chroma_freq)
        if not float(opponent) >= 0:
            raise StimoptError(f"generator.opponent must be >= 0, got {opponent}")
        if contrast is not None and not float(contrast) > 0:
            raise StimoptError(f"generator.contrast must be null or positive, got {contrast}")
        self.size, self.n_freq, self.opponent = int(size), int(n_freq), float(opponent)
        self.contrast = None if contrast is None else float(contrast)
        self.device = resolve_device(device)
        self.basis = (cosine_basis(span, self.n_freq) * math.sqrt(span)).to(self.device)
        f = torch.arange(self.n_freq, dtype=torch.float32)
        radius = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
        self.scale = (gain / (1.0 + radius) ** decay).to(self.device)
        self.mix = (COLOR_MIX * torch.tensor([1.0, self.opponent, self.opponent])).to(self.device)
        # each coefficient's level: the larger of its two frequencies, so the levels below L are the
        # code of an L x L Fourier generator (the coarse part that a coarse-to-fine search starts with)
        level = np.maximum.outer(np.arange(self.n_freq), np.arange(self.n_freq))
        chroma = level[: self.chroma_freq, : self.chroma_freq].ravel()
        self._space = stimopt.ContinuousSpace(dim=self.n_freq**2 + 2 * self.chroma_freq**2, init_mean=0.0, init_std=1.0,
                                              levels=tuple(np.concatenate([level.ravel(), chroma, chroma]).tolist()))

    @property
    def space(self):
        return self._space

    def generate_torch(self, codes: torch.Tensor) -> torch.Tensor:
        n, k = self.n_freq, self.chroma_freq
        if k == n:
            c = codes.view(-1, 3, n, n)
        else:  # luminance at n x n, the opponent channels' k x k coefficients padded with zeros
            lum = codes[:, : n * n].view(-1, 1, n, n)
            opp = F.pad(codes[:, n * n:].reshape(len(codes), 2, k, k), (0, n - k, 0, n - k))
            c = torch.cat([lum, opp], dim=1)
        c = c * self.scale
        c = torch.einsum("rc,bcyx->bryx", self.mix, c)
        img = torch.einsum("hy,bcyx,wx->bchw", self.basis, c, self.basis)
        if self.contrast is not None:  # a fixed-contrast map: the code's norm does not matter, only its direction
            img = img * (self.contrast / img.flatten(1).std(dim=1).clamp(min=1e-6))[:, None, None, None]
        if self.tile is not None:
            img = mirror_tile(img, self.size)
        elif self.extent is not None:
            img = aperture(img, self.size)
        return torch.sigmoid(img)


@stimopt.hookimpl
def register_generators(register):
    register("pixels", PixelGenerator)
    register("fourier", FourierGenerator)


@stimopt.hookimpl
def register_config_dirs(register):
    register(str(Path(__file__).parent / "conf"))
