"""Targets from fitted checkpoints: ``v4_ensemble`` (model V4 neurons) and ``encoder`` (fMRI ROIs,
EEG channels). Batched, on the GPU when present, and differentiable with respect to the images:
white-box optimizers get gradients; the engine's inference mode turns them off otherwise."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import stimopt
from stimopt.device import resolve_device
from stimopt.errors import StimoptError

from . import checkpoints
from .backbone import backbone_from_spec
from .encoder import Readout
from .ensemble import EnsembleMember, EnsembleModel


def select_outputs(names: list[str], which, what: str) -> tuple[list[int], bool]:
    """Indices for ``which`` (None = all, an index, a name, or a list) and whether it was a list."""
    if which is None:
        return list(range(len(names))), True
    many = isinstance(which, (list, tuple)) or (hasattr(which, "__iter__") and not isinstance(which, (str, bytes)))
    items = list(which) if many else [which]
    out = []
    for it in items:
        if isinstance(it, str) and it in names:
            out.append(names.index(it))
        elif isinstance(it, (int, np.integer)) or (isinstance(it, str) and it.lstrip("-").isdigit()):
            i = int(it)
            if not 0 <= i < len(names):
                raise StimoptError(f"{what} {i} is out of range: the model has {len(names)} ({0}..{len(names) - 1})")
            out.append(i)
        else:
            raise StimoptError(f"unknown {what} '{it}'; the model has: {', '.join(names)}")
    return out, many


class _FittedTarget(stimopt.Target):
    kind = "?"
    differentiable = True  # responses computed in torch: white-box optimizers fit (stimopt.differentiable)

    def _setup(self, checkpoint, which, what: str, device):
        path = checkpoints.demo_checkpoint(self.kind) if str(checkpoint) == "demo" else checkpoint
        self.ckpt = checkpoints.load_checkpoint(path, self.kind)
        self.checkpoint = str(path)
        self.device = resolve_device(device)
        self.backbone = backbone_from_spec(self.ckpt["backbone"], self.device)
        self.names = list(self.ckpt["names"])
        self.index, self.many = select_outputs(self.names, which, what)
        self.n_outputs = len(self.index)

    def _shape(self, r: torch.Tensor) -> torch.Tensor:
        r = r[:, self.index].float()
        return r if self.many else r[:, 0]

    def describe(self) -> str:
        return f"{self.kind}:{Path(self.checkpoint).name}[{','.join(self.names[i] for i in self.index)}]"


class V4EnsembleTarget(_FittedTarget):
    """Predicted response(s) of fitted V4 model neuron(s): the ensemble mean."""

    kind = "v4_ensemble"

    def __init__(self, checkpoint=None, neuron=0, device="auto"):
        self._setup(checkpoint, neuron, "neuron", device)
        a = self.ckpt["member_args"]
        members = [EnsembleMember(**a) for _ in range(int(self.ckpt["n_members"]))]
        self.model = EnsembleModel(members, np.zeros(a["n_out"]), np.ones(a["n_out"]))
        self.model.load_state_dict(self.ckpt["state"])
        self.model.eval().to(self.device)
        for p in self.model.parameters():  # gradients go to the images only
            p.requires_grad_(False)

    def predict_all(self, images) -> torch.Tensor:
        return self.model(self.backbone(images))

    def evaluate(self, images):
        return self._shape(self.predict_all(images))


class EncoderTarget(_FittedTarget):
    """Predicted response(s) of fMRI ROI(s) / EEG channel(s) / neurons from an encoder (any ``model.readout``)."""

    kind = "encoder"

    def __init__(self, checkpoint=None, roi=None, device="auto"):
        self._setup(checkpoint, roi, "roi/channel", device)
        self.readout = Readout.from_checkpoint(self.ckpt).to(self.device)
        for p in self.readout.parameters():  # gradients go to the images only
            p.requires_grad_(False)

    def predict_all(self, images) -> torch.Tensor:
        return self.readout(self.backbone(images))

    def evaluate(self, images):
        return self._shape(self.predict_all(images))
