"""Unit targets: one channel (at a spatial position, or of one token) of any layer of a torchvision
or timm model, CNN or vision transformer.

Models load through :mod:`stimopt.models` (offline weights, one-line errors for missing ones);
layers are read through its :class:`~stimopt.models.LayerReader`, so a ViT block's
``[B, tokens, C]`` output becomes ``[B, C]`` with ``token=cls|mean|INDEX``. The target is
differentiable: white-box optimizers get gradients with respect to the image.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import stimopt
from stimopt.device import resolve_device
from stimopt.errors import StimoptError
from stimopt.models import IMAGENET_MEAN, IMAGENET_STD, LayerReader, load_model, model_input_size


class CNNUnit(stimopt.Target):
    """Response of one unit: a channel of ``layer`` at ``position`` (default: the centre).

    ``model`` is a torchvision/timm name or an ``nn.Module`` (tests pass tiny ones);
    ``relu=True`` reads the unit after a ReLU (for layers whose output is pre-activation);
    ``spatial='mean'`` averages the channel over space instead of reading one position;
    ``token`` (cls | mean | INDEX) reads one token of a transformer layer (required there, unset
    for convolutional maps). ``weights='random'`` is for tests only and the description says so.
    """

    differentiable = True  # responses computed in torch: white-box optimizers fit (stimopt.differentiable)

    def __init__(
        self,
        model="efficientnet_lite0",
        layer: str = "blocks.3",
        unit: int = 0,
        position=None,
        spatial: str = "center",
        relu: bool = False,
        input_size: int = 128,
        weights: str = "pretrained",
        device: str = "auto",
        token=None,
    ):
        self.device = resolve_device(device)
        if isinstance(model, torch.nn.Module):
            net, mean, std, self.model_name = model.eval(), IMAGENET_MEAN, IMAGENET_STD, type(model).__name__
        else:
            net, mean, std = load_model(str(model), weights)
            self.model_name = str(model)
        self.weights = "module" if isinstance(model, torch.nn.Module) else str(weights)
        if self.weights == "random":
            print(f"stimopt: warning: {self.model_name} has random weights (for tests only: its units are not "
                  "a trained network's)", file=sys.stderr)
        self.net = net.to(self.device)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.reader = LayerReader(self.net, layer, self.model_name, token=token, key="target.token")
        self.token = self.reader.token
        self.layer, self.unit, self.relu = layer, int(unit), bool(relu)
        self.input_size = model_input_size(self.net, int(input_size), self.model_name)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        if spatial not in ("center", "mean"):
            raise StimoptError(f"target.spatial must be 'center' or 'mean', got '{spatial}'")
        self.spatial = spatial
        with torch.no_grad():
            shape = self._features(torch.zeros(1, 3, self.input_size, self.input_size, device=self.device)).shape
        if len(shape) == 2:  # a fully connected layer: [B, C]
            channels, height, width = shape[1], 1, 1
        else:
            channels, height, width = shape[1], shape[2], shape[3]
        self.feature_shape = tuple(shape[1:])
        if not 0 <= self.unit < channels:
            raise StimoptError(f"unit {unit} is out of range: layer '{layer}' of {self.model_name} has {channels} channels (0..{channels - 1})")
        if position is None:
            position = (height // 2, width // 2)
        self.position = tuple(int(v) for v in position)
        if len(shape) > 2 and not (0 <= self.position[0] < height and 0 <= self.position[1] < width):
            raise StimoptError(f"position {list(self.position)} is outside layer '{layer}' ({height}x{width} at {self.input_size} px)")

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True, align_corners=False)
        x = (x - self.mean) / self.std
        out = self.reader(x)
        return F.relu(out) if self.relu else out

    def evaluate(self, images):
        feats = self._features(images)
        if feats.ndim == 2:
            r = feats[:, self.unit]
        elif self.spatial == "mean":
            r = feats[:, self.unit].mean(dim=(-2, -1))
        else:
            r = feats[:, self.unit, self.position[0], self.position[1]]
        return r.float()

    def describe(self) -> str:
        if self.token is not None:
            where = f"token {self.token}"
        else:
            where = self.spatial if self.spatial == "mean" else list(self.position)
        random = " (random weights: for tests only)" if self.weights == "random" else ""
        return f"{self.model_name}:{self.layer}[{self.unit}]@{where}{random}"


@stimopt.hookimpl
def register_targets(register):
    register("cnn_unit", CNNUnit)


@stimopt.hookimpl
def register_config_dirs(register):
    register(str(Path(__file__).parent / "conf"))
