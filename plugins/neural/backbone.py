"""The frozen backbone of fitted model neurons: one layer of a torchvision/timm model, as features.

Differentiable: gradients flow from the features back to the images (white-box optimizers on
``v4_ensemble``/``encoder`` need them); the engine's inference mode turns them off for black-box
runs, and :meth:`Backbone.features` (fitting) computes without them.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from stimopt.device import resolve_device
from stimopt.errors import StimoptError
from stimopt.models import IMAGENET_MEAN, IMAGENET_STD, LayerReader, load_model, model_input_size


class Backbone:
    """Frozen features of ``layer`` of a torchvision/timm model: images [B,3,H,W] -> [B,C,h,w]
    (a vector layer, or one ``token`` of a transformer layer, gives [B,C,1,1])."""

    def __init__(self, model: str = "resnet50", layer: str = "layer3", weights: str = "pretrained",
                 input_size: int = 112, device="auto", seed: int = 0, fallback: str | None = None,
                 fallback_layer: str | None = None, model_module: nn.Module | None = None, token=None):
        self.device = resolve_device(device)
        self.note = None
        if model_module is not None:  # tests: a tiny module made in the test
            net, mean, std = model_module, IMAGENET_MEAN, IMAGENET_STD
        else:
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(seed))
                    net, mean, std = load_model(str(model), str(weights))
            except StimoptError as exc:
                if not fallback or weights != "pretrained":
                    raise
                self.note = (f"{model} weights are not on this machine ({exc}); using {fallback}:{fallback_layer} "
                             f"instead (the paper's model is used as soon as its weights are present)")
                print(f"stimopt: note: {self.note}", file=sys.stderr)
                model, layer, token = fallback, fallback_layer or layer, None  # the fallback is a CNN map
                net, mean, std = load_model(str(model), "pretrained")
        self.model, self.layer, self.weights, self.seed = str(model), str(layer), str(weights), int(seed)
        self.net = net.eval().to(self.device)
        self.input_size = model_input_size(self.net, int(input_size), self.model)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.reader = LayerReader(self.net, self.layer, self.model, token=token, key="model.token")
        self.token = self.reader.token
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        with torch.no_grad():  # a wrong layer/token shows here, as one line, not in the middle of a fit
            self(torch.zeros(1, 3, self.input_size, self.input_size, device=self.device))

    def spec(self) -> dict:
        return {"model": self.model, "layer": self.layer, "weights": self.weights,
                "input_size": self.input_size, "seed": self.seed, "token": self.token}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(images).to(self.device, torch.float32)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True, align_corners=False)
        f = self.reader((x - self.mean) / self.std)
        return f if f.ndim == 4 else f[:, :, None, None]

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """All images' features, computed in batches (no gradients), on the CPU (float32)."""
        return torch.cat([self(images[i:i + batch]).float().cpu() for i in range(0, len(images), batch)])


def backbone_from_config(m, device, seed: int) -> Backbone:
    return Backbone(m.backbone, m.layer, m.get("weights", "pretrained"), int(m.get("input_size", 112)), device, seed,
                    m.get("fallback_backbone"), m.get("fallback_layer"), token=m.get("token"))


def backbone_from_spec(spec: dict, device) -> Backbone:
    """The backbone a checkpoint was fitted with (checkpoints before tokens have no ``token``)."""
    return Backbone(spec["model"], spec["layer"], spec["weights"], spec["input_size"], device, spec["seed"],
                    token=spec.get("token"))
