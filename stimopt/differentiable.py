"""The white-box door: ``score = objective(target(generator(codes)))`` in torch, with gradients.

The engine is the only door to the target, for white-box optimizers (gradient ascent on codes)
too. Instead of the generator and the target, the engine hands such an optimizer a
:class:`DifferentiableObjective` (``Optimizer.bind``). Each call is one forward pass over a batch
of codes and one evaluation of every code in it: the engine checks the responses (bad-response
policy), commits them to the run store as a generation of their own, counts them against the
budget and tracks the best, exactly as for the codes an ``ask`` returns. The optimizer gets the
scores back as a tensor it can differentiate (direction applied, by the run's one objective).

An ``ask`` may spend only what the budget has left after the codes it is about to return
(``remaining``); a pass beyond that is refused, so a run never exceeds its budget.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from stimopt.errors import StimoptError

if TYPE_CHECKING:
    from stimopt.engine import Run


class DifferentiableObjective:
    """Scores torch codes with gradients through the run; see the module doc."""

    def __init__(self, run: "Run"):
        self._run = run

    @property
    def direction(self) -> str:
        """``max`` or ``min``, for optimizers whose algorithm is stated in response terms (a
        landscape's high- and low-response prior means). Scores already carry it: never apply it again."""
        return self._run.objective.direction

    @property
    def generator(self):
        """The run's generator, for white-box optimizers that bring their own image parametrization
        and pass images as codes (they check here that the generator is such a carrier). Score only
        through ``__call__``: that is the pass the engine records."""
        return self._run.generator

    @property
    def remaining(self) -> int:
        """How many codes the current ask may still score through this handle."""
        return self._run.budget_left_in_ask()

    def __call__(self, codes: torch.Tensor, info: list[dict] | None = None) -> torch.Tensor:
        """Scores [B] (float32, differentiable w.r.t. ``codes``) of codes [B, dim]; ``info``: one
        dict per code, stored with its row (like ``ask_info``)."""
        run = self._run
        if not getattr(run.target, "differentiable", False):
            raise StimoptError(f"target {run.target.describe()} cannot be differentiated; white-box optimizers need a torch model target")
        if not hasattr(run.generator, "generate_torch"):
            raise StimoptError(f"generator {run.generator.describe()} is not differentiable (no generate_torch); white-box optimizers need one such as fourier or pixels")
        n = len(codes)
        if n > self.remaining:
            raise StimoptError(f"a white-box pass over {n} codes would exceed the budget ({self.remaining} evaluations left in this ask); check objective.remaining first")
        run.store.sync()  # every earlier pass on disk before this one reaches the target, as in the engine's step
        t0 = time.perf_counter()
        with torch.inference_mode(False), torch.enable_grad():
            images = run.generator.generate_torch(codes)
            t1 = time.perf_counter()
            raw = run.target.evaluate(images)
            t2 = time.perf_counter()
            flat = codes.detach().cpu().numpy().astype(np.float32).reshape(n, -1)
            rows = [{"gradient_pass": True, **(extra or {})} for extra in (info or [None] * n)]
            run.commit(flat, images.detach(), raw.detach() if isinstance(raw, torch.Tensor) else raw, rows, t1 - t0, t2 - t1)
            if not isinstance(raw, torch.Tensor) or not raw.requires_grad:
                raise StimoptError(f"target {run.target.describe()} returned no gradient; it must compute its responses in torch, outside no_grad")
            score = run.objective(raw.float())[1]
        if score.shape != (n,):
            raise StimoptError(f"target {run.target.describe()} returned responses of shape {tuple(raw.shape)} for {n} stimuli")
        return score


def check_white_box(optimizer_cls: type, target, generator, names: tuple[str, str, str], noisy: bool = False) -> None:
    """At composition: refuse a white-box optimizer whose target or generator cannot be
    differentiated, in one line naming what fits. ``target``/``generator``: classes (before
    anything is built or shown) or the built objects; ``names``: (target, generator, optimizer)."""
    if not getattr(optimizer_cls, "white_box", False):
        return
    from stimopt import plugins

    target_name, gen_name, opt_name = names
    reg = plugins.registry()
    space_type = getattr(generator, "space_type", object)
    black_box = sorted(n for n, (cls, _) in reg["optimizer"].items()
                       if not getattr(cls, "white_box", False) and issubclass(space_type, getattr(cls, "accepts", ())))
    if noisy:
        raise StimoptError(
            f"optimizer '{opt_name}' follows gradients through the target, and the noise group samples its responses "
            f"(no gradient); use noise=none, or an optimizer that fits generator '{gen_name}' under noise: {', '.join(black_box) or 'none'}"
        )
    if not getattr(target, "differentiable", False):
        good = sorted(n for n, (cls, _) in reg["target"].items() if getattr(cls, "differentiable", False))
        raise StimoptError(
            f"optimizer '{opt_name}' follows gradients through the target, and target '{target_name}' cannot be "
            f"differentiated (it is not a torch model); optimizers that fit it with generator '{gen_name}': "
            f"{', '.join(black_box) or 'none'}; differentiable targets: {', '.join(good) or 'none'}"
        )
    if not hasattr(generator, "generate_torch"):
        good = sorted(n for n, (cls, _) in reg["generator"].items() if hasattr(cls, "generate_torch"))
        raise StimoptError(
            f"optimizer '{opt_name}' follows gradients through the generator, and generator '{gen_name}' is not "
            f"differentiable (no generate_torch); differentiable generators: {', '.join(good) or 'none'}; "
            f"optimizers that fit '{gen_name}': {', '.join(black_box) or 'none'}"
        )
