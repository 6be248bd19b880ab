"""stimopt-analyze screen (chunked, resumable) and quantiles (from a screen file and from a run)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import stimopt
from stimopt.analyze.app import Context, run_analysis
from stimopt.analyze.common import ArraySource
from stimopt.analyze.screen import load_screen
from stimopt.errors import StimoptError


class Channels(stimopt.Target):
    """Planted neurons: output c = mean of colour channel c (so the answers are known)."""

    n_outputs = 3

    def __init__(self, fail_after=None, noise=0.0):
        self.calls, self.fail_after, self.noise = 0, fail_after, noise
        self.rng = np.random.default_rng(0)

    def evaluate(self, images):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("planted crash")
        r = images.mean(dim=(2, 3))
        if self.noise:
            r = r + torch.as_tensor(self.rng.normal(0, self.noise, r.shape), dtype=r.dtype)
        return r

    def describe(self):
        return "channels"


@pytest.fixture
def source():
    return ArraySource(np.random.default_rng(0).random((300, 3, 8, 8)).astype(np.float32))


def ctx_for(target, source, out, name_opts, **kw):
    return Context(options=name_opts, source=source, make_target=lambda **o: target, out=out, batch_size=25, **kw)


def test_screen_keeps_the_planted_top_and_bottom(tmp_path, source):
    run_analysis("screen", ctx_for(Channels(), source, tmp_path, {"k": 5, "chunk": 100}))
    data = load_screen(tmp_path / "screen.npz")
    means = source.array.mean(dim=(2, 3)).numpy()
    for c in range(3):
        assert list(data["top"][c]) == list(np.argsort(-means[:, c])[:5])
        assert list(data["bottom"][c]) == list(np.argsort(means[:, c])[:5])
    meta = json.loads((tmp_path / "screen.json").read_text())
    assert meta["n_images"] == 300 and len(meta["units"]) == 3 and not (tmp_path / "screen.partial").exists()


def test_screen_resumes_finished_chunks(tmp_path, source):
    crashing = Channels(fail_after=9)  # 4 batches per chunk of 100: chunks 1 and 2 finish, chunk 3 crashes
    with pytest.raises(RuntimeError):
        run_analysis("screen", ctx_for(crashing, source, tmp_path, {"k": 5, "chunk": 100}))
    assert len(list((tmp_path / "screen.partial").glob("chunk_*.npy"))) == 2
    again = Channels()
    run_analysis("screen", ctx_for(again, source, tmp_path, {"k": 5, "chunk": 100}))
    assert again.calls == 4  # only the last chunk was scored
    data = load_screen(tmp_path)
    np.testing.assert_allclose(data["responses"], source.array.mean(dim=(2, 3)).numpy(), rtol=1e-6)


def test_screen_bad_inputs_are_one_line(tmp_path, source):
    with pytest.raises(StimoptError, match="needs at least 400 images"):
        run_analysis("screen", ctx_for(Channels(), source, tmp_path, {"k": 200, "chunk": 100}))
    with pytest.raises(StimoptError, match="does not exist"):
        load_screen(tmp_path / "nothing.npz")


def test_quantiles_from_a_screen_with_a_noisy_target(tmp_path, source):
    run_analysis("screen", ctx_for(Channels(), source, tmp_path, {"k": 10, "chunk": 100}))
    out = tmp_path / "q"
    ctx = ctx_for(Channels(noise=0.02), source, out, {"screen": str(tmp_path / "screen.npz"), "k": 10, "n_random": 200},
                  repeats=4)
    run_analysis("quantiles", ctx)
    data = json.loads((out / "quantiles.json").read_text())
    assert data["repeats"] == 4 and len(data["units"]) == 3
    assert data["median_q_pref"] > 0.9 and data["median_q_anti"] < 0.1
    assert all(u["q_pref"] > u["q_anti"] for u in data["units"])
    assert (out / "quantiles.png").exists() and "q_pref" in (out / "quantiles.csv").read_text()


def test_quantiles_needs_sets(tmp_path, source):
    with pytest.raises(StimoptError, match="quantiles needs the sets"):
        run_analysis("quantiles", ctx_for(Channels(), source, tmp_path, {"k": 10}))


def test_quantiles_from_a_run(tmp_path, tiny_cnn):
    """A tiny pixel run of a planted luminance neuron: its best images fall high, its worst low."""
    from stimopt.config import compose
    from stimopt.experiment import run_experiment
    from stimopt.analyze.common import DemoSource

    cfg = compose(["target.model=resnet18", "target.weights=random", "target.layer=layer1", "target.input_size=32",
                   "target.unit=3", "generator.size=32", "logger=none", "budget=60", "batch_size=20", "device=cpu"])
    run_dir = tmp_path / "run"
    run_experiment(cfg, run_dir, progress=False)
    out = tmp_path / "q"
    ctx = Context(options={"run": str(run_dir), "k": 5, "n_random": 60}, source=DemoSource(), make_target=None, out=out,
                  batch_size=30)
    run_analysis("quantiles", ctx)
    data = json.loads((out / "quantiles.json").read_text())
    u = data["units"][0]
    assert "best 5" in data["sets"]["pref"] and "worst 5" in data["sets"]["anti"]
    assert u["median_pref"] > u["median_anti"]


class ChannelMap(stimopt.Target):
    """A planted single-unit channel-map target (the cnn_unit shape): channel c = the mean of colour c
    times (1, 1, 3); it reads channel ``unit``."""

    feature_shape, position, spatial, input_size = (3, 1, 1), (0, 0), "center", 16

    def __init__(self, unit=0):
        self.unit = unit

    def _features(self, images):
        return (images.mean(dim=(2, 3)) * torch.tensor([1.0, 1.0, 3.0]))[:, :, None, None]

    def evaluate(self, images):
        return self._features(images)[:, self.unit, 0, 0]

    def describe(self):
        return f"channelmap[{self.unit}]"


@pytest.mark.parametrize("kind", ["gaussian", pytest.param("poisson", marks=pytest.mark.slow)])
def test_quantiles_of_noisy_channels_report_their_spread(tmp_path, kind):
    from stimopt.noise import NoisyTarget

    rng = np.random.default_rng(1)  # brightness varies across images, so the sets stand out of the noise
    source = ArraySource((rng.random((300, 3, 8, 8)) * rng.random((300, 1, 1, 1))).astype(np.float32))
    run_analysis("screen", ctx_for(ChannelMap(), source, tmp_path, {"k": 10, "chunk": 300}, units=[0, 1, 2]))
    noisy = NoisyTarget(ChannelMap(), kind, noise_sd=0.3, expected_max_spikes=30, noise_calibration=300, cache=False)
    out = tmp_path / kind
    opts = {"screen": str(tmp_path / "screen.npz"), "k": 10, "n_random": 200}
    run_analysis("quantiles", ctx_for(noisy, source, out, opts, units=[0, 1, 2], repeats=5))
    data = json.loads((out / "quantiles.json").read_text())
    assert data["noise"] == kind and data["repeats"] == 5 and [u["unit"] for u in data["units"]] == ["0", "1", "2"]
    assert data["median_q_pref"] > 0.9 and data["median_q_anti"] < 0.1
    for u in data["units"]:
        assert len(u["q_pref_single"]) == 5 and u["q_pref_sd"] > 0 and u["trial_sd_pref"] > 0 and u["trial_sd_random"] > 0
        assert u["q_pref_ci90"][0] <= u["q_pref"] <= u["q_pref_ci90"][1] and u["q_anti_ci90"][0] <= u["q_anti"]
        if kind == "gaussian":  # gain noise a x (1 + 0.3 N(0,1)): the trial SD is 0.3 x the response
            assert 0.15 < u["trial_sd_pref"] / u["median_pref"] < 0.45, u
    assert data["median_q_pref_sd"] is not None and "sd" in (out / "report.md").read_text()
    # one presentation: the same keys as before, no spread
    run_analysis("quantiles", ctx_for(noisy, source, tmp_path / "one", opts, units=[0, 1, 2], repeats=1))
    one = json.loads((tmp_path / "one" / "quantiles.json").read_text())
    assert one["median_q_pref_sd"] is None and "q_pref_sd" not in one["units"][0]


def test_noisy_channels_calibrate_each_channel_for_poisson():
    from stimopt.analyze.quantiles import NoisyChannels
    from stimopt.noise import NoisyTarget

    noisy = NoisyTarget(ChannelMap(), "poisson", expected_max_spikes=30, noise_calibration=300, cache=False)
    reader = NoisyChannels(noisy, [0, 2])
    s0, s2 = (c.scale for c in reader.columns)
    assert s0 == pytest.approx(noisy.scale, rel=1e-6)  # channel 0 is the wrapped unit: the same calibration
    assert s2 == pytest.approx(s0 / 3, rel=0.25)  # channel 2 responds ~3x more: ~1/3 the spikes per unit
    r = reader(torch.rand(4, 3, 8, 8))
    assert r.shape == (4, 2) and np.isfinite(r).all()


def test_a_screen_too_small_for_k_is_one_line(tmp_path):
    top = np.zeros((2, 3), dtype=np.int64)
    np.savez(tmp_path / "screen.npz", indices=np.arange(10), units=np.array(["a", "b"]), responses=np.zeros((10, 2)),
             top=top, bottom=top, top_responses=top * 1.0, bottom_responses=top * 1.0)
    assert load_screen(tmp_path, 3, "neurons.k")["top"].shape == (2, 3)
    with pytest.raises(StimoptError, match=r"^neurons.k=4 but the screen kept only 3 images per neuron$"):
        load_screen(tmp_path, 4, "neurons.k")
