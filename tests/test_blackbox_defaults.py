"""The default black-box search's code (docs/blackbox.md): an unsaturated Fourier image and CMA's step size."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import stimopt
from stimopt_plugins.cma import CMAES
from stimopt_plugins.image_codes import FourierGenerator


def saturated_fraction(gen, n=32, seed=0):
    z = torch.as_tensor(np.random.default_rng(seed).standard_normal((n, gen.space.dim)), dtype=torch.float32)
    img = gen.generate(z)
    return float(((img < 0.05) | (img > 0.95)).float().mean())


@pytest.mark.slow  # composing the config loads every plugin (~3 s on a quiet core)
def test_default_fourier_images_are_not_flat_saturated_blobs(compose):
    from stimopt.experiment import build

    cfg = compose([])
    gen = build("generator", cfg.generator)
    opt = build("optimizer", cfg.optimizer)
    # the default code's init images: most pixels inside the sigmoid's working range
    assert saturated_fraction(gen) < 0.3
    g = cfg.generator
    old = FourierGenerator(size=g.size, n_freq=g.n_freq, decay=g.decay, gain=4.0, device="cpu")
    assert saturated_fraction(old) > 0.6  # the former default: most pixels pinned at 0 or 1
    # the default CMA's first generation spreads codes at sigma0 x init_std around init_mean
    assert isinstance(opt, CMAES)
    opt.setup(gen.space, seed=0, budget=40, batch_size=20)
    codes = opt.ask(20)
    assert abs(np.std(codes) - opt.sigma0 * gen.space.init_std) < 0.05


def test_cmaes_step_size_scales_the_first_population_and_is_seeded():
    space = stimopt.ContinuousSpace(dim=50)
    stds = []
    for sigma0 in (0.25, 1.0):
        a, b = CMAES(sigma0=sigma0), CMAES(sigma0=sigma0)
        a.setup(space, seed=3, budget=40, batch_size=20)
        b.setup(space, seed=3, budget=40, batch_size=20)
        ca, cb = a.ask(20), b.ask(20)
        assert np.array_equal(ca, cb)
        stds.append(np.std(ca))
    assert abs(stds[1] / stds[0] - 4.0) < 0.1
