"""The MEI's own image parametrization: what Adam updates, and how it becomes an image in [0, 1].

``fourier`` (the default): per image, the real and imaginary parts of a real 2-D spectrum
``[3, H, W//2 + 1]``, each frequency scaled by ``1 / max(|f|, 1/size)^decay`` (a 1/f spectrum, so
a unit step moves low frequencies as much as a natural image's power would), inverse-FFT'd
(orthonormal) into three decorrelated channels (luminance and two colour opponents), mixed into
RGB by stimopt's ``COLOR_MIX`` (the opponent channels scaled by ``opponent``) and squashed by a sigmoid. Adam on these coefficients is Adam with
the 1/f spectrum and the colour decorrelation as a preconditioner: the lucid/lucent recipe.

``pixel``: per image, logits ``[3, H, W]`` (decorrelated colour too), sigmoid into [0, 1]; with a
Gaussian blur of the gradient (``blur_sigma``) this is sinzlab/mei's pixel-space recipe.
"""
from __future__ import annotations

import math

import torch

from stimopt.errors import StimoptError
from stimopt_plugins.image_codes import COLOR_MIX

PARAMS = ("fourier", "pixel")


def spectrum_scale(size: int, decay: float) -> torch.Tensor:
    """[size, size//2 + 1] scale of each rfft2 frequency: 1 / max(|f|, 1/size)^decay."""
    fy = torch.fft.fftfreq(size)[:, None]
    fx = torch.fft.rfftfreq(size)[None, :]
    radius = torch.sqrt(fx**2 + fy**2).clamp(min=1.0 / size)
    return radius.pow(-float(decay)) / size  # 1/size: the DC term's scale is 1


class ImageParam:
    """Parameters of ``batch`` images at ``size`` px; ``images()`` maps them (differentiably) to [0, 1]."""

    def __init__(self, kind: str, size: int, batch: int, decay: float, init_std: float, generator: torch.Generator,
                 opponent: float = 1.0):
        if kind not in PARAMS:
            raise StimoptError(f"optimizer.param must be one of {', '.join(PARAMS)}, got '{kind}'")
        self.kind, self.size = kind, int(size)
        # columns: luminance, two colour opponents; natural images vary less in colour than in luminance
        self.mix = COLOR_MIX * torch.tensor([1.0, float(opponent), float(opponent)])
        if kind == "fourier":
            self.scale = spectrum_scale(self.size, decay)
            shape = (batch, 3, self.size, self.size // 2 + 1, 2)
        else:
            self.scale = None
            shape = (batch, 3, self.size, self.size)
        self.tensor = (torch.randn(shape, generator=generator) * float(init_std)).requires_grad_(True)

    def images(self, tensor: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 3, size, size] in [0, 1]."""
        t = self.tensor if tensor is None else tensor
        if self.kind == "fourier":
            spec = torch.view_as_complex(t.contiguous()) * self.scale
            # orthonormal inverse FFT: the image's energy equals the spectrum's; x size so that a
            # code of unit scale gives pixel values of unit scale
            x = torch.fft.irfft2(spec, s=(self.size, self.size), norm="ortho") * math.sqrt(self.size * self.size) / 4.0
        else:
            x = t
        x = torch.einsum("rc,bchw->brhw", self.mix, x)
        return torch.sigmoid(x)
