"""Vis-Lens: activation-structured VAE landscapes and what searches them.

Registered here (entry point ``vislens``), one module per idea:

- :mod:`.landscape`: the landscape a VAE was fit with, carried by its code space
  (:class:`LatentSpace`, a ContinuousSpace, so cmaes, random, ... search it too);
- :mod:`.generators`: ``vislens`` (latent z -> VAE decoder -> CLIP embedding -> Stable Diffusion
  1.5 img2img + IP-Adapter; ``code=clip`` takes CLIP embeddings, for BrainACTIV) and
  ``image_vae`` (z -> conv VAE decoder -> pixels; differentiable);
- :mod:`.prior_shift`: optimizers ``prior_shift`` (z' = z + alpha * (mu_dir - z) over a schedule
  of alphas and reference images) and ``brainactiv`` (shift a reference CLIP embedding along the
  ridge direction +/- w/||w||);
- :mod:`.latent_gradient`: optimizer ``latent_gradient`` (Algorithm 3: Adam on z, -score +
  w_kld * KLD; white-box, through the engine's differentiable objective, on any generator with
  ``generate_torch``);
- :mod:`.fit`: ``fit_vislens_vae(cfg, out_dir)``, the ``stimopt-fit model=vislens_vae`` function;
- :mod:`.vae`, :mod:`.clip`, :mod:`.diffusion`: the models.
"""
from __future__ import annotations

from pathlib import Path

import stimopt
from stimopt_plugins.vislens.fit import fit_vislens_vae, load_images, ridge_direction, target_responses
from stimopt_plugins.vislens.generators import ImageVAEGenerator, VisLensGenerator
from stimopt_plugins.vislens.landscape import CHECKPOINT_NAME, Landscape, LatentSpace
from stimopt_plugins.vislens.latent_gradient import LatentGradient
from stimopt_plugins.vislens.prior_shift import BrainActiv, PriorShift

__all__ = [
    "CHECKPOINT_NAME", "BrainActiv", "ImageVAEGenerator", "Landscape", "LatentGradient", "LatentSpace", "PriorShift",
    "VisLensGenerator", "fit_vislens_vae", "load_images", "ridge_direction", "target_responses",
]


@stimopt.hookimpl
def register_generators(register):
    register("vislens", VisLensGenerator)
    register("image_vae", ImageVAEGenerator)


@stimopt.hookimpl
def register_optimizers(register):
    register("prior_shift", PriorShift)
    register("latent_gradient", LatentGradient)
    register("brainactiv", BrainActiv)


@stimopt.hookimpl
def register_config_dirs(register):
    register(str(Path(__file__).parent / "conf"))
