"""stimopt-analyze statistics: a planted luminance neuron gives the planted sign; the classifier."""
from __future__ import annotations

import json

import numpy as np
import pytest

import stimopt
from stimopt.analyze.app import Context, run_analysis
from stimopt.analyze.common import ArraySource
from stimopt.analyze.imagestats import STATISTICS, image_statistics
from stimopt.analyze.statistics import dom_accuracy
from stimopt.errors import StimoptError


class Luminance(stimopt.Target):
    """Output 0: mean luminance (planted +); output 1: minus mean luminance (planted -)."""

    n_outputs = 2

    def evaluate(self, images):
        y = (0.2126 * images[:, 0] + 0.7152 * images[:, 1] + 0.0722 * images[:, 2]).mean(dim=(1, 2))
        return np.stack([y.numpy(), -y.numpy()], 1)


def source(n=200, size=16, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.random((n, 3, size, size)) * rng.random((n, 1, 1, 1))  # brightness varies per image
    return ArraySource(base.astype(np.float32))


def test_planted_luminance_neuron_has_the_planted_sign(tmp_path):
    ctx = Context(options={"n": None, "k": 20, "folds": 5, "embeddings": False}, source=source(),
                  make_target=lambda **kw: Luminance(), out=tmp_path, batch_size=50)
    run_analysis("statistics", ctx)
    data = json.loads((tmp_path / "statistics.json").read_text())
    up, down = data["units"]
    assert up["stats"]["luminance"]["cohens_d"] > 2 and up["stats"]["luminance"]["difference"] > 0
    assert down["stats"]["luminance"]["cohens_d"] < -2
    assert up["accuracy"] > 0.9 and down["accuracy"] > 0.9 and data["median_accuracy_embeddings"] is None
    assert set(data["statistics"]) == set(STATISTICS) and (tmp_path / "statistics.png").exists()


def test_difference_of_means_classifier_is_at_chance_on_noise():
    rng = np.random.default_rng(0)
    assert 0.3 < dom_accuracy(rng.normal(size=(60, 5)), rng.normal(size=(60, 5))) < 0.7
    assert dom_accuracy(rng.normal(1, 1, (60, 5)), rng.normal(-1, 1, (60, 5))) > 0.9


def test_statistics_of_known_images():
    flat = np.full((1, 3, 16, 16), 0.25)
    s = dict(zip(STATISTICS, image_statistics(flat)[0]))
    assert abs(s["luminance"] - 0.25) < 1e-9 and s["rms_contrast"] < 1e-9 and s["saturation"] == 0
    red = np.zeros((1, 3, 16, 16))
    red[:, 0] = 1
    assert dict(zip(STATISTICS, image_statistics(red)[0]))["hue_red"] == pytest.approx(1.0)
    stripes = np.zeros((1, 3, 16, 16))
    stripes[..., ::4] = stripes[..., 1::4] = 1  # vertical stripes: vertical edges
    assert dict(zip(STATISTICS, image_statistics(stripes)[0]))["orientation_90"] > 0.9


def test_too_small_a_screen_is_one_line(tmp_path):
    ctx = Context(options={"n": 30, "k": 20}, source=source(), make_target=lambda **kw: Luminance(), out=tmp_path)
    with pytest.raises(StimoptError, match="needs at least 40"):
        run_analysis("statistics", ctx)


# FeatureSpec's network-free model (downsampled pixels): the same code path as a real backbone, in milliseconds
TINY_BACKBONE = {"model": "pixels", "layer": "-", "input_size": 4}


class EmbeddingNeuron(stimopt.Target):
    """Planted: a random direction in the embedding space of the classifier's backbone; nothing else."""

    def __init__(self):
        from stimopt.bank.features import FeatureExtractor, FeatureSpec

        self.extract = FeatureExtractor(FeatureSpec(**TINY_BACKBONE))
        self.w = np.random.default_rng(4).standard_normal(self.extract.dim)

    def evaluate(self, images):
        return self.extract(images).astype(np.float64) @ self.w


def test_embedding_classifier_separates_a_planted_embedding_neuron(tmp_path, one_thread):
    neuron = EmbeddingNeuron()
    opts = {"n": None, "k": 20, "folds": 5, "embeddings": "auto", "backbone": TINY_BACKBONE}
    run_analysis("statistics", Context(options=opts, source=source(), make_target=lambda **kw: neuron, out=tmp_path,
                                       batch_size=50))
    data = json.loads((tmp_path / "statistics.json").read_text())
    assert data["embedding_dim"] == neuron.extract.dim and "computed here" in data["embeddings"]
    assert data["units"][0]["accuracy_embeddings"] > 0.95  # the sets lie on the two sides of the planted direction
    assert "on embeddings" in (tmp_path / "report.md").read_text()


def test_bad_embedding_options_are_one_line(tmp_path):
    base = {"n": None, "k": 5, "folds": 2}
    for opts, message in (({"embeddings": "bank"}, "this bank has no features"), ({"embeddings": "guess"}, "is not one of auto"),
                          ({"embeddings": "backbone", "backbone": {"modle": "x"}}, "statistics.backbone takes")):
        ctx = Context(options={**base, **opts}, source=source(60), make_target=lambda **kw: Luminance(), out=tmp_path)
        with pytest.raises(StimoptError, match=message):
            run_analysis("statistics", ctx)
