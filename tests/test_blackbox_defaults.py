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


def test_fourier_opponent_scales_only_the_colour_opponent_channels():
    z = torch.as_tensor(np.random.default_rng(1).standard_normal((4, 3 * 6 * 6)), dtype=torch.float32)
    plain = FourierGenerator(size=16, n_freq=6, gain=1.0, device="cpu")
    grey = FourierGenerator(size=16, n_freq=6, gain=1.0, device="cpu", opponent=0.0)
    assert torch.equal(FourierGenerator(size=16, n_freq=6, gain=1.0, device="cpu", opponent=1.0).generate(z), plain.generate(z))
    img = grey.generate(z)
    # no opponent signal: every channel is the luminance channel (its weight is 0.58 in R, G and B)
    assert torch.allclose(img[:, 0], img[:, 1]) and torch.allclose(img[:, 1], img[:, 2])
    assert not torch.allclose(plain.generate(z)[:, 0], plain.generate(z)[:, 1])
    with pytest.raises(stimopt.StimoptError, match="opponent"):
        FourierGenerator(size=16, n_freq=6, opponent=-1.0, device="cpu")


def test_fourier_contrast_fixes_the_pre_sigmoid_spread_whatever_the_code_norm():
    z = torch.as_tensor(np.random.default_rng(2).standard_normal((3, 3 * 6 * 6)), dtype=torch.float32)
    gen = FourierGenerator(size=16, n_freq=6, gain=1.0, device="cpu", contrast=2.0)
    assert torch.allclose(gen.generate(z), gen.generate(7.0 * z), atol=1e-5)  # only the code's direction counts
    logit = torch.logit(gen.generate(z).clamp(1e-6, 1 - 1e-6)).flatten(1)
    assert torch.allclose(logit.std(dim=1), torch.full((3,), 2.0), atol=1e-3)
    plain = FourierGenerator(size=16, n_freq=6, gain=1.0, device="cpu")
    assert not torch.allclose(plain.generate(z), plain.generate(7.0 * z))
    with pytest.raises(stimopt.StimoptError, match="contrast"):
        FourierGenerator(size=16, n_freq=6, contrast=0.0, device="cpu")


def test_fourier_chroma_freq_is_the_full_code_with_its_fine_colour_coefficients_at_zero():
    rng = np.random.default_rng(3)
    n, k = 6, 2
    small = FourierGenerator(size=16, n_freq=n, gain=1.0, device="cpu", chroma_freq=k)
    full = FourierGenerator(size=16, n_freq=n, gain=1.0, device="cpu")
    assert small.space.dim == n * n + 2 * k * k and len(small.space.levels) == small.space.dim
    lum, opp = rng.standard_normal((4, n * n)), rng.standard_normal((4, 2, k, k))
    padded = np.zeros((4, 2, n, n))
    padded[:, :, :k, :k] = opp
    z_small = np.concatenate([lum, opp.reshape(4, -1)], axis=1)
    z_full = np.concatenate([lum, padded.reshape(4, -1)], axis=1)
    assert torch.allclose(small.generate(z_small.astype(np.float32)), full.generate(z_full.astype(np.float32)), atol=1e-6)
    assert max(small.space.levels[n * n:]) == k - 1  # the opponent coefficients are the coarse levels only
    grey = FourierGenerator(size=16, n_freq=n, gain=1.0, device="cpu", chroma_freq=0)
    img = grey.generate(rng.standard_normal((2, n * n)).astype(np.float32))
    assert torch.allclose(img[:, 0], img[:, 1]) and torch.allclose(img[:, 1], img[:, 2])
    assert torch.equal(FourierGenerator(size=16, n_freq=n, gain=1.0, device="cpu", chroma_freq=n).generate(z_full.astype(np.float32)),
                       full.generate(z_full.astype(np.float32)))
    with pytest.raises(stimopt.StimoptError, match="chroma_freq"):
        FourierGenerator(size=16, n_freq=n, chroma_freq=7, device="cpu")


def test_fourier_tile_fills_the_image_with_the_tile_and_its_mirror_images():
    rng = np.random.default_rng(4)
    tiled = FourierGenerator(size=24, n_freq=4, gain=1.0, device="cpu", tile=8)
    single = FourierGenerator(size=8, n_freq=4, gain=1.0, device="cpu")
    z = rng.standard_normal((3, tiled.space.dim)).astype(np.float32)
    assert tiled.space.dim == single.space.dim == 3 * 4 * 4
    img, tile = tiled.generate(z), single.generate(z)
    assert img.shape == (3, 3, 24, 24)
    off = (32 - 24) // 2  # 4 tiles of 8 px cover 32 px, centred on the 24 px canvas
    full = torch.cat([tile, tile.flip(-1), tile, tile.flip(-1)], dim=-1)
    full = torch.cat([full, full.flip(-2), full, full.flip(-2)], dim=-2)
    assert torch.allclose(img, full[..., off:off + 24, off:off + 24], atol=1e-6)
    assert torch.allclose(img[..., 12:20, 12:20], tile, atol=1e-6)  # a whole tile at the centre
    assert torch.allclose(img[..., 12:20, 4:12], tile.flip(-1), atol=1e-6)  # its neighbours are its mirror images
    assert torch.allclose(img[..., 4:12, 12:20], tile.flip(-2), atol=1e-6)
    with pytest.raises(stimopt.StimoptError, match="n_freq"):
        FourierGenerator(size=24, n_freq=9, tile=8, device="cpu")
    with pytest.raises(stimopt.StimoptError, match="tile"):
        FourierGenerator(size=24, n_freq=4, tile=30, device="cpu")


def test_fourier_extent_is_grey_outside_a_centred_aperture_that_fades_at_its_edge():
    rng = np.random.default_rng(5)
    g = FourierGenerator(size=32, n_freq=6, gain=4.0, device="cpu", extent=16)
    assert g.space.dim == 3 * 6 * 6
    img = g.generate(rng.standard_normal((2, g.space.dim)).astype(np.float32))
    assert img.shape == (2, 3, 32, 32)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[8:24, 8:24] = True
    assert torch.all(img[..., ~inside] == 0.5)  # grey outside the aperture
    assert (img[..., 10:22, 10:22] - 0.5).abs().mean() > 0.1  # the pattern inside
    edge = (img[..., 8, 8:24] - 0.5).abs().mean()
    assert edge < (img[..., 12, 8:24] - 0.5).abs().mean()  # faded towards the edge: no hard frame
    with pytest.raises(stimopt.StimoptError, match="exclude"):
        FourierGenerator(size=32, n_freq=6, extent=16, tile=8, device="cpu")
