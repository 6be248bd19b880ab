"""Landscape edits over a fixed schedule: ``prior_shift`` (the Vis-Lens latent modification) and
``brainactiv`` (the BrainACTIV baseline on CLIP embeddings).

Both move reference codes toward where the landscape puts high responses (``direction=max``) or
low ones (``min``): mu_pos or mu_neg, +w or -w. That choice is the algorithm's, stated in
response terms, so they read the run's direction once from the objective handle the engine binds
(``objective.direction``); their scores already carry the direction and are never re-signed. The
``direction`` option (``auto`` by default) can force ``max``/``min``, e.g. outside the engine.
"""
from __future__ import annotations

import numpy as np

import stimopt
from stimopt.errors import StimoptError
from stimopt_plugins.vislens.landscape import Landscape, LatentSpace

DIRECTIONS = ("auto", "max", "min")


class _ScheduleOptimizer(stimopt.Optimizer):
    """Shared by prior_shift and brainactiv: a fixed schedule of (step, reference) edits.

    The schedule is step-major: every reference at the first step, then every reference at the
    next, ...; past its end it starts again (a deterministic optimizer: repeats are repeats).
    """

    accepts = (LatentSpace,)
    step_name = "alpha"

    def __init__(self, direction: str = "auto"):
        if direction is not None and direction not in DIRECTIONS:
            raise StimoptError(f"optimizer.direction must be auto, max or min, got '{direction}'")
        self.toward = None if direction in (None, "auto") else direction  # max: toward high responses

    def bind(self, objective) -> None:
        if self.toward is None:
            self.toward = objective.direction

    def _landscape(self, space) -> Landscape:
        land = getattr(space, "landscape", None)
        if land is None:
            raise StimoptError(f"optimizer {type(self).__name__} needs a Vis-Lens generator (vislens or image_vae): its code space carries the landscape")
        return land

    def setup(self, space, *, seed, budget, batch_size):
        super().setup(space, seed=seed, budget=budget, batch_size=batch_size)
        self.land = self._landscape(space)
        self.n_refs = len(self.land.reference_codes) if self.n_references is None else min(int(self.n_references), len(self.land.reference_codes))
        self.pos = 0
        k = len(self.steps)
        self.sums, self.counts = np.zeros(k), np.zeros(k)
        self.best_score, self.best = -np.inf, None

    def _schedule(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        idx = (self.pos + np.arange(n)) % (len(self.steps) * self.n_refs)
        self.pos += n
        self._last = idx // self.n_refs
        return np.asarray(self.steps, dtype=np.float32)[idx // self.n_refs], idx % self.n_refs

    def ask(self, n):
        if self.toward is None:
            raise StimoptError(f"{type(self).__name__} does not know the direction: run it through the engine (which binds the objective) or set optimizer.direction=max|min")
        step, ref = self._schedule(n)
        return self._edit(step, self.land.reference_codes[ref]).astype(np.float32)

    def ask_info(self):
        return [{self.step_name: float(self.steps[i])} for i in self._last]

    def tell(self, codes, scores):
        scores = np.asarray(scores, dtype=np.float64)
        ok = np.isfinite(scores)
        np.add.at(self.sums, self._last[ok], scores[ok])
        np.add.at(self.counts, self._last[ok], 1)
        if ok.any() and scores[ok].max() > self.best_score:
            i = int(np.flatnonzero(ok)[np.argmax(scores[ok])])
            self.best_score, self.best = float(scores[i]), {self.step_name: float(self.steps[self._last[i]])}

    def report(self):
        mean = {f"{s:g}": (self.sums[i] / self.counts[i] if self.counts[i] else None) for i, s in enumerate(self.steps)}
        return {"direction": self.toward, f"mean_score_by_{self.step_name}": mean, "best": self.best,
                "references": int(self.n_refs)}

    def state_dict(self):
        return {"pos": self.pos, "sums": self.sums.copy(), "counts": self.counts.copy(), "best_score": self.best_score,
                "best": self.best, "toward": self.toward}

    def load_state_dict(self, state):
        self.pos, self.sums, self.counts = state["pos"], state["sums"].copy(), state["counts"].copy()
        self.best_score, self.best, self.toward = state["best_score"], state["best"], state["toward"]


def slerp(alpha: np.ndarray, z: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Spherical interpolation of rows z [B, d] toward mu [d] by alpha [B] (Algorithm 2's slerp):
    the angle moves by alpha of the angle between them and the norm goes linearly from |z| to
    |mu|; alpha 0 is z, 1 is mu. Rows (nearly) parallel to mu fall back to linear interpolation."""
    a = alpha[:, None].astype(np.float64)
    nz = np.linalg.norm(z, axis=1, keepdims=True)
    nm = float(np.linalg.norm(mu))
    if nm == 0:
        return z + a * (mu[None] - z)
    u, v = z / np.maximum(nz, 1e-12), mu[None] / nm
    omega = np.arccos(np.clip((u * v).sum(1, keepdims=True), -1.0, 1.0))
    so = np.sin(omega)
    lin = so < 1e-6
    so = np.where(lin, 1.0, so)
    d = np.where(lin, (1 - a) * u + a * v, (np.sin((1 - a) * omega) * u + np.sin(a * omega) * v) / so)
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    return d * ((1 - a) * nz + a * nm)


class PriorShift(_ScheduleOptimizer):
    """The paper's latent modification (Algorithm 2): move the prior dims of each reference code
    toward mu_dir (mu_pos for max, mu_neg for min) by alpha, spherically (``slerp``, the paper's
    rule and the default) or linearly (``linear``: z + alpha (mu_dir - z)).

    A negative alpha moves by |alpha| toward the *other* prior, so a sweep over -1..1 runs from
    the opposite prior through the reference (alpha 0, the report's baseline) to mu_dir, as in
    the paper's Fig. 3B. Only the dimensions that carry the activation prior move.
    """

    def __init__(self, alphas=(0.0, 0.25, 0.5, 0.75, 1.0), n_references: int | None = None, direction: str = "auto",
                 interpolation: str = "slerp"):
        super().__init__(direction)
        self.steps = [float(a) for a in alphas]
        if not self.steps:
            raise StimoptError("optimizer.alphas must list at least one interpolation weight")
        if interpolation not in ("slerp", "linear"):
            raise StimoptError(f"optimizer.interpolation must be slerp or linear, got '{interpolation}'")
        self.n_references, self.interpolation = n_references, interpolation

    def setup(self, space, *, seed, budget, batch_size):
        super().setup(space, seed=seed, budget=budget, batch_size=batch_size)
        if self.land.code != "latent":
            raise StimoptError("prior_shift edits VAE latents: use generator.code=latent (brainactiv is the CLIP-space baseline)")
        if self.land.prior != "activation":
            raise StimoptError("prior_shift needs a landscape fit with the activation prior; this checkpoint was fit with prior=standard (which has no mu_pos/mu_neg)")

    def _edit(self, alpha, z):
        m = self.land.mask > 0
        toward, away = (self.land.mu_pos, self.land.mu_neg) if self.toward == "max" else (self.land.mu_neg, self.land.mu_pos)
        out = np.array(z, dtype=np.float64)
        for sign, mu in ((alpha >= 0, toward), (alpha < 0, away)):
            if sign.any():
                a, zz = np.abs(alpha[sign]).astype(np.float64), out[sign][:, m]
                sub = slerp(a, zz, mu[m]) if self.interpolation == "slerp" else zz + a[:, None] * (mu[m][None] - zz)
                rows = out[sign]
                rows[:, m] = sub
                out[sign] = rows
        return out


class BrainActiv(_ScheduleOptimizer):
    """The BrainACTIV baseline: shift the L2-normalized reference CLIP embedding by step * (+/- w/||w||),
    renormalize, and restore the reference's norm (the IP-Adapter's input scale). On an image fit
    the same rule acts on VAE latent codes, w being the ridge over L2-normalized latent means (the
    paper's baseline has no landscape: use it with a ``model.prior=standard`` fit)."""

    step_name = "step"

    def __init__(self, steps=(0.0, 0.25, 0.5, 0.75, 1.0), n_references: int | None = None, direction: str = "auto"):
        super().__init__(direction)
        self.steps = [float(s) for s in steps]
        if not self.steps:
            raise StimoptError("optimizer.steps must list at least one step size")
        self.n_references = n_references

    def setup(self, space, *, seed, budget, batch_size):
        super().setup(space, seed=seed, budget=budget, batch_size=batch_size)
        if self.land.brainactiv_w is None or len(self.land.brainactiv_w) != space.dim:
            raise StimoptError("brainactiv shifts codes along the checkpoint's ridge direction: use generator=vislens generator.code=clip "
                               "(a model.kind=clip fit) or generator=image_vae (a model.kind=image fit, whose ridge is over latent means)")

    def _edit(self, step, e):
        norm = np.linalg.norm(e, axis=1, keepdims=True)
        w = self.land.brainactiv_w if self.toward == "max" else -self.land.brainactiv_w
        u = e / norm + step[:, None] * w[None]
        return u / np.linalg.norm(u, axis=1, keepdims=True) * norm
