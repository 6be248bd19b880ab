"""A decoder-side contrast term for image landscapes: stimopt's addition to Vis-Lens (issue 19), not
the paper's method, and off unless asked for (``model.contrast.weight`` > 0).

Why: the latent modification is read on *decoded* images. With the activation prior on a few
dims and N(0, 1) on the rest, the content dims already describe the image, so the decoder may
ignore the prior dims: even after decoded rounds, where codes whose decoded images respond more do
sit toward mu_pos (correlation 0.44-0.72 on Lite0 units after 3 rounds), setting a code's prior dims to mu_pos or
mu_neg hardly changes the decoded image's response, and its sign is close to chance. Correlation
along the axis is not a causal effect of the axis.

What: after Algorithm 1 (and any decoded rounds), training goes on with the same VAE loss (pixel
MSE, perceptual term, KLD to the activation prior) plus

    weight * mean[ softplus(-(s(dec(z+)) - s(dec(z))) / sd) + softplus(-(s(dec(z)) - s(dec(z-))) / sd) ]

where z is an item's latent mean, z+ / z- the same code with its prior dims set to mu_pos / mu_neg
(exactly the latent modification at alpha 1), s the target's response and sd that of the training
responses; s(dec(z)) is held fixed (the term moves the edits, not the reconstruction). The VAE
stays an activation-regularized VAE: the prior, the edit rule and the measure are unchanged; this
term only asks the decoder to render the prior axis as the unit reads it.

Every image scored for the term reaches the target through the engine: one white-box run (the live
decoder as generator, stimopt.differentiable's objective for the passes), recorded in
``run_dir/evaluations.sqlite`` (each row's code is a latent; the decoder that rendered it is the one
of that training step, so a stored code does not reproduce its image after training).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import stimopt
from stimopt.errors import StimoptError


class _LiveDecoder(stimopt.Generator):
    """The VAE being trained as a generator: code z -> decode(z), upsampled to ``size`` (the target's input)."""

    def __init__(self, model, size: int):
        self.model, self.size = model, int(size)
        self._space = stimopt.ContinuousSpace(dim=model.latent_dim)

    @property
    def space(self):
        return self._space

    def generate_torch(self, z: torch.Tensor) -> torch.Tensor:
        img = self.model.decode(z)
        if img.shape[-1] != self.size:
            img = F.interpolate(img, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return img.clamp(0, 1)

    def generate(self, codes):
        with torch.no_grad():
            return self.generate_torch(torch.as_tensor(np.asarray(codes), dtype=torch.float32))

    def describe(self) -> str:
        return f"vislens decoder in training ({self.model.latent_dim}-d)"


class _ContrastTrainer(stimopt.Optimizer):
    """Trains the VAE inside one ask (every target pass through the bound objective); returns one code."""

    white_box = True

    def __init__(self, model, x, r, spec, *, weight, epochs, batch_size, lr, w_recon, w_kld, grad_clip, seed,
                 perceptual=None, w_perceptual=0.0, items_per_epoch=None, log=None):
        self.items_per_epoch = len(x) if items_per_epoch is None else min(int(items_per_epoch), len(x))
        self.model, self.x, self.r, self.spec = model, x, torch.as_tensor(np.asarray(r), dtype=torch.float32), spec
        self.weight, self.epochs, self.batch_size_train, self.lr = float(weight), int(epochs), int(batch_size), float(lr)
        self.w_recon, self.w_kld, self.grad_clip, self.seed = float(w_recon), float(w_kld), float(grad_clip), int(seed)
        self.perceptual, self.w_perceptual, self.log = perceptual, float(w_perceptual), log
        self.sd = float(np.std(np.asarray(r, dtype=np.float64))) or 1.0
        self.objective, self.history, self.trained = None, [], False

    def bind(self, objective) -> None:
        self.objective = objective

    def ask(self, n):
        from tqdm import tqdm

        from stimopt_plugins.vislens.vae import vae_loss

        if self.objective is None:
            raise StimoptError("the contrast term scores decoded images through the engine: run it as a stimopt Run")
        if not self.trained:
            self.trained = True
            m, model = self.spec.mask > 0, self.model
            mu_pos, mu_neg = self.spec.mu_pos[m], self.spec.mu_neg[m]
            opt = torch.optim.Adam(model.parameters(), lr=self.lr)
            gen = torch.Generator().manual_seed(self.seed)
            model.train()
            with torch.enable_grad():
                for epoch in tqdm(range(self.epochs), desc="vislens contrast term", leave=False):
                    perm = torch.randperm(len(self.x), generator=gen)[: self.items_per_epoch]
                    sums, seen = np.zeros(4), 0
                    for i in range(0, len(perm), self.batch_size_train):
                        idx = perm[i:i + self.batch_size_train]
                        if self.objective.remaining < 3 * len(idx):
                            break
                        xb = self.x[idx].to(next(model.parameters()).device)
                        loss, mse, kld = vae_loss(model, xb, self.r[idx], self.spec, self.w_recon, self.w_kld,
                                                  perceptual=self.perceptual, w_perceptual=self.w_perceptual)
                        z = model.encode(xb)[0]
                        zp, zn = z.clone(), z.clone()
                        zp[:, m], zn[:, m] = mu_pos.to(z), mu_neg.to(z)
                        s = self.objective(torch.cat([z, zp, zn]), [{"contrast": k} for k in ("recon", "pos", "neg") for _ in idx])
                        b = len(idx)
                        seen += b
                        s_rec, s_pos, s_neg = s[:b].detach(), s[b:2 * b], s[2 * b:]
                        con = (F.softplus(-(s_pos - s_rec) / self.sd) + F.softplus(-(s_rec - s_neg) / self.sd)).mean()
                        total = loss + self.weight * con
                        opt.zero_grad()
                        total.backward()
                        if self.grad_clip:
                            nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
                        opt.step()
                        d_pos, d_neg = (s_pos.detach() - s_rec).mean().item() / self.sd, (s_rec - s_neg.detach()).mean().item() / self.sd
                        sums += np.array([loss.item(), con.item(), d_pos, d_neg]) * b
                    rec = dict(zip(("loss", "contrast", "pos_minus_recon_sd", "recon_minus_neg_sd"), (sums / max(seen, 1)).tolist()), epoch=epoch)
                    self.history.append(rec)
                    if self.log:
                        self.log(rec)
            model.eval()
        return np.zeros((n, self.model.latent_dim), dtype=np.float32)

    def tell(self, codes, scores):
        pass

    def report(self):
        return {"contrast_epochs": self.history}

    def state_dict(self):
        return {"trained": self.trained}

    def load_state_dict(self, state):
        self.trained = state["trained"]


def train_contrast(model, x: torch.Tensor, r: np.ndarray, spec, target, run_dir, *, weight: float = 1.0, epochs: int = 5,
                   size: int | None = None, batch_size: int = 64, lr: float = 1e-3, w_recon: float = 1.0, w_kld: float = 1.0,
                   grad_clip: float = 1.0, seed: int = 0, perceptual=None, w_perceptual: float = 0.0, items_per_epoch: int | None = None,
                   log=None) -> list[dict]:
    """The contrast phase (see the module doc): ``epochs`` more epochs of the VAE loss + ``weight`` x
    the contrast term, the target's passes through one engine run recorded in ``run_dir``. ``size``:
    px the target reads (decoded images are upsampled to it); ``items_per_epoch``: a random subset
    of the training items per epoch (null = all; three target passes per item). Returns per-epoch records."""
    from stimopt.engine import Run
    from stimopt.objective import Objective
    from stimopt.store import RunStore

    if spec.prior != "activation":
        raise StimoptError("the contrast term needs the activation prior (it contrasts mu_pos with mu_neg); set model.contrast.weight=0 for a standard fit")
    if getattr(model, "kind", None) != "image":
        raise StimoptError("the contrast term decodes images: it needs model.kind=image")
    if not getattr(target, "differentiable", False):
        raise StimoptError(f"the contrast term needs a differentiable target (a torch model); {target.describe()} is not one: set model.contrast.weight=0")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    size = int(size or getattr(target, "input_size", model.image_size))
    per = len(x) if items_per_epoch is None else min(int(items_per_epoch), len(x))
    passes = int(epochs) * sum(3 * min(batch_size, per - i) for i in range(0, per, batch_size))
    trainer = _ContrastTrainer(model, x, r, spec, weight=weight, epochs=epochs, batch_size=batch_size, lr=lr, w_recon=w_recon,
                               w_kld=w_kld, grad_clip=grad_clip, seed=seed, perceptual=perceptual, w_perceptual=w_perceptual,
                               items_per_epoch=items_per_epoch, log=log)
    gen = _LiveDecoder(model, size)
    trainer.setup(gen.space, seed=seed, budget=passes + 1, batch_size=1)
    store = RunStore(run_dir / "evaluations.sqlite", synchronous="NORMAL")
    try:
        Run(target=target, generator=gen, optimizer=trainer, objective=Objective("max"), store=store, budget=passes + 1,
            batch_size=1, run_dir=run_dir).run()
    finally:
        store.close()
    model.eval()
    if not trainer.history or not all(math.isfinite(h["loss"]) for h in trainer.history):
        raise StimoptError(f"the contrast phase did not train (see {run_dir / 'evaluations.sqlite'}); lower model.contrast.weight or model.lr")
    return trainer.history


__all__ = ["train_contrast"]
