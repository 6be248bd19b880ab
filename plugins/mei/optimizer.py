"""``optimizer=mei``: gradient MEIs (most exciting inputs) on any differentiable target.

The optimizer owns its image parametrization (:mod:`.parametrization`: a decorrelated-colour, 1/f
Fourier spectrum by default, or pixels). The engine still scores every image: the optimizer works
with ``generator=pixels``, whose codes *are* images, and passes the images it builds as codes to the
run's :class:`~stimopt.differentiable.DifferentiableObjective`. So each image the target sees (the
jittered, scaled and rotated one of each Adam step, and the clean MEI each ask returns) is stored
in the run with its response, and counted against the budget. Set ``generator.resolution`` to
``generator.size`` for MEIs at full resolution (the pixel generator upsamples from ``resolution``);
``experiment=mei`` does this.

One Adam step (a white-box pass over the batch of ``batch_size`` images):

    x   = constrain(param.images())               # norm / contrast constraints
    x   = blur_gradient(x, sigma)                 # preconditioning (sigma decays linearly to 0)
    s   = objective(robust(x))                    # jitter/scale/rotate, then the engine's pass
    loss = -sum(s) + diversity * mean|s| * similarity(x)

``s`` carries the run's direction (the objective applies it, once), so ``direction=min`` finds
least exciting inputs with the same code. Each ask takes up to ``steps_per_ask`` steps (fewer when
the budget has no room for more), then returns the clean images, which the engine scores too.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

import stimopt
from stimopt.errors import StimoptError
from stimopt_plugins.mei.parametrization import ImageParam
from stimopt_plugins.mei.transforms import blur_gradient, constrain, robust, similarity


class CodeParam:
    """Codes mode: the generator's own codes are the parameters."""

    def __init__(self, codes: torch.Tensor):
        self.tensor = codes.clone().requires_grad_(True)


class MEI(stimopt.Optimizer):
    """Adam on a decorrelated image parametrization with transformation robustness; see the module doc."""

    white_box = True

    def __init__(self, param: str = "fourier", decay: float = 1.0, init_std: float = 0.01, lr: float = 0.03,
                 steps_per_ask: int = 32, jitter: float = 8.0, scale: float = 0.1, rotate: float = 10.0,
                 blur_sigma: float = 0.0, norm: float | None = None, contrast: float | None = None,
                 diversity: float = 0.0, opponent: float = 0.4):
        for key, value in (("lr", lr), ("init_std", init_std), ("steps_per_ask", steps_per_ask)):
            if not value > 0:
                raise StimoptError(f"optimizer.{key} must be positive, got {value}")
        for key, value in (("opponent", opponent), ("jitter", jitter), ("scale", scale), ("rotate", rotate),
                           ("blur_sigma", blur_sigma), ("diversity", diversity)):
            if not value >= 0:
                raise StimoptError(f"optimizer.{key} must be >= 0, got {value}")
        for key, value in (("norm", norm), ("contrast", contrast)):
            if value is not None and not value > 0:
                raise StimoptError(f"optimizer.{key} must be positive or null (no constraint), got {value}")
        if scale >= 1:
            raise StimoptError(f"optimizer.scale is the zoom range 1 +- scale and must be < 1, got {scale}")
        self.param_kind, self.decay, self.init_std, self.lr = str(param), float(decay), float(init_std), float(lr)
        self.steps_per_ask = int(steps_per_ask)
        self.jitter, self.scale, self.rotate = float(jitter), float(scale), float(rotate)
        self.blur_sigma, self.norm, self.contrast, self.diversity = float(blur_sigma), norm, contrast, float(diversity)
        self.opponent = float(opponent)
        self.objective = None
        ImageParam(self.param_kind, 2, 1, self.decay, self.init_std, torch.Generator())  # checks param

    def setup(self, space, *, seed, budget, batch_size):
        super().setup(space, seed=seed, budget=budget, batch_size=batch_size)
        self.rng = torch.Generator().manual_seed(int(seed))
        # gradient passes the budget allows: the blur decays to 0 over them
        self.total_steps = max(1, round(budget / batch_size * self.steps_per_ask / (self.steps_per_ask + 1)))
        self.n_steps = 0
        self.first = self.last = None
        self.mode = self.param = self.adam = None

    def bind(self, objective) -> None:
        """The run's differentiable objective. Its generator decides the mode: ``pixels`` (codes are
        images): the MEI's own parametrization; any other: Adam on the generator's codes."""
        self.objective = objective
        gen = getattr(objective, "generator", None)
        side = int(round((self.space.dim / 3) ** 0.5))
        carrier = (gen is not None and hasattr(gen, "codes_from_images") and getattr(gen, "resolution", None) == side
                   and 3 * side * side == self.space.dim)
        self.mode = "image" if carrier else "codes"
        if self.mode == "image":
            self.resolution = side
            self.param = ImageParam(self.param_kind, side, self.batch_size, self.decay, self.init_std, self.rng, self.opponent)
        else:
            self.resolution = None
            init = torch.randn(self.batch_size, self.space.dim, generator=self.rng) * self.space.init_std + self.space.init_mean
            self.param = CodeParam(torch.as_tensor(self.space.clip(init.numpy()), dtype=torch.float32))
            if gen is not None:
                print(f"stimopt: note: optimizer=mei on {gen.describe()} ascends its codes (the generator is the image "
                      "parametrization: no transforms, constraints or gradient blur); experiment=mei uses the MEI's own",
                      file=sys.stderr)
        self.adam = torch.optim.Adam([self.param.tensor], lr=self.lr)

    def _images(self) -> torch.Tensor:
        return constrain(self.param.images(), self.norm, self.contrast)

    def _sigma(self) -> float:
        return self.blur_sigma * max(0.0, 1.0 - self.n_steps / self.total_steps)

    def _pass(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [B], what the diversity term compares) of one gradient pass through the engine."""
        info = [{"mei_step": self.n_steps, "mei_image": i} for i in range(b)]
        if self.mode == "codes":
            codes = self.param.tensor
            return self.objective(codes, info), codes
        x = blur_gradient(self._images(), self._sigma())
        seen = robust(x, self.rng, self.jitter, self.scale, self.rotate)
        return self.objective(seen.reshape(b, -1), info), x

    def ask(self, n):
        if self.objective is None or self.param is None:
            raise StimoptError("optimizer=mei is a white-box optimizer: run it through the engine, which binds the run's objective")
        b = self.batch_size
        bounded = self.space.low is not None or self.space.high is not None
        with torch.enable_grad():
            for _ in range(self.steps_per_ask):
                if self.objective.remaining < b:
                    break  # keep the rest of the budget for the images this ask returns
                score, compared = self._pass(b)
                score = score.float().cpu()
                ok = torch.isfinite(score)  # a missing response (on_bad_response=skip) gives no gradient
                loss = -score[ok].sum()
                if self.diversity > 0 and b > 1:
                    weight = score[ok].abs().mean().detach() if ok.any() else torch.tensor(1.0)
                    loss = loss + self.diversity * weight * b * similarity(compared)
                self.adam.zero_grad()
                loss.backward()
                self.adam.step()
                if self.mode == "codes" and bounded:
                    with torch.no_grad():
                        self.param.tensor.copy_(torch.as_tensor(self.space.clip(self.param.tensor.numpy())))
                self.n_steps += 1
                self.last = {"step": self.n_steps, "score": float(score.detach()[ok].mean()) if ok.any() else None}
                self.first = self.first or self.last
        with torch.no_grad():
            out = self.param.tensor if self.mode == "codes" else self._images()
            return out[:n].reshape(n, -1).numpy().astype(np.float32).copy()

    def tell(self, codes, scores):
        pass

    def report(self):
        return {"mode": self.mode, "param": self.param_kind if self.mode == "image" else "codes", "adam_steps": self.n_steps, "resolution": self.resolution,
                "first": self.first, "last": self.last}

    def state_dict(self):
        return {"mode": self.mode, "param": self.param.tensor.detach().clone(), "adam": self.adam.state_dict(), "n_steps": self.n_steps,
                "rng": self.rng.get_state(), "first": self.first, "last": self.last}

    def load_state_dict(self, state):
        if self.param is None or state.get("mode") != self.mode:
            raise StimoptError(f"optimizer=mei checkpoint is of mode {state.get('mode')}, this run's is {self.mode}: "
                               "resume with the generator the run was started with")
        with torch.no_grad():
            self.param.tensor.copy_(torch.as_tensor(state["param"]))
        self.adam.load_state_dict(state["adam"])
        self.n_steps = int(state["n_steps"])
        self.rng.set_state(torch.as_tensor(state["rng"], dtype=torch.uint8))
        self.first, self.last = state["first"], state["last"]
