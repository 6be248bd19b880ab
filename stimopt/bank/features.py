"""Bank features: any layer of any torchvision/timm model, spatially average-pooled, flattened.

Paper default: ResNet-50 ``layer3`` at 224 px (14x14x1024) pooled with kernel 4, stride 5 to
3x3x1024 = 9,216 dimensions. ``model=pixels`` uses downsampled pixels (no network; for tests and
quick banks). Weights are loaded by :func:`stimopt.models.load_model`, so missing
pretrained weights are a one-line error; ``weights=random`` builds the model from a fixed seed,
so every shard job gets the same network.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from stimopt.errors import StimoptError


@dataclass
class FeatureSpec:
    model: str = "resnet50"
    layer: str = "layer3"
    input_size: int = 224
    pool_kernel: int | None = 4     # null: adaptive average pool to pool_grid x pool_grid
    pool_stride: int | None = 5
    pool_grid: int = 3
    weights: str = "pretrained"
    batch_size: int = 64
    seed: int = 0

    def to_json(self) -> dict:
        return asdict(self)


class FeatureExtractor:
    """images float32 [B, 3, H, W] in [0, 1] -> features float32 [B, dim]."""

    def __init__(self, spec: FeatureSpec, device: str = "cpu"):
        self.spec = spec
        self.device = torch.device(device)
        if spec.model == "pixels":
            self.reader = None
            return
        from stimopt.models import LayerReader, load_model

        torch.manual_seed(spec.seed)  # weights=random: the same network in every process
        net, mean, std = load_model(spec.model, spec.weights)
        self.net = net.to(self.device).eval()
        self.reader = LayerReader(self.net, spec.layer, spec.model)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        s = self.spec
        if fmap.ndim == 2:
            return fmap
        if s.pool_kernel and s.pool_stride and fmap.shape[-1] >= s.pool_kernel:
            out = F.avg_pool2d(fmap, kernel_size=s.pool_kernel, stride=s.pool_stride)
        else:
            out = F.adaptive_avg_pool2d(fmap, s.pool_grid)
        return out.flatten(1)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        s = self.spec
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        out = []
        for b in range(0, len(images), s.batch_size):
            x = images[b:b + s.batch_size].to(self.device, torch.float32)
            x = F.interpolate(x, size=(s.input_size, s.input_size), mode="bilinear", antialias=True, align_corners=False)
            if self.reader is None:
                feats = x.flatten(1)
            else:
                feats = self.pool(self.reader((x - self.mean) / self.std))
            out.append(feats.float().cpu())
        return torch.cat(out).numpy()

    @property
    def dim(self) -> int:
        if not hasattr(self, "_dim"):
            self._dim = self(torch.zeros(1, 3, 8, 8)).shape[1]
        return self._dim


def check_spec(spec: FeatureSpec) -> None:
    if spec.input_size <= 0 or spec.batch_size <= 0:
        raise StimoptError("features.input_size and features.batch_size must be positive")
