"""The Vis-Lens landscape, carried by the VAE generators' code space.

A :class:`LatentSpace` is a ContinuousSpace (so cmaes, random, ... search it too) that carries
the landscape the VAE was fit with (prior means, reference codes, the BrainACTIV direction):
landscape-aware optimizers read it from the space, as bank-aware ones read a bank.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

import stimopt
from stimopt.errors import StimoptError
from stimopt_plugins.vislens.vae import PriorSpec

CHECKPOINT_NAME = "vislens_vae.pt"


@dataclass
class Landscape:
    """What a landscape-aware optimizer needs, as numpy arrays over the generator's codes.

    ``code``: ``latent`` (VAE latents) or ``clip`` (CLIP embeddings); ``prior``: activation |
    standard; ``mu_pos``/``mu_neg``/``mask`` [dim] (latent codes only); ``reference_codes``
    [R, dim]: the codes of the reference images; ``brainactiv_w`` [D]: unit ridge direction on
    L2-normalized CLIP embeddings (clip codes), or on L2-normalized latent means for an image
    fit (latent codes: the BrainACTIV rule in an image VAE's space).
    """

    code: str
    prior: str
    reference_codes: np.ndarray
    mu_pos: np.ndarray | None = None
    mu_neg: np.ndarray | None = None
    mask: np.ndarray | None = None
    brainactiv_w: np.ndarray | None = None
    reference_responses: np.ndarray | None = None


@dataclass(frozen=True)
class LatentSpace(stimopt.ContinuousSpace):
    """A VAE's latent (or CLIP) space: continuous, plus the landscape it was fit with."""

    landscape: Any = field(default=None, compare=False, repr=False)


def references(ck: dict) -> dict:
    """The checkpoint's reference images (uint8), codes, responses and CLIP embeddings."""
    refs = ck.get("references")
    if not refs or len(refs["images"]) == 0:
        raise StimoptError("the Vis-Lens checkpoint holds no reference images; refit with model.n_references > 0")
    return refs


def landscape_of(ck: dict, code: str) -> Landscape:
    """The landscape of a loaded checkpoint over `latent` codes or `clip` embeddings."""
    spec: PriorSpec = ck["spec"]
    refs = references(ck)
    ba = ck.get("brainactiv")
    space = None if ba is None else ba.get("space", "clip")  # image fits: the ridge is over latent means
    if code == "latent":
        return Landscape(
            code="latent", prior=spec.prior, reference_codes=refs["codes"].numpy().astype(np.float32),
            mu_pos=spec.mu_pos.numpy(), mu_neg=spec.mu_neg.numpy(), mask=spec.mask.numpy(),
            brainactiv_w=ba["w"].numpy() if space == "latent" else None,
            reference_responses=refs["responses"].numpy(),
        )
    return Landscape(
        code="clip", prior=spec.prior, reference_codes=refs["embeddings"].numpy().astype(np.float32),
        brainactiv_w=ba["w"].numpy() if space == "clip" else None,
        reference_responses=refs["responses"].numpy(),
    )
