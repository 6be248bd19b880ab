"""Coarse-to-fine CMA-ES (optimizer.coarse_to_fine) on the code space's levels (plugins/cma/progressive.py)."""
from __future__ import annotations

import cma  # noqa: F401  pycma's import (seconds on a loaded core) is paid at collection, not by the first test
import numpy as np
import pytest
import torch

import stimopt
from stimopt_plugins.cma import CMAES
from stimopt_plugins.image_codes import FourierGenerator, PixelGenerator

C2F = dict(coarse_to_fine=[2, 4], coarse_to_fine_at=[0.2, 0.5])


def test_fourier_levels_below_L_are_the_L_by_L_code():
    big, small = (FourierGenerator(size=16, n_freq=n, gain=1.0, device="cpu") for n in (8, 3))
    levels = np.asarray(big.space.levels)
    assert len(levels) == big.space.dim and levels.min() == 0 and levels.max() == 7
    coarse = np.flatnonzero(levels < 3)
    assert len(coarse) == small.space.dim
    z = np.random.default_rng(0).standard_normal((2, small.space.dim)).astype(np.float32)
    full = np.zeros((2, big.space.dim), np.float32)
    full[:, coarse] = z  # the coarse coordinates, in order, are the small code's coefficients
    torch.testing.assert_close(big.generate(full), small.generate(z), atol=1e-5, rtol=0)
    other = full.copy()
    other[:, np.flatnonzero(levels == 3)[:3]] = 1.0  # a level-3 coefficient changes the image
    assert not torch.allclose(big.generate(other), big.generate(full), atol=1e-3)


def planted(target):
    return lambda codes: -((np.asarray(codes, np.float64) - target) ** 2).sum(axis=1)


@pytest.mark.parametrize("step", [None, 2.0])
def test_searches_coarse_levels_first_then_grows_keeping_mean_and_step(step):
    gen = FourierGenerator(size=16, n_freq=8, gain=1.0, device="cpu")
    levels = np.asarray(gen.space.levels)
    score = planted(np.random.default_rng(1).standard_normal(gen.space.dim))
    opt = CMAES(sigma0=0.5, coarse_to_fine_step=step, **C2F)
    opt.setup(gen.space, seed=0, budget=200, batch_size=10)  # stages: generations 0-3 (levels < 2), 4-9 (< 4), 10-19 (all)
    for g in range(20):
        codes = opt.ask(10)
        active = levels < (2 if g < 4 else 4 if g < 10 else 99)
        assert np.all(codes[:, ~active] == 0) and np.all(codes[:, active] != 0), g
        if g in (4, 10):  # just grown: the searched coordinates are centred on the mean they had
            np.testing.assert_allclose(opt.es.x[prev_idx], mean_before, atol=0)
            stds = np.asarray(opt.es.es.stds)
            old = np.isin(opt.es.idx, prev_idx)
            np.testing.assert_allclose(stds[old], stds_before)  # the searched coordinates keep their steps
            if step is None:  # sigma carries over; new coordinates at the geometric mean of the old steps
                assert opt.es.sigma == pytest.approx(sigma_before)
                np.testing.assert_allclose(stds[~old], np.exp(np.log(stds_before).mean()))
            else:  # new coordinates at step x the initial step (0.5), sigma restarts there
                assert opt.es.sigma == pytest.approx(0.5)
                np.testing.assert_allclose(stds[~old], 1.0)
        opt.tell(codes, score(codes))
        prev_idx, mean_before = opt.es.idx.copy(), np.asarray(opt.es.es.mean).copy()
        sigma_before, stds_before = opt.es.sigma, np.asarray(opt.es.es.stds).copy()
    assert opt.report()["generations"] == 20


def test_state_dict_replay_continues_exactly_across_growth():
    gen = FourierGenerator(size=16, n_freq=8, gain=1.0, device="cpu")
    score = planted(np.random.default_rng(2).standard_normal(gen.space.dim))

    def make():
        o = CMAES(sigma0=0.5, **C2F)
        o.setup(gen.space, seed=5, budget=200, batch_size=10)  # grows at generations 4 and 10
        return o

    def step(o, g):
        c = o.ask(10)
        s = score(c)
        if g % 3 == 0:
            s[::7] = np.nan  # missing scores are replayed too
        o.tell(c, s)
        return c

    for k in (2, 6):  # checkpointed before the first growth, between the two
        full = make()
        for g in range(k):
            step(full, g)
        resumed = make()
        resumed.load_state_dict({key: v.copy() for key, v in full.state_dict().items()})
        for g in range(k, 20):  # past every growth
            np.testing.assert_array_equal(step(resumed, g), step(full, g))
        assert resumed.es.dims == full.es.dims == gen.space.dim


def test_coarse_to_fine_beats_the_plain_search_on_a_coarse_planted_image_unit():
    """A target that only coarse structure drives: at a small budget the coarse-first search gets closer."""
    gen = FourierGenerator(size=16, n_freq=8, gain=1.0, device="cpu")
    target = np.zeros(gen.space.dim)
    coarse = np.asarray(gen.space.levels) < 2
    target[coarse] = np.random.default_rng(3).standard_normal(coarse.sum()) * 2
    score = planted(target)
    best = {}
    for name, kw in {"plain": {}, "c2f": dict(coarse_to_fine=[2], coarse_to_fine_at=[0.6])}.items():
        vals = []
        for seed in range(3):
            opt = CMAES(sigma0=0.5, **kw)
            opt.setup(gen.space, seed=seed, budget=400, batch_size=10)
            b = -np.inf
            for _ in range(40):
                c = opt.ask(10)
                s = score(c)
                opt.tell(c, s)
                b = max(b, s.max())
            vals.append(b)
        best[name] = np.median(vals)
    assert best["c2f"] > best["plain"] + 10, best


def make_run(tmp_path, name, budget=150, batch=10):
    """test_cma's planted-unit run, with coarse-to-fine on a 6 x 6 code (growth at generations 3 and 8)."""
    from test_cma import make_run as planted_run

    return planted_run(tmp_path, name, budget=budget, batch=batch,
                       generator=FourierGenerator(size=16, n_freq=6, gain=1.0, device="cpu"),
                       optimizer=CMAES(coarse_to_fine=[2, 4], coarse_to_fine_at=[0.2, 0.5]))


def test_engine_run_killed_mid_stage_and_resumed_equals_uninterrupted(tmp_path):
    full = make_run(tmp_path, "full")
    full.run()
    part = make_run(tmp_path, "part")
    for _ in range(5):  # killed after generation 5: past the first growth (generation 3), before the second (8)
        part.step()
    part.store.close()
    resumed = make_run(tmp_path, "part")
    resumed.run()
    np.testing.assert_array_equal(resumed.store.codes(), full.store.codes())
    np.testing.assert_array_equal(resumed.store.responses(), full.store.responses())
    assert full.progress.best_response > full.store.responses()[:10].max()


def test_bad_coarse_to_fine_settings_are_one_line_errors():
    fourier = FourierGenerator(size=16, n_freq=6, device="cpu").space
    cases = [(PixelGenerator(size=8, resolution=4, device="cpu").space, dict(coarse_to_fine=[2], coarse_to_fine_at=[0.5]), "levels"),
             (fourier, dict(coarse_to_fine=[2, 4], coarse_to_fine_at=[0.5]), "one budget fraction"),
             (fourier, dict(coarse_to_fine=[4, 2], coarse_to_fine_at=[0.2, 0.5]), "increasing levels"),
             (fourier, dict(coarse_to_fine=[2], coarse_to_fine_at=[1.5]), "fractions")]
    for space, kw, msg in cases:
        with pytest.raises(stimopt.StimoptError, match=msg) as e:
            CMAES(**kw).setup(space, seed=0, budget=100, batch_size=10)
        assert "\n" not in str(e.value)
