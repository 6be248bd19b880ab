"""Noise models: a Target wrapper that makes a deterministic target behave like a real neuron.

The ``noise`` config group picks the model for any target (``noise=none|poisson|gaussian``,
options ``noise.KEY=VALUE``; conf/noise/*.yaml). ``noise=poisson``: the true activation ``a`` (clipped at 0) sets the rate of a Poisson
process, ``spikes ~ Poisson(scale * a)``. ``scale`` is calibrated so that a good stimulus, the
expected best of 2,500 random natural images (XDream's definition), gives
``expected_max_spikes`` spikes on average. The calibration runs the clean target on random
crops of the offline photographs (:mod:`stimopt.natural`) and is cached on disk.

``noise=gaussian``: multiplicative gain noise, ``a * (1 + sd * N(0, 1))`` (``noise.sd``).

``noise.repeats``: presentations per stimulus, averaged. Responses stay in activation units
(spike counts are divided by ``scale``), so they compare directly with the clean target's.

The noise generator is seeded and is part of ``state_dict``, so a resumed run draws exactly the
same noise as an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from stimopt.api import Target
from stimopt.cache import cache_dir
from stimopt.errors import StimoptError

NOISE_KINDS = ("poisson", "gaussian")
#: Options of the ``noise`` group -> NoisyTarget's arguments.
OPTIONS = {"expected_max_spikes": "expected_max_spikes", "repeats": "repeats", "sd": "noise_sd",
           "calibration_images": "noise_calibration"}
#: XDream: a "good" stimulus is the expected best of this many random natural images.
GOOD_STIMULUS_OF = 2500


def expected_max(samples: np.ndarray, k: int) -> float:
    """Expected maximum of ``k`` draws (with replacement) from the empirical distribution ``samples``."""
    x = np.sort(np.asarray(samples, dtype=np.float64)[np.isfinite(samples)])
    n = x.size
    if n == 0:
        raise StimoptError("cannot compute an expected maximum from no finite responses")
    i = np.arange(1, n + 1, dtype=np.float64)
    weights = (i / n) ** k - ((i - 1) / n) ** k
    return float(weights @ x)


def natural_responses(target: Target, n: int, size: int, seed: int = 0, batch: int = 100) -> np.ndarray:
    """Responses of ``target`` ([n] or [n, k]) to ``n`` random natural crops, in batches."""
    from stimopt.natural import crop_params, render_crops

    params = crop_params(n, seed)
    out = []
    with torch.inference_mode():
        for start in range(0, n, batch):
            r = target.evaluate(render_crops(params[start:start + batch], size))
            out.append(r.detach().float().cpu().numpy() if isinstance(r, torch.Tensor) else np.asarray(r, np.float64))
    return np.concatenate(out).astype(np.float64)


class NoisyTarget(Target):
    """Wraps a target; see the module docstring. ``inner`` stays reachable for noiseless reads."""

    def __init__(self, inner: Target, noise: str, expected_max_spikes: float = 20.0, repeats: int = 1,
                 noise_sd: float = 0.2, noise_calibration: int = GOOD_STIMULUS_OF, seed: int = 0,
                 calibration_size: int | None = None, cache: bool = True, good_response: float | None = None):
        if noise not in NOISE_KINDS:
            raise StimoptError(f"noise must be none, {' or '.join(NOISE_KINDS)} (noise=NAME), got '{noise}'")
        if int(repeats) < 1:
            raise StimoptError(f"noise.repeats must be at least 1, got {repeats}")
        if noise == "poisson" and not float(expected_max_spikes) > 0:
            raise StimoptError(f"noise.expected_max_spikes must be positive, got {expected_max_spikes}")
        if noise == "gaussian" and float(noise_sd) < 0:
            raise StimoptError(f"noise.sd must be >= 0, got {noise_sd}")
        self.inner = inner
        self.noise = noise
        self.expected_max_spikes = float(expected_max_spikes)
        self.repeats = int(repeats)
        self.noise_sd = float(noise_sd)
        self.n_calibration = int(noise_calibration)
        self.calibration_size = int(calibration_size or getattr(inner, "input_size", 128))
        self.n_outputs = getattr(inner, "n_outputs", 1)
        self.rng = np.random.default_rng([int(seed), 0x5EED])
        self.good_response: float | None = None  # expected best of 2,500 natural images (clean)
        self.scale: float | None = None  # spikes per unit of activation
        if noise == "poisson" and good_response is not None:  # calibrated by the caller on its own natural set
            if not float(good_response) > 0:
                raise StimoptError(f"good_response (the expected best natural response) must be positive, got {good_response}")
            self.good_response, self.scale = float(good_response), self.expected_max_spikes / float(good_response)
        elif noise == "poisson":
            self.calibrate(cache=cache)

    # -- calibration ----------------------------------------------------------------------------
    def _cache_path(self) -> Path:
        # The key holds the target's responses to a few probe crops, so two models that share a
        # name (pretrained vs random weights) never share a calibration.
        probe = natural_responses(self.inner, 8, self.calibration_size, seed=999)
        key = json.dumps([self.inner.describe(), self.calibration_size, self.n_calibration,
                          [float(f"{v:.5g}") for v in probe.ravel()]])
        return cache_dir() / "noise" / (hashlib.sha256(key.encode()).hexdigest()[:20] + ".json")

    def calibrate(self, cache: bool = True) -> float:
        """Set ``scale`` so the expected best of 2,500 natural crops gives ``expected_max_spikes``."""
        good = None
        reusable = cache
        path = self._cache_path() if cache else None
        if reusable and path.is_file():
            try:
                good = float(json.loads(path.read_text())["good_response"])
            except (ValueError, KeyError, OSError):
                good = None
        if good is None:
            r = natural_responses(self.inner, self.n_calibration, self.calibration_size, seed=12345)
            r = r if r.ndim == 1 else r.mean(axis=1)
            good = expected_max(r, GOOD_STIMULUS_OF)
            if reusable:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps({"target": self.inner.describe(), "good_response": good,
                                                "n_images": self.n_calibration, "size": self.calibration_size}))
                except OSError:
                    pass
        if not good > 0:
            raise StimoptError(
                f"Poisson noise needs a positive response to good natural images, but the expected best of "
                f"{GOOD_STIMULUS_OF} natural crops gives {good:.4g} for {self.inner.describe()}; "
                "use target.relu=true, another unit, or noise=gaussian"
            )
        self.good_response = good
        self.scale = self.expected_max_spikes / good
        return self.scale

    # -- the noisy read ---------------------------------------------------------------------------
    def evaluate(self, images):
        clean = self.inner.evaluate(images)
        a = clean.detach().double().cpu().numpy() if isinstance(clean, torch.Tensor) else np.asarray(clean, np.float64)
        shape = (self.repeats, *a.shape)
        bad = ~np.isfinite(a)
        a = np.where(bad, 0.0, a)
        if self.noise == "poisson":
            rate = np.clip(a, 0, None) * self.scale
            obs = self.rng.poisson(np.broadcast_to(rate, shape)).mean(axis=0) / self.scale
        else:
            gain = 1.0 + self.noise_sd * self.rng.standard_normal(shape)
            obs = (a * gain).mean(axis=0)
        return np.where(bad, np.nan, obs).astype(np.float32)

    @property
    def presentations_per_image(self) -> int:
        """Trials per image shown: ``repeats`` noisy reads of each of the inner target's (what
        ``budget_counts=presentations`` counts, as a rig's ``target.presentations``)."""
        return self.repeats * int(getattr(self.inner, "presentations_per_image", 1))

    # -- resume, reporting ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "scale": self.scale, "good_response": self.good_response,
                "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.scale, self.good_response = state["scale"], state["good_response"]
        self.inner.load_state_dict(state.get("inner", {}))

    def describe(self) -> str:
        if self.noise == "poisson":
            extra = f"poisson({self.expected_max_spikes:g} spikes for the expected best of {GOOD_STIMULUS_OF} natural images)"
        else:
            extra = f"gaussian gain(sd={self.noise_sd:g})"
        reps = f" x{self.repeats} repeats" if self.repeats > 1 else ""
        return f"{self.inner.describe()} + {extra}{reps}"

    def close(self) -> None:
        self.inner.close()


def wrap(target: Target, options, seed: int = 0) -> Target:
    """The target itself for ``noise=none`` (``options`` null or ``kind: null``); else a :class:`NoisyTarget`
    built from the ``noise`` group's options."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(options, DictConfig):
        options = OmegaConf.to_container(options, resolve=True)
    options = dict(options or {})
    kind = options.pop("kind", None)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise StimoptError(f"noise does not take option(s) {', '.join(unknown)}; it takes: kind, {', '.join(OPTIONS)}")
    if kind in (None, "none", "null", False):
        if int(options.get("repeats") or 1) != 1:
            raise StimoptError("noise.repeats > 1 averages noisy presentations; pick noise=poisson or noise=gaussian too")
        return target
    kw = {OPTIONS[k]: v for k, v in options.items() if v is not None}
    return NoisyTarget(target, str(kind), seed=seed, **kw)
