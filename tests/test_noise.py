"""Noise models (stimopt.noise): calibration, mean/variance, seeding, resume, bad input; relative activation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import stimopt
from stimopt import noise, reference
from stimopt.errors import StimoptError


class MeanTarget(stimopt.Target):
    """Response = 10 x mean pixel value (minus an offset): deterministic and cheap."""

    input_size = 16

    def __init__(self, offset: float = 0.0):
        self.offset = offset

    def evaluate(self, images):
        return (images.mean(dim=(1, 2, 3)) * 10 - self.offset).float()

    def describe(self):
        return f"MeanTarget(offset={self.offset})"


def constant_images(values, size=8):
    v = torch.as_tensor(values, dtype=torch.float32)
    return v.view(-1, 1, 1, 1).expand(-1, 3, size, size).contiguous()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STIMOPT_CACHE", str(tmp_path / "cache"))


def test_expected_max_matches_monte_carlo():
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    draws = rng.choice(x, size=(20000, 50)).max(axis=1).mean()
    assert noise.expected_max(x, 50) == pytest.approx(draws, abs=0.02)
    assert noise.expected_max(x, 1) == pytest.approx(x.mean())
    assert noise.expected_max(x, 10**6) == pytest.approx(x.max(), rel=1e-6)


def test_poisson_calibration_and_mean_variance():
    inner = MeanTarget()
    nt = noise.NoisyTarget(inner, "poisson", expected_max_spikes=20, noise_calibration=200, seed=1)
    crops = noise.natural_responses(inner, 200, 16, seed=12345)
    assert nt.good_response == pytest.approx(noise.expected_max(crops, 2500))
    assert nt.scale == pytest.approx(20 / nt.good_response)
    a = 6.0  # 10 x 0.6
    r = nt.evaluate(constant_images([0.6] * 20000))
    assert r.mean() == pytest.approx(a, rel=0.02)
    assert r.var() == pytest.approx(a / nt.scale, rel=0.05)  # Poisson: var(count)/scale^2 = rate/scale^2
    counts = r * nt.scale
    assert np.allclose(counts, np.round(counts), atol=1e-3)  # whole spikes
    # repeats average presentations: variance / repeats
    nt4 = noise.NoisyTarget(inner, "poisson", expected_max_spikes=20, repeats=4, noise_calibration=200, seed=1)
    r4 = nt4.evaluate(constant_images([0.6] * 20000))
    assert r4.var() == pytest.approx(a / nt.scale / 4, rel=0.06)
    # negative activations fire no spikes
    neg = noise.NoisyTarget(MeanTarget(offset=3.0), "poisson", noise_calibration=100, cache=False)
    assert (neg.evaluate(constant_images([0.1] * 100)) == 0).all()


def test_poisson_good_stimulus_gives_expected_spikes():
    nt = noise.NoisyTarget(MeanTarget(), "poisson", expected_max_spikes=5, noise_calibration=200, seed=0)
    value = nt.good_response / 10
    spikes = nt.evaluate(constant_images([value] * 20000)) * nt.scale
    assert spikes.mean() == pytest.approx(5, rel=0.03)


def test_gaussian_gain_mean_and_sd():
    nt = noise.NoisyTarget(MeanTarget(), "gaussian", noise_sd=0.3, seed=2)
    r = nt.evaluate(constant_images([0.5] * 20000))
    assert r.mean() == pytest.approx(5.0, rel=0.01)
    assert r.std() == pytest.approx(5.0 * 0.3, rel=0.03)
    nt3 = noise.NoisyTarget(MeanTarget(), "gaussian", noise_sd=0.3, repeats=9, seed=2)
    assert nt3.evaluate(constant_images([0.5] * 20000)).std() == pytest.approx(5.0 * 0.3 / 3, rel=0.04)


def test_nan_passes_through_and_seeded_draws():
    class NaNTarget(MeanTarget):
        def evaluate(self, images):
            r = super().evaluate(images)
            r[0] = float("nan")
            return r

    nt = noise.NoisyTarget(NaNTarget(), "gaussian", seed=3)
    r = nt.evaluate(constant_images([0.5, 0.5, 0.5]))
    assert np.isnan(r[0]) and np.isfinite(r[1:]).all()
    a = noise.NoisyTarget(MeanTarget(), "gaussian", seed=7).evaluate(constant_images([0.5] * 10))
    b = noise.NoisyTarget(MeanTarget(), "gaussian", seed=7).evaluate(constant_images([0.5] * 10))
    c = noise.NoisyTarget(MeanTarget(), "gaussian", seed=8).evaluate(constant_images([0.5] * 10))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_state_dict_resumes_exactly():
    imgs = constant_images([0.4] * 50)
    nt = noise.NoisyTarget(MeanTarget(), "poisson", noise_calibration=100, seed=4)
    nt.evaluate(imgs)
    state = nt.state_dict()
    expected = [nt.evaluate(imgs), nt.evaluate(imgs)]
    fresh = noise.NoisyTarget(MeanTarget(), "poisson", noise_calibration=100, seed=99)
    fresh.load_state_dict(state)
    assert fresh.scale == nt.scale
    for want in expected:
        assert np.array_equal(fresh.evaluate(imgs), want)


def test_calibration_is_cached(monkeypatch, tmp_path):
    noise.NoisyTarget(MeanTarget(), "poisson", noise_calibration=120)
    assert list((tmp_path / "cache" / "noise").glob("*.json"))
    calls = []
    real = noise.natural_responses
    monkeypatch.setattr(noise, "natural_responses", lambda t, n, *a, **k: calls.append(n) or real(t, n, *a, **k))
    again = noise.NoisyTarget(MeanTarget(), "poisson", noise_calibration=120)
    assert 120 not in calls and again.good_response > 0  # only the 8-image probe ran
    other = noise.NoisyTarget(MeanTarget(offset=0.5), "poisson", noise_calibration=120)  # a different unit
    assert 120 in calls and other.good_response != pytest.approx(again.good_response)


def test_bad_input():
    with pytest.raises(StimoptError, match=r"noise must be none, poisson or gaussian \(noise=NAME\), got .laplace."):
        noise.NoisyTarget(MeanTarget(), "laplace")
    with pytest.raises(StimoptError, match="repeats"):
        noise.NoisyTarget(MeanTarget(), "gaussian", repeats=0)
    with pytest.raises(StimoptError, match=r"noise.repeats > 1 .* pick noise=poisson or noise=gaussian"):
        noise.wrap(MeanTarget(), {"kind": None, "repeats": 3})
    with pytest.raises(StimoptError, match=r"noise does not take option\(s\) spikes; it takes: kind, expected_max_spikes"):
        noise.wrap(MeanTarget(), {"kind": "poisson", "spikes": 3})
    with pytest.raises(StimoptError, match="positive response"):
        noise.NoisyTarget(MeanTarget(offset=100.0), "poisson", noise_calibration=50)
    t = MeanTarget()
    assert noise.wrap(t, {"kind": None, "repeats": 1}) is t and noise.wrap(t, None) is t


def test_wrap_maps_the_group_options():
    from omegaconf import OmegaConf

    nt = noise.wrap(MeanTarget(), OmegaConf.create({"kind": "gaussian", "sd": 0.3, "repeats": 2}), seed=4)
    assert isinstance(nt, noise.NoisyTarget) and (nt.noise, nt.noise_sd, nt.repeats) == ("gaussian", 0.3, 2)
    nt = noise.wrap(MeanTarget(), {"kind": "poisson", "expected_max_spikes": 5, "calibration_images": 50})
    assert nt.n_calibration == 50 and nt.expected_max_spikes == 5 and nt.scale == pytest.approx(5 / nt.good_response)


@pytest.mark.parametrize("option,kind", [("none", None), ("poisson", "poisson"), ("gaussian", "gaussian")])
def test_noise_is_its_own_group(option, kind, compose):
    cfg = compose([f"noise={option}"])
    assert cfg.noise.kind == kind and "noise" not in cfg.target and "repeats" not in cfg.target
    if kind == "poisson":
        assert compose(["noise=poisson", "noise.expected_max_spikes=5"]).noise.expected_max_spikes == 5


def test_noise_group_wraps_any_target(compose, tmp_path):
    """A third party's target (not cnn_unit) gets Poisson noise from the noise group."""
    from stimopt.experiment import build_run

    cfg = compose(["target=edge_neuron", "logger=none", "generator.size=32", "budget=40", "noise=poisson",
                   "noise.expected_max_spikes=20", "noise.calibration_images=60", "noise.repeats=2"])
    run = build_run(cfg, tmp_path / "run")
    try:
        assert isinstance(run.target, noise.NoisyTarget) and run.target.repeats == 2
        assert run.target.describe().startswith("edge_neuron(45.0 deg) + poisson(20 spikes")
        run.step()
        assert run.store.n_evaluations() == 20
    finally:
        run.store.close()


def test_relative_activation_metrics():
    natural = np.array([1.0, 2.0, 4.0, 3.0])
    out = reference.relative(6.0, natural, n_random=1, direction="max")
    assert out["best_natural"] == 4.0 and out["relative_activation"] == pytest.approx(1.5)
    assert out["expected_best_of_random"] == pytest.approx(2.5)  # one random image: the mean
    assert out["random_relative_activation"] == pytest.approx(2.5 / 4)
    many = reference.relative(6.0, natural, n_random=10_000)
    assert many["random_relative_activation"] == pytest.approx(1.0)
    low = reference.relative(-6.0, -natural, n_random=1, direction="min")
    assert low["best_natural"] == -4.0 and low["relative_activation"] == pytest.approx(1.5)
    assert reference.relative(1.0, -natural, n_random=1)["relative_activation"] is None  # no positive natural best


def test_callers_calibration_skips_the_natural_images(monkeypatch):
    monkeypatch.setattr(noise, "natural_responses", lambda *a, **k: pytest.fail("calibration should not run"))
    nt = noise.NoisyTarget(MeanTarget(), "poisson", expected_max_spikes=10, good_response=2.0)
    assert nt.scale == 5.0 and nt.good_response == 2.0
    with pytest.raises(StimoptError, match="good_response"):
        noise.NoisyTarget(MeanTarget(), "poisson", good_response=0.0)


def test_reference_block_off_by_default_and_errors_do_not_sink_the_summary(tmp_path):
    from omegaconf import OmegaConf

    from stimopt.objective import Objective

    class FakeRun:
        objective = Objective("max")
        target = noise.NoisyTarget(MeanTarget(), "gaussian", seed=0)

        class store:
            @staticmethod
            def top(k):
                return [{"code": np.full(3, 0.5, np.float32)}]

        class generator:
            @staticmethod
            def generate(codes):
                return constant_images(np.asarray(codes)[:, 0])

        class progress:
            n_evaluations = 40

    assert reference.summarize(FakeRun, OmegaConf.create({"reference": {"kind": None}})) is None
    bad = reference.summarize(FakeRun, OmegaConf.create({"reference": {"kind": "bank", "path": str(tmp_path), "n": 5}}))
    assert "error" in bad and str(tmp_path) in bad["error"]
    ok = reference.summarize(FakeRun, OmegaConf.create({"reference": {"kind": "natural_crops", "n": 30, "size": 16}}))
    assert ok["best_evolved"] == pytest.approx(5.0)  # the clean response, not a noisy draw
    assert ok["n_natural"] == 30 and ok["n_random"] == 40
    assert ok["relative_activation"] == pytest.approx(5.0 / ok["best_natural"])


def test_last_generation_best_reads_the_last_generations_top_stimulus_clean(compose, tmp_path):
    """XDream's scoring of a noisy run: the best-scored stimulus of the last generation, its clean response."""
    from stimopt.experiment import build_run

    cfg = compose(["target=edge_neuron", "logger=none", "generator.size=32", "budget=60", "batch_size=20",
                   "noise=poisson", "noise.expected_max_spikes=5", "noise.calibration_images=60"])
    run = build_run(cfg, tmp_path / "run")
    try:
        run.run()
        rows = [r for r in run.store.shown("stimulus") if r["generation"] == 2]
        pick = max(rows, key=lambda r: r["score"])
        last = reference.last_generation_best(run)
        assert last["generation"] == 2 and last["score"] == pytest.approx(pick["score"])
        with torch.inference_mode():
            clean = run.target.inner.evaluate(run.generator.generate(np.asarray([pick["code"]], np.float32)))
        assert last["clean"] == pytest.approx(float(clean[0]))
        assert last["clean"] == reference.clean_response(run, pick["code"])
    finally:
        run.store.close()


def test_budget_in_presentations_counts_each_repeat(compose, tmp_path):
    """noise.repeats=4 with budget_counts=presentations: 80 trials are 20 stimuli, not 80."""
    from stimopt.experiment import build_run

    cfg = compose(["target=edge_neuron", "logger=none", "generator.size=32", "budget=80", "batch_size=10",
                   "noise=poisson", "noise.repeats=4", "budget_counts=presentations", "noise.calibration_images=60"])
    run = build_run(cfg, tmp_path / "run")
    try:
        assert run.target.presentations_per_image == 4
        progress = run.run()
        assert progress.n_evaluations == 20 and run.store.n_evaluations() == 20
    finally:
        run.store.close()
