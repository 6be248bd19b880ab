"""stimopt-analyze neurons (set overlap, cross-neuron quantiles) and scaling (log-linear fit)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import stimopt
from stimopt.analyze.app import Context, run_analysis
from stimopt.analyze.common import ArraySource
from stimopt.analyze.scaling import loglinear
from stimopt.errors import StimoptError


class Projections(stimopt.Target):
    """Planted neurons: independent random projections of the pixels; neurons 0 and 1 are the same."""

    def __init__(self, n=5, dim=3 * 8 * 8):
        w = np.random.default_rng(3).normal(size=(dim, n))
        w[:, 1] = w[:, 0]
        self.w, self.n_outputs = torch.as_tensor(w, dtype=torch.float32), n

    def evaluate(self, images):
        return images.flatten(1) @ self.w


def src(n=400):
    return ArraySource(np.random.default_rng(0).random((n, 3, 8, 8)).astype(np.float32))


def test_neurons_overlap_and_private_sets(tmp_path):
    ctx = Context(options={"n": None, "k": 20, "n_shuffles": 50}, source=src(), make_target=lambda **kw: Projections(), out=tmp_path,
                  batch_size=100)
    run_analysis("neurons", ctx)
    d = json.loads((tmp_path / "neurons.json").read_text())
    m = np.array(d["overlap"]["pref_pref"]["matrix"])
    assert m[0, 1] == 1.0 and m[0, 2] < 0.5  # the duplicated neuron shares its whole set
    assert d["overlap"]["pref_pref"]["observed"] > d["overlap"]["pref_pref"]["null_mean"]
    q = np.array(d["q_pref"])
    assert q[0, 0] > 0.9 and q[0, 1] > 0.9 and d["q_pref_diagonal_median"] > 0.9 and d["q_anti_diagonal_median"] < 0.1
    assert 0.2 < d["q_pref_offdiagonal_median"] < 0.8
    assert (tmp_path / "neurons.png").exists() and len(d["neighbours"]["n_nb"]) == 3


def test_neurons_needs_three(tmp_path):
    ctx = Context(options={"n": None, "k": 5}, source=src(), make_target=lambda **kw: Projections(2), out=tmp_path)
    with pytest.raises(StimoptError, match="at least 3 neurons"):
        run_analysis("neurons", ctx)


def test_loglinear_recovers_a_planted_slope():
    s, i, r2 = loglinear([10, 100, 1000], [1.0, 1.5, 2.0])
    assert s == pytest.approx(0.5) and i == pytest.approx(0.5) and r2 == pytest.approx(1.0)


def test_scaling_best_grows_with_bank_size(tmp_path):
    ctx = Context(options={"sizes": [10, 40, 160, 400], "n_subsamples": 5, "n": None}, source=src(),
                  make_target=lambda **kw: Projections(3), out=tmp_path, batch_size=100)
    run_analysis("scaling", ctx)
    d = json.loads((tmp_path / "scaling.json").read_text())
    for u in d["units"]:
        assert np.all(np.diff(u["best_mean"]) > 0) and u["slope"] > 0 and u["worst_slope"] < 0
    with pytest.raises(StimoptError, match="400 images, fewer than the 1,000"):
        run_analysis("scaling", Context(options={"sizes": [10, 1000], "n": None}, source=src(),
                                        make_target=lambda **kw: Projections(3), out=tmp_path))
