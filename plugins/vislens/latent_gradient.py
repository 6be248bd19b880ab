"""``latent_gradient``: Vis-Lens Algorithm 3, white-box gradient ascent on codes.

Adam on codes z with loss = -score(z) + w_kld * KLD(z). The scores come from the run's
:class:`stimopt.differentiable.DifferentiableObjective` (bound by the engine): generator, target
and the run's one objective in torch, direction applied there. Every Adam step's forward pass is
an evaluation the engine stores and counts against the budget, so a run of budget B shows B
stimuli in all, gradient passes included.
"""
from __future__ import annotations

import numpy as np
import torch

import stimopt
from stimopt.errors import StimoptError
from stimopt_plugins.vislens.vae import point_kld

KLDS = ("auto", "activation", "standard", "none")


class LatentGradient(stimopt.Optimizer):
    """Algorithm 3: Adam on codes z with loss = -score(z) + w_kld * KLD(z).

    ``kld``: ``auto`` (the default: ``activation`` on a Vis-Lens latent landscape, else ``none``),
    ``activation`` (N(mu_dir, sigma_prior^2) on the prior dims, mu_dir = mu_pos for max,
    mu_neg for min; N(0, 1) elsewhere), ``standard`` (N(0, I): the standard-VAE baseline), or
    ``none`` (plain white-box gradient ascent, e.g. generator=fourier). The KLD of a point code
    is the mean term only (see ``point_kld``). Each ask takes up to ``steps_per_ask`` Adam steps
    on a population of ``batch_size`` codes (started from the landscape's reference codes, else
    from the space's init distribution), each one scored pass through the engine, and returns
    the population; the engine then scores it too. Near the end of the budget it takes only the
    steps the budget still allows.
    """

    white_box = True

    def __init__(self, lr: float = 0.1, w_kld: float = 1e-3, sigma_prior: float = 0.1, kld: str = "auto",
                 steps_per_ask: int = 10, init: str = "references"):
        if kld not in KLDS:
            raise StimoptError(f"optimizer.kld must be auto, activation, standard or none, got '{kld}'")
        if init not in ("references", "random"):
            raise StimoptError(f"optimizer.init must be references or random, got '{init}'")
        self.lr, self.w_kld, self.sigma_prior, self.kld_option = float(lr), float(w_kld), float(sigma_prior), kld
        self.steps_per_ask, self.init = int(steps_per_ask), init
        self.objective = None

    def setup(self, space, *, seed, budget, batch_size):
        super().setup(space, seed=seed, budget=budget, batch_size=batch_size)
        land = getattr(space, "landscape", None)
        has_prior = land is not None and land.mu_pos is not None
        self.kld = ("activation" if has_prior else "none") if self.kld_option == "auto" else self.kld_option
        if self.kld == "activation" and not has_prior:
            raise StimoptError("latent_gradient kld=activation needs a Vis-Lens latent landscape (generator=image_vae); use optimizer.kld=standard or none here")
        self.rng = np.random.default_rng(seed)
        self.z = None
        self.adam_state = None
        self.n_steps = 0
        self.first = self.last = None  # {step, score, kld} of the first and the latest Adam step

    def bind(self, objective) -> None:
        """The run's differentiable objective (the only way this optimizer scores codes)."""
        self.objective = objective

    def _prior(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, sigma) of the KLD's prior; the activation prior's mean follows the run's direction."""
        if self.kld != "activation":
            return torch.zeros(self.space.dim), torch.ones(self.space.dim)
        land = self.space.landscape
        mu = land.mu_pos if self.objective.direction == "max" else land.mu_neg
        mask = torch.as_tensor(land.mask, dtype=torch.float32)
        return torch.as_tensor(mu, dtype=torch.float32), self.sigma_prior * mask + (1 - mask)

    def _start(self, n: int) -> np.ndarray:
        land = getattr(self.space, "landscape", None)
        if self.init == "references" and land is not None:
            refs = land.reference_codes
            return refs[np.arange(n) % len(refs)].astype(np.float32)
        return self.space.clip(self.rng.normal(self.space.init_mean, self.space.init_std, (n, self.space.dim))).astype(np.float32)

    def ask(self, n):
        if self.objective is None:
            raise StimoptError("latent_gradient is a white-box optimizer: run it through the engine, which binds the run's objective")
        if self.z is None:
            self.z = torch.from_numpy(self._start(self.batch_size))
        z = self.z.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=self.lr)
        if self.adam_state is not None:
            opt.load_state_dict(self.adam_state)
        bounded = self.space.low is not None or self.space.high is not None
        prior_mu, prior_sigma = self._prior()
        with torch.enable_grad():
            for _ in range(self.steps_per_ask):
                if self.objective.remaining < len(z):
                    break  # keep the rest of the budget for the codes this ask returns
                score = self.objective(z, [{"adam_step": self.n_steps}] * len(z)).float().cpu()
                kld = point_kld(z, prior_mu, prior_sigma) if self.kld != "none" else torch.zeros(len(z))
                ok = torch.isfinite(score)  # a missing response (on_bad_response=skip) gives no gradient
                loss = -score[ok].sum() + self.w_kld * kld.sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                if bounded:
                    with torch.no_grad():
                        z.copy_(torch.as_tensor(self.space.clip(z.detach().numpy())))
                self.n_steps += 1
                # the state after each step, so a checkpoint taken at the next pass continues from it
                self.z, self.adam_state = z.detach().clone(), opt.state_dict()
                self.last = {"step": self.n_steps, "score": float(score.detach()[ok].mean()) if ok.any() else None,
                             "kld": float(kld.detach().mean())}
                self.first = self.first or self.last
        return self.z[:n].numpy().copy()

    def tell(self, codes, scores):
        pass

    def report(self):
        return {"kld": self.kld, "w_kld": self.w_kld, "adam_steps": self.n_steps, "first": self.first, "last": self.last}

    def state_dict(self):
        return {"z": None if self.z is None else self.z.clone(), "adam": self.adam_state, "n_steps": self.n_steps,
                "rng": self.rng.bit_generator.state, "first": self.first, "last": self.last}

    def load_state_dict(self, state):
        self.z, self.adam_state, self.n_steps = state["z"], state["adam"], state["n_steps"]
        self.rng.bit_generator.state = state["rng"]
        self.first, self.last = state["first"], state["last"]
