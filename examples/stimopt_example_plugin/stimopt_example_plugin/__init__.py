"""An example third-party stimopt plugin.

It registers a target (``edge_neuron``: a model neuron tuned to oriented luminance edges in the
centre of the image), a generator (``gabor``: a parametric Gabor patch, 7 numbers in [0, 1] per
patch), an optimizer (``hillclimb``: (1+lambda) hill climbing with step-size adaptation) and its
folder of Hydra group configs (``pkg://stimopt_example_plugin.conf``, as on Hydra's search path),
so ``stimopt target=edge_neuron generator=gabor optimizer=hillclimb`` works without touching stimopt.
"""
import numpy as np
import torch
import torch.nn.functional as F

import stimopt


class EdgeNeuron(stimopt.Target):
    """Rectified response of an oriented Gabor filter centred in the image."""

    differentiable = True  # computed in torch, so gradient optimizers (latent_gradient) fit it too

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


class GaborGenerator(stimopt.Generator):
    """Sum of ``n_gabors`` Gabor patches on grey. Per patch, 7 numbers in [0, 1]: orientation (0..180
    deg), wavelength (5..50 % of the image), phase, envelope width (5..50 %), centre x, centre y, contrast."""

    PER_PATCH = 7

    def __init__(self, size: int = 64, n_gabors: int = 1, device: str = "cpu"):
        self.size, self.n_gabors = int(size), int(n_gabors)
        axis = torch.linspace(-0.5, 0.5, self.size)
        self.y, self.x = torch.meshgrid(axis, axis, indexing="ij")
        self._space = stimopt.ContinuousSpace(dim=self.PER_PATCH * self.n_gabors, low=0.0, high=1.0,
                                              init_mean=0.5, init_std=0.2)

    @property
    def space(self):
        return self._space

    def generate(self, codes):
        c = torch.as_tensor(np.asarray(codes, np.float32)).clamp(0, 1).view(len(codes), self.n_gabors, self.PER_PATCH, 1, 1)
        theta, lam, phase, sigma = c[:, :, 0] * np.pi, 0.05 + 0.45 * c[:, :, 1], c[:, :, 2] * 2 * np.pi, 0.05 + 0.45 * c[:, :, 3]
        dx, dy = self.x - (c[:, :, 4] - 0.5), self.y - (c[:, :, 5] - 0.5)
        u = dx * torch.cos(theta) + dy * torch.sin(theta)
        patch = c[:, :, 6] * torch.exp(-(dx**2 + dy**2) / (2 * sigma**2)) * torch.cos(2 * np.pi * u / lam + phase)
        gray = (0.5 + 0.5 * patch.sum(dim=1)).clamp(0, 1)
        return gray.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()

    def describe(self):
        return f"gabor({self.n_gabors} patch{'es' if self.n_gabors > 1 else ''}, {self.size} px)"


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
def register_generators(register):
    register("gabor", GaborGenerator)


@stimopt.hookimpl
def register_optimizers(register):
    register("hillclimb", HillClimb)


@stimopt.hookimpl
def register_config_dirs(register):
    register("pkg://stimopt_example_plugin.conf")  # Hydra's search-path URI; a folder path works too
