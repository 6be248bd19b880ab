"""stimopt-analyze curricula: planted teachers with known answers, the screen file as the pool,
determinism, bad input, and the app's registration."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import stimopt
from stimopt.analyze.app import Context, _name_from_argv, compose_analyze, run_analysis
from stimopt.analyze.common import ArraySource
from stimopt.analyze.curricula import select
from stimopt.errors import StimoptError

SIZE = 8


def random_images(n=600, seed=0):
    """Noisy images of one random colour each (so red minus blue varies a lot between images)."""
    rng = np.random.default_rng(seed)
    colour = rng.random((n, 3, 1, 1))
    return np.clip(colour + 0.1 * rng.standard_normal((n, 3, SIZE, SIZE)), 0, 1).astype(np.float32)


class Rectified(stimopt.Target):
    """A planted one-tailed neuron: a ReLU of red minus blue (mean over the image) above 0.3, silent
    for about three quarters of the images, so its anti-preferred images all respond 0 (they carry
    nothing but their 10% random replacements)."""

    def __init__(self):
        self.calls = 0

    def evaluate(self, images):
        self.calls += len(images)
        return torch.relu(images[:, 0].mean(dim=(1, 2)) - images[:, 2].mean(dim=(1, 2)) - 0.3)

    def describe(self):
        return "rectified"


TINY = {"layers": 2, "filters": 4, "image_size": SIZE, "lr": 0.01, "epochs": 8, "patience": 8, "train_batch_size": 32,
        "n_test": 150, "n_val": 60, "noise": 0.2, "random_fraction": 0.1}


def ctx_for(target, source, tmp_path, **options):
    return Context(options={**TINY, **options}, source=source, make_target=lambda **kw: target, out=tmp_path,
                   batch_size=256, seed=0)


def test_select_rules():
    resp = np.arange(100, dtype=float)  # position = response
    rng = np.random.default_rng(0)
    pref = select("pref", resp, 20, 0.1, rng)
    assert len(pref) == 20 == len(set(pref)) and (pref >= 80).sum() == 18  # 2 lowest of the top 20 replaced
    anti = select("anti", resp, 20, 0.0, rng)
    assert sorted(anti) == list(range(20))
    both = select("pref_anti", resp, 20, 0.0, rng)
    assert sorted(both) == list(range(10)) + list(range(90, 100))
    med = select("median", resp, 10, 0.0, rng)
    assert np.abs(resp[med] - 49.5).max() <= 5
    assert len(set(select("random", resp, 30, 0.1, rng))) == 30


@pytest.mark.slow
def test_planted_rectified_neuron_anti_only_learns_nothing(tmp_path, one_thread):
    """Known answer: a ReLU neuron's anti-preferred images all respond 0, so anti-only students are
    far worse than random and pref+anti students; the screen file is the pool; every response is the teacher's."""
    source = ArraySource(random_images())
    teacher = Rectified()
    run_analysis("screen", Context(options={"k": 10, "chunk": 200, "n": 300}, source=source, make_target=lambda **kw: teacher,
                                   out=tmp_path, batch_size=256))
    screened = teacher.calls
    done = run_analysis("curricula", ctx_for(teacher, source, tmp_path, screen=str(tmp_path / "screen.npz"), sizes=[80],
                                             curricula=["anti", "pref_anti", "random"]))
    assert teacher.calls == screened + 210  # the pool came from the screen file; test + validation scored here
    out = json.loads((tmp_path / "curricula.json").read_text())
    r2 = {c: v[0] for c, v in out["r2"].items()}
    assert r2["random"] > 0.5, r2  # the student learns the neuron from random images
    assert r2["anti"] < 0.2 and r2["anti"] < r2["pref_anti"] - 0.1 and r2["anti"] < r2["random"] - 0.3, r2
    assert out["n_pool"] == 300 and out["screen"].endswith("screen.npz") and out["sizes"] == [80]
    assert (tmp_path / "curricula.csv").exists() and (tmp_path / "curricula.png").exists()
    assert "curricula" in (tmp_path / "report.md").read_text() and "pref_anti" in done["line"]


@pytest.mark.slow
def test_deterministic_and_claim_keys(tmp_path, one_thread):
    source = ArraySource(random_images(400))
    opts = dict(n=200, sizes=[40], curricula=["pref", "pref_anti", "random"], epochs=2, n_test=100, n_val=50)
    a = run_analysis("curricula", ctx_for(Rectified(), source, tmp_path / "a", **opts))["payload"]
    b = run_analysis("curricula", ctx_for(Rectified(), source, tmp_path / "b", **opts))["payload"]
    assert a["r2"] == b["r2"] and a["r2_units"]["pref"] == b["r2_units"]["pref"]
    assert set(a["claim"][0]) == {"size", "pref_anti_minus_pref", "pref_anti_minus_random", "beats_pref", "beats_random"}
    assert a["reproduces"] in (True, False)
    assert a["claim"][0]["pref_anti_minus_pref"] == pytest.approx(a["r2"]["pref_anti"][0] - a["r2"]["pref"][0])


def test_bad_input_is_one_line(tmp_path):
    source = ArraySource(random_images(300))
    with pytest.raises(StimoptError, match=r"need a pool of at least 400 images .*the pool has 100"):
        run_analysis("curricula", ctx_for(Rectified(), source, tmp_path, n=100, sizes=[200], n_test=100, n_val=50))
    with pytest.raises(StimoptError, match="too small"):
        run_analysis("curricula", ctx_for(Rectified(), source, tmp_path, n=250, sizes=[20], n_test=100, n_val=50))
    with pytest.raises(StimoptError, match="unknown curricula"):
        run_analysis("curricula", ctx_for(Rectified(), source, tmp_path, n=100, sizes=[20], curricula=["best"]))


def test_app_knows_curricula():
    assert _name_from_argv(["curricula", "seed=1"]) == ["seed=1", "analysis=curricula"]
    cfg = compose_analyze(["analysis=curricula", "curricula.sizes=[50,100]"])
    assert list(cfg.curricula.sizes) == [50, 100] and cfg.curricula.noise == 0.2 and cfg.curricula.filters == 100


@pytest.mark.slow
def test_synthesized_curriculum_reads_two_runs(tmp_path, one_thread):
    """curricula.runs=[max run, min run]: their best stored images are regenerated and read by the
    teacher (K/2 each); a run of the wrong direction is one line."""
    from stimopt.config import compose
    from stimopt.experiment import run_experiment

    runs = []
    for direction in ("max", "min"):
        cfg = compose(["target.model=resnet18", "target.weights=random", "target.layer=layer1", "target.input_size=32",
                       "generator.size=32", "logger=none", "budget=20", "batch_size=10", "device=cpu", f"direction={direction}"])
        runs.append(tmp_path / direction)
        run_experiment(cfg, runs[-1], progress=False)
    source, teacher = ArraySource(random_images(300)), Rectified()
    opts = dict(n=40, sizes=[10], curricula=["random"], runs=[str(r) for r in runs], epochs=2, n_test=100, n_val=50)
    out = run_analysis("curricula", ctx_for(teacher, source, tmp_path / "c", **opts))["payload"]
    assert out["curricula"] == ["random", "synthesized"] and teacher.calls == 40 + 150 + 10
    assert np.isfinite(out["r2"]["synthesized"][0])
    with pytest.raises(StimoptError, match="a max run, a min run"):
        run_analysis("curricula", ctx_for(teacher, source, tmp_path / "d", **{**opts, "runs": [str(runs[1]), str(runs[0])]}))
