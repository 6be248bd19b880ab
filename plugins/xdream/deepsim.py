"""DeePSiM generators (Dosovitskiy & Brox 2016): GANs trained to invert one layer of AlexNet.

XDream's default image generator is DeePSiM-fc6: a 4,096-d code (an fc6 activation vector) ->
a 256 x 256 image. The family inverts ``norm1``, ``norm2``, ``conv3``, ``conv4``, ``pool5``,
``fc6``, ``fc7`` and ``fc8``; the architectures below follow the published networks, with the
parameter names of XDream's converted PyTorch weight files, so those files load as they are.

Weights are never downloaded: ``generator.weights`` is a path to the converted state dict
(default ``$STIMOPT_CACHE/deepsim/<layer>.pt``, ``STIMOPT_CACHE`` defaulting to
``~/.cache/stimopt``). The file is checked by sha256 against ``generator.sha256`` or a
``<file>.sha256`` sidecar when given, and its digest is recorded in the run summary.
``weights=random`` builds randomly initialized networks for tests only, and says so.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import stimopt
from stimopt.errors import StimoptError
from stimopt.device import resolve_device

#: Caffe's ImageNet mean in BGR order: DeePSiM outputs mean-subtracted BGR images in 0..255.
BGR_MEAN = (104.0, 117.0, 123.0)


def _c(name, cin, cout, k, s, p, bias=True, act=True):
    return (name, nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=bias), act)


def _t(name, cin, cout, k, s, p, act=True):
    return (name, nn.ConvTranspose2d(cin, cout, k, stride=s, padding=p, bias=False), act)


def _upsampler_from(c_in: int) -> list:
    """The shared decoder of the fc and pool5 generators: 8 -> 256 px, raw (caffe-range) output."""
    return [
        _t("tconv4_0", c_in, 256, 4, 2, 1), _t("tconv4_1", 256, 256, 3, 1, 1),
        _t("tconv3_0", 256, 128, 4, 2, 1), _t("tconv3_1", 128, 128, 3, 1, 1),
        _t("tconv2", 128, 64, 4, 2, 1), _t("tconv1", 64, 32, 4, 2, 1), _t("tconv0", 32, 3, 4, 2, 1, act=False),
    ]


def _norm_layers(c_in: int, c1: int, stride: int) -> list:
    return [
        _c("conv6", c_in, c1, 3, stride, 2), _c("conv7", c1, 128, 3, 1, 1), _c("conv8", 128, 128, 3, 1, 1),
        _t("tconv4_0", 128, 128, 4, 2, 1), _c("conv4_1", 128, 128, 3, 1, 1, bias=False),
        _t("tconv3_0", 128, 64, 4, 2, 1), _c("conv3_1", 64, 64, 3, 1, 1, bias=False),
        _t("tconv2_0", 64, 32, 4, 2, 1), _c("conv2_1", 32, 32, 3, 1, 1, bias=False),
        _t("tconv1_0", 32, 16, 4, 2, 1, act=False), _c("conv1_1", 16, 3, 3, 1, 1, bias=False, act=False),
    ]


def _conv34_layers() -> list:
    return [
        _c("conv6", 384, 384, 3, 1, 0), _c("conv7", 384, 512, 3, 1, 0), _c("conv8", 512, 512, 2, 1, 0),
        _t("tconv5_0", 512, 256, 4, 2, 1), _t("tconv5_1", 256, 256, 3, 1, 1),
        _t("tconv4_0", 256, 128, 4, 2, 1), _t("tconv4_1", 128, 128, 3, 1, 1),
        _t("tconv3_0", 128, 128, 4, 2, 1), _t("tconv3_1", 128, 128, 3, 1, 1),
        _t("tconv2_0", 128, 64, 4, 2, 1), _c("conv2_1", 64, 32, 3, 1, 1, bias=False),
        _t("tconv1_0", 32, 16, 4, 2, 1), _c("conv1_1", 16, 3, 3, 1, 1, bias=False, act=False),
    ]


def _pool5_layers() -> list:
    return [
        _c("conv6", 256, 512, 3, 1, 1), _c("conv7", 512, 512, 3, 1, 1), _c("conv8", 512, 512, 3, 1, 0),
        _t("tconv5_0", 512, 256, 4, 2, 1), _t("tconv5_1", 256, 512, 3, 1, 1), *_upsampler_from(512),
    ]


def _fc_layers(n_in: int) -> list:
    return [
        ("fc7", nn.Linear(n_in, 4096), True), ("fc6", nn.Linear(4096, 4096), True),
        ("fc5", nn.Linear(4096, 4096), True), ("reshape", None, False),
        _t("tconv5_0", 256, 256, 4, 2, 1), _t("tconv5_1", 256, 512, 3, 1, 1), *_upsampler_from(512),
    ]


#: layer -> (code shape, layer list builder, tanh*255 output?, native output size)
VARIANTS = {
    "norm1": ((96, 27, 27), lambda: _norm_layers(96, 128, 2), True, 240),
    "norm2": ((256, 13, 13), lambda: _norm_layers(256, 256, 1), True, 240),
    "conv3": ((384, 13, 13), _conv34_layers, True, 256),
    "conv4": ((384, 13, 13), _conv34_layers, True, 256),
    "pool5": ((256, 6, 6), _pool5_layers, False, 256),
    "fc6": ((4096,), lambda: _fc_layers(4096), False, 256),
    "fc7": ((4096,), lambda: _fc_layers(4096), False, 256),
    "fc8": ((1000,), lambda: _fc_layers(1000), False, 256),
}


class DeePSiM(nn.Module):
    """One DeePSiM generator network: code [B, *code_shape] -> BGR image [B, 3, S, S] (caffe range)."""

    def __init__(self, layer: str = "fc6"):
        super().__init__()
        if layer not in VARIANTS:
            raise StimoptError(f"unknown DeePSiM layer '{layer}'; choose one of {', '.join(VARIANTS)}")
        self.layer = layer
        self.code_shape, build, self.tanh_out, self.native_size = VARIANTS[layer]
        self.order = []
        for name, module, act in build():
            if module is not None:
                self.add_module(name, module)
            self.order.append((name, act))
        self.lrelu = nn.LeakyReLU(negative_slope=0.3)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        x = code.view(-1, *self.code_shape)
        for name, act in self.order:
            if name == "reshape":
                x = x.view(-1, 256, 4, 4)
                continue
            x = getattr(self, name)(x)
            if act:
                x = self.lrelu(x)
        return torch.tanh(x) * 255.0 if self.tanh_out else x


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_weight_path(layer: str) -> Path:
    return Path(os.environ.get("STIMOPT_CACHE", Path.home() / ".cache" / "stimopt")) / "deepsim" / f"{layer}.pt"


def load_weights(net: DeePSiM, path: Path, sha256: str | None) -> str:
    """Load a converted DeePSiM state dict into ``net`` after checking its sha256; returns the digest."""
    layer = net.layer
    if not path.is_file():
        raise StimoptError(
            f"DeePSiM-{layer} weights not found at {path}: put XDream's converted PyTorch file for '{layer}' "
            f"there (or pass generator.weights=PATH); see docs/xdream.md"
        )
    digest = sha256_file(path)
    sidecar = path.with_name(path.name + ".sha256")
    expected = sha256 or (sidecar.read_text().split()[0] if sidecar.is_file() else None)
    if expected and digest.lower() != str(expected).strip().lower():
        raise StimoptError(f"weight file {path} has sha256 {digest[:16]}..., expected {str(expected)[:16]}...: wrong or corrupt file for DeePSiM-{layer}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise StimoptError(f"weight file {path} cannot be read as a PyTorch state dict: {type(exc).__name__}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = " ".join(str(exc).strip().splitlines()[:2])
        raise StimoptError(f"weight file {path} does not fit DeePSiM-{layer}: {first}") from None
    return digest


class DeepSimGenerator(stimopt.Generator):
    """``generator=deepsim generator.layer=fc6``: DeePSiM codes -> RGB images in [0, 1] at ``size``."""

    def __init__(self, layer: str = "fc6", weights: str | None = None, sha256: str | None = None,
                 size: int = 256, device: str = "auto", seed: int = 0):
        if int(size) <= 0:
            raise StimoptError(f"generator.size must be positive, got {size}")
        self.layer, self.size = str(layer), int(size)
        self.device = resolve_device(device)
        torch.manual_seed(int(seed))  # only matters for weights=random
        net = DeePSiM(self.layer)
        if weights == "random":
            self.weights, self.digest = "random", None
        else:
            path = Path(os.path.expanduser(str(weights))) if weights else default_weight_path(self.layer)
            self.digest = load_weights(net, path, sha256)
            self.weights = str(path)
        self.net = net.eval().to(self.device)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.mean = torch.tensor(BGR_MEAN, device=self.device).view(1, 3, 1, 1)
        self._space = stimopt.ContinuousSpace(dim=int(np.prod(self.net.code_shape)), init_mean=0.0, init_std=1.0)

    @property
    def space(self):
        return self._space

    def generate_torch(self, codes: torch.Tensor) -> torch.Tensor:
        bgr = self.net(codes)
        rgb = ((bgr + self.mean) / 255.0).flip(1).clamp(0, 1)
        if rgb.shape[-1] != self.size:
            rgb = F.interpolate(rgb, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return rgb.clamp(0, 1)

    def generate(self, codes):
        c = torch.as_tensor(np.asarray(codes) if not isinstance(codes, torch.Tensor) else codes)
        if c.ndim != 2 or c.shape[1] != self.space.dim:
            raise StimoptError(f"DeePSiM-{self.layer} takes codes of shape [B, {self.space.dim}], got {list(c.shape)}")
        return self.generate_torch(c.to(self.device, torch.float32))

    def encode(self, images, **options) -> np.ndarray:
        """Codes whose images reproduce ``images`` (XDream's "opt"); see stimopt_plugins.xdream.encode."""
        from stimopt_plugins.xdream import encode

        return encode(self, images, **options)

    def describe(self) -> str:
        if self.weights == "random":
            return f"DeePSiM-{self.layer} with RANDOM weights (tests only, not a trained generator)"
        return f"DeePSiM-{self.layer} ({Path(self.weights).name}, sha256 {self.digest[:16]})"
