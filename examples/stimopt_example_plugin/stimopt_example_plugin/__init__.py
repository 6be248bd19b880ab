"""An example third-party stimopt plugin.

It registers a target (``edge_neuron``: a model neuron tuned to oriented luminance edges in the
centre of the image), an optimizer (``hillclimb``: (1+lambda) hill climbing with step-size
adaptation) and a folder of Hydra group configs, so ``stimopt target=edge_neuron optimizer=hillclimb``
works without touching stimopt.
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import stimopt


class EdgeNeuron(stimopt.Target):
    """Rectified response of an oriented Gabor filter centred in the image."""

    def __init__(self, orientation_deg: float = 45.0, wavelength: float = 0.25, device: str = "cpu"):
        self.orientation_deg = orientation_deg
        size = 33
        y, x = torch.meshgrid(torch.linspace(-0.5, 0.5, size), torch.linspace(-0.5, 0.5, size), indexing="ij")
        t = np.deg2rad(orientation_deg)
        u = x * np.cos(t) + y * np.sin(t)
        gabor = torch.exp(-(x**2 + y**2) / (2 * 0.15**2)) * torch.sin(2 * np.pi * u / wavelength)
        self.kernel = (gabor - gabor.mean()).view(1, 1, size, size)

    def evaluate(self, images):
        gray = images.float().mean(dim=1, keepdim=True)
        gray = F.interpolate(gray, size=(33, 33), mode="bilinear", antialias=True, align_corners=False)
        return F.relu((gray * self.kernel).sum(dim=(1, 2, 3)))

    def describe(self):
        return f"edge_neuron({self.orientation_deg} deg)"


class HillClimb(stimopt.Optimizer):
    """(1+lambda) hill climbing: mutate the best code so far; widen the step on success, shrink on failure."""

    accepts = (stimopt.ContinuousSpace,)

    def __init__(self, step: float = 0.3):
        self.step0 = step

    def setup(self, space, *, seed, budget, batch_size):
        super().setup(space, seed=seed, budget=budget, batch_size=batch_size)
        self.rng = np.random.default_rng(seed)
        self.best = np.full(space.dim, space.init_mean, dtype=np.float64)
        self.best_score = -np.inf
        self.step = self.step0 * space.init_std

    def ask(self, n):
        codes = self.best + self.step * self.rng.standard_normal((n, self.space.dim))
        return self.space.clip(codes).astype(np.float32)

    def tell(self, codes, scores):
        ok = np.isfinite(scores)
        if ok.any() and scores[ok].max() > self.best_score:
            i = np.flatnonzero(ok)[np.argmax(scores[ok])]
            self.best, self.best_score = codes[i].astype(np.float64), float(scores[i])
            self.step *= 1.2
        else:
            self.step *= 0.85

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state, "best": self.best, "best_score": self.best_score, "step": self.step}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.best, self.best_score, self.step = state["best"], state["best_score"], state["step"]


@stimopt.hookimpl
def register_targets(register):
    register("edge_neuron", EdgeNeuron)


@stimopt.hookimpl
def register_optimizers(register):
    register("hillclimb", HillClimb)


@stimopt.hookimpl
def register_config_dirs(register):
    register(str(Path(__file__).parent / "conf"))
